// segml/train/model_card.hpp: the README.md model card a fine-tuning run leaves in its output folder.
//
// The layout a HuggingFace user knows from the cards the Python Trainer writes for push_to_hub:
// YAML front matter (library_name, license, base_model, tags, datasets, model-index with the final
// metric values), then the sections "Model description", "Intended uses & limitations", "Training
// and evaluation data", "Training procedure" / "Training hyperparameters" (learning_rate,
// train_batch_size, eval_batch_size, seed, gradient_accumulation_steps, total_train_batch_size,
// optimizer, lr_scheduler_type, warm-up, training_steps or num_epochs), "Training results" (one row
// per evaluation: Training Loss, Epoch, Step, Validation Loss, Mean Iou, Mean Accuracy, Overall
// Accuracy) and "Framework versions". A sample overlay image is referenced when given.
// Every value is formatted here; strings that reach the YAML are quoted (JSON-style), so a dataset
// path with ':' or '#' cannot break the front matter. Pure text: the caller writes the file.
#pragma once

#include <cmath>
#include <cstdio>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "segml/train/metrics.hpp"
#include "segml/train/options.hpp"

namespace segml::train {

#ifndef SEGML_VERSION_STRING
#define SEGML_VERSION_STRING "0.1.0"
#endif

struct ModelCard {
  struct Row {
    double training_loss = NAN;  // NaN: "No log"
    double epoch = 0;
    int64_t step = 0;
    double eval_loss = NAN;
    MeanIoU metrics;
  };
  std::string name;        // the model's name (the output folder's)
  std::string base_model;  // what training started from ("" = random initialisation)
  std::string dataset;     // the dataset's name or folder
  TrainOptions options;
  int64_t total_steps = 0, warmup_steps = 0;
  std::vector<std::string> class_names;
  std::vector<Row> rows;        // one per evaluation
  std::optional<Row> final_row;  // the results the card leads with (the best with load_best_model_at_end)
  std::string sample_image;     // relative path of the sample overlay ("" = none)
  std::string sample_source;    // the image it was made from

  static std::string figure(double v, int digits = 4) {
    if (std::isnan(v)) return "No log";
    char buf[64];
    std::snprintf(buf, sizeof buf, "%.*f", digits, v);
    return buf;
  }
  // Like Python's repr of a float in HF's cards: 6e-05, 0.9, 1e-08.
  static std::string real(double v) {
    char buf[64];
    std::snprintf(buf, sizeof buf, "%.6g", v);
    return buf;
  }
  static std::string quoted(const std::string& s) { return nlohmann::json(s).dump(); }

  std::string markdown() const {
    const TrainOptions& o = options;
    const std::string data = dataset.empty() ? "an unnamed dataset" : dataset;
    std::string md = "---\nlibrary_name: segml\nlicense: other\n";
    if (!base_model.empty()) md += "base_model: " + quoted(base_model) + "\n";
    md += "tags:\n- generated_from_trainer\n- segml\n- image-segmentation\n- vision\n";
    md += "datasets:\n- " + quoted(data) + "\n";
    md += "model-index:\n- name: " + quoted(name) + "\n  results:\n";
    if (final_row) {
      md += "  - task:\n      type: image-segmentation\n      name: Image Segmentation\n";
      md += "    dataset:\n      name: " + quoted(data) + "\n      type: " + quoted(data) + "\n    metrics:\n";
      auto metric = [&](const char* type, const char* label, double v) {
        if (std::isnan(v)) return;
        md += std::string("    - type: ") + type + "\n      value: " + real(v) + "\n      name: " + label + "\n";
      };
      metric("mean_iou", "Mean Iou", final_row->metrics.mean_iou);
      metric("mean_accuracy", "Mean Accuracy", final_row->metrics.mean_accuracy);
      metric("overall_accuracy", "Overall Accuracy", final_row->metrics.overall_accuracy);
      metric("loss", "Loss", final_row->eval_loss);
    } else {
      md += "  []\n";
    }
    md += "---\n\n# " + name + "\n\n";
    md += "This model is " + (base_model.empty() ? "a SegFormer trained from a random initialisation"
                                                : "a fine-tuned version of " + base_model) +
          " on " + data + ", trained with segml (C++, on the CPU).\n";
    if (final_row) {
      md += "It achieves the following results on the evaluation set (step " + std::to_string(final_row->step) +
            (o.load_best_model_at_end ? ", the best by " + o.best_metric_key() : "") + "):\n";
      md += "- Loss: " + figure(final_row->eval_loss) + "\n";
      md += "- Mean Iou: " + figure(final_row->metrics.mean_iou) + "\n";
      md += "- Mean Accuracy: " + figure(final_row->metrics.mean_accuracy) + "\n";
      md += "- Overall Accuracy: " + figure(final_row->metrics.overall_accuracy) + "\n";
      if (!final_row->metrics.per_category_iou.empty()) {
        md += "- Per Category Iou:";
        for (size_t c = 0; c < final_row->metrics.per_category_iou.size(); ++c)
          md += (c ? ", " : " ") + (c < class_names.size() ? class_names[c] : std::to_string(c)) + " " +
                (std::isnan(final_row->metrics.per_category_iou[c]) ? std::string("nan")  // absent from labels and predictions
                                                                    : figure(final_row->metrics.per_category_iou[c]));
        md += "\n";
      }
    } else {
      md += "It was not evaluated (no validation split).\n";
    }
    if (!sample_image.empty())
      md += "\n![A prediction of this model" + (sample_source.empty() ? "" : " on " + sample_source) + "](" +
            sample_image + ")\n";
    md += "\n## Model description\n\nSegFormer for semantic segmentation (SegformerForSemanticSegmentation), " +
          std::to_string(class_names.size()) + " classes";
    for (size_t c = 0; c < class_names.size() && c < 40; ++c) md += (c ? ", " : ": ") + class_names[c];
    md += class_names.size() > 40 ? ", ...\n" : ".\nThe folder loads with transformers' from_pretrained and segml's.\n";
    md += "\n## Intended uses & limitations\n\nMore information needed\n";
    md += "\n## Training and evaluation data\n\nTrained on the training split of " + data +
          (rows.empty() ? "" : ", evaluated on its validation split") + ".\n";
    md += "\n## Training procedure\n\n### Training hyperparameters\n\nThe following hyperparameters were used during training:\n";
    md += "- learning_rate: " + real(o.learning_rate) + "\n";
    md += "- train_batch_size: " + std::to_string(o.per_device_train_batch_size) + "\n";
    md += "- eval_batch_size: " + std::to_string(o.per_device_eval_batch_size) + "\n";
    md += "- seed: " + std::to_string(o.seed) + "\n";
    if (o.gradient_accumulation_steps > 1) {
      md += "- gradient_accumulation_steps: " + std::to_string(o.gradient_accumulation_steps) + "\n";
      md += "- total_train_batch_size: " +
            std::to_string(o.per_device_train_batch_size * o.gradient_accumulation_steps) + "\n";
    }
    if (o.optimizer == "adamw")
      md += "- optimizer: AdamW with betas=(" + real(o.adam_beta1) + "," + real(o.adam_beta2) +
            ") and epsilon=" + real(o.adam_epsilon) + ", weight_decay=" + real(o.weight_decay) + "\n";
    else
      md += "- optimizer: SGD with momentum=" + real(o.momentum) + ", weight_decay=" + real(o.weight_decay) + "\n";
    md += "- lr_scheduler_type: " + o.lr_scheduler_type + "\n";
    if (o.warmup_steps > 0)
      md += "- lr_scheduler_warmup_steps: " + std::to_string(o.warmup_steps) + "\n";
    else if (o.warmup_ratio > 0)
      md += "- lr_scheduler_warmup_ratio: " + real(o.warmup_ratio) + "\n";
    if (o.max_steps > 0)
      md += "- training_steps: " + std::to_string(total_steps) + "\n";
    else
      md += "- num_epochs: " + real(o.num_train_epochs) + "\n";
    md += "- max_grad_norm: " + real(o.max_grad_norm) + "\n";
    if (o.head_lr_mult != 1.0) md += "- head_lr_mult: " + real(o.head_lr_mult) + "\n";
    md += "- crop_size: " + std::to_string(o.crop_height) + "x" + std::to_string(o.crop_width) +
          (o.augment ? " (random resize, crop, flip, photometric distortion)" : " (resized, no augmentation)") + "\n";
    md += "\n### Training results\n\n";
    if (rows.empty()) {
      md += "No evaluation was run.\n";
    } else {
      md += "| Training Loss | Epoch | Step | Validation Loss | Mean Iou | Mean Accuracy | Overall Accuracy |\n";
      md += "|:-------------:|:-----:|:----:|:---------------:|:--------:|:-------------:|:----------------:|\n";
      for (const Row& r : rows)
        md += "| " + figure(r.training_loss) + " | " + figure(r.epoch, 2) + " | " + std::to_string(r.step) + " | " +
              figure(r.eval_loss) + " | " + figure(r.metrics.mean_iou) + " | " + figure(r.metrics.mean_accuracy) +
              " | " + figure(r.metrics.overall_accuracy) + " |\n";
    }
    md += "\n### Framework versions\n\n- segml " SEGML_VERSION_STRING "\n";
    return md;
  }
};

}  // namespace segml::train
