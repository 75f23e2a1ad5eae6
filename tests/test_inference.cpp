// SegformerInference (models/segformer_inference.hpp) vs the PyTorch reference and vs the autograd
// model, and its two new kernels (im2row, channels-last resize-accumulate) vs their oracles.
// The tolerances are those of the model's own parity tests (tests/test_model*.cpp): 1e-4 absolute
// on the logits against PyTorch. Fixtures: tools/fixtures/model_{tiny,b0,b0_e2e}.py.
#include <doctest/doctest.h>

#include <segml/io/checkpoint.hpp>
#include <segml/kernels/conv2d.hpp>
#include <segml/models/segformer_inference.hpp>

#include "support.hpp"

using namespace segml;

namespace {

SegformerForSemanticSegmentation<float> load_model(const std::string& group) {
  const test::Fixture fx(group);
  SegformerForSemanticSegmentation<float> model(
      SegformerConfig::from_json(nlohmann::json::parse(fx.file().metadata().at("config")), group + " config"));
  const LoadReport r = load_state_dict(model, {test::fixture_path(group)});
  REQUIRE_MESSAGE(r.missing.empty(), r.str(group));
  REQUIRE(r.mismatched.empty());
  model.eval();
  return model;
}

Tensor<float> autograd_logits(SegformerForSemanticSegmentation<float>& model, const Tensor<float>& pixels) {
  NoGradGuard ng;
  return model.forward(Var<float>(pixels)).logits.data();
}

}  // namespace

TEST_CASE("inference: tiny model logits match PyTorch and the autograd forward") {
  const test::Fixture fx("model_tiny");
  SegformerForSemanticSegmentation<float> model = load_model("model_tiny");
  const Tensor<float> pixels = fx.get("pixel_values");
  for (Isa which : supported_isas()) {
    ScopedIsa scoped(which);
    SegformerInference<float> engine(model);
    const Tensor<float> logits = engine.run(pixels);
    test::compare(std::string("tiny.logits vs PyTorch, isa ") + isa_name(which), logits, fx.get("eval.logits"), 1e-4);
    test::compare("tiny.logits vs autograd forward", logits, autograd_logits(model, pixels), 1e-4);
  }
}

TEST_CASE("inference: B0 logits at 512x512 and at the odd size 375x500 match PyTorch within 1e-4") {
  const test::Fixture fx("model_b0_e2e");
  SegformerForSemanticSegmentation<float> model = load_model("model_b0");
  SegformerInference<float> engine(model);
  for (const std::string size : {"512", "375x500"}) {  // one engine, two sizes: the workspace is re-planned
    const Tensor<float> logits = engine.run(fx.get("pixel_values_" + size));
    test::compare("b0.logits_" + size, logits, fx.get("logits_" + size), 1e-4);
  }
}

TEST_CASE("inference: B0 at a small size matches PyTorch and the BatchNorm statistics are non-trivial") {
  const test::Fixture fx("model_b0");
  SegformerForSemanticSegmentation<float> model = load_model("model_b0");
  const Tensor<float>& mean = model.decode_head.batch_norm.running_mean;
  REQUIRE(mean.numel() > 1);
  CHECK(mean.data()[0] != 0.f);  // folding must handle real running statistics, not the identity
  SegformerInference<float> engine(model);
  test::compare("b0.eval.logits", engine.run(fx.get("pixel_values")), fx.get("eval.logits"), 1e-4);
}

TEST_CASE("inference: a batch equals its images run one by one and the engine keeps its own weights") {
  SegformerConfig cfg = SegformerConfig::b0();
  cfg.num_labels = 5;
  SegformerForSemanticSegmentation<float> model(cfg, 7);
  model.eval();
  const Tensor<float> batch = test::random_tensor<float>({2, 3, 70, 45}, 3);
  SegformerInference<float> engine(model);
  const Tensor<float> both = engine.run(batch);
  REQUIRE(both.shape() == Shape{2, 5, 18, 12});
  for (int64_t b = 0; b < 2; ++b) {
    const Tensor<float> one = engine.run(batch.slice(0, b, b + 1).contiguous());
    test::compare("batch entry " + std::to_string(b), both.slice(0, b, b + 1), one, 0);
  }
  test::compare("batch vs autograd forward", both, autograd_logits(model, batch), 1e-4);
  model.decode_head.classifier.bias.data().fill_(100.f);  // the engine took a copy at construction
  test::compare("after the model changed", engine.run(batch), both, 0);
}

TEST_CASE("inference: the result does not depend on the thread count") {
  // The Mix-FFN and the decode head split the token grid into one band of rows per thread; the rows
  // at a band's edge are computed by both bands. Odd sizes and 1..3 threads move the band edges.
  SegformerConfig cfg = SegformerConfig::b0();
  cfg.num_labels = 7;
  SegformerForSemanticSegmentation<float> model(cfg, 11);
  model.eval();
  const Tensor<float> pixels = test::random_tensor<float>({1, 3, 157, 203}, 5);
  const int before = num_threads();
  set_num_threads(1);
  SegformerInference<float> engine(model);
  const Tensor<float> one = engine.run(pixels);
  for (int threads : {2, 3}) {
    set_num_threads(threads);
    // Each output is a fixed-order sum whatever the split, so the logits are the same bits.
    test::compare(std::to_string(threads) + " threads vs 1", engine.run(pixels), one, 0);
  }
  set_num_threads(before);
  test::compare("vs autograd forward", one, autograd_logits(model, pixels), 1e-4);
}

TEST_CASE("inference: bad inputs are rejected with the expected shape") {
  SegformerConfig cfg = SegformerConfig::b0();
  cfg.num_labels = 3;
  SegformerForSemanticSegmentation<float> model(cfg);
  SegformerInference<float> engine(model);
  CHECK_THROWS_WITH_AS(engine.run(Tensor<float>::zeros({1, 1, 64, 64})), doctest::Contains("must be (B, 3, H, W)"),
                       segml::Error);
  CHECK_THROWS_WITH_AS(engine.run(Tensor<float>::zeros({3, 64, 64})), doctest::Contains("must be (B, 3, H, W)"),
                       segml::Error);
  CHECK_THROWS_WITH_AS(engine.run(Tensor<float>::zeros({1, 3, 8, 8})), doctest::Contains("too small"), segml::Error);
}

TEST_CASE("im2row: row matrix times the weight equals the direct convolution (NCHW and NHWC inputs)") {
  struct Case {
    int64_t C, H, W, K, stride, pad, OC;
  };
  for (const Case c : {Case{3, 17, 23, 7, 4, 3, 5}, Case{4, 9, 10, 3, 2, 1, 6}, Case{5, 8, 12, 2, 2, 0, 3},
                       Case{2, 5, 5, 1, 1, 0, 2}}) {
    const kernels::Im2rowGeometry g{c.C, c.H, c.W, c.K, c.K, c.stride, c.pad};
    const int64_t OH = g.out_h(), OW = g.out_w(), P = OH * OW, K = g.row_size();
    const Tensor<double> x = test::random_tensor<double>({c.C, c.H, c.W}, 11);
    const Tensor<double> w = test::random_tensor<double>({c.OC, c.C, c.K, c.K}, 12);
    Tensor<double> want = Tensor<double>::empty({1, c.OC, OH, OW});
    kernels::conv2d_forward_ref(want.data(), x.data(), w.data(), static_cast<const double*>(nullptr),
                                kernels::Conv2dGeometry{1, c.C, c.H, c.W, c.OC, c.K, c.K, c.stride, c.stride, c.pad,
                                                        c.pad, 1});
    auto check = [&](const Tensor<double>& rows, const Tensor<double>& weight, const char* layout) {
      Tensor<double> y = Tensor<double>::empty({P, c.OC});
      kernels::gemm_ref(false, true, P, c.OC, K, 1.0, rows.data(), K, weight.data(), K, 0.0, y.data(), c.OC);
      // y is (P, OC): compare with the NCHW reference seen as (OC, P)ᵀ
      test::compare(std::string("im2row ") + layout, y, want.reshape({c.OC, P}).transpose(0, 1), 1e-12);
    };
    Tensor<double> rows = Tensor<double>::empty({P, K});
    kernels::im2row_nchw(rows.data(), x.data(), g);
    check(rows, w.reshape({c.OC, K}), "nchw");
    const Tensor<double> x_nhwc = x.permute({1, 2, 0}).contiguous();
    Tensor<double> w_nhwc = Tensor<double>::empty({c.OC, K});
    kernels::permute_weight_to_nhwc(w_nhwc.data(), w.data(), c.OC, c.C, c.K, c.K);
    kernels::im2row_nhwc(rows.data(), x_nhwc.data(), g);
    check(rows, w_nhwc, "nhwc");
  }
}

TEST_CASE("resize_bilinear_nhwc_add: adds the channels-last resize, same taps as the NCHW oracle") {
  for (const auto& [H, W, OH, OW] : {std::array<int64_t, 4>{4, 5, 16, 20}, {7, 3, 13, 11}, {8, 8, 8, 8}, {9, 6, 4, 3}}) {
    const int64_t C = 19;
    const Tensor<float> x = test::random_tensor<float>({C, H, W}, 21);
    Tensor<float> want = Tensor<float>::empty({C, OH, OW});
    kernels::resize_bilinear_forward_ref(want.data(), x.data(), C, H, W, OH, OW);
    const Tensor<float> start = test::random_tensor<float>({OH, OW, C}, 22);
    Tensor<float> y = start.clone();
    const Tensor<float> x_nhwc = x.permute({1, 2, 0}).contiguous();
    kernels::resize_bilinear_nhwc_add(y.data(), x_nhwc.data(), H, W, C, OH, OW);
    Tensor<float> added = Tensor<float>::empty({OH, OW, C});
    for (int64_t i = 0; i < y.numel(); ++i) added.data()[i] = y.data()[i] - start.data()[i];
    test::compare("nhwc resize " + std::to_string(H) + "x" + std::to_string(W) + "->" + std::to_string(OH) + "x" +
                      std::to_string(OW),
                  added, want.permute({1, 2, 0}), 1e-6);
  }
}
