// segml/models/clipseg/configuration_clipseg.hpp: CLIPSegConfig, the HF `config.json` of a CLIPSeg model.
//
//   CLIPSegConfig c = CLIPSegConfig::from_json_file("clipseg-rd64-refined/config.json");
//   CLIPSegConfig r = CLIPSegConfig::rd64_refined();   // CIDAS/clipseg-rd64-refined's sizes
//
// Guarantees:
//  - Field names and defaults are HF's CLIPSegConfig, CLIPSegTextConfig and CLIPSegVisionConfig
//    (configuration_clipseg.py): the nested `text_config` / `vision_config` objects, and the older
//    `text_config_dict` / `vision_config_dict`, whose values win over `text_config` / `vision_config`
//    as in HF (they are not written back, as HF does not).
//  - from_json()/to_json() round-trip: every field segml does not model, at the top level and inside
//    each nested config, is kept in `extra` and written back unchanged.
//  - validate() (run by from_json and save) names the source file and the field for every
//    inconsistency: hidden sizes not divisible by the head count, extract_layers outside the vision
//    tower, conditional_layer outside the decoder, a complex transposed convolution with a patch
//    size under 4 or an odd reduce_dim, unknown activations, wrong JSON types, non-positive sizes.
//  - Every size is bounded (CLIPSegConfig::Bounds), and so is the parameter count the fields
//    describe together: a damaged config fails at once, before anything is allocated.
//  - save() is atomic (temp file + rename).
// Notes, as in HF: the decoder's layers use ReLU whatever decoder_hidden_act says (HF overrides it);
// decoder_hidden_act and decoder_attention_dropout are stored and written back only.
#pragma once

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdint>
#include <fstream>
#include <string>
#include <vector>

#include "segml/core/error.hpp"
#include "segml/io/safetensors.hpp"
#include "segml/models/config.hpp"
#include "segml/models/json_fields.hpp"

namespace segml {

// The CLIP text transformer (HF CLIPSegTextConfig defaults: CLIP ViT-B/16's text tower).
struct CLIPSegTextConfig {
  int64_t vocab_size = 49408;
  int64_t hidden_size = 512;
  int64_t intermediate_size = 2048;
  int64_t num_hidden_layers = 12;
  int64_t num_attention_heads = 8;
  int64_t max_position_embeddings = 77;
  std::string hidden_act = "quick_gelu";
  double layer_norm_eps = 1e-5;
  double attention_dropout = 0.0;
  double initializer_range = 0.02;
  double initializer_factor = 1.0;
  int64_t pad_token_id = 1;
  int64_t bos_token_id = 49406;
  // Pooling reads the text tower at the EOS position. eos_token_id == 2 (configs written before
  // transformers 4.31, CIDAS/clipseg-rd64-refined's among them) selects HF's legacy rule: the
  // position of the largest id. Otherwise: the first position holding eos_token_id.
  int64_t eos_token_id = 49407;
  nlohmann::json extra = nlohmann::json::object();
};

// The CLIP vision transformer (HF CLIPSegVisionConfig defaults; the released checkpoints use patch 16).
struct CLIPSegVisionConfig {
  int64_t hidden_size = 768;
  int64_t intermediate_size = 3072;
  int64_t num_hidden_layers = 12;
  int64_t num_attention_heads = 12;
  int64_t num_channels = 3;
  int64_t image_size = 224;
  int64_t patch_size = 32;
  std::string hidden_act = "quick_gelu";
  double layer_norm_eps = 1e-5;
  double attention_dropout = 0.0;
  double initializer_range = 0.02;
  double initializer_factor = 1.0;
  nlohmann::json extra = nlohmann::json::object();

  int64_t grid() const { return image_size / patch_size; }  // the stored position grid is grid() x grid()
};

struct CLIPSegConfig {
  CLIPSegTextConfig text_config;
  CLIPSegVisionConfig vision_config;
  int64_t projection_dim = 512;
  double logit_scale_init_value = 2.6592;
  std::vector<int64_t> extract_layers{3, 6, 9};
  int64_t reduce_dim = 64;
  int64_t decoder_num_attention_heads = 4;
  double decoder_attention_dropout = 0.0;
  std::string decoder_hidden_act = "quick_gelu";  // stored only: HF's decoder layers use ReLU
  int64_t decoder_intermediate_size = 2048;
  int64_t conditional_layer = 0;
  bool use_complex_transposed_convolution = false;
  nlohmann::json extra = nlohmann::json::object();

  // CIDAS/clipseg-rd64-refined: ViT-B/16 vision tower, reduce_dim 64, the refined (complex)
  // transposed-convolution head; text eos_token_id 2 as in its config.json (the legacy pooling rule).
  static CLIPSegConfig rd64_refined() {
    CLIPSegConfig c;
    c.vision_config.patch_size = 16;
    c.use_complex_transposed_convolution = true;
    c.text_config.bos_token_id = 0;
    c.text_config.eos_token_id = 2;
    return c;
  }

  // ---- JSON ------------------------------------------------------------------------------
  static CLIPSegConfig from_json(const nlohmann::json& j, const std::string& source = "<json>") {
    if (!j.is_object()) fail("config '", source, "': top level must be a JSON object");
    if (j.contains("model_type") && j["model_type"] != "clipseg")
      fail("config '", source, "': model_type is ", j["model_type"].dump(), ", expected \"clipseg\"");
    CLIPSegConfig c;
    detail::JsonFields r{j, source};
    r.integer("projection_dim", c.projection_dim);
    r.number("logit_scale_init_value", c.logit_scale_init_value);
    r.int_list("extract_layers", c.extract_layers);
    r.integer("reduce_dim", c.reduce_dim);
    r.integer("decoder_num_attention_heads", c.decoder_num_attention_heads);
    r.number("decoder_attention_dropout", c.decoder_attention_dropout);
    r.string("decoder_hidden_act", c.decoder_hidden_act);
    r.integer("decoder_intermediate_size", c.decoder_intermediate_size);
    r.integer("conditional_layer", c.conditional_layer);
    r.boolean("use_complex_transposed_convolution", c.use_complex_transposed_convolution);
    c.text_config = read_text(merged(j, "text_config", "text_config_dict", source), source);
    c.vision_config = read_vision(merged(j, "vision_config", "vision_config_dict", source), source);
    for (auto it = j.begin(); it != j.end(); ++it)
      if (!is_known_key(it.key())) c.extra[it.key()] = it.value();
    c.validate(source);
    return c;
  }

  static CLIPSegConfig from_json_file(const std::string& path) { return from_json(detail::read_config_json(path), path); }

  nlohmann::json to_json() const {
    nlohmann::json j = extra;
    if (!j.contains("architectures")) j["architectures"] = {"CLIPSegForImageSegmentation"};
    j["model_type"] = "clipseg";
    if (!j.contains("torch_dtype")) j["torch_dtype"] = "float32";
    j["projection_dim"] = projection_dim;
    j["logit_scale_init_value"] = logit_scale_init_value;
    j["extract_layers"] = extract_layers;
    j["reduce_dim"] = reduce_dim;
    j["decoder_num_attention_heads"] = decoder_num_attention_heads;
    j["decoder_attention_dropout"] = decoder_attention_dropout;
    j["decoder_hidden_act"] = decoder_hidden_act;
    j["decoder_intermediate_size"] = decoder_intermediate_size;
    j["conditional_layer"] = conditional_layer;
    j["use_complex_transposed_convolution"] = use_complex_transposed_convolution;

    const CLIPSegTextConfig& t = text_config;
    nlohmann::json tj = t.extra;
    tj["model_type"] = "clipseg_text_model";
    tj["vocab_size"] = t.vocab_size;
    tj["hidden_size"] = t.hidden_size;
    tj["intermediate_size"] = t.intermediate_size;
    tj["num_hidden_layers"] = t.num_hidden_layers;
    tj["num_attention_heads"] = t.num_attention_heads;
    tj["max_position_embeddings"] = t.max_position_embeddings;
    tj["hidden_act"] = t.hidden_act;
    tj["layer_norm_eps"] = t.layer_norm_eps;
    tj["attention_dropout"] = t.attention_dropout;
    tj["initializer_range"] = t.initializer_range;
    tj["initializer_factor"] = t.initializer_factor;
    tj["pad_token_id"] = t.pad_token_id;
    tj["bos_token_id"] = t.bos_token_id;
    tj["eos_token_id"] = t.eos_token_id;
    j["text_config"] = tj;

    const CLIPSegVisionConfig& v = vision_config;
    nlohmann::json vj = v.extra;
    vj["model_type"] = "clipseg_vision_model";
    vj["hidden_size"] = v.hidden_size;
    vj["intermediate_size"] = v.intermediate_size;
    vj["num_hidden_layers"] = v.num_hidden_layers;
    vj["num_attention_heads"] = v.num_attention_heads;
    vj["num_channels"] = v.num_channels;
    vj["image_size"] = v.image_size;
    vj["patch_size"] = v.patch_size;
    vj["hidden_act"] = v.hidden_act;
    vj["layer_norm_eps"] = v.layer_norm_eps;
    vj["attention_dropout"] = v.attention_dropout;
    vj["initializer_range"] = v.initializer_range;
    vj["initializer_factor"] = v.initializer_factor;
    j["vision_config"] = vj;
    return j;
  }

  void save(const std::string& path) const {
    validate(path);
    const std::string text = to_json().dump(2) + "\n";
    safetensors::write_file_atomic(path, std::vector<char>(text.begin(), text.end()));
  }

  // The largest value each size may take: one to two orders of magnitude above ViT-L/14 CLIP
  // (hidden 1024, 24 layers, 16 heads, MLP 4096, vocab 49408), refusing only what no real model uses.
  struct Bounds {
    static constexpr int64_t hidden_size = 16384;
    static constexpr int64_t intermediate_size = 65536;
    static constexpr int64_t num_hidden_layers = 256;
    static constexpr int64_t num_attention_heads = 1024;
    static constexpr int64_t vocab_size = int64_t{1} << 22;
    static constexpr int64_t max_position_embeddings = 65536;
    static constexpr int64_t num_channels = 1024;
    static constexpr int64_t image_size = 16384;
    static constexpr int64_t patch_size = 1024;
    static constexpr int64_t extract_layers = 256;
    static constexpr double parameters = 2e9;  // 8 GB of float32; rd64-refined has 150.7 M
  };

  // Weights the fields describe together (matrices and embeddings; a lower bound), in double.
  double parameter_estimate() const {
    const CLIPSegTextConfig& t = text_config;
    const CLIPSegVisionConfig& v = vision_config;
    auto tower = [](double d, double ff, double layers) { return layers * (4 * d * d + 2 * d * ff); };
    const double grid = v.patch_size > 0 ? double(v.image_size / v.patch_size) : 0;
    double n = double(t.vocab_size + t.max_position_embeddings) * double(t.hidden_size);
    n += tower(double(t.hidden_size), double(t.intermediate_size), double(t.num_hidden_layers));
    n += double(v.num_channels) * double(v.patch_size) * double(v.patch_size) * double(v.hidden_size);
    n += (grid * grid + 1) * double(v.hidden_size);
    n += tower(double(v.hidden_size), double(v.intermediate_size), double(v.num_hidden_layers));
    n += double(projection_dim) * double(t.hidden_size + v.hidden_size) + 2 * double(projection_dim) * double(reduce_dim);
    const double depth = double(extract_layers.size());
    n += depth * (double(v.hidden_size) * double(reduce_dim) + tower(double(reduce_dim), double(decoder_intermediate_size), 1));
    return n + 9 * double(reduce_dim) * double(reduce_dim) + double(reduce_dim) * double(v.patch_size) * double(v.patch_size);
  }

  // Throws segml::Error naming `source` and the offending field.
  void validate(const std::string& source = "<config>") const {
    auto bad = [&](const std::string& field, const auto&... what) { fail("config '", source, "': field '", field, "' ", what...); };
    auto size = [&](const std::string& field, int64_t value, int64_t bound) {
      if (value < 1) bad(field, "must be >= 1, got ", value);
      if (value > bound)
        bad(field, "is ", value, ", above the bound of ", bound, " (no CLIPSeg is that large; is the file damaged?)");
    };
    auto heads = [&](const std::string& prefix, int64_t hidden, int64_t h) {
      if (hidden % h != 0)
        bad(prefix + "hidden_size", "(", hidden, ") is not divisible by ", prefix, "num_attention_heads (", h, ")");
    };
    auto probability = [&](const std::string& field, double p) {
      if (!(p >= 0.0 && p < 1.0)) bad(field, "must be in [0, 1), got ", p);
    };
    auto act = [&](const std::string& field, const std::string& name) {
      const auto& acts = SegformerConfig::known_activations();
      if (std::find(acts.begin(), acts.end(), name) == acts.end()) bad(field, "is unknown: '", name, "'");
    };
    const CLIPSegTextConfig& t = text_config;
    const CLIPSegVisionConfig& v = vision_config;
    size("text_config.vocab_size", t.vocab_size, Bounds::vocab_size);
    size("text_config.hidden_size", t.hidden_size, Bounds::hidden_size);
    size("text_config.intermediate_size", t.intermediate_size, Bounds::intermediate_size);
    size("text_config.num_hidden_layers", t.num_hidden_layers, Bounds::num_hidden_layers);
    size("text_config.num_attention_heads", t.num_attention_heads, Bounds::num_attention_heads);
    size("text_config.max_position_embeddings", t.max_position_embeddings, Bounds::max_position_embeddings);
    heads("text_config.", t.hidden_size, t.num_attention_heads);
    act("text_config.hidden_act", t.hidden_act);
    probability("text_config.attention_dropout", t.attention_dropout);
    if (!(t.layer_norm_eps > 0)) bad("text_config.layer_norm_eps", "must be > 0, got ", t.layer_norm_eps);
    if (t.eos_token_id < 0 || t.eos_token_id >= t.vocab_size)
      bad("text_config.eos_token_id", "is ", t.eos_token_id, ", outside the vocabulary [0, ", t.vocab_size, ")");

    size("vision_config.hidden_size", v.hidden_size, Bounds::hidden_size);
    size("vision_config.intermediate_size", v.intermediate_size, Bounds::intermediate_size);
    size("vision_config.num_hidden_layers", v.num_hidden_layers, Bounds::num_hidden_layers);
    size("vision_config.num_attention_heads", v.num_attention_heads, Bounds::num_attention_heads);
    size("vision_config.num_channels", v.num_channels, Bounds::num_channels);
    size("vision_config.image_size", v.image_size, Bounds::image_size);
    size("vision_config.patch_size", v.patch_size, Bounds::patch_size);
    heads("vision_config.", v.hidden_size, v.num_attention_heads);
    act("vision_config.hidden_act", v.hidden_act);
    probability("vision_config.attention_dropout", v.attention_dropout);
    if (!(v.layer_norm_eps > 0)) bad("vision_config.layer_norm_eps", "must be > 0, got ", v.layer_norm_eps);
    if (v.image_size < v.patch_size)
      bad("vision_config.image_size", "(", v.image_size, ") is smaller than vision_config.patch_size (", v.patch_size, ")");

    size("projection_dim", projection_dim, Bounds::hidden_size);
    size("reduce_dim", reduce_dim, Bounds::hidden_size);
    size("decoder_num_attention_heads", decoder_num_attention_heads, Bounds::num_attention_heads);
    size("decoder_intermediate_size", decoder_intermediate_size, Bounds::intermediate_size);
    if (reduce_dim % decoder_num_attention_heads != 0)
      bad("reduce_dim", "(", reduce_dim, ") is not divisible by decoder_num_attention_heads (",
          decoder_num_attention_heads, ")");
    probability("decoder_attention_dropout", decoder_attention_dropout);
    if (extract_layers.empty()) bad("extract_layers", "is empty; the decoder needs at least one layer");
    if (int64_t(extract_layers.size()) > Bounds::extract_layers)
      bad("extract_layers", "has ", extract_layers.size(), " entries, above the bound of ", Bounds::extract_layers);
    for (int64_t l : extract_layers)
      if (l < 0 || l >= v.num_hidden_layers)
        bad("extract_layers", "holds ", l, ", outside the vision tower's layers 0..", v.num_hidden_layers - 1,
            " (vision_config.num_hidden_layers = ", v.num_hidden_layers, ")");
    if (conditional_layer < 0 || conditional_layer >= int64_t(extract_layers.size()))
      bad("conditional_layer", "is ", conditional_layer, ", expected 0..", int64_t(extract_layers.size()) - 1,
          " (one per entry of extract_layers)");
    if (use_complex_transposed_convolution) {
      if (v.patch_size < 4 || v.patch_size % 4 != 0)
        bad("use_complex_transposed_convolution", "needs vision_config.patch_size divisible by 4 (two transposed "
            "convolutions of patch_size / 4), got patch_size ", v.patch_size);
      if (reduce_dim < 2)
        bad("use_complex_transposed_convolution", "needs reduce_dim >= 2 (its middle layer has reduce_dim / 2 "
            "channels), got ", reduce_dim);
    }
    const double params = parameter_estimate();
    if (params > Bounds::parameters)
      fail("config '", source, "': the sizes together describe a model of at least ", params / 1e9,
           " billion parameters, above the bound of ", Bounds::parameters / 1e9, " billion");
  }

 private:
  static bool is_known_key(const std::string& k) {
    static const char* known[] = {"projection_dim", "logit_scale_init_value", "extract_layers", "reduce_dim",
                                  "decoder_num_attention_heads", "decoder_attention_dropout", "decoder_hidden_act",
                                  "decoder_intermediate_size", "conditional_layer",
                                  "use_complex_transposed_convolution", "text_config", "vision_config",
                                  "text_config_dict", "vision_config_dict", "model_type"};
    return std::any_of(std::begin(known), std::end(known), [&](const char* s) { return k == s; });
  }

  // `key` overlaid with `legacy_key` (HF: the *_config_dict values win); null or absent -> {}.
  static nlohmann::json merged(const nlohmann::json& j, const char* key, const char* legacy_key, const std::string& source) {
    nlohmann::json out = nlohmann::json::object();
    for (const char* k : {key, legacy_key}) {
      if (!j.contains(k) || j[k].is_null()) continue;
      if (!j[k].is_object()) fail("config '", source, "': field '", k, "' must be an object, got ", j[k].dump());
      for (auto it = j[k].begin(); it != j[k].end(); ++it) out[it.key()] = it.value();
    }
    return out;
  }

  // A token id field: absent or null keeps the default.
  static void token_id(const detail::JsonFields& r, const char* key, int64_t& out) {
    if (r.j.contains(key) && !r.j[key].is_null()) r.integer(key, out);
  }

  static CLIPSegTextConfig read_text(const nlohmann::json& j, const std::string& source) {
    CLIPSegTextConfig t;
    detail::JsonFields r{j, source, "text_config."};
    r.integer("vocab_size", t.vocab_size);
    r.integer("hidden_size", t.hidden_size);
    r.integer("intermediate_size", t.intermediate_size);
    r.integer("num_hidden_layers", t.num_hidden_layers);
    r.integer("num_attention_heads", t.num_attention_heads);
    r.integer("max_position_embeddings", t.max_position_embeddings);
    r.string("hidden_act", t.hidden_act);
    r.number("layer_norm_eps", t.layer_norm_eps);
    r.number("attention_dropout", t.attention_dropout);
    r.number("initializer_range", t.initializer_range);
    r.number("initializer_factor", t.initializer_factor);
    token_id(r, "pad_token_id", t.pad_token_id);
    token_id(r, "bos_token_id", t.bos_token_id);
    token_id(r, "eos_token_id", t.eos_token_id);
    static const char* known[] = {"vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                                  "num_attention_heads", "max_position_embeddings", "hidden_act", "layer_norm_eps",
                                  "attention_dropout", "initializer_range", "initializer_factor", "pad_token_id",
                                  "bos_token_id", "eos_token_id", "model_type"};
    keep_unknown(j, known, t.extra);
    return t;
  }

  static CLIPSegVisionConfig read_vision(const nlohmann::json& j, const std::string& source) {
    CLIPSegVisionConfig v;
    detail::JsonFields r{j, source, "vision_config."};
    r.integer("hidden_size", v.hidden_size);
    r.integer("intermediate_size", v.intermediate_size);
    r.integer("num_hidden_layers", v.num_hidden_layers);
    r.integer("num_attention_heads", v.num_attention_heads);
    r.integer("num_channels", v.num_channels);
    r.integer("image_size", v.image_size);
    r.integer("patch_size", v.patch_size);
    r.string("hidden_act", v.hidden_act);
    r.number("layer_norm_eps", v.layer_norm_eps);
    r.number("attention_dropout", v.attention_dropout);
    r.number("initializer_range", v.initializer_range);
    r.number("initializer_factor", v.initializer_factor);
    static const char* known[] = {"hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                                  "num_channels", "image_size", "patch_size", "hidden_act", "layer_norm_eps",
                                  "attention_dropout", "initializer_range", "initializer_factor", "model_type"};
    keep_unknown(j, known, v.extra);
    return v;
  }

  template <size_t N>
  static void keep_unknown(const nlohmann::json& j, const char* const (&known)[N], nlohmann::json& extra) {
    for (auto it = j.begin(); it != j.end(); ++it)
      if (std::none_of(std::begin(known), std::end(known), [&](const char* s) { return it.key() == s; }))
        extra[it.key()] = it.value();
  }
};

}  // namespace segml
