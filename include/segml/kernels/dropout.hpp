// segml/kernels/dropout.hpp: random masks for dropout and drop-path (stochastic depth), and applying them.
//
// Masks are drawn from a counter-based Generator (core/random.hpp) so they are reproducible for a
// seed and identical for any thread count: dropout element i uses lane i % 4 of block first + i / 4.
// Applying a mask is a memory-bound loop the compiler vectorises; the scalar code is the kernel and
// its own reference twin. Forward and backward apply the same mask and scale, so one function
// serves both.
#pragma once

#include <cmath>
#include <cstdint>

#include "segml/core/parallel.hpp"
#include "segml/core/random.hpp"

namespace segml::kernels {

// keep (n): keep[i] = 1 with probability keep_prob (U[0,1) < keep_prob, as torch's bernoulli_(1 - p)), else 0.
inline void dropout_mask(uint8_t* keep, int64_t n, double keep_prob, Generator& gen) {
  if (n <= 0) return;
  const int64_t blocks = (n + 3) / 4;
  const uint64_t first = gen.reserve(static_cast<uint64_t>(blocks));
  parallel_for(blocks, 1 << 13, [&](int64_t s, int64_t e) {
    for (int64_t k = s; k < e; ++k) {
      const PhiloxBlock b = gen.block_at(first + static_cast<uint64_t>(k));
      for (int64_t j = 0; j < 4 && 4 * k + j < n; ++j)
        keep[4 * k + j] = static_cast<double>(bits_to_uniform_float(b.w[j])) < keep_prob ? 1 : 0;
    }
  });
}

// out[i] = x[i] * keep[i] * scale; out may equal x. Forward (x = input) and backward (x = grad_out).
// x, out (n), keep (n)
template <class T>
inline void dropout_apply(T* out, const T* x, const uint8_t* keep, T scale, int64_t n) {
  parallel_for(n, 1 << 16, [&](int64_t s, int64_t e) {
    for (int64_t i = s; i < e; ++i) out[i] = keep[i] ? x[i] * scale : T(0);
  });
}

// mask (batch): mask[b] = floor(keep_prob + U[0,1)) in T, exactly as HF SegFormer's drop_path builds it
// (the uniform is drawn in T, the sum rounded in T).
template <class T>
inline void drop_path_mask(T* mask, int64_t batch, T keep_prob, Generator& gen) {
  gen.fill_uniform(mask, batch);
  for (int64_t b = 0; b < batch; ++b) mask[b] = std::floor(keep_prob + mask[b]);
}

// out[b, i] = x[b, i] / keep_prob * mask[b]; out may equal x. Forward (x = input) and backward
// (x = grad_out). x, out (batch, per_sample), mask (batch)
template <class T>
inline void drop_path_apply(T* out, const T* x, const T* mask, T keep_prob, int64_t batch, int64_t per_sample) {
  for (int64_t b = 0; b < batch; ++b) {
    const T m = mask[b];
    const T* xb = x + b * per_sample;
    T* ob = out + b * per_sample;
    parallel_for(per_sample, 1 << 16, [&](int64_t s, int64_t e) {
      for (int64_t i = s; i < e; ++i) ob[i] = xb[i] / keep_prob * m;
    });
  }
}

}  // namespace segml::kernels
