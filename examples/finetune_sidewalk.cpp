// finetune_sidewalk: fine-tune (or train from scratch) a SegFormer on a segmentation dataset.
//
// With no arguments it generates a small procedural street-scene dataset (runs/synthetic-scenes),
// trains a randomly initialised B0 on it for a few minutes on a laptop CPU, evaluates it, and
// writes an HF checkpoint, train_log.jsonl and training_curves.svg to runs/finetune. Ctrl-C stops
// after the current step and saves a resumable state; `--resume runs/finetune` continues it.
// See docs/training.md.
#include <CLI/CLI.hpp>

#include <atomic>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <optional>
#include <string>

#include <segml/segformer.hpp>
#include <segml/train/trainer.hpp>

namespace fs = std::filesystem;
using namespace segml;

namespace {

std::atomic<bool> g_stop{false};

extern "C" void on_signal(int) {
  if (g_stop.load()) std::_Exit(130);  // a second Ctrl-C: leave now
  g_stop.store(true);
}

// "512" or "384x512" -> (height, width).
std::pair<int64_t, int64_t> parse_size(const std::string& s) {
  const auto x = s.find('x');
  try {
    const int64_t h = std::stoll(s.substr(0, x)), w = x == std::string::npos ? h : std::stoll(s.substr(x + 1));
    if (h > 0 && w > 0) return {h, w};
  } catch (const std::exception&) {
  }
  fail("--crop-size: expected H or HxW with positive integers, got '", s, "'");
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

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Fine-tune a SegFormer for semantic segmentation on the CPU (see docs/training.md).\n"
               "Without arguments: B0 from scratch on built-in procedural street scenes, a few minutes."};
  std::string model_path, config_name, data_dir, output = "runs/finetune", resume, class_map, crop = "";
  std::string optimizer = "adamw", schedule = "linear";
  int64_t epochs = 0, steps = 0, batch_size = 2, warmup = 0, grad_accum = 1, subset = 0, eval_every = -1,
          save_every = 0;
  double lr = 0, momentum = 0.9, weight_decay = 0.0, head_lr_mult = 1.0, clip = 0.0;
  bool no_augment = false, no_decay_norm_bias = false, reduce = false;
  uint64_t seed = 0;
  int threads = 0, workers = 2;

  app.add_option("--model", model_path,
                 "HF checkpoint folder or .safetensors to start from (e.g. weights/mit-b0; an encoder-only "
                 "checkpoint gets a fresh decode head for the dataset's labels), or an earlier run's output");
  app.add_option("--config", config_name, "Random initialisation from a preset instead: b0..b5 (default without --model: b0)")
      ->check(CLI::IsMember({"b0", "b1", "b2", "b3", "b4", "b5"}));
  app.add_option("--data", data_dir,
                 "Dataset folder (id2label.json + {train,val,test}/{images,labels} or images/ + labels/). "
                 "Default: built-in synthetic street scenes, generated once into runs/synthetic-scenes");
  app.add_option("--output", output, "Output folder: checkpoints, train_log.jsonl, training_curves.svg")
      ->capture_default_str();
  app.add_option("--epochs", epochs, "Epochs to train (default: 10 on your data; ignored when --steps is given)");
  app.add_option("--steps", steps, "Optimizer steps to train (default on the built-in data: 1000)");
  app.add_option("--batch-size", batch_size, "Images per micro-batch")->capture_default_str();
  app.add_option("--lr", lr,
                 "Peak learning rate. Default 6e-5 (HF's tutorial) with --model; 1e-3 for a randomly initialised "
                 "model, which learns far too slowly at 6e-5 to show progress in a few minutes");
  app.add_option("--optimizer", optimizer, "adamw or sgd")->check(CLI::IsMember({"adamw", "sgd"}))->capture_default_str();
  app.add_option("--momentum", momentum, "SGD momentum")->capture_default_str();
  app.add_option("--weight-decay", weight_decay, "Weight decay (AdamW: decoupled), HF Trainer default 0")
      ->capture_default_str();
  app.add_flag("--no-decay-norm-bias", no_decay_norm_bias, "No weight decay on norm weights and biases");
  app.add_option("--head-lr-mult", head_lr_mult, "Learning-rate multiplier of the decode head (SegFormer recipe: 10)")
      ->capture_default_str();
  app.add_option("--schedule", schedule, "linear (HF Trainer), poly (SegFormer recipe, power 1) or constant")
      ->check(CLI::IsMember({"linear", "poly", "constant"}))
      ->capture_default_str();
  app.add_option("--warmup-steps", warmup, "Linear warm-up steps")->capture_default_str();
  app.add_option("--grad-accum", grad_accum, "Micro-batches per optimizer step (the loss is averaged)")
      ->capture_default_str();
  app.add_option("--clip-grad-norm", clip, "Clip the total gradient L2 norm to this value (0 = off)");
  app.add_option("--crop-size", crop, "Training crop H or HxW; also the evaluation resize (default 512; 160 on the built-in data, so the default run takes a few minutes)");
  app.add_flag("--no-augment", no_augment,
               "No augmentation: resize whole images to the crop size (HF's tutorial) instead of random "
               "resize 0.5-2, crop (cat_max_ratio 0.75), flip, photometric distortion");
  app.add_option("--subset", subset, "Train on the first N training images only (e.g. to overfit a few)");
  app.add_option("--eval-every", eval_every, "Evaluate on the val split every N steps (default: 5 times per run; 0 = only at the end)");
  app.add_option("--save-every", save_every, "Save checkpoint-<step> and the resume state every N steps (0 = only at the end)");
  app.add_option("--resume", resume, "Continue the run saved in DIR (its --output, or DIR/resume); its options are reused");
  app.add_option("--seed", seed, "Seed of the initialisation, data order, augmentation and dropout")->capture_default_str();
  app.add_option("--threads", threads, "Compute threads (default: all cores / OMP_NUM_THREADS)");
  app.add_option("--workers", workers, "Data-loading threads")->capture_default_str();
  app.add_option("--class-map", class_map, "JSON remapping the dataset's class ids (see docs/datasets.md)");
  app.add_flag("--reduce-labels", reduce, "HF's reduce_labels: id 0 (background) becomes ignore, k becomes k-1");
  CLI11_PARSE(app, argc, argv);

  try {
    if (threads > 0) set_num_threads(threads);
    train::TrainOptions opt;
    std::string init;  // what the weights start from, for the log
    fs::path resume_dir;
    if (!resume.empty()) {
      resume_dir = fs::exists(fs::path(resume) / "resume" / "trainer_state.json") ? fs::path(resume) / "resume" : fs::path(resume);
      SEGML_CHECK(fs::exists(resume_dir / "trainer_state.json"), "--resume: no trainer_state.json in ", resume, " or ",
                  (fs::path(resume) / "resume").string());
      const nlohmann::json state = detail::read_json_file(resume_dir / "trainer_state.json", "trainer state");
      opt = train::TrainOptions::from_json(state["options"]);
      data_dir = opt.extra.value("data", "");
      class_map = opt.extra.value("class_map", "");
      subset = opt.extra.value("subset", int64_t{0});
      std::printf("Resuming %s at step %lld (the saved run's options are used)\n", resume_dir.string().c_str(),
                  static_cast<long long>(state["step"].get<int64_t>()));
    }

    const bool builtin = data_dir.empty();
    if (builtin) {
      data_dir = "runs/synthetic-scenes";
      std::printf("Data: built-in procedural street scenes in %s ", data_dir.c_str());
      std::fflush(stdout);
      const bool wrote = write_synthetic_dataset(data_dir, 200, 24, 24, 320, 240, /*seed=*/0);
      std::printf("(%s: 200 train, 24 val, 24 test, 320x240)\n", wrote ? "generated" : "reused");
    }
    DatasetOptions dopt;
    dopt.seed = resume.empty() ? seed : opt.seed;
    if (!class_map.empty()) dopt.class_map = class_map;
    SegmentationDataset train_ds = SegmentationDataset::open(data_dir, "train", dopt);
    if (subset > 0) train_ds = train_ds.subset(static_cast<size_t>(std::min<int64_t>(subset, int64_t(train_ds.size()))));
    std::optional<SegmentationDataset> val_ds;
    if (fs::is_directory(fs::path(data_dir) / "val" / "images") || fs::is_directory(fs::path(data_dir) / "images"))
      val_ds = SegmentationDataset::open(data_dir, "val", dopt);
    if (val_ds && val_ds->size() == 0) val_ds.reset();

    if (resume.empty()) {
      const auto [ch, cw] = parse_size(crop.empty() ? (builtin ? "160" : "512") : crop);
      opt.output_dir = output;
      opt.epochs = epochs > 0 ? epochs : (steps > 0 || builtin ? 0 : 10);
      opt.steps = steps > 0 ? steps : (epochs > 0 || !builtin ? 0 : 1000);
      opt.batch_size = batch_size;
      opt.lr = lr > 0 ? lr : (model_path.empty() ? 1e-3 : 6e-5);
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
      opt.seed = seed;
      opt.reduce_labels = reduce;
      opt.workers = workers;
      opt.extra = {{"data", builtin ? "" : data_dir}, {"class_map", class_map}, {"subset", subset}};
    }
    const std::vector<std::string> labels = train::class_names(train_ds.id2label(), opt.reduce_labels);

    // The model: a resumed run, a checkpoint, or a fresh preset.
    std::optional<SegformerForSemanticSegmentation<float>> model;
    SegformerImageProcessor processor;
    if (!resume_dir.empty()) {
      LoadOptions lo;
      lo.strict = true;
      model.emplace(from_pretrained(resume_dir.string(), lo));
      processor = SegformerImageProcessor::from_json_file((resume_dir / "preprocessor_config.json").string());
      processor.do_reduce_labels = false;
      init = "resumed";
    } else if (!model_path.empty()) {
      LoadOptions lo;
      lo.labels = labels;
      lo.ignore_mismatched_sizes = true;
      lo.seed = seed;
      model.emplace(from_pretrained(model_path, lo));
      const fs::path folder = fs::is_directory(model_path) ? fs::path(model_path) : fs::path(model_path).parent_path();
      if (fs::exists(folder / "preprocessor_config.json"))
        processor = SegformerImageProcessor::from_json_file((folder / "preprocessor_config.json").string());
      init = "from " + model_path;
    } else {
      SegformerConfig cfg = preset(config_name.empty() ? "b0" : config_name);
      cfg.set_labels(labels);
      model.emplace(cfg, seed);
      init = "random " + (config_name.empty() ? std::string("b0") : config_name);
    }
    model->generator().manual_seed(seed);
    processor.height = opt.crop_height;
    processor.width = opt.crop_width;
    processor.do_reduce_labels = false;

    train::Trainer trainer(*model, processor, train_ds, val_ds, opt);
    if (!resume_dir.empty())
      trainer.load_resume(resume_dir.string());
    else
      trainer.set_eval_every(eval_every >= 0 ? eval_every : std::max<int64_t>(1, trainer.total_steps() / 5));

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
      std::printf("Stopped at step %lld of %lld; state saved in %s/resume. Continue with:\n  %s --resume %s\n",
                  static_cast<long long>(trainer.step()), static_cast<long long>(trainer.total_steps()),
                  opt.output_dir.c_str(), argv[0], opt.output_dir.c_str());
      return 0;
    }
    const auto& h = trainer.history();
    if (!h.empty())
      std::printf("Loss: %.4f at step 1 -> %.4f at step %lld\n", h.front().loss, h.back().loss,
                  static_cast<long long>(h.back().step));
    if (!trainer.evals().empty()) {
      std::printf("Validation (%s split, %zu images):\n", "val", val_ds->size());
      std::printf("%s", train::metrics_table(trainer.evals().back().metrics, labels).c_str());
    }
    std::printf("Saved the model to %s (config.json, model.safetensors, preprocessor_config.json),\n"
                "the log to %s/train_log.jsonl and the curves to %s/training_curves.svg\n",
                opt.output_dir.c_str(), opt.output_dir.c_str(), opt.output_dir.c_str());
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "finetune_sidewalk: error: %s\n", e.what());
    return 1;
  }
}
