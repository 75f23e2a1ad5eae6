// SegFormer-B0 inference vs the PyTorch reference at full sizes, and end to end from a PNG:
// load_image -> SegformerImageProcessor::preprocess -> model forward -> post_process_semantic_segmentation.
// Weights and config come from tests/fixtures/model_b0.safetensors; inputs and reference outputs from
// model_b0_e2e.safetensors (tools/fixtures/model_b0_e2e.py). Runtime: ~8 s in Release, ~40 s under
// ASan/UBSan at -O1 without OpenMP.
#include <doctest/doctest.h>

#include <segml/io/checkpoint.hpp>
#include <segml/io/image.hpp>
#include <segml/io/image_processor.hpp>

#include "support.hpp"

using namespace segml;

namespace {

const std::string kDataDir = std::string(SEGML_FIXTURE_DIR) + "/../data/";

struct B0 {
  test::Fixture weights{"model_b0"};
  test::Fixture fx{"model_b0_e2e"};
  SegformerForSemanticSegmentation<float> model;
  B0() : model(SegformerConfig::from_json(nlohmann::json::parse(weights.file().metadata().at("config")), "model_b0 config")) {
    const LoadReport r = load_state_dict(model, {test::fixture_path("model_b0")});
    REQUIRE_MESSAGE(r.missing.empty(), r.str("model_b0"));
    REQUIRE(r.mismatched.empty());
    model.eval();
  }
  Tensor<float> logits(const Tensor<float>& pixel_values) {
    NoGradGuard ng;
    return model.forward(Var<float>(pixel_values)).logits.data();
  }
};

void check_logits(const std::string& size) {
  B0 m;
  const Tensor<float> pixels = m.fx.get("pixel_values_" + size);
  test::compare("logits_" + size, m.logits(pixels), m.fx.get("logits_" + size), 1e-4);
}

}  // namespace

TEST_CASE("model b0 e2e: eval logits at 512x512 match PyTorch within 1e-4") { check_logits("512"); }

TEST_CASE("model b0 e2e: eval logits at the odd size 375x500 match PyTorch within 1e-4") {
  check_logits("375x500");
}

TEST_CASE("model b0 e2e: PNG -> image processor -> logits -> upsampled labels match HF's pipeline") {
  B0 m;
  const Image image = load_image(kDataDir + "street_375x500.png");
  REQUIRE(image.height == 375);
  REQUIRE(image.width == 500);
  const SegformerImageProcessor processor;  // HF defaults: 512x512 BILINEAR, 1/255, ImageNet mean/std
  const Tensor<float> pixels = processor.preprocess(image);
  // Bit-exact PIL resize and the same float32 arithmetic as HF: exactly equal.
  test::compare("png.pixel_values", pixels, m.fx.get("png.pixel_values"), 0);

  const Tensor<float> logits = m.logits(pixels);
  test::compare("png.logits", logits, m.fx.get("png.logits"), 1e-4);

  const std::vector<Tensor<int64_t>> labels = processor.post_process_semantic_segmentation(logits, {{375, 500}});
  REQUIRE(labels.size() == 1);
  const Tensor<int64_t> want = m.fx.get<int64_t>("png.labels_upsampled");
  REQUIRE(labels[0].numel() == want.numel());
  REQUIRE(labels[0].shape() == std::vector<int64_t>{375, 500});
  const Tensor<int64_t> got = labels[0].contiguous();
  int64_t equal = 0;
  for (int64_t i = 0; i < want.numel(); ++i) equal += got.data()[i] == want.data()[i];
  const double agreement = double(equal) / double(want.numel());
  // Pixels whose top two upsampled logits are within the logits' float32 noise may flip: allow 0.1%.
  MESSAGE("png.labels_upsampled: " << equal << " / " << want.numel() << " equal (" << 100 * agreement << "%)");
  CHECK(agreement >= 0.999);
}
