// Benchmarks for kernels/attention.hpp and kernels/resize.hpp at SegFormer-B0 512x512 shapes.
//
// Attention (B = 1, M = 256 reduced keys in every stage): inference forward (no probabilities kept,
// tiled) and training forward + backward, in GFLOP/s of GEMM work (forward 4NMC, backward 8NMC;
// the softmax is not counted); and causal attention at CLIP's text shape (N = M = 77, C = 512,
// 8 heads), whose flops are counted as if unmasked, beside the same shape unmasked. Bilinear resize 16x16 and 64x64 -> 128x128 with C = 256 (the decode
// head), forward and backward, in GB/s of compulsory traffic (input read + output written).
// Every kernel is checked against its scalar twin once before it is timed.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include <segml/kernels/attention.hpp>
#include <segml/kernels/resize.hpp>

using namespace segml;

namespace {

std::vector<float> random_vector(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  std::vector<float> v(n);
  for (float& x : v) x = u(rng);
  return v;
}

void check_close(const char* what, const std::vector<float>& got, const std::vector<float>& want, float tol) {
  float worst = 0;
  for (size_t i = 0; i < got.size(); ++i) worst = std::max(worst, std::abs(got[i] - want[i]));
  if (!(worst <= tol)) {
    std::fprintf(stderr, "%s: max abs diff %g vs the scalar twin exceeds %g\n", what, worst, tol);
    std::exit(1);
  }
}

struct AttnCase {
  int64_t N, M, C, heads;
  std::vector<float> q, k, v, dy;
  AttnCase(int64_t n, int64_t m, int64_t c, int64_t h)
      : N(n), M(m), C(c), heads(h), q(random_vector(size_t(N * C), 1)), k(random_vector(size_t(M * C), 2)),
        v(random_vector(size_t(M * C), 3)), dy(random_vector(size_t(N * C), 4)) {}
};

// Validates the optimised forward and backward of one shape against the twins, once.
void validate(const AttnCase& a, bool causal) {
  const size_t nq = size_t(a.N * a.C), nk = size_t(a.M * a.C), np = size_t(a.heads * a.N * a.M);
  std::vector<float> y(nq), y_ref(nq), p(np), p_ref(np), dq(nq), dk(nk), dv(nk), dq_ref(nq), dk_ref(nk), dv_ref(nk);
  kernels::attention_forward_ref(y_ref.data(), p_ref.data(), a.q.data(), a.k.data(), a.v.data(), 1, a.N, a.M, a.C, a.heads,
                                 causal);
  kernels::attention_forward(y.data(), static_cast<float*>(nullptr), a.q.data(), a.k.data(), a.v.data(), 1, a.N, a.M, a.C,
                             a.heads, causal);
  check_close("attention forward", y, y_ref, 1e-5f);
  kernels::attention_forward(y.data(), p.data(), a.q.data(), a.k.data(), a.v.data(), 1, a.N, a.M, a.C, a.heads, causal);
  kernels::attention_backward_ref(dq_ref.data(), dk_ref.data(), dv_ref.data(), a.dy.data(), a.q.data(), a.k.data(),
                                  a.v.data(), p_ref.data(), 1, a.N, a.M, a.C, a.heads);
  kernels::attention_backward(dq.data(), dk.data(), dv.data(), a.dy.data(), a.q.data(), a.k.data(), a.v.data(), p.data(), 1,
                              a.N, a.M, a.C, a.heads);
  check_close("attention dq", dq, dq_ref, 1e-4f);  // dk, dv sum N = 16384 terms in another order
  check_close("attention dk", dk, dk_ref, 1e-3f);
  check_close("attention dv", dv, dv_ref, 1e-3f);
}

void BM_attention(benchmark::State& state, bool train, bool causal = false) {
  static std::vector<int64_t> validated;
  AttnCase a(state.range(0), state.range(1), state.range(2), state.range(3));
  const int64_t key = a.N * 2 + (causal ? 1 : 0);  // each shape and mask validated once
  if (std::find(validated.begin(), validated.end(), key) == validated.end()) {
    validate(a, causal);
    validated.push_back(key);
  }
  const size_t nq = size_t(a.N * a.C), nk = size_t(a.M * a.C);
  std::vector<float> y(nq), p(train ? size_t(a.heads * a.N * a.M) : 0), dq(nq), dk(nk), dv(nk);
  for (auto _ : state) {
    kernels::attention_forward(y.data(), train ? p.data() : nullptr, a.q.data(), a.k.data(), a.v.data(), 1, a.N, a.M, a.C,
                               a.heads, causal);
    if (train)
      kernels::attention_backward(dq.data(), dk.data(), dv.data(), a.dy.data(), a.q.data(), a.k.data(), a.v.data(),
                                  p.data(), 1, a.N, a.M, a.C, a.heads);
    benchmark::DoNotOptimize(y.data());
    benchmark::DoNotOptimize(dq.data());
  }
  const double flops = double(train ? 12 : 4) * double(a.N) * double(a.M) * double(a.C);
  state.counters["GFLOP/s"] = benchmark::Counter(flops * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
}

void attention_shapes(benchmark::internal::Benchmark* b) {
  b->ArgNames({"N", "M", "C", "h"});
  b->Args({16384, 256, 32, 1})->Args({4096, 256, 64, 2})->Args({1024, 256, 160, 5})->Args({256, 256, 256, 8});
  b->Unit(benchmark::kMillisecond)->UseRealTime();
}

BENCHMARK_CAPTURE(BM_attention, inference, false)->Apply(attention_shapes);
BENCHMARK_CAPTURE(BM_attention, train_fwd_bwd, true)->Apply(attention_shapes);
// CLIP's text model: 77 tokens, 512 channels, 8 heads, causal (and unmasked, for comparison).
BENCHMARK_CAPTURE(BM_attention, unmasked_inference_77, false, false)
    ->ArgNames({"N", "M", "C", "h"})->Args({77, 77, 512, 8})->Unit(benchmark::kMicrosecond)->UseRealTime();
BENCHMARK_CAPTURE(BM_attention, causal_inference, false, true)
    ->ArgNames({"N", "M", "C", "h"})->Args({77, 77, 512, 8})->Unit(benchmark::kMicrosecond)->UseRealTime();
BENCHMARK_CAPTURE(BM_attention, causal_train_fwd_bwd, true, true)
    ->ArgNames({"N", "M", "C", "h"})->Args({77, 77, 512, 8})->Unit(benchmark::kMicrosecond)->UseRealTime();

void BM_resize(benchmark::State& state, bool backward) {
  const int64_t C = 256, H = state.range(0), OH = 128;
  const std::vector<float> x = random_vector(size_t(C * H * H), 5), dy = random_vector(size_t(C * OH * OH), 6);
  std::vector<float> y(dy.size()), y_ref(dy.size()), dx(x.size()), dx_ref(x.size());
  kernels::resize_bilinear_forward(y.data(), x.data(), C, H, H, OH, OH);
  kernels::resize_bilinear_forward_ref(y_ref.data(), x.data(), C, H, H, OH, OH);
  check_close("resize forward", y, y_ref, 1e-6f);
  kernels::resize_bilinear_backward(dx.data(), dy.data(), C, H, H, OH, OH);
  kernels::resize_bilinear_backward_ref(dx_ref.data(), dy.data(), C, H, H, OH, OH);
  check_close("resize backward", dx, dx_ref, 1e-4f);
  for (auto _ : state) {
    if (backward)
      kernels::resize_bilinear_backward(dx.data(), dy.data(), C, H, H, OH, OH);
    else
      kernels::resize_bilinear_forward(y.data(), x.data(), C, H, H, OH, OH);
    benchmark::DoNotOptimize(y.data());
    benchmark::DoNotOptimize(dx.data());
  }
  const double bytes = double(sizeof(float)) * double(x.size() + y.size());
  state.counters["GB/s"] = benchmark::Counter(bytes * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
}

BENCHMARK_CAPTURE(BM_resize, forward, false)->ArgName("H")->Arg(16)->Arg(64)->Unit(benchmark::kMicrosecond)->UseRealTime();
BENCHMARK_CAPTURE(BM_resize, backward, true)->ArgName("H")->Arg(16)->Arg(64)->Unit(benchmark::kMicrosecond)->UseRealTime();

}  // namespace

BENCHMARK_MAIN();
