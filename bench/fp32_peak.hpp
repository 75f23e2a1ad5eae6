// bench/fp32_peak.hpp: the machine's measured fp32 peak, shared by the benchmarks that report a
// fraction of it (bench_gemm, segformer).
//
// Each thread runs kChains independent FMA accumulator chains (more than FMA latency x FMA pipes,
// 4 x 2 on Zen, so the pipes never wait) for n iterations; the result is consumed so the loop stays.
// FLOPs = threads x n x kChains x lanes x 2. The best of `reps` runs (the machine may be shared).
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <vector>

#include <segml/core/cpu.hpp>
#include <segml/core/parallel.hpp>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace segml_bench {

inline constexpr int kChains = 12;
inline volatile float g_peak_sink = 0;

#if defined(__x86_64__)
__attribute__((target("avx2,fma"))) inline float fma_chains_avx2(int64_t n) {
  __m256 acc[kChains];
  for (int i = 0; i < kChains; ++i) acc[i] = _mm256_set1_ps(0.001f * float(i));
  const __m256 x = _mm256_set1_ps(0.9999f), y = _mm256_set1_ps(1e-6f);
  for (int64_t k = 0; k < n; ++k) {
#pragma GCC unroll 16
    for (int i = 0; i < kChains; ++i) acc[i] = _mm256_fmadd_ps(acc[i], x, y);
  }
  __m256 s = acc[0];
  for (int i = 1; i < kChains; ++i) s = _mm256_add_ps(s, acc[i]);
  return _mm256_cvtss_f32(s);
}

__attribute__((target("avx512f,avx512bw,avx512dq,avx512vl"))) inline float fma_chains_avx512(int64_t n) {
  __m512 acc[kChains];
  for (int i = 0; i < kChains; ++i) acc[i] = _mm512_set1_ps(0.001f * float(i));
  const __m512 x = _mm512_set1_ps(0.9999f), y = _mm512_set1_ps(1e-6f);
  for (int64_t k = 0; k < n; ++k) {
#pragma GCC unroll 16
    for (int i = 0; i < kChains; ++i) acc[i] = _mm512_fmadd_ps(acc[i], x, y);
  }
  __m512 s = acc[0];
  for (int i = 1; i < kChains; ++i) s = _mm512_add_ps(s, acc[i]);
  alignas(64) float out[16];
  _mm512_store_ps(out, s);
  return out[0];
}
#endif

// GFLOP/s of the FMA chains of `isa` (avx2 or avx512) on `threads` threads; 0 without a SIMD path.
inline double peak_gflops(segml::Isa isa, int threads, int64_t n = 10'000'000, int reps = 5) {
#if defined(__x86_64__)
  if (isa != segml::Isa::avx2 && isa != segml::Isa::avx512) return 0;
  if (!segml::isa_supported(isa)) return 0;
  const int lanes = isa == segml::Isa::avx512 ? 16 : 8;
  double best = 0;
  for (int rep = 0; rep < reps; ++rep) {
    std::vector<float> sinks(static_cast<size_t>(threads), 0.f);
    const auto t0 = std::chrono::steady_clock::now();
    segml::parallel_run(threads, [&](int t) {
      sinks[static_cast<size_t>(t)] = isa == segml::Isa::avx512 ? fma_chains_avx512(n) : fma_chains_avx2(n);
    });
    float sink = 0;
    for (float v : sinks) sink += v;
    g_peak_sink = sink;
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    best = std::max(best, double(threads) * double(n) * kChains * lanes * 2 / s * 1e-9);
  }
  return best;
#else
  (void)isa, (void)threads, (void)n, (void)reps;
  return 0;
#endif
}

}  // namespace segml_bench
