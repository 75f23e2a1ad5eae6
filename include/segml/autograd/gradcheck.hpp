// segml/autograd/gradcheck.hpp: the one generic finite-difference gradient checker.
//
// gradcheck(f, inputs) compares the gradient autograd computes for L = sum(w * f(inputs)), with a
// fixed random projection w, against central differences (L(x+eps) - L(x-eps)) / 2eps for every
// element of every input. Run it on Tensor<double> so that eps = 1e-6 gives ~1e-9 truncation
// error. f must be deterministic (re-seed any RNG inside f).
#pragma once

#include <cmath>
#include <functional>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "segml/autograd/variable.hpp"

namespace segml {

struct GradcheckResult {
  bool ok = true;
  double max_abs_err = 0;  // over all checked elements
  std::string report;      // first failures, or a one-line summary
};

struct GradcheckOptions {
  double eps = 1e-6;
  double atol = 1e-6;
  double rtol = 1e-4;
  uint64_t seed = 1234;
  std::vector<bool> wrt;  // which inputs to check (default: all)
};

using GradcheckFn = std::function<Var<double>(const std::vector<Var<double>>&)>;

inline GradcheckResult gradcheck(const GradcheckFn& f, const std::vector<Tensor<double>>& inputs,
                                 const GradcheckOptions& opt = {}) {
  auto checked = [&](size_t i) { return opt.wrt.empty() || opt.wrt[i]; };
  // Analytic gradients.
  std::vector<Var<double>> vars;
  for (size_t i = 0; i < inputs.size(); ++i) vars.emplace_back(inputs[i].clone(), checked(i));
  Var<double> out = f(vars);
  std::mt19937_64 rng(opt.seed);
  std::uniform_real_distribution<double> uni(-1.0, 1.0);
  Tensor<double> w = Tensor<double>::empty(out.shape());
  for (int64_t k = 0; k < w.numel(); ++k) w.data()[k] = uni(rng);
  out.backward(w);

  auto loss = [&](const std::vector<Tensor<double>>& xs) {
    NoGradGuard ng;
    std::vector<Var<double>> vs;
    for (const auto& x : xs) vs.emplace_back(x, false);
    const Tensor<double> y = f(vs).data().contiguous();
    double s = 0;
    for (int64_t k = 0; k < y.numel(); ++k) s += w.data()[k] * y.data()[k];
    return s;
  };

  GradcheckResult r;
  std::ostringstream os;
  int failures = 0;
  for (size_t i = 0; i < inputs.size(); ++i) {
    if (!checked(i)) continue;
    std::vector<Tensor<double>> xs;
    for (const auto& x : inputs) xs.push_back(x.clone());
    const Tensor<double> analytic = vars[i].grad().defined() ? vars[i].grad().contiguous()
                                                             : Tensor<double>::zeros(inputs[i].shape());
    double* p = xs[i].data();
    for (int64_t k = 0; k < xs[i].numel(); ++k) {
      const double saved = p[k];
      p[k] = saved + opt.eps;
      const double lp = loss(xs);
      p[k] = saved - opt.eps;
      const double lm = loss(xs);
      p[k] = saved;
      const double numeric = (lp - lm) / (2 * opt.eps);
      const double err = std::abs(analytic.data()[k] - numeric);
      r.max_abs_err = std::max(r.max_abs_err, err);
      if (!(err <= opt.atol + opt.rtol * std::abs(numeric))) {
        r.ok = false;
        if (failures++ < 8)
          os << "input " << i << " element " << k << ": analytic " << analytic.data()[k] << " numeric " << numeric << "\n";
      }
    }
  }
  if (r.ok) os << "max abs err " << r.max_abs_err;
  r.report = os.str();
  return r;
}

}  // namespace segml
