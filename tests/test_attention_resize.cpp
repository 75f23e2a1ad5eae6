// Tests for ops::attention, ops::resize_bilinear and ops::concat: finite-difference gradients in
// double, optimised kernels vs their scalar twins for every ISA this CPU has, PyTorch fixtures
// (tools/fixtures/ops_attention.py) for forward outputs and input gradients, and shape errors.
#include <doctest/doctest.h>

#include <string>
#include <tuple>
#include <vector>

#include <segml/core/cpu.hpp>
#include <segml/ops/attention.hpp>
#include <segml/ops/concat.hpp>
#include <segml/ops/elementwise.hpp>
#include <segml/ops/resize.hpp>

#include "support.hpp"

using namespace segml;

namespace {

// Runs body once per ISA up to what the hardware supports (gemm and friends dispatch on it).
template <class F>
void for_each_isa(F&& body) {
  for (Isa i : supported_isas()) {
    ScopedIsa s(i);
    INFO("isa " << std::string(isa_name(i)));
    body();
  }
}

struct AttnShape {
  int64_t B, N, M, C, heads;
};

}  // namespace

// ---- finite-difference gradients (double) -------------------------------------------------------

TEST_CASE("attention: gradcheck, N != M, heads 1, 2, 5 with d = 1..4") {
  const std::vector<AttnShape> shapes = {
      {2, 5, 3, 4, 1},  // d = 4
      {1, 4, 6, 6, 2},  // d = 3
      {1, 3, 2, 5, 5},  // d = 1
      {1, 7, 3, 10, 5}, // d = 2
      {1, 130, 3, 2, 1} // two query blocks, the second partial
  };
  uint64_t seed = 10;
  for (const AttnShape& s : shapes) {
    const std::string name = "attention B" + std::to_string(s.B) + " N" + std::to_string(s.N) + " M" +
                             std::to_string(s.M) + " C" + std::to_string(s.C) + " h" + std::to_string(s.heads);
    test::check_gradients(
        name, [h = s.heads](const std::vector<Var<double>>& v) { return ops::attention(v[0], v[1], v[2], h); },
        {test::random_tensor<double>({s.B, s.N, s.C}, seed, -2, 2), test::random_tensor<double>({s.B, s.M, s.C}, seed + 1, -2, 2),
         test::random_tensor<double>({s.B, s.M, s.C}, seed + 2)});
    seed += 3;
  }
  // k and v from one tensor: both gradients must accumulate into it.
  test::check_gradients(
      "attention k = v", [](const std::vector<Var<double>>& v) { return ops::attention(v[0], v[1], v[1], 2); },
      {test::random_tensor<double>({1, 5, 4}, 40), test::random_tensor<double>({1, 3, 4}, 41)});
}

TEST_CASE("resize_bilinear: gradcheck up, down, odd, to and from 1x1") {
  struct Case {
    Shape x;
    int64_t oh, ow;
  };
  const std::vector<Case> cases = {{{2, 2, 3, 4}, 7, 5}, {{1, 2, 9, 7}, 4, 3}, {{1, 1, 5, 6}, 5, 11},
                                   {{1, 3, 4, 3}, 1, 1}, {{1, 1, 1, 1}, 3, 2}, {{1, 1, 6, 4}, 6, 4}};
  uint64_t seed = 50;
  for (const Case& c : cases) {
    test::check_gradients(
        "resize " + shape_str(c.x) + " -> " + std::to_string(c.oh) + "x" + std::to_string(c.ow),
        [&c](const std::vector<Var<double>>& v) { return ops::resize_bilinear(v[0], c.oh, c.ow); },
        {test::random_tensor<double>(c.x, seed++)});
  }
}

TEST_CASE("concat: gradcheck along channels, the last dim and a negative dim") {
  auto f = [](int64_t dim) {
    return [dim](const std::vector<Var<double>>& v) { return ops::concat<double>({v[0], v[1], v[2]}, dim); };
  };
  test::check_gradients("concat dim 1", f(1),
                        {test::random_tensor<double>({2, 3, 2, 3}, 60), test::random_tensor<double>({2, 1, 2, 3}, 61),
                         test::random_tensor<double>({2, 2, 2, 3}, 62)});
  test::check_gradients("concat dim 3", f(3),
                        {test::random_tensor<double>({1, 2, 2, 3}, 63), test::random_tensor<double>({1, 2, 2, 1}, 64),
                         test::random_tensor<double>({1, 2, 2, 2}, 65)});
  test::check_gradients("concat dim -2", f(-2),
                        {test::random_tensor<double>({3, 1, 2}, 66), test::random_tensor<double>({3, 4, 2}, 67),
                         test::random_tensor<double>({3, 2, 2}, 68)});
  // An input used twice receives both slices.
  test::check_gradients(
      "concat x with itself", [](const std::vector<Var<double>>& v) { return ops::concat<double>({v[0], v[1], v[0]}, 0); },
      {test::random_tensor<double>({2, 3}, 69), test::random_tensor<double>({1, 3}, 70)});
}

// ---- optimised kernels vs scalar twins ---------------------------------------------------------

TEST_CASE("attention: optimised kernels match the scalar twin (float and double)") {
  // Shapes hit a partial last block of 128 query rows, N < one block, odd M and d = 1, 2, 5 (the
  // GEMM path); for float on AVX2 the fused kernel takes d = 8, 16, 24, 32, 64 (a multiple of 8):
  // N not a multiple of its 6 rows, M not a multiple of its 16 keys, d with an 8-channel tail; on
  // AVX-512, d = 16, 32, 48, 64 take the zmm products (pairs of 16-key panels, a 16-channel tail).
  const std::vector<AttnShape> shapes = {{1, 300, 37, 20, 4}, {2, 13, 7, 10, 5},   {1, 129, 1, 3, 3},
                                         {1, 64, 64, 32, 2},  {3, 5, 9, 16, 1},    {1, 131, 37, 48, 2},
                                         {2, 200, 256, 64, 1}, {1, 7, 17, 8, 1},   {1, 1, 1, 8, 1},
                                         {1, 130, 300, 96, 3}, {2, 257, 16, 160, 5}, {1, 50, 60, 96, 2}};
  uint64_t seed = 100;
  for (const AttnShape& s : shapes) {
    INFO("B " << s.B << " N " << s.N << " M " << s.M << " C " << s.C << " heads " << s.heads);
    auto run = [&](auto zero) {
      using T = decltype(zero);
      // float: the GEMMs sum in another order than the plain loops; values here are O(1) sums of at
      // most 300 O(1) terms, so 5e-6 absolute is ~40 ulp of an O(1) result. double: 1e-12.
      const double tol = sizeof(T) == 4 ? 5e-6 : 1e-12;
      const Tensor<T> q = test::random_tensor<T>({s.B, s.N, s.C}, seed, -2, 2);
      const Tensor<T> k = test::random_tensor<T>({s.B, s.M, s.C}, seed + 1, -2, 2);
      const Tensor<T> v = test::random_tensor<T>({s.B, s.M, s.C}, seed + 2);
      const Tensor<T> dy = test::random_tensor<T>({s.B, s.N, s.C}, seed + 3);
      Tensor<T> y_ref = Tensor<T>::empty(q.shape()), p_ref = Tensor<T>::empty({s.B, s.heads, s.N, s.M});
      kernels::attention_forward_ref(y_ref.data(), p_ref.data(), q.data(), k.data(), v.data(), s.B, s.N, s.M, s.C, s.heads);
      Tensor<T> dq_ref = Tensor<T>::empty(q.shape()), dk_ref = Tensor<T>::empty(k.shape()), dv_ref = Tensor<T>::empty(v.shape());
      kernels::attention_backward_ref(dq_ref.data(), dk_ref.data(), dv_ref.data(), dy.data(), q.data(), k.data(), v.data(),
                                      p_ref.data(), s.B, s.N, s.M, s.C, s.heads);
      for_each_isa([&] {
        Tensor<T> y = Tensor<T>::empty(q.shape()), y_tiled = Tensor<T>::empty(q.shape());
        Tensor<T> p = Tensor<T>::empty(p_ref.shape());
        kernels::attention_forward(y.data(), p.data(), q.data(), k.data(), v.data(), s.B, s.N, s.M, s.C, s.heads);
        kernels::attention_forward(y_tiled.data(), static_cast<T*>(nullptr), q.data(), k.data(), v.data(), s.B, s.N, s.M,
                                   s.C, s.heads);
        test::compare("forward", y, y_ref, tol);
        test::compare("forward, no probs (tiled)", y_tiled, y_ref, tol);
        test::compare("probs", p, p_ref, tol);
        Tensor<T> dq = Tensor<T>::empty(q.shape()), dk = Tensor<T>::empty(k.shape()), dv = Tensor<T>::empty(v.shape());
        kernels::attention_backward(dq.data(), dk.data(), dv.data(), dy.data(), q.data(), k.data(), v.data(), p.data(), s.B,
                                    s.N, s.M, s.C, s.heads);
        test::compare("dq", dq, dq_ref, tol);
        test::compare("dk", dk, dk_ref, tol);
        test::compare("dv", dv, dv_ref, tol);
        // Gradients not asked for are skipped; the others are unchanged.
        Tensor<T> dk_only = Tensor<T>::empty(k.shape());
        kernels::attention_backward(static_cast<T*>(nullptr), dk_only.data(), static_cast<T*>(nullptr), dy.data(), q.data(),
                                    k.data(), v.data(), p.data(), s.B, s.N, s.M, s.C, s.heads);
        test::compare("dk alone", dk_only, dk, 0);
      });
    };
    run(float{});
    run(double{});
    seed += 4;
  }
}

TEST_CASE("attention: the AVX-512 products of the fused kernel equal the AVX2 ones bit for bit") {
  if (!isa_supported(Isa::avx512)) return;  // nothing to compare on this machine
  // M: one partial 16-key panel, a full pair, pairs plus a full and a partial single panel; d: one
  // 16-channel pass, one 32, 32 + 16.
  const std::vector<AttnShape> shapes = {{1, 13, 9, 16, 1}, {1, 40, 32, 64, 2}, {2, 31, 60, 96, 2}, {1, 20, 300, 48, 1}};
  uint64_t seed = 900;
  for (const AttnShape& s : shapes) {
    INFO("B " << s.B << " N " << s.N << " M " << s.M << " C " << s.C << " heads " << s.heads);
    const Tensor<float> q = test::random_tensor<float>({s.B, s.N, s.C}, seed, -2, 2);
    const Tensor<float> k = test::random_tensor<float>({s.B, s.M, s.C}, seed + 1, -2, 2);
    const Tensor<float> v = test::random_tensor<float>({s.B, s.M, s.C}, seed + 2);
    const Tensor<float> dy = test::random_tensor<float>({s.B, s.N, s.C}, seed + 3);
    std::vector<Tensor<float>> got[2];
    for (int wide = 0; wide < 2; ++wide) {
      ScopedIsa scoped(wide ? Isa::avx512 : Isa::avx2);
      Tensor<float> y = Tensor<float>::empty(q.shape()), y_tiled = Tensor<float>::empty(q.shape());
      Tensor<float> p = Tensor<float>::empty({s.B, s.heads, s.N, s.M});
      Tensor<float> dq = Tensor<float>::empty(q.shape());
      kernels::attention_forward(y.data(), p.data(), q.data(), k.data(), v.data(), s.B, s.N, s.M, s.C, s.heads);
      kernels::attention_forward(y_tiled.data(), static_cast<float*>(nullptr), q.data(), k.data(), v.data(), s.B, s.N, s.M,
                                 s.C, s.heads);
      // dq only: dk and dv are GEMMs, which block differently per ISA.
      kernels::attention_backward(dq.data(), static_cast<float*>(nullptr), static_cast<float*>(nullptr), dy.data(), q.data(),
                                  k.data(), v.data(), p.data(), s.B, s.N, s.M, s.C, s.heads);
      got[wide] = {y, y_tiled, p, dq};
    }
    const char* names[] = {"forward", "forward, no probs", "probs", "dq"};
    for (int t = 0; t < 4; ++t) test::compare(names[t], got[1][t], got[0][t], 0);
    seed += 4;
  }
}

TEST_CASE("resize_bilinear: separable kernels match the four-tap scalar twin (float and double)") {
  struct Case {
    int64_t planes, H, W, OH, OW;
  };
  const std::vector<Case> cases = {{3, 16, 16, 128, 128}, {5, 17, 13, 5, 4}, {2, 7, 9, 29, 31}, {4, 6, 5, 1, 1},
                                   {2, 1, 1, 4, 3},      {3, 64, 64, 128, 128}, {2, 128, 96, 33, 50}, {1, 9, 9, 9, 9}};
  uint64_t seed = 200;
  for (const Case& c : cases) {
    INFO("planes " << c.planes << " " << c.H << "x" << c.W << " -> " << c.OH << "x" << c.OW);
    auto run = [&](auto zero) {
      using T = decltype(zero);
      // The forward evaluates the same expression in the same order as the twin; only a compiler's
      // FMA contraction (aarch64) can change a rounding, so 1e-6 (float) / 1e-14 (double). The
      // backward sums each input pixel's contributions in another order; their total weight is up to
      // (OH/H)(OW/W) = 64 here, so 2e-5 (~5 ulp of 64) / 1e-13.
      const bool f32 = sizeof(T) == 4;
      const Tensor<T> x = test::random_tensor<T>({c.planes, c.H, c.W}, seed);
      const Tensor<T> dy = test::random_tensor<T>({c.planes, c.OH, c.OW}, seed + 1);
      Tensor<T> y_ref = Tensor<T>::empty(dy.shape()), dx_ref = Tensor<T>::empty(x.shape());
      kernels::resize_bilinear_forward_ref(y_ref.data(), x.data(), c.planes, c.H, c.W, c.OH, c.OW);
      kernels::resize_bilinear_backward_ref(dx_ref.data(), dy.data(), c.planes, c.H, c.W, c.OH, c.OW);
      for_each_isa([&] {
        Tensor<T> y = Tensor<T>::empty(dy.shape()), dx = Tensor<T>::empty(x.shape());
        kernels::resize_bilinear_forward(y.data(), x.data(), c.planes, c.H, c.W, c.OH, c.OW);
        kernels::resize_bilinear_backward(dx.data(), dy.data(), c.planes, c.H, c.W, c.OH, c.OW);
        test::compare("resize forward", y, y_ref, f32 ? 1e-6 : 1e-14);
        test::compare("resize backward", dx, dx_ref, f32 ? 2e-5 : 1e-13);
      });
    };
    run(float{});
    run(double{});
    seed += 2;
  }
}

// ---- PyTorch fixtures ------------------------------------------------------------------------

TEST_CASE("attention: matches HF SegFormer attention in PyTorch (forward and input grads)") {
  const test::Fixture fx("ops_attention");
  for (const std::string name : {"attn_a", "attn_b", "attn_c", "attn_d", "attn_e"}) {
    auto run = [&](auto zero, double tol) {
      using T = decltype(zero);
      const int64_t heads = static_cast<int64_t>(fx.get<double>(name + ".heads").data()[0]);
      Var<T> q(fx.get<T>(name + ".q"), true), k(fx.get<T>(name + ".k"), true), v(fx.get<T>(name + ".v"), true);
      Var<T> y = ops::attention(q, k, v, heads);
      y.backward(fx.get<T>(name + ".dy"));
      const std::string tag = name + (sizeof(T) == 4 ? " float" : " double");
      test::compare(tag + " y", y.data(), fx.get<double>(name + ".y"), tol);
      test::compare(tag + " dq", q.grad(), fx.get<double>(name + ".dq"), tol);
      test::compare(tag + " dk", k.grad(), fx.get<double>(name + ".dk"), tol);
      test::compare(tag + " dv", v.grad(), fx.get<double>(name + ".dv"), tol);
    };
    run(float{}, 1e-5);  // float32 arithmetic vs a float64 reference
    run(double{}, 1e-12);
  }
}

TEST_CASE("resize_bilinear: matches torch interpolate(bilinear, align_corners=False) (forward and input grad)") {
  const test::Fixture fx("ops_attention");
  for (const std::string name : {"resize_down", "resize_up8", "resize_up_odd", "resize_to1", "resize_row", "resize_from1",
                                 "resize_same", "resize_mixed"}) {
    const Tensor<double> y_want = fx.get<double>(name + ".y");
    auto run = [&](auto zero) {
      using T = decltype(zero);
      Var<T> x(fx.get<T>(name + ".x"), true);
      Var<T> y = ops::resize_bilinear(x, y_want.size(2), y_want.size(3));
      y.backward(fx.get<T>(name + ".dy"));
      if constexpr (sizeof(T) == 4) {
        // float32 arithmetic, including the source index and λ as PyTorch computes them for float
        // (|dλ| ~ 1e-7 * in/out), vs the float64 reference. (torch's own float32 result is as far.)
        test::compare(name + " float y", y.data(), y_want, 2e-6);
        test::compare(name + " float dx", x.grad(), fx.get<double>(name + ".dx"), 5e-6);
      } else {
        test::compare(name + " double y", y.data(), y_want, 1e-14);
        test::compare(name + " double dx", x.grad(), fx.get<double>(name + ".dx"), 1e-13);
      }
    };
    run(float{});
    run(double{});
  }
}

TEST_CASE("concat: matches torch.cat (forward and input grads)") {
  const test::Fixture fx("ops_attention");
  for (const auto& [name, n, dim] : {std::tuple<std::string, int, int64_t>{"concat_dim1", 3, 1}, {"concat_last", 2, -1}}) {
    std::vector<Var<float>> xs;
    for (int i = 0; i < n; ++i) xs.emplace_back(fx.get<float>(name + ".x" + std::to_string(i)), true);
    Var<float> y = ops::concat(xs, dim);
    y.backward(fx.get<float>(name + ".dy"));
    test::compare(name + " y", y.data(), fx.get<double>(name + ".y"), 0);
    for (int i = 0; i < n; ++i)
      test::compare(name + " dx" + std::to_string(i), xs[static_cast<size_t>(i)].grad(),
                    fx.get<double>(name + ".dx" + std::to_string(i)), 0);
  }
}

// ---- graph behaviour and errors ----------------------------------------------------------------

TEST_CASE("attention, resize, concat: no graph under NoGradGuard and only wanted gradients are made") {
  Var<float> q(test::random_tensor<float>({1, 4, 4}, 1), true), kv(test::random_tensor<float>({1, 2, 4}, 2), false);
  {
    NoGradGuard ng;
    CHECK(!ops::attention(q, kv, kv, 2).requires_grad());
    CHECK(!ops::resize_bilinear(ops::reshape(q, {1, 1, 4, 4}), 3, 3).requires_grad());
    CHECK(!ops::concat<float>({q, kv}, 1).requires_grad());
  }
  Var<float> y = ops::attention(q, kv, kv, 2);
  ops::sum(ops::concat<float>({y, kv}, 1)).backward();
  CHECK(q.grad().defined());
  CHECK(!kv.grad().defined());
}

TEST_CASE("attention, resize, concat: bad shapes throw segml::Error naming the op and the shapes") {
  Var<float> q(Tensor<float>::zeros({1, 4, 6})), k(Tensor<float>::zeros({1, 3, 6})), v(Tensor<float>::zeros({1, 3, 6}));
  CHECK_THROWS_WITH_AS(ops::attention(q, k, v, 4), doctest::Contains("attention: 6 channels (q [1, 4, 6]) are not divisible by heads = 4"),
                       Error);
  CHECK_THROWS_WITH_AS(ops::attention(q, k, v, 0), doctest::Contains("not divisible by heads = 0"), Error);
  CHECK_THROWS_WITH_AS(ops::attention(q, k, Var<float>(Tensor<float>::zeros({1, 2, 6})), 2),
                       doctest::Contains("attention: k [1, 3, 6] and v [1, 2, 6] must have the same shape"), Error);
  CHECK_THROWS_WITH_AS(ops::attention(q, Var<float>(Tensor<float>::zeros({1, 3, 4})), Var<float>(Tensor<float>::zeros({1, 3, 4})), 2),
                       doctest::Contains("do not match q [1, 4, 6]"), Error);
  CHECK_THROWS_WITH_AS(ops::attention(ops::reshape(q, {4, 6}), k, v, 2), doctest::Contains("attention: expected q, k, v of rank 3"),
                       Error);

  Var<float> x(Tensor<float>::zeros({1, 2, 4, 4}));
  CHECK_THROWS_WITH_AS(ops::resize_bilinear(x, 0, 3), doctest::Contains("resize_bilinear: input [1, 2, 4, 4] and output size (0, 3)"),
                       Error);
  CHECK_THROWS_WITH_AS(ops::resize_bilinear(x, 3, -1), doctest::Contains("must be greater than 0"), Error);
  CHECK_THROWS_WITH_AS(ops::resize_bilinear(ops::reshape(x, {2, 4, 4}), 3, 3), doctest::Contains("expected x of rank 4"), Error);

  Var<float> a(Tensor<float>::zeros({1, 2, 3, 3})), b(Tensor<float>::zeros({1, 2, 4, 3}));
  CHECK_THROWS_WITH_AS(ops::concat<float>({a, b}, 1), doctest::Contains("concat: shape [1, 2, 4, 3] does not match [1, 2, 3, 3] outside dim 1"),
                       Error);
  CHECK_THROWS_WITH_AS(ops::concat<float>({a, ops::reshape(a, {2, 3, 3})}, 1), doctest::Contains("does not match"), Error);
  CHECK_THROWS_WITH_AS(ops::concat<float>({a, b}, 4), doctest::Contains("concat: dim 4 out of range"), Error);
  CHECK_THROWS_WITH_AS(ops::concat<float>({}, 0), doctest::Contains("concat: expected at least one input"), Error);
}
