// segml/kernels/softmax.hpp: softmax over the last dim of a row-major (rows, cols) buffer.
//
// Contract:
//  - Forward:  y = exp(x - max(x)) / sum(exp(x - max(x))) per row (numerically stable: no overflow
//    for any finite input). A row of all -inf gives NaN, as in PyTorch.
//  - Backward: dx = y * (dy - sum(dy * y)) per row; it needs only the saved output y.
//  - *_ref are the scalar oracles (float and double; sums in double). The dispatching versions use
//    AVX2 / AVX-512 for float (exp from simd_math.hpp, 1 ulp) and run rows in parallel.
//    y may alias x and dx may alias dy (in-place); no partial overlap.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>

#include "segml/core/cpu.hpp"
#include "segml/core/parallel.hpp"
#include "segml/kernels/simd_math.hpp"

namespace segml::kernels {

// ---- scalar reference twins ----------------------------------------------------------------------
// x, y (rows, cols)
template <class T>
inline void softmax_forward_ref(T* y, const T* x, int64_t rows, int64_t cols) {
  for (int64_t r = 0; r < rows; ++r) {
    const T* xr = x + r * cols;
    T* yr = y + r * cols;
    T m = -std::numeric_limits<T>::infinity();
    for (int64_t j = 0; j < cols; ++j) m = xr[j] > m ? xr[j] : m;
    double s = 0;
    for (int64_t j = 0; j < cols; ++j) s += static_cast<double>(yr[j] = std::exp(xr[j] - m));
    const T inv = static_cast<T>(1.0 / s);
    for (int64_t j = 0; j < cols; ++j) yr[j] *= inv;
  }
}
// y, dy, dx (rows, cols)
template <class T>
inline void softmax_backward_ref(T* dx, const T* y, const T* dy, int64_t rows, int64_t cols) {
  for (int64_t r = 0; r < rows; ++r) {
    const T *yr = y + r * cols, *gr = dy + r * cols;
    T* dr = dx + r * cols;
    double s = 0;
    for (int64_t j = 0; j < cols; ++j) s += static_cast<double>(gr[j]) * static_cast<double>(yr[j]);
    for (int64_t j = 0; j < cols; ++j) dr[j] = yr[j] * (gr[j] - static_cast<T>(s));
  }
}

#if defined(__x86_64__)
namespace detail {
// ---- AVX2 ----------------------------------------------------------------------------------------
// max over one row x (cols).
SEGML_AVX2_FN float row_max_avx2(const float* x, int64_t cols) {
  const int64_t body = cols & ~int64_t{7}, tail = cols - body;
  const __m256 ninf = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
  __m256 vm = ninf;
  for (int64_t j = 0; j < body; j += 8) vm = _mm256_max_ps(vm, _mm256_loadu_ps(x + j));
  if (tail) {
    const __m256i tm = simd::tail_mask256(tail);
    vm = _mm256_max_ps(vm, _mm256_blendv_ps(ninf, _mm256_maskload_ps(x + body, tm), _mm256_castsi256_ps(tm)));
  }
  return simd::hmax256_ps(vm);
}

// Σ exp(x − m) over one row; also writes y = exp(x − m) when y is non-null (y may alias x).
SEGML_AVX2_FN float row_exp_sum_avx2(float* y, const float* x, float m, int64_t cols) {
  const int64_t body = cols & ~int64_t{7}, tail = cols - body;
  const __m256 mv = _mm256_set1_ps(m);
  __m256 vs = _mm256_setzero_ps();
  for (int64_t j = 0; j < body; j += 8) {
    const __m256 e = simd::exp256_ps(_mm256_sub_ps(_mm256_loadu_ps(x + j), mv));
    if (y) _mm256_storeu_ps(y + j, e);
    vs = _mm256_add_ps(vs, e);
  }
  if (tail) {
    const __m256i tm = simd::tail_mask256(tail);
    const __m256 e = _mm256_and_ps(simd::exp256_ps(_mm256_sub_ps(_mm256_maskload_ps(x + body, tm), mv)), _mm256_castsi256_ps(tm));
    if (y) _mm256_maskstore_ps(y + body, tm, e);
    vs = _mm256_add_ps(vs, e);
  }
  return simd::hsum256_ps(vs);
}

// y = a * y over one row.
SEGML_AVX2_FN void row_scale_avx2(float* y, float a, int64_t cols) {
  const int64_t body = cols & ~int64_t{7}, tail = cols - body;
  const __m256 av = _mm256_set1_ps(a);
  for (int64_t j = 0; j < body; j += 8) _mm256_storeu_ps(y + j, _mm256_mul_ps(_mm256_loadu_ps(y + j), av));
  if (tail) {
    const __m256i tm = simd::tail_mask256(tail);
    _mm256_maskstore_ps(y + body, tm, _mm256_mul_ps(_mm256_maskload_ps(y + body, tm), av));
  }
}

SEGML_AVX2_FN void softmax_forward_avx2(float* y, const float* x, int64_t rows, int64_t cols) {
  for (int64_t r = 0; r < rows; ++r) {
    const float m = row_max_avx2(x + r * cols, cols);
    const float s = row_exp_sum_avx2(y + r * cols, x + r * cols, m, cols);
    row_scale_avx2(y + r * cols, 1.0f / s, cols);
  }
}
SEGML_AVX2_FN void softmax_backward_avx2(float* dx, const float* y, const float* dy, int64_t rows, int64_t cols) {
  const int64_t body = cols & ~int64_t{7}, tail = cols - body;
  const __m256i tm = simd::tail_mask256(tail);
  for (int64_t r = 0; r < rows; ++r) {
    const float *yr = y + r * cols, *gr = dy + r * cols;
    float* dr = dx + r * cols;
    __m256 vs = _mm256_setzero_ps();
    for (int64_t j = 0; j < body; j += 8) vs = _mm256_fmadd_ps(_mm256_loadu_ps(gr + j), _mm256_loadu_ps(yr + j), vs);
    if (tail) vs = _mm256_fmadd_ps(_mm256_maskload_ps(gr + body, tm), _mm256_maskload_ps(yr + body, tm), vs);
    const __m256 s = _mm256_set1_ps(simd::hsum256_ps(vs));
    for (int64_t j = 0; j < body; j += 8)
      _mm256_storeu_ps(dr + j, _mm256_mul_ps(_mm256_loadu_ps(yr + j), _mm256_sub_ps(_mm256_loadu_ps(gr + j), s)));
    if (tail)
      _mm256_maskstore_ps(dr + body, tm,
                          _mm256_mul_ps(_mm256_maskload_ps(yr + body, tm), _mm256_sub_ps(_mm256_maskload_ps(gr + body, tm), s)));
  }
}

// ---- AVX-512 -------------------------------------------------------------------------------------
SEGML_AVX512_FN void softmax_forward_avx512(float* y, const float* x, int64_t rows, int64_t cols) {
  const int64_t body = cols & ~int64_t{15}, tail = cols - body;
  const __mmask16 tm = simd::tail_mask512(tail);
  const __m512 ninf = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * cols;
    float* yr = y + r * cols;
    __m512 vm = ninf;
    for (int64_t j = 0; j < body; j += 16) vm = _mm512_maskz_max_ps(simd::kAll, vm, _mm512_loadu_ps(xr + j));
    if (tail) vm = _mm512_maskz_max_ps(simd::kAll, vm, _mm512_mask_loadu_ps(ninf, tm, xr + body));
    const __m512 m = _mm512_set1_ps(simd::hmax512_ps(vm));
    __m512 vs = _mm512_setzero_ps();
    for (int64_t j = 0; j < body; j += 16) {
      const __m512 e = simd::exp512_ps(_mm512_sub_ps(_mm512_loadu_ps(xr + j), m));
      _mm512_storeu_ps(yr + j, e);
      vs = _mm512_add_ps(vs, e);
    }
    if (tail) {
      const __m512 e = _mm512_maskz_mov_ps(tm, simd::exp512_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(tm, xr + body), m)));
      _mm512_mask_storeu_ps(yr + body, tm, e);
      vs = _mm512_add_ps(vs, e);
    }
    const __m512 inv = _mm512_set1_ps(1.0f / simd::hsum512_ps(vs));
    for (int64_t j = 0; j < body; j += 16) _mm512_storeu_ps(yr + j, _mm512_mul_ps(_mm512_loadu_ps(yr + j), inv));
    if (tail) _mm512_mask_storeu_ps(yr + body, tm, _mm512_mul_ps(_mm512_maskz_loadu_ps(tm, yr + body), inv));
  }
}
SEGML_AVX512_FN void softmax_backward_avx512(float* dx, const float* y, const float* dy, int64_t rows, int64_t cols) {
  const int64_t body = cols & ~int64_t{15}, tail = cols - body;
  const __mmask16 tm = simd::tail_mask512(tail);
  for (int64_t r = 0; r < rows; ++r) {
    const float *yr = y + r * cols, *gr = dy + r * cols;
    float* dr = dx + r * cols;
    __m512 vs = _mm512_setzero_ps();
    for (int64_t j = 0; j < body; j += 16) vs = _mm512_fmadd_ps(_mm512_loadu_ps(gr + j), _mm512_loadu_ps(yr + j), vs);
    if (tail) vs = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(tm, gr + body), _mm512_maskz_loadu_ps(tm, yr + body), vs);
    const __m512 s = _mm512_set1_ps(simd::hsum512_ps(vs));
    for (int64_t j = 0; j < body; j += 16)
      _mm512_storeu_ps(dr + j, _mm512_mul_ps(_mm512_loadu_ps(yr + j), _mm512_sub_ps(_mm512_loadu_ps(gr + j), s)));
    if (tail)
      _mm512_mask_storeu_ps(dr + body, tm,
                            _mm512_mul_ps(_mm512_maskz_loadu_ps(tm, yr + body), _mm512_sub_ps(_mm512_maskz_loadu_ps(tm, gr + body), s)));
  }
}
}  // namespace detail
#endif  // __x86_64__

namespace detail {
// Rows per parallel chunk: about 16K elements.
inline int64_t softmax_grain(int64_t cols) { return cols > 0 ? std::max<int64_t>(1, (int64_t{1} << 14) / cols) : 1; }
}  // namespace detail

// ---- dispatching kernels ---------------------------------------------------------------------------
// x, y (rows, cols)
template <class T>
inline void softmax_forward(T* y, const T* x, int64_t rows, int64_t cols) {
  [[maybe_unused]] const Isa isa = std::is_same_v<T, float> ? segml::isa() : Isa::scalar;
  parallel_for(rows, detail::softmax_grain(cols), [&](int64_t b, int64_t e) {
#if defined(__x86_64__)
    if constexpr (std::is_same_v<T, float>) {
      if (isa == Isa::avx512) return detail::softmax_forward_avx512(y + b * cols, x + b * cols, e - b, cols);
      if (isa == Isa::avx2) return detail::softmax_forward_avx2(y + b * cols, x + b * cols, e - b, cols);
    }
#endif
    softmax_forward_ref(y + b * cols, x + b * cols, e - b, cols);
  });
}
// y, dy, dx (rows, cols)
template <class T>
inline void softmax_backward(T* dx, const T* y, const T* dy, int64_t rows, int64_t cols) {
  [[maybe_unused]] const Isa isa = std::is_same_v<T, float> ? segml::isa() : Isa::scalar;
  parallel_for(rows, detail::softmax_grain(cols), [&](int64_t b, int64_t e) {
#if defined(__x86_64__)
    if constexpr (std::is_same_v<T, float>) {
      if (isa == Isa::avx512) return detail::softmax_backward_avx512(dx + b * cols, y + b * cols, dy + b * cols, e - b, cols);
      if (isa == Isa::avx2) return detail::softmax_backward_avx2(dx + b * cols, y + b * cols, dy + b * cols, e - b, cols);
    }
#endif
    softmax_backward_ref(dx + b * cols, y + b * cols, dy + b * cols, e - b, cols);
  });
}

}  // namespace segml::kernels
