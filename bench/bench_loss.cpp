// Benchmarks for kernels/cross_entropy.hpp (per ISA, against the scalar twin) and kernels/dropout.hpp.
//
// Sizes are SegFormer's: the sidewalk recipe's loss on (2, 35, 512, 512) upsampled logits, and the
// decode head's classifier dropout on (2, 256, 128, 128). Every SIMD variant is validated against the
// scalar twin before it is timed. Counters: GB/s of logits (+ gradient) traffic, Mpix/s.
#include <benchmark/benchmark.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <segml/core/cpu.hpp>
#include <segml/core/random.hpp>
#include <segml/core/tensor.hpp>
#include <segml/kernels/cross_entropy.hpp>
#include <segml/kernels/dropout.hpp>

using namespace segml;

namespace {

constexpr int64_t kB = 2, kC = 35, kH = 512, kW = 512, kP = kH * kW;

struct Problem {
  Tensor<float> logits = Tensor<float>::empty({kB, kC, kP});
  Tensor<int64_t> labels = Tensor<int64_t>::empty({kB, kP});
  Tensor<float> grad = Tensor<float>::empty({kB, kC, kP});
  int64_t n_valid = 0;
  Problem() {
    std::mt19937 rng(1);
    std::normal_distribution<float> nd(0.0f, 3.0f);
    std::uniform_int_distribution<int64_t> cls(0, kC - 1);
    for (int64_t i = 0; i < logits.numel(); ++i) logits.data()[i] = nd(rng);
    for (int64_t i = 0; i < labels.numel(); ++i) labels.data()[i] = i % 17 == 0 ? 255 : cls(rng);
    n_valid = kernels::cross_entropy_count_valid(labels.data(), labels.numel(), kC, 255);
  }
};

Problem& problem() {
  static Problem p;
  return p;
}

// Checks the dispatched kernels at the current ISA against the scalar twins; aborts on mismatch.
void validate() {
  Problem& p = problem();
  const double got = kernels::cross_entropy_forward(p.logits.data(), p.labels.data(), kB, kC, kP, 255);
  const double want = kernels::cross_entropy_forward_ref(p.logits.data(), p.labels.data(), kB, kC, kP, 255);
  Tensor<float> ref = Tensor<float>::empty({kB, kC, kP});
  const float scale = 1.0f / static_cast<float>(p.n_valid);
  kernels::cross_entropy_backward(p.grad.data(), p.logits.data(), p.labels.data(), kB, kC, kP, 255, scale);
  kernels::cross_entropy_backward_ref(ref.data(), p.logits.data(), p.labels.data(), kB, kC, kP, 255, scale);
  double gdiff = 0;
  for (int64_t i = 0; i < ref.numel(); ++i) gdiff = std::max(gdiff, double(std::abs(ref.data()[i] - p.grad.data()[i])));
  if (std::abs(got - want) > 1e-6 * std::abs(want) || gdiff > 1e-6 * scale) {
    std::fprintf(stderr, "cross_entropy %s disagrees with the scalar twin: loss %.9g vs %.9g, grad diff %g\n",
                 isa_name(isa()), got, want, gdiff);
    std::abort();
  }
}

bool isa_available(benchmark::State& state) {
  if (!isa_supported(static_cast<Isa>(state.range(0)))) {
    state.SkipWithError("ISA not supported by this CPU");
    return false;
  }
  return true;
}

void BM_cross_entropy_forward(benchmark::State& state) {
  if (!isa_available(state)) return;
  ScopedIsa guard(static_cast<Isa>(state.range(0)));
  validate();
  Problem& p = problem();
  for (auto _ : state)
    benchmark::DoNotOptimize(kernels::cross_entropy_forward(p.logits.data(), p.labels.data(), kB, kC, kP, 255));
  const double bytes = double(p.logits.numel()) * 4 + double(p.labels.numel()) * 8;
  state.counters["GB"] = benchmark::Counter(bytes * 1e-9 * double(state.iterations()), benchmark::Counter::kIsRate);
  state.counters["Mpix"] =
      benchmark::Counter(double(kB * kP) * 1e-6 * double(state.iterations()), benchmark::Counter::kIsRate);
  state.SetLabel(isa_name(isa()));
}

void BM_cross_entropy_backward(benchmark::State& state) {
  if (!isa_available(state)) return;
  ScopedIsa guard(static_cast<Isa>(state.range(0)));
  validate();
  Problem& p = problem();
  const float scale = 1.0f / static_cast<float>(p.n_valid);
  for (auto _ : state) {
    kernels::cross_entropy_backward(p.grad.data(), p.logits.data(), p.labels.data(), kB, kC, kP, 255, scale);
    benchmark::ClobberMemory();
  }
  const double bytes = double(p.logits.numel()) * 8 + double(p.labels.numel()) * 8;  // read logits, write grad
  state.counters["GB"] = benchmark::Counter(bytes * 1e-9 * double(state.iterations()), benchmark::Counter::kIsRate);
  state.counters["Mpix"] =
      benchmark::Counter(double(kB * kP) * 1e-6 * double(state.iterations()), benchmark::Counter::kIsRate);
  state.SetLabel(isa_name(isa()));
}

void BM_dropout_forward(benchmark::State& state) {
  const int64_t n = 2 * 256 * 128 * 128;
  Tensor<float> x = Tensor<float>::ones({n}), y = Tensor<float>::empty({n});
  Tensor<uint8_t> keep = Tensor<uint8_t>::empty({n});
  Generator gen(0);
  for (auto _ : state) {
    kernels::dropout_mask(keep.data(), n, 0.9, gen);
    kernels::dropout_apply(y.data(), x.data(), keep.data(), 1.0f / 0.9f, n);
    benchmark::ClobberMemory();
  }
  const double bytes = double(n) * (4 + 4 + 2);  // read x, write y, write + read the mask
  state.counters["GB"] = benchmark::Counter(bytes * 1e-9 * double(state.iterations()), benchmark::Counter::kIsRate);
}

}  // namespace

BENCHMARK(BM_cross_entropy_forward)->DenseRange(0, 2)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_cross_entropy_backward)->DenseRange(0, 2)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_dropout_forward)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_MAIN();
