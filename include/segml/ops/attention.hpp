// segml/ops/attention.hpp: differentiable multi-head scaled-dot-product attention.
//
// attention(q, k, v, heads) is HF SegFormer's efficient self-attention between the q/k/v
// projections and the output dense layer: q (B, N, C), k and v (B, M, C) in token layout,
// head i = channels [i*C/h, (i+1)*C/h), softmax(q kᵀ / sqrt(C/h)) v per head, heads re-concatenated
// in order into (B, N, C). M may differ from N (sequence reduction).
// causal = true (HF CLIP's text model, N == M required): query i attends to keys j <= i only, as
// HF's additive finfo.min mask above the diagonal does; the masked probabilities are exactly 0.
// Saved for backward: q, k, v and the probabilities P (B, h, N, M); under NoGradGuard (or when no
// input requires grad) P is never stored. No dropout, no padding mask.
#pragma once

#include "segml/autograd/variable.hpp"
#include "segml/kernels/attention.hpp"

namespace segml::ops {

template <class T>
Var<T> attention(const Var<T>& q, const Var<T>& k, const Var<T>& v, int64_t heads, bool causal = false) {
  SEGML_CHECK(q.dim() == 3 && k.dim() == 3 && v.dim() == 3, "attention: expected q, k, v of rank 3 (B, N, C), got q ",
              q.shape(), " k ", k.shape(), " v ", v.shape());
  const int64_t B = q.size(0), N = q.size(1), C = q.size(2), M = k.size(1);
  SEGML_CHECK(k.shape() == v.shape(), "attention: k ", k.shape(), " and v ", v.shape(), " must have the same shape");
  SEGML_CHECK(k.size(0) == B && k.size(2) == C, "attention: k/v ", k.shape(), " do not match q ", q.shape(),
              " in batch or channels");
  SEGML_CHECK(heads >= 1 && C % heads == 0, "attention: ", C, " channels (q ", q.shape(), ") are not divisible by heads = ",
              heads);
  SEGML_CHECK(M >= 1, "attention: k/v ", k.shape(), " have no keys");
  SEGML_CHECK(!causal || M == N, "attention: causal attention needs as many keys as queries, got q ", q.shape(),
              " and k/v ", k.shape());
  const Tensor<T> cq = q.data().contiguous(), ck = k.data().contiguous(), cv = v.data().contiguous();
  Tensor<T> out = Tensor<T>::empty({B, N, C});
  const bool record = any_requires_grad<T>({&q, &k, &v});
  Tensor<T> probs = record ? Tensor<T>::empty({B, heads, N, M}) : Tensor<T>();
  kernels::attention_forward(out.data(), record ? probs.data() : nullptr, cq.data(), ck.data(), cv.data(), B, N, M, C,
                             heads, causal);
  return make_result<T>(std::move(out), "attention", {&q, &k, &v},
                        [cq, ck, cv, probs, heads, causal](const Tensor<T>& gy, Grads<T>& g) {
                          const Tensor<T> go = gy.contiguous();
                          for (size_t i = 0; i < 3; ++i)
                            if (g.needs(i)) g[i] = Tensor<T>::empty(i == 0 ? cq.shape() : ck.shape());
                          auto ptr = [&](size_t i) { return g.needs(i) ? g[i].data() : nullptr; };
                          kernels::attention_backward(ptr(0), ptr(1), ptr(2), go.data(), cq.data(), ck.data(), cv.data(),
                                                      probs.data(), cq.size(0), cq.size(1), ck.size(1), cq.size(2), heads,
                                                      causal);
                        });
}

}  // namespace segml::ops
