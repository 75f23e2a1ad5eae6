// segml/nn/module.hpp: parameters with HF-style dotted names, and the layers SegFormer is built from.
//
// A layer is a plain struct holding its parameters as Var<T> (requires_grad) and its buffers as
// Tensor<T>, with two members:
//   - forward(...) (operator()) calling the differentiable ops, and
//   - visit(prefix, v) naming every parameter and buffer for v, in PyTorch's registration order,
//     with the same dotted names as the PyTorch module (`proj.weight`, `batch_norm.running_mean`).
// state_dict-style access (loading, saving, optimizers) is built on visit(); nothing else knows the
// names. Layers know nothing about files or optimizers.
#pragma once

#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "segml/autograd/variable.hpp"
#include "segml/ops/activation.hpp"
#include "segml/ops/conv.hpp"
#include "segml/ops/linear.hpp"
#include "segml/ops/norm.hpp"

namespace segml::nn {

// Receives each named parameter (a trainable Var) and buffer (a Tensor updated in place, e.g.
// BatchNorm running statistics). Names are full dotted paths.
template <class T>
struct Visitor {
  std::function<void(const std::string& name, Var<T>& param)> parameter;
  std::function<void(const std::string& name, Tensor<T>& buffer)> buffer;
};

// HF's base_model_prefix: the keys of a full model start with one of `full_model`; a checkpoint of
// the bare base model has keys starting with one of `bare`, which loading prefixes with `prefix`.
// Checkpoint keys ending in one of `ignored` are skipped silently (HF's
// _keys_to_ignore_on_load_unexpected, e.g. the position_ids buffers older transformers saved).
struct BaseModelPrefix {
  std::string prefix;
  std::vector<std::string> full_model, bare, ignored = {};
};

template <class T>
Var<T> make_parameter(Shape shape) {
  return Var<T>(Tensor<T>::zeros(std::move(shape)), /*requires_grad=*/true);
}

// torch.nn.Linear: y = x W^T + b over the last dim. weight (out, in), bias (out).
template <class T>
struct Linear {
  Var<T> weight, bias;
  Linear() = default;
  Linear(int64_t in, int64_t out, bool with_bias = true)
      : weight(make_parameter<T>({out, in})), bias(with_bias ? make_parameter<T>({out}) : Var<T>()) {}
  Var<T> operator()(const Var<T>& x) const { return ops::linear(x, weight, bias); }
  void visit(const std::string& p, Visitor<T>& v) {
    v.parameter(p + "weight", weight);
    if (bias.defined()) v.parameter(p + "bias", bias);
  }
};

// torch.nn.Conv2d on NCHW. weight (OC, C/groups, KH, KW), bias (OC).
template <class T>
struct Conv2d {
  Var<T> weight, bias;
  int64_t stride = 1, padding = 0, groups = 1;
  Conv2d() = default;
  Conv2d(int64_t in, int64_t out, int64_t kernel, int64_t stride_, int64_t padding_, bool with_bias = true,
         int64_t groups_ = 1)
      : weight(make_parameter<T>({out, in / groups_, kernel, kernel})),
        bias(with_bias ? make_parameter<T>({out}) : Var<T>()),
        stride(stride_),
        padding(padding_),
        groups(groups_) {}
  Var<T> operator()(const Var<T>& x) const { return ops::conv2d(x, weight, bias, {stride, stride}, {padding, padding}, groups); }
  void visit(const std::string& p, Visitor<T>& v) {
    v.parameter(p + "weight", weight);
    if (bias.defined()) v.parameter(p + "bias", bias);
  }
};

// torch.nn.LayerNorm over the last dim (eps 1e-5, as every LayerNorm in HF's SegFormer).
template <class T>
struct LayerNorm {
  Var<T> weight, bias;
  T eps = T(1e-5);
  LayerNorm() = default;
  explicit LayerNorm(int64_t c, T eps_ = T(1e-5)) : weight(make_parameter<T>({c})), bias(make_parameter<T>({c})), eps(eps_) {
    weight.data().fill_(T(1));
  }
  Var<T> operator()(const Var<T>& x) const { return ops::layer_norm(x, weight, bias, eps); }
  void visit(const std::string& p, Visitor<T>& v) {
    v.parameter(p + "weight", weight);
    v.parameter(p + "bias", bias);
  }
};

// torch.nn.BatchNorm2d: batch statistics and running-stat update in training, running stats in eval.
// With `sync` set (data-parallel training), torch.nn.SyncBatchNorm: the training statistics are
// those of every process's batch together (ops/norm.hpp).
template <class T>
struct BatchNorm2d {
  Var<T> weight, bias;
  Tensor<T> running_mean, running_var, num_batches_tracked;
  T eps = T(1e-5), momentum = T(0.1);
  ops::StatSum sync;  // sums over the processes; empty = local statistics
  BatchNorm2d() = default;
  explicit BatchNorm2d(int64_t c)
      : weight(make_parameter<T>({c})),
        bias(make_parameter<T>({c})),
        running_mean(Tensor<T>::zeros({c})),
        running_var(Tensor<T>::ones({c})),
        num_batches_tracked(Tensor<T>::zeros({})) {
    weight.data().fill_(T(1));
  }
  Var<T> operator()(const Var<T>& x, bool training) {
    if (training) num_batches_tracked.data()[0] += T(1);
    return ops::batch_norm2d(x, weight, bias, running_mean, running_var, training, momentum, eps, sync ? &sync : nullptr);
  }
  // A process with no images this step, when synchronised: its part of the forward (statistics,
  // running-stat and counter update) and, later, of the backward.
  void forward_without_data() {
    SEGML_CHECK(static_cast<bool>(sync), "BatchNorm2d::forward_without_data: only a synchronised BatchNorm takes part without data");
    num_batches_tracked.data()[0] += T(1);
    ops::batch_norm2d_sync_without_data(running_mean, running_var, weight.numel(), momentum, sync);
  }
  void backward_without_data() { ops::batch_norm2d_sync_backward_without_data(weight.numel(), sync); }
  void visit(const std::string& p, Visitor<T>& v) {
    v.parameter(p + "weight", weight);
    v.parameter(p + "bias", bias);
    v.buffer(p + "running_mean", running_mean);
    v.buffer(p + "running_var", running_var);
    v.buffer(p + "num_batches_tracked", num_batches_tracked);
  }
};

}  // namespace segml::nn
