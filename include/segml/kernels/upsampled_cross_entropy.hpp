// segml/kernels/upsampled_cross_entropy.hpp: HF SegFormer's loss in one pass: bilinear upsampling of
// the logits to the label size (align_corners=False) followed by pixel-wise softmax cross-entropy,
// without ever building the upsampled logits.
//
//   loss_sum = Σ_{b, Y, X not ignored}  logsumexp_c(u[b, :, Y, X]) − u[b, label, Y, X],
//   u = resize_bilinear(logits, H, W)     (the taps and expression of kernels/resize.hpp)
//
// At 512x512 labels, 128x128 logits and 150 classes, u has 39 M values per image; the unfused
// loss writes them, reads them, and its backward writes and reads their gradient again. Here each
// output pixel's class vector u is formed from its four source pixels on the fly, used, and dropped.
//
// Layout: logits channels-last, x (B, h, w, C), so a pixel's classes are contiguous; labels (B, H, W).
//  - Forward: the sum in double, per fixed chunk of output rows, chunk sums added in order: the
//    result does not depend on the thread count.
//  - Backward: dx = resizeᵀ(scale · (softmax(u) − onehot(label))), 0 at ignored pixels. Work is split
//    over blocks of SOURCE rows; a block recomputes every output row that reads it (rows on a block
//    boundary are computed twice) and adds only into its own rows, in increasing output order. So
//    there are no write conflicts and the result is independent of the thread count.
//  - Labels are not validated here; the op validates them first (cross_entropy_count_valid).
//  - The scalar oracle is the composition resize_bilinear_forward_ref + cross_entropy_forward_ref
//    (and the backward twins), in tests/test_dropout_loss.cpp.
// The class loops are written once on the simd backends (AVX-512, AVX2, NEON for float; simd::exp).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "segml/core/cpu.hpp"
#include "segml/core/parallel.hpp"
#include "segml/kernels/resize.hpp"
#include "segml/simd/dispatch.hpp"
#include "segml/kernels/softmax.hpp"

namespace segml::kernels {

namespace detail {

// Output rows per forward chunk (fixed: the summation order must not depend on the thread count).
inline constexpr int64_t kUceRows = 4;

// The per-pixel class loops, written once on the simd backends. On the scalar backend (and for
// double) the log-sum-exp and the softmax sum in double.

// v (C) = the bilinear sample of one output pixel from its four source pixels' class vectors.
template <class S, class T>
inline void uce_sample(S, T* __restrict v, const T* a, const T* b, const T* c, const T* d, T wy0, T wy1, T wx0, T wx1,
                       int64_t C) {
  const typename S::V vy0 = S::set1(wy0), vy1 = S::set1(wy1), vx0 = S::set1(wx0), vx1 = S::set1(wx1);
  simd::for_lanes<S>(C, [&](int64_t k, const auto& m) {
    const typename S::V top = vx0 * S::load(a + k, m) + vx1 * S::load(b + k, m);
    const typename S::V bottom = vx0 * S::load(c + k, m) + vx1 * S::load(d + k, m);
    S::store(v + k, vy0 * top + vy1 * bottom, m);
  });
}

// log sum exp(v), max-subtracted.
template <class S, class T>
inline T uce_logsumexp(S, const T* v, int64_t C) {
  if constexpr (S::lanes == 1) {
    T m = v[0];
    for (int64_t k = 1; k < C; ++k) m = std::max(m, v[k]);
    double s = 0;
    for (int64_t k = 0; k < C; ++k) s += std::exp(static_cast<double>(v[k] - m));
    return m + static_cast<T>(std::log(s));
  } else {  // the row primitives of kernels/softmax.hpp
    const float m = row_max<S>(v, C);
    return m + std::log(row_exp_sum<S>(nullptr, v, m, C));
  }
}

// v := scale * (softmax(v) - onehot(label)), in place: one exp per class.
template <class S, class T>
inline void uce_grad(S s, T* v, int64_t label, T scale, int64_t C) {
  if constexpr (S::lanes == 1) {
    const T lse = uce_logsumexp(s, v, C);
    for (int64_t k = 0; k < C; ++k) v[k] = scale * static_cast<T>(std::exp(static_cast<double>(v[k] - lse)));
  } else {
    const float m = row_max<S>(v, C);
    row_scale<S>(v, scale / row_exp_sum<S>(v, v, m, C), C);
  }
  v[label] -= scale;
}

// d (C) += a * v (C): one tap of the adjoint resize.
template <class S, class T>
inline void uce_axpy(S, T* __restrict d, T a, const T* __restrict v, int64_t C) {
  const typename S::V va = S::set1(a);
  simd::for_lanes<S>(C, [&](int64_t k, const auto& m) { S::store(d + k, S::fma(va, S::load(v + k, m), S::load(d + k, m)), m); });
}

}  // namespace detail

// Σ over non-ignored pixels of the cross-entropy of the upsampled logits.
// x (B, h, w, C) channels-last logits, labels (B, H, W)
template <class T>
inline double upsampled_cross_entropy_forward(const T* x, const int64_t* labels, int64_t B, int64_t h, int64_t w,
                                              int64_t C, int64_t H, int64_t W, int64_t ignore_index) {
  const detail::ResizeAxis<T> ry(h, H), rx(w, W);
  const int64_t per_image = (H + detail::kUceRows - 1) / detail::kUceRows, chunks = B * per_image;
  std::vector<double> sums(static_cast<size_t>(chunks), 0.0);
  simd::parallel_for<T>(chunks, 1, [&](auto s, int64_t k0, int64_t k1) {
    std::vector<T> v(static_cast<size_t>(C));
    for (int64_t k = k0; k < k1; ++k) {
      const int64_t b = k / per_image, y0 = (k % per_image) * detail::kUceRows, y1 = std::min(H, y0 + detail::kUceRows);
      const T* img = x + b * h * w * C;
      double acc = 0;
      for (int64_t oy = y0; oy < y1; ++oy) {
        const T* top = img + ry.i0[oy] * w * C;
        const T* bottom = img + ry.i1[oy] * w * C;
        const int64_t* lab = labels + (b * H + oy) * W;
        for (int64_t ox = 0; ox < W; ++ox) {
          if (lab[ox] == ignore_index) continue;
          detail::uce_sample(s, v.data(), top + rx.i0[ox] * C, top + rx.i1[ox] * C, bottom + rx.i0[ox] * C,
                             bottom + rx.i1[ox] * C, ry.w0[oy], ry.w1[oy], rx.w0[ox], rx.w1[ox], C);
          acc += static_cast<double>(detail::uce_logsumexp(s, v.data(), C) - v[lab[ox]]);
        }
      }
      sums[static_cast<size_t>(k)] = acc;
    }
  });
  double total = 0;
  for (double s : sums) total += s;
  return total;
}

// dx = d(scale · loss_sum)/dx, overwritten.  dx, x (B, h, w, C), labels (B, H, W)
template <class T>
inline void upsampled_cross_entropy_backward(T* dx, const T* x, const int64_t* labels, int64_t B, int64_t h, int64_t w,
                                             int64_t C, int64_t H, int64_t W, int64_t ignore_index, T scale) {
  const detail::ResizeAxis<T> ry(h, H), rx(w, W);
  parallel_for(B * h * w * C, int64_t{1} << 16, [&](int64_t i0, int64_t i1) { std::fill(dx + i0, dx + i1, T(0)); });
  // first[i]: the first output row that reads source row i (i0 and i1 never decrease with oy).
  std::vector<int64_t> first(static_cast<size_t>(h + 1), H);
  for (int64_t oy = H; oy-- > 0;) first[static_cast<size_t>(ry.i0[oy])] = oy;
  for (int64_t i = h; i-- > 0;) first[static_cast<size_t>(i)] = std::min(first[static_cast<size_t>(i)], first[static_cast<size_t>(i + 1)]);
  const int64_t block = 8;  // source rows per task
  const int64_t per_image = (h + block - 1) / block;
  simd::parallel_for<T>(B * per_image, 1, [&](auto s, int64_t t0, int64_t t1) {
    std::vector<T> v(static_cast<size_t>(C));
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t b = t / per_image, r0 = (t % per_image) * block, r1 = std::min(h, r0 + block);
      const T* img = x + b * h * w * C;
      T* dimg = dx + b * h * w * C;
      // Output rows that read a row in [r0, r1) start with those whose i0 is r0 - 1 (their i1 is r0).
      const int64_t oy_begin = r0 > 0 ? first[static_cast<size_t>(r0 - 1)] : 0;
      for (int64_t oy = oy_begin; oy < H; ++oy) {
        const int64_t i0 = ry.i0[oy], i1 = ry.i1[oy];
        if (i0 >= r1) break;
        const bool own0 = i0 >= r0 && i0 < r1, own1 = i1 >= r0 && i1 < r1;
        if (!own0 && !own1) continue;
        const T* top = img + i0 * w * C;
        const T* bottom = img + i1 * w * C;
        const int64_t* lab = labels + (b * H + oy) * W;
        for (int64_t ox = 0; ox < W; ++ox) {
          if (lab[ox] == ignore_index) continue;
          const int64_t j0 = rx.i0[ox], j1 = rx.i1[ox];
          const T wx0 = rx.w0[ox], wx1 = rx.w1[ox];
          detail::uce_sample(s, v.data(), top + j0 * C, top + j1 * C, bottom + j0 * C, bottom + j1 * C, ry.w0[oy],
                             ry.w1[oy], wx0, wx1, C);
          detail::uce_grad(s, v.data(), lab[ox], scale, C);
          // resizeᵀ: the same four taps, each weighted by its share.
          for (int q = 0; q < 2; ++q) {
            if (!(q == 0 ? own0 : own1)) continue;
            const T wy = q == 0 ? ry.w0[oy] : ry.w1[oy];
            T* row = dimg + (q == 0 ? i0 : i1) * w * C;
            detail::uce_axpy(s, row + j0 * C, wy * wx0, v.data(), C);
            detail::uce_axpy(s, row + j1 * C, wy * wx1, v.data(), C);
          }
        }
      }
    }
  });
}

}  // namespace segml::kernels
