// segml/models/clipseg/pretrained_clipseg.hpp: from_pretrained / save_pretrained for CLIPSeg.
//
//   auto model = clipseg_from_pretrained<float>("clipseg-rd64-refined");  // huggingface-cli download CIDAS/...
//
// clipseg_from_pretrained(path, options) accepts what the SegFormer loader accepts
// (io/checkpoint.hpp): a folder with config.json and model.safetensors (or a sharded
// model.safetensors.index.json), or a .safetensors file beside its config.json. The config must say
// model_type "clipseg". Every tensor is loaded by HF name against the shape the model expects; the
// LoadReport lists missing, unexpected and misshaped keys; strict mode throws on any; NaN / Inf
// weights are refused unless allow_non_finite. A bare CLIPSegModel checkpoint (no "clip." prefix,
// no decoder) loads its towers and reports the decoder as missing. The position_ids buffers older
// transformers versions saved are skipped silently, as HF does. A folder holding only
// pytorch_model.bin gets the command that converts it (tools/convert_weights.py).
// save_pretrained(model, dir) writes config.json and model.safetensors (F32, HF names, metadata
// {"format": "pt"}) and the optional preprocessor_config.json, each atomically.
// LoadOptions::labels does not apply (CLIPSeg has no label head).
#pragma once

#include <string>

#include "segml/io/checkpoint.hpp"
#include "segml/models/clipseg/modeling_clipseg.hpp"

namespace segml {

template <class T = float>
CLIPSegForImageSegmentation<T> clipseg_from_pretrained(const std::string& path, const LoadOptions& opt = {},
                                                       LoadReport* report = nullptr) {
  std::filesystem::path folder;
  const std::vector<std::string> files = detail::checkpoint_files(path, folder, opt);
  // Not initialised first (150 M random numbers for rd64-refined): only what the checkpoint lacks is.
  CLIPSegForImageSegmentation<T> model(CLIPSegConfig::from_json_file(detail::config_path(folder)), opt.seed, false);
  LoadReport r;
  detail::load_checked(model, files, path, opt, &r);
  std::vector<std::string> fresh = r.missing;
  for (const std::string& m : r.mismatched) fresh.push_back(m.substr(0, m.find(':')));  // ignore_mismatched_sizes
  if (!fresh.empty()) model.init_weights(opt.seed, &fresh);
  if (report) *report = r;
  return model;
}

template <class T>
void save_pretrained(CLIPSegForImageSegmentation<T>& model, const std::string& dir,
                     const nlohmann::json* preprocessor_config = nullptr) {
  detail::save_model_folder(model, dir, preprocessor_config, "CLIPSegForImageSegmentation");
}

}  // namespace segml
