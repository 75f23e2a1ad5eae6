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
//  - Each *_ref is the scalar oracle (float and double); the dispatching versions use AVX2 /
//    AVX-512 for float (see simd_math.hpp for the accuracy of Phi and exp) and run in parallel.
//    Outputs may alias inputs exactly (in-place), never partially.
#pragma once

#include <cmath>
#include <cstdint>
#include <type_traits>

#include "segml/core/cpu.hpp"
#include "segml/core/parallel.hpp"
#include "segml/kernels/simd_math.hpp"

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

#if defined(__x86_64__)
namespace detail {
// ---- AVX2 ----------------------------------------------------------------------------------------
SEGML_AVX2_FN __m256 gelu256_ps(__m256 x) { return _mm256_mul_ps(x, simd::ndtr256_ps(x)); }
SEGML_AVX2_FN __m256 gelu_grad256_ps(__m256 x) {
  const __m256 pdf = _mm256_mul_ps(simd::exp256_ps(_mm256_mul_ps(_mm256_mul_ps(x, x), _mm256_set1_ps(-0.5f))),
                                   _mm256_set1_ps(static_cast<float>(kInvSqrt2Pi)));
  return _mm256_fmadd_ps(x, pdf, simd::ndtr256_ps(x));
}
SEGML_AVX2_FN void gelu_forward_avx2(float* y, const float* x, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, gelu256_ps(_mm256_loadu_ps(x + i)));
  if (i < n) {
    const __m256i m = simd::tail_mask256(n - i);
    _mm256_maskstore_ps(y + i, m, gelu256_ps(_mm256_maskload_ps(x + i, m)));
  }
}
SEGML_AVX2_FN void gelu_backward_avx2(float* dx, const float* x, const float* dy, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(dx + i, _mm256_mul_ps(_mm256_loadu_ps(dy + i), gelu_grad256_ps(_mm256_loadu_ps(x + i))));
  if (i < n) {
    const __m256i m = simd::tail_mask256(n - i);
    _mm256_maskstore_ps(dx + i, m, _mm256_mul_ps(_mm256_maskload_ps(dy + i, m), gelu_grad256_ps(_mm256_maskload_ps(x + i, m))));
  }
}
// QuickGELU: e = exp(-|a x|), r = 1 / (1 + e); s = r or e r and 1 - s = e r or r by the sign of x.
SEGML_AVX2_FN void quick_gelu_sigmoid256_ps(__m256 x, __m256& s, __m256& oms) {
  const __m256 t = _mm256_mul_ps(x, _mm256_set1_ps(static_cast<float>(kQuickGeluAlpha)));
  const __m256 e = simd::exp256_ps(_mm256_or_ps(t, _mm256_set1_ps(-0.0f)));  // exp(-|t|)
  const __m256 r = _mm256_div_ps(_mm256_set1_ps(1.0f), _mm256_add_ps(_mm256_set1_ps(1.0f), e)), er = _mm256_mul_ps(e, r);
  const __m256 neg = _mm256_cmp_ps(t, _mm256_setzero_ps(), _CMP_LT_OQ);
  s = _mm256_blendv_ps(r, er, neg);
  oms = _mm256_blendv_ps(er, r, neg);
}
SEGML_AVX2_FN __m256 quick_gelu256_ps(__m256 x) {
  __m256 s, oms;
  quick_gelu_sigmoid256_ps(x, s, oms);
  return _mm256_mul_ps(x, s);
}
SEGML_AVX2_FN __m256 quick_gelu_grad256_ps(__m256 x) {
  __m256 s, oms;
  quick_gelu_sigmoid256_ps(x, s, oms);
  const __m256 ax = _mm256_mul_ps(x, _mm256_set1_ps(static_cast<float>(kQuickGeluAlpha)));
  return _mm256_fmadd_ps(_mm256_mul_ps(ax, s), oms, s);
}
SEGML_AVX2_FN void quick_gelu_forward_avx2(float* y, const float* x, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, quick_gelu256_ps(_mm256_loadu_ps(x + i)));
  if (i < n) {
    const __m256i m = simd::tail_mask256(n - i);
    _mm256_maskstore_ps(y + i, m, quick_gelu256_ps(_mm256_maskload_ps(x + i, m)));
  }
}
SEGML_AVX2_FN void quick_gelu_backward_avx2(float* dx, const float* x, const float* dy, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(dx + i, _mm256_mul_ps(_mm256_loadu_ps(dy + i), quick_gelu_grad256_ps(_mm256_loadu_ps(x + i))));
  if (i < n) {
    const __m256i m = simd::tail_mask256(n - i);
    _mm256_maskstore_ps(dx + i, m,
                        _mm256_mul_ps(_mm256_maskload_ps(dy + i, m), quick_gelu_grad256_ps(_mm256_maskload_ps(x + i, m))));
  }
}
// max(0, x) returns x when x is NaN (MAXPS returns its second operand on NaN).
SEGML_AVX2_FN void relu_forward_avx2(float* y, const float* x, int64_t n) {
  const __m256 zero = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_max_ps(zero, _mm256_loadu_ps(x + i)));
  if (i < n) {
    const __m256i m = simd::tail_mask256(n - i);
    _mm256_maskstore_ps(y + i, m, _mm256_max_ps(zero, _mm256_maskload_ps(x + i, m)));
  }
}
SEGML_AVX2_FN void relu_backward_avx2(float* dx, const float* y, const float* dy, int64_t n) {
  const __m256 zero = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 pos = _mm256_cmp_ps(_mm256_loadu_ps(y + i), zero, _CMP_GT_OQ);
    _mm256_storeu_ps(dx + i, _mm256_and_ps(pos, _mm256_loadu_ps(dy + i)));
  }
  if (i < n) {
    const __m256i m = simd::tail_mask256(n - i);
    const __m256 pos = _mm256_cmp_ps(_mm256_maskload_ps(y + i, m), zero, _CMP_GT_OQ);
    _mm256_maskstore_ps(dx + i, m, _mm256_and_ps(pos, _mm256_maskload_ps(dy + i, m)));
  }
}

// ---- AVX-512 -------------------------------------------------------------------------------------
SEGML_AVX512_FN __m512 gelu512_ps(__m512 x) { return _mm512_mul_ps(x, simd::ndtr512_ps(x)); }
SEGML_AVX512_FN __m512 gelu_grad512_ps(__m512 x) {
  const __m512 pdf = _mm512_mul_ps(simd::exp512_ps(_mm512_mul_ps(_mm512_mul_ps(x, x), _mm512_set1_ps(-0.5f))),
                                   _mm512_set1_ps(static_cast<float>(kInvSqrt2Pi)));
  return _mm512_fmadd_ps(x, pdf, simd::ndtr512_ps(x));
}
SEGML_AVX512_FN void gelu_forward_avx512(float* y, const float* x, int64_t n) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) _mm512_storeu_ps(y + i, gelu512_ps(_mm512_loadu_ps(x + i)));
  if (i < n) {
    const __mmask16 m = simd::tail_mask512(n - i);
    _mm512_mask_storeu_ps(y + i, m, gelu512_ps(_mm512_maskz_loadu_ps(m, x + i)));
  }
}
SEGML_AVX512_FN void gelu_backward_avx512(float* dx, const float* x, const float* dy, int64_t n) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16)
    _mm512_storeu_ps(dx + i, _mm512_mul_ps(_mm512_loadu_ps(dy + i), gelu_grad512_ps(_mm512_loadu_ps(x + i))));
  if (i < n) {
    const __mmask16 m = simd::tail_mask512(n - i);
    _mm512_mask_storeu_ps(dx + i, m,
                          _mm512_mul_ps(_mm512_maskz_loadu_ps(m, dy + i), gelu_grad512_ps(_mm512_maskz_loadu_ps(m, x + i))));
  }
}
SEGML_AVX512_FN void quick_gelu_sigmoid512_ps(__m512 x, __m512& s, __m512& oms) {
  const __m512 t = _mm512_mul_ps(x, _mm512_set1_ps(static_cast<float>(kQuickGeluAlpha)));
  const __m512 e = simd::exp512_ps(_mm512_or_ps(t, _mm512_set1_ps(-0.0f)));  // exp(-|t|)
  const __m512 r = _mm512_div_ps(_mm512_set1_ps(1.0f), _mm512_add_ps(_mm512_set1_ps(1.0f), e)), er = _mm512_mul_ps(e, r);
  const __mmask16 neg = _mm512_cmp_ps_mask(t, _mm512_setzero_ps(), _CMP_LT_OQ);
  s = _mm512_mask_blend_ps(neg, r, er);
  oms = _mm512_mask_blend_ps(neg, er, r);
}
SEGML_AVX512_FN __m512 quick_gelu512_ps(__m512 x) {
  __m512 s, oms;
  quick_gelu_sigmoid512_ps(x, s, oms);
  return _mm512_mul_ps(x, s);
}
SEGML_AVX512_FN __m512 quick_gelu_grad512_ps(__m512 x) {
  __m512 s, oms;
  quick_gelu_sigmoid512_ps(x, s, oms);
  const __m512 ax = _mm512_mul_ps(x, _mm512_set1_ps(static_cast<float>(kQuickGeluAlpha)));
  return _mm512_fmadd_ps(_mm512_mul_ps(ax, s), oms, s);
}
SEGML_AVX512_FN void quick_gelu_forward_avx512(float* y, const float* x, int64_t n) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) _mm512_storeu_ps(y + i, quick_gelu512_ps(_mm512_loadu_ps(x + i)));
  if (i < n) {
    const __mmask16 m = simd::tail_mask512(n - i);
    _mm512_mask_storeu_ps(y + i, m, quick_gelu512_ps(_mm512_maskz_loadu_ps(m, x + i)));
  }
}
SEGML_AVX512_FN void quick_gelu_backward_avx512(float* dx, const float* x, const float* dy, int64_t n) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16)
    _mm512_storeu_ps(dx + i, _mm512_mul_ps(_mm512_loadu_ps(dy + i), quick_gelu_grad512_ps(_mm512_loadu_ps(x + i))));
  if (i < n) {
    const __mmask16 m = simd::tail_mask512(n - i);
    _mm512_mask_storeu_ps(dx + i, m, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, dy + i),
                                                   quick_gelu_grad512_ps(_mm512_maskz_loadu_ps(m, x + i))));
  }
}
SEGML_AVX512_FN void relu_forward_avx512(float* y, const float* x, int64_t n) {
  const __m512 zero = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) _mm512_storeu_ps(y + i, _mm512_maskz_max_ps(simd::kAll, zero, _mm512_loadu_ps(x + i)));
  if (i < n) {
    const __mmask16 m = simd::tail_mask512(n - i);
    _mm512_mask_storeu_ps(y + i, m, _mm512_maskz_max_ps(simd::kAll, zero, _mm512_maskz_loadu_ps(m, x + i)));
  }
}
SEGML_AVX512_FN void relu_backward_avx512(float* dx, const float* y, const float* dy, int64_t n) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __mmask16 pos = _mm512_cmp_ps_mask(_mm512_loadu_ps(y + i), _mm512_setzero_ps(), _CMP_GT_OQ);
    _mm512_storeu_ps(dx + i, _mm512_maskz_mov_ps(pos, _mm512_loadu_ps(dy + i)));
  }
  if (i < n) {
    const __mmask16 m = simd::tail_mask512(n - i);
    const __mmask16 pos = _mm512_cmp_ps_mask(_mm512_maskz_loadu_ps(m, y + i), _mm512_setzero_ps(), _CMP_GT_OQ);
    _mm512_mask_storeu_ps(dx + i, m, _mm512_maskz_mov_ps(pos, _mm512_maskz_loadu_ps(m, dy + i)));
  }
}
}  // namespace detail
#endif  // __x86_64__

// ---- dispatching kernels: parallel chunks, each on the widest ISA allowed (float only) --------------
template <class T>
inline void gelu_forward(T* y, const T* x, int64_t n) {
  [[maybe_unused]] const Isa isa = std::is_same_v<T, float> ? segml::isa() : Isa::scalar;
  parallel_for(n, detail::kPointwiseGrain, [&](int64_t b, int64_t e) {
#if defined(__x86_64__)
    if constexpr (std::is_same_v<T, float>) {
      if (isa == Isa::avx512) return detail::gelu_forward_avx512(y + b, x + b, e - b);
      if (isa == Isa::avx2) return detail::gelu_forward_avx2(y + b, x + b, e - b);
    }
#endif
    gelu_forward_ref(y + b, x + b, e - b);
  });
}
template <class T>
inline void gelu_backward(T* dx, const T* x, const T* dy, int64_t n) {
  [[maybe_unused]] const Isa isa = std::is_same_v<T, float> ? segml::isa() : Isa::scalar;
  parallel_for(n, detail::kPointwiseGrain, [&](int64_t b, int64_t e) {
#if defined(__x86_64__)
    if constexpr (std::is_same_v<T, float>) {
      if (isa == Isa::avx512) return detail::gelu_backward_avx512(dx + b, x + b, dy + b, e - b);
      if (isa == Isa::avx2) return detail::gelu_backward_avx2(dx + b, x + b, dy + b, e - b);
    }
#endif
    gelu_backward_ref(dx + b, x + b, dy + b, e - b);
  });
}
template <class T>
inline void quick_gelu_forward(T* y, const T* x, int64_t n) {
  [[maybe_unused]] const Isa isa = std::is_same_v<T, float> ? segml::isa() : Isa::scalar;
  parallel_for(n, detail::kPointwiseGrain, [&](int64_t b, int64_t e) {
#if defined(__x86_64__)
    if constexpr (std::is_same_v<T, float>) {
      if (isa == Isa::avx512) return detail::quick_gelu_forward_avx512(y + b, x + b, e - b);
      if (isa == Isa::avx2) return detail::quick_gelu_forward_avx2(y + b, x + b, e - b);
    }
#endif
    quick_gelu_forward_ref(y + b, x + b, e - b);
  });
}
template <class T>
inline void quick_gelu_backward(T* dx, const T* x, const T* dy, int64_t n) {
  [[maybe_unused]] const Isa isa = std::is_same_v<T, float> ? segml::isa() : Isa::scalar;
  parallel_for(n, detail::kPointwiseGrain, [&](int64_t b, int64_t e) {
#if defined(__x86_64__)
    if constexpr (std::is_same_v<T, float>) {
      if (isa == Isa::avx512) return detail::quick_gelu_backward_avx512(dx + b, x + b, dy + b, e - b);
      if (isa == Isa::avx2) return detail::quick_gelu_backward_avx2(dx + b, x + b, dy + b, e - b);
    }
#endif
    quick_gelu_backward_ref(dx + b, x + b, dy + b, e - b);
  });
}
template <class T>
inline void relu_forward(T* y, const T* x, int64_t n) {
  [[maybe_unused]] const Isa isa = std::is_same_v<T, float> ? segml::isa() : Isa::scalar;
  parallel_for(n, detail::kPointwiseGrain, [&](int64_t b, int64_t e) {
#if defined(__x86_64__)
    if constexpr (std::is_same_v<T, float>) {
      if (isa == Isa::avx512) return detail::relu_forward_avx512(y + b, x + b, e - b);
      if (isa == Isa::avx2) return detail::relu_forward_avx2(y + b, x + b, e - b);
    }
#endif
    relu_forward_ref(y + b, x + b, e - b);
  });
}
template <class T>
inline void relu_backward(T* dx, const T* y, const T* dy, int64_t n) {
  [[maybe_unused]] const Isa isa = std::is_same_v<T, float> ? segml::isa() : Isa::scalar;
  parallel_for(n, detail::kPointwiseGrain, [&](int64_t b, int64_t e) {
#if defined(__x86_64__)
    if constexpr (std::is_same_v<T, float>) {
      if (isa == Isa::avx512) return detail::relu_backward_avx512(dx + b, y + b, dy + b, e - b);
      if (isa == Isa::avx2) return detail::relu_backward_avx2(dx + b, y + b, dy + b, e - b);
    }
#endif
    relu_backward_ref(dx + b, y + b, dy + b, e - b);
  });
}

}  // namespace segml::kernels
