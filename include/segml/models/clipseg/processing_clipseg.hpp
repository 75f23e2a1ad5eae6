// segml/models/clipseg/processing_clipseg.hpp: CLIPSeg's pre- and post-processing.
//
//   CLIPSegProcessor p = CLIPSegProcessor::from_pretrained("clipseg-rd64-refined");
//   Tensor<float> pixel_values = p.image_processor.preprocess(image);         // (1, 3, 352, 352)
//   std::vector<int64_t> ids = p.tokenizer.encode("a car");                   // BOS ... EOS
//   LabelMap labels = post_process_zero_shot(logits, 0.1, image.height, image.width);
//
// Guarantees:
//  - The image processor is HF's ViTImageProcessor as CLIPSeg's preprocessor_config.json configures
//    it (resize to `size` with PIL's filter `resample` and its uint8 rounding, rescale, ImageNet
//    mean / std): segml's SegformerImageProcessor computes exactly that pipeline (PIL-exact resize,
//    io/image_processor.hpp), so it is used as is. Without a preprocessor_config.json the defaults
//    are CIDAS/clipseg-rd64-refined's: 352 x 352, bilinear.
//  - post_process_zero_shot() turns the logits of P prompts (P, h, w) into a label map at (H, W) the
//    way HF's zero-shot segmentation blog does: a sigmoid per prompt, a constant "nothing" channel
//    at `threshold` in front, bilinear upsampling (align_corners=False) to the image, argmax. Label 0
//    is "nothing" (no prompt reaches the threshold; ties go to it), label k is prompt k (1-based).
//    Streamed by rows (io/image_processor.hpp's upsample_argmax): never P x H x W floats.
//  - zero_shot_probability() is one prompt's sigmoid map upsampled to (H, W), for heat maps.
#pragma once

#include <cmath>
#include <filesystem>
#include <string>
#include <vector>

#include "segml/core/error.hpp"
#include "segml/core/tensor.hpp"
#include "segml/hub/hub.hpp"
#include "segml/io/image_processor.hpp"
#include "segml/kernels/resize.hpp"

namespace segml {

// HF's ViTImageProcessor computes what SegformerImageProcessor computes (without label maps).
using ViTImageProcessor = SegformerImageProcessor;

// The image processor of a CLIPSeg checkpoint folder (or hub id, resolved with `hub`: hub/hub.hpp):
// its preprocessor_config.json, or rd64-refined's settings when the folder has none.
inline ViTImageProcessor clipseg_image_processor(const std::filesystem::path& folder_or_id, const hub::Options& hub = {}) {
  const std::filesystem::path folder = hub::resolve(folder_or_id.string(), hub::processor_files(), hub, "clipseg_image_processor");
  const std::filesystem::path pre = folder / "preprocessor_config.json";
  if (std::filesystem::exists(pre)) return ViTImageProcessor::from_json_file(pre.string());
  ViTImageProcessor p;
  p.height = p.width = 352;
  return p;
}

namespace detail {
inline void check_zero_shot_logits(const Tensor<float>& logits, const char* what) {
  SEGML_CHECK(logits.dim() == 3 && logits.size(0) >= 1 && logits.size(1) >= 1 && logits.size(2) >= 1, what,
              ": expected logits (num_prompts, h, w), got ", logits.shape());
}
}  // namespace detail

// logits (P, h, w) -> scores (1, 1 + P, h, w): channel 0 = threshold, channel k = sigmoid(prompt k).
inline Tensor<float> zero_shot_scores(const Tensor<float>& logits, double threshold) {
  detail::check_zero_shot_logits(logits, "zero_shot_scores");
  SEGML_CHECK(std::isfinite(threshold), "zero_shot_scores: threshold must be finite, got ", threshold);
  const Tensor<float> x = logits.contiguous();
  const int64_t P = x.size(0), n = x.size(1) * x.size(2);
  Tensor<float> scores = Tensor<float>::empty({1, 1 + P, x.size(1), x.size(2)});
  std::fill(scores.data(), scores.data() + n, static_cast<float>(threshold));
  for (int64_t i = 0; i < P * n; ++i) scores.data()[n + i] = 1.0f / (1.0f + std::exp(-x.data()[i]));
  return scores;
}

// The label map at (H, W): 0 = nothing, k = prompt k (see the file comment).
inline LabelMap post_process_zero_shot(const Tensor<float>& logits, double threshold, int64_t H, int64_t W) {
  return SegformerImageProcessor().post_process_label_map(zero_shot_scores(logits, threshold), 0, H, W);
}

// sigmoid(logits[k]) upsampled bilinearly to (H, W), values in [0, 1].
inline Tensor<float> zero_shot_probability(const Tensor<float>& logits, int64_t k, int64_t H, int64_t W) {
  detail::check_zero_shot_logits(logits, "zero_shot_probability");
  SEGML_CHECK(k >= 0 && k < logits.size(0), "zero_shot_probability: prompt ", k, " of ", logits.size(0));
  SEGML_CHECK(H > 0 && W > 0, "zero_shot_probability: target size ", H, "x", W, " must be positive");
  const Tensor<float> x = logits.contiguous();
  const int64_t h = x.size(1), w = x.size(2);
  Tensor<float> p = Tensor<float>::empty({h, w});
  for (int64_t i = 0; i < h * w; ++i) p.data()[i] = 1.0f / (1.0f + std::exp(-x.data()[k * h * w + i]));
  Tensor<float> out = Tensor<float>::empty({H, W});
  kernels::resize_bilinear_forward(out.data(), p.data(), 1, h, w, H, W);
  return out;
}

}  // namespace segml
