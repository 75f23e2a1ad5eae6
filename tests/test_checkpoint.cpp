// from_pretrained / save_pretrained / load_state_dict (segml/io/checkpoint.hpp) on tiny models in
// temporary folders: bit-exact round trips, HF's key layout (checked against the key set of the
// PyTorch reference in the model_tiny fixture), encoder-only and bare-encoder checkpoints, every
// error path with its message, F16 / BF16 / sharded checkpoints. The last test is opt-in: it runs
// the real nvidia/segformer-b0-finetuned-ade-512-512 weights (see weights/README.md) when present.
#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <string>
#include <vector>

#include <segml/io/checkpoint.hpp>
#include <segml/io/image.hpp>
#include <segml/io/image_processor.hpp>

#include "support.hpp"

using namespace segml;
namespace fs = std::filesystem;

namespace {

// The model_tiny fixture's architecture (tools/fixtures/model_tiny.py).
SegformerConfig tiny_config(int64_t labels = 5) {
  SegformerConfig c = segml::test::tiny_segformer_config();
  c.set_num_labels(labels);
  return c;
}

// A fresh folder under the system temp dir, removed at the end of the test.
using segml::test::TempDir;

// Every parameter and buffer by its HF key.
std::map<std::string, Tensor<float>> tensors_of(SegformerForSemanticSegmentation<float>& model) {
  std::map<std::string, Tensor<float>> out;
  nn::Visitor<float> v;
  v.parameter = [&](const std::string& name, Var<float>& p) { out[name] = p.data().clone(); };
  v.buffer = [&](const std::string& name, Tensor<float>& b) { out[name] = b.clone(); };
  model.visit(v);
  return out;
}

bool bit_equal(const Tensor<float>& a, const Tensor<float>& b) {
  if (a.shape() != b.shape()) return false;
  const Tensor<float> ca = a.contiguous(), cb = b.contiguous();
  return std::memcmp(ca.data(), cb.data(), static_cast<size_t>(ca.numel()) * sizeof(float)) == 0;
}

// A model whose every tensor (running stats and counter included) is distinct and non-trivial.
SegformerForSemanticSegmentation<float> nontrivial_model(const SegformerConfig& config, uint64_t seed) {
  SegformerForSemanticSegmentation<float> model(config, seed);
  uint64_t k = seed * 1000;
  nn::Visitor<float> v;
  v.parameter = [&](const std::string&, Var<float>& p) { p.data().copy_(test::random_tensor<float>(p.shape(), ++k)); };
  v.buffer = [&](const std::string& name, Tensor<float>& b) {
    if (name.find("num_batches_tracked") != std::string::npos) b.fill_(7.0f);
    else b.copy_(test::random_tensor<float>(b.shape(), ++k, 0.5, 2.0));
  };
  model.visit(v);
  return model;
}

void write_text(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
}

std::vector<char> read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::vector<char>(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

void write_bytes(const std::string& path, const std::vector<char>& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

LoadOptions quiet(bool strict = false) {
  LoadOptions o;
  o.strict = strict;
  o.verbose = false;
  return o;
}

// Saves `entries` as the folder's model.safetensors next to `config`'s config.json.
void write_checkpoint(const TempDir& dir, const SegformerConfig& config, const std::map<std::string, safetensors::Entry>& entries) {
  safetensors::save(dir.file("model.safetensors"), entries, {{"format", "pt"}});
  config.save(dir.file("config.json"));
}

// doctest::Contains for a built message.
doctest::Contains contains(const std::string& s) { return doctest::Contains(s.c_str()); }

// The error message of `f`, or "" when it does not throw.
template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST_CASE("checkpoint: save_pretrained then from_pretrained is bit-exact, with config, labels and metadata") {
  TempDir dir("roundtrip");
  SegformerConfig config = tiny_config();
  config.set_labels({"road", "sidewalk", "building", "car", "sky"});
  config.extra["transformers_version"] = "4.40.0";
  SegformerForSemanticSegmentation<float> model = nontrivial_model(config, 3);
  SegformerImageProcessor processor;
  processor.height = processor.width = 256;
  const nlohmann::json pre = processor.to_json();
  save_pretrained(model, dir.file(), &pre);

  std::set<std::string> files;
  for (const auto& e : fs::directory_iterator(dir.path)) files.insert(e.path().filename().string());
  CHECK(files == std::set<std::string>{"config.json", "model.safetensors", "preprocessor_config.json"});  // no temp files

  LoadReport report;
  SegformerForSemanticSegmentation<float> loaded = from_pretrained<float>(dir.file(), quiet(true), &report);
  CHECK(report.clean());
  const auto want = tensors_of(model), got = tensors_of(loaded);
  REQUIRE(want.size() == got.size());
  int exact = 0;
  for (const auto& [name, t] : want) {
    REQUIRE_MESSAGE(got.count(name), name);
    CHECK_MESSAGE(bit_equal(got.at(name), t), name);
    exact += bit_equal(got.at(name), t);
  }
  MESSAGE(exact << " of " << want.size() << " tensors bit-exact after the round trip");
  CHECK(loaded.config.id2label == config.id2label);
  CHECK(loaded.config.label2id == config.label2id);
  CHECK(loaded.config.to_json() == config.to_json());
  CHECK(loaded.config.extra.at("transformers_version") == "4.40.0");

  safetensors::File f(dir.file("model.safetensors"));
  CHECK(f.metadata() == std::map<std::string, std::string>{{"format", "pt"}});
  const auto& counter = f.info("decode_head.batch_norm.num_batches_tracked");
  CHECK(counter.dtype == safetensors::Dtype::I64);
  CHECK(counter.shape.empty());
  CHECK(f.get<int64_t>("decode_head.batch_norm.num_batches_tracked").data()[0] == 7);
  CHECK(f.info("decode_head.classifier.weight").dtype == safetensors::Dtype::F32);

  const SegformerImageProcessor p2 = SegformerImageProcessor::from_json_file(dir.file("preprocessor_config.json"));
  CHECK(p2.height == 256);
  CHECK(p2.to_json() == pre);

  // The same folder through the .safetensors path, and a second save over the first.
  SegformerForSemanticSegmentation<float> again = from_pretrained<float>(dir.file("model.safetensors"), quiet(true));
  CHECK(bit_equal(tensors_of(again).at("decode_head.linear_fuse.weight"), want.at("decode_head.linear_fuse.weight")));
  save_pretrained(loaded, dir.file());
  files.clear();
  for (const auto& e : fs::directory_iterator(dir.path)) files.insert(e.path().filename().string());
  CHECK(files.size() == 3);
}

TEST_CASE("checkpoint: the saved keys, shapes and dtypes are the PyTorch reference's (model_tiny fixture)") {
  // The fixture holds the reference model's state_dict() under its own keys (plus inputs and outputs
  // under other prefixes): the state-dict part must equal what save_pretrained writes.
  test::Fixture fx("model_tiny");
  const SegformerConfig config =
      SegformerConfig::from_json(nlohmann::json::parse(fx.file().metadata().at("config")), "model_tiny fixture");
  std::map<std::string, std::pair<safetensors::Dtype, Shape>> reference;
  for (const auto& k : fx.file().names())
    if (k.rfind("segformer.", 0) == 0 || k.rfind("decode_head.", 0) == 0)
      reference[k] = {fx.file().info(k).dtype, fx.file().info(k).shape};

  TempDir dir("keys");
  SegformerForSemanticSegmentation<float> model(config, 1);
  save_pretrained(model, dir.file());
  safetensors::File saved(dir.file("model.safetensors"));
  std::map<std::string, std::pair<safetensors::Dtype, Shape>> ours;
  for (const auto& k : saved.names()) ours[k] = {saved.info(k).dtype, saved.info(k).shape};
  MESSAGE("reference state dict: " << reference.size() << " tensors, segml: " << ours.size());
  CHECK(reference.size() == ours.size());
  for (const auto& [k, v] : reference) {
    REQUIRE_MESSAGE(ours.count(k), "segml does not write the reference key " << k);
    CHECK_MESSAGE(ours[k] == v, k << ": segml " << shape_str(ours[k].second) << " vs reference " << shape_str(v.second));
  }
  for (const auto& [k, v] : ours) CHECK_MESSAGE(reference.count(k), "segml writes a key the reference lacks: " << k);
  // And the fixture itself is a strict checkpoint for segml.
  const LoadReport r = load_state_dict(model, {test::fixture_path("model_tiny")});
  CHECK(r.missing.empty());
  CHECK(r.mismatched.empty());
}

TEST_CASE("checkpoint: an encoder-only checkpoint (like nvidia/mit-b0) loads the encoder, HF-style report") {
  TempDir dir("mit");
  SegformerConfig image_net = tiny_config();
  std::vector<std::string> classes;
  for (int i = 0; i < 1000; ++i) classes.push_back("imagenet_class_" + std::to_string(i));
  image_net.set_labels(classes);
  image_net.extra["architectures"] = {"SegformerForImageClassification"};
  SegformerForSemanticSegmentation<float> source = nontrivial_model(tiny_config(), 5);
  std::map<std::string, safetensors::Entry> entries;
  for (auto& [name, entry] : state_dict_entries(source))
    if (name.rfind("segformer.", 0) == 0) entries[name] = entry;
  entries["classifier.weight"] = safetensors::make_entry(test::random_tensor<float>({1000, 32}, 9));
  entries["classifier.bias"] = safetensors::make_entry(Tensor<float>::zeros({1000}));
  write_checkpoint(dir, image_net, entries);

  LoadOptions opt = quiet();
  opt.labels = std::vector<std::string>{"background", "road", "car"};
  opt.seed = 11;
  LoadReport report;
  SegformerForSemanticSegmentation<float> model = from_pretrained<float>(dir.file(), opt, &report);
  CHECK(model.config.num_labels == 3);
  CHECK(model.config.id2label.at(2) == "car");
  CHECK(model.config.label2id.at("road") == 1);
  CHECK(model.decode_head.classifier.weight.shape() == Shape{3, 16, 1, 1});

  // Encoder: bit-exact. Report: every decode_head key missing, the image classifier unexpected.
  const auto want = tensors_of(source), got = tensors_of(model);
  std::set<std::string> head;
  for (const auto& [name, t] : got) {
    if (name.rfind("segformer.", 0) == 0) CHECK_MESSAGE(bit_equal(t, want.at(name)), name);
    else head.insert(name);
  }
  CHECK(std::set<std::string>(report.missing.begin(), report.missing.end()) == head);
  CHECK(head.count("decode_head.batch_norm.num_batches_tracked"));
  CHECK(report.unexpected == std::vector<std::string>{"classifier.bias", "classifier.weight"});
  CHECK(report.mismatched.empty());
  MESSAGE(report.str(dir.file()));

  // The head keeps HF's fresh initialisation: Linear / Conv weights ~ N(0, 0.02), biases 0, BN defaults.
  std::vector<float> w;
  for (const char* name : {"decode_head.linear_fuse.weight", "decode_head.linear_c.0.proj.weight",
                           "decode_head.linear_c.3.proj.weight", "decode_head.classifier.weight"})
    for (int64_t i = 0; i < got.at(name).numel(); ++i) w.push_back(got.at(name).data()[i]);
  double mean = 0, sq = 0;
  for (float x : w) mean += x;
  mean /= static_cast<double>(w.size());
  for (float x : w) sq += (x - mean) * (x - mean);
  const double std = std::sqrt(sq / static_cast<double>(w.size()));
  MESSAGE("decode head init over " << w.size() << " weights: mean " << mean << ", std " << std);
  CHECK(std::abs(mean) < 0.003);
  CHECK(std::abs(std - 0.02) < 0.002);
  CHECK(test::max_abs_diff(got.at("decode_head.classifier.bias"), Tensor<float>::zeros({3})) == 0.0);
  CHECK(test::max_abs_diff(got.at("decode_head.batch_norm.weight"), Tensor<float>::ones({16})) == 0.0);
  CHECK(test::max_abs_diff(got.at("decode_head.batch_norm.running_var"), Tensor<float>::ones({16})) == 0.0);

  // Strict mode lists every missing and every unexpected key.
  LoadOptions strict = opt;
  strict.strict = true;
  const std::string msg = error_of([&] { from_pretrained<float>(dir.file(), strict); });
  CHECK(msg.find("from_pretrained (strict)") != std::string::npos);
  for (const auto& k : head) CHECK_MESSAGE(msg.find(k) != std::string::npos, "strict message lacks " << k);
  CHECK(msg.find("classifier.weight") != std::string::npos);
  CHECK(msg.find("classifier.bias") != std::string::npos);
  CHECK(msg.find(std::to_string(head.size()) + " missing keys") != std::string::npos);
  CHECK(msg.find("2 unexpected keys") != std::string::npos);

  // Without labels the config's 1000 ImageNet classes size the head, as HF does.
  SegformerForSemanticSegmentation<float> wide = from_pretrained<float>(dir.file(), quiet());
  CHECK(wide.config.num_labels == 1000);
}

TEST_CASE("checkpoint: a bare SegformerModel checkpoint (encoder.* keys) gets the segformer. prefix") {
  TempDir dir("bare");
  SegformerForSemanticSegmentation<float> source = nontrivial_model(tiny_config(), 6);
  std::map<std::string, safetensors::Entry> entries;
  for (auto& [name, entry] : state_dict_entries(source))
    if (name.rfind("segformer.", 0) == 0) entries[name.substr(10)] = entry;
  REQUIRE(entries.begin()->first.rfind("encoder.", 0) == 0);
  write_checkpoint(dir, tiny_config(), entries);
  LoadReport report;
  SegformerForSemanticSegmentation<float> model = from_pretrained<float>(dir.file(), quiet(), &report);
  CHECK(report.unexpected.empty());
  CHECK(report.mismatched.empty());
  for (const auto& k : report.missing) CHECK_MESSAGE(k.rfind("decode_head.", 0) == 0, k);
  const auto want = tensors_of(source), got = tensors_of(model);
  for (const auto& [name, t] : want)
    if (name.rfind("segformer.", 0) == 0) CHECK_MESSAGE(bit_equal(got.at(name), t), name);
}

TEST_CASE("checkpoint: a wrong-shaped tensor names the key and both shapes") {
  TempDir dir("shape");
  SegformerForSemanticSegmentation<float> source(tiny_config(), 1);
  auto entries = state_dict_entries(source);
  entries["decode_head.classifier.weight"] = safetensors::make_entry(Tensor<float>::zeros({6, 16, 1, 1}));
  write_checkpoint(dir, tiny_config(), entries);
  CHECK_THROWS_WITH_AS(from_pretrained<float>(dir.file(), quiet()),
                       doctest::Contains("decode_head.classifier.weight: checkpoint [6, 16, 1, 1] vs model [5, 16, 1, 1]"),
                       Error);
  CHECK_THROWS_WITH_AS(from_pretrained<float>(dir.file(), quiet()), doctest::Contains("ignore_mismatched_sizes"), Error);

  // ignore_mismatched_sizes: the tensor keeps its fresh initialisation and is reported (HF's behaviour).
  LoadOptions opt = quiet();
  opt.ignore_mismatched_sizes = true;
  opt.seed = 4;
  LoadReport report;
  SegformerForSemanticSegmentation<float> model = from_pretrained<float>(dir.file(), opt, &report);
  REQUIRE(report.mismatched.size() == 1);
  CHECK(report.mismatched[0] == "decode_head.classifier.weight: checkpoint [6, 16, 1, 1] vs model [5, 16, 1, 1]");
  SegformerForSemanticSegmentation<float> fresh(tiny_config(), 4);
  CHECK(bit_equal(model.decode_head.classifier.weight.data(), fresh.decode_head.classifier.weight.data()));
  opt.strict = true;  // strict still refuses the mismatch
  CHECK_THROWS_WITH_AS(from_pretrained<float>(dir.file(), opt), doctest::Contains("1 shape mismatches"), Error);
}

TEST_CASE("checkpoint: missing and extra tensors (strict throws, default reports)") {
  SegformerForSemanticSegmentation<float> source(tiny_config(), 1);
  SUBCASE("missing") {
    TempDir dir("missing");
    auto entries = state_dict_entries(source);
    entries.erase("segformer.encoder.block.1.1.mlp.dwconv.dwconv.weight");
    write_checkpoint(dir, tiny_config(), entries);
    CHECK_THROWS_WITH_AS(from_pretrained<float>(dir.file(), quiet(true)),
                         contains("1 missing keys, newly initialised (" + dir.file() +
                                           "):\n  segformer.encoder.block.1.1.mlp.dwconv.dwconv.weight"),
                         Error);
    LoadReport report;
    from_pretrained<float>(dir.file(), quiet(), &report);
    CHECK(report.missing == std::vector<std::string>{"segformer.encoder.block.1.1.mlp.dwconv.dwconv.weight"});
  }
  SUBCASE("num_batches_tracked alone may be absent, even in strict mode") {
    TempDir dir("counter");
    auto entries = state_dict_entries(source);
    entries.erase("decode_head.batch_norm.num_batches_tracked");
    write_checkpoint(dir, tiny_config(), entries);
    LoadReport report;
    from_pretrained<float>(dir.file(), quiet(true), &report);
    CHECK(report.clean());
  }
  SUBCASE("extra") {
    TempDir dir("extra");
    auto entries = state_dict_entries(source);
    entries["decode_head.conv_seg.weight"] = safetensors::make_entry(Tensor<float>::zeros({5, 16, 1, 1}));
    write_checkpoint(dir, tiny_config(), entries);
    CHECK_THROWS_WITH_AS(from_pretrained<float>(dir.file(), quiet(true)),
                         contains("1 unexpected keys, not used (" + dir.file() + "):\n  decode_head.conv_seg.weight"),
                         Error);
    LoadReport report;
    from_pretrained<float>(dir.file(), quiet(), &report);
    CHECK(report.unexpected == std::vector<std::string>{"decode_head.conv_seg.weight"});
    CHECK(report.missing.empty());
  }
}

TEST_CASE("checkpoint: damaged files and configs fail with precise messages") {
  TempDir dir("damaged");
  SegformerForSemanticSegmentation<float> source(tiny_config(), 1);
  save_pretrained(source, dir.file());
  const std::vector<char> good = read_bytes(dir.file("model.safetensors"));
  const std::string config_text(read_bytes(dir.file("config.json")).data(), read_bytes(dir.file("config.json")).size());

  SUBCASE("truncated model.safetensors") {
    write_bytes(dir.file("model.safetensors"), std::vector<char>(good.begin(), good.end() - 100));
    CHECK_THROWS_WITH_AS(from_pretrained<float>(dir.file(), quiet()), doctest::Contains("file truncated"), Error);
    write_bytes(dir.file("model.safetensors"), std::vector<char>(good.begin(), good.begin() + 5));
    CHECK_THROWS_WITH_AS(from_pretrained<float>(dir.file(), quiet()), doctest::Contains("too short"), Error);
  }
  SUBCASE("corrupt JSON header") {
    std::vector<char> bad = good;
    bad[8] = '[';
    bad[9] = '{';
    write_bytes(dir.file("model.safetensors"), bad);
    CHECK_THROWS_WITH_AS(from_pretrained<float>(dir.file(), quiet()), doctest::Contains("invalid JSON header"), Error);
  }
  SUBCASE("config.json: invalid JSON") {
    write_text(dir.file("config.json"), config_text.substr(0, config_text.size() / 2));
    CHECK_THROWS_WITH_AS(from_pretrained<float>(dir.file(), quiet()),
                         doctest::Contains("config.json': invalid JSON"), Error);
  }
  SUBCASE("config.json: wrong field type") {
    nlohmann::json j = nlohmann::json::parse(config_text);
    j["depths"] = "1,2,1,1";
    write_text(dir.file("config.json"), j.dump());
    CHECK_THROWS_WITH_AS(from_pretrained<float>(dir.file(), quiet()),
                         doctest::Contains("field 'depths' must be a list of integers"), Error);
    j = nlohmann::json::parse(config_text);
    j["hidden_sizes"] = {8, 16, 24};
    write_text(dir.file("config.json"), j.dump());
    CHECK_THROWS_WITH_AS(from_pretrained<float>(dir.file(), quiet()),
                         doctest::Contains("field 'hidden_sizes' has 3 entries but num_encoder_blocks is 4"), Error);
  }
  SUBCASE("missing config.json") {
    fs::remove(dir.path / "config.json");
    CHECK_THROWS_WITH_AS(from_pretrained<float>(dir.file(), quiet()),
                         doctest::Contains("config.json' is missing (a checkpoint needs its config.json)"), Error);
  }
  SUBCASE("no weights, or PyTorch weights only") {
    fs::remove(dir.path / "model.safetensors");
    CHECK_THROWS_WITH_AS(from_pretrained<float>(dir.file(), quiet()),
                         doctest::Contains("has neither model.safetensors nor model.safetensors.index.json"), Error);
    write_text(dir.file("pytorch_model.bin"), "not really");
    CHECK_THROWS_WITH_AS(from_pretrained<float>(dir.file(), quiet()), doctest::Contains("tools/convert_weights.py"), Error);
    CHECK_THROWS_WITH_AS(from_pretrained<float>(dir.file("nowhere"), quiet()), doctest::Contains("does not exist"), Error);
  }
  SUBCASE("a dtype that cannot be a weight names the tensor") {
    auto entries = state_dict_entries(source);
    for (auto dtype : {safetensors::Dtype::U8, safetensors::Dtype::BOOL, safetensors::Dtype::I64}) {
      safetensors::Entry& e = entries["segformer.encoder.layer_norm.2.weight"];
      e.dtype = dtype;
      e.bytes.assign(static_cast<size_t>(24) * safetensors::dtype_size(dtype), 1);
      write_checkpoint(dir, tiny_config(), entries);
      CHECK_THROWS_WITH_AS(from_pretrained<float>(dir.file(), quiet()),
                           contains("tensor 'segformer.encoder.layer_norm.2.weight' in '" + dir.file("model.safetensors") +
                                             "' has dtype " + safetensors::dtype_name(dtype) +
                                             ", which cannot hold a float weight"),
                           Error);
    }
  }
}

TEST_CASE("checkpoint: F16 and BF16 checkpoints load, converted to float") {
  TempDir dir("half");
  SegformerForSemanticSegmentation<float> source = nontrivial_model(tiny_config(), 8);
  const auto want = tensors_of(source);
  for (auto dtype : {safetensors::Dtype::F16, safetensors::Dtype::BF16}) {
    const std::string dtype_name = safetensors::dtype_name(dtype);
    CAPTURE(dtype_name);
    std::map<std::string, safetensors::Entry> entries;
    for (const auto& [name, t] : want) {
      if (name.find("num_batches_tracked") != std::string::npos) {
        entries[name] = safetensors::make_entry(t, safetensors::Dtype::I64);
      } else if (dtype == safetensors::Dtype::F16) {
        entries[name] = safetensors::make_entry(t, dtype);
      } else {  // BF16: the upper half of the float (truncation), as torch's bfloat16 storage of these values
        safetensors::Entry e;
        e.dtype = dtype;
        e.shape = t.shape();
        for (int64_t i = 0; i < t.numel(); ++i) {
          uint32_t bits;
          std::memcpy(&bits, t.data() + i, 4);
          const uint16_t hi = static_cast<uint16_t>(bits >> 16);
          e.bytes.push_back(static_cast<char>(hi & 0xff));
          e.bytes.push_back(static_cast<char>(hi >> 8));
        }
        entries[name] = e;
      }
    }
    write_checkpoint(dir, tiny_config(), entries);
    LoadReport report;
    SegformerForSemanticSegmentation<float> model = from_pretrained<float>(dir.file(), quiet(true), &report);
    CHECK(report.clean());
    const auto got = tensors_of(model);
    double worst_rel = 0;
    int64_t exact = 0, total = 0;
    for (const auto& [name, t] : want) {
      for (int64_t i = 0; i < t.numel(); ++i) {
        const float x = t.data()[i];
        uint32_t bits;
        std::memcpy(&bits, &x, 4);
        const float expected = dtype == safetensors::Dtype::F16 ? safetensors::half_to_float(safetensors::float_to_half(x))
                                                                : safetensors::bf16_to_float(static_cast<uint16_t>(bits >> 16));
        exact += got.at(name).data()[i] == expected;
        ++total;
        worst_rel = std::max(worst_rel, std::abs(double(got.at(name).data()[i]) - x) / std::max(std::abs(double(x)), 1e-3));
      }
    }
    MESSAGE(dtype_name << ": " << exact << " of " << total << " values are the exact conversion; max rel diff to float32 "
                       << worst_rel);
    CHECK(exact == total);
    CHECK(worst_rel <= std::ldexp(1.0, dtype == safetensors::Dtype::F16 ? -11 : -7));  // half an ulp / a whole ulp
  }
}

TEST_CASE("checkpoint: a sharded checkpoint (model.safetensors.index.json) loads across shards") {
  TempDir dir("sharded");
  SegformerForSemanticSegmentation<float> source = nontrivial_model(tiny_config(), 9);
  std::map<std::string, safetensors::Entry> shard[2];
  nlohmann::json index = {{"metadata", {{"total_size", 0}}}, {"weight_map", nlohmann::json::object()}};
  const char* names[2] = {"model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"};
  for (auto& [name, e] : state_dict_entries(source)) {
    const int s = name.rfind("decode_head.", 0) == 0 ? 1 : 0;
    shard[s][name] = e;
    index["weight_map"][name] = names[s];
  }
  for (int s = 0; s < 2; ++s) safetensors::save(dir.file(names[s]), shard[s], {{"format", "pt"}});
  write_text(dir.file("model.safetensors.index.json"), index.dump(2));
  tiny_config().save(dir.file("config.json"));

  LoadReport report;
  SegformerForSemanticSegmentation<float> model = from_pretrained<float>(dir.file(), quiet(true), &report);
  CHECK(report.clean());
  const auto want = tensors_of(source), got = tensors_of(model);
  for (const auto& [name, t] : want) CHECK_MESSAGE(bit_equal(got.at(name), t), name);

  fs::remove(dir.path / names[1]);
  CHECK_THROWS_WITH_AS(from_pretrained<float>(dir.file(), quiet()),
                       contains(std::string("cannot open '") + dir.file(names[1])), Error);
  index["weight_map"]["decode_head.classifier.bias"] = 3;
  write_text(dir.file("model.safetensors.index.json"), index.dump(2));
  CHECK_THROWS_WITH_AS(from_pretrained<float>(dir.file(), quiet()),
                       doctest::Contains("maps tensor 'decode_head.classifier.bias' to 3"), Error);
  write_text(dir.file("model.safetensors.index.json"), "{\"weight_map\": ");
  CHECK_THROWS_WITH_AS(from_pretrained<float>(dir.file(), quiet()), doctest::Contains("is not valid JSON"), Error);
}

TEST_CASE("checkpoint: an NVlabs checkpoint converted by tools/convert_weights.py gives the original logits") {
  // tools/fixtures/convert.py: a tiny model in the NVlabs layout (fused kv, linear_fuse.conv/bn,
  // linear_pred), evaluated by a forward that follows the NVlabs code, then converted.
  test::Fixture fx("convert");
  const SegformerConfig config =
      SegformerConfig::from_json(nlohmann::json::parse(fx.file().metadata().at("config")), "convert fixture");
  SegformerForSemanticSegmentation<float> model(config);
  const LoadReport r = load_state_dict(model, {test::fixture_path("convert")});
  CHECK(r.missing.empty());
  CHECK(r.mismatched.empty());
  CHECK(r.unexpected == std::vector<std::string>{"nvlabs.logits", "pixel_values"});  // the fixture's own data
  model.eval();
  NoGradGuard no_grad;
  const Tensor<float> logits = model.forward(Var<float>(fx.get("pixel_values"))).logits.data();
  test::compare("logits of the converted NVlabs checkpoint", logits, fx.get("nvlabs.logits"), 1e-4);
}

// Opt-in: the released ADE20K b0 on COCO's "two cats" (val2017 000000039769) against the logits
// slice of transformers' test_modeling_segformer.py::test_inference_image_segmentation_ade.
TEST_CASE("checkpoint: real weights nvidia/segformer-b0-finetuned-ade-512-512 match transformers' test slice") {
  const fs::path weights = std::getenv("SEGML_WEIGHTS_DIR") ? fs::path(std::getenv("SEGML_WEIGHTS_DIR"))
                                                             : (fs::path(SEGML_FIXTURE_DIR) / ".." / ".." / "weights").lexically_normal();
  const fs::path model_dir = weights / "segformer-b0-finetuned-ade-512-512";
  // transformers' test reads the PNG of the image (PIL-decoded JPEG); stb's JPEG decoder differs from
  // libjpeg-turbo by a few levels, so the JPEG gets a looser tolerance.
  const fs::path png = weights / "cats.png", jpg = weights / "cats.jpg";
  const fs::path image_path = fs::exists(png) ? png : jpg;
  if (!fs::exists(model_dir / "model.safetensors") || !fs::exists(image_path)) {
    MESSAGE("skipped: needs " << model_dir.string() << "/ and " << jpg.string() << " (or cats.png); see weights/README.md");
    return;
  }
  const double atol = image_path == png ? 1e-4 : 5e-2;
  SegformerForSemanticSegmentation<float> model = from_pretrained<float>(model_dir.string(), quiet(true));
  const SegformerImageProcessor processor =
      fs::exists(model_dir / "preprocessor_config.json")
          ? SegformerImageProcessor::from_json_file((model_dir / "preprocessor_config.json").string())
          : SegformerImageProcessor();
  const Tensor<float> pixels = processor.preprocess(load_image(image_path.string()));
  model.eval();
  NoGradGuard no_grad;
  const Tensor<float> logits = model.forward(Var<float>(pixels)).logits.data().contiguous();
  REQUIRE(logits.shape() == Shape{1, 150, 128, 128});
  const float expected[3][3][3] = {{{-4.6310f, -5.5232f, -6.2356f}, {-5.1921f, -6.1444f, -6.5996f}, {-5.4424f, -6.2790f, -6.7574f}},
                                   {{-12.1391f, -13.3122f, -13.9554f}, {-12.8732f, -13.9352f, -14.3563f}, {-12.9438f, -13.8226f, -14.2513f}},
                                   {{-12.5134f, -13.4686f, -14.4915f}, {-12.8669f, -14.4343f, -14.7758f}, {-13.2523f, -14.5819f, -15.0694f}}};
  Tensor<float> got = Tensor<float>::empty({3, 3, 3}), want = Tensor<float>::empty({3, 3, 3});
  for (int c = 0; c < 3; ++c)
    for (int y = 0; y < 3; ++y)
      for (int x = 0; x < 3; ++x) {
        got.data()[(c * 3 + y) * 3 + x] = logits.data()[(c * 128 + y) * 128 + x];
        want.data()[(c * 3 + y) * 3 + x] = expected[c][y][x];
      }
  test::compare("logits[0, :3, :3, :3] (" + image_path.filename().string() + ")", got, want, atol);
}

TEST_CASE("checkpoint: a single NaN weight is refused by name, allow_non_finite loads it with a warning") {
  TempDir dir("non_finite");
  SegformerForSemanticSegmentation<float> source = nontrivial_model(tiny_config(), 4);
  save_pretrained(source, dir.file());
  CHECK(find_non_finite(source).empty());
  CHECK_NOTHROW(from_pretrained<float>(dir.file(), quiet()));

  auto entries = state_dict_entries(source);
  auto poison = [&](const std::string& name, size_t index, float value) {
    safetensors::Entry& e = entries.at(name);
    std::memcpy(e.bytes.data() + index * sizeof(float), &value, sizeof(float));
  };
  poison("decode_head.classifier.weight", 3, NAN);
  write_checkpoint(dir, source.config, entries);
  const int64_t n = source.decode_head.classifier.weight.data().numel();
  const std::string err = error_of([&] { from_pretrained<float>(dir.file(), quiet()); });
  CHECK_MESSAGE(err.find("is refused: 1 tensor holds NaN or Inf values:\n  decode_head.classifier.weight: 1 NaN, 0 Inf (of " +
                         std::to_string(n) + " values)") != std::string::npos,
                err);
  CHECK(err.find("--allow-non-finite") != std::string::npos);

  // Several tensors, NaN and Inf: every one is listed; a running statistic (a buffer) counts too.
  poison("segformer.encoder.block.0.0.attention.self.query.weight", 0, INFINITY);
  poison("segformer.encoder.block.0.0.attention.self.query.weight", 1, -INFINITY);
  poison("decode_head.batch_norm.running_var", 0, NAN);
  write_checkpoint(dir, source.config, entries);
  const std::string err3 = error_of([&] { from_pretrained<float>(dir.file(), quiet()); });
  CHECK(err3.find("3 tensors hold NaN or Inf values") != std::string::npos);
  CHECK(err3.find("segformer.encoder.block.0.0.attention.self.query.weight: 0 NaN, 2 Inf") != std::string::npos);
  CHECK(err3.find("decode_head.batch_norm.running_var: 1 NaN, 0 Inf") != std::string::npos);

  // The opt-out loads the values as stored, for inspection.
  LoadOptions inspect = quiet();
  inspect.allow_non_finite = true;
  SegformerForSemanticSegmentation<float> loaded = from_pretrained<float>(dir.file(), inspect);
  CHECK(std::isnan(loaded.decode_head.classifier.weight.data().data()[3]));
  const std::vector<NonFiniteTensor> bad = find_non_finite(loaded);
  REQUIRE(bad.size() == 3);
  CHECK(bad[0].name == "segformer.encoder.block.0.0.attention.self.query.weight");
  CHECK(bad[0].inf == 2);
}
