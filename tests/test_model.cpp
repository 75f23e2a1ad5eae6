// SegformerForSemanticSegmentation vs the PyTorch reference (tools/segformer_ref.py): every stage's
// hidden state, the fused decoder features, logits, loss, BatchNorm running stats, the gradient of
// every parameter, and one SGD / AdamW step. Fixtures: tools/fixtures/model_{tiny,b0}.py.
#include <doctest/doctest.h>

#include <cmath>

#include <segml/io/checkpoint.hpp>
#include <segml/train/optim.hpp>

#include "support.hpp"

using namespace segml;

namespace {

struct Loaded {
  test::Fixture fx;
  SegformerForSemanticSegmentation<float> model;
  explicit Loaded(const std::string& group) : fx(group), model(config_of(fx)) {
    const LoadReport r = load_state_dict(model, {test::fixture_path(group)});
    CHECK_MESSAGE(r.missing.empty(), r.str(group));
    CHECK(r.mismatched.empty());
  }
  static SegformerConfig config_of(const test::Fixture& fx) {
    return SegformerConfig::from_json(nlohmann::json::parse(fx.file().metadata().at("config")), "fixture config");
  }
};

// Relative L2 error, with an absolute floor for gradients that are zero by symmetry in exact
// arithmetic and hold only float32 round-off in the reference (e.g. attention key biases).
void compare_grad(const std::string& name, const Tensor<float>& got, const Tensor<float>& want) {
  REQUIRE_MESSAGE(got.shape() == want.shape(), name);
  double num = 0, den = 0, max_abs = 0;
  for (int64_t i = 0; i < got.numel(); ++i) {
    const double d = double(got.data()[i]) - double(want.data()[i]);
    num += d * d;
    den += double(want.data()[i]) * double(want.data()[i]);
    max_abs = std::max(max_abs, std::abs(d));
  }
  const double rel = std::sqrt(num) / std::max(std::sqrt(den), 1e-30);
  const bool ok = rel <= 1e-4 || max_abs <= 1e-7;
  MESSAGE("grad " << name << ": rel L2 " << rel << ", max abs diff " << max_abs << std::string(ok ? " OK" : " NOT OK"));
  CHECK_MESSAGE(ok, "grad " << name << ": rel L2 " << rel << " max abs " << max_abs);
}

void check_eval(Loaded& m, double atol) {
  m.model.eval();
  NoGradGuard ng;
  Var<float> pixels(m.fx.get("pixel_values"));
  SegformerOutput<float> out = m.model.forward(pixels);
  for (size_t i = 0; i < out.hidden_states.size(); ++i)
    test::compare("eval.hidden_states." + std::to_string(i), out.hidden_states[i].data(),
                  m.fx.get("eval.hidden_states." + std::to_string(i)), atol);
  test::compare("eval.decode.fused", out.fused.data(), m.fx.get("eval.decode.fused"), atol);
  test::compare("eval.logits", out.logits.data(), m.fx.get("eval.logits"), atol);
}

void check_train_step(Loaded& m, double atol) {
  m.model.train();
  Var<float> pixels(m.fx.get("pixel_values"));
  const Tensor<int64_t> labels = m.fx.get<int64_t>("labels");
  SegformerOutput<float> out = m.model.forward(pixels, &labels);
  test::compare("train.logits", out.logits.data(), m.fx.get("train.logits"), atol);
  const double want_loss = m.fx.get<double>("train.loss").data()[0];
  const double got_loss = out.loss.data().data()[0];
  MESSAGE("train.loss: " << got_loss << " vs " << want_loss);
  CHECK(std::abs(got_loss - want_loss) <= 1e-5 * std::abs(want_loss));
  test::compare("train.running_mean", m.model.decode_head.batch_norm.running_mean, m.fx.get("train.running_mean"), 1e-5);
  test::compare("train.running_var", m.model.decode_head.batch_norm.running_var, m.fx.get("train.running_var"), 1e-5);
  out.loss.backward();
  int checked = 0;
  nn::Visitor<float> v;
  v.parameter = [&](const std::string& name, Var<float>& p) {
    REQUIRE_MESSAGE(p.grad().defined(), "no gradient for " << name);
    compare_grad(name, p.grad(), m.fx.get("grad." + name));
    ++checked;
  };
  v.buffer = [](const std::string&, Tensor<float>&) {};
  m.model.visit(v);
  MESSAGE(checked << " parameter gradients compared");
  CHECK(checked > 100);
}

}  // namespace

TEST_CASE("model tiny: every parameter and buffer has its HF name and is loaded") {
  Loaded m("model_tiny");
  int n = 0;
  nn::Visitor<float> v;
  v.parameter = [&](const std::string& name, Var<float>& p) {
    ++n;
    CHECK_MESSAGE(test::max_abs_diff(p.data(), m.fx.get(name)) == 0.0, name);
  };
  v.buffer = [&](const std::string& name, Tensor<float>& b) {
    ++n;
    CHECK_MESSAGE(test::max_abs_diff(b, m.fx.get(name)) == 0.0, name);
  };
  m.model.visit(v);
  CHECK(n == 146);
}

TEST_CASE("model tiny: eval forward matches PyTorch (hidden states, fused features, logits)") {
  Loaded m("model_tiny");
  check_eval(m, 1e-4);
}

TEST_CASE("model tiny: train forward, loss, running stats and every gradient match PyTorch") {
  Loaded m("model_tiny");
  check_train_step(m, 1e-4);
}

TEST_CASE("model tiny: one SGD and one AdamW step from the reference gradients match torch.optim") {
  for (const char* which : {"sgd", "adamw"}) {
    Loaded m("model_tiny");
    std::vector<std::pair<std::string, Var<float>>> params;
    nn::Visitor<float> v;
    v.parameter = [&](const std::string& name, Var<float>& p) {
      p.grad() = m.fx.get("grad." + name);
      params.emplace_back(name, p);
    };
    v.buffer = [](const std::string&, Tensor<float>&) {};
    m.model.visit(v);
    const nlohmann::json hp = nlohmann::json::parse(m.fx.file().metadata().at(which));
    train::ParamGroup<float> group{params, 1.0, hp["weight_decay"].get<double>()};
    if (std::string(which) == "sgd") {
      train::SGD<float> opt({group}, hp["momentum"].get<double>());
      opt.step(hp["lr"].get<double>());
    } else {
      train::AdamW<float> opt({group}, hp["betas"][0].get<double>(), hp["betas"][1].get<double>(), hp["eps"].get<double>());
      opt.step(hp["lr"].get<double>());
    }
    for (auto& [name, p] : params) test::compare(std::string(which) + "." + name, p.data(), m.fx.get(std::string(which) + "." + name), 1e-6);
  }
}

TEST_CASE("model b0: eval forward matches PyTorch within 1e-4") {
  Loaded m("model_b0");
  check_eval(m, 1e-4);
}

TEST_CASE("model b0: train loss and every gradient match PyTorch") {
  Loaded m("model_b0");
  check_train_step(m, 1e-4);
}
