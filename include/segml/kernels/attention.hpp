// segml/kernels/attention.hpp: multi-head scaled-dot-product attention, forward and backward.
//
// This is the core of HF SegFormer's efficient self-attention, after the query/key/value
// projections (the sequence reduction only makes M, the number of keys, differ from N):
//   q (B, N, C), k (B, M, C), v (B, M, C), out (B, N, C); `heads` h, head dim d = C / h.
//   Head i is the contiguous channel slice [i*d, (i+1)*d) of every token.
//   For each batch b and head i:  P = softmax(q_i k_iᵀ / sqrt(d)) over keys (N x M),  out_i = P v_i.
//
// Guarantees:
//  - The GEMMs read the head slices in place (row stride C): no transposed or per-head copies.
//  - Work is split over (batch, head, block of kAttentionBlock query rows). When `probs` is null
//    (inference), each thread only ever holds one kAttentionBlock x M tile of scores, so the
//    N x M matrix is never materialised.
//  - Backward uses the probabilities saved by the forward (the choice PyTorch's eager graph makes),
//    so it costs four GEMMs and one softmax-backward pass, no exp. Its N x M scratch holds dS.
//  - The row softmax is kernels/softmax.hpp's (AVX2 / AVX-512 exp for float), so float results
//    depend on segml::isa() through it and through gemm.
//  - attention_forward_ref / attention_backward_ref are plain loops, the oracle in the tests.
// Not done here: the projections, dropout (SegFormer's rate is 0), masking.
#pragma once

#include <vector>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>

#include "segml/core/parallel.hpp"
#include "segml/core/tensor.hpp"
#include "segml/kernels/gemm.hpp"
#include "segml/kernels/softmax.hpp"

namespace segml::kernels {

// Query rows per task and per score tile.
inline constexpr int64_t kAttentionBlock = 128;

// out = attention(q, k, v). probs (B, h, N, M) receives P when non-null (training), else P is
// computed tile by tile in per-thread scratch.
// q (B, N, C), k (B, M, C), v (B, M, C), out (B, N, C), probs (B, h, N, M) or null
template <class T>
inline void attention_forward(T* out, T* probs, const T* q, const T* k, const T* v, int64_t B, int64_t N, int64_t M,
                              int64_t C, int64_t heads) {
  const int64_t d = C / heads, blocks = (N + kAttentionBlock - 1) / kAttentionBlock;
  const T scale = T(1) / std::sqrt(T(d));
  parallel_for(B * heads * blocks, 1, [&](int64_t begin, int64_t end) {
    // The score tile of this thread: grow-only and kept across calls (threads persist), so the
    // inference path allocates no score tile once warm.
    thread_local std::vector<T> scratch;
    if (!probs && scratch.size() < static_cast<size_t>(kAttentionBlock * M))
      scratch.resize(static_cast<size_t>(kAttentionBlock * M));
    for (int64_t t = begin; t < end; ++t) {
      const int64_t bh = t / blocks, n0 = (t % blocks) * kAttentionBlock, b = bh / heads, h = bh % heads;
      const int64_t rows = std::min(kAttentionBlock, N - n0);
      T* s = probs ? probs + (bh * N + n0) * M : scratch.data();
      const T* qh = q + (b * N + n0) * C + h * d;
      const T* kh = k + b * M * C + h * d;
      const T* vh = v + b * M * C + h * d;
      gemm(false, true, rows, M, d, scale, qh, C, kh, C, T(0), s, M);  // S = q_h k_hᵀ / sqrt(d)
      softmax_forward(s, s, rows, M);                                  // P = softmax(S)
      gemm(false, false, rows, d, M, T(1), s, M, vh, C, T(0), out + (b * N + n0) * C + h * d, C);  // O_h = P v_h
    }
  });
}

// Gradients of attention_forward from the saved probabilities. Each of dq, dk, dv may be null
// (not wanted); the others are overwritten (not accumulated).
//   dV_h = Pᵀ dO_h
//   dP   = dO_h v_hᵀ,   dS = P ∘ (dP − rowsum(P ∘ dP)) / sqrt(d)     (softmax backward + scale)
//   dQ_h = dS k_h,      dK_h = dSᵀ q_h
// dq (B, N, C), dk (B, M, C), dv (B, M, C), dout (B, N, C), q, k, v as forward, probs (B, h, N, M)
template <class T>
inline void attention_backward(T* dq, T* dk, T* dv, const T* dout, const T* q, const T* k, const T* v, const T* probs,
                               int64_t B, int64_t N, int64_t M, int64_t C, int64_t heads) {
  const int64_t d = C / heads, blocks = (N + kAttentionBlock - 1) / kAttentionBlock;
  const T scale = T(1) / std::sqrt(T(d));
  std::shared_ptr<T[]> ds;
  if (dq || dk) {
    ds = allocate_aligned<T>(B * heads * N * M);
    // Phase 1, per query block: dS, then dQ (which needs only this block of dS).
    parallel_for(B * heads * blocks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t t = begin; t < end; ++t) {
        const int64_t bh = t / blocks, n0 = (t % blocks) * kAttentionBlock, b = bh / heads, h = bh % heads;
        const int64_t rows = std::min(kAttentionBlock, N - n0);
        T* s = ds.get() + (bh * N + n0) * M;
        const T* p = probs + (bh * N + n0) * M;
        gemm(false, true, rows, M, d, T(1), dout + (b * N + n0) * C + h * d, C, v + b * M * C + h * d, C, T(0), s, M);
        softmax_backward(s, p, s, rows, M);  // dS * sqrt(d); the 1/sqrt(d) goes into the GEMMs' alpha
        if (dq) gemm(false, false, rows, d, M, scale, s, M, k + b * M * C + h * d, C, T(0), dq + (b * N + n0) * C + h * d, C);
      }
    });
  }
  // Phase 2, per (batch, head): the key-side gradients reduce over all N queries.
  if (dk || dv) {
    parallel_for(B * heads, 1, [&](int64_t begin, int64_t end) {
      for (int64_t bh = begin; bh < end; ++bh) {
        const int64_t b = bh / heads, h = bh % heads, off = b * M * C + h * d;
        if (dk) gemm(true, false, M, d, N, scale, ds.get() + bh * N * M, M, q + b * N * C + h * d, C, T(0), dk + off, C);
        if (dv) gemm(true, false, M, d, N, T(1), probs + bh * N * M, M, dout + b * N * C + h * d, C, T(0), dv + off, C);
      }
    });
  }
}

// ---- scalar reference twins ------------------------------------------------------------------

// Plain-loop attention_forward (same shapes; probs may be null). Scores are divided by sqrt(d) as HF does.
template <class T>
inline void attention_forward_ref(T* out, T* probs, const T* q, const T* k, const T* v, int64_t B, int64_t N, int64_t M,
                                  int64_t C, int64_t heads) {
  const int64_t d = C / heads;
  std::unique_ptr<T[]> p(new T[static_cast<size_t>(M)]);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < heads; ++h)
      for (int64_t n = 0; n < N; ++n) {
        const T* qn = q + (b * N + n) * C + h * d;
        T mx = -INFINITY;
        for (int64_t m = 0; m < M; ++m) {
          const T* km = k + (b * M + m) * C + h * d;
          T s = 0;
          for (int64_t c = 0; c < d; ++c) s += qn[c] * km[c];
          p[m] = s / std::sqrt(T(d));
          mx = std::max(mx, p[m]);
        }
        T sum = 0;
        for (int64_t m = 0; m < M; ++m) sum += (p[m] = std::exp(p[m] - mx));
        for (int64_t m = 0; m < M; ++m) p[m] /= sum;
        if (probs) std::copy(p.get(), p.get() + M, probs + ((b * heads + h) * N + n) * M);
        T* on = out + (b * N + n) * C + h * d;
        for (int64_t c = 0; c < d; ++c) {
          T o = 0;
          for (int64_t m = 0; m < M; ++m) o += p[m] * v[(b * M + m) * C + h * d + c];
          on[c] = o;
        }
      }
}

// Plain-loop attention_backward: all three gradients, overwritten. probs as saved by a forward.
template <class T>
inline void attention_backward_ref(T* dq, T* dk, T* dv, const T* dout, const T* q, const T* k, const T* v,
                                   const T* probs, int64_t B, int64_t N, int64_t M, int64_t C, int64_t heads) {
  const int64_t d = C / heads;
  std::fill(dq, dq + B * N * C, T(0));
  std::fill(dk, dk + B * M * C, T(0));
  std::fill(dv, dv + B * M * C, T(0));
  std::unique_ptr<T[]> ds(new T[static_cast<size_t>(M)]);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < heads; ++h)
      for (int64_t n = 0; n < N; ++n) {
        const T* p = probs + ((b * heads + h) * N + n) * M;
        const T* don = dout + (b * N + n) * C + h * d;
        const T* qn = q + (b * N + n) * C + h * d;
        T dot = 0;
        for (int64_t m = 0; m < M; ++m) {
          T dp = 0;
          for (int64_t c = 0; c < d; ++c) dp += don[c] * v[(b * M + m) * C + h * d + c];
          ds[m] = dp;
          dot += p[m] * dp;
        }
        for (int64_t m = 0; m < M; ++m) {
          const T s = p[m] * (ds[m] - dot) / std::sqrt(T(d));
          const int64_t km = (b * M + m) * C + h * d;
          for (int64_t c = 0; c < d; ++c) {
            dq[(b * N + n) * C + h * d + c] += s * k[km + c];
            dk[km + c] += s * qn[c];
            dv[km + c] += p[m] * don[c];
          }
        }
      }
}

}  // namespace segml::kernels
