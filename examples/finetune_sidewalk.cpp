// finetune_sidewalk: fine-tune (or train from scratch) a SegFormer on a segmentation dataset.
//
// With no arguments it generates a small procedural street-scene dataset (runs/synthetic-scenes),
// trains a randomly initialised B0 on it for a few minutes on a laptop CPU, evaluates it, and
// writes an HF checkpoint, train_log.jsonl and training_curves.svg to runs/finetune.
//
// Resuming (docs/training.md): every save is a complete checkpoint-<step>/ folder, published
// atomically; Ctrl-C stops after the current step and saves one. `--resume RUN` continues from
// RUN's latest complete checkpoint, `--resume RUN/checkpoint-N` from that one, into RUN (or
// --output). The saved options are reused; --steps/--epochs, --eval-every, --save-every,
// --save-total-limit, --workers, --output and --threads may override them (each override is
// printed); a flag that would change the finished steps' arithmetic is refused when its value
// differs from the saved one. Every numeric flag is range-checked (examples/cli_checks.hpp).
#include <CLI/CLI.hpp>

#include <atomic>
#include <charconv>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <optional>
#include <sstream>
#include <string>
#include <thread>

#include <segml/segformer.hpp>
#include <segml/train/trainer.hpp>

#include "cli_checks.hpp"

namespace fs = std::filesystem;
using namespace segml;

namespace {

std::atomic<bool> g_stop{false};

extern "C" void on_signal(int) {
  if (g_stop.load()) std::_Exit(130);  // a second Ctrl-C: leave now
  g_stop.store(true);
}

constexpr int64_t kMinCrop = 16, kMaxCrop = 8192;

// "512" or "384x512" -> (height, width), each in [kMinCrop, kMaxCrop]; nullopt otherwise.
std::optional<std::pair<int64_t, int64_t>> parse_size(const std::string& s) {
  const auto x = s.find('x');
  int64_t h = 0, w = 0;
  if (!cli::detail::parse_whole(s.substr(0, x), h)) return std::nullopt;
  if (x == std::string::npos)
    w = h;
  else if (!cli::detail::parse_whole(s.substr(x + 1), w))
    return std::nullopt;
  if (h < kMinCrop || h > kMaxCrop || w < kMinCrop || w > kMaxCrop) return std::nullopt;
  return std::pair{h, w};
}

CLI::Validator crop_size_check() {
  const std::string range = "H or HxW with whole numbers in [" + std::to_string(kMinCrop) + ", " + std::to_string(kMaxCrop) + "]";
  return CLI::Validator(
      [range](std::string& s) -> std::string { return parse_size(s) ? "" : "got '" + s + "', expected " + range; },
      "(" + range + ")");
}

// --seed: any whole number in [0, 2^64 - 1] (CLI11 alone would wrap "-1" around).
CLI::Validator seed_check() {
  return CLI::Validator(
      [](std::string& s) -> std::string {
        uint64_t v = 0;
        const auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
        if (s.empty() || ec != std::errc() || p != s.data() + s.size())
          return "got '" + s + "', expected a whole number in [0, 18446744073709551615]";
        return "";
      },
      "(0 .. 2^64-1)");
}

SegformerConfig preset(const std::string& name) {
  if (name == "b0") return SegformerConfig::b0();
  if (name == "b1") return SegformerConfig::b1();
  if (name == "b2") return SegformerConfig::b2();
  if (name == "b3") return SegformerConfig::b3();
  if (name == "b4") return SegformerConfig::b4();
  if (name == "b5") return SegformerConfig::b5();
  fail("--config: unknown preset '", name, "' (b0 .. b5)");
}

// The same folder, however it is spelled (./runs/x, runs/x/, an absolute path).
bool same_folder(const fs::path& a, const fs::path& b) {
  std::error_code ec;
  return fs::weakly_canonical(a, ec) == fs::weakly_canonical(b, ec);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Fine-tune a SegFormer for semantic segmentation on the CPU (see docs/training.md).\n"
               "Without arguments: B0 from scratch on built-in procedural street scenes, a few minutes."};
  std::string model_path, config_name, data_dir, output = "runs/finetune", resume, class_map, crop = "";
  std::string optimizer = "adamw", schedule = "linear";
  int64_t epochs = 0, steps = 0, batch_size = 2, warmup = 0, grad_accum = 1, subset = 0, eval_every = -1,
          save_every = 0, save_total_limit = 0;
  double lr = 0, momentum = 0.9, weight_decay = 0.0, head_lr_mult = 1.0, clip = 0.0;
  bool no_augment = false, no_decay_norm_bias = false, reduce = false;
  uint64_t seed = 0;
  int threads = 0, workers = 2;
  int64_t max_pixels = kDefaultMaxPixels;

  app.add_option("--model", model_path,
                 "HF checkpoint folder or .safetensors to start from (e.g. weights/mit-b0; an encoder-only "
                 "checkpoint gets a fresh decode head for the dataset's labels), an earlier run's output, or a hub id "
                 "(e.g. nvidia/mit-b0: HF cache, else downloaded)");
  std::string revision = "main";
  app.add_option("--revision", revision, "with a hub id as --model (e.g. nvidia/mit-b0): branch, tag or commit")
      ->capture_default_str();
  app.add_option("--config", config_name, "Random initialisation from a preset instead: b0..b5 (default without --model: b0)")
      ->check(CLI::IsMember({"b0", "b1", "b2", "b3", "b4", "b5"}));
  app.add_option("--data", data_dir,
                 "Dataset folder (id2label.json + {train,val,test}/{images,labels} or images/ + labels/). "
                 "Default: built-in synthetic street scenes, generated once into runs/synthetic-scenes");
  app.add_option("--output", output,
                 "Output folder: checkpoints, train_log.jsonl, training_curves.svg (with --resume: default the run resumed)")
      ->capture_default_str();
  app.add_option("--epochs", epochs, "Epochs to train (default: 10 on your data; ignored when --steps is given)")
      ->check(cli::whole(1, 1000000));
  app.add_option("--steps", steps, "Optimizer steps to train (default on the built-in data: 1000)")
      ->check(cli::positive_whole());
  app.add_option("--batch-size", batch_size, "Images per micro-batch")->capture_default_str()->check(cli::whole(1, 65536));
  app.add_option("--lr", lr,
                 "Peak learning rate. Default 6e-5 (HF's tutorial) with --model; 1e-3 for a randomly initialised "
                 "model, which learns far too slowly at 6e-5 to show progress in a few minutes")
      ->check(cli::real(0.0, 100.0, /*open_low=*/true));
  app.add_option("--optimizer", optimizer, "adamw or sgd")->check(CLI::IsMember({"adamw", "sgd"}))->capture_default_str();
  app.add_option("--momentum", momentum, "SGD momentum")->capture_default_str()->check(cli::real(0.0, 1.0));
  app.add_option("--weight-decay", weight_decay, "Weight decay (AdamW: decoupled), HF Trainer default 0")
      ->capture_default_str()
      ->check(cli::real(0.0, 100.0));
  app.add_flag("--no-decay-norm-bias", no_decay_norm_bias, "No weight decay on norm weights and biases");
  app.add_option("--head-lr-mult", head_lr_mult, "Learning-rate multiplier of the decode head (SegFormer recipe: 10)")
      ->capture_default_str()
      ->check(cli::real(0.0, 10000.0, /*open_low=*/true));
  app.add_option("--schedule", schedule, "linear (HF Trainer), poly (SegFormer recipe, power 1) or constant")
      ->check(CLI::IsMember({"linear", "poly", "constant"}))
      ->capture_default_str();
  app.add_option("--warmup-steps", warmup, "Linear warm-up steps")->capture_default_str()->check(cli::non_negative_whole());
  app.add_option("--grad-accum", grad_accum, "Micro-batches per optimizer step (the loss is averaged)")
      ->capture_default_str()
      ->check(cli::whole(1, 65536));
  app.add_option("--clip-grad-norm", clip, "Clip the total gradient L2 norm to this value (0 = off)")
      ->check(cli::non_negative_real());
  app.add_option("--crop-size", crop, "Training crop H or HxW; also the evaluation resize (default 512; 160 on the built-in data, so the default run takes a few minutes)")
      ->check(crop_size_check());
  app.add_flag("--no-augment", no_augment,
               "No augmentation: resize whole images to the crop size (HF's tutorial) instead of random "
               "resize 0.5-2, crop (cat_max_ratio 0.75), flip, photometric distortion");
  app.add_option("--subset", subset, "Train on the first N training images only (e.g. to overfit a few)")
      ->check(cli::positive_whole());
  app.add_option("--eval-every", eval_every, "Evaluate on the val split every N steps (default: 5 times per run; 0 = only at the end)")
      ->check(cli::non_negative_whole());
  app.add_option("--save-every", save_every,
                 "Save a complete state checkpoint-<step>/ every N steps (0 = only at the end; the last step always gets one)")
      ->check(cli::non_negative_whole());
  app.add_option("--save-total-limit", save_total_limit, "Keep only the newest K checkpoint-<step>/ folders (default: all)")
      ->check(cli::positive_whole());
  app.add_option("--resume", resume,
                 "Continue a run: DIR is a run folder (its latest complete checkpoint) or one of its checkpoint-<step> "
                 "folders. Its options are reused; the run continues in DIR unless --output is given");
  app.add_option("--seed", seed, "Seed of the initialisation, data order, augmentation and dropout")
      ->capture_default_str()
      ->check(seed_check());
  app.add_option("--threads", threads, "Compute threads (default: all cores / OMP_NUM_THREADS; with --resume: the saved run's)")
      ->check(cli::whole(1, 4096));
  app.add_option("--workers", workers, "Data-loading threads")->capture_default_str()->check(cli::whole(1, 1024));
  app.add_option("--max-pixels", max_pixels,
                 "Refuse dataset images with more pixels than this (read from the header, before decoding)")
      ->capture_default_str()
      ->check(cli::positive_whole());
  app.add_option("--class-map", class_map, "JSON remapping the dataset's class ids (see docs/datasets.md)");
  app.add_flag("--reduce-labels", reduce, "HF's reduce_labels: id 0 (background) becomes ignore, k becomes k-1");
  CLI11_PARSE(app, argc, argv);
  auto given = [&](const char* flag) { return app.count(flag) > 0; };
  auto given_value = [&](const char* flag) {  // " VALUE" as typed ("" for a switch)
    std::string v;
    for (const std::string& r : app.get_option(flag)->results()) v += " " + r;
    return app.get_option(flag)->get_expected_min() == 0 ? std::string() : v;
  };

  try {
    train::TrainOptions opt;
    std::string init;  // what the weights start from, for the log
    std::optional<train::ResumePoint> from;
    if (!resume.empty()) {
      from = train::resolve_resume(resume);
      for (const std::string& why : from->passed_over) std::printf("Passed over: %s\n", why.c_str());
      const nlohmann::json state = detail::read_json_file(from->state_dir / "trainer_state.json", "trainer state");
      opt = train::TrainOptions::from_json(state.at("options"));
      const int64_t done = from->step;

      // Flags that would change the arithmetic of the finished steps: refused when they differ.
      auto keep = [&](const char* flag, bool same, const std::string& was) {
        if (given(flag) && !same)
          fail(flag, given_value(flag), " differs from the resumed run's ", was, ": it would change the ",
               "arithmetic of the ", done, " finished steps, so a resumed run keeps its value. To train on with other ",
               "settings, start a new run from its weights: --model ", from->state_dir.string());
      };
      auto text = [](const auto& v) {
        std::ostringstream os;
        os << v;
        return os.str();
      };
      const std::string saved_data = opt.extra.value("data", ""), saved_map = opt.extra.value("class_map", "");
      keep("--lr", lr == opt.lr, text(opt.lr));
      keep("--batch-size", batch_size == opt.batch_size, text(opt.batch_size));
      keep("--grad-accum", grad_accum == opt.grad_accum, text(opt.grad_accum));
      keep("--optimizer", optimizer == opt.optimizer, opt.optimizer);
      keep("--momentum", momentum == opt.momentum, text(opt.momentum));
      keep("--weight-decay", weight_decay == opt.weight_decay, text(opt.weight_decay));
      keep("--no-decay-norm-bias", no_decay_norm_bias == opt.no_decay_norm_bias, opt.no_decay_norm_bias ? "on" : "off");
      keep("--head-lr-mult", head_lr_mult == opt.head_lr_mult, text(opt.head_lr_mult));
      keep("--schedule", schedule == opt.schedule, opt.schedule);
      keep("--warmup-steps", warmup == opt.warmup_steps, text(opt.warmup_steps));
      keep("--clip-grad-norm", clip == opt.clip_grad_norm, text(opt.clip_grad_norm));
      keep("--crop-size", given("--crop-size") && *parse_size(crop) == std::pair{opt.crop_height, opt.crop_width},
           text(opt.crop_height) + "x" + text(opt.crop_width));
      keep("--no-augment", no_augment == !opt.augment, opt.augment ? "augmentation on" : "--no-augment");
      keep("--seed", seed == opt.seed, text(opt.seed));
      keep("--reduce-labels", reduce == opt.reduce_labels, opt.reduce_labels ? "on" : "off");
      keep("--subset", subset == opt.extra.value("subset", int64_t{0}), text(opt.extra.value("subset", int64_t{0})));
      keep("--data", !saved_data.empty() && same_folder(data_dir, saved_data), saved_data.empty() ? "built-in data" : saved_data);
      keep("--class-map", !saved_map.empty() && same_folder(class_map, saved_map), saved_map.empty() ? "none" : saved_map);
      keep("--model", model_path == opt.extra.value("model", ""), opt.extra.value("model", "") == "" ? "none" : opt.extra.value("model", ""));
      keep("--config", config_name == opt.extra.value("config", ""), opt.extra.value("config", "") == "" ? "none" : opt.extra.value("config", ""));

      // Flags that may change: each override is printed.
      auto overridden = [&](const char* flag, const std::string& was, const std::string& now) {
        if (was != now) std::printf("%s: %s (the saved run had %s)\n", flag, now.c_str(), was.c_str());
      };
      if (given("--steps") && given("--epochs")) fail("--steps and --epochs: give one of them to extend a resumed run");
      if (given("--steps")) {
        overridden("--steps", opt.steps > 0 ? text(opt.steps) : text(opt.epochs) + " epochs", text(steps));
        opt.steps = steps, opt.epochs = 0;
      }
      if (given("--epochs")) {
        overridden("--epochs", opt.steps > 0 ? text(opt.steps) + " steps" : text(opt.epochs), text(epochs));
        opt.epochs = epochs, opt.steps = 0;
      }
      if (given("--eval-every")) overridden("--eval-every", text(opt.eval_every), text(eval_every)), opt.eval_every = eval_every;
      if (given("--save-every")) overridden("--save-every", text(opt.save_every), text(save_every)), opt.save_every = save_every;
      if (given("--save-total-limit"))
        overridden("--save-total-limit", opt.save_total_limit > 0 ? text(opt.save_total_limit) : "no limit",
                   text(save_total_limit)),
            opt.save_total_limit = save_total_limit;
      if (given("--workers")) overridden("--workers", text(opt.workers), text(workers)), opt.workers = workers;
      opt.output_dir = from->run_dir.string();
      if (given("--output") && !same_folder(output, from->run_dir)) {
        const std::vector<train::CheckpointRef> there = train::list_checkpoints(output);
        if (!there.empty())
          fail("--output ", output, " already holds a training run (", there.back().dir.filename().string(),
               "); continue that one with --resume ", output, ", or choose an empty folder");
        overridden("--output", opt.output_dir, output);
        opt.output_dir = output;
      }
      const int saved_threads = state.value("threads", 0);
      if (given("--threads") && threads != saved_threads)
        std::printf("--threads %d: warning: the saved run used %d threads; the continuation is not bit-identical to an "
                    "uninterrupted run\n", threads, saved_threads);
      else if (saved_threads > 0)
        threads = saved_threads;
      data_dir = saved_data;
      class_map = saved_map;
      subset = opt.extra.value("subset", int64_t{0});
      std::printf("Resuming %s at step %lld -> continuing in %s\n", from->state_dir.string().c_str(),
                  static_cast<long long>(done), opt.output_dir.c_str());
    } else if (!train::list_checkpoints(output).empty()) {
      fail("--output ", output, " already holds a training run (", train::list_checkpoints(output).back().dir.filename().string(),
           "); continue it with --resume ", output, ", or choose another --output (or delete the folder)");
    }
    if (threads > 0) set_num_threads(threads);
    set_max_image_pixels(max_pixels);

    const bool builtin = data_dir.empty();
    if (builtin) {
      data_dir = "runs/synthetic-scenes";
      std::printf("Data: built-in procedural street scenes in %s ", data_dir.c_str());
      std::fflush(stdout);
      const bool wrote = write_synthetic_dataset(data_dir, 200, 24, 24, 320, 240, /*seed=*/0);
      std::printf("(%s: 200 train, 24 val, 24 test, 320x240)\n", wrote ? "generated" : "reused");
    }
    DatasetOptions dopt;
    dopt.seed = from ? opt.seed : seed;
    if (!class_map.empty()) dopt.class_map = class_map;
    SegmentationDataset train_ds = SegmentationDataset::open(data_dir, "train", dopt);
    if (subset > 0) train_ds = train_ds.subset(static_cast<size_t>(std::min<int64_t>(subset, int64_t(train_ds.size()))));
    std::optional<SegmentationDataset> val_ds;
    if (fs::is_directory(fs::path(data_dir) / "val" / "images") || fs::is_directory(fs::path(data_dir) / "images"))
      val_ds = SegmentationDataset::open(data_dir, "val", dopt);
    if (val_ds && val_ds->size() == 0) val_ds.reset();

    if (!from) {
      const auto [ch, cw] = *parse_size(crop.empty() ? (builtin ? "160" : "512") : crop);
      opt.output_dir = output;
      opt.epochs = epochs > 0 ? epochs : (steps > 0 || builtin ? 0 : 10);
      opt.steps = steps > 0 ? steps : (epochs > 0 || !builtin ? 0 : 1000);
      opt.batch_size = batch_size;
      opt.lr = given("--lr") ? lr : (model_path.empty() ? 1e-3 : 6e-5);
      opt.optimizer = optimizer;
      opt.momentum = momentum;
      opt.weight_decay = weight_decay;
      opt.no_decay_norm_bias = no_decay_norm_bias;
      opt.head_lr_mult = head_lr_mult;
      opt.schedule = schedule;
      opt.warmup_steps = warmup;
      opt.grad_accum = grad_accum;
      opt.clip_grad_norm = clip;
      opt.crop_height = ch, opt.crop_width = cw;
      opt.augment = !no_augment;
      opt.save_every = save_every;
      opt.save_total_limit = save_total_limit;
      opt.seed = seed;
      opt.reduce_labels = reduce;
      opt.workers = workers;
      opt.extra = {{"data", builtin ? "" : data_dir}, {"class_map", class_map}, {"subset", subset},
                   {"model", model_path}, {"config", config_name}};
    }
    const std::vector<std::string> labels = train::class_names(train_ds.id2label(), opt.reduce_labels);

    // The model: a resumed run, a checkpoint, or a fresh preset.
    std::optional<SegformerForSemanticSegmentation<float>> model;
    SegformerImageProcessor processor;
    if (from) {
      LoadOptions lo;
      lo.strict = true;
      model.emplace(from_pretrained(from->state_dir.string(), lo));
      processor = SegformerImageProcessor::from_pretrained(from->state_dir.string());
      processor.do_reduce_labels = false;
      init = "resumed";
    } else if (!model_path.empty()) {
      LoadOptions lo;
      lo.labels = labels;
      lo.ignore_mismatched_sizes = true;
      lo.seed = seed;
      lo.revision = revision;
      model.emplace(from_pretrained(model_path, lo));
      processor = SegformerImageProcessor::from_pretrained(model_path, nullptr, {revision});
      init = "from " + model_path;
    } else {
      SegformerConfig cfg = preset(config_name.empty() ? "b0" : config_name);
      cfg.set_labels(labels);
      model.emplace(cfg, seed);
      init = "random " + (config_name.empty() ? std::string("b0") : config_name);
    }
    model->generator().manual_seed(opt.seed);
    processor.height = opt.crop_height;
    processor.width = opt.crop_width;
    processor.do_reduce_labels = false;

    train::Trainer trainer(*model, processor, train_ds, val_ds, opt);
    if (from) {
      if (trainer.total_steps() < from->step)
        fail(given("--steps") ? "--steps " : "--epochs ", given("--steps") ? steps : epochs, " gives ",
             trainer.total_steps(), " steps in total, fewer than the ", from->step, " the resumed run has done");
      trainer.load_state(from->state_dir.string());
    } else {
      trainer.set_eval_every(eval_every >= 0 ? eval_every : std::max<int64_t>(1, trainer.total_steps() / 5));
    }
    // A test-only pause after each file of a saved state, to land kills inside saves.
    if (const char* pause = std::getenv("SEGML_TEST_SAVE_PAUSE_MS"))
      trainer.on_state_file = [ms = std::atoi(pause)](const std::string&) {
        std::this_thread::sleep_for(std::chrono::milliseconds(ms));
      };

    if (from && trainer.finished()) {
      trainer.run();  // trains nothing; makes sure the output folder holds the final model
      std::printf("The run is complete at step %lld of %lld: nothing to train. Extend it with\n  %s --resume %s --steps N  (N > %lld)\n",
                  static_cast<long long>(trainer.step()), static_cast<long long>(trainer.total_steps()), argv[0],
                  opt.output_dir.c_str(), static_cast<long long>(trainer.step()));
      return 0;
    }

    int64_t params = 0;
    nn::Visitor<float> count;
    count.parameter = [&](const std::string&, Var<float>& p) { params += p.numel(); };
    count.buffer = [](const std::string&, Tensor<float>&) {};
    model->visit(count);
    std::printf("Model: SegFormer hidden sizes [%lld..%lld], %.2fM parameters, %zu classes, %s\n",
                static_cast<long long>(model->config.hidden_sizes.front()),
                static_cast<long long>(model->config.hidden_sizes.back()), double(params) / 1e6, labels.size(),
                init.c_str());
    std::printf("Training: %zu images, %s %lldx%lld, batch %lld x %lld, %lld steps, %s lr %.3g (%s), %d threads -> %s\n",
                train_ds.size(), opt.augment ? "augmented crops" : "resized to", static_cast<long long>(opt.crop_height),
                static_cast<long long>(opt.crop_width), static_cast<long long>(opt.batch_size),
                static_cast<long long>(opt.grad_accum), static_cast<long long>(trainer.total_steps()),
                opt.optimizer.c_str(), opt.lr, opt.schedule.c_str(), num_threads(), opt.output_dir.c_str());
    if (trainer.options().eval_every > 0)
      std::printf("Evaluating on %zu val images every %lld steps.\n", val_ds ? val_ds->size() : size_t{0},
                  static_cast<long long>(trainer.options().eval_every));
    std::printf("Ctrl-C stops after the current step and saves a resumable state.\n");

    std::signal(SIGINT, on_signal);
    std::signal(SIGTERM, on_signal);
    const bool finished = trainer.run(&g_stop);
    if (!finished) {
      std::printf("Stopped at step %lld of %lld; state saved in %s/checkpoint-%lld. Continue with:\n  %s --resume %s\n",
                  static_cast<long long>(trainer.step()), static_cast<long long>(trainer.total_steps()),
                  opt.output_dir.c_str(), static_cast<long long>(trainer.step()), argv[0], opt.output_dir.c_str());
      return 0;
    }
    const auto& h = trainer.history();
    if (!h.empty())
      std::printf("Loss: %.4f at step %lld -> %.4f at step %lld\n", h.front().loss, static_cast<long long>(h.front().step),
                  h.back().loss, static_cast<long long>(h.back().step));
    if (!trainer.evals().empty()) {
      std::printf("Validation (%s split, %zu images):\n", "val", val_ds->size());
      std::printf("%s", train::metrics_table(trainer.evals().back().metrics, labels).c_str());
    }
    std::printf("Saved the model to %s (config.json, model.safetensors, preprocessor_config.json) and the full state\n"
                "to %s/checkpoint-%lld; the log to %s/train_log.jsonl and the curves to %s/training_curves.svg\n",
                opt.output_dir.c_str(), opt.output_dir.c_str(), static_cast<long long>(trainer.step()),
                opt.output_dir.c_str(), opt.output_dir.c_str());
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "finetune_sidewalk: error: %s\n", e.what());
    return 1;
  }
}
