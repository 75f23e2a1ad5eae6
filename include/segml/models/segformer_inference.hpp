// segml/models/segformer_inference.hpp: the inference engine for SegformerForSemanticSegmentation.
//
// SegformerInference takes a trained model and answers `run(pixel_values) -> logits` with no
// autograd. Same input, same output as model.forward() in eval mode, to float32 rounding.
#pragma once

#include "segml/autograd/variable.hpp"
#include "segml/models/segformer.hpp"

namespace segml {

template <class T = float>
class SegformerInference {
 public:
  // Keeps a reference to `model`: the model must outlive the engine.
  explicit SegformerInference(SegformerForSemanticSegmentation<T>& model) : model_(model) {}

  // pixel_values (B, 3, H, W) -> logits (B, num_labels, ceil(H/4), ceil(W/4)).
  Tensor<T> run(const Tensor<T>& pixel_values) {
    NoGradGuard no_grad;
    const bool was_training = model_.training();
    model_.eval();
    Tensor<T> logits = model_.forward(Var<T>(pixel_values)).logits.data();
    model_.train(was_training);
    return logits;
  }

  const SegformerConfig& config() const { return model_.config; }

 private:
  SegformerForSemanticSegmentation<T>& model_;
};

}  // namespace segml
