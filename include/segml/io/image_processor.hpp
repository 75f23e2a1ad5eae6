// segml/io/image_processor.hpp: HF's SegformerImageProcessor (PIL path), bit-exact on uint8.
//
// Guarantees:
//  - pil_resize() reproduces PIL's Image.resize((W, H), filter) on 8-bit images exactly: for
//    BILINEAR/BICUBIC/LANCZOS/BOX/HAMMING the separable two-pass convolution (horizontal first, on the
//    rows the vertical pass needs, uint8 in between) whose filter support widens with the scale when
//    downscaling (antialiasing), with PIL's double coefficients, 22-bit fixed-point weights, rounding
//    and clipping; for NEAREST PIL's affine scaling with its accumulated source positions.
//  - preprocess() = HF's pipeline: to RGB, resize to size {height, width}, then x * rescale_factor in
//    float64 cast to float32, then (x - mean) / std in float32; pixel_values (B, 3, H, W).
//  - preprocess_labels() = HF's segmentation-map pipeline: reduce_labels if enabled (before resizing),
//    then PIL NEAREST to the same size; labels (B, H, W) int64.
//  - post_process_semantic_segmentation(): per image, bilinear upsampling (align_corners=False, PyTorch's
//    rule) to the target size, then argmax over classes (first maximal index). Streamed by row bands
//    (upsample_argmax): memory is O(classes x W) besides the output, never classes x H x W floats,
//    and the ids are bit-identical to upsampling the whole tensor first. post_process_label_map()
//    gives the same ids as a compact LabelMap (uint8 / int32) instead of int64.
//  - preprocessor_config.json round-trips: every HF field is read and written; unknown fields are kept.
//    size is bounded (kMaxSize per side) before anything is allocated.
// Does not: decode images (see io/image.hpp), crop, pad, or augment.
#pragma once

#include <nlohmann/json.hpp>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <numbers>
#include <string>
#include <utility>
#include <vector>

#include "segml/core/error.hpp"
#include "segml/core/parallel.hpp"
#include "segml/core/tensor.hpp"
#include "segml/hub/hub.hpp"
#include "segml/io/image.hpp"
#include "segml/io/safetensors.hpp"
#include "segml/kernels/resize.hpp"

namespace segml {

// PIL's resampling filters, with PIL's enum values (as stored in preprocessor_config.json).
enum class Resample : int { NEAREST = 0, LANCZOS = 1, BILINEAR = 2, BICUBIC = 3, BOX = 4, HAMMING = 5 };

namespace detail {

// PIL's filter kernels and their support at scale 1.
struct PilFilter {
  double (*weight)(double);
  double support;
};

inline double pil_box(double x) { return (x > -0.5 && x <= 0.5) ? 1.0 : 0.0; }
inline double pil_bilinear(double x) {
  x = std::abs(x);
  return x < 1.0 ? 1.0 - x : 0.0;
}
inline double pil_hamming(double x) {
  x = std::abs(x);
  if (x == 0.0) return 1.0;
  if (x >= 1.0) return 0.0;
  x *= std::numbers::pi;
  return std::sin(x) / x * (0.54f + 0.46f * std::cos(x));  // PIL's constants are floats
}
inline double pil_bicubic(double x) {  // Keys cubic, a = -0.5
  const double a = -0.5;
  x = std::abs(x);
  if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
  if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
  return 0.0;
}
inline double pil_sinc(double x) {
  if (x == 0.0) return 1.0;
  x *= std::numbers::pi;
  return std::sin(x) / x;
}
inline double pil_lanczos(double x) { return (-3.0 <= x && x < 3.0) ? pil_sinc(x) * pil_sinc(x / 3) : 0.0; }

inline PilFilter pil_filter(Resample r) {
  switch (r) {
    case Resample::BOX: return {pil_box, 0.5};
    case Resample::BILINEAR: return {pil_bilinear, 1.0};
    case Resample::HAMMING: return {pil_hamming, 1.0};
    case Resample::BICUBIC: return {pil_bicubic, 2.0};
    case Resample::LANCZOS: return {pil_lanczos, 3.0};
    case Resample::NEAREST: break;
  }
  fail("pil_resize: no convolution filter for resample ", static_cast<int>(r));
}

inline constexpr int kPilPrecisionBits = 32 - 8 - 2;

// One axis of a PIL convolution resize: output o reads `count[o]` inputs from `first[o]` with
// fixed-point weights k[o * ksize + j].
struct PilAxis {
  int64_t ksize = 0;
  std::vector<int64_t> first, count;
  std::vector<int32_t> k;

  PilAxis(int64_t in_size, int64_t out_size, const PilFilter& f) : first(out_size), count(out_size) {
    const double scale = static_cast<double>(static_cast<float>(in_size)) / static_cast<double>(out_size);
    const double filterscale = std::max(scale, 1.0);
    const double support = f.support * filterscale;
    ksize = static_cast<int64_t>(std::ceil(support)) * 2 + 1;
    k.assign(static_cast<size_t>(out_size * ksize), 0);
    std::vector<double> w(static_cast<size_t>(ksize));
    for (int64_t o = 0; o < out_size; ++o) {
      const double center = (static_cast<double>(o) + 0.5) * scale;
      const double ss = 1.0 / filterscale;
      const int64_t lo = std::max<int64_t>(static_cast<int>(center - support + 0.5), 0);
      const int64_t hi = std::min<int64_t>(static_cast<int>(center + support + 0.5), in_size);
      const int64_t n = hi - lo;
      double ww = 0.0;
      for (int64_t j = 0; j < n; ++j) {
        w[static_cast<size_t>(j)] = f.weight((static_cast<double>(j + lo) - center + 0.5) * ss);
        ww += w[static_cast<size_t>(j)];
      }
      for (int64_t j = 0; j < n; ++j) {
        const double kj = ww != 0.0 ? w[static_cast<size_t>(j)] / ww : w[static_cast<size_t>(j)];
        const double scaled = kj * (1 << kPilPrecisionBits);
        k[static_cast<size_t>(o * ksize + j)] = static_cast<int32_t>(kj < 0 ? -0.5 + scaled : 0.5 + scaled);
      }
      first[static_cast<size_t>(o)] = lo;
      count[static_cast<size_t>(o)] = n;
    }
  }
};

// PIL's clip8: drop the fraction bits (floor), clamp to [0, 255]. Sums are int32 as in PIL (the
// 2 spare bits of PRECISION_BITS keep them from overflowing).
inline uint8_t pil_clip8(int32_t acc) {
  return static_cast<uint8_t>(std::clamp<int32_t>(acc >> kPilPrecisionBits, 0, 255));
}

// out (out_h, OW, C) from rows [row0, row0 + out_h) of in (H, W, C), resampled along x.
template <int C>
inline void pil_pass_horizontal(const Image& in, int64_t row0, Image& out, const PilAxis& ax) {
  const int64_t OW = out.width;
  parallel_for(out.height, 8, [&](int64_t y0, int64_t y1) {
    for (int64_t y = y0; y < y1; ++y) {
      const uint8_t* src = in.data.data() + (y + row0) * in.width * C;
      uint8_t* dst = out.data.data() + y * OW * C;
      for (int64_t o = 0; o < OW; ++o) {
        const int32_t* k = ax.k.data() + o * ax.ksize;
        const uint8_t* s = src + ax.first[static_cast<size_t>(o)] * C;
        const int64_t n = ax.count[static_cast<size_t>(o)];
        int32_t acc[C];
        for (int c = 0; c < C; ++c) acc[c] = int32_t{1} << (kPilPrecisionBits - 1);
        for (int64_t j = 0; j < n; ++j)
          for (int c = 0; c < C; ++c) acc[c] += int32_t{s[j * C + c]} * k[j];
        for (int c = 0; c < C; ++c) dst[o * C + c] = pil_clip8(acc[c]);
      }
    }
  });
}

// out (OH, W, C) from in (H, W, C), resampled along y (each output row is a weighted sum of rows).
inline void pil_pass_vertical(const Image& in, Image& out, const PilAxis& ax) {
  const int64_t row = in.width * in.channels;
  parallel_for(out.height, 8, [&](int64_t y0, int64_t y1) {
    std::vector<int32_t> acc(static_cast<size_t>(row));
    for (int64_t o = y0; o < y1; ++o) {
      const int32_t* k = ax.k.data() + o * ax.ksize;
      const uint8_t* src = in.data.data() + ax.first[static_cast<size_t>(o)] * row;
      std::fill(acc.begin(), acc.end(), int32_t{1} << (kPilPrecisionBits - 1));
      for (int64_t j = 0; j < ax.count[static_cast<size_t>(o)]; ++j) {
        const uint8_t* r = src + j * row;
        const int32_t kj = k[j];
        for (int64_t i = 0; i < row; ++i) acc[static_cast<size_t>(i)] += int32_t{r[i]} * kj;
      }
      uint8_t* dst = out.data.data() + o * row;
      for (int64_t i = 0; i < row; ++i) dst[i] = pil_clip8(acc[static_cast<size_t>(i)]);
    }
  });
}

inline void pil_pass_horizontal(const Image& in, int64_t row0, Image& out, const PilAxis& ax) {
  switch (in.channels) {
    case 1: return pil_pass_horizontal<1>(in, row0, out, ax);
    case 3: return pil_pass_horizontal<3>(in, row0, out, ax);
    case 4: return pil_pass_horizontal<4>(in, row0, out, ax);
  }
  fail("pil_resize: images must have 1, 3 or 4 channels, got ", in.channels);
}

// PIL's nearest map for one axis: accumulated positions, -1 where the source falls outside.
inline std::vector<int64_t> pil_nearest_map(int64_t in_size, int64_t out_size) {
  const double step = static_cast<double>(static_cast<float>(in_size)) / static_cast<double>(out_size);
  std::vector<int64_t> map(static_cast<size_t>(out_size));
  double pos = step * 0.5;
  for (int64_t o = 0; o < out_size; ++o) {
    const int64_t i = pos < 0.0 ? -1 : static_cast<int64_t>(pos);
    map[static_cast<size_t>(o)] = (i >= 0 && i < in_size) ? i : -1;
    pos += step;
  }
  return map;
}

}  // namespace detail

// Image.resize((out_w, out_h), filter) of PIL, bit-exact on 8-bit images with 1, 3 or 4 channels.
inline Image pil_resize(const Image& in, int64_t out_h, int64_t out_w, Resample filter) {
  SEGML_CHECK(out_h > 0 && out_w > 0, "pil_resize: target size ", out_h, "x", out_w, " must be positive");
  SEGML_CHECK(in.height > 0 && in.width > 0, "pil_resize: empty input image ", in.height, "x", in.width);
  if (in.height == out_h && in.width == out_w) return in;  // PIL copies
  if (filter == Resample::NEAREST) {
    const std::vector<int64_t> ys = detail::pil_nearest_map(in.height, out_h), xs = detail::pil_nearest_map(in.width, out_w);
    Image out(out_h, out_w, in.channels);  // zero where PIL's map falls outside (it fills with 0)
    for (int64_t y = 0; y < out_h; ++y) {
      if (ys[static_cast<size_t>(y)] < 0) continue;
      for (int64_t x = 0; x < out_w; ++x) {
        if (xs[static_cast<size_t>(x)] < 0) continue;
        for (int64_t c = 0; c < in.channels; ++c) out.at(y, x, c) = in.at(ys[static_cast<size_t>(y)], xs[static_cast<size_t>(x)], c);
      }
    }
    return out;
  }
  const detail::PilFilter f = detail::pil_filter(filter);
  const detail::PilAxis vert(in.height, out_h, f);
  const bool need_h = out_w != in.width, need_v = out_h != in.height;
  if (!need_h) {
    Image out(out_h, out_w, in.channels);
    detail::pil_pass_vertical(in, out, vert);
    return out;
  }
  // Horizontal pass only on the input rows the vertical pass reads, as PIL does.
  const int64_t row_first = vert.first.front(), row_last = vert.first.back() + vert.count.back();
  const detail::PilAxis horiz(in.width, out_w, f);
  Image tmp(need_v ? row_last - row_first : in.height, out_w, in.channels);
  detail::pil_pass_horizontal(in, need_v ? row_first : 0, tmp, horiz);
  if (!need_v) return tmp;
  detail::PilAxis shifted = vert;
  for (auto& r : shifted.first) r -= row_first;
  Image out(out_h, out_w, in.channels);
  detail::pil_pass_vertical(tmp, out, shifted);
  return out;
}

// HF's reduce_label: 0 -> 255, k -> k-1 for 1 <= k <= 254, 255 stays 255.
inline Image reduce_labels(Image map) {
  for (uint8_t& v : map.data) v = (v == 0 || v == 255) ? uint8_t{255} : static_cast<uint8_t>(v - 1);
  return map;
}

class SegformerImageProcessor {
 public:
  // The largest model input side preprocessor_config.json may ask for: 8192 (pixel_values of
  // 3 x 8192 x 8192 float32 = 805 MB); released SegFormers use 512 to 1024.
  static constexpr int64_t kMaxSize = 8192;
  bool do_resize = true;
  int64_t height = 512, width = 512;  // HF: size {"height", "width"}
  Resample resample = Resample::BILINEAR;
  bool do_rescale = true;
  double rescale_factor = 1.0 / 255.0;
  bool do_normalize = true;
  std::array<double, 3> image_mean{0.485, 0.456, 0.406};  // IMAGENET_DEFAULT_MEAN
  std::array<double, 3> image_std{0.229, 0.224, 0.225};   // IMAGENET_DEFAULT_STD
  bool do_reduce_labels = false;
  // Every preprocessor_config.json field segml does not model, written back unchanged.
  nlohmann::json extra = nlohmann::json::object();

  // The image as the model sees it before normalisation: RGB, resized if do_resize (uint8).
  Image resize(const Image& image) const {
    if (image.channels == 3) return do_resize ? pil_resize(image, height, width, resample) : image;  // no RGB copy
    const Image rgb = to_rgb(image);
    return do_resize ? pil_resize(rgb, height, width, resample) : rgb;
  }

  // pixel_values (B, 3, H, W). Without do_resize all images must have the same size.
  Tensor<float> preprocess(const std::vector<Image>& images) const {
    std::vector<const Image*> refs;
    for (const Image& i : images) refs.push_back(&i);
    return preprocess(refs);
  }
  Tensor<float> preprocess(const Image& image) const { return preprocess(std::vector<const Image*>{&image}); }  // no copy
  Tensor<float> preprocess(const std::vector<const Image*>& images) const {
    SEGML_CHECK(!images.empty(), "SegformerImageProcessor::preprocess: no images given");
    const auto lut = value_table();
    Tensor<float> out;
    for (size_t b = 0; b < images.size(); ++b) {
      const Image img = resize(*images[b]);
      if (b == 0) out = Tensor<float>::empty({static_cast<int64_t>(images.size()), 3, img.height, img.width});
      SEGML_CHECK(img.height == out.size(2) && img.width == out.size(3), "SegformerImageProcessor::preprocess: image ",
                  b, " is ", img.height, "x", img.width, " but image 0 is ", out.size(2), "x", out.size(3),
                  " (enable do_resize or pass images of one size)");
      const int64_t hw = img.height * img.width;
      float* dst = out.data() + static_cast<int64_t>(b) * 3 * hw;
      for (int64_t c = 0; c < 3; ++c)
        for (int64_t p = 0; p < hw; ++p) dst[c * hw + p] = lut[static_cast<size_t>(c)][img.data[static_cast<size_t>(p * 3 + c)]];
    }
    return out;
  }

  // labels (B, H, W) int64 from 1-channel label maps: reduce_labels if enabled, then NEAREST resize.
  Tensor<int64_t> preprocess_labels(const std::vector<Image>& maps) const {
    SEGML_CHECK(!maps.empty(), "SegformerImageProcessor::preprocess_labels: no label maps given");
    Tensor<int64_t> out;
    for (size_t b = 0; b < maps.size(); ++b) {
      SEGML_CHECK(maps[b].channels == 1, "SegformerImageProcessor::preprocess_labels: label map ", b, " has ",
                  maps[b].channels, " channels, expected 1");
      Image m = do_reduce_labels ? reduce_labels(maps[b]) : maps[b];
      if (do_resize) m = pil_resize(m, height, width, Resample::NEAREST);
      if (b == 0) out = Tensor<int64_t>::empty({static_cast<int64_t>(maps.size()), m.height, m.width});
      SEGML_CHECK(m.height == out.size(1) && m.width == out.size(2), "SegformerImageProcessor::preprocess_labels: map ",
                  b, " is ", m.height, "x", m.width, " but map 0 is ", out.size(1), "x", out.size(2));
      std::copy(m.data.begin(), m.data.end(), out.data() + static_cast<int64_t>(b) * m.height * m.width);
    }
    return out;
  }
  Tensor<int64_t> preprocess_labels(const Image& map) const { return preprocess_labels(std::vector<Image>{map}); }

  // logits (B, C, h, w) -> B label maps (H_b, W_b) int64: bilinear (align_corners=False) to
  // target_sizes[b] = {H_b, W_b}, then argmax over C. No target sizes: argmax at (h, w). Streamed
  // (upsample_argmax): never holds the C x H_b x W_b upsampled logits.
  std::vector<Tensor<int64_t>> post_process_semantic_segmentation(
      const Tensor<float>& logits, const std::vector<std::pair<int64_t, int64_t>>& target_sizes = {}) const {
    const int64_t B = check_logits(logits, target_sizes.size());
    const Tensor<float> x = logits.contiguous();
    std::vector<Tensor<int64_t>> out;
    for (int64_t b = 0; b < B; ++b) {
      const auto [H, W] = target_size(x, target_sizes, b);
      Tensor<int64_t> labels = Tensor<int64_t>::empty({H, W});
      if (target_sizes.empty()) argmax(labels.data(), x, b);
      else upsample_argmax(labels.data(), x, b, H, W);
      out.push_back(labels);
    }
    return out;
  }

  // Image b of logits (B, C, h, w) -> its label map at (H, W) as post_process_semantic_segmentation
  // computes it (the same ids), stored compactly (LabelMap: uint8 for up to 256 classes, else
  // int32). Memory: the map, plus 2 x C x W floats per thread.
  LabelMap post_process_label_map(const Tensor<float>& logits, int64_t b, int64_t H, int64_t W) const {
    const int64_t B = check_logits(logits, 0);
    SEGML_CHECK(b >= 0 && b < B, "post_process_label_map: image ", b, " of a batch of ", B);
    SEGML_CHECK(H > 0 && W > 0, "post_process_label_map: target size ", H, "x", W, " must be positive");
    const Tensor<float> x = logits.contiguous();
    LabelMap map(H, W, x.size(1));
    if (map.is_narrow()) upsample_argmax(map.narrow.data.data(), x, b, H, W);
    else upsample_argmax(map.wide.data(), x, b, H, W);
    return map;
  }

  // out (H, W) = argmax over C of image b of x (B, C, h, w) resized bilinearly (align_corners=False)
  // to (H, W); the first maximal class wins. Bit-identical to kernels::resize_bilinear_forward to
  // (C, H, W) followed by that argmax: the same taps and the same expressions, in the same order
  // (each input row resized horizontally, then two rows blended vertically). Streamed by output
  // rows, one band per thread: a thread keeps the horizontally resized rows i and i + 1 of every
  // class (2 x C x W floats) and the running maximum of one output row (W floats).
  template <class L>
  static void upsample_argmax(L* out, const Tensor<float>& x, int64_t b, int64_t H, int64_t W) {
    const int64_t C = x.size(1), h = x.size(2), w = x.size(3);
    const float* src = x.data() + b * C * h * w;
    const kernels::detail::ResizeAxis<float> ry(h, H), rx(w, W);
    parallel_for(H, std::max<int64_t>(1, (int64_t{1} << 16) / std::max<int64_t>(1, C * W)), [&](int64_t y0, int64_t y1) {
      std::vector<float> rows(static_cast<size_t>(2 * C * W)), best(static_cast<size_t>(W));
      int64_t tag[2] = {-1, -1};
      // Input row i of every class, resized horizontally: (C, W) in slot i % 2.
      auto row = [&](int64_t i) {
        float* r = rows.data() + (i & 1) * C * W;
        if (tag[i & 1] != i) {
          for (int64_t c = 0; c < C; ++c) {
            const float* xr = src + (c * h + i) * w;
            float* rc = r + c * W;
            for (int64_t ox = 0; ox < W; ++ox) rc[ox] = rx.w0[ox] * xr[rx.i0[ox]] + rx.w1[ox] * xr[rx.i1[ox]];
          }
          tag[i & 1] = i;
        }
        return static_cast<const float*>(r);
      };
      for (int64_t oy = y0; oy < y1; ++oy) {
        const float* r0 = row(ry.i0[oy]);  // i1 is i0 or i0 + 1: the other slot, so r0 stays valid
        const float* r1 = row(ry.i1[oy]);
        const float w0 = ry.w0[oy], w1 = ry.w1[oy];
        L* o = out + oy * W;
        for (int64_t ox = 0; ox < W; ++ox) {
          best[static_cast<size_t>(ox)] = w0 * r0[ox] + w1 * r1[ox];
          o[ox] = 0;
        }
        for (int64_t c = 1; c < C; ++c) {
          const float* a = r0 + c * W;
          const float* z = r1 + c * W;
          for (int64_t ox = 0; ox < W; ++ox) {
            const float v = w0 * a[ox] + w1 * z[ox];
            if (v > best[static_cast<size_t>(ox)]) {
              best[static_cast<size_t>(ox)] = v;
              o[ox] = static_cast<L>(c);
            }
          }
        }
      }
    });
  }

  // ---- preprocessor_config.json ----------------------------------------------------------
  static SegformerImageProcessor from_json(const nlohmann::json& j, const std::string& source = "<json>") {
    if (!j.is_object()) fail("preprocessor config '", source, "': top level must be a JSON object");
    SegformerImageProcessor p;
    auto wrong = [&](const char* key, const char* expected) {
      fail("preprocessor config '", source, "': field '", key, "' must be ", expected, ", got ", j[key].dump());
    };
    auto boolean = [&](const char* key, bool& out) {
      if (!j.contains(key)) return;
      if (!j[key].is_boolean()) wrong(key, "true or false");
      out = j[key].get<bool>();
    };
    auto triple = [&](const char* key, std::array<double, 3>& out) {
      if (!j.contains(key)) return;
      const auto& v = j[key];
      if (v.is_number()) {
        out.fill(v.get<double>());
      } else {
        if (!v.is_array() || v.size() != 3 || !std::all_of(v.begin(), v.end(), [](const auto& e) { return e.is_number(); }))
          wrong(key, "a number or a list of 3 numbers");
        for (size_t i = 0; i < 3; ++i) out[i] = v[i].get<double>();
      }
    };
    boolean("do_resize", p.do_resize);
    boolean("do_rescale", p.do_rescale);
    boolean("do_normalize", p.do_normalize);
    boolean("reduce_labels", p.do_reduce_labels);  // deprecated alias, as HF
    boolean("do_reduce_labels", p.do_reduce_labels);
    if (j.contains("size")) {
      const auto& s = j["size"];
      if (s.is_number_integer()) {
        p.height = p.width = s.get<int64_t>();
      } else if (s.is_object() && s.contains("height") && s.contains("width") && s["height"].is_number_integer() &&
                 s["width"].is_number_integer() && s.size() == 2) {
        p.height = s["height"].get<int64_t>();
        p.width = s["width"].get<int64_t>();
      } else {
        wrong("size", "{\"height\": H, \"width\": W} or an integer");
      }
      if (p.height < 1 || p.width < 1) wrong("size", "positive");
      if (p.height > kMaxSize || p.width > kMaxSize)
        fail("preprocessor config '", source, "': field 'size' is ", p.height, "x", p.width, ", above the bound of ",
             kMaxSize, " per side (the model input; SegFormers use 512 to 1024)");
    }
    if (j.contains("resample")) {
      if (!j["resample"].is_number_integer() || j["resample"].get<int64_t>() < 0 || j["resample"].get<int64_t>() > 5)
        wrong("resample", "a PIL filter id 0..5 (NEAREST 0, LANCZOS 1, BILINEAR 2, BICUBIC 3, BOX 4, HAMMING 5)");
      p.resample = static_cast<Resample>(j["resample"].get<int>());
    }
    if (j.contains("rescale_factor")) {
      if (!j["rescale_factor"].is_number()) wrong("rescale_factor", "a number");
      p.rescale_factor = j["rescale_factor"].get<double>();
    }
    triple("image_mean", p.image_mean);
    triple("image_std", p.image_std);
    for (double s : p.image_std)
      if (!(s != 0.0)) wrong("image_std", "non-zero");
    static const char* known[] = {"do_resize", "size", "resample", "do_rescale", "rescale_factor", "do_normalize",
                                  "image_mean", "image_std", "do_reduce_labels", "reduce_labels"};
    for (auto it = j.begin(); it != j.end(); ++it)
      if (std::none_of(std::begin(known), std::end(known), [&](const char* k) { return it.key() == k; }))
        p.extra[it.key()] = it.value();
    return p;
  }

  static SegformerImageProcessor from_json_file(const std::string& path) {
    std::ifstream in(path);
    if (!in) fail("preprocessor config '", path, "': cannot open file (missing or unreadable)");
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(in);
    } catch (const nlohmann::json::exception& e) {
      fail("preprocessor config '", path, "': invalid JSON: ", e.what());
    }
    return from_json(j, path);
  }

  // HF's `SegformerImageProcessor.from_pretrained(path)`: `path` is a model folder (or a file in
  // one); its preprocessor_config.json is read. A folder without one (a bare checkpoint) gets HF's
  // defaults (512x512, ImageNet mean/std), and *source, when given, says which of the two was used:
  // the file's path or "HF defaults". A hub id ("org/name") is resolved with `hub` (revision, offline)
  // to its snapshot in the HF cache, downloading it if needed (hub/hub.hpp).
  static SegformerImageProcessor from_pretrained(const std::string& path_or_id, std::string* source = nullptr,
                                                 const hub::Options& hub = {}) {
    namespace fs = std::filesystem;
    std::error_code ec;
    const std::string path = hub::resolve(path_or_id, hub::processor_files(), hub, "SegformerImageProcessor.from_pretrained");
    const fs::path folder = fs::is_directory(path, ec) ? fs::path(path) : fs::path(path).parent_path();
    const fs::path file = folder / "preprocessor_config.json";
    if (fs::exists(file, ec)) {
      if (source) *source = file.string();
      return from_json_file(file.string());
    }
    if (source) *source = "HF defaults";
    return SegformerImageProcessor();
  }

  nlohmann::json to_json() const {
    nlohmann::json j = extra;
    if (!j.contains("image_processor_type")) j["image_processor_type"] = "SegformerImageProcessor";
    j["do_resize"] = do_resize;
    j["size"] = {{"height", height}, {"width", width}};
    j["resample"] = static_cast<int>(resample);
    j["do_rescale"] = do_rescale;
    j["rescale_factor"] = rescale_factor;
    j["do_normalize"] = do_normalize;
    j["image_mean"] = image_mean;
    j["image_std"] = image_std;
    j["do_reduce_labels"] = do_reduce_labels;
    return j;
  }

  // Writes preprocessor_config.json atomically (indent 2, final newline, like HF).
  void save(const std::string& path) const {
    const std::string text = to_json().dump(2) + "\n";
    safetensors::write_file_atomic(path, std::vector<char>(text.begin(), text.end()));
  }

 private:
  // Checks logits (B, C, h, w) against `sizes` target sizes (0: none); returns B.
  static int64_t check_logits(const Tensor<float>& logits, size_t sizes) {
    SEGML_CHECK(logits.dim() == 4, "post_process_semantic_segmentation: logits must be (B, C, h, w), got ", logits.shape());
    const int64_t B = logits.size(0), C = logits.size(1);
    SEGML_CHECK(sizes == 0 || static_cast<int64_t>(sizes) == B, "post_process_semantic_segmentation: ", sizes,
                " target sizes for a batch of ", B, " (logits ", logits.shape(), ")");
    SEGML_CHECK(C >= 1, "post_process_semantic_segmentation: logits ", logits.shape(), " have no classes");
    return B;
  }
  static std::pair<int64_t, int64_t> target_size(const Tensor<float>& x, const std::vector<std::pair<int64_t, int64_t>>& sizes,
                                                 int64_t b) {
    if (sizes.empty()) return {x.size(2), x.size(3)};
    const auto [H, W] = sizes[static_cast<size_t>(b)];
    SEGML_CHECK(H > 0 && W > 0, "post_process_semantic_segmentation: target size ", H, "x", W, " must be positive");
    return {H, W};
  }

  // out (h, w) = argmax over C of image b of x (B, C, h, w), first maximal class.
  static void argmax(int64_t* out, const Tensor<float>& x, int64_t b) {
    const int64_t C = x.size(1), hw = x.size(2) * x.size(3);
    const float* src = x.data() + b * C * hw;
    for (int64_t p = 0; p < hw; ++p) {
      int64_t best = 0;
      for (int64_t c = 1; c < C; ++c)
        if (src[c * hw + p] > src[best * hw + p]) best = c;
      out[p] = best;
    }
  }

  // The float each uint8 value of each channel becomes: float32(float64(v) * factor), then
  // (x - mean) / std in float32, exactly as HF's numpy code.
  std::array<std::array<float, 256>, 3> value_table() const {
    std::array<std::array<float, 256>, 3> lut{};
    for (size_t c = 0; c < 3; ++c) {
      const float mean = static_cast<float>(image_mean[c]), std = static_cast<float>(image_std[c]);
      for (int v = 0; v < 256; ++v) {
        float x = do_rescale ? static_cast<float>(static_cast<double>(v) * rescale_factor) : static_cast<float>(v);
        if (do_normalize) x = (x - mean) / std;
        lut[c][static_cast<size_t>(v)] = x;
      }
    }
    return lut;
  }
};

}  // namespace segml
