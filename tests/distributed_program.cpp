// Data-parallel training driven as a user drives it, with mpirun:
//   - `mpirun -np 2 finetune_sidewalk ... --batch-size 1` on the two images of finetune_one_step
//     writes the parameters of one torch.optim.SGD step of the reference model on the batch of
//     both (tests/fixtures/finetune_one_step.safetensors, tools/fixtures/finetune_one_step.py) and
//     of the same command run as one process with --batch-size 2: relative L2 of each tensor's step
//     <= 1e-4, BatchNorm running statistics within 1e-5; the log states the world and global batch;
//   - a rank that throws ends the whole job in under 10 s, its rank and error in the output, and a
//     rank killed with SIGKILL ends it too (distributed_ranks --fail-rank / --die-rank).
// Built only with MPI and the examples (tests/CMakeLists.txt passes SEGML_MPIEXEC, the program
// paths as SEGML_FINETUNE_PROGRAM and SEGML_DISTRIBUTED_RANKS).
#include <doctest/doctest.h>

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <string>

#include <nlohmann/json.hpp>
#include <segml/io/safetensors.hpp>

#include "support.hpp"

using namespace segml;

namespace {

// The environment Open MPI needs as root and in containers, one compute thread per rank.
void mpi_environment() {
  ::setenv("OMPI_ALLOW_RUN_AS_ROOT", "1", 1);
  ::setenv("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1", 1);
  ::setenv("OMPI_MCA_btl_vader_single_copy_mechanism", "none", 1);
  ::setenv("OMPI_MCA_rmaps_base_oversubscribe", "1", 1);
  ::setenv("SEGML_NUM_THREADS", "1", 1);
}

std::string q(const std::string& s) { return test::shell_quote(s); }

struct Timed {
  int status;
  std::string output;
  double seconds;
};

Timed run_shell(const std::string& cmd, const std::string& log) {
  const auto t0 = std::chrono::steady_clock::now();
  const int raw = std::system((cmd + " > " + q(log) + " 2>&1").c_str());
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::ifstream in(log);
  return {raw, std::string(std::istreambuf_iterator<char>(in), {}), s};
}

// The tensors of a model.safetensors, as doubles.
std::vector<double> values(const safetensors::File& f, const std::string& key) {
  const Tensor<float> t = f.get<float>(key).contiguous();
  return std::vector<double>(t.data(), t.data() + t.numel());
}
std::vector<double> values(const Tensor<float>& x) {
  const Tensor<float> t = x.contiguous();
  return std::vector<double>(t.data(), t.data() + t.numel());
}

// |got - want| / |want - before| (L2), the step's norm taken as at least `floor`: some gradients
// are zero in exact arithmetic (a bias right before BatchNorm, e.g. linear_c's: the batch mean
// removes it), and their steps are float noise in every implementation.
double rel_step(const std::vector<double>& got, const std::vector<double>& want, const std::vector<double>& before,
                double floor) {
  double d = 0, n = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    d += (got[i] - want[i]) * (got[i] - want[i]);
    n += (want[i] - before[i]) * (want[i] - before[i]);
  }
  return std::sqrt(d) / std::max(std::sqrt(n), floor);
}

}  // namespace

TEST_CASE("mpirun -np 2 finetune_sidewalk --batch-size 1 == one process --batch-size 2 == PyTorch's SGD step") {
  mpi_environment();
  const test::Fixture fx("finetune_one_step");
  const std::string data = std::string(SEGML_TEST_DATA_DIR) + "/finetune_one_step";
  test::TempDir out("dp_program");
  // The flags of the contract.
  const std::string flags = " --model " + q(data + "/init") + " --data " + q(data) +
                            " --steps 1 --optimizer sgd --lr 1 --weight-decay 0 --warmup-steps 0 --clip-grad-norm 0"
                            " --no-augment --crop-size 45x61 --seed 0 --eval-every 0";
  const Timed dp = run_shell(std::string(SEGML_MPIEXEC) + " " + q(SEGML_FINETUNE_PROGRAM) + flags +
                                 " --batch-size 1 --output " + q(out.file("dp")),
                             out.file("dp.txt"));
  INFO(dp.output);
  REQUIRE(dp.status == 0);
  CHECK(dp.output.find("2 processes") != std::string::npos);
  CHECK(dp.output.find("global batch 2") != std::string::npos);
  const Timed one = run_shell(q(SEGML_FINETUNE_PROGRAM) + flags + " --batch-size 2 --threads 1 --output " + q(out.file("one")),
                              out.file("one.txt"));
  INFO(one.output);
  REQUIRE(one.status == 0);

  const safetensors::File got(out.file("dp/model.safetensors")), alone(out.file("one/model.safetensors"));
  const safetensors::File init(data + "/init/model.safetensors");
  // 1e-3 of the largest step of any tensor is the floor of a step's norm (see rel_step).
  double largest = 0;
  for (const std::string& name : fx.file().names())
    if (name.rfind("sgd.", 0) == 0) {
      const std::vector<double> want = values(fx.get(name)), before = values(init, name.substr(4));
      double n = 0;
      for (size_t i = 0; i < want.size(); ++i) n += (want[i] - before[i]) * (want[i] - before[i]);
      largest = std::max(largest, std::sqrt(n));
    }
  double worst_torch = 0, worst_one = 0;
  int compared = 0;
  for (const std::string& name : fx.file().names()) {
    if (name.rfind("sgd.", 0) != 0) continue;
    const std::string key = name.substr(4);
    const std::vector<double> want = values(fx.get(name)), before = values(init, key);
    const double vs_torch = rel_step(values(got, key), want, before, 1e-3 * largest);
    const double vs_one = rel_step(values(got, key), values(alone, key), before, 1e-3 * largest);
    CHECK_MESSAGE(vs_torch <= 1e-4, key << ": relative L2 of the step vs PyTorch " << vs_torch);
    CHECK_MESSAGE(vs_one <= 1e-4, key << ": relative L2 of the step vs one process " << vs_one);
    worst_torch = std::max(worst_torch, vs_torch);
    worst_one = std::max(worst_one, vs_one);
    ++compared;
  }
  CHECK(compared == 146 - 3);
  MESSAGE(compared << " parameters; worst relative L2 of a step: " << worst_torch << " vs PyTorch, " << worst_one
                   << " vs one process");
  for (const char* buf : {"running_mean", "running_var"}) {
    const std::string key = std::string("decode_head.batch_norm.") + buf;
    const std::vector<double> g = values(got, key), w = values(fx.get(std::string("train.") + buf)), a = values(alone, key);
    for (size_t i = 0; i < w.size(); ++i) {
      CHECK(std::abs(g[i] - w[i]) <= 1e-5);
      CHECK(std::abs(g[i] - a[i]) <= 1e-5);
    }
  }
  std::ifstream log(out.file("dp/train_log.jsonl"));
  std::string first;
  REQUIRE(std::getline(log, first));
  const double loss = nlohmann::json::parse(first).at("loss").get<double>(), want = fx.get<double>("train.loss").data()[0];
  CHECK(std::abs(loss - want) <= 1e-5 * std::abs(want));
}

TEST_CASE("a rank that throws ends the whole job in under 10 s, naming the rank and the error") {
  mpi_environment();
  test::TempDir dir("dp_throw");
  const Timed r = run_shell(std::string(SEGML_MPIEXEC) + " " + q(SEGML_DISTRIBUTED_RANKS) + " --fail-rank 1", dir.file("out.txt"));
  INFO(r.output);
  MESSAGE("the job ended " << r.seconds << " s after it started");
  CHECK(r.status != 0);
  CHECK(r.seconds < 10.0);
  CHECK(r.output.find("rank 1 of 2 failed") != std::string::npos);
  CHECK(r.output.find("injected failure at step 2") != std::string::npos);
}

TEST_CASE("a rank killed with SIGKILL ends the whole job in under 10 s") {
  mpi_environment();
  test::TempDir dir("dp_kill");
  const Timed r = run_shell(std::string(SEGML_MPIEXEC) + " " + q(SEGML_DISTRIBUTED_RANKS) + " --die-rank 1", dir.file("out.txt"));
  INFO(r.output);
  MESSAGE("the job ended " << r.seconds << " s after it started");
  CHECK(r.status != 0);
  CHECK(r.seconds < 10.0);
}
