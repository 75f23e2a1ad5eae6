// segml/ops/resize.hpp: differentiable bilinear and bicubic resize to a given size
// (align_corners=False).
//
// resize_bilinear(x, OH, OW) == torch.nn.functional.interpolate(x, size=(OH, OW), mode="bilinear",
// align_corners=False) for x (B, C, H, W), any sizes up or down, no antialias. Its backward is the
// exact adjoint (each output's gradient is scattered back with the forward's weights). Nothing is
// saved for backward but the input shape. See kernels/resize.hpp for the index rule.
// resize_bicubic(x, OH, OW) == interpolate(x, size=(OH, OW), mode="bicubic", align_corners=False)
// likewise (A = -0.75, PyTorch's unclamped source index, edge-clamped taps); the same guarantees.
#pragma once

#include "segml/autograd/variable.hpp"
#include "segml/kernels/resize.hpp"

namespace segml::ops {

template <class T>
Var<T> resize_bilinear(const Var<T>& x, int64_t OH, int64_t OW) {
  SEGML_CHECK(x.dim() == 4, "resize_bilinear: expected x of rank 4 (B, C, H, W), got ", x.shape());
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  SEGML_CHECK(H > 0 && W > 0 && OH > 0 && OW > 0, "resize_bilinear: input ", x.shape(), " and output size (", OH, ", ",
              OW, ") must be greater than 0");
  const Tensor<T> cx = x.data().contiguous();
  Tensor<T> out = Tensor<T>::empty({B, C, OH, OW});
  kernels::resize_bilinear_forward(out.data(), cx.data(), B * C, H, W, OH, OW);
  return make_result<T>(std::move(out), "resize_bilinear", {&x}, [in_shape = x.shape()](const Tensor<T>& gy, Grads<T>& g) {
    const Tensor<T> go = gy.contiguous();
    g[0] = Tensor<T>::empty(in_shape);
    kernels::resize_bilinear_backward(g[0].data(), go.data(), in_shape[0] * in_shape[1], in_shape[2], in_shape[3],
                                      go.size(2), go.size(3));
  });
}

template <class T>
Var<T> resize_bicubic(const Var<T>& x, int64_t OH, int64_t OW) {
  SEGML_CHECK(x.dim() == 4, "resize_bicubic: expected x of rank 4 (B, C, H, W), got ", x.shape());
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  SEGML_CHECK(H > 0 && W > 0 && OH > 0 && OW > 0, "resize_bicubic: input ", x.shape(), " and output size (", OH, ", ",
              OW, ") must be greater than 0");
  const Tensor<T> cx = x.data().contiguous();
  Tensor<T> out = Tensor<T>::empty({B, C, OH, OW});
  kernels::resize_bicubic_forward(out.data(), cx.data(), B * C, H, W, OH, OW);
  return make_result<T>(std::move(out), "resize_bicubic", {&x}, [in_shape = x.shape()](const Tensor<T>& gy, Grads<T>& g) {
    const Tensor<T> go = gy.contiguous();
    g[0] = Tensor<T>::empty(in_shape);
    kernels::resize_bicubic_backward(g[0].data(), go.data(), in_shape[0] * in_shape[1], in_shape[2], in_shape[3],
                                     go.size(2), go.size(3));
  });
}

}  // namespace segml::ops
