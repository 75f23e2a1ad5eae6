// segml/kernels/optim.hpp: the element-wise updates of SGD (with momentum) and AdamW, as
// torch.optim's single-tensor (foreach=False) implementations compute them, operation by operation.
//
//   sgd_step    d = g + wd * w (when wd != 0); with momentum: buf = d on the first step, else
//               buf = momentum * buf + d, and d = buf; then w = w - lr * d
//   adamw_step  w = w * decay                        (param.mul_(1 - lr * wd))
//               m = m * b1 + (1 - b1) * g            (exp_avg.mul_(b1).add_(g, 1 - b1))
//               v = v * b2 + (1 - b2) * g * g        (exp_avg_sq.mul_(b2).addcmul_(g, g, 1 - b2))
//               w = w - step_size * m / (sqrt(v) / bc2_sqrt + eps)
//                                                    (param.addcdiv_(exp_avg, denom, -step_size))
//
// Contract:
//  - w, g, buf / m, v (n), updated in place; scalars already in T, as torch applies Python floats.
//  - *_ref are the serial scalar twins. The dispatching versions write the loop once on the simd
//    backends (AVX-512, AVX2, NEON for float; scalar for double and SEGML_ISA=scalar) and run in
//    parallel. The operations are the twin's, in its order, each rounded (simd::Rounding::each_op:
//    no multiply-add is fused), so the results equal the twin's and PyTorch's bit for bit on every
//    ISA where the twin itself is compiled unfused (x86-64; on AArch64 the compiler may fuse the
//    twin's own multiply-adds). The result never depends on the thread count.
#pragma once

#include <cmath>
#include <cstdint>

#include "segml/simd/dispatch.hpp"

namespace segml::kernels {

// ---- scalar reference twins ----------------------------------------------------------------------
// w, g, buf (n); buf may be null (no momentum); first: buf has just been created.
template <class T>
inline void sgd_step_ref(T* w, const T* g, T* buf, int64_t n, T lr, T weight_decay, T momentum, bool first) {
  for (int64_t i = 0; i < n; ++i) {
    T d = g[i];
    if (weight_decay != T(0)) d = d + weight_decay * w[i];
    if (buf) {
      buf[i] = first ? d : momentum * buf[i] + d;
      d = buf[i];
    }
    w[i] = w[i] - lr * d;
  }
}

// w, m, v, g (n)
template <class T>
inline void adamw_step_ref(T* w, T* m, T* v, const T* g, int64_t n, T decay, T b1, T b2, T bc2_sqrt, T eps, T step_size) {
  for (int64_t i = 0; i < n; ++i) {
    w[i] = w[i] * decay;
    m[i] = m[i] * b1 + (T(1) - b1) * g[i];
    v[i] = v[i] * b2 + (T(1) - b2) * g[i] * g[i];
    const T denom = std::sqrt(v[i]) / bc2_sqrt + eps;
    w[i] = w[i] - step_size * (m[i] / denom);
  }
}

namespace detail {
inline constexpr int64_t kOptimGrain = int64_t{1} << 15;  // elements per thread worth a parallel region
}

// ---- dispatching kernels ---------------------------------------------------------------------------
template <class T>
inline void sgd_step(T* w, const T* g, T* buf, int64_t n, T lr, T weight_decay, T momentum, bool first) {
  simd::parallel_for<T, simd::Rounding::each_op>(n, detail::kOptimGrain, [&](auto s, int64_t b, int64_t e) {
    using S = decltype(s);
    using V = typename S::V;
    const V vlr = S::set1(lr), vwd = S::set1(weight_decay), vmom = S::set1(momentum);
    simd::for_lanes<S>(e - b, [&](int64_t j, const auto& mask) {
      const int64_t i = b + j;
      const V wi = S::load(w + i, mask);
      V d = S::load(g + i, mask);
      if (weight_decay != T(0)) d = d + vwd * wi;
      if (buf) {
        if (!first) d = vmom * S::load(buf + i, mask) + d;
        S::store(buf + i, d, mask);
      }
      S::store(w + i, wi - vlr * d, mask);
    });
  });
}

template <class T>
inline void adamw_step(T* w, T* m, T* v, const T* g, int64_t n, T decay, T b1, T b2, T bc2_sqrt, T eps, T step_size) {
  simd::parallel_for<T, simd::Rounding::each_op>(n, detail::kOptimGrain, [&](auto s, int64_t b, int64_t e) {
    using S = decltype(s);
    using V = typename S::V;
    const V vdecay = S::set1(decay), vb1 = S::set1(b1), vb2 = S::set1(b2), va1 = S::set1(T(1) - b1),
            va2 = S::set1(T(1) - b2), vbc = S::set1(bc2_sqrt), veps = S::set1(eps), vstep = S::set1(step_size);
    simd::for_lanes<S>(e - b, [&](int64_t j, const auto& mask) {
      const int64_t i = b + j;
      const V gi = S::load(g + i, mask);
      const V wi = S::load(w + i, mask) * vdecay;
      const V mi = S::load(m + i, mask) * vb1 + va1 * gi;
      const V vi = S::load(v + i, mask) * vb2 + va2 * gi * gi;
      const V denom = S::sqrt(vi) / vbc + veps;
      S::store(w + i, wi - vstep * (mi / denom), mask);
      S::store(m + i, mi, mask);
      S::store(v + i, vi, mask);
    });
  });
}

}  // namespace segml::kernels
