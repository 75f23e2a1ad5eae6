// Tests for the optimizer kernels (kernels/optim.hpp): SGD and AdamW updates on every backend this
// CPU runs against their scalar twins, over every tail length and with more elements than one
// thread takes, for 1, 2 and 3 threads: bit for bit on x86-64, float and double.
#include <doctest/doctest.h>

#include <cmath>
#include <string>
#include <vector>

#include <segml/core/parallel.hpp>
#include <segml/kernels/optim.hpp>

#include "support.hpp"

using namespace segml;

namespace {

template <class T>
std::vector<T> values(int64_t n, uint64_t seed, double lo, double hi) {
  const Tensor<T> t = test::random_tensor<T>({n}, seed, lo, hi);
  return std::vector<T>(t.data(), t.data() + n);
}

// Largest |a - b| / (|b| + scale) over two buffers; scale is the size of the terms that were added.
template <class T>
double max_rel(const std::vector<T>& a, const std::vector<T>& b, double scale = 1e-30) {
  double worst = 0;
  for (size_t i = 0; i < a.size(); ++i)
    worst = std::max(worst, std::abs(double(a[i]) - double(b[i])) / (std::abs(double(b[i])) + scale));
  return worst;
}

// The kernels round every operation (simd::Rounding::each_op), so they equal the twin exactly where
// the twin is compiled unfused: x86-64 has no FMA in its baseline. Elsewhere (AArch64) the compiler
// may fuse the twin's own multiply-adds: a few float ulps of the terms.
#if defined(__x86_64__)
constexpr double kFloatTol = 0.0;
#else
constexpr double kFloatTol = 1e-6;
#endif

template <class T>
void check_adamw(int64_t n, double tol) {
  const std::vector<T> g = values<T>(n, 1, -1, 1), w0 = values<T>(n, 2, -1, 1), m0 = values<T>(n, 3, -0.1, 0.1),
                       v0 = values<T>(n, 4, 0, 0.01);
  const T decay = T(1 - 1e-3 * 0.01), b1 = T(0.9), b2 = T(0.999), bc2 = T(std::sqrt(1 - std::pow(0.999, 3))),
          eps = T(1e-8), step = T(1e-3 / (1 - std::pow(0.9, 3)));
  std::vector<T> w = w0, m = m0, v = v0;
  kernels::adamw_step_ref(w.data(), m.data(), v.data(), g.data(), n, decay, b1, b2, bc2, eps, step);
  for (Isa isa : supported_isas()) {
    ScopedIsa scope(isa);
    const int saved = num_threads();
    for (int threads : {1, 2, 3}) {
      set_num_threads(threads);
      std::vector<T> w2 = w0, m2 = m0, v2 = v0;
      kernels::adamw_step(w2.data(), m2.data(), v2.data(), g.data(), n, decay, b1, b2, bc2, eps, step);
      INFO(std::string(isa_name(isa)), " n ", n, " threads ", threads);
      CHECK(max_rel(w2, w, 1.0) <= tol);
      CHECK(max_rel(m2, m, 0.1) <= tol);
      CHECK(max_rel(v2, v, 0.01) <= tol);
    }
    set_num_threads(saved);
  }
}

template <class T>
void check_sgd(int64_t n, bool momentum, bool first, double wd, double tol) {
  const std::vector<T> g = values<T>(n, 5, -1, 1), w0 = values<T>(n, 6, -1, 1), b0 = values<T>(n, 7, -0.5, 0.5);
  std::vector<T> w = w0, buf = b0;
  kernels::sgd_step_ref(w.data(), g.data(), momentum ? buf.data() : nullptr, n, T(0.01), T(wd), T(0.9), first);
  for (Isa isa : supported_isas()) {
    ScopedIsa scope(isa);
    std::vector<T> w2 = w0, buf2 = b0;
    kernels::sgd_step(w2.data(), g.data(), momentum ? buf2.data() : nullptr, n, T(0.01), T(wd), T(0.9), first);
    INFO(std::string(isa_name(isa)), " n ", n, " momentum ", momentum, " first ", first, " wd ", wd);
    CHECK(max_rel(w2, w, 1.0) <= tol);
    CHECK(max_rel(buf2, buf, 1.0) <= tol);  // untouched without momentum
  }
}

}  // namespace

TEST_CASE("optimizer kernels: AdamW on every ISA and thread count equals its scalar twin bit for bit") {
  for (int64_t n : {int64_t{1}, int64_t{3}, int64_t{5}, int64_t{8}, int64_t{15}, int64_t{17}, int64_t{33}, int64_t{100003}}) {
    check_adamw<float>(n, kFloatTol);
    check_adamw<double>(n, kFloatTol);
  }
}

TEST_CASE("optimizer kernels: SGD with and without momentum and weight decay, on every ISA") {
  for (int64_t n : {int64_t{1}, int64_t{7}, int64_t{16}, int64_t{19}, int64_t{70001}})
    for (bool momentum : {false, true})
      for (bool first : {false, true})
        for (double wd : {0.0, 0.05}) {
          check_sgd<float>(n, momentum, first, wd, kFloatTol);
          check_sgd<double>(n, momentum, first, wd, kFloatTol);
        }
}
