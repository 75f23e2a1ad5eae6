// segml/kernels/conv2d.hpp: 2-d convolution (torch.nn.functional.conv2d, NCHW) forward and backward.
//
// Contract: x (B, C, H, W), w (OC, C/groups, KH, KW), b (OC) or null, y (B, OC, OH, OW) with
// OH = (H + 2ph - KH) / sh + 1 (floor: trailing input rows a window cannot reach are ignored, as in
// PyTorch). Every product goes through kernels::gemm, one GEMM per (image, group), on one of three
// layouts of the input chosen by conv2d_path():
//   pointwise  1x1, stride 1, no padding: the image IS the (C, H*W) matrix; no copy at all.
//   patchify   kernel == stride, no padding (SegFormer's sequence-reduction conv): the windows do not
//              overlap, so each output pixel's window is copied as one contiguous row (P, K).
//   im2col     everything else: the (K, P) column matrix with zero padding.
// Backward gives dx, dW, db, each optional (null) and overwritten, never accumulated.
// conv2d_forward_ref / conv2d_backward_ref are the direct 7-loop convolutions, the oracle.
// Dilation is not supported (SegFormer does not use it).
#pragma once

#include <algorithm>
#include <cstdint>
#include <memory>

#include "segml/core/parallel.hpp"
#include "segml/core/tensor.hpp"
#include "segml/kernels/gemm.hpp"

namespace segml::kernels {

// Sizes of one convolution. The caller validates them (ops::conv2d does).
struct Conv2dGeometry {
  int64_t B, C, H, W;  // input
  int64_t OC, KH, KW;  // weight (OC, C / groups, KH, KW)
  int64_t sh = 1, sw = 1, ph = 0, pw = 0, groups = 1;

  int64_t OH() const { return (H + 2 * ph - KH) / sh + 1; }
  int64_t OW() const { return (W + 2 * pw - KW) / sw + 1; }
  int64_t Cg() const { return C / groups; }     // input channels per group
  int64_t OCg() const { return OC / groups; }   // output channels per group
  int64_t K() const { return Cg() * KH * KW; }  // GEMM inner size: one window of one group
  int64_t P() const { return OH() * OW(); }     // output pixels per image
};

enum class Conv2dPath { pointwise, patchify, im2col };

inline Conv2dPath conv2d_path(const Conv2dGeometry& g) {
  const bool no_pad = g.ph == 0 && g.pw == 0;
  if (no_pad && g.KH == 1 && g.KW == 1 && g.sh == 1 && g.sw == 1) return Conv2dPath::pointwise;
  if (no_pad && g.KH == g.sh && g.KW == g.sw) return Conv2dPath::patchify;
  return Conv2dPath::im2col;
}

namespace detail {

// Smallest chunk of `unit`-element work items worth handing to a thread.
inline int64_t grain_for(int64_t unit) { return std::max<int64_t>(1, (int64_t{1} << 14) / std::max<int64_t>(1, unit)); }

// Sum of p (n) in a fixed order whatever the ISA: 8 interleaved partial sums (which the compiler
// vectorises), combined pairwise, then the tail.
template <class T>
inline T plane_sum(const T* p, int64_t n) {
  T acc[8] = {};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int k = 0; k < 8; ++k) acc[k] += p[i + k];
  T s = ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]));
  for (; i < n; ++i) s += p[i];
  return s;
}

// p[0, n) = value, in parallel when large.
template <class T>
inline void parallel_fill(T* p, int64_t n, T value) {
  parallel_for(n, int64_t{1} << 16, [&](int64_t i0, int64_t i1) { std::fill(p + i0, p + i1, value); });
}

// Output columns [ow0, ow1) whose tap kw lands inside the input row (iw = ow*sw - pw + kw in [0, W)).
inline void valid_columns(const Conv2dGeometry& g, int64_t kw, int64_t& ow0, int64_t& ow1) {
  const int64_t OW = g.OW();
  ow0 = kw >= g.pw ? 0 : (g.pw - kw + g.sw - 1) / g.sw;
  const int64_t last = g.W - 1 + g.pw - kw;  // largest ow*sw allowed
  ow1 = last < 0 ? 0 : std::min(OW, last / g.sw + 1);
  ow0 = std::min(ow0, ow1);
}

// cols (K, P): cols[(c, kh, kw)][(oh, ow)] = x[c][oh*sh - ph + kh][ow*sw - pw + kw], 0 outside.  x (Cg, H, W)
template <class T>
inline void im2col(T* cols, const T* x, const Conv2dGeometry& g) {
  const int64_t OH = g.OH(), OW = g.OW(), P = g.P(), KK = g.KH * g.KW;
  parallel_for(g.K(), grain_for(P), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t c = r / KK, kh = (r / g.KW) % g.KH, kw = r % g.KW;
      int64_t ow0, ow1;
      valid_columns(g, kw, ow0, ow1);
      for (int64_t oh = 0; oh < OH; ++oh) {
        T* d = cols + r * P + oh * OW;
        const int64_t ih = oh * g.sh - g.ph + kh;
        if (ih < 0 || ih >= g.H) {
          std::fill(d, d + OW, T(0));
          continue;
        }
        const T* src = x + (c * g.H + ih) * g.W - g.pw + kw;
        std::fill(d, d + ow0, T(0));
        for (int64_t ow = ow0; ow < ow1; ++ow) d[ow] = src[ow * g.sw];
        std::fill(d + ow1, d + OW, T(0));
      }
    }
  });
}

// dx += col2im(dcols): the adjoint of im2col.  dcols (K, P), dx (Cg, H, W)
template <class T>
inline void col2im_add(T* dx, const T* dcols, const Conv2dGeometry& g) {
  const int64_t OH = g.OH(), OW = g.OW(), P = g.P();
  // A channel's rows only touch its own plane, so channels run in parallel.
  parallel_for(g.Cg(), grain_for(g.KH * g.KW * P), [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c)
      for (int64_t kh = 0; kh < g.KH; ++kh)
        for (int64_t kw = 0; kw < g.KW; ++kw) {
          int64_t ow0, ow1;
          valid_columns(g, kw, ow0, ow1);
          const T* s = dcols + ((c * g.KH + kh) * g.KW + kw) * P;
          for (int64_t oh = 0; oh < OH; ++oh) {
            const int64_t ih = oh * g.sh - g.ph + kh;
            if (ih < 0 || ih >= g.H) continue;
            T* dst = dx + (c * g.H + ih) * g.W - g.pw + kw;
            for (int64_t ow = ow0; ow < ow1; ++ow) dst[ow * g.sw] += s[oh * OW + ow];
          }
        }
  });
}

// patches (P, K): patches[(oh, ow)][(c, kh, kw)] = x[c][oh*KH + kh][ow*KW + kw] (kernel == stride,
// no padding: windows tile the input, each window row is KW contiguous values).  x (Cg, H, W)
template <class T>
inline void patchify(T* patches, const T* x, const Conv2dGeometry& g) {
  const int64_t OW = g.OW(), K = g.K();
  parallel_for(g.OH(), grain_for(OW * K), [&](int64_t oh0, int64_t oh1) {
    for (int64_t oh = oh0; oh < oh1; ++oh)
      for (int64_t ow = 0; ow < OW; ++ow) {
        T* d = patches + (oh * OW + ow) * K;
        for (int64_t c = 0; c < g.Cg(); ++c)
          for (int64_t kh = 0; kh < g.KH; ++kh, d += g.KW) {
            const T* s = x + (c * g.H + oh * g.KH + kh) * g.W + ow * g.KW;
            std::copy(s, s + g.KW, d);
          }
      }
  });
}

// The adjoint of patchify: each covered dx element gets its one patch value (windows do not
// overlap); rows / columns no window reaches are left untouched.  patches (P, K), dx (Cg, H, W)
template <class T>
inline void unpatchify(T* dx, const T* patches, const Conv2dGeometry& g) {
  const int64_t OW = g.OW(), K = g.K();
  parallel_for(g.OH(), grain_for(OW * K), [&](int64_t oh0, int64_t oh1) {
    for (int64_t oh = oh0; oh < oh1; ++oh)
      for (int64_t ow = 0; ow < OW; ++ow) {
        const T* s = patches + (oh * OW + ow) * K;
        for (int64_t c = 0; c < g.Cg(); ++c)
          for (int64_t kh = 0; kh < g.KH; ++kh, s += g.KW)
            std::copy(s, s + g.KW, dx + (c * g.H + oh * g.KH + kh) * g.W + ow * g.KW);
      }
  });
}

}  // namespace detail

// y = conv2d(x, w) + b.  x (B, C, H, W), w (OC, C/groups, KH, KW), b (OC) or null, y (B, OC, OH, OW)
template <class T>
inline void conv2d_forward(T* y, const T* x, const T* w, const T* b, const Conv2dGeometry& g) {
  const int64_t P = g.P(), K = g.K(), OCg = g.OCg(), Cg = g.Cg();
  const Conv2dPath path = conv2d_path(g);
  // The patch / column matrix is written in full before it is read: no zero-fill. Its storage is recycled.
  const std::shared_ptr<T[]> cols_storage = allocate_aligned<T>(path == Conv2dPath::pointwise ? 0 : K * P);
  T* const cols = cols_storage.get();
  for (int64_t bi = 0; bi < g.B; ++bi)
    for (int64_t gi = 0; gi < g.groups; ++gi) {
      const T* xg = x + (bi * g.C + gi * Cg) * g.H * g.W;
      const T* wg = w + gi * OCg * K;
      T* yg = y + (bi * g.OC + gi * OCg) * P;
      if (b)
        parallel_for(OCg, detail::grain_for(P), [&](int64_t o0, int64_t o1) {
          for (int64_t o = o0; o < o1; ++o) std::fill(yg + o * P, yg + (o + 1) * P, b[gi * OCg + o]);
        });
      const T beta = b ? T(1) : T(0);
      switch (path) {
        case Conv2dPath::pointwise:  // y_g (OCg, P) = W_g (OCg, Cg) · x_g (Cg, P)
          gemm<T>(false, false, OCg, P, K, T(1), wg, K, xg, P, beta, yg, P);
          break;
        case Conv2dPath::patchify:  // y_g = W_g (OCg, K) · patchesᵀ (K, P)
          detail::patchify(cols, xg, g);
          gemm<T>(false, true, OCg, P, K, T(1), wg, K, cols, K, beta, yg, P);
          break;
        case Conv2dPath::im2col:  // y_g = W_g (OCg, K) · cols (K, P)
          detail::im2col(cols, xg, g);
          gemm<T>(false, false, OCg, P, K, T(1), wg, K, cols, P, beta, yg, P);
          break;
      }
    }
}

// dx = conv2d's input gradient, dw = weight gradient, db = bias gradient (each may be null).
// dy (B, OC, OH, OW), x (B, C, H, W), w (OC, C/groups, KH, KW); dx like x, dw like w, db (OC)
template <class T>
inline void conv2d_backward(T* dx, T* dw, T* db, const T* dy, const T* x, const T* w, const Conv2dGeometry& g) {
  const int64_t P = g.P(), K = g.K(), OCg = g.OCg(), Cg = g.Cg();
  const Conv2dPath path = conv2d_path(g);
  if (db)  // each channel sums its planes in image order, whatever the thread count
    parallel_for(g.OC, detail::grain_for(g.B * P), [&](int64_t o0, int64_t o1) {
      for (int64_t o = o0; o < o1; ++o) {
        T s = 0;
        for (int64_t bi = 0; bi < g.B; ++bi) s += detail::plane_sum(dy + (bi * g.OC + o) * P, P);
        db[o] = s;
      }
    });
  if (!dx && !dw) return;
  if (dw) std::fill(dw, dw + g.OC * K, T(0));
  // col2im accumulates into dx; unpatchify writes every element a window covers.
  const bool covered = path == Conv2dPath::patchify && g.OH() * g.KH == g.H && g.OW() * g.KW == g.W;
  if (dx && path != Conv2dPath::pointwise && !covered) detail::parallel_fill(dx, g.B * g.C * g.H * g.W, T(0));
  // The patch / column matrix is written in full before it is read: no zero-fill. Its storage is recycled.
  const std::shared_ptr<T[]> cols_storage = allocate_aligned<T>(path == Conv2dPath::pointwise ? 0 : K * P);
  T* const cols = cols_storage.get();
  for (int64_t bi = 0; bi < g.B; ++bi)
    for (int64_t gi = 0; gi < g.groups; ++gi) {
      const T* xg = x + (bi * g.C + gi * Cg) * g.H * g.W;
      const T* wg = w + gi * OCg * K;
      const T* dyg = dy + (bi * g.OC + gi * OCg) * P;
      T* dxg = dx ? dx + (bi * g.C + gi * Cg) * g.H * g.W : nullptr;
      T* dwg = dw ? dw + gi * OCg * K : nullptr;
      switch (path) {
        case Conv2dPath::pointwise:
          if (dwg) gemm<T>(false, true, OCg, K, P, T(1), dyg, P, xg, P, T(1), dwg, K);  // dW += dy·xᵀ
          if (dxg) gemm<T>(true, false, K, P, OCg, T(1), wg, K, dyg, P, T(0), dxg, P);  // dx = Wᵀ·dy
          break;
        case Conv2dPath::patchify:
          if (dwg) {  // dW (OCg, K) += dy (OCg, P) · patches (P, K)
            detail::patchify(cols, xg, g);
            gemm<T>(false, false, OCg, K, P, T(1), dyg, P, cols, K, T(1), dwg, K);
          }
          if (dxg) {  // dpatches (P, K) = dyᵀ (P, OCg) · W (OCg, K)
            gemm<T>(true, false, P, K, OCg, T(1), dyg, P, wg, K, T(0), cols, K);
            detail::unpatchify(dxg, cols, g);
          }
          break;
        case Conv2dPath::im2col:
          if (dwg) {  // dW (OCg, K) += dy (OCg, P) · colsᵀ (P, K)
            detail::im2col(cols, xg, g);
            gemm<T>(false, true, OCg, K, P, T(1), dyg, P, cols, P, T(1), dwg, K);
          }
          if (dxg) {  // dcols (K, P) = Wᵀ (K, OCg) · dy (OCg, P)
            gemm<T>(true, false, K, P, OCg, T(1), wg, K, dyg, P, T(0), cols, P);
            detail::col2im_add(dxg, cols, g);
          }
          break;
      }
    }
}

// Scalar reference twin: y[b][o][oh][ow] = b[o] + Σ_{c, kh, kw} x[b][gi*Cg + c][ih][iw] · w[o][c][kh][kw].
template <class T>
inline void conv2d_forward_ref(T* y, const T* x, const T* w, const T* b, const Conv2dGeometry& g) {
  const int64_t OH = g.OH(), OW = g.OW(), Cg = g.Cg(), OCg = g.OCg();
  for (int64_t bi = 0; bi < g.B; ++bi)
    for (int64_t o = 0; o < g.OC; ++o)
      for (int64_t oh = 0; oh < OH; ++oh)
        for (int64_t ow = 0; ow < OW; ++ow) {
          T acc = b ? b[o] : T(0);
          const int64_t gi = o / OCg;
          for (int64_t c = 0; c < Cg; ++c)
            for (int64_t kh = 0; kh < g.KH; ++kh)
              for (int64_t kw = 0; kw < g.KW; ++kw) {
                const int64_t ih = oh * g.sh - g.ph + kh, iw = ow * g.sw - g.pw + kw;
                if (ih < 0 || ih >= g.H || iw < 0 || iw >= g.W) continue;
                acc += x[((bi * g.C + gi * Cg + c) * g.H + ih) * g.W + iw] * w[((o * Cg + c) * g.KH + kh) * g.KW + kw];
              }
          y[((bi * g.OC + o) * OH + oh) * OW + ow] = acc;
        }
}

// Scalar reference twin of conv2d_backward: the same loops, scattering dy into dx, dw, db.
template <class T>
inline void conv2d_backward_ref(T* dx, T* dw, T* db, const T* dy, const T* x, const T* w, const Conv2dGeometry& g) {
  const int64_t OH = g.OH(), OW = g.OW(), Cg = g.Cg(), OCg = g.OCg();
  if (dx) std::fill(dx, dx + g.B * g.C * g.H * g.W, T(0));
  if (dw) std::fill(dw, dw + g.OC * g.K(), T(0));
  if (db) std::fill(db, db + g.OC, T(0));
  for (int64_t bi = 0; bi < g.B; ++bi)
    for (int64_t o = 0; o < g.OC; ++o)
      for (int64_t oh = 0; oh < OH; ++oh)
        for (int64_t ow = 0; ow < OW; ++ow) {
          const T d = dy[((bi * g.OC + o) * OH + oh) * OW + ow];
          if (db) db[o] += d;
          const int64_t gi = o / OCg;
          for (int64_t c = 0; c < Cg; ++c)
            for (int64_t kh = 0; kh < g.KH; ++kh)
              for (int64_t kw = 0; kw < g.KW; ++kw) {
                const int64_t ih = oh * g.sh - g.ph + kh, iw = ow * g.sw - g.pw + kw;
                if (ih < 0 || ih >= g.H || iw < 0 || iw >= g.W) continue;
                const int64_t xi = ((bi * g.C + gi * Cg + c) * g.H + ih) * g.W + iw;
                const int64_t wi = ((o * Cg + c) * g.KH + kh) * g.KW + kw;
                if (dx) dx[xi] += d * w[wi];
                if (dw) dw[wi] += d * x[xi];
              }
        }
}

}  // namespace segml::kernels
