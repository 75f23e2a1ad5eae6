// Benchmarks for kernels/dropout.hpp at SegFormer-B0's classifier dropout: (2, 256, 128, 128) =
// 8.4M elements, keep_prob 0.9, on 1 and 2 threads.
//  - BM_dropout_mask: the keep mask alone, on the reference twin (dropout_mask_ref), the portable
//    path (isa scalar) and the best ISA of this CPU.
//  - BM_dropout_forward: the training forward, as mask + apply (two passes, the old op) and as the
//    fused dropout_forward, on the portable path and the best ISA.
//  - BM_dropout_apply: the backward (a saved mask applied), reference twin vs the best ISA.
// Counters: elements/s and seconds per element (per call, wall clock). Every path's mask and output are
// checked bit for bit against the reference twin before timing.
#include <benchmark/benchmark.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

#include <segml/core/cpu.hpp>
#include <segml/core/parallel.hpp>
#include <segml/core/random.hpp>
#include <segml/kernels/dropout.hpp>

using namespace segml;

namespace {

constexpr int64_t kN = 2 * 256 * 128 * 128;
constexpr double kKeep = 0.9;
constexpr float kScale = static_cast<float>(1.0 / kKeep);

enum Path : int64_t { kRef = 0, kScalar = 1, kSimd = 2 };

Isa path_isa(int64_t path) { return path == kSimd ? detect_isa() : Isa::scalar; }
const char* path_name(int64_t path) { return path == kRef ? "ref" : isa_name(path_isa(path)); }

std::vector<float> input() {
  std::mt19937 rng(3);
  std::uniform_real_distribution<float> u(-2.f, 2.f);
  std::vector<float> x(kN);
  for (float& v : x) v = u(rng);
  return x;
}

void require(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "bench_dropout: %s differs from the reference twin\n", what);
    std::exit(1);
  }
}

void set_counters(benchmark::State& st, int64_t path) {
  st.counters["elem/s"] = benchmark::Counter(double(kN), benchmark::Counter::kIsIterationInvariantRate);
  st.counters["s/elem"] =
      benchmark::Counter(double(kN), benchmark::Counter::kIsIterationInvariantRate | benchmark::Counter::kInvert);
  st.SetLabel(std::string(path_name(path)) + ", " + std::to_string(num_threads()) + " thread(s)");
}

// Args: path, threads.
void BM_dropout_mask(benchmark::State& st) {
  const int64_t path = st.range(0);
  set_num_threads(static_cast<int>(st.range(1)));
  ScopedIsa isa(path_isa(path));
  std::vector<uint8_t> keep(kN), want(kN);
  Generator g_ref(5), g(5);
  kernels::dropout_mask_ref(want.data(), kN, kKeep, g_ref);
  kernels::dropout_mask(keep.data(), kN, kKeep, g);
  require(keep == want, "dropout_mask");
  for (auto _ : st) {
    if (path == kRef)
      kernels::dropout_mask_ref(keep.data(), kN, kKeep, g);
    else
      kernels::dropout_mask(keep.data(), kN, kKeep, g);
    benchmark::ClobberMemory();
  }
  set_counters(st, path);
}

// Args: path (kRef = dropout_mask_ref + dropout_apply; kScalar / kSimd = fused), fused (0/1), threads.
void BM_dropout_forward(benchmark::State& st) {
  const int64_t path = st.range(0);
  const bool fused = st.range(1);
  set_num_threads(static_cast<int>(st.range(2)));
  ScopedIsa isa(path_isa(path));
  const std::vector<float> x = input();
  std::vector<float> y(kN), y_ref(kN);
  std::vector<uint8_t> keep(kN), keep_ref(kN);
  auto run = [&](Generator& g) {
    if (fused) {
      kernels::dropout_forward(y.data(), keep.data(), x.data(), kScale, kN, kKeep, g);
    } else {
      kernels::dropout_mask(keep.data(), kN, kKeep, g);
      kernels::dropout_apply(y.data(), x.data(), keep.data(), kScale, kN);
    }
  };
  Generator g_ref(5), g(5);
  kernels::dropout_mask_ref(keep_ref.data(), kN, kKeep, g_ref);
  kernels::dropout_apply_ref(y_ref.data(), x.data(), keep_ref.data(), kScale, kN);
  run(g);
  require(keep == keep_ref && std::memcmp(y.data(), y_ref.data(), sizeof(float) * kN) == 0, "dropout forward");
  for (auto _ : st) {
    run(g);
    benchmark::ClobberMemory();
  }
  set_counters(st, path);
  st.SetLabel(std::string(path_name(path)) + (fused ? ", fused" : ", mask + apply") + ", " +
              std::to_string(num_threads()) + " thread(s)");
}

// The backward: dropout_apply of a saved mask. Args: path (kRef = dropout_apply_ref), threads.
void BM_dropout_apply(benchmark::State& st) {
  const int64_t path = st.range(0);
  set_num_threads(static_cast<int>(st.range(1)));
  ScopedIsa isa(path_isa(path));
  const std::vector<float> x = input();
  std::vector<float> y(kN), y_ref(kN);
  std::vector<uint8_t> keep(kN);
  Generator g(5);
  kernels::dropout_mask_ref(keep.data(), kN, kKeep, g);
  kernels::dropout_apply_ref(y_ref.data(), x.data(), keep.data(), kScale, kN);
  kernels::dropout_apply(y.data(), x.data(), keep.data(), kScale, kN);
  require(std::memcmp(y.data(), y_ref.data(), sizeof(float) * kN) == 0, "dropout_apply");
  for (auto _ : st) {
    if (path == kRef)
      kernels::dropout_apply_ref(y.data(), x.data(), keep.data(), kScale, kN);
    else
      kernels::dropout_apply(y.data(), x.data(), keep.data(), kScale, kN);
    benchmark::ClobberMemory();
  }
  set_counters(st, path);
}

}  // namespace

BENCHMARK(BM_dropout_mask)
    ->ArgsProduct({{kRef, kScalar, kSimd}, {1, 2}})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK(BM_dropout_forward)
    ->ArgsProduct({{kScalar, kSimd}, {0, 1}, {1, 2}})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK(BM_dropout_apply)->ArgsProduct({{kRef, kSimd}, {1, 2}})->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_MAIN();
