// Tests for models/config.hpp, io/image.hpp and io/image_processor.hpp.
//
// Processor parity is checked against tests/fixtures/processor.safetensors, written by
// tools/fixtures/processor.py with PIL 9.4 + numpy + torch exactly as HF's SegformerImageProcessor
// computes: every uint8 resize must match PIL exactly (max abs diff 0), pixel_values within 1e-6,
// labels and argmax maps exactly.
#include <doctest/doctest.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <segml/io/image.hpp>
#include <segml/io/image_processor.hpp>
#include <segml/models/config.hpp>

#include "support.hpp"

using segml::Image;
using segml::SegformerConfig;
using segml::SegformerImageProcessor;
using segml::Tensor;
using nlohmann::json;

namespace {

const std::string kDataDir = std::string(SEGML_FIXTURE_DIR) + "/../data/";

using segml::test::TempDir;

void write_text(const std::string& path, const std::string& text) {
  std::ofstream(path, std::ios::binary) << text;
}

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// An HWC uint8 fixture tensor as an Image.
Image to_image(const Tensor<int64_t>& t) {
  const int64_t c = t.dim() == 3 ? t.size(2) : 1;
  Image img(t.size(0), t.size(1), c);
  for (int64_t i = 0; i < t.numel(); ++i) img.data[static_cast<size_t>(i)] = static_cast<uint8_t>(t.data()[i]);
  return img;
}

Tensor<int64_t> to_tensor(const Image& img) {
  Tensor<int64_t> t = Tensor<int64_t>::empty(img.channels == 1 ? segml::Shape{img.height, img.width}
                                                               : segml::Shape{img.height, img.width, img.channels});
  for (int64_t i = 0; i < t.numel(); ++i) t.data()[i] = img.data[static_cast<size_t>(i)];
  return t;
}

#define CHECK_ERROR(expr, text) \
  CHECK_THROWS_WITH_AS(expr, doctest::Contains(std::string(text).c_str()), segml::Error)

}  // namespace

// ---- SegformerConfig ---------------------------------------------------------------------------

TEST_CASE("config: defaults and presets b0..b5") {
  const SegformerConfig b0 = SegformerConfig::b0();
  CHECK(b0.hidden_sizes == std::vector<int64_t>{32, 64, 160, 256});
  CHECK(b0.num_attention_heads == std::vector<int64_t>{1, 2, 5, 8});
  CHECK(b0.sr_ratios == std::vector<int64_t>{8, 4, 2, 1});
  CHECK(b0.hidden_act == "gelu");
  CHECK(b0.layer_norm_eps == 1e-6);
  CHECK(b0.classifier_dropout_prob == 0.1);
  CHECK(b0.semantic_loss_ignore_index == 255);
  CHECK(b0.num_labels == 2);
  const SegformerConfig presets[] = {SegformerConfig::b1(), SegformerConfig::b2(), SegformerConfig::b3(),
                                     SegformerConfig::b4(), SegformerConfig::b5()};
  const std::vector<int64_t> depths[] = {{2, 2, 2, 2}, {3, 4, 6, 3}, {3, 4, 18, 3}, {3, 8, 27, 3}, {3, 6, 40, 3}};
  const int64_t decoder[] = {256, 768, 768, 768, 768};
  for (int i = 0; i < 5; ++i) {
    CHECK(presets[i].hidden_sizes == std::vector<int64_t>{64, 128, 320, 512});
    CHECK(presets[i].depths == depths[i]);
    CHECK(presets[i].decoder_hidden_size == decoder[i]);
    CHECK_NOTHROW(presets[i].validate());
  }
}

TEST_CASE("config: round trip keeps unknown fields and writes HF's label maps") {
  TempDir dir;
  const std::string path = dir.file("config.json");
  const json hf = json::parse(R"({
    "architectures": ["SegformerForSemanticSegmentation"],
    "attention_probs_dropout_prob": 0.0, "classifier_dropout_prob": 0.1, "decoder_hidden_size": 256,
    "depths": [2, 2, 2, 2], "downsampling_rates": [1, 4, 8, 16], "drop_path_rate": 0.1,
    "hidden_act": "gelu", "hidden_dropout_prob": 0.0, "hidden_sizes": [32, 64, 160, 256],
    "id2label": {"0": "unlabeled", "1": "flat-road", "10": "vehicle-car", "2": "flat-sidewalk", "3": "a", "4": "b",
                 "5": "c", "6": "d", "7": "e", "8": "f", "9": "g"},
    "image_size": 224, "initializer_range": 0.02,
    "label2id": {"unlabeled": 0, "flat-road": 1, "vehicle-car": 10, "flat-sidewalk": 2, "a": 3, "b": 4, "c": 5,
                 "d": 6, "e": 7, "f": 8, "g": 9},
    "layer_norm_eps": 1e-06, "mlp_ratios": [4, 4, 4, 4], "model_type": "segformer", "num_attention_heads": [1, 2, 5, 8],
    "num_channels": 3, "num_encoder_blocks": 4, "num_labels": 2, "patch_sizes": [7, 3, 3, 3],
    "reshape_last_stage": true, "semantic_loss_ignore_index": 255, "sr_ratios": [8, 4, 2, 1],
    "strides": [4, 2, 2, 2], "torch_dtype": "float32", "transformers_version": "4.28.0.dev0",
    "custom": {"nested": [1, "two", null]}
  })");
  const SegformerConfig c = SegformerConfig::from_json(hf, "hub/config.json");
  CHECK(c.num_labels == 11);  // derived from id2label, not the stale num_labels
  CHECK(c.id2label.at(10) == "vehicle-car");
  CHECK(c.label2id.at("flat-sidewalk") == 2);
  c.save(path);
  const json back = json::parse(read_text(path));
  CHECK(read_text(path).back() == '\n');
  for (const char* key : {"downsampling_rates", "image_size", "transformers_version", "custom", "architectures", "torch_dtype"})
    CHECK_MESSAGE(back.at(key) == hf.at(key), key);
  CHECK(back.at("id2label").at("10") == "vehicle-car");  // string keys
  CHECK(back.at("label2id").at("vehicle-car") == 10);    // int values
  CHECK(back.at("label2id").at("vehicle-car").is_number_integer());
  CHECK(back.at("num_labels") == 11);
  CHECK(back.at("model_type") == "segformer");
  const SegformerConfig again = SegformerConfig::from_json_file(path);
  CHECK(again.to_json() == c.to_json());

  // A preset written from scratch carries the fields HF needs to load it.
  SegformerConfig b2 = SegformerConfig::b2();
  b2.set_labels({"background", "road", "sky"});
  const json j = b2.to_json();
  CHECK(j.at("architectures") == json::array({"SegformerForSemanticSegmentation"}));
  CHECK(j.at("torch_dtype") == "float32");
  CHECK(j.at("id2label") == json::parse(R"({"0": "background", "1": "road", "2": "sky"})"));
  CHECK(j.at("label2id") == json::parse(R"({"background": 0, "road": 1, "sky": 2})"));
  CHECK(SegformerConfig::from_json(j).to_json() == j);
  b2.set_num_labels(4);
  CHECK(b2.to_json().at("id2label").at("3") == "LABEL_3");
}

TEST_CASE("config: validation errors name the file and the field") {
  const json base = SegformerConfig::b0().to_json();
  auto with = [&](const char* key, const json& value) {
    json j = base;
    j[key] = value;
    return j;
  };
  CHECK_ERROR(SegformerConfig::from_json(with("depths", {2, 2, 2}), "m/config.json"),
              "config 'm/config.json': field 'depths' has 3 entries but num_encoder_blocks is 4");
  CHECK_ERROR(SegformerConfig::from_json(with("num_encoder_blocks", 3), "c.json"),
              "field 'depths' has 4 entries but num_encoder_blocks is 3");
  CHECK_ERROR(SegformerConfig::from_json(with("num_attention_heads", {1, 2, 5, 7}), "c.json"),
              "field 'hidden_sizes' entry 3 (256) is not divisible by num_attention_heads[3] (7)");
  CHECK_ERROR(SegformerConfig::from_json(with("hidden_act", "gelu_fancy"), "c.json"),
              "field 'hidden_act' is unknown: 'gelu_fancy'");
  CHECK_ERROR(SegformerConfig::from_json(with("depths", "2,2,2,2"), "c.json"),
              "field 'depths' must be a list of integers, got \"2,2,2,2\"");
  CHECK_ERROR(SegformerConfig::from_json(with("depths", {2, 2.5, 2, 2}), "c.json"), "field 'depths' must be a list of integers");
  CHECK_ERROR(SegformerConfig::from_json(with("decoder_hidden_size", "256"), "c.json"),
              "field 'decoder_hidden_size' must be an integer");
  CHECK_ERROR(SegformerConfig::from_json(with("reshape_last_stage", 1), "c.json"), "field 'reshape_last_stage' must be true or false");
  CHECK_ERROR(SegformerConfig::from_json(with("drop_path_rate", 1.5), "c.json"), "field 'drop_path_rate' must be in [0, 1)");
  CHECK_ERROR(SegformerConfig::from_json(with("id2label", {{"0", "a"}, {"2", "b"}}), "c.json"),
              "field 'id2label' keys must be the class ids 0..1, found 2");
  CHECK_ERROR(SegformerConfig::from_json(with("id2label", {{"x", "a"}}), "c.json"), "field 'id2label' has key 'x'");
  CHECK(SegformerConfig::from_json(with("label2id", {{"LABEL_0", "0"}, {"LABEL_1", "1"}})).to_json().at("label2id") ==
        json{{"LABEL_0", 0}, {"LABEL_1", 1}});  // string ids, as some hub configs have, come back as ints
  CHECK_ERROR(SegformerConfig::from_json(with("label2id", {{"LABEL_0", 0.5}}), "c.json"),
              "field 'label2id' value for 'LABEL_0' must be an integer, got 0.5");
  CHECK_ERROR(SegformerConfig::from_json(with("model_type", "bert"), "c.json"), "model_type is \"bert\", expected \"segformer\"");
  CHECK_ERROR(SegformerConfig::from_json(json::array(), "c.json"), "top level must be a JSON object");
  json no_labels = base;
  no_labels.erase("id2label");
  no_labels.erase("label2id");
  no_labels["num_labels"] = 0;
  CHECK_ERROR(SegformerConfig::from_json(no_labels, "c.json"), "config 'c.json': field 'num_labels' must be >= 1, got 0");
  no_labels["num_labels"] = 3;
  CHECK(SegformerConfig::from_json(no_labels).id2label.at(2) == "LABEL_2");

  TempDir dir;
  CHECK_ERROR(SegformerConfig::from_json_file(dir.file("missing.json")), "missing.json': cannot open file");
  write_text(dir.file("broken.json"), R"({"depths": [2, 2,)");
  CHECK_ERROR(SegformerConfig::from_json_file(dir.file("broken.json")), "broken.json': invalid JSON");
  write_text(dir.file("short.json"), R"({"sr_ratios": [8, 4]})");
  CHECK_ERROR(SegformerConfig::from_json_file(dir.file("short.json")),
              "short.json': field 'sr_ratios' has 2 entries but num_encoder_blocks is 4");
  // An invalid config is never written.
  SegformerConfig bad = SegformerConfig::b0();
  bad.strides.pop_back();
  CHECK_ERROR(bad.save(dir.file("bad.json")), "field 'strides' has 3 entries");
  CHECK_FALSE(std::filesystem::exists(dir.file("bad.json")));
}

// ---- images ------------------------------------------------------------------------------------

TEST_CASE("image: PNG decoding matches PIL, conversions to RGB, label maps") {
  const segml::test::Fixture fx("processor");
  CHECK(segml::test::max_abs_diff(to_tensor(segml::load_image(kDataDir + "rgb_37x53.png")), fx.get<int64_t>("small")) == 0);
  CHECK(segml::test::max_abs_diff(to_tensor(segml::load_image(kDataDir + "rgb_150x200.png")), fx.get<int64_t>("large")) == 0);
  CHECK(segml::test::max_abs_diff(to_tensor(segml::load_image(kDataDir + "grey_37x53.png")), fx.get<int64_t>("grey_as_rgb")) == 0);
  CHECK(segml::test::max_abs_diff(to_tensor(segml::load_image(kDataDir + "rgba_37x53.png")), fx.get<int64_t>("rgba_as_rgb")) == 0);
  const Image label = segml::load_label_map(kDataDir + "label_45x61.png");
  CHECK(label.channels == 1);
  CHECK(segml::test::max_abs_diff(to_tensor(label), fx.get<int64_t>("label")) == 0);
}

TEST_CASE("image: save_png round trip, atomic, and 3 equal channels accepted as a label map") {
  TempDir dir;
  Image rgb(5, 7, 3);
  for (size_t i = 0; i < rgb.data.size(); ++i) rgb.data[i] = static_cast<uint8_t>(i * 37 % 256);
  segml::save_png(dir.file("rgb.png"), rgb);
  CHECK(segml::load_image(dir.file("rgb.png")).data == rgb.data);

  Image grey3(4, 6, 3);
  for (int64_t p = 0; p < 24; ++p)
    for (int64_t c = 0; c < 3; ++c) grey3.data[static_cast<size_t>(p * 3 + c)] = static_cast<uint8_t>(p * 10);
  segml::save_png(dir.file("grey3.png"), grey3);
  const Image lab = segml::load_label_map(dir.file("grey3.png"));
  CHECK(lab.channels == 1);
  CHECK(lab.at(2, 5) == 170);

  Image grey(3, 3, 1, 9);
  segml::save_png(dir.file("grey.png"), grey);
  CHECK(segml::load_image(dir.file("grey.png")).data == std::vector<uint8_t>(27, 9));  // grey -> RGB
  CHECK(segml::load_label_map(dir.file("grey.png")).data == grey.data);

  const std::string nowhere = dir.file("no_dir/x.png");
  CHECK_ERROR(segml::save_png(nowhere, rgb), "cannot open");
  CHECK_FALSE(std::filesystem::exists(dir.file("no_dir")));
}

TEST_CASE("image: load errors name the file and the problem") {
  TempDir dir;
  CHECK_ERROR(segml::load_image(dir.file("missing.png")), "load_image '" + dir.file("missing.png") + "': file does not exist");
  CHECK_ERROR(segml::load_label_map(dir.file("missing.png")), "file does not exist");
  CHECK_ERROR(segml::load_image(dir.path.string()), "is a directory");

  // A PNG cut short, and a file that is no image at all.
  const std::string png = read_text(kDataDir + "rgb_37x53.png");
  write_text(dir.file("truncated.png"), png.substr(0, png.size() / 2));
  CHECK_ERROR(segml::load_image(dir.file("truncated.png")), "truncated.png': cannot decode (corrupt or unsupported format): ");
  write_text(dir.file("text.png"), "this is not an image");
  CHECK_ERROR(segml::load_image(dir.file("text.png")), "text.png': cannot decode");

  // Label maps must hold class ids.
  CHECK_ERROR(segml::load_label_map(kDataDir + "rgb_37x53.png"), "rgb_37x53.png': is a colour image");
  CHECK_ERROR(segml::load_label_map(kDataDir + "rgba_37x53.png"), "rgba_37x53.png': has 4 channels");
  CHECK_ERROR(segml::load_label_map(kDataDir + "palette_8x8.png"), "palette_8x8.png': is a palette (indexed) PNG");
}

// ---- SegformerImageProcessor -------------------------------------------------------------------

TEST_CASE("processor: PIL resize is bit-exact for every filter, down, up and mixed") {
  const segml::test::Fixture fx("processor");
  const std::map<std::string, segml::Resample> filters = {
      {"nearest", segml::Resample::NEAREST}, {"bilinear", segml::Resample::BILINEAR}, {"bicubic", segml::Resample::BICUBIC},
      {"lanczos", segml::Resample::LANCZOS}, {"box", segml::Resample::BOX},           {"hamming", segml::Resample::HAMMING}};
  const std::map<std::string, Image> sources = {{"small", to_image(fx.get<int64_t>("small"))},
                                                {"large", to_image(fx.get<int64_t>("large"))}};
  int cases = 0;
  for (const std::string& name : fx.file().names()) {
    if (name.rfind("resize.", 0) != 0) continue;
    // resize.<image>.<filter>.<H>x<W>
    std::vector<std::string> parts;
    std::stringstream ss(name);
    for (std::string p; std::getline(ss, p, '.');) parts.push_back(p);
    REQUIRE(parts.size() == 4);
    const Tensor<int64_t> want = fx.get<int64_t>(name);
    const Image got = segml::pil_resize(sources.at(parts[1]), want.size(0), want.size(1), filters.at(parts[2]));
    segml::test::compare(name, to_tensor(got), want, 0.0);
    ++cases;
  }
  CHECK(cases == 23);
}

TEST_CASE("processor: pixel_values match HF's PIL pipeline") {
  const segml::test::Fixture fx("processor");
  const Image small = to_image(fx.get<int64_t>("small")), large = to_image(fx.get<int64_t>("large"));
  SegformerImageProcessor p;
  p.height = 40;
  p.width = 56;
  segml::test::compare("pixel_values.40x56", p.preprocess({small, large}), fx.get<float>("pixel_values.40x56"), 1e-6);
  p.height = 37;
  p.width = 53;
  segml::test::compare("pixel_values.small.37x53", p.preprocess(small), fx.get<float>("pixel_values.small.37x53"), 1e-6);
  // Grey input goes through RGB; without resizing the batch must share one size.
  CHECK(p.preprocess(Image(37, 53, 1, 128)).shape() == segml::Shape{1, 3, 37, 53});
  p.do_resize = false;
  CHECK_ERROR(p.preprocess({small, large}), "image 1 is 150x200 but image 0 is 37x53");
}

TEST_CASE("processor: reduce_labels and NEAREST label resizing") {
  Image m(2, 3, 1);
  m.data = {0, 1, 2, 3, 255, 5};
  CHECK(segml::reduce_labels(m).data == std::vector<uint8_t>{255, 0, 1, 2, 255, 4});

  const segml::test::Fixture fx("processor");
  const Image label = to_image(fx.get<int64_t>("label"));
  for (bool reduce : {false, true}) {
    for (auto [h, w] : {std::pair<int64_t, int64_t>{32, 50}, {97, 131}}) {
      SegformerImageProcessor p;
      p.do_reduce_labels = reduce;
      p.height = h;
      p.width = w;
      const std::string name =
          std::string("labels.") + (reduce ? "reduced." : "plain.") + std::to_string(h) + "x" + std::to_string(w);
      const Tensor<int64_t> got = p.preprocess_labels(label);
      segml::test::compare(name, got.view({h, w}), fx.get<int64_t>(name), 0.0);
    }
  }
  SegformerImageProcessor p;
  CHECK_ERROR(p.preprocess_labels(Image(2, 2, 3)), "label map 0 has 3 channels, expected 1");
}

TEST_CASE("processor: post_process_semantic_segmentation matches interpolate + argmax") {
  const segml::test::Fixture fx("processor");
  const Tensor<float> logits = fx.get<float>("post.logits");
  const SegformerImageProcessor p;
  const auto maps = p.post_process_semantic_segmentation(logits, {{20, 31}, {5, 6}});
  REQUIRE(maps.size() == 2);
  segml::test::compare("post.labels.0", maps[0], fx.get<int64_t>("post.labels.0"), 0.0);
  segml::test::compare("post.labels.1", maps[1], fx.get<int64_t>("post.labels.1"), 0.0);
  const auto raw = p.post_process_semantic_segmentation(logits);
  segml::test::compare("post.labels.none.0", raw[0], fx.get<int64_t>("post.labels.none.0"), 0.0);
  CHECK(raw[1].shape() == segml::Shape{7, 9});
  // The upsampled logits themselves (what the argmax sees), via the same kernel. Tolerance 1e-5:
  // PyTorch's vectorised CPU kernel rounds differently by a few float ulps (values up to ~4).
  Tensor<float> up = Tensor<float>::empty({5, 20, 31});
  segml::kernels::resize_bilinear_forward<float>(up.data(), logits.data(), 5, 7, 9, 20, 31);
  segml::test::compare("post.upsampled.0", up, fx.get<float>("post.upsampled.0"), 1e-5);
  CHECK_ERROR(p.post_process_semantic_segmentation(logits, {{20, 31}}), "1 target sizes for a batch of 2");
  CHECK_ERROR(p.post_process_semantic_segmentation(Tensor<float>::zeros({5, 7, 9})), "logits must be (B, C, h, w)");
}

TEST_CASE("processor: preprocessor_config.json round trip, legacy fields, errors") {
  const json hf = json::parse(R"({
    "do_normalize": true, "do_reduce_labels": false, "do_rescale": true, "do_resize": true,
    "image_mean": [0.485, 0.456, 0.406], "image_processor_type": "SegformerImageProcessor",
    "image_std": [0.229, 0.224, 0.225], "resample": 2, "rescale_factor": 0.00392156862745098,
    "size": {"height": 512, "width": 512}
  })");
  const SegformerImageProcessor p = SegformerImageProcessor::from_json(hf, "pp.json");
  CHECK(p.height == 512);
  CHECK(p.resample == segml::Resample::BILINEAR);
  CHECK(p.rescale_factor == 1.0 / 255.0);
  CHECK(p.to_json() == hf);
  CHECK(SegformerImageProcessor().to_json() == hf);  // defaults are HF's defaults

  // Older feature-extractor files: integer size, reduce_labels alias, unknown keys kept.
  const json legacy = json::parse(R"({"feature_extractor_type": "SegformerFeatureExtractor", "reduce_labels": true,
                                      "size": 640, "align": false, "resample": 3})");
  const SegformerImageProcessor q = SegformerImageProcessor::from_json(legacy, "old.json");
  CHECK(q.do_reduce_labels);
  CHECK(q.height == 640);
  CHECK(q.width == 640);
  CHECK(q.resample == segml::Resample::BICUBIC);
  TempDir dir;
  q.save(dir.file("preprocessor_config.json"));
  const json back = json::parse(read_text(dir.file("preprocessor_config.json")));
  CHECK(back.at("feature_extractor_type") == "SegformerFeatureExtractor");
  CHECK(back.at("align") == false);
  CHECK(back.at("size") == json::parse(R"({"height": 640, "width": 640})"));
  CHECK(back.at("do_reduce_labels") == true);
  CHECK_FALSE(back.contains("reduce_labels"));
  CHECK(SegformerImageProcessor::from_json_file(dir.file("preprocessor_config.json")).to_json() == back);

  CHECK_ERROR(SegformerImageProcessor::from_json(json{{"resample", 7}}, "pp.json"),
              "preprocessor config 'pp.json': field 'resample' must be a PIL filter id 0..5");
  CHECK_ERROR(SegformerImageProcessor::from_json(json{{"size", {{"shortest_edge", 512}}}}, "pp.json"),
              "field 'size' must be {\"height\": H, \"width\": W} or an integer");
  CHECK_ERROR(SegformerImageProcessor::from_json(json{{"image_mean", {0.5, 0.5}}}, "pp.json"),
              "field 'image_mean' must be a number or a list of 3 numbers");
  CHECK_ERROR(SegformerImageProcessor::from_json(json{{"do_resize", "yes"}}, "pp.json"), "field 'do_resize' must be true or false");
  CHECK_ERROR(SegformerImageProcessor::from_json_file(dir.file("nope.json")), "nope.json': cannot open file");
}
