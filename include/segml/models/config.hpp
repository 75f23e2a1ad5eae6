// segml/models/config.hpp: SegformerConfig, the HF `config.json` of a SegFormer model.
//
// Guarantees:
//  - Field names and defaults are HF's SegformerConfig (+ PretrainedConfig's labels); presets b0..b5
//    match the released MiT variants.
//  - from_json()/to_json() round-trip an HF config.json: every field segml does not model
//    (transformers_version, downsampling_rates, image_size, return_dict, ...) is kept in `extra` and
//    written back unchanged. Output is what HF writes: sorted keys, indent 2, id2label with STRING
//    keys, label2id with int values, architectures / model_type / torch_dtype filled in if absent.
//  - num_labels is derived from id2label when id2label is present (HF does the same).
//  - validate() (run by from_json and save) rejects inconsistent configs with an error naming the
//    source file and the field: list lengths vs num_encoder_blocks, hidden sizes not divisible by
//    the head count, unknown hidden_act, wrong JSON types, non-positive sizes.
//  - Every size field is bounded (SegformerConfig::Bounds: generous, B5 and any plausible model
//    pass), and so is the parameter count the fields describe together; from_json checks them
//    before anything is allocated, so a config with depths 1e6 or hidden_sizes 1e9 fails at once
//    with the file, the field, the value and the bound, instead of allocating gigabytes.
//  - save() is atomic (temp file + rename).
// Does not: build a model, or check that the weights of a checkpoint match the config.
// Note: layer_norm_eps is stored and written, but HF's PyTorch model ignores it (LayerNorms use 1e-5).
#pragma once

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdint>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "segml/core/error.hpp"
#include "segml/io/safetensors.hpp"
#include "segml/models/json_fields.hpp"

namespace segml {

struct SegformerConfig {
  int64_t num_channels = 3;
  int64_t num_encoder_blocks = 4;
  std::vector<int64_t> depths{2, 2, 2, 2};
  std::vector<int64_t> sr_ratios{8, 4, 2, 1};
  std::vector<int64_t> hidden_sizes{32, 64, 160, 256};
  std::vector<int64_t> patch_sizes{7, 3, 3, 3};
  std::vector<int64_t> strides{4, 2, 2, 2};
  std::vector<int64_t> num_attention_heads{1, 2, 5, 8};
  std::vector<int64_t> mlp_ratios{4, 4, 4, 4};
  std::string hidden_act = "gelu";
  double hidden_dropout_prob = 0.0;
  double attention_probs_dropout_prob = 0.0;
  double classifier_dropout_prob = 0.1;
  double initializer_range = 0.02;
  double drop_path_rate = 0.1;
  double layer_norm_eps = 1e-6;
  int64_t decoder_hidden_size = 256;
  int64_t semantic_loss_ignore_index = 255;
  bool reshape_last_stage = true;
  int64_t num_labels = 2;
  std::map<int64_t, std::string> id2label{{0, "LABEL_0"}, {1, "LABEL_1"}};
  std::map<std::string, int64_t> label2id{{"LABEL_0", 0}, {"LABEL_1", 1}};
  // Every config.json field segml does not model, written back unchanged.
  nlohmann::json extra = nlohmann::json::object();

  // ---- presets (MiT-b0 ... b5; 2 labels until set_labels / set_num_labels) ----------------
  static SegformerConfig b0() { return SegformerConfig{}; }
  static SegformerConfig b1() { return variant({64, 128, 320, 512}, {2, 2, 2, 2}, 256); }
  static SegformerConfig b2() { return variant({64, 128, 320, 512}, {3, 4, 6, 3}, 768); }
  static SegformerConfig b3() { return variant({64, 128, 320, 512}, {3, 4, 18, 3}, 768); }
  static SegformerConfig b4() { return variant({64, 128, 320, 512}, {3, 8, 27, 3}, 768); }
  static SegformerConfig b5() { return variant({64, 128, 320, 512}, {3, 6, 40, 3}, 768); }

  // Labels named by class id 0..n-1; sets num_labels, id2label and label2id together.
  void set_labels(const std::vector<std::string>& names) {
    id2label.clear();
    label2id.clear();
    for (size_t i = 0; i < names.size(); ++i) {
      id2label[static_cast<int64_t>(i)] = names[i];
      label2id[names[i]] = static_cast<int64_t>(i);
    }
    num_labels = static_cast<int64_t>(names.size());
  }
  // n labels named LABEL_0 ... LABEL_{n-1}, as HF does.
  void set_num_labels(int64_t n) {
    SEGML_CHECK(n >= 1 && n <= Bounds::num_labels, "SegformerConfig::set_num_labels: need 1 to ", Bounds::num_labels,
                " labels, got ", n);
    std::vector<std::string> names;
    for (int64_t i = 0; i < n; ++i) names.push_back("LABEL_" + std::to_string(i));
    set_labels(names);
  }

  // ---- JSON ------------------------------------------------------------------------------
  // `source` names the file (or other origin) in error messages.
  static SegformerConfig from_json(const nlohmann::json& j, const std::string& source = "<json>") {
    if (!j.is_object()) fail("config '", source, "': top level must be a JSON object");
    SegformerConfig c;
    Reader r{j, source};
    r.integer("num_channels", c.num_channels);
    r.integer("num_encoder_blocks", c.num_encoder_blocks);
    r.int_list("depths", c.depths);
    r.int_list("sr_ratios", c.sr_ratios);
    r.int_list("hidden_sizes", c.hidden_sizes);
    r.int_list("patch_sizes", c.patch_sizes);
    r.int_list("strides", c.strides);
    r.int_list("num_attention_heads", c.num_attention_heads);
    r.int_list("mlp_ratios", c.mlp_ratios);
    r.string("hidden_act", c.hidden_act);
    r.number("hidden_dropout_prob", c.hidden_dropout_prob);
    r.number("attention_probs_dropout_prob", c.attention_probs_dropout_prob);
    r.number("classifier_dropout_prob", c.classifier_dropout_prob);
    r.number("initializer_range", c.initializer_range);
    r.number("drop_path_rate", c.drop_path_rate);
    r.number("layer_norm_eps", c.layer_norm_eps);
    r.integer("decoder_hidden_size", c.decoder_hidden_size);
    r.integer("semantic_loss_ignore_index", c.semantic_loss_ignore_index);
    r.boolean("reshape_last_stage", c.reshape_last_stage);
    r.integer("num_labels", c.num_labels);
    c.check_bounds(source);  // before set_num_labels or anything else allocates by these sizes
    if (j.contains("id2label")) c.read_id2label(j["id2label"], source);
    else if (j.contains("num_labels")) {
      if (c.num_labels < 1) fail("config '", source, "': field 'num_labels' must be >= 1, got ", c.num_labels);
      c.set_num_labels(c.num_labels);
    }
    if (j.contains("label2id")) c.read_label2id(j["label2id"], source);
    if (j.contains("model_type") && j["model_type"] != "segformer")
      fail("config '", source, "': model_type is ", j["model_type"].dump(), ", expected \"segformer\"");
    for (auto it = j.begin(); it != j.end(); ++it)
      if (!is_known_key(it.key())) c.extra[it.key()] = it.value();
    c.validate(source);
    return c;
  }

  static SegformerConfig from_json_file(const std::string& path) { return from_json(detail::read_config_json(path), path); }

  // HF-style config.json content (nlohmann::json sorts keys, as HF's sort_keys=True does).
  nlohmann::json to_json() const {
    nlohmann::json j = extra;
    if (!j.contains("architectures")) j["architectures"] = {"SegformerForSemanticSegmentation"};
    j["model_type"] = "segformer";
    if (!j.contains("torch_dtype")) j["torch_dtype"] = "float32";
    j["num_channels"] = num_channels;
    j["num_encoder_blocks"] = num_encoder_blocks;
    j["depths"] = depths;
    j["sr_ratios"] = sr_ratios;
    j["hidden_sizes"] = hidden_sizes;
    j["patch_sizes"] = patch_sizes;
    j["strides"] = strides;
    j["num_attention_heads"] = num_attention_heads;
    j["mlp_ratios"] = mlp_ratios;
    j["hidden_act"] = hidden_act;
    j["hidden_dropout_prob"] = hidden_dropout_prob;
    j["attention_probs_dropout_prob"] = attention_probs_dropout_prob;
    j["classifier_dropout_prob"] = classifier_dropout_prob;
    j["initializer_range"] = initializer_range;
    j["drop_path_rate"] = drop_path_rate;
    j["layer_norm_eps"] = layer_norm_eps;
    j["decoder_hidden_size"] = decoder_hidden_size;
    j["semantic_loss_ignore_index"] = semantic_loss_ignore_index;
    j["reshape_last_stage"] = reshape_last_stage;
    j["num_labels"] = num_labels;
    nlohmann::json i2l = nlohmann::json::object(), l2i = nlohmann::json::object();
    for (const auto& [id, name] : id2label) i2l[std::to_string(id)] = name;
    for (const auto& [name, id] : label2id) l2i[name] = id;
    j["id2label"] = i2l;
    j["label2id"] = l2i;
    return j;
  }

  // Writes config.json atomically (validated first; 2-space indent and a final newline, like HF).
  void save(const std::string& path) const {
    validate(path);
    const std::string text = to_json().dump(2) + "\n";
    safetensors::write_file_atomic(path, std::vector<char>(text.begin(), text.end()));
  }

  // The largest value each size field may take. Generous: the released B0..B5 use at most depths
  // 40, hidden sizes 512, 8 heads, sr_ratio 8, patch 7, stride 4, mlp_ratio 4, decoder 768 and
  // 150 labels (ADE20K); the bounds leave one to two orders of magnitude above that, and only
  // refuse what no real model uses and what would allocate gigabytes for nothing.
  struct Bounds {
    static constexpr int64_t num_channels = 1024;
    static constexpr int64_t num_encoder_blocks = 16;
    static constexpr int64_t depths = 128;
    static constexpr int64_t hidden_sizes = 8192;
    static constexpr int64_t num_attention_heads = 1024;
    static constexpr int64_t sr_ratios = 64;
    static constexpr int64_t patch_sizes = 64;
    static constexpr int64_t strides = 64;
    static constexpr int64_t mlp_ratios = 64;
    static constexpr int64_t decoder_hidden_size = 8192;
    static constexpr int64_t num_labels = 65536;
    // Parameters the fields describe together (2e9 float32 = 8 GB; B5 has 85 M).
    static constexpr double parameters = 2e9;
  };

  // The number of parameters the fields describe (encoder, decode head), in double so that absurd
  // values cannot overflow. Counts the weights, not the biases or norms (a lower bound).
  double parameter_estimate() const {
    double n = 0;
    for (size_t i = 0; i < hidden_sizes.size(); ++i) {
      const double c = double(hidden_sizes[i]), in = i == 0 ? double(num_channels) : double(hidden_sizes[i - 1]);
      const double k = i < patch_sizes.size() ? double(patch_sizes[i]) : 1, d = i < depths.size() ? double(depths[i]) : 1;
      const double sr = i < sr_ratios.size() ? double(sr_ratios[i]) : 1, m = i < mlp_ratios.size() ? double(mlp_ratios[i]) : 1;
      n += k * k * in * c;                                                         // patch embedding
      n += d * (4 * c * c + (sr > 1 ? sr * sr * c * c : 0) + 2 * m * c * c + 9 * m * c);  // blocks
      n += c * double(decoder_hidden_size);                                        // linear_c
    }
    const double dec = double(decoder_hidden_size);
    return n + dec * dec * double(hidden_sizes.size()) + dec * double(num_labels);
  }

  // Throws segml::Error naming `source`, the field, its value and its bound (see Bounds).
  void check_bounds(const std::string& source = "<config>") const {
    auto over = [&](const char* field, int64_t value, int64_t bound, int64_t index = -1) {
      std::ostringstream where;  // "[i]" for a list entry
      if (index >= 0) where << '[' << index << ']';
      fail("config '", source, "': field '", field, "'", where.str(), " is ", value, ", above the bound of ", bound,
           " (no SegFormer is that large; is the file damaged?)");
    };
    const std::pair<const char*, std::pair<int64_t, int64_t>> scalars[] = {
        {"num_channels", {num_channels, Bounds::num_channels}},
        {"num_encoder_blocks", {num_encoder_blocks, Bounds::num_encoder_blocks}},
        {"decoder_hidden_size", {decoder_hidden_size, Bounds::decoder_hidden_size}},
        {"num_labels", {num_labels, Bounds::num_labels}}};
    for (const auto& [name, vb] : scalars)
      if (vb.first > vb.second) over(name, vb.first, vb.second);
    const std::pair<const char*, std::pair<const std::vector<int64_t>*, int64_t>> lists[] = {
        {"depths", {&depths, Bounds::depths}},
        {"sr_ratios", {&sr_ratios, Bounds::sr_ratios}},
        {"hidden_sizes", {&hidden_sizes, Bounds::hidden_sizes}},
        {"patch_sizes", {&patch_sizes, Bounds::patch_sizes}},
        {"strides", {&strides, Bounds::strides}},
        {"num_attention_heads", {&num_attention_heads, Bounds::num_attention_heads}},
        {"mlp_ratios", {&mlp_ratios, Bounds::mlp_ratios}}};
    for (const auto& [name, vb] : lists) {
      if (static_cast<int64_t>(vb.first->size()) > Bounds::num_encoder_blocks)
        fail("config '", source, "': field '", name, "' has ", vb.first->size(), " entries, above the bound of ",
             Bounds::num_encoder_blocks, " (num_encoder_blocks)");
      for (size_t i = 0; i < vb.first->size(); ++i)
        if ((*vb.first)[i] > vb.second) over(name, (*vb.first)[i], vb.second, static_cast<int64_t>(i));
    }
    const double params = parameter_estimate();
    if (params > Bounds::parameters)
      fail("config '", source, "': depths, hidden_sizes, mlp_ratios, sr_ratios, decoder_hidden_size and num_labels "
           "together describe a model of at least ", params / 1e9, " billion parameters, above the bound of ",
           Bounds::parameters / 1e9, " billion (", Bounds::parameters * 4 / 1e9, " GB of float32)");
  }

  // Throws segml::Error naming `source` and the offending field.
  void validate(const std::string& source = "<config>") const {
    auto bad = [&](const std::string& field, const auto&... what) { fail("config '", source, "': field '", field, "' ", what...); };
    check_bounds(source);
    if (num_channels < 1) bad("num_channels", "must be >= 1, got ", num_channels);
    if (num_encoder_blocks < 1) bad("num_encoder_blocks", "must be >= 1, got ", num_encoder_blocks);
    const std::pair<const char*, const std::vector<int64_t>*> lists[] = {
        {"depths", &depths},         {"sr_ratios", &sr_ratios}, {"hidden_sizes", &hidden_sizes},
        {"patch_sizes", &patch_sizes}, {"strides", &strides},   {"num_attention_heads", &num_attention_heads},
        {"mlp_ratios", &mlp_ratios}};
    for (const auto& [name, v] : lists) {
      if (static_cast<int64_t>(v->size()) != num_encoder_blocks)
        bad(name, "has ", v->size(), " entries but num_encoder_blocks is ", num_encoder_blocks);
      for (int64_t x : *v)
        if (x < 1) bad(name, "entries must be >= 1, got ", Shape(*v));
    }
    for (size_t i = 0; i < hidden_sizes.size(); ++i)
      if (hidden_sizes[i] % num_attention_heads[i] != 0)
        bad("hidden_sizes", "entry ", i, " (", hidden_sizes[i], ") is not divisible by num_attention_heads[", i,
            "] (", num_attention_heads[i], ")");
    const auto& acts = known_activations();
    if (std::find(acts.begin(), acts.end(), hidden_act) == acts.end()) {
      std::string list;
      for (const auto& a : acts) list += (list.empty() ? "" : ", ") + a;
      bad("hidden_act", "is unknown: '", hidden_act, "' (known: ", list, ")");
    }
    const std::pair<const char*, double> probs[] = {{"hidden_dropout_prob", hidden_dropout_prob},
                                                    {"attention_probs_dropout_prob", attention_probs_dropout_prob},
                                                    {"classifier_dropout_prob", classifier_dropout_prob},
                                                    {"drop_path_rate", drop_path_rate}};
    for (const auto& [name, p] : probs)
      if (!(p >= 0.0 && p < 1.0)) bad(name, "must be in [0, 1), got ", p);
    if (!(layer_norm_eps > 0)) bad("layer_norm_eps", "must be > 0, got ", layer_norm_eps);
    if (!(initializer_range >= 0)) bad("initializer_range", "must be >= 0, got ", initializer_range);
    if (decoder_hidden_size < 1) bad("decoder_hidden_size", "must be >= 1, got ", decoder_hidden_size);
    if (num_labels < 1) bad("num_labels", "must be >= 1, got ", num_labels);
    if (static_cast<int64_t>(id2label.size()) != num_labels)
      bad("id2label", "has ", id2label.size(), " entries but num_labels is ", num_labels);
    int64_t expected = 0;
    for (const auto& [id, name] : id2label)
      if (id != expected++) bad("id2label", "keys must be the class ids 0..", num_labels - 1, ", found ", id);
  }

  // Activation names HF's ACT2FN accepts (the model may support fewer).
  static const std::vector<std::string>& known_activations() {
    static const std::vector<std::string> names = {"gelu",       "gelu_new",  "gelu_fast", "gelu_pytorch_tanh",
                                                   "quick_gelu", "gelu_python", "relu",    "relu6",
                                                   "silu",       "swish",     "sigmoid",   "tanh",
                                                   "mish",       "linear",    "leaky_relu"};
    return names;
  }

 private:
  static SegformerConfig variant(std::vector<int64_t> hidden, std::vector<int64_t> depths, int64_t decoder) {
    SegformerConfig c;
    c.hidden_sizes = std::move(hidden);
    c.depths = std::move(depths);
    c.decoder_hidden_size = decoder;
    return c;
  }

  static bool is_known_key(const std::string& k) {
    static const char* known[] = {"num_channels", "num_encoder_blocks", "depths", "sr_ratios", "hidden_sizes",
                                  "patch_sizes", "strides", "num_attention_heads", "mlp_ratios", "hidden_act",
                                  "hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout_prob",
                                  "initializer_range", "drop_path_rate", "layer_norm_eps", "decoder_hidden_size",
                                  "semantic_loss_ignore_index", "reshape_last_stage", "num_labels", "id2label",
                                  "label2id", "model_type"};
    return std::any_of(std::begin(known), std::end(known), [&](const char* s) { return k == s; });
  }

  using Reader = detail::JsonFields;

  void read_id2label(const nlohmann::json& v, const std::string& source) {
    if (!v.is_object()) fail("config '", source, "': field 'id2label' must be an object {\"0\": \"name\", ...}");
    id2label.clear();
    for (auto it = v.begin(); it != v.end(); ++it) {
      const std::string& k = it.key();
      const bool digits = !k.empty() && std::all_of(k.begin(), k.end(), [](char ch) { return ch >= '0' && ch <= '9'; });
      if (!digits || k.size() > 9) fail("config '", source, "': field 'id2label' has key '", k, "', expected a class id");
      if (!it.value().is_string())
        fail("config '", source, "': field 'id2label' value for '", k, "' must be a string, got ", it.value().dump());
      id2label[std::stoll(k)] = it.value().get<std::string>();
    }
    num_labels = static_cast<int64_t>(id2label.size());
    label2id.clear();
    for (const auto& [id, name] : id2label) label2id[name] = id;
  }

  void read_label2id(const nlohmann::json& v, const std::string& source) {
    if (!v.is_object()) fail("config '", source, "': field 'label2id' must be an object {\"name\": id, ...}");
    label2id.clear();
    for (auto it = v.begin(); it != v.end(); ++it) {
      const auto& id = it.value();  // some hub configs store the ids as strings ("0"); written back as ints
      const std::string text = id.is_string() ? id.get<std::string>() : std::string();
      const bool digits = !text.empty() && text.size() < 10 &&
                          std::all_of(text.begin(), text.end(), [](char ch) { return ch >= '0' && ch <= '9'; });
      if (!id.is_number_integer() && !digits)
        fail("config '", source, "': field 'label2id' value for '", it.key(), "' must be an integer, got ", id.dump());
      label2id[it.key()] = digits ? std::stoll(text) : id.get<int64_t>();
    }
  }
};

}  // namespace segml
