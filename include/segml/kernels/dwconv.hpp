// segml/kernels/dwconv.hpp: depthwise 3x3 convolution, stride 1, padding 1 (SegFormer's Mix-FFN
// dwconv, torch Conv2d(C, C, 3, padding=1, groups=C)), forward and backward, in two layouts:
//   NCHW  x (B, C, H, W)  PyTorch's layout; SIMD over W.
//   NHWC  x (B, H, W, C)  the token layout (B, N = H*W, C) seen as an image; SIMD over C.
// Weights are always PyTorch's (C, 1, 3, 3), bias (C) or null; y has x's shape.
// dwconv3x3_nhwc_gelu_forward applies GELU in the same pass; dwconv3x3_nhwc_row does one output
// row from three given input rows (the inference engine's Mix-FFN, which never holds its input whole).
//
// Contract:
//  - Backward gives dx, dw, db (each may be null; overwritten, never accumulated). The input
//    gradient is the same convolution with the kernel flipped (dx = dy ⋆ rot180(w)), so it runs on
//    the forward kernel.
//  - Float dispatches once per call on segml::isa(): AVX-512, AVX2+FMA, or the scalar twin
//    (*_ref, the oracle; also the path for double and for non-x86 builds). Results of the SIMD paths
//    differ from the twin only by float rounding (FMA, summation order).
//  - Weight gradients are reduced over fixed tiles of rows / planes in a fixed order, so results do
//    not depend on the thread count.
#pragma once

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "segml/core/cpu.hpp"
#include "segml/core/parallel.hpp"
#include "segml/kernels/activations.hpp"

namespace segml::kernels {

// ---- scalar reference twins --------------------------------------------------------------------

// y[b][c][h][w] = b[c] + Σ_{kh,kw} x[b][c][h+kh-1][w+kw-1] · w[c][kh][kw].  x, y (B, C, H, W), w (C, 1, 3, 3)
template <class T>
inline void dwconv3x3_nchw_forward_ref(T* y, const T* x, const T* w, const T* b, int64_t B, int64_t C, int64_t H,
                                       int64_t W) {
  for (int64_t p = 0; p < B * C; ++p) {
    const int64_t c = p % C;
    const T* xp = x + p * H * W;
    for (int64_t h = 0; h < H; ++h)
      for (int64_t j = 0; j < W; ++j) {
        T acc = b ? b[c] : T(0);
        for (int64_t kh = 0; kh < 3; ++kh)
          for (int64_t kw = 0; kw < 3; ++kw) {
            const int64_t ih = h + kh - 1, iw = j + kw - 1;
            if (ih >= 0 && ih < H && iw >= 0 && iw < W) acc += xp[ih * W + iw] * w[c * 9 + kh * 3 + kw];
          }
        y[p * H * W + h * W + j] = acc;
      }
  }
}

// dx, dw, db of dwconv3x3_nchw_forward (each may be null).  dy, x, dx (B, C, H, W), dw (C, 1, 3, 3), db (C)
template <class T>
inline void dwconv3x3_nchw_backward_ref(T* dx, T* dw, T* db, const T* dy, const T* x, const T* w, int64_t B, int64_t C,
                                        int64_t H, int64_t W) {
  if (dx) std::fill(dx, dx + B * C * H * W, T(0));
  if (dw) std::fill(dw, dw + C * 9, T(0));
  if (db) std::fill(db, db + C, T(0));
  for (int64_t p = 0; p < B * C; ++p) {
    const int64_t c = p % C;
    for (int64_t h = 0; h < H; ++h)
      for (int64_t j = 0; j < W; ++j) {
        const T d = dy[p * H * W + h * W + j];
        if (db) db[c] += d;
        for (int64_t kh = 0; kh < 3; ++kh)
          for (int64_t kw = 0; kw < 3; ++kw) {
            const int64_t ih = h + kh - 1, iw = j + kw - 1;
            if (ih < 0 || ih >= H || iw < 0 || iw >= W) continue;
            if (dx) dx[p * H * W + ih * W + iw] += d * w[c * 9 + kh * 3 + kw];
            if (dw) dw[c * 9 + kh * 3 + kw] += d * x[p * H * W + ih * W + iw];
          }
      }
  }
}

// y[b][h][w][c] = b[c] + Σ_{kh,kw} x[b][h+kh-1][w+kw-1][c] · w[c][kh][kw].  x, y (B, H, W, C), w (C, 1, 3, 3)
template <class T>
inline void dwconv3x3_nhwc_forward_ref(T* y, const T* x, const T* w, const T* b, int64_t B, int64_t H, int64_t W,
                                       int64_t C) {
  for (int64_t r = 0; r < B * H; ++r) {
    const int64_t h = r % H;
    const T* img = x + (r - h) * W * C;
    for (int64_t j = 0; j < W; ++j)
      for (int64_t c = 0; c < C; ++c) {
        T acc = b ? b[c] : T(0);
        for (int64_t kh = 0; kh < 3; ++kh)
          for (int64_t kw = 0; kw < 3; ++kw) {
            const int64_t ih = h + kh - 1, iw = j + kw - 1;
            if (ih >= 0 && ih < H && iw >= 0 && iw < W) acc += img[(ih * W + iw) * C + c] * w[c * 9 + kh * 3 + kw];
          }
        y[(r * W + j) * C + c] = acc;
      }
  }
}

// dx, dw, db of dwconv3x3_nhwc_forward (each may be null).  dy, x, dx (B, H, W, C), dw (C, 1, 3, 3), db (C)
template <class T>
inline void dwconv3x3_nhwc_backward_ref(T* dx, T* dw, T* db, const T* dy, const T* x, const T* w, int64_t B, int64_t H,
                                        int64_t W, int64_t C) {
  if (dx) std::fill(dx, dx + B * H * W * C, T(0));
  if (dw) std::fill(dw, dw + C * 9, T(0));
  if (db) std::fill(db, db + C, T(0));
  for (int64_t r = 0; r < B * H; ++r) {
    const int64_t h = r % H, img = (r - h) * W * C;
    for (int64_t j = 0; j < W; ++j)
      for (int64_t c = 0; c < C; ++c) {
        const T d = dy[(r * W + j) * C + c];
        if (db) db[c] += d;
        for (int64_t kh = 0; kh < 3; ++kh)
          for (int64_t kw = 0; kw < 3; ++kw) {
            const int64_t ih = h + kh - 1, iw = j + kw - 1;
            if (ih < 0 || ih >= H || iw < 0 || iw >= W) continue;
            const int64_t xi = img + (ih * W + iw) * C + c;
            if (dx) dx[xi] += d * w[c * 9 + kh * 3 + kw];
            if (dw) dw[c * 9 + kh * 3 + kw] += d * x[xi];
          }
      }
  }
}

// ---- SIMD kernels (float) ----------------------------------------------------------------------
// Each works on a range of rows / planes / channel blocks so that the dispatchers below own the
// threading. Weights arrive pre-arranged: NCHW as (C, 9), NHWC transposed to (9, C); bias is never
// null here (zeros when absent).
namespace detail {

inline int64_t round_up(int64_t n, int64_t m) { return (n + m - 1) / m * m; }

// Smallest chunk of `unit`-element work items worth handing to a thread.
inline int64_t dw_grain(int64_t unit) { return std::max<int64_t>(1, (int64_t{1} << 14) / std::max<int64_t>(1, unit)); }

// Copies plane xp (H, W) into pad ((H+2), Wp) at (1, 1); pad's border must already be zero.
inline void copy_padded_plane(float* pad, const float* xp, int64_t H, int64_t W, int64_t Wp) {
  for (int64_t h = 0; h < H; ++h) std::copy(xp + h * W, xp + (h + 1) * W, pad + (h + 1) * Wp + 1);
}

// Rows of the image around row h: rows[kh] is input row h+kh-1, or null outside the image.
inline void neighbour_rows(const float* rows[3], const float* img, int64_t h, int64_t H, int64_t row_stride) {
  for (int64_t kh = 0; kh < 3; ++kh) {
    const int64_t ih = h + kh - 1;
    rows[kh] = ih >= 0 && ih < H ? img + ih * row_stride : nullptr;
  }
}

#if defined(__x86_64__)

// First n (1..8) lanes set.
SEGML_TARGET_AVX2 inline __m256i avx2_mask(int64_t n) {
  alignas(32) static const int32_t bits[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};
  return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(bits + 8 - n));
}
SEGML_TARGET_AVX2 inline float avx2_hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
// (Not _mm512_reduce_add_ps: GCC 12's version trips -Wmaybe-uninitialized.)
SEGML_TARGET_AVX512 inline float avx512_hsum(__m512 v) {
  alignas(64) float lanes[16];
  _mm512_store_ps(lanes, v);
  float s = 0;
  for (float l : lanes) s += l;
  return s;
}
SEGML_TARGET_AVX512 inline __mmask16 avx512_mask(int64_t n) {
  return static_cast<__mmask16>(n >= 16 ? 0xFFFFu : (1u << n) - 1u);
}

template <bool kFull>
SEGML_TARGET_AVX2 inline __m256 avx2_load(const float* p, __m256i m) {
  if constexpr (kFull)
    return _mm256_loadu_ps(p);
  else
    return _mm256_maskload_ps(p, m);
}
template <bool kFull>
SEGML_TARGET_AVX2 inline void avx2_store(float* p, __m256i m, __m256 v) {
  if constexpr (kFull)
    _mm256_storeu_ps(p, v);
  else
    _mm256_maskstore_ps(p, m, v);
}

// The AVX2 NHWC kernels walk pixels in the outer loop and channel blocks in the inner one, so memory
// is read contiguously (a channel block swept along a row would stride by C and keep hitting the
// same few L1 sets). Interior pixels go four at a time: each input vector loaded serves up to three
// of them, and each weight vector four. kFull: all 8 lanes are channels (else the first C - c, masked).

// Output pixel j of one row, channels [c, c+8), any j (taps outside the row skipped).
template <bool kFull>
SEGML_TARGET_AVX2 __attribute__((flatten)) inline void dw_nhwc_pixel_avx2(float* yr, const float* const rows[3], const float* wt, const float* bias,
                                             int64_t j, int64_t W, int64_t C, int64_t c, __m256i m, bool gelu) {
  __m256 acc = avx2_load<kFull>(bias + c, m);
  for (int kh = 0; kh < 3; ++kh) {
    if (!rows[kh]) continue;
    const float* p = rows[kh] + j * C + c;
    const float* w = wt + kh * 3 * C + c;
    if (j > 0) acc = _mm256_fmadd_ps(avx2_load<kFull>(p - C, m), avx2_load<kFull>(w, m), acc);
    acc = _mm256_fmadd_ps(avx2_load<kFull>(p, m), avx2_load<kFull>(w + C, m), acc);
    if (j + 1 < W) acc = _mm256_fmadd_ps(avx2_load<kFull>(p + C, m), avx2_load<kFull>(w + 2 * C, m), acc);
  }
  avx2_store<kFull>(yr + j * C + c, m, gelu ? kernels::detail::gelu<simd::Avx2>(acc).r : acc);
}

// Output pixels j..j+3 of one row, channels [c, c+8); requires 1 <= j and j + 4 < W (all taps inside).
template <bool kFull>
SEGML_TARGET_AVX2 __attribute__((flatten)) inline void dw_nhwc_quad_avx2(float* yr, const float* const rows[3], const float* wt, const float* bias,
                                            int64_t j, int64_t C, int64_t c, __m256i m, bool gelu) {
  // Fully unrolled, so that acc[] lives in registers (a loop left rolled keeps it on the stack and
  // every FMA waits for a store-to-load round trip).
  __m256 acc[4];
#pragma GCC unroll 4
  for (int q = 0; q < 4; ++q) acc[q] = avx2_load<kFull>(bias + c, m);
#pragma GCC unroll 3
  for (int kh = 0; kh < 3; ++kh) {
    if (!rows[kh]) continue;
    const float* p = rows[kh] + (j - 1) * C + c;  // x[j-1 .. j+4]
    __m256 w[3];
#pragma GCC unroll 3
    for (int kw = 0; kw < 3; ++kw) w[kw] = avx2_load<kFull>(wt + (kh * 3 + kw) * C + c, m);
#pragma GCC unroll 6
    for (int i = 0; i < 6; ++i) {
      const __m256 xv = avx2_load<kFull>(p + i * C, m);
#pragma GCC unroll 4
      for (int q = 0; q < 4; ++q)  // x[j-1+i] is tap kw = i - q of output pixel j+q
        if (i - q >= 0 && i - q < 3) acc[q] = _mm256_fmadd_ps(xv, w[i - q], acc[q]);
    }
  }
#pragma GCC unroll 4
  for (int q = 0; q < 4; ++q) avx2_store<kFull>(yr + (j + q) * C + c, m, gelu ? kernels::detail::gelu<simd::Avx2>(acc[q]).r : acc[q]);
}

// NHWC forward of one output row yr (W, C) from its input rows (rows[kh]: row h+kh-1, or null
// outside the image), GELU applied to the result when `gelu`.  wt (9, C), bias (C)
SEGML_TARGET_AVX2 inline void dw_nhwc_row_avx2(float* yr, const float* const rows[3], const float* wt, const float* bias,
                                           int64_t W, int64_t C, bool gelu) {
  const int64_t C8 = C / 8 * 8;
  const __m256i m = avx2_mask(C - C8 ? C - C8 : 8);
  for (int64_t j = 0; j < W;) {
    if (j >= 1 && j + 4 < W) {
      for (int64_t c = 0; c < C8; c += 8) dw_nhwc_quad_avx2<true>(yr, rows, wt, bias, j, C, c, m, gelu);
      if (C8 < C) dw_nhwc_quad_avx2<false>(yr, rows, wt, bias, j, C, C8, m, gelu);
      j += 4;
    } else {
      for (int64_t c = 0; c < C8; c += 8) dw_nhwc_pixel_avx2<true>(yr, rows, wt, bias, j, W, C, c, m, gelu);
      if (C8 < C) dw_nhwc_pixel_avx2<false>(yr, rows, wt, bias, j, W, C, C8, m, gelu);
      j += 1;
    }
  }
}

// NHWC forward, image rows [r0, r1) of B*H, GELU applied to the result when `gelu`.  wt (9, C), bias (C)
SEGML_TARGET_AVX2 inline void dw_nhwc_rows_avx2(float* y, const float* x, const float* wt, const float* bias, int64_t H,
                                            int64_t W, int64_t C, int64_t r0, int64_t r1, bool gelu) {
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t h = r % H;
    const float* rows[3];
    neighbour_rows(rows, x + (r - h) * W * C, h, H, W * C);
    dw_nhwc_row_avx2(y + r * W * C, rows, wt, bias, W, C, gelu);
  }
}

// part (10, C) += the weight / bias gradient terms of pixel j of one row, channels [c, c+8).
template <bool kFull>
SEGML_TARGET_AVX2 inline void dw_nhwc_wgrad_pixel_avx2(float* part, const float* dyr, const float* const rows[3], int64_t j,
                                                   int64_t W, int64_t C, int64_t c, __m256i m) {
  const __m256 g = avx2_load<kFull>(dyr + j * C + c, m);
  float* a = part + c;
  avx2_store<kFull>(a + 9 * C, m, _mm256_add_ps(avx2_load<kFull>(a + 9 * C, m), g));
  for (int kh = 0; kh < 3; ++kh) {
    if (!rows[kh]) continue;
    const float* p = rows[kh] + j * C + c;
    for (int kw = 0; kw < 3; ++kw) {
      if ((kw == 0 && j == 0) || (kw == 2 && j + 1 == W)) continue;
      float* ak = a + (kh * 3 + kw) * C;
      avx2_store<kFull>(ak, m, _mm256_fmadd_ps(g, avx2_load<kFull>(p + (kw - 1) * C, m), avx2_load<kFull>(ak, m)));
    }
  }
}

// part (10, C) += the terms of pixels j..j+3 of one row, channels [c, c+8); requires 1 <= j, j + 4 < W.
template <bool kFull>
SEGML_TARGET_AVX2 inline void dw_nhwc_wgrad_quad_avx2(float* part, const float* dyr, const float* const rows[3], int64_t j,
                                                  int64_t C, int64_t c, __m256i m) {
  __m256 g[4];
  for (int q = 0; q < 4; ++q) g[q] = avx2_load<kFull>(dyr + (j + q) * C + c, m);
  float* a = part + c;
  const __m256 gsum = _mm256_add_ps(_mm256_add_ps(g[0], g[1]), _mm256_add_ps(g[2], g[3]));
  avx2_store<kFull>(a + 9 * C, m, _mm256_add_ps(avx2_load<kFull>(a + 9 * C, m), gsum));
  for (int kh = 0; kh < 3; ++kh) {
    if (!rows[kh]) continue;
    const float* p = rows[kh] + (j - 1) * C + c;  // x[j-1 .. j+4]
    __m256 xv[6];
    for (int i = 0; i < 6; ++i) xv[i] = avx2_load<kFull>(p + i * C, m);
    for (int kw = 0; kw < 3; ++kw) {  // tap kw of pixel j+q reads x[j+q+kw-1] = xv[q+kw]
      float* ak = a + (kh * 3 + kw) * C;
      __m256 acc = avx2_load<kFull>(ak, m);
      for (int q = 0; q < 4; ++q) acc = _mm256_fmadd_ps(g[q], xv[q + kw], acc);
      avx2_store<kFull>(ak, m, acc);
    }
  }
}

// NHWC weight / bias gradient of rows [r0, r1): part (10, C) = [dwt (9, C); db (C)] of those rows.
SEGML_TARGET_AVX2 inline void dw_nhwc_wgrad_rows_avx2(float* part, const float* dy, const float* x, int64_t H, int64_t W,
                                                  int64_t C, int64_t r0, int64_t r1) {
  const int64_t C8 = C / 8 * 8;
  const __m256i m = avx2_mask(C - C8 ? C - C8 : 8);
  std::fill(part, part + 10 * C, 0.0f);
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t h = r % H;
    const float* rows[3];
    neighbour_rows(rows, x + (r - h) * W * C, h, H, W * C);
    const float* dyr = dy + r * W * C;
    for (int64_t j = 0; j < W;) {
      if (j >= 1 && j + 4 < W) {
        for (int64_t c = 0; c < C8; c += 8) dw_nhwc_wgrad_quad_avx2<true>(part, dyr, rows, j, C, c, m);
        if (C8 < C) dw_nhwc_wgrad_quad_avx2<false>(part, dyr, rows, j, C, C8, m);
        j += 4;
      } else {
        for (int64_t c = 0; c < C8; c += 8) dw_nhwc_wgrad_pixel_avx2<true>(part, dyr, rows, j, W, C, c, m);
        if (C8 < C) dw_nhwc_wgrad_pixel_avx2<false>(part, dyr, rows, j, W, C, C8, m);
        j += 1;
      }
    }
  }
}

// NCHW forward, planes [p0, p1) of B*C.  w9 (C, 9), bias (C)
SEGML_TARGET_AVX2 inline void dw_nchw_planes_avx2(float* y, const float* x, const float* w9, const float* bias, int64_t C,
                                              int64_t H, int64_t W, int64_t p0, int64_t p1) {
  const int64_t Wp = round_up(W, 8) + 2;
  std::vector<float> pad(static_cast<size_t>((H + 2) * Wp), 0.0f);
  const __m256i tail = avx2_mask(W % 8 ? W % 8 : 8);
  for (int64_t p = p0; p < p1; ++p) {
    const int64_t c = p % C;
    copy_padded_plane(pad.data(), x + p * H * W, H, W, Wp);
    __m256 wv[9];
    for (int k = 0; k < 9; ++k) wv[k] = _mm256_set1_ps(w9[c * 9 + k]);
    const __m256 bv = _mm256_set1_ps(bias[c]);
    for (int64_t h = 0; h < H; ++h) {
      float* yr = y + p * H * W + h * W;
      for (int64_t j = 0; j < W; j += 8) {
        __m256 acc = bv;
        for (int kh = 0; kh < 3; ++kh) {
          const float* s = pad.data() + (h + kh) * Wp + j;
          for (int kw = 0; kw < 3; ++kw) acc = _mm256_fmadd_ps(_mm256_loadu_ps(s + kw), wv[kh * 3 + kw], acc);
        }
        if (W - j >= 8)
          _mm256_storeu_ps(yr + j, acc);
        else
          _mm256_maskstore_ps(yr + j, tail, acc);
      }
    }
  }
}

// NCHW weight / bias gradient per plane p in [p0, p1): part (B*C, 10) = [dw (9), db] of that plane.
SEGML_TARGET_AVX2 inline void dw_nchw_wgrad_planes_avx2(float* part, const float* dy, const float* x, int64_t H, int64_t W,
                                                    int64_t p0, int64_t p1) {
  const int64_t Wp = round_up(W, 8) + 2;
  std::vector<float> pad(static_cast<size_t>((H + 2) * Wp), 0.0f);
  const __m256i tail = avx2_mask(W % 8 ? W % 8 : 8);
  for (int64_t p = p0; p < p1; ++p) {
    copy_padded_plane(pad.data(), x + p * H * W, H, W, Wp);
    __m256 acc[10];
    for (auto& a : acc) a = _mm256_setzero_ps();
    for (int64_t h = 0; h < H; ++h)
      for (int64_t j = 0; j < W; j += 8) {
        const float* d = dy + p * H * W + h * W + j;
        const __m256 g = W - j >= 8 ? _mm256_loadu_ps(d) : _mm256_maskload_ps(d, tail);  // zero past the row end
        acc[9] = _mm256_add_ps(acc[9], g);
        for (int kh = 0; kh < 3; ++kh) {
          const float* s = pad.data() + (h + kh) * Wp + j;
          for (int kw = 0; kw < 3; ++kw)
            acc[kh * 3 + kw] = _mm256_fmadd_ps(g, _mm256_loadu_ps(s + kw), acc[kh * 3 + kw]);
        }
      }
    for (int k = 0; k < 10; ++k) part[p * 10 + k] = avx2_hsum(acc[k]);
  }
}

// The AVX-512 kernels: the same loops, 16 lanes, masks instead of tail branches.
SEGML_TARGET_AVX512 __attribute__((flatten)) inline void dw_nhwc_rows_avx512(float* y, const float* x, const float* wt, const float* bias, int64_t H,
                                                int64_t W, int64_t C, int64_t r0, int64_t r1, bool gelu) {
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t h = r % H;
    const float* rows[3];
    neighbour_rows(rows, x + (r - h) * W * C, h, H, W * C);
    float* yr = y + r * W * C;
    for (int64_t c = 0; c < C; c += 16) {
      const __mmask16 m = avx512_mask(C - c);
      __m512 wv[9];
      for (int k = 0; k < 9; ++k) wv[k] = _mm512_maskz_loadu_ps(m, wt + k * C + c);
      const __m512 bv = _mm512_maskz_loadu_ps(m, bias + c);
      for (int64_t j = 0; j < W; ++j) {
        __m512 acc = bv;
        for (int kh = 0; kh < 3; ++kh) {
          if (!rows[kh]) continue;
          const float* p = rows[kh] + j * C + c;
          if (j > 0) acc = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, p - C), wv[kh * 3], acc);
          acc = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, p), wv[kh * 3 + 1], acc);
          if (j + 1 < W) acc = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, p + C), wv[kh * 3 + 2], acc);
        }
        _mm512_mask_storeu_ps(yr + j * C + c, m, gelu ? kernels::detail::gelu<simd::Avx512>(acc).r : acc);
      }
    }
  }
}

SEGML_TARGET_AVX512 inline void dw_nhwc_wgrad_rows_avx512(float* part, const float* dy, const float* x, int64_t H,
                                                      int64_t W, int64_t C, int64_t r0, int64_t r1) {
  for (int64_t c = 0; c < C; c += 16) {
    const __mmask16 m = avx512_mask(C - c);
    __m512 acc[10];
    for (auto& a : acc) a = _mm512_setzero_ps();
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t h = r % H;
      const float* rows[3];
      neighbour_rows(rows, x + (r - h) * W * C, h, H, W * C);
      for (int64_t j = 0; j < W; ++j) {
        const __m512 g = _mm512_maskz_loadu_ps(m, dy + (r * W + j) * C + c);
        acc[9] = _mm512_add_ps(acc[9], g);
        for (int kh = 0; kh < 3; ++kh) {
          if (!rows[kh]) continue;
          const float* p = rows[kh] + j * C + c;
          if (j > 0) acc[kh * 3] = _mm512_fmadd_ps(g, _mm512_maskz_loadu_ps(m, p - C), acc[kh * 3]);
          acc[kh * 3 + 1] = _mm512_fmadd_ps(g, _mm512_maskz_loadu_ps(m, p), acc[kh * 3 + 1]);
          if (j + 1 < W) acc[kh * 3 + 2] = _mm512_fmadd_ps(g, _mm512_maskz_loadu_ps(m, p + C), acc[kh * 3 + 2]);
        }
      }
    }
    for (int k = 0; k < 10; ++k) _mm512_mask_storeu_ps(part + k * C + c, m, acc[k]);
  }
}

SEGML_TARGET_AVX512 inline void dw_nchw_planes_avx512(float* y, const float* x, const float* w9, const float* bias,
                                                  int64_t C, int64_t H, int64_t W, int64_t p0, int64_t p1) {
  const int64_t Wp = round_up(W, 16) + 2;
  std::vector<float> pad(static_cast<size_t>((H + 2) * Wp), 0.0f);
  for (int64_t p = p0; p < p1; ++p) {
    const int64_t c = p % C;
    copy_padded_plane(pad.data(), x + p * H * W, H, W, Wp);
    __m512 wv[9];
    for (int k = 0; k < 9; ++k) wv[k] = _mm512_set1_ps(w9[c * 9 + k]);
    const __m512 bv = _mm512_set1_ps(bias[c]);
    for (int64_t h = 0; h < H; ++h) {
      float* yr = y + p * H * W + h * W;
      for (int64_t j = 0; j < W; j += 16) {
        __m512 acc = bv;
        for (int kh = 0; kh < 3; ++kh) {
          const float* s = pad.data() + (h + kh) * Wp + j;
          for (int kw = 0; kw < 3; ++kw) acc = _mm512_fmadd_ps(_mm512_loadu_ps(s + kw), wv[kh * 3 + kw], acc);
        }
        _mm512_mask_storeu_ps(yr + j, avx512_mask(W - j), acc);
      }
    }
  }
}

SEGML_TARGET_AVX512 inline void dw_nchw_wgrad_planes_avx512(float* part, const float* dy, const float* x, int64_t H,
                                                        int64_t W, int64_t p0, int64_t p1) {
  const int64_t Wp = round_up(W, 16) + 2;
  std::vector<float> pad(static_cast<size_t>((H + 2) * Wp), 0.0f);
  for (int64_t p = p0; p < p1; ++p) {
    copy_padded_plane(pad.data(), x + p * H * W, H, W, Wp);
    __m512 acc[10];
    for (auto& a : acc) a = _mm512_setzero_ps();
    for (int64_t h = 0; h < H; ++h)
      for (int64_t j = 0; j < W; j += 16) {
        const __m512 g = _mm512_maskz_loadu_ps(avx512_mask(W - j), dy + p * H * W + h * W + j);
        acc[9] = _mm512_add_ps(acc[9], g);
        for (int kh = 0; kh < 3; ++kh) {
          const float* s = pad.data() + (h + kh) * Wp + j;
          for (int kw = 0; kw < 3; ++kw)
            acc[kh * 3 + kw] = _mm512_fmadd_ps(g, _mm512_loadu_ps(s + kw), acc[kh * 3 + kw]);
        }
      }
    for (int k = 0; k < 10; ++k) part[p * 10 + k] = avx512_hsum(acc[k]);
  }
}

#endif  // __x86_64__

// rot180 of each 3x3 kernel: the input gradient is the forward convolution with these weights.
inline std::vector<float> flipped_kernels(const float* w, int64_t C) {
  std::vector<float> f(static_cast<size_t>(C * 9));
  for (int64_t c = 0; c < C; ++c)
    for (int64_t k = 0; k < 9; ++k) f[static_cast<size_t>(c * 9 + k)] = w[c * 9 + 8 - k];
  return f;
}

inline std::vector<float> bias_or_zeros(const float* b, int64_t C) {
  return b ? std::vector<float>(b, b + C) : std::vector<float>(static_cast<size_t>(C), 0.0f);
}

// Whether `i` has this kernel's own SIMD code: AVX2 or AVX-512 (it is not on the SIMD layer yet,
// so NEON and scalar take the portable loops).
inline bool dw_has_simd(Isa i) { return i == Isa::avx2 || i == Isa::avx512; }

// The SIMD NCHW forward over all planes (w9 (C, 9), bias (C)); false when no SIMD ISA is active.
inline bool dw_nchw_apply_simd(float* y, const float* x, const float* w9, const float* bias, int64_t B, int64_t C,
                               int64_t H, int64_t W) {
#if defined(__x86_64__)
  const Isa i = isa();
  if (!dw_has_simd(i)) return false;
  parallel_for(B * C, dw_grain(H * W), [&](int64_t p0, int64_t p1) {
    if (i == Isa::avx512)
      dw_nchw_planes_avx512(y, x, w9, bias, C, H, W, p0, p1);
    else
      dw_nchw_planes_avx2(y, x, w9, bias, C, H, W, p0, p1);
  });
  return true;
#else
  (void)y, (void)x, (void)w9, (void)bias, (void)B, (void)C, (void)H, (void)W;
  return false;
#endif
}

// The SIMD NHWC forward over all rows (wt (9, C), bias (C)), then GELU when `gelu`; false when no
// SIMD ISA is active.
inline bool dw_nhwc_apply_simd(float* y, const float* x, const float* wt, const float* bias, int64_t B, int64_t H,
                               int64_t W, int64_t C, bool gelu = false) {
#if defined(__x86_64__)
  const Isa i = isa();
  if (!dw_has_simd(i)) return false;
  parallel_for(B * H, dw_grain(W * C), [&](int64_t r0, int64_t r1) {
    if (i == Isa::avx512)
      dw_nhwc_rows_avx512(y, x, wt, bias, H, W, C, r0, r1, gelu);
    else
      dw_nhwc_rows_avx2(y, x, wt, bias, H, W, C, r0, r1, gelu);
  });
  return true;
#else
  (void)y, (void)x, (void)wt, (void)bias, (void)B, (void)H, (void)W, (void)C, (void)gelu;
  return false;
#endif
}

}  // namespace detail

// The kernel (C, 1, 3, 3) rearranged tap-major (9, C), as the NHWC kernels read it (they vectorise
// over C): the taps argument of dwconv3x3_nhwc_row.
template <class T>
inline std::vector<T> dwconv3x3_nhwc_taps(const T* w, int64_t C) {
  std::vector<T> t(static_cast<size_t>(C * 9));
  for (int64_t c = 0; c < C; ++c)
    for (int64_t k = 0; k < 9; ++k) t[static_cast<size_t>(k * C + c)] = w[c * 9 + k];
  return t;
}

// ---- dispatchers -------------------------------------------------------------------------------

// NCHW forward.  x, y (B, C, H, W), w (C, 1, 3, 3), b (C) or null
template <class T>
inline void dwconv3x3_nchw_forward(T* y, const T* x, const T* w, const T* b, int64_t B, int64_t C, int64_t H,
                                   int64_t W) {
  if constexpr (std::is_same_v<T, float>) {
    const std::vector<float> bias = detail::bias_or_zeros(b, C);
    if (detail::dw_nchw_apply_simd(y, x, w, bias.data(), B, C, H, W)) return;
  }
  dwconv3x3_nchw_forward_ref(y, x, w, b, B, C, H, W);
}

// NCHW backward (dx, dw, db each may be null).  dy, x, dx (B, C, H, W), w, dw (C, 1, 3, 3), db (C)
template <class T>
inline void dwconv3x3_nchw_backward(T* dx, T* dw, T* db, const T* dy, const T* x, const T* w, int64_t B, int64_t C,
                                    int64_t H, int64_t W) {
  if constexpr (std::is_same_v<T, float>) {
    if (detail::dw_has_simd(isa())) {
      if (dx) {
        const std::vector<float> wf = detail::flipped_kernels(w, C), zeros(static_cast<size_t>(C), 0.0f);
        detail::dw_nchw_apply_simd(dx, dy, wf.data(), zeros.data(), B, C, H, W);
      }
      if (dw || db) {
#if defined(__x86_64__)
        std::vector<float> part(static_cast<size_t>(B * C * 10));
        const Isa i = isa();
        parallel_for(B * C, detail::dw_grain(H * W), [&](int64_t p0, int64_t p1) {
          if (i == Isa::avx512)
            detail::dw_nchw_wgrad_planes_avx512(part.data(), dy, x, H, W, p0, p1);
          else
            detail::dw_nchw_wgrad_planes_avx2(part.data(), dy, x, H, W, p0, p1);
        });
        for (int64_t c = 0; c < C; ++c)
          for (int64_t k = 0; k < 10; ++k) {
            float s = 0;
            for (int64_t bi = 0; bi < B; ++bi) s += part[static_cast<size_t>((bi * C + c) * 10 + k)];
            if (k < 9 && dw) dw[c * 9 + k] = s;
            if (k == 9 && db) db[c] = s;
          }
#endif
      }
      return;
    }
  }
  dwconv3x3_nchw_backward_ref(dx, dw, db, dy, x, w, B, C, H, W);
}

// NHWC forward.  x, y (B, H, W, C), w (C, 1, 3, 3), b (C) or null
template <class T>
inline void dwconv3x3_nhwc_forward(T* y, const T* x, const T* w, const T* b, int64_t B, int64_t H, int64_t W,
                                   int64_t C) {
  if constexpr (std::is_same_v<T, float>) {
    const std::vector<float> wt = dwconv3x3_nhwc_taps(w, C), bias = detail::bias_or_zeros(b, C);
    if (detail::dw_nhwc_apply_simd(y, x, wt.data(), bias.data(), B, H, W, C)) return;
  }
  dwconv3x3_nhwc_forward_ref(y, x, w, b, B, H, W, C);
}

// NHWC forward followed by GELU in the same pass (the Mix-FFN's dwconv -> GELU, for inference):
// y = gelu(dwconv3x3(x) + b), equal to dwconv3x3_nhwc_forward then gelu_forward.  x, y (B, H, W, C)
template <class T>
inline void dwconv3x3_nhwc_gelu_forward(T* y, const T* x, const T* w, const T* b, int64_t B, int64_t H, int64_t W,
                                        int64_t C) {
  if constexpr (std::is_same_v<T, float>) {
    const std::vector<float> wt = dwconv3x3_nhwc_taps(w, C), bias = detail::bias_or_zeros(b, C);
    if (detail::dw_nhwc_apply_simd(y, x, wt.data(), bias.data(), B, H, W, C, /*gelu=*/true)) return;
  }
  dwconv3x3_nhwc_forward_ref(y, x, w, b, B, H, W, C);
  gelu_forward_ref(y, y, B * H * W * C);
}

// One output row of dwconv3x3_nhwc_forward, GELU applied when `gelu`, serially, from its three
// input rows: rows[kh] is input row h + kh - 1, or null outside the image. For callers that make
// the input a few rows at a time and never hold it whole (the inference engine's Mix-FFN).
// y_row, rows[kh] (W, C), taps (9, C) from dwconv3x3_nhwc_taps, b (C) or null
template <class T>
inline void dwconv3x3_nhwc_row(T* y_row, const T* const rows[3], const T* taps, const T* b, int64_t W, int64_t C,
                               bool gelu) {
#if defined(__x86_64__)
  if constexpr (std::is_same_v<T, float>) {
    if (detail::dw_has_simd(isa()) && b) return detail::dw_nhwc_row_avx2(y_row, rows, taps, b, W, C, gelu);
  }
#endif
  for (int64_t j = 0; j < W; ++j)
    for (int64_t c = 0; c < C; ++c) {
      T acc = b ? b[c] : T(0);
      for (int64_t kh = 0; kh < 3; ++kh) {
        if (!rows[kh]) continue;
        for (int64_t kw = 0; kw < 3; ++kw) {
          const int64_t iw = j + kw - 1;
          if (iw >= 0 && iw < W) acc += rows[kh][iw * C + c] * taps[(kh * 3 + kw) * C + c];
        }
      }
      y_row[j * C + c] = acc;
    }
  if (gelu) gelu_forward_ref(y_row, y_row, W * C);
}

// NHWC backward (dx, dw, db each may be null).  dy, x, dx (B, H, W, C), w, dw (C, 1, 3, 3), db (C)
template <class T>
inline void dwconv3x3_nhwc_backward(T* dx, T* dw, T* db, const T* dy, const T* x, const T* w, int64_t B, int64_t H,
                                    int64_t W, int64_t C) {
  if constexpr (std::is_same_v<T, float>) {
    if (detail::dw_has_simd(isa())) {
      if (dx) {
        const std::vector<float> wt = dwconv3x3_nhwc_taps(detail::flipped_kernels(w, C).data(), C),
                                 zeros(static_cast<size_t>(C), 0.0f);
        detail::dw_nhwc_apply_simd(dx, dy, wt.data(), zeros.data(), B, H, W, C);
      }
      if (dw || db) {
#if defined(__x86_64__)
        // Tiles of whole rows, ~64K elements each, reduced in tile order: thread-count independent.
        const int64_t rows_per_tile = std::max<int64_t>(1, (int64_t{1} << 16) / std::max<int64_t>(1, W * C));
        const int64_t tiles = (B * H + rows_per_tile - 1) / rows_per_tile;
        std::vector<float> part(static_cast<size_t>(tiles * 10 * C));
        const Isa i = isa();
        parallel_for(tiles, 1, [&](int64_t t0, int64_t t1) {
          for (int64_t t = t0; t < t1; ++t) {
            const int64_t r0 = t * rows_per_tile, r1 = std::min(B * H, r0 + rows_per_tile);
            float* pt = part.data() + t * 10 * C;
            if (i == Isa::avx512)
              detail::dw_nhwc_wgrad_rows_avx512(pt, dy, x, H, W, C, r0, r1);
            else
              detail::dw_nhwc_wgrad_rows_avx2(pt, dy, x, H, W, C, r0, r1);
          }
        });
        for (int64_t k = 0; k < 10; ++k)
          for (int64_t c = 0; c < C; ++c) {
            float s = 0;
            for (int64_t t = 0; t < tiles; ++t) s += part[static_cast<size_t>((t * 10 + k) * C + c)];
            if (k < 9 && dw) dw[c * 9 + k] = s;
            if (k == 9 && db) db[c] = s;
          }
#endif
      }
      return;
    }
  }
  dwconv3x3_nhwc_backward_ref(dx, dw, db, dy, x, w, B, H, W, C);
}

}  // namespace segml::kernels
