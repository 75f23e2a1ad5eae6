// segml/ops/activation.hpp: differentiable GELU (exact erf form), QuickGELU, ReLU and softmax (last dim).
//
// Contract: torch semantics. gelu is torch.nn.functional.gelu(x) with approximate='none' (NOT the
// tanh form); quick_gelu is HF's QuickGELUActivation x * sigmoid(1.702 x) (CLIP); relu is
// torch.relu (NaN propagates, gradient where the output is > 0); softmax is torch.softmax(x, dim=-1). Each returns a new contiguous tensor; none works in place.
// Saved for backward: gelu and quick_gelu the input, relu and softmax their output.
#pragma once

#include "segml/autograd/variable.hpp"
#include "segml/kernels/activations.hpp"
#include "segml/kernels/softmax.hpp"

namespace segml::ops {

// 0.5 x (1 + erf(x / sqrt2)), elementwise.
template <class T>
Var<T> gelu(const Var<T>& x) {
  const Tensor<T> cx = x.data().contiguous();
  Tensor<T> out = Tensor<T>::empty(x.shape());
  kernels::gelu_forward(out.data(), cx.data(), cx.numel());
  return make_result<T>(std::move(out), "gelu", {&x}, [cx](const Tensor<T>& gy, Grads<T>& g) {
    const Tensor<T> go = gy.contiguous();
    g[0] = Tensor<T>::empty(cx.shape());
    kernels::gelu_backward(g[0].data(), cx.data(), go.data(), cx.numel());
  });
}

// x * sigmoid(1.702 x), elementwise (HF QuickGELUActivation).
template <class T>
Var<T> quick_gelu(const Var<T>& x) {
  const Tensor<T> cx = x.data().contiguous();
  Tensor<T> out = Tensor<T>::empty(x.shape());
  kernels::quick_gelu_forward(out.data(), cx.data(), cx.numel());
  return make_result<T>(std::move(out), "quick_gelu", {&x}, [cx](const Tensor<T>& gy, Grads<T>& g) {
    const Tensor<T> go = gy.contiguous();
    g[0] = Tensor<T>::empty(cx.shape());
    kernels::quick_gelu_backward(g[0].data(), cx.data(), go.data(), cx.numel());
  });
}

// max(x, 0), elementwise.
template <class T>
Var<T> relu(const Var<T>& x) {
  const Tensor<T> cx = x.data().contiguous();
  Tensor<T> out = Tensor<T>::empty(x.shape());
  kernels::relu_forward(out.data(), cx.data(), cx.numel());
  return make_result<T>(out, "relu", {&x}, [y = out](const Tensor<T>& gy, Grads<T>& g) {
    const Tensor<T> go = gy.contiguous();
    g[0] = Tensor<T>::empty(y.shape());
    kernels::relu_backward(g[0].data(), y.data(), go.data(), y.numel());
  });
}

// Softmax over the last dim. x (..., cols)
template <class T>
Var<T> softmax(const Var<T>& x) {
  SEGML_CHECK(x.dim() >= 1 && x.size(-1) > 0, "softmax: input of shape ", x.shape(), " has no last dim");
  const int64_t cols = x.size(-1), rows = x.numel() / cols;
  const Tensor<T> cx = x.data().contiguous();
  Tensor<T> out = Tensor<T>::empty(x.shape());
  kernels::softmax_forward(out.data(), cx.data(), rows, cols);
  return make_result<T>(out, "softmax", {&x}, [y = out, rows, cols](const Tensor<T>& gy, Grads<T>& g) {
    const Tensor<T> go = gy.contiguous();
    g[0] = Tensor<T>::empty(y.shape());
    kernels::softmax_backward(g[0].data(), y.data(), go.data(), rows, cols);
  });
}

}  // namespace segml::ops
