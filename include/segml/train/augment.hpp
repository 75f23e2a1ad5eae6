// segml/train/augment.hpp: the SegFormer (mmsegmentation) training augmentations, seeded per sample.
//
// augment() applies, in mmseg's order:
//   1. random resize: ratio r ~ U(ratio_min, ratio_max); the image is scaled (aspect kept) so that
//      its short side becomes r * the crop's short side (mmseg's img_scale = crop size, e.g. ADE's
//      (2048, 512) with crop 512). Image: PIL bilinear (pil_resize); labels: PIL nearest.
//   2. random crop to the crop size with cat_max_ratio: the crop is redrawn (up to cat_max_tries
//      times) while a single class covers >= cat_max_ratio of its non-ignored pixels, or fewer
//      than two classes are present; the last draw is kept, as in mmseg's RandomCrop.
//   3. horizontal flip with probability flip_prob.
//   4. photometric distortion (mmseg PhotoMetricDistortion): each with p = 0.5, brightness
//      +U(-32, 32), contrast *U(0.5, 1.5) (before or after the colour step, p = 0.5 each),
//      saturation *U(0.5, 1.5) and hue +-18 OpenCV units (36 degrees), on uint8 with clipping.
//   5. normalise with the image processor's rescale factor, mean and std;
//   6. pad bottom/right to the crop size with 0 (pixels) and ignore_index (labels).
// plain_resize() is the --no-augment path: the image processor's resize (HF's tutorial).
//
// Guarantees: the result is a pure function of (sample, options, rng seed); sample_seed(seed,
// epoch, index) gives every (epoch, sample) its own stream, so the data pipeline is deterministic
// whatever thread builds a sample and whenever. Does not: rotate, scale labels other than by
// nearest neighbour, or implement mmseg's multi-scale test-time augmentation.
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>

#include "segml/core/random.hpp"
#include "segml/core/tensor.hpp"
#include "segml/io/image.hpp"
#include "segml/io/image_processor.hpp"

namespace segml::train {

struct AugmentOptions {
  int64_t crop_height = 512, crop_width = 512;
  double ratio_min = 0.5, ratio_max = 2.0;
  double cat_max_ratio = 0.75;  // >= 1 disables the rule
  int cat_max_tries = 10;
  double flip_prob = 0.5;
  bool photometric = true;
  int64_t ignore_index = 255;
};

// One training example ready for the model.
struct Example {
  Tensor<float> pixel_values;  // (3, H, W), normalised
  Tensor<int64_t> labels;      // (H, W), ignore_index where padded
};

// A well-mixed seed for sample `index` of `epoch` (SplitMix64 finaliser over the three values).
inline uint64_t sample_seed(uint64_t seed, int64_t epoch, int64_t index) {
  auto mix = [](uint64_t z) {
    z += 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  };
  return mix(mix(mix(seed) ^ static_cast<uint64_t>(epoch)) ^ static_cast<uint64_t>(index));
}

namespace detail {

// Uniform integer in [lo, hi) from a generator (hi > lo).
inline int64_t randint(Generator& g, int64_t lo, int64_t hi) {
  const auto k = static_cast<int64_t>(g.uniform<double>() * static_cast<double>(hi - lo));
  return lo + std::min(k, hi - lo - 1);
}
inline double uniform(Generator& g, double lo, double hi) { return lo + (hi - lo) * g.uniform<double>(); }

inline Image crop(const Image& in, int64_t y0, int64_t x0, int64_t h, int64_t w) {
  Image out(h, w, in.channels);
  for (int64_t y = 0; y < h; ++y)
    std::copy_n(&in.data[static_cast<size_t>(((y0 + y) * in.width + x0) * in.channels)], w * in.channels,
                &out.data[static_cast<size_t>(y * w * in.channels)]);
  return out;
}

inline void flip_horizontal(Image& img) {
  for (int64_t y = 0; y < img.height; ++y)
    for (int64_t x = 0; x < img.width / 2; ++x)
      for (int64_t c = 0; c < img.channels; ++c) std::swap(img.at(y, x, c), img.at(y, img.width - 1 - x, c));
}

inline uint8_t clip_u8(double v) { return static_cast<uint8_t>(std::clamp(std::lround(v), 0L, 255L)); }

// Hue shift (degrees) and saturation scale on an RGB image, through HSV.
inline void adjust_hsv(Image& img, double hue_degrees, double saturation) {
  for (int64_t p = 0; p < img.height * img.width; ++p) {
    uint8_t* px = &img.data[static_cast<size_t>(p * 3)];
    const double r = px[0], g = px[1], b = px[2];
    const double mx = std::max({r, g, b}), mn = std::min({r, g, b}), d = mx - mn;
    double h = 0;
    if (d > 0) {
      if (mx == r) h = 60.0 * std::fmod((g - b) / d + 6.0, 6.0);
      else if (mx == g) h = 60.0 * ((b - r) / d + 2.0);
      else h = 60.0 * ((r - g) / d + 4.0);
    }
    double s = mx > 0 ? d / mx : 0.0;
    const double v = mx;
    h = std::fmod(h + hue_degrees + 360.0, 360.0);
    s = std::clamp(s * saturation, 0.0, 1.0);
    const double c = v * s, hp = h / 60.0, x = c * (1.0 - std::abs(std::fmod(hp, 2.0) - 1.0)), m = v - c;
    double rgb[3] = {0, 0, 0};
    switch (static_cast<int>(hp) % 6) {
      case 0: rgb[0] = c, rgb[1] = x; break;
      case 1: rgb[0] = x, rgb[1] = c; break;
      case 2: rgb[1] = c, rgb[2] = x; break;
      case 3: rgb[1] = x, rgb[2] = c; break;
      case 4: rgb[0] = x, rgb[2] = c; break;
      default: rgb[0] = c, rgb[2] = x; break;
    }
    for (int k = 0; k < 3; ++k) px[k] = clip_u8(rgb[k] + m);
  }
}

inline void photometric_distortion(Image& img, Generator& g) {
  auto affine = [&](double alpha, double beta) {
    for (uint8_t& v : img.data) v = clip_u8(v * alpha + beta);
  };
  if (randint(g, 0, 2)) affine(1.0, uniform(g, -32, 32));                  // brightness
  const bool contrast_first = randint(g, 0, 2) == 1;
  auto contrast = [&] { if (randint(g, 0, 2)) affine(uniform(g, 0.5, 1.5), 0.0); };
  if (contrast_first) contrast();
  const double saturation = randint(g, 0, 2) ? uniform(g, 0.5, 1.5) : 1.0;
  const double hue = randint(g, 0, 2) ? 2.0 * static_cast<double>(randint(g, -18, 19)) : 0.0;
  if (saturation != 1.0 || hue != 0.0) adjust_hsv(img, hue, saturation);
  if (!contrast_first) contrast();
}

// Whether a crop passes cat_max_ratio: >= 2 classes and the largest below the ratio.
inline bool crop_is_balanced(const Image& label, int64_t y0, int64_t x0, int64_t h, int64_t w, double cat_max_ratio,
                             int64_t ignore_index) {
  std::array<int64_t, 256> count{};
  for (int64_t y = y0; y < y0 + h; ++y)
    for (int64_t x = x0; x < x0 + w; ++x) ++count[label.at(y, x)];
  int64_t total = 0, largest = 0, classes = 0;
  for (int64_t c = 0; c < 256; ++c) {
    if (c == ignore_index || count[static_cast<size_t>(c)] == 0) continue;
    total += count[static_cast<size_t>(c)];
    largest = std::max(largest, count[static_cast<size_t>(c)]);
    ++classes;
  }
  return classes > 1 && static_cast<double>(largest) / static_cast<double>(total) < cat_max_ratio;
}

// Normalised (3, H, W) from RGB, padded with 0 to (ph, pw).
inline Tensor<float> normalise(const Image& rgb, const SegformerImageProcessor& proc, int64_t ph, int64_t pw) {
  Tensor<float> out = Tensor<float>::zeros({3, ph, pw});
  for (int64_t c = 0; c < 3; ++c) {
    const float mean = static_cast<float>(proc.image_mean[static_cast<size_t>(c)]);
    const float std = static_cast<float>(proc.image_std[static_cast<size_t>(c)]);
    float* dst = out.data() + c * ph * pw;
    for (int64_t y = 0; y < rgb.height; ++y)
      for (int64_t x = 0; x < rgb.width; ++x) {
        float v = proc.do_rescale ? static_cast<float>(rgb.at(y, x, c) * proc.rescale_factor) : float(rgb.at(y, x, c));
        if (proc.do_normalize) v = (v - mean) / std;
        dst[y * pw + x] = v;
      }
  }
  return out;
}

inline Tensor<int64_t> labels_tensor(const Image& label, int64_t ph, int64_t pw, int64_t fill) {
  Tensor<int64_t> out = Tensor<int64_t>::full({ph, pw}, fill);
  for (int64_t y = 0; y < label.height; ++y)
    for (int64_t x = 0; x < label.width; ++x) out.data()[y * pw + x] = label.at(y, x);
  return out;
}

}  // namespace detail

// The random crop window of mmseg's RandomCrop with cat_max_ratio (see the file comment).
struct CropBox {
  int64_t y0, x0, height, width;
};
inline CropBox random_crop_box(const Image& label, const AugmentOptions& opt, Generator& g) {
  const int64_t h = std::min(opt.crop_height, label.height), w = std::min(opt.crop_width, label.width);
  auto draw = [&] {
    const int64_t y0 = detail::randint(g, 0, label.height - h + 1), x0 = detail::randint(g, 0, label.width - w + 1);
    return CropBox{y0, x0, h, w};
  };
  CropBox box = draw();
  if (opt.cat_max_ratio < 1.0)
    for (int t = 0; t < opt.cat_max_tries; ++t) {
      if (detail::crop_is_balanced(label, box.y0, box.x0, h, w, opt.cat_max_ratio, opt.ignore_index)) break;
      box = draw();
    }
  return box;
}

// The SegFormer training augmentation of one (image, label) pair; `seed` picks the random draws.
inline Example augment(const Image& rgb, const Image& label, const SegformerImageProcessor& processor,
                       const AugmentOptions& opt, uint64_t seed) {
  SEGML_CHECK(rgb.height == label.height && rgb.width == label.width && label.channels == 1, "augment: image ",
              rgb.height, "x", rgb.width, " and label ", label.height, "x", label.width, "x", label.channels,
              " must have the same size (label 1 channel)");
  SEGML_CHECK(opt.crop_height > 0 && opt.crop_width > 0, "augment: crop size ", opt.crop_height, "x", opt.crop_width,
              " must be positive");
  Generator g(seed);
  const double ratio = detail::uniform(g, opt.ratio_min, opt.ratio_max);
  const double scale = ratio * static_cast<double>(std::min(opt.crop_height, opt.crop_width)) /
                       static_cast<double>(std::min(rgb.height, rgb.width));
  const int64_t h = std::max<int64_t>(1, std::llround(rgb.height * scale));
  const int64_t w = std::max<int64_t>(1, std::llround(rgb.width * scale));
  Image img = pil_resize(to_rgb(rgb), h, w, Resample::BILINEAR);
  Image lab = pil_resize(label, h, w, Resample::NEAREST);
  const CropBox box = random_crop_box(lab, opt, g);
  img = detail::crop(img, box.y0, box.x0, box.height, box.width);
  lab = detail::crop(lab, box.y0, box.x0, box.height, box.width);
  if (g.uniform<double>() < opt.flip_prob) {
    detail::flip_horizontal(img);
    detail::flip_horizontal(lab);
  }
  if (opt.photometric) detail::photometric_distortion(img, g);
  return {detail::normalise(img, processor, opt.crop_height, opt.crop_width),
          detail::labels_tensor(lab, opt.crop_height, opt.crop_width, opt.ignore_index)};
}

// No augmentation: the processor's resize of image (bilinear) and label (nearest), as HF's tutorial.
inline Example plain_resize(const Image& rgb, const Image& label, const SegformerImageProcessor& processor) {
  SegformerImageProcessor p = processor;
  p.do_reduce_labels = false;  // labels arrive already reduced when asked
  Tensor<float> x = p.preprocess(rgb);
  Tensor<int64_t> y = p.preprocess_labels(label);
  return {x.view({3, x.size(2), x.size(3)}), y.view({y.size(1), y.size(2)})};
}

}  // namespace segml::train
