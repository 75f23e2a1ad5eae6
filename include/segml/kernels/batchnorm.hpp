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
//    use AVX2 / AVX-512 for float segments and run channels (or planes) in parallel.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "segml/core/cpu.hpp"
#include "segml/core/parallel.hpp"
#include "segml/kernels/simd_math.hpp"

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
// ---- segment primitives over one contiguous H*W plane --------------------------------------------
// sum(p), sum((p - m)^2), sum(dy * (x - m)), out = (x - m) * a + c, out = k * dy + b * (x - m) + c.
template <class T>
struct BnSegments {
  T (*sum)(const T* p, int64_t n);
  T (*sqdev)(const T* p, int64_t n, T m);
  T (*dotdev)(const T* dy, const T* x, int64_t n, T m);
  void (*affine)(T* out, const T* x, int64_t n, T m, T a, T c);
  void (*affine2)(T* out, const T* dy, const T* x, int64_t n, T k, T m, T b, T c);
};

template <class T>
inline T bn_sum(const T* p, int64_t n) {
  T s = 0;
  for (int64_t i = 0; i < n; ++i) s += p[i];
  return s;
}
template <class T>
inline T bn_sqdev(const T* p, int64_t n, T m) {
  T s = 0;
  for (int64_t i = 0; i < n; ++i) s += (p[i] - m) * (p[i] - m);
  return s;
}
template <class T>
inline T bn_dotdev(const T* dy, const T* x, int64_t n, T m) {
  T s = 0;
  for (int64_t i = 0; i < n; ++i) s += dy[i] * (x[i] - m);
  return s;
}
template <class T>
inline void bn_affine(T* out, const T* x, int64_t n, T m, T a, T c) {
  for (int64_t i = 0; i < n; ++i) out[i] = (x[i] - m) * a + c;
}
template <class T>
inline void bn_affine2(T* out, const T* dy, const T* x, int64_t n, T k, T m, T b, T c) {
  for (int64_t i = 0; i < n; ++i) out[i] = k * dy[i] + b * (x[i] - m) + c;
}

#if defined(__x86_64__)
SEGML_AVX2_FN float bn_sum_avx2(const float* p, int64_t n) {
  __m256 s = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) s = _mm256_add_ps(s, _mm256_loadu_ps(p + i));
  if (i < n) s = _mm256_add_ps(s, _mm256_maskload_ps(p + i, simd::tail_mask256(n - i)));
  return simd::hsum256_ps(s);
}
SEGML_AVX2_FN float bn_sqdev_avx2(const float* p, int64_t n, float m) {
  const __m256 vm = _mm256_set1_ps(m);
  __m256 s = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 d = _mm256_sub_ps(_mm256_loadu_ps(p + i), vm);
    s = _mm256_fmadd_ps(d, d, s);
  }
  if (i < n) {
    const __m256i tm = simd::tail_mask256(n - i);
    const __m256 d = _mm256_and_ps(_mm256_sub_ps(_mm256_maskload_ps(p + i, tm), vm), _mm256_castsi256_ps(tm));
    s = _mm256_fmadd_ps(d, d, s);
  }
  return simd::hsum256_ps(s);
}
SEGML_AVX2_FN float bn_dotdev_avx2(const float* dy, const float* x, int64_t n, float m) {
  const __m256 vm = _mm256_set1_ps(m);
  __m256 s = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) s = _mm256_fmadd_ps(_mm256_loadu_ps(dy + i), _mm256_sub_ps(_mm256_loadu_ps(x + i), vm), s);
  if (i < n) {  // dead lanes: dy = 0
    const __m256i tm = simd::tail_mask256(n - i);
    s = _mm256_fmadd_ps(_mm256_maskload_ps(dy + i, tm), _mm256_sub_ps(_mm256_maskload_ps(x + i, tm), vm), s);
  }
  return simd::hsum256_ps(s);
}
SEGML_AVX2_FN void bn_affine_avx2(float* out, const float* x, int64_t n, float m, float a, float c) {
  const __m256 vm = _mm256_set1_ps(m), va = _mm256_set1_ps(a), vc = _mm256_set1_ps(c);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(out + i, _mm256_fmadd_ps(_mm256_sub_ps(_mm256_loadu_ps(x + i), vm), va, vc));
  if (i < n) {
    const __m256i tm = simd::tail_mask256(n - i);
    _mm256_maskstore_ps(out + i, tm, _mm256_fmadd_ps(_mm256_sub_ps(_mm256_maskload_ps(x + i, tm), vm), va, vc));
  }
}
SEGML_AVX2_FN void bn_affine2_avx2(float* out, const float* dy, const float* x, int64_t n, float k, float m, float b,
                                   float c) {
  const __m256 vk = _mm256_set1_ps(k), vm = _mm256_set1_ps(m), vb = _mm256_set1_ps(b), vc = _mm256_set1_ps(c);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 t = _mm256_fmadd_ps(vb, _mm256_sub_ps(_mm256_loadu_ps(x + i), vm), vc);
    _mm256_storeu_ps(out + i, _mm256_fmadd_ps(vk, _mm256_loadu_ps(dy + i), t));
  }
  if (i < n) {
    const __m256i tm = simd::tail_mask256(n - i);
    const __m256 t = _mm256_fmadd_ps(vb, _mm256_sub_ps(_mm256_maskload_ps(x + i, tm), vm), vc);
    _mm256_maskstore_ps(out + i, tm, _mm256_fmadd_ps(vk, _mm256_maskload_ps(dy + i, tm), t));
  }
}

SEGML_AVX512_FN float bn_sum_avx512(const float* p, int64_t n) {
  __m512 s = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) s = _mm512_add_ps(s, _mm512_loadu_ps(p + i));
  if (i < n) s = _mm512_add_ps(s, _mm512_maskz_loadu_ps(simd::tail_mask512(n - i), p + i));
  return simd::hsum512_ps(s);
}
SEGML_AVX512_FN float bn_sqdev_avx512(const float* p, int64_t n, float m) {
  const __m512 vm = _mm512_set1_ps(m);
  __m512 s = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m512 d = _mm512_sub_ps(_mm512_loadu_ps(p + i), vm);
    s = _mm512_fmadd_ps(d, d, s);
  }
  if (i < n) {
    const __mmask16 tm = simd::tail_mask512(n - i);
    const __m512 d = _mm512_maskz_sub_ps(tm, _mm512_maskz_loadu_ps(tm, p + i), vm);
    s = _mm512_fmadd_ps(d, d, s);
  }
  return simd::hsum512_ps(s);
}
SEGML_AVX512_FN float bn_dotdev_avx512(const float* dy, const float* x, int64_t n, float m) {
  const __m512 vm = _mm512_set1_ps(m);
  __m512 s = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) s = _mm512_fmadd_ps(_mm512_loadu_ps(dy + i), _mm512_sub_ps(_mm512_loadu_ps(x + i), vm), s);
  if (i < n) {
    const __mmask16 tm = simd::tail_mask512(n - i);
    s = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(tm, dy + i), _mm512_sub_ps(_mm512_maskz_loadu_ps(tm, x + i), vm), s);
  }
  return simd::hsum512_ps(s);
}
SEGML_AVX512_FN void bn_affine_avx512(float* out, const float* x, int64_t n, float m, float a, float c) {
  const __m512 vm = _mm512_set1_ps(m), va = _mm512_set1_ps(a), vc = _mm512_set1_ps(c);
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) _mm512_storeu_ps(out + i, _mm512_fmadd_ps(_mm512_sub_ps(_mm512_loadu_ps(x + i), vm), va, vc));
  if (i < n) {
    const __mmask16 tm = simd::tail_mask512(n - i);
    _mm512_mask_storeu_ps(out + i, tm, _mm512_fmadd_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(tm, x + i), vm), va, vc));
  }
}
SEGML_AVX512_FN void bn_affine2_avx512(float* out, const float* dy, const float* x, int64_t n, float k, float m, float b,
                                       float c) {
  const __m512 vk = _mm512_set1_ps(k), vm = _mm512_set1_ps(m), vb = _mm512_set1_ps(b), vc = _mm512_set1_ps(c);
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m512 t = _mm512_fmadd_ps(vb, _mm512_sub_ps(_mm512_loadu_ps(x + i), vm), vc);
    _mm512_storeu_ps(out + i, _mm512_fmadd_ps(vk, _mm512_loadu_ps(dy + i), t));
  }
  if (i < n) {
    const __mmask16 tm = simd::tail_mask512(n - i);
    const __m512 t = _mm512_fmadd_ps(vb, _mm512_sub_ps(_mm512_maskz_loadu_ps(tm, x + i), vm), vc);
    _mm512_mask_storeu_ps(out + i, tm, _mm512_fmadd_ps(vk, _mm512_maskz_loadu_ps(tm, dy + i), t));
  }
}
#endif  // __x86_64__

// The segment primitives for T on the current ISA (chosen once per kernel call).
template <class T>
inline BnSegments<T> bn_segments() {
#if defined(__x86_64__)
  if constexpr (std::is_same_v<T, float>) {
    if (segml::isa() == Isa::avx512)
      return {bn_sum_avx512, bn_sqdev_avx512, bn_dotdev_avx512, bn_affine_avx512, bn_affine2_avx512};
    if (segml::isa() == Isa::avx2) return {bn_sum_avx2, bn_sqdev_avx2, bn_dotdev_avx2, bn_affine_avx2, bn_affine2_avx2};
  }
#endif
  return {bn_sum<T>, bn_sqdev<T>, bn_dotdev<T>, bn_affine<T>, bn_affine2<T>};
}
}  // namespace detail

// ---- dispatching kernels ---------------------------------------------------------------------------
// The statistics come in two steps, per-channel sums then what they give, so that synchronised
// BatchNorm (ops/norm.hpp) can add the sums of every process in between. Sums are in double.

// s (C) = sum over (n, i) of x. x (N, C, HW)
template <class T>
inline void batchnorm_channel_sums(double* s, const T* x, int64_t N, int64_t C, int64_t HW) {
  const detail::BnSegments<T> seg = detail::bn_segments<T>();
  parallel_for(C, 1, [&](int64_t cb, int64_t ce) {
    for (int64_t c = cb; c < ce; ++c) {
      double acc = 0;
      for (int64_t n = 0; n < N; ++n) acc += seg.sum(x + (n * C + c) * HW, HW);
      s[c] = acc;
    }
  });
}
// q (C) = sum over (n, i) of (x - mean[c])^2. x (N, C, HW); mean (C)
template <class T>
inline void batchnorm_channel_sqdev(double* q, const T* x, const T* mean, int64_t N, int64_t C, int64_t HW) {
  const detail::BnSegments<T> seg = detail::bn_segments<T>();
  parallel_for(C, 1, [&](int64_t cb, int64_t ce) {
    for (int64_t c = cb; c < ce; ++c) {
      double acc = 0;
      for (int64_t n = 0; n < N; ++n) acc += seg.sqdev(x + (n * C + c) * HW, HW, mean[c]);
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
  const detail::BnSegments<T> seg = detail::bn_segments<T>();
  parallel_for(N * C, std::max<int64_t>(1, (int64_t{1} << 14) / std::max<int64_t>(HW, 1)), [&](int64_t pb, int64_t pe) {
    for (int64_t p = pb; p < pe; ++p) {
      const int64_t c = p % C;
      seg.affine(y + p * HW, x + p * HW, HW, mean[c], rstd[c] * weight[c], bias[c]);
    }
  });
}
// sdy (C) = sum dy, sdyx (C) = sum dy * (x - mean[c]). dy, x (N, C, HW); mean (C)
template <class T>
inline void batchnorm_backward_sums(double* sdy, double* sdyx, const T* dy, const T* x, const T* mean, int64_t N,
                                    int64_t C, int64_t HW) {
  const detail::BnSegments<T> seg = detail::bn_segments<T>();
  parallel_for(C, 1, [&](int64_t cb, int64_t ce) {
    for (int64_t c = cb; c < ce; ++c) {
      double a = 0, b = 0;
      for (int64_t n = 0; n < N; ++n) {
        const int64_t off = (n * C + c) * HW;
        a += seg.sum(dy + off, HW);
        b += seg.dotdev(dy + off, x + off, HW, mean[c]);
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
  const detail::BnSegments<T> seg = detail::bn_segments<T>();
  parallel_for(C, 1, [&](int64_t cb, int64_t ce) {
    for (int64_t c = cb; c < ce; ++c) {
      const double rs = rstd[c], k = static_cast<double>(weight[c]) * rs;
      // train: dx = k * dy + b * (x - mean) + c0 with b = -k rstd^2 sum(dy (x-mean)) / M, c0 = -k sum(dy) / M
      const T b = batch_stats ? static_cast<T>(-k * rs * rs * sdyx[c] / M) : T(0);
      const T c0 = batch_stats ? static_cast<T>(-k * sdy[c] / M) : T(0);
      for (int64_t n = 0; n < N; ++n) {
        const int64_t off = (n * C + c) * HW;
        seg.affine2(dx + off, dy + off, x + off, HW, static_cast<T>(k), mean[c], b, c0);
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
