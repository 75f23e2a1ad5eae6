// segml/kernels/layernorm.hpp: LayerNorm over the last dim (torch.nn.functional.layer_norm).
//
//   forward   mean = sum_j x_j / C,  var = sum_j (x_j - mean)^2 / C  (biased, two-pass),
//             rstd = 1 / sqrt(var + eps),  xhat = (x - mean) * rstd,  y = xhat * weight + bias
//   backward  g = dy * weight,
//             dx = rstd * (g - mean_j(g) - xhat * mean_j(g * xhat)),
//             dweight = sum_rows dy * xhat,  dbias = sum_rows dy
//
// Contract:
//  - Forward saves exactly what backward needs: mean and rstd per row.
//  - The backward writes (does not accumulate into) dx, dweight and dbias.
//  - dweight / dbias are reduced deterministically for a fixed thread count: rows are split into
//    num_threads() fixed chunks, each chunk sums its rows in order (float blocks of 64 rows added
//    into double), and the chunk sums are added in chunk order.
//  - *_ref are the serial scalar oracles (float and double; every sum in double). The dispatching
//    versions write each row once on the simd backends (AVX-512, AVX2, NEON for float; scalar for
//    double and SEGML_ISA=scalar), sums in vectors of T within a row, and run in parallel.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "segml/core/cpu.hpp"
#include "segml/core/parallel.hpp"
#include "segml/simd/dispatch.hpp"

namespace segml::kernels {

// ---- scalar reference twins ----------------------------------------------------------------------
// x, y (rows, C); weight, bias (C); mean, rstd (rows)
template <class T>
inline void layernorm_forward_ref(T* y, T* mean, T* rstd, const T* x, const T* weight, const T* bias, int64_t rows,
                                  int64_t C, T eps) {
  for (int64_t r = 0; r < rows; ++r) {
    const T* xr = x + r * C;
    double s = 0, q = 0;
    for (int64_t j = 0; j < C; ++j) s += xr[j];
    const double m = s / static_cast<double>(C);
    for (int64_t j = 0; j < C; ++j) q += (xr[j] - m) * (xr[j] - m);
    const double rs = 1.0 / std::sqrt(q / static_cast<double>(C) + static_cast<double>(eps));
    for (int64_t j = 0; j < C; ++j) y[r * C + j] = static_cast<T>((xr[j] - m) * rs * weight[j] + bias[j]);
    mean[r] = static_cast<T>(m);
    rstd[r] = static_cast<T>(rs);
  }
}
// dy, x, dx (rows, C); mean, rstd (rows); weight, dweight, dbias (C)
template <class T>
inline void layernorm_backward_ref(T* dx, T* dweight, T* dbias, const T* dy, const T* x, const T* mean, const T* rstd,
                                   const T* weight, int64_t rows, int64_t C) {
  std::vector<double> dw(static_cast<size_t>(C), 0.0), db(static_cast<size_t>(C), 0.0);
  for (int64_t r = 0; r < rows; ++r) {
    const T *xr = x + r * C, *gr = dy + r * C;
    const double m = mean[r], rs = rstd[r];
    double s1 = 0, s2 = 0;
    for (int64_t j = 0; j < C; ++j) {
      const double xhat = (xr[j] - m) * rs, g = static_cast<double>(gr[j]) * weight[j];
      s1 += g;
      s2 += g * xhat;
      dw[static_cast<size_t>(j)] += static_cast<double>(gr[j]) * xhat;
      db[static_cast<size_t>(j)] += gr[j];
    }
    s1 /= static_cast<double>(C);
    s2 /= static_cast<double>(C);
    for (int64_t j = 0; j < C; ++j) {
      const double xhat = (xr[j] - m) * rs, g = static_cast<double>(gr[j]) * weight[j];
      dx[r * C + j] = static_cast<T>(rs * (g - s1 - xhat * s2));
    }
  }
  for (int64_t j = 0; j < C; ++j) {
    dweight[j] = static_cast<T>(dw[static_cast<size_t>(j)]);
    dbias[j] = static_cast<T>(db[static_cast<size_t>(j)]);
  }
}

namespace detail {
// ---- one row, written once on the simd backends (vec.hpp): S = Avx512, Avx2, Neon or Scalar<T> --
// Sums are kept in S's vectors within a row (lanes partial sums, then one horizontal sum).
template <class S, class T>
inline void layernorm_forward_row(S, T* y, T* mean, T* rstd, const T* x, const T* weight, const T* bias, int64_t C,
                                  T eps) {
  using V = typename S::V;
  V vs = S::zero(), vq = S::zero();
  simd::for_lanes<S>(C, [&](int64_t j, const auto& m) { vs = vs + S::load(x + j, m); });
  const T mu = S::hsum(vs) / static_cast<T>(C);
  const V vm = S::set1(mu);
  simd::for_lanes<S>(C, [&](int64_t j, const auto& m) {
    const V d = S::select(m, S::load(x + j, m) - vm, S::zero());  // dead lanes of a tail add 0
    vq = S::fma(d, d, vq);
  });
  const T rs = T(1) / std::sqrt(S::hsum(vq) / static_cast<T>(C) + eps);
  const V vr = S::set1(rs);
  simd::for_lanes<S>(C, [&](int64_t j, const auto& m) {
    const V xhat = (S::load(x + j, m) - vm) * vr;
    S::store(y + j, S::fma(xhat, S::load(weight + j, m), S::load(bias + j, m)), m);
  });
  *mean = mu;
  *rstd = rs;
}

// dx for one row; adds dy * xhat and dy into dw, db.
template <class S, class T>
inline void layernorm_backward_row(S, T* dx, T* dw, T* db, const T* dy, const T* x, T mean, T rstd, const T* weight,
                                   int64_t C) {
  using V = typename S::V;
  const V vm = S::set1(mean), vr = S::set1(rstd);
  V v1 = S::zero(), v2 = S::zero();
  // Masked loads give 0 in the tail's dead lanes, so g = 0 there and the sums are unaffected.
  simd::for_lanes<S>(C, [&](int64_t j, const auto& m) {
    const V gy = S::load(dy + j, m);
    const V xhat = (S::load(x + j, m) - vm) * vr;
    const V g = gy * S::load(weight + j, m);
    v1 = v1 + g;
    v2 = S::fma(g, xhat, v2);
    S::store(dw + j, S::fma(gy, xhat, S::load(dw + j, m)), m);
    S::store(db + j, gy + S::load(db + j, m), m);
  });
  const V s1 = S::set1(S::hsum(v1) / static_cast<T>(C)), s2 = S::set1(S::hsum(v2) / static_cast<T>(C));
  // dx = rstd * (g - s1 - xhat * s2)
  simd::for_lanes<S>(C, [&](int64_t j, const auto& m) {
    const V xhat = (S::load(x + j, m) - vm) * vr;
    const V g = S::load(dy + j, m) * S::load(weight + j, m);
    S::store(dx + j, vr * (g - s1 - xhat * s2), m);
  });
}

inline int64_t layernorm_grain(int64_t C) { return C > 0 ? std::max<int64_t>(1, (int64_t{1} << 13) / C) : 1; }
}  // namespace detail

// ---- dispatching kernels ---------------------------------------------------------------------------
// x, y (rows, C); weight, bias (C); mean, rstd (rows)
template <class T>
inline void layernorm_forward(T* y, T* mean, T* rstd, const T* x, const T* weight, const T* bias, int64_t rows,
                              int64_t C, T eps) {
  simd::parallel_for<T>(rows, detail::layernorm_grain(C), [&](auto s, int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r)
      detail::layernorm_forward_row(s, y + r * C, mean + r, rstd + r, x + r * C, weight, bias, C, eps);
  });
}

// dy, x, dx (rows, C); mean, rstd (rows); weight, dweight, dbias (C)
template <class T>
inline void layernorm_backward(T* dx, T* dweight, T* dbias, const T* dy, const T* x, const T* mean, const T* rstd,
                               const T* weight, int64_t rows, int64_t C) {
  const Isa isa = segml::isa();  // read once: every chunk runs the same backend
  constexpr int64_t kBlock = 64;  // rows summed in T before being added into the double chunk sum
  const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(num_threads(), rows));
  const size_t C2 = static_cast<size_t>(2 * C);
  std::vector<double> part(static_cast<size_t>(chunks) * C2, 0.0);  // per chunk: dweight then dbias
  parallel_for(chunks, 1, [&](int64_t kb, int64_t ke) {
    std::vector<T> blk(C2);
    for (int64_t k = kb; k < ke; ++k) {
      double* acc = part.data() + static_cast<size_t>(k) * C2;
      const int64_t rb = rows * k / chunks, re = rows * (k + 1) / chunks;
      for (int64_t r0 = rb; r0 < re; r0 += kBlock) {
        std::fill(blk.begin(), blk.end(), T(0));
        simd::dispatch_on<T>(isa, [&](auto s) {
          for (int64_t r = r0; r < std::min(re, r0 + kBlock); ++r)
            detail::layernorm_backward_row(s, dx + r * C, blk.data(), blk.data() + C, dy + r * C, x + r * C, mean[r],
                                           rstd[r], weight, C);
        });
        for (size_t j = 0; j < C2; ++j) acc[j] += blk[j];
      }
    }
  });
  for (int64_t j = 0; j < C; ++j) {
    double w = 0, b = 0;
    for (int64_t k = 0; k < chunks; ++k) {
      w += part[static_cast<size_t>(k) * C2 + static_cast<size_t>(j)];
      b += part[static_cast<size_t>(k) * C2 + static_cast<size_t>(C + j)];
    }
    dweight[j] = static_cast<T>(w);
    dbias[j] = static_cast<T>(b);
  }
}

}  // namespace segml::kernels
