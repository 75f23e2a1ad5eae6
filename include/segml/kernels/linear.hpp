// segml/kernels/linear.hpp: y = x·Wᵀ + b (torch.nn.functional.linear) and its backward, on raw buffers.
//
// Contract: x is a row-major (M, IN) matrix (any leading dims flattened into M), W is (OUT, IN) as
// PyTorch stores it, b is (OUT) or null. All products go through kernels::gemm, so these kernels are
// exactly as fast (and as parallel) as the GEMM. The *_ref twins are plain loops, the oracle.
#pragma once

#include <algorithm>
#include <cstdint>

#include "segml/core/parallel.hpp"
#include "segml/kernels/gemm.hpp"

namespace segml::kernels {

// y = x·Wᵀ + b.  x (M, IN), w (OUT, IN), b (OUT) or null, y (M, OUT)
template <class T>
inline void linear_forward(T* y, const T* x, const T* w, const T* b, int64_t M, int64_t IN, int64_t OUT) {
  if (b)
    parallel_for(M, std::max<int64_t>(1, (int64_t{1} << 15) / std::max<int64_t>(1, OUT)), [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) std::copy(b, b + OUT, y + i * OUT);
    });
  gemm<T>(false, true, M, OUT, IN, T(1), x, IN, w, IN, b ? T(1) : T(0), y, OUT);
}

// dx = dy·W, dW = dyᵀ·x, db = column sums of dy; each output may be null (not wanted) and is
// overwritten, not accumulated.  dy (M, OUT), x (M, IN), w (OUT, IN), dx (M, IN), dw (OUT, IN), db (OUT)
template <class T>
inline void linear_backward(T* dx, T* dw, T* db, const T* dy, const T* x, const T* w, int64_t M, int64_t IN,
                            int64_t OUT) {
  if (dx) gemm<T>(false, false, M, IN, OUT, T(1), dy, OUT, w, IN, T(0), dx, IN);
  if (dw) gemm<T>(true, false, OUT, IN, M, T(1), dy, OUT, x, IN, T(0), dw, IN);
  if (db) {
    // Column sums in row order; threads take disjoint groups of 16 columns (one cache line), so
    // the result does not depend on the thread count.
    constexpr int64_t kCols = 16;
    std::fill(db, db + OUT, T(0));
    parallel_for((OUT + kCols - 1) / kCols, std::max<int64_t>(1, (int64_t{1} << 15) / std::max<int64_t>(1, M * kCols)),
                 [&](int64_t g0, int64_t g1) {
                   const int64_t o0 = g0 * kCols, o1 = std::min(OUT, g1 * kCols);
                   for (int64_t i = 0; i < M; ++i)
                     for (int64_t o = o0; o < o1; ++o) db[o] += dy[i * OUT + o];
                 });
  }
}

// Scalar reference twin of linear_forward.
template <class T>
inline void linear_forward_ref(T* y, const T* x, const T* w, const T* b, int64_t M, int64_t IN, int64_t OUT) {
  for (int64_t i = 0; i < M; ++i)
    for (int64_t o = 0; o < OUT; ++o) {
      T acc = b ? b[o] : T(0);
      for (int64_t k = 0; k < IN; ++k) acc += x[i * IN + k] * w[o * IN + k];
      y[i * OUT + o] = acc;
    }
}

// Scalar reference twin of linear_backward.
template <class T>
inline void linear_backward_ref(T* dx, T* dw, T* db, const T* dy, const T* x, const T* w, int64_t M, int64_t IN,
                                int64_t OUT) {
  if (dx)
    for (int64_t i = 0; i < M; ++i)
      for (int64_t k = 0; k < IN; ++k) {
        T acc = 0;
        for (int64_t o = 0; o < OUT; ++o) acc += dy[i * OUT + o] * w[o * IN + k];
        dx[i * IN + k] = acc;
      }
  if (dw)
    for (int64_t o = 0; o < OUT; ++o)
      for (int64_t k = 0; k < IN; ++k) {
        T acc = 0;
        for (int64_t i = 0; i < M; ++i) acc += dy[i * OUT + o] * x[i * IN + k];
        dw[o * IN + k] = acc;
      }
  if (db)
    for (int64_t o = 0; o < OUT; ++o) {
      T acc = 0;
      for (int64_t i = 0; i < M; ++i) acc += dy[i * OUT + o];
      db[o] = acc;
    }
}

}  // namespace segml::kernels
