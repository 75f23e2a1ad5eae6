// segml/ops/loss.hpp: differentiable pixel-wise cross-entropy with ignore_index, and HF SegFormer's
// loss (bilinear upsampling of the logits to the label size, then cross-entropy) fused into one op.
//
// cross_entropy(logits, labels, ignore_index) equals
//   torch.nn.functional.cross_entropy(logits, labels, ignore_index=ignore_index, reduction="mean"):
//   the mean over non-ignored pixels of -log_softmax(logits, dim=1)[label], as a scalar (shape []).
//   logits (B, C, d1, ..., dk) with labels (B, d1, ..., dk), e.g. (B, C, H, W) with (B, H, W);
//   or logits (N, C) with labels (N).
// Differences from torch, on purpose:
//   - if every pixel is ignored the loss is 0 and the gradient is all zeros (torch gives NaN);
//   - a label that is neither ignore_index nor in [0, C) throws segml::Error naming the value and C
//     (before any computation), never silent garbage.
// No class weights and no label smoothing. The loss sum is accumulated in double, so the result is
// independent of the thread count.
#pragma once

#include "segml/autograd/variable.hpp"
#include "segml/kernels/cross_entropy.hpp"
#include "segml/kernels/upsampled_cross_entropy.hpp"

namespace segml::ops {

template <class T>
Var<T> cross_entropy(const Var<T>& logits, const Tensor<int64_t>& labels, int64_t ignore_index = 255) {
  SEGML_CHECK(logits.dim() >= 2, "cross_entropy: logits must be (N, C) or (B, C, H, W), got shape ", logits.shape());
  Shape label_shape = logits.shape();
  label_shape.erase(label_shape.begin() + 1);
  SEGML_CHECK(labels.shape() == label_shape, "cross_entropy: labels of shape ", labels.shape(),
              " do not match logits of shape ", logits.shape(), " (expected labels of shape ", label_shape, ")");
  const int64_t C = logits.size(1);
  SEGML_CHECK(C >= 1, "cross_entropy: logits of shape ", logits.shape(), " have no classes");

  // The kernels take (B, C, P) with the class axis strided by P. Rows (N, C) become (1, C, N).
  const bool rows = logits.dim() == 2;
  const Tensor<T> x = rows ? logits.data().transpose(0, 1).contiguous() : logits.data().contiguous();
  const Tensor<int64_t> lab = labels.contiguous();
  const int64_t B = rows ? 1 : logits.size(0);
  const int64_t P = rows ? logits.size(0) : (B ? x.numel() / (B * C) : 0);

  const int64_t n_valid = kernels::cross_entropy_count_valid(lab.data(), lab.numel(), C, ignore_index);
  const double sum = n_valid ? kernels::cross_entropy_forward(x.data(), lab.data(), B, C, P, ignore_index) : 0.0;
  Tensor<T> out = Tensor<T>::full({}, static_cast<T>(n_valid ? sum / static_cast<double>(n_valid) : 0.0));

  return make_result<T>(
      std::move(out), "cross_entropy", {&logits},
      [x, lab, B, C, P, ignore_index, n_valid, rows](const Tensor<T>& gy, Grads<T>& g) {
        // d loss / d logits = (softmax - onehot) * grad_out / n_valid, 0 at ignored pixels.
        Tensor<T> d = n_valid ? Tensor<T>::empty(x.shape()) : Tensor<T>::zeros(x.shape());
        if (n_valid) {
          const T scale = static_cast<T>(static_cast<double>(gy.data()[0]) / static_cast<double>(n_valid));
          kernels::cross_entropy_backward(d.data(), x.data(), lab.data(), B, C, P, ignore_index, scale);
        }
        g[0] = rows ? d.transpose(0, 1).contiguous() : d;
      });
}

// cross_entropy(resize_bilinear(logits, H, W), labels, ignore_index) for labels (B, H, W), logits
// (B, C, h, w): HF SegFormer's semantic-segmentation loss, computed without materialising the
// upsampled logits or their gradient (kernels/upsampled_cross_entropy.hpp). Same semantics and
// label checks as cross_entropy above.
template <class T>
Var<T> upsampled_cross_entropy(const Var<T>& logits, const Tensor<int64_t>& labels, int64_t ignore_index = 255) {
  SEGML_CHECK(logits.dim() == 4, "upsampled_cross_entropy: logits must be (B, C, h, w), got shape ", logits.shape());
  SEGML_CHECK(labels.dim() == 3 && labels.size(0) == logits.size(0), "upsampled_cross_entropy: labels must be (B=",
              logits.size(0), ", H, W), got shape ", labels.shape());
  const int64_t B = logits.size(0), C = logits.size(1), h = logits.size(2), w = logits.size(3);
  const int64_t H = labels.size(1), W = labels.size(2);
  SEGML_CHECK(C >= 1 && h >= 1 && w >= 1, "upsampled_cross_entropy: empty logits of shape ", logits.shape());
  const Tensor<T> x = logits.data().permute({0, 2, 3, 1}).contiguous();  // classes contiguous per pixel
  const Tensor<int64_t> lab = labels.contiguous();
  const int64_t n_valid = kernels::cross_entropy_count_valid(lab.data(), lab.numel(), C, ignore_index);
  const double sum =
      n_valid ? kernels::upsampled_cross_entropy_forward(x.data(), lab.data(), B, h, w, C, H, W, ignore_index) : 0.0;
  Tensor<T> out = Tensor<T>::full({}, static_cast<T>(n_valid ? sum / static_cast<double>(n_valid) : 0.0));
  return make_result<T>(
      std::move(out), "upsampled_cross_entropy", {&logits},
      [x, lab, B, C, h, w, H, W, ignore_index, n_valid](const Tensor<T>& gy, Grads<T>& g) {
        Tensor<T> d = n_valid ? Tensor<T>::empty(x.shape()) : Tensor<T>::zeros(x.shape());  // the kernel overwrites d
        if (n_valid) {
          const T scale = static_cast<T>(static_cast<double>(gy.data()[0]) / static_cast<double>(n_valid));
          kernels::upsampled_cross_entropy_backward(d.data(), x.data(), lab.data(), B, h, w, C, H, W, ignore_index, scale);
        }
        g[0] = d.permute({0, 3, 1, 2}).contiguous();
      });
}

}  // namespace segml::ops
