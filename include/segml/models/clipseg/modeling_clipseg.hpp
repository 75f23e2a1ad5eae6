// segml/models/clipseg/modeling_clipseg.hpp: CLIPSegForImageSegmentation, class by class as HF's
// modeling_clipseg.py, on the differentiable ops.
//
//   CLIPSegForImageSegmentation<float> model(CLIPSegConfig::rd64_refined());
//   auto out = model.forward(pixel_values, input_ids);   // (B, 3, H, W), (B, L) -> logits (B, H, W)
//
// CLIPSeg (Lüddecke & Ecker, "Image Segmentation Using Text and Image Prompts", CVPR 2022) puts a
// small transformer decoder on a frozen CLIP:
//  1. The CLIP vision transformer (ViT: class token + patch tokens, pre-norm layers) runs on the
//     image; the decoder reads its hidden states after the layers in `extract_layers`.
//  2. The CLIP text transformer (causal, pre-norm) runs on the prompt; its output at the EOS token,
//     projected by `text_projection`, is the prompt's conditional embedding.
//  3. The decoder walks the extracted states from the deepest up: each is reduced to `reduce_dim`
//     and added to the running output; at `conditional_layer` the output is modulated by the prompt
//     (FiLM: out * film_mul(e) + film_add(e)); then a post-norm transformer layer (ReLU MLP).
//  4. The class token is dropped, the tokens are laid out on the patch grid, and transposed
//     convolutions take the grid back to pixels: one logit per pixel and prompt.
//
// Guarantees:
//  - visit() yields HF's state-dict keys in PyTorch's registration order ("clip.text_model.…",
//    "clip.vision_model.…", "clip.visual_projection.weight", "clip.text_projection.weight",
//    "clip.logit_scale", "decoder.…"), so loading and saving are name-for-name.
//  - forward() equals HF's CLIPSegForImageSegmentation on square inputs (tests/test_clipseg.cpp
//    compares every stage with the PyTorch reference in tools/clipseg_ref.py), including the
//    position embeddings interpolated bicubically to the input's patch grid, HF's two EOS pooling
//    rules, and the decoder's ReLU whatever decoder_hidden_act says. Beyond HF: a non-square input
//    (H/p != W/p) is laid out on its (H/p, W/p) grid where HF's square-root reshape fails.
//  - The padding mask of the text model is not applied: with the causal mask, positions up to the
//    first EOS (the pooled one) never see the padding after it, so the pooled output, the conditional
//    embeddings and the logits are exactly HF's; only the hidden states of the padding positions
//    themselves differ.
// Not done: the contrastive CLIPSegModel head (logits_per_image), image prompts
// (conditional_pixel_values), and the BCE loss for fine-tuning.
#pragma once

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "segml/autograd/variable.hpp"
#include "segml/core/random.hpp"
#include "segml/models/clipseg/configuration_clipseg.hpp"
#include "segml/nn/module.hpp"
#include "segml/ops/activation.hpp"
#include "segml/ops/attention.hpp"
#include "segml/ops/concat.hpp"
#include "segml/ops/conv.hpp"
#include "segml/ops/elementwise.hpp"
#include "segml/ops/embedding.hpp"
#include "segml/ops/resize.hpp"

namespace segml {

namespace clipseg_detail {

// The activations CLIPSeg's configs use: HF's ACT2FN names.
template <class T>
Var<T> activation(const std::string& name, const Var<T>& x) {
  if (name == "quick_gelu") return ops::quick_gelu(x);
  if (name == "gelu") return ops::gelu(x);
  if (name == "relu") return ops::relu(x);
  fail("CLIPSeg: hidden_act '", name, "' is not implemented (segml has quick_gelu, gelu and relu)");
}

inline void check_activation(const std::string& field, const std::string& name) {
  if (name != "quick_gelu" && name != "gelu" && name != "relu")
    fail("CLIPSeg: config field '", field, "' is '", name, "'; segml implements quick_gelu, gelu and relu");
}

}  // namespace clipseg_detail

// Multi-head self-attention (HF registers k_proj, v_proj, q_proj, out_proj in that order).
template <class T>
struct CLIPSegAttention {
  nn::Linear<T> k_proj, v_proj, q_proj, out_proj;
  int64_t num_heads = 1;
  CLIPSegAttention() = default;
  CLIPSegAttention(int64_t hidden, int64_t heads)
      : k_proj(hidden, hidden), v_proj(hidden, hidden), q_proj(hidden, hidden), out_proj(hidden, hidden), num_heads(heads) {}
  // x (B, N, D); causal: token i attends to tokens <= i (the text model).
  Var<T> operator()(const Var<T>& x, bool causal) const {
    return out_proj(ops::attention(q_proj(x), k_proj(x), v_proj(x), num_heads, causal));
  }
  void visit(const std::string& p, nn::Visitor<T>& v) {
    k_proj.visit(p + "k_proj.", v);
    v_proj.visit(p + "v_proj.", v);
    q_proj.visit(p + "q_proj.", v);
    out_proj.visit(p + "out_proj.", v);
  }
};

// fc1 -> activation -> fc2.
template <class T>
struct CLIPSegMLP {
  nn::Linear<T> fc1, fc2;
  std::string hidden_act;
  CLIPSegMLP() = default;
  CLIPSegMLP(int64_t hidden, int64_t intermediate, std::string act)
      : fc1(hidden, intermediate), fc2(intermediate, hidden), hidden_act(std::move(act)) {}
  Var<T> operator()(const Var<T>& x) const { return fc2(clipseg_detail::activation(hidden_act, fc1(x))); }
  void visit(const std::string& p, nn::Visitor<T>& v) {
    fc1.visit(p + "fc1.", v);
    fc2.visit(p + "fc2.", v);
  }
};

// One transformer layer. The CLIP towers are pre-norm (CLIPSegEncoderLayer):
//   x = x + attn(ln1(x));  x = x + mlp(ln2(x)).
// The decoder is post-norm (CLIPSegDecoderLayer), same parameters:
//   x = ln1(x + attn(x));  x = ln2(x + mlp(x)).
template <class T>
struct CLIPSegLayer {
  CLIPSegAttention<T> self_attn;
  nn::LayerNorm<T> layer_norm1;
  CLIPSegMLP<T> mlp;
  nn::LayerNorm<T> layer_norm2;
  bool post_norm = false;
  CLIPSegLayer() = default;
  CLIPSegLayer(int64_t hidden, int64_t heads, int64_t intermediate, const std::string& act, double eps, bool post)
      : self_attn(hidden, heads),
        layer_norm1(hidden, T(eps)),
        mlp(hidden, intermediate, act),
        layer_norm2(hidden, T(eps)),
        post_norm(post) {}
  Var<T> operator()(const Var<T>& x, bool causal = false) const {
    if (post_norm) {
      const Var<T> h = layer_norm1(ops::add(x, self_attn(x, causal)));
      return layer_norm2(ops::add(h, mlp(h)));
    }
    const Var<T> h = ops::add(x, self_attn(layer_norm1(x), causal));
    return ops::add(h, mlp(layer_norm2(h)));
  }
  void visit(const std::string& p, nn::Visitor<T>& v) {
    self_attn.visit(p + "self_attn.", v);
    layer_norm1.visit(p + "layer_norm1.", v);
    mlp.visit(p + "mlp.", v);
    layer_norm2.visit(p + "layer_norm2.", v);
  }
};

// Token + position embeddings of the text model.
template <class T>
struct CLIPSegTextEmbeddings {
  Var<T> token_embedding, position_embedding;  // (vocab_size, D), (max_position_embeddings, D)
  CLIPSegTextEmbeddings() = default;
  explicit CLIPSegTextEmbeddings(const CLIPSegTextConfig& c)
      : token_embedding(nn::make_parameter<T>({c.vocab_size, c.hidden_size})),
        position_embedding(nn::make_parameter<T>({c.max_position_embeddings, c.hidden_size})) {}
  // input_ids (B, L) -> (B, L, D); positions 0..L-1.
  Var<T> operator()(const Tensor<int64_t>& input_ids) const {
    const int64_t B = input_ids.size(0), L = input_ids.size(1), D = token_embedding.size(1);
    SEGML_CHECK(L <= position_embedding.size(0), "CLIPSegTextEmbeddings: sequence length ", L,
                " exceeds max_position_embeddings (", position_embedding.size(0), ")");
    const Var<T> positions = ops::reshape(ops::narrow(position_embedding, 0, 0, L), {1, L, D});
    return ops::add(ops::embedding(token_embedding, input_ids), ops::expand(positions, {B, L, D}));
  }
  void visit(const std::string& p, nn::Visitor<T>& v) {
    v.parameter(p + "token_embedding.weight", token_embedding);
    v.parameter(p + "position_embedding.weight", position_embedding);
  }
};

template <class T>
struct CLIPSegTextOutput {
  Var<T> last_hidden_state;  // (B, L, D), after final_layer_norm
  Var<T> pooler_output;      // (B, D), last_hidden_state at each row's EOS position
};

// The CLIP text transformer.
template <class T>
struct CLIPSegTextTransformer {
  CLIPSegTextEmbeddings<T> embeddings;
  std::vector<CLIPSegLayer<T>> layers;  // "encoder.layers.{i}."
  nn::LayerNorm<T> final_layer_norm;
  int64_t eos_token_id = 2;
  CLIPSegTextTransformer() = default;
  explicit CLIPSegTextTransformer(const CLIPSegTextConfig& c)
      : embeddings(c), final_layer_norm(c.hidden_size, T(c.layer_norm_eps)), eos_token_id(c.eos_token_id) {
    for (int64_t i = 0; i < c.num_hidden_layers; ++i)
      layers.emplace_back(c.hidden_size, c.num_attention_heads, c.intermediate_size, c.hidden_act, c.layer_norm_eps, false);
  }

  // HF's pooling position for one row of ids: eos_token_id == 2 (legacy configs) -> the first
  // position of the largest id; otherwise the first position holding eos_token_id (0 if none).
  static int64_t eos_position(const int64_t* ids, int64_t L, int64_t eos_token_id) {
    int64_t best = 0;
    if (eos_token_id == 2) {
      for (int64_t j = 1; j < L; ++j)
        if (static_cast<int32_t>(ids[j]) > static_cast<int32_t>(ids[best])) best = j;  // HF casts to int32
      return best;
    }
    for (int64_t j = 0; j < L; ++j)
      if (ids[j] == eos_token_id) return j;
    return 0;
  }

  CLIPSegTextOutput<T> operator()(const Tensor<int64_t>& input_ids) const {
    SEGML_CHECK(input_ids.dim() == 2 && input_ids.size(1) >= 1, "CLIPSegTextTransformer: input_ids must be (B, L), got ",
                input_ids.shape());
    Var<T> h = embeddings(input_ids);
    for (const auto& layer : layers) h = layer(h, /*causal=*/true);
    CLIPSegTextOutput<T> out;
    out.last_hidden_state = final_layer_norm(h);
    const int64_t B = input_ids.size(0), L = input_ids.size(1);
    const Tensor<int64_t> ids = input_ids.contiguous();
    std::vector<Var<T>> rows;
    for (int64_t b = 0; b < B; ++b) {
      const int64_t pos = eos_position(ids.data() + b * L, L, eos_token_id);
      rows.push_back(ops::narrow(ops::narrow(out.last_hidden_state, 0, b, 1), 1, pos, 1));  // (1, 1, D)
    }
    out.pooler_output = ops::reshape(ops::concat(rows, 0), {B, out.last_hidden_state.size(2)});
    return out;
  }
  void visit(const std::string& p, nn::Visitor<T>& v) {
    embeddings.visit(p + "embeddings.", v);
    for (size_t i = 0; i < layers.size(); ++i) layers[i].visit(p + "encoder.layers." + std::to_string(i) + ".", v);
    final_layer_norm.visit(p + "final_layer_norm.", v);
  }
};

// Class token, patch embedding (a conv with kernel = stride = patch_size, no bias), and position
// embeddings for the stored grid x grid patches + the class token.
template <class T>
struct CLIPSegVisionEmbeddings {
  Var<T> class_embedding;     // (D)
  nn::Conv2d<T> patch_embedding;
  Var<T> position_embedding;  // (grid * grid + 1, D)
  int64_t patch_size = 16, grid = 14;
  CLIPSegVisionEmbeddings() = default;
  explicit CLIPSegVisionEmbeddings(const CLIPSegVisionConfig& c)
      : class_embedding(nn::make_parameter<T>({c.hidden_size})),
        patch_embedding(c.num_channels, c.hidden_size, c.patch_size, c.patch_size, 0, /*with_bias=*/false),
        position_embedding(nn::make_parameter<T>({c.grid() * c.grid() + 1, c.hidden_size})),
        patch_size(c.patch_size),
        grid(c.grid()) {}

  // The position embeddings for a gh x gw patch grid of an H x W input, (gh * gw + 1, D). HF uses the
  // stored ones when the grid has as many patches as stored and the input is square; otherwise the
  // patch rows are resized bicubically (align_corners=False) to (gh, gw) and the class row is kept.
  Var<T> positions(int64_t H, int64_t W, int64_t gh, int64_t gw) const {
    if (gh * gw == grid * grid && H == W) return position_embedding;
    const int64_t D = position_embedding.size(1);
    const Var<T> patch = ops::permute(ops::reshape(ops::narrow(position_embedding, 0, 1, grid * grid), {1, grid, grid, D}),
                                      {0, 3, 1, 2});                                        // (1, D, grid, grid)
    const Var<T> resized = ops::resize_bicubic(patch, gh, gw);                              // (1, D, gh, gw)
    const Var<T> rows = ops::reshape(ops::permute(resized, {0, 2, 3, 1}), {gh * gw, D});
    return ops::concat<T>({ops::narrow(position_embedding, 0, 0, 1), rows}, 0);
  }

  // pixel_values (B, C, H, W) -> (B, 1 + gh * gw, D) with gh = H / p, gw = W / p (floor, as the conv).
  Var<T> operator()(const Var<T>& pixel_values) const {
    const int64_t B = pixel_values.size(0), H = pixel_values.size(2), W = pixel_values.size(3);
    const int64_t D = class_embedding.size(0);
    SEGML_CHECK(H >= patch_size && W >= patch_size, "CLIPSegVisionEmbeddings: the input (", H, "x", W,
                ") is smaller than one patch (", patch_size, "x", patch_size, ")");
    const Var<T> patches = patch_embedding(pixel_values);  // (B, D, gh, gw)
    const int64_t gh = patches.size(2), gw = patches.size(3), N = gh * gw;
    const Var<T> tokens = ops::reshape(ops::permute(patches, {0, 2, 3, 1}), {B, N, D});
    const Var<T> cls = ops::expand(ops::reshape(class_embedding, {1, 1, D}), {B, 1, D});
    const Var<T> embeddings = ops::concat<T>({cls, tokens}, 1);
    const Var<T> pos = ops::reshape(positions(H, W, gh, gw), {1, N + 1, D});
    return ops::add(embeddings, ops::expand(pos, {B, N + 1, D}));
  }
  void visit(const std::string& p, nn::Visitor<T>& v) {
    v.parameter(p + "class_embedding", class_embedding);
    patch_embedding.visit(p + "patch_embedding.", v);
    v.parameter(p + "position_embedding.weight", position_embedding);
  }
};

template <class T>
struct CLIPSegVisionOutput {
  std::vector<Var<T>> hidden_states;  // [0]: after pre_layrnorm; [i + 1]: after layer i
  Var<T> pooler_output;               // post_layernorm(last hidden state's class token), (B, D)
  int64_t grid_h = 0, grid_w = 0;     // the patch grid
};

// The CLIP vision transformer (HF spells its first norm "pre_layrnorm").
template <class T>
struct CLIPSegVisionTransformer {
  CLIPSegVisionEmbeddings<T> embeddings;
  nn::LayerNorm<T> pre_layrnorm;
  std::vector<CLIPSegLayer<T>> layers;  // "encoder.layers.{i}."
  nn::LayerNorm<T> post_layernorm;
  CLIPSegVisionTransformer() = default;
  explicit CLIPSegVisionTransformer(const CLIPSegVisionConfig& c)
      : embeddings(c), pre_layrnorm(c.hidden_size, T(c.layer_norm_eps)), post_layernorm(c.hidden_size, T(c.layer_norm_eps)) {
    for (int64_t i = 0; i < c.num_hidden_layers; ++i)
      layers.emplace_back(c.hidden_size, c.num_attention_heads, c.intermediate_size, c.hidden_act, c.layer_norm_eps, false);
  }
  // num_layers < 0: all; otherwise only the first num_layers run (no pooler_output then).
  CLIPSegVisionOutput<T> operator()(const Var<T>& pixel_values, int64_t num_layers = -1) const {
    CLIPSegVisionOutput<T> out;
    Var<T> h = pre_layrnorm(embeddings(pixel_values));
    out.grid_h = pixel_values.size(2) / embeddings.patch_size;
    out.grid_w = pixel_values.size(3) / embeddings.patch_size;
    out.hidden_states.push_back(h);
    const int64_t n = num_layers < 0 ? int64_t(layers.size()) : std::min<int64_t>(num_layers, int64_t(layers.size()));
    for (int64_t i = 0; i < n; ++i) {
      h = layers[size_t(i)](h);
      out.hidden_states.push_back(h);
    }
    if (n == int64_t(layers.size())) {
      const int64_t B = h.size(0), D = h.size(2);
      out.pooler_output = post_layernorm(ops::reshape(ops::narrow(h, 1, 0, 1), {B, D}));
    }
    return out;
  }
  void visit(const std::string& p, nn::Visitor<T>& v) {
    embeddings.visit(p + "embeddings.", v);
    pre_layrnorm.visit(p + "pre_layrnorm.", v);
    for (size_t i = 0; i < layers.size(); ++i) layers[i].visit(p + "encoder.layers." + std::to_string(i) + ".", v);
    post_layernorm.visit(p + "post_layernorm.", v);
  }
};

// HF's CLIPSegModel: the two towers and their projections ("clip.").
template <class T>
struct CLIPSegModel {
  CLIPSegTextTransformer<T> text_model;
  CLIPSegVisionTransformer<T> vision_model;
  nn::Linear<T> visual_projection, text_projection;  // no bias
  Var<T> logit_scale;                                // shape [] (a scalar)
  CLIPSegModel() = default;
  explicit CLIPSegModel(const CLIPSegConfig& c)
      : text_model(c.text_config),
        vision_model(c.vision_config),
        visual_projection(c.vision_config.hidden_size, c.projection_dim, false),
        text_projection(c.text_config.hidden_size, c.projection_dim, false),
        logit_scale(nn::make_parameter<T>({})) {
    logit_scale.data().fill_(T(c.logit_scale_init_value));
  }
  // text_projection(pooled text output), (B, projection_dim).
  Var<T> get_text_features(const Tensor<int64_t>& input_ids, Var<T>* pooled = nullptr) const {
    const CLIPSegTextOutput<T> t = text_model(input_ids);
    if (pooled) *pooled = t.pooler_output;
    return text_projection(t.pooler_output);
  }
  void visit(const std::string& p, nn::Visitor<T>& v) {
    text_model.visit(p + "text_model.", v);
    vision_model.visit(p + "vision_model.", v);
    visual_projection.visit(p + "visual_projection.", v);
    text_projection.visit(p + "text_projection.", v);
    v.parameter(p + "logit_scale", logit_scale);
  }
};

// torch.nn.ConvTranspose2d, groups 1. weight (in, out, k, k), bias (out).
template <class T>
struct ConvTranspose2d {
  Var<T> weight, bias;
  int64_t stride = 1;
  ConvTranspose2d() = default;
  ConvTranspose2d(int64_t in, int64_t out, int64_t kernel, int64_t stride_)
      : weight(nn::make_parameter<T>({in, out, kernel, kernel})), bias(nn::make_parameter<T>({out})), stride(stride_) {}
  Var<T> operator()(const Var<T>& x) const { return ops::conv_transpose2d(x, weight, bias, stride, 0); }
  void visit(const std::string& p, nn::Visitor<T>& v) {
    v.parameter(p + "weight", weight);
    v.parameter(p + "bias", bias);
  }
};

template <class T>
struct CLIPSegDecoderOutput {
  Var<T> logits;                      // (B, gh * p, gw * p)
  std::vector<Var<T>> hidden_states;  // each decoder layer's output, (B, 1 + gh * gw, reduce_dim)
};

// The decoder ("decoder."; HF registers film_mul, film_add, transposed_convolution, reduces, layers).
template <class T>
struct CLIPSegDecoder {
  int64_t conditional_layer = 0;
  nn::Linear<T> film_mul, film_add;
  // use_complex_transposed_convolution: "transposed_convolution.{0,2,4}" = conv 3x3 -> ReLU ->
  // tconv(p/4) -> ReLU -> tconv(p/4); otherwise "transposed_convolution" = one tconv(p).
  bool complex = false;
  nn::Conv2d<T> conv0;
  ConvTranspose2d<T> tconv2, tconv4, tconv;
  std::vector<nn::Linear<T>> reduces;
  std::vector<CLIPSegLayer<T>> layers;

  CLIPSegDecoder() = default;
  explicit CLIPSegDecoder(const CLIPSegConfig& c)
      : conditional_layer(c.conditional_layer),
        film_mul(c.projection_dim, c.reduce_dim),
        film_add(c.projection_dim, c.reduce_dim),
        complex(c.use_complex_transposed_convolution) {
    const int64_t R = c.reduce_dim, p = c.vision_config.patch_size;
    if (complex) {
      conv0 = nn::Conv2d<T>(R, R, 3, 1, 1);
      tconv2 = ConvTranspose2d<T>(R, R / 2, p / 4, p / 4);
      tconv4 = ConvTranspose2d<T>(R / 2, 1, p / 4, p / 4);
    } else {
      tconv = ConvTranspose2d<T>(R, 1, p, p);
    }
    for (size_t i = 0; i < c.extract_layers.size(); ++i) reduces.emplace_back(c.vision_config.hidden_size, R);
    // HF copies the vision config and sets hidden_act = "relu" (decoder_hidden_act is not used).
    for (size_t i = 0; i < c.extract_layers.size(); ++i)
      layers.emplace_back(R, c.decoder_num_attention_heads, c.decoder_intermediate_size, "relu",
                          c.vision_config.layer_norm_eps, /*post_norm=*/true);
  }

  // The transposed-convolution head: (B, R, gh, gw) -> (B, gh * p, gw * p).
  Var<T> head(const Var<T>& x) const {
    const Var<T> y = complex ? tconv4(ops::relu(tconv2(ops::relu(conv0(x))))) : tconv(x);
    return ops::reshape(y, {y.size(0), y.size(2), y.size(3)});
  }

  // activations: the vision hidden states at extract_layers, shallowest first, each (B, 1 + gh*gw, Dv);
  // conditional_embeddings (B, projection_dim).
  CLIPSegDecoderOutput<T> operator()(const std::vector<Var<T>>& activations, const Var<T>& conditional_embeddings,
                                     int64_t gh, int64_t gw) const {
    SEGML_CHECK(activations.size() == layers.size(), "CLIPSegDecoder: expected ", layers.size(), " activations, got ",
                activations.size());
    CLIPSegDecoderOutput<T> out;
    Var<T> h;
    for (size_t i = 0; i < layers.size(); ++i) {
      const Var<T> reduced = reduces[i](activations[activations.size() - 1 - i]);  // deepest first
      h = h.defined() ? ops::add(reduced, h) : reduced;
      if (int64_t(i) == conditional_layer) {  // FiLM, per batch entry
        const int64_t B = h.size(0), N = h.size(1), R = h.size(2);
        const Var<T> m = ops::expand(ops::reshape(film_mul(conditional_embeddings), {B, 1, R}), {B, N, R});
        const Var<T> a = ops::expand(ops::reshape(film_add(conditional_embeddings), {B, 1, R}), {B, N, R});
        h = ops::add(ops::mul(m, h), a);
      }
      h = layers[i](h);
      out.hidden_states.push_back(h);
    }
    const int64_t B = h.size(0), N = h.size(1), R = h.size(2);
    SEGML_CHECK(N - 1 == gh * gw, "CLIPSegDecoder: ", N - 1, " patch tokens do not fill a ", gh, "x", gw, " grid");
    const Var<T> grid = ops::reshape(ops::permute(ops::narrow(h, 1, 1, N - 1), {0, 2, 1}), {B, R, gh, gw});
    out.logits = head(grid);
    return out;
  }
  void visit(const std::string& p, nn::Visitor<T>& v) {
    film_mul.visit(p + "film_mul.", v);
    film_add.visit(p + "film_add.", v);
    if (complex) {
      conv0.visit(p + "transposed_convolution.0.", v);
      tconv2.visit(p + "transposed_convolution.2.", v);
      tconv4.visit(p + "transposed_convolution.4.", v);
    } else {
      tconv.visit(p + "transposed_convolution.", v);
    }
    for (size_t i = 0; i < reduces.size(); ++i) reduces[i].visit(p + "reduces." + std::to_string(i) + ".", v);
    for (size_t i = 0; i < layers.size(); ++i) layers[i].visit(p + "layers." + std::to_string(i) + ".", v);
  }
};

template <class T>
struct CLIPSegImageSegmentationOutput {
  Var<T> logits;                  // (B, H', W'): one logit per pixel; H' = (H / p) * p
  Var<T> conditional_embeddings;  // (B, projection_dim)
  Var<T> text_pooled;             // the text model's pooled output, (B, text hidden_size)
  CLIPSegVisionOutput<T> vision;  // hidden states up to the deepest extract layer
  CLIPSegDecoderOutput<T> decoder;
};

template <class T = float>
class CLIPSegForImageSegmentation {
 public:
  CLIPSegConfig config;
  CLIPSegModel<T> clip;
  CLIPSegDecoder<T> decoder;

  // initialize = false leaves the weights at zero (LayerNorms at 1): for loading, which initialises
  // only what the checkpoint lacks (init_weights with `only`).
  explicit CLIPSegForImageSegmentation(const CLIPSegConfig& cfg, uint64_t seed = 0, bool initialize = true)
      : config(checked(cfg)), clip(cfg), decoder(cfg) {
    if (initialize) init_weights(seed);
  }

  // HF's base_model_prefix "clip": a bare CLIPSegModel checkpoint has no "clip." (and no decoder).
  static nn::BaseModelPrefix base_model_prefix() {
    return {"clip.",
            {"clip.", "decoder."},
            {"text_model.", "vision_model.", "visual_projection.", "text_projection.", "logit_scale"},
            {"embeddings.position_ids"}};
  }

  // Every parameter with its HF state-dict key, in PyTorch's order.
  void visit(nn::Visitor<T>& v) {
    clip.visit("clip.", v);
    decoder.visit("decoder.", v);
  }

  // HF's _init_weights in spirit: weights ~ N(0, std) with CLIP's per-module scales, biases 0,
  // LayerNorms 1 / 0, logit_scale = logit_scale_init_value. (Not HF's random stream.) With `only`,
  // just the tensors it names.
  void init_weights(uint64_t seed, const std::vector<std::string>* only = nullptr) {
    Generator g(seed);
    const double f = config.vision_config.initializer_factor;
    auto std_for = [&](const std::string& name, int64_t fan) -> double {
      if (name.find("embedding") != std::string::npos) return 0.02 * f;
      return std::pow(double(std::max<int64_t>(fan, 1)), -0.5) * f;
    };
    nn::Visitor<T> v;
    v.parameter = [&](const std::string& name, Var<T>& p) {
      if (only && std::find(only->begin(), only->end(), name) == only->end()) return;
      Tensor<T>& t = p.data();
      const bool is_norm = name.find("layer_norm") != std::string::npos || name.find("layrnorm") != std::string::npos ||
                           name.find("layernorm") != std::string::npos;
      if (name.ends_with("logit_scale")) {
        t.fill_(T(config.logit_scale_init_value));
      } else if (is_norm) {
        t.fill_(name.ends_with("bias") ? T(0) : T(1));
      } else if (name.ends_with("bias")) {
        t.fill_(T(0));
      } else {
        const int64_t fan = t.dim() >= 2 ? t.numel() / t.size(0) : t.numel();
        const double s = std_for(name, fan);
        for (int64_t i = 0; i < t.numel(); ++i) t.data()[i] = static_cast<T>(g.normal() * s);
      }
    };
    v.buffer = [](const std::string&, Tensor<T>&) {};
    visit(v);
  }

  // The deepest vision layer the decoder reads (later layers do not change the logits).
  int64_t vision_layers_needed() const {
    return *std::max_element(config.extract_layers.begin(), config.extract_layers.end()) + 1;
  }

  // pixel_values (B, C, H, W) with one prompt per image: input_ids (B, L).
  CLIPSegImageSegmentationOutput<T> forward(const Var<T>& pixel_values, const Tensor<int64_t>& input_ids) const {
    SEGML_CHECK(input_ids.dim() == 2 && input_ids.size(0) == pixel_values.size(0),
                "CLIPSegForImageSegmentation: input_ids must be (B, L) with one prompt per image (B = ",
                pixel_values.dim() >= 1 ? pixel_values.size(0) : 0, "), got ", input_ids.shape());
    CLIPSegImageSegmentationOutput<T> out;
    out.conditional_embeddings = clip.get_text_features(input_ids, &out.text_pooled);
    forward_with_embeddings(pixel_values, out.conditional_embeddings, out);
    return out;
  }

  // The same with the conditional embeddings given, (B, projection_dim).
  void forward_with_embeddings(const Var<T>& pixel_values, const Var<T>& conditional_embeddings,
                               CLIPSegImageSegmentationOutput<T>& out) const {
    SEGML_CHECK(pixel_values.dim() == 4 && pixel_values.size(1) == config.vision_config.num_channels,
                "CLIPSegForImageSegmentation: pixel_values must be (B, ", config.vision_config.num_channels,
                ", H, W), got ", pixel_values.shape());
    SEGML_CHECK(conditional_embeddings.dim() == 2 && conditional_embeddings.size(0) == pixel_values.size(0) &&
                    conditional_embeddings.size(1) == config.projection_dim,
                "CLIPSegForImageSegmentation: conditional embeddings must be (B = ", pixel_values.size(0),
                ", projection_dim = ", config.projection_dim, "), got ", conditional_embeddings.shape());
    out.conditional_embeddings = conditional_embeddings;
    out.vision = clip.vision_model(pixel_values, vision_layers_needed());
    std::vector<Var<T>> activations;
    for (int64_t l : config.extract_layers) activations.push_back(out.vision.hidden_states[size_t(l + 1)]);
    out.decoder = decoder(activations, conditional_embeddings, out.vision.grid_h, out.vision.grid_w);
    out.logits = out.decoder.logits;
  }

 private:
  static const CLIPSegConfig& checked(const CLIPSegConfig& c) {
    c.validate("CLIPSegForImageSegmentation");
    clipseg_detail::check_activation("text_config.hidden_act", c.text_config.hidden_act);
    clipseg_detail::check_activation("vision_config.hidden_act", c.vision_config.hidden_act);
    return c;
  }
};

}  // namespace segml
