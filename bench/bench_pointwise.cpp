// Benchmarks for the memory-bound kernels: LayerNorm (SegFormer-B0's token shapes at 512x512:
// rows x C = 16384x32, 4096x64, 1024x160, 256x256), exact GELU (the Mix-FFN hidden sizes 16384x128
// and 1024x640), QuickGELU (CLIP ViT-B/16's MLP at 352x352: 485 tokens x 3072) and softmax (16384 x 256, the attention probabilities of stage 1), forward and
// backward, in GB/s of compulsory traffic (each tensor read or written once). Every kernel runs on
// the best ISA of this CPU ("simd") and on the portable path ("scalar", same threads); both are
// checked against the scalar twin once before timing.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include <segml/kernels/activations.hpp>
#include <segml/kernels/layernorm.hpp>
#include <segml/kernels/softmax.hpp>

using namespace segml;

namespace {

std::vector<float> random_vector(int64_t n, uint64_t seed, float lo = -3.f, float hi = 3.f) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> u(lo, hi);
  std::vector<float> v(static_cast<size_t>(n));
  for (float& x : v) x = u(rng);
  return v;
}

void check_close(const std::string& what, const std::vector<float>& got, const std::vector<float>& want, float tol) {
  float worst = 0;
  for (size_t i = 0; i < got.size(); ++i) worst = std::max(worst, std::abs(got[i] - want[i]));
  if (!(worst <= tol)) {
    std::fprintf(stderr, "%s: max abs diff %g vs the scalar twin exceeds %g\n", what.c_str(), worst, tol);
    std::exit(1);
  }
}

Isa isa_arg(const benchmark::State& st, int64_t index) { return st.range(index) ? detect_isa() : Isa::scalar; }

void set_rate(benchmark::State& st, Isa isa, double bytes_per_iter) {
  st.counters["GB/s"] = benchmark::Counter(bytes_per_iter * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
  st.SetLabel(isa_name(isa));
}

// ---- LayerNorm ---------------------------------------------------------------------------------------
struct LnCase {
  int64_t rows, C;
  std::vector<float> x, w, b, dy, y, mean, rstd, dx, dw, db;
  LnCase(int64_t r, int64_t c)
      : rows(r), C(c), x(random_vector(r * c, 1)), w(random_vector(c, 2, 0.5f, 1.5f)), b(random_vector(c, 3)),
        dy(random_vector(r * c, 4)), y(size_t(r * c)), mean(size_t(r)), rstd(size_t(r)), dx(size_t(r * c)), dw(size_t(c)),
        db(size_t(c)) {}
  void forward() { kernels::layernorm_forward(y.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(), rows, C, 1e-5f); }
  void backward() {
    kernels::layernorm_backward(dx.data(), dw.data(), db.data(), dy.data(), x.data(), mean.data(), rstd.data(), w.data(), rows, C);
  }
  void validate(Isa isa) {
    ScopedIsa scope(isa);
    LnCase r(rows, C);
    kernels::layernorm_forward_ref(r.y.data(), r.mean.data(), r.rstd.data(), x.data(), w.data(), b.data(), rows, C, 1e-5f);
    kernels::layernorm_backward_ref(r.dx.data(), r.dw.data(), r.db.data(), dy.data(), x.data(), r.mean.data(), r.rstd.data(),
                                    w.data(), rows, C);
    forward();
    backward();
    const std::string what = std::string("layernorm ") + isa_name(isa);
    check_close(what + " y", y, r.y, 1e-4f);
    check_close(what + " dx", dx, r.dx, 1e-4f);
    check_close(what + " dweight", dw, r.dw, 1e-2f);  // sums over up to 16384 rows
  }
};

void BM_layernorm_forward(benchmark::State& st) {
  const Isa isa = isa_arg(st, 2);
  LnCase c(st.range(0), st.range(1));
  c.validate(isa);
  ScopedIsa scope(isa);
  for (auto _ : st) {
    c.forward();
    benchmark::DoNotOptimize(c.y.data());
  }
  set_rate(st, isa, 2.0 * 4 * double(c.rows * c.C));  // read x, write y
}
void BM_layernorm_backward(benchmark::State& st) {
  const Isa isa = isa_arg(st, 2);
  LnCase c(st.range(0), st.range(1));
  c.validate(isa);
  ScopedIsa scope(isa);
  for (auto _ : st) {
    c.backward();
    benchmark::DoNotOptimize(c.dx.data());
  }
  set_rate(st, isa, 3.0 * 4 * double(c.rows * c.C));  // read dy and x, write dx
}
void ln_shapes(benchmark::internal::Benchmark* b) {
  for (auto [rows, C] : {std::pair<int64_t, int64_t>{16384, 32}, {4096, 64}, {1024, 160}, {256, 256}})
    for (int64_t simd : {1, 0}) b->Args({rows, C, simd});
  b->ArgNames({"rows", "C", "simd"});
}
BENCHMARK(BM_layernorm_forward)->Apply(ln_shapes)->UseRealTime();
BENCHMARK(BM_layernorm_backward)->Apply(ln_shapes)->UseRealTime();

// ---- GELU --------------------------------------------------------------------------------------------
void validate_gelu(Isa isa, const std::vector<float>& x, const std::vector<float>& dy) {
  ScopedIsa scope(isa);
  const int64_t n = static_cast<int64_t>(x.size());
  std::vector<float> y(x.size()), yr(x.size()), dx(x.size()), dxr(x.size());
  kernels::gelu_forward(y.data(), x.data(), n);
  kernels::gelu_forward_ref(yr.data(), x.data(), n);
  kernels::gelu_backward(dx.data(), x.data(), dy.data(), n);
  kernels::gelu_backward_ref(dxr.data(), x.data(), dy.data(), n);
  check_close(std::string("gelu forward ") + isa_name(isa), y, yr, 1e-5f);
  check_close(std::string("gelu backward ") + isa_name(isa), dx, dxr, 1e-5f);
}
void BM_gelu_forward(benchmark::State& st) {
  const Isa isa = isa_arg(st, 1);
  const int64_t n = st.range(0);
  const std::vector<float> x = random_vector(n, 5), dy = random_vector(n, 6);
  validate_gelu(isa, x, dy);
  std::vector<float> y(x.size());
  ScopedIsa scope(isa);
  for (auto _ : st) {
    kernels::gelu_forward(y.data(), x.data(), n);
    benchmark::DoNotOptimize(y.data());
  }
  set_rate(st, isa, 2.0 * 4 * double(n));
}
void BM_gelu_backward(benchmark::State& st) {
  const Isa isa = isa_arg(st, 1);
  const int64_t n = st.range(0);
  const std::vector<float> x = random_vector(n, 5), dy = random_vector(n, 6);
  validate_gelu(isa, x, dy);
  std::vector<float> dx(x.size());
  ScopedIsa scope(isa);
  for (auto _ : st) {
    kernels::gelu_backward(dx.data(), x.data(), dy.data(), n);
    benchmark::DoNotOptimize(dx.data());
  }
  set_rate(st, isa, 3.0 * 4 * double(n));
}
void gelu_sizes(benchmark::internal::Benchmark* b) {
  for (int64_t n : {int64_t{16384} * 128, int64_t{1024} * 640})
    for (int64_t simd : {1, 0}) b->Args({n, simd});
  b->ArgNames({"n", "simd"});
}
BENCHMARK(BM_gelu_forward)->Apply(gelu_sizes)->UseRealTime();
BENCHMARK(BM_gelu_backward)->Apply(gelu_sizes)->UseRealTime();

// ---- QuickGELU (CLIP) ----------------------------------------------------------------------------
void validate_quick_gelu(Isa isa, const std::vector<float>& x, const std::vector<float>& dy) {
  ScopedIsa scope(isa);
  const int64_t n = static_cast<int64_t>(x.size());
  std::vector<float> y(x.size()), yr(x.size()), dx(x.size()), dxr(x.size());
  kernels::quick_gelu_forward(y.data(), x.data(), n);
  kernels::quick_gelu_forward_ref(yr.data(), x.data(), n);
  kernels::quick_gelu_backward(dx.data(), x.data(), dy.data(), n);
  kernels::quick_gelu_backward_ref(dxr.data(), x.data(), dy.data(), n);
  check_close(std::string("quick_gelu forward ") + isa_name(isa), y, yr, 1e-5f);
  check_close(std::string("quick_gelu backward ") + isa_name(isa), dx, dxr, 1e-5f);
}
void BM_quick_gelu_forward(benchmark::State& st) {
  const Isa isa = isa_arg(st, 1);
  const int64_t n = st.range(0);
  const std::vector<float> x = random_vector(n, 5), dy = random_vector(n, 6);
  validate_quick_gelu(isa, x, dy);
  std::vector<float> y(x.size());
  ScopedIsa scope(isa);
  for (auto _ : st) {
    kernels::quick_gelu_forward(y.data(), x.data(), n);
    benchmark::DoNotOptimize(y.data());
  }
  set_rate(st, isa, 2.0 * 4 * double(n));
}
void BM_quick_gelu_backward(benchmark::State& st) {
  const Isa isa = isa_arg(st, 1);
  const int64_t n = st.range(0);
  const std::vector<float> x = random_vector(n, 5), dy = random_vector(n, 6);
  validate_quick_gelu(isa, x, dy);
  std::vector<float> dx(x.size());
  ScopedIsa scope(isa);
  for (auto _ : st) {
    kernels::quick_gelu_backward(dx.data(), x.data(), dy.data(), n);
    benchmark::DoNotOptimize(dx.data());
  }
  set_rate(st, isa, 3.0 * 4 * double(n));
}
void quick_gelu_sizes(benchmark::internal::Benchmark* b) {
  for (int64_t simd : {1, 0}) b->Args({int64_t{485} * 3072, simd});
  b->ArgNames({"n", "simd"});
}
BENCHMARK(BM_quick_gelu_forward)->Apply(quick_gelu_sizes)->UseRealTime();
BENCHMARK(BM_quick_gelu_backward)->Apply(quick_gelu_sizes)->UseRealTime();

// ---- softmax -----------------------------------------------------------------------------------------
void BM_softmax(benchmark::State& st) {
  const Isa isa = isa_arg(st, 2);
  const bool backward = st.range(3);
  const int64_t rows = st.range(0), cols = st.range(1), n = rows * cols;
  const std::vector<float> x = random_vector(n, 7, -8.f, 8.f), dy = random_vector(n, 8);
  std::vector<float> y(static_cast<size_t>(n)), yr(static_cast<size_t>(n)), dx(static_cast<size_t>(n)), dxr(static_cast<size_t>(n));
  {
    ScopedIsa scope(isa);
    kernels::softmax_forward(y.data(), x.data(), rows, cols);
    kernels::softmax_forward_ref(yr.data(), x.data(), rows, cols);
    kernels::softmax_backward(dx.data(), yr.data(), dy.data(), rows, cols);
    kernels::softmax_backward_ref(dxr.data(), yr.data(), dy.data(), rows, cols);
    check_close(std::string("softmax forward ") + isa_name(isa), y, yr, 1e-6f);
    check_close(std::string("softmax backward ") + isa_name(isa), dx, dxr, 1e-5f);
  }
  ScopedIsa scope(isa);
  for (auto _ : st) {
    if (backward)
      kernels::softmax_backward(dx.data(), y.data(), dy.data(), rows, cols);
    else
      kernels::softmax_forward(y.data(), x.data(), rows, cols);
    benchmark::DoNotOptimize(backward ? dx.data() : y.data());
  }
  set_rate(st, isa, (backward ? 3.0 : 2.0) * 4 * double(n));
}
BENCHMARK(BM_softmax)
    ->ArgsProduct({{16384}, {256}, {1, 0}, {0, 1}})
    ->ArgNames({"rows", "cols", "simd", "backward"})
    ->UseRealTime();

}  // namespace

BENCHMARK_MAIN();
