// segml/train/evaluation.hpp: whole-image evaluation of a SegFormer on a dataset split, as HF does it.
//
// evaluate_dataset(): every image is resized by the image processor (its size, bilinear), run in
// batches by the inference engine (SegformerInference) or by the autograd model in eval mode under
// NoGradGuard (same logits to float32 rounding), the logits are upsampled bilinearly (align_corners=False)
// to the label's own size and argmax'ed (post_process_semantic_segmentation), and the prediction is
// accumulated against the stored label in a MeanIoUAccumulator (HF evaluate's mean_iou semantics,
// ignore_index 255, reduce_labels on the labels when asked). The model is left in eval mode. Any
// failure (out of memory included) is a segml::Error naming the images of the batch it was for.
// metrics_table() formats the per-class IoU / accuracy table both programs print; confusion_table()
// the confusion matrix as row-normalised percentages ("87.3", fixed width, with a legend line).
// Does not: sliding-window or multi-scale inference.
#pragma once

#include <chrono>
#include <cmath>
#include <cstdio>
#include <functional>
#include <new>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "segml/autograd/variable.hpp"
#include "segml/data/dataset.hpp"
#include "segml/io/image_processor.hpp"
#include "segml/models/segformer.hpp"
#include "segml/models/segformer_inference.hpp"
#include "segml/train/metrics.hpp"

namespace segml::train {

struct EvalOptions {
  int64_t batch_size = 4;
  bool reduce_labels = false;  // HF's reduce_labels on the stored labels (0 -> ignore, k -> k - 1)
  int64_t ignore_index = 255;
  // Data-parallel evaluation: this process runs the batches k with k % shard_count == shard_rank
  // (whole batches, no padding: every image is counted once), then `sum_over_processes` (a sum of
  // doubles over the processes, in place) adds up the counts, so every process returns the
  // metrics of the whole split. on_prediction sees this process's images only.
  int64_t shard_rank = 0, shard_count = 1;
  std::function<void(double* data, int64_t n)> sum_over_processes;
};

struct EvalResult {
  MeanIoU metrics;
  std::vector<double> confusion;  // (num_labels, num_labels) pixel counts, row = label, col = prediction
  int64_t images = 0;
  double seconds = 0;  // wall time of the whole loop (decode + model + metrics)
};

// Called for each image with its index, the decoded sample and the prediction (H, W) at label size.
using OnPrediction = std::function<void(size_t index, const Sample& sample, const Tensor<int64_t>& prediction)>;

namespace detail {
// The loop of evaluate_dataset(); forward(pixel_values) -> logits (B, num_labels, h, w).
template <class Forward>
inline EvalResult evaluate_batches(Forward&& forward, int64_t num_labels, const SegmentationDataset& ds,
                                   const SegformerImageProcessor& processor, const EvalOptions& opt,
                                   const OnPrediction& on_prediction) {
  SEGML_CHECK(opt.batch_size >= 1, "evaluate_dataset: batch size must be >= 1, got ", opt.batch_size);
  SEGML_CHECK(opt.shard_count >= 1 && opt.shard_rank >= 0 && opt.shard_rank < opt.shard_count,
              "evaluate_dataset: shard ", opt.shard_rank, " of ", opt.shard_count, " does not exist");
  const auto t0 = std::chrono::steady_clock::now();
  MeanIoUAccumulator acc(num_labels, opt.ignore_index, opt.reduce_labels);
  int64_t batch_index = -1;
  for (size_t first = 0; first < ds.size(); first += static_cast<size_t>(opt.batch_size)) {
    if (++batch_index % opt.shard_count != opt.shard_rank) continue;
    const size_t last = std::min(ds.size(), first + static_cast<size_t>(opt.batch_size));
    try {
      std::vector<Sample> samples;
      std::vector<Image> images;
      std::vector<std::pair<int64_t, int64_t>> sizes;
      for (size_t i = first; i < last; ++i) {
        samples.push_back(ds.load(i));
        images.push_back(samples.back().rgb);
        sizes.emplace_back(samples.back().label.height, samples.back().label.width);
      }
      const Tensor<float> logits = forward(processor.preprocess(images));
      const std::vector<Tensor<int64_t>> preds = processor.post_process_semantic_segmentation(logits, sizes);
      for (size_t k = 0; k < samples.size(); ++k) {
        acc.add(preds[k].data(), samples[k].label.data.data(), preds[k].numel());
        if (on_prediction) on_prediction(first + k, samples[k], preds[k]);
      }
    } catch (const std::exception& e) {  // name the images (and turn a bare bad_alloc into a message)
      std::string files;
      for (size_t i = first; i < last; ++i) files += (files.empty() ? "" : ", ") + ds.path_of(i).string();
      fail("evaluate_dataset: while processing ", files, ": ",
           dynamic_cast<const std::bad_alloc*>(&e) ? "out of memory" : e.what());
    }
  }
  if (opt.sum_over_processes) acc.sum_over(opt.sum_over_processes);
  EvalResult r;
  r.metrics = acc.compute();
  r.confusion = acc.confusion();
  r.images = static_cast<int64_t>(ds.size());
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return r;
}
}  // namespace detail

// With the inference engine: the way to evaluate a trained model (the programs use this one).
inline EvalResult evaluate_dataset(SegformerInference<float>& engine, const SegmentationDataset& ds,
                                   const SegformerImageProcessor& processor, const EvalOptions& opt = {},
                                   const OnPrediction& on_prediction = {}) {
  return detail::evaluate_batches([&](const Tensor<float>& x) { return engine.run(x); }, engine.config().num_labels, ds,
                                  processor, opt, on_prediction);
}

// With the autograd model in eval mode under NoGradGuard (the Trainer's validation: no copy of the
// weights per evaluation). The model is left in eval mode.
inline EvalResult evaluate_dataset(SegformerForSemanticSegmentation<float>& model, const SegmentationDataset& ds,
                                   const SegformerImageProcessor& processor, const EvalOptions& opt = {},
                                   const OnPrediction& on_prediction = {}) {
  model.eval();
  NoGradGuard no_grad;
  return detail::evaluate_batches([&](const Tensor<float>& x) { return model.forward(Var<float>(x)).logits.data(); },
                                  model.config.num_labels, ds, processor, opt, on_prediction);
}

// The class names a model trained on `ds` predicts: reduce_labels drops class 0 (the background
// HF's reduce_labels removes) and shifts the others down by one.
inline std::vector<std::string> class_names(const std::vector<std::string>& id2label, bool reduce_labels) {
  if (!reduce_labels) return id2label;
  SEGML_CHECK(id2label.size() >= 2, "reduce_labels needs at least 2 classes in id2label (class 0 is dropped)");
  return {id2label.begin() + 1, id2label.end()};
}

// {"mean_iou", "mean_accuracy", "overall_accuracy", "per_category_iou", "per_category_accuracy"}
// (NaN -> null), as evaluate's mean_iou returns them.
inline nlohmann::json metrics_json(const MeanIoU& m) {
  auto num = [](double v) { return std::isnan(v) ? nlohmann::json(nullptr) : nlohmann::json(v); };
  nlohmann::json iou = nlohmann::json::array(), acc = nlohmann::json::array();
  for (double v : m.per_category_iou) iou.push_back(num(v));
  for (double v : m.per_category_accuracy) acc.push_back(num(v));
  return {{"mean_iou", num(m.mean_iou)},
          {"mean_accuracy", num(m.mean_accuracy)},
          {"overall_accuracy", num(m.overall_accuracy)},
          {"per_category_iou", iou},
          {"per_category_accuracy", acc}};
}

// A plain-text table: one row per class (IoU, accuracy), then the three summary numbers.
inline std::string metrics_table(const MeanIoU& m, const std::vector<std::string>& names) {
  auto pct = [](double v) {
    char buf[32];
    if (std::isnan(v)) return std::string("     -");
    std::snprintf(buf, sizeof buf, "%6.2f", 100.0 * v);
    return std::string(buf);
  };
  size_t width = 5;
  for (const auto& n : names) width = std::max(width, n.size());
  std::string out;
  char line[256];
  std::snprintf(line, sizeof line, "  %-*s  %6s  %6s\n", static_cast<int>(width), "class", "IoU%", "acc%");
  out += line;
  for (size_t c = 0; c < m.per_category_iou.size(); ++c) {
    const std::string name = c < names.size() ? names[c] : std::to_string(c);
    std::snprintf(line, sizeof line, "  %-*s  %s  %s\n", static_cast<int>(width), name.c_str(),
                  pct(m.per_category_iou[c]).c_str(), pct(m.per_category_accuracy[c]).c_str());
    out += line;
  }
  std::snprintf(line, sizeof line, "  mean IoU %s%%   mean accuracy %s%%   overall accuracy %s%%\n",
                pct(m.mean_iou).c_str(), pct(m.mean_accuracy).c_str(), pct(m.overall_accuracy).c_str());
  out += line;
  return out;
}

// The confusion matrix as text: counts (rows x cols, row-major pixel counts, row = ground truth,
// column = prediction) normalised per row to percentages of the row's pixels, one decimal, every
// column 6 characters wide ("  87.3", "   0.0" for a share below 0.05 %, "     ." for no pixel at
// all, "     -" for a row with no pixels). Columns are headed by class id; the rows name each class
// ("  3 road"); a column beyond row_names (e.g. zero-shot's "no class") is listed under the table.
// A legend line comes first.
inline std::string confusion_table(const std::vector<double>& counts, const std::vector<std::string>& row_names,
                                   const std::vector<std::string>& col_names) {
  const size_t R = row_names.size(), C = col_names.size();
  SEGML_CHECK(counts.size() == R * C, "confusion_table: ", counts.size(), " counts for ", R, " x ", C, " classes");
  size_t name_width = 5;
  for (const auto& n : row_names) name_width = std::max(name_width, std::min<size_t>(n.size(), 24));
  const int id_width = static_cast<int>(std::to_string(std::max<size_t>(R, C)).size());
  std::string out = "Confusion matrix: rows = ground truth, columns = prediction (class id), % of the row's pixels\n";
  char cell[64];
  std::string head(2 + static_cast<size_t>(id_width) + 1 + name_width, ' ');
  for (size_t c = 0; c < C; ++c) {
    std::snprintf(cell, sizeof cell, " %5zu", c);
    head += cell;
  }
  out += head + "\n";
  for (size_t r = 0; r < R; ++r) {
    double total = 0;
    for (size_t c = 0; c < C; ++c) total += counts[r * C + c];
    std::snprintf(cell, sizeof cell, "  %*zu %-*s", id_width, r, static_cast<int>(name_width),
                  row_names[r].substr(0, 24).c_str());
    out += cell;
    for (size_t c = 0; c < C; ++c) {
      const double v = counts[r * C + c];
      if (total <= 0) std::snprintf(cell, sizeof cell, " %5s", "-");
      else if (v <= 0) std::snprintf(cell, sizeof cell, " %5s", ".");
      else std::snprintf(cell, sizeof cell, " %5.1f", 100.0 * v / total);
      out += cell;
    }
    out += "\n";
  }
  for (size_t c = R; c < C; ++c) out += "  column " + std::to_string(c) + " = " + col_names[c] + "\n";
  return out;
}

}  // namespace segml::train
