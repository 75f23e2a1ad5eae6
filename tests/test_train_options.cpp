// HF TrainingArguments in the library (segml/train/options.hpp, trainer.hpp, model_card.hpp): the
// one table of options (names, aliases, JSON round trip, max_grad_norm's default 1.0), HF's
// arithmetic (max_steps over num_train_epochs, warmup_steps over warmup_ratio, greater_is_better),
// the schedules HF names against transformers' formulas, gradient clipping on by default,
// trainer_state.json in HF's TrainerState layout, load_best_model_at_end with save_total_limit, and
// the model card. The command line is checked in tests/finetune_program.cpp.
#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <numbers>
#include <set>
#include <string>

#include <segml/data/synthetic_scenes.hpp>
#include <segml/io/safetensors.hpp>
#include <segml/train/trainer.hpp>

#include "support.hpp"
#include "train_support.hpp"

using namespace segml;
using namespace segml::train;
namespace fs = std::filesystem;
using segml::test::TempDir;

namespace {

SegformerConfig tiny_config(const std::vector<std::string>& labels) { return segml::test::tiny_train_config(labels); }

// 4 train, 2 val scenes of 48x40.
const fs::path& scenes() { return segml::test::scenes_once("options_scenes", 4, 2, 48, 40, 9); }

TrainOptions tiny_options(const fs::path& out) {
  TrainOptions o;
  o.output_dir = out.string();
  o.max_steps = 4;
  o.per_device_train_batch_size = 2;
  o.learning_rate = 3e-3;
  o.crop_height = o.crop_width = 32;
  o.verbose = false;
  o.dataloader_num_workers = 1;
  return o;
}

using segml::test::processor_for;

using segml::test::parameters_of;  // parameters only

std::string read_text(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// Every tensor of two safetensors files has the same bytes.
bool same_tensors(const fs::path& a, const fs::path& b) {
  const safetensors::File fa(a.string()), fb(b.string());
  if (fa.names() != fb.names()) return false;
  for (const std::string& n : fa.names()) {
    const Tensor<double> ta = fa.get<double>(n), tb = fb.get<double>(n);
    if (ta.shape() != tb.shape() ||
        std::memcmp(ta.data(), tb.data(), sizeof(double) * static_cast<size_t>(ta.numel())) != 0)
      return false;
  }
  return true;
}

}  // namespace

TEST_CASE("train options: one table gives distinct names and aliases, a JSON round trip and HF's defaults") {
  const TrainOptions defaults;
  CHECK(defaults.max_grad_norm == 1.0);  // HF's default (segml before: off)
  CHECK(defaults.lr_scheduler_type == "linear");
  CHECK(defaults.learning_rate == 6e-5);  // segml's (the SegFormer recipe), not HF's 5e-5
  std::set<std::string> flags;
  int rows = 0, aliases = 0;
  bool hf_rows_first = true, seen_own = false;
  for_each_option(defaults, [&](const OptionInfo& info, const auto&) {
    ++rows;
    CHECK_MESSAGE(flags.insert(info.name).second, "duplicate flag " << info.name);
    if (*info.alias) {
      ++aliases;
      CHECK_MESSAGE(flags.insert(info.alias).second, "duplicate flag " << info.alias);
    }
    if (!info.hf) seen_own = true;
    if (info.hf && seen_own) hf_rows_first = false;
  });
  CHECK(hf_rows_first);
  CHECK(aliases >= 12);
  // Every row is in the JSON, and a changed value of every type survives the round trip.
  TrainOptions o;
  o.num_train_epochs = 2.5;
  o.max_steps = -1;
  o.lr_scheduler_type = "cosine";
  o.load_best_model_at_end = true;
  o.seed = 18446744073709551615ull;
  o.extra = {{"data", "x"}};
  const nlohmann::json j = o.to_json();
  CHECK(static_cast<int>(j.size()) == rows + 1);  // + "extra"
  CHECK(TrainOptions::from_json(j).to_json() == j);
  nlohmann::json wrong = j;
  wrong["max_steps"] = "many";
  CHECK_THROWS_WITH_AS(TrainOptions::from_json(wrong), doctest::Contains("'max_steps' is \"many\""), segml::Error);
}

TEST_CASE("train options: HF's arithmetic of max_steps, num_train_epochs, warm-up and the best-model metric") {
  TrainOptions o;
  o.num_train_epochs = 2.5;
  CHECK(o.total_steps(10) == 25);
  o.num_train_epochs = 0.05;
  CHECK(o.total_steps(10) == 1);  // ceil(0.5)
  o.num_train_epochs = 3;
  CHECK(o.total_steps(7) == 21);
  o.max_steps = -1;  // HF's "use epochs"
  CHECK(o.total_steps(7) == 21);
  o.max_steps = 5;  // > 0 wins
  CHECK(o.total_steps(7) == 5);

  o.warmup_ratio = 0.1;
  CHECK(o.warmup_for(25) == 3);  // ceil(2.5)
  o.warmup_steps = 2;  // > 0 wins
  CHECK(o.warmup_for(25) == 2);

  CHECK(o.best_metric_key().empty());
  o.load_best_model_at_end = true;
  CHECK(o.best_metric_key() == "eval_loss");  // HF's default metric
  CHECK_FALSE(o.greater_is_better());
  o.metric_for_best_model = "mean_iou";
  CHECK(o.best_metric_key() == "eval_mean_iou");
  CHECK(o.greater_is_better());
  o.metric_for_best_model = "eval_overall_accuracy";
  CHECK(o.best_metric_key() == "eval_overall_accuracy");
  CHECK(o.greater_is_better());
}

TEST_CASE("schedules: HF's cosine, polynomial, constant_with_warmup and constant are transformers' formulas") {
  Schedule s;
  s.base_lr = 2.0;
  s.total_steps = 10;
  s.warmup_steps = 4;
  s.kind = "cosine";
  for (int i = 0; i <= 10; ++i) {
    const double want = i < 4 ? double(i) / 4 : 0.5 * (1 + std::cos(std::numbers::pi * double(i - 4) / 6));
    CHECK(s.lr(i) == doctest::Approx(2.0 * want).epsilon(1e-12));
  }
  s.kind = "polynomial";  // lr_end 1e-7, power 1
  for (int i = 0; i <= 12; ++i) {
    const double want = i < 4 ? 2.0 * i / 4 : i > 10 ? 1e-7 : (2.0 - 1e-7) * (1 - double(i - 4) / 6) + 1e-7;
    CHECK(s.lr(i) == doctest::Approx(want).epsilon(1e-12));
  }
  s.kind = "constant_with_warmup";
  for (int i = 0; i <= 10; ++i) CHECK(s.lr(i) == doctest::Approx(i < 4 ? 2.0 * i / 4 : 2.0).epsilon(1e-12));
  s.kind = "constant";  // HF: no warm-up at all
  for (int i = 0; i <= 10; ++i) CHECK(s.lr(i) == 2.0);
}

TEST_CASE("trainer: max_grad_norm 1.0 by default clips the first step like torch's clip_grad_norm_, 0 turns it off") {
  const SegmentationDataset train_ds = SegmentationDataset::open(scenes(), "train");
  TempDir a("clip_default"), b("clip_off");
  auto one_step = [&](const fs::path& out, double max_grad_norm, std::vector<float>& before, std::vector<float>& after) {
    TrainOptions o = tiny_options(out);
    o.max_steps = 1;
    o.optimizer = "sgd";
    o.momentum = 0;
    o.learning_rate = 0.5;
    o.lr_scheduler_type = "constant";
    if (max_grad_norm >= 0) o.max_grad_norm = max_grad_norm;
    SegformerForSemanticSegmentation<float> model(tiny_config(train_ds.id2label()), 3);
    before = parameters_of(model);
    Trainer t(model, processor_for(o), train_ds, std::nullopt, o);
    REQUIRE(t.run());
    after = parameters_of(model);
    return t.history().at(0).grad_norm;
  };
  std::vector<float> b0, a0, b1, a1;
  const double norm_clipped = one_step(a.path, -1, b0, a0);  // the default
  const double norm_plain = one_step(b.path, 0.0, b1, a1);
  REQUIRE(b0 == b1);
  CHECK(norm_clipped == norm_plain);  // the norm before clipping is logged either way
  REQUIRE(norm_plain > 1.0);          // else the default would not clip anything here
  // SGD without momentum: delta = -lr * g, and clipping scales every gradient by 1 / (norm + 1e-6).
  const double coef = 1.0 / (norm_plain + 1e-6);
  double worst = 0, largest = 0;
  for (size_t i = 0; i < b0.size(); ++i) {
    const double d_clipped = double(a0[i]) - double(b0[i]), d_plain = double(a1[i]) - double(b1[i]);
    worst = std::max(worst, std::abs(d_clipped - coef * d_plain));
    largest = std::max(largest, std::abs(d_plain));
  }
  MESSAGE("grad norm " << norm_plain << ", largest unclipped update " << largest << ", worst mismatch " << worst);
  CHECK(largest > 0);
  CHECK(worst <= 1e-6 * std::max(1.0, largest));
}

TEST_CASE("trainer: trainer_state.json has HF's TrainerState layout, with segml's resume fields under \"segml\"") {
  const SegmentationDataset train_ds = SegmentationDataset::open(scenes(), "train");
  const SegmentationDataset val_ds = SegmentationDataset::open(scenes(), "val");
  TempDir out("state_layout");
  TrainOptions o = tiny_options(out.path);
  o.max_steps = 4;
  o.eval_steps = 2;
  o.save_steps = 2;
  o.logging_steps = 2;
  o.metric_for_best_model = "mean_iou";
  SegformerForSemanticSegmentation<float> model(tiny_config(train_ds.id2label()), 5);
  Trainer t(model, processor_for(o), train_ds, val_ds, o);
  REQUIRE(t.run());
  const nlohmann::json s = nlohmann::json::parse(read_text(out.path / "checkpoint-4" / "trainer_state.json"));
  for (const char* k : {"global_step", "epoch", "max_steps", "num_train_epochs", "log_history", "best_metric",
                        "best_model_checkpoint", "logging_steps", "eval_steps", "save_steps", "train_batch_size",
                        "trial_name", "trial_params", "is_world_process_zero", "total_flos", "segml"})
    CHECK_MESSAGE(s.contains(k), "no " << k);
  CHECK(s.at("global_step") == 4);
  CHECK(s.at("max_steps") == 4);
  CHECK(s.at("logging_steps") == 2);
  CHECK(s.at("eval_steps") == 2);
  CHECK(s.at("save_steps") == 2);
  CHECK(s.at("train_batch_size") == 2);
  CHECK(s.at("epoch").get<double>() == doctest::Approx(2.0));  // 4 steps of 2 images over 4 images
  CHECK(s.at("num_train_epochs") == 2);
  // log_history: a training entry every logging_steps, an eval entry after each evaluation.
  std::vector<int64_t> train_steps, eval_steps;
  for (const nlohmann::json& e : s.at("log_history")) {
    if (e.contains("loss")) {
      for (const char* k : {"loss", "learning_rate", "grad_norm", "epoch", "step"}) CHECK_MESSAGE(e.contains(k), "no " << k);
      train_steps.push_back(e.at("step").get<int64_t>());
      // The mean of the logged steps' losses.
      const double mean = (t.history()[size_t(e.at("step").get<int64_t>()) - 2].loss +
                           t.history()[size_t(e.at("step").get<int64_t>()) - 1].loss) / 2;
      CHECK(e.at("loss").get<double>() == doctest::Approx(mean).epsilon(1e-12));
    } else {
      for (const char* k : {"eval_loss", "eval_mean_iou", "eval_mean_accuracy", "eval_overall_accuracy", "epoch", "step"})
        CHECK_MESSAGE(e.contains(k), "no " << k);
      eval_steps.push_back(e.at("step").get<int64_t>());
      CHECK(std::isfinite(e.at("eval_loss").get<double>()));
    }
  }
  CHECK(train_steps == std::vector<int64_t>{2, 4});
  CHECK(eval_steps == std::vector<int64_t>{2, 4});
  // The best by mean IoU (greater is better; the first of equals, like HF's strict comparison).
  const auto& ev = t.evals();
  REQUIRE(ev.size() == 2);
  const size_t best = ev[1].metrics.mean_iou > ev[0].metrics.mean_iou ? 1 : 0;
  CHECK(s.at("best_metric").get<double>() == ev[best].metrics.mean_iou);
  CHECK(s.at("best_model_checkpoint") == (out.path / ("checkpoint-" + std::to_string(ev[best].step))).string());
  const nlohmann::json& own = s.at("segml");
  for (const char* k : {"format", "version", "generator", "options", "history", "evals", "optimizer_steps"})
    CHECK_MESSAGE(own.contains(k), "no segml." << k);
  CHECK(own.at("options").at("metric_for_best_model") == "mean_iou");
  // A state in segml's earlier layout is refused with a message saying what to do.
  TempDir old("old_state");
  fs::copy(out.path / "checkpoint-4", old.path / "checkpoint-4");
  std::ofstream(old.path / "checkpoint-4" / "trainer_state.json") << R"({"format": "segml-trainer-state", "version": 2, "step": 4})";
  CHECK_THROWS_WITH_AS(verify_state(old.path / "checkpoint-4"), doctest::Contains("older segml"), segml::Error);
}

TEST_CASE("trainer: load_best_model_at_end leaves the best checkpoint's weights in output_dir, save_total_limit keeps it") {
  const SegmentationDataset train_ds = SegmentationDataset::open(scenes(), "train");
  const SegmentationDataset val_ds = SegmentationDataset::open(scenes(), "val");
  TempDir out("load_best");
  TrainOptions o = tiny_options(out.path);
  o.max_steps = 6;
  o.eval_steps = 1;
  o.save_total_limit = 1;
  o.load_best_model_at_end = true;  // metric: eval_loss, lower is better
  o.learning_rate = 0.05;            // a large step: the val loss moves up and down
  o.lr_scheduler_type = "constant";
  SegformerForSemanticSegmentation<float> model(tiny_config(train_ds.id2label()), 7);
  Trainer t(model, processor_for(o), train_ds, val_ds, o);
  REQUIRE(t.run());
  const auto& ev = t.evals();
  REQUIRE(ev.size() == 6);
  size_t best = 0;
  for (size_t i = 1; i < ev.size(); ++i)
    if (ev[i].loss < ev[best].loss) best = i;
  MESSAGE("eval losses: " << ev[0].loss << " " << ev[1].loss << " " << ev[2].loss << " " << ev[3].loss << " "
                          << ev[4].loss << " " << ev[5].loss << "; best at step " << ev[best].step);
  CHECK(t.best_step() == ev[best].step);
  const fs::path best_dir = out.path / ("checkpoint-" + std::to_string(ev[best].step));
  // save_total_limit 1: the newest checkpoint and the best one remain.
  std::set<int64_t> kept;
  for (const CheckpointRef& c : list_checkpoints(out.path)) kept.insert(c.step);
  CHECK(kept == std::set<int64_t>{ev[best].step, 6});
  CHECK(same_tensors(out.path / "model.safetensors", best_dir / "model.safetensors"));
  CHECK(safetensors::File((out.path / "model.safetensors").string()).metadata().at("weights_step") ==
        std::to_string(ev[best].step));
  const nlohmann::json s = nlohmann::json::parse(read_text(out.path / "checkpoint-6" / "trainer_state.json"));
  CHECK(s.at("best_model_checkpoint") == best_dir.string());
  CHECK(s.at("best_metric").get<double>() == ev[best].loss);
  // The card leads with the best evaluation.
  const std::string card = read_text(out.path / "README.md");
  CHECK(card.find("step " + std::to_string(ev[best].step) + ", the best by eval_loss") != std::string::npos);
}

TEST_CASE("trainer: the output folder gets a model card README.md with HF's sections and a sample overlay") {
  const SegmentationDataset train_ds = SegmentationDataset::open(scenes(), "train");
  const SegmentationDataset val_ds = SegmentationDataset::open(scenes(), "val");
  TempDir out("model_card");
  TrainOptions o = tiny_options(out.path);
  o.max_steps = 4;
  o.eval_steps = 2;
  o.gradient_accumulation_steps = 2;
  o.warmup_ratio = 0.5;
  SegformerForSemanticSegmentation<float> model(tiny_config(train_ds.id2label()), 5);
  Trainer t(model, processor_for(o), train_ds, val_ds, o);
  t.base_model = "nvidia/mit-b0";
  t.dataset_name = "scenes: a test set #1";  // ':' and '#' must not break the YAML
  REQUIRE(t.run());
  const std::string card = read_text(out.path / "README.md");
  MESSAGE(card);
  REQUIRE(card.rfind("---\n", 0) == 0);
  const size_t end = card.find("\n---\n", 4);
  REQUIRE(end != std::string::npos);
  const std::string front = card.substr(0, end);
  for (const char* s : {"library_name: segml", "license:", "base_model: \"nvidia/mit-b0\"", "tags:", "- generated_from_trainer",
                        "datasets:\n- \"scenes: a test set #1\"", "model-index:", "type: mean_iou", "type: mean_accuracy",
                        "type: overall_accuracy"})
    CHECK_MESSAGE(front.find(s) != std::string::npos, "front matter lacks " << s);
  char miou[64];
  std::snprintf(miou, sizeof miou, "value: %.6g", t.evals().back().metrics.mean_iou);
  CHECK_MESSAGE(front.find(miou) != std::string::npos, "front matter lacks " << miou);
  for (const char* s : {"## Model description", "## Training and evaluation data", "### Training hyperparameters",
                        "- learning_rate: 0.003\n", "- train_batch_size: 2\n", "- eval_batch_size: 8\n", "- seed: 0\n",
                        "- gradient_accumulation_steps: 2\n", "- total_train_batch_size: 4\n",
                        "- optimizer: AdamW with betas=(0.9,0.999) and epsilon=1e-08", "- lr_scheduler_type: linear\n",
                        "- lr_scheduler_warmup_ratio: 0.5\n", "- training_steps: 4\n", "### Training results",
                        "| Training Loss | Epoch | Step | Validation Loss | Mean Iou | Mean Accuracy | Overall Accuracy |",
                        "### Framework versions", "- segml ", "](sample_overlay.png)"})
    CHECK_MESSAGE(card.find(s) != std::string::npos, "the card lacks " << s);
  // One results row per evaluation, with its step and its validation loss.
  for (const EvalRecord& e : t.evals()) {
    CHECK_MESSAGE(card.find(" | " + std::to_string(e.step) + " | " + ModelCard::figure(e.loss) + " | ") != std::string::npos,
                  "no row for step " << e.step);
  }
  // The sample overlay is a PNG of the val image's size plus a legend.
  const Image png = load_image((out.path / "sample_overlay.png").string());
  CHECK(png.width >= 48);
  CHECK(png.height >= 40);
  for (const auto& e : fs::directory_iterator(out.path))  // written atomically: no temporary left
    CHECK_MESSAGE(e.path().filename().string().find(".tmp") == std::string::npos, e.path());
}
