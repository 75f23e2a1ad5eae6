// bench/bench_gemm.cpp: segml's GEMM vs Eigen vs the scalar twin at the SegFormer-B0 512x512 shapes,
// and the machine's fp32 peak, so that every GEMM figure can be read as a fraction of it.
//
// Every variant is first validated against gemm_ref (on the first and last rows of C, which is
// exact for row-major GEMM and keeps the check cheap on the big shapes). All variants use
// segml::num_threads() threads (OMP_NUM_THREADS; Eigen gets the same via Eigen::setNbThreads).
// Counters: FLOPS (rate; 2*M*N*K per call), and for segml peak (GFLOP/s of the FMA chains,
// measured just before and just after the timed loop and averaged: these machines drift by 25%
// within minutes, so only a peak taken next to the GEMM makes a fair denominator), pct_peak (the
// median call's GFLOP/s / peak * 100) and pct_best (the fastest call's). FLOPS is the mean rate,
// which also counts the calls in which the VM took a core away from a thread for a while: the
// median call is the GEMM's own speed. The start-up peak is printed once; the BM_peak/* rows
// repeat it per ISA.
// Shapes are (M, K, N, layout); C = A (M x K) * op(B). Layout 0: B stored K x N; layout 1: B stored
// N x K (trans_b), the layout of nn.Linear's weight, which is how the model calls the GEMM.
// BM_gemm_segml packs B inside every call (as training does); BM_gemm_segml_packed (layout 1
// only) multiplies by a PackedB made once, as the inference engine does with every weight.
// A, B and C are 64-byte aligned, as the model's tensors are.
#include <benchmark/benchmark.h>

#include <segml/core/cpu.hpp>
#include <segml/core/parallel.hpp>
#include <segml/kernels/gemm.hpp>

#include <Eigen/Core>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <new>
#include <random>
#include <vector>

#include "fp32_peak.hpp"

namespace {

using Clock = std::chrono::steady_clock;

// The fp32 peak of the ISA segml's GEMM uses (0 on the scalar path); quick = a ~10 ms measurement.
double machine_peak(bool quick) {
  if (segml::isa() == segml::Isa::scalar) return 0;
  return quick ? segml_bench::peak_gflops(segml::isa(), segml::num_threads(), 2'000'000, 3)
               : segml_bench::peak_gflops(segml::isa(), segml::num_threads());
}

void BM_peak(benchmark::State& state, segml::Isa isa) {
  if (!segml::isa_supported(isa)) return state.SkipWithError("ISA not supported on this CPU");
  double g = 0;
  for (auto _ : state) g = segml_bench::peak_gflops(isa, segml::num_threads(), 5'000'000, 3);
  state.counters["GFLOPS"] = g;
  state.counters["threads"] = segml::num_threads();
}

// ---- the GEMM shapes ----------------------------------------------------------------------------
// 64-byte-aligned storage, as segml's tensors have: a std::vector this large comes from mmap at 16
// bytes past a page, which splits every 64-byte row segment across two cache lines and costs the
// GEMMs here about 3 % of peak that they never pay on the model's tensors.
template <class T>
struct Aligned {
  using value_type = T;
  Aligned() = default;
  template <class U>
  Aligned(const Aligned<U>&) {}
  T* allocate(std::size_t n) { return static_cast<T*>(::operator new(n * sizeof(T), std::align_val_t{64})); }
  void deallocate(T* p, std::size_t) { ::operator delete(p, std::align_val_t{64}); }
  friend bool operator==(const Aligned&, const Aligned&) { return true; }
};

struct Problem {
  int64_t M, K, N;
  bool trans_b;
  std::vector<float, Aligned<float>> A, B, C;
  segml::kernels::PackedB<float> packed;  // B packed in advance (segml_packed rows only)
  Problem(int64_t m, int64_t k, int64_t n, bool tb) : M(m), K(k), N(n), trans_b(tb), A(m * k), B(k * n), C(m * n) {
    std::mt19937 rng(1);
    std::uniform_real_distribution<float> d(-1.f, 1.f);
    for (float& x : A) x = d(rng);
    for (float& x : B) x = d(rng);
  }
};

// segml: gemm, packing B in the call (training, and any B that changes); segml_packed: B packed
// once in advance (PackedB), the way the inference engine runs every layer.
enum class Impl { segml, segml_packed, eigen, scalar };

int64_t ldb(const Problem& p) { return p.trans_b ? p.K : p.N; }

void run(Impl impl, Problem& p) {
  using Mat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  switch (impl) {
    case Impl::segml:
      segml::kernels::gemm<float>(false, p.trans_b, p.M, p.N, p.K, 1.f, p.A.data(), p.K, p.B.data(), ldb(p), 0.f,
                                  p.C.data(), p.N);
      break;
    case Impl::segml_packed:
      segml::kernels::gemm_bias<float>(p.M, p.A.data(), p.K, p.packed, nullptr, p.C.data(), p.N);
      break;
    case Impl::eigen: {
      Eigen::Map<const Mat> a(p.A.data(), p.M, p.K);
      Eigen::Map<Mat> c(p.C.data(), p.M, p.N);
      if (p.trans_b)
        c.noalias() = a * Eigen::Map<const Mat>(p.B.data(), p.N, p.K).transpose();
      else
        c.noalias() = a * Eigen::Map<const Mat>(p.B.data(), p.K, p.N);
      break;
    }
    case Impl::scalar:
      segml::kernels::gemm_ref<float>(false, p.trans_b, p.M, p.N, p.K, 1.f, p.A.data(), p.K, p.B.data(), ldb(p),
                                      0.f, p.C.data(), p.N);
      break;
  }
}

// Compares rows [r0, r0 + rows) of p.C with gemm_ref<double>; false (and a message) if off.
bool validate(Problem& p, const char* what) {
  const int64_t rows = std::min<int64_t>(p.M, 32);
  for (int64_t r0 : {int64_t{0}, p.M - rows}) {
    std::vector<double> a(p.A.begin() + r0 * p.K, p.A.begin() + (r0 + rows) * p.K), b(p.B.begin(), p.B.end());
    std::vector<double> want(rows * p.N);
    segml::kernels::gemm_ref<double>(false, p.trans_b, rows, p.N, p.K, 1.0, a.data(), p.K, b.data(), ldb(p), 0.0,
                                     want.data(), p.N);
    const double tol = 2.0 * p.K * 1.2e-7;  // K * max|a| * max|b| * eps, twice (see tests/test_gemm.cpp)
    for (int64_t i = 0; i < rows * p.N; ++i)
      if (!(std::abs(p.C[r0 * p.N + i] - want[i]) <= tol)) {
        std::fprintf(stderr, "%s: wrong result at row %lld (got %g, want %g)\n", what,
                     static_cast<long long>(r0 + i / p.N), double(p.C[r0 * p.N + i]), want[i]);
        return false;
      }
  }
  return true;
}

void BM_gemm(benchmark::State& state, Impl impl) {
  Problem p(state.range(0), state.range(1), state.range(2), state.range(3) != 0);
  Eigen::setNbThreads(segml::num_threads());
  if (impl == Impl::segml_packed) p.packed = segml::kernels::PackedB<float>(p.trans_b, p.K, p.N, p.B.data(), ldb(p));
  run(impl, p);
  if (!validate(p, impl == Impl::segml          ? "segml"
                   : impl == Impl::segml_packed ? "segml_packed"
                   : impl == Impl::eigen        ? "eigen"
                                                : "scalar"))
    return state.SkipWithError("result does not match gemm_ref");
  const double flops = 2.0 * p.M * p.N * p.K;
  const double peak_before = impl == Impl::segml || impl == Impl::segml_packed ? machine_peak(true) : 0;
  std::vector<double> seconds;  // per call
  seconds.reserve(state.max_iterations);
  for (auto _ : state) {
    const auto t0 = Clock::now();
    run(impl, p);
    benchmark::DoNotOptimize(p.C.data());
    seconds.push_back(std::chrono::duration<double>(Clock::now() - t0).count());
  }
  state.counters["FLOPS"] = benchmark::Counter(flops, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["threads"] = segml::num_threads();
  if (peak_before > 0 && !seconds.empty()) {
    const double peak = (peak_before + machine_peak(true)) / 2;
    std::sort(seconds.begin(), seconds.end());
    state.counters["peak"] = peak * 1e9;  // FLOP/s, printed as G like FLOPS
    state.counters["pct_peak"] = 100.0 * flops / seconds[seconds.size() / 2] * 1e-9 / peak;
    state.counters["pct_best"] = 100.0 * flops / seconds.front() * 1e-9 / peak;
  }
}

// (M, K, N): the SegFormer-B0 512x512 GEMMs (Mix-FFN fc1 and fc2 of each stage, the unfolded
// decoder's linear_fuse), plus a large square one; each in both layouts of B.
const int64_t kShapes[][3] = {{16384, 32, 128},  {16384, 128, 32}, {4096, 64, 256},    {4096, 256, 64},
                              {1024, 160, 640},  {1024, 640, 160}, {256, 256, 1024},   {256, 1024, 256},
                              {16384, 1024, 256}, {2048, 2048, 2048}};

void register_all() {
  benchmark::RegisterBenchmark("BM_peak/avx2", BM_peak, segml::Isa::avx2)->Iterations(1)->UseRealTime();
  if (segml::isa_supported(segml::Isa::avx512))
    benchmark::RegisterBenchmark("BM_peak/avx512", BM_peak, segml::Isa::avx512)->Iterations(1)->UseRealTime();
  for (int64_t trans_b : {0, 1})
    for (const auto& s : kShapes) {
      const std::vector<int64_t> args = {s[0], s[1], s[2], trans_b};
      benchmark::RegisterBenchmark("BM_gemm_segml", BM_gemm, Impl::segml)->Args(args)->UseRealTime();
      if (trans_b)  // the layout of the model's weights
        benchmark::RegisterBenchmark("BM_gemm_segml_packed", BM_gemm, Impl::segml_packed)->Args(args)->UseRealTime();
      benchmark::RegisterBenchmark("BM_gemm_eigen", BM_gemm, Impl::eigen)->Args(args)->UseRealTime();
      // The scalar twin runs at ~1 GFLOP/s: only on the shapes it finishes in well under a second.
      if (s[0] * s[1] * s[2] <= 200'000'000)
        benchmark::RegisterBenchmark("BM_gemm_scalar", BM_gemm, Impl::scalar)->Args(args)->Iterations(2)->UseRealTime();
    }
}

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  register_all();
  std::printf("segml isa %s, %d threads\n", segml::isa_name(segml::isa()), segml::num_threads());
  if (segml::isa() != segml::Isa::scalar)
    std::printf("fp32 peak (%s FMA chains, %d threads): %.1f GFLOP/s\n", segml::isa_name(segml::isa()),
                segml::num_threads(), machine_peak(false));
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
