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
//   PackedB<T> packed(trans_b, K, N, B, ldb)
//   gemm_bias(M, A, lda, packed, bias, C, ldc), gemm_bias_add(M, A, lda, packed, bias, C, ldc)
//       the same products with op(B) packed once in advance (a layer's weight at inference), for
//       the kernel of the ISA active when it was packed; bit-identical to the unpacked calls.
//       PackedB owns its data: the source need not outlive it.
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
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "segml/core/cpu.hpp"
#include "segml/core/error.hpp"
#include "segml/core/parallel.hpp"
#include "segml/simd/vec.hpp"

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

// Threads for one call: all of segml::num_threads(), fewer for small products (below ~128 K
// multiply-adds a thread is not worth it), one inside an enclosing parallel region.
inline int gemm_threads(int64_t M, int64_t N, int64_t K) {
  if (in_parallel()) return 1;
  const int64_t work = M * N * K / (int64_t{1} << 17);
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(num_threads(), work)));
}

// The portable path: Eigen's blocked product, on one thread (eigen_gemm threads it over rows).
template <class T>
inline void eigen_gemm_serial(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, T alpha, const T* A, int64_t lda,
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

// Eigen's product with the rows of C split over gemm_threads() threads (segml's pool; Eigen's own
// threading needs OpenMP, which segml does not use). Deterministic for a given thread count.
template <class T>
inline void eigen_gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, T alpha, const T* A, int64_t lda,
                       const T* B, int64_t ldb, T beta, const T* bias, T* C, int64_t ldc) {
  const int nt = static_cast<int>(std::min<int64_t>(gemm_threads(M, N, K), M));
  if (nt <= 1) return eigen_gemm_serial(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, bias, C, ldc);
  parallel_run(nt, [&](int t) {
    const int64_t m0 = M * t / nt, m1 = M * (t + 1) / nt;
    if (m1 > m0)
      eigen_gemm_serial(trans_a, trans_b, m1 - m0, N, K, alpha, trans_a ? A + m0 : A + m0 * lda, lda, B, ldb, beta,
                        bias, C + m0 * ldc, ldc);
  });
}

#if defined(__x86_64__)

inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// Grow-only, 64-byte-aligned per-thread scratch for the packed panels (pool threads persist, so
// repeated calls reuse it): slot 0 holds a thread's A block, slot 1 its B block.
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
// The micro-kernel reads either (its kRowPanel parameter), so packing never transposes. Of a plain
// A only a last panel of fewer than MR rows is packed here, to pad it with zero rows: its full
// panels are read in place, or copied by the micro-kernel itself (see PackedGemm::block).
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

// Writes the 8 x 8 block src (rows of stride lds) transposed to dst (rows of stride ldd).
SEGML_TARGET_AVX2 inline void transpose8x8(const float* src, int64_t lds, float* dst, int64_t ldd) {
  __m256 r[8], t[8];
  for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(src + i * lds);
  for (int i = 0; i < 8; i += 2) {  // interleave row pairs: (r0 r1) -> a0 b0 a1 b1 | a4 b4 a5 b5, ...
    t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 8; i += 4) {  // then pairs of pairs: 4 rows' worth of each column in each half
    r[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);
    r[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xEE);
    r[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
    r[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
  }
  for (int i = 0; i < 4; ++i) {  // and the 128-bit halves of rows 0-3 with those of rows 4-7
    _mm256_storeu_ps(dst + i * ldd, _mm256_permute2f128_ps(r[i], r[i + 4], 0x20));
    _mm256_storeu_ps(dst + (i + 4) * ldd, _mm256_permute2f128_ps(r[i], r[i + 4], 0x31));
  }
}

// Packs the (kc x nc) block of op(B) at (k0, j0) into NR-column panels: panel p holds columns
// [p*NR, p*NR + NR) as kc consecutive rows of NR values; columns past nc are zero. A plain B is
// copied NR values per row; a transposed B (stored N x K, as
// nn.Linear's weight) is transposed in 8 x 8 blocks. Only called on CPUs with AVX2.
template <int NR>
SEGML_TARGET_AVX2 inline void pack_b(bool trans_b, const float* B, int64_t ldb, int64_t k0, int64_t j0,
                                                   int64_t kc, int64_t nc, float* dst) {
  if (!trans_b) {  // op(B)(k, j) = B[k * ldb + j]: each k gives NR contiguous values of a panel
    for (int64_t p = 0; p < nc; p += NR, dst += NR * kc) {
      const int64_t cols = std::min<int64_t>(NR, nc - p);
      const float* src = B + k0 * ldb + j0 + p;
      for (int64_t k = 0; k < kc; ++k, src += ldb) {
        float* d = dst + k * NR;
        if (cols == NR)
          std::memcpy(d, src, NR * sizeof(float));
        else
          for (int64_t j = 0; j < NR; ++j) d[j] = j < cols ? src[j] : 0.f;
      }
    }
    return;
  }
  // op(B)(k, j) = B[j * ldb + k]
  for (int64_t p = 0; p < nc; p += NR, dst += NR * kc) {
    const int64_t cols = std::min<int64_t>(NR, nc - p);
    const float* src = B + (j0 + p) * ldb + k0;
    int64_t j = 0;
    for (; j + 8 <= cols; j += 8) {
      int64_t k = 0;
      for (; k + 8 <= kc; k += 8) transpose8x8(src + j * ldb + k, ldb, dst + k * NR + j, NR);
      for (; k < kc; ++k)
        for (int64_t jj = j; jj < j + 8; ++jj) dst[k * NR + jj] = src[jj * ldb + k];
    }
    for (; j < cols; ++j)
      for (int64_t k = 0; k < kc; ++k) dst[k * NR + j] = src[j * ldb + k];
    for (; j < NR; ++j)
      for (int64_t k = 0; k < kc; ++k) dst[k * NR + j] = 0.f;
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

// Micro-kernels. Both compute the MR x NR tile c = alpha * a * b + beta * c + bias from an A panel a
// (MR x kc: k-major, or with kRowPanel MR rows lda apart: packed, lda = kc, or the source rows of a
// plain A in place) and a packed B panel b (kc x NR),
// holding the tile in MR * NR / width vector accumulators (per k step: NR / width loads of b, then
// per row one broadcast of a[i][k] and NR / width FMAs). A C tile that is read (beta != 0) is
// prefetched before the k loop; a write-only one is not (the prefetches only took load slots).
// Full tiles store straight to C, with the epilogue's fields read once into registers: read
// through ep at each store, as the compiler must (a store to c might alias them), they cost as
// much as the stores themselves, a tenth of the tile's time when K = 32. Edge tiles (mr < MR or
// nr < NR) go through a stack buffer. The
// row count R (MR, or less for the last rows of C) is a template parameter, so that a last panel
// of 4 rows costs a third of a full one. The AVX2 and AVX-512 versions are line-for-line the same,
// differing only in register width and tile size.

// AVX2 + FMA: 6 x 16 tile in 12 ymm accumulators (+2 for b, +1 broadcast = 15 of 16 registers).
struct Avx2Kernel {
  static constexpr int MR = 6, NR = 16, W = 8;
  static constexpr int64_t MC = 96, KC = 384, NC = 512;  // A block 144 KB + C tile 192 KB in L2, B panel 24 KB in L1

  template <bool kRowPanel, int R = MR, bool kCopy = false>
  SEGML_TARGET_AVX2 static void run(int64_t kc, const float* a, int64_t lda, const float* b,
                                                      float* c, int64_t ldc, int mr, int nr, const Epilogue& ep,
                                                      float* a_copy) {
    __m256 acc[R][NR / W];
#pragma GCC unroll 16
    for (int i = 0; i < R; ++i)
#pragma GCC unroll 4
      for (int v = 0; v < NR / W; ++v) acc[i][v] = _mm256_setzero_ps();
    if (ep.beta != 0.f)  // C is read only after the k loop: fetch it meanwhile
      for (int i = 0; i < mr; ++i) {
        _mm_prefetch(reinterpret_cast<const char*>(c + i * ldc), _MM_HINT_T0);
        _mm_prefetch(reinterpret_cast<const char*>(c + i * ldc + nr - 1), _MM_HINT_T0);
      }
    const int64_t step_i = kRowPanel ? lda : 1, step_k = kRowPanel ? 1 : MR;
    for (int64_t k = 0; k < kc; ++k, a += step_k, b += NR) {
      if constexpr (kCopy)  // the panel's next W columns, row-major (row stride kc), while they are in L1
        if (k % W == 0)
          for (int i = 0; i < R; ++i) {
            if (k + W <= kc)
              _mm256_storeu_ps(a_copy + i * kc + k, _mm256_loadu_ps(a + i * lda));
            else
              for (int64_t j = 0; j < kc - k; ++j) a_copy[i * kc + k + j] = a[i * lda + j];
          }
      __m256 bv[NR / W];
#pragma GCC unroll 4
      for (int v = 0; v < NR / W; ++v) bv[v] = _mm256_load_ps(b + v * W);
#pragma GCC unroll 16
      for (int i = 0; i < R; ++i) {
        const __m256 ai = _mm256_broadcast_ss(a + i * step_i);
#pragma GCC unroll 4
        for (int v = 0; v < NR / W; ++v) acc[i][v] = _mm256_fmadd_ps(ai, bv[v], acc[i][v]);
      }
    }
    const __m256 va = _mm256_set1_ps(ep.alpha), vb = _mm256_set1_ps(ep.beta);
    if (mr == R && nr == NR) {  // ep read once, into registers (the stores to c could alias it)
      const bool has_beta = ep.beta != 0.f, has_bias = ep.bias != nullptr;
      __m256 bias[NR / W];
#pragma GCC unroll 4
      for (int v = 0; v < NR / W; ++v) bias[v] = has_bias ? _mm256_loadu_ps(ep.bias + v * W) : _mm256_setzero_ps();
#pragma GCC unroll 16
      for (int i = 0; i < R; ++i)
#pragma GCC unroll 4
        for (int v = 0; v < NR / W; ++v) {
          float* out = c + i * ldc + v * W;
          __m256 r = _mm256_mul_ps(va, acc[i][v]);
          if (has_beta) r = _mm256_fmadd_ps(vb, _mm256_loadu_ps(out), r);
          if (has_bias) r = _mm256_add_ps(r, bias[v]);
          _mm256_storeu_ps(out, r);
        }
    } else {
      alignas(64) float buf[R * NR];
#pragma GCC unroll 16
      for (int i = 0; i < R; ++i)
#pragma GCC unroll 4
        for (int v = 0; v < NR / W; ++v) _mm256_store_ps(buf + i * NR + v * W, acc[i][v]);
      store_edge(buf, NR, mr, nr, ep, c, ldc);
    }
  }
};

// AVX-512: 12 x 32 tile in 24 zmm accumulators (+2 for b, +1 broadcast = 27 of 32 registers).
struct Avx512Kernel {
  static constexpr int MR = 12, NR = 32, W = 16;
  static constexpr int64_t MC = 96, KC = 384, NC = 1024;  // A block 144 KB + C tile 384 KB in L2, B panel 48 KB

  template <bool kRowPanel, int R = MR, bool kCopy = false>
  SEGML_TARGET_AVX512 static void run(int64_t kc, const float* a,
                                                                                int64_t lda, const float* b,
                                                                                float* c, int64_t ldc, int mr,
                                                                                int nr, const Epilogue& ep,
                                                                                float* a_copy) {
    __m512 acc[R][NR / W];
#pragma GCC unroll 16
    for (int i = 0; i < R; ++i)
#pragma GCC unroll 4
      for (int v = 0; v < NR / W; ++v) acc[i][v] = _mm512_setzero_ps();
    if (ep.beta != 0.f)  // C is read only after the k loop: fetch it meanwhile
      for (int i = 0; i < mr; ++i) {
        _mm_prefetch(reinterpret_cast<const char*>(c + i * ldc), _MM_HINT_T0);
        _mm_prefetch(reinterpret_cast<const char*>(c + i * ldc + nr - 1), _MM_HINT_T0);
      }
    const int64_t step_i = kRowPanel ? lda : 1, step_k = kRowPanel ? 1 : MR;
    for (int64_t k = 0; k < kc; ++k, a += step_k, b += NR) {
      if constexpr (kCopy)  // the panel's next W columns, row-major (row stride kc), while they are in L1
        if (k % W == 0) {
          const __mmask16 cols = kc - k >= W ? __mmask16(0xFFFF) : __mmask16((1u << (kc - k)) - 1);
#pragma GCC unroll 16
          for (int i = 0; i < R; ++i) _mm512_mask_storeu_ps(a_copy + i * kc + k, cols, _mm512_maskz_loadu_ps(cols, a + i * lda));
        }
      __m512 bv[NR / W];
#pragma GCC unroll 4
      for (int v = 0; v < NR / W; ++v) bv[v] = _mm512_load_ps(b + v * W);
#pragma GCC unroll 16
      for (int i = 0; i < R; ++i) {
        const __m512 ai = _mm512_set1_ps(a[i * step_i]);
#pragma GCC unroll 4
        for (int v = 0; v < NR / W; ++v) acc[i][v] = _mm512_fmadd_ps(ai, bv[v], acc[i][v]);
      }
    }
    const __m512 va = _mm512_set1_ps(ep.alpha), vb = _mm512_set1_ps(ep.beta);
    if (mr == R && nr == NR) {  // ep read once, into registers (the stores to c could alias it)
      const bool has_beta = ep.beta != 0.f, has_bias = ep.bias != nullptr;
      __m512 bias[NR / W];
#pragma GCC unroll 4
      for (int v = 0; v < NR / W; ++v) bias[v] = has_bias ? _mm512_loadu_ps(ep.bias + v * W) : _mm512_setzero_ps();
#pragma GCC unroll 16
      for (int i = 0; i < R; ++i)
#pragma GCC unroll 4
        for (int v = 0; v < NR / W; ++v) {
          float* out = c + i * ldc + v * W;
          __m512 r = _mm512_mul_ps(va, acc[i][v]);
          if (has_beta) r = _mm512_fmadd_ps(vb, _mm512_loadu_ps(out), r);
          if (has_bias) r = _mm512_add_ps(r, bias[v]);
          _mm512_storeu_ps(out, r);
        }
    } else {
      alignas(64) float buf[R * NR];
#pragma GCC unroll 16
      for (int i = 0; i < R; ++i)
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

// The blocks of one thread's M x N x K share of C:
//   kc   K per packed panel (the micro-kernel's k loop; its A and B panels stay in L1),
//   mc   rows per packed A block (in L2),
//   nc   columns per C tile: an mc x nc tile of C stays in L2 while all the K blocks of a chunk
//        accumulate into it, so C makes one round trip to memory per chunk, not one per kc,
//   kcs x ncs  the chunk: the B block packed at once, about kBBlock floats (in L2 or L3), of
//        a depth (kcs, a whole number of kc) near its width to balance the passes over C (one per
//        K chunk) against the repacking of A (one per column chunk).
// kc depends on K only, so every element of C is the same sum in the same order however many
// threads split the work.
struct Blocks {
  int64_t kc, mc, nc, kcs, ncs;
};

inline constexpr int64_t kBBlock = int64_t{1} << 20;  // 4 MB
inline constexpr int64_t kInPlaceA = int64_t{1} << 20;  // 4 MB: the largest plain A always read in place

// Whether more than half of MR rows lda floats apart fall in one L1 set. L1 data caches of current
// x86 cores have 64 sets of 64-byte lines, indexed by address bits 6-11: rows whose addresses agree
// modulo 4 KB (lda a multiple of 1024 floats, as for K = 1024 or 2048) share a set. Read in place,
// such a panel loads MR lines into one set at every 16th k step and evicts the B panel that the
// micro-kernel keeps in L1 (the same rows also crowd a sixteenth of the L2 sets). Its A is packed.
template <int MR>
constexpr bool rows_alias(int64_t lda) {
  int rows_in_set[64] = {}, most = 0;
  for (int64_t r = 0; r < MR; ++r) most = std::max(most, ++rows_in_set[r * lda / 16 % 64]);
  return most > MR / 2;
}

// The K blocking, a function of K alone (see above): blocks of kc, the last one possibly shorter.
template <class Kern>
inline int64_t k_block(int64_t K) {
  return even_block(K, Kern::KC, 1);
}

template <class Kern>
inline Blocks blocks_for(int64_t M, int64_t N, int64_t K) {
  constexpr int64_t NR = Kern::NR, side = 1024;
  Blocks b{};
  b.kc = k_block<Kern>(K);
  b.mc = even_block(M, Kern::MC, Kern::MR);
  // All of N when that leaves the B block a depth of min(K, side); else about side columns, or
  // more when K is short.
  b.ncs = N * std::min(K, side) <= kBBlock ? N : even_block(N, std::max(side, kBBlock / K / NR * NR), NR);
  // As many kc blocks per chunk as the B block holds, spread evenly over the chunks.
  const int64_t k_blocks = (K + b.kc - 1) / b.kc;
  const int64_t per_chunk = std::clamp<int64_t>(kBBlock / (round_up(b.ncs, NR) * b.kc), 1, k_blocks);
  const int64_t chunks = (k_blocks + per_chunk - 1) / per_chunk;
  b.kcs = b.kc * ((k_blocks + chunks - 1) / chunks);
  b.nc = even_block(b.ncs, Kern::NC, NR);
  return b;
}

// The layout of all of op(B) packed in advance (PackedB): K block pc, of depth kcb = min(kc, K - pc),
// at pc * round_up(N, NR), and in it the panel of columns [j, j + NR) (j a multiple of NR) at
// j * kcb, kcb x NR values. The whole takes packed_b_offset<NR>(N, K, 0, 0) floats.
template <int NR>
inline int64_t packed_b_offset(int64_t N, int64_t pc, int64_t kcb, int64_t j) {
  return pc * round_up(N, NR) + j * kcb;
}

// One GEMM call. Each thread computes a rectangle of C with the serial loop nest
//   jcs (ncs columns) > pcs (kcs of K): pack the B block (kcs x ncs, panels of kc x NR)
//   > ic (mc rows) > jc (nc columns: the C tile, kept in L2)
//   > pc (kc of the chunk): the A block (mc x kc; packed, or read in place: see serial)
//   > jr (NR) > ir (MR): micro-kernel.
// This is the GotoBLAS / BLIS nest with the pc loop moved inside the C tile. The first K block
// applies the caller's beta and the bias; later blocks accumulate (beta = 1).
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
  // op(B) packed in advance for this kernel (packed_b_all's layout), or null: pack it here.
  const float* prepacked = nullptr;

  // An A block: rows [ic, ic + mc) of op(A), K range [pc, pc + kc).
  struct ABlock {
    int64_t ic, mc, pc, kc;
  };

  // Fetches slice `part` of `parts` of the stored A behind block a into L2. Spread over the
  // micro-kernel calls of the block before it, this hides the memory latency of the next block's
  // reads (its packing, or the micro-kernel's reads in place): each block touches mc (or kc) short
  // rows, too short for the hardware prefetcher to pick up.
  void prefetch_a(const ABlock& a, int64_t part, int64_t parts) const {
    const int64_t rows = trans_a ? a.kc : a.mc, len = trans_a ? a.mc : a.kc;
    const float* base = trans_a ? A + a.pc * lda + a.ic : A + a.ic * lda + a.pc;
    for (int64_t r = rows * part / parts; r < rows * (part + 1) / parts; ++r) {
      const char* row = reinterpret_cast<const char*>(base + r * lda);
      for (int64_t off = 0; off < len * int64_t{sizeof(float)}; off += 64) _mm_prefetch(row + off, _MM_HINT_T1);
      _mm_prefetch(row + len * sizeof(float) - 1, _MM_HINT_T1);
    }
  }

  // Columns [jc, je) of C times A block a, with the packed B panels of its K block at pb; prefetches
  // the A block `next` (if next.mc > 0) meanwhile. A transposed A is packed at pa (k-major panels).
  // A plain A is read in place, its MR-row panels being the source rows themselves (row stride
  // lda), except a last panel of fewer than MR rows, which is packed (zero-padded) at pa. Unless
  // in_place, the first B panel's micro-kernel calls also copy each panel they read to pa
  // (row-major, row stride kc), and the other B panels read that copy. Panel ir sits at
  // pa + ir * kc either way.
  void block(const ABlock& a, const ABlock& next, int64_t jc, int64_t je, const float* pb, float* pa,
             bool in_place) const {
    // A last panel of mr < MR rows runs the micro-kernel of the next multiple of MR / 3 rows.
    constexpr int R1 = MR / 3, R2 = 2 * MR / 3;
    using Fn = decltype(&Kern::template run<false>);
    static constexpr Fn kernels[2][3] = {{&Kern::template run<false, R1>, &Kern::template run<false, R2>,
                                          &Kern::template run<false>},
                                         {&Kern::template run<true, R1>, &Kern::template run<true, R2>,
                                          &Kern::template run<true>}};
    static constexpr Fn copying_kernel = &Kern::template run<true, MR, true>;
    const Fn* kernel = kernels[trans_a ? 0 : 1];
    const float beta_p = a.pc == 0 ? beta : 1.f;  // the first K block applies beta and the bias
    const float* bias_p = a.pc == 0 ? bias : nullptr;
    const int64_t full = trans_a ? 0 : a.mc / MR * MR;  // rows in full panels of a plain A
    if (trans_a)
      pack_a<MR>(true, A, lda, a.ic, a.pc, a.mc, a.kc, pa);
    else if (full < a.mc)
      pack_a<MR>(false, A, lda, a.ic + full, a.pc, a.mc - full, a.kc, pa + full * a.kc);
    const int64_t calls = (je - jc + NR - 1) / NR * ((a.mc + MR - 1) / MR);  // micro-kernel calls
    for (int64_t jr = jc, q = 0; jr < je; jr += NR) {
      const int nr = static_cast<int>(std::min<int64_t>(NR, je - jr));
      const Epilogue ep{alpha, beta_p, bias_p ? bias_p + jr : nullptr};
      for (int64_t ir = 0; ir < a.mc; ir += MR) {
        if (next.mc > 0) prefetch_a(next, q++, calls);
        const int mr = static_cast<int>(std::min<int64_t>(MR, a.mc - ir));
        const float* bp = pb + (jr - jc) * a.kc;
        float* cp = C + (a.ic + ir) * ldc + jr;
        const float* source = A + (a.ic + ir) * lda + a.pc;  // a full panel of a plain A, in place
        if (ir < full && in_place)
          kernel[2](a.kc, source, lda, bp, cp, ldc, mr, nr, ep, nullptr);
        else if (ir < full && jr == jc)
          copying_kernel(a.kc, source, lda, bp, cp, ldc, mr, nr, ep, pa + ir * a.kc);
        else
          kernel[(mr - 1) / R1](a.kc, pa + ir * a.kc, a.kc, bp, cp, ldc, mr, nr, ep, nullptr);
      }
    }
  }

  // Rows [m0, m1) x columns [n0, n1) of C, on this thread.
  void serial(int64_t m0, int64_t m1, int64_t n0, int64_t n1) const {
    const Blocks blk = blocks_for<Kern>(m1 - m0, n1 - n0, K);
    // A plain A is read in place when it is small enough to stay in cache, or when each A block
    // serves at most two B panels (nothing to spread the cost of a copy over). A large A streams
    // from memory; there a contiguous copy, hot in L2, serves the nc / NR passes of the jr loop
    // better than strided source rows, which the B chunk pushes out of L2 between passes. Rows
    // that fall in one cache set (rows_alias) are always copied.
    const bool in_place = !trans_a && !rows_alias<MR>(lda) && (M * K <= kInPlaceA || blk.nc <= 2 * NR);
    float* pa = scratch<0>(round_up(blk.mc * blk.kc, 16));
    float* pb = prepacked ? nullptr : scratch<1>(blk.kcs * round_up(blk.ncs, NR));
    for (int64_t jcs = n0; jcs < n1; jcs += blk.ncs) {
      const int64_t jce = std::min(n1, jcs + blk.ncs), kc_stride = round_up(jce - jcs, NR) * blk.kc;
      for (int64_t pcs = 0; pcs < K; pcs += blk.kcs) {
        const int64_t pce = std::min(K, pcs + blk.kcs);
        // The panels of K block pc from column jcs on: packed here for this chunk, or in advance.
        const auto packed_b = [&](int64_t pc) -> const float* {
          return prepacked ? prepacked + packed_b_offset<NR>(N, pc, std::min(blk.kc, K - pc), jcs)
                           : pb + (pc - pcs) / blk.kc * kc_stride;
        };
        const auto a_block = [&](int64_t ic, int64_t pc) {
          return ABlock{ic, std::min(blk.mc, m1 - ic), pc, std::min(blk.kc, K - pc)};
        };
        if (!prepacked)
          for (int64_t pc = pcs; pc < pce; pc += blk.kc)
            pack_b<NR>(trans_b, B, ldb, pc, jcs, std::min(blk.kc, K - pc), jce - jcs,
                       pb + (pc - pcs) / blk.kc * kc_stride);
        for (int64_t ic = m0; ic < m1; ic += blk.mc)
          for (int64_t jc = jcs; jc < jce; jc += blk.nc)  // one C tile, all K blocks of the chunk
            for (int64_t pc = pcs; pc < pce; pc += blk.kc) {
              const ABlock a = a_block(ic, pc);
              const ABlock next = pc + blk.kc < pce     ? a_block(ic, pc + blk.kc)
                                  : jc + blk.nc < jce   ? a_block(ic, pcs)
                                  : ic + blk.mc < m1    ? a_block(ic + blk.mc, pcs)
                                                        : ABlock{};
              block(a, next, jc, std::min(jce, jc + blk.nc), packed_b(pc) + (jc - jcs) * a.kc, pa, in_place);
            }
      }
    }
  }

  // Splits C into a pm x pn grid of rectangles, one per thread. Each thread packs its own panels,
  // which keeps them in its own core's L2. Splitting M makes every column of threads pack all of
  // B; splitting N makes every row of threads read all of A (and pack it, when A is transposed).
  // The grid minimises that traffic, pn * M * K * wa + pm * K * N * wb, where an operand that is
  // only read (a plain A, mostly read in place; a B packed in advance) weighs half (1/2) of one
  // that is packed here (read and written, 1).
  void run(int nt) const {
    if (nt > 1) {
      const double wa = trans_a || rows_alias<MR>(lda) ? 1.0 : 0.5, wb = prepacked ? 0.5 : 1.0;
      int pm = nt, pn = 1;
      double best = -1;
      for (int m = 1; m <= nt; ++m) {
        if (nt % m) continue;
        const int n = nt / m;
        if (m > 1 && M < m * MR) continue;
        if (n > 1 && N < n * NR) continue;
        const double cost = wa * n * M * K + wb * m * K * N;
        if (best < 0 || cost < best) best = cost, pm = m, pn = n;
      }
      const int64_t bm = round_up((M + pm - 1) / pm, MR), bn = round_up((N + pn - 1) / pn, NR);
      parallel_run(pm * pn, [&](int t) {
        const int64_t m0 = std::min(M, (t / pn) * bm), n0 = std::min(N, (t % pn) * bn);
        const int64_t m1 = std::min(M, m0 + bm), n1 = std::min(N, n0 + bn);
        if (m1 > m0 && n1 > n0) serial(m0, m1, n0, n1);
      });
      return;
    }
    serial(0, M, 0, N);
  }
};

template <class Kern>
inline void gemm_packed(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
                        int64_t lda, const float* B, int64_t ldb, float beta, const float* bias, float* C,
                        int64_t ldc, const float* prepacked) {
  const PackedGemm<Kern> g{trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, bias, C, ldc, prepacked};
  g.run(gemm_threads(M, N, K));
}

// Packs all of op(B) (K x N) in packed_b_offset's layout: what PackedGemm::serial packs chunk by
// chunk, at once.
template <class Kern>
inline void packed_b_all(bool trans_b, const float* B, int64_t ldb, int64_t K, int64_t N, float* dst) {
  const int64_t kc = k_block<Kern>(K);
  for (int64_t pc = 0; pc < K; pc += kc) {
    const int64_t kcb = std::min(kc, K - pc);
    pack_b<Kern::NR>(trans_b, B, ldb, pc, 0, kcb, N, dst + packed_b_offset<Kern::NR>(N, pc, kcb, 0));
  }
}

// The inverse: B as it was stored (N x K when trans_b, else K x N), contiguous, from the panels.
template <class Kern>
inline void unpacked_b_all(bool trans_b, const float* panels, int64_t K, int64_t N, float* B) {
  constexpr int64_t NR = Kern::NR;
  const int64_t kc = k_block<Kern>(K);
  for (int64_t pc = 0; pc < K; pc += kc) {
    const int64_t kcb = std::min(kc, K - pc);
    for (int64_t j = 0; j < N; ++j) {
      const float* panel = panels + packed_b_offset<NR>(N, pc, kcb, j / NR * NR) + j % NR;
      for (int64_t k = 0; k < kcb; ++k) B[trans_b ? j * K + pc + k : (pc + k) * N + j] = panel[k * NR];
    }
  }
}

#endif  // __x86_64__

// The one dispatch point: checks arguments, handles the degenerate cases, picks the path.
// prepacked: op(B) packed in advance (packed_b_all) for the kernel of segml::isa(), or null.
template <class T>
inline void gemm_dispatch(const char* fn, bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, T alpha,
                          const T* A, int64_t lda, const T* B, int64_t ldb, T beta, const T* bias, T* C,
                          int64_t ldc, const float* prepacked = nullptr) {
  check_args(fn, trans_a, trans_b, M, N, K, lda, ldb, ldc);
  if (M == 0 || N == 0) return;
  if (K == 0 || alpha == T(0)) return scale_c(M, N, beta, bias, C, ldc);
#if defined(__x86_64__)
  if constexpr (std::is_same_v<T, float>) {
    switch (isa()) {
      case Isa::avx512:
        return gemm_packed<Avx512Kernel>(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, bias, C, ldc,
                                         prepacked);
      case Isa::avx2:
        return gemm_packed<Avx2Kernel>(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, bias, C, ldc,
                                       prepacked);
      default: break;
    }
  }
#else
  (void)prepacked;
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

// op(B) (K x N) packed once for many products C = A * op(B) (+ bias): a layer's weight at
// inference. Packing inside every call costs 3-7 % of a product, more when the rows of A arrive
// in chunks that each repack the same weight. The panels are those of the kernel of the ISA active
// at construction. PackedB owns its data (the source may go away): the panels, or, where there is
// no packed kernel (double, the scalar ISA, non-x86), a plain copy of the source. A call under
// another ISA than the one packed for (a ScopedIsa) unpacks a temporary copy of the source and
// runs the usual path on it. Copies share the data.
template <class T>
class PackedB {
 public:
  PackedB() = default;
  PackedB(bool trans_b, int64_t K, int64_t N, const T* B, int64_t ldb) : trans_b_(trans_b), K_(K), N_(N) {
    gemm_detail::check_args("PackedB", false, trans_b, 1, N, K, K, ldb, N);
#if defined(__x86_64__)
    if constexpr (std::is_same_v<T, float>) {
      if (K > 0 && N > 0 && (isa() == Isa::avx512 || isa() == Isa::avx2)) {
        isa_ = isa();
        if (isa_ == Isa::avx512)
          pack<gemm_detail::Avx512Kernel>(B, ldb);
        else
          pack<gemm_detail::Avx2Kernel>(B, ldb);
        return;
      }
    }
#endif
    const int64_t rows = trans_b ? N : K, cols = trans_b ? K : N;  // stored shape
    auto plain = std::make_shared<std::vector<T>>(static_cast<size_t>(rows * cols));
    for (int64_t r = 0; r < rows; ++r) std::copy(B + r * ldb, B + r * ldb + cols, plain->data() + r * cols);
    plain_ = std::move(plain);
  }

  bool trans_b() const { return trans_b_; }
  int64_t K() const { return K_; }
  int64_t N() const { return N_; }

  // C = A * op(B) + beta * C + bias (beta 0 or 1), on the packed panels when they fit the kernel
  // of segml::isa(). fn names the caller in error messages.
  void multiply(const char* fn, int64_t M, const T* A, int64_t lda, T beta, const T* bias, T* C, int64_t ldc) const {
    const int64_t ldb = trans_b_ ? K_ : N_;  // of the stored source and of the plain copies
    if (!panels_)  // a plain copy (or nothing, default-constructed: K = N = 0)
      return gemm_detail::gemm_dispatch<T>(fn, false, trans_b_, M, N_, K_, T(1), A, lda,
                                           plain_ ? plain_->data() : nullptr, ldb, beta, bias, C, ldc);
    if constexpr (std::is_same_v<T, float>)
      if (isa() == isa_)
        return gemm_detail::gemm_dispatch<T>(fn, false, trans_b_, M, N_, K_, T(1), A, lda, nullptr, ldb, beta, bias,
                                             C, ldc, panels_.get());
    const std::vector<T> source = unpacked();
    gemm_detail::gemm_dispatch<T>(fn, false, trans_b_, M, N_, K_, T(1), A, lda, source.data(), ldb, beta, bias, C, ldc);
  }

  // The source as it was stored (N x K when trans_b, else K x N), contiguous.
  std::vector<T> unpacked() const {
    if (!panels_) return plain_ ? *plain_ : std::vector<T>();
    std::vector<T> out(static_cast<size_t>(K_ * N_));
#if defined(__x86_64__)
    if constexpr (std::is_same_v<T, float>) {
      if (isa_ == Isa::avx512)
        gemm_detail::unpacked_b_all<gemm_detail::Avx512Kernel>(trans_b_, panels_.get(), K_, N_, out.data());
      else
        gemm_detail::unpacked_b_all<gemm_detail::Avx2Kernel>(trans_b_, panels_.get(), K_, N_, out.data());
    }
#endif
    return out;
  }

 private:
#if defined(__x86_64__)
  template <class Kern>
  void pack(const float* B, int64_t ldb) {
    const int64_t n = gemm_detail::packed_b_offset<Kern::NR>(N_, K_, 0, 0);
    panels_.reset(static_cast<float*>(::operator new(static_cast<size_t>(n) * sizeof(float), std::align_val_t{64})),
                  [](float* q) { ::operator delete(q, std::align_val_t{64}); });
    gemm_detail::packed_b_all<Kern>(trans_b_, B, ldb, K_, N_, panels_.get());
  }
#endif

  bool trans_b_ = false;
  int64_t K_ = 0, N_ = 0;
  std::shared_ptr<float> panels_;              // packed for the kernel of isa_ (float on x86), or
  std::shared_ptr<const std::vector<T>> plain_;  // the source, copied contiguous
  Isa isa_ = Isa::scalar;
};

// C = A * op(B) + bias with B packed in advance (A (M x K), not transposed; bias may be null).
template <class T>
inline void gemm_bias(int64_t M, const T* A, int64_t lda, const PackedB<T>& B, const T* bias, T* C, int64_t ldc) {
  B.multiply("gemm_bias (packed B)", M, A, lda, T(0), bias, C, ldc);
}

// C += A * op(B) + bias with B packed in advance.
template <class T>
inline void gemm_bias_add(int64_t M, const T* A, int64_t lda, const PackedB<T>& B, const T* bias, T* C,
                          int64_t ldc) {
  B.multiply("gemm_bias_add (packed B)", M, A, lda, T(1), bias, C, ldc);
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
