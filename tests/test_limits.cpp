// Bounded resources for small but hostile inputs: config fields bounded before anything is
// allocated, tensor allocations that cannot succeed reported as segml::Error (never a bare
// std::bad_alloc), images refused from their header above the pixel limit, and the streamed
// post-processing (upsample + argmax by row bands) bit-identical to upsampling the whole tensor,
// in O(classes x W) memory.
//
// Memory is checked with getrusage's ru_maxrss (the process's peak RSS): each test case runs in its
// own process under ctest, so the growth a case measures is its own.
#include <doctest/doctest.h>

#include <sys/resource.h>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include <segml/data/dataset.hpp>
#include <segml/io/checkpoint.hpp>
#include <segml/io/image.hpp>
#include <segml/io/image_processor.hpp>
#include <segml/io/overlay.hpp>
#include <segml/kernels/resize.hpp>
#include <segml/models/config.hpp>

#include "support.hpp"

using namespace segml;
using nlohmann::json;
using segml::test::TempDir;

namespace {

#define CHECK_ERROR(expr, text) CHECK_THROWS_WITH_AS(expr, doctest::Contains(std::string(text).c_str()), segml::Error)

// Peak resident set of this process so far, in MB.
double peak_rss_mb() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return double(ru.ru_maxrss) / 1024.0;
}

void write_text(const std::string& path, const std::string& text) { std::ofstream(path, std::ios::binary) << text; }

// A PNG that is only a signature and an IHDR chunk declaring w x h, 8-bit, grey (colour type 0) or
// RGB (2): what a decoder sees first. (A real 20000x20000 PNG of one colour is ~400 KB; its header
// says the same.)
std::string png_header(uint32_t w, uint32_t h, char color_type = 2) {
  std::string b = "\x89PNG\r\n\x1a\n";
  auto be32 = [&](uint32_t v) {
    for (int s = 24; s >= 0; s -= 8) b += static_cast<char>((v >> s) & 0xff);
  };
  be32(13);
  b += "IHDR";
  be32(w);
  be32(h);
  b += std::string("\x08") + color_type + std::string("\x00\x00\x00", 3);  // 8 bits, type, deflate, no filter/interlace
  be32(0);                                      // CRC (stb does not check it)
  return b;
}

// The reference: the whole (C, H, W) upsampled tensor, then the first-maximum argmax.
std::vector<int64_t> upsample_then_argmax(const Tensor<float>& logits, int64_t b, int64_t H, int64_t W) {
  const int64_t C = logits.size(1), h = logits.size(2), w = logits.size(3);
  std::vector<float> up(static_cast<size_t>(C * H * W));
  kernels::resize_bilinear_forward<float>(up.data(), logits.data() + b * C * h * w, C, h, w, H, W);
  std::vector<int64_t> out(static_cast<size_t>(H * W));
  for (int64_t p = 0; p < H * W; ++p) {
    int64_t best = 0;
    for (int64_t c = 1; c < C; ++c)
      if (up[static_cast<size_t>(c * H * W + p)] > up[static_cast<size_t>(best * H * W + p)]) best = c;
    out[static_cast<size_t>(p)] = best;
  }
  return out;
}

}  // namespace

TEST_CASE("limits: config size fields are bounded, with the file, field, value and bound, before any allocation") {
  const json base = SegformerConfig::b0().to_json();
  auto with = [&](const char* key, const json& value) {
    json j = base;
    j[key] = value;
    return j;
  };
  CHECK_ERROR(SegformerConfig::from_json(with("depths", {1000000, 2, 2, 2}), "m/config.json"),
              "config 'm/config.json': field 'depths'[0] is 1000000, above the bound of 128");
  CHECK_ERROR(SegformerConfig::from_json(with("sr_ratios", {1000, 4, 2, 1}), "c.json"),
              "field 'sr_ratios'[0] is 1000, above the bound of 64");
  CHECK_ERROR(SegformerConfig::from_json(with("hidden_sizes", {1000000000, 64, 160, 256}), "c.json"),
              "field 'hidden_sizes'[0] is 1000000000, above the bound of 8192");
  CHECK_ERROR(SegformerConfig::from_json(with("num_attention_heads", {1, 2, 5, 4096}), "c.json"),
              "field 'num_attention_heads'[3] is 4096, above the bound of 1024");
  CHECK_ERROR(SegformerConfig::from_json(with("mlp_ratios", {4, 4, 4, 100}), "c.json"), "field 'mlp_ratios'[3] is 100");
  CHECK_ERROR(SegformerConfig::from_json(with("patch_sizes", {7, 3, 3, 300}), "c.json"), "field 'patch_sizes'[3] is 300");
  CHECK_ERROR(SegformerConfig::from_json(with("strides", {4, 2, 2, 65}), "c.json"), "field 'strides'[3] is 65");
  CHECK_ERROR(SegformerConfig::from_json(with("decoder_hidden_size", 100000), "c.json"),
              "field 'decoder_hidden_size' is 100000, above the bound of 8192");
  CHECK_ERROR(SegformerConfig::from_json(with("num_channels", 5000), "c.json"), "field 'num_channels' is 5000");
  CHECK_ERROR(SegformerConfig::from_json(with("num_encoder_blocks", 1000000), "c.json"),
              "field 'num_encoder_blocks' is 1000000, above the bound of 16");
  json many = base;  // num_labels alone (no id2label) would make 1e9 names before the fix
  many.erase("id2label");
  many.erase("label2id");
  many["num_labels"] = 1000000000;
  CHECK_ERROR(SegformerConfig::from_json(many, "c.json"), "field 'num_labels' is 1000000000, above the bound of 65536");
  // Each field within its bound, but together far too large.
  json huge = base;
  huge["hidden_sizes"] = {8192, 8192, 8192, 8192};
  huge["num_attention_heads"] = {8, 8, 8, 8};
  huge["depths"] = {128, 128, 128, 128};
  CHECK_ERROR(SegformerConfig::from_json(huge, "c.json"), "billion parameters, above the bound of 2 billion");

  // The released models and generous variants pass.
  for (const SegformerConfig& c : {SegformerConfig::b0(), SegformerConfig::b5()})
    CHECK_NOTHROW(SegformerConfig::from_json(c.to_json(), "preset"));
  SegformerConfig big = SegformerConfig::b5();
  big.set_num_labels(1000);
  big.hidden_sizes = {128, 256, 640, 1024};
  big.depths = {4, 8, 60, 4};
  CHECK_NOTHROW(SegformerConfig::from_json(big.to_json(), "big"));

  // Through from_pretrained: the error comes before the model is built (no gigabytes allocated).
  const double rss0 = peak_rss_mb();
  for (const auto& [key, value] : std::vector<std::pair<const char*, json>>{
           {"depths", {1000000, 2, 2, 2}}, {"sr_ratios", {1000, 4, 2, 1}}, {"hidden_sizes", {1000000000, 64, 160, 256}}}) {
    TempDir dir("limits_config");
    write_text(dir.file("config.json"), with(key, value).dump());
    write_text(dir.file("model.safetensors"), "");  // never read: the config fails first
    CHECK_ERROR(from_pretrained<float>(dir.file()), std::string("field '") + key + "'[0]");
  }
  const double grown = peak_rss_mb() - rss0;
  MESSAGE("peak RSS growth over the three from_pretrained calls: " << grown << " MB");
  CHECK(grown < 50);
}

TEST_CASE("limits: preprocessor_config.json size is bounded") {
  CHECK_ERROR(SegformerImageProcessor::from_json(json{{"size", {{"height", 100000}, {"width", 512}}}}, "p.json"),
              "preprocessor config 'p.json': field 'size' is 100000x512, above the bound of 8192");
  CHECK_ERROR(SegformerImageProcessor::from_json(json{{"size", 1000000}}, "p.json"), "field 'size' is 1000000x1000000");
  CHECK(SegformerImageProcessor::from_json(json{{"size", {{"height", 1024}, {"width", 2048}}}}).width == 2048);
}

TEST_CASE("limits: an allocation that cannot succeed is a segml::Error naming dtype, shape and bytes") {
  // The element count overflows int64.
  CHECK_ERROR(Tensor<float>::empty({int64_t{1} << 40, int64_t{1} << 30}),
              "shape [1099511627776, 1073741824] has more elements than an int64 can count");
  // The bytes overflow the address space.
  CHECK_ERROR(Tensor<float>::empty({int64_t{1} << 62}),
              "cannot allocate a float32 tensor of shape [4611686018427387904]");
  CHECK_ERROR(Tensor<double>::empty({int64_t{1} << 61}), "more bytes than the address space holds");
  // Representable, but more than any machine has (64 TB): the system refuses it.
  if (!segml::test::kAddressSanitizer)
    CHECK_ERROR(Tensor<float>::zeros({int64_t{1} << 22, int64_t{1} << 22}),
                "cannot allocate a float32 tensor of shape [4194304, 4194304] (17592186044416 elements, 70368.7 GB): out of memory");
  // A zero extent is fine whatever the others are.
  CHECK(Tensor<float>::empty({0, int64_t{1} << 62}).numel() == 0);
}

TEST_CASE("limits: an image above the pixel limit is refused from its header, before decoding") {
  TempDir dir("limits_image");
  const std::string big = dir.file("big.png");
  write_text(big, png_header(20000, 20000));
  CHECK_ERROR(load_image(big), "load_image '" + big + "': image is 20000x20000 (400000000 pixels), above the limit of 100000000 pixels; raise it with --max-pixels");
  CHECK_ERROR(load_label_map(big), "load_label_map '" + big + "': image is 20000x20000");
  CHECK_ERROR(load_image_from_memory(png_header(20000, 20000), "upload"), "load_image_from_memory 'upload': image is 20000x20000");
  CHECK_ERROR(load_image(big, 1000), "above the limit of 1000 pixels");
  // Grey: stb's header reader accepts it (400 MB), and would decode it to 1.2 GB of RGB.
  write_text(big, png_header(20000, 20000, 0));
  CHECK_ERROR(load_image(big), "image is 20000x20000 (400000000 pixels), above the limit");
  CHECK_ERROR(load_image_from_memory(png_header(20000, 20000, 0), "upload"), "image is 20000x20000");

  // The limit applies to real images too, and is settable per call and per process.
  const std::string small = std::string(SEGML_FIXTURE_DIR) + "/../data/rgb_37x53.png";
  CHECK_ERROR(load_image(small, 37 * 53 - 1), "image is 53x37 (1961 pixels), above the limit of 1960 pixels");
  CHECK(load_image(small, 37 * 53).height == 37);
  CHECK(max_image_pixels() == kDefaultMaxPixels);
  set_max_image_pixels(1000);
  CHECK_ERROR(load_image(small), "above the limit of 1000 pixels");
  set_max_image_pixels(kDefaultMaxPixels);
  CHECK(load_image(small).width == 53);
  CHECK_ERROR(set_max_image_pixels(0), "must be >= 1");
}

TEST_CASE("limits: the dataset loader refuses an image above the pixel limit when it opens the split") {
  TempDir dir("limits_dataset");
  std::filesystem::create_directories(dir.path / "train" / "images");
  std::filesystem::create_directories(dir.path / "train" / "labels");
  write_text(dir.file("id2label.json"), R"({"0": "road", "1": "sky"})");
  const std::string image = (dir.path / "train" / "images" / "huge.png").string();
  write_text(image, png_header(20000, 20000, 0));
  write_text((dir.path / "train" / "labels" / "huge.png").string(), png_header(20000, 20000, 0));
  CHECK_ERROR(SegmentationDataset::open(dir.file(), "train"),
              "SegmentationDataset '" + image + "': image is 20000x20000 (400000000 pixels), above the limit");
  DatasetOptions lazy;
  lazy.check_sizes = false;  // then load() refuses it, still before decoding
  const SegmentationDataset ds = SegmentationDataset::open(dir.file(), "train", lazy);
  CHECK_ERROR(ds.load(0), "load_image '" + image + "': image is 20000x20000");
}

TEST_CASE("limits: streamed upsample + argmax is bit-identical to upsampling the whole tensor") {
  struct Case {
    int64_t C, h, w, H, W;
  };
  const Case cases[] = {{1, 4, 5, 9, 7},     {3, 8, 8, 37, 53},  {8, 16, 12, 375, 500}, {19, 7, 9, 5, 4},
                        {5, 13, 11, 13, 11}, {300, 6, 5, 31, 17}, {2, 1, 1, 3, 2},      {4, 3, 40, 64, 1}};
  for (const Case& k : cases)
    for (int threads : {1, 2}) {
      set_num_threads(threads);
      // Two images; values on a coarse grid so that ties (first maximum wins) happen often.
      Tensor<float> logits = test::random_tensor<float>({2, k.C, k.h, k.w}, uint64_t(k.C * 131 + k.H));
      for (int64_t i = 0; i < logits.numel(); ++i) logits.data()[i] = std::round(logits.data()[i] * 4) / 4;
      const SegformerImageProcessor processor;
      const auto got = processor.post_process_semantic_segmentation(logits, {{k.H, k.W}, {k.W, k.H}});
      for (int64_t b = 0; b < 2; ++b) {
        const int64_t H = b == 0 ? k.H : k.W, W = b == 0 ? k.W : k.H;
        const std::vector<int64_t> want = upsample_then_argmax(logits, b, H, W);
        REQUIRE(got[static_cast<size_t>(b)].shape() == Shape{H, W});
        CHECK_MESSAGE(std::memcmp(got[static_cast<size_t>(b)].data(), want.data(), want.size() * sizeof(int64_t)) == 0,
                      "C " << k.C << " " << k.h << "x" << k.w << " -> " << H << "x" << W << ", " << threads << " threads");
        const LabelMap map = processor.post_process_label_map(logits, b, H, W);
        CHECK(map.is_narrow() == (k.C <= 256));
        REQUIRE(map.numel() == H * W);
        bool same = true;
        for (int64_t p = 0; p < H * W; ++p) same &= map[p] == want[static_cast<size_t>(p)];
        CHECK_MESSAGE(same, "LabelMap, C " << k.C << " -> " << H << "x" << W);
        // The overlay helpers see the same ids through either representation.
        const Tensor<int64_t> t = got[static_cast<size_t>(b)];
        CHECK(class_histogram(map) == class_histogram(t));
        CHECK(colorize(map).data == colorize(t).data);
        Image rgb(H, W, 3, 77);
        const Image blended = overlay(rgb, t, 0.3);
        overlay_in_place(rgb, map, 0.3);
        CHECK(rgb.data == blended.data);
        colorize_in_place(rgb, map);
        CHECK(rgb.data == colorize(t).data);
      }
    }
  set_num_threads(2);
}

TEST_CASE("limits: post-processing to a large image never holds classes x H x W floats") {
  // 8 classes at 128x128 -> 4000x4000: the whole upsampled tensor would be 512 MB of floats; the
  // compact map is 16 MB and the int64 one 128 MB.
  const int64_t C = 8, H = 4000, W = 4000;
  Tensor<float> logits = test::random_tensor<float>({1, C, 128, 128}, 7);
  const SegformerImageProcessor processor;
  const double rss0 = peak_rss_mb();
  const LabelMap map = processor.post_process_label_map(logits, 0, H, W);
  const double compact = peak_rss_mb() - rss0;
  const Tensor<int64_t> wide = processor.post_process_semantic_segmentation(logits, {{H, W}})[0];
  const double both = peak_rss_mb() - rss0;
  MESSAGE("peak RSS growth: " << compact << " MB for the uint8 map, " << both << " MB with the int64 one too");
  CHECK(compact < 16 + 40);
  CHECK(both < 16 + 128 + 40);
  bool same = true;
  for (int64_t p = 0; p < H * W; p += 997) same &= map[p] == wide.data()[p];
  CHECK(same);
}
