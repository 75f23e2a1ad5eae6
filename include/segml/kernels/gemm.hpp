// segml/kernels/gemm.hpp: C = alpha * op(A) * op(B) + beta * C, row-major, float and double.
//
// STUB INTERFACE (being replaced by the hand-vectorized kernel): currently Eigen for everything.
//   A is (M x K) if !trans_a else stored (K x M); B is (K x N) if !trans_b else stored (N x K).
//   lda/ldb/ldc are row strides in elements. beta == 0 means C is write-only (NaNs in C ignored).
#pragma once

#include <Eigen/Core>

#include <cstdint>

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

template <class T>
inline void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, T alpha, const T* A, int64_t lda,
                 const T* B, int64_t ldb, T beta, T* C, int64_t ldc) {
  using Mat = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  using Stride = Eigen::OuterStride<>;
  if (M == 0 || N == 0) return;
  Eigen::Map<Mat, 0, Stride> c(C, M, N, Stride(ldc));
  if (beta == T(0))
    c.setZero();
  else if (beta != T(1))
    c *= beta;
  if (K == 0) return;
  Eigen::Map<const Mat, 0, Stride> a(A, trans_a ? K : M, trans_a ? M : K, Stride(lda));
  Eigen::Map<const Mat, 0, Stride> b(B, trans_b ? N : K, trans_b ? K : N, Stride(ldb));
  if (!trans_a && !trans_b) c.noalias() += alpha * a * b;
  else if (trans_a && !trans_b) c.noalias() += alpha * a.transpose() * b;
  else if (!trans_a && trans_b) c.noalias() += alpha * a * b.transpose();
  else c.noalias() += alpha * a.transpose() * b.transpose();
}

}  // namespace segml::kernels
