// segml/ops/conv.hpp: differentiable 2-d convolutions.
//   conv2d                  torch.nn.functional.conv2d, NCHW, stride / padding / groups (no dilation)
//   depthwise_conv3x3       torch Conv2d(C, C, 3, padding=1, groups=C) on NCHW (Mix-FFN's dwconv)
//   depthwise_conv3x3_nhwc  the same convolution on channels-last x (B, H, W, C), i.e. SegFormer's
//                           tokens (B, N, C) seen as an image, with no transposes
//   conv_transpose2d        torch.nn.functional.conv_transpose2d, NCHW, weight (Cin, Cout, KH, KW),
//                           one stride and padding for both axes (groups 1, dilation 1,
//                           output_padding 0)
// Bias may be an undefined Var (no bias). Bad shapes or arguments throw segml::Error naming the op
// and the shapes, in release builds too.
#pragma once

#include <array>

#include "segml/autograd/variable.hpp"
#include "segml/kernels/conv2d.hpp"
#include "segml/kernels/conv_transpose2d.hpp"
#include "segml/kernels/dwconv.hpp"

namespace segml::ops {

// x (B, C, H, W), weight (OC, C/groups, KH, KW), bias (OC) or undefined -> (B, OC, OH, OW),
// OH = (H + 2*padding[0] - KH) / stride[0] + 1 and likewise for W.
template <class T>
Var<T> conv2d(const Var<T>& x, const Var<T>& weight, const Var<T>& bias = Var<T>(),
              std::array<int64_t, 2> stride = {1, 1}, std::array<int64_t, 2> padding = {0, 0}, int64_t groups = 1) {
  SEGML_CHECK(x.dim() == 4 && weight.dim() == 4,
              "conv2d: expected input (B, C, H, W) and weight (OC, C/groups, KH, KW), got ", x.shape(), " and ",
              weight.shape());
  SEGML_CHECK(stride[0] >= 1 && stride[1] >= 1 && padding[0] >= 0 && padding[1] >= 0 && groups >= 1,
              "conv2d: invalid stride (", stride[0], ", ", stride[1], "), padding (", padding[0], ", ", padding[1],
              ") or groups ", groups);
  const kernels::Conv2dGeometry geo{.B = x.size(0),
                                    .C = x.size(1),
                                    .H = x.size(2),
                                    .W = x.size(3),
                                    .OC = weight.size(0),
                                    .KH = weight.size(2),
                                    .KW = weight.size(3),
                                    .sh = stride[0],
                                    .sw = stride[1],
                                    .ph = padding[0],
                                    .pw = padding[1],
                                    .groups = groups};
  SEGML_CHECK(geo.C % groups == 0 && geo.OC % groups == 0, "conv2d: groups ", groups, " must divide input channels of ",
              x.shape(), " and output channels of weight ", weight.shape());
  SEGML_CHECK(weight.size(1) == geo.C / groups, "conv2d: weight ", weight.shape(), " expects ", weight.size(1) * groups,
              " input channels but input ", x.shape(), " has ", geo.C, " (groups ", groups, ")");
  SEGML_CHECK(geo.KH >= 1 && geo.KW >= 1 && geo.H + 2 * geo.ph >= geo.KH && geo.W + 2 * geo.pw >= geo.KW,
              "conv2d: kernel ", weight.shape(), " is bigger than the padded input ", x.shape(), " (padding ",
              padding[0], ", ", padding[1], ")");
  const bool has_bias = bias.defined();
  SEGML_CHECK(!has_bias || bias.shape() == Shape{geo.OC}, "conv2d: bias ", has_bias ? bias.shape() : Shape{},
              " does not match weight ", weight.shape());
  const Tensor<T> cx = x.data().contiguous(), cw = weight.data().contiguous();
  const Tensor<T> cb = has_bias ? bias.data().contiguous() : Tensor<T>();
  Tensor<T> y = Tensor<T>::empty({geo.B, geo.OC, geo.OH(), geo.OW()});
  kernels::conv2d_forward(y.data(), cx.data(), cw.data(), has_bias ? cb.data() : nullptr, geo);
  return make_result<T>(std::move(y), "conv2d", {&x, &weight, &bias}, [cx, cw, geo](const Tensor<T>& gy, Grads<T>& g) {
    const Tensor<T> dy = gy.contiguous();
    if (g.needs(0)) g[0] = Tensor<T>::empty(cx.shape());
    if (g.needs(1)) g[1] = Tensor<T>::empty(cw.shape());
    if (g.needs(2)) g[2] = Tensor<T>::empty({geo.OC});
    kernels::conv2d_backward(g.needs(0) ? g[0].data() : nullptr, g.needs(1) ? g[1].data() : nullptr,
                             g.needs(2) ? g[2].data() : nullptr, dy.data(), cx.data(), cw.data(), geo);
  });
}

namespace detail {
// Shared checks of the two depthwise ops; C is the channel extent of x in its layout.
template <class T>
void check_dwconv3x3(const char* op, const Var<T>& x, const Var<T>& weight, const Var<T>& bias, int64_t C) {
  SEGML_CHECK(weight.shape() == (Shape{C, 1, 3, 3}), op, ": weight ", weight.shape(),
              " must be (C, 1, 3, 3) with C = ", C, " for input ", x.shape());
  SEGML_CHECK(!bias.defined() || bias.shape() == Shape{C}, op, ": bias ", bias.defined() ? bias.shape() : Shape{},
              " must be (", C, ") for input ", x.shape());
}
}  // namespace detail

// Depthwise 3x3, stride 1, padding 1 on NCHW.  x (B, C, H, W), weight (C, 1, 3, 3), bias (C) -> x's shape
template <class T>
Var<T> depthwise_conv3x3(const Var<T>& x, const Var<T>& weight, const Var<T>& bias = Var<T>()) {
  SEGML_CHECK(x.dim() == 4, "depthwise_conv3x3: expected input (B, C, H, W), got ", x.shape());
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  detail::check_dwconv3x3("depthwise_conv3x3", x, weight, bias, C);
  const Tensor<T> cx = x.data().contiguous(), cw = weight.data().contiguous();
  const Tensor<T> cb = bias.defined() ? bias.data().contiguous() : Tensor<T>();
  Tensor<T> y = Tensor<T>::empty(x.shape());
  kernels::dwconv3x3_nchw_forward(y.data(), cx.data(), cw.data(), cb.defined() ? cb.data() : nullptr, B, C, H, W);
  return make_result<T>(
      std::move(y), "depthwise_conv3x3", {&x, &weight, &bias}, [cx, cw, B, C, H, W](const Tensor<T>& gy, Grads<T>& g) {
        const Tensor<T> dy = gy.contiguous();
        if (g.needs(0)) g[0] = Tensor<T>::empty(cx.shape());
        if (g.needs(1)) g[1] = Tensor<T>::empty(cw.shape());
        if (g.needs(2)) g[2] = Tensor<T>::empty({C});
        kernels::dwconv3x3_nchw_backward(g.needs(0) ? g[0].data() : nullptr, g.needs(1) ? g[1].data() : nullptr,
                                         g.needs(2) ? g[2].data() : nullptr, dy.data(), cx.data(), cw.data(), B, C, H,
                                         W);
      });
}

// Depthwise 3x3, stride 1, padding 1 on channels-last input.  x (B, H, W, C), weight (C, 1, 3, 3),
// bias (C) -> (B, H, W, C); equals depthwise_conv3x3 on x.permute(0, 3, 1, 2), permuted back.
template <class T>
Var<T> depthwise_conv3x3_nhwc(const Var<T>& x, const Var<T>& weight, const Var<T>& bias = Var<T>()) {
  SEGML_CHECK(x.dim() == 4, "depthwise_conv3x3_nhwc: expected input (B, H, W, C), got ", x.shape());
  const int64_t B = x.size(0), H = x.size(1), W = x.size(2), C = x.size(3);
  detail::check_dwconv3x3("depthwise_conv3x3_nhwc", x, weight, bias, C);
  const Tensor<T> cx = x.data().contiguous(), cw = weight.data().contiguous();
  const Tensor<T> cb = bias.defined() ? bias.data().contiguous() : Tensor<T>();
  Tensor<T> y = Tensor<T>::empty(x.shape());
  kernels::dwconv3x3_nhwc_forward(y.data(), cx.data(), cw.data(), cb.defined() ? cb.data() : nullptr, B, H, W, C);
  return make_result<T>(std::move(y), "depthwise_conv3x3_nhwc", {&x, &weight, &bias},
                        [cx, cw, B, H, W, C](const Tensor<T>& gy, Grads<T>& g) {
                          const Tensor<T> dy = gy.contiguous();
                          if (g.needs(0)) g[0] = Tensor<T>::empty(cx.shape());
                          if (g.needs(1)) g[1] = Tensor<T>::empty(cw.shape());
                          if (g.needs(2)) g[2] = Tensor<T>::empty({C});
                          kernels::dwconv3x3_nhwc_backward(
                              g.needs(0) ? g[0].data() : nullptr, g.needs(1) ? g[1].data() : nullptr,
                              g.needs(2) ? g[2].data() : nullptr, dy.data(), cx.data(), cw.data(), B, H, W, C);
                        });
}

// x (B, Cin, H, W), weight (Cin, Cout, KH, KW), bias (Cout) or undefined -> (B, Cout, OH, OW),
// OH = (H - 1) * stride - 2 * padding + KH and likewise for W.
template <class T>
Var<T> conv_transpose2d(const Var<T>& x, const Var<T>& weight, const Var<T>& bias, int64_t stride, int64_t padding = 0) {
  SEGML_CHECK(x.dim() == 4 && weight.dim() == 4,
              "conv_transpose2d: expected input (B, Cin, H, W) and weight (Cin, Cout, KH, KW), got ", x.shape(), " and ",
              weight.shape());
  SEGML_CHECK(stride >= 1 && padding >= 0, "conv_transpose2d: invalid stride ", stride, " or padding ", padding,
              " (input ", x.shape(), ", weight ", weight.shape(), ")");
  const kernels::ConvTranspose2dGeometry geo{.B = x.size(0),
                                             .Cin = x.size(1),
                                             .H = x.size(2),
                                             .W = x.size(3),
                                             .Cout = weight.size(1),
                                             .KH = weight.size(2),
                                             .KW = weight.size(3),
                                             .stride = stride,
                                             .padding = padding};
  SEGML_CHECK(weight.size(0) == geo.Cin, "conv_transpose2d: weight ", weight.shape(), " expects ", weight.size(0),
              " input channels but input ", x.shape(), " has ", geo.Cin);
  SEGML_CHECK(geo.H >= 1 && geo.W >= 1 && geo.Cout >= 1 && geo.KH >= 1 && geo.KW >= 1 && geo.OH() >= 1 && geo.OW() >= 1,
              "conv_transpose2d: input ", x.shape(), " and weight ", weight.shape(), " with stride ", stride,
              " and padding ", padding, " give an empty output (", geo.OH(), " x ", geo.OW(), ")");
  const bool has_bias = bias.defined();
  SEGML_CHECK(!has_bias || bias.shape() == Shape{geo.Cout}, "conv_transpose2d: bias ", has_bias ? bias.shape() : Shape{},
              " does not match weight ", weight.shape(), " (", geo.Cout, " output channels)");
  const Tensor<T> cx = x.data().contiguous(), cw = weight.data().contiguous();
  const Tensor<T> cb = has_bias ? bias.data().contiguous() : Tensor<T>();
  Tensor<T> y = Tensor<T>::empty({geo.B, geo.Cout, geo.OH(), geo.OW()});
  kernels::conv_transpose2d_forward(y.data(), cx.data(), cw.data(), has_bias ? cb.data() : nullptr, geo);
  return make_result<T>(std::move(y), "conv_transpose2d", {&x, &weight, &bias},
                        [cx, cw, geo](const Tensor<T>& gy, Grads<T>& g) {
                          const Tensor<T> dy = gy.contiguous();
                          if (g.needs(0)) g[0] = Tensor<T>::empty(cx.shape());
                          if (g.needs(1)) g[1] = Tensor<T>::empty(cw.shape());
                          if (g.needs(2)) g[2] = Tensor<T>::empty({geo.Cout});
                          kernels::conv_transpose2d_backward(g.needs(0) ? g[0].data() : nullptr,
                                                             g.needs(1) ? g[1].data() : nullptr,
                                                             g.needs(2) ? g[2].data() : nullptr, dy.data(), cx.data(),
                                                             cw.data(), geo);
                        });
}

}  // namespace segml::ops
