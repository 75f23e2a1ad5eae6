// segml/train/options.hpp: TrainOptions, the options of a fine-tuning run, defined once.
//
// SEGML_TRAIN_OPTIONS is the one list of the options. Each row gives the member's type, its name
// (HF TrainingArguments' name where HF has the option), its default, the flag segml used before
// (an alias on the command line; "" for none), whether a resumed run must keep it, its numeric
// range or its allowed words, and its help text. From that one list come:
//   - the members of TrainOptions (with their defaults),
//   - to_json() / from_json(): the "options" stored in trainer_state.json, read back on resume,
//   - for_each_option(): the rows with their values, which the command line of
//     examples/finetune_sidewalk.cpp turns into flags (--<name> and --<alias>) and validators,
//     and which load_state() uses to refuse a resume that changes a `keep` option.
// Rows whose `cli` is false (crop size, augmentation, SyncBN) are spelled differently on the command
// line (--crop-size HxW, --no-augment, --no-sync-bn); the program handles them, the rest is the same.
//
// HF semantics kept: max_steps > 0 wins over num_train_epochs (a real number: the run is
// ceil(num_train_epochs * optimizer steps per epoch) steps); warmup_steps > 0 wins over
// warmup_ratio (then ceil(ratio * total steps)); max_grad_norm defaults to 1.0 (0 = no clipping);
// metric_for_best_model with or without "eval_", greater_is_better inferred from it (a name ending
// in "loss" is better lower). dataloader_num_workers 0 (HF: load in the main process) uses one
// background thread: the batches do not depend on the number of workers anyway.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>
#include <string>
#include <type_traits>

#include <nlohmann/json.hpp>

#include "segml/core/error.hpp"
#include "segml/distributed/communicator.hpp"

namespace segml::train {

// What a resumed run may do with an option: `keep` options decide the arithmetic of the finished
// steps (or what "best" means) and must not change; `change` options may.
enum class OnResume { keep, change };

// One row of the table, without its value.
struct OptionInfo {
  const char* name;     // member name, JSON key and --flag (HF's name where HF has the option)
  const char* alias;    // segml's earlier flag ("" for none); same field, same meaning
  bool hf;              // HF TrainingArguments has this name
  bool cli;             // the program exposes --name / --alias (false: spelled otherwise)
  OnResume on_resume;
  double lo, hi;        // numeric range (whole numbers for integer members)
  bool open_low;        // (lo, hi] instead of [lo, hi]
  const char* choices;  // allowed words "a|b|c" for a string ("" = any)
  const char* help;
};

inline constexpr double kNoLimit = std::numeric_limits<double>::max();

// X(type, name, default, alias, hf, cli, on_resume, lo, hi, open_low, choices, help)
// The HF rows come first, in the order --help lists them.
#define SEGML_TRAIN_OPTIONS(X)                                                                                       \
  X(std::string, output_dir, "runs/finetune", "output", true, true, OnResume::change, 0, 0, false, "",              \
    "Output folder: checkpoints, train_log.jsonl, trainer_state.json, README.md (model card), curves")               \
  X(double, learning_rate, 6e-5, "lr", true, true, OnResume::keep, 0, 100, true, "", "Peak learning rate")          \
  X(double, num_train_epochs, 0.0, "epochs", true, true, OnResume::change, 0, 1e6, false, "",                       \
    "Epochs to train, a real number like HF (ignored when max_steps > 0)")                                          \
  X(int64_t, max_steps, 0, "steps", true, true, OnResume::change, -1, kNoLimit, false, "",                           \
    "Optimizer steps to train; > 0 wins over num_train_epochs (HF: -1 = use epochs)")                               \
  X(int64_t, per_device_train_batch_size, 2, "batch-size", true, true, OnResume::keep, 1, 65536, false, "",         \
    "Images per training micro-batch")                                                                               \
  X(int64_t, per_device_eval_batch_size, 8, "", true, true, OnResume::change, 1, 65536, false, "",                   \
    "Images per evaluation batch")                                                                                   \
  X(int64_t, gradient_accumulation_steps, 1, "grad-accum", true, true, OnResume::keep, 1, 65536, false, "",         \
    "Micro-batches per optimizer step (the loss is averaged)")                                                       \
  X(std::string, lr_scheduler_type, "linear", "schedule", true, true, OnResume::keep, 0, 0, false,                  \
    "linear|cosine|constant|constant_with_warmup|polynomial|poly",                                                   \
    "Learning-rate schedule: HF's linear, cosine, constant, constant_with_warmup, polynomial; or poly "             \
    "(the SegFormer recipe: mmseg's warm-up then (1 - t)^1)")                                                        \
  X(int64_t, warmup_steps, 0, "warmup-steps", true, true, OnResume::keep, 0, kNoLimit, false, "",                    \
    "Linear warm-up steps (> 0 wins over warmup_ratio)")                                                             \
  X(double, warmup_ratio, 0.0, "", true, true, OnResume::keep, 0, 1, false, "",                                      \
    "Warm-up as a fraction of the total steps (used when warmup_steps is 0)")                                        \
  X(double, weight_decay, 0.0, "weight-decay", true, true, OnResume::keep, 0, 100, false, "",                        \
    "Weight decay (AdamW: decoupled)")                                                                               \
  X(double, adam_beta1, 0.9, "", true, true, OnResume::keep, 0, 1, false, "", "AdamW beta1 (< 1)")                  \
  X(double, adam_beta2, 0.999, "", true, true, OnResume::keep, 0, 1, false, "", "AdamW beta2 (< 1)")                \
  X(double, adam_epsilon, 1e-8, "", true, true, OnResume::keep, 0, 1, true, "", "AdamW epsilon")                    \
  X(double, max_grad_norm, 1.0, "clip-grad-norm", true, true, OnResume::keep, 0, kNoLimit, false, "",               \
    "Clip the total gradient L2 norm to this value; 0 = off. Default 1.0 like HF (segml before: off)")              \
  X(int64_t, eval_steps, 0, "eval-every", true, true, OnResume::change, 0, kNoLimit, false, "",                      \
    "Evaluate on the val split every N steps (0 = only at the end)")                                                 \
  X(int64_t, save_steps, 0, "save-every", true, true, OnResume::change, 0, kNoLimit, false, "",                      \
    "Save a complete checkpoint-<step>/ every N steps (0 = only at the end; the last step always gets one)")         \
  X(int64_t, save_total_limit, 0, "save-total-limit", true, true, OnResume::change, 0, kNoLimit, false, "",          \
    "Keep only the newest K checkpoint-<step>/ folders, never deleting the best one (0 = keep all)")                \
  X(int64_t, logging_steps, 10, "", true, true, OnResume::change, 1, kNoLimit, false, "",                            \
    "Add the mean training loss to trainer_state.json's log_history every N steps (and at the last)")              \
  X(bool, load_best_model_at_end, false, "", true, true, OnResume::change, 0, 0, false, "",                          \
    "At the end, the output folder holds the weights of the best evaluated checkpoint "                              \
    "(a checkpoint is saved at every evaluation)")                                                                   \
  X(std::string, metric_for_best_model, "", "", true, true, OnResume::keep, 0, 0, false,                             \
    "|loss|eval_loss|mean_iou|eval_mean_iou|mean_accuracy|eval_mean_accuracy|overall_accuracy|eval_overall_accuracy", \
    "Metric that picks the best checkpoint (default with load_best_model_at_end: loss, i.e. eval_loss); a name "    \
    "ending in 'loss' is better lower, the others higher")                                                           \
  X(uint64_t, seed, 0, "", true, true, OnResume::keep, 0, 0, false, "",                                              \
    "Seed of the initialisation, data order, augmentation and dropout")                                              \
  X(int64_t, dataloader_num_workers, 2, "workers", true, true, OnResume::change, 0, 1024, false, "",                  \
    "Data-loading threads (0 = one)")                                                                                \
  X(std::string, optimizer, "adamw", "", false, true, OnResume::keep, 0, 0, false, "adamw|sgd", "adamw or sgd")     \
  X(double, momentum, 0.9, "", false, true, OnResume::keep, 0, 1, false, "", "SGD momentum")                         \
  X(bool, no_decay_norm_bias, false, "", false, true, OnResume::keep, 0, 0, false, "",                               \
    "No weight decay on norm weights and biases")                                                                    \
  X(double, head_lr_mult, 1.0, "", false, true, OnResume::keep, 0, 10000, true, "",                                  \
    "Learning-rate multiplier of decode_head.* (SegFormer recipe: 10)")                                              \
  X(int64_t, crop_height, 512, "", false, false, OnResume::keep, 16, 8192, false, "", "Training crop height")       \
  X(int64_t, crop_width, 512, "", false, false, OnResume::keep, 16, 8192, false, "", "Training crop width")         \
  X(bool, augment, true, "", false, false, OnResume::keep, 0, 0, false, "",                                          \
    "Random resize 0.5-2, crop, flip, photometric distortion (false: resize to the crop size)")                    \
  X(bool, reduce_labels, false, "", false, true, OnResume::keep, 0, 0, false, "",                                    \
    "HF's reduce_labels: id 0 (background) becomes ignore, k becomes k-1")                                          \
  X(bool, sync_bn, true, "", false, false, OnResume::keep, 0, 0, false, "",                                          \
    "Data-parallel training: BatchNorm statistics over every process's batch (SyncBN; false: each process's own)")

struct TrainOptions {
#define SEGML_TRAIN_OPTION_MEMBER(type, name, def, ...) type name = def;
  SEGML_TRAIN_OPTIONS(SEGML_TRAIN_OPTION_MEMBER)
#undef SEGML_TRAIN_OPTION_MEMBER
  bool verbose = true;                               // progress on stdout (not saved)
  // Data-parallel training (segml/distributed/): the processes that train this model together, e.g.
  // MpiSession::world(). Null or a group of one: ordinary training. Not saved.
  std::shared_ptr<distributed::Communicator> communicator;
  // Data-parallel: after every step, every process compares a checksum of its parameters and
  // buffers with rank 0's and stops on a difference (default: on in debug builds).
#ifdef NDEBUG
  bool check_replicas = false;
#else
  bool check_replicas = true;
#endif
  // Data-parallel: an error on one process prints it with the rank and ends every process
  // (Communicator::abort), so that no process waits forever for one that failed.
  bool abort_on_error = true;
  // Data-parallel: gradients are summed in buckets of about this many MiB (torch DDP's bucket_cap_mb).
  double bucket_cap_mb = 25;
  nlohmann::json extra = nlohmann::json::object();  // the caller's own fields (data path, ...), saved for resuming

  // The optimizer steps of a run with `steps_per_epoch` steps per epoch (HF: max_steps > 0 wins).
  int64_t total_steps(int64_t steps_per_epoch) const {
    if (max_steps > 0) return max_steps;
    return std::max<int64_t>(1, static_cast<int64_t>(std::ceil(num_train_epochs * double(steps_per_epoch) - 1e-9)));
  }
  // HF's get_warmup_steps: warmup_steps when > 0, else ceil(warmup_ratio * total).
  int64_t warmup_for(int64_t total) const {
    return warmup_steps > 0 ? warmup_steps : static_cast<int64_t>(std::ceil(warmup_ratio * double(total)));
  }
  // metric_for_best_model as it is logged ("eval_mean_iou"); "" when no best model is tracked.
  std::string best_metric_key() const {
    std::string m = metric_for_best_model;
    if (m.empty() && load_best_model_at_end) m = "loss";
    if (m.empty()) return m;
    return m.rfind("eval_", 0) == 0 ? m : "eval_" + m;
  }
  // HF's greater_is_better default: false for a metric ending in "loss".
  bool greater_is_better() const { return !best_metric_key().ends_with("loss"); }

  nlohmann::json to_json() const;
  static TrainOptions from_json(const nlohmann::json& j);
};

// Calls f(info, member) for every row, in table order (const or not).
template <class Options, class F>
  requires std::is_same_v<std::remove_const_t<Options>, TrainOptions>
inline void for_each_option(Options& o, F&& f) {
#define SEGML_TRAIN_OPTION_VISIT(type, name, def, alias, hf, cli, on_resume, lo, hi, open_low, choices, help) \
  f(OptionInfo{#name, alias, hf, cli, on_resume, double(lo), double(hi), open_low, choices, help}, o.name);
  SEGML_TRAIN_OPTIONS(SEGML_TRAIN_OPTION_VISIT)
#undef SEGML_TRAIN_OPTION_VISIT
}

inline nlohmann::json TrainOptions::to_json() const {
  nlohmann::json j = nlohmann::json::object();
  for_each_option(*this, [&](const OptionInfo& info, const auto& v) { j[info.name] = v; });
  j["extra"] = extra;
  return j;
}

// Missing keys keep their defaults; a value of the wrong type is an error naming the key.
inline TrainOptions TrainOptions::from_json(const nlohmann::json& j) {
  TrainOptions o;
  SEGML_CHECK(j.is_object(), "training options: expected a JSON object, got ", j.type_name());
  for_each_option(o, [&](const OptionInfo& info, auto& v) {
    if (!j.contains(info.name)) return;
    try {
      v = j.at(info.name).get<std::decay_t<decltype(v)>>();
    } catch (const nlohmann::json::exception&) {
      fail("training options: '", info.name, "' is ", j.at(info.name).dump(), ", not a value of its type");
    }
  });
  if (j.contains("extra")) o.extra = j.at("extra");
  return o;
}

}  // namespace segml::train
