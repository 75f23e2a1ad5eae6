// segml/train/trainer.hpp: Trainer, the fine-tuning loop of SegformerForSemanticSegmentation.
//
// One optimisation step = grad_accum micro-batches of batch_size examples: forward with labels
// (HF's loss), backward of loss / grad_accum, then optional gradient clipping (total L2 norm over
// every gradient, torch.nn.utils.clip_grad_norm_), an optimizer step at the schedule's lr for this
// step, zero grads. Micro-batch m reads positions [m*B, m*B + B) of epoch m / batches_per_epoch's
// shuffle (the last batch of an epoch may be smaller); every example is augmented with its own
// stream sample_seed(seed, epoch, index), built on background threads (Prefetcher).
//
// Options: TrainOptions (segml/train/options.hpp), HF TrainingArguments' names and semantics.
//
// Files under output_dir (a "run folder"): train_log.jsonl (one record per step {"step", "epoch",
// "loss", "lr", "grad_norm", "images_per_s"}, and {"step", "eval": {...}} after each evaluation),
// training_curves.svg, the final model in output_dir itself (HF layout: config.json,
// model.safetensors, preprocessor_config.json), a model card README.md with sample_overlay.png
// (segml/train/model_card.hpp), and checkpoint-<step>/ folders, each one complete training state:
// the HF files plus optimizer.safetensors and trainer_state.json. trainer_state.json has HF's
// TrainerState layout (global_step, epoch, max_steps, num_train_epochs, log_history, best_metric,
// best_model_checkpoint, logging/eval/save_steps, train_batch_size, ...) and, under "segml", what an
// exact resume needs (RNG state, optimizer step count, options, every step's record, thread count).
// A checkpoint is written every save_steps steps, at every evaluation when load_best_model_at_end,
// when run() is stopped, and at the last step; save_total_limit keeps only the newest ones and the
// best. Evaluation: evaluate_dataset's metrics plus eval_loss (the model's loss on the val images
// resized with their labels to the processor size, like HF's tutorial); with
// load_best_model_at_end the output folder ends with the best checkpoint's weights.
//
// Guarantees:
// - Given the seed, the batches, dropout masks and so the losses do not depend on timing or the
//   number of data workers; a Trainer restored with load_state() continues with exactly the losses
//   and parameters the uninterrupted run would have had (same thread count).
// - A state is one atomic unit: written into ".checkpoint-<step>.tmp-<pid>/", fsynced, published
//   with one rename, parent fsynced (segml/core/file.hpp). A kill -9 at any instant leaves the
//   previous complete state or the new one. trainer_state.json, model.safetensors and
//   optimizer.safetensors each record the step, and load_state() refuses a folder whose files
//   disagree (or whose name names another step). run() removes the temporaries that dead
//   processes left in the run folder.
// - Resumed at step S, run() rewrites train_log.jsonl (atomically) to exactly the records up to S,
//   rebuilt from the state, then appends: no duplicate or out-of-order step, whatever the folder held.
//   Checkpoints in output_dir after the step run() starts from belong to an abandoned continuation
//   and are removed first (starting at step 0, that is all of them).
// - Non-finite parameters are never saved nor trained on: after every optimizer step the
//   parameters and buffers are scanned and a NaN/Inf stops training with an error naming the step
//   and the first bad tensor.
// Data-parallel training on several processes (TrainOptions::communicator, segml/distributed/,
// docs/distributed.md): every process runs the same Trainer on its share of each global
// micro-batch; a step equals the one-process step on the same global batch (loss over the global
// valid-pixel count, SyncBN, dropout masks of the whole batch), rank 0 alone writes.
// Does not: mixed precision, early stopping, lock a run folder against two processes training
// into it at once.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

#include <unistd.h>

#include <nlohmann/json.hpp>

#include "segml/core/file.hpp"
#include "segml/data/dataset.hpp"
#include "segml/distributed/communicator.hpp"
#include "segml/distributed/data_parallel.hpp"
#include "segml/io/checkpoint.hpp"
#include "segml/io/image.hpp"
#include "segml/io/image_processor.hpp"
#include "segml/io/overlay.hpp"
#include "segml/kernels/cross_entropy.hpp"
#include "segml/train/augment.hpp"
#include "segml/train/evaluation.hpp"
#include "segml/train/model_card.hpp"
#include "segml/train/optim.hpp"
#include "segml/train/options.hpp"
#include "segml/train/plot.hpp"
#include "segml/train/prefetch.hpp"
#include "segml/train/schedule.hpp"

namespace segml::train {

struct StepRecord {
  int64_t step = 0;  // 1-based: the number of optimizer steps done
  double epoch = 0;  // fractional epochs of data consumed
  double loss = 0;   // mean over the step's micro-batches
  double lr = 0;
  double images_per_s = 0;
  double grad_norm = 0;  // total L2 norm of the gradients before clipping
};

struct EvalRecord {
  int64_t step = 0;
  MeanIoU metrics;
  double loss = 0;     // eval_loss
  double seconds = 0;  // eval_runtime
  int64_t images = 0;
};

// One micro-batch (this process's part of it, in data-parallel training).
struct Batch {
  Tensor<float> pixel_values;  // (B, 3, H, W); undefined when this process has no image in it
  Tensor<int64_t> labels;      // (B, H, W)
  int64_t epoch = 0;
  int64_t global_images = 0;   // images in the micro-batch over every process
  int64_t global_first = 0;    // position of this process's first image among them
  int64_t images() const { return pixel_values.defined() ? pixel_values.size(0) : 0; }
};

// The total L2 norm of all gradients.
inline double grad_norm(const std::vector<Var<float>*>& params) {
  double sq = 0;
  for (const Var<float>* p : params) {
    if (!p->grad().defined()) continue;
    const Tensor<float> g = p->grad().contiguous();
    for (int64_t i = 0; i < g.numel(); ++i) sq += double(g.data()[i]) * double(g.data()[i]);
  }
  return std::sqrt(sq);
}

// torch.nn.utils.clip_grad_norm_(params, max_norm): total L2 norm of all gradients, and every
// gradient scaled by max_norm / (norm + 1e-6) when that is < 1. Returns the norm before clipping.
inline double clip_grad_norm(const std::vector<Var<float>*>& params, double max_norm) {
  const double norm = grad_norm(params), coef = max_norm / (norm + 1e-6);
  if (coef < 1.0)
    for (Var<float>* p : params) {
      if (!p->grad().defined()) continue;
      Tensor<float> g = p->grad().contiguous();
      for (int64_t i = 0; i < g.numel(); ++i) g.data()[i] = static_cast<float>(g.data()[i] * coef);
      p->grad() = g;
    }
  return norm;
}

// ---- Training states on disk ------------------------------------------------------------------
// A run folder holds checkpoint-<step>/ state folders. These functions find, check, clean and
// rotate them; Trainer uses them, and so can a program that drives a Trainer itself.

inline constexpr const char* kTrainerStateFormat = "segml-trainer-state";
inline constexpr int kTrainerStateVersion = 3;  // 3: HF TrainerState layout, segml's own fields under "segml"

// The step N of a folder named "checkpoint-N", or -1 for any other name.
inline int64_t checkpoint_step(const std::string& name) {
  const std::string prefix = "checkpoint-";
  if (name.size() <= prefix.size() || name.compare(0, prefix.size(), prefix) != 0 || name.size() > prefix.size() + 18)
    return -1;
  int64_t step = 0;
  for (size_t i = prefix.size(); i < name.size(); ++i) {
    if (name[i] < '0' || name[i] > '9') return -1;
    step = step * 10 + (name[i] - '0');
  }
  return step;
}

// The __metadata__ of a safetensors file, from its header alone (the tensors are not read).
inline std::map<std::string, std::string> safetensors_metadata(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("cannot open '", path.string(), "'");
  uint64_t n = 0;
  in.read(reinterpret_cast<char*>(&n), 8);
  const uint64_t size = std::filesystem::file_size(path);
  if (!in || n > size - 8 || n > (uint64_t{100} << 20))
    fail("'", path.string(), "' is not a safetensors file (header length ", n, " in a file of ", size, " bytes)");
  std::string header(static_cast<size_t>(n), '\0');
  in.read(header.data(), static_cast<std::streamsize>(n));
  if (!in) fail("'", path.string(), "': truncated safetensors header");
  const nlohmann::json h = nlohmann::json::parse(header, nullptr, false);
  if (h.is_discarded() || !h.is_object()) fail("'", path.string(), "': the safetensors header is not a JSON object");
  std::map<std::string, std::string> meta;
  if (h.contains("__metadata__") && h["__metadata__"].is_object())
    for (const auto& [k, v] : h["__metadata__"].items())
      if (v.is_string()) meta[k] = v.get<std::string>();
  return meta;
}

// Checks that `dir` holds one complete training state and returns its step. Throws an error naming
// the folder and what is wrong: a missing file, a trainer_state.json that is not ours, a step that
// differs between trainer_state.json, model.safetensors, optimizer.safetensors and the folder's name
// (files of two saves mixed).
inline int64_t verify_state(const std::filesystem::path& dir) {
  namespace fs = std::filesystem;
  for (const char* f : {"trainer_state.json", "model.safetensors", "optimizer.safetensors", "config.json",
                        "preprocessor_config.json"})
    SEGML_CHECK(fs::is_regular_file(dir / f), "training state '", dir.string(), "' is incomplete: no ", f);
  const std::string where = (dir / "trainer_state.json").string();
  const nlohmann::json state = segml::detail::read_json_file(dir / "trainer_state.json", "trainer state");
  SEGML_CHECK(state.is_object(), "'", where, "' is not a trainer state (expected a JSON object)");
  if (state.value("format", "") == kTrainerStateFormat)  // segml <= version 2: its own layout
    fail("'", where, "' is a trainer state of an older segml (format version ", state.value("version", 0),
         "); this build reads HF's TrainerState layout (version ", kTrainerStateVersion,
         ") and cannot continue it exactly. Start a new run from its weights with --model ", dir.string());
  SEGML_CHECK(state.contains("global_step") && state["global_step"].is_number_integer() && state.contains("segml") &&
                  state["segml"].is_object() && state["segml"].value("format", "") == kTrainerStateFormat,
              "'", where, "' is not a segml trainer state (expected an integer \"global_step\" and \"segml\": {\"format\": \"",
              kTrainerStateFormat, "\", ...}; a Python Trainer's checkpoint holds no segml optimizer state)");
  SEGML_CHECK(state["segml"].value("version", 0) == kTrainerStateVersion, "'", where, "' has format version ",
              state["segml"].value("version", 0), ", this build reads version ", kTrainerStateVersion);
  const int64_t step = state["global_step"].get<int64_t>();
  const int64_t named = checkpoint_step(dir.filename().string());
  SEGML_CHECK(named < 0 || named == step, "training state '", dir.string(), "' is inconsistent: the folder is named for step ",
              named, " but its trainer_state.json is at step ", step);
  for (const char* f : {"model.safetensors", "optimizer.safetensors"}) {
    const std::map<std::string, std::string> meta = safetensors_metadata(dir / f);
    const auto it = meta.find("step");
    SEGML_CHECK(it != meta.end(), "training state '", dir.string(), "' is inconsistent: ", f,
                " records no step (not written with its trainer_state.json)");
    SEGML_CHECK(it->second == std::to_string(step), "training state '", dir.string(),
                "' is inconsistent: trainer_state.json is at step ", step, " but ", f, " was saved at step ",
                it->second, " (files of two saves are mixed)");
  }
  return step;
}

struct CheckpointRef {
  std::filesystem::path dir;
  int64_t step = 0;
};

// The checkpoint-<step> folders of a run folder, by increasing step (by name; not verified).
inline std::vector<CheckpointRef> list_checkpoints(const std::filesystem::path& run_dir) {
  namespace fs = std::filesystem;
  std::vector<CheckpointRef> out;
  std::error_code ec;
  if (!fs::is_directory(run_dir, ec)) return out;
  for (const fs::directory_entry& e : fs::directory_iterator(run_dir, ec)) {
    const int64_t step = checkpoint_step(e.path().filename().string());
    if (step >= 0 && e.is_directory(ec)) out.push_back({e.path(), step});
  }
  std::sort(out.begin(), out.end(), [](const CheckpointRef& a, const CheckpointRef& b) { return a.step < b.step; });
  return out;
}

// The complete state with the highest step in a run folder (verify_state passes), if any. The
// reasons other folders were passed over are appended to `skipped`.
inline std::optional<CheckpointRef> latest_checkpoint(const std::filesystem::path& run_dir,
                                                      std::vector<std::string>* skipped = nullptr) {
  const std::vector<CheckpointRef> all = list_checkpoints(run_dir);
  for (auto it = all.rbegin(); it != all.rend(); ++it) {
    try {
      verify_state(it->dir);
      return *it;
    } catch (const Error& e) {
      if (skipped) skipped->push_back(e.what());
    }
  }
  return std::nullopt;
}

// Where to resume from: `path` is a state folder (checkpoint-<step>/) or a run folder, which
// resumes from its latest complete state. run_dir is the run folder holding the state.
struct ResumePoint {
  std::filesystem::path state_dir, run_dir;
  int64_t step = 0;
  std::vector<std::string> passed_over;  // why newer checkpoint folders of run_dir were not taken
};

inline ResumePoint resolve_resume(const std::filesystem::path& path) {
  namespace fs = std::filesystem;
  SEGML_CHECK(fs::is_directory(path), "resume: '", path.string(), "' is not a folder (expected a run folder or one of its checkpoint-<step> folders)");
  if (fs::exists(path / "trainer_state.json")) {
    const int64_t step = verify_state(path);
    return {path, file::parent_of(path), step, {}};
  }
  std::vector<std::string> skipped;
  const std::optional<CheckpointRef> latest = latest_checkpoint(path, &skipped);
  if (!latest) {
    std::string why;
    for (const std::string& s : skipped) why += "\n  " + s;
    if (fs::exists(path / "resume" / "trainer_state.json"))
      why += "\n  '" + (path / "resume").string() + "' is a state of an older segml, which recorded no step in its " +
             "files and cannot be checked; start a new run from its weights with --model " + (path / "resume").string();
    fail("resume: '", path.string(), "' holds no complete training state (no checkpoint-<step>/ folder with ",
         "trainer_state.json, model.safetensors and optimizer.safetensors of one step)", why);
  }
  return {latest->dir, path, latest->step, skipped};
}

// Removes what interrupted saves left in a run folder: ".checkpoint-<step>.tmp-<pid>" and
// ".checkpoint-<step>.old-<pid>" folders and "<file>.tmp<pid>" files of segml's own file names,
// when process <pid> no longer runs. Returns what it removed.
inline std::vector<std::filesystem::path> clean_temporaries(const std::filesystem::path& run_dir) {
  namespace fs = std::filesystem;
  std::vector<fs::path> removed;
  std::error_code ec;
  if (!fs::is_directory(run_dir, ec)) return removed;
  auto pid_of = [](const std::string& digits) -> long {
    if (digits.empty() || digits.size() > 9) return -1;
    for (char c : digits)
      if (c < '0' || c > '9') return -1;
    return std::stol(digits);
  };
  static const char* const kOurFiles[] = {"train_log.jsonl", "training_curves.svg", "model.safetensors",
                                          "config.json", "preprocessor_config.json", "optimizer.safetensors",
                                          "trainer_state.json"};
  for (const fs::directory_entry& e : fs::directory_iterator(run_dir, ec)) {
    const std::string name = e.path().filename().string();
    long pid = -1;
    if (e.is_directory(ec) && name.rfind(".checkpoint-", 0) == 0) {
      for (const char* tag : {".tmp-", ".old-"}) {
        const size_t at = name.rfind(tag);
        if (at != std::string::npos && checkpoint_step(name.substr(1, at - 1)) >= 0) pid = pid_of(name.substr(at + 5));
      }
    } else if (e.is_regular_file(ec)) {
      for (const char* f : kOurFiles) {
        const std::string prefix = std::string(f) + ".tmp";
        if (name.rfind(prefix, 0) == 0) pid = pid_of(name.substr(prefix.size()));
      }
    }
    if (pid < 0 || file::process_alive(pid)) continue;
    // Killed while replacing checkpoint-<step>: the old one was moved aside and the new one not yet
    // in place, so put the old one back.
    const size_t old_at = name.rfind(".old-");
    if (e.is_directory(ec) && old_at != std::string::npos) {
      const fs::path original = run_dir / name.substr(1, old_at - 1);
      if (!fs::exists(original, ec)) {
        fs::rename(e.path(), original, ec);
        if (!ec) continue;
      }
    }
    fs::remove_all(e.path(), ec);
    if (!ec) removed.push_back(e.path());
  }
  return removed;
}

// Deletes the oldest checkpoint-<step> folders of a run folder until at most `keep` remain, never
// the ones at `protect_step` or `protect_too` (the best checkpoint; HF's rule). Returns what it deleted.
inline std::vector<std::filesystem::path> rotate_checkpoints(const std::filesystem::path& run_dir, int64_t keep,
                                                             int64_t protect_step, int64_t protect_too = -1) {
  std::vector<std::filesystem::path> removed;
  if (keep <= 0) return removed;
  std::vector<CheckpointRef> all = list_checkpoints(run_dir);
  for (size_t i = 0; i < all.size() && static_cast<int64_t>(all.size() - removed.size()) > keep; ++i) {
    if (all[i].step == protect_step || all[i].step == protect_too) continue;
    file::remove_folder(all[i].dir);
    removed.push_back(all[i].dir);
  }
  return removed;
}

class Trainer {
 public:
  using Model = SegformerForSemanticSegmentation<float>;

  // `processor` gives the normalisation and, for evaluation, the resize size; it is saved with
  // every checkpoint. `val` may be empty (no evaluation).
  Trainer(Model& model, SegformerImageProcessor processor, SegmentationDataset train,
          std::optional<SegmentationDataset> val, TrainOptions opt)
      : model_(model), processor_(std::move(processor)), train_(std::move(train)), val_(std::move(val)),
        opt_(std::move(opt)) {
    SEGML_CHECK(opt_.per_device_train_batch_size >= 1 && opt_.gradient_accumulation_steps >= 1,
                "Trainer: per_device_train_batch_size and gradient_accumulation_steps must be >= 1");
    SEGML_CHECK(opt_.max_steps > 0 || opt_.num_train_epochs > 0, "Trainer: give max_steps or num_train_epochs");
    SEGML_CHECK(opt_.adam_beta1 >= 0 && opt_.adam_beta1 < 1 && opt_.adam_beta2 >= 0 && opt_.adam_beta2 < 1,
                "Trainer: adam_beta1 and adam_beta2 must be in [0, 1), got ", opt_.adam_beta1, " and ", opt_.adam_beta2);
    {
      const std::string key = opt_.best_metric_key();
      SEGML_CHECK(key.empty() || key == "eval_loss" || key == "eval_mean_iou" || key == "eval_mean_accuracy" ||
                      key == "eval_overall_accuracy",
                  "Trainer: metric_for_best_model '", opt_.metric_for_best_model,
                  "' is not a metric of this trainer (loss, mean_iou, mean_accuracy, overall_accuracy, with or without eval_)");
    }
    SEGML_CHECK(train_.size() > 0, "Trainer: the training split is empty");
    SEGML_CHECK(opt_.optimizer == "adamw" || opt_.optimizer == "sgd", "Trainer: unknown optimizer '", opt_.optimizer,
                "' (adamw or sgd)");
    const int64_t labels = static_cast<int64_t>(train::class_names(train_.id2label(), opt_.reduce_labels).size());
    SEGML_CHECK(model_.config.num_labels == labels, "Trainer: the model has ", model_.config.num_labels,
                " labels but the dataset has ", labels);
    if (opt_.communicator && opt_.communicator->size() > 1) {
      comm_ = opt_.communicator;
      world_ = comm_->size();
      rank_ = comm_->rank();
      if (rank_ != 0) opt_.verbose = false;  // rank 0 alone prints
    }
    // A global micro-batch is per_device_train_batch_size images on each process.
    const int64_t global_batch = opt_.per_device_train_batch_size * world_;
    batches_per_epoch_ = (static_cast<int64_t>(train_.size()) + global_batch - 1) / global_batch;
    // HF: num_update_steps_per_epoch = max(1, batches // accumulation); steps = ceil(epochs * that).
    total_steps_ = opt_.total_steps(std::max<int64_t>(1, batches_per_epoch_ / opt_.gradient_accumulation_steps));
    schedule_.kind = opt_.lr_scheduler_type;
    schedule_.base_lr = opt_.learning_rate;
    schedule_.total_steps = total_steps_;
    schedule_.warmup_steps = opt_.warmup_for(total_steps_);
    schedule_.lr(0);  // validates the kind
    build_optimizer();
    if (comm_) setup_data_parallel();
  }

  ~Trainer() {
    reducer_.reset();  // removes its hooks from the parameters
    for (nn::BatchNorm2d<float>* bn : model_.batch_norms()) bn->sync = {};
  }
  Trainer(const Trainer&) = delete;
  Trainer& operator=(const Trainer&) = delete;

  // Data-parallel training: the processes (1 without a communicator) and this one's rank.
  int world_size() const { return world_; }
  int rank() const { return rank_; }
  // Global micro-batches per epoch: ceil(training images / (per_device_train_batch_size x processes)).
  int64_t batches_per_epoch() const { return batches_per_epoch_; }
  // Images per optimizer step over every process.
  int64_t global_batch_size() const {
    return opt_.per_device_train_batch_size * world_ * opt_.gradient_accumulation_steps;
  }
  // The gradient reduction's measurements (null without data parallelism).
  const distributed::GradientReducer* reducer() const { return reducer_.get(); }

  int64_t total_steps() const { return total_steps_; }
  int64_t step() const { return step_; }
  const std::vector<StepRecord>& history() const { return history_; }
  const std::vector<EvalRecord>& evals() const { return evals_; }
  const TrainOptions& options() const { return opt_; }
  void set_eval_every(int64_t n) { opt_.eval_steps = n; }
  int64_t warmup_steps() const { return schedule_.warmup_steps; }
  // The best evaluation so far by metric_for_best_model (step -1: none, or no metric).
  int64_t best_step() const { return best_step_; }
  double best_metric() const { return best_metric_; }
  // What the model card says about where the run came from (the program sets them).
  std::string base_model, dataset_name;
  std::vector<std::string> class_names() const { return train::class_names(train_.id2label(), opt_.reduce_labels); }

  // Called after every step (e.g. to request a stop in tests).
  std::function<void(const StepRecord&)> on_step;
  // Called after each file of a state is written, before the state is published (tests use it to
  // widen the window in which a kill lands inside a save).
  std::function<void(const std::string& file)> on_state_file;

  bool finished() const { return step_ >= total_steps_; }

  // Trains until total_steps() or until *stop becomes true (checked after each step). Returns true
  // when finished (final evaluation, checkpoint-<last step>, final model in output_dir), false when
  // stopped (checkpoint-<step> saved). A Trainer that load_state() left at its last step trains
  // nothing: it only makes sure output_dir holds that step's final model.
  //
  // Data-parallel (a communicator of N > 1 processes): every process calls run(); rank 0 alone
  // prints and writes files. With abort_on_error, an exception on any process is printed with its
  // rank and ends the whole job (Communicator::abort) instead of returning.
  bool run(const std::atomic<bool>* stop = nullptr) {
    if (!comm_ || !opt_.abort_on_error) return run_steps(stop);
    try {
      return run_steps(stop);
    } catch (const std::exception& e) {
      abort_job(e.what());
    }
  }

  // Prints "rank r of N failed: what" and ends every process of the job.
  [[noreturn]] void abort_job(const std::string& what) const {
    std::fprintf(stderr, "\nsegml: rank %d of %d failed: %s\nsegml: ending every process of the job\n", rank_, world_,
                 what.c_str());
    std::fflush(stderr);
    std::fflush(stdout);
    comm_->abort(1);
    std::abort();  // abort() does not return
  }

 private:
  bool run_steps(const std::atomic<bool>* stop) {
    namespace fs = std::filesystem;
    const fs::path out(opt_.output_dir);
    const bool main = rank_ == 0;
    std::ofstream log;
    if (main) {
      fs::create_directories(out);
      for (const fs::path& p : clean_temporaries(out))
        if (opt_.verbose) std::printf("Removed %s (left by an interrupted save)\n", p.string().c_str());
      // Checkpoints after the step we start from belong to an abandoned continuation: the run goes on
      // from step_, so they would be mixed with the new ones (and the log is rewritten up to step_).
      for (const CheckpointRef& c : list_checkpoints(out))
        if (c.step > step_) {
          if (opt_.verbose)
            std::printf("Removing %s: it is after step %lld, where this run continues\n", c.dir.string().c_str(),
                        static_cast<long long>(step_));
          file::remove_folder(c.dir);
        }
      write_log_up_to_now();
      log.open(out / "train_log.jsonl", std::ios::app);
      if (!log) fail("cannot open '", (out / "train_log.jsonl").string(), "' for appending");
    }
    if (finished()) {
      char need = 0;
      if (main)
        need = !fs::exists(out / "model.safetensors") || safetensors_metadata(out / "model.safetensors").count("step") == 0 ||
               safetensors_metadata(out / "model.safetensors").at("step") != std::to_string(step_) ||
               !fs::exists(out / "README.md");
      if (comm_) comm_->broadcast(&need, 1, 0);
      if (need)
        finish();
      else if (main)
        write_curves();
      return true;
    }
    if (main && step_ > 0) write_curves();
    if (opt_.verbose && comm_)
      std::printf("Data-parallel: %s; %lld image(s) per process x %d processes x %lld accumulation = global batch %lld; "
                  "BatchNorm %s; gradients summed in %lld bucket(s) of <= %.0f MB\n",
                  job_description_.c_str(), static_cast<long long>(opt_.per_device_train_batch_size), world_,
                  static_cast<long long>(opt_.gradient_accumulation_steps), static_cast<long long>(global_batch_size()),
                  opt_.sync_bn ? "synchronised (SyncBN)" : "per process (--no-sync-bn)",
                  static_cast<long long>(reducer_->bucket_count()), opt_.bucket_cap_mb);
    const bool tty = isatty(fileno(stdout));
    Prefetcher<Batch> data([this](int64_t m) { return make_batch(m); }, step_ * opt_.gradient_accumulation_steps,
                           static_cast<int>(std::max<int64_t>(1, opt_.dataloader_num_workers)),
                           std::max<int64_t>(4, 2 * opt_.gradient_accumulation_steps));
    model_.train();
    double step_seconds = 0;  // moving average, for the ETA
    while (step_ < total_steps_) {
      const auto t0 = std::chrono::steady_clock::now();
      const double lr = schedule_.lr(step_);
      // Without SyncBN each process's running statistics would drift apart: like torch DDP
      // (broadcast_buffers), every process starts the step with rank 0's buffers.
      if (comm_ && !opt_.sync_bn) distributed::broadcast_tensors(*comm_, model_tensors(false, true));
      double loss_sum = 0;
      int64_t images = 0, epoch = 0;
      for (int64_t a = 0; a < opt_.gradient_accumulation_steps; ++a) {
        const Batch b = data.next();
        epoch = b.epoch;
        if (reducer_ && a + 1 == opt_.gradient_accumulation_steps) reducer_->arm();
        // Dropout and drop-path draw from a stream of (seed, micro-batch) made for the whole global
        // micro-batch, each process keeping its images' part: the same masks for any number of
        // processes (and a process without images stays in step with the others).
        model_.generator().set_state({sample_seed(opt_.seed, step_ * opt_.gradient_accumulation_steps + a, -2), 0});
        if (comm_) model_.generator().set_batch_slice(b.global_first, b.global_images);
        loss_sum += comm_ ? micro_step_data_parallel(b) : micro_step(b);
        model_.generator().set_batch_slice(0, 0);
        images += b.global_images;
      }
      if (reducer_) reducer_->finish();
      const double norm = opt_.max_grad_norm > 0 ? clip_grad_norm(params_, opt_.max_grad_norm) : grad_norm(params_);
      optimizer_->step(lr);
      optimizer_->zero_grad();
      check_finite(step_ + 1);
      ++step_;
      if (comm_ && opt_.check_replicas)
        distributed::check_replicas(*comm_, state_tensors(), "after step " + std::to_string(step_));
      const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      step_seconds = step_ == 1 ? seconds : 0.9 * step_seconds + 0.1 * seconds;
      const double ips = seconds > 0 ? double(images) / seconds : 0.0;
      StepRecord rec{step_, double(step_ * opt_.gradient_accumulation_steps) / double(batches_per_epoch_),
                     loss_sum / double(opt_.gradient_accumulation_steps), lr, std::isfinite(ips) ? ips : 0.0,
                     std::isfinite(norm) ? norm : 0.0};
      smoothed_loss_ = history_.empty() ? rec.loss : 0.95 * smoothed_loss_ + 0.05 * rec.loss;
      history_.push_back(rec);
      if (main) {
        log << step_json(rec).dump() << "\n";
        log.flush();
      }
      if (opt_.verbose) progress(rec, epoch, step_seconds, tty);
      if (on_step) on_step(rec);

      const bool last = step_ == total_steps_;
      bool evaluated = false;
      if (val_ && ((opt_.eval_steps > 0 && step_ % opt_.eval_steps == 0) || last)) {
        evaluate_now(log, tty);
        model_.train();
        evaluated = true;
      }
      bool stopping = !last && stop && stop->load();
      if (comm_ && !last) {  // any process asked to stop: all stop after this step
        double any = stopping ? 1.0 : 0.0;
        comm_->allreduce_sum(&any, 1);
        stopping = any > 0;
      }
      if (main && (last || stopping || (opt_.save_steps > 0 && step_ % opt_.save_steps == 0) ||
                   (evaluated && opt_.load_best_model_at_end)))
        save_checkpoint_state();
      if (stopping) {
        if (opt_.verbose && tty) std::printf("\n");
        if (main) write_curves();
        return false;
      }
    }
    if (opt_.verbose && tty) std::printf("\n");
    finish();
    return true;
  }

  // One micro-batch on one process: forward, HF's loss, backward of loss / accumulation steps.
  double micro_step(const Batch& b) {
    const SegformerOutput<float> out = model_.forward(Var<float>(b.pixel_values), &b.labels);
    const double loss = out.loss.data().data()[0];
    check_loss(loss);
    out.loss.backward(Tensor<float>::full(out.loss.shape(), 1.0f / static_cast<float>(opt_.gradient_accumulation_steps)));
    return loss;
  }

  // One micro-batch of a data-parallel step. HF's loss is the mean over every non-ignored pixel of
  // the (global) batch, so each process's mean, over its own n_r valid pixels, is weighted by
  // n_r / N (N: the count over every process, one small sum) before backward; the gradient sum
  // over the processes is then exactly the gradient of the global mean (DDP's average of per-process
  // means differs when the processes hold different numbers of valid pixels). A process without
  // images takes part in the sums (and in SyncBN's) with zeros.
  double micro_step_data_parallel(const Batch& b) {
    const std::vector<nn::BatchNorm2d<float>*> bns = model_.batch_norms();
    SegformerOutput<float> out;
    double valid = 0;         // this process's valid pixels
    double sums[2] = {0, 0};  // sum of pixel losses, valid pixels
    if (b.images() > 0) {
      out = model_.forward(Var<float>(b.pixel_values), &b.labels);
      valid = static_cast<double>(kernels::cross_entropy_count_valid(
          b.labels.data(), b.labels.numel(), model_.config.num_labels, model_.config.semantic_loss_ignore_index));
      sums[0] = double(out.loss.data().data()[0]) * valid;
      sums[1] = valid;
    } else {
      for (nn::BatchNorm2d<float>* bn : bns)
        if (bn->sync) bn->forward_without_data();
    }
    comm_->allreduce_sum(sums, 2);
    const double loss = sums[1] > 0 ? sums[0] / sums[1] : 0.0;
    check_loss(loss);
    if (b.images() > 0) {
      const double weight = sums[1] > 0 ? valid / sums[1] : 0.0;
      out.loss.backward(Tensor<float>::full(out.loss.shape(),
                                            static_cast<float>(weight / static_cast<double>(opt_.gradient_accumulation_steps))));
    } else {
      for (auto it = bns.rbegin(); it != bns.rend(); ++it)
        if ((*it)->sync) (*it)->backward_without_data();
    }
    return loss;
  }

  void check_loss(double loss) const {
    SEGML_CHECK(std::isfinite(loss), "Trainer: the loss is ", loss, " at step ", step_ + 1,
                " (diverged: lower --learning_rate or --max_grad_norm); nothing of this step was saved");
  }

  // Data parallelism: every process starts from rank 0's weights (and buffers), BatchNorm is
  // synchronised (unless sync_bn is false), the gradient reducer hooks the parameters. Its own
  // channels keep the BatchNorm and gradient sums independent of each other and of the loss sums.
  void setup_data_parallel() {
    SEGML_CHECK(opt_.bucket_cap_mb > 0, "Trainer: bucket_cap_mb must be > 0, got ", opt_.bucket_cap_mb);
    distributed::broadcast_tensors(*comm_, model_tensors(true, true));
    job_description_ = comm_->describe();  // a collective: every process asks
    grad_comm_ = comm_->duplicate();
    bn_comm_ = comm_->duplicate();
    reducer_ = std::make_unique<distributed::GradientReducer>(grad_comm_, params_,
                                                               static_cast<int64_t>(opt_.bucket_cap_mb * 1024 * 1024));
    if (opt_.sync_bn)
      for (nn::BatchNorm2d<float>* bn : model_.batch_norms())
        bn->sync = [c = bn_comm_](double* data, int64_t n) { c->allreduce_sum(data, n); };
  }

  // The model's parameters and / or buffers, in visit() order (what is broadcast or checksummed).
  std::vector<Tensor<float>*> model_tensors(bool parameters, bool buffers) const {
    std::vector<Tensor<float>*> all;
    nn::Visitor<float> v;
    v.parameter = [&](const std::string&, Var<float>& p) {
      if (parameters) all.push_back(&p.data());
    };
    v.buffer = [&](const std::string&, Tensor<float>& t) {
      if (buffers) all.push_back(&t);
    };
    model_.visit(v);
    return all;
  }
  // Every parameter and buffer, for the replica checksum.
  std::vector<const Tensor<float>*> state_tensors() const {
    const std::vector<Tensor<float>*> all = model_tensors(true, true);
    return {all.begin(), all.end()};
  }

 public:

  // The end of a run: the final model in output_dir (the best checkpoint's weights with
  // load_best_model_at_end), the curves, the model card and its sample overlay.
  // Data-parallel: rank 0 reads the best checkpoint and sends it to the others, and writes alone.
  void finish() {
    namespace fs = std::filesystem;
    int64_t weights_step = step_;
    if (opt_.load_best_model_at_end && best_step_ >= 0 && best_step_ != step_) {
      const fs::path best = fs::path(opt_.output_dir) / ("checkpoint-" + std::to_string(best_step_));
      if (rank_ == 0) {
        const LoadReport r = load_state_dict(model_, {(best / "model.safetensors").string()});
        SEGML_CHECK(r.clean(), "Trainer: the best checkpoint does not match the model\n", r.str(best.string()));
      }
      if (comm_) distributed::broadcast_tensors(*comm_, model_tensors(true, true));
      weights_step = best_step_;
      if (opt_.verbose)
        std::printf("Loading the best model from %s (%s %.6g) into %s\n", best.string().c_str(),
                    opt_.best_metric_key().c_str(), best_metric_, opt_.output_dir.c_str());
    }
    if (rank_ != 0) return;
    save_checkpoint(opt_.output_dir, weights_step);
    write_curves();
    write_model_card();
  }

  // Writes an HF checkpoint folder (config.json with the dataset's labels, model.safetensors with
  // the step in its metadata, preprocessor_config.json); each file atomically.
  // `weights_step` (metadata "weights_step") is the step the weights are from, when they are a
  // best checkpoint's rather than the current step's.
  void save_checkpoint(const std::string& dir, int64_t weights_step = -1) {
    namespace fs = std::filesystem;
    check_finite(step_);
    fs::create_directories(dir);
    write_model_files(dir, /*durable_each=*/true, weights_step < 0 ? step_ : weights_step);
  }

  // Saves the complete training state as the folder `dir` (normally output_dir/checkpoint-<step>):
  // written into a temporary sibling ".<name>.tmp-<pid>", fsynced, published with one rename. An
  // existing `dir` is replaced. Refuses (throws) when a parameter or buffer is not finite.
  void save_state(const std::string& dir) {
    namespace fs = std::filesystem;
    check_finite(step_);
    const fs::path final_dir(dir);
    fs::create_directories(file::parent_of(final_dir));
    const fs::path tmp = file::parent_of(final_dir) / ("." + final_dir.filename().string() + ".tmp-" + std::to_string(::getpid()));
    fs::remove_all(tmp);
    fs::create_directories(tmp);
    write_model_files(tmp.string(), /*durable_each=*/false);
    std::map<std::string, safetensors::Entry> entries;
    for (const auto& [name, t] : optimizer_->state()) entries[name] = safetensors::make_entry(t);
    write_plain(tmp / "optimizer.safetensors", safetensors::serialize(entries, {{"step", std::to_string(step_)}}));
    const nlohmann::json state = state_json();
    const std::string text = state.dump(1) + "\n";
    write_plain(tmp / "trainer_state.json", std::vector<char>(text.begin(), text.end()));
    file::publish_folder(tmp, final_dir);
  }

  // Restores a state written by save_state() (weights, optimizer, RNG, step, history, evaluations)
  // after verify_state(); remembers where it came from. The options that decide the arithmetic of
  // the finished steps (batch size, lr, optimizer, schedule, seed, crop, ...) must equal the saved
  // ones; the number of steps may grow (the schedule then spans the new total).
  void load_state(const std::string& dir) {
    namespace fs = std::filesystem;
    const int64_t step = verify_state(dir);
    const nlohmann::json hf = segml::detail::read_json_file(fs::path(dir) / "trainer_state.json", "trainer state");
    const nlohmann::json& state = hf.at("segml");
    check_same_arithmetic(TrainOptions::from_json(state.at("options")), dir);
    SEGML_CHECK(step <= total_steps_, "Trainer::load_state: '", dir, "' is at step ", step,
                " but these options train only ", total_steps_, " steps in total");
    const int saved_world = state.value("world_size", 1);
    SEGML_CHECK(saved_world == world_, "Trainer::load_state: '", dir, "' was trained by ", saved_world,
                saved_world == 1 ? " process" : " processes", " (global batch ",
                opt_.per_device_train_batch_size * saved_world * opt_.gradient_accumulation_steps, ") but this run has ",
                world_, world_ == 1 ? " process" : " processes", " (global batch ", global_batch_size(),
                "); an exact resume needs the same number of processes (start them with mpirun -np ", saved_world, ")");
    const LoadReport r = load_state_dict(model_, {(fs::path(dir) / "model.safetensors").string()});
    SEGML_CHECK(r.clean(), "Trainer::load_state: the saved model does not match\n", r.str(dir));
    const safetensors::File opt_file((fs::path(dir) / "optimizer.safetensors").string());
    optimizer_->state().clear();
    for (const std::string& name : opt_file.names()) optimizer_->state()[name] = opt_file.get<float>(name);
    optimizer_->set_steps(state.at("optimizer_steps").get<int64_t>());
    model_.generator().set_state({state.at("generator").at("seed").get<uint64_t>(), state.at("generator").at("offset").get<uint64_t>()});
    step_ = step;
    smoothed_loss_ = state.at("smoothed_loss").get<double>();
    history_.clear();
    for (const auto& h : state.at("history"))
      history_.push_back({h[0].get<int64_t>(), h[1].get<double>(), h[2].get<double>(), h[3].get<double>(),
                          h[4].get<double>(), h[5].get<double>()});
    evals_.clear();
    for (const auto& e : state.at("evals"))
      evals_.push_back({e.at("step").get<int64_t>(), metrics_from_json(e.at("eval")),
                        e.at("loss").is_null() ? double(NAN) : e.at("loss").get<double>(), e.at("seconds").get<double>(),
                        e.at("images").get<int64_t>()});
    std::erase_if(history_, [&](const StepRecord& h) { return h.step > step_; });
    std::erase_if(evals_, [&](const EvalRecord& e) { return e.step > step_; });
    best_step_ = -1;
    for (const EvalRecord& e : evals_) track_best(e);
    saved_threads_ = state.value("threads", 0);
    // Every process read the same state (the same folder, on a shared file system): prove it.
    if (comm_) distributed::check_replicas(*comm_, state_tensors(), "resuming from '" + dir + "'");
  }

  // The thread count the loaded state was trained with (0 when unknown or nothing was loaded).
  int saved_threads() const { return saved_threads_; }

  // train_log.jsonl as it stands after step(): every step record, each evaluation after its step.
  std::string log_text() const {
    std::string text;
    size_t e = 0;
    for (const StepRecord& h : history_) {
      for (; e < evals_.size() && evals_[e].step < h.step; ++e) text += eval_json(evals_[e]).dump() + "\n";
      text += step_json(h).dump() + "\n";
      for (; e < evals_.size() && evals_[e].step == h.step; ++e) text += eval_json(evals_[e]).dump() + "\n";
    }
    for (; e < evals_.size(); ++e) text += eval_json(evals_[e]).dump() + "\n";
    return text;
  }

  // This process's part of the micro-batch at global position m (a pure function of m, the options
  // and the rank). Like torch's DistributedSampler, but without its padding: the epoch's shuffle
  // (seeded by seed and epoch) is the same on every process; global micro-batch j of the epoch is
  // positions [j G, j G + G) of it, G = per_device_train_batch_size x processes, and each process
  // takes its contiguous share (distributed::shard). The epoch's last global micro-batch may be
  // smaller, and a process may then have no image: it still takes part in the step.
  Batch make_batch(int64_t m) const {
    const int64_t epoch = m / batches_per_epoch_;
    std::vector<Example> ex;
    for (int64_t index : batch_indices(m)) ex.push_back(make_example(index, epoch));
    Batch b = stack(ex, epoch);
    const distributed::Shard all = global_micro_batch(m);
    b.global_images = all.size();
    b.global_first = distributed::shard(all.begin, all.size(), rank_, world_).begin - all.begin;
    return b;
  }

  // Positions [begin, end) in its epoch's shuffle of the global micro-batch m (every process's images).
  distributed::Shard global_micro_batch(int64_t m) const {
    const int64_t n = static_cast<int64_t>(train_.size()), G = opt_.per_device_train_batch_size * world_;
    const int64_t begin = (m % batches_per_epoch_) * G;
    return {begin, std::min(n, begin + G)};
  }

  // The dataset indices of this process's part of the micro-batch at global position m.
  std::vector<int64_t> batch_indices(int64_t m) const {
    const std::vector<int64_t> order = epoch_order(m / batches_per_epoch_);
    const distributed::Shard all = global_micro_batch(m);
    const distributed::Shard mine = distributed::shard(all.begin, all.size(), rank_, world_);
    return std::vector<int64_t>(order.begin() + mine.begin, order.begin() + mine.end);
  }

  // Examples of one size as one batch (no examples: an empty batch).
  static Batch stack(const std::vector<Example>& ex, int64_t epoch) {
    Batch b;
    b.epoch = epoch;
    b.global_images = static_cast<int64_t>(ex.size());
    if (ex.empty()) return b;
    const int64_t B = static_cast<int64_t>(ex.size()), H = ex[0].labels.size(0), W = ex[0].labels.size(1);
    b.pixel_values = Tensor<float>::empty({B, 3, H, W});
    b.labels = Tensor<int64_t>::empty({B, H, W});
    for (int64_t i = 0; i < B; ++i) {
      std::copy_n(ex[static_cast<size_t>(i)].pixel_values.data(), 3 * H * W, b.pixel_values.data() + i * 3 * H * W);
      std::copy_n(ex[static_cast<size_t>(i)].labels.data(), H * W, b.labels.data() + i * H * W);
    }
    return b;
  }

  // Example `index` of the training split as seen in `epoch`.
  Example make_example(int64_t index, int64_t epoch) const {
    Sample s = train_.load(static_cast<size_t>(index));
    if (opt_.reduce_labels) s.label = reduce_labels(std::move(s.label));
    if (!opt_.augment) return plain_resize(s.rgb, s.label, processor_);
    AugmentOptions a;
    a.crop_height = opt_.crop_height;
    a.crop_width = opt_.crop_width;
    return augment(s.rgb, s.label, processor_, a, sample_seed(opt_.seed, epoch, index));
  }

  // Runs the validation split now (metrics and eval_loss); logs, tracks the best, returns the result.
  EvalRecord evaluate_now(std::ostream& log, bool tty) {
    EvalOptions eo;
    eo.reduce_labels = opt_.reduce_labels;
    eo.batch_size = opt_.per_device_eval_batch_size;
    if (comm_) {  // each process evaluates every world_-th batch; the counts are summed exactly
      eo.shard_rank = rank_;
      eo.shard_count = world_;
      eo.sum_over_processes = [c = comm_](double* data, int64_t n) { c->allreduce_sum(data, n); };
    }
    const auto t0 = std::chrono::steady_clock::now();
    const EvalResult r = evaluate_dataset(model_, *val_, processor_, eo);
    EvalRecord rec{step_, r.metrics, eval_loss(), 0.0, r.images};
    rec.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    evals_.push_back(rec);
    track_best(rec);
    if (rank_ == 0) {
      log << eval_json(rec).dump() << "\n";
      log.flush();
    }
    if (opt_.verbose)
      std::printf("%seval @ step %lld: loss %.4f  mean IoU %.4f  mean accuracy %.4f  overall accuracy %.4f  (%lld images, %.1f s)\n",
                  tty ? "\r\033[K" : "", static_cast<long long>(step_), rec.loss, r.metrics.mean_iou,
                  r.metrics.mean_accuracy, r.metrics.overall_accuracy, static_cast<long long>(r.images), rec.seconds);
    return rec;
  }

  // HF's eval_loss: the model's loss (cross-entropy, ignore 255) over the val split, each image
  // resized with its label (nearest) to the processor's size as in training without augmentation,
  // averaged over batches of per_device_eval_batch_size. Leaves the model in eval mode.
  // Data-parallel: process r takes the batches k with k % processes == r; the sums are added.
  double eval_loss() {
    model_.eval();
    NoGradGuard no_grad;
    double sums[2] = {0, 0};  // losses, batches
    const int64_t n = static_cast<int64_t>(val_->size()), B = opt_.per_device_eval_batch_size;
    int64_t k = -1;
    for (int64_t first = 0; first < n; first += B) {
      if (++k % world_ != rank_) continue;
      const int64_t last = std::min(n, first + B);
      std::vector<Example> ex;
      for (int64_t i = first; i < last; ++i) {
        Sample s = val_->load(static_cast<size_t>(i));
        if (opt_.reduce_labels) s.label = reduce_labels(std::move(s.label));
        ex.push_back(plain_resize(s.rgb, s.label, processor_));
      }
      const Batch b = stack(ex, 0);
      const SegformerOutput<float> out = model_.forward(Var<float>(b.pixel_values), &b.labels);
      sums[0] += out.loss.data().data()[0];
      sums[1] += 1;
    }
    if (comm_) comm_->allreduce_sum(sums, 2);
    return sums[1] > 0 ? sums[0] / sums[1] : double(NAN);
  }

  // The value of metric_for_best_model in an evaluation.
  double metric_of(const EvalRecord& e) const {
    const std::string key = opt_.best_metric_key();
    if (key == "eval_loss") return e.loss;
    if (key == "eval_mean_accuracy") return e.metrics.mean_accuracy;
    if (key == "eval_overall_accuracy") return e.metrics.overall_accuracy;
    return e.metrics.mean_iou;
  }

  void write_curves() const {
    Series loss{"training loss", {}, {}, "#1f77b4", false, false};
    Series smooth{"training loss (smoothed)", {}, {}, "#0b3d91", false, false};
    Series miou{"val mean IoU", {}, {}, "#d62728", true, true};
    double ema = 0;
    for (size_t i = 0; i < history_.size(); ++i) {
      ema = i == 0 ? history_[i].loss : 0.95 * ema + 0.05 * history_[i].loss;
      loss.x.push_back(double(history_[i].step)), loss.y.push_back(history_[i].loss);
      smooth.x.push_back(double(history_[i].step)), smooth.y.push_back(ema);
    }
    for (const EvalRecord& e : evals_) miou.x.push_back(double(e.step)), miou.y.push_back(e.metrics.mean_iou);
    Series lr{"learning rate", {}, {}, "#2ca02c", false, false};
    for (const StepRecord& r : history_) lr.x.push_back(double(r.step)), lr.y.push_back(r.lr);
    std::vector<Series> series{loss, smooth};
    if (!evals_.empty()) series.push_back(miou);
    const std::string svg = line_plot_svg("SegFormer fine-tuning: training loss and validation mean IoU", "step",
                                          "cross-entropy loss", evals_.empty() ? "" : "val mean IoU", series, {lr},
                                          "learning rate");
    safetensors::write_file_atomic((std::filesystem::path(opt_.output_dir) / "training_curves.svg").string(),
                                   std::vector<char>(svg.begin(), svg.end()));
  }

 private:
  static nlohmann::json step_json(const StepRecord& r) {
    return {{"step", r.step}, {"epoch", r.epoch}, {"loss", r.loss}, {"lr", r.lr}, {"grad_norm", r.grad_norm},
            {"images_per_s", r.images_per_s}};
  }
  static nlohmann::json eval_json(const EvalRecord& e) {
    nlohmann::json m = metrics_json(e.metrics);
    m["loss"] = e.loss;
    return {{"step", e.step}, {"eval", m}};
  }
  static MeanIoU metrics_from_json(const nlohmann::json& j) {
    auto num = [](const nlohmann::json& v) { return v.is_null() ? double(NAN) : v.get<double>(); };
    MeanIoU m;
    m.mean_iou = num(j.at("mean_iou"));
    m.mean_accuracy = num(j.value("mean_accuracy", nlohmann::json()));
    m.overall_accuracy = num(j.value("overall_accuracy", nlohmann::json()));
    for (const auto& v : j.value("per_category_iou", nlohmann::json::array())) m.per_category_iou.push_back(num(v));
    for (const auto& v : j.value("per_category_accuracy", nlohmann::json::array()))
      m.per_category_accuracy.push_back(num(v));
    return m;
  }

  // train_log.jsonl rewritten (atomically) to what the state holds: exactly the steps up to step_.
  void write_log_up_to_now() const {
    const std::string text = log_text();
    safetensors::write_file_atomic((std::filesystem::path(opt_.output_dir) / "train_log.jsonl").string(),
                                   std::vector<char>(text.begin(), text.end()));
  }

  // checkpoint-<step> in output_dir, then the save_total_limit rotation (after it is published).
  void save_checkpoint_state() {
    namespace fs = std::filesystem;
    const fs::path out(opt_.output_dir);
    save_state((out / ("checkpoint-" + std::to_string(step_))).string());
    for (const fs::path& p : rotate_checkpoints(out, opt_.save_total_limit, step_, best_step_))
      if (opt_.verbose) std::printf("%sRemoved %s (save_total_limit %lld)\n", isatty(fileno(stdout)) ? "\r\033[K" : "",
                                    p.string().c_str(), static_cast<long long>(opt_.save_total_limit));
  }

  // A file of a state being assembled in its private temporary folder (made durable when published).
  void write_plain(const std::filesystem::path& path, const std::vector<char>& bytes) const {
    {
      std::ofstream f(path, std::ios::binary | std::ios::trunc);
      if (!f) fail("cannot open '", path.string(), "' for writing");
      f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
      f.flush();
      if (!f) fail("writing '", path.string(), "' failed (disk full?)");
    }
    if (on_state_file) on_state_file(path.filename().string());
  }

  // config.json, model.safetensors (metadata: format pt, step), preprocessor_config.json.
  void write_model_files(const std::string& dir, bool durable_each, int64_t weights_step = -1) const {
    namespace fs = std::filesystem;
    auto write = [&](const char* name, const std::vector<char>& bytes) {
      if (durable_each)
        safetensors::write_file_atomic((fs::path(dir) / name).string(), bytes);
      else
        write_plain(fs::path(dir) / name, bytes);
    };
    write("model.safetensors",
          safetensors::serialize(state_dict_entries(model_),
                                {{"format", "pt"},
                                 {"step", std::to_string(step_)},
                                 {"weights_step", std::to_string(weights_step < 0 ? step_ : weights_step)}}));
    SegformerConfig config = model_.config;
    config.extra["architectures"] = {"SegformerForSemanticSegmentation"};
    config.validate((fs::path(dir) / "config.json").string());
    const std::string cfg = config.to_json().dump(2) + "\n";
    write("config.json", std::vector<char>(cfg.begin(), cfg.end()));
    const std::string proc = saved_processor().to_json().dump(2) + "\n";
    write("preprocessor_config.json", std::vector<char>(proc.begin(), proc.end()));
  }

  // Throws when a parameter or buffer holds NaN or Inf: names the step, the first such tensor and
  // how many of its elements, so a diverged run stops before anything non-finite is saved.
  void check_finite(int64_t step) const {
    const std::vector<NonFiniteTensor> bad = find_non_finite(model_);
    if (bad.empty()) return;
    fail("Trainer: the parameters are not finite after step ", step, ": '", bad[0].name, "' has ", bad[0].nan + bad[0].inf,
         " NaN/Inf of ", bad[0].numel, " elements",
         bad.size() > 1 ? " (and " + std::to_string(bad.size() - 1) + " more tensors)" : std::string(),
         ". Training stopped and this step was not saved (lower --learning_rate, check --momentum, or set --max_grad_norm)");
  }

  // Refuses to continue a state whose arithmetic options differ from ours.
  void check_same_arithmetic(const TrainOptions& saved, const std::string& dir) const {
    const nlohmann::json a = saved.to_json();
    for_each_option(opt_, [&](const OptionInfo& info, const auto& v) {
      if (info.on_resume != OnResume::keep || !a.contains(info.name)) return;
      const nlohmann::json now = v;
      SEGML_CHECK(a.at(info.name) == now, "Trainer::load_state: option '", info.name, "' is ", now.dump(),
                  " here but ", a.at(info.name).dump(), " in the saved run '", dir,
                  "'; it changes the arithmetic of the finished steps, so a resumed run must keep it");
    });
  }

  // After an evaluation: is it the best so far by metric_for_best_model (HF: strictly better)?
  void track_best(const EvalRecord& e) {
    if (opt_.best_metric_key().empty()) return;
    const double v = metric_of(e);
    if (std::isnan(v)) return;
    if (best_step_ < 0 || (opt_.greater_is_better() ? v > best_metric_ : v < best_metric_)) {
      best_step_ = e.step;
      best_metric_ = v;
    }
  }

  // trainer_state.json: HF's TrainerState fields, then segml's own under "segml".
  nlohmann::json state_json() const {
    namespace fs = std::filesystem;
    auto num = [](double v) { return std::isfinite(v) ? nlohmann::json(v) : nlohmann::json(nullptr); };
    nlohmann::json log_history = nlohmann::json::array();
    size_t e = 0;
    double loss_sum = 0;
    int64_t loss_n = 0;
    auto eval_entry = [&](const EvalRecord& r) {
      nlohmann::json j = {{"epoch", epoch_at(r.step)}, {"step", r.step}, {"eval_loss", num(r.loss)},
                          {"eval_mean_iou", num(r.metrics.mean_iou)}, {"eval_mean_accuracy", num(r.metrics.mean_accuracy)},
                          {"eval_overall_accuracy", num(r.metrics.overall_accuracy)},
                          {"eval_runtime", r.seconds},
                          {"eval_samples_per_second", r.seconds > 0 ? double(r.images) / r.seconds : 0.0}};
      const std::vector<std::string> names = class_names();
      for (size_t c = 0; c < r.metrics.per_category_iou.size(); ++c) {
        const std::string name = c < names.size() ? names[c] : std::to_string(c);
        j["eval_iou_" + name] = num(r.metrics.per_category_iou[c]);
      }
      log_history.push_back(j);
    };
    for (const StepRecord& h : history_) {
      loss_sum += h.loss, ++loss_n;
      if (h.step % opt_.logging_steps == 0 || h.step == total_steps_ || h.step == step_) {
        log_history.push_back({{"epoch", h.epoch}, {"grad_norm", num(h.grad_norm)}, {"learning_rate", h.lr},
                               {"loss", num(loss_sum / double(loss_n))}, {"step", h.step}});
        loss_sum = 0, loss_n = 0;
      }
      for (; e < evals_.size() && evals_[e].step <= h.step; ++e) eval_entry(evals_[e]);
    }
    for (; e < evals_.size(); ++e) eval_entry(evals_[e]);

    nlohmann::json hist = nlohmann::json::array(), ev = nlohmann::json::array();
    for (const StepRecord& r : history_) hist.push_back({r.step, r.epoch, r.loss, r.lr, r.images_per_s, r.grad_norm});
    for (const EvalRecord& r : evals_)
      ev.push_back({{"step", r.step}, {"eval", metrics_json(r.metrics)}, {"loss", r.loss}, {"seconds", r.seconds},
                    {"images", r.images}});
    const GeneratorState g = model_.generator().get_state();
    const bool has_best = best_step_ >= 0;
    return {{"best_global_step", has_best ? nlohmann::json(best_step_) : nlohmann::json(nullptr)},
            {"best_metric", has_best ? num(best_metric_) : nlohmann::json(nullptr)},
            {"best_model_checkpoint",
             has_best ? nlohmann::json((fs::path(opt_.output_dir) / ("checkpoint-" + std::to_string(best_step_))).string())
                      : nlohmann::json(nullptr)},
            {"epoch", epoch_at(step_)},
            {"eval_steps", opt_.eval_steps},
            {"global_step", step_},
            {"is_hyper_param_search", false},
            {"is_local_process_zero", rank_ == 0},
            {"is_world_process_zero", rank_ == 0},
            {"log_history", log_history},
            {"logging_steps", opt_.logging_steps},
            {"max_steps", total_steps_},
            {"num_input_tokens_seen", 0},
            {"num_train_epochs", static_cast<int64_t>(std::ceil(epoch_at(total_steps_) - 1e-9))},
            {"save_steps", opt_.save_steps},
            {"stateful_callbacks", nlohmann::json::object()},
            {"total_flos", 0},
            {"train_batch_size", opt_.per_device_train_batch_size},
            {"trial_name", nullptr},
            {"trial_params", nullptr},
            {"segml",
             {{"format", kTrainerStateFormat},
              {"version", kTrainerStateVersion},
              {"optimizer_steps", optimizer_->steps()},
              {"micro_batch", step_ * opt_.gradient_accumulation_steps},
              {"generator", {{"seed", g.seed}, {"offset", g.offset}}},
              {"smoothed_loss", smoothed_loss_},
              {"threads", num_threads()},
              {"world_size", world_},
              {"options", opt_.to_json()},
              {"history", hist},
              {"evals", ev}}}};
  }

  // Epochs of data consumed after `step` optimizer steps.
  double epoch_at(int64_t step) const {
    return double(step * opt_.gradient_accumulation_steps) / double(batches_per_epoch_);
  }

  // README.md (the model card) and sample_overlay.png in output_dir, each written atomically.
  void write_model_card() const {
    namespace fs = std::filesystem;
    const fs::path out(opt_.output_dir);
    ModelCard card;
    card.name = fs::path(opt_.output_dir).filename().string();
    if (card.name.empty()) card.name = fs::path(opt_.output_dir).parent_path().filename().string();
    card.base_model = base_model;
    card.dataset = dataset_name;
    card.options = opt_;
    card.total_steps = total_steps_;
    card.warmup_steps = schedule_.warmup_steps;
    card.class_names = class_names();
    for (const EvalRecord& e : evals_) {
      ModelCard::Row row;
      row.step = e.step;
      row.epoch = epoch_at(e.step);
      // HF's table: the mean training loss logged since the previous row ("No log" when none).
      double sum = 0;
      int64_t n = 0;
      const int64_t prev = card.rows.empty() ? 0 : card.rows.back().step;
      for (const StepRecord& h : history_)
        if (h.step > prev && h.step <= e.step) sum += h.loss, ++n;
      row.training_loss = n > 0 ? sum / double(n) : double(NAN);
      row.eval_loss = e.loss;
      row.metrics = e.metrics;
      card.rows.push_back(row);
    }
    if (best_step_ >= 0 && opt_.load_best_model_at_end)
      for (const EvalRecord& e : evals_)
        if (e.step == best_step_) card.final_row = card.rows[static_cast<size_t>(&e - evals_.data())];
    if (!card.final_row && !card.rows.empty()) card.final_row = card.rows.back();
    // The sample: the first val image (else the first training image) through the final model.
    const SegmentationDataset& ds = val_ ? *val_ : train_;
    const Sample s = ds.load(0);
    model_.eval();
    Tensor<int64_t> pred;
    {
      NoGradGuard no_grad;
      const SegformerOutput<float> o = model_.forward(Var<float>(processor_.preprocess({s.rgb})));
      pred = processor_.post_process_semantic_segmentation(o.logits.data(), {{s.rgb.height, s.rgb.width}})[0];
    }
    std::map<int64_t, std::string> names;
    for (size_t c = 0; c < card.class_names.size(); ++c) names[static_cast<int64_t>(c)] = card.class_names[c];
    card.sample_image = "sample_overlay.png";
    card.sample_source = ds.path_of(0).filename().string();
    save_png((out / card.sample_image).string(), add_legend(overlay(s.rgb, pred), class_histogram(pred), names));
    const std::string text = card.markdown();
    safetensors::write_file_atomic((out / "README.md").string(), std::vector<char>(text.begin(), text.end()));
  }

  SegformerImageProcessor saved_processor() const {
    SegformerImageProcessor p = processor_;
    p.do_reduce_labels = opt_.reduce_labels;
    return p;
  }

  // A seeded Fisher-Yates shuffle of the training split for `epoch`.
  std::vector<int64_t> epoch_order(int64_t epoch) const {
    const int64_t n = static_cast<int64_t>(train_.size());
    std::vector<int64_t> order(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) order[static_cast<size_t>(i)] = i;
    const Generator g(sample_seed(opt_.seed, epoch, -1));
    for (int64_t i = n; i > 1; --i) {
      const PhiloxBlock blk = g.block_at(static_cast<uint64_t>(i));
      const uint64_t r = (static_cast<uint64_t>(blk.w[0]) << 32) | blk.w[1];
      std::swap(order[static_cast<size_t>(i - 1)], order[static_cast<size_t>(r % static_cast<uint64_t>(i))]);
    }
    return order;
  }

  void build_optimizer() {
    // Up to four groups: (encoder | head) x (decay | no decay).
    std::vector<ParamGroup<float>> groups(4);
    for (int k = 0; k < 4; ++k) {
      groups[static_cast<size_t>(k)].lr_scale = (k & 1) ? opt_.head_lr_mult : 1.0;
      groups[static_cast<size_t>(k)].weight_decay = (k & 2) ? 0.0 : opt_.weight_decay;
    }
    nn::Visitor<float> v;
    v.parameter = [&](const std::string& name, Var<float>& p) {
      const bool head = name.rfind("decode_head.", 0) == 0;
      const bool norm_or_bias = name.find("layer_norm") != std::string::npos ||
                                name.find("batch_norm") != std::string::npos ||
                                name.ends_with("bias");
      const int k = (head ? 1 : 0) | (opt_.no_decay_norm_bias && norm_or_bias ? 2 : 0);
      groups[static_cast<size_t>(k)].params.emplace_back(name, p);
      params_.push_back(&p);
    };
    v.buffer = [](const std::string&, Tensor<float>&) {};
    model_.visit(v);
    std::erase_if(groups, [](const ParamGroup<float>& g) { return g.params.empty(); });
    if (opt_.optimizer == "adamw")
      optimizer_ = std::make_unique<AdamW<float>>(std::move(groups), opt_.adam_beta1, opt_.adam_beta2, opt_.adam_epsilon);
    else
      optimizer_ = std::make_unique<SGD<float>>(std::move(groups), opt_.momentum);
  }

  void progress(const StepRecord& r, int64_t epoch, double step_seconds, bool tty) const {
    const double eta = step_seconds * double(total_steps_ - r.step);
    char line[256];
    std::snprintf(line, sizeof line,
                  "epoch %lld  step %lld/%lld  loss %.4f (smoothed %.4f)  lr %.3g  %.1f img/s  ETA %dm%02ds",
                  static_cast<long long>(epoch), static_cast<long long>(r.step), static_cast<long long>(total_steps_),
                  r.loss, smoothed_loss_, r.lr, r.images_per_s, int(eta) / 60, int(eta) % 60);
    if (tty)
      std::printf("\r\033[K%s", line);
    else if (r.step == 1 || r.step % 10 == 0 || r.step == total_steps_)
      std::printf("%s\n", line);
    std::fflush(stdout);
  }

  Model& model_;
  SegformerImageProcessor processor_;
  SegmentationDataset train_;
  std::optional<SegmentationDataset> val_;
  TrainOptions opt_;
  Schedule schedule_;
  std::unique_ptr<Optimizer<float>> optimizer_;
  std::vector<Var<float>*> params_;
  // Data parallelism (null / 1 / 0 without): the job, channels of its own for the gradient and
  // BatchNorm sums, the gradient reducer.
  std::shared_ptr<distributed::Communicator> comm_, grad_comm_, bn_comm_;
  int world_ = 1, rank_ = 0;
  std::string job_description_;
  std::unique_ptr<distributed::GradientReducer> reducer_;
  int64_t batches_per_epoch_ = 1, total_steps_ = 1, step_ = 0;
  int saved_threads_ = 0;
  int64_t best_step_ = -1;
  double best_metric_ = 0;
  double smoothed_loss_ = 0;
  std::vector<StepRecord> history_;
  std::vector<EvalRecord> evals_;
};

}  // namespace segml::train
