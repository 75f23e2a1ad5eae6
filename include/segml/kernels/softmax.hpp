// segml/kernels/softmax.hpp: softmax over the last dim of a row-major (rows, cols) buffer.
//
// Contract:
//  - Forward:  y = exp(x - max(x)) / sum(exp(x - max(x))) per row (numerically stable: no overflow
//    for any finite input). A row of all -inf gives NaN, as in PyTorch.
//  - Backward: dx = y * (dy - sum(dy * y)) per row; it needs only the saved output y.
//  - *_ref are the scalar oracles (float and double; sums in double) and the scalar path. The
//    dispatching versions write each row once on the simd backends (AVX-512, AVX2, NEON for float;
//    exp from simd/math.hpp, 1 ulp) and run rows in parallel.
//    y may alias x and dx may alias dy (in-place); no partial overlap.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>

#include "segml/core/cpu.hpp"
#include "segml/core/parallel.hpp"
#include "segml/simd/dispatch.hpp"
#include "segml/simd/math.hpp"

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

namespace detail {
// ---- one row, written once on the simd backends (vec.hpp): the vector path ------------------------
// max over one row x (cols).
template <class S>
inline float row_max(const float* x, int64_t cols) {
  const typename S::V ninf = S::set1(-std::numeric_limits<float>::infinity());
  typename S::V vm = ninf;
  simd::for_lanes<S>(cols, [&](int64_t j, const auto& m) { vm = S::max(vm, S::select(m, S::load(x + j, m), ninf)); });
  return S::hmax(vm);
}

// sum of exp(x - mx) over one row; also writes y = exp(x - mx) when y is non-null (y may alias x).
template <class S>
inline float row_exp_sum(float* y, const float* x, float mx, int64_t cols) {
  const typename S::V vmx = S::set1(mx);
  typename S::V vs = S::zero();
  simd::for_lanes<S>(cols, [&](int64_t j, const auto& m) {
    const typename S::V e = S::select(m, simd::exp<S>(S::load(x + j, m) - vmx), S::zero());
    if (y) S::store(y + j, e, m);
    vs = vs + e;
  });
  return S::hsum(vs);
}

// y = a * y over one row.
template <class S>
inline void row_scale(float* y, float a, int64_t cols) {
  const typename S::V va = S::set1(a);
  simd::for_lanes<S>(cols, [&](int64_t j, const auto& m) { S::store(y + j, S::load(y + j, m) * va, m); });
}

template <class S>
inline void softmax_forward_rows(float* y, const float* x, int64_t rows, int64_t cols) {
  for (int64_t r = 0; r < rows; ++r) {
    const float mx = row_max<S>(x + r * cols, cols);
    const float sum = row_exp_sum<S>(y + r * cols, x + r * cols, mx, cols);
    row_scale<S>(y + r * cols, 1.0f / sum, cols);
  }
}
template <class S>
inline void softmax_backward_rows(float* dx, const float* y, const float* dy, int64_t rows, int64_t cols) {
  for (int64_t r = 0; r < rows; ++r) {
    const float *yr = y + r * cols, *gr = dy + r * cols;
    float* dr = dx + r * cols;
    typename S::V vs = S::zero();
    simd::for_lanes<S>(cols, [&](int64_t j, const auto& m) { vs = S::fma(S::load(gr + j, m), S::load(yr + j, m), vs); });
    const typename S::V sum = S::set1(S::hsum(vs));
    simd::for_lanes<S>(cols, [&](int64_t j, const auto& m) { S::store(dr + j, S::load(yr + j, m) * (S::load(gr + j, m) - sum), m); });
  }
}

// Rows per parallel chunk: about 16K elements.
inline int64_t softmax_grain(int64_t cols) { return cols > 0 ? std::max<int64_t>(1, (int64_t{1} << 14) / cols) : 1; }
}  // namespace detail

// ---- dispatching kernels: vector backends run the rows above, the scalar backend the twin ---------
// x, y (rows, cols)
template <class T>
inline void softmax_forward(T* y, const T* x, int64_t rows, int64_t cols) {
  simd::parallel_for<T>(rows, detail::softmax_grain(cols), [&](auto s, int64_t b, int64_t e) {
    if constexpr (decltype(s)::lanes == 1)
      softmax_forward_ref(y + b * cols, x + b * cols, e - b, cols);
    else
      detail::softmax_forward_rows<decltype(s)>(y + b * cols, x + b * cols, e - b, cols);
  });
}
// y, dy, dx (rows, cols)
template <class T>
inline void softmax_backward(T* dx, const T* y, const T* dy, int64_t rows, int64_t cols) {
  simd::parallel_for<T>(rows, detail::softmax_grain(cols), [&](auto s, int64_t b, int64_t e) {
    if constexpr (decltype(s)::lanes == 1)
      softmax_backward_ref(dx + b * cols, y + b * cols, dy + b * cols, e - b, cols);
    else
      detail::softmax_backward_rows<decltype(s)>(dx + b * cols, y + b * cols, dy + b * cols, e - b, cols);
  });
}

}  // namespace segml::kernels
