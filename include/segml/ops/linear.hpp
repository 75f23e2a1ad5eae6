// segml/ops/linear.hpp: differentiable linear layer, y = x·Wᵀ + b (torch.nn.functional.linear).
//
// x (..., IN) with any number of leading dims, weight (OUT, IN), bias (OUT) or an undefined Var (no
// bias); y (..., OUT). Shape errors throw segml::Error naming "linear" and the shapes.
#pragma once

#include "segml/autograd/variable.hpp"
#include "segml/kernels/linear.hpp"

namespace segml::ops {

template <class T>
Var<T> linear(const Var<T>& x, const Var<T>& weight, const Var<T>& bias = Var<T>()) {
  SEGML_CHECK(weight.dim() == 2, "linear: weight must be (OUT, IN), got ", weight.shape());
  SEGML_CHECK(x.dim() >= 1 && x.size(-1) == weight.size(1), "linear: input ", x.shape(),
              " does not end in IN of weight ", weight.shape());
  const int64_t IN = weight.size(1), OUT = weight.size(0), M = x.numel() / std::max<int64_t>(IN, 1);
  const bool has_bias = bias.defined();
  SEGML_CHECK(!has_bias || bias.shape() == Shape{OUT}, "linear: bias ", has_bias ? bias.shape() : Shape{},
              " does not match weight ", weight.shape());
  const Tensor<T> cx = x.data().contiguous(), cw = weight.data().contiguous();
  const Tensor<T> cb = has_bias ? bias.data().contiguous() : Tensor<T>();
  Shape out_shape = x.shape();
  out_shape.back() = OUT;
  Tensor<T> y = Tensor<T>::empty(out_shape);
  kernels::linear_forward(y.data(), cx.data(), cw.data(), has_bias ? cb.data() : nullptr, M, IN, OUT);
  return make_result<T>(
      std::move(y), "linear", {&x, &weight, &bias}, [cx, cw, M, IN, OUT](const Tensor<T>& gy, Grads<T>& g) {
        const Tensor<T> dy = gy.contiguous();
        if (g.needs(0)) g[0] = Tensor<T>::empty(cx.shape());
        if (g.needs(1)) g[1] = Tensor<T>::empty(cw.shape());
        if (g.needs(2)) g[2] = Tensor<T>::empty({OUT});
        kernels::linear_backward(g.needs(0) ? g[0].data() : nullptr, g.needs(1) ? g[1].data() : nullptr,
                                 g.needs(2) ? g[2].data() : nullptr, dy.data(), cx.data(), cw.data(), M, IN, OUT);
      });
}

}  // namespace segml::ops
