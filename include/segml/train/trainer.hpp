// segml/train/trainer.hpp: Trainer, the fine-tuning loop of SegformerForSemanticSegmentation.
//
// One optimisation step = grad_accum micro-batches of batch_size examples: forward with labels
// (HF's loss), backward of loss / grad_accum, then optional gradient clipping (total L2 norm over
// every gradient, torch.nn.utils.clip_grad_norm_), an optimizer step at the schedule's lr for this
// step, zero grads. Micro-batch m reads positions [m*B, m*B + B) of epoch m / batches_per_epoch's
// shuffle (the last batch of an epoch may be smaller); every example is augmented with its own
// stream sample_seed(seed, epoch, index), built on background threads (Prefetcher).
//
// Files under output_dir: train_log.jsonl (one record per step {"step", "epoch", "loss", "lr",
// "images_per_s"}, and {"step", "eval": {...}} after each evaluation), training_curves.svg,
// checkpoint-<step>/ every save_every steps and the final model in output_dir itself (HF layout:
// config.json, model.safetensors, preprocessor_config.json), and resume/ (the same plus
// optimizer.safetensors and trainer_state.json: step, RNG state, options, history).
//
// Guarantees: given the seed, the sequence of batches, dropout masks and so the losses do not
// depend on timing or the number of data workers; run() stopped through its flag saves resume/
// after the current step, and a Trainer restored with load_resume() continues with exactly the
// losses the uninterrupted run would have had (same thread count). Does not: mixed precision,
// distributed training, early stopping.
#pragma once

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <memory>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

#include <unistd.h>

#include <nlohmann/json.hpp>

#include "segml/data/dataset.hpp"
#include "segml/io/checkpoint.hpp"
#include "segml/io/image_processor.hpp"
#include "segml/train/augment.hpp"
#include "segml/train/evaluation.hpp"
#include "segml/train/optim.hpp"
#include "segml/train/plot.hpp"
#include "segml/train/prefetch.hpp"
#include "segml/train/schedule.hpp"

namespace segml::train {

struct TrainOptions {
  std::string output_dir = "runs/finetune";
  int64_t epochs = 0;  // used when steps == 0
  int64_t steps = 0;   // optimizer steps; wins over epochs
  int64_t batch_size = 2;
  double lr = 6e-5;
  std::string optimizer = "adamw";  // adamw | sgd
  double momentum = 0.9;            // sgd only
  double weight_decay = 0.0;
  bool no_decay_norm_bias = false;  // no weight decay on norm weights and biases
  double head_lr_mult = 1.0;        // lr multiplier of decode_head.*
  std::string schedule = "linear";  // linear | poly | constant
  int64_t warmup_steps = 0;
  int64_t grad_accum = 1;
  double clip_grad_norm = 0.0;  // 0 = off
  int64_t crop_height = 512, crop_width = 512;
  bool augment = true;
  int64_t eval_every = 0;  // 0 = only at the end
  int64_t save_every = 0;  // 0 = only at the end
  uint64_t seed = 0;
  bool reduce_labels = false;
  int workers = 2;  // data threads
  bool verbose = true;
  nlohmann::json extra = nlohmann::json::object();  // the caller's own fields (data path, ...), saved for resuming

  nlohmann::json to_json() const {
    return {{"output_dir", output_dir}, {"epochs", epochs}, {"steps", steps}, {"batch_size", batch_size},
            {"lr", lr}, {"optimizer", optimizer}, {"momentum", momentum}, {"weight_decay", weight_decay},
            {"no_decay_norm_bias", no_decay_norm_bias}, {"head_lr_mult", head_lr_mult}, {"schedule", schedule},
            {"warmup_steps", warmup_steps}, {"grad_accum", grad_accum}, {"clip_grad_norm", clip_grad_norm},
            {"crop_height", crop_height}, {"crop_width", crop_width}, {"augment", augment},
            {"eval_every", eval_every}, {"save_every", save_every}, {"seed", seed},
            {"reduce_labels", reduce_labels}, {"workers", workers}, {"extra", extra}};
  }
  static TrainOptions from_json(const nlohmann::json& j) {
    TrainOptions o;
    auto get = [&](const char* k, auto& v) {
      if (j.contains(k)) v = j[k].get<std::decay_t<decltype(v)>>();
    };
    get("output_dir", o.output_dir), get("epochs", o.epochs), get("steps", o.steps), get("batch_size", o.batch_size);
    get("lr", o.lr), get("optimizer", o.optimizer), get("momentum", o.momentum), get("weight_decay", o.weight_decay);
    get("no_decay_norm_bias", o.no_decay_norm_bias), get("head_lr_mult", o.head_lr_mult), get("schedule", o.schedule);
    get("warmup_steps", o.warmup_steps), get("grad_accum", o.grad_accum), get("clip_grad_norm", o.clip_grad_norm);
    get("crop_height", o.crop_height), get("crop_width", o.crop_width), get("augment", o.augment);
    get("eval_every", o.eval_every), get("save_every", o.save_every), get("seed", o.seed);
    get("reduce_labels", o.reduce_labels), get("workers", o.workers), get("extra", o.extra);
    return o;
  }
};

struct StepRecord {
  int64_t step = 0;  // 1-based: the number of optimizer steps done
  double epoch = 0;  // fractional epochs of data consumed
  double loss = 0;   // mean over the step's micro-batches
  double lr = 0;
  double images_per_s = 0;
};

struct EvalRecord {
  int64_t step = 0;
  MeanIoU metrics;
};

// One micro-batch.
struct Batch {
  Tensor<float> pixel_values;  // (B, 3, H, W)
  Tensor<int64_t> labels;      // (B, H, W)
  int64_t epoch = 0;
};

// torch.nn.utils.clip_grad_norm_(params, max_norm): total L2 norm of all gradients, and every
// gradient scaled by max_norm / (norm + 1e-6) when that is < 1. Returns the norm before clipping.
inline double clip_grad_norm(const std::vector<Var<float>*>& params, double max_norm) {
  double sq = 0;
  for (const Var<float>* p : params) {
    if (!p->grad().defined()) continue;
    const Tensor<float> g = p->grad().contiguous();
    for (int64_t i = 0; i < g.numel(); ++i) sq += double(g.data()[i]) * double(g.data()[i]);
  }
  const double norm = std::sqrt(sq), coef = max_norm / (norm + 1e-6);
  if (coef < 1.0)
    for (Var<float>* p : params) {
      if (!p->grad().defined()) continue;
      Tensor<float> g = p->grad().contiguous();
      for (int64_t i = 0; i < g.numel(); ++i) g.data()[i] = static_cast<float>(g.data()[i] * coef);
      p->grad() = g;
    }
  return norm;
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
    SEGML_CHECK(opt_.batch_size >= 1 && opt_.grad_accum >= 1, "Trainer: batch size and grad_accum must be >= 1");
    SEGML_CHECK(opt_.steps > 0 || opt_.epochs > 0, "Trainer: give a number of steps or epochs");
    SEGML_CHECK(train_.size() > 0, "Trainer: the training split is empty");
    SEGML_CHECK(opt_.optimizer == "adamw" || opt_.optimizer == "sgd", "Trainer: unknown optimizer '", opt_.optimizer,
                "' (adamw or sgd)");
    const int64_t labels = static_cast<int64_t>(train::class_names(train_.id2label(), opt_.reduce_labels).size());
    SEGML_CHECK(model_.config.num_labels == labels, "Trainer: the model has ", model_.config.num_labels,
                " labels but the dataset has ", labels);
    batches_per_epoch_ = (static_cast<int64_t>(train_.size()) + opt_.batch_size - 1) / opt_.batch_size;
    total_steps_ = opt_.steps > 0 ? opt_.steps : (opt_.epochs * batches_per_epoch_ + opt_.grad_accum - 1) / opt_.grad_accum;
    schedule_.kind = opt_.schedule;
    schedule_.base_lr = opt_.lr;
    schedule_.total_steps = total_steps_;
    schedule_.warmup_steps = opt_.warmup_steps;
    schedule_.lr(0);  // validates the kind
    build_optimizer();
  }

  int64_t total_steps() const { return total_steps_; }
  int64_t step() const { return step_; }
  const std::vector<StepRecord>& history() const { return history_; }
  const std::vector<EvalRecord>& evals() const { return evals_; }
  const TrainOptions& options() const { return opt_; }
  void set_eval_every(int64_t n) { opt_.eval_every = n; }
  std::vector<std::string> class_names() const { return train::class_names(train_.id2label(), opt_.reduce_labels); }

  // Called after every step (e.g. to request a stop in tests).
  std::function<void(const StepRecord&)> on_step;

  // Trains until total_steps() or until *stop becomes true (checked after each step). Returns true
  // when finished (final evaluation, model saved), false when stopped (resume/ saved).
  bool run(const std::atomic<bool>* stop = nullptr) {
    namespace fs = std::filesystem;
    fs::create_directories(opt_.output_dir);
    std::ofstream log(fs::path(opt_.output_dir) / "train_log.jsonl", step_ == 0 ? std::ios::trunc : std::ios::app);
    const bool tty = isatty(fileno(stdout));
    Prefetcher<Batch> data([this](int64_t m) { return make_batch(m); }, step_ * opt_.grad_accum, opt_.workers,
                           std::max<int64_t>(4, 2 * opt_.grad_accum));
    model_.train();
    double step_seconds = 0;  // moving average, for the ETA
    while (step_ < total_steps_) {
      const auto t0 = std::chrono::steady_clock::now();
      const double lr = schedule_.lr(step_);
      double loss_sum = 0;
      int64_t images = 0, epoch = 0;
      for (int64_t a = 0; a < opt_.grad_accum; ++a) {
        const Batch b = data.next();
        epoch = b.epoch;
        const SegformerOutput<float> out = model_.forward(Var<float>(b.pixel_values), &b.labels);
        const double loss = out.loss.data().data()[0];
        SEGML_CHECK(std::isfinite(loss), "Trainer: the loss is ", loss, " at step ", step_ + 1,
                    " (diverged: lower --lr or enable --clip-grad-norm)");
        out.loss.backward(Tensor<float>::full(out.loss.shape(), 1.0f / static_cast<float>(opt_.grad_accum)));
        loss_sum += loss;
        images += b.pixel_values.size(0);
      }
      if (opt_.clip_grad_norm > 0) clip_grad_norm(params_, opt_.clip_grad_norm);
      optimizer_->step(lr);
      optimizer_->zero_grad();
      ++step_;
      const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      step_seconds = step_ == 1 ? seconds : 0.9 * step_seconds + 0.1 * seconds;
      StepRecord rec{step_, double(step_ * opt_.grad_accum) / double(batches_per_epoch_),
                     loss_sum / double(opt_.grad_accum), lr, double(images) / seconds};
      smoothed_loss_ = history_.empty() ? rec.loss : 0.95 * smoothed_loss_ + 0.05 * rec.loss;
      history_.push_back(rec);
      log << nlohmann::json{{"step", rec.step}, {"epoch", rec.epoch}, {"loss", rec.loss}, {"lr", rec.lr},
                            {"images_per_s", rec.images_per_s}}.dump() << "\n";
      log.flush();
      if (opt_.verbose) progress(rec, epoch, step_seconds, tty);
      if (on_step) on_step(rec);

      const bool last = step_ == total_steps_;
      if (val_ && ((opt_.eval_every > 0 && step_ % opt_.eval_every == 0) || last)) {
        evaluate_now(log, tty);
        model_.train();
      }
      if (opt_.save_every > 0 && step_ % opt_.save_every == 0 && !last) {
        save_checkpoint((fs::path(opt_.output_dir) / ("checkpoint-" + std::to_string(step_))).string());
        save_resume((fs::path(opt_.output_dir) / "resume").string());
      }
      if (!last && stop && stop->load()) {
        if (opt_.verbose && tty) std::printf("\n");
        save_resume((fs::path(opt_.output_dir) / "resume").string());
        write_curves();
        return false;
      }
    }
    if (opt_.verbose && tty) std::printf("\n");
    save_checkpoint(opt_.output_dir);
    write_curves();
    return true;
  }

  // Writes an HF checkpoint folder (config.json with the dataset's labels, model.safetensors,
  // preprocessor_config.json).
  void save_checkpoint(const std::string& dir) {
    const nlohmann::json proc = saved_processor().to_json();
    save_pretrained(model_, dir, &proc);
  }

  // Everything needed to continue: the checkpoint plus optimizer state and trainer_state.json.
  void save_resume(const std::string& dir) {
    namespace fs = std::filesystem;
    save_checkpoint(dir);
    std::map<std::string, safetensors::Entry> entries;
    for (const auto& [name, t] : optimizer_->state()) entries[name] = safetensors::make_entry(t);
    safetensors::save((fs::path(dir) / "optimizer.safetensors").string(), entries);
    nlohmann::json hist = nlohmann::json::array(), ev = nlohmann::json::array();
    for (const StepRecord& r : history_) hist.push_back({r.step, r.epoch, r.loss, r.lr, r.images_per_s});
    for (const EvalRecord& e : evals_) ev.push_back({{"step", e.step}, {"eval", metrics_json(e.metrics)}});
    const GeneratorState g = model_.generator().get_state();
    nlohmann::json state = {{"step", step_},
                            {"optimizer_steps", optimizer_->steps()},
                            {"micro_batch", step_ * opt_.grad_accum},
                            {"generator", {{"seed", g.seed}, {"offset", g.offset}}},
                            {"smoothed_loss", smoothed_loss_},
                            {"total_steps", total_steps_},
                            {"options", opt_.to_json()},
                            {"history", hist},
                            {"evals", ev}};
    const std::string text = state.dump(1) + "\n";
    safetensors::write_file_atomic((fs::path(dir) / "trainer_state.json").string(),
                                   std::vector<char>(text.begin(), text.end()));
  }

  // Restores a state written by save_resume() (weights, optimizer, RNG, step, history).
  void load_resume(const std::string& dir) {
    namespace fs = std::filesystem;
    const nlohmann::json state = segml::detail::read_json_file(fs::path(dir) / "trainer_state.json", "trainer state");
    const LoadReport r = load_state_dict(model_, {(fs::path(dir) / "model.safetensors").string()});
    SEGML_CHECK(r.clean(), "Trainer::load_resume: the saved model does not match\n", r.str(dir));
    const safetensors::File opt_file((fs::path(dir) / "optimizer.safetensors").string());
    optimizer_->state().clear();
    for (const std::string& name : opt_file.names()) optimizer_->state()[name] = opt_file.get<float>(name);
    optimizer_->set_steps(state["optimizer_steps"].get<int64_t>());
    model_.generator().set_state({state["generator"]["seed"].get<uint64_t>(), state["generator"]["offset"].get<uint64_t>()});
    step_ = state["step"].get<int64_t>();
    smoothed_loss_ = state["smoothed_loss"].get<double>();
    SEGML_CHECK(state["total_steps"].get<int64_t>() == total_steps_, "Trainer::load_resume: the saved run has ",
                state["total_steps"].get<int64_t>(), " steps in total but these options give ", total_steps_);
    history_.clear();
    for (const auto& h : state["history"])
      history_.push_back({h[0].get<int64_t>(), h[1].get<double>(), h[2].get<double>(), h[3].get<double>(), h[4].get<double>()});
    evals_.clear();
    for (const auto& e : state["evals"]) {
      EvalRecord rec;
      rec.step = e["step"].get<int64_t>();
      rec.metrics.mean_iou = e["eval"]["mean_iou"].is_null() ? NAN : e["eval"]["mean_iou"].get<double>();
      evals_.push_back(rec);
    }
  }

  // The micro-batch at global position m (a pure function of m and the options).
  Batch make_batch(int64_t m) const {
    const int64_t epoch = m / batches_per_epoch_, j = m % batches_per_epoch_;
    const std::vector<int64_t> order = epoch_order(epoch);
    const int64_t n = static_cast<int64_t>(order.size());
    const int64_t begin = j * opt_.batch_size, end = std::min(n, begin + opt_.batch_size);
    std::vector<Example> ex;
    for (int64_t k = begin; k < end; ++k) ex.push_back(make_example(order[static_cast<size_t>(k)], epoch));
    Batch b;
    b.epoch = epoch;
    const int64_t B = end - begin, H = ex[0].labels.size(0), W = ex[0].labels.size(1);
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

  // Runs the validation split now; logs and returns the result.
  EvalRecord evaluate_now(std::ostream& log, bool tty) {
    EvalOptions eo;
    eo.reduce_labels = opt_.reduce_labels;
    const EvalResult r = evaluate_dataset(model_, *val_, processor_, eo);
    EvalRecord rec{step_, r.metrics};
    evals_.push_back(rec);
    log << nlohmann::json{{"step", step_}, {"eval", metrics_json(r.metrics)}}.dump() << "\n";
    log.flush();
    if (opt_.verbose)
      std::printf("%seval @ step %lld: mean IoU %.4f  mean accuracy %.4f  overall accuracy %.4f  (%lld images, %.1f s)\n",
                  tty ? "\r\033[K" : "", static_cast<long long>(step_), r.metrics.mean_iou, r.metrics.mean_accuracy,
                  r.metrics.overall_accuracy, static_cast<long long>(r.images), r.seconds);
    return rec;
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
    std::vector<Series> series{loss, smooth};
    if (!evals_.empty()) series.push_back(miou);
    const std::string svg = line_plot_svg("SegFormer fine-tuning: training loss and validation mean IoU", "step",
                                          "cross-entropy loss", evals_.empty() ? "" : "val mean IoU", series);
    safetensors::write_file_atomic((std::filesystem::path(opt_.output_dir) / "training_curves.svg").string(),
                                   std::vector<char>(svg.begin(), svg.end()));
  }

 private:
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
      optimizer_ = std::make_unique<AdamW<float>>(std::move(groups));
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
  int64_t batches_per_epoch_ = 1, total_steps_ = 1, step_ = 0;
  double smoothed_loss_ = 0;
  std::vector<StepRecord> history_;
  std::vector<EvalRecord> evals_;
};

}  // namespace segml::train
