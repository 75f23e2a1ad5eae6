// segml/kernels/elementwise.hpp: add, scale and sum over contiguous buffers.
//
// These are memory-bound one-liners; the compiler vectorises them at -O2/-O3 (they are written so
// that it can: no aliasing between out and inputs other than exact in-place use), so the scalar code
// IS the kernel and its own reference twin.
#pragma once

#include <cstdint>

#include "segml/core/parallel.hpp"

namespace segml::kernels {

// out[i] = a[i] + b[i]; out may equal a or b.  a, b, out (n)
template <class T>
inline void add_forward(T* out, const T* a, const T* b, int64_t n) {
  parallel_for(n, 1 << 16, [&](int64_t s, int64_t e) {
    for (int64_t i = s; i < e; ++i) out[i] = a[i] + b[i];
  });
}

// out[i] = alpha * x[i].  x, out (n)
template <class T>
inline void scale_forward(T* out, const T* x, T alpha, int64_t n) {
  parallel_for(n, 1 << 16, [&](int64_t s, int64_t e) {
    for (int64_t i = s; i < e; ++i) out[i] = alpha * x[i];
  });
}

// out[i] = a[i] * b[i].
template <class T>
inline void mul_forward(T* out, const T* a, const T* b, int64_t n) {
  parallel_for(n, 1 << 16, [&](int64_t s, int64_t e) {
    for (int64_t i = s; i < e; ++i) out[i] = a[i] * b[i];
  });
}

// Sum of x (n), accumulated in double for float inputs.
template <class T>
inline T sum_forward(const T* x, int64_t n) {
  double s = 0;
  for (int64_t i = 0; i < n; ++i) s += static_cast<double>(x[i]);
  return static_cast<T>(s);
}

}  // namespace segml::kernels
