// segml/models/segformer.hpp: SegFormer (Xie et al., 2021) as HuggingFace's SegformerForSemanticSegmentation.
//
// The structure, the order of operations and every parameter name mirror HF's modeling_segformer.py,
// so `visit()` yields exactly HF's state-dict keys (`segformer.encoder.block.0.0.attention.self.sr.weight`,
// `decode_head.batch_norm.running_mean`, ...) and weights, fixtures and debug dumps line up one to one.
//
// Shapes: pixel_values (B, 3, H, W) -> logits (B, num_labels, ceil(H/4), ceil(W/4)) for any H, W.
// Inside the encoder the hidden states are tokens (B, N = h*w, C); each stage's output is NCHW.
//
// What it guarantees: forward equals the PyTorch reference (tools/segformer_ref.py) to float32
// rounding; train/eval mode switch BatchNorm, dropout and drop-path as PyTorch does; the loss is
// HF's (logits upsampled bilinearly to the label size, cross-entropy with the ignore index).
// What it does not do: attention-probability dropout > 0 in training (HF's default is 0; such a
// config is rejected when training), file I/O (see io/), optimisation (see train/).
#pragma once

#include <cmath>
#include <string>
#include <vector>

#include "segml/core/random.hpp"
#include "segml/models/config.hpp"
#include "segml/nn/module.hpp"
#include "segml/ops/attention.hpp"
#include "segml/ops/dropout.hpp"
#include "segml/ops/elementwise.hpp"
#include "segml/ops/loss.hpp"
#include "segml/ops/resize.hpp"

namespace segml {

namespace detail {
// (B, C, H, W) -> (B, H*W, C)
template <class T>
Var<T> nchw_to_tokens(const Var<T>& x) {
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  return ops::reshape(ops::permute(x, {0, 2, 3, 1}), {B, H * W, C});
}
// (B, H*W, C) -> (B, C, H, W)
template <class T>
Var<T> tokens_to_nchw(const Var<T>& x, int64_t H, int64_t W) {
  const int64_t B = x.size(0), C = x.size(2);
  return ops::permute(ops::reshape(x, {B, H, W, C}), {0, 3, 1, 2});
}
}  // namespace detail

// Training-time state shared by the layers: the mode and the RNG for dropout / drop-path.
struct ForwardContext {
  bool training = false;
  Generator* generator = nullptr;
};

// Overlapping patch embedding: Conv2d(k, stride s, padding k/2) then LayerNorm over channels.
template <class T>
struct SegformerOverlapPatchEmbeddings {
  nn::Conv2d<T> proj;
  nn::LayerNorm<T> layer_norm;

  SegformerOverlapPatchEmbeddings(int64_t patch_size, int64_t stride, int64_t in_channels, int64_t hidden)
      : proj(in_channels, hidden, patch_size, stride, patch_size / 2), layer_norm(hidden) {}

  // pixel (B, C_in, H, W) -> tokens (B, h*w, hidden); h, w returned through out-params.
  Var<T> operator()(const Var<T>& pixel, int64_t& h, int64_t& w) const {
    Var<T> embeddings = proj(pixel);
    h = embeddings.size(2);
    w = embeddings.size(3);
    return layer_norm(detail::nchw_to_tokens(embeddings));
  }
  void visit(const std::string& p, nn::Visitor<T>& v) {
    proj.visit(p + "proj.", v);
    layer_norm.visit(p + "layer_norm.", v);
  }
};

// Efficient self-attention: keys and values come from the sequence reduced by a strided conv.
template <class T>
struct SegformerEfficientSelfAttention {
  int64_t num_attention_heads, sr_ratio;
  double attention_probs_dropout_prob;
  nn::Linear<T> query, key, value;
  nn::Conv2d<T> sr;           // only when sr_ratio > 1
  nn::LayerNorm<T> layer_norm;  // only when sr_ratio > 1

  SegformerEfficientSelfAttention(int64_t hidden, int64_t heads, int64_t sr_ratio_, double attn_dropout)
      : num_attention_heads(heads),
        sr_ratio(sr_ratio_),
        attention_probs_dropout_prob(attn_dropout),
        query(hidden, hidden),
        key(hidden, hidden),
        value(hidden, hidden) {
    SEGML_CHECK(hidden % heads == 0, "SegformerEfficientSelfAttention: hidden size ", hidden,
                " is not a multiple of the number of attention heads ", heads);
    if (sr_ratio > 1) {
      sr = nn::Conv2d<T>(hidden, hidden, sr_ratio, sr_ratio, 0);
      layer_norm = nn::LayerNorm<T>(hidden);
    }
  }

  Var<T> operator()(const Var<T>& hidden_states, int64_t h, int64_t w, const ForwardContext& ctx) const {
    SEGML_CHECK(!(ctx.training && attention_probs_dropout_prob > 0), "SegformerEfficientSelfAttention: "
                "attention_probs_dropout_prob > 0 is not supported in training (got ", attention_probs_dropout_prob, ")");
    Var<T> queries = query(hidden_states);
    Var<T> reduced = hidden_states;
    if (sr_ratio > 1) {
      Var<T> image = detail::tokens_to_nchw(hidden_states, h, w);
      reduced = layer_norm(detail::nchw_to_tokens(sr(image)));
    }
    Var<T> keys = key(reduced);
    Var<T> values = value(reduced);
    return ops::attention(queries, keys, values, num_attention_heads);
  }
  void visit(const std::string& p, nn::Visitor<T>& v) {
    query.visit(p + "query.", v);
    key.visit(p + "key.", v);
    value.visit(p + "value.", v);
    if (sr_ratio > 1) {
      sr.visit(p + "sr.", v);
      layer_norm.visit(p + "layer_norm.", v);
    }
  }
};

// attention = self (efficient attention) followed by output.dense and dropout.
template <class T>
struct SegformerAttention {
  SegformerEfficientSelfAttention<T> self;
  nn::Linear<T> output_dense;
  double hidden_dropout_prob;

  SegformerAttention(int64_t hidden, int64_t heads, int64_t sr_ratio, double attn_dropout, double hidden_dropout)
      : self(hidden, heads, sr_ratio, attn_dropout), output_dense(hidden, hidden), hidden_dropout_prob(hidden_dropout) {}

  Var<T> operator()(const Var<T>& x, int64_t h, int64_t w, const ForwardContext& ctx) const {
    Var<T> out = output_dense(self(x, h, w, ctx));
    return ops::dropout(out, hidden_dropout_prob, ctx.training, *ctx.generator);
  }
  void visit(const std::string& p, nn::Visitor<T>& v) {
    self.visit(p + "self.", v);
    output_dense.visit(p + "output.dense.", v);
  }
};

// Mix-FFN: dense1 -> 3x3 depthwise conv -> GELU -> dense2 (the conv gives positional information).
template <class T>
struct SegformerMixFFN {
  nn::Linear<T> dense1, dense2;
  Var<T> dwconv_weight, dwconv_bias;  // mlp.dwconv.dwconv: (hidden*ratio, 1, 3, 3)
  double hidden_dropout_prob;

  SegformerMixFFN(int64_t in, int64_t hidden, double hidden_dropout)
      : dense1(in, hidden),
        dense2(hidden, in),
        dwconv_weight(nn::make_parameter<T>({hidden, 1, 3, 3})),
        dwconv_bias(nn::make_parameter<T>({hidden})),
        hidden_dropout_prob(hidden_dropout) {}

  Var<T> operator()(const Var<T>& x, int64_t h, int64_t w, const ForwardContext& ctx) const {
    const int64_t B = x.size(0), N = x.size(1);
    Var<T> hidden = dense1(x);
    const int64_t C = hidden.size(2);
    // The tokens (B, h*w, C) are already channels-last: convolve them as NHWC, no transposes.
    hidden = ops::depthwise_conv3x3_nhwc(ops::reshape(hidden, {B, h, w, C}), dwconv_weight, dwconv_bias);
    hidden = ops::gelu(ops::reshape(hidden, {B, N, C}));
    hidden = ops::dropout(hidden, hidden_dropout_prob, ctx.training, *ctx.generator);
    hidden = dense2(hidden);
    return ops::dropout(hidden, hidden_dropout_prob, ctx.training, *ctx.generator);
  }
  void visit(const std::string& p, nn::Visitor<T>& v) {
    dense1.visit(p + "dense1.", v);
    v.parameter(p + "dwconv.dwconv.weight", dwconv_weight);
    v.parameter(p + "dwconv.dwconv.bias", dwconv_bias);
    dense2.visit(p + "dense2.", v);
  }
};

// One transformer block (pre-norm): x += DropPath(Attn(LN1(x))); x += DropPath(MixFFN(LN2(x))).
template <class T>
struct SegformerLayer {
  nn::LayerNorm<T> layer_norm_1;
  SegformerAttention<T> attention;
  double drop_path;
  nn::LayerNorm<T> layer_norm_2;
  SegformerMixFFN<T> mlp;

  SegformerLayer(int64_t hidden, int64_t heads, double drop_path_, int64_t sr_ratio, int64_t mlp_ratio,
                 const SegformerConfig& cfg)
      : layer_norm_1(hidden),
        attention(hidden, heads, sr_ratio, cfg.attention_probs_dropout_prob, cfg.hidden_dropout_prob),
        drop_path(drop_path_),
        layer_norm_2(hidden),
        mlp(hidden, hidden * mlp_ratio, cfg.hidden_dropout_prob) {}

  Var<T> operator()(const Var<T>& x, int64_t h, int64_t w, const ForwardContext& ctx) const {
    Var<T> attn = attention(layer_norm_1(x), h, w, ctx);
    Var<T> hidden = ops::add(x, ops::drop_path(attn, drop_path, ctx.training, *ctx.generator));
    Var<T> ffn = mlp(layer_norm_2(hidden), h, w, ctx);
    return ops::add(hidden, ops::drop_path(ffn, drop_path, ctx.training, *ctx.generator));
  }
  void visit(const std::string& p, nn::Visitor<T>& v) {
    layer_norm_1.visit(p + "layer_norm_1.", v);
    attention.visit(p + "attention.", v);
    layer_norm_2.visit(p + "layer_norm_2.", v);
    mlp.visit(p + "mlp.", v);
  }
};

// The Mix Transformer encoder: 4 stages of (patch embedding, blocks, LayerNorm), each output NCHW.
template <class T>
struct SegformerEncoder {
  std::vector<SegformerOverlapPatchEmbeddings<T>> patch_embeddings;
  std::vector<std::vector<SegformerLayer<T>>> block;
  std::vector<nn::LayerNorm<T>> layer_norm;

  explicit SegformerEncoder(const SegformerConfig& cfg) {
    const int64_t stages = cfg.num_encoder_blocks;
    int64_t total_depth = 0;
    for (int64_t i = 0; i < stages; ++i) total_depth += cfg.depths[i];
    // Stochastic-depth rates rise linearly over all blocks: linspace(0, drop_path_rate, total_depth).
    int64_t cur = 0;
    for (int64_t i = 0; i < stages; ++i) {
      const int64_t in = i == 0 ? cfg.num_channels : cfg.hidden_sizes[i - 1];
      patch_embeddings.emplace_back(cfg.patch_sizes[i], cfg.strides[i], in, cfg.hidden_sizes[i]);
      std::vector<SegformerLayer<T>> layers;
      for (int64_t j = 0; j < cfg.depths[i]; ++j, ++cur) {
        const double rate = total_depth > 1 ? cfg.drop_path_rate * static_cast<double>(cur) / static_cast<double>(total_depth - 1) : 0.0;
        layers.emplace_back(cfg.hidden_sizes[i], cfg.num_attention_heads[i], rate, cfg.sr_ratios[i], cfg.mlp_ratios[i], cfg);
      }
      block.push_back(std::move(layers));
      layer_norm.emplace_back(cfg.hidden_sizes[i]);
    }
  }

  // pixel_values (B, 3, H, W) -> the hidden state of every stage, NCHW.
  std::vector<Var<T>> operator()(const Var<T>& pixel_values, const ForwardContext& ctx) const {
    std::vector<Var<T>> hidden_states;
    Var<T> x = pixel_values;
    for (size_t i = 0; i < block.size(); ++i) {
      int64_t h = 0, w = 0;
      Var<T> tokens = patch_embeddings[i](x, h, w);
      for (const auto& layer : block[i]) tokens = layer(tokens, h, w, ctx);
      x = detail::tokens_to_nchw(layer_norm[i](tokens), h, w);
      hidden_states.push_back(x);
    }
    return hidden_states;
  }
  void visit(const std::string& p, nn::Visitor<T>& v) {
    for (size_t i = 0; i < patch_embeddings.size(); ++i)
      patch_embeddings[i].visit(p + "patch_embeddings." + std::to_string(i) + ".", v);
    for (size_t i = 0; i < block.size(); ++i)
      for (size_t j = 0; j < block[i].size(); ++j)
        block[i][j].visit(p + "block." + std::to_string(i) + "." + std::to_string(j) + ".", v);
    for (size_t i = 0; i < layer_norm.size(); ++i) layer_norm[i].visit(p + "layer_norm." + std::to_string(i) + ".", v);
  }
};

// The all-MLP decode head: project every stage to decoder_hidden_size, upsample to stage 1's
// resolution, concatenate (deepest first), fuse with a 1x1 conv + BatchNorm + ReLU, classify.
// (The forward evaluates the projections and the fuse in the cheaper, equal order described below.)
template <class T>
struct SegformerDecodeHead {
  std::vector<nn::Linear<T>> linear_c;  // linear_c.{i}.proj
  nn::Conv2d<T> linear_fuse;
  nn::BatchNorm2d<T> batch_norm;
  double classifier_dropout_prob;
  nn::Conv2d<T> classifier;

  explicit SegformerDecodeHead(const SegformerConfig& cfg)
      : linear_fuse(cfg.decoder_hidden_size * cfg.num_encoder_blocks, cfg.decoder_hidden_size, 1, 1, 0, /*bias=*/false),
        batch_norm(cfg.decoder_hidden_size),
        classifier_dropout_prob(cfg.classifier_dropout_prob),
        classifier(cfg.decoder_hidden_size, cfg.num_labels, 1, 1, 0) {
    for (int64_t i = 0; i < cfg.num_encoder_blocks; ++i) linear_c.emplace_back(cfg.hidden_sizes[i], cfg.decoder_hidden_size);
  }

  // Also returns the fused features (after linear_fuse) through `fused` when non-null, for debugging.
  //
  // linear_fuse(concat_i up(linear_c.i(x_i))) is computed in the cheap order (the algebra is in
  // docs/ops/decode_head_folding.md). Split linear_fuse's weight into the D x D blocks Wf_i that read
  // stage i's slice of the concatenation (deepest stage first, as HF concatenates); bilinear
  // upsampling acts on each channel separately and keeps constants, so it commutes with Wf_i:
  //     fused = Σ_i up(x_i (Wf_i Wc_i)ᵀ + Wf_i bc_i).
  // The same function, but every product runs at its stage's own resolution and the 4·D-channel
  // tensor at stride 4 never exists. Autograd differentiates through the weight products, so
  // linear_c and linear_fuse get their exact gradients.
  Var<T> operator()(const std::vector<Var<T>>& hidden_states, const ForwardContext& ctx, Var<T>* fused = nullptr) {
    const int64_t S = static_cast<int64_t>(hidden_states.size()), D = linear_fuse.weight.size(0);
    const int64_t H1 = hidden_states[0].size(2), W1 = hidden_states[0].size(3);
    const Var<T> fuse_weight = ops::reshape(linear_fuse.weight, {D, S * D});
    Var<T> hidden;
    for (int64_t i = 0; i < S; ++i) {
      const Var<T>& state = hidden_states[static_cast<size_t>(i)];
      const int64_t h = state.size(2), w = state.size(3);
      const Var<T> fuse_i = ops::narrow(fuse_weight, 1, (S - 1 - i) * D, D);                            // Wf_i (D, D)
      const Var<T> weight = ops::linear(fuse_i, ops::permute(linear_c[i].weight, {1, 0}));               // Wf_i Wc_i
      const Var<T> bias = ops::reshape(ops::linear(ops::reshape(linear_c[i].bias, {1, D}), fuse_i), {D});  // Wf_i bc_i
      // A 1x1 conv on the NCHW state: a GEMM on it as it lies, no transposes.
      Var<T> proj = ops::conv2d(state, ops::reshape(weight, {D, state.size(1), 1, 1}), bias, {1, 1}, {0, 0}, 1);
      if (h != H1 || w != W1) proj = ops::resize_bilinear(proj, H1, W1);
      hidden = hidden.defined() ? ops::add(hidden, proj) : proj;
    }
    if (fused) *fused = hidden;
    hidden = ops::relu(batch_norm(hidden, ctx.training));
    hidden = ops::dropout(hidden, classifier_dropout_prob, ctx.training, *ctx.generator);
    return classifier(hidden);
  }
  void visit(const std::string& p, nn::Visitor<T>& v) {
    for (size_t i = 0; i < linear_c.size(); ++i) linear_c[i].visit(p + "linear_c." + std::to_string(i) + ".proj.", v);
    linear_fuse.visit(p + "linear_fuse.", v);
    batch_norm.visit(p + "batch_norm.", v);
    classifier.visit(p + "classifier.", v);
  }
};

template <class T>
struct SegformerOutput {
  Var<T> logits;                     // (B, num_labels, ceil(H/4), ceil(W/4))
  Var<T> loss;                       // scalar, when labels were given
  std::vector<Var<T>> hidden_states;  // each encoder stage, NCHW
  Var<T> fused;                      // decode head after linear_fuse (debugging / parity tests)
};

template <class T = float>
class SegformerForSemanticSegmentation {
 public:
  SegformerConfig config;
  SegformerEncoder<T> encoder;  // "segformer.encoder."
  SegformerDecodeHead<T> decode_head;

  explicit SegformerForSemanticSegmentation(const SegformerConfig& cfg, uint64_t seed = 0)
      : config(cfg), encoder(cfg), decode_head(cfg), generator_(seed) {
    SEGML_CHECK(cfg.num_labels >= 1, "SegformerForSemanticSegmentation: num_labels must be >= 1, got ", cfg.num_labels);
    init_weights(seed);
  }

  void train(bool on = true) { training_ = on; }
  void eval() { training_ = false; }
  bool training() const { return training_; }
  Generator& generator() { return generator_; }

  // The BatchNorm layers (the decode head's), for synchronising them in data-parallel training.
  std::vector<nn::BatchNorm2d<T>*> batch_norms() { return {&decode_head.batch_norm}; }

  // HF's base_model_prefix "segformer": a bare SegformerModel checkpoint names its keys "encoder.*".
  static nn::BaseModelPrefix base_model_prefix() { return {"segformer.", {"segformer.", "decode_head."}, {"encoder."}}; }

  // Every parameter and buffer with its HF state-dict key, in PyTorch's order.
  void visit(nn::Visitor<T>& v) {
    encoder.visit("segformer.encoder.", v);
    decode_head.visit("decode_head.", v);
  }

  // HF's _init_weights: Linear and Conv2d weights ~ N(0, initializer_range), biases 0, LayerNorm
  // weight 1 / bias 0, BatchNorm at PyTorch's defaults (weight 1, bias 0, running stats 0 / 1).
  void init_weights(uint64_t seed) {
    Generator g(seed);
    const double std = config.initializer_range;
    nn::Visitor<T> v;
    v.parameter = [&](const std::string& name, Var<T>& p) {
      Tensor<T>& t = p.data();
      const bool is_norm = name.find("layer_norm") != std::string::npos || name.find("batch_norm") != std::string::npos;
      const bool is_bias = name.ends_with("bias");
      if (is_norm)
        t.fill_(is_bias ? T(0) : T(1));
      else if (is_bias)
        t.fill_(T(0));
      else
        for (int64_t i = 0; i < t.numel(); ++i) t.data()[i] = static_cast<T>(g.normal() * std);
    };
    v.buffer = [](const std::string&, Tensor<T>&) {};
    visit(v);
  }

  // pixel_values (B, 3, H, W); labels (B, H', W') optional: any size, logits are upsampled to it.
  SegformerOutput<T> forward(const Var<T>& pixel_values, const Tensor<int64_t>* labels = nullptr) {
    SEGML_CHECK(pixel_values.dim() == 4 && pixel_values.size(1) == config.num_channels,
                "SegformerForSemanticSegmentation: pixel_values must be (B, ", config.num_channels, ", H, W), got ",
                pixel_values.shape());
    ForwardContext ctx{training_, &generator_};
    SegformerOutput<T> out;
    out.hidden_states = encoder(pixel_values, ctx);
    out.logits = decode_head(out.hidden_states, ctx, &out.fused);
    if (labels) out.loss = loss(out.logits, *labels);
    return out;
  }

  // HF's semantic-segmentation loss: logits upsampled (bilinear, align_corners=False) to the label
  // size, then cross-entropy ignoring semantic_loss_ignore_index (mean over the other pixels).
  Var<T> loss(const Var<T>& logits, const Tensor<int64_t>& labels) const {
    SEGML_CHECK(labels.dim() == 3 && labels.size(0) == logits.size(0), "SegformerForSemanticSegmentation: labels must be (B=",
                logits.size(0), ", H, W), got ", labels.shape());
    SEGML_CHECK(config.num_labels > 1, "SegformerForSemanticSegmentation: the loss for num_labels == 1 is not supported");
    // One fused pass: the upsampled logits (B, num_labels, H', W') are never materialised.
    return ops::upsampled_cross_entropy(logits, labels, config.semantic_loss_ignore_index);
  }

 private:
  bool training_ = false;
  Generator generator_;
};

}  // namespace segml
