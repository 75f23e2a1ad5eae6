// segml/ops/embedding.hpp: differentiable embedding lookup (torch.nn.functional.embedding).
//
// embedding(weight, ids): weight (V, D), ids an int64 tensor of any shape (rank 0 included) ->
// out (ids.shape..., D), out[..., :] = weight[ids[...], :]. Gradient with respect to weight only:
// dweight (V, D) = 0, then every dout row is added into the row of its id (an id used several times
// receives the sum). No padding_idx, max_norm or sparse gradients.
// An id outside [0, V) is a segml::Error naming the id, its position in ids and V, before anything
// is computed. Saved for backward: a contiguous copy of ids (the weight values are not needed).
// The kernels (plain row copies and row adds) live here; there is nothing to vectorise beyond
// the compiler's memcpy-like loops.
#pragma once

#include <algorithm>
#include <cstdint>
#include <sstream>

#include "segml/autograd/variable.hpp"
#include "segml/core/parallel.hpp"

namespace segml::kernels {

// out (n, D) = weight[ids[i]] for i < n.  weight (V, D), ids (n), all ids in [0, V) (checked by the caller)
template <class T>
inline void embedding_forward(T* out, const T* weight, const int64_t* ids, int64_t n, int64_t D) {
  parallel_for(n, std::max<int64_t>(1, (int64_t{1} << 14) / std::max<int64_t>(1, D)), [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) std::copy(weight + ids[i] * D, weight + (ids[i] + 1) * D, out + i * D);
  });
}

// dweight (V, D) = Σ_i onehot(ids[i]) dout[i]: overwritten, rows summed in increasing i (serial, so
// the sum's order and result do not depend on the thread count).  dout (n, D), ids (n)
template <class T>
inline void embedding_backward(T* dweight, const T* dout, const int64_t* ids, int64_t n, int64_t V, int64_t D) {
  std::fill(dweight, dweight + V * D, T(0));
  for (int64_t i = 0; i < n; ++i) {
    T* row = dweight + ids[i] * D;
    const T* g = dout + i * D;
    for (int64_t c = 0; c < D; ++c) row[c] += g[c];
  }
}

}  // namespace segml::kernels

namespace segml::ops {

namespace detail {
// "[i, j, k]": the multi-index of flat position `flat` in a contiguous tensor of `shape`.
inline std::string index_str(const Shape& shape, int64_t flat) {
  std::vector<int64_t> idx(shape.size());
  for (size_t d = shape.size(); d-- > 0;) {
    idx[d] = shape[d] > 0 ? flat % shape[d] : 0;
    flat = shape[d] > 0 ? flat / shape[d] : 0;
  }
  std::ostringstream os;
  os << "[";
  for (size_t d = 0; d < idx.size(); ++d) os << (d ? ", " : "") << idx[d];
  os << "]";
  return os.str();
}
}  // namespace detail

// weight (V, D), ids (any shape) -> (ids.shape..., D)
template <class T>
Var<T> embedding(const Var<T>& weight, const Tensor<int64_t>& ids) {
  SEGML_CHECK(weight.defined() && weight.dim() == 2, "embedding: expected weight (V, D), got ",
              weight.defined() ? weight.shape() : Shape{});
  SEGML_CHECK(ids.defined(), "embedding: ids is an undefined tensor");
  const int64_t V = weight.size(0), D = weight.size(1);
  SEGML_CHECK(V >= 1 && D >= 1, "embedding: weight ", weight.shape(), " is empty");
  // (A tensor with a zero extent is not taken through contiguous(): nothing to copy.)
  const Tensor<int64_t> cids = ids.numel() == 0 ? Tensor<int64_t>::empty(ids.shape()) : ids.contiguous();
  const int64_t n = cids.numel();
  const int64_t* id = cids.data();
  for (int64_t i = 0; i < n; ++i)
    SEGML_CHECK(id[i] >= 0 && id[i] < V, "embedding: id ", id[i], " at position ", detail::index_str(ids.shape(), i),
                " of ids ", ids.shape(), " is outside [0, ", V, ") for weight ", weight.shape());
  Shape out_shape = ids.shape();
  out_shape.push_back(D);
  const Tensor<T> cw = weight.data().contiguous();
  Tensor<T> out = Tensor<T>::empty(out_shape);
  kernels::embedding_forward(out.data(), cw.data(), id, n, D);
  return make_result<T>(std::move(out), "embedding", {&weight}, [cids, V, D](const Tensor<T>& gy, Grads<T>& g) {
    if (cids.numel() == 0) {
      g[0] = Tensor<T>::zeros({V, D});
      return;
    }
    g[0] = Tensor<T>::empty({V, D});
    const Tensor<T> go = gy.contiguous();
    kernels::embedding_backward(g[0].data(), go.data(), cids.data(), cids.numel(), V, D);
  });
}

}  // namespace segml::ops
