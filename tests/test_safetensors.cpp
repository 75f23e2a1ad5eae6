// Tests for io/safetensors.hpp: round trips, the reference byte layout, and one test per way a
// file can be malformed (each must fail with a message naming the file and the problem).
#include <doctest/doctest.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <segml/io/safetensors.hpp>

#include "support.hpp"

namespace st = segml::safetensors;
using segml::Tensor;

namespace {

// A file image: u64 header length, the header text (unpadded), then the data bytes.
std::vector<char> file_bytes(const std::string& header, const std::vector<char>& data = {}) {
  std::vector<char> out(8 + header.size() + data.size());
  const uint64_t n = header.size();
  std::memcpy(out.data(), &n, 8);
  std::copy(header.begin(), header.end(), out.begin() + 8);
  std::copy(data.begin(), data.end(), out.begin() + 8 + static_cast<std::ptrdiff_t>(header.size()));
  return out;
}

std::vector<char> zeros(size_t n) { return std::vector<char>(n, 0); }

uint64_t header_length(const std::vector<char>& bytes) {
  uint64_t n;
  std::memcpy(&n, bytes.data(), 8);
  return n;
}

std::string header_text(const std::vector<char>& bytes) {
  return std::string(bytes.data() + 8, static_cast<size_t>(header_length(bytes)));
}

// A fresh, empty directory under the system temp dir, removed at scope exit.
using segml::test::TempDir;

#define CHECK_BAD(bytes, text) \
  CHECK_THROWS_WITH_AS(st::File((bytes), "bad.safetensors"), doctest::Contains(text), segml::Error)

}  // namespace

TEST_CASE("safetensors: F32 round trip through a file, with metadata") {
  TempDir dir;
  const std::string path = (dir.path / "a.safetensors").string();
  const Tensor<float> a = segml::test::random_tensor<float>({3, 5, 7}, 1);
  const Tensor<float> scalar = Tensor<float>::from({}, {2.5f});
  const Tensor<float> empty = Tensor<float>::empty({0, 4});
  st::save(path, {{"w", st::make_entry(a)}, {"s", st::make_entry(scalar)}, {"e", st::make_entry(empty)}},
           {{"format", "pt"}});
  const st::File f(path);
  CHECK(f.metadata().at("format") == "pt");
  CHECK(f.names() == std::vector<std::string>{"e", "s", "w"});
  CHECK(segml::test::max_abs_diff(f.get<float>("w", {3, 5, 7}), a) == 0.0);
  CHECK(f.get<double>("s").shape().empty());
  CHECK(f.get<double>("s").data()[0] == 2.5);
  CHECK(f.get<float>("e").shape() == segml::Shape{0, 4});
}

TEST_CASE("safetensors: F16 round trip (exact values and rounding) and F64/I64") {
  // Values exactly representable in half: must come back bit-exact.
  const std::vector<float> exact = {0.0f, -0.0f, 1.0f, -2.0f, 0.5f, 65504.0f, 6.103515625e-05f /* min normal */,
                                    5.960464477539063e-08f /* min subnormal */, 1024.0f, -0.333251953125f};
  const Tensor<float> e = Tensor<float>::from({static_cast<int64_t>(exact.size())}, exact);
  const Tensor<float> r = segml::test::random_tensor<float>({4, 9}, 2, -100.0, 100.0);
  const Tensor<double> d = segml::test::random_tensor<double>({5}, 3);
  const Tensor<int64_t> i = Tensor<int64_t>::from({3}, {-7, 0, int64_t{1} << 40});
  const st::File f(st::serialize({{"exact", st::make_entry(e, st::Dtype::F16)},
                                  {"rand", st::make_entry(r, st::Dtype::F16)},
                                  {"d", st::make_entry(d, st::Dtype::F64)},
                                  {"i", st::make_entry(i, st::Dtype::I64)}}),
                   "mem");
  CHECK(f.info("exact").dtype == st::Dtype::F16);
  const Tensor<float> got = f.get<float>("exact");
  for (size_t k = 0; k < exact.size(); ++k) {
    CHECK(got.data()[k] == exact[k]);
    CHECK(std::signbit(got.data()[k]) == std::signbit(exact[k]));
  }
  // Round to nearest: relative error <= 2^-11 for normal halves.
  const Tensor<float> rr = f.get<float>("rand");
  for (int64_t k = 0; k < r.numel(); ++k)
    CHECK(std::abs(rr.data()[k] - r.data()[k]) <= std::abs(r.data()[k]) * 0x1p-11f);
  CHECK(segml::test::max_abs_diff(f.get<double>("d"), d) == 0.0);
  CHECK(f.get<int64_t>("i").data()[2] == (int64_t{1} << 40));
  CHECK(f.get<int64_t>("i").data()[0] == -7);
  // Overflow to inf and ties to even.
  CHECK(st::float_to_half(65520.0f) == 0x7c00);
  CHECK(st::float_to_half(1.0f + 0x1p-11f) == 0x3c00);           // tie, rounds to even (down)
  CHECK(st::float_to_half(1.0f + 3 * 0x1p-11f) == 0x3c02);       // tie, rounds to even (up)
}

TEST_CASE("safetensors: BF16 read from hand-made bytes") {
  // bf16 is the top half of a float32: 1.0 = 0x3F80, -2.0 = 0xC000, 0.15625 = 0x3E20, inf = 0x7F80.
  const std::vector<char> data = {'\x80', '\x3f', '\x00', '\xc0', '\x20', '\x3e', '\x80', '\x7f'};
  const auto bytes = file_bytes(R"({"b":{"dtype":"BF16","shape":[2,2],"data_offsets":[0,8]}})", data);
  const st::File f(bytes, "bf16");
  const Tensor<float> t = f.get<float>("b");
  CHECK(t.shape() == segml::Shape{2, 2});
  CHECK(t.data()[0] == 1.0f);
  CHECK(t.data()[1] == -2.0f);
  CHECK(t.data()[2] == 0.15625f);
  CHECK(std::isinf(t.data()[3]));
}

TEST_CASE("safetensors: byte layout matches the reference writer's test vectors") {
  const Tensor<float> v = Tensor<float>::from({1, 2, 3}, {0, 1, 2, 3, 4, 5});
  SUBCASE("attn.0 [1,2,3]: 64-byte header, no padding") {
    const auto b = st::serialize({{"attn.0", st::make_entry(v)}});
    CHECK(header_length(b) == 64);
    CHECK(header_text(b) == R"({"attn.0":{"dtype":"F32","shape":[1,2,3],"data_offsets":[0,24]}})");
    CHECK(b.size() == 8 + 64 + 24);
    float x5;
    std::memcpy(&x5, b.data() + 8 + 64 + 20, 4);
    CHECK(x5 == 5.0f);
  }
  SUBCASE("attn0 [1,1,2,3]: 65 bytes padded to 72 with 7 spaces") {
    const auto b = st::serialize({{"attn0", st::make_entry(v.reshape({1, 1, 2, 3}))}});
    CHECK(header_length(b) == 72);
    CHECK(header_text(b) == std::string(R"({"attn0":{"dtype":"F32","shape":[1,1,2,3],"data_offsets":[0,24]}})") + "       ");
  }
  SUBCASE("empty dict: {} plus 6 spaces") {
    const auto b = st::serialize({});
    CHECK(header_length(b) == 8);
    CHECK(header_text(b) == "{}      ");
    CHECK(st::File(b, "empty").names().empty());
  }
  SUBCASE("metadata only: 35 bytes padded to 40") {
    const auto b = st::serialize({}, {{"framework", "pt"}});
    CHECK(header_length(b) == 40);
    CHECK(header_text(b) == std::string(R"({"__metadata__":{"framework":"pt"}})") + "     ");
    CHECK(st::File(b, "meta").metadata().at("framework") == "pt");
  }
  SUBCASE("tensors sorted by dtype descending, then name") {
    const auto b = st::serialize({{"b", st::make_entry(v)}, {"a", st::make_entry(v)}, {"h", st::make_entry(v, st::Dtype::F16)}});
    const std::string h = header_text(b);
    CHECK(h.find("\"a\"") < h.find("\"b\""));
    CHECK(h.find("\"b\"") < h.find("\"h\""));
  }
}

TEST_CASE("safetensors: malformed files fail with a precise message") {
  const std::string ok_entry = R"("a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]})";
  SUBCASE("shorter than 8 bytes") { CHECK_BAD(std::vector<char>(5, 0), "'bad.safetensors' is 5 bytes, too short for the 8-byte header length"); }
  SUBCASE("header length above 100,000,000") {
    auto b = file_bytes("{}");
    const uint64_t n = 100'000'001;
    std::memcpy(b.data(), &n, 8);
    CHECK_BAD(b, "declares a header of 100000001 bytes (limit 100000000)");
  }
  SUBCASE("header runs past the end of the file") {
    auto b = file_bytes("{" + ok_entry + "}", zeros(8));
    const uint64_t n = 500;
    std::memcpy(b.data(), &n, 8);
    CHECK_BAD(b, "is truncated: header of 500 bytes but only");
  }
  SUBCASE("invalid JSON") { CHECK_BAD(file_bytes(R"({"a": {"dtype": )"), "has an invalid JSON header"); }
  SUBCASE("header is not an object") { CHECK_BAD(file_bytes("[1, 2, 3]"), "header is not a JSON object"); }
  SUBCASE("duplicate tensor name") {
    CHECK_BAD(file_bytes("{" + ok_entry + "," + ok_entry + "}", zeros(8)), "names tensor 'a' twice");
  }
  SUBCASE("unknown dtype") {
    CHECK_BAD(file_bytes(R"({"a":{"dtype":"F33","shape":[2],"data_offsets":[0,8]}})", zeros(8)),
              "tensor 'a' in 'bad.safetensors' has unsupported dtype 'F33'");
  }
  SUBCASE("shape x dtype does not match the byte range") {
    CHECK_BAD(file_bytes(R"({"a":{"dtype":"F32","shape":[2,3],"data_offsets":[0,20]}})", zeros(20)),
              "has shape [2, 3] and dtype F32 (24 bytes) but its data_offsets span 20 bytes");
  }
  SUBCASE("negative shape entry") {
    CHECK_BAD(file_bytes(R"({"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", zeros(8)),
              "shape entries must be non-negative integers");
  }
  SUBCASE("gap between tensors") {
    CHECK_BAD(file_bytes(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                         R"("b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}})",
                         zeros(12)),
              "tensor 'b' in 'bad.safetensors' starts at byte 8 but the previous tensor ends at 4 (gap or overlap)");
  }
  SUBCASE("overlapping tensors") {
    CHECK_BAD(file_bytes(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                         R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                         zeros(12)),
              "tensor 'b' in 'bad.safetensors' starts at byte 4 but the previous tensor ends at 8 (gap or overlap)");
  }
  SUBCASE("trailing bytes after the data") {
    CHECK_BAD(file_bytes("{" + ok_entry + "}", zeros(12)), "data buffer is 12 bytes but the tensors cover 8 bytes (trailing bytes)");
  }
  SUBCASE("data truncated") {
    CHECK_BAD(file_bytes("{" + ok_entry + "}", zeros(5)), "data buffer is 5 bytes but the tensors cover 8 bytes (file truncated)");
  }
  SUBCASE("metadata value is not a string") {
    CHECK_BAD(file_bytes(R"({"__metadata__":{"epoch":3}})"), "__metadata__ value for 'epoch' is not a string");
  }
  SUBCASE("missing file") {
    CHECK_THROWS_WITH_AS(st::File("/nonexistent/segml/x.safetensors"),
                         doctest::Contains("cannot open '/nonexistent/segml/x.safetensors'"), segml::Error);
  }
}

TEST_CASE("safetensors: get() of a missing name or with a wrong expected shape") {
  const st::File f(st::serialize({{"w", st::make_entry(Tensor<float>::zeros({1, 2, 3}))}}), "m.safetensors");
  CHECK_THROWS_WITH_AS(f.get<float>("zz"), doctest::Contains("'m.safetensors' has no tensor named 'zz'"), segml::Error);
  CHECK_THROWS_WITH_AS(f.get<float>("w", {2, 3}),
                       doctest::Contains("tensor 'w' in 'm.safetensors' has shape [1, 2, 3], expected [2, 3]"), segml::Error);
  CHECK(f.get<float>("w", {1, 2, 3}).numel() == 6);
}

TEST_CASE("safetensors: the atomic writer never leaves a partial file") {
  TempDir dir;
  const auto missing = dir.path / "no_such_folder";
  const std::string path = (missing / "x.safetensors").string();
  CHECK_THROWS_WITH_AS(st::save(path, {{"w", st::make_entry(Tensor<float>::ones({4}))}}),
                       doctest::Contains(("cannot open '" + path).c_str()), segml::Error);
  CHECK_FALSE(std::filesystem::exists(missing));
  CHECK(std::filesystem::is_empty(dir.path));

  // Overwriting an existing file replaces it whole and leaves no temp file behind.
  const std::string good = (dir.path / "g.safetensors").string();
  st::save(good, {{"w", st::make_entry(Tensor<float>::ones({4}))}});
  st::save(good, {{"w", st::make_entry(Tensor<float>::full({2}, 3.0f))}});
  CHECK(st::File(good).get<float>("w").data()[1] == 3.0f);
  int files = 0;
  for ([[maybe_unused]] const auto& e : std::filesystem::directory_iterator(dir.path)) ++files;
  CHECK(files == 1);
}
