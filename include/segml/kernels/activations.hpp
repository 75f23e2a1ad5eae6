// segml/kernels/activations.hpp: exact GELU, QuickGELU and ReLU, forward and backward, over
// contiguous buffers.
//
// Contract:
//  - GELU is the exact erf form, torch.nn.functional.gelu(approximate='none'):
//      gelu(x) = x * Phi(x) = 0.5 x (1 + erf(x / sqrt2)),   gelu'(x) = Phi(x) + x * phi(x),
//    with Phi computed as erfc(-x/sqrt2)/2 so the lower tail keeps its relative accuracy.
//    NOT the tanh approximation.
//  - QuickGELU is HF's QuickGELUActivation (CLIP): quick_gelu(x) = x * sigmoid(1.702 x),
//      quick_gelu'(x) = s + 1.702 x s (1 - s),   s = sigmoid(1.702 x),
//    with s and 1 - s both computed from e = exp(-|1.702 x|) <= 1 (s = 1/(1+e) or e/(1+e)), so
//    neither overflows nor cancels in either tail.
//  - ReLU follows torch: relu(x) = max(x, 0) with NaN propagated; its backward passes dy where the
//    OUTPUT is > 0 (torch's threshold_backward on the result), so it takes y, not x.
//  - Each *_ref is the scalar oracle (float and double) and the scalar path; the dispatching
//    versions are written once on the simd backends (AVX-512, AVX2, NEON for float; see
//    simd/math.hpp for the accuracy of Phi and exp) and run in parallel.
//    Outputs may alias inputs exactly (in-place), never partially.
#pragma once

#include <cmath>
#include <cstdint>
#include <type_traits>

#include "segml/core/cpu.hpp"
#include "segml/core/parallel.hpp"
#include "segml/simd/dispatch.hpp"
#include "segml/simd/math.hpp"

namespace segml::kernels {

namespace detail {
inline constexpr int64_t kPointwiseGrain = 1 << 14;
inline constexpr double kInvSqrt2Pi = 0.39894228040143267794;  // 1 / sqrt(2 pi)
inline constexpr double kSqrt1_2 = 0.70710678118654752440;     // 1 / sqrt(2)
inline constexpr double kQuickGeluAlpha = 1.702;                // HF QuickGELUActivation
// sigmoid(t) and 1 - sigmoid(t) without overflow or cancellation, in double.
inline void sigmoid_pair(double t, double& s, double& one_minus_s) {
  const double e = std::exp(-std::abs(t)), r = 1.0 / (1.0 + e);
  s = t >= 0 ? r : e * r;
  one_minus_s = t >= 0 ? e * r : r;
}
}  // namespace detail

// ---- scalar reference twins ----------------------------------------------------------------------
// Computed in double for float too: rounding x/sqrt2 in float before erfc would cost ~x^2 ulp in
// the lower tail.
// y = gelu(x).  x, y (n)
template <class T>
inline void gelu_forward_ref(T* y, const T* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const double v = x[i];
    y[i] = static_cast<T>(v * 0.5 * std::erfc(-v * detail::kSqrt1_2));
  }
}
// dx = dy * gelu'(x).  x, dy, dx (n)
template <class T>
inline void gelu_backward_ref(T* dx, const T* x, const T* dy, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const double v = x[i];
    const double cdf = 0.5 * std::erfc(-v * detail::kSqrt1_2), pdf = std::exp(-0.5 * v * v) * detail::kInvSqrt2Pi;
    dx[i] = static_cast<T>(dy[i] * (cdf + v * pdf));
  }
}
// y = x * sigmoid(1.702 x).  x, y (n)
template <class T>
inline void quick_gelu_forward_ref(T* y, const T* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    double s, oms;
    detail::sigmoid_pair(detail::kQuickGeluAlpha * static_cast<double>(x[i]), s, oms);
    y[i] = static_cast<T>(static_cast<double>(x[i]) * s);
  }
}
// dx = dy * (s + 1.702 x s (1 - s)), s = sigmoid(1.702 x).  x, dy, dx (n)
template <class T>
inline void quick_gelu_backward_ref(T* dx, const T* x, const T* dy, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const double v = x[i];
    double s, oms;
    detail::sigmoid_pair(detail::kQuickGeluAlpha * v, s, oms);
    dx[i] = static_cast<T>(static_cast<double>(dy[i]) * (s + detail::kQuickGeluAlpha * v * s * oms));
  }
}
// y = max(x, 0), NaN propagated.  x, y (n)
template <class T>
inline void relu_forward_ref(T* y, const T* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = x[i] < T(0) ? T(0) : x[i];
}
// dx = dy where y > 0, else 0.  y, dy, dx (n)
template <class T>
inline void relu_backward_ref(T* dx, const T* y, const T* dy, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dx[i] = y[i] > T(0) ? dy[i] : T(0);
}

namespace detail {
// ---- the vector kernels, written once on the simd backends (vec.hpp, math.hpp) ------------------
template <class S>
inline typename S::V gelu(const typename S::V& x) {
  return x * simd::ndtr<S>(x);
}
template <class S>
inline typename S::V gelu_grad(const typename S::V& x) {
  const typename S::V pdf = simd::exp<S>(x * x * S::set1(-0.5f)) * S::set1(static_cast<float>(kInvSqrt2Pi));
  return S::fma(x, pdf, simd::ndtr<S>(x));
}
// QuickGELU: e = exp(-|a x|), r = 1 / (1 + e); s = r or e r and 1 - s = e r or r by the sign of x.
template <class S>
inline void quick_gelu_sigmoid(const typename S::V& x, typename S::V& s, typename S::V& oms) {
  using V = typename S::V;
  const V t = x * S::set1(static_cast<float>(kQuickGeluAlpha));
  const V e = simd::exp<S>(S::copysign(t, S::set1(-0.0f)));  // exp(-|t|)
  const V r = S::set1(1.0f) / (S::set1(1.0f) + e), er = e * r;
  const auto neg = S::lt(t, S::zero());
  s = S::select(neg, er, r);
  oms = S::select(neg, r, er);
}
template <class S>
inline typename S::V quick_gelu(const typename S::V& x) {
  typename S::V s, oms;
  quick_gelu_sigmoid<S>(x, s, oms);
  return x * s;
}
template <class S>
inline typename S::V quick_gelu_grad(const typename S::V& x) {
  typename S::V s, oms;
  quick_gelu_sigmoid<S>(x, s, oms);
  return S::fma(x * S::set1(static_cast<float>(kQuickGeluAlpha)) * s, oms, s);
}

// Runs a pointwise kernel over [0, n) in parallel chunks: on a vector backend out[i] = vec(S, i, m)
// a vector at a time, on the scalar backend (and for double) the reference twin ref(b, e), which
// computes in double.
template <class T, class Vec, class Ref>
inline void pointwise(int64_t n, T* out, Vec&& vec, Ref&& ref) {
  simd::parallel_for<T>(n, kPointwiseGrain, [&](auto s, int64_t b, int64_t e) {
    using S = decltype(s);
    if constexpr (S::lanes == 1) {
      ref(b, e);
    } else {
      simd::for_lanes<S>(e - b, [&](int64_t j, const auto& m) { S::store(out + b + j, vec(s, b + j, m), m); });
    }
  });
}
}  // namespace detail

// ---- dispatching kernels: parallel chunks, each on the active ISA's backend (float only) ----------
template <class T>
inline void gelu_forward(T* y, const T* x, int64_t n) {
  detail::pointwise(
      n, y, [&](auto s, int64_t i, const auto& m) { return detail::gelu<decltype(s)>(decltype(s)::load(x + i, m)); },
      [&](int64_t b, int64_t e) { gelu_forward_ref(y + b, x + b, e - b); });
}
template <class T>
inline void gelu_backward(T* dx, const T* x, const T* dy, int64_t n) {
  detail::pointwise(
      n, dx,
      [&](auto s, int64_t i, const auto& m) {
        using S = decltype(s);
        return S::load(dy + i, m) * detail::gelu_grad<S>(S::load(x + i, m));
      },
      [&](int64_t b, int64_t e) { gelu_backward_ref(dx + b, x + b, dy + b, e - b); });
}
template <class T>
inline void quick_gelu_forward(T* y, const T* x, int64_t n) {
  detail::pointwise(
      n, y, [&](auto s, int64_t i, const auto& m) { return detail::quick_gelu<decltype(s)>(decltype(s)::load(x + i, m)); },
      [&](int64_t b, int64_t e) { quick_gelu_forward_ref(y + b, x + b, e - b); });
}
template <class T>
inline void quick_gelu_backward(T* dx, const T* x, const T* dy, int64_t n) {
  detail::pointwise(
      n, dx,
      [&](auto s, int64_t i, const auto& m) {
        using S = decltype(s);
        return S::load(dy + i, m) * detail::quick_gelu_grad<S>(S::load(x + i, m));
      },
      [&](int64_t b, int64_t e) { quick_gelu_backward_ref(dx + b, x + b, dy + b, e - b); });
}
// max(0, x) is x when x is NaN (max returns its second operand on NaN), as torch propagates it.
template <class T>
inline void relu_forward(T* y, const T* x, int64_t n) {
  detail::pointwise(
      n, y,
      [&](auto s, int64_t i, const auto& m) {
        using S = decltype(s);
        return S::max(S::zero(), S::load(x + i, m));
      },
      [&](int64_t b, int64_t e) { relu_forward_ref(y + b, x + b, e - b); });
}
template <class T>
inline void relu_backward(T* dx, const T* y, const T* dy, int64_t n) {
  detail::pointwise(
      n, dx,
      [&](auto s, int64_t i, const auto& m) {
        using S = decltype(s);
        return S::select(S::gt(S::load(y + i, m), S::zero()), S::load(dy + i, m), S::zero());
      },
      [&](int64_t b, int64_t e) { relu_backward_ref(dx + b, y + b, dy + b, e - b); });
}

}  // namespace segml::kernels
