// evaluate: mean IoU of a segmentation model on a dataset split, as HF evaluate's mean_iou. Either
// a SegFormer checkpoint (--model) or, zero-shot, a CLIPSeg folder (--zero-shot-model) prompted with
// the dataset's class names.
//
// SegFormer: each image is resized to the model's preprocessor size, run by the inference engine
// (SegformerInference; --autograd runs the autograd model instead, same logits to float32 rounding),
// the logits are upsampled bilinearly to the label's size and argmax'ed.
//
// Split: --split names a split folder (see docs/datasets.md); by default the first of "val",
// "validation" and "test" that the dataset has. A split that does not exist is an error listing the
// splits found. --subset N evaluates the N images that finetune_sidewalk --subset N trains on (the
// same seeded choice, --seed): with --split train, the overfit check of docs/training.md.
// Zero-shot (CLIPSeg): one prompt per class of the dataset's id2label (after --class-map /
// --reduce-labels): the class name cleaned for prompting (underscores and dashes become spaces,
// runs of spaces one, ASCII letters lower case) put into --prompt-template (exactly one "{}",
// default "{}"); --prompts-file {"class name or id": "prompt"} replaces single classes' prompts
// verbatim. The text tower runs once for all prompts; per image the vision tower runs once and the
// decoder for all prompts in one batch. The image is resized to the processor's size (352 x 352 for
// rd64-refined, aspect ignored); the logits -> sigmoid -> bilinear to the label's size -> argmax
// over the classes, so every pixel gets a class. With --zero-shot-threshold T a pixel where no class
// exceeds T (ties included) gets no class: it counts as a miss for its true class (in the class's
// label pixels, in no class's predicted pixels) and as a "(no class)" column in the confusion matrix.
//
// Both print a per-class table, the confusion matrix as row-normalised percentages (up to 30
// classes; rows = ground truth, columns = prediction), the progress with an ETA and the throughput;
// optionally write the metrics as JSON / Markdown, a row-normalised confusion-matrix heatmap (SVG)
// and, per image, the prediction beside the ground truth, both as colour overlays with one legend
// (PNG; colours by class name: class_colors() of io/palette.hpp, the dataset's class_colors.json
// first). Images larger than --max-pixels are refused from their header, before
// decoding; a checkpoint with NaN / Inf weights is refused unless --allow-non-finite; any failure
// while evaluating names the image(s) it was for. Every numeric flag is checked.
#include <CLI/CLI.hpp>

#include <algorithm>
#include <array>
#include <cctype>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>

#include <segml/models/clip/tokenization_clip.hpp>
#include <segml/models/clipseg/clipseg_inference.hpp>
#include <segml/models/clipseg/pretrained_clipseg.hpp>
#include <segml/models/clipseg/processing_clipseg.hpp>
#include <segml/segformer.hpp>
#include <segml/train/evaluation.hpp>
#include <segml/train/plot.hpp>

#include "cli_checks.hpp"

namespace fs = std::filesystem;
using namespace segml;

namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

void write_text(const fs::path& path, const std::string& text) {
  if (path.has_parent_path()) fs::create_directories(path.parent_path());
  safetensors::write_file_atomic(path.string(), std::vector<char>(text.begin(), text.end()));
}

std::string duration_text(double s) {
  char buf[32];
  const long long t = std::llround(s);
  if (t >= 3600) std::snprintf(buf, sizeof buf, "%lldh%02lldm", t / 3600, t / 60 % 60);
  else if (t >= 60) std::snprintf(buf, sizeof buf, "%lldm%02llds", t / 60, t % 60);
  else std::snprintf(buf, sizeof buf, "%.1fs", s);
  return buf;
}

// "[  12/101] 3.4s elapsed, ETA 1m02s": about 20 lines per run, and the last image.
struct Progress {
  size_t total;
  Clock::time_point start = Clock::now();
  size_t done = 0;
  void step() {
    ++done;
    const size_t every = std::max<size_t>(1, total / 20);
    if (done % every != 0 && done != total) return;
    const double elapsed = seconds_since(start);
    std::printf("  [%*zu/%zu] %s elapsed, ETA %s\n", int(std::to_string(total).size()), done, total,
                duration_text(elapsed).c_str(), duration_text(elapsed / double(done) * double(total - done)).c_str());
    std::fflush(stdout);
  }
};

// ---- zero-shot prompts -------------------------------------------------------------------------

// A class name as a prompt: '_' and '-' -> ' ', runs of white space -> one space, trimmed, ASCII
// letters lower case ("Sign_Symbol" -> "sign symbol"; other characters, e.g. '+', are kept).
std::string clean_class_name(const std::string& name) { return normalize_class_name(name, "_-"); }

void check_template(const std::string& t) {
  size_t count = 0;
  for (size_t p = t.find("{}"); p != std::string::npos; p = t.find("{}", p + 2)) ++count;
  if (count != 1)
    fail("--prompt-template: '", t, "' contains ", count, " \"{}\"; expected exactly one (where the class name goes), e.g. "
         "\"a photo of a {}.\"");
}

std::string apply_template(const std::string& t, const std::string& name) {
  const size_t p = t.find("{}");
  return t.substr(0, p) + name + t.substr(p + 2);
}

// --prompts-file: {"class name or id": "prompt"}, each key naming one class of `names` (its id, its
// name as in id2label, or its cleaned name); the prompt replaces that class's prompt verbatim.
void apply_prompts_file(const std::string& file, const std::vector<std::string>& names, std::vector<std::string>& prompts) {
  std::error_code ec;
  const auto bytes = fs::file_size(file, ec);
  if (ec) fail("--prompts-file: cannot read '", file, "': ", ec.message());
  if (bytes > (1u << 20)) fail("--prompts-file '", file, "': ", bytes, " bytes; at most 1 MiB expected");
  nlohmann::json j;
  try {
    std::ifstream in(file);
    j = nlohmann::json::parse(in);
  } catch (const std::exception& e) {
    fail("--prompts-file '", file, "': not valid JSON (", e.what(), ")");
  }
  if (!j.is_object())
    fail("--prompts-file '", file, "': expected a JSON object {\"class name or id\": \"prompt\"}, got ", j.type_name());
  std::vector<bool> set(names.size(), false);
  for (const auto& [key, value] : j.items()) {
    size_t cls = names.size();
    for (size_t c = 0; c < names.size(); ++c)
      if (key == std::to_string(c) || key == names[c] || key == clean_class_name(names[c])) cls = c;
    if (cls == names.size()) {
      std::string list;
      for (size_t c = 0; c < names.size(); ++c) list += (c ? ", " : "") + std::to_string(c) + " " + names[c];
      fail("--prompts-file '", file, "': key \"", key, "\" is not a class id or name of the dataset (", list, ")");
    }
    if (set[cls]) fail("--prompts-file '", file, "': class ", cls, " (", names[cls], ") is given twice");
    if (!value.is_string() || value.get<std::string>().find_first_not_of(" \t\r\n") == std::string::npos)
      fail("--prompts-file '", file, "': the prompt for \"", key, "\" must be a non-empty string, got ", value.dump());
    set[cls] = true;
    prompts[cls] = value.get<std::string>();
  }
}

// ---- zero-shot evaluation ----------------------------------------------------------------------

struct ZeroShotResult {
  train::EvalResult eval;
  std::vector<double> confusion_with_none;  // (n, n + 1): column n = pixels with no class (threshold only)
  double unassigned = 0;                     // share of the evaluated pixels with no class
  double preprocess_ms = 0, vision_ms = 0, decoder_ms = 0, postprocess_ms = 0, text_ms = 0;  // per image (text: once)
};

// The label map of one image at (H, W): class ids 0..n-1, and n ("no class") where no class's
// probability exceeds `threshold` (when given). n = logits.size(0) < 256, so the map is narrow.
LabelMap zero_shot_label_map(const Tensor<float>& logits, std::optional<double> threshold, int64_t H, int64_t W) {
  const int64_t n = logits.size(0);
  if (threshold) {
    LabelMap m = post_process_zero_shot(logits, *threshold, H, W);  // 0 = nothing, k = class k - 1
    for (auto& v : m.narrow.data) v = static_cast<uint8_t>(v == 0 ? n : v - 1);
    return m;
  }
  // Without a threshold: argmax over the upsampled class probabilities.
  Tensor<float> p = Tensor<float>::empty({1, n, logits.size(1), logits.size(2)});
  const Tensor<float> x = logits.contiguous();
  for (int64_t i = 0; i < x.numel(); ++i) p.data()[i] = 1.0f / (1.0f + std::exp(-x.data()[i]));
  return SegformerImageProcessor().post_process_label_map(p, 0, H, W);
}

ZeroShotResult evaluate_zero_shot(CLIPSegInference<float>& engine, const ViTImageProcessor& processor,
                                  const std::vector<std::vector<int64_t>>& ids, const SegmentationDataset& ds,
                                  bool reduce, std::optional<double> threshold, const train::OnPrediction& on_prediction) {
  const auto t0 = Clock::now();
  const int64_t n = static_cast<int64_t>(ids.size());
  ZeroShotResult r;
  const Tensor<float> cond = engine.text_features(ids);  // (n, projection_dim), once
  r.text_ms = engine.timings().text;
  train::MeanIoUAccumulator acc(n, 255, reduce), with_none(n + 1, 255, reduce);
  for (size_t i = 0; i < ds.size(); ++i) {
    try {
      auto t = Clock::now();
      const Sample s = ds.load(i);
      const Tensor<float> pixel_values = processor.preprocess(s.rgb);
      r.preprocess_ms += 1e3 * seconds_since(t);
      const auto features = engine.encode_image(pixel_values);
      r.vision_ms += engine.timings().vision;
      const Tensor<float> logits = engine.decode(features, cond);  // (n, h, w)
      r.decoder_ms += engine.timings().decoder;
      t = Clock::now();
      const LabelMap pred = zero_shot_label_map(logits, threshold, s.label.height, s.label.width);
      acc.add(pred.narrow.data.data(), s.label.data.data(), pred.numel());
      if (threshold) with_none.add(pred.narrow.data.data(), s.label.data.data(), pred.numel());
      r.postprocess_ms += 1e3 * seconds_since(t);
      if (on_prediction) {
        Tensor<int64_t> p = Tensor<int64_t>::empty({pred.height, pred.width});
        for (int64_t k = 0; k < pred.numel(); ++k) p.data()[k] = pred[k];
        on_prediction(i, s, p);
      }
    } catch (const std::exception& e) {
      fail("evaluate: while processing ", ds.path_of(i).string(), ": ",
           dynamic_cast<const std::bad_alloc*>(&e) ? "out of memory" : e.what());
    }
  }
  r.eval.metrics = acc.compute();
  r.eval.confusion = acc.confusion();
  r.eval.images = static_cast<int64_t>(ds.size());
  if (threshold) {
    const std::vector<double>& c = with_none.confusion();
    double none = 0, total = 0;
    for (int64_t l = 0; l < n; ++l)
      for (int64_t p = 0; p <= n; ++p) {
        const double v = c[size_t(l * (n + 1) + p)];
        r.confusion_with_none.push_back(v);
        total += v;
        if (p == n) none += v;
      }
    r.unassigned = total > 0 ? none / total : 0;
  }
  const double images = std::max(1.0, double(ds.size()));
  r.preprocess_ms /= images, r.vision_ms /= images, r.decoder_ms /= images, r.postprocess_ms /= images;
  r.eval.seconds = seconds_since(t0);
  return r;
}

// The split folders of a dataset in the split layout (DIR/<split>/images), sorted; for the flat
// layout (DIR/images) the three splits it is cut into.
std::vector<std::string> splits_found(const fs::path& dir) {
  std::vector<std::string> out;
  std::error_code ec;
  if (fs::is_directory(dir / "images", ec)) return {"train", "val", "test"};
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec))
    if (it->is_directory(ec) && fs::is_directory(it->path() / "images", ec)) out.push_back(it->path().filename().string());
  std::sort(out.begin(), out.end());
  return out;
}

// --split: the one asked for if the dataset has it; by default the first of val, validation, test.
std::string choose_split(const fs::path& dir, const std::string& asked) {
  if (!fs::is_directory(dir)) fail("--data: '", dir.string(), "' is not a folder");
  const std::vector<std::string> found = splits_found(dir);
  std::string list;
  for (const std::string& f : found) list += (list.empty() ? "" : ", ") + f;
  if (list.empty()) list = "none: no <split>/images folder and no images/ folder";
  if (!asked.empty()) {
    if (std::find(found.begin(), found.end(), asked) == found.end())
      fail("--split: '", asked, "' is not a split of ", dir.string(), "; splits found: ", list);
    return asked;
  }
  for (const char* s : {"val", "validation", "test"})
    if (std::find(found.begin(), found.end(), s) != found.end()) return s;
  fail("--data ", dir.string(), ": no val, validation or test split to evaluate by default; give --split (splits found: ",
       list, ")");
}

// The ground truth of a sample as a label map of the model's ids: reduce_labels applied (0 -> ignore,
// k -> k - 1); ignored pixels get id 255 (never a class: at most 255 classes, ids 0..254).
LabelMap ground_truth(const Sample& s, bool reduce) {
  LabelMap m(s.label.height, s.label.width, 256);
  for (int64_t k = 0; k < m.numel(); ++k) {
    const uint8_t v = s.label.data[size_t(k)];
    m.narrow.data[size_t(k)] = reduce ? (v == 0 || v == 255 ? uint8_t(255) : uint8_t(v - 1)) : v;
  }
  return m;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Evaluate a SegFormer checkpoint, or a CLIPSeg model zero-shot, on a dataset split (mean IoU as HF "
               "evaluate's mean_iou)."};
  std::string model_path, zero_shot_path, data_dir, split, json_out, md_out, confusion_out, pred_dir, class_map;
  std::string prompt_template = "{}", prompts_file;
  double zero_shot_threshold = 0;
  int64_t batch_size = 4, subset = 0;
  uint64_t seed = 0;
  int threads = 0;
  int64_t max_pixels = kDefaultMaxPixels;
  bool reduce = false, allow_non_finite = false, autograd = false;
  std::string revision = "main";
  app.add_option("--model", model_path, "SegFormer HF checkpoint folder (config.json, model.safetensors, preprocessor_config.json), "
                 "or a hub id (org/name: HF cache, else downloaded)");
  app.add_option("--revision", revision, "with a hub id: branch, tag or commit")->capture_default_str();
  app.add_option("--zero-shot-model", zero_shot_path,
                 "instead of --model: a CLIPSeg HF folder (config.json, model.safetensors, vocab.json, merges.txt), "
                 "prompted with the dataset's class names");
  app.add_option("--prompt-template", prompt_template, "zero-shot: the prompt of each class, \"{}\" = its cleaned name")
      ->capture_default_str();
  app.add_option("--prompts-file", prompts_file, "zero-shot: JSON {\"class name or id\": \"prompt\"} replacing single classes' prompts");
  app.add_option("--zero-shot-threshold", zero_shot_threshold,
                 "zero-shot: a pixel where no class's probability exceeds this gets no class (a miss); default: none")
      ->check(cli::real(0.0, 1.0));
  app.add_option("--data", data_dir, "Dataset folder (see docs/datasets.md)")->required();
  app.add_option("--split", split,
                 "Split to evaluate (a folder of --data); default: the first of val, validation, test that exists");
  app.add_option("--subset", subset,
                 "Evaluate only the N images finetune_sidewalk --subset N picks (same --seed); with --split train: "
                 "the overfit check")
      ->check(cli::positive_whole());
  app.add_option("--seed", seed, "Seed of --subset's choice (the training run's --seed)")
      ->capture_default_str()
      ->check(cli::non_negative_whole());
  app.add_option("--json", json_out, "Write the metrics (and per-class names) as JSON");
  app.add_option("--markdown", md_out, "Write the per-class table as Markdown");
  app.add_option("--confusion", confusion_out, "Write a row-normalised confusion-matrix heatmap (SVG)");
  app.add_option("--predictions", pred_dir,
                 "Write each image's prediction beside its ground truth, as colour overlays with a legend (PNG), "
                 "into this folder");
  app.add_option("--batch-size", batch_size, "Images per forward pass (SegFormer; zero-shot runs one image at a time)")
      ->capture_default_str()
      ->check(cli::whole(1, 1024));
  app.add_option("--threads", threads, "Compute threads (default: all cores / OMP_NUM_THREADS)")->check(cli::whole(1, 1024));
  app.add_option("--max-pixels", max_pixels, "Refuse images with more pixels than this (read from the header, before decoding)")
      ->capture_default_str()
      ->check(cli::positive_whole());
  app.add_flag("--autograd", autograd,
               "SegFormer: run the autograd model instead of the inference engine (slower, same logits to float32 "
               "rounding)");
  app.add_flag("--allow-non-finite", allow_non_finite, "Load a checkpoint with NaN / Inf weights anyway (to inspect it)");
  app.add_option("--class-map", class_map, "JSON remapping the dataset's class ids (as used in training)");
  app.add_flag("--reduce-labels", reduce, "HF's reduce_labels on the stored labels (0 -> ignore, k -> k-1)");
  CLI11_PARSE(app, argc, argv);

  try {
    const bool zero_shot = !zero_shot_path.empty();
    if (zero_shot == !model_path.empty())
      fail(zero_shot ? "both --model and --zero-shot-model given; evaluate one model at a time"
                     : "no model: give --model (a SegFormer checkpoint) or --zero-shot-model (a CLIPSeg folder)");
    if (!zero_shot)
      for (const char* flag : {"--prompt-template", "--prompts-file", "--zero-shot-threshold"})
        if (app.count(flag) > 0) fail(flag, " applies to --zero-shot-model only");
    if (zero_shot) check_template(prompt_template);
    if (zero_shot && autograd) fail("--autograd applies to --model only");
    const std::optional<double> threshold =
        app.count("--zero-shot-threshold") > 0 ? std::optional<double>(zero_shot_threshold) : std::nullopt;
    if (threads > 0) set_num_threads(threads);
    set_max_image_pixels(max_pixels);
    LoadOptions lo;
    lo.strict = !zero_shot;
    lo.allow_non_finite = allow_non_finite;
    lo.revision = revision;

    std::optional<SegformerForSemanticSegmentation<float>> model;
    std::optional<SegformerInference<float>> segformer;
    SegformerConfig model_config;
    std::optional<CLIPSegInference<float>> engine;
    std::optional<CLIPTokenizer> tokenizer;
    SegformerImageProcessor processor;
    if (zero_shot) {
      if (fs::exists(zero_shot_path) ? !fs::is_directory(zero_shot_path) : !hub::repo_id_error(zero_shot_path).empty())
        fail("--zero-shot-model: '", zero_shot_path, "' is not a folder (nor a hub repo id such as CIDAS/clipseg-rd64-refined)");
      LoadReport report;
      // The engine keeps its own (packed) copy of the weights; the model is freed once it is built.
      engine.emplace(clipseg_from_pretrained<float>(zero_shot_path, lo, &report));
      if (!report.missing.empty() || !report.mismatched.empty())
        fail("--zero-shot-model '", zero_shot_path, "': the checkpoint lacks or misshapes weights the model needs: ",
             report.str(zero_shot_path));
      tokenizer.emplace(CLIPTokenizer::from_pretrained(zero_shot_path, {revision}));
      processor = clipseg_image_processor(zero_shot_path, {revision});
    } else {
      model.emplace(from_pretrained(model_path, lo));
      model_config = model->config;
      if (!autograd) {
        segformer.emplace(*model);  // the engine keeps its own packed copy of the weights
        model.reset();
      }
      std::string source;
      processor = SegformerImageProcessor::from_pretrained(model_path, &source, {revision});
      if (source == "HF defaults")
        std::fprintf(stderr, "evaluate: no preprocessor_config.json beside %s; using HF's defaults (512x512, ImageNet mean/std)\n",
                     model_path.c_str());
      reduce = reduce || processor.do_reduce_labels;
    }

    DatasetOptions dopt;
    if (!class_map.empty()) dopt.class_map = class_map;
    dopt.seed = seed;
    if (app.count("--seed") > 0 && subset == 0) fail("--seed only chooses --subset's images; give --subset N too");
    split = choose_split(data_dir, split);
    SegmentationDataset ds = SegmentationDataset::open(data_dir, split, dopt);
    if (subset > 0) {
      if (size_t(subset) > ds.size())
        fail("--subset ", subset, ": split \"", split, "\" of ", data_dir, " has only ", ds.size(), " images");
      ds = ds.subset(size_t(subset));
    }
    const std::vector<std::string> names = train::class_names(ds.id2label(), reduce);
    const size_t n = names.size();

    std::vector<std::string> prompts;
    std::vector<std::vector<int64_t>> ids;
    if (zero_shot) {
      for (const std::string& name : names) prompts.push_back(apply_template(prompt_template, clean_class_name(name)));
      if (!prompts_file.empty()) apply_prompts_file(prompts_file, names, prompts);
      const int64_t max_tokens = engine->config().text_config.max_position_embeddings;
      for (size_t c = 0; c < n; ++c) {
        ids.push_back(tokenizer->encode(prompts[c]));
        if (int64_t(ids.back().size()) > max_tokens)
          fail("the prompt of class ", c, " (", names[c], "), '", prompts[c], "', is ", ids.back().size(),
               " tokens; the text model takes at most ", max_tokens);
      }
    } else {
      SEGML_CHECK(static_cast<int64_t>(n) == model_config.num_labels, "evaluate: the dataset has ", n,
                  " classes but the model predicts ", model_config.num_labels,
                  " (use --class-map / --reduce-labels as in training)");
    }

    if (!pred_dir.empty()) fs::create_directories(pred_dir);
    // Colours by class name; a class_colors.json shipped with the dataset wins (io/palette.hpp).
    const std::vector<Rgb> colors = class_colors(names, dataset_palette(data_dir));
    std::map<int64_t, std::string> legend_names;
    for (size_t c = 0; c < n; ++c) legend_names[int64_t(c)] = names[c];
    legend_names[int64_t(n)] = "(no class)";
    Progress progress{ds.size()};
    const train::OnPrediction on_prediction = [&](size_t i, const Sample& s, const Tensor<int64_t>& pred) {
      if (!pred_dir.empty()) {
        Image predicted = to_rgb(s.rgb);
        LabelMap m(pred.size(0), pred.size(1), int64_t(n) + 1);
        for (int64_t k = 0; k < pred.numel(); ++k) m.narrow.data[size_t(k)] = static_cast<uint8_t>(pred.data()[k]);
        overlay_in_place(predicted, m, 0.5, /*transparent=*/int64_t(n), colors);  // "no class" keeps the image
        const LabelMap truth = ground_truth(s, reduce);
        Image labelled = to_rgb(s.rgb);
        overlay_in_place(labelled, truth, 0.5, /*transparent=*/255, colors);  // ignored pixels keep the image
        // One legend for both: the classes of the prediction and of the ground truth, by pixel count.
        std::map<int64_t, int64_t> counts;
        for (const auto& [id, c] : class_histogram(m)) counts[id] += c;
        for (const auto& [id, c] : class_histogram(truth))
          if (id != 255) counts[id] += c;
        std::vector<std::pair<int64_t, int64_t>> hist(counts.begin(), counts.end());
        std::stable_sort(hist.begin(), hist.end(), [](const auto& a, const auto& b) { return a.second > b.second; });
        const Image both = side_by_side(predicted, "prediction", labelled, "ground truth");
        save_png((fs::path(pred_dir) / (ds.path_of(i).stem().string() + ".png")).string(),
                 add_legend(both, hist, legend_names, colors, 40, /*transparent=*/int64_t(n)));
      }
      progress.step();
    };

    std::printf("Evaluating %s%s on %s/%s (%zu images%s, resized to %lldx%lld, %s, %d threads)\n",
                zero_shot ? "zero-shot " : "", zero_shot ? zero_shot_path.c_str() : model_path.c_str(), data_dir.c_str(),
                split.c_str(), ds.size(), subset > 0 ? (", subset of seed " + std::to_string(seed)).c_str() : "",
                static_cast<long long>(processor.height), static_cast<long long>(processor.width),
                zero_shot ? "CLIPSeg engine" : autograd ? "autograd model" : "inference engine", num_threads());
    train::EvalResult r;
    ZeroShotResult zr;
    if (zero_shot) {
      std::printf("Prompts (template \"%s\"%s):\n", prompt_template.c_str(),
                  threshold ? (", no class below a probability of " + cli::detail::figure(*threshold)).c_str() : "");
      for (size_t c = 0; c < n; ++c) std::printf("  %zu %s: \"%s\"\n", c, names[c].c_str(), prompts[c].c_str());
      zr = evaluate_zero_shot(*engine, processor, ids, ds, reduce, threshold, on_prediction);
      r = zr.eval;
    } else {
      train::EvalOptions eo;
      eo.batch_size = batch_size;
      eo.reduce_labels = reduce;
      r = segformer ? train::evaluate_dataset(*segformer, ds, processor, eo, on_prediction)
                    : train::evaluate_dataset(*model, ds, processor, eo, on_prediction);
    }
    std::printf("%s", train::metrics_table(r.metrics, names).c_str());
    {
      std::vector<std::string> columns = names;
      if (threshold) columns.push_back("(no class)");
      if (columns.size() <= 30)
        std::printf("%s", train::confusion_table(threshold ? zr.confusion_with_none : r.confusion, names, columns).c_str());
      else
        std::printf("Confusion matrix: %zu classes are too many to print; --confusion FILE.svg draws it\n", n);
    }
    if (threshold) std::printf("  no class (below the threshold): %.2f%% of the pixels\n", 100 * zr.unassigned);
    std::printf("Throughput: %.2f images/s (%lld images in %.2f s, decoding and metrics included)\n",
                double(r.images) / r.seconds, static_cast<long long>(r.images), r.seconds);
    if (zero_shot)
      std::printf("Latency per image: preprocess %.1f ms | vision tower %.1f ms | decoder (%zu prompts) %.1f ms | "
                  "post-process + metrics %.1f ms; text tower once: %.1f ms\n",
                  zr.preprocess_ms, zr.vision_ms, n, zr.decoder_ms, zr.postprocess_ms, zr.text_ms);

    if (!json_out.empty()) {
      nlohmann::json j = train::metrics_json(r.metrics);
      j["id2label"] = names;
      j["split"] = split;
      if (subset > 0) j["subset"] = {{"images", subset}, {"seed", seed}};
      j["images"] = r.images;
      j["images_per_s"] = double(r.images) / r.seconds;
      if (zero_shot) {
        j["zero_shot"] = {{"model", zero_shot_path},
                          {"prompt_template", prompt_template},
                          {"prompts", prompts},
                          {"threshold", threshold ? nlohmann::json(*threshold) : nlohmann::json(nullptr)},
                          {"unassigned_fraction", threshold ? nlohmann::json(zr.unassigned) : nlohmann::json(nullptr)}};
      }
      write_text(json_out, j.dump(2) + "\n");
    }
    if (!md_out.empty()) {
      std::string md = "| class | IoU (%) | accuracy (%) |\n|---|---:|---:|\n";
      auto pct = [](double v) {
        char buf[32];
        std::snprintf(buf, sizeof buf, "%.2f", 100 * v);
        return std::isnan(v) ? std::string("-") : std::string(buf);
      };
      for (size_t c = 0; c < n; ++c)
        md += "| " + names[c] + " | " + pct(r.metrics.per_category_iou[c]) + " | " +
              pct(r.metrics.per_category_accuracy[c]) + " |\n";
      md += "| **mean** | **" + pct(r.metrics.mean_iou) + "** | **" + pct(r.metrics.mean_accuracy) + "** |\n\n";
      md += "Overall pixel accuracy: " + pct(r.metrics.overall_accuracy) + " % on " + std::to_string(r.images) +
            " images of split `" + split + "`.\n";
      if (zero_shot) {
        md += "\nZero-shot with `" + zero_shot_path + "`, prompt template `" + prompt_template + "`";
        if (threshold) md += ", no class below " + cli::detail::figure(*threshold) + " (" + pct(zr.unassigned) + " % of the pixels)";
        md += "; prompts:";
        for (size_t c = 0; c < n; ++c) md += (c ? ", " : " ") + names[c] + " = \"" + prompts[c] + "\"";
        md += ".\n";
      }
      write_text(md_out, md);
    }
    if (!confusion_out.empty()) {
      // Rows: true classes; columns: predicted classes (+ "(no class)" with a threshold).
      const std::vector<double>& counts = threshold ? zr.confusion_with_none : r.confusion;
      std::vector<std::string> columns = names;
      if (threshold) columns.push_back("(no class)");
      const size_t m = columns.size();
      std::vector<double> norm(n * m, NAN);
      for (size_t l = 0; l < n; ++l) {
        double row = 0;
        for (size_t p = 0; p < m; ++p) row += counts[l * m + p];
        if (row > 0)
          for (size_t p = 0; p < m; ++p) norm[l * m + p] = counts[l * m + p] / row;
      }
      write_text(confusion_out, train::heatmap_svg("Confusion matrix (" + split + "): % of each ground-truth row", norm,
                                                   names, columns, "ground truth", "prediction"));
    }
    return 0;
  } catch (const std::bad_alloc&) {
    std::fprintf(stderr, "evaluate: error: out of memory (loading the model or opening the dataset)\n");
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "evaluate: error: %s\n", e.what());
    return 1;
  }
}
