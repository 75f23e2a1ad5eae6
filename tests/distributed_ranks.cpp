// Data-parallel training, run as the ranks of one MPI job: ctest starts `mpirun -np 2
// distributed_ranks`, and every rank runs every test case below (their collectives must match, so
// the checks are CHECKs that never skip one). Each rank also trains the one-process reference
// itself (a Trainer without a communicator on its own copy of the model), so every comparison is
// data-parallel against single-process on the same global batch:
//   - one SGD step (lr 1, no momentum: the step IS the gradient) and one AdamW step of 2 processes
//     x batch 1 equal 1 process x batch 2, for the tiny and the B0 configs, on the two images of
//     tests/data/finetune_one_step whose numbers of ignored pixels differ: the loss, every
//     parameter's step (relative L2 <= 1e-4) and the BatchNorm running statistics (1e-5);
//   - three steps with augmentation, gradient accumulation and an epoch whose last micro-batch
//     leaves rank 0 without an image equal the one-process run, and leave bit-identical parameters
//     on every rank;
//   - every training image is seen exactly once per epoch (7 images, batch 2 per process);
//   - a run stopped at step 2 on rank 0 only and resumed on every rank ends bit-identical to the
//     uninterrupted run;
//   - sharded evaluation counts every image once: the same confusion matrix as one process.
// Modes for tests/distributed_program.cpp: `--fail-rank R` (rank R throws at step 2 of a long
// run) and `--die-rank R` (rank R is killed with SIGKILL at step 2).
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <csignal>
#include <cstring>
#include <map>
#include <set>
#include <string>
#include <vector>

#include <segml/distributed/mpi.hpp>
#include <segml/train/trainer.hpp>

#include "train_support.hpp"

using namespace segml;

namespace {

std::shared_ptr<distributed::Communicator> g_world;

std::string data_dir() { return std::string(SEGML_TEST_DATA_DIR) + "/finetune_one_step"; }

// A folder every rank names the same: rank 0's temporary folder (rank 0 removes it).
struct SharedDir {
  explicit SharedDir(const std::string& name) {
    if (g_world->rank() == 0) mine = std::make_unique<test::TempDir>(name);
    char buf[4096] = {};
    if (mine) std::snprintf(buf, sizeof buf, "%s", mine->file().c_str());
    g_world->broadcast(buf, sizeof buf, 0);
    path = buf;
  }
  std::unique_ptr<test::TempDir> mine;
  std::string path;
};

using Tensors = std::map<std::string, std::vector<float>>;

Tensors tensors_of(SegformerForSemanticSegmentation<float>& m) {
  Tensors out;
  auto put = [&](const std::string& name, const Tensor<float>& x) {
    const Tensor<float> t = x.contiguous();
    out[name] = std::vector<float>(t.data(), t.data() + t.numel());
  };
  nn::Visitor<float> v;
  v.parameter = [&](const std::string& name, Var<float>& p) { put(name, p.data()); };
  v.buffer = [&](const std::string& name, Tensor<float>& b) { put(name, b); };
  m.visit(v);
  return out;
}

struct Trained {
  Tensors before, after;
  std::vector<double> losses;
};

// Trains a fresh model (config, seed 7) on the train split of `data` with `o`; data-parallel on
// every rank of the job when `parallel`, else alone in this process.
Trained train_run(const SegformerConfig& cfg, const std::string& data, train::TrainOptions o, bool parallel,
                  const std::string& output, const std::atomic<bool>* stop = nullptr, const std::string& resume = "") {
  SegformerForSemanticSegmentation<float> model(cfg, /*seed=*/7);
  model.generator().manual_seed(o.seed);
  o.verbose = false;
  o.check_replicas = true;
  o.output_dir = output;
  o.communicator = parallel ? g_world : nullptr;
  Trained r;
  r.before = tensors_of(model);
  train::Trainer t(model, test::processor_for(o), SegmentationDataset::open(data, "train"), std::nullopt, o);
  if (!resume.empty()) t.load_state(resume);
  t.run(stop);
  for (const train::StepRecord& h : t.history()) r.losses.push_back(h.loss);
  r.after = tensors_of(model);
  return r;
}

double l2(const std::vector<float>& a, const std::vector<float>* b = nullptr) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    const double d = double(a[i]) - (b ? double((*b)[i]) : 0.0);
    s += d * d;
  }
  return std::sqrt(s);
}

// Every tensor of `got` against `want`: a parameter's step (after - before) within `step_tol`
// relative L2, a buffer within `buffer_tol` absolute. Returns the worst relative step difference.
// Some gradients are zero in exact arithmetic (a bias right before BatchNorm, e.g. linear_c's:
// the batch mean removes it) and their steps are float noise on both sides, so a step is measured
// against at least 1e-3 of the largest step of any tensor.
double compare_steps(const Trained& got, const Trained& want, double step_tol, double buffer_tol,
                     const std::set<std::string>& skip = {}) {
  double worst = 0, largest = 0;
  int compared = 0;
  for (const auto& [name, w] : want.after) {
    const std::vector<float>& b = want.before.at(name);
    std::vector<float> step(w.size());
    for (size_t i = 0; i < w.size(); ++i) step[i] = w[i] - b[i];
    largest = std::max(largest, l2(step));
  }
  for (const auto& [name, w] : want.after) {
    const std::vector<float>& g = got.after.at(name);
    REQUIRE(g.size() == w.size());
    const bool buffer = name.find("running_") != std::string::npos || name.find("num_batches") != std::string::npos;
    if (buffer) {
      double d = 0;
      for (size_t i = 0; i < g.size(); ++i) d = std::max(d, std::abs(double(g[i]) - double(w[i])));
      CHECK_MESSAGE(d <= buffer_tol, name << ": max abs diff " << d);
      continue;
    }
    if (skip.count(name)) continue;
    std::vector<float> step_w(w.size()), step_g(g.size());
    const std::vector<float>& b = want.before.at(name);
    for (size_t i = 0; i < w.size(); ++i) step_w[i] = w[i] - b[i], step_g[i] = g[i] - b[i];
    const double norm = std::max(l2(step_w), 1e-3 * largest);
    const double rel = l2(step_g, &step_w) / norm;
    worst = std::max(worst, rel);
    CHECK_MESSAGE(rel <= step_tol, name << ": relative L2 of the step difference " << rel);
    ++compared;
  }
  CHECK(compared > 10);
  return worst;
}

train::TrainOptions one_step(const std::string& optimizer) {
  train::TrainOptions o;
  o.optimizer = optimizer;
  o.learning_rate = optimizer == "sgd" ? 1.0 : 1e-3;
  o.momentum = 0.0;
  o.weight_decay = 0.0;
  o.warmup_steps = 0;
  o.max_grad_norm = 0.0;
  o.max_steps = 1;
  o.augment = false;
  o.crop_height = 45;
  o.crop_width = 61;
  o.seed = 0;
  o.dataloader_num_workers = 1;
  return o;
}

}  // namespace

TEST_CASE("2 processes x batch 1 == 1 process x batch 2: one SGD and one AdamW step, tiny and B0 configs") {
  const std::vector<std::string> labels = {"road", "sidewalk", "person", "car", "sky"};
  SegformerConfig b0 = SegformerConfig::b0();
  b0.set_labels(labels);
  b0.classifier_dropout_prob = 0.0;
  b0.drop_path_rate = 0.0;
  for (const auto& [name, cfg] : {std::pair<std::string, SegformerConfig>{"tiny", test::tiny_train_config(labels)},
                                  std::pair<std::string, SegformerConfig>{"b0", b0}}) {
    // AdamW's first step is lr * g / (|g| + eps): for a gradient that is zero in exact arithmetic
    // (float noise, |g| below 1e-6 of the largest gradient's norm; e.g. linear_c's biases, which the
    // BatchNorm after them cancels) it is noise of size lr in any implementation. Those tensors,
    // found from the SGD step (lr 1: the step is the gradient), are left out of the AdamW check.
    std::set<std::string> zero_gradient;
    for (const std::string optimizer : {"sgd", "adamw"}) {
      CAPTURE(name);
      CAPTURE(optimizer);
      train::TrainOptions o = one_step(optimizer);
      const SharedDir out("dp_step");
      test::TempDir alone("dp_step_alone");
      o.per_device_train_batch_size = 1;
      const Trained parallel = train_run(cfg, data_dir(), o, true, out.path);
      o.per_device_train_batch_size = 2;
      const Trained single = train_run(cfg, data_dir(), o, false, alone.file());
      REQUIRE(parallel.losses.size() == 1);
      CHECK(std::abs(parallel.losses[0] - single.losses[0]) <= 1e-5 * std::abs(single.losses[0]));
      const double worst = compare_steps(parallel, single, 1e-4, 1e-5, optimizer == "adamw" ? zero_gradient : std::set<std::string>{});
      MESSAGE(name << " " << optimizer << ": loss " << parallel.losses[0] << " vs " << single.losses[0]
                   << ", worst relative L2 of a step difference " << worst
                   << (optimizer == "adamw" ? " (" + std::to_string(zero_gradient.size()) + " zero-gradient tensors left out)" : ""));
      if (optimizer == "sgd") {
        double largest = 0;
        std::map<std::string, double> norm;
        for (const auto& [key, w] : single.after) {
          if (key.find("running_") != std::string::npos || key.find("num_batches") != std::string::npos) continue;
          std::vector<float> step(w.size());
          for (size_t i = 0; i < w.size(); ++i) step[i] = w[i] - single.before.at(key)[i];
          largest = std::max(largest, norm[key] = l2(step));
        }
        for (const auto& [key, n] : norm)
          if (n < 1e-6 * largest) zero_gradient.insert(key);
      }
    }
  }
}

TEST_CASE("with dropout and drop-path on, 2 processes x batch 1 still equal 1 process x batch 2") {
  // Each process draws the masks of the whole global micro-batch and keeps its own samples' part.
  const std::vector<std::string> labels = {"road", "sidewalk", "person", "car", "sky"};
  SegformerConfig cfg = test::tiny_train_config(labels, /*keep_dropout=*/true);
  cfg.classifier_dropout_prob = 0.1;
  cfg.drop_path_rate = 0.3;
  cfg.hidden_dropout_prob = 0.1;
  train::TrainOptions o = one_step("sgd");
  o.max_steps = 2;
  o.learning_rate = 0.1;
  const SharedDir out("dp_dropout");
  test::TempDir alone("dp_dropout_alone");
  o.per_device_train_batch_size = 1;
  const Trained parallel = train_run(cfg, data_dir(), o, true, out.path);
  o.per_device_train_batch_size = 2;
  const Trained single = train_run(cfg, data_dir(), o, false, alone.file());
  REQUIRE(parallel.losses.size() == 2);
  for (size_t i = 0; i < 2; ++i) CHECK(std::abs(parallel.losses[i] - single.losses[i]) <= 1e-5 * std::abs(single.losses[i]));
  const double worst = compare_steps(parallel, single, 1e-4, 1e-5);
  MESSAGE("dropout on: worst relative L2 of a step difference " << worst);
}

TEST_CASE("three steps with augmentation, accumulation and an empty rank: one-process result, identical replicas") {
  const std::filesystem::path data = test::scenes_once("dp_scenes", 5, 0, 48, 40, 3);
  const SegmentationDataset ds = SegmentationDataset::open(data.string(), "train");
  const SegformerConfig cfg = test::tiny_train_config(ds.id2label());
  train::TrainOptions o;
  o.max_steps = 3;
  o.gradient_accumulation_steps = 2;
  o.crop_height = 32;
  o.crop_width = 32;
  o.optimizer = "sgd";  // AdamW would turn the zero gradients' float noise into steps of size lr
  o.learning_rate = 0.05;
  o.seed = 5;
  o.dataloader_num_workers = 1;
  // 5 images, 2 per process x 2 processes: each epoch's second micro-batch holds one image, rank 1's.
  const SharedDir out("dp_steps");
  test::TempDir alone("dp_steps_alone");
  o.per_device_train_batch_size = 2;
  const Trained parallel = train_run(cfg, data.string(), o, true, out.path);
  o.per_device_train_batch_size = 4;
  const Trained single = train_run(cfg, data.string(), o, false, alone.file());
  REQUIRE(parallel.losses.size() == 3);
  for (size_t i = 0; i < 3; ++i) CHECK(std::abs(parallel.losses[i] - single.losses[i]) <= 1e-4 * std::abs(single.losses[i]));
  const double worst = compare_steps(parallel, single, 1e-3, 1e-4);
  MESSAGE("3 steps: worst relative L2 of a step difference " << worst);
  // Bit-identical on every rank (the Trainer also checked after every step).
  std::vector<float> flat;
  for (const auto& [name, v] : parallel.after) flat.insert(flat.end(), v.begin(), v.end());
  const Tensor<float> t = Tensor<float>::from({static_cast<int64_t>(flat.size())}, flat);
  const std::vector<uint64_t> sums = g_world->allgather(distributed::replica_checksum({&t}));
  for (uint64_t s : sums) CHECK(s == sums[0]);
}

TEST_CASE("every training image is seen exactly once per epoch, on one of the processes") {
  const std::filesystem::path data = test::scenes_once("dp_seen", 7, 0, 32, 32, 4);
  const SegmentationDataset ds = SegmentationDataset::open(data.string(), "train");
  SegformerForSemanticSegmentation<float> model(test::tiny_train_config(ds.id2label()), 1);
  train::TrainOptions o;
  o.per_device_train_batch_size = 2;
  o.max_steps = 10;
  o.verbose = false;
  o.communicator = g_world;
  const SharedDir out("dp_seen");
  o.output_dir = out.path;
  train::Trainer t(model, test::processor_for(o), ds, std::nullopt, o);
  CHECK(t.batches_per_epoch() == 2);  // ceil(7 / (2 x 2))
  for (int64_t epoch = 0; epoch < 3; ++epoch) {
    std::vector<double> seen(7, 0.0);
    for (int64_t j = 0; j < t.batches_per_epoch(); ++j)
      for (int64_t index : t.batch_indices(epoch * t.batches_per_epoch() + j)) seen[static_cast<size_t>(index)] += 1;
    g_world->allreduce_sum(seen.data(), 7);
    for (size_t i = 0; i < seen.size(); ++i) CHECK_MESSAGE(seen[i] == 1.0, "epoch " << epoch << ", image " << i);
  }
}

TEST_CASE("a run stopped on one rank and resumed on every rank ends bit-identical to the uninterrupted run") {
  const std::filesystem::path data = test::scenes_once("dp_resume", 6, 0, 40, 40, 6);
  const SegformerConfig cfg = test::tiny_train_config(SegmentationDataset::open(data.string(), "train").id2label());
  train::TrainOptions o;
  o.max_steps = 4;
  o.per_device_train_batch_size = 1;
  o.crop_height = 32;
  o.crop_width = 32;
  o.learning_rate = 2e-3;
  o.seed = 11;
  o.dataloader_num_workers = 1;
  const SharedDir straight_dir("dp_straight"), stopped_dir("dp_stopped");
  const Trained straight = train_run(cfg, data.string(), o, true, straight_dir.path);
  // Stop after step 2, asked by rank 0 only: every rank stops there, rank 0 saves checkpoint-2.
  std::atomic<bool> stop{false};
  {
    SegformerForSemanticSegmentation<float> model(cfg, 7);
    model.generator().manual_seed(o.seed);
    train::TrainOptions p = o;
    p.verbose = false;
    p.output_dir = stopped_dir.path;
    p.communicator = g_world;
    train::Trainer t(model, test::processor_for(p), SegmentationDataset::open(data.string(), "train"), std::nullopt, p);
    t.on_step = [&](const train::StepRecord& r) {
      if (r.step == 2 && g_world->rank() == 0) stop = true;
    };
    CHECK_FALSE(t.run(&stop));
    CHECK(t.step() == 2);
  }
  g_world->barrier();  // rank 0 has published checkpoint-2
  const Trained resumed =
      train_run(cfg, data.string(), o, true, stopped_dir.path, nullptr, stopped_dir.path + "/checkpoint-2");
  REQUIRE(resumed.losses.size() == 4);
  for (size_t i = 0; i < 4; ++i) CHECK(resumed.losses[i] == straight.losses[i]);
  for (const auto& [name, v] : straight.after) CHECK_MESSAGE(resumed.after.at(name) == v, name);
}

TEST_CASE("sharded evaluation counts every image once: the confusion matrix of one process") {
  const std::filesystem::path data = test::scenes_once("dp_eval", 1, 5, 40, 32, 8);
  const SegmentationDataset val = SegmentationDataset::open(data.string(), "val");
  SegformerForSemanticSegmentation<float> model(test::tiny_train_config(val.id2label()), 3);
  SegformerImageProcessor proc;
  proc.height = proc.width = 32;
  train::EvalOptions eo;
  eo.batch_size = 2;  // batches {0,1} {2,3} {4}: rank 0 takes two of them, rank 1 one
  const train::EvalResult alone = train::evaluate_dataset(model, val, proc, eo);
  eo.shard_rank = g_world->rank();
  eo.shard_count = g_world->size();
  eo.sum_over_processes = [](double* d, int64_t n) { g_world->allreduce_sum(d, n); };
  const train::EvalResult sharded = train::evaluate_dataset(model, val, proc, eo);
  CHECK(sharded.confusion == alone.confusion);
  CHECK(sharded.metrics.mean_iou == doctest::Approx(alone.metrics.mean_iou).epsilon(1e-12));
}

namespace {
// The failure modes of tests/distributed_program.cpp: a long run in which rank `rank` throws
// (or is killed) at step 2.
int failing_run(int rank, bool kill) {
  const std::filesystem::path data = test::scenes_once("dp_fail", 4, 0, 32, 32, 9);
  const SegmentationDataset ds = SegmentationDataset::open(data.string(), "train");
  SegformerForSemanticSegmentation<float> model(test::tiny_train_config(ds.id2label()), 1);
  train::TrainOptions o;
  o.per_device_train_batch_size = 1;
  o.max_steps = 100000;
  o.crop_height = o.crop_width = 32;
  o.communicator = g_world;
  test::TempDir out("dp_fail_out");
  o.output_dir = out.file();
  train::Trainer t(model, test::processor_for(o), ds, std::nullopt, o);
  t.on_step = [&](const train::StepRecord& r) {
    if (r.step == 2 && g_world->rank() == rank) {
      if (kill) std::raise(SIGKILL);
      fail("injected failure at step 2 (the test's on_step)");
    }
  };
  t.run();
  return 0;
}
}  // namespace

int main(int argc, char** argv) {
  distributed::MpiSession mpi(&argc, &argv, /*force=*/true);
  g_world = mpi.world();
  for (int i = 1; i + 1 < argc; ++i)
    if (!std::strcmp(argv[i], "--fail-rank") || !std::strcmp(argv[i], "--die-rank"))
      return failing_run(std::atoi(argv[i + 1]), !std::strcmp(argv[i], "--die-rank"));
  if (g_world->size() < 2) std::fprintf(stderr, "distributed_ranks: run it with mpirun -np 2 (or more)\n");
  doctest::Context ctx(argc, argv);
  const int failed = ctx.run();
  double any = failed != 0 ? 1.0 : 0.0;
  g_world->allreduce_sum(&any, 1);
  g_world.reset();
  return any > 0 ? 1 : 0;
}
