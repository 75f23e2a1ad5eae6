// segml/kernels/attention.hpp: multi-head scaled-dot-product attention, forward and backward.
//
// This is the core of HF SegFormer's efficient self-attention, after the query/key/value
// projections (the sequence reduction only makes M, the number of keys, differ from N):
//   q (B, N, C), k (B, M, C), v (B, M, C), out (B, N, C); `heads` h, head dim d = C / h.
//   Head i is the contiguous channel slice [i*d, (i+1)*d) of every token.
//   For each batch b and head i:  P = softmax(q_i k_iᵀ / sqrt(d)) over keys (N x M),  out_i = P v_i.
//   causal (CLIP's text model; needs N == M): query n attends to keys m <= n only. Its scores past
//   the diagonal are never computed and its probabilities there are exactly 0, as HF's additive
//   finfo.min mask makes them (exp underflows to 0); the other keys' softmax is the usual one.
//
// Guarantees:
//  - Forward, float on AVX2 / AVX-512 machines with d a multiple of 8 (SegFormer: d = 32 or 64): one
//    fused kernel per 6 query rows (attention_detail below) computes the scores, their softmax and
//    P v_h with the 6 x M score rows in L1; only k_h is repacked (transposed, once per call). Its
//    products use AVX-512 when the machine has it and d is a multiple of 16, with results equal
//    bit for bit to the AVX2 ones (the same products summed in the same order per lane).
//  - Otherwise (double, other d, no AVX2) two GEMMs and a row softmax per block of kAttentionBlock
//    query rows; they read the head slices in place (row stride C).
//  - Work is split over (batch, head, block of kAttentionBlock query rows), handed out to the
//    threads on demand in the fused kernel (parallel_for_dynamic). When `probs` is null
//    (inference), each thread only ever holds one block's score rows, so the N x M matrix is never
//    materialised.
//  - Backward uses the probabilities saved by the forward (the choice PyTorch's eager graph makes),
//    so it costs four products and one softmax-backward pass, no exp. Its N x M scratch holds dS.
//    Its first phase (dS and dq, per block of query rows) runs on the fused kernel's pieces when the
//    forward does; the second (dk, dv: sums over all N queries) is two GEMMs per head.
//  - The row softmax is kernels/softmax.hpp's (AVX2 / AVX-512 exp for float), so float results
//    depend on segml::isa() through it and through gemm.
//  - attention_forward_ref / attention_backward_ref are plain loops, the oracle in the tests.
//  - causal: each block of rows computes scores and P v only over the keys up to its last row (the
//    fused kernel per 6 rows, the GEMM path per block), then takes each row's softmax over its
//    own prefix and writes zeros after it. The backward needs no mask: the saved P is 0 past the
//    diagonal, so dS = P ∘ (...) is 0 there and no gradient flows to those keys; it takes the
//    flag only for symmetry (its results do not depend on it).
// Not done here: the projections, dropout (SegFormer's rate is 0), padding masks.
#pragma once

#include <vector>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <type_traits>

#include "segml/core/parallel.hpp"
#include "segml/core/tensor.hpp"
#include "segml/kernels/gemm.hpp"
#include "segml/kernels/softmax.hpp"

namespace segml::kernels {

// Query rows per task and per score tile.
inline constexpr int64_t kAttentionBlock = 128;

#if defined(__x86_64__)
namespace attention_detail {

// The fused float kernel (AVX2 + FMA; on AVX-512 machines its two products run on zmm when d is a
// multiple of 16). Per block of kRows query rows of one head, everything stays in L1: the kRows x M
// score rows, their softmax, and P v_h.
//   scores:  S = q_rows k_hᵀ / sqrt(d), a 6 x 16 register tile per 16 keys, from kt (k_h transposed
//            and packed once per call, so the tile loads 16 keys of one channel at a time);
//   softmax: row max, then exp(S - max) and its sum in one pass, in place;
//   output:  O = P v_h, a 6 x 16 register tile per 16 channels over all M keys (v_h is read in place,
//            row stride C), scaled by 1 / sum at the store (or 1 when P itself is kept).
// Rows past the end of the block reuse the last real row (the same values go to the same place), so
// no row needs a branch.
inline constexpr int kRows = 6, kKeys = 16;

// kt (panels of kKeys keys: panel p holds kt[(p * d + c) * kKeys + j] = k_h[p * kKeys + j][c], zero
// past M). k_h (M, d) with row stride C.
inline void pack_keys(float* kt, const float* kh, int64_t M, int64_t C, int64_t d) {
  const int64_t panels = (M + kKeys - 1) / kKeys;
  for (int64_t p = 0; p < panels; ++p)
    for (int64_t j = 0; j < kKeys; ++j) {
      const int64_t m = p * kKeys + j;
      for (int64_t c = 0; c < d; ++c) kt[(p * d + c) * kKeys + j] = m < M ? kh[m * C + c] : 0.f;
    }
}

// s[i][m] = scale * q_i · k_m for the kRows rows q[i] (d values each), m < M; s rows of stride lds.
SEGML_TARGET_AVX2 inline void scores_avx2(float* const s[kRows], const float* const q[kRows], const float* kt, int64_t M, int64_t d,
                               float scale) {
  const __m256 vscale = _mm256_set1_ps(scale);
  for (int64_t m0 = 0; m0 < M; m0 += kKeys, kt += kKeys * d) {
    __m256 acc[kRows][2];
#pragma GCC unroll 6
    for (int i = 0; i < kRows; ++i) acc[i][0] = acc[i][1] = _mm256_setzero_ps();
    for (int64_t c = 0; c < d; ++c) {
      const __m256 b0 = _mm256_loadu_ps(kt + c * kKeys), b1 = _mm256_loadu_ps(kt + c * kKeys + 8);
#pragma GCC unroll 6
      for (int i = 0; i < kRows; ++i) {
        const __m256 a = _mm256_broadcast_ss(q[i] + c);
        acc[i][0] = _mm256_fmadd_ps(a, b0, acc[i][0]);
        acc[i][1] = _mm256_fmadd_ps(a, b1, acc[i][1]);
      }
    }
    if (m0 + kKeys <= M) {
#pragma GCC unroll 6
      for (int i = 0; i < kRows; ++i) {
        _mm256_storeu_ps(s[i] + m0, _mm256_mul_ps(acc[i][0], vscale));
        _mm256_storeu_ps(s[i] + m0 + 8, _mm256_mul_ps(acc[i][1], vscale));
      }
    } else {  // the last, partial panel: only keys < M exist in s
      const __m256i lo = _mm256_castps_si256(simd::Avx2::tail(M - m0).r);
      const __m256i hi = _mm256_castps_si256(simd::Avx2::tail(std::max<int64_t>(M - m0 - 8, 0)).r);
      for (int i = 0; i < kRows; ++i) {
        _mm256_maskstore_ps(s[i] + m0, lo, _mm256_mul_ps(acc[i][0], vscale));
        _mm256_maskstore_ps(s[i] + m0 + 8, hi, _mm256_mul_ps(acc[i][1], vscale));
      }
    }
  }
}

// o[i][c] = inv[i] * Σ_m p[i][m] v[m][c] for c < d (d a multiple of 8), v (M, d) with row stride C.
// NV vectors of 8 channels per pass: 2, and 1 for a last 8 when d is an odd multiple of 8.
template <int NV>
SEGML_TARGET_AVX2 inline void weighted_values_pass_avx2(float* const o[kRows], const float* const p[kRows], const float inv[kRows],
                                             const float* v, int64_t M, int64_t C) {
  __m256 acc[kRows][NV];
#pragma GCC unroll 6
  for (int i = 0; i < kRows; ++i)
#pragma GCC unroll 2
    for (int u = 0; u < NV; ++u) acc[i][u] = _mm256_setzero_ps();
  for (int64_t m = 0; m < M; ++m, v += C) {
    __m256 b[NV];
#pragma GCC unroll 2
    for (int u = 0; u < NV; ++u) b[u] = _mm256_loadu_ps(v + 8 * u);
#pragma GCC unroll 6
    for (int i = 0; i < kRows; ++i) {
      const __m256 a = _mm256_broadcast_ss(p[i] + m);
#pragma GCC unroll 2
      for (int u = 0; u < NV; ++u) acc[i][u] = _mm256_fmadd_ps(a, b[u], acc[i][u]);
    }
  }
#pragma GCC unroll 6
  for (int i = 0; i < kRows; ++i)
#pragma GCC unroll 2
    for (int u = 0; u < NV; ++u) _mm256_storeu_ps(o[i] + 8 * u, _mm256_mul_ps(acc[i][u], _mm256_set1_ps(inv[i])));
}

// A weighted-values pass over the channels [c, c + NV * lanes) of o, p and v.
using WeightedValuesPass = void (*)(float* const o[kRows], const float* const p[kRows], const float inv[kRows],
                                    const float* v, int64_t M, int64_t C);

// All d channels (d a multiple of `lanes`): passes of two vectors (pass2), then one (pass1) for a
// last `lanes` channels.
inline void weighted_values_in_passes(WeightedValuesPass pass2, WeightedValuesPass pass1, int64_t lanes,
                                      float* const o[kRows], const float* const p[kRows], const float inv[kRows],
                                      const float* v, int64_t M, int64_t C, int64_t d) {
  float* oc[kRows];
  for (int64_t c = 0; c < d;) {
    const bool two = c + 2 * lanes <= d;
    for (int i = 0; i < kRows; ++i) oc[i] = o[i] + c;
    (two ? pass2 : pass1)(oc, p, inv, v + c, M, C);
    c += two ? 2 * lanes : lanes;
  }
}

// weighted_values_pass_avx2 over all d channels (d a multiple of 8).
inline void weighted_values_avx2(float* const o[kRows], const float* const p[kRows], const float inv[kRows],
                                 const float* v, int64_t M, int64_t C, int64_t d) {
  weighted_values_in_passes(weighted_values_pass_avx2<2>, weighted_values_pass_avx2<1>, 8, o, p, inv, v, M, C, d);
}

// The AVX-512 twins of scores_avx2 and weighted_values_avx2, for d a multiple of 16. Each zmm holds
// what two ymm did (16 keys of one panel, or 16 channels), and every lane sums the same products
// in the same order, so their results equal the AVX2 kernels' bit for bit.
// scores: two kKeys panels side by side per step, a 6 x 32 tile in 12 zmm accumulators; a last odd
// or partial panel on its own (6 x 16).
SEGML_TARGET_AVX512 inline void scores_avx512(float* const s[kRows], const float* const q[kRows], const float* kt, int64_t M,
                                   int64_t d, float scale) {
  const __m512 vscale = _mm512_set1_ps(scale);
  int64_t m0 = 0;
  for (; m0 + 2 * kKeys <= M; m0 += 2 * kKeys, kt += 2 * kKeys * d) {
    const float* kt_next = kt + kKeys * d;
    __m512 acc[kRows][2];
#pragma GCC unroll 6
    for (int i = 0; i < kRows; ++i) acc[i][0] = acc[i][1] = _mm512_setzero_ps();
    for (int64_t c = 0; c < d; ++c) {
      const __m512 b0 = _mm512_loadu_ps(kt + c * kKeys), b1 = _mm512_loadu_ps(kt_next + c * kKeys);
#pragma GCC unroll 6
      for (int i = 0; i < kRows; ++i) {
        const __m512 a = _mm512_set1_ps(q[i][c]);
        acc[i][0] = _mm512_fmadd_ps(a, b0, acc[i][0]);
        acc[i][1] = _mm512_fmadd_ps(a, b1, acc[i][1]);
      }
    }
#pragma GCC unroll 6
    for (int i = 0; i < kRows; ++i) {
      _mm512_storeu_ps(s[i] + m0, _mm512_mul_ps(acc[i][0], vscale));
      _mm512_storeu_ps(s[i] + m0 + kKeys, _mm512_mul_ps(acc[i][1], vscale));
    }
  }
  for (; m0 < M; m0 += kKeys, kt += kKeys * d) {
    __m512 acc[kRows];
#pragma GCC unroll 6
    for (int i = 0; i < kRows; ++i) acc[i] = _mm512_setzero_ps();
    for (int64_t c = 0; c < d; ++c) {
      const __m512 b = _mm512_loadu_ps(kt + c * kKeys);
#pragma GCC unroll 6
      for (int i = 0; i < kRows; ++i) acc[i] = _mm512_fmadd_ps(_mm512_set1_ps(q[i][c]), b, acc[i]);
    }
    const __mmask16 keys = M - m0 >= kKeys ? __mmask16(0xFFFF) : __mmask16((1u << (M - m0)) - 1);  // only keys < M exist in s
#pragma GCC unroll 6
    for (int i = 0; i < kRows; ++i) _mm512_mask_storeu_ps(s[i] + m0, keys, _mm512_mul_ps(acc[i], vscale));
  }
}

// weighted values: NV vectors of 16 channels per pass (2, and 1 for a last 16).
template <int NV>
SEGML_TARGET_AVX512 inline void weighted_values_pass_avx512(float* const o[kRows], const float* const p[kRows],
                                                 const float inv[kRows], const float* v, int64_t M, int64_t C) {
  __m512 acc[kRows][NV];
#pragma GCC unroll 6
  for (int i = 0; i < kRows; ++i)
#pragma GCC unroll 2
    for (int u = 0; u < NV; ++u) acc[i][u] = _mm512_setzero_ps();
  for (int64_t m = 0; m < M; ++m, v += C) {
    __m512 b[NV];
#pragma GCC unroll 2
    for (int u = 0; u < NV; ++u) b[u] = _mm512_loadu_ps(v + 16 * u);
#pragma GCC unroll 6
    for (int i = 0; i < kRows; ++i) {
      const __m512 a = _mm512_set1_ps(p[i][m]);
#pragma GCC unroll 2
      for (int u = 0; u < NV; ++u) acc[i][u] = _mm512_fmadd_ps(a, b[u], acc[i][u]);
    }
  }
#pragma GCC unroll 6
  for (int i = 0; i < kRows; ++i)
#pragma GCC unroll 2
    for (int u = 0; u < NV; ++u) _mm512_storeu_ps(o[i] + 16 * u, _mm512_mul_ps(acc[i][u], _mm512_set1_ps(inv[i])));
}

// weighted_values_pass_avx512 over all d channels (d a multiple of 16).
inline void weighted_values_avx512(float* const o[kRows], const float* const p[kRows], const float inv[kRows],
                                   const float* v, int64_t M, int64_t C, int64_t d) {
  weighted_values_in_passes(weighted_values_pass_avx512<2>, weighted_values_pass_avx512<1>, 16, o, p, inv, v, M, C,
                            d);
}

// The products of the fused kernels on AVX-512 machines when d is a multiple of 16, else AVX2.
inline bool wide_products(int64_t d) { return isa() >= Isa::avx512 && d % 16 == 0; }

// Rows (1..kRows) -> kRows row pointers, rows past the end repeating the last real row.
template <class P>
inline void row_pointers(P* out[kRows], P* first, int64_t stride, int rows) {
  for (int i = 0; i < kRows; ++i) out[i] = first + std::min(i, rows - 1) * stride;
}

// One block of rows (1..kRows) of one head: q_rows (rows, d) stride C, out rows stride C, s rows
// (rows, M) stride lds (the kept probabilities, or scratch); normalize: write P itself into s.
// causal_row >= 0: the block's first row is query causal_row of a causal attention, so row i
// attends to keys [0, causal_row + i] only: scores and P v run over the keys up to the block's last
// row, each row's softmax over its own prefix, and P is 0 past it (in s up to M when normalize).
SEGML_TARGET_AVX2 inline void attention_rows_avx2(float* out, float* s, int64_t lds, const float* q, const float* kt, const float* vh,
                                       int rows, int64_t M, int64_t C, int64_t d, float scale, bool normalize,
                                       bool wide, int64_t causal_row = -1) {
  const int64_t M_all = M;
  if (causal_row >= 0) M = std::min(M, causal_row + rows);  // keys past the block's last row: not needed
  const float* qi[kRows];
  float* si[kRows];
  float* oi[kRows];
  float inv[kRows];
  row_pointers(qi, q, C, rows);
  row_pointers(si, s, lds, rows);
  row_pointers(oi, out, C, rows);
  wide ? scores_avx512(si, qi, kt, M, d, scale) : scores_avx2(si, qi, kt, M, d, scale);
  for (int i = 0; i < rows; ++i) {
    const int64_t keys = causal_row >= 0 ? causal_row + i + 1 : M;  // this row's allowed keys
    // The softmax rows are generic SIMD-layer code: entered for AVX2 so that they inline here.
    inv[i] = 1.f / simd::enter(simd::Avx2{}, [&](auto s) {
      using S = decltype(s);
      return detail::row_exp_sum<S>(si[i], si[i], detail::row_max<S>(si[i], keys), keys);
    });
    if (normalize) {
      simd::enter(simd::Avx2{}, [&](auto s) { detail::row_scale<decltype(s)>(si[i], inv[i], keys); });
      inv[i] = 1.f;
    }
    if (keys < M_all) std::fill(si[i] + keys, si[i] + (normalize ? M_all : M), 0.f);  // masked: P = 0
  }
  for (int i = rows; i < kRows; ++i) inv[i] = inv[rows - 1];
  wide ? weighted_values_avx512(oi, si, inv, vh, M, C, d) : weighted_values_avx2(oi, si, inv, vh, M, C, d);
}

// Phase 1 of the backward for rows (1..kRows) of one head: ds rows (stride M) = the softmax
// backward of dP = dO v_hᵀ (without the 1/sqrt(d), as attention_backward keeps it), then, when dq
// is non-null, dq rows = scale * dS k_h. vt: v_h packed like pack_keys.
SEGML_TARGET_AVX2 inline void attention_backward_rows_avx2(float* dq, float* ds, const float* p, const float* dout, const float* vt,
                                                const float* kh, int rows, int64_t M, int64_t C, int64_t d,
                                                float scale, bool wide) {
  const float *doi[kRows], *pi[kRows];
  float *si[kRows], *dqi[kRows];
  row_pointers(doi, dout, C, rows);
  row_pointers(pi, p, M, rows);
  row_pointers(si, ds, M, rows);
  wide ? scores_avx512(si, doi, vt, M, d, 1.f) : scores_avx2(si, doi, vt, M, d, 1.f);
  simd::enter(simd::Avx2{}, [&](auto s) {
    for (int i = 0; i < rows; ++i) detail::softmax_backward_rows<decltype(s)>(si[i], pi[i], si[i], 1, M);
  });
  if (!dq) return;
  const float scales[kRows] = {scale, scale, scale, scale, scale, scale};
  row_pointers(dqi, dq, C, rows);
  wide ? weighted_values_avx512(dqi, si, scales, kh, M, C, d) : weighted_values_avx2(dqi, si, scales, kh, M, C, d);
}

// x_h (M, d) of every (batch, head) transposed into pack_keys panels, once per call, in the calling
// thread's grow-only buffer slot `slot` (0 or 1); returns the buffer, (B * heads) blocks of `size`.
inline float* pack_all_heads(int slot, const float* x, int64_t B, int64_t M, int64_t C, int64_t heads, int64_t& size) {
  const int64_t d = C / heads;
  size = (M + kKeys - 1) / kKeys * kKeys * d;
  thread_local std::vector<float> buffers[2];
  std::vector<float>& buf = buffers[slot];
  if (buf.size() < static_cast<size_t>(B * heads * size)) buf.resize(static_cast<size_t>(B * heads * size));
  float* out = buf.data();
  parallel_for(B * heads, 1, [&](int64_t begin, int64_t end) {
    for (int64_t bh = begin; bh < end; ++bh)
      pack_keys(out + bh * size, x + (bh / heads) * M * C + (bh % heads) * d, M, C, d);
  });
  return out;
}

// Calls f(bh, b, h, n, rows) for every block of kRows query rows [n, n + rows) of every (batch b,
// head h), bh = b * heads + h. Tasks of kAttentionBlock rows are handed out to the threads on demand.
template <class F>
inline void for_each_row_block(int64_t B, int64_t heads, int64_t N, F&& f) {
  const int64_t blocks = (N + kAttentionBlock - 1) / kAttentionBlock;
  parallel_for_dynamic(B * heads * blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t bh = t / blocks, n_begin = (t % blocks) * kAttentionBlock;
      const int64_t n_end = std::min(N, n_begin + kAttentionBlock);
      for (int64_t n = n_begin; n < n_end; n += kRows)
        f(bh, bh / heads, bh % heads, n, static_cast<int>(std::min<int64_t>(kRows, n_end - n)));
    }
  });
}

// attention_forward for float on AVX2 / AVX-512 machines, head dim d a multiple of 8.
inline void attention_forward_fused(float* out, float* probs, const float* q, const float* k, const float* v, int64_t B,
                                    int64_t N, int64_t M, int64_t C, int64_t heads, bool causal) {
  const int64_t d = C / heads;
  const float scale = 1.f / std::sqrt(static_cast<float>(d));
  int64_t kt_size = 0;
  const float* kt_all = pack_all_heads(0, k, B, M, C, heads, kt_size);  // k_h transposed, once
  const bool wide = wide_products(d);
  for_each_row_block(B, heads, N, [&](int64_t bh, int64_t b, int64_t h, int64_t n, int rows) {
    // The score rows when P is not kept: per thread, grow-only, kept across calls (threads persist).
    thread_local std::vector<float> scratch;
    if (!probs && scratch.size() < static_cast<size_t>(kRows * M)) scratch.resize(static_cast<size_t>(kRows * M));
    float* s = probs ? probs + (bh * N + n) * M : scratch.data();
    attention_rows_avx2(out + (b * N + n) * C + h * d, s, M, q + (b * N + n) * C + h * d, kt_all + bh * kt_size,
                        v + b * M * C + h * d, rows, M, C, d, scale, probs != nullptr, wide, causal ? n : -1);
  });
}

// Phase 1 of attention_backward (dS for all rows, and dq) for float on AVX2 / AVX-512 machines,
// head dim d a multiple of 8; ds (B, h, N, M).
inline void attention_backward_fused_phase1(float* dq, float* ds, const float* dout, const float* k, const float* v,
                                            const float* probs, int64_t B, int64_t N, int64_t M, int64_t C,
                                            int64_t heads) {
  const int64_t d = C / heads;
  const float scale = 1.f / std::sqrt(static_cast<float>(d));
  int64_t vt_size = 0;
  const float* vt_all = pack_all_heads(1, v, B, M, C, heads, vt_size);  // v_h transposed, once
  const bool wide = wide_products(d);
  for_each_row_block(B, heads, N, [&](int64_t bh, int64_t b, int64_t h, int64_t n, int rows) {
    attention_backward_rows_avx2(dq ? dq + (b * N + n) * C + h * d : nullptr, ds + (bh * N + n) * M,
                                 probs + (bh * N + n) * M, dout + (b * N + n) * C + h * d, vt_all + bh * vt_size,
                                 k + b * M * C + h * d, rows, M, C, d, scale, wide);
  });
}

}  // namespace attention_detail
#endif  // __x86_64__

// out = attention(q, k, v). probs (B, h, N, M) receives P when non-null (training), else P is
// computed tile by tile in per-thread scratch. causal: query n attends to keys m <= n (N == M).
// q (B, N, C), k (B, M, C), v (B, M, C), out (B, N, C), probs (B, h, N, M) or null
template <class T>
inline void attention_forward(T* out, T* probs, const T* q, const T* k, const T* v, int64_t B, int64_t N, int64_t M,
                              int64_t C, int64_t heads, bool causal = false) {
  SEGML_CHECK(!causal || N == M, "attention_forward: causal attention needs as many keys as queries, got N = ", N,
              " queries and M = ", M, " keys");
  const int64_t d = C / heads, blocks = (N + kAttentionBlock - 1) / kAttentionBlock;
#if defined(__x86_64__)
  if constexpr (std::is_same_v<T, float>) {
    if (isa() >= Isa::avx2 && d % 8 == 0 && M > 0)
      return attention_detail::attention_forward_fused(out, probs, q, k, v, B, N, M, C, heads, causal);
  }
#endif
  const T scale = T(1) / std::sqrt(T(d));
  parallel_for(B * heads * blocks, 1, [&](int64_t begin, int64_t end) {
    // The score tile of this thread: grow-only and kept across calls (threads persist), so the
    // inference path allocates no score tile once warm.
    thread_local std::vector<T> scratch;
    if (!probs && scratch.size() < static_cast<size_t>(kAttentionBlock * M))
      scratch.resize(static_cast<size_t>(kAttentionBlock * M));
    for (int64_t t = begin; t < end; ++t) {
      const int64_t bh = t / blocks, n0 = (t % blocks) * kAttentionBlock, b = bh / heads, h = bh % heads;
      const int64_t rows = std::min(kAttentionBlock, N - n0);
      T* s = probs ? probs + (bh * N + n0) * M : scratch.data();
      const T* qh = q + (b * N + n0) * C + h * d;
      const T* kh = k + b * M * C + h * d;
      const T* vh = v + b * M * C + h * d;
      const int64_t keys = causal ? std::min(M, n0 + rows) : M;  // causal: keys up to the block's last row
      gemm(false, true, rows, keys, d, scale, qh, C, kh, C, T(0), s, M);  // S = q_h k_hᵀ / sqrt(d)
      if (!causal) {
        softmax_forward(s, s, rows, M);  // P = softmax(S)
      } else {
        for (int64_t r = 0; r < rows; ++r) {  // row n0 + r: softmax over keys [0, n0 + r], P = 0 after
          softmax_forward(s + r * M, s + r * M, 1, n0 + r + 1);
          std::fill(s + r * M + n0 + r + 1, s + r * M + (probs ? M : keys), T(0));
        }
      }
      gemm(false, false, rows, d, keys, T(1), s, M, vh, C, T(0), out + (b * N + n0) * C + h * d, C);  // O_h = P v_h
    }
  });
}

// Gradients of attention_forward from the saved probabilities. Each of dq, dk, dv may be null
// (not wanted); the others are overwritten (not accumulated). causal needs no work here: the saved
// P is 0 past the diagonal, so dS is 0 there too (the flag is accepted for symmetry).
//   dV_h = Pᵀ dO_h
//   dP   = dO_h v_hᵀ,   dS = P ∘ (dP − rowsum(P ∘ dP)) / sqrt(d)     (softmax backward + scale)
//   dQ_h = dS k_h,      dK_h = dSᵀ q_h
// dq (B, N, C), dk (B, M, C), dv (B, M, C), dout (B, N, C), q, k, v as forward, probs (B, h, N, M)
template <class T>
inline void attention_backward(T* dq, T* dk, T* dv, const T* dout, const T* q, const T* k, const T* v, const T* probs,
                               int64_t B, int64_t N, int64_t M, int64_t C, int64_t heads,
                               [[maybe_unused]] bool causal = false) {
  const int64_t d = C / heads, blocks = (N + kAttentionBlock - 1) / kAttentionBlock;
  const T scale = T(1) / std::sqrt(T(d));
  std::shared_ptr<T[]> ds;
  if (dq || dk) {
    ds = allocate_aligned<T>(B * heads * N * M);
    // Phase 1, per query block: dS, then dQ (which needs only this block of dS).
    bool fused = false;
#if defined(__x86_64__)
    if constexpr (std::is_same_v<T, float>) {
      if (isa() >= Isa::avx2 && d % 8 == 0 && M > 0) {
        attention_detail::attention_backward_fused_phase1(dq, ds.get(), dout, k, v, probs, B, N, M, C, heads);
        fused = true;
      }
    }
#endif
    if (!fused) parallel_for(B * heads * blocks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t t = begin; t < end; ++t) {
        const int64_t bh = t / blocks, n0 = (t % blocks) * kAttentionBlock, b = bh / heads, h = bh % heads;
        const int64_t rows = std::min(kAttentionBlock, N - n0);
        T* s = ds.get() + (bh * N + n0) * M;
        const T* p = probs + (bh * N + n0) * M;
        gemm(false, true, rows, M, d, T(1), dout + (b * N + n0) * C + h * d, C, v + b * M * C + h * d, C, T(0), s, M);
        softmax_backward(s, p, s, rows, M);  // dS * sqrt(d); the 1/sqrt(d) goes into the GEMMs' alpha
        if (dq) gemm(false, false, rows, d, M, scale, s, M, k + b * M * C + h * d, C, T(0), dq + (b * N + n0) * C + h * d, C);
      }
    });
  }
  // Phase 2, per (batch, head): the key-side gradients reduce over all N queries. With fewer
  // (batch, head) pairs than threads, each GEMM gets all the threads instead.
  if (dk || dv) {
    auto key_side = [&](int64_t bh) {
      const int64_t b = bh / heads, h = bh % heads, off = b * M * C + h * d;
      if (dk) gemm(true, false, M, d, N, scale, ds.get() + bh * N * M, M, q + b * N * C + h * d, C, T(0), dk + off, C);
      if (dv) gemm(true, false, M, d, N, T(1), probs + bh * N * M, M, dout + b * N * C + h * d, C, T(0), dv + off, C);
    };
    if (B * heads < num_threads())
      for (int64_t bh = 0; bh < B * heads; ++bh) key_side(bh);
    else
      parallel_for(B * heads, 1, [&](int64_t begin, int64_t end) {
        for (int64_t bh = begin; bh < end; ++bh) key_side(bh);
      });
  }
}

// ---- scalar reference twins ------------------------------------------------------------------

// Plain-loop attention_forward (same shapes; probs may be null). Scores are divided by sqrt(d) as HF does.
// causal: query n reads keys m <= n only (N == M), P = 0 for the others.
template <class T>
inline void attention_forward_ref(T* out, T* probs, const T* q, const T* k, const T* v, int64_t B, int64_t N, int64_t M,
                                  int64_t C, int64_t heads, bool causal = false) {
  SEGML_CHECK(!causal || N == M, "attention_forward_ref: causal attention needs as many keys as queries, got N = ", N,
              " queries and M = ", M, " keys");
  const int64_t d = C / heads;
  std::unique_ptr<T[]> p(new T[static_cast<size_t>(M)]);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < heads; ++h)
      for (int64_t n = 0; n < N; ++n) {
        const T* qn = q + (b * N + n) * C + h * d;
        const int64_t keys = causal ? n + 1 : M;
        T mx = -INFINITY;
        for (int64_t m = 0; m < keys; ++m) {
          const T* km = k + (b * M + m) * C + h * d;
          T s = 0;
          for (int64_t c = 0; c < d; ++c) s += qn[c] * km[c];
          p[m] = s / std::sqrt(T(d));
          mx = std::max(mx, p[m]);
        }
        T sum = 0;
        for (int64_t m = 0; m < keys; ++m) sum += (p[m] = std::exp(p[m] - mx));
        for (int64_t m = 0; m < keys; ++m) p[m] /= sum;
        for (int64_t m = keys; m < M; ++m) p[m] = 0;
        if (probs) std::copy(p.get(), p.get() + M, probs + ((b * heads + h) * N + n) * M);
        T* on = out + (b * N + n) * C + h * d;
        for (int64_t c = 0; c < d; ++c) {
          T o = 0;
          for (int64_t m = 0; m < M; ++m) o += p[m] * v[(b * M + m) * C + h * d + c];
          on[c] = o;
        }
      }
}

// Plain-loop attention_backward: all three gradients, overwritten. probs as saved by a forward
// (causal: 0 past the diagonal, which is all the mask the backward needs).
template <class T>
inline void attention_backward_ref(T* dq, T* dk, T* dv, const T* dout, const T* q, const T* k, const T* v,
                                   const T* probs, int64_t B, int64_t N, int64_t M, int64_t C, int64_t heads,
                                   [[maybe_unused]] bool causal = false) {
  const int64_t d = C / heads;
  std::fill(dq, dq + B * N * C, T(0));
  std::fill(dk, dk + B * M * C, T(0));
  std::fill(dv, dv + B * M * C, T(0));
  std::unique_ptr<T[]> ds(new T[static_cast<size_t>(M)]);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < heads; ++h)
      for (int64_t n = 0; n < N; ++n) {
        const T* p = probs + ((b * heads + h) * N + n) * M;
        const T* don = dout + (b * N + n) * C + h * d;
        const T* qn = q + (b * N + n) * C + h * d;
        T dot = 0;
        for (int64_t m = 0; m < M; ++m) {
          T dp = 0;
          for (int64_t c = 0; c < d; ++c) dp += don[c] * v[(b * M + m) * C + h * d + c];
          ds[m] = dp;
          dot += p[m] * dp;
        }
        for (int64_t m = 0; m < M; ++m) {
          const T s = p[m] * (ds[m] - dot) / std::sqrt(T(d));
          const int64_t km = (b * M + m) * C + h * d;
          for (int64_t c = 0; c < d; ++c) {
            dq[(b * N + n) * C + h * d + c] += s * k[km + c];
            dk[km + c] += s * qn[c];
            dv[km + c] += p[m] * don[c];
          }
        }
      }
}

}  // namespace segml::kernels
