// segml/train/optim.hpp: SGD (with momentum) and AdamW with PyTorch's exact update rules.
//
// Parameters are grouped (torch param_groups): each group has an lr multiplier and a weight decay,
// so "no decay on norms and biases" and "head lr x10" are two groups. step() reads each parameter's
// .grad() (a parameter without a gradient is skipped, as in PyTorch) and updates .data() in place.
// The arithmetic follows torch.optim's single-tensor (foreach=False) implementations operation by
// operation, in float, so one step matches PyTorch to rounding. Elements are updated in parallel
// (float AdamW four at a time with SSE); each element's arithmetic is that of the scalar loop, so
// the result does not depend on the thread count or the ISA.
// State (momentum buffers, Adam moments, step counts) can be exported and restored for resuming.
#pragma once

#include <cmath>
#include <map>
#include <string>
#include <type_traits>
#include <vector>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "segml/autograd/variable.hpp"
#include "segml/core/parallel.hpp"

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
  static constexpr int64_t kGrain = int64_t{1} << 15;  // elements per thread worth a parallel region
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
        parallel_for(n, this->kGrain, [&](int64_t i0, int64_t i1) {
          for (int64_t i = i0; i < i1; ++i) {
            T d = gp[i];
            if (wd != T(0)) d = d + wd * w[i];
            if (buf) {
              buf[i] = first ? d : mom * buf[i] + d;
              d = buf[i];
            }
            w[i] = w[i] - lr * d;
          }
        });
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
        parallel_for(n, this->kGrain, [&](int64_t i0, int64_t i1) {
          int64_t i = i0;
#if defined(__SSE2__)
          if constexpr (std::is_same_v<T, float>) {
            // The scalar loop below, four lanes at a time: the same IEEE operations in the same
            // order (SSE has no fused multiply-add), so the results are identical.
            const __m128 vdecay = _mm_set1_ps(decay), vb1 = _mm_set1_ps(b1), vb2 = _mm_set1_ps(b2);
            const __m128 va1 = _mm_set1_ps(T(1) - b1), va2 = _mm_set1_ps(T(1) - b2), vbc = _mm_set1_ps(bc2_sqrt);
            const __m128 veps = _mm_set1_ps(eps), vstep = _mm_set1_ps(step_size);
            for (; i + 4 <= i1; i += 4) {
              const __m128 gi = _mm_loadu_ps(gp + i);
              const __m128 wi = _mm_mul_ps(_mm_loadu_ps(w + i), vdecay);
              const __m128 mi = _mm_add_ps(_mm_mul_ps(_mm_loadu_ps(m + i), vb1), _mm_mul_ps(va1, gi));
              const __m128 vi = _mm_add_ps(_mm_mul_ps(_mm_loadu_ps(v + i), vb2), _mm_mul_ps(_mm_mul_ps(va2, gi), gi));
              const __m128 denom = _mm_add_ps(_mm_div_ps(_mm_sqrt_ps(vi), vbc), veps);
              _mm_storeu_ps(w + i, _mm_sub_ps(wi, _mm_mul_ps(vstep, _mm_div_ps(mi, denom))));
              _mm_storeu_ps(m + i, mi);
              _mm_storeu_ps(v + i, vi);
            }
          }
#endif
          for (; i < i1; ++i) {
            w[i] = w[i] * decay;                                  // param.mul_(1 - lr * wd)
            m[i] = m[i] * b1 + (T(1) - b1) * gp[i];               // exp_avg.mul_(b1).add_(g, 1 - b1)
            v[i] = v[i] * b2 + (T(1) - b2) * gp[i] * gp[i];       // exp_avg_sq.mul_(b2).addcmul_(g, g, 1 - b2)
            const T denom = std::sqrt(v[i]) / bc2_sqrt + eps;     // (exp_avg_sq.sqrt() / sqrt(bc2)).add_(eps)
            w[i] = w[i] - step_size * (m[i] / denom);             // param.addcdiv_(exp_avg, denom, -step_size)
          }
        });
      }
    }
  }

 private:
  double beta1_, beta2_, eps_;
};

}  // namespace segml::train
