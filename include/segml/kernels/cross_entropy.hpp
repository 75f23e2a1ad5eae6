// segml/kernels/cross_entropy.hpp: pixel-wise softmax cross-entropy with ignore_index, forward and backward.
//
// Layout: logits (B, C, P), labels (B, P), where P is the number of pixels (H * W; 1 for plain rows).
// The class axis is strided by P, so the SIMD kernels vectorise ACROSS pixels: tiles of 16
// neighbouring pixels (one cache line per class; two AVX2 vectors or one AVX-512 vector), looping
// over the C classes. Each pixel's log-softmax is max-subtracted (stable for any logit magnitude).
//
// Guarantees:
//  - cross_entropy_count_valid() validates every label before anything is computed: a label that is
//    neither ignore_index nor in [0, C) throws segml::Error naming the op, the value, its index and C.
//    The other kernels assume validated labels.
//  - The forward returns the SUM of the per-pixel losses in double. It is accumulated per fixed chunk
//    of pixels and the chunk sums are added in chunk order, so the result does not depend on the
//    thread count (it may differ between ISAs by float rounding of exp).
//  - The scalar twins (*_ref, float and double) are the oracle; double always uses them.
// The SIMD paths use simd::exp256_ps / exp512_ps (1 ulp, kernels/simd_math.hpp) on x - max <= 0.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "segml/core/cpu.hpp"
#include "segml/core/error.hpp"
#include "segml/core/parallel.hpp"
#include "segml/kernels/simd_math.hpp"

namespace segml::kernels {

// Pixels per work item. Fixed, so that the summation order never depends on the thread count.
inline constexpr int64_t kCrossEntropyChunk = 2048;

namespace detail {
// Calls f(k, b, p0, p1) for every chunk k (pixels [p0, p1) of image b), in parallel.
template <class F>
inline void ce_for_each_chunk(int64_t B, int64_t P, F&& f) {
  const int64_t per_image = (P + kCrossEntropyChunk - 1) / kCrossEntropyChunk;
  parallel_for(B * per_image, 1, [&](int64_t s, int64_t e) {
    for (int64_t k = s; k < e; ++k) {
      const int64_t b = k / per_image, p0 = (k % per_image) * kCrossEntropyChunk;
      f(k, b, p0, std::min(P, p0 + kCrossEntropyChunk));
    }
  });
}

// Sum of f(b, p0, p1) over all chunks, added in chunk order (thread-count independent).
template <class F>
inline double ce_chunked_sum(int64_t B, int64_t P, F&& f) {
  const int64_t per_image = (P + kCrossEntropyChunk - 1) / kCrossEntropyChunk;
  std::vector<double> partial(static_cast<size_t>(B * per_image), 0.0);
  ce_for_each_chunk(
      B, P, [&](int64_t k, int64_t b, int64_t p0, int64_t p1) { partial[static_cast<size_t>(k)] = f(b, p0, p1); });
  double sum = 0;
  for (double v : partial) sum += v;
  return sum;
}

// -log_softmax(x)[label] for one pixel; x points at logits[b, 0, p], classes strided by P.
template <class T>
inline T ce_pixel_loss_ref(const T* x, int64_t C, int64_t P, int64_t label) {
  T m = x[0];
  for (int64_t c = 1; c < C; ++c) m = std::max(m, x[c * P]);
  T s = 0;
  for (int64_t c = 0; c < C; ++c) s += std::exp(x[c * P] - m);
  return std::log(s) + m - x[label * P];
}

// d[c * P] = scale * (softmax(x)[c] - [c == label]) for one pixel.
template <class T>
inline void ce_pixel_grad_ref(T* d, const T* x, int64_t C, int64_t P, int64_t label, T scale) {
  T m = x[0];
  for (int64_t c = 1; c < C; ++c) m = std::max(m, x[c * P]);
  T s = 0;
  for (int64_t c = 0; c < C; ++c) s += d[c * P] = std::exp(x[c * P] - m);
  const T r = scale / s;
  for (int64_t c = 0; c < C; ++c) d[c * P] *= r;
  d[label * P] -= scale;
}

template <class T>
inline void ce_pixel_zero(T* d, int64_t C, int64_t P) {
  for (int64_t c = 0; c < C; ++c) d[c * P] = T(0);
}
}  // namespace detail

// Validates labels (n) against C classes and returns how many are not ignore_index.
inline int64_t cross_entropy_count_valid(const int64_t* labels, int64_t n, int64_t C, int64_t ignore_index) {
  const int64_t chunks = (n + kCrossEntropyChunk - 1) / kCrossEntropyChunk;
  std::vector<int64_t> count(static_cast<size_t>(chunks), 0), first_bad(static_cast<size_t>(chunks), -1);
  parallel_for(chunks, 1, [&](int64_t s, int64_t e) {
    for (int64_t k = s; k < e; ++k) {
      int64_t valid = 0, bad = -1;
      for (int64_t i = k * kCrossEntropyChunk; i < std::min(n, (k + 1) * kCrossEntropyChunk); ++i) {
        const int64_t l = labels[i];
        if (l == ignore_index) continue;
        if (l < 0 || l >= C) {
          if (bad < 0) bad = i;
        } else {
          ++valid;
        }
      }
      count[static_cast<size_t>(k)] = valid;
      first_bad[static_cast<size_t>(k)] = bad;
    }
  });
  int64_t total = 0;
  for (size_t k = 0; k < count.size(); ++k) {
    const int64_t i = first_bad[k];
    SEGML_CHECK(i < 0, "cross_entropy: label ", labels[i], " (at flat index ", i, ") is out of range for ", C,
                " classes: labels must be in [0, ", C, ") or equal ignore_index ", ignore_index);
    total += count[k];
  }
  return total;
}

// ---- scalar reference twins ---------------------------------------------------------------------

// Sum over non-ignored pixels of -log_softmax(logits[b, :, p])[labels[b, p]].  logits (B, C, P), labels (B, P)
template <class T>
inline double cross_entropy_forward_ref(const T* logits, const int64_t* labels, int64_t B, int64_t C, int64_t P,
                                        int64_t ignore_index) {
  return detail::ce_chunked_sum(B, P, [&](int64_t b, int64_t p0, int64_t p1) {
    const T* x = logits + b * C * P;
    const int64_t* lab = labels + b * P;
    double acc = 0;
    for (int64_t p = p0; p < p1; ++p)
      if (lab[p] != ignore_index) acc += static_cast<double>(detail::ce_pixel_loss_ref(x + p, C, P, lab[p]));
    return acc;
  });
}

// dlogits = scale * (softmax(logits) - onehot(labels)) over the class axis, 0 at ignored pixels.
// dlogits, logits (B, C, P), labels (B, P)
template <class T>
inline void cross_entropy_backward_ref(T* dlogits, const T* logits, const int64_t* labels, int64_t B, int64_t C,
                                       int64_t P, int64_t ignore_index, T scale) {
  detail::ce_for_each_chunk(B, P, [&](int64_t, int64_t b, int64_t p0, int64_t p1) {
    const T* x = logits + b * C * P;
    T* d = dlogits + b * C * P;
    const int64_t* lab = labels + b * P;
    for (int64_t p = p0; p < p1; ++p) {
      if (lab[p] == ignore_index)
        detail::ce_pixel_zero(d + p, C, P);
      else
        detail::ce_pixel_grad_ref(d + p, x + p, C, P, lab[p], scale);
    }
  });
}

// ---- SIMD kernels (float) -----------------------------------------------------------------------
// The class axis has stride P, and P is often a power of two (128 x 128, 512 x 512 logits): the C
// cache lines of 16 neighbouring pixels then all map to the same L1/L2 cache set and evict each
// other between the max and exp passes. So each 16-pixel tile (one cache line per class) is copied
// once into a small contiguous (C, 16) buffer, the passes run there, and the backward writes each
// output line once. The ISA-specific part is only the per-tile math below.
namespace detail {

inline constexpr int64_t kCrossEntropyTile = 16;  // pixels per tile: one 64-byte line per class

// max[j] = max_c t[c][j], sum[j] = sum_c exp(t[c][j] - max[j]).  t (C, 16), max, sum (16)
using CeTileStatsFn = void (*)(const float* t, int64_t C, float* max, float* sum);
// t[c][j] = w[j] * softmax_c(t[., j]).  t (C, 16), w (16)
using CeTileSoftmaxFn = void (*)(float* t, int64_t C, const float* w);

// tile (C, 16) = x[:, p : p + 16], prefetching the lines of a tile 4 ahead (up to `end`): with C
// lines a page apart, the hardware prefetchers do not follow so many streams.  x (C, P)
inline void ce_gather_tile(float* tile, const float* x, int64_t C, int64_t P, int64_t p, int64_t end) {
  constexpr int64_t kT = kCrossEntropyTile, kAhead = 4 * kCrossEntropyTile;
  for (int64_t c = 0; c < C; ++c) {
    if (p + kAhead < end) __builtin_prefetch(x + c * P + p + kAhead);
    std::memcpy(tile + c * kT, x + c * P + p, sizeof(float) * kT);
  }
}

// Loss sum of pixels [p0, p1) of one image, tile by tile.  x (C, P), lab (P)
inline double ce_forward_chunk_tiled(const float* x, const int64_t* lab, int64_t C, int64_t P, int64_t p0, int64_t p1,
                                     int64_t ignore_index, CeTileStatsFn stats) {
  constexpr int64_t kT = kCrossEntropyTile;
  std::vector<float> tile(static_cast<size_t>(C * kT));
  float mv[kT], sv[kT];
  double acc = 0;
  int64_t p = p0;
  for (; p + kT <= p1; p += kT) {
    ce_gather_tile(tile.data(), x, C, P, p, p1);
    stats(tile.data(), C, mv, sv);
    for (int64_t j = 0; j < kT; ++j) {
      const int64_t l = lab[p + j];
      if (l != ignore_index)
        acc += static_cast<double>(std::log(sv[j]) + mv[j] - tile[static_cast<size_t>(l * kT + j)]);
    }
  }
  for (; p < p1; ++p)
    if (lab[p] != ignore_index) acc += static_cast<double>(ce_pixel_loss_ref(x + p, C, P, lab[p]));
  return acc;
}

// Gradient of pixels [p0, p1) of one image, tile by tile.  d, x (C, P), lab (P)
inline void ce_backward_chunk_tiled(float* d, const float* x, const int64_t* lab, int64_t C, int64_t P, int64_t p0,
                                    int64_t p1, int64_t ignore_index, float scale, CeTileSoftmaxFn softmax) {
  constexpr int64_t kT = kCrossEntropyTile;
  std::vector<float> tile(static_cast<size_t>(C * kT));
  float w[kT];  // scale at valid pixels, 0 at ignored ones
  int64_t p = p0;
  for (; p + kT <= p1; p += kT) {
    ce_gather_tile(tile.data(), x, C, P, p, p1);
    for (int64_t j = 0; j < kT; ++j) w[j] = lab[p + j] != ignore_index ? scale : 0.0f;
    softmax(tile.data(), C, w);
    for (int64_t j = 0; j < kT; ++j)
      if (lab[p + j] != ignore_index) tile[static_cast<size_t>(lab[p + j] * kT + j)] -= scale;
    for (int64_t c = 0; c < C; ++c) std::memcpy(d + c * P + p, &tile[static_cast<size_t>(c * kT)], sizeof(float) * kT);
  }
  for (; p < p1; ++p) {
    if (lab[p] == ignore_index)
      ce_pixel_zero(d + p, C, P);
    else
      ce_pixel_grad_ref(d + p, x + p, C, P, lab[p], scale);
  }
}

#if defined(__x86_64__)
// AVX2: a tile row is two vectors of 8 (two independent dependency chains).
SEGML_AVX2_FN void ce_tile_stats_avx2(const float* t, int64_t C, float* max, float* sum) {
  __m256 m0 = _mm256_loadu_ps(t), m1 = _mm256_loadu_ps(t + 8);
  for (int64_t c = 1; c < C; ++c) {
    m0 = _mm256_max_ps(m0, _mm256_loadu_ps(t + c * 16));
    m1 = _mm256_max_ps(m1, _mm256_loadu_ps(t + c * 16 + 8));
  }
  __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
  for (int64_t c = 0; c < C; ++c) {
    s0 = _mm256_add_ps(s0, simd::exp256_ps(_mm256_sub_ps(_mm256_loadu_ps(t + c * 16), m0)));
    s1 = _mm256_add_ps(s1, simd::exp256_ps(_mm256_sub_ps(_mm256_loadu_ps(t + c * 16 + 8), m1)));
  }
  _mm256_storeu_ps(max, m0);
  _mm256_storeu_ps(max + 8, m1);
  _mm256_storeu_ps(sum, s0);
  _mm256_storeu_ps(sum + 8, s1);
}

SEGML_AVX2_FN void ce_tile_softmax_avx2(float* t, int64_t C, const float* w) {
  __m256 m0 = _mm256_loadu_ps(t), m1 = _mm256_loadu_ps(t + 8);
  for (int64_t c = 1; c < C; ++c) {
    m0 = _mm256_max_ps(m0, _mm256_loadu_ps(t + c * 16));
    m1 = _mm256_max_ps(m1, _mm256_loadu_ps(t + c * 16 + 8));
  }
  __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
  for (int64_t c = 0; c < C; ++c) {
    const __m256 e0 = simd::exp256_ps(_mm256_sub_ps(_mm256_loadu_ps(t + c * 16), m0));
    const __m256 e1 = simd::exp256_ps(_mm256_sub_ps(_mm256_loadu_ps(t + c * 16 + 8), m1));
    _mm256_storeu_ps(t + c * 16, e0);
    _mm256_storeu_ps(t + c * 16 + 8, e1);
    s0 = _mm256_add_ps(s0, e0);
    s1 = _mm256_add_ps(s1, e1);
  }
  const __m256 r0 = _mm256_div_ps(_mm256_loadu_ps(w), s0), r1 = _mm256_div_ps(_mm256_loadu_ps(w + 8), s1);
  for (int64_t c = 0; c < C; ++c) {
    _mm256_storeu_ps(t + c * 16, _mm256_mul_ps(_mm256_loadu_ps(t + c * 16), r0));
    _mm256_storeu_ps(t + c * 16 + 8, _mm256_mul_ps(_mm256_loadu_ps(t + c * 16 + 8), r1));
  }
}

// AVX-512: a tile row is one vector of 16.
SEGML_AVX512_FN void ce_tile_stats_avx512(const float* t, int64_t C, float* max, float* sum) {
  __m512 m = _mm512_loadu_ps(t);
  for (int64_t c = 1; c < C; ++c) m = _mm512_maskz_max_ps(simd::kAll, m, _mm512_loadu_ps(t + c * 16));
  __m512 s = _mm512_setzero_ps();
  for (int64_t c = 0; c < C; ++c) s = _mm512_add_ps(s, simd::exp512_ps(_mm512_sub_ps(_mm512_loadu_ps(t + c * 16), m)));
  _mm512_storeu_ps(max, m);
  _mm512_storeu_ps(sum, s);
}

SEGML_AVX512_FN void ce_tile_softmax_avx512(float* t, int64_t C, const float* w) {
  __m512 m = _mm512_loadu_ps(t);
  for (int64_t c = 1; c < C; ++c) m = _mm512_maskz_max_ps(simd::kAll, m, _mm512_loadu_ps(t + c * 16));
  __m512 s = _mm512_setzero_ps();
  for (int64_t c = 0; c < C; ++c) {
    const __m512 e = simd::exp512_ps(_mm512_sub_ps(_mm512_loadu_ps(t + c * 16), m));
    _mm512_storeu_ps(t + c * 16, e);
    s = _mm512_add_ps(s, e);
  }
  const __m512 r = _mm512_div_ps(_mm512_loadu_ps(w), s);
  for (int64_t c = 0; c < C; ++c) _mm512_storeu_ps(t + c * 16, _mm512_mul_ps(_mm512_loadu_ps(t + c * 16), r));
}
#endif

}  // namespace detail

// ---- dispatch -----------------------------------------------------------------------------------

// Sum of the per-pixel losses over non-ignored pixels (labels validated).  logits (B, C, P), labels (B, P)
template <class T>
inline double cross_entropy_forward(const T* logits, const int64_t* labels, int64_t B, int64_t C, int64_t P,
                                    int64_t ignore_index) {
#if defined(__x86_64__)
  if constexpr (std::is_same_v<T, float>) {
    const Isa level = isa();
    if (level >= Isa::avx2) {
      const detail::CeTileStatsFn stats =
          level >= Isa::avx512 ? detail::ce_tile_stats_avx512 : detail::ce_tile_stats_avx2;
      return detail::ce_chunked_sum(B, P, [&](int64_t b, int64_t p0, int64_t p1) {
        return detail::ce_forward_chunk_tiled(logits + b * C * P, labels + b * P, C, P, p0, p1, ignore_index, stats);
      });
    }
  }
#endif
  return cross_entropy_forward_ref(logits, labels, B, C, P, ignore_index);
}

// dlogits = scale * (softmax(logits) - onehot(labels)), 0 at ignored pixels (labels validated).
// dlogits, logits (B, C, P), labels (B, P)
template <class T>
inline void cross_entropy_backward(T* dlogits, const T* logits, const int64_t* labels, int64_t B, int64_t C, int64_t P,
                                   int64_t ignore_index, T scale) {
#if defined(__x86_64__)
  if constexpr (std::is_same_v<T, float>) {
    const Isa level = isa();
    if (level >= Isa::avx2) {
      const detail::CeTileSoftmaxFn softmax =
          level >= Isa::avx512 ? detail::ce_tile_softmax_avx512 : detail::ce_tile_softmax_avx2;
      detail::ce_for_each_chunk(B, P, [&](int64_t, int64_t b, int64_t p0, int64_t p1) {
        detail::ce_backward_chunk_tiled(dlogits + b * C * P, logits + b * C * P, labels + b * P, C, P, p0, p1,
                                        ignore_index, scale, softmax);
      });
      return;
    }
  }
#endif
  cross_entropy_backward_ref(dlogits, logits, labels, B, C, P, ignore_index, scale);
}

}  // namespace segml::kernels
