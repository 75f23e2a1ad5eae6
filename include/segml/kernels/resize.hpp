// segml/kernels/resize.hpp: bilinear and bicubic resize to a given size, align_corners=False, and
// their adjoints.
//
// Matches torch.nn.functional.interpolate(x, size=(OH, OW), mode="bilinear", align_corners=False)
// (no antialias) for any sizes, up or down. Per axis, output index o reads
//   src = max(0, (o + 0.5) * in/out - 0.5),  i0 = min(floor(src), in-1),  i1 = min(i0+1, in-1),
//   λ = src - i0,  value = (1-λ) x[i0] + λ x[i1]
// with in/out and src computed in T, as PyTorch does. Rows and columns combine as
//   y = (1-λy) ((1-λx) x00 + λx x01) + λy ((1-λx) x10 + λx x11),
// the same expression (and order) as PyTorch's CPU kernel.
//
// Optimised path: the map of each axis is computed once per call; each plane is resized
// separably, horizontally first on the input rows the output needs (a gather, each needed row
// once, at most min(H, 2*OH) rows, kept in a two-row cache), then vertically (contiguous rows the compiler vectorises). The backward
// is the exact adjoint in the reverse order, written as gathers over the transposed taps (each
// input pixel sums the outputs that read it), so it has no scatter. Parallel over planes (B*C).
// resize_bilinear_forward_ref / _backward_ref are the plain four-tap loops, the oracle.
//
// Bicubic (resize_bicubic_*) matches torch.nn.functional.interpolate(x, size=(OH, OW),
// mode="bicubic", align_corners=False) (no antialias), PyTorch's upsample_bicubic2d: per axis,
//   src = (o + 0.5) * in/out - 0.5   (NOT clamped at 0, unlike bilinear),
//   i = floor(src) (at most in-1),  t = clamp(src - i, 0, 1),
//   value = Σ_{j=0..3} w_j(t) x[clamp(i - 1 + j, 0, in-1)]
// with Keys' cubic convolution weights, A = -0.75:
//   w_0 = c2(t+1), w_1 = c1(t), w_2 = c1(1-t), w_3 = c2(2-t),
//   c1(u) = ((A+2) u - (A+3)) u² + 1,  c2(u) = ((A u - 5A) u + 8A) u - 4A,
// everything in T as PyTorch computes it for that dtype. Border taps repeat the edge pixel, so
// the backward (the exact adjoint) adds every clamped tap's gradient into that edge pixel.
// The kernels are separable (rows then columns, each plane in turn, parallel over planes); the
// _ref twins are the plain 16-tap loops (the backward a scatter).
// Not done here: align_corners=True, scale_factor-specified sizes, antialias, other modes.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <vector>

#include "segml/core/parallel.hpp"
#include "segml/core/tensor.hpp"

namespace segml::kernels {

// Where output index o of one axis reads: (1 - lambda) * x[i0] + lambda * x[i1].
template <class T>
struct ResizeTap {
  int64_t i0, i1;
  T lambda;
};

// PyTorch's source-index rule for a size-specified resize, align_corners=False.
template <class T>
inline ResizeTap<T> resize_tap(int64_t in, int64_t out, int64_t o) {
  const T scale = static_cast<T>(in) / static_cast<T>(out);
  const T src = std::max(T(0), (static_cast<T>(o) + T(0.5)) * scale - T(0.5));
  const int64_t i0 = std::min(static_cast<int64_t>(src), in - 1);  // src >= 0, so truncation is floor
  return {i0, std::min(i0 + 1, in - 1), src - static_cast<T>(i0)};
}

namespace detail {
// One axis's taps as structure-of-arrays, for the inner loops.
template <class T>
struct ResizeAxis {
  std::vector<int64_t> i0, i1;
  std::vector<T> w0, w1;  // 1 - lambda, lambda
  ResizeAxis(int64_t in, int64_t out) : i0(out), i1(out), w0(out), w1(out) {
    for (int64_t o = 0; o < out; ++o) {
      const ResizeTap<T> t = resize_tap<T>(in, out, o);
      i0[o] = t.i0;
      i1[o] = t.i1;
      w0[o] = T(1) - t.lambda;
      w1[o] = t.lambda;
    }
  }
};

// The same taps seen from the input side (the adjoint map, in compressed-row form): input index i
// receives from outputs from[k] with weights w[k], for k in [start[i], start[i+1]), in increasing o.
// A border tap with i0 == i1 appears twice, once per weight.
template <class T>
struct ResizeAxisT {
  std::vector<int64_t> start, from;
  std::vector<T> w;
  ResizeAxisT(const ResizeAxis<T>& a, int64_t in) : start(static_cast<size_t>(in + 1), 0) {
    const int64_t out = static_cast<int64_t>(a.i0.size());
    for (int64_t o = 0; o < out; ++o) ++start[a.i0[o] + 1], ++start[a.i1[o] + 1];
    for (int64_t i = 0; i < in; ++i) start[i + 1] += start[i];
    std::vector<int64_t> next(start.begin(), start.end() - 1);
    from.resize(static_cast<size_t>(2 * out));
    w.resize(static_cast<size_t>(2 * out));
    for (int64_t o = 0; o < out; ++o) {
      from[next[a.i0[o]]] = o, w[next[a.i0[o]]++] = a.w0[o];
      from[next[a.i1[o]]] = o, w[next[a.i1[o]]++] = a.w1[o];
    }
  }
};

// Planes per parallel chunk: enough that a chunk holds ~64K output elements.
inline int64_t resize_grain(int64_t H, int64_t W, int64_t OH, int64_t OW) {
  return std::max<int64_t>(1, (int64_t{1} << 16) / std::max<int64_t>(1, OH * OW + H * W));
}
}  // namespace detail

// y = resize(x).  x (planes, H, W), y (planes, OH, OW); planes = B*C.
template <class T>
inline void resize_bilinear_forward(T* y, const T* x, int64_t planes, int64_t H, int64_t W, int64_t OH, int64_t OW) {
  const detail::ResizeAxis<T> ry(H, OH), rx(W, OW);
  parallel_for(planes, detail::resize_grain(H, W, OH, OW), [&](int64_t begin, int64_t end) {
    // Input row i, resized horizontally, lives in slot i % 2 (tag[i % 2] == i): the rows an output
    // row reads are i0 and i0 + 1 (or i0 twice), and i0 never decreases, so each is made once.
    std::unique_ptr<T[]> rows(new T[static_cast<size_t>(2 * OW)]);
    for (int64_t p = begin; p < end; ++p) {
      const T* xp = x + p * H * W;
      int64_t tag[2] = {-1, -1};
      auto row = [&](int64_t i) {
        T* r = rows.get() + (i & 1) * OW;
        if (tag[i & 1] != i) {
          const T* xr = xp + i * W;
          for (int64_t ox = 0; ox < OW; ++ox) r[ox] = rx.w0[ox] * xr[rx.i0[ox]] + rx.w1[ox] * xr[rx.i1[ox]];
          tag[i & 1] = i;
        }
        return static_cast<const T*>(r);
      };
      for (int64_t oy = 0; oy < OH; ++oy) {
        const T* __restrict r0 = row(ry.i0[oy]);
        const T* __restrict r1 = row(ry.i1[oy]);
        T* __restrict yr = y + (p * OH + oy) * OW;
        const T w0 = ry.w0[oy], w1 = ry.w1[oy];
        for (int64_t ox = 0; ox < OW; ++ox) yr[ox] = w0 * r0[ox] + w1 * r1[ox];
      }
    }
  });
}

// dx = resizeᵀ(dy), the adjoint of resize_bilinear_forward; dx is overwritten.
// dy (planes, OH, OW), dx (planes, H, W)
template <class T>
inline void resize_bilinear_backward(T* dx, const T* dy, int64_t planes, int64_t H, int64_t W, int64_t OH, int64_t OW) {
  const detail::ResizeAxis<T> ry(H, OH), rx(W, OW);
  const detail::ResizeAxisT<T> ty(ry, H), tx(rx, W);
  parallel_for(planes, detail::resize_grain(H, W, OH, OW), [&](int64_t begin, int64_t end) {
    std::unique_ptr<T[]> row(new T[static_cast<size_t>(OW)]);  // gradient of one horizontally resized row
    T* __restrict r = row.get();
    for (int64_t p = begin; p < end; ++p) {
      for (int64_t i = 0; i < H; ++i) {
        T* dr = dx + (p * H + i) * W;
        const int64_t k0 = ty.start[i], k1 = ty.start[i + 1];
        if (k0 == k1) {  // no output row reads input row i
          std::fill(dr, dr + W, T(0));
          continue;
        }
        // Vertical adjoint: r = sum of w * dy[oy] over the output rows that read row i (contiguous).
        for (int64_t k = k0; k < k1; ++k) {
          const T* __restrict g = dy + (p * OH + ty.from[k]) * OW;
          const T w = ty.w[k];
          if (k == k0)
            for (int64_t ox = 0; ox < OW; ++ox) r[ox] = w * g[ox];
          else
            for (int64_t ox = 0; ox < OW; ++ox) r[ox] += w * g[ox];
        }
        // Horizontal adjoint, as a gather: dx[i, j] = sum of w * r[ox] over the columns that read j.
        for (int64_t j = 0; j < W; ++j) {
          T acc = 0;
          for (int64_t k = tx.start[j]; k < tx.start[j + 1]; ++k) acc += tx.w[k] * r[tx.from[k]];
          dr[j] = acc;
        }
      }
    }
  });
}

// Channels-last resize, accumulated: y (OH, OW, C) += resize(x (H, W, C)), with the taps and the
// per-element expression of resize_bilinear_forward. The folded decode head of the inference
// engine sums every stage's upsampled projection this way (models/segformer_inference.hpp), a few
// output rows at a time.
//
// Output rows [oy0, oy1) of resize_bilinear_nhwc_add, serially, with the axes' taps given
// (ry: H -> OH, rx: W -> OW): y points at output row oy0, (oy1 - oy0, OW, C); x (H, W, C).
template <class T>
inline void resize_bilinear_nhwc_add_rows(T* y, const T* x, int64_t W, int64_t C, const detail::ResizeAxis<T>& ry,
                                          const detail::ResizeAxis<T>& rx, int64_t oy0, int64_t oy1) {
  const int64_t OW = static_cast<int64_t>(rx.i0.size());
  for (int64_t oy = oy0; oy < oy1; ++oy) {
    const T wy0 = ry.w0[oy], wy1 = ry.w1[oy];
    const T* x0 = x + ry.i0[oy] * W * C;
    const T* x1 = x + ry.i1[oy] * W * C;
    for (int64_t ox = 0; ox < OW; ++ox) {
      const T wx0 = rx.w0[ox], wx1 = rx.w1[ox];
      const T* __restrict a = x0 + rx.i0[ox] * C;
      const T* __restrict b1 = x0 + rx.i1[ox] * C;
      const T* __restrict c = x1 + rx.i0[ox] * C;
      const T* __restrict d = x1 + rx.i1[ox] * C;
      T* __restrict out = y + ((oy - oy0) * OW + ox) * C;
      for (int64_t k = 0; k < C; ++k) out[k] += wy0 * (wx0 * a[k] + wx1 * b1[k]) + wy1 * (wx0 * c[k] + wx1 * d[k]);
    }
  }
}

// All rows: y (OH, OW, C) += resize(x (H, W, C)), parallel over output rows; the channel loop is
// contiguous, so it vectorises.
template <class T>
inline void resize_bilinear_nhwc_add(T* y, const T* x, int64_t H, int64_t W, int64_t C, int64_t OH, int64_t OW) {
  const detail::ResizeAxis<T> ry(H, OH), rx(W, OW);
  parallel_for(OH, std::max<int64_t>(1, (int64_t{1} << 14) / std::max<int64_t>(1, OW * C)), [&](int64_t b, int64_t e) {
    resize_bilinear_nhwc_add_rows(y + b * OW * C, x, W, C, ry, rx, b, e);
  });
}

// ---- scalar reference twins ------------------------------------------------------------------

// Plain four-tap loop, same shapes as resize_bilinear_forward.
template <class T>
inline void resize_bilinear_forward_ref(T* y, const T* x, int64_t planes, int64_t H, int64_t W, int64_t OH,
                                        int64_t OW) {
  for (int64_t p = 0; p < planes; ++p)
    for (int64_t oy = 0; oy < OH; ++oy) {
      const ResizeTap<T> ty = resize_tap<T>(H, OH, oy);
      for (int64_t ox = 0; ox < OW; ++ox) {
        const ResizeTap<T> tx = resize_tap<T>(W, OW, ox);
        const T* xp = x + p * H * W;
        const T top = (T(1) - tx.lambda) * xp[ty.i0 * W + tx.i0] + tx.lambda * xp[ty.i0 * W + tx.i1];
        const T bottom = (T(1) - tx.lambda) * xp[ty.i1 * W + tx.i0] + tx.lambda * xp[ty.i1 * W + tx.i1];
        y[(p * OH + oy) * OW + ox] = (T(1) - ty.lambda) * top + ty.lambda * bottom;
      }
    }
}

// Plain four-tap scatter, same shapes as resize_bilinear_backward; dx is overwritten.
template <class T>
inline void resize_bilinear_backward_ref(T* dx, const T* dy, int64_t planes, int64_t H, int64_t W, int64_t OH,
                                         int64_t OW) {
  std::fill(dx, dx + planes * H * W, T(0));
  for (int64_t p = 0; p < planes; ++p)
    for (int64_t oy = 0; oy < OH; ++oy) {
      const ResizeTap<T> ty = resize_tap<T>(H, OH, oy);
      for (int64_t ox = 0; ox < OW; ++ox) {
        const ResizeTap<T> tx = resize_tap<T>(W, OW, ox);
        const T g = dy[(p * OH + oy) * OW + ox];
        T* dxp = dx + p * H * W;
        dxp[ty.i0 * W + tx.i0] += (T(1) - ty.lambda) * (T(1) - tx.lambda) * g;
        dxp[ty.i0 * W + tx.i1] += (T(1) - ty.lambda) * tx.lambda * g;
        dxp[ty.i1 * W + tx.i0] += ty.lambda * (T(1) - tx.lambda) * g;
        dxp[ty.i1 * W + tx.i1] += ty.lambda * tx.lambda * g;
      }
    }
}

// ---- bicubic -------------------------------------------------------------------------------------

// Where output index o of one axis reads: Σ_j w[j] * x[idx[j]], j = 0..3 (idx already clamped).
template <class T>
struct CubicTap {
  int64_t idx[4];
  T w[4];
};

// PyTorch's bicubic source-index rule and weights (upsample_bicubic2d, align_corners=False).
template <class T>
inline CubicTap<T> cubic_tap(int64_t in, int64_t out, int64_t o) {
  const T scale = static_cast<T>(in) / static_cast<T>(out);
  const T src = scale * (static_cast<T>(o) + T(0.5)) - T(0.5);  // no clamp at 0 for bicubic
  const int64_t i = std::min(static_cast<int64_t>(std::floor(src)), in - 1);
  const T t = std::min(std::max(src - static_cast<T>(i), T(0)), T(1));
  const T A = T(-0.75);
  auto c1 = [A](T u) { return ((A + T(2)) * u - (A + T(3))) * u * u + T(1); };
  auto c2 = [A](T u) { return ((A * u - T(5) * A) * u + T(8) * A) * u - T(4) * A; };
  CubicTap<T> tap;
  tap.w[0] = c2(t + T(1));
  tap.w[1] = c1(t);
  tap.w[2] = c1(T(1) - t);
  tap.w[3] = c2(T(2) - t);
  for (int j = 0; j < 4; ++j) tap.idx[j] = std::clamp<int64_t>(i - 1 + j, 0, in - 1);
  return tap;
}

namespace detail {
template <class T>
inline std::vector<CubicTap<T>> cubic_axis(int64_t in, int64_t out) {
  std::vector<CubicTap<T>> taps(static_cast<size_t>(out));
  for (int64_t o = 0; o < out; ++o) taps[static_cast<size_t>(o)] = cubic_tap<T>(in, out, o);
  return taps;
}
}  // namespace detail

// y = bicubic(x).  x (planes, H, W), y (planes, OH, OW); planes = B*C.
// Separable: each input row resized horizontally into a (H, OW) buffer, then each output row as
// four weighted buffer rows (contiguous, vectorised by the compiler).
template <class T>
inline void resize_bicubic_forward(T* y, const T* x, int64_t planes, int64_t H, int64_t W, int64_t OH, int64_t OW) {
  const std::vector<CubicTap<T>> ty = detail::cubic_axis<T>(H, OH), tx = detail::cubic_axis<T>(W, OW);
  parallel_for(planes, detail::resize_grain(H, W, OH, OW), [&](int64_t begin, int64_t end) {
    std::unique_ptr<T[]> buf(new T[static_cast<size_t>(H * OW)]);
    for (int64_t p = begin; p < end; ++p) {
      const T* xp = x + p * H * W;
      for (int64_t i = 0; i < H; ++i) {
        const T* xr = xp + i * W;
        T* r = buf.get() + i * OW;
        for (int64_t ox = 0; ox < OW; ++ox) {
          const CubicTap<T>& t = tx[static_cast<size_t>(ox)];
          r[ox] = t.w[0] * xr[t.idx[0]] + t.w[1] * xr[t.idx[1]] + t.w[2] * xr[t.idx[2]] + t.w[3] * xr[t.idx[3]];
        }
      }
      for (int64_t oy = 0; oy < OH; ++oy) {
        const CubicTap<T>& t = ty[static_cast<size_t>(oy)];
        const T* __restrict r0 = buf.get() + t.idx[0] * OW;
        const T* __restrict r1 = buf.get() + t.idx[1] * OW;
        const T* __restrict r2 = buf.get() + t.idx[2] * OW;
        const T* __restrict r3 = buf.get() + t.idx[3] * OW;
        T* __restrict yr = y + (p * OH + oy) * OW;
        const T w0 = t.w[0], w1 = t.w[1], w2 = t.w[2], w3 = t.w[3];
        for (int64_t ox = 0; ox < OW; ++ox) yr[ox] = w0 * r0[ox] + w1 * r1[ox] + w2 * r2[ox] + w3 * r3[ox];
      }
    }
  });
}

// dx = bicubicᵀ(dy), the exact adjoint of resize_bicubic_forward (clamped border taps included);
// dx is overwritten.  dy (planes, OH, OW), dx (planes, H, W)
template <class T>
inline void resize_bicubic_backward(T* dx, const T* dy, int64_t planes, int64_t H, int64_t W, int64_t OH, int64_t OW) {
  const std::vector<CubicTap<T>> ty = detail::cubic_axis<T>(H, OH), tx = detail::cubic_axis<T>(W, OW);
  parallel_for(planes, detail::resize_grain(H, W, OH, OW), [&](int64_t begin, int64_t end) {
    std::unique_ptr<T[]> buf(new T[static_cast<size_t>(H * OW)]);  // gradient of the horizontal pass
    for (int64_t p = begin; p < end; ++p) {
      std::fill(buf.get(), buf.get() + H * OW, T(0));
      for (int64_t oy = 0; oy < OH; ++oy) {  // vertical adjoint: scatter whole rows
        const CubicTap<T>& t = ty[static_cast<size_t>(oy)];
        const T* __restrict g = dy + (p * OH + oy) * OW;
        for (int j = 0; j < 4; ++j) {
          T* __restrict r = buf.get() + t.idx[j] * OW;
          const T w = t.w[j];
          for (int64_t ox = 0; ox < OW; ++ox) r[ox] += w * g[ox];
        }
      }
      T* dxp = dx + p * H * W;
      std::fill(dxp, dxp + H * W, T(0));
      for (int64_t i = 0; i < H; ++i) {  // horizontal adjoint
        const T* r = buf.get() + i * OW;
        T* dr = dxp + i * W;
        for (int64_t ox = 0; ox < OW; ++ox) {
          const CubicTap<T>& t = tx[static_cast<size_t>(ox)];
          for (int j = 0; j < 4; ++j) dr[t.idx[j]] += t.w[j] * r[ox];
        }
      }
    }
  });
}

// Plain 16-tap loop, same shapes as resize_bicubic_forward.
template <class T>
inline void resize_bicubic_forward_ref(T* y, const T* x, int64_t planes, int64_t H, int64_t W, int64_t OH, int64_t OW) {
  for (int64_t p = 0; p < planes; ++p)
    for (int64_t oy = 0; oy < OH; ++oy) {
      const CubicTap<T> ty = cubic_tap<T>(H, OH, oy);
      for (int64_t ox = 0; ox < OW; ++ox) {
        const CubicTap<T> tx = cubic_tap<T>(W, OW, ox);
        T acc = 0;
        for (int a = 0; a < 4; ++a) {
          T row = 0;
          for (int b = 0; b < 4; ++b) row += tx.w[b] * x[(p * H + ty.idx[a]) * W + tx.idx[b]];
          acc += ty.w[a] * row;
        }
        y[(p * OH + oy) * OW + ox] = acc;
      }
    }
}

// Plain 16-tap scatter, same shapes as resize_bicubic_backward; dx is overwritten.
template <class T>
inline void resize_bicubic_backward_ref(T* dx, const T* dy, int64_t planes, int64_t H, int64_t W, int64_t OH,
                                        int64_t OW) {
  std::fill(dx, dx + planes * H * W, T(0));
  for (int64_t p = 0; p < planes; ++p)
    for (int64_t oy = 0; oy < OH; ++oy) {
      const CubicTap<T> ty = cubic_tap<T>(H, OH, oy);
      for (int64_t ox = 0; ox < OW; ++ox) {
        const CubicTap<T> tx = cubic_tap<T>(W, OW, ox);
        const T g = dy[(p * OH + oy) * OW + ox];
        for (int a = 0; a < 4; ++a)
          for (int b = 0; b < 4; ++b) dx[(p * H + ty.idx[a]) * W + tx.idx[b]] += ty.w[a] * tx.w[b] * g;
      }
    }
}

}  // namespace segml::kernels
