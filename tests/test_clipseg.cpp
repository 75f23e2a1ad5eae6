// CLIPSeg (models/clipseg/): the config, the state-dict names, loading and saving, the model's
// forward and the inference engine against the PyTorch reference (tools/clipseg_ref.py), and the
// expand op the model uses. Fixtures: tools/fixtures/clipseg_tiny.py, tools/fixtures/ops_expand.py.
#include <doctest/doctest.h>

#include <segml/autograd/gradcheck.hpp>
#include <segml/models/clipseg/clipseg_inference.hpp>
#include <segml/models/clipseg/pretrained_clipseg.hpp>
#include <segml/models/clipseg/processing_clipseg.hpp>

#include <fstream>
#include <set>

#include "support.hpp"

using namespace segml;

namespace {

// A CLIPSeg small enough for tests: 2 x 32-wide towers, 3 extract layers, the refined head.
CLIPSegConfig tiny_clipseg_config() {
  CLIPSegConfig c = CLIPSegConfig::rd64_refined();
  c.text_config.vocab_size = 100;
  c.text_config.hidden_size = 32;
  c.text_config.intermediate_size = 64;
  c.text_config.num_hidden_layers = 2;
  c.text_config.num_attention_heads = 2;
  c.text_config.max_position_embeddings = 16;
  c.vision_config.hidden_size = 32;
  c.vision_config.intermediate_size = 64;
  c.vision_config.num_hidden_layers = 4;
  c.vision_config.num_attention_heads = 2;
  c.vision_config.image_size = 64;
  c.projection_dim = 24;
  c.reduce_dim = 16;
  c.decoder_num_attention_heads = 2;
  c.decoder_intermediate_size = 32;
  c.extract_layers = {1, 2, 3};
  return c;
}

void write_text(const std::string& path, const std::string& text) {
  std::ofstream(path) << text;
}

std::vector<std::string> keys(CLIPSegForImageSegmentation<float>& model, int64_t* numel = nullptr) {
  std::vector<std::string> out;
  if (numel) *numel = 0;
  nn::Visitor<float> v;
  v.parameter = [&](const std::string& name, Var<float>& p) {
    out.push_back(name);
    if (numel) *numel += p.data().numel();
  };
  v.buffer = [&](const std::string& name, Tensor<float>&) { out.push_back(name); };
  model.visit(v);
  return out;
}

}  // namespace

TEST_CASE("clipseg config: an HF config.json round-trips, nested configs, legacy *_config_dict, unknown fields kept") {
  // The shape of CIDAS/clipseg-rd64-refined's config.json (transformers 4.24): nested configs with
  // PretrainedConfig's fields, eos_token_id 2, and the *_config_dict keys HF folds in.
  const nlohmann::json j = nlohmann::json::parse(R"({
    "architectures": ["CLIPSegForImageSegmentation"], "conditional_layer": 0, "decoder_attention_dropout": 0.0,
    "decoder_hidden_act": "quick_gelu", "decoder_intermediate_size": 2048, "decoder_num_attention_heads": 4,
    "extract_layers": [3, 6, 9], "initializer_factor": 1.0, "logit_scale_init_value": 2.6592, "model_type": "clipseg",
    "projection_dim": 512, "reduce_dim": 64, "torch_dtype": "float32", "transformers_version": "4.24.0.dev0",
    "use_complex_transposed_convolution": true,
    "text_config": {"bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1, "hidden_size": 512, "vocab_size": 49408,
                    "tie_word_embeddings": true, "num_beams": 1},
    "text_config_dict": {"hidden_size": 512, "max_position_embeddings": 77},
    "vision_config": {"patch_size": 16, "hidden_size": 768, "image_size": 224, "chunk_size_feed_forward": 0},
    "vision_config_dict": {"patch_size": 16}
  })");
  const CLIPSegConfig c = CLIPSegConfig::from_json(j, "config.json");
  CHECK(c.vision_config.patch_size == 16);
  CHECK(c.vision_config.num_hidden_layers == 12);  // HF's default, absent from the file
  CHECK(c.text_config.eos_token_id == 2);
  CHECK(c.text_config.bos_token_id == 0);
  CHECK(c.use_complex_transposed_convolution);
  CHECK(c.extract_layers == std::vector<int64_t>{3, 6, 9});
  CHECK(c.extra.at("transformers_version") == "4.24.0.dev0");
  CHECK(c.extra.at("initializer_factor") == 1.0);
  CHECK(c.text_config.extra.at("tie_word_embeddings") == true);
  CHECK(c.vision_config.extra.at("chunk_size_feed_forward") == 0);
  const nlohmann::json out = c.to_json();
  CHECK(!out.contains("text_config_dict"));
  CHECK(out.at("text_config").at("num_beams") == 1);
  CHECK(out.at("vision_config").at("patch_size") == 16);
  CHECK(CLIPSegConfig::from_json(out, "again").to_json() == out);

  // *_config_dict wins over *_config, as in HF.
  nlohmann::json k = j;
  k["vision_config_dict"] = {{"patch_size", 32}};
  CHECK(CLIPSegConfig::from_json(k, "k").vision_config.patch_size == 32);

  // The preset is the same model as the hub file describes.
  const CLIPSegConfig r = CLIPSegConfig::rd64_refined();
  CHECK(r.vision_config.patch_size == c.vision_config.patch_size);
  CHECK(r.use_complex_transposed_convolution == c.use_complex_transposed_convolution);
  CHECK(r.text_config.eos_token_id == c.text_config.eos_token_id);
}

TEST_CASE("clipseg config: bad fields fail with the file, the field and the value") {
  const nlohmann::json base = CLIPSegConfig::rd64_refined().to_json();
  auto fails = [&](const std::function<void(nlohmann::json&)>& edit, const std::string& expected) {
    nlohmann::json j = base;
    edit(j);
    try {
      CLIPSegConfig::from_json(j, "model/config.json");
      FAIL("no error for: " << expected);
    } catch (const Error& e) {
      const std::string what = e.what();
      CHECK_MESSAGE(what.find("model/config.json") != std::string::npos, what);
      CHECK_MESSAGE(what.find(expected) != std::string::npos, what << "\n  expected to contain: " << expected);
    }
  };
  fails([](auto& j) { j["extract_layers"] = {3, 6, 12}; }, "'extract_layers' holds 12");
  fails([](auto& j) { j["extract_layers"] = nlohmann::json::array(); }, "'extract_layers' is empty");
  fails([](auto& j) { j["conditional_layer"] = 3; }, "'conditional_layer' is 3");
  fails([](auto& j) { j["vision_config"]["num_attention_heads"] = 5; }, "'vision_config.hidden_size' (768) is not divisible");
  fails([](auto& j) { j["text_config"]["hidden_size"] = "512"; }, "'text_config.hidden_size' must be an integer");
  fails([](auto& j) { j["vision_config"]["patch_size"] = 6; }, "patch_size 6");
  fails([](auto& j) { j["vision_config"]["hidden_size"] = int64_t(1) << 40; }, "above the bound");
  fails([](auto& j) { j["text_config"]["vocab_size"] = 2000000000; }, "above the bound");
  fails([](auto& j) { j["reduce_dim"] = 0; }, "'reduce_dim' must be >= 1");
  fails([](auto& j) { j["model_type"] = "segformer"; }, "expected \"clipseg\"");
  fails([](auto& j) { j["text_config"]["eos_token_id"] = 50000; }, "'text_config.eos_token_id' is 50000");
  fails([](auto& j) { j["vision_config"]["hidden_act"] = "swoosh"; }, "'vision_config.hidden_act' is unknown");
}

TEST_CASE("clipseg model: HF's state-dict keys in PyTorch's order, and the rd64-refined parameter count") {
  CLIPSegForImageSegmentation<float> tiny(tiny_clipseg_config());
  const std::vector<std::string> k = keys(tiny);
  // 16 tensors per transformer layer; text 2 + 2*16 + 2, vision 3 + 2 + 4*16 + 2, projections and
  // logit_scale 3, decoder film 4 + head 6 + reduces 6 + layers 48.
  CHECK(k.size() == (2 + 2 * 16 + 2) + (3 + 2 + 4 * 16 + 2) + 3 + (4 + 6 + 6 + 3 * 16));
  CHECK(k.front() == "clip.text_model.embeddings.token_embedding.weight");
  const std::set<std::string> s(k.begin(), k.end());
  for (const char* name :
       {"clip.text_model.encoder.layers.1.self_attn.k_proj.weight", "clip.text_model.final_layer_norm.bias",
        "clip.vision_model.embeddings.class_embedding", "clip.vision_model.embeddings.patch_embedding.weight",
        "clip.vision_model.embeddings.position_embedding.weight", "clip.vision_model.pre_layrnorm.weight",
        "clip.vision_model.encoder.layers.3.mlp.fc2.bias", "clip.vision_model.post_layernorm.bias",
        "clip.visual_projection.weight", "clip.text_projection.weight", "clip.logit_scale", "decoder.film_mul.weight",
        "decoder.film_add.bias", "decoder.transposed_convolution.0.weight", "decoder.transposed_convolution.2.bias",
        "decoder.transposed_convolution.4.weight", "decoder.reduces.2.weight", "decoder.layers.0.layer_norm2.weight",
        "decoder.layers.2.self_attn.out_proj.bias"})
    CHECK_MESSAGE(s.count(name), name);
  CHECK(!s.count("clip.visual_projection.bias"));

  // The simple head has one transposed convolution.
  CLIPSegConfig simple = tiny_clipseg_config();
  simple.use_complex_transposed_convolution = false;
  CLIPSegForImageSegmentation<float> plain(simple);
  const std::vector<std::string> kp = keys(plain);
  CHECK(std::count(kp.begin(), kp.end(), "decoder.transposed_convolution.weight") == 1);
  CHECK(kp.size() == k.size() - 4);
}

TEST_CASE("clipseg pretrained: save_pretrained and clipseg_from_pretrained round-trip, bare CLIPSegModel, errors") {
  const CLIPSegConfig cfg = tiny_clipseg_config();
  CLIPSegForImageSegmentation<float> model(cfg, 7);
  test::TempDir dir("clipseg");
  const nlohmann::json processor = {{"do_resize", true}, {"size", 64}, {"resample", 2}};
  save_pretrained(model, dir.file("ckpt"), &processor);
  LoadReport report;
  CLIPSegForImageSegmentation<float> loaded = clipseg_from_pretrained<float>(dir.file("ckpt"), {}, &report);
  CHECK(report.clean());
  std::map<std::string, Tensor<float>> a, b;
  nn::Visitor<float> va, vb;
  va.parameter = [&](const std::string& n, Var<float>& p) { a[n] = p.data(); };
  vb.parameter = [&](const std::string& n, Var<float>& p) { b[n] = p.data(); };
  model.visit(va);
  loaded.visit(vb);
  REQUIRE(a.size() == b.size());
  for (const auto& [n, t] : a) CHECK_MESSAGE(test::max_abs_diff(t, b.at(n)) == 0, n);
  const nlohmann::json written = nlohmann::json::parse(std::ifstream(dir.file("ckpt/config.json")));
  CHECK(written.at("architectures") == nlohmann::json::array({"CLIPSegForImageSegmentation"}));
  CHECK(std::filesystem::exists(dir.file("ckpt/preprocessor_config.json")));

  // A bare CLIPSegModel checkpoint (no "clip." prefix, no decoder) plus the position_ids buffers
  // older transformers saved: the towers load, the decoder is reported missing, position_ids skipped.
  {
    safetensors::File f(dir.file("ckpt/model.safetensors"));
    std::map<std::string, safetensors::Entry> bare;
    for (const auto& n : f.names())
      if (n.rfind("clip.", 0) == 0) bare[n.substr(5)] = safetensors::make_entry(f.get<float>(n));
    bare["text_model.embeddings.position_ids"] =
        safetensors::make_entry(Tensor<int64_t>::zeros({1, cfg.text_config.max_position_embeddings}), safetensors::Dtype::I64);
    std::filesystem::create_directories(dir.file("bare"));
    safetensors::save(dir.file("bare/model.safetensors"), bare, {{"format", "pt"}});
    std::filesystem::copy_file(dir.file("ckpt/config.json"), dir.file("bare/config.json"));
    LoadReport r;
    LoadOptions quiet;
    quiet.verbose = false;
    CLIPSegForImageSegmentation<float> towers = clipseg_from_pretrained<float>(dir.file("bare"), quiet, &r);
    CHECK(r.unexpected.empty());
    CHECK(r.mismatched.empty());
    CHECK(r.missing.size() == 4 + 6 + 6 + 3 * 16);
    for (const auto& m : r.missing) CHECK_MESSAGE(m.rfind("decoder.", 0) == 0, m);
    CHECK(test::max_abs_diff(towers.clip.text_projection.weight.data(), model.clip.text_projection.weight.data()) == 0);
    LoadOptions strict = quiet;
    strict.strict = true;
    CHECK_THROWS_WITH_AS(clipseg_from_pretrained<float>(dir.file("bare"), strict), doctest::Contains("decoder.film_mul.weight"),
                         Error);
  }
  // A SegFormer folder is not a CLIPSeg one; a .bin-only folder gets the conversion command.
  std::filesystem::create_directories(dir.file("segformer"));
  write_text(dir.file("segformer/config.json"), R"({"model_type": "segformer"})");
  std::filesystem::copy_file(dir.file("ckpt/model.safetensors"), dir.file("segformer/model.safetensors"));
  CHECK_THROWS_WITH_AS(clipseg_from_pretrained<float>(dir.file("segformer")), doctest::Contains("expected \"clipseg\""), Error);
  std::filesystem::create_directories(dir.file("bin"));
  write_text(dir.file("bin/pytorch_model.bin"), "not read");
  CHECK_THROWS_WITH_AS(clipseg_from_pretrained<float>(dir.file("bin")), doctest::Contains("tools/convert_weights.py"), Error);
  // NaN weights are refused, naming the tensor.
  model.decoder.film_mul.weight.data().data()[3] = NAN;
  save_pretrained(model, dir.file("nan"));
  CHECK_THROWS_WITH_AS(clipseg_from_pretrained<float>(dir.file("nan")), doctest::Contains("decoder.film_mul.weight: 1 NaN"), Error);
}

TEST_CASE("expand: forward and gradient match PyTorch, double-precision gradcheck") {
  const test::Fixture fx("ops_expand");
  for (const char* name : {"batch", "tokens", "both"}) {
    const std::string p = std::string("expand.") + name + ".";
    const Tensor<double> want = fx.get<double>(p + "y");
    Var<float> x(fx.get(p + "x"), true);
    const Var<float> y = ops::expand(x, want.shape());
    test::compare(p + "y", y.data(), want, 0);
    y.backward(fx.get(p + "dy"));
    test::compare(p + "dx", x.grad(), fx.get<double>(p + "dx"), 1e-5);
  }
  test::check_gradients("expand (1,3,1)->(2,3,4)", [](const std::vector<Var<double>>& v) { return ops::expand(v[0], {2, 3, 4}); },
                        {test::random_tensor<double>({1, 3, 1}, 5)});
  CHECK_THROWS_WITH_AS(ops::expand(Var<float>(Tensor<float>::zeros({2, 3})), {4, 3}), doctest::Contains("dim 0 is neither"), Error);
  CHECK_THROWS_WITH_AS(ops::expand(Var<float>(Tensor<float>::zeros({3})), {2, 3}), doctest::Contains("differ in rank"), Error);
}

namespace {

// The fixture's model (tools/fixtures/clipseg_tiny.py): its config and its weights (weights.<HF key>).
template <class T>
CLIPSegForImageSegmentation<T> fixture_model(const test::Fixture& fx, const char* config_key = "config") {
  CLIPSegForImageSegmentation<T> model(
      CLIPSegConfig::from_json(nlohmann::json::parse(fx.file().metadata().at(config_key)), "clipseg_tiny config"));
  int64_t loaded = 0;
  nn::Visitor<T> v;
  v.parameter = [&](const std::string& name, Var<T>& p) {
    const Tensor<T> w = fx.get<T>("weights." + name);
    REQUIRE_MESSAGE(w.shape() == p.data().shape(), name << ": fixture " << shape_str(w.shape()) << " vs model "
                                                        << shape_str(p.data().shape()));
    p.data().copy_(w);
    ++loaded;
  };
  v.buffer = [](const std::string&, Tensor<T>&) {};
  model.visit(v);
  CHECK(loaded == 462 - (12 - 2) * 16 - (12 - 4) * 16);  // every tensor of the reduced 462-key layout
  return model;
}

struct FixtureCase {
  std::string name;
  int64_t height, width;
};

std::vector<FixtureCase> fixture_cases(const test::Fixture& fx) {
  std::vector<FixtureCase> out;
  for (const auto& c : nlohmann::json::parse(fx.file().metadata().at("cases")))
    out.push_back({c.at("name").get<std::string>(), c.at("height").get<int64_t>(), c.at("width").get<int64_t>()});
  return out;
}

// The rows of x (P, L, D) at the tokens of `mask` (P, L) (padding rows differ by design: see
// modeling_clipseg.hpp), as a (tokens, D) tensor.
template <class T>
Tensor<double> token_rows(const Tensor<T>& x, const Tensor<int64_t>& mask) {
  const int64_t P = x.size(0), L = x.size(1), D = x.size(2);
  std::vector<double> rows;
  const Tensor<T> c = x.contiguous();
  for (int64_t p = 0; p < P; ++p)
    for (int64_t l = 0; l < L; ++l)
      if (mask.data()[p * L + l])
        for (int64_t d = 0; d < D; ++d) rows.push_back(double(c.data()[(p * L + l) * D + d]));
  return Tensor<double>::from({int64_t(rows.size()) / D, D}, rows);
}

std::vector<std::vector<int64_t>> id_rows(const Tensor<int64_t>& ids) {
  std::vector<std::vector<int64_t>> out;
  for (int64_t p = 0; p < ids.size(0); ++p) out.emplace_back(ids.data() + p * ids.size(1), ids.data() + (p + 1) * ids.size(1));
  return out;
}

// The model's forward in T against every stage of the fixture; atol for T's rounding.
template <class T>
void check_model_stages(double atol, double logits_atol) {
  const test::Fixture fx("clipseg_tiny");
  const CLIPSegForImageSegmentation<T> model = fixture_model<T>(fx);
  const Tensor<int64_t> ids = fx.get<int64_t>("text.input_ids"), mask = fx.get<int64_t>("text.attention_mask");
  const int64_t P = ids.size(0);
  NoGradGuard no_grad;
  for (const FixtureCase& c : fixture_cases(fx)) {
    const std::string p = c.name + ".";
    // One image per prompt, as HF runs it.
    const Tensor<T> image = fx.get<T>(p + "pixel_values");
    Tensor<T> pixels = Tensor<T>::empty({P, 3, c.height, c.width});
    for (int64_t b = 0; b < P; ++b) std::copy_n(image.data(), image.numel(), pixels.data() + b * image.numel());
    const auto out = model.forward(Var<T>(pixels), ids);
    const std::string t = std::string(typeid(T) == typeid(float) ? "float " : "double ") + p;
    if (c.name == fixture_cases(fx).front().name) {
      const CLIPSegTextOutput<T> text = model.clip.text_model(ids);
      test::compare(t + "text.last_hidden_state (tokens)", token_rows(text.last_hidden_state.data(), mask),
                    token_rows(fx.get<double>("text.last_hidden_state"), mask), atol);
      test::compare(t + "text.pooled", out.text_pooled.data(), fx.get<double>("text.pooled"), atol);
      test::compare(t + "text.conditional_embeddings", out.conditional_embeddings.data(),
                    fx.get<double>("text.conditional_embeddings"), atol);
    }
    const int64_t gh = c.height / 16, gw = c.width / 16;
    test::compare(t + "vision.position_embeddings",
                  model.clip.vision_model.embeddings.positions(c.height, c.width, gh, gw).data(),
                  fx.get<double>(p + "vision.position_embeddings"), atol);
    for (size_t k = 0; k < out.vision.hidden_states.size(); ++k) {
      const Tensor<T> h = out.vision.hidden_states[k].data().narrow(0, 0, 1);
      test::compare(t + "vision.hidden_states." + std::to_string(k), h, fx.get<double>(p + "vision.hidden_states." + std::to_string(k)),
                    atol);
    }
    for (size_t i = 0; i < out.decoder.hidden_states.size(); ++i)
      test::compare(t + "decoder.layers." + std::to_string(i), out.decoder.hidden_states[i].data(),
                    fx.get<double>(p + "decoder.layers." + std::to_string(i)), atol);
    test::compare(t + "logits", out.logits.data(), fx.get<double>(p + "logits"), logits_atol);
  }
}

}  // namespace

TEST_CASE("clipseg model: every stage matches the PyTorch reference (float32 and float64, square, resized, non-square)") {
  check_model_stages<double>(1e-10, 1e-6);  // the fixture's logits are stored as float32
  check_model_stages<float>(1e-4, 1e-4);
}

TEST_CASE("clipseg model: both EOS pooling rules as HF (legacy eos_token_id 2: argmax of ids, newer: first eos)") {
  const test::Fixture fx("clipseg_tiny");
  for (const char* which : {"text", "text_eos3"}) {
    const CLIPSegForImageSegmentation<double> model =
        fixture_model<double>(fx, std::string(which) == "text" ? "config" : "config_eos3");
    const std::string p = std::string(which) + ".";
    const Tensor<int64_t> ids = fx.get<int64_t>(p + "input_ids"), eos = fx.get<int64_t>(p + "eos_positions");
    for (int64_t b = 0; b < ids.size(0); ++b)
      CHECK(CLIPSegTextTransformer<double>::eos_position(ids.data() + b * ids.size(1), ids.size(1),
                                                         model.config.text_config.eos_token_id) == eos.data()[b]);
    NoGradGuard no_grad;
    Var<double> pooled;
    const Var<double> cond = model.clip.get_text_features(ids, &pooled);
    test::compare(p + "pooled", pooled.data(), fx.get<double>(p + "pooled"), 1e-9);
    test::compare(p + "conditional_embeddings", cond.data(), fx.get<double>(p + "conditional_embeddings"), 1e-9);
  }
}

TEST_CASE("clipseg inference engine: logits match PyTorch on every ISA (square, resized, non-square), text cache") {
  const test::Fixture fx("clipseg_tiny");
  const CLIPSegForImageSegmentation<float> model = fixture_model<float>(fx);
  const std::vector<std::vector<int64_t>> prompts = id_rows(fx.get<int64_t>("text.input_ids"));
  for (Isa which : supported_isas()) {
    set_isa(which);
    CLIPSegInference<float> engine(model);
    for (const FixtureCase& c : fixture_cases(fx)) {
      const Tensor<float> logits = engine.run(fx.get(c.name + ".pixel_values"), prompts);
      test::compare(std::string(isa_name(which)) + " " + c.name + ".logits", logits, fx.get<double>(c.name + ".logits"), 1e-4);
    }
    // The conditional embeddings, from the cache on a second call, in another order.
    const std::vector<std::vector<int64_t>> reordered{prompts[2], prompts[0]};
    const Tensor<float> cond = engine.text_features(reordered);
    const Tensor<double> want = fx.get<double>("text.conditional_embeddings");
    test::compare("text cache row 0", cond.narrow(0, 0, 1), want.narrow(0, 2, 1), 1e-4);
    test::compare("text cache row 1", cond.narrow(0, 1, 1), want.narrow(0, 0, 1), 1e-4);
    // A call whose new prompts overflow the cache (4096 prompts) still gets its cached ones.
    if (which == Isa::scalar) {
      CLIPSegInference<float> full(model);
      std::vector<std::vector<int64_t>> many;
      for (int64_t a = 0; a < 64 && many.size() < 4095; ++a)
        for (int64_t b = 0; b < 64 && many.size() < 4095; ++b) many.push_back({98, a, b, 99});
      const Tensor<float> first = full.text_features(many).narrow(0, 0, 1).clone();
      const Tensor<float> again = full.text_features({many[0], {98, 70, 70, 99}, {98, 71, 71, 99}});
      CHECK(test::max_abs_diff(again.narrow(0, 0, 1), first) == 0);
    }
    // Bad prompts are refused before anything runs, naming the problem.
    CHECK_THROWS_WITH_AS(engine.text_features({{98, 5, 500, 99}}), doctest::Contains("token id 500 at position 2"), Error);
    CHECK_THROWS_WITH_AS(engine.text_features({std::vector<int64_t>(17, 5)}), doctest::Contains("17 tokens exceeds"), Error);
    CHECK_THROWS_WITH_AS(engine.text_features({{}}), doctest::Contains("empty prompt"), Error);
    CHECK_THROWS_WITH_AS(engine.run(Tensor<float>::zeros({1, 3, 8, 8}), prompts), doctest::Contains("smaller than one patch"),
                         Error);
  }
  set_isa(detect_isa());
}

TEST_CASE("clipseg processor: CIDAS/clipseg-rd64-refined's preprocessor_config.json is HF's ViTImageProcessor pipeline") {
  test::TempDir dir("clipseg_processor");
  // The hub file's fields (an old ViTFeatureExtractor config: size as one integer, rescale implied).
  std::ofstream(dir.file("preprocessor_config.json")) << R"({"do_normalize": true, "do_resize": true,
    "feature_extractor_type": "ViTFeatureExtractor", "image_mean": [0.485, 0.456, 0.406],
    "image_std": [0.229, 0.224, 0.225], "processor_class": "CLIPSegProcessor", "resample": 2, "size": 352})";
  const ViTImageProcessor p = clipseg_image_processor(dir.path);
  CHECK(p.height == 352);
  CHECK(p.width == 352);
  CHECK(p.resample == Resample::BILINEAR);
  CHECK(p.do_rescale);
  // An image already 352 x 352 is not resampled (PIL returns a copy): (v / 255 - mean) / std.
  Image img(352, 352, 3);
  for (size_t i = 0; i < img.data.size(); ++i) img.data[i] = static_cast<uint8_t>((i * 7) % 256);
  const Tensor<float> x = p.preprocess(img);
  CHECK(x.shape() == Shape{1, 3, 352, 352});
  const double mean[3] = {0.485, 0.456, 0.406}, stdev[3] = {0.229, 0.224, 0.225};
  for (int64_t c = 0; c < 3; ++c)
    for (int64_t at : {int64_t{0}, int64_t{1000}, int64_t{352 * 352 - 1}}) {
      const double v = img.data[size_t(at * 3 + c)];
      CHECK(std::abs(x.data()[c * 352 * 352 + at] - float((float(v * (1 / 255.0)) - mean[c]) / stdev[c])) < 1e-6);
    }
  // Without a preprocessor_config.json: rd64-refined's settings.
  test::TempDir empty("clipseg_processor_default");
  CHECK(clipseg_image_processor(empty.path).height == 352);
}

TEST_CASE("clipseg post-processing: sigmoid per prompt, a nothing channel at the threshold, bilinear, argmax") {
  // Two prompts on a 2 x 2 grid: prompt 1 strong at (0,0), prompt 2 at (1,1), both weak at (0,1),
  // both exactly at the threshold at (1,0) (ties go to nothing).
  const float t = 0.25f, at = std::log(t / (1 - t));  // sigmoid(at) == t
  const Tensor<float> logits = Tensor<float>::from({2, 2, 2}, {4, -6, at, -3,    // prompt 1
                                                               -4, -6, at, 5});  // prompt 2
  const LabelMap same = post_process_zero_shot(logits, t, 2, 2);
  CHECK(same[0] == 1);
  CHECK(same[1] == 0);
  CHECK(same[2] == 0);
  CHECK(same[3] == 2);
  // Upsampled to 4 x 6: every pixel is a label of the bilinear sigmoids (checked against the definition).
  const LabelMap big = post_process_zero_shot(logits, t, 4, 6);
  const Tensor<float> p1 = zero_shot_probability(logits, 0, 4, 6), p2 = zero_shot_probability(logits, 1, 4, 6);
  for (int64_t i = 0; i < 24; ++i) {
    const float a = p1.data()[i], b = p2.data()[i];
    const int64_t want = (a > t || b > t) ? (b > a ? 2 : 1) : 0;
    CHECK_MESSAGE(big[i] == want, "pixel " << i << ": " << a << " " << b);
  }
  CHECK(p1.data()[0] == doctest::Approx(1 / (1 + std::exp(-4.0))).epsilon(1e-6));
  CHECK_THROWS_WITH_AS(post_process_zero_shot(Tensor<float>::zeros({2, 3}), 0.1, 4, 4), doctest::Contains("(num_prompts, h, w)"),
                       Error);
  CHECK_THROWS_WITH_AS(zero_shot_probability(logits, 2, 4, 4), doctest::Contains("prompt 2 of 2"), Error);
}
