// Tests for the SIMD layer (simd/vec.hpp, simd/math.hpp, simd/dispatch.hpp): every operation of
// every backend this CPU runs (AVX-512, AVX2, NEON under qemu) against the scalar backend, lane by
// lane, on data with every tail length; the accuracy of exp / erf / Phi over the float range on
// every backend; and which backend the dispatch enters for each ISA and element type.
#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include <segml/simd/dispatch.hpp>
#include <segml/simd/math.hpp>

using namespace segml;

namespace {

// Bit-equal, or both NaN.
bool same(float a, float b) {
  if (std::isnan(a) && std::isnan(b)) return true;
  uint32_t ua, ub;
  std::memcpy(&ua, &a, 4);
  std::memcpy(&ub, &b, 4);
  return ua == ub;
}

std::vector<float> data(size_t n, uint32_t seed) {
  std::vector<float> v(n);
  uint32_t s = seed;
  for (float& x : v) {
    s = s * 1664525u + 1013904223u;
    x = static_cast<float>(static_cast<int32_t>(s >> 8) - (1 << 23)) / float(1 << 20);  // about [-8, 8)
  }
  return v;
}

// The binary and ternary operations, by number, on a backend S: out[i] = op(a[i], b[i], c[i]).
template <class S>
void run_op(int op, float* out, const float* a, const float* b, const float* c, int64_t n) {
  using V = typename S::V;
  simd::for_lanes<S>(n, [&](int64_t j, const auto& m) {
    const V x = S::load(a + j, m), y = S::load(b + j, m), z = S::load(c + j, m);
    V r = S::zero();
    switch (op) {
      case 0: r = x + y; break;
      case 1: r = x - y; break;
      case 2: r = x * y; break;
      case 3: r = x / y; break;
      case 4: r = S::min(x, y); break;
      case 5: r = S::max(x, y); break;
      case 6: r = S::abs(x); break;
      case 7: r = S::copysign(x, y); break;
      case 8: r = S::round(x); break;
      case 9: r = S::select(S::lt(x, y), x, z); break;
      case 10: r = S::select(S::le(x, y), x, z); break;
      case 11: r = S::select(S::gt(x, y), x, z); break;
      case 12: r = S::select(S::ge(x, y), x, z); break;
      case 13: r = S::scale_pow2(x, S::round(S::max(S::min(y, S::set1(7.0f)), S::set1(-8.0f)) * S::set1(16.0f))); break;
      case 14: r = S::set1(2.5f) + S::zero() * x; break;
      default: break;
    }
    S::store(out + j, r, m);
  });
}
constexpr int kOps = 15;
const char* const kOpNames[kOps] = {"add", "sub", "mul", "div", "min", "max", "abs", "copysign",
                                    "round", "lt", "le", "gt", "ge", "scale_pow2", "set1"};

// fma / fnma / fms: one rounding on the vector backends, so compare against std::fma.
template <class S>
void run_fused(int op, float* out, const float* a, const float* b, const float* c, int64_t n) {
  simd::for_lanes<S>(n, [&](int64_t j, const auto& m) {
    const typename S::V x = S::load(a + j, m), y = S::load(b + j, m), z = S::load(c + j, m);
    S::store(out + j, op == 0 ? S::fma(x, y, z) : op == 1 ? S::fnma(x, y, z) : S::fms(x, y, z), m);
  });
}

// hsum / hmax of each full vector and of the tail, and any() of a compare.
template <class S>
void run_reductions(std::vector<float>& sums, std::vector<float>& maxes, std::vector<int>& anys, const float* a,
                    int64_t n) {
  simd::for_lanes<S>(n, [&](int64_t j, const auto& m) {
    const typename S::V v = S::load(a + j, m);
    sums.push_back(S::hsum(v));
    maxes.push_back(S::hmax(S::select(m, v, S::set1(-1e30f))));
    anys.push_back(S::any(S::gt(v, S::set1(7.0f))));
  });
}

enum class Fn { exp, erf, ndtr };
void apply(Isa isa, Fn f, float* y, const float* x, int64_t n) {
  simd::dispatch_on<float>(isa, [&](auto s) {
    using S = decltype(s);
    simd::for_lanes<S>(n, [&](int64_t i, const auto& m) {
      const typename S::V v = S::load(x + i, m);
      S::store(y + i, f == Fn::exp ? simd::exp<S>(v) : f == Fn::erf ? simd::erf<S>(v) : simd::ndtr<S>(v), m);
    });
  });
}
double reference(Fn f, double x) {
  switch (f) {
    case Fn::exp: return std::exp(x);
    case Fn::erf: return std::erf(x);
    default: return 0.5 * std::erfc(-x / std::sqrt(2.0));
  }
}

}  // namespace

TEST_CASE("simd: each backend enters for its ISA, double always runs the scalar backend") {
  for (Isa isa : supported_isas()) {
    CAPTURE(std::string(isa_name(isa)));
    CHECK(simd::dispatch_on<float>(isa, [](auto s) { return decltype(s)::isa; }) == isa);
    CHECK(simd::dispatch_on<double>(isa, [](auto s) { return decltype(s)::lanes; }) == 1);
  }
  const int64_t lanes = simd::dispatch_on<float>(detect_isa(), [](auto s) { return decltype(s)::lanes; });
  MESSAGE("this CPU: " << std::string(isa_name(detect_isa())) << ", " << lanes << " float lanes");
#if defined(__aarch64__)
  CHECK(detect_isa() == Isa::neon);
#endif
}

TEST_CASE("simd: every operation of every backend equals the scalar backend lane by lane, every tail length") {
  std::vector<float> a = data(200, 1), b = data(200, 2), c = data(200, 3);
  // Special lanes: NaN, +-0, +-inf, ties for round, equal pairs for the compares.
  const float inf = std::numeric_limits<float>::infinity(), nan = std::numeric_limits<float>::quiet_NaN();
  const float sa[] = {nan, 0.0f, -0.0f, inf, -inf, 2.5f, -2.5f, 0.5f, 1.5f, 3.0f, 1e-40f, -7.0f};
  const float sb[] = {1.0f, nan, 0.0f, 2.0f, 1.0f, 2.5f, -3.0f, -0.0f, 1.5f, 3.0f, 1.0f, -7.0f};
  for (size_t i = 0; i < std::size(sa); ++i) {
    a[i] = sa[i];
    b[i] = sb[i];
  }
  for (Isa isa : supported_isas()) {
    if (isa == Isa::scalar) continue;
    CAPTURE(std::string(isa_name(isa)));
    for (int64_t n : {int64_t{1}, int64_t{3}, int64_t{4}, int64_t{7}, int64_t{8}, int64_t{9}, int64_t{15}, int64_t{16},
                      int64_t{17}, int64_t{31}, int64_t{200}}) {
      CAPTURE(n);
      for (int op = 0; op < kOps; ++op) {
        CAPTURE(std::string(kOpNames[op]));
        // Sentinels past n show that masked stores write nothing beyond the tail.
        std::vector<float> want(static_cast<size_t>(n) + 16, -123.0f), got(want);
        simd::dispatch_on<float>(Isa::scalar, [&](auto s) { run_op<decltype(s)>(op, want.data(), a.data(), b.data(), c.data(), n); });
        simd::dispatch_on<float>(isa, [&](auto s) { run_op<decltype(s)>(op, got.data(), a.data(), b.data(), c.data(), n); });
        int bad = 0;
        for (size_t i = 0; i < got.size(); ++i) {
          // min / max of a NaN pair and lanes where a NaN meets a compare follow the x86 rule on
          // every backend; the scalar backend's ternary is the same rule.
          if (!same(got[i], want[i])) {
            ++bad;
            if (bad < 4) MESSAGE("lane " << i << ": " << got[i] << " vs scalar " << want[i]);
          }
        }
        CHECK(bad == 0);
      }
      for (int op = 0; op < 3; ++op) {
        std::vector<float> got(static_cast<size_t>(n) + 16, -123.0f);
        simd::dispatch_on<float>(isa, [&](auto s) { run_fused<decltype(s)>(op, got.data(), a.data(), b.data(), c.data(), n); });
        for (int64_t i = 0; i < n; ++i) {
          const float x = a[static_cast<size_t>(i)], y = b[static_cast<size_t>(i)], z = c[static_cast<size_t>(i)];
          const float want = op == 0 ? std::fma(x, y, z) : op == 1 ? std::fma(-x, y, z) : std::fma(x, y, -z);
          CHECK(same(got[static_cast<size_t>(i)], want));
        }
        CHECK(got[static_cast<size_t>(n)] == -123.0f);
      }
    }
    // Reductions over finite data: the horizontal sum may add the lanes in any order, so it is
    // compared with a tolerance; max and any are exact.
    const std::vector<float> f = data(203, 9);
    for (int64_t n : {int64_t{1}, int64_t{5}, int64_t{16}, int64_t{203}}) {
      std::vector<float> sums, maxes;
      std::vector<int> anys;
      simd::dispatch_on<float>(isa, [&](auto s) { run_reductions<decltype(s)>(sums, maxes, anys, f.data(), n); });
      const int64_t lanes = simd::dispatch_on<float>(isa, [](auto s) { return decltype(s)::lanes; });
      for (size_t v = 0; v < sums.size(); ++v) {
        const int64_t b = static_cast<int64_t>(v) * lanes, e = std::min(n, b + lanes);
        double s = 0, mx = -1e30;
        bool any = false;
        for (int64_t i = b; i < e; ++i) {
          s += f[static_cast<size_t>(i)];
          mx = std::max<double>(mx, f[static_cast<size_t>(i)]);
          any = any || f[static_cast<size_t>(i)] > 7.0f;
        }
        CHECK(std::abs(sums[v] - s) <= 1e-5 * 16 * 8);
        CHECK(maxes[v] == static_cast<float>(mx));
        CHECK(anys[v] == static_cast<int>(any));
      }
    }
  }
}

TEST_CASE("simd math: exp / erf / Phi relative error over the float range and special values, every backend") {
  // A dense sweep of [-110, 110] (1/16384 apart) plus special values; the length is not a multiple
  // of the lanes, so the tail path is covered too.
  std::vector<float> x;
  for (int64_t i = -110 * 16384; i < 110 * 16384; ++i) x.push_back(static_cast<float>(i) / 16384.0f);
  const float inf = std::numeric_limits<float>::infinity(), nan = std::numeric_limits<float>::quiet_NaN();
  for (float s : {inf, -inf, nan, 0.0f, -0.0f, 88.72f, 88.73f, -87.3f, 1e-30f, -1e-30f, 3.9f, -3.9f, 1.0f, -1.0f, 1.4142135f,
                  -1.4142135f, 0.25f})
    x.push_back(s);
  const int64_t n = static_cast<int64_t>(x.size());
  std::vector<float> y(x.size());
  // The bounds stated in simd/math.hpp, with a little headroom.
  struct Case {
    Fn f;
    const char* name;
    double max_rel;
  };
  for (Isa isa : supported_isas()) {
    for (Case c : {Case{Fn::exp, "exp", 1.5e-7}, Case{Fn::erf, "erf", 2.5e-7}, Case{Fn::ndtr, "ndtr", 1.0e-6}}) {
      apply(isa, c.f, y.data(), x.data(), n);
      double worst = 0;
      int bad_special = 0;
      for (size_t i = 0; i < x.size(); ++i) {
        const double r = reference(c.f, x[i]);
        if (std::isnan(x[i])) {
          bad_special += !std::isnan(y[i]);
        } else if (std::abs(r) > std::numeric_limits<float>::max()) {  // overflow: +inf
          bad_special += !(std::isinf(y[i]) && y[i] > 0);
        } else if (std::abs(r) < std::numeric_limits<float>::min()) {  // 0 or tiny: may flush
          bad_special += !(std::abs(y[i]) < 1.2e-38f);
        } else {
          worst = std::max(worst, std::abs(y[i] - r) / std::abs(r));
        }
      }
      MESSAGE(std::string(isa_name(isa)) << " " << std::string(c.name) << ": max rel err " << worst << " (bound " << c.max_rel
                                         << ")");
      CHECK(worst <= c.max_rel);
      CHECK(bad_special == 0);
    }
  }
}
