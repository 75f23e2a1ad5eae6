// Training states on disk, through the library (segml/train/trainer.hpp): a diverging run stops
// before anything non-finite is saved, stale temporaries of dead processes are cleaned (and only
// those), a state resumed in its own run folder rewrites the log to its step and replaces the
// abandoned later checkpoints. The command-line side (kills, --resume flags) is in
// tests/finetune_program.cpp.
#include <doctest/doctest.h>

#include <cmath>
#include <filesystem>
#include <fstream>

#include <sys/wait.h>
#include <unistd.h>

#include <segml/data/synthetic_scenes.hpp>
#include <segml/train/trainer.hpp>

#include "support.hpp"
#include "train_support.hpp"

using namespace segml;
using namespace segml::train;
namespace fs = std::filesystem;
using segml::test::TempDir;

namespace {

SegformerConfig tiny_config(const std::vector<std::string>& labels) {
  return segml::test::tiny_train_config(labels, /*keep_dropout=*/true);
}

const fs::path& scenes() { return segml::test::scenes_once("resume_scenes", 4, 0, 48, 40, 5); }

TrainOptions tiny_options(const fs::path& out) {
  TrainOptions o;
  o.output_dir = out.string();
  o.max_steps = 4;
  o.per_device_train_batch_size = 2;
  o.learning_rate = 3e-3;
  o.crop_height = o.crop_width = 32;
  o.save_steps = 1;
  o.verbose = false;
  o.dataloader_num_workers = 1;
  return o;
}

using segml::test::processor_for;

// Every float of every tensor in the safetensors files under `dir` is finite.
int64_t non_finite_in(const fs::path& dir) {
  int64_t bad = 0;
  for (const auto& e : fs::recursive_directory_iterator(dir))
    if (e.path().extension() == ".safetensors") {
      const safetensors::File f(e.path().string());
      for (const std::string& n : f.names()) {
        const Tensor<double> t = f.get<double>(n);
        for (int64_t i = 0; i < t.numel(); ++i) bad += !std::isfinite(t.data()[i]);
      }
    }
  return bad;
}

// The id of a process that has exited (its temporaries are stale).
long dead_pid() {
  const pid_t pid = ::fork();
  if (pid == 0) ::_exit(0);
  int st = 0;
  ::waitpid(pid, &st, 0);
  return static_cast<long>(pid);
}

}  // namespace

TEST_CASE("trainer: a run whose parameters become NaN/Inf stops (naming step and tensor) before saving them") {
  const SegmentationDataset train_ds = SegmentationDataset::open(scenes(), "train");
  struct Case {
    const char* what;
    std::string optimizer;
    double lr, momentum;
  };
  for (const Case& c : {Case{"sgd, momentum nan", "sgd", 1e-2, NAN}, Case{"sgd, lr 1e30", "sgd", 1e30, 0.9},
                        Case{"adamw, lr 1e30", "adamw", 1e30, 0.9}}) {
    INFO(std::string(c.what));
    TempDir out("nonfinite");
    TrainOptions o = tiny_options(out.path);
    o.optimizer = c.optimizer;
    o.learning_rate = c.lr;
    o.momentum = c.momentum;
    o.lr_scheduler_type = "constant";
    SegformerForSemanticSegmentation<float> model(tiny_config(train_ds.id2label()), 3);
    Trainer t(model, processor_for(o), train_ds, std::nullopt, o);
    std::string error;
    try {
      t.run();
    } catch (const Error& e) {
      error = e.what();
    }
    MESSAGE(std::string(c.what) << ": " << error);
    REQUIRE_FALSE(error.empty());  // training stopped with an error
    CHECK(error.find("step") != std::string::npos);
    CHECK(non_finite_in(out.path) == 0);  // nothing non-finite was written
    for (const CheckpointRef& r : list_checkpoints(out.path)) CHECK(verify_state(r.dir) == r.step);
    CHECK_FALSE(fs::exists(out.path / "model.safetensors"));  // the run did not finish
  }
  // The NaN case names the parameter: momentum nan poisons SGD's buffer at the second step.
  TempDir out("nonfinite_named");
  TrainOptions o = tiny_options(out.path);
  o.optimizer = "sgd";
  o.momentum = NAN;
  SegformerForSemanticSegmentation<float> model(tiny_config(train_ds.id2label()), 3);
  Trainer t(model, processor_for(o), train_ds, std::nullopt, o);
  CHECK_THROWS_WITH(t.run(), doctest::Contains("the parameters are not finite after step 2: '"));
  CHECK(list_checkpoints(out.path).size() == 1);  // checkpoint-1 (finite); no checkpoint-2
}

TEST_CASE("trainer: run() removes the temporaries dead processes left and nothing else") {
  TempDir out("temporaries");
  const long dead = dead_pid();
  const std::string d = std::to_string(dead), live = std::to_string(::getpid());
  fs::create_directories(out.path / (".checkpoint-3.tmp-" + d));
  std::ofstream(out.path / (".checkpoint-3.tmp-" + d) / "model.safetensors") << "half";
  std::ofstream(out.path / ("train_log.jsonl.tmp" + d)) << "x";
  std::ofstream(out.path / ("model.safetensors.tmp" + d)) << "x";
  fs::create_directories(out.path / (".checkpoint-5.tmp-" + live));  // a save of a running process: kept
  std::ofstream(out.path / ("notes.txt.tmp" + d)) << "not ours";    // not one of our names: kept
  fs::create_directories(out.path / "my.checkpoint-2.tmp-1");       // not our pattern: kept
  const std::vector<fs::path> removed = clean_temporaries(out.path);
  CHECK(removed.size() == 3);
  CHECK_FALSE(fs::exists(out.path / (".checkpoint-3.tmp-" + d)));
  CHECK_FALSE(fs::exists(out.path / ("train_log.jsonl.tmp" + d)));
  CHECK_FALSE(fs::exists(out.path / ("model.safetensors.tmp" + d)));
  CHECK(fs::exists(out.path / (".checkpoint-5.tmp-" + live)));
  CHECK(fs::exists(out.path / ("notes.txt.tmp" + d)));
  CHECK(fs::exists(out.path / "my.checkpoint-2.tmp-1"));

  // Killed while replacing checkpoint-4: the old one, moved aside, is put back.
  fs::create_directories(out.path / (".checkpoint-4.old-" + d));
  std::ofstream(out.path / (".checkpoint-4.old-" + d) / "trainer_state.json") << "{}";
  clean_temporaries(out.path);
  CHECK(fs::exists(out.path / "checkpoint-4" / "trainer_state.json"));
}

TEST_CASE("trainer: resumed from an earlier checkpoint of its run the log and checkpoints continue from that step") {
  const SegmentationDataset train_ds = SegmentationDataset::open(scenes(), "train");
  TempDir out("rewind");
  const TrainOptions o = tiny_options(out.path);
  std::vector<StepRecord> full;
  {
    SegformerForSemanticSegmentation<float> model(tiny_config(train_ds.id2label()), 3);
    Trainer t(model, processor_for(o), train_ds, std::nullopt, o);
    REQUIRE(t.run());
    full = t.history();
  }
  std::ofstream(out.path / "checkpoint-9") << "";  // a file, not a state: ignored
  SegformerForSemanticSegmentation<float> model(tiny_config(train_ds.id2label()), 99);
  Trainer t(model, processor_for(o), train_ds, std::nullopt, o);
  t.load_state((out.path / "checkpoint-2").string());
  std::vector<int64_t> seen;
  t.on_step = [&](const StepRecord& r) {
    seen.push_back(r.step);
    // Steps 3 and 4 of the abandoned continuation were removed before training went on.
    if (r.step == 3) CHECK_FALSE(fs::exists(out.path / "checkpoint-4"));
  };
  REQUIRE(t.run());
  CHECK(seen == std::vector<int64_t>{3, 4});
  std::ifstream log(out.path / "train_log.jsonl");
  std::vector<int64_t> steps;
  std::vector<double> losses;
  for (std::string line; std::getline(log, line);) {
    const nlohmann::json j = nlohmann::json::parse(line);
    steps.push_back(j.at("step").get<int64_t>());
    losses.push_back(j.at("loss").get<double>());
  }
  CHECK(steps == std::vector<int64_t>{1, 2, 3, 4});
  for (size_t i = 0; i < full.size() && i < losses.size(); ++i) CHECK(losses[i] == full[i].loss);
  for (const CheckpointRef& r : list_checkpoints(out.path)) CHECK(verify_state(r.dir) == r.step);
}
