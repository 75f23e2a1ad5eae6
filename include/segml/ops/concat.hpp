// segml/ops/concat.hpp: differentiable concatenation along one dimension (torch.cat).
//
// concat({x0, x1, ...}, dim): all inputs have the same rank and the same extents except along
// `dim` (negative dims count from the end). The output is a new contiguous tensor; the backward
// hands each input the slice of the gradient it came from. Nothing is saved but the shapes.
#pragma once

#include <vector>

#include "segml/autograd/variable.hpp"
#include "segml/kernels/concat.hpp"

namespace segml::ops {

template <class T>
Var<T> concat(const std::vector<Var<T>>& xs, int64_t dim) {
  SEGML_CHECK(!xs.empty(), "concat: expected at least one input");
  const Shape& s0 = xs[0].shape();
  const int64_t rank = static_cast<int64_t>(s0.size());
  SEGML_CHECK(dim >= -rank && dim < rank, "concat: dim ", dim, " out of range for inputs of shape ", s0);
  const size_t d = static_cast<size_t>(dim < 0 ? dim + rank : dim);
  Shape out_shape = s0;
  out_shape[d] = 0;
  for (const Var<T>& x : xs) {
    bool ok = x.shape().size() == s0.size();
    for (size_t j = 0; ok && j < s0.size(); ++j) ok = j == d || x.shape()[j] == s0[j];
    SEGML_CHECK(ok, "concat: shape ", x.shape(), " does not match ", s0, " outside dim ", d);
    out_shape[d] += x.shape()[d];
  }
  int64_t outer = 1, tail = 1;
  for (size_t j = 0; j < d; ++j) outer *= s0[j];
  for (size_t j = d + 1; j < s0.size(); ++j) tail *= s0[j];

  const int64_t n = static_cast<int64_t>(xs.size());
  std::vector<Tensor<T>> cs;
  std::vector<const T*> ptrs;
  std::vector<int64_t> inner;
  for (const Var<T>& x : xs) {
    cs.push_back(x.data().contiguous());
    ptrs.push_back(cs.back().data());
    inner.push_back(x.shape()[d] * tail);
  }
  Tensor<T> out = Tensor<T>::empty(out_shape);
  kernels::concat_forward(out.data(), ptrs.data(), inner.data(), n, outer);

  std::vector<const Var<T>*> inputs;
  std::vector<Shape> shapes;
  for (const Var<T>& x : xs) {
    inputs.push_back(&x);
    shapes.push_back(x.shape());
  }
  return make_result<T>(std::move(out), "concat", inputs, [shapes, inner, outer](const Tensor<T>& gy, Grads<T>& g) {
    const Tensor<T> go = gy.contiguous();
    std::vector<T*> dptrs(shapes.size(), nullptr);
    for (size_t i = 0; i < shapes.size(); ++i)
      if (g.needs(i)) dptrs[i] = (g[i] = Tensor<T>::empty(shapes[i])).data();
    kernels::concat_backward(dptrs.data(), go.data(), inner.data(), static_cast<int64_t>(shapes.size()), outer);
  });
}

}  // namespace segml::ops
