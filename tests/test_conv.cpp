// Tests for linear, conv2d and the depthwise 3x3 conv: gradchecks, SIMD / fast paths vs scalar
// twins, PyTorch fixtures (forward and every input gradient), bad-shape errors.
#include <doctest/doctest.h>

#include <functional>
#include <segml/ops/conv.hpp>
#include <segml/ops/linear.hpp>
#include <string>
#include <vector>

#include "support.hpp"

using namespace segml;

namespace {

using VarD = Var<double>;
using Vars = std::vector<VarD>;

// The ISAs this machine can run, scalar first.
std::vector<Isa> isas() {
  return supported_isas();
}

Tensor<float> rnd(const Shape& s, uint64_t seed) { return test::random_tensor<float>(s, seed); }

struct ConvCase {
  Shape x, w;
  bool bias;
  std::array<int64_t, 2> stride, padding;
  int64_t groups;
};

kernels::Conv2dGeometry geometry(const ConvCase& c) {
  return {.B = c.x[0],
          .C = c.x[1],
          .H = c.x[2],
          .W = c.x[3],
          .OC = c.w[0],
          .KH = c.w[2],
          .KW = c.w[3],
          .sh = c.stride[0],
          .sw = c.stride[1],
          .ph = c.padding[0],
          .pw = c.padding[1],
          .groups = c.groups};
}

}  // namespace

// ---- finite-difference gradient checks (double) ---------------------------------------------------

TEST_CASE("linear: gradcheck") {
  test::check_gradients("linear (2,3,4)x(5,4)+b", [](const Vars& v) { return ops::linear(v[0], v[1], v[2]); },
                        {test::random_tensor<double>({2, 3, 4}, 1), test::random_tensor<double>({5, 4}, 2),
                         test::random_tensor<double>({5}, 3)});
  test::check_gradients("linear (3,4)x(2,4) no bias", [](const Vars& v) { return ops::linear(v[0], v[1]); },
                        {test::random_tensor<double>({3, 4}, 4), test::random_tensor<double>({2, 4}, 5)});
}

TEST_CASE("conv2d: gradcheck on every path, odd sizes") {
  const std::vector<std::pair<std::string, ConvCase>> cases = {
      {"7x7/s4/p3 (patch embed 1)", {{1, 2, 9, 11}, {3, 2, 7, 7}, true, {4, 4}, {3, 3}, 1}},
      {"3x3/s2/p1 (patch embed 2-4)", {{1, 3, 7, 5}, {4, 3, 3, 3}, true, {2, 2}, {1, 1}, 1}},
      {"2x2/s2 sr, odd input", {{2, 3, 7, 5}, {3, 3, 2, 2}, true, {2, 2}, {0, 0}, 1}},
      {"4x4/s4 sr", {{1, 2, 9, 11}, {2, 2, 4, 4}, true, {4, 4}, {0, 0}, 1}},
      {"8x8/s8 sr", {{1, 2, 17, 9}, {2, 2, 8, 8}, false, {8, 8}, {0, 0}, 1}},
      {"1x1 pointwise", {{2, 3, 4, 5}, {4, 3, 1, 1}, true, {1, 1}, {0, 0}, 1}},
      {"3x3/p1 groups 2", {{1, 4, 5, 6}, {6, 2, 3, 3}, true, {1, 1}, {1, 1}, 2}},
      {"3x2 stride (1,2) pad (0,1)", {{1, 2, 6, 7}, {3, 2, 3, 2}, false, {1, 2}, {0, 1}, 1}},
  };
  for (const auto& [name, c] : cases) {
    std::vector<Tensor<double>> in = {test::random_tensor<double>(c.x, 11), test::random_tensor<double>(c.w, 12)};
    if (c.bias) in.push_back(test::random_tensor<double>({c.w[0]}, 13));
    test::check_gradients(
        "conv2d " + name,
        [c = c](const Vars& v) {
          return ops::conv2d(v[0], v[1], v.size() > 2 ? v[2] : VarD(), c.stride, c.padding, c.groups);
        },
        in);
  }
}

TEST_CASE("depthwise_conv3x3: gradcheck, NCHW and NHWC, with and without bias") {
  for (const Shape& s : {Shape{2, 3, 5, 7}, Shape{1, 2, 1, 1}, Shape{1, 5, 2, 3}}) {
    const int64_t C = s[1];
    const Tensor<double> x = test::random_tensor<double>(s, 21), w = test::random_tensor<double>({C, 1, 3, 3}, 22),
                         b = test::random_tensor<double>({C}, 23);
    const std::string tag = shape_str(s);
    test::check_gradients("dwconv nchw " + tag, [](const Vars& v) { return ops::depthwise_conv3x3(v[0], v[1], v[2]); },
                          {x, w, b});
    test::check_gradients("dwconv nchw no bias " + tag,
                          [](const Vars& v) { return ops::depthwise_conv3x3(v[0], v[1]); }, {x, w});
    const Tensor<double> xh = x.permute({0, 2, 3, 1}).contiguous();
    test::check_gradients("dwconv nhwc " + tag,
                          [](const Vars& v) { return ops::depthwise_conv3x3_nhwc(v[0], v[1], v[2]); }, {xh, w, b});
    test::check_gradients("dwconv nhwc no bias " + tag,
                          [](const Vars& v) { return ops::depthwise_conv3x3_nhwc(v[0], v[1]); }, {xh, w});
  }
}

// ---- fast paths vs scalar twins (float) -----------------------------------------------------------

TEST_CASE("linear: gemm kernels vs scalar twin") {
  const int64_t M = 13, IN = 17, OUT = 9;
  const Tensor<float> x = rnd({M, IN}, 1), w = rnd({OUT, IN}, 2), b = rnd({OUT}, 3), dy = rnd({M, OUT}, 4);
  Tensor<float> y = Tensor<float>::empty({M, OUT}), yr = y.clone();
  kernels::linear_forward(y.data(), x.data(), w.data(), b.data(), M, IN, OUT);
  kernels::linear_forward_ref(yr.data(), x.data(), w.data(), b.data(), M, IN, OUT);
  Tensor<float> dx = Tensor<float>::empty({M, IN}), dw = Tensor<float>::empty({OUT, IN}),
                db = Tensor<float>::empty({OUT});
  Tensor<float> dxr = dx.clone(), dwr = dw.clone(), dbr = db.clone();
  kernels::linear_backward(dx.data(), dw.data(), db.data(), dy.data(), x.data(), w.data(), M, IN, OUT);
  kernels::linear_backward_ref(dxr.data(), dwr.data(), dbr.data(), dy.data(), x.data(), w.data(), M, IN, OUT);
  // Sums of <= 17 products of values in [-1, 1]: float rounding stays far below 1e-5.
  test::compare("linear y", y, yr, 1e-5);
  test::compare("linear dx", dx, dxr, 1e-5);
  test::compare("linear dw", dw, dwr, 1e-5);
  test::compare("linear db", db, dbr, 1e-5);
}

TEST_CASE("conv2d: pointwise / patchify / im2col paths vs the direct 7-loop twin") {
  const std::vector<std::pair<ConvCase, kernels::Conv2dPath>> cases = {
      {{{2, 5, 7, 9}, {6, 5, 1, 1}, true, {1, 1}, {0, 0}, 1}, kernels::Conv2dPath::pointwise},
      {{{2, 6, 7, 9}, {4, 3, 1, 1}, false, {1, 1}, {0, 0}, 2}, kernels::Conv2dPath::pointwise},
      {{{2, 4, 35, 19}, {5, 4, 8, 8}, true, {8, 8}, {0, 0}, 1}, kernels::Conv2dPath::patchify},
      {{{1, 3, 18, 13}, {3, 3, 4, 4}, true, {4, 4}, {0, 0}, 1}, kernels::Conv2dPath::patchify},
      {{{2, 4, 9, 7}, {4, 2, 2, 2}, false, {2, 2}, {0, 0}, 2}, kernels::Conv2dPath::patchify},
      {{{2, 3, 67, 45}, {8, 3, 7, 7}, true, {4, 4}, {3, 3}, 1}, kernels::Conv2dPath::im2col},
      {{{2, 8, 17, 13}, {10, 8, 3, 3}, true, {2, 2}, {1, 1}, 1}, kernels::Conv2dPath::im2col},
      {{{1, 6, 9, 8}, {6, 2, 3, 3}, true, {1, 1}, {1, 1}, 3}, kernels::Conv2dPath::im2col},
      {{{1, 3, 8, 9}, {4, 3, 3, 2}, false, {1, 2}, {0, 1}, 1}, kernels::Conv2dPath::im2col},
  };
  for (const auto& [c, path] : cases) {
    const kernels::Conv2dGeometry g = geometry(c);
    CHECK(kernels::conv2d_path(g) == path);
    const Tensor<float> x = rnd(c.x, 31), w = rnd(c.w, 32), b = rnd({c.w[0]}, 33);
    const Tensor<float> dy = rnd({g.B, g.OC, g.OH(), g.OW()}, 34);
    const float* bp = c.bias ? b.data() : nullptr;
    Tensor<float> y = Tensor<float>::empty(dy.shape()), yr = y.clone();
    kernels::conv2d_forward(y.data(), x.data(), w.data(), bp, g);
    kernels::conv2d_forward_ref(yr.data(), x.data(), w.data(), bp, g);
    Tensor<float> dx = Tensor<float>::empty(c.x), dw = Tensor<float>::empty(c.w), db = Tensor<float>::empty({g.OC});
    Tensor<float> dxr = dx.clone(), dwr = dw.clone(), dbr = db.clone();
    kernels::conv2d_backward(dx.data(), dw.data(), db.data(), dy.data(), x.data(), w.data(), g);
    kernels::conv2d_backward_ref(dxr.data(), dwr.data(), dbr.data(), dy.data(), x.data(), w.data(), g);
    const std::string tag = shape_str(c.x) + " * " + shape_str(c.w);
    // y, dx: sums of <= 256 products in [-1, 1]; dw, db: sums over up to B*OH*OW = 2 * 17 * 12 outputs.
    // Different summation orders in float: 1e-4 absolute is ~100x the expected rounding.
    test::compare("conv2d y " + tag, y, yr, 1e-4);
    test::compare("conv2d dx " + tag, dx, dxr, 1e-4);
    test::compare("conv2d dw " + tag, dw, dwr, 1e-4);
    test::compare("conv2d db " + tag, db, dbr, 1e-4);
  }
}

TEST_CASE("depthwise_conv3x3: SIMD vs scalar twin on every channel / width remainder, both layouts") {
  // B, H, W, C: every C in 1..17 and 33 with W in {1, 2, 3, 7, 16, 17} (all lane and row-tail remainders,
  // single pixels and four-pixel steps), plus one shape whose weight gradient spans several row tiles.
  std::vector<Shape> shapes;
  for (int64_t C : {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 33})
    for (int64_t W : {1, 2, 3, 7, 16, 17}) shapes.push_back({2, 3, W, C});
  shapes.push_back({2, 9, 64, 130});
  for (Isa isa_ : isas()) {
    if (isa_ == Isa::scalar) continue;
    ScopedIsa scoped(isa_);
    double worst[4] = {0, 0, 0, 0};  // y, dx, dw, db
    for (const Shape& shape : shapes)
      for (bool nhwc : {false, true}) {
        const int64_t B = shape[0], H = shape[1], W = shape[2], C = shape[3];
        const Tensor<float> w = rnd({C, 1, 3, 3}, 41), b = rnd({C}, 42);
        const Shape s = nhwc ? Shape{B, H, W, C} : Shape{B, C, H, W};
        const Tensor<float> x = rnd(s, 43), dy = rnd(s, 44);
        Tensor<float> y = Tensor<float>::empty(s), yr = y.clone(), dx = y.clone(), dxr = y.clone();
        Tensor<float> dw = Tensor<float>::empty({C, 1, 3, 3}), dwr = dw.clone(), db = Tensor<float>::empty({C}),
                      dbr = db.clone();
        if (nhwc) {
          kernels::dwconv3x3_nhwc_forward(y.data(), x.data(), w.data(), b.data(), B, H, W, C);
          kernels::dwconv3x3_nhwc_forward_ref(yr.data(), x.data(), w.data(), b.data(), B, H, W, C);
          kernels::dwconv3x3_nhwc_backward(dx.data(), dw.data(), db.data(), dy.data(), x.data(), w.data(), B, H, W, C);
          kernels::dwconv3x3_nhwc_backward_ref(dxr.data(), dwr.data(), dbr.data(), dy.data(), x.data(), w.data(), B, H,
                                               W, C);
        } else {
          kernels::dwconv3x3_nchw_forward(y.data(), x.data(), w.data(), b.data(), B, C, H, W);
          kernels::dwconv3x3_nchw_forward_ref(yr.data(), x.data(), w.data(), b.data(), B, C, H, W);
          kernels::dwconv3x3_nchw_backward(dx.data(), dw.data(), db.data(), dy.data(), x.data(), w.data(), B, C, H, W);
          kernels::dwconv3x3_nchw_backward_ref(dxr.data(), dwr.data(), dbr.data(), dy.data(), x.data(), w.data(), B, C,
                                               H, W);
        }
        // y, dx: 10 terms in [-1, 1], FMA vs mul + add: 1e-5. dw, db: sums of B*H*W products in another
        // order: 1e-5 + 1e-6 per term (float rounding is ~1e-7 per term).
        const double e[4] = {test::max_abs_diff(y, yr), test::max_abs_diff(dx, dxr), test::max_abs_diff(dw, dwr),
                             test::max_abs_diff(db, dbr)};
        const double tol_w = 1e-5 + 1e-6 * static_cast<double>(B * H * W);
        INFO(std::string(isa_name(isa_)), std::string(nhwc ? " NHWC " : " NCHW "), shape_str(s), ": y ", e[0], " dx ",
             e[1], " dw ", e[2], " db ", e[3]);
        CHECK(e[0] <= 1e-5);
        CHECK(e[1] <= 1e-5);
        CHECK(e[2] <= tol_w);
        CHECK(e[3] <= tol_w);
        for (int k = 0; k < 4; ++k) worst[k] = std::max(worst[k], e[k]);
      }
    MESSAGE("dwconv " << std::string(isa_name(isa_)) << " vs scalar twin, " << 2 * shapes.size()
                      << " shapes: max abs diff y " << worst[0] << ", dx " << worst[1] << ", dw " << worst[2] << ", db "
                      << worst[3]);
  }
}

TEST_CASE("dwconv3x3_nhwc_gelu_forward: equals dwconv then GELU, SIMD vs scalar twin on every remainder") {
  // The fused kernel must equal the two-pass scalar oracle (dwconv_ref, then gelu_ref): the conv
  // sums differ by FMA rounding (1e-5, as above) and GELU's slope is at most 1.13.
  for (Isa isa_ : isas()) {
    ScopedIsa scoped(isa_);
    double worst = 0;
    for (int64_t C : {1, 7, 8, 9, 16, 17, 33})
      for (int64_t W : {1, 3, 7, 17}) {
        const int64_t B = 2, H = 3;
        const Tensor<float> w = rnd({C, 1, 3, 3}, 51), b = rnd({C}, 52), x = rnd({B, H, W, C}, 53);
        Tensor<float> y = Tensor<float>::empty({B, H, W, C}), yr = y.clone();
        kernels::dwconv3x3_nhwc_gelu_forward(y.data(), x.data(), w.data(), b.data(), B, H, W, C);
        kernels::dwconv3x3_nhwc_forward_ref(yr.data(), x.data(), w.data(), b.data(), B, H, W, C);
        kernels::gelu_forward_ref(yr.data(), yr.data(), yr.numel());
        worst = std::max(worst, test::max_abs_diff(y, yr));
      }
    MESSAGE("dwconv+gelu " << std::string(isa_name(isa_)) << " vs two-pass scalar twin: max abs diff " << worst);
    CHECK(worst <= 2e-5);
  }
}

TEST_CASE("dwconv3x3_nhwc_row: row by row from three given rows equals the whole-image twin") {
  // Rows are passed as pointers into separate buffers (as the inference engine's ring does), with
  // null rows at the image's top and bottom; with and without GELU, every channel / width remainder.
  for (Isa isa_ : isas()) {
    ScopedIsa scoped(isa_);
    double worst = 0;
    for (int64_t C : {1, 7, 8, 9, 16, 17, 33})
      for (int64_t W : {1, 3, 7, 17})
        for (bool gelu : {false, true}) {
          const int64_t H = 4;
          const Tensor<float> w = rnd({C, 1, 3, 3}, 54), b = rnd({C}, 55), x = rnd({1, H, W, C}, 56);
          Tensor<float> yr = Tensor<float>::empty({1, H, W, C});
          kernels::dwconv3x3_nhwc_forward_ref(yr.data(), x.data(), w.data(), b.data(), 1, H, W, C);
          if (gelu) kernels::gelu_forward_ref(yr.data(), yr.data(), yr.numel());
          const std::vector<float> taps = kernels::dwconv3x3_nhwc_taps(w.data(), C);
          std::vector<std::vector<float>> rows;  // each input row in a buffer of its own
          for (int64_t h = 0; h < H; ++h) rows.emplace_back(x.data() + h * W * C, x.data() + (h + 1) * W * C);
          Tensor<float> y = Tensor<float>::empty({1, H, W, C});
          for (int64_t h = 0; h < H; ++h) {
            const float* in[3] = {h > 0 ? rows[h - 1].data() : nullptr, rows[h].data(),
                                  h + 1 < H ? rows[h + 1].data() : nullptr};
            kernels::dwconv3x3_nhwc_row(y.data() + h * W * C, in, taps.data(), b.data(), W, C, gelu);
          }
          worst = std::max(worst, test::max_abs_diff(y, yr));
        }
    MESSAGE("dwconv row " << std::string(isa_name(isa_)) << " vs whole-image scalar twin: max abs diff " << worst);
    CHECK(worst <= 2e-5);  // FMA rounding of the conv sums and GELU's slope, as above
  }
}

TEST_CASE("depthwise_conv3x3: NHWC equals NCHW on the permuted input") {
  const Tensor<float> x = rnd({2, 24, 9, 13}, 51), w = rnd({24, 1, 3, 3}, 52), b = rnd({24}, 53);
  const Var<float> y = ops::depthwise_conv3x3(Var<float>(x), Var<float>(w), Var<float>(b));
  const Var<float> yh =
      ops::depthwise_conv3x3_nhwc(Var<float>(x.permute({0, 2, 3, 1}).contiguous()), Var<float>(w), Var<float>(b));
  test::compare("nhwc vs nchw", yh.data(), y.data().permute({0, 2, 3, 1}), 1e-6);
}

// ---- PyTorch fixtures ------------------------------------------------------------------------------

namespace {

using OpFn = std::function<Var<float>(const Var<float>& x, const Var<float>& w, const Var<float>& b)>;

// Runs op on the fixture's inputs in float, backpropagates the fixture's projection, and compares
// the output and every input gradient with PyTorch's (float64) values.
void check_fixture(const test::Fixture& f, const std::string& name, const OpFn& op, double atol) {
  const bool has_bias = f.contains(name + ".b");
  Var<float> x(f.get(name + ".x"), true), w(f.get(name + ".w"), true);
  Var<float> b = has_bias ? Var<float>(f.get(name + ".b"), true) : Var<float>();
  const Var<float> y = op(x, w, b);
  test::compare(name + " y", y.data(), f.get<double>(name + ".y"), atol, 1e-5);
  y.backward(f.get(name + ".proj"));
  test::compare(name + " dx", x.grad(), f.get<double>(name + ".dx"), atol, 1e-5);
  test::compare(name + " dw", w.grad(), f.get<double>(name + ".dw"), atol, 1e-5);
  if (has_bias) test::compare(name + " db", b.grad(), f.get<double>(name + ".db"), atol, 1e-5);
}

}  // namespace

TEST_CASE("linear, conv2d, depthwise_conv3x3: forward and backward match PyTorch") {
  const test::Fixture f("ops_conv");
  // float32 against float64 references: sums of up to ~800 terms of size ~1 -> rounding ~1e-5.
  const double atol = 1e-4;
  const OpFn linear = [](const Var<float>& x, const Var<float>& w, const Var<float>& b) {
    return ops::linear(x, w, b);
  };
  check_fixture(f, "linear", linear, atol);
  check_fixture(f, "linear_nobias", linear, atol);
  const std::vector<std::pair<std::string, ConvCase>> convs = {
      {"patch7", {{}, {}, true, {4, 4}, {3, 3}, 1}}, {"patch3", {{}, {}, true, {2, 2}, {1, 1}, 1}},
      {"sr8", {{}, {}, true, {8, 8}, {0, 0}, 1}},    {"sr4", {{}, {}, true, {4, 4}, {0, 0}, 1}},
      {"sr2", {{}, {}, true, {2, 2}, {0, 0}, 1}},    {"pointwise", {{}, {}, true, {1, 1}, {0, 0}, 1}},
      {"groups", {{}, {}, true, {1, 1}, {1, 1}, 3}}, {"nobias", {{}, {}, false, {1, 2}, {0, 1}, 1}},
  };
  for (Isa isa_ : isas()) {
    ScopedIsa scoped(isa_);
    MESSAGE("ISA " << std::string(isa_name(isa_)));
    for (const auto& [name, c] : convs)
      check_fixture(
          f, name,
          [c = c](const Var<float>& x, const Var<float>& w, const Var<float>& b) {
            return ops::conv2d(x, w, b, c.stride, c.padding, c.groups);
          },
          atol);
    check_fixture(
        f, "dwconv",
        [](const Var<float>& x, const Var<float>& w, const Var<float>& b) { return ops::depthwise_conv3x3(x, w, b); },
        atol);
    check_fixture(
        f, "dwconv_nhwc",
        [](const Var<float>& x, const Var<float>& w, const Var<float>& b) {
          return ops::depthwise_conv3x3_nhwc(x, w, b);
        },
        atol);
  }
}

// ---- errors ----------------------------------------------------------------------------------------

TEST_CASE("linear, conv2d, depthwise_conv3x3: bad shapes throw naming the op and the shapes") {
  auto V = [](const Shape& s) { return Var<float>(Tensor<float>::zeros(s)); };
  CHECK_THROWS_WITH_AS(ops::linear(V({2, 3}), V({4, 5})), doctest::Contains("linear: input [2, 3]"), Error);
  CHECK_THROWS_WITH_AS(ops::linear(V({2, 3}), V({4, 3}), V({5})), doctest::Contains("linear: bias [5]"), Error);
  CHECK_THROWS_WITH_AS(ops::linear(V({2, 3}), V({4, 3, 1})), doctest::Contains("linear: weight must be"), Error);
  // wrong channels
  CHECK_THROWS_WITH_AS(ops::conv2d(V({1, 3, 8, 8}), V({4, 2, 3, 3})),
                       doctest::Contains("conv2d: weight [4, 2, 3, 3] expects 2 input channels but input [1, 3, 8, 8]"),
                       Error);
  // kernel bigger than the padded input
  CHECK_THROWS_WITH_AS(ops::conv2d(V({1, 3, 5, 5}), V({4, 3, 7, 7}), Var<float>(), {1, 1}, {0, 0}),
                       doctest::Contains("conv2d: kernel [4, 3, 7, 7] is bigger than the padded input [1, 3, 5, 5]"),
                       Error);
  // groups not dividing C
  CHECK_THROWS_WITH_AS(ops::conv2d(V({1, 5, 8, 8}), V({4, 2, 3, 3}), Var<float>(), {1, 1}, {1, 1}, 2),
                       doctest::Contains("conv2d: groups 2 must divide input channels of [1, 5, 8, 8]"), Error);
  // weight shape mismatch
  CHECK_THROWS_WITH_AS(ops::conv2d(V({1, 3, 8, 8}), V({4, 3, 3})), doctest::Contains("conv2d: expected input"), Error);
  CHECK_THROWS_WITH_AS(ops::conv2d(V({1, 3, 8, 8}), V({4, 3, 3, 3}), V({3})), doctest::Contains("conv2d: bias [3]"),
                       Error);
  CHECK_THROWS_WITH_AS(ops::conv2d(V({1, 3, 8, 8}), V({4, 3, 3, 3}), Var<float>(), {0, 1}),
                       doctest::Contains("conv2d: invalid stride (0, 1)"), Error);
  CHECK_THROWS_WITH_AS(ops::depthwise_conv3x3(V({1, 4, 8, 8}), V({3, 1, 3, 3})),
                       doctest::Contains("depthwise_conv3x3: weight [3, 1, 3, 3] must be (C, 1, 3, 3) with C = 4"),
                       Error);
  CHECK_THROWS_WITH_AS(ops::depthwise_conv3x3_nhwc(V({1, 8, 8, 4}), V({4, 1, 5, 5})),
                       doctest::Contains("depthwise_conv3x3_nhwc: weight [4, 1, 5, 5]"), Error);
  CHECK_THROWS_WITH_AS(ops::depthwise_conv3x3_nhwc(V({1, 8, 8, 4}), V({4, 1, 3, 3}), V({5})),
                       doctest::Contains("depthwise_conv3x3_nhwc: bias [5] must be (4)"), Error);
  CHECK_THROWS_WITH_AS(ops::depthwise_conv3x3(V({8, 8, 4}), V({4, 1, 3, 3})),
                       doctest::Contains("depthwise_conv3x3: expected input (B, C, H, W), got [8, 8, 4]"), Error);
}
