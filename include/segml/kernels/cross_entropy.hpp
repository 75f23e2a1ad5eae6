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
//  - The scalar twins (*_ref, float and double) are the oracle and the scalar path; double always
//    uses them. The vector paths (AVX-512, AVX2, NEON: one tile code on the simd backends) use
//    simd::exp (1 ulp, simd/math.hpp) on x - max <= 0.
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
#include "segml/simd/dispatch.hpp"
#include "segml/simd/math.hpp"

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
// output line once. Only the per-tile math works on vectors.
namespace detail {

inline constexpr int64_t kCrossEntropyTile = 16;  // pixels per tile: one 64-byte line per class

// The per-tile math, written once on the simd backends: a tile row of 16 pixels is 16 / S::lanes
// vectors (AVX-512 1, AVX2 2, NEON 4), independent dependency chains.
// max[j] = max_c t[c][j], sum[j] = sum_c exp(t[c][j] - max[j]).  t (C, 16), max, sum (16)
template <class S>
inline void ce_tile_stats(const float* t, int64_t C, float* max, float* sum) {
  constexpr int64_t kT = kCrossEntropyTile, kV = kT / S::lanes;
  typename S::V m[kV], s[kV];
  for (int64_t v = 0; v < kV; ++v) m[v] = S::load(t + v * S::lanes);
  for (int64_t c = 1; c < C; ++c)
    for (int64_t v = 0; v < kV; ++v) m[v] = S::max(m[v], S::load(t + c * kT + v * S::lanes));
  for (int64_t v = 0; v < kV; ++v) s[v] = S::zero();
  for (int64_t c = 0; c < C; ++c)
    for (int64_t v = 0; v < kV; ++v) s[v] = s[v] + simd::exp<S>(S::load(t + c * kT + v * S::lanes) - m[v]);
  for (int64_t v = 0; v < kV; ++v) {
    S::store(max + v * S::lanes, m[v]);
    S::store(sum + v * S::lanes, s[v]);
  }
}

// t[c][j] = w[j] * softmax_c(t[., j]).  t (C, 16), w (16)
template <class S>
inline void ce_tile_softmax(float* t, int64_t C, const float* w) {
  constexpr int64_t kT = kCrossEntropyTile, kV = kT / S::lanes;
  typename S::V m[kV], s[kV];
  for (int64_t v = 0; v < kV; ++v) m[v] = S::load(t + v * S::lanes);
  for (int64_t c = 1; c < C; ++c)
    for (int64_t v = 0; v < kV; ++v) m[v] = S::max(m[v], S::load(t + c * kT + v * S::lanes));
  for (int64_t v = 0; v < kV; ++v) s[v] = S::zero();
  for (int64_t c = 0; c < C; ++c)
    for (int64_t v = 0; v < kV; ++v) {
      const typename S::V e = simd::exp<S>(S::load(t + c * kT + v * S::lanes) - m[v]);
      S::store(t + c * kT + v * S::lanes, e);
      s[v] = s[v] + e;
    }
  for (int64_t v = 0; v < kV; ++v) s[v] = S::load(w + v * S::lanes) / s[v];  // s becomes w / sum
  for (int64_t c = 0; c < C; ++c)
    for (int64_t v = 0; v < kV; ++v) S::store(t + c * kT + v * S::lanes, S::load(t + c * kT + v * S::lanes) * s[v]);
}

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
template <class S>
inline double ce_forward_chunk_tiled(const float* x, const int64_t* lab, int64_t C, int64_t P, int64_t p0, int64_t p1,
                                     int64_t ignore_index) {
  constexpr int64_t kT = kCrossEntropyTile;
  std::vector<float> tile(static_cast<size_t>(C * kT));
  float mv[kT], sv[kT];
  double acc = 0;
  int64_t p = p0;
  for (; p + kT <= p1; p += kT) {
    ce_gather_tile(tile.data(), x, C, P, p, p1);
    ce_tile_stats<S>(tile.data(), C, mv, sv);
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
template <class S>
inline void ce_backward_chunk_tiled(float* d, const float* x, const int64_t* lab, int64_t C, int64_t P, int64_t p0,
                                    int64_t p1, int64_t ignore_index, float scale) {
  constexpr int64_t kT = kCrossEntropyTile;
  std::vector<float> tile(static_cast<size_t>(C * kT));
  float w[kT];  // scale at valid pixels, 0 at ignored ones
  int64_t p = p0;
  for (; p + kT <= p1; p += kT) {
    ce_gather_tile(tile.data(), x, C, P, p, p1);
    for (int64_t j = 0; j < kT; ++j) w[j] = lab[p + j] != ignore_index ? scale : 0.0f;
    ce_tile_softmax<S>(tile.data(), C, w);
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

}  // namespace detail

// ---- dispatch -----------------------------------------------------------------------------------

// Sum of the per-pixel losses over non-ignored pixels (labels validated).  logits (B, C, P), labels (B, P)
template <class T>
inline double cross_entropy_forward(const T* logits, const int64_t* labels, int64_t B, int64_t C, int64_t P,
                                    int64_t ignore_index) {
  const Isa level = isa();
  if (simd::lanes<T>(level) == 1) return cross_entropy_forward_ref(logits, labels, B, C, P, ignore_index);
  return detail::ce_chunked_sum(B, P, [&](int64_t b, int64_t p0, int64_t p1) {
    return simd::dispatch_on<T>(level, [&](auto s) {
      if constexpr (decltype(s)::lanes == 1)
        return 0.0;  // not reached: the scalar backend took the twin above
      else
        return detail::ce_forward_chunk_tiled<decltype(s)>(logits + b * C * P, labels + b * P, C, P, p0, p1, ignore_index);
    });
  });
}

// dlogits = scale * (softmax(logits) - onehot(labels)), 0 at ignored pixels (labels validated).
// dlogits, logits (B, C, P), labels (B, P)
template <class T>
inline void cross_entropy_backward(T* dlogits, const T* logits, const int64_t* labels, int64_t B, int64_t C, int64_t P,
                                   int64_t ignore_index, T scale) {
  const Isa level = isa();
  if (simd::lanes<T>(level) == 1) return cross_entropy_backward_ref(dlogits, logits, labels, B, C, P, ignore_index, scale);
  detail::ce_for_each_chunk(B, P, [&](int64_t, int64_t b, int64_t p0, int64_t p1) {
    simd::dispatch_on<T>(level, [&](auto s) {
      if constexpr (decltype(s)::lanes > 1)
        detail::ce_backward_chunk_tiled<decltype(s)>(dlogits + b * C * P, logits + b * C * P, labels + b * P, C, P, p0,
                                                     p1, ignore_index, scale);
    });
  });
}

}  // namespace segml::kernels
