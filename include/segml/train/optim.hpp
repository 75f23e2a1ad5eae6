// segml/train/optim.hpp: SGD (with momentum) and AdamW with PyTorch's exact update rules.
//
// Parameters are grouped (torch param_groups): each group has an lr multiplier and a weight decay,
// so "no decay on norms and biases" and "head lr x10" are two groups. step() reads each parameter's
// .grad() (a parameter without a gradient is skipped, as in PyTorch) and updates .data() in place.
// The arithmetic follows torch.optim's single-tensor (foreach=False) implementations operation by
// operation, in float, so one step matches PyTorch to rounding: the element-wise updates are the
// kernels of kernels/optim.hpp (vectorised, parallel, independent of the thread count).
// State (momentum buffers, Adam moments, step counts) can be exported and restored for resuming.
#pragma once

#include <cmath>
#include <map>
#include <string>
#include <vector>

#include "segml/autograd/variable.hpp"
#include "segml/kernels/optim.hpp"

namespace segml::train {

template <class T>
struct ParamGroup {
  std::vector<std::pair<std::string, Var<T>>> params;  // name -> parameter (shares storage with the model)
  double lr_scale = 1.0;                               // group lr = base lr * lr_scale
  double weight_decay = 0.0;
};

template <class T>
class Optimizer {
 public:
  explicit Optimizer(std::vector<ParamGroup<T>> groups) : groups_(std::move(groups)) {}
  virtual ~Optimizer() = default;
  virtual void step(double lr) = 0;
  void zero_grad() {
    for (auto& g : groups_)
      for (auto& [name, p] : g.params) p.zero_grad();
  }
  const std::vector<ParamGroup<T>>& groups() const { return groups_; }
  // Named state tensors ("<param>.<slot>") for checkpointing, and their restoration.
  std::map<std::string, Tensor<T>>& state() { return state_; }
  int64_t steps() const { return steps_; }
  void set_steps(int64_t s) { steps_ = s; }

 protected:
  Tensor<T>& slot(const std::string& param, const char* name, const Shape& shape, bool& created) {
    auto key = param + "." + name;
    auto it = state_.find(key);
    created = it == state_.end();
    if (created) it = state_.emplace(key, Tensor<T>::zeros(shape)).first;
    return it->second;
  }
  std::vector<ParamGroup<T>> groups_;
  std::map<std::string, Tensor<T>> state_;
  int64_t steps_ = 0;
};

// torch.optim.SGD(lr, momentum, dampening=0, weight_decay, nesterov=False).
template <class T>
class SGD : public Optimizer<T> {
 public:
  SGD(std::vector<ParamGroup<T>> groups, double momentum = 0.0) : Optimizer<T>(std::move(groups)), momentum_(momentum) {}

  void step(double base_lr) override {
    ++this->steps_;
    for (auto& group : this->groups_) {
      const T lr = static_cast<T>(base_lr * group.lr_scale), wd = static_cast<T>(group.weight_decay);
      const T mom = static_cast<T>(momentum_);
      for (auto& [name, p] : group.params) {
        if (!p.grad().defined()) continue;
        const Tensor<T> g = p.grad().contiguous();
        T* w = p.data().data();
        const T* gp = g.data();
        const int64_t n = p.numel();
        T* buf = nullptr;
        bool first = false;
        if (momentum_ != 0) buf = this->slot(name, "momentum_buffer", p.shape(), first).data();
        kernels::sgd_step(w, gp, buf, n, lr, wd, mom, first);
      }
    }
  }

 private:
  double momentum_;
};

// torch.optim.AdamW(lr, betas, eps, weight_decay, amsgrad=False): decoupled weight decay.
template <class T>
class AdamW : public Optimizer<T> {
 public:
  AdamW(std::vector<ParamGroup<T>> groups, double beta1 = 0.9, double beta2 = 0.999, double eps = 1e-8)
      : Optimizer<T>(std::move(groups)), beta1_(beta1), beta2_(beta2), eps_(eps) {}

  void step(double base_lr) override {
    const int64_t t = ++this->steps_;
    // torch computes these in Python floats (double), then applies them to float tensors.
    const double bias_correction1 = 1.0 - std::pow(beta1_, static_cast<double>(t));
    const double bias_correction2 = 1.0 - std::pow(beta2_, static_cast<double>(t));
    const T bc2_sqrt = static_cast<T>(std::sqrt(bias_correction2));
    const T b1 = static_cast<T>(beta1_), b2 = static_cast<T>(beta2_), eps = static_cast<T>(eps_);
    for (auto& group : this->groups_) {
      const double lr = base_lr * group.lr_scale;
      const T decay = static_cast<T>(1.0 - lr * group.weight_decay);
      const T step_size = static_cast<T>(lr / bias_correction1);
      for (auto& [name, p] : group.params) {
        if (!p.grad().defined()) continue;
        const Tensor<T> g = p.grad().contiguous();
        bool first = false;
        T* m = this->slot(name, "exp_avg", p.shape(), first).data();
        T* v = this->slot(name, "exp_avg_sq", p.shape(), first).data();
        T* w = p.data().data();
        const T* gp = g.data();
        const int64_t n = p.numel();
        kernels::adamw_step(w, m, v, gp, n, decay, b1, b2, bc2_sqrt, eps, step_size);
      }
    }
  }

 private:
  double beta1_, beta2_, eps_;
};

}  // namespace segml::train
