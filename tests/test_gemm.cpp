// tests/test_gemm.cpp: every GEMM path (AVX-512, AVX2, Eigen, double) against the scalar twin.
//
// Tolerance: the oracle is gemm_ref<double> on the same float inputs, exact to ~1e-16. A float
// dot product of length K carries at most ~K * eps * sum|a_k b_k| of rounding error whatever the
// summation order, so with inputs in [-1, 1] every float path must satisfy
//   |C - C_ref| <= 2 * (K * |alpha| * max|a| * max|b| + |beta| * max|c| + max|bias|) * eps_float.
// (The observed error is ~100x below it.) Padding of C (columns past N) must stay untouched, and
// with beta == 0 a NaN-filled C must be ignored.
#include <doctest/doctest.h>

#include <segml/core/cpu.hpp>
#include <segml/core/parallel.hpp>
#include <segml/kernels/gemm.hpp>

#include <cmath>
#include <limits>
#include <optional>
#include <random>
#include <string>
#include <vector>

using segml::Isa;
using segml::kernels::gemm;
using segml::kernels::gemm_batched;
using segml::kernels::gemm_bias;
using segml::kernels::gemm_bias_add;
using segml::kernels::PackedB;
using segml::kernels::gemm_ref;

namespace {

constexpr float kSentinel = -12345.f;  // written into C's padding columns; must survive

std::vector<float> random_vec(int64_t n, std::mt19937& rng) {
  std::uniform_real_distribution<float> d(-1.f, 1.f);
  std::vector<float> v(static_cast<size_t>(n));
  for (float& x : v) x = d(rng);
  return v;
}

std::vector<double> to_double(const std::vector<float>& v) { return {v.begin(), v.end()}; }

// Every ISA this CPU can run, lowest first (scalar = the Eigen path).
std::vector<Isa> isas() {
  return segml::supported_isas();
}

struct Case {
  bool ta, tb;
  int64_t M, N, K;
  float alpha, beta;
  int64_t pad;  // extra elements at the end of every row of A, B and C
};

// Runs gemm (or gemm_bias when use_bias, gemm_bias_add when also add) on one case and checks it
// against gemm_ref<double>. Returns the max abs error (for reporting).
double check_case(const Case& c, std::mt19937& rng, bool use_bias = false, bool bias_null = false, bool add = false) {
  const int64_t ra = c.ta ? c.K : c.M, ca = c.ta ? c.M : c.K;  // stored shape of A
  const int64_t rb = c.tb ? c.N : c.K, cb = c.tb ? c.K : c.N;  // stored shape of B
  const int64_t lda = ca + c.pad, ldb = cb + c.pad, ldc = c.N + c.pad;
  const auto A = random_vec(ra * lda, rng), B = random_vec(rb * ldb, rng);
  const auto bias = random_vec(c.N, rng);
  const float alpha = use_bias ? 1.f : c.alpha, beta = use_bias ? (add ? 1.f : 0.f) : c.beta;
  std::vector<float> C = random_vec(c.M * ldc, rng);
  if (beta == 0.f) std::fill(C.begin(), C.end(), std::numeric_limits<float>::quiet_NaN());
  for (int64_t i = 0; i < c.M; ++i)
    for (int64_t j = c.N; j < ldc; ++j) C[i * ldc + j] = kSentinel;

  std::vector<double> want = to_double(C);
  gemm_ref<double>(c.ta, c.tb, c.M, c.N, c.K, alpha, to_double(A).data(), lda, to_double(B).data(), ldb, beta,
                   want.data(), ldc);
  const bool with_bias = use_bias && !bias_null;
  if (with_bias)
    for (int64_t i = 0; i < c.M; ++i)
      for (int64_t j = 0; j < c.N; ++j) want[i * ldc + j] += bias[j];

  if (use_bias && add)
    gemm_bias_add<float>(c.ta, c.tb, c.M, c.N, c.K, A.data(), lda, B.data(), ldb, bias_null ? nullptr : bias.data(),
                         C.data(), ldc);
  else if (use_bias)
    gemm_bias<float>(c.ta, c.tb, c.M, c.N, c.K, A.data(), lda, B.data(), ldb, bias_null ? nullptr : bias.data(),
                     C.data(), ldc);
  else
    gemm<float>(c.ta, c.tb, c.M, c.N, c.K, alpha, A.data(), lda, B.data(), ldb, beta, C.data(), ldc);

  const double eps = std::numeric_limits<float>::epsilon();
  const double tol = 2 * (c.K * std::abs(alpha) + std::abs(beta) + (with_bias ? 1 : 0)) * eps;
  double worst = 0;
  bool ok = true;
  for (int64_t i = 0; i < c.M; ++i)
    for (int64_t j = 0; j < ldc; ++j) {
      const double got = C[i * ldc + j], w = want[i * ldc + j];
      if (j >= c.N) {
        ok = ok && got == kSentinel;
        continue;
      }
      const double d = std::abs(got - w);
      if (!(d <= tol)) ok = false;
      worst = std::max(worst, std::isnan(d) ? INFINITY : d);
    }
  INFO("isa=" << std::string(segml::isa_name(segml::isa())) << " ta=" << c.ta << " tb=" << c.tb << " M=" << c.M << " N=" << c.N
              << " K=" << c.K << " alpha=" << alpha << " beta=" << beta << " pad=" << c.pad << " bias=" << use_bias
              << " add=" << add
              << " max abs diff " << worst << " tol " << tol);
  CHECK(ok);
  return worst;
}

// alpha/beta settings cycled through the cases (with the padding, every pairing occurs).
constexpr float kAlphaBeta[3][2] = {{1.f, 0.f}, {2.f, 0.5f}, {1.f, 1.f}};

}  // namespace

TEST_CASE("gemm: every ISA path matches gemm_ref on all transposes and remainder sizes") {
  const int64_t sizes[] = {1, 2, 3, 5, 7, 13, 16, 17, 31, 33, 64, 65, 127, 129};
  const int64_t ks[] = {1, 17, 129};
  std::mt19937 rng(42);
  for (Isa isa : isas()) {
    segml::ScopedIsa scoped(isa);
    double worst = 0;
    int idx = 0;
    for (int t = 0; t < 4; ++t)
      for (int64_t M : sizes)
        for (int64_t N : sizes)
          for (int64_t K : ks) {
            const auto& ab = kAlphaBeta[idx % 3];
            worst = std::max(worst, check_case({t / 2 == 1, t % 2 == 1, M, N, K, ab[0], ab[1], idx % 2 ? 3 : 0}, rng));
            ++idx;
          }
    MESSAGE("gemm ", std::string(segml::isa_name(isa)), ": ", idx, " cases, max abs diff vs gemm_ref<double> ", worst);
  }
}

#if defined(__x86_64__)
static_assert(int64_t{1030} * 1020 > segml::kernels::gemm_detail::kInPlaceA, "the packed plain-A case below must stay packed");
// Rows 4 KB apart share an L1 set: such a plain A is packed (the lda = 1024 cases below); rows
// 2 KB or 4 KB + 64 B apart are read in place.
static_assert(segml::kernels::gemm_detail::rows_alias<12>(1024) && segml::kernels::gemm_detail::rows_alias<6>(2048));
static_assert(!segml::kernels::gemm_detail::rows_alias<12>(512) && !segml::kernels::gemm_detail::rows_alias<12>(1040));
#endif

TEST_CASE("gemm: shapes that cross the cache blocks (MC, KC, NC) and the thread split") {
  // 200 > MC rows, 530 > KC, 4100 > NC columns; the last two also cross the B block chunks.
  const Case shapes[] = {{false, false, 200, 300, 150, 1, 0, 0}, {false, false, 290, 70, 530, 1, 0, 5},
                         {false, false, 9, 4100, 20, 1, 0, 0},   {false, false, 150, 33, 300, 1, 0, 1},
                         // several column chunks and K chunks of the packed B block (blocks_for)
                         {false, false, 6, 1500, 4000, 1, 0, 3}, {true, true, 25, 1300, 1300, 2, 0.5f, 0},
                         // a plain A too large to be read in place (M * K > kInPlaceA), so it is
                         // packed row-major, with a last panel of 10 rows (AVX-512) or 4 (AVX2)
                         {false, false, 1030, 70, 1020, 1, 0, 0},
                         // a small plain A whose rows are 4 KB apart (lda = 1000 + 24), packed
                         {false, false, 100, 40, 1000, 1, 0, 24}};
  std::mt19937 rng(7);
  for (Isa isa : isas()) {
    segml::ScopedIsa scoped(isa);
    for (Case c : shapes)
      for (int t = 0; t < 4; ++t) {
        c.ta = t / 2 == 1, c.tb = t % 2 == 1, c.alpha = kAlphaBeta[t % 3][0], c.beta = kAlphaBeta[t % 3][1];
        check_case(c, rng);
      }
  }
}

TEST_CASE("gemm: 1, 2 and 3 threads give bit-identical results") {
  // On the packed (AVX2 / AVX-512) paths every element of C is summed by one thread over the same
  // K blocks (kc depends on K only), so the split over threads (rows of C, or columns when M is
  // short) cannot change a bit. Eigen (the scalar path) picks its blocking by thread count: there
  // the threads may only change the summation order. Shapes: several A blocks; short M split by
  // columns; several K and N blocks; several column and K chunks, with bias; a plain A packed
  // because its rows alias in cache (lda = 1024).
  const int prev = segml::num_threads();
  std::mt19937 rng(3);
  const int64_t shapes[][3] = {{301, 203, 170}, {7, 900, 300}, {150, 4200, 400}, {30, 1500, 4000},
                               {100, 300, 1024}};  // M, N, K; the last: rows 4 KB apart, packed
  for (Isa isa : isas()) {
    segml::ScopedIsa scoped(isa);
    for (const auto& s : shapes) {
      const int64_t M = s[0], N = s[1], K = s[2];
      const auto A = random_vec(M * K, rng), B = random_vec(K * N, rng), bias = random_vec(N, rng);
      for (int t = 0; t < 4; ++t) {
        const bool ta = t / 2, tb = t % 2;
        std::vector<float> want;
        for (int threads : {1, 2, 3}) {
          segml::set_num_threads(threads);
          std::vector<float> c(M * N);
          gemm_bias<float>(ta, tb, M, N, K, A.data(), ta ? M : K, B.data(), tb ? K : N, bias.data(), c.data(), N);
          if (threads == 1) want = c;
          double worst = 0;
          for (size_t i = 0; i < c.size(); ++i) worst = std::max(worst, double(std::abs(c[i] - want[i])));
          // segml's own kernels (AVX2, AVX-512) split the work so that every thread count gives the same
          // bits; Eigen's product (scalar, and NEON on ARM) splits rows, within rounding.
          const bool own = isa == Isa::avx2 || isa == Isa::avx512;
          const double tol = own ? 0.0 : 4 * (K + 1) * std::numeric_limits<float>::epsilon();
          CHECK_MESSAGE(worst <= tol, std::string(segml::isa_name(isa))
                                          << " M=" << M << " N=" << N << " K=" << K << " ta=" << ta << " tb=" << tb
                                          << ": " << threads << " threads differ from 1 by " << worst);
        }
      }
    }
  }
  segml::set_num_threads(prev);
}

TEST_CASE("gemm: K == 0 and alpha == 0 scale C by beta without reading A or B") {
  for (Isa isa : isas()) {
    segml::ScopedIsa scoped(isa);
    std::vector<float> C = {1, 2, 3, 4, 5, 6};
    gemm<float>(false, false, 2, 3, 0, 1.f, nullptr, 0, nullptr, 3, 2.f, C.data(), 3);
    CHECK(C == std::vector<float>{2, 4, 6, 8, 10, 12});
    const float nan = std::numeric_limits<float>::quiet_NaN();
    std::vector<float> A(6, nan), B(6, nan);
    gemm<float>(false, false, 2, 3, 2, 0.f, A.data(), 2, B.data(), 3, 0.f, C.data(), 3);
    CHECK(C == std::vector<float>(6, 0.f));
  }
}

// gemm_bias writes C; gemm_bias_add (the residual form) reads it too: its first K block's store
// applies beta = 1 and the bias in the same epilogue, a combination gemm itself never reaches.
TEST_CASE("gemm_bias and gemm_bias_add: C (+)= op(A) op(B) + bias on every ISA, bias once however many K blocks") {
  std::mt19937 rng(11);
  const int64_t shapes[][3] = {{1, 1, 1},       {7, 17, 5}, {13, 33, 129}, {65, 31, 300},
                               {200, 300, 150}, {5, 9, 0},  {24, 64, 1000}};
  for (Isa isa : isas()) {
    segml::ScopedIsa scoped(isa);
    for (const auto& s : shapes)
      for (int t = 0; t < 4; ++t) {
        const Case c{t / 2 == 1, t % 2 == 1, s[0], s[1], s[2], 1, 0, t % 2 ? 2 : 0};
        for (bool add : {false, true}) {
          check_case(c, rng, /*use_bias=*/true, /*bias_null=*/false, add);
          check_case(c, rng, /*use_bias=*/true, /*bias_null=*/true, add);
        }
      }
  }
}

// A weight packed once must give exactly the unpacked call's result: same kernel, same K blocks,
// same sums in the same order. Also when packed under one ISA and run under another (the panels
// are then unpacked into a copy of the source), and after the source is gone.
TEST_CASE("PackedB: gemm_bias and gemm_bias_add with B packed in advance equal the unpacked calls bit for bit") {
  std::mt19937 rng(13);
  const int prev = segml::num_threads();
  // (M, K, N): edges of MR and NR, several K blocks (K > KC) with a short last one, columns split
  // over threads or chunks (panels that start past column 0 of a short K block).
  const int64_t shapes[][3] = {{1, 1, 1},       {13, 33, 129},  {100, 1000, 40}, {200, 300, 1100},
                               {257, 64, 256}, {64, 1000, 600}, {30, 700, 1100}};
  for (Isa pack_isa : isas())
    for (Isa run_isa : isas())
      for (const auto& s : shapes)
        for (bool tb : {false, true})
          for (int threads : {1, 2}) {
            const int64_t M = s[0], K = s[1], N = s[2], ldb = (tb ? K : N) + 3, lda = K + 1;
            const auto A = random_vec(M * lda, rng), B = random_vec((tb ? N : K) * ldb, rng);
            const auto bias = random_vec(N, rng), C0 = random_vec(M * N, rng);
            std::optional<PackedB<float>> packed;
            {
              segml::ScopedIsa scoped(pack_isa);
              std::vector<float> source(B);  // PackedB owns its data: the source may go away
              packed.emplace(tb, K, N, source.data(), ldb);
              std::fill(source.begin(), source.end(), std::numeric_limits<float>::quiet_NaN());
            }
            std::vector<float> stored;  // B as unpacked() returns it: contiguous, in B's own layout
            for (int64_t r = 0; r < (tb ? N : K); ++r)
              stored.insert(stored.end(), B.begin() + r * ldb, B.begin() + r * ldb + (tb ? K : N));
            CHECK(packed->unpacked() == stored);
            segml::ScopedIsa scoped(run_isa);
            segml::set_num_threads(threads);
            std::vector<float> want(C0), got(C0), want_add(C0), got_add(C0);
            gemm_bias<float>(false, tb, M, N, K, A.data(), lda, B.data(), ldb, bias.data(), want.data(), N);
            gemm_bias<float>(M, A.data(), lda, *packed, bias.data(), got.data(), N);
            gemm_bias_add<float>(false, tb, M, N, K, A.data(), lda, B.data(), ldb, nullptr, want_add.data(), N);
            gemm_bias_add<float>(M, A.data(), lda, *packed, nullptr, got_add.data(), N);
            INFO("packed for " << segml::isa_name(pack_isa) << ", run on " << segml::isa_name(run_isa) << " M=" << M
                               << " K=" << K << " N=" << N << " trans_b=" << tb << " threads=" << threads);
            CHECK(got == want);
            CHECK(got_add == want_add);
          }
  segml::set_num_threads(prev);
}

TEST_CASE("PackedB: bad sizes throw naming the argument") {
  const std::vector<float> B(12);
  CHECK_THROWS_WITH_AS(PackedB<float>(false, 3, 4, B.data(), 2), doctest::Contains("ldb=2"), segml::Error);
  CHECK_THROWS_WITH_AS(PackedB<float>(true, -1, 4, B.data(), 3), doctest::Contains("sizes must be >= 0"),
                       segml::Error);
  const PackedB<float> packed(false, 3, 4, B.data(), 4);
  std::vector<float> A(6), C(8);
  CHECK_THROWS_WITH_AS(gemm_bias<float>(2, A.data(), 2, packed, nullptr, C.data(), 4), doctest::Contains("lda=2"),
                       segml::Error);
}

TEST_CASE("gemm_batched: each batch entry equals a single gemm, small (threads over batch) and large") {
  std::mt19937 rng(5);
  const int64_t shapes[][4] = {{6, 9, 13, 7}, {2, 130, 70, 90}};  // batch, M, N, K
  for (Isa isa : isas()) {
    segml::ScopedIsa scoped(isa);
    for (const auto& s : shapes)
      for (int t = 0; t < 4; ++t) {
        const int64_t batch = s[0], M = s[1], N = s[2], K = s[3];
        const bool ta = t / 2, tb = t % 2;
        const int64_t lda = (ta ? M : K) + 1, ldb = (tb ? K : N) + 2, ldc = N + 3;
        const int64_t sa = (ta ? K : M) * lda + 5, sb = (tb ? N : K) * ldb, sc = M * ldc + 1;
        const auto A = random_vec(batch * sa, rng), B = random_vec(batch * sb, rng);
        const auto C0 = random_vec(batch * sc, rng);
        std::vector<float> got = C0, want = C0;
        gemm_batched<float>(batch, ta, tb, M, N, K, 1.5f, A.data(), lda, sa, B.data(), ldb, sb, 0.5f, got.data(),
                            ldc, sc);
        for (int64_t b = 0; b < batch; ++b)
          gemm_ref<float>(ta, tb, M, N, K, 1.5f, A.data() + b * sa, lda, B.data() + b * sb, ldb, 0.5f,
                          want.data() + b * sc, ldc);
        double worst = 0;
        for (size_t i = 0; i < got.size(); ++i) worst = std::max(worst, double(std::abs(got[i] - want[i])));
        // Both sides are float: twice the single-result bound.
        CHECK_MESSAGE(worst <= 4 * (1.5 * K + 0.5) * std::numeric_limits<float>::epsilon(),
                      segml::isa_name(isa) << " batch " << batch << " ta=" << ta << " tb=" << tb << ": " << worst);
      }
  }
}

TEST_CASE("gemm<double> (Eigen path) matches gemm_ref<double>") {
  std::mt19937 rng(9);
  const int64_t shapes[][3] = {{1, 1, 1}, {7, 13, 5}, {33, 17, 65}, {129, 64, 31}};
  double worst = 0;
  for (const auto& s : shapes)
    for (int t = 0; t < 4; ++t) {
      const int64_t M = s[0], N = s[1], K = s[2];
      const bool ta = t / 2, tb = t % 2;
      const int64_t lda = (ta ? M : K) + 1, ldb = (tb ? K : N), ldc = N + 2;
      const auto A = to_double(random_vec((ta ? K : M) * lda, rng)), B = to_double(random_vec((tb ? N : K) * ldb, rng));
      const auto C0 = to_double(random_vec(M * ldc, rng));
      std::vector<double> got = C0, want = C0, bias_got(M * ldc, std::nan("")), bias_want(M * ldc);
      gemm<double>(ta, tb, M, N, K, 2.0, A.data(), lda, B.data(), ldb, 0.5, got.data(), ldc);
      gemm_ref<double>(ta, tb, M, N, K, 2.0, A.data(), lda, B.data(), ldb, 0.5, want.data(), ldc);
      const std::vector<double> bias(N, 0.25);
      gemm_bias<double>(ta, tb, M, N, K, A.data(), lda, B.data(), ldb, bias.data(), bias_got.data(), ldc);
      gemm_ref<double>(ta, tb, M, N, K, 1.0, A.data(), lda, B.data(), ldb, 0.0, bias_want.data(), ldc);
      for (int64_t i = 0; i < M; ++i)
        for (int64_t j = 0; j < N; ++j) {
          worst = std::max(worst, std::abs(got[i * ldc + j] - want[i * ldc + j]));
          worst = std::max(worst, std::abs(bias_got[i * ldc + j] - (bias_want[i * ldc + j] + 0.25)));
        }
    }
  // Same bound as for float, with the double epsilon (largest K is 65).
  MESSAGE("gemm<double>: max abs diff vs gemm_ref<double> ", worst);
  CHECK(worst <= 2 * (2.0 * 65 + 0.5 + 1) * std::numeric_limits<double>::epsilon());
}

TEST_CASE("gemm: bad arguments throw segml::Error naming the function and the values") {
  std::vector<float> a(64), b(64), c(64);
  CHECK_THROWS_WITH_AS(gemm<float>(false, false, -1, 2, 2, 1.f, a.data(), 2, b.data(), 2, 0.f, c.data(), 2),
                       doctest::Contains("gemm: sizes must be >= 0, got M=-1, N=2, K=2"), segml::Error);
  CHECK_THROWS_WITH_AS(gemm<float>(false, false, 2, 2, 3, 1.f, a.data(), 2, b.data(), 2, 0.f, c.data(), 2),
                       doctest::Contains("gemm: lda=2 is less than the row width 3 of A"), segml::Error);
  CHECK_THROWS_WITH_AS(gemm<float>(true, false, 4, 2, 3, 1.f, a.data(), 3, b.data(), 2, 0.f, c.data(), 2),
                       doctest::Contains("gemm: lda=3 is less than the row width 4 of A"), segml::Error);
  CHECK_THROWS_WITH_AS(gemm<float>(false, true, 2, 2, 3, 1.f, a.data(), 3, b.data(), 2, 0.f, c.data(), 2),
                       doctest::Contains("gemm: ldb=2 is less than the row width 3 of B"), segml::Error);
  CHECK_THROWS_WITH_AS(gemm<double>(false, false, 2, 5, 3, 1.0, nullptr, 3, nullptr, 5, 0.0, nullptr, 4),
                       doctest::Contains("gemm: ldc=4 is less than the row width N=5 of C"), segml::Error);
  CHECK_THROWS_WITH_AS(gemm_bias<float>(false, false, 2, 2, -3, a.data(), 2, b.data(), 2, nullptr, c.data(), 2),
                       doctest::Contains("gemm_bias: sizes must be >= 0, got M=2, N=2, K=-3"), segml::Error);
  CHECK_THROWS_WITH_AS(gemm_batched<float>(-1, false, false, 2, 2, 2, 1.f, a.data(), 2, 4, b.data(), 2, 4, 0.f,
                                           c.data(), 2, 4),
                       doctest::Contains("gemm_batched: batch must be >= 0, got -1"), segml::Error);
}
