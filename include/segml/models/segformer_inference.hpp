// segml/models/segformer_inference.hpp: the inference engine for SegformerForSemanticSegmentation.
//
//   SegformerInference<float> engine(model);       // prepares (copies and folds) the weights once
//   Tensor<float> logits = engine.run(pixel_values);  // (B, 3, H, W) -> (B, num_labels, ceil(H/4), ceil(W/4))
//
// It computes the same function as model.forward() in eval mode, on plain buffers:
//  - No autograd: no graph, no saved activations, no Var.
//  - Channels-last throughout. The encoder's tokens (N = h*w, C) are also its NHWC images, so the
//    patch embeddings and the sequence-reduction convs are GEMMs on row matrices (kernels/im2row.hpp)
//    that come out as tokens, and the Mix-FFN's depthwise conv runs on the tokens in place.
//  - Residual connections are fused into the store of the GEMM before them (gemm_bias_add).
//  - The decode head is folded (docs/ops/decode_head_folding.md). Its linear_c.i projections, the
//    matching slices of linear_fuse and the eval-mode BatchNorm are all affine and the bilinear
//    upsampling commutes with per-pixel channel mixing, so
//        BN(linear_fuse(concat_i up(linear_c.i(x_i)))) = Σ_i up(A_i x_i) + b,
//    with A_i = diag(s) Wfuse_i Wc_i and b = s ∘ (Σ_i Wfuse_i bc_i − μ) + β, s = γ / sqrt(σ² + ε),
//    computed once here (in double). Each stage is projected at its own resolution, straight to
//    decoder_hidden_size channels, and the 4·D-channel GEMM at stride 4 disappears.
//  - Memory: one workspace, sized for the input's resolution on the first call and reused after.
//    Stages 2.. are projected to decoder_hidden_size channels as soon as they exist; stage 1's
//    output is kept (it has the fewest channels), and the last pass computes the decode head's
//    ReLU map and the classifier a few rows at a time, so the decoder_hidden_size-channel map at
//    the output resolution only ever exists as one block per thread, in cache.
// Results equal model.forward() to float32 rounding (the folding and the fused residuals change
// the order of the sums; tests/test_inference.cpp states the tolerance against PyTorch).
// The engine holds its own copy of the weights: it does not see later changes to the model.
// Not done: batch entries are run one after another (the kernels are parallel inside an image).
#pragma once

#include <algorithm>
#include <chrono>
#include <cmath>
#include <map>
#include <cstring>
#include <vector>

#include "segml/core/error.hpp"
#include "segml/core/parallel.hpp"
#include "segml/core/tensor.hpp"
#include "segml/kernels/activations.hpp"
#include "segml/kernels/attention.hpp"
#include "segml/kernels/dwconv.hpp"
#include "segml/kernels/gemm.hpp"
#include "segml/kernels/im2row.hpp"
#include "segml/kernels/layernorm.hpp"
#include "segml/kernels/resize.hpp"
#include "segml/models/segformer.hpp"

namespace segml {

template <class T = float>
class SegformerInference {
 public:
  explicit SegformerInference(const SegformerForSemanticSegmentation<T>& model) : config_(model.config) {
    const SegformerConfig& cfg = config_;
    const auto& enc = model.encoder;
    for (int64_t s = 0; s < cfg.num_encoder_blocks; ++s) {
      Stage st;
      const auto& pe = enc.patch_embeddings[s];
      st.hidden = cfg.hidden_sizes[s];
      st.in_channels = s == 0 ? cfg.num_channels : cfg.hidden_sizes[s - 1];
      st.kernel = cfg.patch_sizes[s];
      st.stride = cfg.strides[s];
      st.pad = cfg.patch_sizes[s] / 2;
      st.heads = cfg.num_attention_heads[s];
      st.sr = cfg.sr_ratios[s];
      st.mlp_hidden = cfg.hidden_sizes[s] * cfg.mlp_ratios[s];
      // Stage 0 reads the NCHW pixels: PyTorch's weight order is the row order. Later stages read tokens.
      st.patch = s == 0 ? affine(pe.proj) : affine_nhwc(pe.proj);
      st.patch_norm = norm(pe.layer_norm);
      for (const auto& layer : enc.block[s]) {
        Block b;
        const auto& self = layer.attention.self;
        b.layer_norm_1 = norm(layer.layer_norm_1);
        b.query = affine(self.query);
        b.key = affine(self.key);
        b.value = affine(self.value);
        if (st.sr > 1) {
          b.sr = affine_nhwc(self.sr);
          b.sr_norm = norm(self.layer_norm);
        }
        b.output_dense = affine(layer.attention.output_dense);
        b.layer_norm_2 = norm(layer.layer_norm_2);
        b.dense1 = affine(layer.mlp.dense1);
        const Tensor<T> dw = layer.mlp.dwconv_weight.data().contiguous();
        b.dwconv = {kernels::dwconv3x3_nhwc_taps(dw.data(), dw.size(0)), layer.mlp.dwconv_bias.data().clone()};
        b.dense2 = affine(layer.mlp.dense2);
        st.blocks.push_back(std::move(b));
      }
      st.final_norm = norm(enc.layer_norm[s]);
      stages_.push_back(std::move(st));
    }
    fold_decode_head(model.decode_head);
  }

  const SegformerConfig& config() const { return config_; }

  // pixel_values (B, num_channels, H, W) -> logits (B, num_labels, ceil(H/4), ceil(W/4)).
  Tensor<T> run(const Tensor<T>& pixel_values) {
    SEGML_CHECK(pixel_values.dim() == 4 && pixel_values.size(1) == config_.num_channels,
                "SegformerInference::run: pixel_values must be (B, ", config_.num_channels, ", H, W), got ",
                pixel_values.shape());
    SEGML_CHECK(pixel_values.size(2) > 0 && pixel_values.size(3) > 0,
                "SegformerInference::run: empty image ", pixel_values.shape());
    const Tensor<T> pixels = pixel_values.contiguous();
    const int64_t B = pixels.size(0), H = pixels.size(2), W = pixels.size(3);
    plan(H, W);
    const int64_t L = config_.num_labels, h1 = shapes_[0].h, w1 = shapes_[0].w;
    Tensor<T> logits = Tensor<T>::empty({B, L, h1, w1});
    for (int64_t b = 0; b < B; ++b)
      run_image(logits.data() + b * L * h1 * w1, pixels.data() + b * config_.num_channels * H * W, H, W);
    return logits;
  }

  // Per-phase wall time (ms, summed over runs since enabled), for finding where the time goes.
  void set_profiling(bool on) {
    profiling_ = on;
    profile_.clear();
  }
  const std::map<std::string, double>& profile() const { return profile_; }

  // Bytes of the workspace for the last input size (activations only, weights excluded).
  int64_t workspace_bytes() const { return arena_size_ * static_cast<int64_t>(sizeof(T)); }

 private:
  struct Affine {  // y = x Wᵀ + b, W (out, in) in the row order its input is laid out in
    kernels::PackedB<T> packed;  // Wᵀ, packed once for the GEMM kernel (W itself is not kept)
    Tensor<T> bias;
    Affine() = default;
    Affine(const Tensor<T>& w, Tensor<T> b)
        : packed(true, w.size(1), w.size(0), w.contiguous().data(), w.size(1)), bias(std::move(b)) {}
    int64_t out() const { return packed.N(); }
    int64_t in() const { return packed.K(); }
  };
  struct Norm {
    Tensor<T> weight, bias;
    T eps;
  };
  struct DepthwiseConv {
    std::vector<T> taps;  // (9, C): the kernel tap-major, as kernels::dwconv3x3_nhwc_row reads it
    Tensor<T> bias;       // (C)
  };
  struct Block {
    Norm layer_norm_1, sr_norm, layer_norm_2;
    Affine query, key, value, sr, output_dense, dense1, dense2;
    DepthwiseConv dwconv;
  };
  struct Stage {
    int64_t hidden, in_channels, kernel, stride, pad, heads, sr, mlp_hidden;
    Affine patch;
    Norm patch_norm, final_norm;
    std::vector<Block> blocks;
    Affine head;  // the folded decode-head projection A_s (decoder_hidden_size, hidden), no bias
  };
  struct StageShape {
    int64_t h, w, rh, rw;  // token grid, and the reduced grid of keys / values
  };

  static Affine affine(const nn::Linear<T>& l) {
    return {l.weight.data(), l.bias.defined() ? l.bias.data().clone() : Tensor<T>()};
  }
  static Affine affine(const nn::Conv2d<T>& c) {
    const Tensor<T> w = c.weight.data().contiguous();
    return {w.reshape({w.size(0), w.numel() / w.size(0)}),
            c.bias.defined() ? c.bias.data().clone() : Tensor<T>()};
  }
  static Affine affine_nhwc(const nn::Conv2d<T>& c) {
    const Tensor<T> w = c.weight.data().contiguous();
    const int64_t OC = w.size(0), C = w.size(1), KH = w.size(2), KW = w.size(3);
    Tensor<T> permuted = Tensor<T>::empty({OC, KH * KW * C});
    kernels::permute_weight_to_nhwc(permuted.data(), w.data(), OC, C, KH, KW);
    return {permuted, c.bias.defined() ? c.bias.data().clone() : Tensor<T>()};
  }
  static Norm norm(const nn::LayerNorm<T>& n) { return {n.weight.data().clone(), n.bias.data().clone(), n.eps}; }

  // A_s = diag(s) Wfuse_s Wc_s and b = s ∘ (Σ_s Wfuse_s bc_s − μ) + β, in double. linear_fuse reads
  // the stages deepest first, so stage s is its input block S-1-s.
  void fold_decode_head(const SegformerDecodeHead<T>& head) {
    const int64_t S = config_.num_encoder_blocks, D = config_.decoder_hidden_size;
    const Tensor<T> fuse = head.linear_fuse.weight.data().contiguous();  // (D, S*D, 1, 1)
    const auto& bn = head.batch_norm;
    std::vector<double> scale(D), shift(D);
    for (int64_t o = 0; o < D; ++o) {
      scale[o] = static_cast<double>(bn.weight.data().at({o})) /
                 std::sqrt(static_cast<double>(bn.running_var.at({o})) + static_cast<double>(bn.eps));
      shift[o] = -static_cast<double>(bn.running_mean.at({o}));
    }
    for (int64_t s = 0; s < S; ++s) {
      const Tensor<T> wc = head.linear_c[s].weight.data().contiguous();  // (D, C_s)
      const Tensor<T> bc = head.linear_c[s].bias.data().contiguous();    // (D)
      const int64_t C = wc.size(1), block = S - 1 - s;
      Tensor<T> a = Tensor<T>::empty({D, C});
      std::vector<double> row(C);
      for (int64_t o = 0; o < D; ++o) {
        const T* f = fuse.data() + o * S * D + block * D;
        std::fill(row.begin(), row.end(), 0.0);
        double bias = 0;
        for (int64_t j = 0; j < D; ++j) {
          const double fj = f[j];
          const T* wr = wc.data() + j * C;
          for (int64_t c = 0; c < C; ++c) row[c] += fj * static_cast<double>(wr[c]);
          bias += fj * static_cast<double>(bc.data()[j]);
        }
        for (int64_t c = 0; c < C; ++c) a.data()[o * C + c] = static_cast<T>(scale[o] * row[c]);
        shift[o] += bias;
      }
      stages_[s].head = {a, Tensor<T>()};
    }
    head_bias_ = Tensor<T>::empty({D});
    for (int64_t o = 0; o < D; ++o)
      head_bias_.data()[o] = static_cast<T>(scale[o] * shift[o] + static_cast<double>(bn.bias.data().at({o})));
    classifier_weight_ = head.classifier.weight.data().clone();  // (L, D): the A of its GEMM, not packed
    classifier_bias_ = head.classifier.bias.defined() ? head.classifier.bias.data().clone() : Tensor<T>();
  }

  // Sizes the workspace for an H x W input (only when the size changes).
  void plan(int64_t H, int64_t W) {
    if (H == planned_h_ && W == planned_w_) return;
    shapes_.clear();
    int64_t h = H, w = W, x_size = 0, cols_size = 0, kv_size = 0, z_size = 0, rows = 0;
    up_.clear();
    int64_t in_channels = config_.num_channels;
    for (const Stage& st : stages_) {
      const kernels::Im2rowGeometry g{in_channels, h, w, st.kernel, st.kernel, st.stride, st.pad};
      h = g.out_h();
      w = g.out_w();
      SEGML_CHECK(h > 0 && w > 0, "SegformerInference::run: input ", H, "x", W, " is too small for stage ", shapes_.size() + 1);
      const int64_t rh = st.sr > 1 ? h / st.sr : h, rw = st.sr > 1 ? w / st.sr : w;
      SEGML_CHECK(rh > 0 && rw > 0, "SegformerInference::run: input ", H, "x", W,
                  " is too small for the sequence reduction of stage ", shapes_.size() + 1);
      shapes_.push_back({h, w, rh, rw});
      const int64_t N = h * w, M = rh * rw;
      x_size = std::max(x_size, N * st.hidden);
      if (st.sr > 1) cols_size = std::max(cols_size, M * st.sr * st.sr * st.hidden);  // the sequence-reduction conv
      kv_size = std::max(kv_size, M * st.hidden);
      if (shapes_.size() > 1) z_size += round_up(N * config_.decoder_hidden_size);
      rows = std::max(rows, N);
      in_channels = st.hidden;
    }
    const StageShape& s1 = shapes_[0];
    for (size_t s = 1; s < shapes_.size(); ++s)  // each later stage's projection is upsampled to stage 1's grid
      up_.push_back({Axis(shapes_[s].h, s1.h), Axis(shapes_[s].w, s1.w)});
    const int64_t sizes[] = {x_size,  x_size,  x_size,  cols_size, kv_size,
                             kv_size, kv_size, kv_size, z_size,    s1.h * s1.w * stages_[0].hidden,
                             rows,    rows};
    int64_t total = 0;
    for (int64_t n : sizes) total += round_up(n);
    arena_ = allocate_aligned<T>(total);
    arena_size_ = total;
    T* p = arena_.get();
    T** slots[] = {&ws_.x, &ws_.t, &ws_.q, &ws_.cols, &ws_.r1, &ws_.r2, &ws_.k, &ws_.v,
                   &ws_.z, &ws_.stage1, &ws_.mean, &ws_.rstd};
    for (size_t i = 0; i < std::size(slots); ++i) {
      *slots[i] = p;
      p += round_up(sizes[i]);
    }
    planned_h_ = H;
    planned_w_ = W;
  }
  static int64_t round_up(int64_t n) { return (n + 15) / 16 * 16; }  // 64-byte aligned slots

  void layer_norm(T* y, const T* x, const Norm& n, int64_t rows) const {
    kernels::layernorm_forward(y, ws_.mean, ws_.rstd, x, n.weight.data(), n.bias.data(), rows, n.weight.numel(), n.eps);
  }
  static void linear(T* y, const T* x, const Affine& a, int64_t rows) {
    kernels::gemm_bias(rows, x, a.in(), a.packed, a.bias.data(), y, a.out());
  }
  static void linear_add(T* y, const T* x, const Affine& a, int64_t rows) {  // y += x Wᵀ + b
    kernels::gemm_bias_add(rows, x, a.in(), a.packed, a.bias.data(), y, a.out());
  }

  // logits (L, h1, w1) of one image, pixels (C, H, W).
  void run_image(T* logits, const T* pixels, int64_t H, int64_t W) {
    const T* input = pixels;  // stage s reads stage s-1's output (tokens, i.e. NHWC); stage 0 the NCHW pixels
    int64_t in_h = H, in_w = W;
    T* z = ws_.z;  // the projections A_s x_s of stages 2.., each at its own resolution
    for (size_t s = 0; s < stages_.size(); ++s) {
      const Stage& st = stages_[s];
      const StageShape& sh = shapes_[s];
      const int64_t N = sh.h * sh.w;
      timed("patch_embeddings", [&] { patch_embedding(st, s == 0, input, in_h, in_w, sh); });
      std::swap(ws_.t, ws_.x);  // the tokens are in x (input may be the old x: the embedding wrote t)
      for (const Block& b : st.blocks) block(b, st, sh);
      // The stage's hidden state: the next stage's input, and the decode head's. Stage 1's is kept
      // whole for the decode head's last pass; a later stage's is projected at once.
      if (s == 0) {
        timed("layer_norm", [&] { layer_norm(ws_.stage1, ws_.x, st.final_norm, N); });
        input = ws_.stage1;
      } else {
        timed("layer_norm", [&] { layer_norm(ws_.t, ws_.x, st.final_norm, N); });
        timed("decode_head", [&] { linear(z, ws_.t, st.head, N); });
        z += round_up(N * config_.decoder_hidden_size);
        std::swap(ws_.t, ws_.x);  // the next stage reads its input from x; t is free again
        input = ws_.x;
      }
      in_h = sh.h;
      in_w = sh.w;
    }
    timed("decode_head+classifier", [&] { decode_head_and_classifier(logits); });
  }

  // logits (L, h1 * w1) = Wcls relu(A_1 x_1 + Σ_s up(A_s x_s) + b) + bcls, a few rows of stage 1's
  // grid at a time, so that the D-channel map at the output resolution only ever exists as one
  // block in cache.
  void decode_head_and_classifier(T* logits) {
    const int64_t D = config_.decoder_hidden_size, L = config_.num_labels;
    const int64_t h1 = shapes_[0].h, w1 = shapes_[0].w, N1 = h1 * w1, C1 = stages_[0].hidden;
    const int64_t rows_per_task = std::max<int64_t>(1, 256 / w1);  // about 256 pixels a block
    const T* cls_bias = classifier_bias_.data();
    parallel_for_dynamic(h1, rows_per_task, [&](int64_t r0, int64_t r1) {
      thread_local std::vector<T> block;  // grow-only, kept across calls (threads persist)
      for (int64_t y0 = r0; y0 < r1; y0 += rows_per_task) {
        const int64_t y1 = std::min(r1, y0 + rows_per_task), pixels = (y1 - y0) * w1, p0 = y0 * w1;
        if (block.size() < static_cast<size_t>(pixels * D)) block.resize(static_cast<size_t>(pixels * D));
        T* fused = block.data();
        // fused = A_1 x_1 + b + Σ_s up(A_s x_s), then the ReLU.
        kernels::gemm_bias(pixels, ws_.stage1 + p0 * C1, C1, stages_[0].head.packed, head_bias_.data(), fused, D);
        const T* z = ws_.z;
        for (size_t s = 1; s < stages_.size(); ++s) {
          const StageShape& sh = shapes_[s];
          kernels::resize_bilinear_nhwc_add_rows(fused, z, sh.w, D, up_[s - 1].y, up_[s - 1].x, y0, y1);
          z += round_up(sh.h * sh.w * D);
        }
        for (int64_t i = 0; i < pixels * D; ++i) fused[i] = std::max(fused[i], T(0));
        // The classifier, straight into the (L, N1) logits: rows l, columns [p0, p0 + pixels).
        for (int64_t l = 0; l < L; ++l)
          std::fill(logits + l * N1 + p0, logits + l * N1 + p0 + pixels, cls_bias ? cls_bias[l] : T(0));
        kernels::gemm(false, true, L, pixels, D, T(1), classifier_weight_.data(), D, fused, D, T(1), logits + p0, N1);
      }
    });
  }

  // x += attention(LN1(x)); x += MixFFN(LN2(x)), on the token buffer ws_.x (N, C).
  void block(const Block& b, const Stage& st, const StageShape& sh) {
    const int64_t N = sh.h * sh.w, C = st.hidden;
    timed("layer_norm", [&] { layer_norm(ws_.t, ws_.x, b.layer_norm_1, N); });
    timed("attention.query", [&] { linear(ws_.q, ws_.t, b.query, N); });
    const T* kv_input = ws_.t;
    int64_t M = N;
    if (st.sr > 1) {  // sequence reduction: an sr x sr conv with stride sr on the tokens seen as NHWC
      M = sh.rh * sh.rw;
      timed("attention.sr", [&] {
        kernels::im2row_nhwc(ws_.cols, ws_.t, kernels::Im2rowGeometry{C, sh.h, sh.w, st.sr, st.sr, st.sr, 0});
        linear(ws_.r1, ws_.cols, b.sr, M);
        layer_norm(ws_.r2, ws_.r1, b.sr_norm, M);
      });
      kv_input = ws_.r2;
    }
    timed("attention.key_value", [&] {
      linear(ws_.k, kv_input, b.key, M);
      linear(ws_.v, kv_input, b.value, M);
    });
    timed("attention.softmax(QKᵀ)V", [&] {
      kernels::attention_forward<T>(ws_.t, nullptr, ws_.q, ws_.k, ws_.v, 1, N, M, C, st.heads);
    });
    timed("attention.output_dense", [&] { linear_add(ws_.x, ws_.t, b.output_dense, N); });
    timed("layer_norm", [&] { layer_norm(ws_.t, ws_.x, b.layer_norm_2, N); });
    timed("mlp", [&] { mix_ffn(b, st, sh); });
  }

  // Overlapping patch embedding into ws_.t (input may be ws_.x): the conv as im2row + GEMM (straight to tokens), then
  // LayerNorm, a group of about 256 tokens at a time per thread, so the row matrix (K = 147 values
  // per token in stage 1) only ever exists one group at a time, in cache.
  void patch_embedding(const Stage& st, bool nchw, const T* input, int64_t in_h, int64_t in_w, const StageShape& sh) {
    const kernels::Im2rowGeometry g{st.in_channels, in_h, in_w, st.kernel, st.kernel, st.stride, st.pad};
    const int64_t W = sh.w, C = st.hidden, K = g.row_size();
    const int64_t G = std::max<int64_t>(1, std::min(256 / W, (int64_t{1} << 16) / (W * K)));
    parallel_for_dynamic(sh.h, G, [&](int64_t r0, int64_t r1) {
      thread_local std::vector<T> cols;  // grow-only, kept across calls (threads persist)
      if (cols.size() < static_cast<size_t>(G * W * K)) cols.resize(static_cast<size_t>(G * W * K));
      for (int64_t a = r0; a < r1; a += G) {
        const int64_t e = std::min(r1, a + G), tokens = (e - a) * W;
        if (nchw)
          kernels::im2row_nchw_rows(cols.data(), input, g, a, e);
        else
          kernels::im2row_nhwc_rows(cols.data(), input, g, a, e);
        linear(ws_.q + a * W * C, cols.data(), st.patch, tokens);
        kernels::layernorm_forward(ws_.t + a * W * C, ws_.mean + a * W, ws_.rstd + a * W, ws_.q + a * W * C,
                                   st.patch_norm.weight.data(), st.patch_norm.bias.data(), tokens, C,
                                   st.patch_norm.eps);
      }
    });
  }

  // Mix-FFN: x += dense2(GELU(dwconv(dense1(t)))), the depthwise 3x3 on the tokens as an (h, w, Cm)
  // image. Fused over rows of the token grid, so that the Cm-channel maps never exist whole and
  // stay in cache: each thread walks a band of rows at a time in groups of G rows (about 256 tokens,
  // at most 64 K values), keeping dense1's output for three groups (a ring: a row's conv reads its
  // neighbours in the groups before and after) and the conv's output for one group, then runs
  // dense2 on that group. The rows just outside a band are computed by both bands that need them.
  void mix_ffn(const Block& b, const Stage& st, const StageShape& sh) {
    const int64_t H = sh.h, W = sh.w, C = st.hidden, Cm = st.mlp_hidden, row = W * Cm;
    const int64_t G = std::max<int64_t>(1, std::min(256 / W, (int64_t{1} << 16) / row));
    // Bands handed out on demand: up to 4 per thread while a band keeps at least 4 groups (each band
    // computes two rows of dense1 twice), and at least one per thread.
    const int64_t nt = num_threads(), per_thread = std::clamp<int64_t>(H / (nt * 4 * G), 1, 4);
    const int64_t band = (H + nt * per_thread - 1) / (nt * per_thread);
    parallel_for_dynamic(H, band, [&](int64_t r0, int64_t r1) {
      thread_local std::vector<T> buffer;  // grow-only, kept across calls (threads persist)
      if (buffer.size() < static_cast<size_t>(4 * G * row)) buffer.resize(static_cast<size_t>(4 * G * row));
      T* const ring = buffer.data();
      T* const hidden = ring + 3 * G * row;  // GELU(dwconv) of the current group
      // Group k holds rows [r0 + (k-1) G, r0 + k G) in ring slot k % 3; group 0 is only row r0 - 1.
      const int64_t lo = std::max<int64_t>(0, r0 - 1), hi = std::min(H, r1 + 1);
      auto slot = [&](int64_t r) { const int64_t q = r - r0 + G; return ring + ((q / G) % 3 * G + q % G) * row; };
      auto dense1 = [&](int64_t k) {  // the rows of group k that exist and are needed
        const int64_t a = std::max(lo, r0 + (k - 1) * G), e = std::min(hi, r0 + k * G);
        if (a < e) linear(slot(a), ws_.t + a * W * C, b.dense1, (e - a) * W);
      };
      dense1(0);
      dense1(1);
      for (int64_t k = 1; r0 + (k - 1) * G < r1; ++k) {
        dense1(k + 1);  // into slot (k - 2) % 3: group k - 2 is no longer needed
        const int64_t a = r0 + (k - 1) * G, e = std::min(r1, a + G);
        for (int64_t r = a; r < e; ++r) {
          const T* rows[3] = {r > 0 ? slot(r - 1) : nullptr, slot(r), r + 1 < H ? slot(r + 1) : nullptr};
          kernels::dwconv3x3_nhwc_row(hidden + (r - a) * row, rows, b.dwconv.taps.data(), b.dwconv.bias.data(), W, Cm,
                                      /*gelu=*/true);
        }
        linear_add(ws_.x + a * W * C, hidden, b.dense2, (e - a) * W);
      }
    });
  }

  // Runs f, charging its wall time to `phase` when profiling.
  template <class F>
  void timed(const char* phase, F&& f) {
    if (!profiling_) return f();
    const auto start = std::chrono::steady_clock::now();
    f();
    profile_[phase] += std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
  }

  struct Workspace {
    T *x, *t, *q, *cols, *r1, *r2, *k, *v, *z, *stage1, *mean, *rstd;
  };
  using Axis = kernels::detail::ResizeAxis<T>;
  struct Upsample {
    Axis y, x;
  };

  SegformerConfig config_;
  std::vector<Stage> stages_;
  Tensor<T> head_bias_;
  Tensor<T> classifier_weight_, classifier_bias_;
  std::vector<StageShape> shapes_;
  std::vector<Upsample> up_;  // stage s+1's grid -> stage 1's grid, per axis
  std::shared_ptr<T[]> arena_;
  int64_t arena_size_ = 0;
  Workspace ws_{};
  int64_t planned_h_ = -1, planned_w_ = -1;
  bool profiling_ = false;
  std::map<std::string, double> profile_;
};

}  // namespace segml
