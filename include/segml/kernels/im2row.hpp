// segml/kernels/im2row.hpp: the row (patch) matrix of a convolution, for the channels-last
// inference path (models/segformer_inference.hpp).
//
// A convolution with kernel KH x KW, stride s and zero padding p is one GEMM on its row matrix:
//   rows (P = OH*OW, K)  where row (oh, ow) holds the receptive field of output pixel (oh, ow),
//   y (P, OC) = rows · Wᵀ + b,  with W (OC, K) the weight flattened in the same order as a row.
// The output comes out channels-last, i.e. as tokens, so no transpose is ever needed.
//   im2row_nchw: x (C, H, W), row order (c, kh, kw): PyTorch's weight (OC, C, KH, KW) as it is.
//   im2row_nhwc: x (H, W, C), row order (kh, kw, c): the weight permuted once to (OC, KH, KW, C);
//                every tap copies C contiguous values.
// Taps outside the image are 0. OH = (H + 2p - KH) / s + 1 (floor), as in PyTorch.
// Both are pure data movement (no arithmetic), so there is nothing to round: they are exact.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "segml/core/parallel.hpp"

namespace segml::kernels {

struct Im2rowGeometry {
  int64_t C, H, W;   // input
  int64_t KH, KW;    // kernel
  int64_t stride, pad;
  int64_t out_h() const { return (H + 2 * pad - KH) / stride + 1; }
  int64_t out_w() const { return (W + 2 * pad - KW) / stride + 1; }
  int64_t row_size() const { return C * KH * KW; }
};

// The rows of output rows [oh0, oh1) only, serially: rows ((oh1 - oh0)*OW, C*KH*KW) from x (C, H, W).
template <class T>
inline void im2row_nchw_rows(T* rows, const T* x, const Im2rowGeometry& g, int64_t oh0, int64_t oh1) {
  const int64_t OW = g.out_w(), K = g.row_size();
  for (int64_t oh = oh0; oh < oh1; ++oh)
    for (int64_t ow = 0; ow < OW; ++ow) {
      T* row = rows + ((oh - oh0) * OW + ow) * K;
      const int64_t ih0 = oh * g.stride - g.pad, iw0 = ow * g.stride - g.pad;
      for (int64_t c = 0; c < g.C; ++c)
        for (int64_t kh = 0; kh < g.KH; ++kh, row += g.KW) {
          const int64_t ih = ih0 + kh;
          if (ih < 0 || ih >= g.H) {
            std::fill(row, row + g.KW, T(0));
            continue;
          }
          const T* src = x + (c * g.H + ih) * g.W;
          for (int64_t kw = 0; kw < g.KW; ++kw) {
            const int64_t iw = iw0 + kw;
            row[kw] = iw >= 0 && iw < g.W ? src[iw] : T(0);
          }
        }
    }
}

// The rows of output rows [oh0, oh1) only, serially: rows ((oh1 - oh0)*OW, KH*KW*C) from x (H, W, C).
template <class T>
inline void im2row_nhwc_rows(T* rows, const T* x, const Im2rowGeometry& g, int64_t oh0, int64_t oh1) {
  const int64_t OW = g.out_w(), K = g.row_size(), C = g.C;
  for (int64_t oh = oh0; oh < oh1; ++oh)
    for (int64_t ow = 0; ow < OW; ++ow) {
      T* row = rows + ((oh - oh0) * OW + ow) * K;
      const int64_t ih0 = oh * g.stride - g.pad, iw0 = ow * g.stride - g.pad;
      for (int64_t kh = 0; kh < g.KH; ++kh) {
        const int64_t ih = ih0 + kh;
        for (int64_t kw = 0; kw < g.KW; ++kw, row += C) {
          const int64_t iw = iw0 + kw;
          if (ih < 0 || ih >= g.H || iw < 0 || iw >= g.W)
            std::fill(row, row + C, T(0));
          else
            std::memcpy(row, x + (ih * g.W + iw) * C, static_cast<size_t>(C) * sizeof(T));
        }
      }
    }
}

// Grain of the whole-image versions: output rows per chunk, about 4096 * 64 values.
inline int64_t im2row_grain(const Im2rowGeometry& g) {
  return std::max<int64_t>(1, 4096 / std::max<int64_t>(1, g.out_w() * g.row_size() / 64));
}

// rows (OH*OW, C*KH*KW) from x (C, H, W).
template <class T>
inline void im2row_nchw(T* rows, const T* x, const Im2rowGeometry& g) {
  parallel_for(g.out_h(), im2row_grain(g), [&](int64_t oh0, int64_t oh1) {
    im2row_nchw_rows(rows + oh0 * g.out_w() * g.row_size(), x, g, oh0, oh1);
  });
}

// rows (OH*OW, KH*KW*C) from x (H, W, C).
template <class T>
inline void im2row_nhwc(T* rows, const T* x, const Im2rowGeometry& g) {
  parallel_for(g.out_h(), im2row_grain(g), [&](int64_t oh0, int64_t oh1) {
    im2row_nhwc_rows(rows + oh0 * g.out_w() * g.row_size(), x, g, oh0, oh1);
  });
}

// Permutes a PyTorch conv weight (OC, C, KH, KW) to (OC, KH, KW, C), the row order of im2row_nhwc.
template <class T>
inline void permute_weight_to_nhwc(T* dst, const T* w, int64_t OC, int64_t C, int64_t KH, int64_t KW) {
  for (int64_t o = 0; o < OC; ++o)
    for (int64_t c = 0; c < C; ++c)
      for (int64_t kh = 0; kh < KH; ++kh)
        for (int64_t kw = 0; kw < KW; ++kw)
          dst[((o * KH + kh) * KW + kw) * C + c] = w[((o * C + c) * KH + kh) * KW + kw];
}

}  // namespace segml::kernels
