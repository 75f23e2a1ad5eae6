// bench_conv: the depthwise 3x3 conv at SegFormer-B0 512x512 stage shapes (NHWC and NCHW, forward
// and backward, SIMD vs the scalar twin), the stage-1 7x7/s4 patch-embedding conv, and CLIPSeg's
// transposed-convolution head at 352x352 (64 -> 32 channels on 22x22 and 32 -> 1 on 88x88, kernel
// = stride = 4; NCHW forward and backward, channels-last-input forward), in GFLOP/s and GB/s. Every variant is validated against its scalar reference before it is timed.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <segml/kernels/conv2d.hpp>
#include <segml/kernels/conv_transpose2d.hpp>
#include <segml/kernels/dwconv.hpp>
#include <string>
#include <utility>
#include <vector>

using namespace segml;

namespace {

std::vector<float> random_vec(int64_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  std::vector<float> v(static_cast<size_t>(n));
  for (float& x : v) x = u(rng);
  return v;
}

float max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
  float m = 0;
  for (size_t i = 0; i < a.size(); ++i) m = std::max(m, std::abs(a[i] - b[i]));
  return m;
}

struct DwShape {
  int64_t C, H, W;
};
// MiT-B0 Mix-FFN hidden sizes (4C) at a 512x512 input, batch 1.
constexpr DwShape kDwShapes[] = {{128, 128, 128}, {256, 64, 64}, {640, 32, 32}, {1024, 16, 16}};

// One depthwise-conv call in the chosen layout / direction; outputs into y (forward) or dx, dw, db.
void run_dwconv(bool nhwc, bool backward, const DwShape& s, const std::vector<float>& x, const std::vector<float>& w,
                const std::vector<float>& b, const std::vector<float>& dy, std::vector<float>& out,
                std::vector<float>& dw, std::vector<float>& db) {
  const int64_t B = 1;
  if (nhwc && !backward) kernels::dwconv3x3_nhwc_forward(out.data(), x.data(), w.data(), b.data(), B, s.H, s.W, s.C);
  if (!nhwc && !backward) kernels::dwconv3x3_nchw_forward(out.data(), x.data(), w.data(), b.data(), B, s.C, s.H, s.W);
  if (nhwc && backward)
    kernels::dwconv3x3_nhwc_backward(out.data(), dw.data(), db.data(), dy.data(), x.data(), w.data(), B, s.H, s.W, s.C);
  if (!nhwc && backward)
    kernels::dwconv3x3_nchw_backward(out.data(), dw.data(), db.data(), dy.data(), x.data(), w.data(), B, s.C, s.H, s.W);
}

void bench_dwconv(benchmark::State& state, DwShape s, bool nhwc, bool backward, Isa isa_) {
  const int64_t n = s.C * s.H * s.W;
  const std::vector<float> x = random_vec(n, 1), dy = random_vec(n, 2), w = random_vec(s.C * 9, 3),
                           b = random_vec(s.C, 4);
  std::vector<float> out(static_cast<size_t>(n)), dw(static_cast<size_t>(s.C * 9)), db(static_cast<size_t>(s.C));
  {  // validate against the scalar twin
    std::vector<float> out_ref = out, dw_ref = dw, db_ref = db;
    {
      ScopedIsa scalar(Isa::scalar);
      run_dwconv(nhwc, backward, s, x, w, b, dy, out_ref, dw_ref, db_ref);
    }
    ScopedIsa scoped(isa_);
    run_dwconv(nhwc, backward, s, x, w, b, dy, out, dw, db);
    const float err =
        std::max({max_abs_diff(out, out_ref), backward ? max_abs_diff(dw, dw_ref) / std::sqrt(float(n)) : 0.0f,
                  backward ? max_abs_diff(db, db_ref) / std::sqrt(float(n)) : 0.0f});
    if (!(err <= 1e-4f)) {
      state.SkipWithError(("result differs from the scalar twin by " + std::to_string(err)).c_str());
      return;
    }
  }
  ScopedIsa scoped(isa_);
  for (auto _ : state) {
    run_dwconv(nhwc, backward, s, x, w, b, dy, out, dw, db);
    benchmark::ClobberMemory();
  }
  // forward: 9 FMAs per output; backward: 9 for dx + 9 for dw (+1 for db).
  const double flops = (backward ? 37.0 : 18.0) * static_cast<double>(n);
  const double bytes = (backward ? 3.0 : 2.0) * 4.0 * static_cast<double>(n);  // x (+dy) read, y / dx written
  state.counters["GFLOP/s"] = benchmark::Counter(flops * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["GB/s"] = benchmark::Counter(bytes * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
}

// Stage-1 patch embedding of MiT-B0 at 512x512: Conv2d(3, 32, 7, stride 4, padding 3), batch 1.
void bench_patch_embed(benchmark::State& state, bool backward) {
  const kernels::Conv2dGeometry g{
      .B = 1, .C = 3, .H = 512, .W = 512, .OC = 32, .KH = 7, .KW = 7, .sh = 4, .sw = 4, .ph = 3, .pw = 3, .groups = 1};
  const std::vector<float> x = random_vec(g.B * g.C * g.H * g.W, 1), w = random_vec(g.OC * g.K(), 2),
                           b = random_vec(g.OC, 3), dy = random_vec(g.B * g.OC * g.P(), 4);
  std::vector<float> y(dy.size()), dx(x.size()), dw(w.size()), db(b.size());
  {  // validate against the direct 7-loop twin
    std::vector<float> y_ref = y, dx_ref = dx, dw_ref = dw, db_ref = db;
    kernels::conv2d_forward(y.data(), x.data(), w.data(), b.data(), g);
    kernels::conv2d_forward_ref(y_ref.data(), x.data(), w.data(), b.data(), g);
    float err = max_abs_diff(y, y_ref);
    if (backward) {
      kernels::conv2d_backward(dx.data(), dw.data(), db.data(), dy.data(), x.data(), w.data(), g);
      kernels::conv2d_backward_ref(dx_ref.data(), dw_ref.data(), db_ref.data(), dy.data(), x.data(), w.data(), g);
      err = std::max({err, max_abs_diff(dx, dx_ref), max_abs_diff(dw, dw_ref) / float(g.P()),
                      max_abs_diff(db, db_ref) / float(g.P())});
    }
    if (!(err <= 1e-3f)) {
      state.SkipWithError(("result differs from the direct twin by " + std::to_string(err)).c_str());
      return;
    }
  }
  for (auto _ : state) {
    if (backward)
      kernels::conv2d_backward(dx.data(), dw.data(), db.data(), dy.data(), x.data(), w.data(), g);
    else
      kernels::conv2d_forward(y.data(), x.data(), w.data(), b.data(), g);
    benchmark::ClobberMemory();
  }
  const double flops = 2.0 * static_cast<double>(g.OC * g.P() * g.K()) * (backward ? 2.0 : 1.0);  // dx and dW GEMMs
  state.counters["GFLOP/s"] = benchmark::Counter(flops * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
}


// mode 0: NCHW forward, 1: NCHW backward (dx, dW, db), 2: channels-last-input forward (one image).
void bench_conv_transpose(benchmark::State& state, kernels::ConvTranspose2dGeometry g, int mode) {
  const std::vector<float> x = random_vec(g.B * g.Cin * g.P(), 1), w = random_vec(g.Cin * g.K(), 2),
                           b = random_vec(g.Cout, 3), dy = random_vec(g.B * g.Cout * g.OH() * g.OW(), 4);
  std::vector<float> y(dy.size()), dx(x.size()), dw(w.size()), db(b.size()), tokens(x.size());
  for (int64_t c = 0; c < g.Cin; ++c)  // the same image as channels-last tokens (B = 1)
    for (int64_t i = 0; i < g.P(); ++i) tokens[size_t(i * g.Cin + c)] = x[size_t(c * g.P() + i)];
  auto run = [&] {
    if (mode == 0) kernels::conv_transpose2d_forward(y.data(), x.data(), w.data(), b.data(), g);
    if (mode == 1) kernels::conv_transpose2d_backward(dx.data(), dw.data(), db.data(), dy.data(), x.data(), w.data(), g);
    if (mode == 2)
      kernels::conv_transpose2d_nhwc_forward(y.data(), tokens.data(), w.data(), b.data(), g.H, g.W, g.Cin, g.Cout, g.KH,
                                             g.KW, g.stride, g.padding);
  };
  {  // validate against the plain-loop twin
    std::vector<float> y_ref = y, dx_ref = dx, dw_ref = dw, db_ref = db;
    run();
    float err = 0;
    if (mode == 1) {
      kernels::conv_transpose2d_backward_ref(dx_ref.data(), dw_ref.data(), db_ref.data(), dy.data(), x.data(), w.data(), g);
      err = std::max({max_abs_diff(dx, dx_ref), max_abs_diff(dw, dw_ref) / float(g.P()), max_abs_diff(db, db_ref) / float(g.P())});
    } else {
      kernels::conv_transpose2d_forward_ref(y_ref.data(), x.data(), w.data(), b.data(), g);
      err = max_abs_diff(y, y_ref);
    }
    if (!(err <= 1e-3f)) {
      state.SkipWithError(("result differs from the plain-loop twin by " + std::to_string(err)).c_str());
      return;
    }
  }
  for (auto _ : state) {
    run();
    benchmark::ClobberMemory();
  }
  const double flops = 2.0 * static_cast<double>(g.B * g.P() * g.Cin * g.K()) * (mode == 1 ? 2.0 : 1.0);
  state.counters["GFLOP/s"] = benchmark::Counter(flops * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
}

}  // namespace

int main(int argc, char** argv) {
  const std::vector<Isa> isas = supported_isas();
  for (const DwShape& s : kDwShapes)
    for (bool nhwc : {true, false})
      for (bool backward : {false, true})
        for (Isa i : isas) {
          const std::string name = std::string("dwconv3x3_") + (nhwc ? "nhwc" : "nchw") +
                                   (backward ? "_backward" : "_forward") + "/C" + std::to_string(s.C) + "_" +
                                   std::to_string(s.H) + "x" + std::to_string(s.W) + "/" + isa_name(i);
          benchmark::RegisterBenchmark(name.c_str(), bench_dwconv, s, nhwc, backward, i)
              ->Unit(benchmark::kMicrosecond)
              ->UseRealTime();
        }
  benchmark::RegisterBenchmark("patch_embed_7x7s4_forward/3x512x512->32", bench_patch_embed, false)
      ->Unit(benchmark::kMillisecond)
      ->UseRealTime();
  benchmark::RegisterBenchmark("patch_embed_7x7s4_backward/3x512x512->32", bench_patch_embed, true)
      ->Unit(benchmark::kMillisecond)
      ->UseRealTime();
  for (const auto& [name, g] : {std::pair<const char*, kernels::ConvTranspose2dGeometry>{
                                    "64x22x22->32", {.B = 1, .Cin = 64, .H = 22, .W = 22, .Cout = 32, .KH = 4, .KW = 4, .stride = 4}},
                                {"32x88x88->1", {.B = 1, .Cin = 32, .H = 88, .W = 88, .Cout = 1, .KH = 4, .KW = 4, .stride = 4}}})
    for (int mode : {0, 1, 2}) {
      const char* what[] = {"conv_transpose_k4s4_forward/", "conv_transpose_k4s4_backward/", "conv_transpose_k4s4_nhwc_forward/"};
      benchmark::RegisterBenchmark((std::string(what[mode]) + name).c_str(), bench_conv_transpose, g, mode)
          ->Unit(benchmark::kMicrosecond)
          ->UseRealTime();
    }
  benchmark::Initialize(&argc, argv);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
