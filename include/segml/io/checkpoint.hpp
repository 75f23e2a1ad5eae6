// segml/io/checkpoint.hpp: HF-compatible from_pretrained / save_pretrained for SegFormer.
//
// from_pretrained(path, options) accepts
//   - a hub id ("org/name") with LoadOptions::revision: found in the HF cache or downloaded into it
//     (hub/hub.hpp; a string naming an existing path is always that path),
//   - a folder with config.json and model.safetensors (or a sharded model.safetensors.index.json),
//   - a .safetensors file (its config.json is read from the same folder),
// including encoder-only checkpoints such as nvidia/mit-b0 (SegformerForImageClassification): the
// encoder is loaded, the decode head keeps its fresh HF-style initialisation for the requested
// labels, and the image classifier is reported as unexpected — as transformers does. Keys of a bare
// SegformerModel ("encoder.…") get the "segformer." prefix. Every tensor is loaded by name against
// the shape the model expects; the LoadReport lists missing keys, unexpected keys and shape
// mismatches. Strict mode throws on any of them, listing all. A shape mismatch always throws unless
// ignore_mismatched_sizes is set (then the tensor keeps its fresh initialisation, as in HF).
// BatchNorm's num_batches_tracked may be absent when the rest of its BatchNorm is present. Float
// weights may be stored as F32, F16, BF16 or F64 (converted to T); any other dtype is an error
// naming the tensor.
//
// Every float tensor loaded is checked for NaN and Inf: a checkpoint holding any is refused with an
// error listing each such tensor (name, how many NaN / Inf, of how many values), because such a
// model silently predicts one class everywhere. LoadOptions::allow_non_finite loads it anyway, for
// inspection, with the same list printed as a warning.
//
// save_pretrained(model, dir) writes config.json, model.safetensors (F32, HF names, metadata
// {"format": "pt"}) and, when given, preprocessor_config.json — each atomically (temp + rename),
// so an interrupted save never leaves a partial file behind.
#pragma once

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "segml/hub/hub.hpp"
#include "segml/io/safetensors.hpp"
#include "segml/models/config.hpp"
#include "segml/models/segformer.hpp"

namespace segml {

struct LoadReport {
  std::vector<std::string> missing;     // in the model, not in the checkpoint (left as initialised)
  std::vector<std::string> unexpected;  // in the checkpoint, not in the model (ignored)
  std::vector<std::string> mismatched;  // "name: checkpoint [..] vs model [..]"
  bool clean() const { return missing.empty() && unexpected.empty() && mismatched.empty(); }
  std::string str(const std::string& source) const {
    std::ostringstream os;
    auto list = [&](const char* what, const std::vector<std::string>& v) {
      if (v.empty()) return;
      os << v.size() << " " << what << " (" << source << "):";
      for (const auto& k : v) os << "\n  " << k;
      os << "\n";
    };
    list("missing keys, newly initialised", missing);
    list("unexpected keys, not used", unexpected);
    list("shape mismatches", mismatched);
    return os.str();
  }
};

struct LoadOptions {
  bool strict = false;                   // any missing / unexpected / mismatched key is an error
  bool ignore_mismatched_sizes = false;  // HF's flag: keep fresh weights where shapes differ
  bool verbose = true;                   // print the report (to stderr) when it is not clean
  std::optional<std::vector<std::string>> labels;  // override id2label (e.g. fine-tuning mit-b0)
  uint64_t seed = 0;                     // initialisation of the weights the checkpoint lacks
  bool allow_non_finite = false;         // load NaN / Inf weights (for inspection) with a warning
  std::string revision = "main";         // for a hub id: branch, tag or 40-hex commit (hub/hub.hpp)
  bool local_files_only = false;         // for a hub id: the HF cache only, never the network
};

// A tensor holding NaN or Inf values.
struct NonFiniteTensor {
  std::string name;
  int64_t nan = 0, inf = 0, numel = 0;
  std::string str() const {
    return name + ": " + std::to_string(nan) + " NaN, " + std::to_string(inf) + " Inf (of " + std::to_string(numel) +
           " values)";
  }
};

// Every parameter and buffer of `model` that holds NaN or Inf, in the model's order (HF names).
// Model: any model with visit(nn::Visitor<T>&) (SegFormer, CLIPSeg).
template <class T, template <class> class Model>
std::vector<NonFiniteTensor> find_non_finite(Model<T>& model) {
  std::vector<NonFiniteTensor> out;
  auto check = [&](const std::string& name, const Tensor<T>& t) {
    const Tensor<T> c = t.contiguous();
    NonFiniteTensor r{name, 0, 0, c.numel()};
    for (int64_t i = 0; i < c.numel(); ++i) {
      const T v = c.data()[i];
      if (std::isnan(v)) ++r.nan;
      else if (std::isinf(v)) ++r.inf;
    }
    if (r.nan || r.inf) out.push_back(r);
  };
  nn::Visitor<T> v;
  v.parameter = [&](const std::string& name, Var<T>& p) { check(name, p.data()); };
  v.buffer = [&](const std::string& name, Tensor<T>& b) { check(name, b); };
  model.visit(v);
  return out;
}

namespace detail {
// "N tensors hold non-finite values:\n  name: ...", at most 20 listed.
inline std::string non_finite_text(const std::vector<NonFiniteTensor>& bad) {
  std::string s = std::to_string(bad.size()) + (bad.size() == 1 ? " tensor holds" : " tensors hold") + " NaN or Inf values:";
  for (size_t i = 0; i < bad.size() && i < 20; ++i) s += "\n  " + bad[i].str();
  if (bad.size() > 20) s += "\n  ... and " + std::to_string(bad.size() - 20) + " more";
  return s;
}
}  // namespace detail

namespace detail {
// The safetensors files of a checkpoint path: folder (single or sharded) or a file. A hub id
// ("org/name") is first resolved to its snapshot in the HF cache, downloading it if needed (hub/hub.hpp).
inline std::vector<std::string> checkpoint_files(const std::string& path_or_id, std::filesystem::path& folder,
                                                 const LoadOptions& opt = {}) {
  namespace fs = std::filesystem;
  const fs::path path = hub::resolve(path_or_id, hub::model_files(), {opt.revision, opt.local_files_only, opt.verbose});
  if (!fs::exists(path)) fail("from_pretrained: '", path.string(), "' does not exist");
  if (fs::is_regular_file(path)) {
    folder = path.parent_path();
    return {path.string()};
  }
  folder = path;
  if (fs::exists(path / "model.safetensors")) return {(path / "model.safetensors").string()};
  const fs::path index = path / "model.safetensors.index.json";
  if (fs::exists(index)) {
    std::ifstream in(index);
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(in);
    } catch (const nlohmann::json::exception& e) {
      fail("from_pretrained: '", index.string(), "' is not valid JSON: ", e.what());
    }
    if (!j.contains("weight_map") || !j["weight_map"].is_object())
      fail("from_pretrained: '", index.string(), "' has no weight_map object");
    std::set<std::string> shards;
    for (auto it = j["weight_map"].begin(); it != j["weight_map"].end(); ++it) {
      if (!it.value().is_string())
        fail("from_pretrained: '", index.string(), "' maps tensor '", it.key(), "' to ", it.value().dump(),
             ", expected a shard file name");
      shards.insert(it.value().get<std::string>());
    }
    std::vector<std::string> files;
    for (const auto& s : shards) files.push_back((path / s).string());
    return files;
  }
  if (fs::exists(path / "pytorch_model.bin"))
    fail("from_pretrained: '", path.string(), "' holds pytorch_model.bin only; convert it with "
         "/usr/bin/python3 tools/convert_weights.py (segml reads safetensors)");
  fail("from_pretrained: '", path.string(), "' has neither model.safetensors nor model.safetensors.index.json");
}
}  // namespace detail

// Copies checkpoint tensors into the model by name; returns what did not line up. Model: a model
// with visit(nn::Visitor<T>&) and a static base_model_prefix() (the keys of a bare base-model
// checkpoint get the prefix, as HF's base_model_prefix does).
template <class T, template <class> class Model>
LoadReport load_state_dict(Model<T>& model, const std::vector<std::string>& files, bool ignore_mismatched_sizes = false) {
  std::vector<safetensors::File> opened;
  std::map<std::string, size_t> where;  // checkpoint key (normalised) -> file index
  std::map<std::string, std::string> original;
  for (const auto& f : files) opened.emplace_back(f);
  const nn::BaseModelPrefix rule = Model<T>::base_model_prefix();
  auto starts = [](const std::string& k, const std::vector<std::string>& prefixes) {
    return std::any_of(prefixes.begin(), prefixes.end(), [&](const std::string& p) { return k.rfind(p, 0) == 0; });
  };
  bool any_prefixed = false;
  for (const auto& f : opened)
    for (const auto& k : f.names()) any_prefixed |= starts(k, rule.full_model);
  for (size_t i = 0; i < opened.size(); ++i)
    for (const auto& k : opened[i].names()) {
      // A bare base-model checkpoint (SegformerModel: "encoder.*"; CLIPSegModel: "text_model.*", ...)
      // names its keys without the base-model prefix: add it.
      const std::string key = (!any_prefixed && starts(k, rule.bare)) ? rule.prefix + k : k;
      if (where.count(key)) fail("from_pretrained: tensor '", k, "' appears in more than one shard");
      where[key] = i;
      original[key] = k;
    }

  LoadReport report;
  std::set<std::string> used;
  // `counter`: BatchNorm's num_batches_tracked, an integer buffer that old checkpoints may lack.
  auto load = [&](const std::string& name, Tensor<T>& dst, bool counter) {
    auto it = where.find(name);
    if (it == where.end()) {
      // A counter is tolerated missing when the rest of its BatchNorm was loaded, reported otherwise.
      const std::string running_mean = counter ? name.substr(0, name.size() - 19) + "running_mean" : "";
      if (!counter || !where.count(running_mean)) report.missing.push_back(name);
      return;
    }
    used.insert(name);
    const safetensors::File& f = opened[it->second];
    const safetensors::TensorInfo& info = f.info(original[name]);
    using safetensors::Dtype;
    const bool floating = info.dtype == Dtype::F32 || info.dtype == Dtype::F16 || info.dtype == Dtype::BF16 ||
                          info.dtype == Dtype::F64;
    const bool integer = info.dtype == Dtype::I64 || info.dtype == Dtype::I32;
    if (!floating && !(counter && integer))
      fail("from_pretrained: tensor '", original[name], "' in '", f.path(), "' has dtype ",
           safetensors::dtype_name(info.dtype), ", which cannot hold ", counter ? "a BatchNorm counter" : "a float weight",
           " (expected F32, F16, BF16 or F64", counter ? ", I64 or I32" : "", ")");
    if (info.shape != dst.shape()) {
      report.mismatched.push_back(name + ": checkpoint " + shape_str(info.shape) + " vs model " + shape_str(dst.shape()));
      return;
    }
    if (dst.is_contiguous()) f.read_into(original[name], dst.data());  // no temporary copy
    else dst.copy_(f.get<T>(original[name]));
  };
  nn::Visitor<T> v;
  v.parameter = [&](const std::string& name, Var<T>& p) { load(name, p.data(), false); };
  v.buffer = [&](const std::string& name, Tensor<T>& b) {
    load(name, b, name.ends_with("num_batches_tracked"));
  };
  model.visit(v);
  for (const auto& [key, idx] : where)
    if (!used.count(key) && std::none_of(rule.ignored.begin(), rule.ignored.end(), [&](const std::string& s) { return key.ends_with(s); }))
      report.unexpected.push_back(original[key]);
  if (!report.mismatched.empty() && !ignore_mismatched_sizes) {
    std::string msg = "from_pretrained: shape mismatch between checkpoint and model (" + files.front() +
                      "); pass ignore_mismatched_sizes to re-initialise them:";
    for (const auto& m : report.mismatched) msg += "\n  " + m;
    throw Error(msg);
  }
  return report;
}

namespace detail {
// The config.json next to a checkpoint's weights (`folder` from checkpoint_files).
inline std::string config_path(const std::filesystem::path& folder) {
  const std::filesystem::path p = folder / "config.json";
  if (!std::filesystem::exists(p))
    fail("from_pretrained: '", p.string(), "' is missing (a checkpoint needs its config.json)");
  return p.string();
}

// Loads `files` into `model` with the options: report, strict mode, the NaN / Inf check.
template <class T, template <class> class Model>
void load_checked(Model<T>& model, const std::vector<std::string>& files, const std::string& path, const LoadOptions& opt,
                  LoadReport* report) {
  LoadReport r = load_state_dict(model, files, opt.ignore_mismatched_sizes);
  if (opt.strict && !r.clean()) throw Error("from_pretrained (strict): checkpoint does not match the model\n" + r.str(path));
  if (opt.verbose && !r.clean()) std::cerr << "segml: from_pretrained: " << r.str(path);
  const std::vector<NonFiniteTensor> bad = find_non_finite(model);
  if (!bad.empty() && !opt.allow_non_finite)
    throw Error("from_pretrained: '" + path + "' is refused: " + detail::non_finite_text(bad) +
                "\n(such a model predicts garbage; allow_non_finite / --allow-non-finite loads it for inspection)");
  if (!bad.empty()) std::cerr << "segml: from_pretrained: warning: '" << path << "': " << detail::non_finite_text(bad) << "\n";
  if (report) *report = r;
}
}  // namespace detail

// Loads an HF SegFormer checkpoint (see the file comment). `report`, when given, receives the report.
template <class T = float>
SegformerForSemanticSegmentation<T> from_pretrained(const std::string& path, const LoadOptions& opt = {},
                                                    LoadReport* report = nullptr) {
  std::filesystem::path folder;
  const std::vector<std::string> files = detail::checkpoint_files(path, folder, opt);
  SegformerConfig config = SegformerConfig::from_json_file(detail::config_path(folder));
  if (opt.labels) config.set_labels(*opt.labels);
  SegformerForSemanticSegmentation<T> model(config, opt.seed);
  detail::load_checked(model, files, path, opt, report);
  return model;
}

// The model's state dict as safetensors entries (float tensors as F32, num_batches_tracked as I64).
template <class T, template <class> class Model>
std::map<std::string, safetensors::Entry> state_dict_entries(Model<T>& model) {
  std::map<std::string, safetensors::Entry> entries;
  nn::Visitor<T> v;
  v.parameter = [&](const std::string& name, Var<T>& p) { entries[name] = safetensors::make_entry(p.data()); };
  v.buffer = [&](const std::string& name, Tensor<T>& b) {
    const bool counter = name.ends_with("num_batches_tracked");
    entries[name] = safetensors::make_entry(b, counter ? safetensors::Dtype::I64 : safetensors::Dtype::F32);
  };
  model.visit(v);
  return entries;
}

namespace detail {
// config.json (with `architecture`), model.safetensors and the optional preprocessor_config.json,
// each written atomically.
template <class T, template <class> class Model>
void save_model_folder(Model<T>& model, const std::string& dir, const nlohmann::json* preprocessor_config,
                       const char* architecture) {
  namespace fs = std::filesystem;
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) fail("save_pretrained: cannot create folder '", dir, "': ", ec.message());
  safetensors::save((fs::path(dir) / "model.safetensors").string(), state_dict_entries(model), {{"format", "pt"}});
  auto config = model.config;
  config.extra["architectures"] = {architecture};
  config.save((fs::path(dir) / "config.json").string());
  if (preprocessor_config) {
    const std::string text = preprocessor_config->dump(2) + "\n";
    safetensors::write_file_atomic((fs::path(dir) / "preprocessor_config.json").string(),
                                   std::vector<char>(text.begin(), text.end()));
  }
}
}  // namespace detail

// Writes an HF-loadable checkpoint folder: config.json, model.safetensors and, when
// `preprocessor_config` is given, preprocessor_config.json. Each file is written atomically.
template <class T>
void save_pretrained(SegformerForSemanticSegmentation<T>& model, const std::string& dir,
                     const nlohmann::json* preprocessor_config = nullptr) {
  detail::save_model_folder(model, dir, preprocessor_config, "SegformerForSemanticSegmentation");
}

}  // namespace segml
