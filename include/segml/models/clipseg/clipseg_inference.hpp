// segml/models/clipseg/clipseg_inference.hpp: the inference engine for CLIPSegForImageSegmentation.
//
//   CLIPSegInference<float> engine(model);                         // packs the weights once
//   Tensor<float> logits = engine.run(pixel_values, prompt_ids);   // (1, 3, H, W), P prompts -> (P, H', W')
//
// It computes the logits of model.forward() for one image and P prompts, the way the work divides:
//  - The vision tower runs once per image, and only up to the deepest layer in extract_layers (the
//    layers after it and post_layernorm do not change the logits; for rd64-refined that is 10 of 12).
//    Its hidden states at the extract layers are kept only as the decoder's `reduces` of them
//    ((1 + N) x reduce_dim each), which do not depend on the prompt either.
//  - The text tower runs once per distinct prompt (cached by token ids), and only up to the pooled
//    EOS position: with the causal mask the tokens after it cannot change it. Its final LayerNorm and
//    the text projection run on that one row.
//  - The decoder (FiLM, post-norm layers, transposed-convolution head) runs for all P prompts at once
//    (GEMMs over P * (1 + N) rows).
//  - No autograd, weights packed once for the GEMM (kernels::PackedB), residuals fused into the GEMM
//    store, activations in a workspace sized on the first call for an input size and reused after.
//  - The transposed convolutions with kernel = stride (the head) are GEMMs whose rows scatter to
//    disjoint output pixels; the 3x3 conv is im2row + GEMM on the tokens (channels-last throughout).
//  - Non-square inputs work: the position embeddings are resized bicubically to (H/p, W/p) (cached per
//    grid) and the decoder lays the tokens out on that grid. On square inputs this is HF's function.
// Results equal model.forward() to float32 rounding (tests/test_clipseg.cpp states the tolerance
// against the PyTorch reference). The engine holds its own copy of the weights.
#pragma once

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <map>
#include <vector>

#include "segml/core/error.hpp"
#include "segml/core/parallel.hpp"
#include "segml/core/tensor.hpp"
#include "segml/kernels/activations.hpp"
#include "segml/kernels/attention.hpp"
#include "segml/kernels/gemm.hpp"
#include "segml/kernels/im2row.hpp"
#include "segml/kernels/layernorm.hpp"
#include "segml/kernels/resize.hpp"
#include "segml/models/clipseg/modeling_clipseg.hpp"

namespace segml {

// Wall time of the engine's phases in the last call, milliseconds.
struct CLIPSegTimings {
  double vision = 0, text = 0, decoder = 0;
};

template <class T = float>
class CLIPSegInference {
 public:
  // The vision tower's output for one image, as the decoder needs it.
  struct ImageFeatures {
    int64_t grid_h = 0, grid_w = 0;
    std::vector<Tensor<T>> reduced;  // in decoder order: reduces[i](activation), (1 + N, reduce_dim)
  };

  explicit CLIPSegInference(const CLIPSegForImageSegmentation<T>& model) : config_(model.config) {
    const CLIPSegConfig& c = config_;
    const auto& vm = model.clip.vision_model;
    const auto& tm = model.clip.text_model;
    patch_ = affine(vm.embeddings.patch_embedding.weight.data(), Tensor<T>());
    class_embedding_ = vm.embeddings.class_embedding.data().clone();
    position_embedding_ = vm.embeddings.position_embedding.data().clone();
    pre_layrnorm_ = norm(vm.pre_layrnorm);
    const int64_t needed = model.vision_layers_needed();
    for (int64_t i = 0; i < needed; ++i) vision_layers_.push_back(layer(vm.layers[size_t(i)], c.vision_config.hidden_act));
    token_embedding_ = tm.embeddings.token_embedding.data().clone();
    text_positions_ = tm.embeddings.position_embedding.data().clone();
    for (const auto& l : tm.layers) text_layers_.push_back(layer(l, c.text_config.hidden_act));
    final_layer_norm_ = norm(tm.final_layer_norm);
    text_projection_ = affine(model.clip.text_projection.weight.data(), Tensor<T>());
    const auto& d = model.decoder;
    film_mul_ = affine(d.film_mul);
    film_add_ = affine(d.film_add);
    for (const auto& r : d.reduces) reduces_.push_back(affine(r));
    for (const auto& l : d.layers) decoder_layers_.push_back(layer(l, "relu"));
    // decoder order i reads extract_layers[depth - 1 - i]; vision layer l feeds these i.
    const int64_t depth = int64_t(c.extract_layers.size());
    for (int64_t i = 0; i < depth; ++i) extract_at_[c.extract_layers[size_t(depth - 1 - i)]].push_back(i);
    complex_ = d.complex;
    if (complex_) {
      conv0_ = affine_nhwc(d.conv0.weight.data(), d.conv0.bias.data());
      tconv_a_ = transposed(d.tconv2);
      tconv_b_ = transposed(d.tconv4);
    } else {
      tconv_a_ = transposed(d.tconv);
    }
  }

  const CLIPSegConfig& config() const { return config_; }
  const CLIPSegTimings& timings() const { return timings_; }

  // The logits of P prompts on one image: pixel_values (1, C, H, W), prompts as token ids (each a
  // tokenizer's output with BOS and EOS) -> (P, (H/p) p, (W/p) p).
  Tensor<T> run(const Tensor<T>& pixel_values, const std::vector<std::vector<int64_t>>& prompts) {
    SEGML_CHECK(pixel_values.dim() == 4 && pixel_values.size(0) == 1,
                "CLIPSegInference::run: pixel_values must be one image (1, C, H, W), got ", pixel_values.shape());
    const Tensor<T> cond = text_features(prompts);
    const ImageFeatures f = encode_image(pixel_values);
    return decode(f, cond);
  }

  // The vision tower and the decoder's reduces for one image (1, C, H, W).
  ImageFeatures encode_image(const Tensor<T>& pixel_values) {
    const auto start = std::chrono::steady_clock::now();
    const CLIPSegVisionConfig& vc = config_.vision_config;
    SEGML_CHECK(pixel_values.dim() == 4 && pixel_values.size(0) == 1 && pixel_values.size(1) == vc.num_channels,
                "CLIPSegInference::encode_image: pixel_values must be (1, ", vc.num_channels, ", H, W), got ",
                pixel_values.shape());
    const int64_t H = pixel_values.size(2), W = pixel_values.size(3), p = vc.patch_size, D = vc.hidden_size;
    SEGML_CHECK(H >= p && W >= p, "CLIPSegInference::encode_image: the input (", H, "x", W,
                ") is smaller than one patch (", p, "x", p, ")");
    const Tensor<T> pixels = pixel_values.contiguous();
    ImageFeatures f;
    f.grid_h = H / p;
    f.grid_w = W / p;
    const int64_t N = f.grid_h * f.grid_w, rows = N + 1;
    const int64_t ff = vc.intermediate_size;
    Scratch s = scratch(rows, D, rows * ff);
    T* cols = workspace(6, N * vc.num_channels * p * p);
    T* x = s.x;
    // Embeddings: x = [class; patches Wᵀ] + positions.
    const Tensor<T>& pos = positions(H, W, f.grid_h, f.grid_w);
    std::memcpy(x, pos.data(), size_t(rows * D) * sizeof(T));
    for (int64_t c = 0; c < D; ++c) x[c] += class_embedding_.data()[c];
    kernels::im2row_nchw(cols, pixels.data(), kernels::Im2rowGeometry{vc.num_channels, H, W, p, p, p, 0});
    linear_add(x + D, cols, patch_, N);
    layer_norm(s.t, x, pre_layrnorm_, rows, s);
    std::swap(s.x, s.t);
    x = s.x;
    f.reduced.resize(reduces_.size());
    for (size_t l = 0; l < vision_layers_.size(); ++l) {
      pre_norm_layer(vision_layers_[l], s, rows, config_.vision_config.num_attention_heads);
      auto it = extract_at_.find(int64_t(l));
      if (it == extract_at_.end()) continue;
      for (int64_t i : it->second) {
        f.reduced[size_t(i)] = Tensor<T>::empty({rows, config_.reduce_dim});
        linear(f.reduced[size_t(i)].data(), x, reduces_[size_t(i)], rows);
      }
    }
    timings_.vision = ms_since(start);
    return f;
  }

  // Conditional embeddings (P, projection_dim) of the prompts, each computed once and cached.
  Tensor<T> text_features(const std::vector<std::vector<int64_t>>& prompts) {
    const auto start = std::chrono::steady_clock::now();
    SEGML_CHECK(!prompts.empty(), "CLIPSegInference: no prompts");
    const int64_t E = config_.projection_dim;
    // The distinct prompts not in the cache, validated first; then computed one per thread.
    std::vector<const std::vector<int64_t>*> missing;
    for (const auto& ids : prompts)
      if (!text_cache_.count(ids) &&
          std::none_of(missing.begin(), missing.end(), [&](const std::vector<int64_t>* m) { return *m == ids; })) {
        check_prompt(ids);
        missing.push_back(&ids);
      }
    std::vector<std::vector<T>> computed(missing.size());
    if (missing.size() == 1) {
      computed[0] = text_feature(*missing[0]);  // one prompt: the kernels use every thread
    } else {
      parallel_for_dynamic(int64_t(missing.size()), 1, [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i) computed[size_t(i)] = text_feature(*missing[size_t(i)]);
      });
    }
    // The rows are copied before the cache may be cleared (a cached prompt of this call would go).
    Tensor<T> out = Tensor<T>::empty({int64_t(prompts.size()), E});
    for (size_t i = 0; i < prompts.size(); ++i) {
      const auto hit = text_cache_.find(prompts[i]);
      const T* row = nullptr;
      if (hit != text_cache_.end()) {
        row = hit->second.data();
      } else {
        for (size_t m = 0; m < missing.size() && !row; ++m)
          if (*missing[m] == prompts[i]) row = computed[m].data();
      }
      std::memcpy(out.data() + int64_t(i) * E, row, size_t(E) * sizeof(T));
    }
    if (text_cache_.size() + missing.size() > kTextCacheSize) text_cache_.clear();
    for (size_t i = 0; i < missing.size(); ++i) text_cache_.emplace(*missing[i], std::move(computed[i]));
    timings_.text = ms_since(start);
    return out;
  }

  // The decoder for P prompts: image features and conditional embeddings (P, projection_dim) ->
  // logits (P, grid_h p, grid_w p).
  Tensor<T> decode(const ImageFeatures& f, const Tensor<T>& conditional_embeddings) {
    const auto start = std::chrono::steady_clock::now();
    const int64_t E = config_.projection_dim, R = config_.reduce_dim;
    SEGML_CHECK(conditional_embeddings.dim() == 2 && conditional_embeddings.size(1) == E,
                "CLIPSegInference::decode: conditional embeddings must be (P, ", E, "), got ", conditional_embeddings.shape());
    SEGML_CHECK(f.reduced.size() == reduces_.size(), "CLIPSegInference::decode: image features are incomplete");
    const Tensor<T> cond = conditional_embeddings.contiguous();
    const int64_t P = cond.size(0), N = f.grid_h * f.grid_w, rows = N + 1, all = P * rows;
    const int64_t heads = config_.decoder_num_attention_heads, ff = config_.decoder_intermediate_size;
    Tensor<T> film_m = Tensor<T>::empty({P, R}), film_a = Tensor<T>::empty({P, R});
    linear(film_m.data(), cond.data(), film_mul_, P);
    linear(film_a.data(), cond.data(), film_add_, P);
    const Scratch s = scratch(all, R, std::min(all, kMlpRows) * ff);
    T* h = s.x;
    for (size_t i = 0; i < decoder_layers_.size(); ++i) {
      const T* red = f.reduced[i].data();
      parallel_for(P, 1, [&](int64_t p0, int64_t p1) {
        for (int64_t b = p0; b < p1; ++b) {
          T* hb = h + b * rows * R;
          for (int64_t j = 0; j < rows * R; ++j) hb[j] = i == 0 ? red[j] : hb[j] + red[j];
          if (int64_t(i) != config_.conditional_layer) continue;
          const T* m = film_m.data() + b * R;
          const T* a = film_a.data() + b * R;
          for (int64_t r = 0; r < rows; ++r)
            for (int64_t c = 0; c < R; ++c) hb[r * R + c] = m[c] * hb[r * R + c] + a[c];
        }
      });
      post_norm_layer(decoder_layers_[i], s, P, rows, heads);
    }
    const int64_t p = config_.vision_config.patch_size;
    const int64_t OH = f.grid_h * p, OW = f.grid_w * p;
    Tensor<T> logits = Tensor<T>::empty({P, OH, OW});
    for (int64_t b = 0; b < P; ++b) head(logits.data() + b * OH * OW, h + b * rows * R + R, f.grid_h, f.grid_w);
    timings_.decoder = ms_since(start);
    return logits;
  }

  // Forgets the cached conditional embeddings (e.g. to time the text tower).
  void clear_text_cache() { text_cache_.clear(); }

  // Bytes of the workspace (activations only, weights excluded).
  int64_t workspace_bytes() const {
    int64_t n = 0;
    for (const auto& s : slots_) n += s.size;
    return n * int64_t(sizeof(T));
  }

 private:
  static constexpr size_t kTextCacheSize = 4096;
  static constexpr int64_t kMlpRows = 2048;  // rows of a decoder MLP chunk (bounds its hidden buffer)

  struct Affine {  // y = x Wᵀ + b, W (out, in)
    kernels::PackedB<T> packed;
    Tensor<T> bias;
    Affine() = default;
    Affine(const Tensor<T>& w, Tensor<T> b) : packed(true, w.size(1), w.size(0), w.contiguous().data(), w.size(1)), bias(std::move(b)) {}
    int64_t out() const { return packed.N(); }
    int64_t in() const { return packed.K(); }
  };
  struct Norm {
    Tensor<T> weight, bias;
    T eps;
  };
  using Activation = void (*)(T*, const T*, int64_t);
  struct Layer {
    Norm layer_norm1, layer_norm2;
    Affine q, k, v, out, fc1, fc2;
    Activation act;
  };
  struct Transposed {  // ConvTranspose2d with kernel = stride: a GEMM to (k, k, Cout) per input pixel
    Affine gemm;       // W' (k * k * Cout, Cin), rows in (ki, kj, co) order, no bias
    Tensor<T> bias;    // (Cout)
    int64_t k = 1, out_channels = 1;
  };
  struct Slot {
    std::shared_ptr<T[]> data;
    int64_t size = 0;
  };

  static Affine affine(const nn::Linear<T>& l) { return {l.weight.data(), l.bias.defined() ? l.bias.data().clone() : Tensor<T>()}; }
  static Affine affine(const Tensor<T>& w, Tensor<T> b) {
    const Tensor<T> c = w.contiguous();
    return {c.reshape({c.size(0), c.numel() / c.size(0)}), b.defined() ? b.clone() : Tensor<T>()};
  }
  static Affine affine_nhwc(const Tensor<T>& w4, const Tensor<T>& b) {
    const Tensor<T> w = w4.contiguous();
    const int64_t OC = w.size(0), C = w.size(1), KH = w.size(2), KW = w.size(3);
    Tensor<T> permuted = Tensor<T>::empty({OC, KH * KW * C});
    kernels::permute_weight_to_nhwc(permuted.data(), w.data(), OC, C, KH, KW);
    return {permuted, b.defined() ? b.clone() : Tensor<T>()};
  }
  static Transposed transposed(const ConvTranspose2d<T>& c) {
    const Tensor<T> w = c.weight.data().contiguous();  // (Cin, Cout, k, k)
    const int64_t Cin = w.size(0), Cout = w.size(1), K = w.size(2);
    SEGML_CHECK(w.size(3) == K && c.stride == K, "CLIPSegInference: transposed convolution with kernel ", w.shape(),
                " and stride ", c.stride, " (only kernel = stride is supported)");
    Tensor<T> wt = Tensor<T>::empty({K * K * Cout, Cin});
    for (int64_t ci = 0; ci < Cin; ++ci)
      for (int64_t co = 0; co < Cout; ++co)
        for (int64_t ki = 0; ki < K; ++ki)
          for (int64_t kj = 0; kj < K; ++kj) wt.data()[((ki * K + kj) * Cout + co) * Cin + ci] = w.data()[((ci * Cout + co) * K + ki) * K + kj];
    return {Affine(wt, Tensor<T>()), c.bias.data().clone(), K, Cout};
  }
  static Norm norm(const nn::LayerNorm<T>& n) { return {n.weight.data().clone(), n.bias.data().clone(), n.eps}; }
  static Activation activation(const std::string& name) {
    if (name == "quick_gelu") return &kernels::quick_gelu_forward<T>;
    if (name == "gelu") return &kernels::gelu_forward<T>;
    if (name == "relu") return &kernels::relu_forward<T>;
    fail("CLIPSegInference: activation '", name, "' is not implemented (quick_gelu, gelu, relu)");
  }
  static Layer layer(const CLIPSegLayer<T>& l, const std::string& act) {
    const auto& a = l.self_attn;
    return {norm(l.layer_norm1), norm(l.layer_norm2), affine(a.q_proj), affine(a.k_proj), affine(a.v_proj),
            affine(a.out_proj), affine(l.mlp.fc1), affine(l.mlp.fc2), activation(act)};
  }

  // A buffer of at least n values, kept across calls (slot i).
  T* workspace(size_t i, int64_t n) {
    if (slots_.size() <= i) slots_.resize(i + 1);
    if (slots_[i].size < n) {
      slots_[i].data = allocate_aligned<T>(n);
      slots_[i].size = n;
    }
    return slots_[i].data.get();
  }
  // The activations of one transformer pass: x (the residual stream), t, q, k, v (rows x width),
  // the MLP's hidden rows, and LayerNorm's per-row statistics.
  struct Scratch {
    T *x, *t, *q, *k, *v, *hidden, *mean, *rstd;
  };
  // A Scratch in the engine's workspace slots 0-5 and 8-9.
  Scratch scratch(int64_t rows, int64_t width, int64_t hidden) {
    Scratch s{};
    T** fields[] = {&s.x, &s.t, &s.q, &s.k, &s.v};
    for (size_t i = 0; i < 5; ++i) *fields[i] = workspace(i, rows * width);
    s.hidden = workspace(5, hidden);
    s.mean = workspace(8, rows);
    s.rstd = workspace(9, rows);
    return s;
  }

  static void layer_norm(T* y, const T* x, const Norm& n, int64_t rows, const Scratch& s) {
    kernels::layernorm_forward(y, s.mean, s.rstd, x, n.weight.data(), n.bias.data(), rows, n.weight.numel(), n.eps);
  }
  static void linear(T* y, const T* x, const Affine& a, int64_t rows) {
    kernels::gemm_bias(rows, x, a.in(), a.packed, a.bias.defined() ? a.bias.data() : nullptr, y, a.out());
  }
  static void linear_add(T* y, const T* x, const Affine& a, int64_t rows) {
    kernels::gemm_bias_add(rows, x, a.in(), a.packed, a.bias.defined() ? a.bias.data() : nullptr, y, a.out());
  }

  // x += attn(ln1(x)); x += mlp(ln2(x)) on x (rows, D) of one sequence.
  static void pre_norm_layer(const Layer& L, const Scratch& s, int64_t rows, int64_t heads, bool causal = false) {
    const int64_t D = L.q.out(), F = L.fc1.out();
    layer_norm(s.t, s.x, L.layer_norm1, rows, s);
    linear(s.q, s.t, L.q, rows);
    linear(s.k, s.t, L.k, rows);
    linear(s.v, s.t, L.v, rows);
    kernels::attention_forward<T>(s.t, nullptr, s.q, s.k, s.v, 1, rows, rows, D, heads, causal);
    linear_add(s.x, s.t, L.out, rows);
    layer_norm(s.t, s.x, L.layer_norm2, rows, s);
    linear(s.hidden, s.t, L.fc1, rows);
    L.act(s.hidden, s.hidden, rows * F);
    linear_add(s.x, s.hidden, L.fc2, rows);
  }

  // h = ln1(h + attn(h)); h = ln2(h + mlp(h)) on P sequences of `rows` tokens, h (P * rows, R).
  static void post_norm_layer(const Layer& L, const Scratch& s, int64_t P, int64_t rows, int64_t heads) {
    const int64_t R = L.q.out(), F = L.fc1.out(), all = P * rows;
    T *h = s.x, *t = s.t, *q = s.q, *k = s.k, *v = s.v, *hidden = s.hidden;
    linear(q, h, L.q, all);
    linear(k, h, L.k, all);
    linear(v, h, L.v, all);
    kernels::attention_forward<T>(t, nullptr, q, k, v, P, rows, rows, R, heads);
    linear_add(h, t, L.out, all);
    layer_norm(t, h, L.layer_norm1, all, s);
    std::memcpy(h, t, size_t(all * R) * sizeof(T));  // h = ln1(...), t = its copy for the residual
    for (int64_t r0 = 0; r0 < all; r0 += kMlpRows) {
      const int64_t n = std::min(kMlpRows, all - r0);
      linear(hidden, t + r0 * R, L.fc1, n);
      L.act(hidden, hidden, n * F);
      linear_add(h + r0 * R, hidden, L.fc2, n);
    }
    layer_norm(t, h, L.layer_norm2, all, s);
    std::memcpy(h, t, size_t(all * R) * sizeof(T));
  }

  // A prompt's ids are in range and fit the text model; a segml::Error names the problem otherwise.
  void check_prompt(const std::vector<int64_t>& ids) const {
    const CLIPSegTextConfig& tc = config_.text_config;
    const int64_t L = int64_t(ids.size());
    SEGML_CHECK(L >= 1, "CLIPSegInference: an empty prompt (no token ids)");
    SEGML_CHECK(L <= tc.max_position_embeddings, "CLIPSegInference: a prompt of ", L,
                " tokens exceeds max_position_embeddings (", tc.max_position_embeddings, ")");
    for (int64_t j = 0; j < L; ++j)
      SEGML_CHECK(ids[size_t(j)] >= 0 && ids[size_t(j)] < tc.vocab_size, "CLIPSegInference: token id ", ids[size_t(j)],
                  " at position ", j, " is outside the vocabulary [0, ", tc.vocab_size, ")");
  }

  // One (checked) prompt's conditional embedding (projection_dim). Its own buffers: prompts may run
  // on several threads at once.
  std::vector<T> text_feature(const std::vector<int64_t>& ids) const {
    const CLIPSegTextConfig& tc = config_.text_config;
    const int64_t L = int64_t(ids.size()), D = tc.hidden_size;
    const int64_t pos = CLIPSegTextTransformer<T>::eos_position(ids.data(), L, tc.eos_token_id);
    const int64_t rows = pos + 1;  // causal: the tokens after the pooled one cannot change it
    const int64_t slot = (rows * D + 15) / 16 * 16, hidden = (rows * tc.intermediate_size + 15) / 16 * 16;
    const std::shared_ptr<T[]> memory = allocate_aligned<T>(5 * slot + hidden + 2 * ((rows + 15) / 16 * 16));
    T* m = memory.get();
    Scratch s{m, m + slot, m + 2 * slot, m + 3 * slot, m + 4 * slot, m + 5 * slot, m + 5 * slot + hidden, nullptr};
    s.rstd = s.mean + (rows + 15) / 16 * 16;
    for (int64_t j = 0; j < rows; ++j)
      for (int64_t c = 0; c < D; ++c)
        s.x[j * D + c] = token_embedding_.data()[ids[size_t(j)] * D + c] + text_positions_.data()[j * D + c];
    for (const Layer& l : text_layers_) pre_norm_layer(l, s, rows, tc.num_attention_heads, /*causal=*/true);
    layer_norm(s.t, s.x + pos * D, final_layer_norm_, 1, s);
    std::vector<T> out(size_t(config_.projection_dim));
    linear(out.data(), s.t, text_projection_, 1);
    return out;
  }

  // Position embeddings (1 + gh * gw, D) for an H x W input (HF's rule: the stored ones when the
  // grid has as many patches and the input is square, else bicubic to (gh, gw)); cached per grid.
  const Tensor<T>& positions(int64_t H, int64_t W, int64_t gh, int64_t gw) {
    const int64_t g = config_.vision_config.grid(), D = config_.vision_config.hidden_size;
    if (gh * gw == g * g && H == W) return position_embedding_;
    auto it = position_cache_.find({gh, gw});
    if (it != position_cache_.end()) return it->second;
    Tensor<T> planes = Tensor<T>::empty({D, g * g});  // the patch rows as D planes of g x g
    for (int64_t i = 0; i < g * g; ++i)
      for (int64_t c = 0; c < D; ++c) planes.data()[c * g * g + i] = position_embedding_.data()[(1 + i) * D + c];
    Tensor<T> resized = Tensor<T>::empty({D, gh * gw});
    kernels::resize_bicubic_forward(resized.data(), planes.data(), D, g, g, gh, gw);
    Tensor<T> out = Tensor<T>::empty({1 + gh * gw, D});
    std::memcpy(out.data(), position_embedding_.data(), size_t(D) * sizeof(T));
    for (int64_t i = 0; i < gh * gw; ++i)
      for (int64_t c = 0; c < D; ++c) out.data()[(1 + i) * D + c] = resized.data()[c * gh * gw + i];
    if (position_cache_.size() >= 64) position_cache_.clear();
    return position_cache_.emplace(std::make_pair(gh, gw), std::move(out)).first->second;
  }

  // A transposed convolution (kernel = stride) on a channels-last image (h, w, Cin) -> (h k, w k, Cout).
  void transposed_conv(T* y, const T* x, const Transposed& tc, int64_t h, int64_t w, bool relu, T* scratch) const {
    const int64_t K = tc.k, Co = tc.out_channels, cols = K * K * Co, OW = w * K;
    linear(scratch, x, tc.gemm, h * w);
    const T* bias = tc.bias.data();
    parallel_for(h, 1, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i)
        for (int64_t j = 0; j < w; ++j) {
          const T* g = scratch + (i * w + j) * cols;
          for (int64_t ki = 0; ki < K; ++ki)
            for (int64_t kj = 0; kj < K; ++kj) {
              T* out = y + ((i * K + ki) * OW + j * K + kj) * Co;
              const T* src = g + (ki * K + kj) * Co;
              for (int64_t c = 0; c < Co; ++c) {
                const T val = src[c] + bias[c];
                out[c] = relu ? std::max(val, T(0)) : val;
              }
            }
        }
    });
  }

  // The transposed-convolution head for one prompt: tokens (gh * gw, R) -> logits (gh p, gw p).
  void head(T* logits, const T* tokens, int64_t gh, int64_t gw) {
    const int64_t R = config_.reduce_dim, N = gh * gw;
    if (!complex_) {
      T* scratch = workspace(10, N * tconv_a_.gemm.out());
      transposed_conv(logits, tokens, tconv_a_, gh, gw, false, scratch);
      return;
    }
    const int64_t K = tconv_a_.k;
    T* cols = workspace(11, N * 9 * R);
    T* conv = workspace(12, N * R);
    kernels::im2row_nhwc(cols, tokens, kernels::Im2rowGeometry{R, gh, gw, 3, 3, 1, 1});
    linear(conv, cols, conv0_, N);
    for (int64_t i = 0; i < N * R; ++i) conv[i] = std::max(conv[i], T(0));
    T* mid = workspace(13, N * K * K * tconv_a_.out_channels);
    T* scratch = workspace(10, std::max(N * tconv_a_.gemm.out(), N * K * K * tconv_b_.gemm.out()));
    transposed_conv(mid, conv, tconv_a_, gh, gw, /*relu=*/true, scratch);
    transposed_conv(logits, mid, tconv_b_, gh * K, gw * K, false, scratch);
  }

  static double ms_since(std::chrono::steady_clock::time_point start) {
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
  }

  CLIPSegConfig config_;
  Affine patch_;
  Tensor<T> class_embedding_, position_embedding_;
  Norm pre_layrnorm_;
  std::vector<Layer> vision_layers_;
  Tensor<T> token_embedding_, text_positions_;
  std::vector<Layer> text_layers_;
  Norm final_layer_norm_;
  Affine text_projection_;
  Affine film_mul_, film_add_;
  std::vector<Affine> reduces_;
  std::vector<Layer> decoder_layers_;
  std::map<int64_t, std::vector<int64_t>> extract_at_;  // vision layer -> decoder indices reading it
  bool complex_ = false;
  Affine conv0_;
  Transposed tconv_a_, tconv_b_;
  std::vector<Slot> slots_;
  std::map<std::vector<int64_t>, std::vector<T>> text_cache_;
  std::map<std::pair<int64_t, int64_t>, Tensor<T>> position_cache_;
  CLIPSegTimings timings_;
};

}  // namespace segml
