// segml/io/image.hpp: 8-bit images and label maps, read with stb_image and written as PNG.
//
// Guarantees:
//  - Image is uint8, row-major HWC, with 1, 3 or 4 channels.
//  - load_image() (a file) and load_image_from_memory() (encoded bytes) return RGB, converted as
//    PIL's convert("RGB") does for the common modes: grey is replicated, alpha is dropped (not
//    composited), palettes are expanded.
//  - load_label_map() returns the class ids as a 1-channel image. A 3-channel PNG whose channels
//    are all equal is accepted as grey; a colour PNG, a palette (indexed) PNG and a 16-bit PNG are
//    errors, because stb_image would silently turn them into something other than the class ids.
//  - Every decoder reads the image's size from its header first and refuses an image of more than
//    max_pixels pixels before decoding anything (an argument; 0 = max_image_pixels(), a process-wide
//    default of kDefaultMaxPixels = 100 megapixels, settable with set_max_image_pixels()). A 388 KB
//    PNG can declare 20000x20000 pixels (1.2 GB decoded); the error names the file, the size and the
//    limit, and how to raise it.
//  - LabelMap is a (H, W) map of class ids in the narrowest type that holds them (uint8 for up to 256
//    classes, else int32), for full-size predictions (a 7000x7000 map is 49 MB, not 392 MB of int64).
//  - save_png() writes atomically (temp file + rename).
//  - Every error names the file and says what is wrong (missing, corrupt + stb's reason, channels).
// Does not: decode JPEG bit-identically to PIL (stb's decoder differs from libjpeg-turbo by a few
// levels; PNG decoding is exact), honour EXIF orientation (neither does HF), or keep 16-bit depth.
// Image and to_rgb() need nothing else; the file functions need stb (SEGML_HAVE_STB, defined by the
// CMake target when Debian's libstb-dev is found). Without stb, calling them is a compile error that
// says so.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <string>
#include <vector>

#include "segml/core/error.hpp"
#include "segml/io/safetensors.hpp"

#ifdef SEGML_HAVE_STB
#include <stb_image.h>
#include <stb_image_write.h>
#endif

namespace segml {

// A dense uint8 image, row-major HWC.
struct Image {
  int64_t height = 0, width = 0, channels = 0;
  std::vector<uint8_t> data;

  Image() = default;
  Image(int64_t h, int64_t w, int64_t c, uint8_t fill = 0) : height(h), width(w), channels(c) {
    SEGML_CHECK(h >= 0 && w >= 0 && (c == 1 || c == 3 || c == 4), "Image: invalid size ", h, "x", w, "x", c,
                " (channels must be 1, 3 or 4)");
    data.assign(static_cast<size_t>(h * w * c), fill);
  }

  uint8_t& at(int64_t y, int64_t x, int64_t c = 0) { return data[static_cast<size_t>((y * width + x) * channels + c)]; }
  uint8_t at(int64_t y, int64_t x, int64_t c = 0) const {
    return data[static_cast<size_t>((y * width + x) * channels + c)];
  }
  bool empty() const { return data.empty(); }
};

// A (H, W) map of class ids: `narrow` (a 1-channel Image, so it saves as a PNG of ids as is) when
// every id is below 256, else `wide` (int32, row-major). Exactly one of them holds the pixels.
struct LabelMap {
  int64_t height = 0, width = 0;
  Image narrow;               // ids < 256
  std::vector<int32_t> wide;  // otherwise

  LabelMap() = default;
  // An uninitialised map for ids 0..num_classes-1.
  LabelMap(int64_t h, int64_t w, int64_t num_classes) : height(h), width(w) {
    SEGML_CHECK(h > 0 && w > 0 && num_classes >= 1, "LabelMap: invalid size ", h, "x", w, " for ", num_classes, " classes");
    if (num_classes <= 256) narrow = Image(h, w, 1);
    else wide.resize(static_cast<size_t>(h * w));
  }
  bool is_narrow() const { return wide.empty(); }
  int64_t numel() const { return height * width; }
  int64_t operator[](int64_t p) const { return is_narrow() ? narrow.data[static_cast<size_t>(p)] : wide[static_cast<size_t>(p)]; }
};

// RGB copy of an image: grey replicated, alpha dropped.
inline Image to_rgb(const Image& in) {
  if (in.channels == 3) return in;
  Image out(in.height, in.width, 3);
  const int64_t n = in.height * in.width;
  for (int64_t p = 0; p < n; ++p)
    for (int64_t c = 0; c < 3; ++c)
      out.data[static_cast<size_t>(p * 3 + c)] = in.data[static_cast<size_t>(p * in.channels + (in.channels == 1 ? 0 : c))];
  return out;
}

// The pixel limit the image decoders apply when not given one (see the file comment): 100
// megapixels. Every camera photo up to 100 MP passes (a 7000x7000 image is 49 MP; phones save 12 to
// 50 MP by default); a 20000x20000 image (400 MP, 1.2 GB decoded) is refused. Decoding a PNG needs
// about twice its RGB bytes at the peak, so 100 MP costs up to 600 MB; the error says how to raise it.
inline constexpr int64_t kDefaultMaxPixels = 100'000'000;

namespace detail {
inline std::atomic<int64_t>& max_pixels_slot() {
  static std::atomic<int64_t> limit{kDefaultMaxPixels};
  return limit;
}
}  // namespace detail

inline int64_t max_image_pixels() { return detail::max_pixels_slot().load(); }
inline void set_max_image_pixels(int64_t pixels) {
  SEGML_CHECK(pixels >= 1, "set_max_image_pixels: the limit must be >= 1 pixel, got ", pixels);
  detail::max_pixels_slot().store(pixels);
}

namespace detail {
// Throws when w x h is above the limit (0: max_image_pixels()), naming the file and how to raise it.
inline void check_pixels(const char* what, const std::string& name, int64_t w, int64_t h, int64_t max_pixels) {
  const int64_t limit = max_pixels > 0 ? max_pixels : max_image_pixels();
  if (w * h > limit)
    fail(what, " '", name, "': image is ", w, "x", h, " (", w * h, " pixels), above the limit of ", limit,
         " pixels; raise it with --max-pixels (segment, evaluate, finetune_sidewalk; set_max_image_pixels() in code) if you mean it");
}

// The size a PNG's IHDR declares, from the file's first 24 bytes; false if they are not a PNG's.
// (stb_image's own header reader refuses sizes above 2^30 bytes as "too large" without saying them.)
inline bool png_declared_size(const unsigned char* b, size_t n, int64_t& w, int64_t& h) {
  static const unsigned char sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
  if (n < 24 || !std::equal(sig, sig + 8, b) || std::memcmp(b + 12, "IHDR", 4) != 0) return false;
  auto be32 = [&](size_t at) { return int64_t(b[at]) << 24 | int64_t(b[at + 1]) << 16 | int64_t(b[at + 2]) << 8 | int64_t(b[at + 3]); };
  w = be32(16);
  h = be32(20);
  return true;
}
}  // namespace detail

#ifdef SEGML_HAVE_STB
namespace detail {

inline void require_readable(const std::string& path, const char* what) {
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) fail(what, " '", path, "': file does not exist");
  if (std::filesystem::is_directory(path, ec)) fail(what, " '", path, "': is a directory, not an image");
  std::ifstream probe(path, std::ios::binary);
  if (!probe) fail(what, " '", path, "': cannot open file for reading");
}

// Decodes with stb into `channels` channels (0 = as stored); errors carry stb's reason.
inline Image stb_decode(const std::string& path, int channels, const char* what, int64_t max_pixels) {
  require_readable(path, what);
  int w = 0, h = 0, n = 0;
  // The size from the header, before anything is decoded (an unreadable header: stbi_load says why).
  unsigned char head[24] = {};
  std::ifstream(path, std::ios::binary).read(reinterpret_cast<char*>(head), sizeof head);
  int64_t pw = 0, ph = 0;
  if (png_declared_size(head, sizeof head, pw, ph)) check_pixels(what, path, pw, ph, max_pixels);
  if (stbi_info(path.c_str(), &w, &h, &n)) check_pixels(what, path, w, h, max_pixels);
  unsigned char* px = stbi_load(path.c_str(), &w, &h, &n, channels);
  if (!px) fail(what, " '", path, "': cannot decode (corrupt or unsupported format): ", stbi_failure_reason());
  const int c = channels ? channels : n;
  Image img;
  img.height = h;
  img.width = w;
  img.channels = c;
  img.data.assign(px, px + static_cast<size_t>(w) * static_cast<size_t>(h) * static_cast<size_t>(c));
  stbi_image_free(px);
  return img;
}

// PNG colour type from the IHDR chunk, or -1 if the file is not a PNG.
inline int png_color_type(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  unsigned char head[26] = {};
  if (!in.read(reinterpret_cast<char*>(head), sizeof head)) return -1;
  static const unsigned char sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
  if (!std::equal(sig, sig + 8, head) || std::string(reinterpret_cast<char*>(head + 12), 4) != "IHDR") return -1;
  return head[25];
}

}  // namespace detail

// Any format stb_image reads (PNG, JPEG, BMP, TGA, GIF first frame, PPM, ...), as RGB. Images of
// more than max_pixels pixels (0: max_image_pixels()) are refused before decoding.
inline Image load_image(const std::string& path, int64_t max_pixels = 0) {
  return detail::stb_decode(path, 3, "load_image", max_pixels);
}

// An encoded image held in memory (e.g. an HTTP upload), as RGB; `name` only labels the errors.
// Same formats, conversion and pixel limit as load_image().
inline Image load_image_from_memory(const std::string& bytes, const std::string& name = "<memory>", int64_t max_pixels = 0) {
  SEGML_CHECK(!bytes.empty(), "load_image_from_memory '", name, "': no bytes (empty upload?)");
  SEGML_CHECK(bytes.size() <= static_cast<size_t>(std::numeric_limits<int>::max()), "load_image_from_memory '", name,
              "': ", bytes.size(), " bytes is more than stb_image can read");
  int w = 0, h = 0, n = 0;
  int64_t pw = 0, ph = 0;
  const auto* head = reinterpret_cast<const unsigned char*>(bytes.data());
  if (detail::png_declared_size(head, bytes.size(), pw, ph)) detail::check_pixels("load_image_from_memory", name, pw, ph, max_pixels);
  if (stbi_info_from_memory(head, static_cast<int>(bytes.size()), &w, &h, &n))
    detail::check_pixels("load_image_from_memory", name, w, h, max_pixels);
  unsigned char* px = stbi_load_from_memory(reinterpret_cast<const unsigned char*>(bytes.data()),
                                            static_cast<int>(bytes.size()), &w, &h, &n, 3);
  if (!px) fail("load_image_from_memory '", name, "': cannot decode (corrupt or unsupported format): ", stbi_failure_reason());
  Image img;
  img.height = h;
  img.width = w;
  img.channels = 3;
  img.data.assign(px, px + static_cast<size_t>(w) * static_cast<size_t>(h) * 3);
  stbi_image_free(px);
  return img;
}

// A label map: one class id per pixel, as a 1-channel image. Same pixel limit as load_image().
inline Image load_label_map(const std::string& path, int64_t max_pixels = 0) {
  detail::require_readable(path, "load_label_map");
  if (stbi_is_16_bit(path.c_str()))
    fail("load_label_map '", path, "': 16-bit images are not supported; save the label map as 8-bit greyscale");
  if (detail::png_color_type(path) == 3)
    fail("load_label_map '", path,
         "': is a palette (indexed) PNG; stb_image expands palettes to colours, so the class ids are lost. "
         "Convert it to a single-channel greyscale PNG whose values are the class ids");
  Image img = detail::stb_decode(path, 0, "load_label_map", max_pixels);
  if (img.channels == 1) return img;
  if (img.channels != 3)
    fail("load_label_map '", path, "': has ", img.channels, " channels; expected 1 (greyscale) or 3 equal channels");
  Image grey(img.height, img.width, 1);
  const int64_t n = img.height * img.width;
  for (int64_t p = 0; p < n; ++p) {
    const uint8_t* rgb = &img.data[static_cast<size_t>(3 * p)];
    if (rgb[0] != rgb[1] || rgb[0] != rgb[2])
      fail("load_label_map '", path, "': is a colour image (pixel (", p / img.width, ", ", p % img.width, ") is RGB ",
           int(rgb[0]), ",", int(rgb[1]), ",", int(rgb[2]), "); expected a greyscale map of class ids");
    grey.data[static_cast<size_t>(p)] = rgb[0];
  }
  return grey;
}

namespace detail {
inline void check_writable(const char* op, const std::string& path, const Image& img, bool alpha_ok) {
  SEGML_CHECK(img.channels == 1 || img.channels == 3 || (alpha_ok && img.channels == 4), op, " '", path, "': ",
              img.channels, " channels (expected 1, 3", (alpha_ok ? " or 4" : ""), ")");
  SEGML_CHECK(img.height > 0 && img.width > 0 && img.data.size() == static_cast<size_t>(img.height * img.width * img.channels),
              op, " '", path, "': image of size ", img.height, "x", img.width, "x", img.channels, " holds ",
              img.data.size(), " bytes");
}
// stb's write callback: appends the encoded bytes to a std::vector<char>.
inline void append_bytes(void* ctx, void* data, int size) {
  auto* out = static_cast<std::vector<char>*>(ctx);
  out->insert(out->end(), static_cast<char*>(data), static_cast<char*>(data) + size);
}
}  // namespace detail

// Writes a 1/3/4-channel image as PNG (lossless: label maps, overlays), atomically.
inline void save_png(const std::string& path, const Image& img) {
  detail::check_writable("save_png", path, img, true);
  std::vector<char> bytes;
  const int ok = stbi_write_png_to_func(detail::append_bytes, &bytes, static_cast<int>(img.width),
                                        static_cast<int>(img.height), static_cast<int>(img.channels), img.data.data(),
                                        static_cast<int>(img.width * img.channels));
  if (!ok) fail("save_png '", path, "': PNG encoding failed");
  safetensors::write_file_atomic(path, bytes);
}

// Writes a 1/3-channel image as JPEG (lossy; for photos, never for label maps), atomically.
inline void save_jpeg(const std::string& path, const Image& img, int quality = 95) {
  detail::check_writable("save_jpeg", path, img, false);
  SEGML_CHECK(quality >= 1 && quality <= 100, "save_jpeg '", path, "': quality ", quality, " is not in [1, 100]");
  std::vector<char> bytes;
  const int ok = stbi_write_jpg_to_func(detail::append_bytes, &bytes, static_cast<int>(img.width),
                                        static_cast<int>(img.height), static_cast<int>(img.channels), img.data.data(),
                                        quality);
  if (!ok) fail("save_jpeg '", path, "': JPEG encoding failed");
  safetensors::write_file_atomic(path, bytes);
}

#else  // !SEGML_HAVE_STB: clear errors instead of missing names

namespace detail {
template <class T>
inline constexpr bool needs_stb = false;
}  // namespace detail
template <class T = void>
Image load_image(const std::string&, int64_t = 0) {
  static_assert(detail::needs_stb<T>, "segml::load_image needs stb: install libstb-dev and reconfigure");
  return {};
}
template <class T = void>
Image load_image_from_memory(const std::string&, const std::string& = "<memory>", int64_t = 0) {
  static_assert(detail::needs_stb<T>, "segml::load_image_from_memory needs stb: install libstb-dev and reconfigure");
  return {};
}
template <class T = void>
Image load_label_map(const std::string&, int64_t = 0) {
  static_assert(detail::needs_stb<T>, "segml::load_label_map needs stb: install libstb-dev and reconfigure");
  return {};
}
template <class T = void>
void save_png(const std::string&, const Image&) {
  static_assert(detail::needs_stb<T>, "segml::save_png needs stb: install libstb-dev and reconfigure");
}
template <class T = void>
void save_jpeg(const std::string&, const Image&, int = 95) {
  static_assert(detail::needs_stb<T>, "segml::save_jpeg needs stb: install libstb-dev and reconfigure");
}

#endif  // SEGML_HAVE_STB

}  // namespace segml
