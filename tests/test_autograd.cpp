#include <doctest/doctest.h>

#include <algorithm>
#include <string>
#include <vector>

#include <segml/ops/elementwise.hpp>

#include "support.hpp"

using namespace segml;

TEST_CASE("autograd: reused activations accumulate, leaves accumulate across calls") {
  Var<double> x(Tensor<double>::from({3}, {1, 2, 3}), true);
  // y = x*x + x  ->  dy/dx = 2x + 1
  Var<double> y = ops::sum(ops::add(ops::mul(x, x), x));
  y.backward();
  CHECK(x.grad().at({0}) == 3.0);
  CHECK(x.grad().at({2}) == 7.0);
  CHECK(!y.grad_fn());  // graph freed after backward
  Var<double> y2 = ops::sum(ops::scale(x, 2.0));
  y2.backward();  // leaf grads accumulate: 3 + 2
  CHECK(x.grad().at({0}) == 5.0);
  x.zero_grad();
  CHECK(!x.grad().defined());
}

TEST_CASE("autograd: a 10,000-op chain neither overflows the stack in backward nor in destruction") {
  Var<float> x(Tensor<float>::ones({4}), true);
  {
    Var<float> h = x;
    for (int i = 0; i < 10000; ++i) h = ops::scale(h, 1.0f);
    ops::sum(h).backward();
    CHECK(x.grad().at({0}) == 1.0f);
  }
  {
    Var<float> h = x;
    for (int i = 0; i < 100000; ++i) h = ops::add(h, x);
    // dropped without backward: destruction must be iterative
  }
  CHECK(true);
}

TEST_CASE("autograd: no-grad guard records nothing") {
  Var<float> x(Tensor<float>::ones({2}), true);
  {
    NoGradGuard ng;
    Var<float> y = ops::mul(x, x);
    CHECK(!y.requires_grad());
    CHECK(!y.grad_fn());
  }
  Var<float> z = ops::mul(x, x);
  CHECK(z.requires_grad());
  CHECK(z.grad_fn());
  CHECK_THROWS_WITH_AS(z.backward(), doctest::Contains("output has shape [2]"), Error);
}

TEST_CASE("autograd: gradients reaching an op twice through aliasing branches are not corrupted") {
  Var<double> x(Tensor<double>::from({2}, {1, 2}), true);
  Var<double> a = ops::add(x, x);  // both grads alias grad_out
  ops::sum(ops::mul(a, a)).backward();
  // d/dx sum((2x)^2) = 8x
  CHECK(x.grad().at({0}) == 8.0);
  CHECK(x.grad().at({1}) == 16.0);
}

TEST_CASE("gradcheck: elementwise ops") {
  test::check_gradients("mul/add/scale",
                        [](const std::vector<Var<double>>& v) { return ops::scale(ops::add(ops::mul(v[0], v[1]), v[0]), 0.5); },
                        {test::random_tensor<double>({3, 5}, 1), test::random_tensor<double>({3, 5}, 2)});
}

TEST_CASE("gradcheck: shape ops (reshape, permute, narrow)") {
  test::check_gradients("narrow/permute/reshape",
                        [](const std::vector<Var<double>>& v) {
                          const Var<double> n = ops::narrow(v[0], 1, 2, 3);  // (4, 3, 5)
                          return ops::mul(ops::reshape(ops::permute(n, {2, 0, 1}), {5, 12}), v[1]);
                        },
                        {test::random_tensor<double>({4, 7, 5}, 3), test::random_tensor<double>({5, 12}, 4)});
  const Var<double> x(test::random_tensor<double>({4, 7}, 5));
  const Var<double> n = ops::narrow(x, 1, 5, 2);
  CHECK(n.shape() == Shape{4, 2});
  CHECK(n.data().at({3, 1}) == x.data().at({3, 6}));
  CHECK_THROWS_WITH_AS(ops::narrow(x, 1, 6, 2), doctest::Contains("narrow: start 6 length 2 out of range"), segml::Error);
}

TEST_CASE("autograd: a value no backward needs is freed when its last handle goes, gradients still flow") {
  const Var<double> x(test::random_tensor<double>({3, 4}, 6), true);
  std::weak_ptr<VarImpl<double>> sum_impl;
  Var<double> out;
  {
    const Var<double> sum = ops::add(x, x);  // add saves nothing for its backward
    sum_impl = sum.impl();
    out = ops::mul(ops::scale(sum, 2.0), x);  // scale saves nothing either; mul saves its inputs
  }
  REQUIRE(!sum_impl.expired());              // the graph still holds the node's gradient slot...
  CHECK(!sum_impl.lock()->data.defined());   // ...but not its value
  ops::sum(out).backward();
  // d/dx sum(4x * x) = 8x
  for (int64_t i = 0; i < x.numel(); ++i) CHECK(x.grad().data()[i] == doctest::Approx(8 * x.data().data()[i]));
  CHECK(sum_impl.expired());  // and the graph is gone after backward
}

TEST_CASE("autograd: a pass-through gradient is handed on without a copy, yet never shared by two inputs") {
  // add gives grad_out to both inputs; reshape gives a view of it. Both must end up in private
  // storage, or a later in-place accumulation into one would corrupt the other.
  Var<double> x(Tensor<double>::from({2, 2}, {1, 2, 3, 4}), true);
  Var<double> y(Tensor<double>::from({2, 2}, {5, 6, 7, 8}), true);
  Var<double> s = ops::add(ops::reshape(x, {4}), ops::reshape(y, {4}));
  ops::sum(ops::mul(s, ops::reshape(x, {4}))).backward();  // d/dx = s + x, d/dy = x
  CHECK(!x.grad().shares_storage_with(y.grad()));
  for (int64_t i = 0; i < 4; ++i) {
    CHECK(x.grad().data()[i] == (x.data().data()[i] + y.data().data()[i]) + x.data().data()[i]);
    CHECK(y.grad().data()[i] == x.data().data()[i]);
  }
  // A retained gradient keeps its storage: what flows on is a copy.
  Var<double> a(Tensor<double>::from({3}, {1, 2, 3}), true);
  Var<double> r = ops::reshape(a, {3, 1});
  r.retain_grad();
  ops::sum(ops::mul(r, r)).backward();
  CHECK(!a.grad().shares_storage_with(r.grad()));
  CHECK(a.grad().at({2}) == 6.0);
  CHECK(r.grad().at({2, 0}) == 6.0);
}

TEST_CASE("autograd: a leaf's gradient-ready hook runs once per backward, after its last contribution") {
  // w is used twice (w * x, then w * that): its hook must see both contributions; u gets none.
  Var<double> w(Tensor<double>::from({2}, {2.0, 3.0}), true), x(Tensor<double>::from({2}, {5.0, 7.0}), true);
  Var<double> u(Tensor<double>::from({2}, {1.0, 1.0}), true);
  std::vector<std::string> calls;
  std::vector<double> w_grad_seen;
  w.set_grad_ready_hook([&] {
    calls.push_back("w");
    const Tensor<double> g = w.grad().contiguous();
    w_grad_seen.assign(g.data(), g.data() + g.numel());
  });
  x.set_grad_ready_hook([&] { calls.push_back("x"); });
  u.set_grad_ready_hook([&] { calls.push_back("u"); });
  const Var<double> y = ops::sum(ops::mul(w, ops::mul(w, x)));  // sum(w^2 x): dw = 2 w x, dx = w^2
  y.backward();
  REQUIRE(calls.size() == 2);
  CHECK(std::count(calls.begin(), calls.end(), "w") == 1);
  CHECK(std::count(calls.begin(), calls.end(), "x") == 1);
  REQUIRE(w_grad_seen.size() == 2);
  CHECK(w_grad_seen[0] == doctest::Approx(20.0));  // complete when the hook ran: 2 * 2 * 5
  CHECK(w_grad_seen[1] == doctest::Approx(42.0));
  // A second backward fires again (accumulation across calls is the caller's business), and
  // removing a hook stops it.
  x.set_grad_ready_hook({});
  ops::sum(ops::mul(w, x)).backward();
  CHECK(std::count(calls.begin(), calls.end(), "w") == 2);
  CHECK(std::count(calls.begin(), calls.end(), "x") == 1);
  Var<double> product = ops::mul(w, x);
  CHECK_THROWS_AS(product.set_grad_ready_hook([] {}), Error);  // not a leaf
}
