// segml/kernels/batchnorm.hpp: BatchNorm2d over NCHW buffers (torch.nn.functional.batch_norm).
//
// With M = N * H * W values per channel c, mean / rstd the statistics used for normalising
// (the batch's in training, the running ones in eval) and xhat = (x - mean) * rstd:
//   forward   y = xhat * weight + bias
//   backward  dbias = sum dy,  dweight = sum dy * xhat                        (both modes)
//             eval (fixed stats):   dx = weight * rstd * dy
//             train (batch stats):  dx = weight * rstd * (dy - dbias / M - xhat * dweight / M)
//   (the batch mean and variance depend on x, which adds the last two terms; see docs/ops/batchnorm.md)
//
// Contract:
//  - batchnorm_stats gives the batch mean and the BIASED variance (two-pass). Updating running
//    statistics (momentum, unbiased variance) is the op layer's job (ops/norm.hpp).
//  - The backward writes (does not accumulate into) dx, dweight and dbias.
//  - Channels are reduced in a fixed order whatever the thread count (parallel over channels only),
//    so results are deterministic. Per-channel sums add float segment (H*W) sums into double.
//  - *_ref are serial scalar oracles (float and double; sums in double); the dispatching versions
//    write each plane's loop once on the simd backends (AVX-512, AVX2, NEON for float; scalar for
//    double) and run channels (or planes) in parallel.
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
// x (N, C, HW); mean, var (C)
template <class T>
inline void batchnorm_stats_ref(T* mean, T* var, const T* x, int64_t N, int64_t C, int64_t HW) {
  const double M = static_cast<double>(N * HW);
  for (int64_t c = 0; c < C; ++c) {
    double s = 0, q = 0;
    for (int64_t n = 0; n < N; ++n)
      for (int64_t i = 0; i < HW; ++i) s += x[(n * C + c) * HW + i];
    const double m = s / M;
    for (int64_t n = 0; n < N; ++n)
      for (int64_t i = 0; i < HW; ++i) q += (x[(n * C + c) * HW + i] - m) * (x[(n * C + c) * HW + i] - m);
    mean[c] = static_cast<T>(m);
    var[c] = static_cast<T>(q / M);
  }
}
// x, y (N, C, HW); mean, rstd, weight, bias (C)
template <class T>
inline void batchnorm_forward_ref(T* y, const T* x, const T* mean, const T* rstd, const T* weight, const T* bias,
                                  int64_t N, int64_t C, int64_t HW) {
  for (int64_t n = 0; n < N; ++n)
    for (int64_t c = 0; c < C; ++c)
      for (int64_t i = 0; i < HW; ++i) {
        const int64_t k = (n * C + c) * HW + i;
        y[k] = static_cast<T>((static_cast<double>(x[k]) - mean[c]) * rstd[c] * weight[c] + bias[c]);
      }
}
// dy, x, dx (N, C, HW); mean, rstd, weight, dweight, dbias (C). batch_stats: mean / rstd were
// computed from this x (training) rather than being constants (eval).
template <class T>
inline void batchnorm_backward_ref(T* dx, T* dweight, T* dbias, const T* dy, const T* x, const T* mean, const T* rstd,
                                   const T* weight, int64_t N, int64_t C, int64_t HW, bool batch_stats) {
  const double M = static_cast<double>(N * HW);
  for (int64_t c = 0; c < C; ++c) {
    double sdy = 0, sdyx = 0;
    for (int64_t n = 0; n < N; ++n)
      for (int64_t i = 0; i < HW; ++i) {
        const int64_t k = (n * C + c) * HW + i;
        sdy += dy[k];
        sdyx += static_cast<double>(dy[k]) * (static_cast<double>(x[k]) - mean[c]);
      }
    const double rs = rstd[c], kdy = static_cast<double>(weight[c]) * rs;
    dbias[c] = static_cast<T>(sdy);
    dweight[c] = static_cast<T>(sdyx * rs);
    for (int64_t n = 0; n < N; ++n)
      for (int64_t i = 0; i < HW; ++i) {
        const int64_t k = (n * C + c) * HW + i;
        double g = dy[k];
        if (batch_stats) g -= sdy / M + (static_cast<double>(x[k]) - mean[c]) * rs * rs * sdyx / M;
        dx[k] = static_cast<T>(kdy * g);
      }
  }
}

namespace detail {
// ---- segment primitives over one contiguous H*W plane, written once on the simd backends ----------
// sum(p), sum((p - m)^2), sum(dy * (x - m)), out = (x - m) * a + c, out = k * dy + b * (x - m) + c.
// Sums are kept in S's vectors (T lanes) over the plane.
template <class S, class T>
inline T bn_sum(S, const T* p, int64_t n) {
  typename S::V acc = S::zero();
  simd::for_lanes<S>(n, [&](int64_t i, const auto& m) { acc = acc + S::load(p + i, m); });
  return S::hsum(acc);
}
template <class S, class T>
inline T bn_sqdev(S, const T* p, int64_t n, T mean) {
  const typename S::V vm = S::set1(mean);
  typename S::V acc = S::zero();
  simd::for_lanes<S>(n, [&](int64_t i, const auto& m) {
    const typename S::V d = S::select(m, S::load(p + i, m) - vm, S::zero());  // dead lanes add 0
    acc = S::fma(d, d, acc);
  });
  return S::hsum(acc);
}
template <class S, class T>
inline T bn_dotdev(S, const T* dy, const T* x, int64_t n, T mean) {
  const typename S::V vm = S::set1(mean);
  typename S::V acc = S::zero();
  // Dead lanes of a tail: dy = 0.
  simd::for_lanes<S>(n, [&](int64_t i, const auto& m) { acc = S::fma(S::load(dy + i, m), S::load(x + i, m) - vm, acc); });
  return S::hsum(acc);
}
template <class S, class T>
inline void bn_affine(S, T* out, const T* x, int64_t n, T mean, T a, T c) {
  const typename S::V vm = S::set1(mean), va = S::set1(a), vc = S::set1(c);
  simd::for_lanes<S>(n, [&](int64_t i, const auto& m) { S::store(out + i, S::fma(S::load(x + i, m) - vm, va, vc), m); });
}
template <class S, class T>
inline void bn_affine2(S, T* out, const T* dy, const T* x, int64_t n, T k, T mean, T b, T c) {
  const typename S::V vk = S::set1(k), vm = S::set1(mean), vb = S::set1(b), vc = S::set1(c);
  simd::for_lanes<S>(n, [&](int64_t i, const auto& m) {
    const typename S::V d = S::load(x + i, m) - vm;
    if constexpr (S::lanes == 1)  // scalar: (k dy + b d) + c, the association of the twin's loop
      S::store(out + i, S::fma(vb, d, vk * S::load(dy + i, m)) + vc, m);
    else  // vectors: two FMAs
      S::store(out + i, S::fma(vk, S::load(dy + i, m), S::fma(vb, d, vc)), m);
  });
}
}  // namespace detail

// ---- dispatching kernels ---------------------------------------------------------------------------
// The statistics come in two steps, per-channel sums then what they give, so that synchronised
// BatchNorm (ops/norm.hpp) can add the sums of every process in between. Sums are in double.

// s (C) = sum over (n, i) of x. x (N, C, HW)
template <class T>
inline void batchnorm_channel_sums(double* s, const T* x, int64_t N, int64_t C, int64_t HW) {
  simd::parallel_for<T>(C, 1, [&](auto seg, int64_t cb, int64_t ce) {
    for (int64_t c = cb; c < ce; ++c) {
      double acc = 0;
      for (int64_t n = 0; n < N; ++n) acc += detail::bn_sum(seg, x + (n * C + c) * HW, HW);
      s[c] = acc;
    }
  });
}
// q (C) = sum over (n, i) of (x - mean[c])^2. x (N, C, HW); mean (C)
template <class T>
inline void batchnorm_channel_sqdev(double* q, const T* x, const T* mean, int64_t N, int64_t C, int64_t HW) {
  simd::parallel_for<T>(C, 1, [&](auto seg, int64_t cb, int64_t ce) {
    for (int64_t c = cb; c < ce; ++c) {
      double acc = 0;
      for (int64_t n = 0; n < N; ++n) acc += detail::bn_sqdev(seg, x + (n * C + c) * HW, HW, mean[c]);
      q[c] = acc;
    }
  });
}
// x (N, C, HW); mean, var (C): batch mean and biased variance.
template <class T>
inline void batchnorm_stats(T* mean, T* var, const T* x, int64_t N, int64_t C, int64_t HW) {
  const double M = static_cast<double>(N * HW);
  std::vector<double> acc(static_cast<size_t>(C));
  batchnorm_channel_sums(acc.data(), x, N, C, HW);
  for (int64_t c = 0; c < C; ++c) mean[c] = static_cast<T>(acc[static_cast<size_t>(c)] / M);
  batchnorm_channel_sqdev(acc.data(), x, mean, N, C, HW);
  for (int64_t c = 0; c < C; ++c) var[c] = static_cast<T>(acc[static_cast<size_t>(c)] / M);
}
// x, y (N, C, HW); mean, rstd, weight, bias (C)
template <class T>
inline void batchnorm_forward(T* y, const T* x, const T* mean, const T* rstd, const T* weight, const T* bias, int64_t N,
                              int64_t C, int64_t HW) {
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 14) / std::max<int64_t>(HW, 1));
  simd::parallel_for<T>(N * C, grain, [&](auto seg, int64_t pb, int64_t pe) {
    for (int64_t p = pb; p < pe; ++p) {
      const int64_t c = p % C;
      detail::bn_affine(seg, y + p * HW, x + p * HW, HW, mean[c], rstd[c] * weight[c], bias[c]);
    }
  });
}
// sdy (C) = sum dy, sdyx (C) = sum dy * (x - mean[c]). dy, x (N, C, HW); mean (C)
template <class T>
inline void batchnorm_backward_sums(double* sdy, double* sdyx, const T* dy, const T* x, const T* mean, int64_t N,
                                    int64_t C, int64_t HW) {
  simd::parallel_for<T>(C, 1, [&](auto seg, int64_t cb, int64_t ce) {
    for (int64_t c = cb; c < ce; ++c) {
      double a = 0, b = 0;
      for (int64_t n = 0; n < N; ++n) {
        const int64_t off = (n * C + c) * HW;
        a += detail::bn_sum(seg, dy + off, HW);
        b += detail::bn_dotdev(seg, dy + off, x + off, HW, mean[c]);
      }
      sdy[c] = a;
      sdyx[c] = b;
    }
  });
}
// dx (N, C, HW) from the sums of batchnorm_backward_sums over M values (this batch's, or every
// process's under synchronised BatchNorm). batch_stats as in the _ref twin.
template <class T>
inline void batchnorm_backward_dx(T* dx, const T* dy, const T* x, const T* mean, const T* rstd, const T* weight,
                                  const double* sdy, const double* sdyx, double M, int64_t N, int64_t C, int64_t HW,
                                  bool batch_stats) {
  simd::parallel_for<T>(C, 1, [&](auto seg, int64_t cb, int64_t ce) {
    for (int64_t c = cb; c < ce; ++c) {
      const double rs = rstd[c], k = static_cast<double>(weight[c]) * rs;
      // train: dx = k * dy + b * (x - mean) + c0 with b = -k rstd^2 sum(dy (x-mean)) / M, c0 = -k sum(dy) / M
      const T b = batch_stats ? static_cast<T>(-k * rs * rs * sdyx[c] / M) : T(0);
      const T c0 = batch_stats ? static_cast<T>(-k * sdy[c] / M) : T(0);
      for (int64_t n = 0; n < N; ++n) {
        const int64_t off = (n * C + c) * HW;
        detail::bn_affine2(seg, dx + off, dy + off, x + off, HW, static_cast<T>(k), mean[c], b, c0);
      }
    }
  });
}
// dy, x, dx (N, C, HW); mean, rstd, weight, dweight, dbias (C). batch_stats as in the _ref twin.
template <class T>
inline void batchnorm_backward(T* dx, T* dweight, T* dbias, const T* dy, const T* x, const T* mean, const T* rstd,
                               const T* weight, int64_t N, int64_t C, int64_t HW, bool batch_stats) {
  std::vector<double> sdy(static_cast<size_t>(C)), sdyx(static_cast<size_t>(C));
  batchnorm_backward_sums(sdy.data(), sdyx.data(), dy, x, mean, N, C, HW);
  for (int64_t c = 0; c < C; ++c) {
    dbias[c] = static_cast<T>(sdy[static_cast<size_t>(c)]);
    dweight[c] = static_cast<T>(sdyx[static_cast<size_t>(c)] * static_cast<double>(rstd[c]));
  }
  batchnorm_backward_dx(dx, dy, x, mean, rstd, weight, sdy.data(), sdyx.data(), static_cast<double>(N * HW), N, C, HW,
                        batch_stats);
}

}  // namespace segml::kernels
