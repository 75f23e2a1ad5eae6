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
//    versions use AVX2 / AVX-512 for float (sums in float vectors within a row) and run in parallel.
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
// ---- one row, portable (the non-x86 / double path of the dispatching kernels) --------------------
template <class T>
inline void layernorm_forward_row(T* y, T* mean, T* rstd, const T* x, const T* weight, const T* bias, int64_t C, T eps) {
  T s = 0, q = 0;
  for (int64_t j = 0; j < C; ++j) s += x[j];
  const T m = s / static_cast<T>(C);
  for (int64_t j = 0; j < C; ++j) q += (x[j] - m) * (x[j] - m);
  const T rs = T(1) / std::sqrt(q / static_cast<T>(C) + eps);
  for (int64_t j = 0; j < C; ++j) y[j] = (x[j] - m) * rs * weight[j] + bias[j];
  *mean = m;
  *rstd = rs;
}
// dx for one row; adds dy * xhat and dy into dw, db.
template <class T>
inline void layernorm_backward_row(T* dx, T* dw, T* db, const T* dy, const T* x, T mean, T rstd, const T* weight, int64_t C) {
  T s1 = 0, s2 = 0;
  for (int64_t j = 0; j < C; ++j) {
    const T xhat = (x[j] - mean) * rstd, g = dy[j] * weight[j];
    s1 += g;
    s2 += g * xhat;
    dw[j] += dy[j] * xhat;
    db[j] += dy[j];
  }
  s1 /= static_cast<T>(C);
  s2 /= static_cast<T>(C);
  for (int64_t j = 0; j < C; ++j) dx[j] = rstd * (dy[j] * weight[j] - s1 - (x[j] - mean) * rstd * s2);
}

#if defined(__x86_64__)
// ---- one row, AVX2 -------------------------------------------------------------------------------
SEGML_AVX2_FN void layernorm_forward_row_avx2(float* y, float* mean, float* rstd, const float* x, const float* weight,
                                              const float* bias, int64_t C, float eps) {
  const int64_t body = C & ~int64_t{7}, tail = C - body;
  const __m256i tm = simd::tail_mask256(tail);
  __m256 vs = _mm256_setzero_ps();
  for (int64_t j = 0; j < body; j += 8) vs = _mm256_add_ps(vs, _mm256_loadu_ps(x + j));
  if (tail) vs = _mm256_add_ps(vs, _mm256_maskload_ps(x + body, tm));
  const float m = simd::hsum256_ps(vs) / static_cast<float>(C);
  const __m256 vm = _mm256_set1_ps(m);
  __m256 vq = _mm256_setzero_ps();
  for (int64_t j = 0; j < body; j += 8) {
    const __m256 d = _mm256_sub_ps(_mm256_loadu_ps(x + j), vm);
    vq = _mm256_fmadd_ps(d, d, vq);
  }
  if (tail) {
    const __m256 d = _mm256_and_ps(_mm256_sub_ps(_mm256_maskload_ps(x + body, tm), vm), _mm256_castsi256_ps(tm));
    vq = _mm256_fmadd_ps(d, d, vq);
  }
  const float rs = 1.0f / std::sqrt(simd::hsum256_ps(vq) / static_cast<float>(C) + eps);
  const __m256 vr = _mm256_set1_ps(rs);
  for (int64_t j = 0; j < body; j += 8) {
    const __m256 xhat = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(x + j), vm), vr);
    _mm256_storeu_ps(y + j, _mm256_fmadd_ps(xhat, _mm256_loadu_ps(weight + j), _mm256_loadu_ps(bias + j)));
  }
  if (tail) {
    const __m256 xhat = _mm256_mul_ps(_mm256_sub_ps(_mm256_maskload_ps(x + body, tm), vm), vr);
    _mm256_maskstore_ps(y + body, tm,
                        _mm256_fmadd_ps(xhat, _mm256_maskload_ps(weight + body, tm), _mm256_maskload_ps(bias + body, tm)));
  }
  *mean = m;
  *rstd = rs;
}
SEGML_AVX2_FN void layernorm_backward_row_avx2(float* dx, float* dw, float* db, const float* dy, const float* x, float mean,
                                               float rstd, const float* weight, int64_t C) {
  const int64_t body = C & ~int64_t{7}, tail = C - body;
  const __m256i tm = simd::tail_mask256(tail);
  const __m256 vm = _mm256_set1_ps(mean), vr = _mm256_set1_ps(rstd);
  __m256 v1 = _mm256_setzero_ps(), v2 = _mm256_setzero_ps();
  // Masked loads give 0 in the tail's dead lanes, so g = 0 there and the sums are unaffected.
  for (int64_t j = 0; j < body; j += 8) {
    const __m256 gy = _mm256_loadu_ps(dy + j);
    const __m256 xhat = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(x + j), vm), vr);
    const __m256 g = _mm256_mul_ps(gy, _mm256_loadu_ps(weight + j));
    v1 = _mm256_add_ps(v1, g);
    v2 = _mm256_fmadd_ps(g, xhat, v2);
    _mm256_storeu_ps(dw + j, _mm256_fmadd_ps(gy, xhat, _mm256_loadu_ps(dw + j)));
    _mm256_storeu_ps(db + j, _mm256_add_ps(gy, _mm256_loadu_ps(db + j)));
  }
  if (tail) {
    const __m256 gy = _mm256_maskload_ps(dy + body, tm);
    const __m256 xhat = _mm256_mul_ps(_mm256_sub_ps(_mm256_maskload_ps(x + body, tm), vm), vr);
    const __m256 g = _mm256_mul_ps(gy, _mm256_maskload_ps(weight + body, tm));
    v1 = _mm256_add_ps(v1, g);
    v2 = _mm256_fmadd_ps(g, xhat, v2);
    _mm256_maskstore_ps(dw + body, tm, _mm256_fmadd_ps(gy, xhat, _mm256_maskload_ps(dw + body, tm)));
    _mm256_maskstore_ps(db + body, tm, _mm256_add_ps(gy, _mm256_maskload_ps(db + body, tm)));
  }
  const __m256 s1 = _mm256_set1_ps(simd::hsum256_ps(v1) / static_cast<float>(C));
  const __m256 s2 = _mm256_set1_ps(simd::hsum256_ps(v2) / static_cast<float>(C));
  // dx = rstd * (g - s1 - xhat * s2)
  for (int64_t j = 0; j < body; j += 8) {
    const __m256 xhat = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(x + j), vm), vr);
    const __m256 g = _mm256_mul_ps(_mm256_loadu_ps(dy + j), _mm256_loadu_ps(weight + j));
    _mm256_storeu_ps(dx + j, _mm256_mul_ps(vr, _mm256_sub_ps(_mm256_sub_ps(g, s1), _mm256_mul_ps(xhat, s2))));
  }
  if (tail) {
    const __m256 xhat = _mm256_mul_ps(_mm256_sub_ps(_mm256_maskload_ps(x + body, tm), vm), vr);
    const __m256 g = _mm256_mul_ps(_mm256_maskload_ps(dy + body, tm), _mm256_maskload_ps(weight + body, tm));
    _mm256_maskstore_ps(dx + body, tm, _mm256_mul_ps(vr, _mm256_sub_ps(_mm256_sub_ps(g, s1), _mm256_mul_ps(xhat, s2))));
  }
}

// ---- one row, AVX-512 ----------------------------------------------------------------------------
SEGML_AVX512_FN void layernorm_forward_row_avx512(float* y, float* mean, float* rstd, const float* x, const float* weight,
                                                  const float* bias, int64_t C, float eps) {
  const int64_t body = C & ~int64_t{15}, tail = C - body;
  const __mmask16 tm = simd::tail_mask512(tail);
  __m512 vs = _mm512_setzero_ps();
  for (int64_t j = 0; j < body; j += 16) vs = _mm512_add_ps(vs, _mm512_loadu_ps(x + j));
  if (tail) vs = _mm512_add_ps(vs, _mm512_maskz_loadu_ps(tm, x + body));
  const float m = simd::hsum512_ps(vs) / static_cast<float>(C);
  const __m512 vm = _mm512_set1_ps(m);
  __m512 vq = _mm512_setzero_ps();
  for (int64_t j = 0; j < body; j += 16) {
    const __m512 d = _mm512_sub_ps(_mm512_loadu_ps(x + j), vm);
    vq = _mm512_fmadd_ps(d, d, vq);
  }
  if (tail) {
    const __m512 d = _mm512_maskz_sub_ps(tm, _mm512_maskz_loadu_ps(tm, x + body), vm);
    vq = _mm512_fmadd_ps(d, d, vq);
  }
  const float rs = 1.0f / std::sqrt(simd::hsum512_ps(vq) / static_cast<float>(C) + eps);
  const __m512 vr = _mm512_set1_ps(rs);
  for (int64_t j = 0; j < body; j += 16) {
    const __m512 xhat = _mm512_mul_ps(_mm512_sub_ps(_mm512_loadu_ps(x + j), vm), vr);
    _mm512_storeu_ps(y + j, _mm512_fmadd_ps(xhat, _mm512_loadu_ps(weight + j), _mm512_loadu_ps(bias + j)));
  }
  if (tail) {
    const __m512 xhat = _mm512_mul_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(tm, x + body), vm), vr);
    _mm512_mask_storeu_ps(y + body, tm,
                          _mm512_fmadd_ps(xhat, _mm512_maskz_loadu_ps(tm, weight + body), _mm512_maskz_loadu_ps(tm, bias + body)));
  }
  *mean = m;
  *rstd = rs;
}
SEGML_AVX512_FN void layernorm_backward_row_avx512(float* dx, float* dw, float* db, const float* dy, const float* x,
                                                   float mean, float rstd, const float* weight, int64_t C) {
  const int64_t body = C & ~int64_t{15}, tail = C - body;
  const __mmask16 tm = simd::tail_mask512(tail);
  const __m512 vm = _mm512_set1_ps(mean), vr = _mm512_set1_ps(rstd);
  __m512 v1 = _mm512_setzero_ps(), v2 = _mm512_setzero_ps();
  for (int64_t j = 0; j < body; j += 16) {
    const __m512 gy = _mm512_loadu_ps(dy + j);
    const __m512 xhat = _mm512_mul_ps(_mm512_sub_ps(_mm512_loadu_ps(x + j), vm), vr);
    const __m512 g = _mm512_mul_ps(gy, _mm512_loadu_ps(weight + j));
    v1 = _mm512_add_ps(v1, g);
    v2 = _mm512_fmadd_ps(g, xhat, v2);
    _mm512_storeu_ps(dw + j, _mm512_fmadd_ps(gy, xhat, _mm512_loadu_ps(dw + j)));
    _mm512_storeu_ps(db + j, _mm512_add_ps(gy, _mm512_loadu_ps(db + j)));
  }
  if (tail) {
    const __m512 gy = _mm512_maskz_loadu_ps(tm, dy + body);
    const __m512 xhat = _mm512_mul_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(tm, x + body), vm), vr);
    const __m512 g = _mm512_mul_ps(gy, _mm512_maskz_loadu_ps(tm, weight + body));
    v1 = _mm512_add_ps(v1, g);
    v2 = _mm512_fmadd_ps(g, xhat, v2);
    _mm512_mask_storeu_ps(dw + body, tm, _mm512_fmadd_ps(gy, xhat, _mm512_maskz_loadu_ps(tm, dw + body)));
    _mm512_mask_storeu_ps(db + body, tm, _mm512_add_ps(gy, _mm512_maskz_loadu_ps(tm, db + body)));
  }
  const __m512 s1 = _mm512_set1_ps(simd::hsum512_ps(v1) / static_cast<float>(C));
  const __m512 s2 = _mm512_set1_ps(simd::hsum512_ps(v2) / static_cast<float>(C));
  for (int64_t j = 0; j < body; j += 16) {
    const __m512 xhat = _mm512_mul_ps(_mm512_sub_ps(_mm512_loadu_ps(x + j), vm), vr);
    const __m512 g = _mm512_mul_ps(_mm512_loadu_ps(dy + j), _mm512_loadu_ps(weight + j));
    _mm512_storeu_ps(dx + j, _mm512_mul_ps(vr, _mm512_sub_ps(_mm512_sub_ps(g, s1), _mm512_mul_ps(xhat, s2))));
  }
  if (tail) {
    const __m512 xhat = _mm512_mul_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(tm, x + body), vm), vr);
    const __m512 g = _mm512_mul_ps(_mm512_maskz_loadu_ps(tm, dy + body), _mm512_maskz_loadu_ps(tm, weight + body));
    _mm512_mask_storeu_ps(dx + body, tm, _mm512_mul_ps(vr, _mm512_sub_ps(_mm512_sub_ps(g, s1), _mm512_mul_ps(xhat, s2))));
  }
}
#endif  // __x86_64__

inline int64_t layernorm_grain(int64_t C) { return C > 0 ? std::max<int64_t>(1, (int64_t{1} << 13) / C) : 1; }
}  // namespace detail

// ---- dispatching kernels ---------------------------------------------------------------------------
// x, y (rows, C); weight, bias (C); mean, rstd (rows)
template <class T>
inline void layernorm_forward(T* y, T* mean, T* rstd, const T* x, const T* weight, const T* bias, int64_t rows,
                              int64_t C, T eps) {
  [[maybe_unused]] const Isa isa = std::is_same_v<T, float> ? segml::isa() : Isa::scalar;
  parallel_for(rows, detail::layernorm_grain(C), [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
#if defined(__x86_64__)
      if constexpr (std::is_same_v<T, float>) {
        if (isa == Isa::avx512) {
          detail::layernorm_forward_row_avx512(y + r * C, mean + r, rstd + r, x + r * C, weight, bias, C, eps);
          continue;
        }
        if (isa == Isa::avx2) {
          detail::layernorm_forward_row_avx2(y + r * C, mean + r, rstd + r, x + r * C, weight, bias, C, eps);
          continue;
        }
      }
#endif
      detail::layernorm_forward_row(y + r * C, mean + r, rstd + r, x + r * C, weight, bias, C, eps);
    }
  });
}

// dy, x, dx (rows, C); mean, rstd (rows); weight, dweight, dbias (C)
template <class T>
inline void layernorm_backward(T* dx, T* dweight, T* dbias, const T* dy, const T* x, const T* mean, const T* rstd,
                               const T* weight, int64_t rows, int64_t C) {
  [[maybe_unused]] const Isa isa = std::is_same_v<T, float> ? segml::isa() : Isa::scalar;
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
        for (int64_t r = r0; r < std::min(re, r0 + kBlock); ++r) {
          T *dxr = dx + r * C, *dw = blk.data(), *db = blk.data() + C;
          const T *dyr = dy + r * C, *xr = x + r * C;
#if defined(__x86_64__)
          if constexpr (std::is_same_v<T, float>) {
            if (isa == Isa::avx512) {
              detail::layernorm_backward_row_avx512(dxr, dw, db, dyr, xr, mean[r], rstd[r], weight, C);
              continue;
            }
            if (isa == Isa::avx2) {
              detail::layernorm_backward_row_avx2(dxr, dw, db, dyr, xr, mean[r], rstd[r], weight, C);
              continue;
            }
          }
#endif
          detail::layernorm_backward_row(dxr, dw, db, dyr, xr, mean[r], rstd[r], weight, C);
        }
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
