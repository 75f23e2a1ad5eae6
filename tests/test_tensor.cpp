#include <doctest/doctest.h>

#include <segml/core/tensor.hpp>

using segml::Tensor;

TEST_CASE("tensor: factories, alignment and shape") {
  auto t = Tensor<float>::zeros({2, 3, 4});
  CHECK(t.numel() == 24);
  CHECK(t.dim() == 3);
  CHECK(t.size(-1) == 4);
  CHECK(t.is_contiguous());
  CHECK(reinterpret_cast<uintptr_t>(t.data()) % 64 == 0);
  CHECK(t.strides() == segml::Shape{12, 4, 1});
  CHECK_THROWS_WITH_AS(Tensor<float>::from({2, 2}, {1, 2, 3}),
                       doctest::Contains("shape [2, 2] holds 4 elements but 3 values"), segml::Error);
}

TEST_CASE("tensor: views share storage and index correctly") {
  std::vector<float> v(24);
  for (int i = 0; i < 24; ++i) v[i] = static_cast<float>(i);
  auto t = Tensor<float>::from({2, 3, 4}, v);
  auto p = t.permute({2, 0, 1});
  CHECK(p.shape() == segml::Shape{4, 2, 3});
  CHECK(!p.is_contiguous());
  CHECK(p.shares_storage_with(t));
  CHECK(p.at({3, 1, 2}) == t.at({1, 2, 3}));
  auto c = p.contiguous();
  CHECK(c.is_contiguous());
  CHECK(c.at({3, 1, 2}) == 23.0f);
  auto s = t.slice(2, 1, 4, 2);  // columns 1 and 3
  CHECK(s.shape() == segml::Shape{2, 3, 2});
  CHECK(s.at({1, 2, 1}) == 23.0f);
  auto n = t.narrow(1, 1, 2);
  CHECK(n.at({0, 0, 0}) == 4.0f);
  CHECK(t.transpose(0, 2).at({3, 2, 1}) == 23.0f);
  auto r = t.reshape({6, -1});
  CHECK(r.shape() == segml::Shape{6, 4});
  CHECK(r.shares_storage_with(t));
  auto r2 = p.reshape({-1});  // non-contiguous: copies
  CHECK(!r2.shares_storage_with(t));
  CHECK(r2.data()[1] == 4.0f);  // p[0][0][1] = t[0][1][0]
  CHECK(t.to<double>().at({1, 2, 3}) == 23.0);
}

TEST_CASE("tensor: bad shapes throw messages naming the op and shapes") {
  auto t = Tensor<float>::zeros({2, 3});
  CHECK_THROWS_WITH_AS(t.view({4, 2}), doctest::Contains("view: shape [4, 2] is invalid for tensor of shape [2, 3]"),
                       segml::Error);
  CHECK_THROWS_WITH_AS(t.permute({0, 0}), doctest::Contains("permute: dim 0 repeated"), segml::Error);
  CHECK_THROWS_WITH_AS(t.narrow(1, 2, 2), doctest::Contains("narrow: start 2 length 2 out of range"), segml::Error);
  CHECK_THROWS_WITH_AS(t.transpose(0, 2).view({6}), doctest::Contains("out of range"), segml::Error);
  CHECK_THROWS_WITH_AS(t.transpose(0, 1).view({6}), doctest::Contains("not contiguous"), segml::Error);
  CHECK_THROWS_WITH_AS(t.add_(Tensor<float>::zeros({3, 2})), doctest::Contains("add_: shape [3, 2] cannot be added to shape [2, 3]"),
                       segml::Error);
}

TEST_CASE("tensor: large strided copies and add_ (parallel paths) equal the element-by-element definition") {
  Tensor<float> x = Tensor<float>::empty({3, 5, 70, 90});
  for (int64_t i = 0; i < x.numel(); ++i) x.data()[i] = static_cast<float>(i % 1009) - 500.f;
  const Tensor<float> p = x.permute({2, 0, 3, 1}).contiguous();  // (70, 3, 90, 5)
  REQUIRE(p.shape() == segml::Shape{70, 3, 90, 5});
  int64_t bad = 0;
  for (int64_t a = 0; a < 70; ++a)
    for (int64_t b = 0; b < 3; ++b)
      for (int64_t c = 0; c < 90; ++c)
        for (int64_t d = 0; d < 5; ++d) bad += p.at({a, b, c, d}) != x.at({b, d, a, c});
  CHECK(bad == 0);
  Tensor<float> sum = p.clone();
  sum.add_(p);
  bad = 0;
  for (int64_t i = 0; i < p.numel(); ++i) bad += sum.data()[i] != 2 * p.data()[i];
  CHECK(bad == 0);
}

TEST_CASE("tensor: NCHW <-> NHWC permute copies (the blocked-transpose path) equal the definition") {
  for (const segml::Shape& s : {segml::Shape{2, 37, 19, 23}, segml::Shape{1, 9, 61, 70}, segml::Shape{3, 300, 5, 4}}) {
    Tensor<float> x = Tensor<float>::empty(s);
    for (int64_t i = 0; i < x.numel(); ++i) x.data()[i] = static_cast<float>(i % 997) - 400.f;
    const Tensor<float> nhwc = x.permute({0, 2, 3, 1}).contiguous();
    const Tensor<float> back = nhwc.permute({0, 3, 1, 2}).contiguous();
    int64_t bad = 0;
    for (int64_t b = 0; b < s[0]; ++b)
      for (int64_t c = 0; c < s[1]; ++c)
        for (int64_t h = 0; h < s[2]; ++h)
          for (int64_t w = 0; w < s[3]; ++w) bad += nhwc.at({b, h, w, c}) != x.at({b, c, h, w});
    CHECK(bad == 0);
    bad = 0;
    for (int64_t i = 0; i < x.numel(); ++i) bad += back.data()[i] != x.data()[i];
    CHECK(bad == 0);
  }
  Tensor<double> mm = Tensor<double>::empty({130, 70});  // a plain 2-D transpose, no batch dim
  for (int64_t i = 0; i < mm.numel(); ++i) mm.data()[i] = static_cast<double>(i);
  const Tensor<double> t = mm.transpose(0, 1).contiguous();
  int64_t bad = 0;
  for (int64_t i = 0; i < 130; ++i)
    for (int64_t j = 0; j < 70; ++j) bad += t.at({j, i}) != mm.at({i, j});
  CHECK(bad == 0);
}

TEST_CASE("tensor: freed large storage is recycled, never shared by two live tensors") {
  const Tensor<float> a = Tensor<float>::full({1 << 16}, 1.f);  // 256 KiB: a recycled size
  { const Tensor<float> b = Tensor<float>::full({1 << 16}, 2.f); }  // freed: its block is kept
  const Tensor<float> c = Tensor<float>::full({(1 << 16) - 5}, 3.f);  // may reuse b's block, never a's
  CHECK(c.data() != a.data());
  CHECK(a.data()[(1 << 16) - 1] == 1.f);
  CHECK(c.data()[(1 << 16) - 6] == 3.f);
  segml::set_tensor_cache_limit(0);  // releases everything cached
  CHECK(segml::tensor_cache_bytes() == 0);
  segml::set_tensor_cache_limit(std::size_t{1} << 30);
}

TEST_CASE("tensor: zero-extent tensors are contiguous, views, copies and clones of them work") {
  using segml::Shape;
  using segml::Tensor;
  for (const Shape& s : {Shape{2, 0}, Shape{0, 3}, Shape{4, 0, 5}}) {
    const Tensor<float> t = Tensor<float>::zeros(s);
    CHECK(t.numel() == 0);
    CHECK(t.is_contiguous());
    CHECK(t.contiguous().shape() == s);
    CHECK(t.clone().shape() == s);
    if (s.size() == 2) CHECK(t.permute({1, 0}).contiguous().shape() == Shape{s[1], s[0]});
  }
  const Tensor<int64_t> ids = Tensor<int64_t>::zeros({3, 4});
  const Tensor<int64_t> none = ids.narrow(1, 2, 0);  // an empty slice of a bigger tensor
  CHECK(none.shape() == Shape{3, 0});
  CHECK(none.contiguous().numel() == 0);
}
