// evaluate: mean IoU of a SegFormer checkpoint on a dataset split, as HF evaluate's mean_iou.
//
// Each image is resized to the model's preprocessor size, the logits are upsampled bilinearly to
// the label's size and argmax'ed. Prints a per-class table and the throughput; optionally writes
// the metrics as JSON / Markdown, a row-normalised confusion-matrix heatmap (SVG) and colour
// overlays of the predictions (PNG). Images larger than --max-pixels are refused from their header,
// before decoding; a checkpoint with NaN / Inf weights is refused unless --allow-non-finite; any
// failure while evaluating names the image(s) it was for. Every numeric flag is checked.
#include <CLI/CLI.hpp>

#include <array>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

#include <segml/segformer.hpp>
#include <segml/train/evaluation.hpp>
#include <segml/train/plot.hpp>

#include "cli_checks.hpp"

namespace fs = std::filesystem;
using namespace segml;

namespace {

void write_text(const fs::path& path, const std::string& text) {
  if (path.has_parent_path()) fs::create_directories(path.parent_path());
  safetensors::write_file_atomic(path.string(), std::vector<char>(text.begin(), text.end()));
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Evaluate a SegFormer checkpoint on a dataset split (mean IoU as HF evaluate's mean_iou)."};
  std::string model_path, data_dir, split = "test", json_out, md_out, confusion_out, pred_dir, class_map;
  int64_t batch_size = 4;
  int threads = 0;
  int64_t max_pixels = kDefaultMaxPixels;
  bool reduce = false, allow_non_finite = false;
  app.add_option("--model", model_path, "HF checkpoint folder (config.json, model.safetensors, preprocessor_config.json)")
      ->required();
  app.add_option("--data", data_dir, "Dataset folder (see docs/datasets.md)")->required();
  app.add_option("--split", split, "Split to evaluate: test or val")->capture_default_str();
  app.add_option("--json", json_out, "Write the metrics (and per-class names) as JSON");
  app.add_option("--markdown", md_out, "Write the per-class table as Markdown");
  app.add_option("--confusion", confusion_out, "Write a row-normalised confusion-matrix heatmap (SVG)");
  app.add_option("--predictions", pred_dir, "Write a colour overlay of each prediction (PNG) into this folder");
  app.add_option("--batch-size", batch_size, "Images per forward pass")->capture_default_str()->check(cli::whole(1, 1024));
  app.add_option("--threads", threads, "Compute threads (default: all cores / OMP_NUM_THREADS)")->check(cli::whole(1, 1024));
  app.add_option("--max-pixels", max_pixels, "Refuse images with more pixels than this (read from the header, before decoding)")
      ->capture_default_str()
      ->check(cli::positive_whole());
  app.add_flag("--allow-non-finite", allow_non_finite, "Load a checkpoint with NaN / Inf weights anyway (to inspect it)");
  app.add_option("--class-map", class_map, "JSON remapping the dataset's class ids (as used in training)");
  app.add_flag("--reduce-labels", reduce, "HF's reduce_labels on the stored labels (0 -> ignore, k -> k-1)");
  CLI11_PARSE(app, argc, argv);

  try {
    if (threads > 0) set_num_threads(threads);
    set_max_image_pixels(max_pixels);
    LoadOptions lo;
    lo.strict = true;
    lo.allow_non_finite = allow_non_finite;
    auto model = from_pretrained(model_path, lo);
    const fs::path folder = fs::is_directory(model_path) ? fs::path(model_path) : fs::path(model_path).parent_path();
    SegformerImageProcessor processor;
    if (fs::exists(folder / "preprocessor_config.json"))
      processor = SegformerImageProcessor::from_json_file((folder / "preprocessor_config.json").string());
    else
      std::fprintf(stderr, "evaluate: no preprocessor_config.json in %s; using HF's defaults (512x512, ImageNet mean/std)\n",
                   folder.string().c_str());
    reduce = reduce || processor.do_reduce_labels;

    DatasetOptions dopt;
    if (!class_map.empty()) dopt.class_map = class_map;
    const SegmentationDataset ds = SegmentationDataset::open(data_dir, split, dopt);
    const std::vector<std::string> names = train::class_names(ds.id2label(), reduce);
    SEGML_CHECK(static_cast<int64_t>(names.size()) == model.config.num_labels, "evaluate: the dataset has ",
                names.size(), " classes but the model predicts ", model.config.num_labels,
                " (use --class-map / --reduce-labels as in training)");

    if (!pred_dir.empty()) fs::create_directories(pred_dir);
    train::EvalOptions eo;
    eo.batch_size = batch_size;
    eo.reduce_labels = reduce;
    train::OnPrediction on_prediction;
    if (!pred_dir.empty())
      on_prediction = [&](size_t i, const Sample& s, const Tensor<int64_t>& pred) {
        const Image out = segml::overlay(s.rgb, pred, 0.5);
        save_png((fs::path(pred_dir) / (ds.path_of(i).stem().string() + ".png")).string(), out);
      };
    std::printf("Evaluating %s on %s/%s (%zu images, resized to %lldx%lld, %d threads)\n", model_path.c_str(),
                data_dir.c_str(), split.c_str(), ds.size(), static_cast<long long>(processor.height),
                static_cast<long long>(processor.width), num_threads());
    const train::EvalResult r = train::evaluate_dataset(model, ds, processor, eo, on_prediction);
    std::printf("%s", train::metrics_table(r.metrics, names).c_str());
    std::printf("Throughput: %.2f images/s (%lld images in %.2f s, decoding and metrics included)\n",
                double(r.images) / r.seconds, static_cast<long long>(r.images), r.seconds);

    if (!json_out.empty()) {
      nlohmann::json j = train::metrics_json(r.metrics);
      j["id2label"] = names;
      j["split"] = split;
      j["images"] = r.images;
      j["images_per_s"] = double(r.images) / r.seconds;
      write_text(json_out, j.dump(2) + "\n");
    }
    if (!md_out.empty()) {
      std::string md = "| class | IoU (%) | accuracy (%) |\n|---|---:|---:|\n";
      auto pct = [](double v) {
        char buf[32];
        std::snprintf(buf, sizeof buf, "%.2f", 100 * v);
        return std::isnan(v) ? std::string("-") : std::string(buf);
      };
      for (size_t c = 0; c < names.size(); ++c)
        md += "| " + names[c] + " | " + pct(r.metrics.per_category_iou[c]) + " | " +
              pct(r.metrics.per_category_accuracy[c]) + " |\n";
      md += "| **mean** | **" + pct(r.metrics.mean_iou) + "** | **" + pct(r.metrics.mean_accuracy) + "** |\n\n";
      md += "Overall pixel accuracy: " + pct(r.metrics.overall_accuracy) + " % on " + std::to_string(r.images) +
            " images of split `" + split + "`.\n";
      write_text(md_out, md);
    }
    if (!confusion_out.empty()) {
      const size_t n = names.size();
      std::vector<double> norm(n * n, NAN);
      for (size_t l = 0; l < n; ++l) {
        double row = 0;
        for (size_t p = 0; p < n; ++p) row += r.confusion[l * n + p];
        if (row > 0)
          for (size_t p = 0; p < n; ++p) norm[l * n + p] = r.confusion[l * n + p] / row;
      }
      write_text(confusion_out, train::heatmap_svg("Confusion matrix (" + split + ", rows normalised)", norm, names,
                                                   names, "true class", "predicted class"));
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
