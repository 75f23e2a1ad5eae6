// segml/simd/vec.hpp: one set of vector operations per instruction set. The only header of the
// library (with simd/gemm_tile.hpp) where intrinsics appear; every vectorised kernel is written
// once against it and instantiated per backend (see simd/dispatch.hpp for how a kernel is entered).
//
// A backend S is a struct of static functions plus a vector type:
//   S::T        element type (float; Scalar<double> for the double-precision paths)
//   S::lanes    elements per vector: Scalar 1, Neon 4, Avx2 8, Avx512 16
//   S::isa      the segml::Isa it implements
//   S::V        a vector (a struct wrapping the register), S::M a lane mask
//   S::zero(), S::set1(x)                 broadcast
//   S::load(p), S::store(p, v)            unaligned, `lanes` elements
//   S::tail(n)                            mask of lanes [0, n), 0 <= n < lanes
//   S::load(p, m), S::store(p, v, m)      masked: only lanes of m are read (others are 0) / written;
//                                         m may be simd::Full{}, which means all lanes (plain load)
//   simd::for_lanes<S>(n, f)              f(j, m) for j = 0, lanes, 2 lanes, ... < n, m the lanes of
//                                         [j, n) (Full{} for whole vectors): each loop written once
//   S::add sub mul div min max            lane-wise; min/max return b where a lane is NaN (x86 rule)
//   S::fma(a, b, c) = a*b + c, S::fnma(a, b, c) = c - a*b, S::fms(a, b, c) = a*b - c (one rounding,
//                                         except in Scalar)
//   a + b, a - b, a * b, a / b            the same as add, sub, mul, div
//   S::sqrt(v) (correctly rounded), S::abs(v), S::copysign(mag, sgn), S::round(v) (to nearest even)
//   S::lt le gt ge (a, b) -> M, S::select(m, a, b) (a where m), S::any(m)
//   S::hsum(v), S::hmax(v)                horizontal sum / max of all lanes
//   S::scale_pow2(v, n)                   v * 2^n for integral n in [-150, 128], exact over the
//                                         whole range (2^n as two normal factors)
//
// Passed in memory: the x86 backends' V and M have a user-provided copy constructor, so the C++ ABI
// passes and returns them by invisible reference whatever the caller's target. Without it an
// unoptimised build, which does not inline the backend's functions, would return an __m256 in a
// register from an AVX function to a caller compiled for plain x86-64 that expects it in memory
// (GCC's -Wpsabi note): wrong results at -O0. Optimised builds inline it all away.
//
// The x86 backends carry their target attribute on every function (GCC requires it on any
// function that uses intrinsics), so this header is safe to include in code compiled for plain
// x86-64; they are used only from inside simd::enter (simd/dispatch.hpp), which compiles the whole
// kernel body for the backend's ISA. Scalar<T> is the portable backend: plain C++ arithmetic,
// lane count 1, the path of SEGML_ISA=scalar, of double and of CPUs without a vector backend.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "segml/core/cpu.hpp"

#if defined(__x86_64__)
#include <immintrin.h>
#endif
#if defined(__aarch64__)
#include <arm_neon.h>
#endif

// The target attributes of the x86 backends, spelled once. AVX-512 includes AVX2 + FMA.
#define SEGML_TARGET_AVX2 __attribute__((target("avx2,fma")))
#define SEGML_TARGET_AVX512 __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")))

namespace segml::simd {

// The mask of a whole vector: S::load(p, Full{}) is S::load(p), S::select(Full{}, a, b) is a.
struct Full {};

// ================================ Scalar (1 lane, float or double) ================================
template <class Elem>
struct Scalar {
  using T = Elem;
  static constexpr int64_t lanes = 1;
  static constexpr Isa isa = Isa::scalar;
  struct V {
    T r;
    friend V operator+(const V& a, const V& b) { return add(a, b); }
    friend V operator-(const V& a, const V& b) { return sub(a, b); }
    friend V operator*(const V& a, const V& b) { return mul(a, b); }
    friend V operator/(const V& a, const V& b) { return div(a, b); }
  };
  using M = bool;

  static V zero() { return {T(0)}; }
  static V set1(T x) { return {x}; }
  static V load(const T* p) { return {*p}; }
  static void store(T* p, const V& v) { *p = v.r; }
  static M tail(int64_t n) { return n > 0; }
  static V load(const T* p, M m) { return {m ? *p : T(0)}; }
  static void store(T* p, const V& v, M m) {
    if (m) *p = v.r;
  }
  static V load(const T* p, Full) { return load(p); }
  static void store(T* p, const V& v, Full) { store(p, v); }
  static V select(Full, const V& a, const V&) { return a; }
  static V add(const V& a, const V& b) { return {a.r + b.r}; }
  static V sub(const V& a, const V& b) { return {a.r - b.r}; }
  static V mul(const V& a, const V& b) { return {a.r * b.r}; }
  static V div(const V& a, const V& b) { return {a.r / b.r}; }
  static V min(const V& a, const V& b) { return {a.r < b.r ? a.r : b.r}; }
  static V max(const V& a, const V& b) { return {a.r > b.r ? a.r : b.r}; }
  // Two roundings: without an FMA unit std::fma is a slow library call, and this is the path of
  // CPUs without one.
  static V fma(const V& a, const V& b, const V& c) { return {a.r * b.r + c.r}; }
  static V fnma(const V& a, const V& b, const V& c) { return {c.r - a.r * b.r}; }
  static V fms(const V& a, const V& b, const V& c) { return {a.r * b.r - c.r}; }
  static V sqrt(const V& v) { return {std::sqrt(v.r)}; }
  static V abs(const V& v) { return {std::fabs(v.r)}; }
  static V copysign(const V& mag, const V& sgn) { return {std::copysign(mag.r, sgn.r)}; }
  static V round(const V& v) { return {std::nearbyint(v.r)}; }
  static M lt(const V& a, const V& b) { return a.r < b.r; }
  static M le(const V& a, const V& b) { return a.r <= b.r; }
  static M gt(const V& a, const V& b) { return a.r > b.r; }
  static M ge(const V& a, const V& b) { return a.r >= b.r; }
  static V select(M m, const V& a, const V& b) { return m ? a : b; }
  static bool any(M m) { return m; }
  static T hsum(const V& v) { return v.r; }
  static T hmax(const V& v) { return v.r; }
  static V scale_pow2(const V& v, const V& n) {
    const int n1 = static_cast<int>(n.r) >> 1;
    return {std::ldexp(std::ldexp(v.r, n1), static_cast<int>(n.r) - n1)};
  }
};

#if defined(__x86_64__)
// ================================ AVX2 + FMA (8 lanes) ============================================
struct Avx2 {
  using T = float;
  static constexpr int64_t lanes = 8;
  static constexpr Isa isa = Isa::avx2;
  struct V {
    __m256 r;
    V() = default;
    V(const __m256& x) : r(x) {}  // implicit: a backend function returns {intrinsic(...)}
    V(const V& o) : r(o.r) {}  // user-provided: see "Passed in memory" above
    V& operator=(const V&) = default;
    friend SEGML_TARGET_AVX2 V operator+(const V& a, const V& b) { return add(a, b); }
    friend SEGML_TARGET_AVX2 V operator-(const V& a, const V& b) { return sub(a, b); }
    friend SEGML_TARGET_AVX2 V operator*(const V& a, const V& b) { return mul(a, b); }
    friend SEGML_TARGET_AVX2 V operator/(const V& a, const V& b) { return div(a, b); }
  };
  struct M {  // all-ones lanes
    __m256 r;
    M() = default;
    M(const __m256& x) : r(x) {}  // implicit: a backend function returns {intrinsic(...)}
    M(const M& o) : r(o.r) {}  // user-provided: see "Passed in memory" above
    M& operator=(const M&) = default;
  };

  SEGML_TARGET_AVX2 static V zero() { return {_mm256_setzero_ps()}; }
  SEGML_TARGET_AVX2 static V set1(float x) { return {_mm256_set1_ps(x)}; }
  SEGML_TARGET_AVX2 static V load(const float* p) { return {_mm256_loadu_ps(p)}; }
  SEGML_TARGET_AVX2 static void store(float* p, const V& v) { _mm256_storeu_ps(p, v.r); }
  SEGML_TARGET_AVX2 static M tail(int64_t n) {
    const __m256i i = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(n)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    return {_mm256_castsi256_ps(i)};
  }
  SEGML_TARGET_AVX2 static V load(const float* p, const M& m) { return {_mm256_maskload_ps(p, _mm256_castps_si256(m.r))}; }
  SEGML_TARGET_AVX2 static void store(float* p, const V& v, const M& m) {
    _mm256_maskstore_ps(p, _mm256_castps_si256(m.r), v.r);
  }
  SEGML_TARGET_AVX2 static V load(const T* p, Full) { return load(p); }
  SEGML_TARGET_AVX2 static void store(T* p, const V& v, Full) { store(p, v); }
  SEGML_TARGET_AVX2 static V select(Full, const V& a, const V&) { return a; }
  SEGML_TARGET_AVX2 static V add(const V& a, const V& b) { return {_mm256_add_ps(a.r, b.r)}; }
  SEGML_TARGET_AVX2 static V sub(const V& a, const V& b) { return {_mm256_sub_ps(a.r, b.r)}; }
  SEGML_TARGET_AVX2 static V mul(const V& a, const V& b) { return {_mm256_mul_ps(a.r, b.r)}; }
  SEGML_TARGET_AVX2 static V div(const V& a, const V& b) { return {_mm256_div_ps(a.r, b.r)}; }
  SEGML_TARGET_AVX2 static V min(const V& a, const V& b) { return {_mm256_min_ps(a.r, b.r)}; }
  SEGML_TARGET_AVX2 static V max(const V& a, const V& b) { return {_mm256_max_ps(a.r, b.r)}; }
  SEGML_TARGET_AVX2 static V fma(const V& a, const V& b, const V& c) { return {_mm256_fmadd_ps(a.r, b.r, c.r)}; }
  SEGML_TARGET_AVX2 static V fnma(const V& a, const V& b, const V& c) { return {_mm256_fnmadd_ps(a.r, b.r, c.r)}; }
  SEGML_TARGET_AVX2 static V fms(const V& a, const V& b, const V& c) { return {_mm256_fmsub_ps(a.r, b.r, c.r)}; }
  SEGML_TARGET_AVX2 static V sqrt(const V& v) { return {_mm256_sqrt_ps(v.r)}; }
  SEGML_TARGET_AVX2 static V abs(const V& v) { return {_mm256_andnot_ps(_mm256_set1_ps(-0.0f), v.r)}; }
  SEGML_TARGET_AVX2 static V copysign(const V& mag, const V& sgn) {
    const __m256 s = _mm256_set1_ps(-0.0f);
    return {_mm256_or_ps(_mm256_andnot_ps(s, mag.r), _mm256_and_ps(s, sgn.r))};
  }
  SEGML_TARGET_AVX2 static V round(const V& v) { return {_mm256_round_ps(v.r, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)}; }
  SEGML_TARGET_AVX2 static M lt(const V& a, const V& b) { return {_mm256_cmp_ps(a.r, b.r, _CMP_LT_OQ)}; }
  SEGML_TARGET_AVX2 static M le(const V& a, const V& b) { return {_mm256_cmp_ps(a.r, b.r, _CMP_LE_OQ)}; }
  SEGML_TARGET_AVX2 static M gt(const V& a, const V& b) { return {_mm256_cmp_ps(a.r, b.r, _CMP_GT_OQ)}; }
  SEGML_TARGET_AVX2 static M ge(const V& a, const V& b) { return {_mm256_cmp_ps(a.r, b.r, _CMP_GE_OQ)}; }
  SEGML_TARGET_AVX2 static V select(const M& m, const V& a, const V& b) { return {_mm256_blendv_ps(b.r, a.r, m.r)}; }
  SEGML_TARGET_AVX2 static bool any(const M& m) { return !_mm256_testz_ps(m.r, m.r); }
  SEGML_TARGET_AVX2 static float hsum(const V& v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v.r), _mm256_extractf128_ps(v.r, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  SEGML_TARGET_AVX2 static float hmax(const V& v) {
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(v.r), _mm256_extractf128_ps(v.r, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    s = _mm_max_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  SEGML_TARGET_AVX2 static V scale_pow2(const V& v, const V& n) {
    const __m256i ni = _mm256_cvtps_epi32(n.r);
    const __m256i n1 = _mm256_srai_epi32(ni, 1), n2 = _mm256_sub_epi32(ni, n1), bias = _mm256_set1_epi32(127);
    const __m256 s1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n1, bias), 23));
    const __m256 s2 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n2, bias), 23));
    return {_mm256_mul_ps(_mm256_mul_ps(v.r, s1), s2)};
  }
};

// ================================ AVX-512 F/BW/DQ/VL (16 lanes) ===================================
// The all-lanes masked (maskz) forms stand where GCC 12's unmasked intrinsics trip
// -Wmaybe-uninitialized in user code (their _mm512_undefined_* placeholder, GCC bug 105593).
struct Avx512 {
  using T = float;
  static constexpr int64_t lanes = 16;
  static constexpr Isa isa = Isa::avx512;
  static constexpr __mmask16 kAll = 0xFFFF;
  struct V {
    __m512 r;
    V() = default;
    V(const __m512& x) : r(x) {}  // implicit: a backend function returns {intrinsic(...)}
    V(const V& o) : r(o.r) {}  // user-provided: see "Passed in memory" above
    V& operator=(const V&) = default;
    friend SEGML_TARGET_AVX512 V operator+(const V& a, const V& b) { return add(a, b); }
    friend SEGML_TARGET_AVX512 V operator-(const V& a, const V& b) { return sub(a, b); }
    friend SEGML_TARGET_AVX512 V operator*(const V& a, const V& b) { return mul(a, b); }
    friend SEGML_TARGET_AVX512 V operator/(const V& a, const V& b) { return div(a, b); }
  };
  struct M {
    __mmask16 r;
  };

  SEGML_TARGET_AVX512 static V zero() { return {_mm512_setzero_ps()}; }
  SEGML_TARGET_AVX512 static V set1(float x) { return {_mm512_set1_ps(x)}; }
  SEGML_TARGET_AVX512 static V load(const float* p) { return {_mm512_loadu_ps(p)}; }
  SEGML_TARGET_AVX512 static void store(float* p, const V& v) { _mm512_storeu_ps(p, v.r); }
  SEGML_TARGET_AVX512 static M tail(int64_t n) { return {static_cast<__mmask16>((1u << n) - 1u)}; }
  SEGML_TARGET_AVX512 static V load(const float* p, const M& m) { return {_mm512_maskz_loadu_ps(m.r, p)}; }
  SEGML_TARGET_AVX512 static void store(float* p, const V& v, const M& m) { _mm512_mask_storeu_ps(p, m.r, v.r); }
  SEGML_TARGET_AVX512 static V load(const T* p, Full) { return load(p); }
  SEGML_TARGET_AVX512 static void store(T* p, const V& v, Full) { store(p, v); }
  SEGML_TARGET_AVX512 static V select(Full, const V& a, const V&) { return a; }
  SEGML_TARGET_AVX512 static V add(const V& a, const V& b) { return {_mm512_add_ps(a.r, b.r)}; }
  SEGML_TARGET_AVX512 static V sub(const V& a, const V& b) { return {_mm512_sub_ps(a.r, b.r)}; }
  SEGML_TARGET_AVX512 static V mul(const V& a, const V& b) { return {_mm512_mul_ps(a.r, b.r)}; }
  SEGML_TARGET_AVX512 static V div(const V& a, const V& b) { return {_mm512_div_ps(a.r, b.r)}; }
  SEGML_TARGET_AVX512 static V min(const V& a, const V& b) { return {_mm512_maskz_min_ps(kAll, a.r, b.r)}; }
  SEGML_TARGET_AVX512 static V max(const V& a, const V& b) { return {_mm512_maskz_max_ps(kAll, a.r, b.r)}; }
  SEGML_TARGET_AVX512 static V fma(const V& a, const V& b, const V& c) { return {_mm512_fmadd_ps(a.r, b.r, c.r)}; }
  SEGML_TARGET_AVX512 static V fnma(const V& a, const V& b, const V& c) { return {_mm512_fnmadd_ps(a.r, b.r, c.r)}; }
  SEGML_TARGET_AVX512 static V fms(const V& a, const V& b, const V& c) { return {_mm512_fmsub_ps(a.r, b.r, c.r)}; }
  SEGML_TARGET_AVX512 static V sqrt(const V& v) { return {_mm512_maskz_sqrt_ps(kAll, v.r)}; }
  SEGML_TARGET_AVX512 static V abs(const V& v) { return {_mm512_andnot_ps(_mm512_set1_ps(-0.0f), v.r)}; }
  SEGML_TARGET_AVX512 static V copysign(const V& mag, const V& sgn) {
    const __m512 s = _mm512_set1_ps(-0.0f);
    return {_mm512_or_ps(_mm512_andnot_ps(s, mag.r), _mm512_and_ps(s, sgn.r))};
  }
  SEGML_TARGET_AVX512 static V round(const V& v) {
    return {_mm512_maskz_roundscale_ps(kAll, v.r, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)};
  }
  SEGML_TARGET_AVX512 static M lt(const V& a, const V& b) { return {_mm512_cmp_ps_mask(a.r, b.r, _CMP_LT_OQ)}; }
  SEGML_TARGET_AVX512 static M le(const V& a, const V& b) { return {_mm512_cmp_ps_mask(a.r, b.r, _CMP_LE_OQ)}; }
  SEGML_TARGET_AVX512 static M gt(const V& a, const V& b) { return {_mm512_cmp_ps_mask(a.r, b.r, _CMP_GT_OQ)}; }
  SEGML_TARGET_AVX512 static M ge(const V& a, const V& b) { return {_mm512_cmp_ps_mask(a.r, b.r, _CMP_GE_OQ)}; }
  SEGML_TARGET_AVX512 static V select(const M& m, const V& a, const V& b) { return {_mm512_mask_blend_ps(m.r, b.r, a.r)}; }
  SEGML_TARGET_AVX512 static bool any(const M& m) { return m.r != 0; }
  SEGML_TARGET_AVX512 static float hsum(const V& v) {
    const __m512d d = _mm512_castps_pd(v.r);
    const __m256 lo = _mm256_castpd_ps(_mm512_maskz_extractf64x4_pd(0xF, d, 0));
    const __m256 hi = _mm256_castpd_ps(_mm512_maskz_extractf64x4_pd(0xF, d, 1));
    return Avx2::hsum({_mm256_add_ps(lo, hi)});
  }
  SEGML_TARGET_AVX512 static float hmax(const V& v) {
    const __m512d d = _mm512_castps_pd(v.r);
    const __m256 lo = _mm256_castpd_ps(_mm512_maskz_extractf64x4_pd(0xF, d, 0));
    const __m256 hi = _mm256_castpd_ps(_mm512_maskz_extractf64x4_pd(0xF, d, 1));
    return Avx2::hmax({_mm256_max_ps(lo, hi)});
  }
  SEGML_TARGET_AVX512 static V scale_pow2(const V& v, const V& n) {
    const __m512i ni = _mm512_maskz_cvtps_epi32(kAll, n.r);
    const __m512i n1 = _mm512_maskz_srai_epi32(kAll, ni, 1), n2 = _mm512_sub_epi32(ni, n1), bias = _mm512_set1_epi32(127);
    const __m512 s1 = _mm512_castsi512_ps(_mm512_maskz_slli_epi32(kAll, _mm512_add_epi32(n1, bias), 23));
    const __m512 s2 = _mm512_castsi512_ps(_mm512_maskz_slli_epi32(kAll, _mm512_add_epi32(n2, bias), 23));
    return {_mm512_mul_ps(_mm512_mul_ps(v.r, s1), s2)};
  }
};
#endif  // __x86_64__

#if defined(__aarch64__)
// ================================ NEON, AArch64 Advanced SIMD (4 lanes) ===========================
// Baseline on every AArch64 CPU: no target attribute. NEON has no masked loads, so a masked load or
// store goes through a 4-lane buffer (it only ever serves a row's tail).
struct Neon {
  using T = float;
  static constexpr int64_t lanes = 4;
  static constexpr Isa isa = Isa::neon;
  struct V {
    float32x4_t r;
    friend V operator+(const V& a, const V& b) { return add(a, b); }
    friend V operator-(const V& a, const V& b) { return sub(a, b); }
    friend V operator*(const V& a, const V& b) { return mul(a, b); }
    friend V operator/(const V& a, const V& b) { return div(a, b); }
  };
  struct M {
    uint32x4_t r;
  };

  static V zero() { return {vdupq_n_f32(0.0f)}; }
  static V set1(float x) { return {vdupq_n_f32(x)}; }
  static V load(const float* p) { return {vld1q_f32(p)}; }
  static void store(float* p, const V& v) { vst1q_f32(p, v.r); }
  static M tail(int64_t n) {
    const uint32_t idx[4] = {0, 1, 2, 3};
    return {vcltq_u32(vld1q_u32(idx), vdupq_n_u32(static_cast<uint32_t>(n)))};
  }
  static V load(const float* p, const M& m) {
    uint32_t mb[4];
    float b[4] = {0, 0, 0, 0};
    vst1q_u32(mb, m.r);
    for (int i = 0; i < 4; ++i)
      if (mb[i]) b[i] = p[i];
    return {vld1q_f32(b)};
  }
  static void store(float* p, const V& v, const M& m) {
    uint32_t mb[4];
    float b[4];
    vst1q_u32(mb, m.r);
    vst1q_f32(b, v.r);
    for (int i = 0; i < 4; ++i)
      if (mb[i]) p[i] = b[i];
  }
  static V load(const T* p, Full) { return load(p); }
  static void store(T* p, const V& v, Full) { store(p, v); }
  static V select(Full, const V& a, const V&) { return a; }
  static V add(const V& a, const V& b) { return {vaddq_f32(a.r, b.r)}; }
  static V sub(const V& a, const V& b) { return {vsubq_f32(a.r, b.r)}; }
  static V mul(const V& a, const V& b) { return {vmulq_f32(a.r, b.r)}; }
  static V div(const V& a, const V& b) { return {vdivq_f32(a.r, b.r)}; }
  // x86's rule (b where a lane is unordered), not vminq's NaN propagation, so that clamps behave alike.
  static V min(const V& a, const V& b) { return {vbslq_f32(vcltq_f32(a.r, b.r), a.r, b.r)}; }
  static V max(const V& a, const V& b) { return {vbslq_f32(vcgtq_f32(a.r, b.r), a.r, b.r)}; }
  static V fma(const V& a, const V& b, const V& c) { return {vfmaq_f32(c.r, a.r, b.r)}; }
  static V fnma(const V& a, const V& b, const V& c) { return {vfmsq_f32(c.r, a.r, b.r)}; }
  static V fms(const V& a, const V& b, const V& c) { return {vnegq_f32(vfmsq_f32(c.r, a.r, b.r))}; }
  static V sqrt(const V& v) { return {vsqrtq_f32(v.r)}; }
  static V abs(const V& v) { return {vabsq_f32(v.r)}; }
  static V copysign(const V& mag, const V& sgn) { return {vbslq_f32(vdupq_n_u32(0x80000000u), sgn.r, mag.r)}; }
  static V round(const V& v) { return {vrndnq_f32(v.r)}; }
  static M lt(const V& a, const V& b) { return {vcltq_f32(a.r, b.r)}; }
  static M le(const V& a, const V& b) { return {vcleq_f32(a.r, b.r)}; }
  static M gt(const V& a, const V& b) { return {vcgtq_f32(a.r, b.r)}; }
  static M ge(const V& a, const V& b) { return {vcgeq_f32(a.r, b.r)}; }
  static V select(const M& m, const V& a, const V& b) { return {vbslq_f32(m.r, a.r, b.r)}; }
  static bool any(const M& m) { return vmaxvq_u32(m.r) != 0; }
  static float hsum(const V& v) { return vaddvq_f32(v.r); }
  static float hmax(const V& v) { return vmaxvq_f32(v.r); }
  static V scale_pow2(const V& v, const V& n) {
    const int32x4_t ni = vcvtnq_s32_f32(n.r);
    const int32x4_t n1 = vshrq_n_s32(ni, 1), n2 = vsubq_s32(ni, n1), bias = vdupq_n_s32(127);
    const float32x4_t s1 = vreinterpretq_f32_s32(vshlq_n_s32(vaddq_s32(n1, bias), 23));
    const float32x4_t s2 = vreinterpretq_f32_s32(vshlq_n_s32(vaddq_s32(n2, bias), 23));
    return {vmulq_f32(vmulq_f32(v.r, s1), s2)};
  }
};
#endif  // __aarch64__

// f(j, m) over [0, n) a vector at a time: whole vectors with m = Full{}, then the last partial one
// (if any) with m = S::tail(...). A kernel writes each loop body once with S::load(p + j, m).
template <class S, class F>
inline void for_lanes(int64_t n, F&& f) {
  const int64_t body = n - n % S::lanes;
  for (int64_t j = 0; j < body; j += S::lanes) f(j, Full{});
  if (body < n) f(body, S::tail(n - body));
}

}  // namespace segml::simd
