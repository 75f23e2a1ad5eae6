// segml/kernels/conv_transpose2d.hpp: 2-d transposed convolution
// (torch.nn.functional.conv_transpose2d, NCHW, groups 1, dilation 1, output_padding 0), forward and
// backward, plus a channels-last-input forward for inference engines.
//
// Contract: x (B, Cin, H, W), w (Cin, Cout, KH, KW) (PyTorch's layout: input channels first),
// b (Cout) or null, y (B, Cout, OH, OW) with OH = (H - 1) * stride - 2 * padding + KH (same for W):
//   y[b, co, iy*s - p + ky, ix*s - p + kx] += x[b, ci, iy, ix] * w[ci, co, ky, kx]   (+ b[co]),
// contributions landing outside the output (the padding) dropped.
// Path: one GEMM per image gives every contribution at once,
//   cols (Cout*KH*KW, H*W) = wᵀ (Cout*KH*KW x Cin) · x_b (Cin x H*W),
// then a col2im adds each column's KH x KW patch into the output (parallel over output channels).
// With kernel == stride and no padding (CLIPSeg's head) the patches do not overlap, so each output
// pixel is written exactly once. Backward (dx, dW, db, each optional (null) and overwritten):
//   dcols = im2col(dy_b) (Cout*KH*KW, H*W),  dx_b = w · dcols,  dW += x_b · dcolsᵀ,  db = Σ dy
// (db summed in double).
// The *_ref twins are the plain loops, the oracle. Sizes are validated by the caller (ops::conv_transpose2d).
#pragma once

#include <algorithm>
#include <cstdint>
#include <memory>

#include "segml/core/parallel.hpp"
#include "segml/core/tensor.hpp"
#include "segml/kernels/gemm.hpp"

namespace segml::kernels {

// Sizes of one transposed convolution.
struct ConvTranspose2dGeometry {
  int64_t B, Cin, H, W;  // input
  int64_t Cout, KH, KW;  // weight (Cin, Cout, KH, KW)
  int64_t stride = 1, padding = 0;

  int64_t OH() const { return (H - 1) * stride - 2 * padding + KH; }
  int64_t OW() const { return (W - 1) * stride - 2 * padding + KW; }
  int64_t K() const { return Cout * KH * KW; }  // columns of the weight matrix (Cin x K)
  int64_t P() const { return H * W; }           // input pixels per image
};

namespace detail {
// y (Cout, OH, OW) = bias (or 0) + col2im(cols), cols (Cout*KH*KW, H*W) when transposed_cols is
// false, else cols (H*W, Cout*KH*KW) (the channels-last product). Parallel over output channels;
// each loop nest reads its cols layout in memory order (the KH*KW values of one channel and pixel
// are contiguous in the channels-last layout, one input row of a tap in the other).
template <class T>
inline void col2im_transposed(T* y, const T* cols, bool transposed_cols, const T* bias, const ConvTranspose2dGeometry& g) {
  const int64_t OH = g.OH(), OW = g.OW(), s = g.stride, p = g.padding, P = g.P(), K = g.K();
  parallel_for(g.Cout, std::max<int64_t>(1, (int64_t{1} << 14) / std::max<int64_t>(1, OH * OW)), [&](int64_t c0, int64_t c1) {
    for (int64_t co = c0; co < c1; ++co) {
      T* yc = y + co * OH * OW;
      std::fill(yc, yc + OH * OW, bias ? bias[co] : T(0));
      for (int64_t ky = 0; ky < g.KH; ++ky)
        for (int64_t iy = 0; iy < g.H; ++iy) {
          const int64_t oy = iy * s - p + ky;
          if (oy < 0 || oy >= OH) continue;
          T* yr = yc + oy * OW;
          if (transposed_cols) {
            for (int64_t ix = 0; ix < g.W; ++ix) {
              const T* c = cols + (iy * g.W + ix) * K + (co * g.KH + ky) * g.KW;  // KW contiguous taps
              const int64_t ox0 = ix * s - p;
              for (int64_t kx = std::max<int64_t>(0, -ox0); kx < std::min(g.KW, OW - ox0); ++kx) yr[ox0 + kx] += c[kx];
            }
          } else {
            for (int64_t kx = 0; kx < g.KW; ++kx) {
              const T* c = cols + ((co * g.KH + ky) * g.KW + kx) * P + iy * g.W;  // one input row of this tap
              for (int64_t ix = 0; ix < g.W; ++ix) {
                const int64_t ox = ix * s - p + kx;
                if (ox >= 0 && ox < OW) yr[ox] += c[ix];
              }
            }
          }
        }
    }
  });
}
}  // namespace detail

// y = conv_transpose2d(x, w) + b.  x (B, Cin, H, W), w (Cin, Cout, KH, KW), b (Cout) or null,
// y (B, Cout, OH, OW)
template <class T>
inline void conv_transpose2d_forward(T* y, const T* x, const T* w, const T* b, const ConvTranspose2dGeometry& g) {
  const int64_t P = g.P(), K = g.K();
  std::shared_ptr<T[]> cols = allocate_aligned<T>(K * P);
  for (int64_t n = 0; n < g.B; ++n) {
    gemm(true, false, K, P, g.Cin, T(1), w, K, x + n * g.Cin * P, P, T(0), cols.get(), P);  // wᵀ x_b
    detail::col2im_transposed(y + n * g.Cout * g.OH() * g.OW(), cols.get(), false, b, g);
  }
}

// Gradients of conv_transpose2d_forward. dx (B, Cin, H, W), dw (Cin, Cout, KH, KW), db (Cout):
// each may be null (not wanted); the others are overwritten. dy (B, Cout, OH, OW).
template <class T>
inline void conv_transpose2d_backward(T* dx, T* dw, T* db, const T* dy, const T* x, const T* w,
                                      const ConvTranspose2dGeometry& g) {
  const int64_t OH = g.OH(), OW = g.OW(), P = g.P(), K = g.K(), s = g.stride, p = g.padding;
  if (db)
    for (int64_t co = 0; co < g.Cout; ++co) {
      double acc = 0;  // in double: B * OH * OW terms (thousands in CLIPSeg's head)
      for (int64_t n = 0; n < g.B; ++n) {
        const T* plane = dy + (n * g.Cout + co) * OH * OW;
        for (int64_t i = 0; i < OH * OW; ++i) acc += static_cast<double>(plane[i]);
      }
      db[co] = static_cast<T>(acc);
    }
  if (!dx && !dw) return;
  std::shared_ptr<T[]> dcols = allocate_aligned<T>(K * P);
  for (int64_t n = 0; n < g.B; ++n) {
    const T* dyn = dy + n * g.Cout * OH * OW;
    // dcols[(co, ky, kx), (iy, ix)] = dy[co, iy*s - p + ky, ix*s - p + kx], 0 outside.
    parallel_for(K, std::max<int64_t>(1, (int64_t{1} << 14) / std::max<int64_t>(1, P)), [&](int64_t r0, int64_t r1) {
      for (int64_t row = r0; row < r1; ++row) {
        const int64_t co = row / (g.KH * g.KW), ky = row / g.KW % g.KH, kx = row % g.KW;
        T* dr = dcols.get() + row * P;
        for (int64_t iy = 0; iy < g.H; ++iy) {
          const int64_t oy = iy * s - p + ky;
          for (int64_t ix = 0; ix < g.W; ++ix) {
            const int64_t ox = ix * s - p + kx;
            dr[iy * g.W + ix] = oy >= 0 && oy < OH && ox >= 0 && ox < OW ? dyn[(co * OH + oy) * OW + ox] : T(0);
          }
        }
      }
    });
    if (dx) gemm(false, false, g.Cin, P, K, T(1), w, K, dcols.get(), P, T(0), dx + n * g.Cin * P, P);
    if (dw) gemm(false, true, g.Cin, K, P, T(1), x + n * g.Cin * P, P, dcols.get(), P, n == 0 ? T(0) : T(1), dw, K);
  }
  if (dw && g.B == 0) std::fill(dw, dw + g.Cin * K, T(0));
}

// Inference helper, one image, channels-last input: x_tokens (H*W, Cin) row-major (a transformer's
// tokens of an H x W grid, token i = pixel (i / W, i % W)), w (Cin, Cout, KH, KW), b (Cout) or null;
// writes y (Cout, OH, OW) in NCHW order (overwritten). cols (H*W, Cout*KH*KW) = x_tokens · w is one
// GEMM; `scratch` may hold H*W*Cout*KH*KW elements to avoid an allocation (or be null). Equals
// conv_transpose2d_forward on the (1, Cin, H, W) permutation of x_tokens.
template <class T>
inline void conv_transpose2d_nhwc_forward(T* y, const T* x_tokens, const T* w, const T* b, int64_t H, int64_t W,
                                          int64_t Cin, int64_t Cout, int64_t KH, int64_t KW, int64_t stride,
                                          int64_t padding, T* scratch = nullptr) {
  const ConvTranspose2dGeometry g{.B = 1, .Cin = Cin, .H = H, .W = W, .Cout = Cout, .KH = KH, .KW = KW,
                                  .stride = stride, .padding = padding};
  std::shared_ptr<T[]> owned;
  if (!scratch) {
    owned = allocate_aligned<T>(g.P() * g.K());
    scratch = owned.get();
  }
  gemm(false, false, g.P(), g.K(), Cin, T(1), x_tokens, Cin, w, g.K(), T(0), scratch, g.K());
  detail::col2im_transposed(y, static_cast<const T*>(scratch), true, b, g);
}

// The same with the weight packed once in advance: w_packed = PackedB<T>(false, Cin, Cout*KH*KW, w,
// Cout*KH*KW) (the (Cin, Cout*KH*KW) matrix of w); bit-identical to the unpacked call.
template <class T>
inline void conv_transpose2d_nhwc_forward(T* y, const T* x_tokens, const PackedB<T>& w_packed, const T* b, int64_t H,
                                          int64_t W, int64_t Cin, int64_t Cout, int64_t KH, int64_t KW, int64_t stride,
                                          int64_t padding, T* scratch = nullptr) {
  const ConvTranspose2dGeometry g{.B = 1, .Cin = Cin, .H = H, .W = W, .Cout = Cout, .KH = KH, .KW = KW,
                                  .stride = stride, .padding = padding};
  SEGML_CHECK(w_packed.K() == Cin && w_packed.N() == g.K(), "conv_transpose2d_nhwc_forward: packed weight (", w_packed.K(),
              " x ", w_packed.N(), ") does not match Cin ", Cin, " x Cout*KH*KW ", g.K());
  std::shared_ptr<T[]> owned;
  if (!scratch) {
    owned = allocate_aligned<T>(g.P() * g.K());
    scratch = owned.get();
  }
  gemm_bias(g.P(), x_tokens, Cin, w_packed, static_cast<const T*>(nullptr), scratch, g.K());
  detail::col2im_transposed(y, static_cast<const T*>(scratch), true, b, g);
}

// ---- scalar reference twins ------------------------------------------------------------------

// Plain scatter loops, same shapes as conv_transpose2d_forward.
template <class T>
inline void conv_transpose2d_forward_ref(T* y, const T* x, const T* w, const T* b, const ConvTranspose2dGeometry& g) {
  const int64_t OH = g.OH(), OW = g.OW();
  for (int64_t n = 0; n < g.B; ++n)
    for (int64_t co = 0; co < g.Cout; ++co)
      std::fill(y + (n * g.Cout + co) * OH * OW, y + (n * g.Cout + co + 1) * OH * OW, b ? b[co] : T(0));
  for (int64_t n = 0; n < g.B; ++n)
    for (int64_t ci = 0; ci < g.Cin; ++ci)
      for (int64_t iy = 0; iy < g.H; ++iy)
        for (int64_t ix = 0; ix < g.W; ++ix) {
          const T xv = x[((n * g.Cin + ci) * g.H + iy) * g.W + ix];
          for (int64_t co = 0; co < g.Cout; ++co)
            for (int64_t ky = 0; ky < g.KH; ++ky)
              for (int64_t kx = 0; kx < g.KW; ++kx) {
                const int64_t oy = iy * g.stride - g.padding + ky, ox = ix * g.stride - g.padding + kx;
                if (oy < 0 || oy >= OH || ox < 0 || ox >= OW) continue;
                y[((n * g.Cout + co) * OH + oy) * OW + ox] += xv * w[((ci * g.Cout + co) * g.KH + ky) * g.KW + kx];
              }
        }
}

// Plain loops, same shapes as conv_transpose2d_backward; all three gradients, overwritten.
template <class T>
inline void conv_transpose2d_backward_ref(T* dx, T* dw, T* db, const T* dy, const T* x, const T* w,
                                          const ConvTranspose2dGeometry& g) {
  const int64_t OH = g.OH(), OW = g.OW();
  std::fill(dx, dx + g.B * g.Cin * g.H * g.W, T(0));
  std::fill(dw, dw + g.Cin * g.Cout * g.KH * g.KW, T(0));
  for (int64_t co = 0; co < g.Cout; ++co) {
    double acc = 0;
    for (int64_t n = 0; n < g.B; ++n)
      for (int64_t i = 0; i < OH * OW; ++i) acc += static_cast<double>(dy[(n * g.Cout + co) * OH * OW + i]);
    db[co] = static_cast<T>(acc);
  }
  for (int64_t n = 0; n < g.B; ++n)
    for (int64_t ci = 0; ci < g.Cin; ++ci)
      for (int64_t iy = 0; iy < g.H; ++iy)
        for (int64_t ix = 0; ix < g.W; ++ix) {
          const int64_t xi = ((n * g.Cin + ci) * g.H + iy) * g.W + ix;
          for (int64_t co = 0; co < g.Cout; ++co)
            for (int64_t ky = 0; ky < g.KH; ++ky)
              for (int64_t kx = 0; kx < g.KW; ++kx) {
                const int64_t oy = iy * g.stride - g.padding + ky, ox = ix * g.stride - g.padding + kx;
                if (oy < 0 || oy >= OH || ox < 0 || ox >= OW) continue;
                const T gy = dy[((n * g.Cout + co) * OH + oy) * OW + ox];
                const int64_t wi = ((ci * g.Cout + co) * g.KH + ky) * g.KW + kx;
                dx[xi] += w[wi] * gy;
                dw[wi] += x[xi] * gy;
              }
        }
}

}  // namespace segml::kernels
