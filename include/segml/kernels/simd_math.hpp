// segml/kernels/simd_math.hpp: vectorised exp, erf and the normal CDF for AVX2 and AVX-512, plus
// the small lane helpers (horizontal sum/max, tail masks) the pointwise kernels share.
//
// Contract:
//  - Every function is inline and carries its own target attribute, so this header is safe to
//    include anywhere; call a *256* function only when segml::isa() >= Isa::avx2, a *512* one only
//    when isa() == Isa::avx512. On non-x86 builds the header is empty.
//  - Accuracy, measured against std::exp / std::erf / std::erfc in double on a dense sweep of
//    [-110, 110] (tests/test_norm_act.cpp re-checks it with these bounds):
//      exp256_ps / exp512_ps    max rel err 1.2e-7 (1 ulp) where e^x is a normal float; denormal
//                               results are approximate, 0 below about -103.9, +inf above 88.72.
//      erf256_ps / erf512_ps    max rel err 1.8e-7 on [-10, 10]; exactly +-1 beyond.
//      ndtr256_ps / ndtr512_ps  Phi(x) = P(N(0,1) <= x) = erfc(-x/sqrt2)/2, max rel err 9e-7 where
//                               Phi(x) is a normal float (x >= -13.1), including the lower tail,
//                               which is never computed as 1 - something; worst near x = -1.4.
//    NaN in gives NaN out; +-inf give the limits.
//  - Polynomials are our own least-squares (Lawson) fits of exp(r) on [-ln2/2, ln2/2],
//    erf(z)/z on z^2 in [0, 1] and erfc(z) e^{z^2} in t = 1/(1 + z/2) for z in [1, 10].
//  - Assumes the default MXCSR state (round to nearest, denormals not flushed to zero).
#pragma once

#include <cstdint>

#if defined(__x86_64__)
#include <immintrin.h>

// Function prefixes for the two ISAs (inline: headers only). The AVX-512 set includes AVX2 + FMA so
// that AVX-512 code may call the 256-bit helpers.
#define SEGML_AVX2_FN __attribute__((target("avx2,fma"))) inline
#define SEGML_AVX512_FN __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma"))) inline

namespace segml::simd {

// ---- polynomial coefficients (shared by both widths) ------------------------------------------
namespace coef {
// exp(r) = 1 + r + r^2 * P(r), |r| <= ln2/2: rel err 5e-11 in exact arithmetic.
inline constexpr float exp_poly[6] = {0.5f, 0.16666666f, 0.041666295f, 0.008333498f, 0.0013944625f, 0.00019789978f};
inline constexpr float ln2_hi = 0.693359375f, ln2_lo = -2.12194440e-4f, log2e = 1.44269504088896341f;
// erf(z) = z * P(z^2), |z| < 1: rel err 1.2e-9 in exact arithmetic.
inline constexpr float erf_poly[7] = {1.1283791f,    -0.37612626f,   0.112835854f, -0.026853813f,
                                      0.0051883305f, -0.0008010217f, 7.853933e-05f};
// erfc(z) = exp(-z^2) * P(t), t = 1/(1 + z/2), 1 <= z <= 10: rel err 6e-9 in exact arithmetic.
inline constexpr float erfc_poly[9] = {-4.1023495e-06f, 0.28219938f, 0.28099105f, 0.25296572f, 0.15804729f,
                                       0.105329394f,    0.025078291f, -0.18505423f, 0.080895536f};
inline constexpr float sqrt1_2 = 0.70710678118654752f;
}  // namespace coef

// ================================ AVX2 (8 lanes) ================================================

SEGML_AVX2_FN float hsum256_ps(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

SEGML_AVX2_FN float hmax256_ps(__m256 v) {
  __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  s = _mm_max_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// Lanes [0, n) set, for _mm256_maskload_ps / _mm256_maskstore_ps on a tail of n < 8 elements.
SEGML_AVX2_FN __m256i tail_mask256(int64_t n) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(n)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

// Horner evaluation of c[0] + c[1] x + ... + c[N-1] x^(N-1).
template <int N>
SEGML_AVX2_FN __m256 horner256_ps(__m256 x, const float (&c)[N]) {
  __m256 p = _mm256_set1_ps(c[N - 1]);
  for (int k = N - 2; k >= 0; --k) p = _mm256_fmadd_ps(p, x, _mm256_set1_ps(c[k]));
  return p;
}

// e^x.
SEGML_AVX2_FN __m256 exp256_ps(__m256 x) {
  // Clamp (NaN passes through: max/min return their second operand on NaN).
  x = _mm256_min_ps(_mm256_set1_ps(89.0f), _mm256_max_ps(_mm256_set1_ps(-104.0f), x));
  // x = n ln2 + r, |r| <= ln2/2, with ln2 split in two so that n * ln2_hi is exact.
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(coef::log2e)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(coef::ln2_hi), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(coef::ln2_lo), r);
  const __m256 p = horner256_ps(r, coef::exp_poly);
  const __m256 er = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  // 2^n as 2^n1 * 2^n2 with n1 = floor(n/2): both factors stay normal for n in [-150, 128], so
  // the product underflows to denormals and overflows to +inf correctly.
  const __m256i ni = _mm256_cvtps_epi32(n);
  const __m256i n1 = _mm256_srai_epi32(ni, 1), n2 = _mm256_sub_epi32(ni, n1);
  const __m256i bias = _mm256_set1_epi32(127);
  const __m256 s1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n1, bias), 23));
  const __m256 s2 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n2, bias), 23));
  return _mm256_mul_ps(_mm256_mul_ps(er, s1), s2);
}

// erfc(a) for a in [1, 10] given a and a^2 = hi + lo exactly (lo from an FMA), so that the
// rounding of a^2 does not spoil exp(-a^2) in the far tail.
SEGML_AVX2_FN __m256 erfc_tail256_ps(__m256 a, __m256 a2_hi, __m256 a2_lo) {
  const __m256 one = _mm256_set1_ps(1.0f);
  const __m256 t = _mm256_div_ps(one, _mm256_fmadd_ps(a, _mm256_set1_ps(0.5f), one));
  const __m256 q = horner256_ps(t, coef::erfc_poly);
  const __m256 e = _mm256_mul_ps(exp256_ps(_mm256_sub_ps(_mm256_setzero_ps(), a2_hi)), _mm256_sub_ps(one, a2_lo));
  return _mm256_mul_ps(e, q);
}

// erf(x).
SEGML_AVX2_FN __m256 erf256_ps(__m256 x) {
  const __m256 one = _mm256_set1_ps(1.0f), sign = _mm256_set1_ps(-0.0f);
  const __m256 a = _mm256_andnot_ps(sign, x);
  const __m256 small = _mm256_mul_ps(x, horner256_ps(_mm256_mul_ps(x, x), coef::erf_poly));
  const __m256 ac = _mm256_min_ps(_mm256_set1_ps(10.0f), _mm256_max_ps(one, a));
  const __m256 hi = _mm256_mul_ps(ac, ac), lo = _mm256_fmsub_ps(ac, ac, hi);
  const __m256 big = _mm256_or_ps(_mm256_sub_ps(one, erfc_tail256_ps(ac, hi, lo)), _mm256_and_ps(x, sign));
  return _mm256_blendv_ps(small, big, _mm256_cmp_ps(a, one, _CMP_GE_OQ));
}

// Phi(x) = P(N(0,1) <= x) = erfc(-x/sqrt2) / 2, accurate in the lower tail (GELU's x * Phi(x)).
SEGML_AVX2_FN __m256 ndtr256_ps(__m256 x) {
  const __m256 one = _mm256_set1_ps(1.0f), half = _mm256_set1_ps(0.5f), sign = _mm256_set1_ps(-0.0f);
  const __m256 u = _mm256_mul_ps(x, _mm256_set1_ps(coef::sqrt1_2));
  const __m256 small = _mm256_fmadd_ps(_mm256_mul_ps(u, horner256_ps(_mm256_mul_ps(u, u), coef::erf_poly)), half, half);
  const __m256 tail = _mm256_cmp_ps(_mm256_andnot_ps(sign, u), one, _CMP_GE_OQ);
  if (_mm256_testz_ps(tail, tail)) return small;  // no lane needs the tail (the common case): skip it
  // |x| in [sqrt2, 14.5] (Phi(-14.5) underflows to 0); u^2 = x^2 / 2 exactly as (hi + lo) / 2.
  const __m256 xa = _mm256_min_ps(_mm256_set1_ps(14.5f), _mm256_max_ps(_mm256_set1_ps(1.4142135f), _mm256_andnot_ps(sign, x)));
  const __m256 hi = _mm256_mul_ps(xa, xa), lo = _mm256_fmsub_ps(xa, xa, hi);
  const __m256 h = _mm256_mul_ps(half, erfc_tail256_ps(_mm256_mul_ps(xa, _mm256_set1_ps(coef::sqrt1_2)), _mm256_mul_ps(hi, half),
                                                       _mm256_mul_ps(lo, half)));
  const __m256 big = _mm256_blendv_ps(_mm256_sub_ps(one, h), h, _mm256_cmp_ps(x, _mm256_setzero_ps(), _CMP_LT_OQ));
  return _mm256_blendv_ps(small, big, tail);
}

// ================================ AVX-512 (16 lanes) ============================================
// The all-lanes masked (maskz) forms are used where GCC 12's unmasked intrinsics trip
// -Wmaybe-uninitialized in user code (their _mm512_undefined_* placeholder, GCC bug 105593).
inline constexpr __mmask16 kAll = 0xFFFF;

// The two 256-bit halves of v (maskz extracts, see kAll).
SEGML_AVX512_FN __m256 lo256_ps(__m512 v) {
  return _mm256_castpd_ps(_mm512_maskz_extractf64x4_pd(0xF, _mm512_castps_pd(v), 0));
}
SEGML_AVX512_FN __m256 hi256_ps(__m512 v) {
  return _mm256_castpd_ps(_mm512_maskz_extractf64x4_pd(0xF, _mm512_castps_pd(v), 1));
}
SEGML_AVX512_FN float hsum512_ps(__m512 v) { return hsum256_ps(_mm256_add_ps(lo256_ps(v), hi256_ps(v))); }
SEGML_AVX512_FN float hmax512_ps(__m512 v) { return hmax256_ps(_mm256_max_ps(lo256_ps(v), hi256_ps(v))); }

// Lanes [0, n) set, for masked loads/stores of a tail of n < 16 elements.
SEGML_AVX512_FN __mmask16 tail_mask512(int64_t n) { return static_cast<__mmask16>((1u << n) - 1u); }

template <int N>
SEGML_AVX512_FN __m512 horner512_ps(__m512 x, const float (&c)[N]) {
  __m512 p = _mm512_set1_ps(c[N - 1]);
  for (int k = N - 2; k >= 0; --k) p = _mm512_fmadd_ps(p, x, _mm512_set1_ps(c[k]));
  return p;
}

SEGML_AVX512_FN __m512 exp512_ps(__m512 x) {
  x = _mm512_maskz_min_ps(kAll, _mm512_set1_ps(89.0f), _mm512_maskz_max_ps(kAll, _mm512_set1_ps(-104.0f), x));
  const __m512 n = _mm512_maskz_roundscale_ps(kAll, _mm512_mul_ps(x, _mm512_set1_ps(coef::log2e)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(coef::ln2_hi), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(coef::ln2_lo), r);
  const __m512 p = horner512_ps(r, coef::exp_poly);
  const __m512 er = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  const __m512i ni = _mm512_maskz_cvtps_epi32(kAll, n);
  const __m512i n1 = _mm512_maskz_srai_epi32(kAll, ni, 1), n2 = _mm512_sub_epi32(ni, n1);
  const __m512i bias = _mm512_set1_epi32(127);
  const __m512 s1 = _mm512_castsi512_ps(_mm512_maskz_slli_epi32(kAll, _mm512_add_epi32(n1, bias), 23));
  const __m512 s2 = _mm512_castsi512_ps(_mm512_maskz_slli_epi32(kAll, _mm512_add_epi32(n2, bias), 23));
  return _mm512_mul_ps(_mm512_mul_ps(er, s1), s2);
}

SEGML_AVX512_FN __m512 erfc_tail512_ps(__m512 a, __m512 a2_hi, __m512 a2_lo) {
  const __m512 one = _mm512_set1_ps(1.0f);
  const __m512 t = _mm512_div_ps(one, _mm512_fmadd_ps(a, _mm512_set1_ps(0.5f), one));
  const __m512 q = horner512_ps(t, coef::erfc_poly);
  const __m512 e = _mm512_mul_ps(exp512_ps(_mm512_sub_ps(_mm512_setzero_ps(), a2_hi)), _mm512_sub_ps(one, a2_lo));
  return _mm512_mul_ps(e, q);
}

SEGML_AVX512_FN __m512 erf512_ps(__m512 x) {
  const __m512 one = _mm512_set1_ps(1.0f), sign = _mm512_set1_ps(-0.0f);
  const __m512 a = _mm512_andnot_ps(sign, x);
  const __m512 small = _mm512_mul_ps(x, horner512_ps(_mm512_mul_ps(x, x), coef::erf_poly));
  const __m512 ac = _mm512_maskz_min_ps(kAll, _mm512_set1_ps(10.0f), _mm512_maskz_max_ps(kAll, one, a));
  const __m512 hi = _mm512_mul_ps(ac, ac), lo = _mm512_fmsub_ps(ac, ac, hi);
  const __m512 big = _mm512_or_ps(_mm512_sub_ps(one, erfc_tail512_ps(ac, hi, lo)), _mm512_and_ps(x, sign));
  return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(a, one, _CMP_GE_OQ), small, big);
}

SEGML_AVX512_FN __m512 ndtr512_ps(__m512 x) {
  const __m512 one = _mm512_set1_ps(1.0f), half = _mm512_set1_ps(0.5f), sign = _mm512_set1_ps(-0.0f);
  const __m512 u = _mm512_mul_ps(x, _mm512_set1_ps(coef::sqrt1_2));
  const __m512 small = _mm512_fmadd_ps(_mm512_mul_ps(u, horner512_ps(_mm512_mul_ps(u, u), coef::erf_poly)), half, half);
  const __mmask16 tail = _mm512_cmp_ps_mask(_mm512_andnot_ps(sign, u), one, _CMP_GE_OQ);
  if (!tail) return small;  // no lane needs the tail (the common case): skip it
  const __m512 xa = _mm512_maskz_min_ps(kAll, _mm512_set1_ps(14.5f), _mm512_maskz_max_ps(kAll, _mm512_set1_ps(1.4142135f), _mm512_andnot_ps(sign, x)));
  const __m512 hi = _mm512_mul_ps(xa, xa), lo = _mm512_fmsub_ps(xa, xa, hi);
  const __m512 h = _mm512_mul_ps(half, erfc_tail512_ps(_mm512_mul_ps(xa, _mm512_set1_ps(coef::sqrt1_2)), _mm512_mul_ps(hi, half),
                                                       _mm512_mul_ps(lo, half)));
  const __m512 big = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_LT_OQ), _mm512_sub_ps(one, h), h);
  return _mm512_mask_blend_ps(tail, small, big);
}

}  // namespace segml::simd
#endif  // __x86_64__
