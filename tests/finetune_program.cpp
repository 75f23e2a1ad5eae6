// examples/finetune_sidewalk, run as a program, against PyTorch: one step with
//   --optimizer sgd --lr 1 --weight-decay 0 --warmup-steps 0 --no-augment --steps 1
// from a saved checkpoint must give the parameters of one torch.optim.SGD step of the reference model
// on the same batch (tools/fixtures/finetune_one_step.py, which also writes the checkpoint and the
// two-image dataset in tests/data/finetune_one_step). Checked: the logged loss (1e-5 relative), every
// parameter of the saved model.safetensors (1e-6 abs) and the BatchNorm running statistics (1e-5).
//
// The images already have the crop size, so --no-augment's resize is the identity (the resize itself
// is checked against PIL in test_image_processor); the dataset is exactly one batch, so the
// program's shuffle cannot change the loss or the gradients. Built only with the examples
// (tests/CMakeLists.txt passes the program's path as SEGML_FINETUNE_PROGRAM).
#include <doctest/doctest.h>

#include <cstdlib>
#include <fstream>
#include <string>

#include <nlohmann/json.hpp>
#include <segml/io/safetensors.hpp>

#include "support.hpp"

using namespace segml;

namespace {

std::string quote(const std::string& s) { return "'" + s + "'"; }

}  // namespace

TEST_CASE("finetune_sidewalk: one SGD step (lr 1, no augmentation) == torch.optim.SGD on the reference model") {
  const test::Fixture fx("finetune_one_step");
  const std::string data = std::string(SEGML_TEST_DATA_DIR) + "/finetune_one_step";
  test::TempDir out("finetune_one_step");
  std::string cmd = quote(SEGML_FINETUNE_PROGRAM) + " --model " + quote(data + "/init") + " --data " + quote(data) +
                    " --output " + quote(out.file()) + " --threads 1";
  for (const auto& a : nlohmann::json::parse(fx.file().metadata().at("args"))) cmd.append(" ").append(quote(a.get<std::string>()));
  cmd.append(" > ").append(quote(out.file("stdout.txt"))).append(" 2>&1");
  MESSAGE("running: " << cmd);
  const int status = std::system(cmd.c_str());
  if (status != 0) {
    std::ifstream log(out.file("stdout.txt"));
    FAIL("finetune_sidewalk exited with status " << status << ":\n" << std::string(std::istreambuf_iterator<char>(log), {}));
  }

  std::ifstream log(out.file("train_log.jsonl"));
  std::string first;
  REQUIRE(std::getline(log, first));
  const double got_loss = nlohmann::json::parse(first).at("loss").get<double>();
  const double want_loss = fx.get<double>("train.loss").data()[0];
  MESSAGE("loss: " << got_loss << " vs " << want_loss);
  CHECK(std::abs(got_loss - want_loss) <= 1e-5 * std::abs(want_loss));

  const safetensors::File saved(out.file("model.safetensors"));
  int compared = 0;
  double worst = 0;
  for (const std::string& name : fx.file().names()) {
    if (name.rfind("sgd.", 0) != 0) continue;
    const std::string key = name.substr(4);
    REQUIRE_MESSAGE(saved.contains(key), "model.safetensors has no " << key);
    const double d = test::max_abs_diff(saved.get<float>(key), fx.get(name));
    worst = std::max(worst, d);
    CHECK_MESSAGE(d <= 1e-6, key << ": max abs diff " << d);
    ++compared;
  }
  MESSAGE(compared << " parameters compared, worst max abs diff " << worst);
  CHECK(compared == 146 - 3);  // every parameter: the tiny model's state dict minus BatchNorm's 3 buffers
  test::compare("running_mean", saved.get<float>("decode_head.batch_norm.running_mean"), fx.get("train.running_mean"), 1e-5);
  test::compare("running_var", saved.get<float>("decode_head.batch_norm.running_var"), fx.get("train.running_var"), 1e-5);
}
