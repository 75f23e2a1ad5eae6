// segml/kernels/dropout.hpp: random masks for dropout and drop-path (stochastic depth), and applying them.
//
// Masks are drawn from a counter-based Generator (core/random.hpp) so they are reproducible for a
// seed and identical for any thread count and any ISA: dropout element i uses lane i % 4 of block
// first + i / 4, and is kept iff its uniform float U = (w >> 8) * 2^-24 satisfies U < keep_prob.
//
// dropout_mask_ref and dropout_apply_ref are the reference twins (block_at per block; the keep test
// done on the float uniform). The fast paths compare the 24-bit integer w >> 8 with an exact integer
// threshold instead, and evaluate Philox4x32-10 on 2 x 8 (AVX2) or 16 (AVX-512) blocks at once, one
// block per 32-bit lane; the portable path does one block at a time. Every path gives the reference's
// mask and outputs bit for bit. dropout_forward fuses the mask with out = x * keep * scale (one pass
// instead of two); dropout_apply applies a saved mask (the backward). Forward and backward use the
// same mask and scale. The drop-path helpers are plain loops (one draw per sample).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "segml/core/cpu.hpp"
#include "segml/core/parallel.hpp"
#include "segml/core/random.hpp"
#include "segml/simd/vec.hpp"

namespace segml::kernels {

// Blocks per parallel chunk (a block is 4 mask elements).
inline constexpr int64_t kDropoutGrainBlocks = 1 << 13;

// Reference twin. keep (n): keep[i] = 1 with probability keep_prob (U[0,1) < keep_prob, as
// torch's bernoulli_(1 - p)), else 0.
inline void dropout_mask_ref(uint8_t* keep, int64_t n, double keep_prob, Generator& gen) {
  if (n <= 0) return;
  const int64_t blocks = (n + 3) / 4;
  const uint64_t first = gen.reserve(static_cast<uint64_t>(blocks));
  parallel_for(blocks, kDropoutGrainBlocks, [&](int64_t s, int64_t e) {
    for (int64_t k = s; k < e; ++k) {
      const PhiloxBlock b = gen.block_at(first + static_cast<uint64_t>(k));
      for (int64_t j = 0; j < 4 && 4 * k + j < n; ++j)
        keep[4 * k + j] = static_cast<double>(bits_to_uniform_float(b.w[j])) < keep_prob ? 1 : 0;
    }
  });
}

namespace detail {

// out[i] = keep[i] ? x[i] * scale : 0 for i in [s, e): dropout_apply's portable path.
template <class T>
inline void dropout_apply_scalar(T* out, const T* x, const uint8_t* keep, T scale, int64_t s, int64_t e) {
  for (int64_t i = s; i < e; ++i) out[i] = keep[i] ? x[i] * scale : T(0);
}

}  // namespace detail

// Reference twin of dropout_apply. x, out (n), keep (n)
template <class T>
inline void dropout_apply_ref(T* out, const T* x, const uint8_t* keep, T scale, int64_t n) {
  parallel_for(n, 1 << 16, [&](int64_t s, int64_t e) { detail::dropout_apply_scalar(out, x, keep, scale, s, e); });
}

namespace detail {

// The integer t with  (m < t)  <=>  (double(float(m) * 2^-24) < keep_prob)  for every m in [0, 2^24).
// float(m) * 2^-24 is exact, so the comparison is m < keep_prob * 2^24 (also exact), i.e.
// m < ceil(keep_prob * 2^24). NaN keeps nothing, like the reference comparison.
inline uint32_t dropout_threshold(double keep_prob) {
  if (!(keep_prob > 0.0)) return 0;
  if (keep_prob >= 1.0) return 1u << 24;
  return static_cast<uint32_t>(std::ceil(keep_prob * 0x1.0p24));
}

// The parts of a dropout call every path shares: the stream's key, its first block, the threshold.
struct DropoutStream {
  uint32_t key0, key1;
  uint64_t first;
  uint32_t threshold;
};

inline DropoutStream dropout_stream(int64_t n, double keep_prob, Generator& gen) {
  const uint64_t seed = gen.initial_seed();  // block_at's key
  const uint64_t first = gen.reserve(static_cast<uint64_t>((n + 3) / 4));
  return {static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32), first, dropout_threshold(keep_prob)};
}

// Portable path for blocks [kb, ke): keep[4k + j] for 4k + j < n. If x is given, also
// out[i] = keep[i] ? x[i] * scale : 0 (the fused forward).
template <class T>
inline void dropout_blocks_scalar(uint8_t* keep, T* out, const T* x, T scale, int64_t n, const DropoutStream& st,
                                  int64_t kb, int64_t ke) {
  const uint32_t key[2] = {st.key0, st.key1};
  for (int64_t k = kb; k < ke; ++k) {
    const uint64_t c = st.first + static_cast<uint64_t>(k);
    const uint32_t ctr[4] = {static_cast<uint32_t>(c), static_cast<uint32_t>(c >> 32), 0u, 0u};
    const PhiloxBlock b = philox4x32_10(ctr, key);
    const int64_t i0 = 4 * k, m = n - i0 < 4 ? n - i0 : 4;
    for (int64_t j = 0; j < m; ++j) {
      const bool kept = (b.w[j] >> 8) < st.threshold;
      keep[i0 + j] = kept;
      if (x) out[i0 + j] = kept ? x[i0 + j] * scale : T(0);
    }
  }
}

#if defined(__x86_64__)

// The end of the whole steps of `step` blocks from kb within [kb, ke) that cover only complete
// blocks (4 elements < n); the rest goes to the scalar path.
inline int64_t vector_end(int64_t kb, int64_t ke, int64_t n, int64_t step) {
  const int64_t end = std::min(ke, n / 4);
  return end > kb ? kb + (end - kb) / step * step : kb;
}

// ---- AVX2: 2 x 8 blocks per step, word j of block l in lane l of c[j] ------------------------------

// hi / lo 32-bit halves of a * m per 32-bit lane (m broadcast).
SEGML_TARGET_AVX2 inline void mulhilo_avx2(__m256i a, __m256i m, __m256i& hi, __m256i& lo) {
  const __m256i even = _mm256_mul_epu32(a, m);                        // 64-bit products of lanes 0, 2, 4, 6
  const __m256i odd = _mm256_mul_epu32(_mm256_srli_epi64(a, 32), m);  // ... of lanes 1, 3, 5, 7
  hi = _mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xAA);
  lo = _mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0xAA);
}

// kept = (w >> 8) < t per lane, as 0 / 1: the sign bit of (w >> 8) - t (both below 2^25).
SEGML_TARGET_AVX2 inline __m256i kept_avx2(__m256i w, __m256i t) {
  return _mm256_srli_epi32(_mm256_sub_epi32(_mm256_srli_epi32(w, 8), t), 31);
}

// Keep bytes (element order: block l, word j at byte 4l + j) for blocks ctr .. ctr + 15, as two
// groups of 8 (bytes[0]: blocks ctr .. ctr + 7); the groups interleave to hide the multiply latency.
SEGML_TARGET_AVX2 inline void dropout_group_avx2(uint64_t ctr, const DropoutStream& st, __m256i bytes[2]) {
  const __m256i sign = _mm256_set1_epi32(INT32_MIN);
  const __m256i m0 = _mm256_set1_epi32(static_cast<int>(0xD2511F53u)), m1 = _mm256_set1_epi32(static_cast<int>(0xCD9E8D57u));
  const __m256i w0 = _mm256_set1_epi32(static_cast<int>(0x9E3779B9u)), w1 = _mm256_set1_epi32(static_cast<int>(0xBB67AE85u));
  __m256i c0[2], c1[2], c2[2], c3[2];
  for (int g = 0; g < 2; ++g) {
    // 64-bit counters: low words wrap independently; a wrapped lane carries into its high word.
    const uint64_t base = ctr + 8 * static_cast<uint64_t>(g);
    const __m256i lo_v = _mm256_set1_epi32(static_cast<int>(static_cast<uint32_t>(base)));
    c0[g] = _mm256_add_epi32(lo_v, _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    const __m256i wrapped = _mm256_cmpgt_epi32(_mm256_xor_si256(lo_v, sign), _mm256_xor_si256(c0[g], sign));
    c1[g] = _mm256_sub_epi32(_mm256_set1_epi32(static_cast<int>(static_cast<uint32_t>(base >> 32))), wrapped);
    c2[g] = c3[g] = _mm256_setzero_si256();
  }
  __m256i k0 = _mm256_set1_epi32(static_cast<int>(st.key0)), k1 = _mm256_set1_epi32(static_cast<int>(st.key1));
  for (int round = 0; round < 10; ++round) {
    for (int g = 0; g < 2; ++g) {
      __m256i hi0, lo0, hi1, lo1;
      mulhilo_avx2(c0[g], m0, hi0, lo0);
      mulhilo_avx2(c2[g], m1, hi1, lo1);
      c0[g] = _mm256_xor_si256(_mm256_xor_si256(hi1, c1[g]), k0);
      c1[g] = lo1;
      c2[g] = _mm256_xor_si256(_mm256_xor_si256(hi0, c3[g]), k1);
      c3[g] = lo0;
    }
    k0 = _mm256_add_epi32(k0, w0);
    k1 = _mm256_add_epi32(k1, w1);
  }
  const __m256i t = _mm256_set1_epi32(static_cast<int>(st.threshold));
  // Per 128-bit half (blocks 0-3 | 4-7) the packs give bytes [word 0 of blocks 0-3, word 1 ..., ...];
  // the shuffle transposes that 4x4 into block-major element order.
  const __m256i transpose = _mm256_setr_epi8(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15,  //
                                             0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
  for (int g = 0; g < 2; ++g) {
    const __m256i words = _mm256_packs_epi16(_mm256_packs_epi32(kept_avx2(c0[g], t), kept_avx2(c1[g], t)),
                                             _mm256_packs_epi32(kept_avx2(c2[g], t), kept_avx2(c3[g], t)));
    bytes[g] = _mm256_shuffle_epi8(words, transpose);
  }
}

// dropout_blocks_scalar's contract, float only (x may be null), 16 blocks per step.
SEGML_TARGET_AVX2 inline void dropout_blocks_avx2(uint8_t* keep, float* out, const float* x, float scale,
                                                                    int64_t n, const DropoutStream& st, int64_t kb,
                                                                    int64_t ke) {
  const int64_t ve = vector_end(kb, ke, n, 16);
  const __m256 vscale = _mm256_set1_ps(scale);
  for (int64_t k = kb; k < ve; k += 16) {
    __m256i bytes[2];
    dropout_group_avx2(st.first + static_cast<uint64_t>(k), st, bytes);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(keep + 4 * k), bytes[0]);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(keep + 4 * k + 32), bytes[1]);
    if (!x) continue;
    for (int r = 0; r < 8; ++r) {  // 8 elements (2 blocks) per step
      const __m128i half = (r & 2) ? _mm256_extracti128_si256(bytes[r >> 2], 1) : _mm256_castsi256_si128(bytes[r >> 2]);
      const __m128i b8 = (r & 1) ? _mm_srli_si128(half, 8) : half;
      const __m256i all = _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_cvtepu8_epi32(b8));  // 0 or ~0
      const __m256 y = _mm256_mul_ps(_mm256_loadu_ps(x + 4 * k + 8 * r), vscale);
      _mm256_storeu_ps(out + 4 * k + 8 * r, _mm256_and_ps(y, _mm256_castsi256_ps(all)));
    }
  }
  dropout_blocks_scalar(keep, out, x, scale, n, st, ve, ke);
}

// dropout_apply_scalar's contract for float, 8 elements per step.
SEGML_TARGET_AVX2 inline void dropout_apply_avx2(float* out, const float* x, const uint8_t* keep,
                                                                   float scale, int64_t s, int64_t e) {
  const __m256 vscale = _mm256_set1_ps(scale);
  int64_t i = s;
  for (; i + 8 <= e; i += 8) {
    const __m256i k = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(keep + i)));
    const __m256i all = _mm256_cmpgt_epi32(k, _mm256_setzero_si256());  // keep != 0 -> ~0
    _mm256_storeu_ps(out + i, _mm256_and_ps(_mm256_mul_ps(_mm256_loadu_ps(x + i), vscale), _mm256_castsi256_ps(all)));
  }
  dropout_apply_scalar(out, x, keep, scale, i, e);
}

// ---- AVX-512: 16 blocks per step, same layout ---------------------------------------------------------
// GCC 12's unmasked AVX-512 intrinsics trip -Wmaybe-uninitialized once inlined (their
// _mm512_undefined_* placeholder, GCC bug 105593); the warning is silenced for this section only.
#if !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

SEGML_TARGET_AVX512 inline void mulhilo_avx512(__m512i a, __m512i m, __m512i& hi,
                                                                                        __m512i& lo) {
  const __m512i even = _mm512_mul_epu32(a, m);
  const __m512i odd = _mm512_mul_epu32(_mm512_srli_epi64(a, 32), m);
  hi = _mm512_mask_blend_epi32(0xAAAA, _mm512_srli_epi64(even, 32), odd);
  lo = _mm512_mask_blend_epi32(0xAAAA, even, _mm512_slli_epi64(odd, 32));
}

SEGML_TARGET_AVX512 inline __m512i kept_avx512(__m512i w, __m512i t) {
  return _mm512_srli_epi32(_mm512_sub_epi32(_mm512_srli_epi32(w, 8), t), 31);
}

// 64 keep bytes (element order) for blocks ctr .. ctr + 15.
SEGML_TARGET_AVX512 inline __m512i dropout_group_avx512(uint64_t ctr,
                                                                                                const DropoutStream& st) {
  const __m512i lo_v = _mm512_set1_epi32(static_cast<int>(static_cast<uint32_t>(ctr)));
  __m512i c0 = _mm512_add_epi32(lo_v, _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
  const __mmask16 wrapped = _mm512_cmplt_epu32_mask(c0, lo_v);
  const __m512i hi_v = _mm512_set1_epi32(static_cast<int>(static_cast<uint32_t>(ctr >> 32)));
  __m512i c1 = _mm512_mask_add_epi32(hi_v, wrapped, hi_v, _mm512_set1_epi32(1));
  __m512i c2 = _mm512_setzero_si512(), c3 = _mm512_setzero_si512();
  const __m512i m0 = _mm512_set1_epi32(static_cast<int>(0xD2511F53u)), m1 = _mm512_set1_epi32(static_cast<int>(0xCD9E8D57u));
  const __m512i w0 = _mm512_set1_epi32(static_cast<int>(0x9E3779B9u)), w1 = _mm512_set1_epi32(static_cast<int>(0xBB67AE85u));
  __m512i k0 = _mm512_set1_epi32(static_cast<int>(st.key0)), k1 = _mm512_set1_epi32(static_cast<int>(st.key1));
  for (int round = 0; round < 10; ++round) {
    __m512i hi0, lo0, hi1, lo1;
    mulhilo_avx512(c0, m0, hi0, lo0);
    mulhilo_avx512(c2, m1, hi1, lo1);
    c0 = _mm512_xor_si512(_mm512_xor_si512(hi1, c1), k0);
    c1 = lo1;
    c2 = _mm512_xor_si512(_mm512_xor_si512(hi0, c3), k1);
    c3 = lo0;
    k0 = _mm512_add_epi32(k0, w0);
    k1 = _mm512_add_epi32(k1, w1);
  }
  const __m512i t = _mm512_set1_epi32(static_cast<int>(st.threshold));
  // Per 128-bit lane q (blocks 4q .. 4q+3) exactly the AVX2 packing and transpose.
  const __m512i words = _mm512_packs_epi16(_mm512_packs_epi32(kept_avx512(c0, t), kept_avx512(c1, t)),
                                             _mm512_packs_epi32(kept_avx512(c2, t), kept_avx512(c3, t)));
  const __m512i transpose = _mm512_broadcast_i32x4(_mm_setr_epi8(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15));
  return _mm512_shuffle_epi8(words, transpose);
}

SEGML_TARGET_AVX512 inline void dropout_blocks_avx512(
    uint8_t* keep, float* out, const float* x, float scale, int64_t n, const DropoutStream& st, int64_t kb, int64_t ke) {
  const int64_t ve = vector_end(kb, ke, n, 16);
  const __m512 vscale = _mm512_set1_ps(scale);
  for (int64_t k = kb; k < ve; k += 16) {
    const __m512i bytes = dropout_group_avx512(st.first + static_cast<uint64_t>(k), st);
    _mm512_storeu_si512(keep + 4 * k, bytes);
    if (!x) continue;
    for (int r = 0; r < 4; ++r) {
      const __m128i b16 = r == 0 ? _mm512_castsi512_si128(bytes)
                          : r == 1 ? _mm512_extracti32x4_epi32(bytes, 1)
                          : r == 2 ? _mm512_extracti32x4_epi32(bytes, 2)
                                   : _mm512_extracti32x4_epi32(bytes, 3);
      const __m512i b32 = _mm512_cvtepu8_epi32(b16);
      const __m512 y = _mm512_mul_ps(_mm512_loadu_ps(x + 4 * k + 16 * r), vscale);
      _mm512_storeu_ps(out + 4 * k + 16 * r, _mm512_maskz_mov_ps(_mm512_test_epi32_mask(b32, b32), y));
    }
  }
  dropout_blocks_scalar(keep, out, x, scale, n, st, ve, ke);
}

SEGML_TARGET_AVX512 inline void dropout_apply_avx512(
    float* out, const float* x, const uint8_t* keep, float scale, int64_t s, int64_t e) {
  const __m512 vscale = _mm512_set1_ps(scale);
  int64_t i = s;
  for (; i + 16 <= e; i += 16) {
    const __m512i k = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(keep + i)));
    _mm512_storeu_ps(out + i, _mm512_maskz_mul_ps(_mm512_test_epi32_mask(k, k), _mm512_loadu_ps(x + i), vscale));
  }
  dropout_apply_scalar(out, x, keep, scale, i, e);
}
#if !defined(__clang__)
#pragma GCC diagnostic pop
#endif

#endif  // __x86_64__

// keep (n) and, if x is given, out (n) = keep ? x * scale : 0, on the best path for T and isa().
// The n elements are elements [offset, offset + n) of a stream drawn for `total` elements
// (total = n, offset = 0: the usual case; see dropout_forward_part).
template <class T>
inline void dropout_run(uint8_t* keep, T* out, const T* x, T scale, int64_t n, double keep_prob, Generator& gen,
                        int64_t total = -1, int64_t offset = 0) {
  if (total < 0) total = n;
  if (n <= 0) {
    dropout_stream(total, keep_prob, gen);  // the stream advances as for the whole
    return;
  }
  DropoutStream st = dropout_stream(total, keep_prob, gen);
  if (offset % 4 != 0) {  // not on a block boundary: element by element, portable
    const uint32_t key[2] = {st.key0, st.key1};
    parallel_for(n, 1 << 14, [&](int64_t s, int64_t e) {
      for (int64_t i = s; i < e; ++i) {
        const int64_t g = offset + i;
        const uint64_t c = st.first + static_cast<uint64_t>(g / 4);
        const uint32_t ctr[4] = {static_cast<uint32_t>(c), static_cast<uint32_t>(c >> 32), 0u, 0u};
        const bool kept = (philox4x32_10(ctr, key).w[g % 4] >> 8) < st.threshold;
        keep[i] = kept;
        if (x) out[i] = kept ? x[i] * scale : T(0);
      }
    });
    return;
  }
  st.first += static_cast<uint64_t>(offset / 4);
  const int64_t blocks = (n + 3) / 4;
  const Isa level = std::is_same_v<T, float> ? isa() : Isa::scalar;
  parallel_for(blocks, kDropoutGrainBlocks, [&](int64_t kb, int64_t ke) {
#if defined(__x86_64__)
    if constexpr (std::is_same_v<T, float>) {
      if (level == Isa::avx512) return dropout_blocks_avx512(keep, out, x, scale, n, st, kb, ke);
      if (level == Isa::avx2) return dropout_blocks_avx2(keep, out, x, scale, n, st, kb, ke);
    }
#endif
    (void)level;
    dropout_blocks_scalar(keep, out, x, scale, n, st, kb, ke);
  });
}

}  // namespace detail

// keep (n): the reference's mask (bit for bit, any ISA and thread count), fast.
inline void dropout_mask(uint8_t* keep, int64_t n, double keep_prob, Generator& gen) {
  detail::dropout_run<float>(keep, nullptr, nullptr, 1.0f, n, keep_prob, gen);
}

// out[i] = x[i] * keep[i] * scale (0 where keep[i] = 0, whatever x[i]); out may equal x. Backward
// (x = grad_out); the forward is dropout_forward. x, out (n), keep (n)
template <class T>
inline void dropout_apply(T* out, const T* x, const uint8_t* keep, T scale, int64_t n) {
  const Isa level = std::is_same_v<T, float> ? isa() : Isa::scalar;
  parallel_for(n, 1 << 16, [&](int64_t s, int64_t e) {
#if defined(__x86_64__)
    if constexpr (std::is_same_v<T, float>) {
      if (level == Isa::avx512) return detail::dropout_apply_avx512(out, x, keep, scale, s, e);
      if (level == Isa::avx2) return detail::dropout_apply_avx2(out, x, keep, scale, s, e);
    }
#endif
    (void)level;
    detail::dropout_apply_scalar(out, x, keep, scale, s, e);
  });
}

// Fused forward: keep (n) = dropout_mask(n, keep_prob, gen) and out (n) = keep ? x * scale : 0,
// exactly dropout_mask followed by dropout_apply, in one pass. out may equal x.
template <class T>
inline void dropout_forward(T* out, uint8_t* keep, const T* x, T scale, int64_t n, double keep_prob, Generator& gen) {
  detail::dropout_run<T>(keep, out, x, scale, n, keep_prob, gen);
}

// dropout_forward for elements [offset, offset + n) of a tensor of `total` elements: the stream
// advances as for all `total` and the n elements get exactly the values dropout_forward over the
// whole tensor gives them (data-parallel training: one process's samples of a batch).
template <class T>
inline void dropout_forward_part(T* out, uint8_t* keep, const T* x, T scale, int64_t n, double keep_prob,
                                 Generator& gen, int64_t total, int64_t offset) {
  detail::dropout_run<T>(keep, out, x, scale, n, keep_prob, gen, total, offset);
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
