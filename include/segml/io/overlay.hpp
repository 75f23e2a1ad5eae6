// segml/io/overlay.hpp: pictures of label maps — class palette, colour mask, blended overlay, legend.
//
// Guarantees:
//  - Colours come from a list indexed by class id, normally class_colors(id2label) (io/palette.hpp:
//    by class NAME, a dataset's own palette first, distinct fallback colours). Every function below
//    takes that list; an id beyond the list (or the overloads without a list) falls back to
//    palette_color(id): ids 0..18 the Cityscapes colours by number, larger ids a hashed colour.
//  - colorize() maps a (H, W) label map to an RGB image; overlay() blends it over the image
//    (out = (1 - alpha) * image + alpha * colour, rounded), both at the label map's size.
//    overlay_in_place() blends into the RGB image itself (the same bytes as overlay(), no copy), and
//    colorize_in_place() overwrites it with the colours.
//    Each takes the labels as a Tensor<int64_t> or as a compact LabelMap (io/image.hpp).
//  - heat_color() / heatmap_overlay(): values in [0, 1] as a perceptual colour map over an image.
//  - class_histogram() counts the pixels of each class present; add_legend() appends a white panel
//    to the right of an image listing those classes (colour swatch, id, name, share of pixels),
//    most frequent first. side_by_side() puts two images next to each other with a caption above
//    each (evaluate --predictions: prediction | ground truth). The text uses stb_easy_font (Debian's libstb-dev) when available; without
//    it the legend shows the swatches only.
// Does not: resize (the label map must already have the image's size), read or write files.
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "segml/core/error.hpp"
#include "segml/core/tensor.hpp"
#include "segml/io/image.hpp"
#include "segml/io/palette.hpp"

#if defined(SEGML_HAVE_STB) && __has_include(<stb_easy_font.h>)
#define SEGML_HAVE_EASY_FONT 1
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-function"
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"
#pragma GCC diagnostic ignored "-Wsign-compare"
#include <stb_easy_font.h>
#pragma GCC diagnostic pop
#endif

namespace segml {

// The colour of class `id` (see the file comment).
inline Rgb palette_color(int64_t id) {
  static constexpr Rgb kFixed[] = {
      {128, 64, 128}, {244, 35, 232}, {70, 70, 70},   {102, 102, 156}, {190, 153, 153}, {153, 153, 153}, {250, 170, 30},
      {220, 220, 0},  {107, 142, 35}, {152, 251, 152}, {70, 130, 180}, {220, 20, 60},   {255, 0, 0},     {0, 0, 142},
      {0, 0, 70},     {0, 60, 100},   {0, 80, 100},   {0, 0, 230},     {119, 11, 32}};
  constexpr int64_t fixed = static_cast<int64_t>(sizeof(kFixed) / sizeof(kFixed[0]));
  if (id >= 0 && id < fixed) return kFixed[id];
  // splitmix64 of the id: well spread, platform independent; lifted away from black.
  uint64_t z = static_cast<uint64_t>(id) + 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  z ^= z >> 31;
  return {static_cast<uint8_t>(48 + (z & 0xff) % 208), static_cast<uint8_t>(48 + ((z >> 8) & 0xff) % 208),
          static_cast<uint8_t>(48 + ((z >> 16) & 0xff) % 208)};
}

// The colour of class `id` from `colors` (class_colors()), or palette_color(id) beyond it.
inline Rgb class_color(int64_t id, const std::vector<Rgb>& colors) {
  return id >= 0 && id < static_cast<int64_t>(colors.size()) ? colors[static_cast<size_t>(id)] : palette_color(id);
}

namespace detail {
inline const std::vector<Rgb>& no_colors() {
  static const std::vector<Rgb> none;
  return none;
}
inline void check_label_map(const Tensor<int64_t>& labels, const char* what) {
  SEGML_CHECK(labels.dim() == 2 && labels.numel() > 0, what, ": labels must be a non-empty (H, W) map, got ", labels.shape());
}
inline void check_label_map(const LabelMap& labels, const char* what) {
  SEGML_CHECK(labels.numel() > 0, what, ": labels must be a non-empty (H, W) map, got ", labels.height, "x", labels.width);
}
inline int64_t label_rows(const Tensor<int64_t>& l) { return l.size(0); }
inline int64_t label_cols(const Tensor<int64_t>& l) { return l.size(1); }
inline int64_t label_rows(const LabelMap& l) { return l.height; }
inline int64_t label_cols(const LabelMap& l) { return l.width; }

// Calls f(p, id) for every pixel p of a label map, in order.
template <class F>
inline void for_each_label(const Tensor<int64_t>& labels, F&& f) {
  const Tensor<int64_t> l = labels.contiguous();
  for (int64_t p = 0; p < l.numel(); ++p) f(p, l.data()[p]);
}
template <class F>
inline void for_each_label(const LabelMap& labels, F&& f) {
  if (labels.is_narrow())
    for (int64_t p = 0; p < labels.numel(); ++p) f(p, int64_t{labels.narrow.data[static_cast<size_t>(p)]});
  else
    for (int64_t p = 0; p < labels.numel(); ++p) f(p, int64_t{labels.wide[static_cast<size_t>(p)]});
}

template <class Labels>
inline Image colorize_impl(const Labels& labels, const std::vector<Rgb>& colors) {
  check_label_map(labels, "colorize");
  Image out(label_rows(labels), label_cols(labels), 3);
  for_each_label(labels, [&](int64_t p, int64_t id) {
    const Rgb c = class_color(id, colors);
    std::copy(c.begin(), c.end(), out.data.begin() + 3 * p);
  });
  return out;
}

// rgb (H, W, 3) = (1 - alpha) * rgb + alpha * palette colour, rounded: overlay()'s formula.
template <class Labels>
inline void blend_impl(Image& rgb, const Labels& labels, double alpha, const char* what, int64_t transparent,
                       const std::vector<Rgb>& colors) {
  check_label_map(labels, what);
  SEGML_CHECK(rgb.height == label_rows(labels) && rgb.width == label_cols(labels), what, ": image is ", rgb.height, "x",
              rgb.width, " but the label map is ", label_rows(labels), "x", label_cols(labels));
  SEGML_CHECK(rgb.channels == 3, what, ": the image has ", rgb.channels, " channels, expected 3 (RGB)");
  SEGML_CHECK(alpha >= 0.0 && alpha <= 1.0, what, ": alpha must be in [0, 1], got ", alpha);
  for_each_label(labels, [&](int64_t p, int64_t id) {
    if (id == transparent) return;
    const Rgb c = class_color(id, colors);
    uint8_t* px = rgb.data.data() + 3 * p;
    for (size_t k = 0; k < 3; ++k) px[k] = static_cast<uint8_t>(std::lround((1.0 - alpha) * px[k] + alpha * c[k]));
  });
}

template <class Labels>
inline std::vector<std::pair<int64_t, int64_t>> histogram_impl(const Labels& labels) {
  check_label_map(labels, "class_histogram");
  std::vector<int64_t> dense(256, 0);  // ids 0..65535 are counted in a vector, others in a map
  std::map<int64_t, int64_t> sparse;
  for_each_label(labels, [&](int64_t, int64_t id) {
    if (id >= 0 && id < 65536) {
      if (id >= static_cast<int64_t>(dense.size())) dense.resize(65536, 0);
      ++dense[static_cast<size_t>(id)];
    } else {
      ++sparse[id];
    }
  });
  for (size_t id = 0; id < dense.size(); ++id)
    if (dense[id]) sparse[static_cast<int64_t>(id)] += dense[id];
  std::vector<std::pair<int64_t, int64_t>> out(sparse.begin(), sparse.end());
  std::stable_sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.second > b.second; });
  return out;
}
}  // namespace detail

// labels (H, W) -> RGB image of the class colours.
inline Image colorize(const Tensor<int64_t>& labels, const std::vector<Rgb>& colors = detail::no_colors()) {
  return detail::colorize_impl(labels, colors);
}
inline Image colorize(const LabelMap& labels, const std::vector<Rgb>& colors = detail::no_colors()) {
  return detail::colorize_impl(labels, colors);
}
// colorize() into an existing RGB image of the labels' size, overwriting it (no new image).
inline void colorize_in_place(Image& rgb, const LabelMap& labels, const std::vector<Rgb>& colors = detail::no_colors()) {
  detail::check_label_map(labels, "colorize_in_place");
  SEGML_CHECK(rgb.channels == 3 && rgb.height == labels.height && rgb.width == labels.width,
              "colorize_in_place: the image is ", rgb.height, "x", rgb.width, "x", rgb.channels, ", expected ",
              labels.height, "x", labels.width, "x3");
  detail::for_each_label(labels, [&](int64_t p, int64_t id) {
    const Rgb c = class_color(id, colors);
    std::copy(c.begin(), c.end(), rgb.data.begin() + 3 * p);
  });
}

// The image (any channel count, same size as labels) blended with the class colours.
inline Image overlay(const Image& image, const Tensor<int64_t>& labels, double alpha = 0.5,
                     const std::vector<Rgb>& colors = detail::no_colors()) {
  Image out = to_rgb(image);
  detail::blend_impl(out, labels, alpha, "overlay", -1, colors);
  return out;
}
inline Image overlay(const Image& image, const LabelMap& labels, double alpha = 0.5,
                     const std::vector<Rgb>& colors = detail::no_colors()) {
  Image out = to_rgb(image);
  detail::blend_impl(out, labels, alpha, "overlay", -1, colors);
  return out;
}

// overlay() into the RGB image itself, for when the original is not needed any more (saves a copy
// of the image: 147 MB at 7000x7000).
inline void overlay_in_place(Image& rgb, const Tensor<int64_t>& labels, double alpha = 0.5,
                             const std::vector<Rgb>& colors = detail::no_colors()) {
  detail::blend_impl(rgb, labels, alpha, "overlay_in_place", -1, colors);
}
inline void overlay_in_place(Image& rgb, const LabelMap& labels, double alpha = 0.5,
                             const std::vector<Rgb>& colors = detail::no_colors()) {
  detail::blend_impl(rgb, labels, alpha, "overlay_in_place", -1, colors);
}
// overlay_in_place() leaving the pixels of label `transparent` as they are (e.g. zero-shot's "nothing").
inline void overlay_in_place(Image& rgb, const LabelMap& labels, double alpha, int64_t transparent,
                             const std::vector<Rgb>& colors = detail::no_colors()) {
  detail::blend_impl(rgb, labels, alpha, "overlay_in_place", transparent, colors);
}

// A perceptual colour map for values in [0, 1] (dark purple -> red -> yellow, like matplotlib's
// "inferno"), piecewise linear between 5 stops; values outside are clamped, NaN is black.
inline Rgb heat_color(double v) {
  static constexpr double stops[5][3] = {{0, 0, 4}, {87, 16, 110}, {188, 55, 84}, {249, 142, 9}, {252, 255, 164}};
  if (!(v == v)) return Rgb{0, 0, 0};
  v = std::clamp(v, 0.0, 1.0) * 4.0;
  const int i = std::min(3, static_cast<int>(v));
  const double t = v - i;
  Rgb c{};
  for (size_t k = 0; k < 3; ++k) c[k] = static_cast<uint8_t>(std::lround(stops[i][k] + t * (stops[i + 1][k] - stops[i][k])));
  return c;
}

// A heat map of `values` (H, W) in [0, 1] blended over the RGB image of the same size:
// out = (1 - alpha) * image + alpha * heat_color(value), rounded.
inline Image heatmap_overlay(const Image& image, const Tensor<float>& values, double alpha = 0.6) {
  SEGML_CHECK(values.dim() == 2 && values.size(0) == image.height && values.size(1) == image.width,
              "heatmap_overlay: values ", values.shape(), " do not match the image (", image.height, "x", image.width, ")");
  SEGML_CHECK(alpha >= 0.0 && alpha <= 1.0, "heatmap_overlay: alpha must be in [0, 1], got ", alpha);
  Image out = to_rgb(image);
  const Tensor<float> v = values.contiguous();
  for (int64_t p = 0; p < v.numel(); ++p) {
    const Rgb c = heat_color(v.data()[p]);
    uint8_t* px = out.data.data() + 3 * p;
    for (size_t k = 0; k < 3; ++k) px[k] = static_cast<uint8_t>(std::lround((1.0 - alpha) * px[k] + alpha * c[k]));
  }
  return out;
}

// Pixels per class present in `labels`, most frequent first (ties: smaller id first).
inline std::vector<std::pair<int64_t, int64_t>> class_histogram(const Tensor<int64_t>& labels) {
  return detail::histogram_impl(labels);
}
inline std::vector<std::pair<int64_t, int64_t>> class_histogram(const LabelMap& labels) {
  return detail::histogram_impl(labels);
}

namespace detail {
inline void fill_rect(Image& img, int64_t x0, int64_t y0, int64_t x1, int64_t y1, const Rgb& c) {
  x0 = std::clamp<int64_t>(x0, 0, img.width);
  x1 = std::clamp<int64_t>(x1, 0, img.width);
  y0 = std::clamp<int64_t>(y0, 0, img.height);
  y1 = std::clamp<int64_t>(y1, 0, img.height);
  for (int64_t y = y0; y < y1; ++y)
    for (int64_t x = x0; x < x1; ++x)
      for (int64_t k = 0; k < 3; ++k) img.at(y, x, k) = c[static_cast<size_t>(k)];
}

// Draws `text` with its top-left corner at (x, y), each font unit `scale` pixels; returns the width.
inline int64_t draw_text(Image& img, int64_t x, int64_t y, const std::string& text, int64_t scale, const Rgb& color) {
#ifdef SEGML_HAVE_EASY_FONT
  std::string buf = text;  // stb_easy_font takes char*
  std::vector<char> quads(buf.size() * 300 + 64);
  const int n = stb_easy_font_print(0, 0, buf.data(), nullptr, quads.data(), static_cast<int>(quads.size()));
  for (int q = 0; q < n; ++q) {
    float xs[4], ys[4];
    for (int v = 0; v < 4; ++v) {
      std::memcpy(&xs[v], quads.data() + (q * 4 + v) * 16, sizeof(float));
      std::memcpy(&ys[v], quads.data() + (q * 4 + v) * 16 + 4, sizeof(float));
    }
    const float qx0 = *std::min_element(xs, xs + 4), qx1 = *std::max_element(xs, xs + 4);
    const float qy0 = *std::min_element(ys, ys + 4), qy1 = *std::max_element(ys, ys + 4);
    fill_rect(img, x + std::lround(qx0 * scale), y + std::lround(qy0 * scale), x + std::lround(qx1 * scale),
              y + std::lround(qy1 * scale), color);
  }
  return stb_easy_font_width(buf.data()) * scale;
#else
  (void)img, (void)x, (void)y, (void)text, (void)scale, (void)color;
  return 0;
#endif
}

inline int64_t text_width(const std::string& text, int64_t scale) {
#ifdef SEGML_HAVE_EASY_FONT
  std::string buf = text;
  return stb_easy_font_width(buf.data()) * scale;
#else
  (void)text, (void)scale;
  return 0;
#endif
}
}  // namespace detail

// `image` with a legend panel on its right: one row per class of `histogram` (from class_histogram),
// "id name  xx.x%", at most `max_rows` rows (then "+ N more"). `names[id]` names the classes and
// `colors` colours them (the list the overlay was painted with; palette_color() beyond it).
// A class equal to `transparent` (not coloured in the overlay) gets a white swatch.
inline Image add_legend(const Image& image, const std::vector<std::pair<int64_t, int64_t>>& histogram,
                        const std::map<int64_t, std::string>& names, size_t max_rows = 40, int64_t transparent = -1,
                        const std::vector<Rgb>& colors = detail::no_colors()) {
  SEGML_CHECK(image.height > 0 && image.width > 0, "add_legend: empty image");
  const Image converted = image.channels == 3 ? Image() : to_rgb(image);  // no copy of an RGB image
  const Image& rgb = image.channels == 3 ? image : converted;
  const int64_t scale = std::max<int64_t>(1, std::min(image.height, image.width) / 320);
  const int64_t row = 14 * scale, margin = 8 * scale, swatch = 10 * scale, gap = 6 * scale;
  int64_t total = 0;
  for (const auto& [id, count] : histogram) total += count;
  std::vector<std::pair<Rgb, std::string>> rows;
  for (size_t i = 0; i < histogram.size() && i < max_rows; ++i) {
    const auto [id, count] = histogram[i];
    auto it = names.find(id);
    const double percent = 100.0 * static_cast<double>(count) / static_cast<double>(std::max<int64_t>(total, 1));
    char share[32];
    if (percent < 0.1) std::snprintf(share, sizeof share, "  <0.1%%");
    else std::snprintf(share, sizeof share, "  %.1f%%", percent);
    rows.emplace_back(id == transparent ? Rgb{255, 255, 255} : class_color(id, colors),
                      std::to_string(id) + " " + (it != names.end() ? it->second : "?") + share);
  }
  if (histogram.size() > max_rows) rows.emplace_back(Rgb{255, 255, 255}, "+ " + std::to_string(histogram.size() - max_rows) + " more");
  int64_t text = 0;
  for (const auto& r : rows) text = std::max(text, detail::text_width(r.second, scale));
  const int64_t panel = margin + swatch + gap + text + margin;
  const int64_t height = std::max<int64_t>(image.height, 2 * margin + static_cast<int64_t>(rows.size()) * row);
  Image out(height, image.width + panel, 3, 255);
  for (int64_t y = 0; y < image.height; ++y)
    std::copy_n(rgb.data.begin() + y * image.width * 3, image.width * 3, out.data.begin() + y * out.width * 3);
  for (size_t i = 0; i < rows.size(); ++i) {
    const int64_t x = image.width + margin, y = margin + static_cast<int64_t>(i) * row;
    detail::fill_rect(out, x, y, x + swatch, y + swatch, Rgb{0, 0, 0});  // a thin black frame
    detail::fill_rect(out, x + 1, y + 1, x + swatch - 1, y + swatch - 1, rows[i].first);
    detail::draw_text(out, x + swatch + gap, y + scale, rows[i].second, scale, Rgb{0, 0, 0});
  }
  return out;
}

// add_legend() with the colours given first (the usual call: add_legend(img, hist, names, colors)).
inline Image add_legend(const Image& image, const std::vector<std::pair<int64_t, int64_t>>& histogram,
                        const std::map<int64_t, std::string>& names, const std::vector<Rgb>& colors,
                        size_t max_rows = 40, int64_t transparent = -1) {
  return add_legend(image, histogram, names, max_rows, transparent, colors);
}

// `left` and `right` (RGB, or converted to RGB) next to each other, a white gap between them, each
// under its caption (e.g. "prediction", "ground truth"); the shorter one is padded with white.
inline Image side_by_side(const Image& left, const std::string& left_caption, const Image& right,
                          const std::string& right_caption) {
  SEGML_CHECK(left.height > 0 && left.width > 0 && right.height > 0 && right.width > 0,
              "side_by_side: empty image (", left.height, "x", left.width, " and ", right.height, "x", right.width, ")");
  const Image l = to_rgb(left), r = to_rgb(right);
  const int64_t scale = std::max<int64_t>(1, std::min(l.height, l.width) / 320);
  const int64_t caption = 16 * scale, gap = 8 * scale;
  const int64_t height = caption + std::max(l.height, r.height);
  Image out(height, l.width + gap + r.width, 3, 255);
  auto paste = [&](const Image& src, int64_t x0) {
    for (int64_t y = 0; y < src.height; ++y)
      std::copy_n(src.data.begin() + y * src.width * 3, src.width * 3, out.data.begin() + ((caption + y) * out.width + x0) * 3);
  };
  paste(l, 0);
  paste(r, l.width + gap);
  detail::draw_text(out, 4 * scale, 3 * scale, left_caption, scale, Rgb{0, 0, 0});
  detail::draw_text(out, l.width + gap + 4 * scale, 3 * scale, right_caption, scale, Rgb{0, 0, 0});
  return out;
}

}  // namespace segml
