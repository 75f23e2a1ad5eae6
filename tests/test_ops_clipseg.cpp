// Tests for the ops CLIPSeg adds: quick_gelu, causal attention, conv_transpose2d, resize_bicubic and
// embedding. For each: the optimised kernels against their scalar twins on every ISA this CPU has
// (float and double), finite-difference gradients in double, PyTorch fixtures
// (tools/fixtures/ops_clipseg.py) for forward outputs and gradients, and bad-shape errors.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include <segml/core/cpu.hpp>
#include <segml/ops/activation.hpp>
#include <segml/ops/attention.hpp>
#include <segml/ops/conv.hpp>
#include <segml/ops/elementwise.hpp>
#include <segml/ops/embedding.hpp>
#include <segml/ops/resize.hpp>

#include "support.hpp"

using namespace segml;

namespace {

// Runs body once per ISA up to what the hardware supports.
template <class F>
void for_each_isa(F&& body) {
  for (Isa i : supported_isas()) {
    ScopedIsa s(i);
    INFO("isa " << std::string(isa_name(i)));
    body();
  }
}

std::string shape_name(const Shape& s) { return shape_str(s); }

}  // namespace

// ================================ quick_gelu ======================================================

TEST_CASE("quick_gelu: SIMD vs the double twin, every ISA, every remainder of 8 and 16, both tails") {
  std::vector<int64_t> lengths;
  for (int64_t n = 1; n <= 33; ++n) lengths.push_back(n);
  for (int64_t n : {47, 511, 1000, 1001}) lengths.push_back(n);
  for_each_isa([&] {
    for (int64_t n : lengths) {
      CAPTURE(n);
      // [-60, 60]: sigmoid(1.702 x) reaches both float limits (e^-102 underflows).
      const Tensor<float> x = test::random_tensor<float>({n}, 500 + static_cast<uint64_t>(n), -60, 60);
      const Tensor<float> dy = test::random_tensor<float>({n}, 7);
      Tensor<float> y = Tensor<float>::empty({n}), dx = Tensor<float>::empty({n});
      kernels::quick_gelu_forward(y.data(), x.data(), n);
      kernels::quick_gelu_backward(dx.data(), x.data(), dy.data(), n);
      const Tensor<double> xd = x.to<double>(), dyd = dy.to<double>();
      Tensor<double> yd = Tensor<double>::empty({n}), dxd = Tensor<double>::empty({n});
      kernels::quick_gelu_forward_ref(yd.data(), xd.data(), n);
      kernels::quick_gelu_backward_ref(dxd.data(), xd.data(), dyd.data(), n);
      // exp is within 1 ulp, plus the rounding of 1.702 x (relative 6e-8, times |1.702 x| <= 102 in
      // the exponent): relative 1.5e-5 in the far tails, 1e-6 where |x| < 8; absolute 1e-35 where
      // the result is denormal.
      int bad = 0;
      for (int64_t i = 0; i < n; ++i) {
        const double rel = std::abs(x.data()[i]) < 8 ? 1e-6 : 1.5e-5;
        bad += !(std::abs(y.data()[i] - yd.data()[i]) <= 1e-35 + rel * std::abs(yd.data()[i]));
        bad += !(std::abs(dx.data()[i] - dxd.data()[i]) <= 1e-35 + 1e-7 + rel * std::abs(dxd.data()[i]));
      }
      CHECK(bad == 0);
    }
  });
  // Limits and NaN as torch's x * sigmoid(1.702 x) gives them: +inf -> +inf, -inf -> NaN (-inf * 0),
  // NaN -> NaN, -200 -> -0 with gradient 0, 200 -> 200 with gradient 1.
  const float inf = std::numeric_limits<float>::infinity();
  const std::vector<float> special = {inf, -inf, std::numeric_limits<float>::quiet_NaN(), 0.f, -0.f, 1e-30f, -200.f, 200.f, 3.f};
  for_each_isa([&] {
    std::vector<float> y(special.size()), dx(special.size()), ones(special.size(), 1.f);
    const int64_t n = static_cast<int64_t>(special.size());
    kernels::quick_gelu_forward(y.data(), special.data(), n);
    kernels::quick_gelu_backward(dx.data(), special.data(), ones.data(), n);
    CHECK(y[0] == inf);
    CHECK(std::isnan(y[1]));
    CHECK(std::isnan(y[2]));
    CHECK(y[3] == 0.f);
    CHECK(y[6] == 0.f);
    CHECK(y[7] == 200.f);
    CHECK(dx[6] == 0.f);
    CHECK(dx[7] == 1.f);
    CHECK(std::abs(dx[3] - 0.5f) < 1e-7f);
  });
}

TEST_CASE("quick_gelu: gradcheck (double) and matches HF QuickGELUActivation (forward and backward)") {
  test::check_gradients(
      "quick_gelu", [](const std::vector<Var<double>>& v) { return ops::quick_gelu(v[0]); },
      {test::random_tensor<double>({3, 7}, 1, -6, 6)});
  const test::Fixture fx("ops_clipseg");
  auto run = [&](auto zero, double atol, double rtol) {
    using T = decltype(zero);
    Var<T> x(fx.get<T>("quick_gelu.x"), true);
    Var<T> y = ops::quick_gelu(x);
    y.backward(fx.get<T>("quick_gelu.dy"));
    const std::string tag = sizeof(T) == 4 ? "quick_gelu float" : "quick_gelu double";
    test::compare(tag + " y", y.data(), fx.get<double>("quick_gelu.y"), atol, rtol);
    test::compare(tag + " dx", x.grad(), fx.get<double>("quick_gelu.dx"), atol, rtol);
  };
  // float: |x| <= 15, so the rounding of 1.702 x moves the result by <= 26 ulp-relative of e^-25.
  run(float{}, 1e-6, 3e-6);
  run(double{}, 1e-14, 1e-13);
}

// ================================ causal attention ================================================

namespace {
struct AttnShape {
  int64_t B, N, C, heads;
};
}  // namespace

TEST_CASE("attention (causal): optimised kernels match the scalar twin, P is exactly 0 past the diagonal") {
  // d = 8 and 16 (the fused float kernel: 9 rows = one full and one partial 6-row tile, keys in a
  // partial 16-key panel), d = 64 at CLIP's 77 tokens, d = 3 and 5 (the GEMM path for float too),
  // N = 130 (two query blocks of 128: the second block's keys reach past the first).
  const std::vector<AttnShape> shapes = {{2, 9, 16, 2}, {2, 9, 32, 2}, {1, 77, 128, 2}, {1, 7, 6, 2},
                                         {2, 11, 10, 2}, {1, 130, 16, 1}, {1, 130, 24, 3}, {1, 1, 8, 1}};
  uint64_t seed = 300;
  for (const AttnShape& s : shapes) {
    INFO("B " << s.B << " N = M " << s.N << " C " << s.C << " heads " << s.heads);
    auto run = [&](auto zero) {
      using T = decltype(zero);
      const double tol = sizeof(T) == 4 ? 5e-6 : 1e-12;  // as the non-causal test: ~40 ulp of O(1) sums
      const int64_t N = s.N;
      const Tensor<T> q = test::random_tensor<T>({s.B, N, s.C}, seed, -2, 2);
      const Tensor<T> k = test::random_tensor<T>({s.B, N, s.C}, seed + 1, -2, 2);
      const Tensor<T> v = test::random_tensor<T>({s.B, N, s.C}, seed + 2);
      const Tensor<T> dy = test::random_tensor<T>({s.B, N, s.C}, seed + 3);
      Tensor<T> y_ref = Tensor<T>::empty(q.shape()), p_ref = Tensor<T>::empty({s.B, s.heads, N, N});
      kernels::attention_forward_ref(y_ref.data(), p_ref.data(), q.data(), k.data(), v.data(), s.B, N, N, s.C, s.heads, true);
      Tensor<T> dq_ref = Tensor<T>::empty(q.shape()), dk_ref = Tensor<T>::empty(k.shape()), dv_ref = Tensor<T>::empty(v.shape());
      kernels::attention_backward_ref(dq_ref.data(), dk_ref.data(), dv_ref.data(), dy.data(), q.data(), k.data(), v.data(),
                                      p_ref.data(), s.B, N, N, s.C, s.heads, true);
      // The twin itself: row n's probabilities sum to 1 over keys <= n and are 0 after.
      int bad_ref = 0;
      for (int64_t r = 0; r < s.B * s.heads * N; ++r) {
        const int64_t n = r % N;
        T sum = 0;
        for (int64_t m = 0; m < N; ++m) {
          if (m > n) bad_ref += p_ref.data()[r * N + m] != T(0);
          sum += p_ref.data()[r * N + m];
        }
        bad_ref += !(std::abs(sum - T(1)) < T(1e-5));
      }
      CHECK(bad_ref == 0);
      for_each_isa([&] {
        Tensor<T> y = Tensor<T>::empty(q.shape()), y_tiled = Tensor<T>::empty(q.shape());
        Tensor<T> p = Tensor<T>::full(p_ref.shape(), T(7));  // garbage: every entry must be written
        kernels::attention_forward(y.data(), p.data(), q.data(), k.data(), v.data(), s.B, N, N, s.C, s.heads, true);
        kernels::attention_forward(y_tiled.data(), static_cast<T*>(nullptr), q.data(), k.data(), v.data(), s.B, N, N, s.C,
                                   s.heads, true);
        test::compare("causal forward", y, y_ref, tol);
        test::compare("causal forward, no probs (tiled)", y_tiled, y_ref, tol);
        test::compare("causal probs", p, p_ref, tol);
        int masked_nonzero = 0;
        for (int64_t r = 0; r < s.B * s.heads * N; ++r)
          for (int64_t m = r % N + 1; m < N; ++m) masked_nonzero += p.data()[r * N + m] != T(0);
        CHECK(masked_nonzero == 0);
        Tensor<T> dq = Tensor<T>::empty(q.shape()), dk = Tensor<T>::empty(k.shape()), dv = Tensor<T>::empty(v.shape());
        kernels::attention_backward(dq.data(), dk.data(), dv.data(), dy.data(), q.data(), k.data(), v.data(), p.data(), s.B,
                                    N, N, s.C, s.heads, true);
        test::compare("causal dq", dq, dq_ref, tol);
        test::compare("causal dk", dk, dk_ref, tol);
        test::compare("causal dv", dv, dv_ref, tol);
      });
    };
    run(float{});
    run(double{});
    seed += 4;
  }
}

TEST_CASE("attention (causal): the last query row equals non-causal attention, the first reads only key 0") {
  const int64_t B = 1, N = 9, C = 16, heads = 2;
  const Tensor<float> q = test::random_tensor<float>({B, N, C}, 11, -2, 2), k = test::random_tensor<float>({B, N, C}, 12, -2, 2);
  const Tensor<float> v = test::random_tensor<float>({B, N, C}, 13);
  for_each_isa([&] {
    Tensor<float> yc = Tensor<float>::empty(q.shape()), yf = Tensor<float>::empty(q.shape());
    kernels::attention_forward(yc.data(), static_cast<float*>(nullptr), q.data(), k.data(), v.data(), B, N, N, C, heads, true);
    kernels::attention_forward(yf.data(), static_cast<float*>(nullptr), q.data(), k.data(), v.data(), B, N, N, C, heads);
    double last = 0, first = 0;
    for (int64_t c = 0; c < C; ++c) {
      last = std::max(last, static_cast<double>(std::abs(yc.data()[(N - 1) * C + c] - yf.data()[(N - 1) * C + c])));
      first = std::max(first, static_cast<double>(std::abs(yc.data()[c] - v.data()[c])));  // softmax of one key is 1
    }
    CHECK(last <= 1e-6);
    CHECK(first <= 1e-6);
  });
}

TEST_CASE("attention (causal): gradcheck (double) and matches HF CLIP's causal attention in PyTorch") {
  test::check_gradients(
      "causal attention B2 N5 C4 h2", [](const std::vector<Var<double>>& v) { return ops::attention(v[0], v[1], v[2], 2, true); },
      {test::random_tensor<double>({2, 5, 4}, 20, -2, 2), test::random_tensor<double>({2, 5, 4}, 21, -2, 2),
       test::random_tensor<double>({2, 5, 4}, 22)});
  test::check_gradients(
      "causal attention N7 C6 h3, k = v", [](const std::vector<Var<double>>& v) { return ops::attention(v[0], v[1], v[1], 3, true); },
      {test::random_tensor<double>({1, 7, 6}, 23, -2, 2), test::random_tensor<double>({1, 7, 6}, 24, -2, 2)});
  const test::Fixture fx("ops_clipseg");
  for (const std::string name : {"causal_d8", "causal_d16", "causal_d3"}) {
    auto run = [&](auto zero, double tol) {
      using T = decltype(zero);
      const int64_t heads = static_cast<int64_t>(fx.get<double>(name + ".heads").data()[0]);
      Var<T> q(fx.get<T>(name + ".q"), true), k(fx.get<T>(name + ".k"), true), v(fx.get<T>(name + ".v"), true);
      Var<T> y = ops::attention(q, k, v, heads, true);
      y.backward(fx.get<T>(name + ".dy"));
      const std::string tag = name + (sizeof(T) == 4 ? " float" : " double");
      test::compare(tag + " y", y.data(), fx.get<double>(name + ".y"), tol);
      test::compare(tag + " dq", q.grad(), fx.get<double>(name + ".dq"), tol);
      test::compare(tag + " dk", k.grad(), fx.get<double>(name + ".dk"), tol);
      test::compare(tag + " dv", v.grad(), fx.get<double>(name + ".dv"), tol);
    };
    run(float{}, 2e-5);  // float32 arithmetic on N(0,1) inputs (scores up to ~10) vs a float64 reference
    run(double{}, 1e-12);
  }
}

// ================================ conv_transpose2d ===============================================

namespace {
kernels::ConvTranspose2dGeometry ct_geo(int64_t B, int64_t Cin, int64_t H, int64_t W, int64_t Cout, int64_t KH, int64_t KW,
                                        int64_t s, int64_t p) {
  return {.B = B, .Cin = Cin, .H = H, .W = W, .Cout = Cout, .KH = KH, .KW = KW, .stride = s, .padding = p};
}
}  // namespace

TEST_CASE("conv_transpose2d: GEMM + col2im kernels and the channels-last helper match the scalar twin") {
  // CLIPSeg's head (kernel == stride, no padding, Cin 8 -> Cout 4 on 5x7), overlapping windows with
  // padding (k3 s2 p1), gaps between windows (k2 s3), padding that crops whole taps (k5 s1 p2),
  // a 1x1 input, and a larger head-like case (Cin 64 -> 32, k4 s4 on 22x22).
  const std::vector<kernels::ConvTranspose2dGeometry> cases = {
      ct_geo(2, 8, 5, 7, 4, 4, 4, 4, 0),  ct_geo(2, 3, 6, 5, 5, 3, 3, 2, 1), ct_geo(1, 4, 3, 4, 2, 2, 3, 3, 0),
      ct_geo(1, 3, 4, 4, 2, 5, 5, 1, 2),  ct_geo(3, 2, 1, 1, 3, 2, 2, 2, 0), ct_geo(1, 64, 22, 22, 32, 4, 4, 4, 0),
      ct_geo(2, 5, 4, 6, 3, 4, 4, 2, 1)};
  uint64_t seed = 400;
  for (const auto& g : cases) {
    INFO("B " << g.B << " Cin " << g.Cin << " " << g.H << "x" << g.W << " -> Cout " << g.Cout << " k " << g.KH << "x" << g.KW
              << " s " << g.stride << " p " << g.padding);
    auto run = [&](auto zero) {
      using T = decltype(zero);
      // float: GEMM sums of O(1) products in another order than the loops; the longest sum is over
      // Cin (y), Cout*KH*KW (dx) or B*H*W (dweight, dbias) terms: 1e-7 per term plus 1e-5.
      const int64_t terms = std::max({g.Cin, g.K(), g.B * g.P()});
      const double tol = sizeof(T) == 4 ? 1e-5 + 1e-7 * static_cast<double>(terms) : 1e-12;
      const Tensor<T> x = test::random_tensor<T>({g.B, g.Cin, g.H, g.W}, seed);
      const Tensor<T> w = test::random_tensor<T>({g.Cin, g.Cout, g.KH, g.KW}, seed + 1);
      const Tensor<T> b = test::random_tensor<T>({g.Cout}, seed + 2);
      const Tensor<T> dy = test::random_tensor<T>({g.B, g.Cout, g.OH(), g.OW()}, seed + 3);
      Tensor<T> y_ref = Tensor<T>::empty(dy.shape());
      kernels::conv_transpose2d_forward_ref(y_ref.data(), x.data(), w.data(), b.data(), g);
      Tensor<T> dx_ref = Tensor<T>::empty(x.shape()), dw_ref = Tensor<T>::empty(w.shape()), db_ref = Tensor<T>::empty({g.Cout});
      kernels::conv_transpose2d_backward_ref(dx_ref.data(), dw_ref.data(), db_ref.data(), dy.data(), x.data(), w.data(), g);
      for_each_isa([&] {
        Tensor<T> y = Tensor<T>::empty(dy.shape());
        kernels::conv_transpose2d_forward(y.data(), x.data(), w.data(), b.data(), g);
        test::compare("forward", y, y_ref, tol);
        Tensor<T> dx = Tensor<T>::empty(x.shape()), dw = Tensor<T>::empty(w.shape()), db = Tensor<T>::empty({g.Cout});
        kernels::conv_transpose2d_backward(dx.data(), dw.data(), db.data(), dy.data(), x.data(), w.data(), g);
        test::compare("dx", dx, dx_ref, tol);
        test::compare("dweight", dw, dw_ref, tol);
        test::compare("dbias", db, db_ref, tol);
        // Only dw wanted: the same dw.
        Tensor<T> dw_only = Tensor<T>::empty(w.shape());
        kernels::conv_transpose2d_backward(static_cast<T*>(nullptr), dw_only.data(), static_cast<T*>(nullptr), dy.data(),
                                           x.data(), w.data(), g);
        test::compare("dweight alone", dw_only, dw, 0);
        // Channels-last input, one image at a time: tokens (H*W, Cin) -> NCHW (Cout, OH, OW).
        for (int64_t n = 0; n < g.B; ++n) {
          Tensor<T> tokens = Tensor<T>::empty({g.H * g.W, g.Cin});
          for (int64_t c = 0; c < g.Cin; ++c)
            for (int64_t i = 0; i < g.H * g.W; ++i) tokens.data()[i * g.Cin + c] = x.data()[(n * g.Cin + c) * g.H * g.W + i];
          Tensor<T> yn = Tensor<T>::empty({g.Cout, g.OH(), g.OW()});
          kernels::conv_transpose2d_nhwc_forward(yn.data(), tokens.data(), w.data(), b.data(), g.H, g.W, g.Cin, g.Cout, g.KH,
                                                 g.KW, g.stride, g.padding);
          test::compare("nhwc forward, image " + std::to_string(n), yn, y_ref.slice(0, n, n + 1).reshape(yn.shape()), tol);
          // With the weight packed once: bit-identical to the unpacked call.
          const kernels::PackedB<T> packed(false, g.Cin, g.K(), w.data(), g.K());
          Tensor<T> yp = Tensor<T>::empty(yn.shape());
          kernels::conv_transpose2d_nhwc_forward(yp.data(), tokens.data(), packed, b.data(), g.H, g.W, g.Cin, g.Cout, g.KH,
                                                 g.KW, g.stride, g.padding);
          test::compare("nhwc forward, packed weight, image " + std::to_string(n), yp, yn, 0);
        }
      });
    };
    run(float{});
    run(double{});
    seed += 4;
  }
}

TEST_CASE("conv_transpose2d: gradcheck (double) and matches torch conv_transpose2d (forward and all grads)") {
  struct Case {
    Shape x, w;
    int64_t s, p;
    bool bias;
  };
  const std::vector<Case> cases = {{{2, 3, 2, 3}, {3, 2, 2, 2}, 2, 0, true},
                                   {{1, 2, 3, 3}, {2, 3, 3, 3}, 2, 1, true},
                                   {{1, 2, 2, 3}, {2, 1, 2, 3}, 3, 0, false},
                                   {{1, 1, 3, 4}, {1, 2, 3, 3}, 1, 2, true}};
  uint64_t seed = 40;
  for (const Case& c : cases) {
    std::vector<Tensor<double>> in = {test::random_tensor<double>(c.x, seed), test::random_tensor<double>(c.w, seed + 1)};
    if (c.bias) in.push_back(test::random_tensor<double>({c.w[1]}, seed + 2));
    test::check_gradients(
        "conv_transpose2d x " + shape_name(c.x) + " w " + shape_name(c.w) + " s" + std::to_string(c.s) + " p" + std::to_string(c.p),
        [&c](const std::vector<Var<double>>& v) {
          return ops::conv_transpose2d(v[0], v[1], c.bias ? v[2] : Var<double>(), c.s, c.p);
        },
        in);
    seed += 3;
  }
  const test::Fixture fx("ops_clipseg");
  for (const std::string name : {"convt_k4s4", "convt_k3s2p1", "convt_k2s3"}) {
    const Tensor<int64_t> sp = fx.get<int64_t>(name + ".stride");
    const bool has_bias = fx.contains(name + ".bias");
    auto run = [&](auto zero, double tol) {
      using T = decltype(zero);
      Var<T> x(fx.get<T>(name + ".x"), true), w(fx.get<T>(name + ".weight"), true);
      Var<T> b = has_bias ? Var<T>(fx.get<T>(name + ".bias"), true) : Var<T>();
      Var<T> y = ops::conv_transpose2d(x, w, b, sp.data()[0], sp.data()[1]);
      y.backward(fx.get<T>(name + ".dy"));
      const std::string tag = name + (sizeof(T) == 4 ? " float" : " double");
      test::compare(tag + " y", y.data(), fx.get<double>(name + ".y"), tol);
      test::compare(tag + " dx", x.grad(), fx.get<double>(name + ".dx"), tol);
      test::compare(tag + " dweight", w.grad(), fx.get<double>(name + ".dweight"), tol * 4);
      if (has_bias) test::compare(tag + " dbias", b.grad(), fx.get<double>(name + ".dbias"), tol * 4);
    };
    run(float{}, 1e-5);  // float32 sums of <= 70 products of N(0,1)-sized values vs float64
    run(double{}, 1e-12);
  }
}

// ================================ resize_bicubic ==================================================

TEST_CASE("resize_bicubic: separable kernels match the 16-tap scalar twin (float and double)") {
  struct Case {
    int64_t planes, H, W, OH, OW;
  };
  // CLIPSeg's position grid 14x14 -> 22x22 and 22x31, downscales (taps outside the image at both
  // ends), from and to 1x1, a 2-pixel input (every tap clamped), same size, a large upscale.
  const std::vector<Case> cases = {{3, 14, 14, 22, 22}, {2, 14, 14, 22, 31}, {4, 14, 14, 5, 9}, {2, 17, 13, 3, 4},
                                   {2, 1, 1, 4, 3},     {3, 6, 5, 1, 1},     {1, 2, 2, 7, 5},   {2, 9, 9, 9, 9},
                                   {2, 16, 16, 128, 96}};
  uint64_t seed = 600;
  for (const Case& c : cases) {
    INFO("planes " << c.planes << " " << c.H << "x" << c.W << " -> " << c.OH << "x" << c.OW);
    auto run = [&](auto zero) {
      using T = decltype(zero);
      // The same products summed in another order: |weights| sum to <= 1.5 per axis, so 2e-6 / 1e-14
      // forward; the backward sums up to (OH/H)(OW/W) * 2.25 of them (48 here): 2e-5 / 1e-13.
      const bool f32 = sizeof(T) == 4;
      const Tensor<T> x = test::random_tensor<T>({c.planes, c.H, c.W}, seed);
      const Tensor<T> dy = test::random_tensor<T>({c.planes, c.OH, c.OW}, seed + 1);
      Tensor<T> y_ref = Tensor<T>::empty(dy.shape()), dx_ref = Tensor<T>::empty(x.shape());
      kernels::resize_bicubic_forward_ref(y_ref.data(), x.data(), c.planes, c.H, c.W, c.OH, c.OW);
      kernels::resize_bicubic_backward_ref(dx_ref.data(), dy.data(), c.planes, c.H, c.W, c.OH, c.OW);
      for_each_isa([&] {
        Tensor<T> y = Tensor<T>::empty(dy.shape()), dx = Tensor<T>::empty(x.shape());
        kernels::resize_bicubic_forward(y.data(), x.data(), c.planes, c.H, c.W, c.OH, c.OW);
        kernels::resize_bicubic_backward(dx.data(), dy.data(), c.planes, c.H, c.W, c.OH, c.OW);
        test::compare("bicubic forward", y, y_ref, f32 ? 2e-6 : 1e-14);
        test::compare("bicubic backward", dx, dx_ref, f32 ? 2e-5 : 1e-13);
      });
      // Same size is the identity (weights 0, 1, 0, 0 exactly).
      if (c.H == c.OH && c.W == c.OW) test::compare("bicubic same size", y_ref, x, 0);
    };
    run(float{});
    run(double{});
    seed += 2;
  }
}

TEST_CASE("resize_bicubic: gradcheck (double) and matches torch interpolate(bicubic, align_corners=False)") {
  struct Case {
    Shape x;
    int64_t oh, ow;
  };
  const std::vector<Case> cases = {{{1, 2, 4, 4}, 7, 6}, {{1, 1, 6, 5}, 3, 2}, {{2, 1, 2, 3}, 5, 4}, {{1, 1, 1, 1}, 2, 3}};
  uint64_t seed = 70;
  for (const Case& c : cases)
    test::check_gradients(
        "resize_bicubic " + shape_name(c.x) + " -> " + std::to_string(c.oh) + "x" + std::to_string(c.ow),
        [&c](const std::vector<Var<double>>& v) { return ops::resize_bicubic(v[0], c.oh, c.ow); },
        {test::random_tensor<double>(c.x, seed++)});
  const test::Fixture fx("ops_clipseg");
  for (const std::string name : {"bicubic_up", "bicubic_up_nonsquare", "bicubic_down", "bicubic_odd"}) {
    const Tensor<double> y_want = fx.get<double>(name + ".y");
    auto run = [&](auto zero) {
      using T = decltype(zero);
      Var<T> x(fx.get<T>(name + ".x"), true);
      Var<T> y = ops::resize_bicubic(x, y_want.size(2), y_want.size(3));
      y.backward(fx.get<T>(name + ".dy"));
      if constexpr (sizeof(T) == 4) {
        // float32 index and weight arithmetic (as torch does for float) on N(0,1) inputs vs float64.
        test::compare(name + " float y", y.data(), y_want, 1e-5);
        test::compare(name + " float dx", x.grad(), fx.get<double>(name + ".dx"), 2e-5);
      } else {
        test::compare(name + " double y", y.data(), y_want, 1e-13);
        test::compare(name + " double dx", x.grad(), fx.get<double>(name + ".dx"), 1e-12);
      }
    };
    run(float{});
    run(double{});
  }
}

// ================================ embedding =======================================================

TEST_CASE("embedding: matches F.embedding (forward and dweight), gradcheck, ids of any rank") {
  const test::Fixture fx("ops_clipseg");
  const Tensor<int64_t> ids = fx.get<int64_t>("embedding.ids");
  auto run = [&](auto zero) {
    using T = decltype(zero);
    Var<T> w(fx.get<T>("embedding.weight"), true);
    Var<T> y = ops::embedding(w, ids);
    y.backward(fx.get<T>("embedding.dy"));
    const std::string tag = sizeof(T) == 4 ? "embedding float" : "embedding double";
    test::compare(tag + " y", y.data(), fx.get<double>("embedding.y"), 0);  // a copy
    test::compare(tag + " dweight", w.grad(), fx.get<double>("embedding.dweight"), sizeof(T) == 4 ? 1e-6 : 1e-15);
  };
  run(float{});
  run(double{});
  test::check_gradients(
      "embedding", [&ids](const std::vector<Var<double>>& v) { return ops::embedding(v[0], ids); },
      {test::random_tensor<double>({11, 3}, 80)});
  // Rank 0 ids give one row of shape (D); rank 1, (n, D).
  Var<float> w(test::random_tensor<float>({5, 4}, 81));
  const Tensor<int64_t> scalar_id = Tensor<int64_t>::from({}, {3});
  const Var<float> row = ops::embedding(w, scalar_id);
  REQUIRE(row.shape() == Shape{4});
  for (int64_t c = 0; c < 4; ++c) CHECK(row.data().data()[c] == w.data().data()[3 * 4 + c]);
  CHECK(ops::embedding(w, Tensor<int64_t>::from({3}, {0, 4, 0})).shape() == (Shape{3, 4}));
  CHECK(ops::embedding(w, Tensor<int64_t>::zeros({2, 0})).shape() == (Shape{2, 0, 4}));
}

// ================================ graph behaviour and errors ======================================

TEST_CASE("clipseg ops: no graph under NoGradGuard") {
  Var<float> x(test::random_tensor<float>({1, 2, 3, 3}, 1), true), w(test::random_tensor<float>({2, 2, 2, 2}, 2), true);
  Var<float> q(test::random_tensor<float>({1, 4, 4}, 3), true);
  NoGradGuard ng;
  CHECK(!ops::quick_gelu(x).requires_grad());
  CHECK(!ops::attention(q, q, q, 2, true).requires_grad());
  CHECK(!ops::conv_transpose2d(x, w, Var<float>(), 2).requires_grad());
  CHECK(!ops::resize_bicubic(x, 5, 4).requires_grad());
  CHECK(!ops::embedding(ops::reshape(w, {4, 4}), Tensor<int64_t>::from({2}, {1, 3})).requires_grad());
}

TEST_CASE("clipseg ops: bad shapes and ids throw segml::Error naming the op and the shapes") {
  Var<float> q(Tensor<float>::zeros({1, 4, 6})), k(Tensor<float>::zeros({1, 3, 6}));
  CHECK_THROWS_WITH_AS(ops::attention(q, k, k, 2, true),
                       doctest::Contains("attention: causal attention needs as many keys as queries, got q [1, 4, 6] and k/v [1, 3, 6]"),
                       Error);
  {
    std::vector<float> buf(64);
    CHECK_THROWS_WITH_AS(kernels::attention_forward(buf.data(), static_cast<float*>(nullptr), buf.data(), buf.data(),
                                                    buf.data(), 1, 4, 3, 2, 1, true),
                         doctest::Contains("attention_forward: causal attention needs as many keys as queries, got N = 4"),
                         Error);
  }

  Var<float> x(Tensor<float>::zeros({1, 3, 4, 5})), w(Tensor<float>::zeros({3, 2, 2, 2}));
  CHECK_THROWS_WITH_AS(ops::conv_transpose2d(x, Var<float>(Tensor<float>::zeros({2, 2, 2, 2})), Var<float>(), 2),
                       doctest::Contains("conv_transpose2d: weight [2, 2, 2, 2] expects 2 input channels but input [1, 3, 4, 5] has 3"),
                       Error);
  CHECK_THROWS_WITH_AS(ops::conv_transpose2d(ops::reshape(x, {3, 4, 5}), w, Var<float>(), 2),
                       doctest::Contains("conv_transpose2d: expected input (B, Cin, H, W) and weight (Cin, Cout, KH, KW), got [3, 4, 5]"),
                       Error);
  CHECK_THROWS_WITH_AS(ops::conv_transpose2d(x, w, Var<float>(Tensor<float>::zeros({3})), 2),
                       doctest::Contains("conv_transpose2d: bias [3] does not match weight [3, 2, 2, 2]"), Error);
  CHECK_THROWS_WITH_AS(ops::conv_transpose2d(x, w, Var<float>(), 0), doctest::Contains("conv_transpose2d: invalid stride 0"), Error);
  CHECK_THROWS_WITH_AS(ops::conv_transpose2d(x, w, Var<float>(), 1, -1), doctest::Contains("or padding -1"), Error);
  CHECK_THROWS_WITH_AS(ops::conv_transpose2d(Var<float>(Tensor<float>::zeros({1, 3, 1, 1})), w, Var<float>(), 1, 1),
                       doctest::Contains("give an empty output (0 x 0)"), Error);

  CHECK_THROWS_WITH_AS(ops::resize_bicubic(x, 0, 3), doctest::Contains("resize_bicubic: input [1, 3, 4, 5] and output size (0, 3)"),
                       Error);
  CHECK_THROWS_WITH_AS(ops::resize_bicubic(ops::reshape(x, {3, 4, 5}), 3, 3),
                       doctest::Contains("resize_bicubic: expected x of rank 4 (B, C, H, W), got [3, 4, 5]"), Error);

  Var<float> table(Tensor<float>::zeros({5, 3}));
  CHECK_THROWS_WITH_AS(ops::embedding(table, Tensor<int64_t>::from({2, 2}, {0, 1, 5, 2})),
                       doctest::Contains("embedding: id 5 at position [1, 0] of ids [2, 2] is outside [0, 5) for weight [5, 3]"),
                       Error);
  CHECK_THROWS_WITH_AS(ops::embedding(table, Tensor<int64_t>::from({3}, {-1, 0, 0})),
                       doctest::Contains("embedding: id -1 at position [0]"), Error);
  CHECK_THROWS_WITH_AS(ops::embedding(ops::reshape(table, {15}), Tensor<int64_t>::from({1}, {0})),
                       doctest::Contains("embedding: expected weight (V, D), got [15]"), Error);
  CHECK_THROWS_WITH_AS(ops::embedding(Var<float>(Tensor<float>::zeros({0, 3})), Tensor<int64_t>::from({1}, {0})),
                       doctest::Contains("embedding: weight [0, 3] is empty"), Error);
}
