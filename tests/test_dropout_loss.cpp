// Tests for core/random.hpp (Generator), ops::dropout, ops::drop_path and ops::cross_entropy.
#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <segml/core/cpu.hpp>
#include <segml/core/random.hpp>
#include <segml/ops/dropout.hpp>
#include <segml/ops/elementwise.hpp>
#include <segml/ops/loss.hpp>
#include <set>
#include <string>
#include <vector>

#include "support.hpp"

using namespace segml;

namespace {

// Runs f once per thread count in {1, 2, 3} and restores the thread count.
template <class F>
void for_thread_counts(F&& f) {
  const int saved = num_threads();
  for (int t : {1, 2, 3}) {
    set_num_threads(t);
    f(t);
  }
  set_num_threads(saved);
}

// |observed - expected| of a binomial count, in standard deviations.
double binomial_sigmas(int64_t kept, int64_t n, double p) {
  return std::abs(static_cast<double>(kept) - n * p) / std::sqrt(n * p * (1 - p));
}

// Random labels in [0, C) with about `ignored` of them set to ignore_index.
Tensor<int64_t> random_labels(const Shape& shape, int64_t C, int64_t ignore_index, double ignored, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int64_t> cls(0, C - 1);
  std::uniform_real_distribution<double> u(0, 1);
  Tensor<int64_t> t = Tensor<int64_t>::empty(shape);
  for (int64_t i = 0; i < t.numel(); ++i) t.data()[i] = u(rng) < ignored ? ignore_index : cls(rng);
  return t;
}

// n values uniform in [-2, 2).
template <class T>
std::vector<T> random_values(int64_t n, uint64_t seed) {
  const Tensor<T> t = test::random_tensor<T>({n}, seed, -2.0, 2.0);
  return std::vector<T>(t.data(), t.data() + n);
}

// a and b hold the same bits (also tells +0 from -0).
bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), sizeof(float) * a.size()) == 0);
}

}  // namespace

// ---- Generator ------------------------------------------------------------------------------------

TEST_CASE("random: Philox4x32-10 matches the Random123 known-answer vectors") {
  struct Kat {
    uint32_t ctr[4], key[2], want[4];
  };
  const Kat kats[] = {
      {{0, 0, 0, 0}, {0, 0}, {0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8}},
      {{0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff},
       {0xffffffff, 0xffffffff},
       {0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd}},
      {{0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344},
       {0xa4093822, 0x299f31d0},
       {0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1}},
  };
  for (const Kat& k : kats) {
    const PhiloxBlock b = philox4x32_10(k.ctr, k.key);
    for (int j = 0; j < 4; ++j) CHECK(b.w[j] == k.want[j]);
  }
}

TEST_CASE("random: seeding, state save/restore, default generator") {
  Generator a(7), b(7), c(8);
  const float a0 = a.uniform(), a1 = a.uniform();
  CHECK(a0 == b.uniform());
  CHECK(a1 == b.uniform());
  CHECK(a0 != c.uniform());
  CHECK(a.initial_seed() == 7);

  const GeneratorState saved = a.get_state();
  CHECK(saved == GeneratorState{7, 2});
  std::vector<double> first(37), again(37);
  a.fill_normal(first.data(), 37);
  a.set_state(saved);
  a.fill_normal(again.data(), 37);
  CHECK(first == again);

  a.manual_seed(7);
  CHECK(a.uniform() == a0);

  manual_seed(123);
  const double d0 = default_generator().uniform<double>();
  manual_seed(123);
  CHECK(default_generator().uniform<double>() == d0);
}

TEST_CASE("random: buffers are identical for any thread count and continue the stream") {
  const int64_t n = 100003;
  std::vector<float> ref(n);
  Generator g0(99);
  g0.fill_uniform(ref.data(), n);
  for_thread_counts([&](int t) {
    std::vector<float> u(n);
    Generator g(99);
    g.fill_uniform(u.data(), n);
    CHECK_MESSAGE(u == ref, "threads " << t);
    CHECK(g.get_state().offset == static_cast<uint64_t>((n + 3) / 4));
  });
  // One fill of 8 equals two consecutive fills of 4 (whole blocks).
  Generator whole(5), parts(5);
  std::vector<float> w(8), p(8);
  whole.fill_uniform(w.data(), 8);
  parts.fill_uniform(p.data(), 4);
  parts.fill_uniform(p.data() + 4, 4);
  CHECK(w == p);
}

TEST_CASE("random: uniform and normal moments") {
  const int64_t n = 1 << 18;
  Generator g(2024);
  std::vector<double> u(n), z(n);
  g.fill_uniform(u.data(), n);
  g.fill_normal(z.data(), n, 2.0, 3.0);
  double su = 0, su2 = 0, sz = 0, sz2 = 0;
  int64_t outside = 0;
  for (int64_t i = 0; i < n; ++i) {
    outside += !(u[i] >= 0.0 && u[i] < 1.0);
    su += u[i];
    su2 += u[i] * u[i];
    sz += z[i];
    sz2 += (z[i] - 2.0) * (z[i] - 2.0);
  }
  // Mean of U[0,1): 1/2 with sd sqrt(1/12 / n); of N(2, 9): 2 with sd 3 / sqrt(n). 5 sigma bounds.
  CHECK(outside == 0);
  CHECK(std::abs(su / n - 0.5) < 5 * std::sqrt(1.0 / 12 / n));
  CHECK(std::abs(su2 / n - 1.0 / 3) < 0.01);
  CHECK(std::abs(sz / n - 2.0) < 5 * 3.0 / std::sqrt(double(n)));
  CHECK(std::abs(std::sqrt(sz2 / n) - 3.0) < 0.02);
  std::vector<float> f(n);
  g.fill_uniform(f.data(), n);
  std::set<float> distinct(f.begin(), f.end());
  CHECK(distinct.size() > static_cast<size_t>(n * 0.99));  // 2^24 levels: few collisions
}

// ---- dropout ----------------------------------------------------------------------------------------

TEST_CASE("dropout: keep fraction, exact scaling, backward uses the same mask") {
  const int64_t n = 200001;
  for (double p : {0.1, 0.5, 0.9}) {
    Var<float> x(test::random_tensor<float>({n}, 3, 0.5, 2.0), true);  // nonzero inputs
    Generator gen(11);
    Var<float> y = ops::dropout(x, p, true, gen);
    const float scale = static_cast<float>(1.0 / (1.0 - p));
    int64_t kept = 0;
    bool exact = true;
    for (int64_t i = 0; i < n; ++i) {
      const float v = y.data().data()[i];
      if (v != 0.0f) {
        ++kept;
        exact &= v == x.data().data()[i] * scale;
      }
    }
    CHECK(exact);
    const double sig = binomial_sigmas(kept, n, 1.0 - p);
    MESSAGE("dropout p=" << p << ": kept " << kept << " of " << n << " (" << sig << " sigma)");
    CHECK(sig < 5.0);
    y.backward(Tensor<float>::ones({n}));
    bool same_mask = true;
    for (int64_t i = 0; i < n; ++i) same_mask &= x.grad().data()[i] == (y.data().data()[i] != 0.0f ? scale : 0.0f);
    CHECK(same_mask);
  }
}

TEST_CASE("dropout: eval, p = 0 and p = 1") {
  Var<float> x(test::random_tensor<float>({4, 6}, 1), true);
  Generator gen(3);
  const GeneratorState before = gen.get_state();
  Var<float> eval = ops::dropout(x, 0.5, false, gen);
  CHECK(eval.data().shares_storage_with(x.data()));  // x itself
  Var<float> p0 = ops::dropout(x, 0.0, true, gen);
  CHECK(p0.data().shares_storage_with(x.data()));
  CHECK(gen.get_state() == before);  // identity draws nothing
  Var<float> p1 = ops::dropout(x, 1.0, true, gen);
  CHECK(test::max_abs_diff(p1.data(), Tensor<float>::zeros({4, 6})) == 0.0);
  ops::sum(p1).backward();
  CHECK(test::max_abs_diff(x.grad(), Tensor<float>::zeros({4, 6})) == 0.0);
  CHECK_THROWS_WITH_AS(ops::dropout(x, 1.5, true, gen), doctest::Contains("dropout: probability p must be in [0, 1]"),
                       Error);
  CHECK_THROWS_WITH_AS(ops::dropout(x, -0.1, true, gen), doctest::Contains("got -0.1"), Error);
}

TEST_CASE("dropout: same seed same mask, other seed other mask, any thread count") {
  const Tensor<float> t = test::random_tensor<float>({3, 50001}, 5, 0.5, 1.0);
  auto run = [&](uint64_t seed) {
    Generator gen(seed);
    return ops::dropout(Var<float>(t), 0.4, true, gen).data();
  };
  const Tensor<float> a = run(1);
  CHECK(test::max_abs_diff(a, run(1)) == 0.0);
  CHECK(test::max_abs_diff(a, run(2)) > 0.0);
  for_thread_counts([&](int threads) { CHECK_MESSAGE(test::max_abs_diff(a, run(1)) == 0.0, "threads " << threads); });
  // A strided (non-contiguous) input gives the same values as its contiguous copy.
  Generator g1(9), g2(9);
  const Tensor<float> tt = t.transpose(0, 1);
  CHECK(test::max_abs_diff(ops::dropout(Var<float>(tt), 0.4, true, g1).data(),
                           ops::dropout(Var<float>(tt.contiguous()), 0.4, true, g2).data()) == 0.0);
}

TEST_CASE("dropout: gradcheck (double, generator re-seeded inside)") {
  for (const Shape& s : {Shape{7}, Shape{3, 5, 2}}) {
    test::check_gradients("dropout " + shape_str(s),
                          [](const std::vector<Var<double>>& v) {
                            Generator gen(17);
                            return ops::dropout(v[0], 0.3, true, gen);
                          },
                          {test::random_tensor<double>(s, 4)});
  }
}

// Every ISA up to this CPU's: dropout_mask, the fused dropout_forward and dropout_apply against the
// reference twins (dropout_mask_ref, then dropout_apply_ref). Tolerance: none, masks and outputs
// must be bit-identical. The sizes hit every remainder of the 8- and 16-block SIMD steps and of a
// block; the keep probabilities include the ends, a threshold that is an integer multiple of 2^-24
// (0.5) and the ones next to 0 and 1; the streams start at 0, just below 2^32 blocks (the counter's
// low word wraps inside the call) and just below 2^64 (the whole counter wraps).
TEST_CASE("dropout kernels: mask and fused forward equal the reference twin bit for bit, every ISA") {
  const int64_t sizes[] = {0, 1, 3, 4, 5, 7, 8, 9, 31, 32, 33, 63, 64, 65, 1000, 12345};
  const double keep_probs[] = {0.0, 0.1, 0.5, 0.9, 1.0, 0x1.0p-24, 1.0 - 0x1.0p-24, 0.5 + 0x1.0p-26};
  const GeneratorState starts[] = {{1, 0}, {0xDEADBEEF12345678ull, (1ull << 32) - 5}, {7, ~0ull - 2}};
  for (Isa level : supported_isas()) {
    ScopedIsa isa(level);
    for (const GeneratorState& start : starts)
      for (double q : keep_probs)
        for (int64_t n : sizes) {
          CAPTURE(isa_name(level));
          CAPTURE(start.offset);
          CAPTURE(q);
          CAPTURE(n);
          const std::vector<float> x = random_values<float>(n, 7);
          const float scale = q > 0 ? static_cast<float>(1.0 / q) : 1.0f;
          Generator g_ref, g_mask, g_fused;
          for (Generator* g : {&g_ref, &g_mask, &g_fused}) g->set_state(start);
          std::vector<uint8_t> want(n), mask(n), fused_mask(n);
          std::vector<float> want_y(n), y(n);
          kernels::dropout_mask_ref(want.data(), n, q, g_ref);
          kernels::dropout_apply_ref(want_y.data(), x.data(), want.data(), scale, n);
          kernels::dropout_mask(mask.data(), n, q, g_mask);
          kernels::dropout_forward(y.data(), fused_mask.data(), x.data(), scale, n, q, g_fused);
          CHECK(mask == want);
          CHECK(fused_mask == want);
          CHECK(same_bits(y, want_y));
          CHECK(g_mask.get_state() == g_ref.get_state());
          kernels::dropout_apply(y.data(), x.data(), want.data(), scale, n);  // the backward's kernel
          CHECK(same_bits(y, want_y));
          CHECK(g_fused.get_state() == g_ref.get_state());
        }
  }
  // double always takes the portable path.
  const int64_t n = 1001;
  const std::vector<double> x = random_values<double>(n, 8);
  Generator g_ref(3), g(3);
  std::vector<uint8_t> want(n), mask(n);
  std::vector<double> want_y(n), y(n);
  kernels::dropout_mask_ref(want.data(), n, 0.7, g_ref);
  kernels::dropout_apply_ref(want_y.data(), x.data(), want.data(), 1 / 0.7, n);
  kernels::dropout_forward(y.data(), mask.data(), x.data(), 1 / 0.7, n, 0.7, g);
  CHECK(mask == want);
  CHECK(y == want_y);
  kernels::dropout_apply(y.data(), x.data(), want.data(), 1 / 0.7, n);
  CHECK(y == want_y);
}

TEST_CASE("dropout kernels: keep probabilities exactly at a drawn uniform, every ISA") {
  // The comparison U < keep_prob at its edge: keep_prob equal to element i's own uniform (dropped),
  // one step of 2^-24 above it (kept) and half a step above it (kept), for elements in every lane.
  const int64_t n = 64;
  const Generator g0(77);
  for (int64_t i : {0, 5, 22, 37, 63}) {
    const uint32_t m = g0.block_at(static_cast<uint64_t>(i / 4)).w[i % 4] >> 8;
    for (double q : {m * 0x1.0p-24, (m + 1.0) * 0x1.0p-24, (m + 0.5) * 0x1.0p-24}) {
      CAPTURE(i);
      CAPTURE(q);
      std::vector<uint8_t> want(n);
      Generator g_ref(77);
      kernels::dropout_mask_ref(want.data(), n, q, g_ref);
      CHECK(want[i] == (q > m * 0x1.0p-24 ? 1 : 0));
      for (Isa level : supported_isas()) {
        ScopedIsa isa(level);
        std::vector<uint8_t> mask(n);
        Generator g(77);
        kernels::dropout_mask(mask.data(), n, q, g);
        CHECK_MESSAGE(mask == want, isa_name(level));
      }
    }
  }
}

TEST_CASE("dropout kernels: mask and outputs are identical for 1, 2 and 3 threads on every ISA") {
  // 25001 blocks: several parallel chunks whose boundaries are not multiples of the SIMD step.
  const int64_t n = 100003;
  const std::vector<float> x = random_values<float>(n, 9);
  std::vector<uint8_t> want(n);
  std::vector<float> want_y(n);
  Generator g_ref(42);
  kernels::dropout_mask_ref(want.data(), n, 0.6, g_ref);
  kernels::dropout_apply_ref(want_y.data(), x.data(), want.data(), 2.5f, n);
  for (Isa level : supported_isas()) {
    ScopedIsa isa(level);
    for_thread_counts([&](int threads) {
      Generator g1(42), g2(42);
      std::vector<uint8_t> mask(n), fused_mask(n);
      std::vector<float> y(n);
      kernels::dropout_mask(mask.data(), n, 0.6, g1);
      kernels::dropout_forward(y.data(), fused_mask.data(), x.data(), 2.5f, n, 0.6, g2);
      CHECK_MESSAGE(mask == want, isa_name(level) << ", threads " << threads);
      CHECK_MESSAGE(fused_mask == want, isa_name(level) << ", threads " << threads);
      CHECK_MESSAGE(y == want_y, isa_name(level) << ", threads " << threads);
      kernels::dropout_apply(y.data(), x.data(), want.data(), 2.5f, n);
      CHECK_MESSAGE(y == want_y, isa_name(level) << ", threads " << threads);
    });
  }
}

// ---- drop_path ----------------------------------------------------------------------------------------

TEST_CASE("drop_path: whole samples kept with probability 1 - rate and scaled by 1 / (1 - rate)") {
  const int64_t batch = 40000, per = 3;
  for (double rate : {0.1, 0.35}) {
    Var<float> x(test::random_tensor<float>({batch, per}, 8, 0.5, 2.0), true);
    Generator gen(21);
    Var<float> y = ops::drop_path(x, rate, true, gen);
    const float keep = static_cast<float>(1.0 - rate);
    int64_t kept = 0;
    bool exact = true;
    for (int64_t b = 0; b < batch; ++b) {
      const bool k = y.data().at({b, 0}) != 0.0f;
      kept += k;
      for (int64_t i = 0; i < per; ++i) exact &= y.data().at({b, i}) == (k ? x.data().at({b, i}) / keep : 0.0f);
    }
    CHECK(exact);
    const double sig = binomial_sigmas(kept, batch, 1.0 - rate);
    MESSAGE("drop_path rate=" << rate << ": kept " << kept << " of " << batch << " samples (" << sig << " sigma)");
    CHECK(sig < 5.0);
    y.backward(Tensor<float>::ones({batch, per}));
    bool same = true;
    for (int64_t b = 0; b < batch; ++b)
      same &= x.grad().at({b, 1}) == (y.data().at({b, 1}) != 0.0f ? 1.0f / keep : 0.0f);
    CHECK(same);
  }
}

TEST_CASE("drop_path: eval, rate 0, rate 1, determinism, errors") {
  Var<float> x(test::random_tensor<float>({6, 2, 3}, 2), true);
  Generator gen(4);
  CHECK(ops::drop_path(x, 0.3, false, gen).data().shares_storage_with(x.data()));
  CHECK(ops::drop_path(x, 0.0, true, gen).data().shares_storage_with(x.data()));
  CHECK(gen.get_state().offset == 0);
  Var<float> all = ops::drop_path(x, 1.0, true, gen);
  CHECK(test::max_abs_diff(all.data(), Tensor<float>::zeros({6, 2, 3})) == 0.0);
  ops::sum(all).backward();
  CHECK(test::max_abs_diff(x.grad(), Tensor<float>::zeros({6, 2, 3})) == 0.0);

  const Tensor<float> big = test::random_tensor<float>({64, 5}, 6);
  auto run = [&](uint64_t seed) {
    Generator g(seed);
    return ops::drop_path(Var<float>(big), 0.5, true, g).data();
  };
  CHECK(test::max_abs_diff(run(3), run(3)) == 0.0);
  CHECK(test::max_abs_diff(run(3), run(4)) > 0.0);
  const Tensor<float> ref = run(3);
  for_thread_counts([&](int threads) { CHECK_MESSAGE(test::max_abs_diff(run(3), ref) == 0.0, "threads " << threads); });

  CHECK_THROWS_WITH_AS(ops::drop_path(x, 1.2, true, gen), doctest::Contains("drop_path: rate must be in [0, 1]"),
                       Error);
  CHECK_THROWS_WITH_AS(ops::drop_path(Var<float>(Tensor<float>::ones({})), 0.1, true, gen),
                       doctest::Contains("drop_path: input must have a batch dimension"), Error);
}

TEST_CASE("drop_path: gradcheck (double, generator re-seeded inside)") {
  test::check_gradients("drop_path [5, 3, 2]",
                        [](const std::vector<Var<double>>& v) {
                          Generator gen(12);
                          return ops::drop_path(v[0], 0.4, true, gen);
                        },
                        {test::random_tensor<double>({5, 3, 2}, 9)});
}

// ---- cross_entropy ------------------------------------------------------------------------------

TEST_CASE("cross_entropy: gradcheck (double) with ignored pixels, odd sizes, C = 1 and C = 35") {
  struct Case {
    Shape shape;
    int64_t ignore_index;
  };
  const Case cases[] = {{{2, 3, 5, 7}, 255}, {{1, 1, 3, 5}, 255}, {{1, 35, 3, 3}, 255},
                        {{2, 4, 3, 1}, 2},   {{6, 4}, -100},      {{1, 5, 2, 3, 3}, 255}};
  for (const Case& c : cases) {
    Shape label_shape = c.shape;
    label_shape.erase(label_shape.begin() + 1);
    const Tensor<int64_t> labels = random_labels(label_shape, c.shape[1], c.ignore_index, 0.25, 31);
    const int64_t ii = c.ignore_index;
    test::check_gradients(
        "cross_entropy " + shape_str(c.shape),
        [labels, ii](const std::vector<Var<double>>& v) { return ops::cross_entropy(v[0], labels, ii); },
        {test::random_tensor<double>(c.shape, 13, -3.0, 3.0)});
  }
}

TEST_CASE("cross_entropy: SIMD kernels vs the scalar twin, every remainder, every ISA") {
  // Tolerances: the SIMD exp is within ~2 ulp of std::exp, so per-pixel losses agree to ~1e-6
  // relative (loss sums: rtol 1e-6) and gradients (each |g| <= scale = 0.37) to 2e-7 absolute.
  const float scale = 0.37f;
  for (Isa level : supported_isas()) {
    ScopedIsa isa_guard(level);
    double worst_loss = 0, worst_grad = 0;
    for (int64_t C : {1, 3, 35}) {
      std::vector<int64_t> pixel_counts;
      for (int64_t P = 1; P <= 40; ++P) pixel_counts.push_back(P);
      pixel_counts.push_back(kernels::kCrossEntropyChunk + 21);  // a chunk boundary inside an image
      for (int64_t P : pixel_counts) {
        const int64_t B = 2;
        const Tensor<float> x = test::random_tensor<float>({B, C, P}, 100 + P, -8.0, 8.0);
        const Tensor<int64_t> lab = random_labels({B, P}, C, 255, 0.2, 200 + P);
        const double got = kernels::cross_entropy_forward(x.data(), lab.data(), B, C, P, 255);
        const double want = kernels::cross_entropy_forward_ref(x.data(), lab.data(), B, C, P, 255);
        const double rel = std::abs(got - want) / std::max(1.0, std::abs(want));
        worst_loss = std::max(worst_loss, rel);
        CHECK_MESSAGE(rel <= 1e-6, "isa " << std::string(isa_name(isa())) << " C " << C << " P " << P << ": " << got
                                          << " vs " << want);
        Tensor<float> g = Tensor<float>::full({B, C, P}, NAN), r = Tensor<float>::full({B, C, P}, NAN);
        kernels::cross_entropy_backward(g.data(), x.data(), lab.data(), B, C, P, 255, scale);
        kernels::cross_entropy_backward_ref(r.data(), x.data(), lab.data(), B, C, P, 255, scale);
        const double d = test::max_abs_diff(g, r);
        worst_grad = std::max(worst_grad, d);
        CHECK_MESSAGE(d <= 2e-7,
                      "isa " << std::string(isa_name(isa())) << " C " << C << " P " << P << ": grad diff " << d);
      }
    }
    MESSAGE("cross_entropy " << std::string(isa_name(isa())) << " vs scalar: max rel loss diff " << worst_loss
                             << ", max abs grad diff " << worst_grad);
  }
}

TEST_CASE("cross_entropy: matches PyTorch (float and double)") {
  const test::Fixture fx("ops_loss");
  for (const char* name : {"basic", "c35", "c1", "ignore_in_range", "ignore_neg100", "large_logits", "rows"}) {
    const std::string n = name;
    const Tensor<int64_t> labels = fx.get<int64_t>(n + ".labels");
    const int64_t ii = fx.get<int64_t>(n + ".ignore_index").data()[0];
    const Tensor<double> want_loss = fx.get<double>(n + ".loss");
    const Tensor<double> want_grad = fx.get<double>(n + ".grad");
    for (Isa level : supported_isas()) {
      ScopedIsa isa_guard(level);
      Var<float> x(fx.get<float>(n + ".logits"), true);
      Var<float> loss = ops::cross_entropy(x, labels, ii);
      CHECK(loss.shape() == Shape{});
      loss.backward();
      // float32: the losses are O(1..100) (rtol 2e-6), gradients |g| <= 1/n_valid (atol 1e-7).
      test::compare(n + " loss (float, " + isa_name(isa()) + ")", loss.data(), want_loss, 1e-6, 2e-6);
      test::compare(n + " grad (float, " + isa_name(isa()) + ")", x.grad(), want_grad, 1e-7);
    }
    Var<double> xd(fx.get<double>(n + ".logits"), true);
    Var<double> loss = ops::cross_entropy(xd, labels, ii);
    loss.backward();
    test::compare(n + " loss (double)", loss.data(), want_loss, 1e-12, 1e-12);
    test::compare(n + " grad (double)", xd.grad(), want_grad, 1e-14);
  }
}

TEST_CASE("cross_entropy: all pixels ignored gives 0 (torch: NaN) and a zero gradient") {
  const test::Fixture fx("ops_loss");
  CHECK(std::isnan(fx.get<double>("all_ignored.loss").data()[0]));  // what torch does
  Var<float> x(fx.get<float>("all_ignored.logits"), true);
  Var<float> loss = ops::cross_entropy(x, fx.get<int64_t>("all_ignored.labels"), 255);
  CHECK(loss.data().data()[0] == 0.0f);
  loss.backward();
  test::compare("all_ignored grad", x.grad(), fx.get<double>("all_ignored.grad"), 0.0);
}

TEST_CASE("cross_entropy: the loss is bit-identical for any thread count") {
  const Tensor<float> x = test::random_tensor<float>({2, 19, 3 * kernels::kCrossEntropyChunk + 5}, 41, -5.0, 5.0);
  const Tensor<int64_t> lab = random_labels({2, 3 * kernels::kCrossEntropyChunk + 5}, 19, 255, 0.1, 42);
  const float ref = ops::cross_entropy(Var<float>(x), lab).data().data()[0];
  for_thread_counts([&](int threads) {
    CHECK_MESSAGE(ops::cross_entropy(Var<float>(x), lab).data().data()[0] == ref, "threads " << threads);
  });
}

TEST_CASE("cross_entropy: bad labels and shapes throw, naming the op") {
  Var<float> x(test::random_tensor<float>({2, 5, 3, 4}, 1), true);
  Tensor<int64_t> lab = random_labels({2, 3, 4}, 5, 255, 0.2, 3);
  lab.at({1, 2, 3}) = 7;
  CHECK_THROWS_WITH_AS(ops::cross_entropy(x, lab),
                       doctest::Contains("cross_entropy: label 7 (at flat index 23) is out of range for 5 classes"),
                       Error);
  lab.at({1, 2, 3}) = -1;
  CHECK_THROWS_WITH_AS(ops::cross_entropy(x, lab), doctest::Contains("label -1"), Error);
  lab.at({1, 2, 3}) = 255;
  CHECK_THROWS_WITH_AS(ops::cross_entropy(x, lab, -100), doctest::Contains("label 255"), Error);  // 255 not ignored now
  CHECK_NOTHROW(ops::cross_entropy(x, lab));
  CHECK_THROWS_WITH_AS(
      ops::cross_entropy(x, Tensor<int64_t>::zeros({2, 4, 3})),
      doctest::Contains("cross_entropy: labels of shape [2, 4, 3] do not match logits of shape [2, 5, 3, 4]"), Error);
  CHECK_THROWS_WITH_AS(ops::cross_entropy(Var<float>(Tensor<float>::ones({5})), Tensor<int64_t>::zeros({})),
                       doctest::Contains("cross_entropy: logits must be"), Error);
  CHECK_THROWS_WITH_AS(ops::cross_entropy(Var<float>(Tensor<float>::ones({3, 0})), Tensor<int64_t>::zeros({3})),
                       doctest::Contains("have no classes"), Error);
}

// ---- upsampled_cross_entropy: HF's loss (resize then cross-entropy) fused -----------------------

TEST_CASE("upsampled_cross_entropy: equals cross_entropy(resize_bilinear(x)), forward and gradient, every ISA") {
  // Up, down, same size and odd factors; ignored pixels; C = 1, 7 (tail only), 19 (body + tail).
  struct Case {
    int64_t B, C, h, w, H, W;
  };
  for (const Case c : {Case{2, 19, 5, 7, 20, 28}, Case{1, 7, 9, 6, 4, 3}, Case{1, 1, 3, 3, 3, 3}, Case{2, 19, 4, 5, 13, 11}}) {
    const Tensor<float> x = test::random_tensor<float>({c.B, c.C, c.h, c.w}, 61, -4.0, 4.0);
    const Tensor<int64_t> lab = random_labels({c.B, c.H, c.W}, c.C, 255, 0.2, 62);
    // The oracle: the unfused reference kernels, in double.
    Tensor<double> x64 = Tensor<double>::empty(x.shape());
    for (int64_t i = 0; i < x.numel(); ++i) x64.data()[i] = x.data()[i];
    Tensor<double> up = Tensor<double>::empty({c.B, c.C, c.H, c.W});
    kernels::resize_bilinear_forward_ref(up.data(), x64.data(), c.B * c.C, c.h, c.w, c.H, c.W);
    const int64_t n_valid = kernels::cross_entropy_count_valid(lab.data(), lab.numel(), c.C, 255);
    REQUIRE(n_valid > 0);
    const double want = kernels::cross_entropy_forward_ref(up.data(), lab.data(), c.B, c.C, c.H * c.W, 255) / double(n_valid);
    Tensor<double> dup = Tensor<double>::empty(up.shape()), dwant = Tensor<double>::empty(x.shape());
    kernels::cross_entropy_backward_ref(dup.data(), up.data(), lab.data(), c.B, c.C, c.H * c.W, 255, 1.0 / double(n_valid));
    kernels::resize_bilinear_backward_ref(dwant.data(), dup.data(), c.B * c.C, c.h, c.w, c.H, c.W);
    for (Isa which : supported_isas()) {
      ScopedIsa scoped(which);
      const Var<float> v(x, true);
      const Var<float> loss = ops::upsampled_cross_entropy(v, lab);
      loss.backward();
      INFO(isa_name(which), " B ", c.B, " C ", c.C, " ", c.h, "x", c.w, " -> ", c.H, "x", c.W);
      // float sampling + 1-ulp exp vs a double oracle: ~1e-6 relative on losses of order 1.
      CHECK(std::abs(double(loss.data().data()[0]) - want) <= 1e-5 * std::max(1.0, std::abs(want)));
      test::compare(std::string("upsampled_cross_entropy grad ") + isa_name(which), v.grad(), dwant, 1e-6);
    }
  }
}

TEST_CASE("upsampled_cross_entropy: gradcheck (double) and thread-count independence") {
  const Tensor<int64_t> lab = random_labels({2, 11, 9}, 5, 255, 0.25, 63);
  test::check_gradients("upsampled_cross_entropy 4x3 -> 11x9",
                        [lab](const std::vector<Var<double>>& v) { return ops::upsampled_cross_entropy(v[0], lab); },
                        {test::random_tensor<double>({2, 5, 4, 3}, 64, -3.0, 3.0)});
  const Tensor<float> x = test::random_tensor<float>({2, 21, 16, 16}, 65, -5.0, 5.0);
  const Tensor<int64_t> big = random_labels({2, 64, 64}, 21, 255, 0.1, 66);
  const Var<float> v0(x, true);
  ops::upsampled_cross_entropy(v0, big).backward();
  const float ref = ops::upsampled_cross_entropy(Var<float>(x), big).data().data()[0];
  for_thread_counts([&](int threads) {
    const Var<float> v(x, true);
    const Var<float> loss = ops::upsampled_cross_entropy(v, big);
    loss.backward();
    CHECK_MESSAGE(loss.data().data()[0] == ref, "threads " << threads);
    CHECK_MESSAGE(test::max_abs_diff(v.grad(), v0.grad()) == 0, "threads " << threads);
  });
  CHECK_THROWS_WITH_AS(ops::upsampled_cross_entropy(Var<float>(x), random_labels({2, 8, 8}, 30, 255, 0.0, 67)),
                       doctest::Contains("out of range for 21 classes"), segml::Error);
  CHECK_THROWS_WITH_AS(ops::upsampled_cross_entropy(Var<float>(x), Tensor<int64_t>::zeros({3, 8, 8})),
                       doctest::Contains("labels must be (B=2, H, W)"), segml::Error);
}

TEST_CASE("dropout and drop_path on a batch slice: each process's samples get the whole batch's masks") {
  // A batch of 3 samples drawn whole, then as slices [0, 1), [1, 3) and [2, 3) from the same state:
  // the slices' outputs are the whole batch's rows and the stream ends where the whole draw ends.
  // 5 x 3 = 15 elements per sample: sample 1 starts off a Philox block boundary (offset 15).
  for (const int64_t per_w : {int64_t{5}, int64_t{4}}) {
    CAPTURE(per_w);
    const Tensor<float> x = Tensor<float>::ones({3, 3, per_w});
    const int64_t per = 3 * per_w;
    Generator whole_gen(77);
    const Tensor<float> whole = ops::dropout(Var<float>(x), 0.5, true, whole_gen).data();
    const Tensor<float> whole_path = ops::drop_path(Var<float>(x), 0.4, true, whole_gen).data();
    for (const auto& [first, count] : {std::pair<int64_t, int64_t>{0, 1}, {1, 2}, {2, 1}}) {
      CAPTURE(first);
      Generator g(77);
      g.set_batch_slice(first, 3);
      const Tensor<float> part = ops::dropout(Var<float>(x.narrow(0, first, count).contiguous()), 0.5, true, g).data();
      const Tensor<float> part_path =
          ops::drop_path(Var<float>(x.narrow(0, first, count).contiguous()), 0.4, true, g).data();
      for (int64_t i = 0; i < count * per; ++i) {
        CHECK(part.data()[i] == whole.data()[first * per + i]);
        CHECK(part_path.data()[i] == whole_path.data()[first * per + i]);
      }
      CHECK(g.get_state() == whole_gen.get_state());
    }
  }
  Generator g(1);
  g.set_batch_slice(2, 2);
  CHECK_THROWS_AS(ops::dropout(Var<float>(Tensor<float>::ones({1, 4})), 0.5, true, g), Error);  // beyond the batch
}
