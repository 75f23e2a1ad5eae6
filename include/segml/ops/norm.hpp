// segml/ops/norm.hpp: differentiable LayerNorm (last dim) and BatchNorm2d (NCHW), torch semantics.
//
// Contract:
//  - layer_norm(x, weight, bias, eps) normalises the last dim of x (any leading dims), like
//    torch.nn.functional.layer_norm(x, (C,), weight, bias, eps). weight / bias may be undefined
//    Vars (no affine: 1 and 0).
//  - batch_norm2d(x, weight, bias, running_mean, running_var, training, momentum, eps) is
//    torch.nn.functional.batch_norm on x (N, C, H, W):
//      training: normalises with the batch mean and BIASED batch variance, and (when the running
//        tensors are defined) updates them in place:
//          running_mean = (1 - momentum) * running_mean + momentum * mean
//          running_var  = (1 - momentum) * running_var  + momentum * var * M / (M - 1)   (unbiased)
//        with M = N * H * W; M must be > 1, as in torch. The gradient flows through the batch stats.
//      eval: normalises with the running stats (required); the op is an affine map of x.
//    num_batches_tracked is the caller's (nn::BatchNorm2d's) business.
//  - Synchronised BatchNorm (torch.nn.SyncBatchNorm), when `sync` is given in training: `sync`
//    sums a buffer of doubles over every process of a data-parallel job (segml/distributed/). The
//    statistics are then those of the union of every process's batch: M is the total count, the
//    mean and the biased variance are total sums / M (two passes: the sums, then the squared
//    deviations around the common mean), the running statistics use them (identical on every
//    process), and the backward's dx uses the total sum(dy) and sum(dy (x - mean)). dweight and
//    dbias stay this process's own sums, as in torch: the gradient reduction adds them up. A
//    process with no images in a step still takes part, with batch_norm2d_sync_without_data and,
//    after the forward, batch_norm2d_sync_backward_without_data.
//  - Gradients: x, weight, bias. Running stats are buffers, never differentiated.
//  - Bad shapes / arguments throw segml::Error naming the op and the shapes.
#pragma once

#include <algorithm>
#include <cmath>
#include <functional>
#include <vector>

#include "segml/autograd/variable.hpp"
#include "segml/kernels/batchnorm.hpp"
#include "segml/kernels/layernorm.hpp"

namespace segml::ops {

namespace detail {
// weight or bias as a contiguous tensor of shape [C], or `fill` when the Var is undefined.
template <class T>
Tensor<T> affine_param(const Var<T>& p, int64_t C, T fill, const char* op, const char* name, const Shape& x_shape) {
  if (!p.defined()) return Tensor<T>::full({C}, fill);
  SEGML_CHECK(p.shape() == Shape{C}, op, ": ", name, " of shape ", p.shape(), " does not match ", C,
              " channels of input ", x_shape);
  return p.data().contiguous();
}
}  // namespace detail

// LayerNorm over the last dim. x (..., C); weight, bias (C) or undefined.
template <class T>
Var<T> layer_norm(const Var<T>& x, const Var<T>& weight, const Var<T>& bias, T eps = T(1e-5)) {
  SEGML_CHECK(x.dim() >= 1 && x.size(-1) > 0, "layer_norm: input of shape ", x.shape(), " has no last dim to normalise");
  SEGML_CHECK(eps >= T(0), "layer_norm: eps must be >= 0, got ", eps);
  const int64_t C = x.size(-1), rows = x.numel() / C;
  const Tensor<T> cx = x.data().contiguous();
  const Tensor<T> w = detail::affine_param(weight, C, T(1), "layer_norm", "weight", x.shape());
  const Tensor<T> b = detail::affine_param(bias, C, T(0), "layer_norm", "bias", x.shape());
  Tensor<T> out = Tensor<T>::empty(x.shape());
  Tensor<T> mean = Tensor<T>::empty({rows}), rstd = Tensor<T>::empty({rows});
  kernels::layernorm_forward(out.data(), mean.data(), rstd.data(), cx.data(), w.data(), b.data(), rows, C, eps);
  return make_result<T>(std::move(out), "layer_norm", {&x, &weight, &bias},
                        [cx, w, mean, rstd, rows, C](const Tensor<T>& gy, Grads<T>& g) {
                          const Tensor<T> go = gy.contiguous();
                          Tensor<T> dx = Tensor<T>::empty(cx.shape());
                          Tensor<T> dw = Tensor<T>::empty({C}), db = Tensor<T>::empty({C});
                          kernels::layernorm_backward(dx.data(), dw.data(), db.data(), go.data(), cx.data(), mean.data(),
                                                      rstd.data(), w.data(), rows, C);
                          if (g.needs(0)) g[0] = std::move(dx);
                          if (g.needs(1)) g[1] = std::move(dw);
                          if (g.needs(2)) g[2] = std::move(db);
                        });
}

// BatchNorm2d. x (N, C, H, W); weight, bias (C) or undefined; running_mean, running_var (C),
// updated in place in training (may be undefined in training only).
// Sums a buffer of doubles over every process, in place (synchronised BatchNorm).
using StatSum = std::function<void(double* data, int64_t n)>;

namespace detail {
// running = (1 - m) running + m stat, with the variance unbiased by M / (M - 1).
template <class T>
void update_running_stats(Tensor<T>& running_mean, Tensor<T>& running_var, const T* mean, const T* var, double M,
                          double momentum) {
  const int64_t C = running_mean.numel();
  Tensor<T> rm = running_mean.contiguous().clone(), rv = running_var.contiguous().clone();
  const double unbias = M / (M - 1);
  for (int64_t c = 0; c < C; ++c) {
    rm.data()[c] = static_cast<T>((1 - momentum) * rm.data()[c] + momentum * mean[c]);
    rv.data()[c] = static_cast<T>((1 - momentum) * rv.data()[c] + momentum * unbias * var[c]);
  }
  running_mean.copy_(rm);
  running_var.copy_(rv);
}

// Synchronised statistics: the forward's two sums over every process. local_sum / local_sqdev
// compute this process's part (zeros for a process without data). Returns M.
template <class T, class LocalSum, class LocalSqdev>
double sync_stats(T* mean, T* var, int64_t C, int64_t local_count, const StatSum& sync, LocalSum&& local_sum,
                  LocalSqdev&& local_sqdev) {
  std::vector<double> buf(static_cast<size_t>(C + 1), 0.0);
  local_sum(buf.data());
  buf[static_cast<size_t>(C)] = static_cast<double>(local_count);
  sync(buf.data(), C + 1);
  const double M = buf[static_cast<size_t>(C)];
  SEGML_CHECK(M > 1, "batch_norm2d (synchronised): expected more than 1 value per channel over all processes, got ", M);
  for (int64_t c = 0; c < C; ++c) mean[c] = static_cast<T>(buf[static_cast<size_t>(c)] / M);
  std::fill(buf.begin(), buf.end(), 0.0);
  local_sqdev(buf.data());
  sync(buf.data(), C);
  for (int64_t c = 0; c < C; ++c) var[c] = static_cast<T>(buf[static_cast<size_t>(c)] / M);
  return M;
}
}  // namespace detail

// A process without images this step, in a synchronised BatchNorm's forward: adds nothing to the
// sums but takes part in them, and updates the running statistics as every other process does.
template <class T>
void batch_norm2d_sync_without_data(Tensor<T>& running_mean, Tensor<T>& running_var, int64_t C, T momentum,
                                    const StatSum& sync) {
  std::vector<T> mean(static_cast<size_t>(C)), var(static_cast<size_t>(C));
  const double M = detail::sync_stats<T>(mean.data(), var.data(), C, 0, sync, [](double*) {}, [](double*) {});
  if (running_mean.defined() && running_var.defined())
    detail::update_running_stats(running_mean, running_var, mean.data(), var.data(), M, double(momentum));
}
// ... and in its backward: the sums of dy it adds are zero.
inline void batch_norm2d_sync_backward_without_data(int64_t C, const StatSum& sync) {
  std::vector<double> buf(static_cast<size_t>(2 * C), 0.0);
  sync(buf.data(), 2 * C);
}

template <class T>
Var<T> batch_norm2d(const Var<T>& x, const Var<T>& weight, const Var<T>& bias, Tensor<T>& running_mean,
                    Tensor<T>& running_var, bool training, T momentum = T(0.1), T eps = T(1e-5),
                    const StatSum* sync = nullptr) {
  SEGML_CHECK(x.dim() == 4, "batch_norm2d: expected input (N, C, H, W), got shape ", x.shape());
  SEGML_CHECK(eps >= T(0), "batch_norm2d: eps must be >= 0, got ", eps);
  const int64_t N = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3), M = N * HW;
  const Tensor<T> w = detail::affine_param(weight, C, T(1), "batch_norm2d", "weight", x.shape());
  const Tensor<T> b = detail::affine_param(bias, C, T(0), "batch_norm2d", "bias", x.shape());
  const bool track = running_mean.defined() || running_var.defined();
  SEGML_CHECK(training || track, "batch_norm2d: eval mode needs running_mean and running_var");
  if (track) {
    SEGML_CHECK(running_mean.shape() == Shape{C} && running_var.shape() == Shape{C}, "batch_norm2d: running_mean ",
                running_mean.shape(), " and running_var ", running_var.shape(), " must both be [", C,
                "] for input ", x.shape());
  }
  const bool synced = training && sync && *sync;
  SEGML_CHECK(!training || synced || M > 1, "batch_norm2d: expected more than 1 value per channel when training, got input ",
              x.shape());
  const Tensor<T> cx = x.data().contiguous();
  Tensor<T> mean = Tensor<T>::empty({C}), rstd = Tensor<T>::empty({C});
  double total = static_cast<double>(M);  // values per channel the statistics are over
  if (training) {
    Tensor<T> var = Tensor<T>::empty({C});
    if (synced)
      total = detail::sync_stats<T>(
          mean.data(), var.data(), C, M, *sync, [&](double* s) { kernels::batchnorm_channel_sums(s, cx.data(), N, C, HW); },
          [&](double* q) { kernels::batchnorm_channel_sqdev(q, cx.data(), mean.data(), N, C, HW); });
    else
      kernels::batchnorm_stats(mean.data(), var.data(), cx.data(), N, C, HW);
    for (int64_t c = 0; c < C; ++c) rstd.data()[c] = static_cast<T>(1.0 / std::sqrt(double(var.data()[c]) + double(eps)));
    if (track) detail::update_running_stats(running_mean, running_var, mean.data(), var.data(), total, double(momentum));
  } else {
    mean.copy_(running_mean);
    const Tensor<T> rv = running_var.contiguous();
    for (int64_t c = 0; c < C; ++c) rstd.data()[c] = static_cast<T>(1.0 / std::sqrt(double(rv.data()[c]) + double(eps)));
  }
  Tensor<T> out = Tensor<T>::empty(x.shape());
  kernels::batchnorm_forward(out.data(), cx.data(), mean.data(), rstd.data(), w.data(), b.data(), N, C, HW);
  if (synced)
    return make_result<T>(std::move(out), "batch_norm2d (synchronised)", {&x, &weight, &bias},
                          [cx, w, mean, rstd, N, C, HW, total, sum = *sync](const Tensor<T>& gy, Grads<T>& g) {
                            const Tensor<T> go = gy.contiguous();
                            // This process's sums give dweight and dbias; every process's give dx.
                            std::vector<double> sums(static_cast<size_t>(2 * C));
                            kernels::batchnorm_backward_sums(sums.data(), sums.data() + C, go.data(), cx.data(),
                                                             mean.data(), N, C, HW);
                            Tensor<T> dw = Tensor<T>::empty({C}), db = Tensor<T>::empty({C});
                            for (int64_t c = 0; c < C; ++c) {
                              db.data()[c] = static_cast<T>(sums[static_cast<size_t>(c)]);
                              dw.data()[c] = static_cast<T>(sums[static_cast<size_t>(C + c)] * double(rstd.data()[c]));
                            }
                            sum(sums.data(), 2 * C);
                            Tensor<T> dx = Tensor<T>::empty(cx.shape());
                            kernels::batchnorm_backward_dx(dx.data(), go.data(), cx.data(), mean.data(), rstd.data(),
                                                           w.data(), sums.data(), sums.data() + C, total, N, C, HW, true);
                            if (g.needs(0)) g[0] = std::move(dx);
                            if (g.needs(1)) g[1] = std::move(dw);
                            if (g.needs(2)) g[2] = std::move(db);
                          });
  return make_result<T>(std::move(out), "batch_norm2d", {&x, &weight, &bias},
                        [cx, w, mean, rstd, N, C, HW, training](const Tensor<T>& gy, Grads<T>& g) {
                          const Tensor<T> go = gy.contiguous();
                          Tensor<T> dx = Tensor<T>::empty(cx.shape());
                          Tensor<T> dw = Tensor<T>::empty({C}), db = Tensor<T>::empty({C});
                          kernels::batchnorm_backward(dx.data(), dw.data(), db.data(), go.data(), cx.data(), mean.data(),
                                                      rstd.data(), w.data(), N, C, HW, training);
                          if (g.needs(0)) g[0] = std::move(dx);
                          if (g.needs(1)) g[1] = std::move(dw);
                          if (g.needs(2)) g[2] = std::move(db);
                        });
}

}  // namespace segml::ops
