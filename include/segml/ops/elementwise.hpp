// segml/ops/elementwise.hpp: differentiable add (residual), mul, scale, sum and the shape ops
// (reshape, permute, narrow, expand).
//
// Shapes must match exactly (no broadcasting) except where stated; a mismatch throws naming the op
// and both shapes.
#pragma once

#include "segml/autograd/variable.hpp"
#include "segml/kernels/elementwise.hpp"

namespace segml::ops {

// a + b, same shapes (the residual connection).
template <class T>
Var<T> add(const Var<T>& a, const Var<T>& b) {
  SEGML_CHECK(a.shape() == b.shape(), "add: shapes ", a.shape(), " and ", b.shape(), " differ");
  const Tensor<T> ca = a.data().contiguous(), cb = b.data().contiguous();
  Tensor<T> out = Tensor<T>::empty(a.shape());
  kernels::add_forward(out.data(), ca.data(), cb.data(), out.numel());
  return make_result<T>(std::move(out), "add", {&a, &b}, [](const Tensor<T>& gy, Grads<T>& g) {
    // d(a+b)/da = d(a+b)/db = 1: both receive grad_out (the engine clones where they alias).
    if (g.needs(0)) g[0] = gy;
    if (g.needs(1)) g[1] = gy;
  });
}

// a * b elementwise, same shapes.
template <class T>
Var<T> mul(const Var<T>& a, const Var<T>& b) {
  SEGML_CHECK(a.shape() == b.shape(), "mul: shapes ", a.shape(), " and ", b.shape(), " differ");
  const Tensor<T> ca = a.data().contiguous(), cb = b.data().contiguous();
  Tensor<T> out = Tensor<T>::empty(a.shape());
  kernels::mul_forward(out.data(), ca.data(), cb.data(), out.numel());
  return make_result<T>(std::move(out), "mul", {&a, &b}, [ca, cb](const Tensor<T>& gy, Grads<T>& g) {
    const Tensor<T> go = gy.contiguous();
    if (g.needs(0)) {
      g[0] = Tensor<T>::empty(ca.shape());
      kernels::mul_forward(g[0].data(), go.data(), cb.data(), go.numel());
    }
    if (g.needs(1)) {
      g[1] = Tensor<T>::empty(cb.shape());
      kernels::mul_forward(g[1].data(), go.data(), ca.data(), go.numel());
    }
  });
}

// alpha * x.
template <class T>
Var<T> scale(const Var<T>& x, T alpha) {
  const Tensor<T> cx = x.data().contiguous();
  Tensor<T> out = Tensor<T>::empty(x.shape());
  kernels::scale_forward(out.data(), cx.data(), alpha, out.numel());
  return make_result<T>(std::move(out), "scale", {&x}, [alpha](const Tensor<T>& gy, Grads<T>& g) {
    const Tensor<T> go = gy.contiguous();
    g[0] = Tensor<T>::empty(go.shape());
    kernels::scale_forward(g[0].data(), go.data(), alpha, go.numel());
  });
}

// Sum of all elements, as a tensor of shape [] (a scalar).
template <class T>
Var<T> sum(const Var<T>& x) {
  const Tensor<T> cx = x.data().contiguous();
  Tensor<T> out = Tensor<T>::full({}, kernels::sum_forward(cx.data(), cx.numel()));
  return make_result<T>(std::move(out), "sum", {&x}, [shape = x.shape()](const Tensor<T>& gy, Grads<T>& g) {
    g[0] = Tensor<T>::full(shape, gy.data()[0]);
  });
}

// The same values viewed with a new shape (gradient reshaped back).
template <class T>
Var<T> reshape(const Var<T>& x, Shape shape) {
  Tensor<T> out = x.data().reshape(std::move(shape));
  return make_result<T>(std::move(out), "reshape", {&x}, [in_shape = x.shape()](const Tensor<T>& gy, Grads<T>& g) {
    g[0] = gy.reshape(in_shape);
  });
}

// Axes permuted; returns a contiguous tensor (gradient permuted back).
template <class T>
Var<T> permute(const Var<T>& x, const std::vector<int64_t>& dims) {
  Tensor<T> out = x.data().permute(dims).contiguous();
  std::vector<int64_t> inverse(dims.size());
  for (size_t i = 0; i < dims.size(); ++i) inverse[static_cast<size_t>(dims[i] < 0 ? dims[i] + x.dim() : dims[i])] = static_cast<int64_t>(i);
  return make_result<T>(std::move(out), "permute", {&x}, [inverse](const Tensor<T>& gy, Grads<T>& g) {
    g[0] = gy.permute(inverse).contiguous();
  });
}

// Elements [start, start + length) along dim, as a contiguous tensor (torch.narrow); the gradient
// is gy in that slice and zero elsewhere.
template <class T>
Var<T> narrow(const Var<T>& x, int64_t dim, int64_t start, int64_t length) {
  Tensor<T> out = x.data().narrow(dim, start, length).contiguous();
  return make_result<T>(std::move(out), "narrow", {&x},
                        [shape = x.shape(), dim, start, length](const Tensor<T>& gy, Grads<T>& g) {
                          g[0] = Tensor<T>::zeros(shape);
                          g[0].narrow(dim, start, length).copy_(gy);
                        });
}

// torch.Tensor.expand(shape) made contiguous: x and shape have the same rank, and every dim of x is
// either shape's or 1 (that dim is repeated). The gradient sums over the repeated dims.
template <class T>
Var<T> expand(const Var<T>& x, const Shape& shape) {
  SEGML_CHECK(x.dim() == static_cast<int64_t>(shape.size()), "expand: input ", x.shape(), " and target ", shape,
              " differ in rank");
  for (int64_t d = 0; d < x.dim(); ++d)
    SEGML_CHECK(x.size(d) == shape[size_t(d)] || x.size(d) == 1, "expand: input ", x.shape(), " cannot be expanded to ",
                shape, " (dim ", d, " is neither equal nor 1)");
  const Tensor<T> cx = x.data().contiguous();
  // For each output element, the offset of its source in cx: strides of cx, 0 on repeated dims.
  const int64_t rank = x.dim();
  std::vector<int64_t> src_stride(size_t(rank), 0);
  for (int64_t d = rank - 1, s = 1; d >= 0; --d) {
    src_stride[size_t(d)] = (x.size(d) == shape[size_t(d)]) ? s : 0;
    s *= x.size(d);
  }
  auto source = [rank, src_stride, shape](int64_t i) {
    int64_t off = 0;
    for (int64_t d = rank - 1; d >= 0; --d) {
      off += (i % shape[size_t(d)]) * src_stride[size_t(d)];
      i /= shape[size_t(d)];
    }
    return off;
  };
  Tensor<T> out = Tensor<T>::empty(shape);
  for (int64_t i = 0; i < out.numel(); ++i) out.data()[i] = cx.data()[source(i)];
  return make_result<T>(std::move(out), "expand", {&x}, [in_shape = x.shape(), source](const Tensor<T>& gy, Grads<T>& g) {
    const Tensor<T> go = gy.contiguous();
    g[0] = Tensor<T>::zeros(in_shape);
    for (int64_t i = 0; i < go.numel(); ++i) g[0].data()[source(i)] += go.data()[i];
  });
}

}  // namespace segml::ops
