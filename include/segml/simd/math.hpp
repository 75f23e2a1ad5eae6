// segml/simd/math.hpp: exp, erf and the normal CDF on any backend of simd/vec.hpp, written once.
//
//   simd::exp<S>(x), simd::erf<S>(x), simd::ndtr<S>(x)   (ndtr(x) = Phi(x) = P(N(0,1) <= x))
//
// On the vector backends these are our own polynomials; on Scalar<T> they are std::exp, std::erf
// in T and erfc(-x/sqrt2)/2 in double. Accuracy of the polynomial versions, measured against std::exp /
// std::erf / std::erfc in double on a dense sweep of [-110, 110] (tests/test_simd.cpp checks these
// bounds on every backend the machine runs):
//   exp    max rel err 1.2e-7 (1 ulp) where e^x is a normal float; denormal results are
//          approximate, 0 below about -103.9, +inf above 88.72.
//   erf    max rel err 1.8e-7 on [-10, 10]; exactly +-1 beyond.
//   ndtr   max rel err 9e-7 where Phi(x) is a normal float (x >= -13.1), including the lower tail,
//          which is never computed as 1 - something; worst near x = -1.4.
// NaN in gives NaN out; +-inf give the limits. Polynomials are our own least-squares (Lawson) fits
// of exp(r) on [-ln2/2, ln2/2], erf(z)/z on z^2 in [0, 1] and erfc(z) e^{z^2} in t = 1/(1 + z/2)
// for z in [1, 10]. Assumes the default floating-point environment (round to nearest, denormals
// not flushed to zero).
#pragma once

#include <cmath>

#include "segml/simd/vec.hpp"

namespace segml::simd {

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

// c[0] + c[1] x + ... + c[N-1] x^(N-1), by Horner's rule.
template <class S, int N>
inline typename S::V horner(const typename S::V& x, const float (&c)[N]) {
  typename S::V p = S::set1(c[N - 1]);
  for (int k = N - 2; k >= 0; --k) p = S::fma(p, x, S::set1(c[k]));
  return p;
}

// e^x.
template <class S>
inline typename S::V exp(const typename S::V& x_in) {
  using V = typename S::V;
  if constexpr (S::lanes == 1) {
    return V{std::exp(x_in.r)};
  } else {
    // Clamp (NaN passes through: min and max return their second operand on NaN).
    const V x = S::min(S::set1(89.0f), S::max(S::set1(-104.0f), x_in));
    // x = n ln2 + r, |r| <= ln2/2, with ln2 split in two so that n * ln2_hi is exact.
    const V n = S::round(x * S::set1(coef::log2e));
    const V r = S::fnma(n, S::set1(coef::ln2_lo), S::fnma(n, S::set1(coef::ln2_hi), x));
    const V er = S::fma(horner<S>(r, coef::exp_poly), r * r, r + S::set1(1.0f));
    // 2^n as 2^(n/2) 2^(n - n/2): both factors stay normal for n in [-150, 128], so the product
    // underflows to denormals and overflows to +inf correctly.
    return S::scale_pow2(er, n);
  }
}

namespace detail {
// erfc(a) for a in [1, 10] given a and a^2 = hi + lo exactly (lo from an FMA), so that the rounding
// of a^2 does not spoil exp(-a^2) in the far tail.
template <class S>
inline typename S::V erfc_tail(const typename S::V& a, const typename S::V& a2_hi, const typename S::V& a2_lo) {
  using V = typename S::V;
  const V one = S::set1(1.0f);
  const V t = one / S::fma(a, S::set1(0.5f), one);
  return exp<S>(S::zero() - a2_hi) * (one - a2_lo) * horner<S>(t, coef::erfc_poly);
}
}  // namespace detail

// erf(x).
template <class S>
inline typename S::V erf(const typename S::V& x) {
  using V = typename S::V;
  if constexpr (S::lanes == 1) {
    return V{std::erf(x.r)};
  } else {
    const V one = S::set1(1.0f), a = S::abs(x);
    const V small = x * horner<S>(x * x, coef::erf_poly);
    const V ac = S::min(S::set1(10.0f), S::max(one, a));
    const V hi = ac * ac, lo = S::fms(ac, ac, hi);
    const V big = S::copysign(one - detail::erfc_tail<S>(ac, hi, lo), x);
    return S::select(S::ge(a, one), big, small);
  }
}

// Phi(x) = P(N(0,1) <= x) = erfc(-x/sqrt2) / 2, accurate in the lower tail (GELU's x * Phi(x)).
template <class S>
inline typename S::V ndtr(const typename S::V& x) {
  using V = typename S::V;
  using T = typename S::T;
  if constexpr (S::lanes == 1) {
    // In double: rounding x/sqrt2 to float first would cost ~x^2 ulp in the lower tail.
    return V{static_cast<T>(0.5 * std::erfc(-static_cast<double>(x.r) * 0.70710678118654752440))};
  } else {
    const V one = S::set1(1.0f), half = S::set1(0.5f);
    const V u = x * S::set1(coef::sqrt1_2);
    const V small = S::fma(u * horner<S>(u * u, coef::erf_poly), half, half);
    const auto tail = S::ge(S::abs(u), one);
    if (!S::any(tail)) return small;  // no lane needs the tail (the common case): skip it
    // |x| in [sqrt2, 14.5] (Phi(-14.5) underflows to 0); u^2 = x^2 / 2 exactly as (hi + lo) / 2.
    const V xa = S::min(S::set1(14.5f), S::max(S::set1(1.4142135f), S::abs(x)));
    const V hi = xa * xa, lo = S::fms(xa, xa, hi);
    const V h = half * detail::erfc_tail<S>(xa * S::set1(coef::sqrt1_2), hi * half, lo * half);
    const V big = S::select(S::lt(x, S::zero()), h, one - h);
    return S::select(tail, big, small);
  }
}

}  // namespace segml::simd
