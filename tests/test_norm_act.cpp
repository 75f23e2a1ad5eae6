// Tests for LayerNorm, BatchNorm2d, exact GELU, ReLU and softmax: every SIMD kernel against its
// scalar twin on every ISA this CPU has,
// finite-difference gradients in double, PyTorch fixtures (forward and backward), bad shapes.
#include <doctest/doctest.h>

#include <cmath>
#include <limits>
#include <vector>

#include <segml/ops/activation.hpp>
#include <segml/ops/norm.hpp>

#include "support.hpp"

using namespace segml;

namespace {

// Every ISA this machine can run, lowest first (scalar exercises the portable dispatch path).
std::vector<Isa> isas() {
  return supported_isas();
}

Tensor<float> randf(const Shape& s, uint64_t seed, double lo = -1, double hi = 1) {
  return test::random_tensor<float>(s, seed, lo, hi);
}

}  // namespace

// The accuracy of exp / erf / Phi on every backend is tests/test_simd.cpp's.

// ---- SIMD vs scalar twins ------------------------------------------------------------------------
namespace {
// Row lengths hitting every remainder of 8 and 16, plus SegFormer's channel counts.
std::vector<int64_t> lengths() {
  std::vector<int64_t> v;
  for (int64_t n = 1; n <= 33; ++n) v.push_back(n);
  for (int64_t n : {47, 64, 160, 256, 1000}) v.push_back(n);
  return v;
}
}  // namespace

TEST_CASE("activations: GELU / ReLU SIMD vs scalar twin, every ISA and remainder") {
  for (Isa isa : isas()) {
    ScopedIsa scope(isa);
    for (int64_t n : lengths()) {
      // Wide range: both GELU tails, including where Phi underflows.
      const Tensor<float> x = randf({n}, 100 + static_cast<uint64_t>(n), -16, 16), dy = randf({n}, 7);
      Tensor<float> y = Tensor<float>::empty({n}), yr = Tensor<float>::empty({n});
      Tensor<float> dx = Tensor<float>::empty({n}), dxr = Tensor<float>::empty({n});
      // GELU's oracle is the double twin on the same float inputs (the float twin computes in
      // double too, so on the scalar ISA this checks its final rounding).
      const Tensor<double> xd = x.to<double>(), dyd = dy.to<double>();
      Tensor<double> yd = Tensor<double>::empty({n}), dxd = Tensor<double>::empty({n});
      kernels::gelu_forward(y.data(), x.data(), n);
      kernels::gelu_forward_ref(yd.data(), xd.data(), n);
      kernels::gelu_backward(dx.data(), x.data(), dy.data(), n);
      kernels::gelu_backward_ref(dxd.data(), xd.data(), dyd.data(), n);
      CAPTURE(std::string(isa_name(isa)));
      CAPTURE(n);
      // gelu: relative 2e-6 (Phi within 1e-6, see simd/math.hpp) down to 1e-37 (where Phi underflows);
      // gelu': plus an absolute 1e-6 for the cancellation near its zero at x ~ -0.75.
      for (int64_t i = 0; i < n; ++i) {
        CHECK(std::abs(y.data()[i] - yd.data()[i]) <= 1e-37 + 2e-6 * std::abs(yd.data()[i]));
        CHECK(std::abs(dx.data()[i] - dxd.data()[i]) <= 1e-6 + 2e-6 * std::abs(dxd.data()[i]));
      }
      // ReLU: exact.
      kernels::relu_forward(y.data(), x.data(), n);
      kernels::relu_forward_ref(yr.data(), x.data(), n);
      kernels::relu_backward(dx.data(), yr.data(), dy.data(), n);
      kernels::relu_backward_ref(dxr.data(), yr.data(), dy.data(), n);
      CHECK(test::max_abs_diff(y, yr) == 0);
      CHECK(test::max_abs_diff(dx, dxr) == 0);
    }
  }
}

TEST_CASE("softmax: SIMD vs scalar twin, every ISA and remainder") {
  for (Isa isa : isas()) {
    ScopedIsa scope(isa);
    for (int64_t cols : lengths()) {
      const int64_t rows = 3;
      const Tensor<float> x = randf({rows, cols}, 200 + static_cast<uint64_t>(cols), -20, 20), dy = randf({rows, cols}, 9);
      Tensor<float> y = Tensor<float>::empty({rows, cols}), yr = Tensor<float>::empty({rows, cols});
      Tensor<float> dx = Tensor<float>::empty({rows, cols}), dxr = Tensor<float>::empty({rows, cols});
      kernels::softmax_forward(y.data(), x.data(), rows, cols);
      kernels::softmax_forward_ref(yr.data(), x.data(), rows, cols);
      kernels::softmax_backward(dx.data(), yr.data(), dy.data(), rows, cols);
      kernels::softmax_backward_ref(dxr.data(), yr.data(), dy.data(), rows, cols);
      CAPTURE(std::string(isa_name(isa)));
      CAPTURE(cols);
      // probabilities: 1 ulp exp + float sums of <= 1000 terms -> within 2e-6 relative, 1e-9 absolute
      for (int64_t i = 0; i < rows * cols; ++i) CHECK(std::abs(y.data()[i] - yr.data()[i]) <= 1e-9 + 2e-6 * yr.data()[i]);
      CHECK(test::max_abs_diff(dx, dxr) <= 1e-6);  // |dy| <= 1, sum in float vs double
    }
  }
}

TEST_CASE("layernorm: SIMD vs scalar twin, every ISA and remainder and dweight reduction is deterministic") {
  for (Isa isa : isas()) {
    ScopedIsa scope(isa);
    for (int64_t C : lengths()) {
      const int64_t rows = 70;  // more than one 64-row block per chunk
      const Tensor<float> x = randf({rows, C}, 300 + static_cast<uint64_t>(C), -3, 5), w = randf({C}, 1, 0.5, 1.5),
                          b = randf({C}, 2), dy = randf({rows, C}, 3);
      Tensor<float> y = Tensor<float>::empty({rows, C}), yr = Tensor<float>::empty({rows, C});
      Tensor<float> mean = Tensor<float>::empty({rows}), rstd = Tensor<float>::empty({rows});
      Tensor<float> meanr = Tensor<float>::empty({rows}), rstdr = Tensor<float>::empty({rows});
      kernels::layernorm_forward(y.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(), rows, C, 1e-5f);
      kernels::layernorm_forward_ref(yr.data(), meanr.data(), rstdr.data(), x.data(), w.data(), b.data(), rows, C, 1e-5f);
      Tensor<float> dx = Tensor<float>::empty({rows, C}), dxr = Tensor<float>::empty({rows, C});
      Tensor<float> dw = Tensor<float>::empty({C}), db = Tensor<float>::empty({C});
      Tensor<float> dwr = Tensor<float>::empty({C}), dbr = Tensor<float>::empty({C});
      kernels::layernorm_backward(dx.data(), dw.data(), db.data(), dy.data(), x.data(), meanr.data(), rstdr.data(), w.data(),
                                  rows, C);
      kernels::layernorm_backward_ref(dxr.data(), dwr.data(), dbr.data(), dy.data(), x.data(), meanr.data(), rstdr.data(),
                                      w.data(), rows, C);
      CAPTURE(std::string(isa_name(isa)));
      CAPTURE(C);
      // float sums in a row vs double: |y| <~ 4, rstd <~ 1/sqrt(eps) only for C = 1
      CHECK(test::max_abs_diff(y, yr) <= 1e-5);
      CHECK(test::max_abs_diff(mean, meanr) <= 4e-6);  // |mean| ~ 1, float sums of up to 1000 terms
      CHECK(test::max_abs_diff(rstd, rstdr) <= 1e-5 * (C == 1 ? 1e3 : 1));
      CHECK(test::max_abs_diff(dx, dxr) <= 1e-5);
      CHECK(test::max_abs_diff(dw, dwr) <= 1e-4);  // sums of 70 terms of size ~3
      CHECK(test::max_abs_diff(db, dbr) <= 1e-5);
      // Same thread count, same bits.
      Tensor<float> dw2 = Tensor<float>::empty({C}), db2 = Tensor<float>::empty({C}), dx2 = Tensor<float>::empty({rows, C});
      kernels::layernorm_backward(dx2.data(), dw2.data(), db2.data(), dy.data(), x.data(), meanr.data(), rstdr.data(),
                                  w.data(), rows, C);
      CHECK(test::max_abs_diff(dw, dw2) == 0);
      CHECK(test::max_abs_diff(db, db2) == 0);
    }
  }
}

TEST_CASE("batchnorm: SIMD vs scalar twin, every ISA and remainder, train and eval backward") {
  for (Isa isa : isas()) {
    ScopedIsa scope(isa);
    for (int64_t HW : lengths()) {
      const int64_t N = 3, C = 4;
      const Tensor<float> x = randf({N, C, HW}, 400 + static_cast<uint64_t>(HW), -2, 3), w = randf({C}, 1, 0.5, 1.5),
                          b = randf({C}, 2), dy = randf({N, C, HW}, 3);
      Tensor<float> mean = Tensor<float>::empty({C}), var = Tensor<float>::empty({C});
      Tensor<float> meanr = Tensor<float>::empty({C}), varr = Tensor<float>::empty({C});
      kernels::batchnorm_stats(mean.data(), var.data(), x.data(), N, C, HW);
      kernels::batchnorm_stats_ref(meanr.data(), varr.data(), x.data(), N, C, HW);
      CAPTURE(std::string(isa_name(isa)));
      CAPTURE(HW);
      CHECK(test::max_abs_diff(mean, meanr) <= 1e-6);
      CHECK(test::max_abs_diff(var, varr) <= 2e-6);
      Tensor<float> rstd = Tensor<float>::empty({C});
      for (int64_t c = 0; c < C; ++c) rstd.data()[c] = 1.0f / std::sqrt(varr.data()[c] + 1e-5f);
      Tensor<float> y = Tensor<float>::empty({N, C, HW}), yr = Tensor<float>::empty({N, C, HW});
      kernels::batchnorm_forward(y.data(), x.data(), meanr.data(), rstd.data(), w.data(), b.data(), N, C, HW);
      kernels::batchnorm_forward_ref(yr.data(), x.data(), meanr.data(), rstd.data(), w.data(), b.data(), N, C, HW);
      CHECK(test::max_abs_diff(y, yr) <= 2e-6);
      for (bool batch_stats : {true, false}) {
        Tensor<float> dx = Tensor<float>::empty({N, C, HW}), dxr = Tensor<float>::empty({N, C, HW});
        Tensor<float> dw = Tensor<float>::empty({C}), db = Tensor<float>::empty({C});
        Tensor<float> dwr = Tensor<float>::empty({C}), dbr = Tensor<float>::empty({C});
        kernels::batchnorm_backward(dx.data(), dw.data(), db.data(), dy.data(), x.data(), meanr.data(), rstd.data(), w.data(),
                                    N, C, HW, batch_stats);
        kernels::batchnorm_backward_ref(dxr.data(), dwr.data(), dbr.data(), dy.data(), x.data(), meanr.data(), rstd.data(),
                                        w.data(), N, C, HW, batch_stats);
        CAPTURE(batch_stats);
        CHECK(test::max_abs_diff(dx, dxr) <= 2e-6);
        CHECK(test::max_abs_diff(dw, dwr) <= 2e-4);  // sums of up to 3000 terms
        CHECK(test::max_abs_diff(db, dbr) <= 1e-4);
      }
    }
  }
}

// ---- finite-difference gradients (double) ------------------------------------------------------------
TEST_CASE("gradcheck: layer_norm, C in {1, 3, 17, 33}, with and without affine") {
  for (int64_t C : {1, 3, 17, 33}) {
    CAPTURE(C);
    test::check_gradients("layer_norm C=" + std::to_string(C),
                          [](const std::vector<Var<double>>& v) { return ops::layer_norm(v[0], v[1], v[2], 1e-5); },
                          {test::random_tensor<double>({2, 3, C}, 1, -2, 2), test::random_tensor<double>({C}, 2, 0.5, 1.5),
                           test::random_tensor<double>({C}, 3)});
  }
  test::check_gradients("layer_norm no affine",
                        [](const std::vector<Var<double>>& v) { return ops::layer_norm(v[0], Var<double>(), Var<double>(), 1e-5); },
                        {test::random_tensor<double>({3, 9}, 4, -2, 2)});
}

TEST_CASE("gradcheck: batch_norm2d train and eval, odd N*H*W") {
  for (Shape s : {Shape{3, 2, 1, 1}, Shape{1, 3, 3, 5}, Shape{3, 2, 1, 3}}) {
    const int64_t C = s[1];
    for (bool training : {true, false}) {
      CAPTURE(shape_str(s));
      CAPTURE(training);
      Tensor<double> rm = test::random_tensor<double>({C}, 5), rv = test::random_tensor<double>({C}, 6, 0.5, 1.5);
      test::check_gradients(std::string("batch_norm2d ") + (training ? "train " : "eval ") + shape_str(s),
                            [&](const std::vector<Var<double>>& v) {
                              return ops::batch_norm2d(v[0], v[1], v[2], rm, rv, training, 0.1, 1e-5);
                            },
                            {test::random_tensor<double>(s, 7, -2, 2), test::random_tensor<double>({C}, 8, 0.5, 1.5),
                             test::random_tensor<double>({C}, 9)});
    }
  }
}

TEST_CASE("gradcheck: gelu, relu, softmax") {
  auto gelu = [](const std::vector<Var<double>>& v) { return ops::gelu(v[0]); };
  test::check_gradients("gelu", gelu, {test::random_tensor<double>({5, 7}, 10, -6, 6)});
  test::check_gradients("relu", [](const std::vector<Var<double>>& v) { return ops::relu(v[0]); },
                        {test::random_tensor<double>({4, 9}, 11)});
  for (Shape s : {Shape{3, 7}, Shape{2, 1}, Shape{2, 2, 17}}) {
    CAPTURE(shape_str(s));
    test::check_gradients("softmax " + shape_str(s), [](const std::vector<Var<double>>& v) { return ops::softmax(v[0]); },
                          {test::random_tensor<double>(s, 12, -3, 3)});
  }
}

// ---- PyTorch fixtures ----------------------------------------------------------------------------------
namespace {
// Tolerances: float outputs of O(1) values, float sums; double agrees to rounding.
template <class T>
double tol(double float_tol) {
  return std::is_same_v<T, float> ? float_tol : 1e-10;
}

template <class T>
void check_fixtures() {
  const test::Fixture fx("ops_norm");
  const std::string t = std::is_same_v<T, float> ? " (float)" : " (double)";
  for (const char* name : {"a", "b"}) {
    const std::string p = std::string("layer_norm.") + name + ".";
    Var<T> x(fx.get<T>(p + "x"), true), w(fx.get<T>(p + "weight"), true), b(fx.get<T>(p + "bias"), true);
    Var<T> y = ops::layer_norm(x, w, b, T(1e-5));
    y.backward(fx.get<T>(p + "dy"));
    test::compare(p + "y" + t, y.data(), fx.get<double>(p + "y"), tol<T>(1e-5));
    test::compare(p + "dx" + t, x.grad(), fx.get<double>(p + "dx"), tol<T>(2e-5));
    test::compare(p + "dweight" + t, w.grad(), fx.get<double>(p + "dweight"), tol<T>(2e-5));
    test::compare(p + "dbias" + t, b.grad(), fx.get<double>(p + "dbias"), tol<T>(2e-5));
  }
  for (bool training : {true, false}) {
    const std::string p = std::string("batch_norm.") + (training ? "train." : "eval.");
    Var<T> x(fx.get<T>("batch_norm.x"), true), w(fx.get<T>("batch_norm.weight"), true), b(fx.get<T>("batch_norm.bias"), true);
    Tensor<T> rm = fx.get<T>("batch_norm.running_mean"), rv = fx.get<T>("batch_norm.running_var");
    Var<T> y = ops::batch_norm2d(x, w, b, rm, rv, training, T(0.1), T(1e-5));
    y.backward(fx.get<T>("batch_norm.dy"));
    test::compare(p + "y" + t, y.data(), fx.get<double>(p + "y"), tol<T>(1e-5));
    test::compare(p + "dx" + t, x.grad(), fx.get<double>(p + "dx"), tol<T>(2e-5));
    test::compare(p + "dweight" + t, w.grad(), fx.get<double>(p + "dweight"), tol<T>(2e-5));
    test::compare(p + "dbias" + t, b.grad(), fx.get<double>(p + "dbias"), tol<T>(2e-5));
    if (training) {
      test::compare(p + "running_mean" + t, rm, fx.get<double>(p + "running_mean"), tol<T>(1e-6));
      test::compare(p + "running_var" + t, rv, fx.get<double>(p + "running_var"), tol<T>(1e-6));
    } else {  // eval leaves the running stats alone
      CHECK(test::max_abs_diff(rm, fx.get<T>("batch_norm.running_mean")) == 0);
      CHECK(test::max_abs_diff(rv, fx.get<T>("batch_norm.running_var")) == 0);
    }
  }
  struct Unary {
    const char* name;
    Var<T> (*op)(const Var<T>&);
  };
  for (Unary u : {Unary{"gelu", ops::gelu<T>}, Unary{"relu", ops::relu<T>}, Unary{"softmax", ops::softmax<T>}}) {
    const std::string p = std::string(u.name) + ".";
    Var<T> x(fx.get<T>(p + "x"), true);
    Var<T> y = u.op(x);
    y.backward(fx.get<T>(p + "dy"));
    // GELU / softmax values are O(1..15): float is within a few ulp.
    test::compare(p + "y" + t, y.data(), fx.get<double>(p + "y"), tol<T>(2e-6), std::is_same_v<T, float> ? 1e-6 : 0);
    test::compare(p + "dx" + t, x.grad(), fx.get<double>(p + "dx"), tol<T>(2e-6), std::is_same_v<T, float> ? 1e-6 : 0);
  }
}
}  // namespace

TEST_CASE("fixtures: layer_norm, batch_norm2d, gelu, relu, softmax vs PyTorch (float and double)") {
  check_fixtures<float>();
  check_fixtures<double>();
}

// ---- bad shapes and arguments --------------------------------------------------------------------------
TEST_CASE("norm / activation ops: bad shapes and arguments throw naming the op") {
  Var<float> x(Tensor<float>::ones({2, 3, 4, 5}), true);
  Var<float> w3(Tensor<float>::ones({3}), true), w4(Tensor<float>::ones({4}), true), w5(Tensor<float>::ones({5}), true);
  Tensor<float> rm = Tensor<float>::zeros({3}), rv = Tensor<float>::ones({3}), r4 = Tensor<float>::zeros({4}), none;
  CHECK_THROWS_WITH_AS(ops::layer_norm(x, w4, w5, 1e-5f), doctest::Contains("layer_norm: weight of shape [4]"), Error);
  CHECK_THROWS_WITH_AS(ops::layer_norm(x, w5, w4, 1e-5f), doctest::Contains("layer_norm: bias of shape [4]"), Error);
  CHECK_THROWS_WITH_AS(ops::layer_norm(Var<float>(Tensor<float>::ones({})), w5, w5, 1e-5f),
                       doctest::Contains("layer_norm: input of shape []"), Error);
  CHECK_THROWS_WITH_AS(ops::layer_norm(x, w5, w5, -1.0f), doctest::Contains("layer_norm: eps"), Error);
  CHECK_THROWS_WITH_AS(ops::batch_norm2d(Var<float>(Tensor<float>::ones({2, 3, 4})), w3, w3, rm, rv, true),
                       doctest::Contains("batch_norm2d: expected input (N, C, H, W), got shape [2, 3, 4]"), Error);
  CHECK_THROWS_WITH_AS(ops::batch_norm2d(x, w4, w3, rm, rv, true), doctest::Contains("batch_norm2d: weight of shape [4]"),
                       Error);
  CHECK_THROWS_WITH_AS(ops::batch_norm2d(x, w3, w3, r4, rv, true), doctest::Contains("running_mean [4]"), Error);
  CHECK_THROWS_WITH_AS(ops::batch_norm2d(x, w3, w3, none, none, false), doctest::Contains("eval mode needs running_mean"),
                       Error);
  CHECK_THROWS_WITH_AS(ops::batch_norm2d(Var<float>(Tensor<float>::ones({1, 3, 1, 1})), w3, w3, rm, rv, true),
                       doctest::Contains("more than 1 value per channel"), Error);
  CHECK_THROWS_WITH_AS(ops::softmax(Var<float>(Tensor<float>::ones({}))), doctest::Contains("softmax: input of shape []"),
                       Error);
  // Training without running stats is allowed (track_running_stats=False) and eval with them does not modify them.
  CHECK(ops::batch_norm2d(x, w3, w3, none, none, true).shape() == x.shape());
}
