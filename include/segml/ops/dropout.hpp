// segml/ops/dropout.hpp: differentiable dropout and drop-path (stochastic depth), torch / HF semantics.
//
// dropout(x, p, training, gen): in training each element is kept with probability 1 - p and scaled
//   by 1 / (1 - p); backward applies the same mask and scale. The forward draws the mask and writes
//   the output in one pass; the mask is saved compactly as one uint8 per element (not as a float mask).
// drop_path(x, rate, training, gen): HF SegFormer's drop_path. In training each sample (first dim)
//   is kept with probability p = 1 - rate, mask = floor(p + U[0,1)), out = x / p * mask; backward
//   applies the same per-sample factor.
// Identity cases (eval, p = 0, rate = 0) return x itself and draw nothing from the generator.
// p = 1 / rate = 1 return zeros (gradient zero) and draw nothing. torch's drop_path would give NaN
// (x / 0 * 0) for rate = 1; we give zeros, like dropout(p = 1).
// The random streams are segml's own (core/random.hpp), not torch's: masks match torch's
// distribution, not its bits.
// Data-parallel training: with gen.batch_slice() set (this process holds samples [first, first +
// B) of a batch of `total`), both draw for the whole batch and keep this process's samples: the
// masks equal those of the whole batch in one process, and every process's stream advances alike.
#pragma once

#include <algorithm>
#include <vector>

#include "segml/autograd/variable.hpp"
#include "segml/core/random.hpp"
#include "segml/kernels/dropout.hpp"

namespace segml::ops {

namespace detail {
// Zeros of x's shape, with a zero gradient.
template <class T>
Var<T> dropped_all(const Var<T>& x, const char* op) {
  return make_result<T>(Tensor<T>::zeros(x.shape()), op, {&x},
                        [shape = x.shape()](const Tensor<T>&, Grads<T>& g) { g[0] = Tensor<T>::zeros(shape); });
}
}  // namespace detail

template <class T>
Var<T> dropout(const Var<T>& x, double p, bool training, Generator& gen = default_generator()) {
  SEGML_CHECK(p >= 0.0 && p <= 1.0, "dropout: probability p must be in [0, 1], got ", p);
  if (!training || p == 0.0) return x;
  if (p == 1.0) return detail::dropped_all(x, "dropout");
  const Tensor<T> cx = x.data().contiguous();
  const int64_t n = cx.numel();
  Tensor<uint8_t> keep = Tensor<uint8_t>::empty(cx.shape());
  const T scale = static_cast<T>(1.0 / (1.0 - p));
  Tensor<T> out = Tensor<T>::empty(cx.shape());
  const Generator::BatchSlice slice = gen.batch_slice();
  if (slice.total > 0 && cx.dim() >= 1) {  // this process's samples of a larger batch
    const int64_t B = cx.size(0), per = B > 0 ? n / B : 0;
    SEGML_CHECK(slice.first >= 0 && slice.first + B <= slice.total, "dropout: batch slice [", slice.first, ", ",
                slice.first + B, ") is outside the batch of ", slice.total);
    kernels::dropout_forward_part(out.data(), keep.data(), cx.data(), scale, n, 1.0 - p, gen, slice.total * per,
                                  slice.first * per);
  } else {
    kernels::dropout_forward(out.data(), keep.data(), cx.data(), scale, n, 1.0 - p, gen);  // mask and output in one pass
  }
  return make_result<T>(std::move(out), "dropout", {&x}, [keep, scale](const Tensor<T>& gy, Grads<T>& g) {
    const Tensor<T> go = gy.contiguous();
    g[0] = Tensor<T>::empty(go.shape());
    kernels::dropout_apply(g[0].data(), go.data(), keep.data(), scale, go.numel());
  });
}

template <class T>
Var<T> drop_path(const Var<T>& x, double rate, bool training, Generator& gen = default_generator()) {
  SEGML_CHECK(rate >= 0.0 && rate <= 1.0, "drop_path: rate must be in [0, 1], got ", rate);
  SEGML_CHECK(x.dim() >= 1, "drop_path: input must have a batch dimension, got shape ", x.shape());
  if (!training || rate == 0.0) return x;
  if (rate == 1.0) return detail::dropped_all(x, "drop_path");
  const Tensor<T> cx = x.data().contiguous();
  const int64_t batch = cx.size(0), per_sample = batch ? cx.numel() / batch : 0;
  const T keep_prob = static_cast<T>(1.0 - rate);
  Tensor<T> mask = Tensor<T>::empty({batch});
  const Generator::BatchSlice slice = gen.batch_slice();
  if (slice.total > 0) {  // this process's samples of a larger batch
    SEGML_CHECK(slice.first >= 0 && slice.first + batch <= slice.total, "drop_path: batch slice [", slice.first, ", ",
                slice.first + batch, ") is outside the batch of ", slice.total);
    std::vector<T> all(static_cast<size_t>(slice.total));
    kernels::drop_path_mask(all.data(), slice.total, keep_prob, gen);
    std::copy_n(all.data() + slice.first, batch, mask.data());
  } else {
    kernels::drop_path_mask(mask.data(), batch, keep_prob, gen);
  }
  Tensor<T> out = Tensor<T>::empty(cx.shape());
  kernels::drop_path_apply(out.data(), cx.data(), mask.data(), keep_prob, batch, per_sample);
  return make_result<T>(std::move(out), "drop_path", {&x},
                        [mask, keep_prob, batch, per_sample](const Tensor<T>& gy, Grads<T>& g) {
                          const Tensor<T> go = gy.contiguous();
                          g[0] = Tensor<T>::empty(go.shape());
                          kernels::drop_path_apply(g[0].data(), go.data(), mask.data(), keep_prob, batch, per_sample);
                        });
}

}  // namespace segml::ops
