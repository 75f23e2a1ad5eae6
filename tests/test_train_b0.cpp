// One training step of MiT-b0 vs PyTorch (tools/fixtures/model_b0_step.py): a 2x3x64x64 batch in
// train mode (BatchNorm batch statistics, dropout and drop-path 0): the loss (1e-5 relative), the
// BatchNorm running statistics, the gradient of every parameter (1e-4 relative L2), and the
// parameters after one SGD step (1e-6) and one AdamW step taken from segml's OWN gradients, plus
// AdamW from the reference gradients (1e-6; see the comment above the optimizer checks for why
// AdamW from two implementations' gradients is held to a gradient-dependent bound instead).
//
// The weights come from model_b0.safetensors; model_b0_step.safetensors holds the inputs and, for
// every parameter, [sum, sum of squares, K signed projections] of its gradient and of both updates
// (after - before), plus full tensors for the parameters of <= 1024 elements. The projections use
// the Rademacher signs of rademacher() below, identical to the Python side; since
// E[(r . d)^2] = |d|^2, sqrt(mean_k (P_k(got) - P_k(want))^2) estimates the L2 norm of the
// difference of two tensors without storing them (K = 16: within a factor ~1.5 with high
// probability), so any wrong element of any parameter shows.
#include <doctest/doctest.h>

#include <cmath>
#include <map>

#include <segml/io/checkpoint.hpp>
#include <segml/train/optim.hpp>

#include "support.hpp"

using namespace segml;

namespace {

// r_k(i) in {-1, +1}: bit 0 of Wellons' lowbias32 hash of i * 0x9E3779B1 + (k + 1) * 0x85EBCA77.
double rademacher(uint64_t i, uint32_t k) {
  uint32_t h = static_cast<uint32_t>(i) * 0x9E3779B1u + (k + 1) * 0x85EBCA77u;
  h ^= h >> 16;
  h *= 0x7FEB352Du;
  h ^= h >> 15;
  h *= 0x846CA68Bu;
  h ^= h >> 16;
  return (h & 1u) ? 1.0 : -1.0;
}

// [sum, sum of squares, P_0 .. P_{K-1}] of x (in double), as the fixture's summary().
std::vector<double> summary(const std::vector<double>& x, int K) {
  std::vector<double> s(static_cast<size_t>(2 + K), 0.0);
  for (size_t i = 0; i < x.size(); ++i) {
    s[0] += x[i];
    s[1] += x[i] * x[i];
    for (int k = 0; k < K; ++k) s[static_cast<size_t>(2 + k)] += rademacher(i, static_cast<uint32_t>(k)) * x[i];
  }
  return s;
}

std::vector<double> to_double(const Tensor<float>& t) {
  const Tensor<float> c = t.contiguous();
  return std::vector<double>(c.data(), c.data() + c.numel());
}

struct Check {
  double est_l2_diff;  // estimate of |got - want|_2 from the projections
  double want_l2;      // |want|_2 (exact, from the sum of squares)
  double sum_diff;     // |sum(got) - sum(want)|
};

Check against(const std::vector<double>& got, const Tensor<double>& want, int K) {
  const std::vector<double> s = summary(got, K);
  double sq = 0;
  for (int k = 0; k < K; ++k) {
    const double d = s[static_cast<size_t>(2 + k)] - want.data()[2 + k];
    sq += d * d;
  }
  return {std::sqrt(sq / K), std::sqrt(std::max(0.0, want.data()[1])), std::abs(s[0] - want.data()[0])};
}

}  // namespace

TEST_CASE("model b0: one training step (loss, every gradient, SGD and AdamW updates) matches PyTorch") {
  const test::Fixture weights("model_b0"), fx("model_b0_step");
  const SegformerConfig config =
      SegformerConfig::from_json(nlohmann::json::parse(fx.file().metadata().at("config")), "fixture config");
  const int K = std::stoi(fx.file().metadata().at("projections"));
  SegformerForSemanticSegmentation<float> model(config);
  const LoadReport r = load_state_dict(model, {test::fixture_path("model_b0")});
  REQUIRE_MESSAGE(r.missing.empty(), r.str("model_b0"));
  REQUIRE(r.mismatched.empty());

  model.train();
  Var<float> pixels(fx.get("pixel_values"));
  const Tensor<int64_t> labels = fx.get<int64_t>("labels");
  SegformerOutput<float> out = model.forward(pixels, &labels);
  const double want_loss = fx.get<double>("train.loss").data()[0], got_loss = out.loss.data().data()[0];
  MESSAGE("train.loss: " << got_loss << " vs " << want_loss << " (rel " << std::abs(got_loss - want_loss) / want_loss << ")");
  CHECK(std::abs(got_loss - want_loss) <= 1e-5 * std::abs(want_loss));
  test::compare("train.running_mean", model.decode_head.batch_norm.running_mean, fx.get("train.running_mean"), 1e-5);
  test::compare("train.running_var", model.decode_head.batch_norm.running_var, fx.get("train.running_var"), 1e-5);
  out.loss.backward();

  // Gradients: relative L2 error <= 1e-4 (estimated; exact for the small tensors stored in full),
  // with an absolute floor of 1e-7 RMS for gradients that are zero by symmetry in exact arithmetic
  // and hold only float32 round-off (attention key biases).
  std::vector<std::pair<std::string, Var<float>>> params;
  std::map<std::string, Tensor<float>> before;
  double worst_grad = 0;
  nn::Visitor<float> v;
  v.parameter = [&](const std::string& name, Var<float>& p) {
    REQUIRE_MESSAGE(p.grad().defined(), "no gradient for " << name);
    const std::vector<double> g = to_double(p.grad());
    const Check c = against(g, fx.get<double>("stats.grad." + name), K);
    const double rel = c.est_l2_diff / std::max(c.want_l2, 1e-30), rms = c.est_l2_diff / std::sqrt(double(g.size()));
    const bool ok = rel <= 1e-4 || rms <= 1e-7;
    if (c.want_l2 > 1e-7 * std::sqrt(double(g.size()))) worst_grad = std::max(worst_grad, rel);
    CHECK_MESSAGE(ok, "grad " << name << ": estimated rel L2 " << rel << ", RMS diff " << rms);
    if (fx.file().contains("grad." + name)) {
      const Tensor<float> want = fx.get("grad." + name);
      double num = 0, den = 0, max_abs = 0;
      for (size_t i = 0; i < g.size(); ++i) {
        const double d = g[i] - double(want.data()[i]);
        num += d * d, den += double(want.data()[i]) * double(want.data()[i]), max_abs = std::max(max_abs, std::abs(d));
      }
      CHECK_MESSAGE((std::sqrt(num) <= 1e-4 * std::sqrt(den) || max_abs <= 1e-7), "grad " << name << " (full): rel L2 "
                                                                                          << std::sqrt(num / den));
    }
    params.emplace_back(name, p);
    before[name] = p.data().clone();
  };
  v.buffer = [](const std::string&, Tensor<float>&) {};
  model.visit(v);
  MESSAGE(params.size() << " parameter gradients compared; worst estimated relative L2 error " << worst_grad
                        << " (gradients above the 1e-7 RMS floor)");
  CHECK(params.size() == 205);

  // One step of each optimizer from segml's OWN gradients, starting each time from the loaded weights.
  //  - SGD: every updated parameter within 1e-6 abs (full tensors) / 1e-6 RMS (estimated, others).
  //  - AdamW: its first step is -lr * g / (|g| + eps) - lr * wd * p elementwise, a function of g with
  //    Lipschitz constant lr / eps (1e5 at eps = 1e-8): gradients that are zero in exact arithmetic
  //    (attention key biases, biases in front of the train-mode BatchNorm) hold only float32 round-off
  //    and come out as +-lr, so no two float32 implementations agree there to 1e-6. Checked instead:
  //    |du_i| <= 1e-6 + (lr / eps) |dg_i| elementwise (full tensors, dg from the stored gradients),
  //    and the same bound on the estimated RMS (x2 for the estimator's spread) for the others.
  //  - AdamW from the REFERENCE gradients (full tensors): within 1e-6 abs, the optimizer arithmetic.
  auto restore = [&] {
    for (auto& [name, p] : params) p.data() = before.at(name).clone();
  };
  auto step = [&](const std::string& which, const std::vector<std::pair<std::string, Var<float>>>& ps) {
    const nlohmann::json hp = nlohmann::json::parse(fx.file().metadata().at(which));
    const train::ParamGroup<float> group{ps, 1.0, hp["weight_decay"].get<double>()};
    if (which == "sgd") {
      train::SGD<float> opt({group}, hp["momentum"].get<double>());
      opt.step(hp["lr"].get<double>());
      return 0.0;
    }
    train::AdamW<float> opt({group}, hp["betas"][0].get<double>(), hp["betas"][1].get<double>(), hp["eps"].get<double>());
    opt.step(hp["lr"].get<double>());
    return hp["lr"].get<double>() / hp["eps"].get<double>();
  };
  for (const std::string which : {"sgd", "adamw"}) {
    restore();
    const double lipschitz = step(which, params);
    double worst_rms = 0, worst_abs = 0;
    for (auto& [name, p] : params) {
      const std::vector<double> after = to_double(p.data()), start = to_double(before.at(name));
      const std::vector<double> grad = to_double(p.grad());
      std::vector<double> update(after.size());
      for (size_t i = 0; i < after.size(); ++i) update[i] = after[i] - start[i];
      const double n = double(update.size());
      const Check c = against(update, fx.get<double>("stats." + which + "." + name), K);
      const double rms = c.est_l2_diff / std::sqrt(n);
      const double grad_rms = against(grad, fx.get<double>("stats.grad." + name), K).est_l2_diff / std::sqrt(n);
      worst_rms = std::max(worst_rms, rms);
      CHECK_MESSAGE(rms <= 1e-6 + 2 * lipschitz * grad_rms, which << "." << name << ": estimated RMS diff of the update "
                                                                 << rms << " (gradient's " << grad_rms << ")");
      if (fx.file().contains(which + "." + name)) {
        const Tensor<float> want = fx.get(which + "." + name), want_grad = fx.get("grad." + name);
        double worst_excess = -1;
        for (size_t i = 0; i < after.size(); ++i) {
          const double d = std::abs(after[i] - double(want.data()[i]));
          worst_abs = std::max(worst_abs, d);
          worst_excess = std::max(worst_excess, d - 1e-6 - lipschitz * std::abs(grad[i] - double(want_grad.data()[i])));
        }
        CHECK_MESSAGE(worst_excess <= 0, which << "." << name << ": an element is off by " << worst_excess
                                               << " more than its gradient difference allows");
      }
    }
    MESSAGE(which << " from segml's gradients: worst estimated RMS diff " << worst_rms
                  << ", worst max abs diff (full tensors) " << worst_abs);
    if (which == "sgd") CHECK(worst_abs <= 1e-6);
  }

  // AdamW from the reference gradients, on every parameter stored in full.
  restore();
  std::vector<std::pair<std::string, Var<float>>> small;
  for (auto& [name, p] : params)
    if (fx.file().contains("grad." + name)) {
      p.grad() = fx.get("grad." + name);
      small.emplace_back(name, p);
    }
  step("adamw", small);
  double worst = 0;
  for (auto& [name, p] : small) {
    const double d = test::max_abs_diff(p.data(), fx.get("adamw." + name));
    worst = std::max(worst, d);
    CHECK_MESSAGE(d <= 1e-6, "adamw." << name << ": max abs diff " << d);
  }
  MESSAGE("adamw from the reference gradients, " << small.size() << " parameters: worst max abs diff " << worst);
  CHECK(small.size() > 100);
}
