// segml/kernels/gemm.hpp: C = alpha * op(A) * op(B) + beta * C, row-major, float and double.
//
// Public API (all row-major; lda/ldb/ldc are row strides in elements):
//   gemm(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc)
//       A is (M x K), or stored (K x M) when trans_a; B is (K x N), or stored (N x K) when trans_b;
//       C is (M x N). beta == 0 means C is write-only (NaNs already in C are ignored).
//   gemm_ref(...)          same signature: the scalar triple loop, the oracle for every other path.
//   gemm_bias(trans_a, trans_b, M, N, K, A, lda, B, ldb, bias, C, ldc)
//       C = op(A) * op(B) + bias, bias (N) added to every row (may be null); C is write-only.
//       For float on AVX2/AVX-512 the bias is fused into the micro-kernel's store.
//   gemm_bias_add(trans_a, trans_b, M, N, K, A, lda, B, ldb, bias, C, ldc)
//       C += op(A) * op(B) + bias: a residual connection in the same store.
//   gemm_batched(batch, trans_a, trans_b, M, N, K, alpha, A, lda, stride_a, B, ldb, stride_b,
//                beta, C, ldc, stride_c)
//       batch independent gemm calls, matrix b at A + b*stride_a (same for B, C). When one GEMM is
//       too small to be worth threads, the batches are spread over the threads instead.
//
// Paths (chosen once per call on segml::isa()):
//   float, avx512 -> packed, cache-blocked GEMM with a 12x32 AVX-512 micro-kernel
//   float, avx2   -> the same driver with a 6x16 AVX2/FMA micro-kernel
//   float, scalar, any non-x86 target, and double -> Eigen's product (NEON-vectorised on ARM)
// See docs/ops/gemm.md for the blocking scheme, packing and threading.
//
// Guarantees: every argument is checked (negative sizes, leading dimensions shorter than a row)
// and a bad one throws segml::Error naming the function and the values, in release builds too.
// Results match gemm_ref to within K * max|a| * max|b| * a few float eps (the summation order
// differs); results are deterministic for a given thread count and ISA.
// Not done: in-place aliasing of C with A or B, column-major inputs, integer types.
#pragma once

#include <Eigen/Core>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <new>
#include <type_traits>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "segml/core/cpu.hpp"
#include "segml/core/error.hpp"
#include "segml/core/parallel.hpp"

namespace segml::kernels {

// Scalar reference twin: the oracle for every other path.
template <class T>
inline void gemm_ref(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, T alpha, const T* A, int64_t lda,
                     const T* B, int64_t ldb, T beta, T* C, int64_t ldc) {
  for (int64_t i = 0; i < M; ++i)
    for (int64_t j = 0; j < N; ++j) {
      T acc = 0;
      for (int64_t k = 0; k < K; ++k) {
        const T a = trans_a ? A[k * lda + i] : A[i * lda + k];
        const T b = trans_b ? B[j * ldb + k] : B[k * ldb + j];
        acc += a * b;
      }
      C[i * ldc + j] = alpha * acc + (beta == T(0) ? T(0) : beta * C[i * ldc + j]);
    }
}

namespace gemm_detail {

inline void check_args(const char* fn, bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, int64_t lda,
                       int64_t ldb, int64_t ldc) {
  SEGML_CHECK(M >= 0 && N >= 0 && K >= 0, fn, ": sizes must be >= 0, got M=", M, ", N=", N, ", K=", K);
  const int64_t wa = trans_a ? M : K, wb = trans_b ? K : N;
  SEGML_CHECK(lda >= wa, fn, ": lda=", lda, " is less than the row width ", wa, " of A (M=", M, ", K=", K,
              ", trans_a=", trans_a, ")");
  SEGML_CHECK(ldb >= wb, fn, ": ldb=", ldb, " is less than the row width ", wb, " of B (K=", K, ", N=", N,
              ", trans_b=", trans_b, ")");
  SEGML_CHECK(ldc >= N, fn, ": ldc=", ldc, " is less than the row width N=", N, " of C");
}

// C = beta * C + bias, for K == 0 or alpha == 0 (A and B are not read).
template <class T>
inline void scale_c(int64_t M, int64_t N, T beta, const T* bias, T* C, int64_t ldc) {
  for (int64_t i = 0; i < M; ++i)
    for (int64_t j = 0; j < N; ++j) {
      T& c = C[i * ldc + j];
      c = (beta == T(0) ? T(0) : beta * c) + (bias ? bias[j] : T(0));
    }
}

// The portable path: Eigen's blocked product (it threads itself with OpenMP when it was built so).
template <class T>
inline void eigen_gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, T alpha, const T* A, int64_t lda,
                       const T* B, int64_t ldb, T beta, const T* bias, T* C, int64_t ldc) {
  using Mat = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  using Stride = Eigen::OuterStride<>;
  Eigen::Map<Mat, 0, Stride> c(C, M, N, Stride(ldc));
  if (beta == T(0))
    c.setZero();
  else if (beta != T(1))
    c *= beta;
  Eigen::Map<const Mat, 0, Stride> a(A, trans_a ? K : M, trans_a ? M : K, Stride(lda));
  Eigen::Map<const Mat, 0, Stride> b(B, trans_b ? N : K, trans_b ? K : N, Stride(ldb));
  if (!trans_a && !trans_b) c.noalias() += alpha * a * b;
  else if (trans_a && !trans_b) c.noalias() += alpha * a.transpose() * b;
  else if (!trans_a && trans_b) c.noalias() += alpha * a * b.transpose();
  else c.noalias() += alpha * a.transpose() * b.transpose();
  if (bias) c.rowwise() += Eigen::Map<const Eigen::Matrix<T, 1, Eigen::Dynamic>>(bias, N);
}

#if defined(__x86_64__)

inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// Grow-only, 64-byte-aligned per-thread scratch for the packed panels (OpenMP threads persist, so
// repeated calls reuse it): slot 0 holds a thread's A block, slot 1 the B block it shares.
template <int Slot>
inline float* scratch(int64_t n) {
  struct Free {
    void operator()(float* p) const { ::operator delete(p, std::align_val_t{64}); }
  };
  thread_local std::unique_ptr<float, Free> buf;
  thread_local int64_t cap = 0;
  if (cap < n) {
    buf.reset(static_cast<float*>(::operator new(static_cast<size_t>(n) * sizeof(float), std::align_val_t{64})));
    cap = n;
  }
  return buf.get();
}

// Packs the (mc x kc) block of op(A) at (i0, k0) into MR-row panels of MR * kc values (rows past mc
// are zero), in whichever order is a plain copy of the source:
//   trans_a (A stored K x M, contiguous in i): k-major, panel[k * MR + i]
//   plain   (A stored M x K, contiguous in k): row-major, panel[i * kc + k]
// The micro-kernel reads either (its kRowPanel parameter), so packing never transposes.
template <int MR>
inline void pack_a(bool trans_a, const float* A, int64_t lda, int64_t i0, int64_t k0, int64_t mc, int64_t kc,
                   float* dst) {
  if (trans_a) {  // walk each stored row once (mc contiguous values), dealing it out to the panels
    for (int64_t k = 0; k < kc; ++k) {
      const float* src = A + (k0 + k) * lda + i0;
      float* d = dst + k * MR;
      int64_t p = 0;
      for (; p + MR <= mc; p += MR, d += MR * kc)
        for (int i = 0; i < MR; ++i) d[i] = src[p + i];
      if (p < mc)
        for (int i = 0; i < MR; ++i) d[i] = p + i < mc ? src[p + i] : 0.f;
    }
    return;
  }
  for (int64_t p = 0; p < mc; p += MR, dst += MR * kc) {
    const int64_t rows = std::min<int64_t>(MR, mc - p);
    for (int64_t i = 0; i < rows; ++i) std::memcpy(dst + i * kc, A + (i0 + p + i) * lda + k0, kc * sizeof(float));
    std::fill(dst + rows * kc, dst + MR * kc, 0.f);
  }
}

// Packs the (kc x nc) block of op(B) at (k0, j0) into NR-column panels: panel p holds columns
// [p*NR, p*NR + NR) as kc consecutive rows of NR values; columns past nc are zero.
template <int NR>
inline void pack_b(bool trans_b, const float* B, int64_t ldb, int64_t k0, int64_t j0, int64_t kc, int64_t nc,
                   float* dst) {
  for (int64_t p = 0; p < nc; p += NR, dst += NR * kc) {
    const int cols = static_cast<int>(std::min<int64_t>(NR, nc - p));
    if (!trans_b) {  // op(B)(k, j) = B[k * ldb + j]: each k gives NR contiguous values
      const float* src = B + k0 * ldb + j0 + p;
      for (int64_t k = 0; k < kc; ++k, src += ldb) {
        float* d = dst + k * NR;
        if (cols == NR)
          std::memcpy(d, src, NR * sizeof(float));
        else {
          for (int j = 0; j < cols; ++j) d[j] = src[j];
          for (int j = cols; j < NR; ++j) d[j] = 0.f;
        }
      }
    } else {  // op(B)(k, j) = B[j * ldb + k]: read each stored row once, scattering it down column j
      for (int j = 0; j < cols; ++j) {
        const float* src = B + (j0 + p + j) * ldb + k0;
        for (int64_t k = 0; k < kc; ++k) dst[k * NR + j] = src[k];
      }
      for (int j = cols; j < NR; ++j)
        for (int64_t k = 0; k < kc; ++k) dst[k * NR + j] = 0.f;
    }
  }
}

// How a micro-kernel writes its tile: c = alpha * acc + beta * c + bias (bias (NR) may be null).
// Passed by reference so that none of it occupies a register during the k loop.
struct Epilogue {
  float alpha, beta;
  const float* bias;
};

// Writes an (mr x nr) corner of a tile held in a buffer with rows of nr_full values.
inline void store_edge(const float* acc, int nr_full, int mr, int nr, const Epilogue& ep, float* c, int64_t ldc) {
  for (int i = 0; i < mr; ++i)
    for (int j = 0; j < nr; ++j) {
      float& out = c[i * ldc + j];
      out = ep.alpha * acc[i * nr_full + j] + (ep.beta == 0.f ? 0.f : ep.beta * out) + (ep.bias ? ep.bias[j] : 0.f);
    }
}

// Micro-kernels. Both compute the MR x NR tile c = alpha * a * b + beta * c + bias from a packed A
// panel a (MR x kc, k-major or row-major: kRowPanel, see pack_a) and a packed B panel b (kc x NR),
// holding the tile in MR * NR / width vector accumulators (per k step: NR / width loads of b, then
// per row one broadcast of a[i][k] and NR / width FMAs). The C tile is prefetched before the k loop.
// Full tiles store straight to C; edge tiles (mr < MR or nr < NR) go through a stack buffer. The
// AVX2 and AVX-512 versions are line-for-line the same, differing only in register width and tile
// size.

// AVX2 + FMA: 6 x 16 tile in 12 ymm accumulators (+2 for b, +1 broadcast = 15 of 16 registers).
struct Avx2Kernel {
  static constexpr int MR = 6, NR = 16, W = 8;
  static constexpr int64_t MC = 144, KC = 256, NC = 4080;  // A block 144 KB in L2, B panel 16 KB in L1

  template <bool kRowPanel>
  __attribute__((target("avx2,fma"))) static void run(int64_t kc, const float* a, const float* b, float* c,
                                                      int64_t ldc, int mr, int nr, const Epilogue& ep) {
    __m256 acc[MR][NR / W];
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
      for (int v = 0; v < NR / W; ++v) acc[i][v] = _mm256_setzero_ps();
    for (int i = 0; i < mr; ++i) {  // C is needed only after the k loop: fetch it meanwhile
      _mm_prefetch(reinterpret_cast<const char*>(c + i * ldc), _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(c + i * ldc + nr - 1), _MM_HINT_T0);
    }
    const int64_t step_i = kRowPanel ? kc : 1, step_k = kRowPanel ? 1 : MR;
    for (int64_t k = 0; k < kc; ++k, a += step_k, b += NR) {
      __m256 bv[NR / W];
#pragma GCC unroll 4
      for (int v = 0; v < NR / W; ++v) bv[v] = _mm256_load_ps(b + v * W);
#pragma GCC unroll 16
      for (int i = 0; i < MR; ++i) {
        const __m256 ai = _mm256_broadcast_ss(a + i * step_i);
#pragma GCC unroll 4
        for (int v = 0; v < NR / W; ++v) acc[i][v] = _mm256_fmadd_ps(ai, bv[v], acc[i][v]);
      }
    }
    const __m256 va = _mm256_set1_ps(ep.alpha), vb = _mm256_set1_ps(ep.beta);
    if (mr == MR && nr == NR) {
#pragma GCC unroll 16
      for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
        for (int v = 0; v < NR / W; ++v) {
          float* out = c + i * ldc + v * W;
          __m256 r = _mm256_mul_ps(va, acc[i][v]);
          if (ep.beta != 0.f) r = _mm256_fmadd_ps(vb, _mm256_loadu_ps(out), r);
          if (ep.bias) r = _mm256_add_ps(r, _mm256_loadu_ps(ep.bias + v * W));
          _mm256_storeu_ps(out, r);
        }
    } else {
      alignas(64) float buf[MR * NR];
#pragma GCC unroll 16
      for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
        for (int v = 0; v < NR / W; ++v) _mm256_store_ps(buf + i * NR + v * W, acc[i][v]);
      store_edge(buf, NR, mr, nr, ep, c, ldc);
    }
  }
};

// AVX-512: 12 x 32 tile in 24 zmm accumulators (+2 for b, +1 broadcast = 27 of 32 registers).
struct Avx512Kernel {
  static constexpr int MR = 12, NR = 32, W = 16;
  static constexpr int64_t MC = 144, KC = 192, NC = 4064;  // A block 108 KB in L2, B panel 24 KB in L1

  template <bool kRowPanel>
  __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl"))) static void run(int64_t kc, const float* a,
                                                                                const float* b, float* c,
                                                                                int64_t ldc, int mr, int nr,
                                                                                const Epilogue& ep) {
    __m512 acc[MR][NR / W];
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
      for (int v = 0; v < NR / W; ++v) acc[i][v] = _mm512_setzero_ps();
    for (int i = 0; i < mr; ++i) {  // C is needed only after the k loop: fetch it meanwhile
      _mm_prefetch(reinterpret_cast<const char*>(c + i * ldc), _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(c + i * ldc + nr - 1), _MM_HINT_T0);
    }
    const int64_t step_i = kRowPanel ? kc : 1, step_k = kRowPanel ? 1 : MR;
    for (int64_t k = 0; k < kc; ++k, a += step_k, b += NR) {
      __m512 bv[NR / W];
#pragma GCC unroll 4
      for (int v = 0; v < NR / W; ++v) bv[v] = _mm512_load_ps(b + v * W);
#pragma GCC unroll 16
      for (int i = 0; i < MR; ++i) {
        const __m512 ai = _mm512_set1_ps(a[i * step_i]);
#pragma GCC unroll 4
        for (int v = 0; v < NR / W; ++v) acc[i][v] = _mm512_fmadd_ps(ai, bv[v], acc[i][v]);
      }
    }
    const __m512 va = _mm512_set1_ps(ep.alpha), vb = _mm512_set1_ps(ep.beta);
    if (mr == MR && nr == NR) {
#pragma GCC unroll 16
      for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
        for (int v = 0; v < NR / W; ++v) {
          float* out = c + i * ldc + v * W;
          __m512 r = _mm512_mul_ps(va, acc[i][v]);
          if (ep.beta != 0.f) r = _mm512_fmadd_ps(vb, _mm512_loadu_ps(out), r);
          if (ep.bias) r = _mm512_add_ps(r, _mm512_loadu_ps(ep.bias + v * W));
          _mm512_storeu_ps(out, r);
        }
    } else {
      alignas(64) float buf[MR * NR];
#pragma GCC unroll 16
      for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
        for (int v = 0; v < NR / W; ++v) _mm512_store_ps(buf + i * NR + v * W, acc[i][v]);
      store_edge(buf, NR, mr, nr, ep, c, ldc);
    }
  }
};

// Splits n into the fewest blocks of at most `block`, all of (nearly) equal size, rounded up to `unit`.
inline int64_t even_block(int64_t n, int64_t block, int64_t unit) {
  const int64_t count = (n + block - 1) / block;
  return std::min(block, round_up((n + count - 1) / count, unit));
}

// The blocks of one call. They depend on M, N and K only, never on the thread count, so every
// element of C is the same sum in the same order however the work is split.
struct Blocks {
  int64_t kc, mc, nc;
};

template <class Kern>
inline Blocks blocks_for(int64_t M, int64_t N, int64_t K) {
  return {even_block(K, Kern::KC, 1), even_block(M, Kern::MC, Kern::MR), even_block(N, Kern::NC, Kern::NR)};
}

// One GEMM call as the GotoBLAS / BLIS loop nest:
//   jc (nc columns of C) > pc (kc of K: pack the B block, kc x nc, once, shared by every thread)
//   > ic (mc rows: pack an A block, mc x kc, per thread, into its L2) > jr (NR) > ir (MR): micro-kernel.
// Threads first pack the B block's panels between them, then take the work units of the ic loop
// (an A block times the B block, or a range of its column panels when M has too few blocks to go
// round) from a dynamic schedule, so a thread that loses its core for a while does not hold up the
// others. Each C tile is computed whole by one thread, so the result does not depend on the split.
template <class Kern>
struct PackedGemm {
  static constexpr int MR = Kern::MR, NR = Kern::NR;
  bool trans_a, trans_b;
  int64_t M, N, K;
  float alpha;
  const float* A;
  int64_t lda;
  const float* B;
  int64_t ldb;
  float beta;
  const float* bias;
  float* C;
  int64_t ldc;
  Blocks blk;

  // The K-block loop state that every work unit of one (jc, pc) step shares.
  struct Step {
    int64_t jc, nc, pc, kc;
    float* pb;  // the packed B block (written by pack_b_panels, then read by every unit)
  };

  // Packs the B panels [p0, p1) (NR columns each) of the block of step s into s.pb.
  void pack_b_panels(const Step& s, int64_t p0, int64_t p1) const {
    const int64_t j0 = p0 * NR, j1 = std::min(s.nc, p1 * NR);
    if (j1 > j0) pack_b<NR>(trans_b, B, ldb, s.pc, s.jc + j0, s.kc, j1 - j0, s.pb + j0 * s.kc);
  }

  // Work unit u of step s: A block u / parts (packed into pa unless pa already holds it, per
  // *packed) times column-panel range u % parts of the B block.
  void unit(const Step& s, int64_t u, int64_t parts, float* pa, int64_t* packed) const {
    const int64_t ib = u / parts, part = u % parts;
    const int64_t ic = ib * blk.mc, mc = std::min(blk.mc, M - ic);
    if (*packed != ib) pack_a<MR>(trans_a, A, lda, ic, s.pc, mc, s.kc, pa), *packed = ib;
    const int64_t panels = (s.nc + NR - 1) / NR;
    const int64_t j0 = panels * part / parts * NR, j1 = std::min(s.nc, panels * (part + 1) / parts * NR);
    const float beta_p = s.pc == 0 ? beta : 1.f;  // the first K block applies beta and the bias
    const float* bias_p = s.pc == 0 && bias ? bias + s.jc : nullptr;
    const auto kernel = trans_a ? &Kern::template run<false> : &Kern::template run<true>;
    for (int64_t jr = j0; jr < j1; jr += NR) {
      const int nr = static_cast<int>(std::min<int64_t>(NR, j1 - jr));
      const Epilogue ep{alpha, beta_p, bias_p ? bias_p + jr : nullptr};
      for (int64_t ir = 0; ir < mc; ir += MR) {
        const int mr = static_cast<int>(std::min<int64_t>(MR, mc - ir));
        kernel(s.kc, pa + ir * s.kc, s.pb + jr * s.kc, C + (ic + ir) * ldc + s.jc + jr, ldc, mr, nr, ep);
      }
    }
  }

  // Calls step(s) for every (jc, pc) block in order.
  template <class F>
  void for_each_step(float* pb, F&& step) const {
    for (int64_t jc = 0; jc < N; jc += blk.nc)
      for (int64_t pc = 0; pc < K; pc += blk.kc) step(Step{jc, std::min(blk.nc, N - jc), pc, std::min(blk.kc, K - pc), pb});
  }

  void run(int nt) const {
    const int64_t a_size = round_up(blk.mc * blk.kc, 16), b_panels = (blk.nc + NR - 1) / NR;
    float* pb = scratch<1>(b_panels * NR * blk.kc);  // the calling thread's buffer, read by all
    const int64_t n_ic = (M + blk.mc - 1) / blk.mc;
    if (nt == 1) {
      float* pa = scratch<0>(a_size);
      for_each_step(pb, [&](const Step& s) {
        pack_b_panels(s, 0, b_panels);
        int64_t packed = -1;
        for (int64_t u = 0; u < n_ic; ++u) unit(s, u, 1, pa, &packed);
      });
      return;
    }
    // At least two units per thread, so the dynamic schedule can even out a slow thread.
    const int64_t parts = std::clamp<int64_t>((2 * nt + n_ic - 1) / n_ic, 1, b_panels);
#if defined(_OPENMP)
#pragma omp parallel num_threads(nt)
    {
      float* pa = scratch<0>(a_size);
      for_each_step(pb, [&](const Step& s) {
        const int64_t panels = (s.nc + NR - 1) / NR;
#pragma omp for schedule(static)
        for (int64_t p = 0; p < panels; ++p) pack_b_panels(s, p, p + 1);
        int64_t packed = -1;  // implicit barrier above: the B block is complete
#pragma omp for schedule(dynamic, 1)
        for (int64_t u = 0; u < n_ic * parts; ++u) unit(s, u, parts, pa, &packed);
      });  // implicit barrier: nobody still reads the B block when the next step repacks it
    }
#else
    (void)parts;
#endif
  }
};

// Threads for one call: all of segml::num_threads(), fewer for small products (below ~128 K
// multiply-adds a thread is not worth it), one inside an enclosing parallel region.
inline int gemm_threads(int64_t M, int64_t N, int64_t K) {
#if defined(_OPENMP)
  if (omp_in_parallel()) return 1;
  const int64_t work = M * N * K / (int64_t{1} << 17);
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(num_threads(), work)));
#else
  (void)M, (void)N, (void)K;
  return 1;
#endif
}

template <class Kern>
inline void gemm_packed(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
                        int64_t lda, const float* B, int64_t ldb, float beta, const float* bias, float* C,
                        int64_t ldc) {
  const PackedGemm<Kern> g{trans_a, trans_b, M,    N,    K, alpha, A, lda, B, ldb, beta, bias, C, ldc,
                           blocks_for<Kern>(M, N, K)};
  g.run(gemm_threads(M, N, K));
}

#endif  // __x86_64__

// The one dispatch point: checks arguments, handles the degenerate cases, picks the path.
template <class T>
inline void gemm_dispatch(const char* fn, bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, T alpha,
                          const T* A, int64_t lda, const T* B, int64_t ldb, T beta, const T* bias, T* C,
                          int64_t ldc) {
  check_args(fn, trans_a, trans_b, M, N, K, lda, ldb, ldc);
  if (M == 0 || N == 0) return;
  if (K == 0 || alpha == T(0)) return scale_c(M, N, beta, bias, C, ldc);
#if defined(__x86_64__)
  if constexpr (std::is_same_v<T, float>) {
    switch (isa()) {
      case Isa::avx512:
        return gemm_packed<Avx512Kernel>(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, bias, C, ldc);
      case Isa::avx2:
        return gemm_packed<Avx2Kernel>(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, bias, C, ldc);
      default: break;
    }
  }
#endif
  eigen_gemm(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, bias, C, ldc);
}

}  // namespace gemm_detail

// C = alpha * op(A) * op(B) + beta * C.  op(A) (M x K), op(B) (K x N), C (M x N)
template <class T>
inline void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, T alpha, const T* A, int64_t lda,
                 const T* B, int64_t ldb, T beta, T* C, int64_t ldc) {
  gemm_detail::gemm_dispatch<T>("gemm", trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, nullptr, C, ldc);
}

// C = op(A) * op(B) + bias (bias (N) per column, may be null); C is write-only.
template <class T>
inline void gemm_bias(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, const T* A, int64_t lda,
                      const T* B, int64_t ldb, const T* bias, T* C, int64_t ldc) {
  gemm_detail::gemm_dispatch<T>("gemm_bias", trans_a, trans_b, M, N, K, T(1), A, lda, B, ldb, T(0), bias, C, ldc);
}

// C += op(A) * op(B) + bias (bias (N) per column, may be null): a residual connection fused into
// the GEMM's store, so the sum never makes a separate pass over C.
template <class T>
inline void gemm_bias_add(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, const T* A, int64_t lda,
                          const T* B, int64_t ldb, const T* bias, T* C, int64_t ldc) {
  gemm_detail::gemm_dispatch<T>("gemm_bias_add", trans_a, trans_b, M, N, K, T(1), A, lda, B, ldb, T(1), bias, C, ldc);
}

// For b in [0, batch): gemm on A + b*stride_a, B + b*stride_b, C + b*stride_c.
template <class T>
inline void gemm_batched(int64_t batch, bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, T alpha,
                         const T* A, int64_t lda, int64_t stride_a, const T* B, int64_t ldb, int64_t stride_b, T beta,
                         T* C, int64_t ldc, int64_t stride_c) {
  SEGML_CHECK(batch >= 0, "gemm_batched: batch must be >= 0, got ", batch);
  gemm_detail::check_args("gemm_batched", trans_a, trans_b, M, N, K, lda, ldb, ldc);
  auto one = [&](int64_t b) {
    gemm(trans_a, trans_b, M, N, K, alpha, A + b * stride_a, lda, B + b * stride_b, ldb, beta, C + b * stride_c, ldc);
  };
  // Small GEMMs split poorly over threads: spread the batch entries instead (each then runs serially).
  const bool small = M * N * K < (int64_t{1} << 21);
  if (small && batch > 1)
    parallel_for(batch, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) one(b);
    });
  else
    for (int64_t b = 0; b < batch; ++b) one(b);
}

}  // namespace segml::kernels
