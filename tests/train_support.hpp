// Helpers shared by the training tests (test_train, test_train_options, test_resume): a tiny
// SegFormer with given labels, small procedural datasets made once per test process, the image
// processor matching a run's crop, and a model's values flattened for comparisons.
#pragma once

#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <segml/data/synthetic_scenes.hpp>
#include <segml/train/trainer.hpp>

#include "support.hpp"

namespace segml::test {

// The tiny SegFormer of the model fixtures (hidden 8..32) with these labels; without dropout and
// drop-path unless `keep_dropout`.
inline SegformerConfig tiny_train_config(const std::vector<std::string>& labels, bool keep_dropout = false) {
  SegformerConfig c = tiny_segformer_config();
  if (!keep_dropout) {
    c.classifier_dropout_prob = 0.0;
    c.drop_path_rate = 0.0;
  }
  c.set_labels(labels);
  return c;
}

// A procedural street-scene dataset (write_synthetic_dataset's arguments), written once per test
// process under `name` and removed at exit.
inline const std::filesystem::path& scenes_once(const std::string& name, int train, int val, int width,
                                                int height, uint64_t seed) {
  static std::map<std::string, std::unique_ptr<TempDir>> made;
  std::unique_ptr<TempDir>& dir = made[name];
  if (!dir) {
    dir = std::make_unique<TempDir>(name);
    write_synthetic_dataset(dir->path, train, val, 0, width, height, seed);
  }
  return dir->path;
}

// The processor that resizes to the run's crop.
inline SegformerImageProcessor processor_for(const train::TrainOptions& o) {
  SegformerImageProcessor p;
  p.height = o.crop_height;
  p.width = o.crop_width;
  return p;
}

// Every parameter (and, with `buffers`, every float buffer) of `m`, in visit() order, flattened.
inline std::vector<float> parameters_of(SegformerForSemanticSegmentation<float>& m, bool buffers = false) {
  std::vector<float> all;
  auto append = [&](const Tensor<float>& x) {
    const Tensor<float> t = x.contiguous();
    all.insert(all.end(), t.data(), t.data() + t.numel());
  };
  nn::Visitor<float> v;
  v.parameter = [&](const std::string&, Var<float>& p) { append(p.data()); };
  v.buffer = [&](const std::string&, Tensor<float>& b) {
    if (buffers) append(b);
  };
  m.visit(v);
  return all;
}

}  // namespace segml::test
