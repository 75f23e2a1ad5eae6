// bench/segformer: end-to-end SegFormer benchmark (inference and one training step).
//
//   segformer [--cases b0_512,train_b0_512] [--threads 1,2] [--repeats 10] [--warmup 2] [--json out.json]
//             [--model DIR]
//   segformer --case b0_512 --threads 2 [--model DIR] [--input in.safetensors] [--save-logits out.safetensors]
//             [--json out.json]                         (one case, in this process; used by bench/peers)
//   segformer --cases b0_512 --threads 2 --compete 2 --wait-policies auto,passive --rounds 3
//                                                        (segml's wait policies on a busy machine)
//
// Cases (batch 1 unless stated; 150 labels as ADE20K; random weights unless --model):
//   b0_512, b1_512, b2_512, b0_1024   inference through SegformerInference::run (no autograd)
//   train_b0_512                      one training step, batch 2: forward, loss, backward, AdamW, zero_grad
//   clipseg_352, clipseg_352_x8       CLIPSeg (rd64-refined sizes, random weights unless --model): one
//                                     352x352 image and 1 / 8 prompts through CLIPSegInference::run,
//                                     the text tower included in every timed run (its cache is cleared);
//                                     --prompts P overrides the count. With --input, pixel_values
//                                     (1, 3, 352, 352) and input_ids / attention_mask (>= P, L) as
//                                     bench/peers writes them; --save-logits writes `logits` (P, 352, 352).
//
// Without --case, this program is a driver: it measures the machine's fp32 peak for each thread count,
// then runs every (case, threads) pair in a fresh child process (itself with --case), so that each
// case's peak RSS (ru_maxrss of that child) is its own. Per case it reports median and min ms,
// images/s, GFLOP/s from an analytic multiply-accumulate count (see count_macs), that rate as a
// fraction of the measured peak, peak RSS and the speed-up from the first to the last thread count.
//
// With --model DIR every case uses the checkpoint's architecture and weights (the case name then
// only picks the input size, batch and mode). With --input, pixel_values (and, for training, labels)
// come from a safetensors file; otherwise they are random with a fixed seed.
// A busy machine (--compete N): while a case is timed (warm-up included), a second process runs N
// CPU-bound threads (this program with --burn N), as a browser or a build would on a laptop or a CI
// runner. --wait-policy P (one case) or --wait-policies P,Q (driver) sets how segml's idle threads
// wait (core/thread_pool.hpp: auto, passive, active; without it, SEGML_WAIT_POLICY / OMP_WAIT_POLICY
// or auto). --rounds R runs every (case, threads, policy) child R times, interleaved, and pools their
// times, so the machine's drift hits every policy alike; the report gives each policy's median
// against the first policy's.
// What it does not do: check the logits against a reference (bench/peers does that across engines).
#include <CLI/CLI.hpp>

#include "../examples/cli_checks.hpp"
#include <nlohmann/json.hpp>

#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <segml/core/cpu.hpp>
#include <segml/core/parallel.hpp>
#include <segml/io/checkpoint.hpp>
#include <segml/io/safetensors.hpp>
#include <segml/models/segformer.hpp>
#include <segml/models/segformer_inference.hpp>
#include <segml/models/clipseg/clipseg_inference.hpp>
#include <segml/models/clipseg/pretrained_clipseg.hpp>
#include <segml/train/optim.hpp>

#include "fp32_peak.hpp"


namespace fs = std::filesystem;
using segml::SegformerConfig;
using Clock = std::chrono::steady_clock;

namespace {

// ---- the cases ------------------------------------------------------------------------------------
struct Case {
  std::string name;
  std::string variant;  // b0, b1, b2 (ignored with --model)
  int64_t size;         // square input, size x size
  int64_t batch;
  bool train;
  int64_t prompts = 0;  // > 0: a CLIPSeg case with this many prompts
};

const std::vector<Case>& all_cases() {
  static const std::vector<Case> cases = {{"b0_512", "b0", 512, 1, false},
                                          {"b1_512", "b1", 512, 1, false},
                                          {"b2_512", "b2", 512, 1, false},
                                          {"b0_1024", "b0", 1024, 1, false},
                                          {"train_b0_512", "b0", 512, 2, true},
                                          {"clipseg_352", "clipseg", 352, 1, false, 1},
                                          {"clipseg_352_x8", "clipseg", 352, 1, false, 8}};
  return cases;
}

const Case& find_case(const std::string& name) {
  for (const Case& c : all_cases())
    if (c.name == name) return c;
  std::string known;
  for (const Case& c : all_cases()) known += (known.empty() ? "" : ", ") + c.name;
  throw CLI::ValidationError("unknown case '" + name + "' (known: " + known + ")");
}

SegformerConfig preset(const std::string& variant) {
  SegformerConfig c = variant == "b0" ? SegformerConfig::b0() : variant == "b1" ? SegformerConfig::b1() : SegformerConfig::b2();
  c.set_num_labels(150);
  return c;
}

// ---- analytic multiply-accumulate count, per image ------------------------------------------------
// Counted: every conv and linear (output elements x fan-in), attention (QK^T and AV: 2 N M C per
// layer, all heads together), the depthwise 3x3 conv (9 per output element) and bilinear resizes
// (4 per output element; a resize to the same size is a copy and counts 0). Not counted: LayerNorm,
// BatchNorm, GELU, softmax, bias and residual adds (O(elements), not MACs).
// folded_head: the decode head as Σ_i up(A_i x_i + b_i) (issue 5 §4): linear_c_i becomes a
// (decoder, C_i) map at stage i's resolution and linear_fuse (4D -> D at stride 4) disappears.
// with_loss: adds HF's loss upsampling of the logits to the input size (training only).
struct MacCount {
  std::map<std::string, double> parts;
  double total() const {
    double t = 0;
    for (const auto& [k, v] : parts) t += v;
    return t;
  }
};

MacCount count_macs(const SegformerConfig& c, int64_t H, int64_t W, bool folded_head, bool with_loss = false) {
  MacCount m;
  auto& p = m.parts;
  int64_t h = H, w = W, in = c.num_channels;
  std::vector<int64_t> tokens;
  for (int64_t i = 0; i < c.num_encoder_blocks; ++i) {
    const auto s = static_cast<size_t>(i);
    const int64_t k = c.patch_sizes[s], stride = c.strides[s], C = c.hidden_sizes[s], sr = c.sr_ratios[s];
    h = (h + 2 * (k / 2) - k) / stride + 1;
    w = (w + 2 * (k / 2) - k) / stride + 1;
    const double N = double(h * w), Cd = double(C), hid = double(C * c.mlp_ratios[s]);
    p["patch_embed"] += N * Cd * double(in * k * k);
    for (int64_t j = 0; j < c.depths[s]; ++j) {
      double M = N;
      if (sr > 1) {
        M = double((h / sr) * (w / sr));
        p["attn_sr_conv"] += M * Cd * Cd * double(sr * sr);
      }
      p["attn_qkvo"] += 2 * N * Cd * Cd + 2 * M * Cd * Cd;
      p["attn_scores_av"] += 2 * N * M * Cd;
      p["ffn_dense"] += 2 * N * Cd * hid;
      p["ffn_dwconv"] += N * hid * 9;
    }
    tokens.push_back(h * w);
    in = C;
  }
  const double N1 = double(tokens[0]), D = double(c.decoder_hidden_size);
  for (size_t i = 0; i < tokens.size(); ++i) {
    p["head_linear_c"] += double(tokens[i]) * double(c.hidden_sizes[i]) * D;
    if (tokens[i] != tokens[0]) p["head_resize"] += N1 * D * 4;
  }
  if (!folded_head) p["head_linear_fuse"] = N1 * D * D * double(c.num_encoder_blocks);
  p["head_classifier"] = N1 * D * double(c.num_labels);
  if (with_loss) p["loss_resize"] = double(H * W * c.num_labels) * 4;
  return m;
}

// One training step: forward (with the loss resize) + backward, counted as 2x forward (gradient of
// the input and of the weights), minus the input gradient of the first conv (pixels need none).
double train_macs(const SegformerConfig& c, int64_t H, int64_t W, bool folded_head) {
  const MacCount fwd = count_macs(c, H, W, folded_head, /*with_loss=*/true);
  const int64_t k = c.patch_sizes[0];
  const int64_t h = (H + 2 * (k / 2) - k) / c.strides[0] + 1, w = (W + 2 * (k / 2) - k) / c.strides[0] + 1;
  const double first_input_grad = double(h * w * c.hidden_sizes[0] * c.num_channels * k * k);
  return 3 * fwd.total() - first_input_grad;
}

// CLIPSeg, one image of H x W and prompts of the given token counts. segml's way: the vision tower up
// to the deepest extract layer once, the text tower per prompt over its own tokens, the decoder per
// prompt. hf_way: HF's CLIPSegForImageSegmentation per (image, prompt) pair: all vision layers per
// prompt and the text tower over `padded` tokens. Counted as count_macs does (linear layers,
// attention's two products, convs); quick_gelu, LayerNorm, softmax and the adds are not MACs.
MacCount clipseg_macs(const segml::CLIPSegConfig& c, int64_t H, int64_t W, const std::vector<int64_t>& tokens, bool hf_way,
                      int64_t padded = 77) {
  MacCount m;
  auto& p = m.parts;
  const auto& vc = c.vision_config;
  const auto& tc = c.text_config;
  const double N = double((H / vc.patch_size) * (W / vc.patch_size)), rows = N + 1, D = double(vc.hidden_size);
  auto layer = [](double n, double d, double ff) { return n * (4 * d * d + 2 * d * ff) + 2 * n * n * d; };
  const int64_t deepest = *std::max_element(c.extract_layers.begin(), c.extract_layers.end()) + 1;
  const double vision = N * D * double(vc.num_channels * vc.patch_size * vc.patch_size) +
                        double(hf_way ? vc.num_hidden_layers : deepest) * layer(rows, D, double(vc.intermediate_size));
  const double P = double(tokens.size()), R = double(c.reduce_dim), K = double(vc.patch_size / 4);
  p["vision"] = hf_way ? P * vision : vision;
  for (int64_t t : tokens)
    p["text"] += double(tc.num_hidden_layers) * layer(double(hf_way ? padded : t), double(tc.hidden_size),
                                                      double(tc.intermediate_size)) +
                 double(tc.hidden_size) * double(c.projection_dim);
  p["decoder_reduces"] = (hf_way ? P : 1.0) * double(c.extract_layers.size()) * rows * D * R;
  p["decoder_layers"] = P * double(c.extract_layers.size()) * layer(rows, R, double(c.decoder_intermediate_size));
  const double head = c.use_complex_transposed_convolution
                          ? N * R * R * 9 + N * R * (R / 2) * K * K + N * K * K * (R / 2) * K * K
                          : N * R * double(vc.patch_size * vc.patch_size);
  p["decoder_head"] = P * head;
  return m;
}

// ---- fp32 peak (bench/fp32_peak.hpp), of the widest ISA the CPU has -------------------------------
double peak_gflops(int threads) { return segml_bench::peak_gflops(segml::detect_isa(), threads); }

// ---- one case, in this process --------------------------------------------------------------------
struct Options {
  std::vector<std::string> cases;
  std::string one_case;
  std::vector<int> threads;
  int repeats = 10, warmup = 2;
  std::string model_dir, input, save_logits, json_out;
  int64_t prompts = 0;  // CLIPSeg cases: overrides the case's prompt count
  bool child = false;
  int compete = 0;                         // CPU-bound threads of a competing process while timing
  std::string wait_policy;                 // --case: auto | passive | active ("" = the environment's)
  std::vector<std::string> wait_policies;  // driver: one child per policy
  int rounds = 1;                          // driver: interleaved repetitions of every child
  int burn = 0;                            // internal: be the competing process, with this many threads
};

// The competing process: `threads` threads of dependent floating-point work, until killed. It dies
// with its parent (PR_SET_PDEATHSIG), so a crashed benchmark leaves nothing spinning.
[[noreturn]] void burn(int threads) {
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (getppid() == 1) _exit(0);
  auto spin = [] {
    volatile double x = 1.0;
    for (;;) x = x * 1.0000001 + 1e-9;
  };
  std::vector<std::thread> pool;
  for (int t = 1; t < threads; ++t) pool.emplace_back(spin);
  spin();
  _exit(0);  // not reached
}

// Runs `--burn N` beside this process for its lifetime (RAII); N = 0 does nothing.
class Competitor {
 public:
  explicit Competitor(int threads) {
    if (threads <= 0) return;
    std::string a0 = "/proc/self/exe", a1 = "--burn", a2 = std::to_string(threads);
    char* argv[] = {a0.data(), a1.data(), a2.data(), nullptr};
    std::fflush(stdout);
    pid_ = fork();
    if (pid_ < 0) segml::fail("--compete: fork failed");
    if (pid_ == 0) {
      execv("/proc/self/exe", argv);
      _exit(127);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(200));  // let its threads get going
  }
  ~Competitor() {
    if (pid_ <= 0) return;
    kill(pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
  }
  Competitor(const Competitor&) = delete;
  Competitor& operator=(const Competitor&) = delete;

 private:
  pid_t pid_ = 0;
};

void apply_wait_policy(const std::string& p) {
  if (p.empty()) return;
  if (p == "auto") segml::set_wait_policy(segml::WaitPolicy::automatic);
  else if (p == "passive") segml::set_wait_policy(segml::WaitPolicy::passive);
  else if (p == "active") segml::set_wait_policy(segml::WaitPolicy::active);
  else throw CLI::ValidationError("--wait-policy: '" + p + "' is not one of auto, passive, active");
}

const char* wait_policy_name(segml::WaitPolicy p) {
  return p == segml::WaitPolicy::passive ? "passive" : p == segml::WaitPolicy::active ? "active" : "auto";
}

double peak_rss_mb() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return double(ru.ru_maxrss) / 1024.0;  // ru_maxrss is in KiB on Linux
}

double ms_since(Clock::time_point t0) { return std::chrono::duration<double, std::milli>(Clock::now() - t0).count(); }

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

void check_finite(const segml::Tensor<float>& t, const char* what) {
  const segml::Tensor<float> c = t.contiguous();
  for (int64_t i = 0; i < c.numel(); ++i)
    if (!std::isfinite(c.data()[i])) segml::fail(what, " is not finite at element ", i);
}

// CLIPSeg: `P` prompts (token ids without padding) from --input or made up (BOS, P-dependent words, EOS).
std::vector<std::vector<int64_t>> clipseg_prompts(const segml::CLIPSegConfig& cfg, int64_t P, const Options& opt) {
  std::vector<std::vector<int64_t>> prompts;
  if (!opt.input.empty()) {
    const segml::safetensors::File f(opt.input);
    const segml::Tensor<int64_t> ids = f.get<int64_t>("input_ids"), mask = f.get<int64_t>("attention_mask");
    if (ids.dim() != 2 || ids.size(0) < P || mask.shape() != ids.shape())
      segml::fail("--input: input_ids ", ids.shape(), " / attention_mask ", mask.shape(), " must be (>= ", P, ", L)");
    for (int64_t r = 0; r < P; ++r) {
      std::vector<int64_t> row;
      for (int64_t j = 0; j < ids.size(1); ++j)
        if (mask.data()[r * ids.size(1) + j]) row.push_back(ids.data()[r * ids.size(1) + j]);
      prompts.push_back(row);
    }
    return prompts;
  }
  const int64_t V = cfg.text_config.vocab_size;
  for (int64_t r = 0; r < P; ++r) {  // "a photo of a <word r>" shaped: 7 tokens, EOS the largest id
    std::vector<int64_t> row{V - 2};
    for (int64_t j = 0; j < 5; ++j) row.push_back((320 + 97 * r + 13 * j) % (V - 2));
    row.push_back(V - 1);
    prompts.push_back(row);
  }
  return prompts;
}

nlohmann::json run_clipseg_case(const Case& cs, const Options& opt) {
  const int threads = opt.threads.empty() ? segml::num_threads() : opt.threads.front();
  segml::set_num_threads(threads);
  segml::LoadOptions strict;
  strict.strict = true;
  // The engine keeps its own packed weights; the model is freed once it is built.
  segml::CLIPSegInference<float> engine(opt.model_dir.empty()
                                            ? segml::CLIPSegForImageSegmentation<float>(segml::CLIPSegConfig::rd64_refined(), 0)
                                            : segml::clipseg_from_pretrained<float>(opt.model_dir, strict));
  const segml::CLIPSegConfig& cfg = engine.config();
  const int64_t P = opt.prompts > 0 ? opt.prompts : cs.prompts;
  const segml::Shape pixel_shape{1, cfg.vision_config.num_channels, cs.size, cs.size};
  segml::Tensor<float> pixels;
  if (!opt.input.empty()) {
    pixels = segml::safetensors::File(opt.input).get<float>("pixel_values", pixel_shape);
  } else {
    std::mt19937 rng(1);
    std::normal_distribution<float> normal(0.f, 1.f);
    pixels = segml::Tensor<float>::empty(pixel_shape);
    for (int64_t i = 0; i < pixels.numel(); ++i) pixels.data()[i] = normal(rng);
  }
  const std::vector<std::vector<int64_t>> prompts = clipseg_prompts(cfg, P, opt);
  const double rss_setup = peak_rss_mb();

  segml::Tensor<float> logits = engine.run(pixels, prompts);
  const int64_t out = (cs.size / cfg.vision_config.patch_size) * cfg.vision_config.patch_size;
  if (logits.shape() != segml::Shape{P, out, out}) segml::fail("logits have shape ", logits.shape());
  check_finite(logits, "the logits");
  if (!opt.save_logits.empty())
    segml::safetensors::save(opt.save_logits, {{"logits", segml::safetensors::make_entry(logits)}});
  std::vector<double> vision, text, decoder;
  auto step = [&] {
    engine.clear_text_cache();  // every timed run pays for its prompts' text tower
    logits = engine.run(pixels, prompts);
  };
  const Competitor competitor(opt.compete);
  for (int i = 0; i < opt.warmup; ++i) step();
  std::vector<double> times;
  for (int i = 0; i < opt.repeats; ++i) {
    const auto t0 = Clock::now();
    step();
    times.push_back(ms_since(t0));
    vision.push_back(engine.timings().vision);
    text.push_back(engine.timings().text);
    decoder.push_back(engine.timings().decoder);
  }
  std::vector<int64_t> lengths;
  for (const auto& p : prompts) lengths.push_back(int64_t(p.size()));
  const MacCount ours = clipseg_macs(cfg, cs.size, cs.size, lengths, false);
  const MacCount hf = clipseg_macs(cfg, cs.size, cs.size, lengths, true);
  const double med = median(times);
  nlohmann::json r;
  r["case"] = cs.name;
  r["model"] = opt.model_dir.empty() ? "CLIPSeg rd64-refined sizes (random weights)" : opt.model_dir;
  r["mode"] = "inference: vision tower once, text tower per prompt (uncached), decoder batched";
  r["input"] = pixel_shape;
  r["prompts"] = P;
  r["prompt_tokens"] = lengths;
  r["threads"] = threads;
  r["isa"] = segml::isa_name(segml::isa());
  r["config"] = {{"isa", segml::isa_name(segml::isa())}, {"threads", threads}};
  r["wait_policy"] = wait_policy_name(segml::wait_policy());
  r["compete"] = opt.compete;
  r["warmup"] = opt.warmup;
  r["times_ms"] = times;
  r["median_ms"] = med;
  r["min_ms"] = *std::min_element(times.begin(), times.end());
  r["phases_median_ms"] = {{"vision", median(vision)}, {"text", median(text)}, {"decoder", median(decoder)}};
  r["images_per_s"] = 1000.0 / med;
  r["gmac_nominal"] = ours.total() * 1e-9;  // what segml computes
  r["gmac_folded"] = ours.total() * 1e-9;
  r["gmac_hf_way"] = hf.total() * 1e-9;     // what HF computes for the same result
  r["gflops_nominal"] = 2 * ours.total() / (med * 1e-3) * 1e-9;
  r["gflops_folded"] = r["gflops_nominal"];
  r["rss_before_first_run_mb"] = rss_setup;
  r["peak_rss_mb"] = peak_rss_mb();
  return r;
}

nlohmann::json run_case(const Case& cs, const Options& opt) {
  if (cs.prompts > 0) return run_clipseg_case(cs, opt);
  const int threads = opt.threads.empty() ? segml::num_threads() : opt.threads.front();
  segml::set_num_threads(threads);
  segml::LoadOptions strict;
  strict.strict = true;
  segml::SegformerForSemanticSegmentation<float> model =
      opt.model_dir.empty() ? segml::SegformerForSemanticSegmentation<float>(preset(cs.variant), /*seed=*/0)
                            : segml::from_pretrained<float>(opt.model_dir, strict);
  const SegformerConfig& cfg = model.config;
  const segml::Shape pixel_shape{cs.batch, cfg.num_channels, cs.size, cs.size};

  segml::Tensor<float> pixels;
  segml::Tensor<int64_t> labels;
  if (!opt.input.empty()) {
    const segml::safetensors::File f(opt.input);
    pixels = f.get<float>("pixel_values", pixel_shape);
    if (cs.train) labels = f.get<int64_t>("labels", {cs.batch, cs.size, cs.size});
  } else {
    std::mt19937 rng(1);
    std::normal_distribution<float> normal(0.f, 1.f);
    pixels = segml::Tensor<float>::empty(pixel_shape);
    for (int64_t i = 0; i < pixels.numel(); ++i) pixels.data()[i] = normal(rng);
    if (cs.train) {
      std::uniform_int_distribution<int64_t> label(0, cfg.num_labels - 1);
      labels = segml::Tensor<int64_t>::empty({cs.batch, cs.size, cs.size});
      for (int64_t i = 0; i < labels.numel(); ++i) labels.data()[i] = label(rng);
    }
  }

  const double rss_setup = peak_rss_mb();  // model and input in memory, nothing run yet

  std::function<void()> step;
  segml::SegformerInference<float> engine(model);
  segml::Tensor<float> logits, loss;  // the last run's outputs (the step lambdas write them)
  std::unique_ptr<segml::train::AdamW<float>> optimizer;
  if (cs.train) {
    segml::train::ParamGroup<float> group;
    group.weight_decay = 0.01;
    segml::nn::Visitor<float> v;
    v.parameter = [&](const std::string& name, segml::Var<float>& p) { group.params.emplace_back(name, p); };
    v.buffer = [](const std::string&, segml::Tensor<float>&) {};
    model.visit(v);
    optimizer = std::make_unique<segml::train::AdamW<float>>(std::vector<segml::train::ParamGroup<float>>{group});
    model.train();
    step = [&] {
      const segml::SegformerOutput<float> out = model.forward(segml::Var<float>(pixels), &labels);
      out.loss.backward();
      optimizer->step(6e-5);
      optimizer->zero_grad();
      loss = out.loss.data();
    };
    step();  // the first step, untimed, validates: its loss must be finite
    check_finite(loss, "the training loss");
  } else {
    logits = engine.run(pixels);
    const segml::Shape want{cs.batch, cfg.num_labels, (cs.size + 3) / 4, (cs.size + 3) / 4};
    if (logits.shape() != want) segml::fail("logits have shape ", logits.shape(), ", expected ", want);
    check_finite(logits, "the logits");
    if (!opt.save_logits.empty())
      segml::safetensors::save(opt.save_logits, {{"logits", segml::safetensors::make_entry(logits)}});
    step = [&] { logits = engine.run(pixels); };
  }

  const Competitor competitor(opt.compete);
  for (int i = 0; i < opt.warmup; ++i) step();
  std::vector<double> times;
  for (int i = 0; i < opt.repeats; ++i) {
    const auto t0 = Clock::now();
    step();
    times.push_back(ms_since(t0));
  }

  const double med = median(times), best = *std::min_element(times.begin(), times.end());
  const double per_image_nominal = cs.train ? train_macs(cfg, cs.size, cs.size, false)
                                            : count_macs(cfg, cs.size, cs.size, false).total();
  const double per_image_folded = cs.train ? train_macs(cfg, cs.size, cs.size, true)
                                           : count_macs(cfg, cs.size, cs.size, true).total();
  nlohmann::json r;
  r["case"] = cs.name;
  r["model"] = opt.model_dir.empty() ? cs.variant + " (random weights, 150 labels)" : opt.model_dir;
  r["mode"] = cs.train ? "train step (forward, loss, backward, AdamW)" : "inference";
  r["input"] = pixel_shape;
  r["threads"] = threads;
  r["isa"] = segml::isa_name(segml::isa());
  r["wait_policy"] = wait_policy_name(segml::wait_policy());
  r["compete"] = opt.compete;
  r["warmup"] = opt.warmup;
  r["times_ms"] = times;
  r["median_ms"] = med;
  r["min_ms"] = best;
  r["images_per_s"] = double(cs.batch) * 1000.0 / med;
  r["gmac_nominal"] = per_image_nominal * double(cs.batch) * 1e-9;
  r["gmac_folded"] = per_image_folded * double(cs.batch) * 1e-9;
  r["gflops_nominal"] = 2 * per_image_nominal * double(cs.batch) / (med * 1e-3) * 1e-9;
  r["gflops_folded"] = 2 * per_image_folded * double(cs.batch) / (med * 1e-3) * 1e-9;
  r["rss_before_first_run_mb"] = rss_setup;
  r["peak_rss_mb"] = peak_rss_mb();
  return r;
}

// ---- the driver: every (case, threads) in a fresh child process -----------------------------------
nlohmann::json run_child(const Case& cs, int threads, const std::string& policy, const Options& opt, const fs::path& tmp) {
  const fs::path out = tmp / (cs.name + "_t" + std::to_string(threads) + "_" + policy + ".json");
  std::vector<std::string> args = {"/proc/self/exe", "--child",   "--case",   cs.name,
                                   "--threads",      std::to_string(threads), "--repeats", std::to_string(opt.repeats),
                                   "--warmup",       std::to_string(opt.warmup), "--json", out.string()};
  if (!opt.model_dir.empty()) args.insert(args.end(), {"--model", opt.model_dir});
  if (opt.prompts > 0) args.insert(args.end(), {"--prompts", std::to_string(opt.prompts)});
  if (!opt.input.empty()) args.insert(args.end(), {"--input", opt.input});
  if (!policy.empty()) args.insert(args.end(), {"--wait-policy", policy});
  if (opt.compete > 0) args.insert(args.end(), {"--compete", std::to_string(opt.compete)});
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  std::fflush(stdout);
  const pid_t pid = fork();
  if (pid < 0) segml::fail("fork failed");
  if (pid == 0) {
    execv("/proc/self/exe", argv.data());
    std::perror("bench/segformer: execv");
    _exit(127);
  }
  int status = 0;
  rusage ru{};
  if (wait4(pid, &status, 0, &ru) < 0) segml::fail("wait4 failed");
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
    segml::fail("case ", cs.name, " with ", threads, " threads failed (status ", status, ")");
  std::ifstream in(out);
  nlohmann::json r = nlohmann::json::parse(in);
  r["peak_rss_mb"] = double(ru.ru_maxrss) / 1024.0;  // the child's own peak, seen by wait4
  return r;
}

void print_table(const nlohmann::json& results, const std::map<int, double>& peak) {
  std::printf("\n| case | threads | wait policy | competing threads | median ms | min ms | images/s | GFLOP/s (nominal / folded) | %% of peak (folded) | peak RSS MB |\n");
  std::printf("|---|---|---|---|---|---|---|---|---|---|\n");
  for (const auto& r : results) {
    const int t = r["threads"];
    std::printf("| %s | %d | %s | %d | %.1f | %.1f | %.2f | %.1f / %.1f | %.1f | %.0f |\n", r["case"].get<std::string>().c_str(), t,
                r["wait_policy"].get<std::string>().c_str(), r["compete"].get<int>(),
                r["median_ms"].get<double>(), r["min_ms"].get<double>(), r["images_per_s"].get<double>(),
                r["gflops_nominal"].get<double>(), r["gflops_folded"].get<double>(),
                peak.at(t) > 0 ? 100.0 * r["gflops_folded"].get<double>() / peak.at(t) : 0.0,
                r["peak_rss_mb"].get<double>());
  }
}

int drive(const Options& opt) {
  std::vector<int> threads = opt.threads.empty() ? std::vector<int>{1, 2} : opt.threads;
  const std::vector<std::string> names = opt.cases.empty() ? [] {
    std::vector<std::string> n;
    for (const Case& c : all_cases()) n.push_back(c.name);
    return n;
  }() : opt.cases;

  nlohmann::json doc;
  doc["isa_detected"] = segml::isa_name(segml::detect_isa());
  doc["omp_max_threads"] = segml::num_threads();
  doc["repeats"] = opt.repeats;
  doc["warmup"] = opt.warmup;
  doc["rounds"] = opt.rounds;
  doc["compete"] = opt.compete;
  std::map<int, double> peak;
  for (int t : threads) {
    peak[t] = peak_gflops(t);
    std::printf("fp32 peak, %s FMA chains, %d thread%s: %.1f GFLOP/s\n", segml::isa_name(segml::detect_isa()), t,
                t == 1 ? "" : "s", peak[t]);
    doc["peak_gflops"][std::to_string(t)] = peak[t];
  }

  // MAC counts of every case's architecture, nominal and with the folded decode head.
  for (const std::string& n : names) {
    const Case& cs = find_case(n);
    if (cs.prompts > 0) {  // CLIPSeg: segml's way and HF's way, for the made-up 7-token prompts
      const segml::CLIPSegConfig cfg = opt.model_dir.empty() ? segml::CLIPSegConfig::rd64_refined()
                                                             : segml::CLIPSegConfig::from_json_file((fs::path(opt.model_dir) / "config.json").string());
      const std::vector<int64_t> lengths(size_t(opt.prompts > 0 ? opt.prompts : cs.prompts), 7);
      const MacCount ours = clipseg_macs(cfg, cs.size, cs.size, lengths, false), hf = clipseg_macs(cfg, cs.size, cs.size, lengths, true);
      std::printf("%s: %.3f GMAC (HF's way, one image-prompt pair per call, prompts padded to 77: %.3f)\n", n.c_str(),
                  ours.total() * 1e-9, hf.total() * 1e-9);
      doc["gmac_per_image"][n] = {{"nominal", ours.total() * 1e-9}, {"folded", ours.total() * 1e-9}, {"hf_way", hf.total() * 1e-9}};
      continue;
    }
    const SegformerConfig cfg = opt.model_dir.empty() ? preset(cs.variant)
                                                      : SegformerConfig::from_json_file((fs::path(opt.model_dir) / "config.json").string());
    const MacCount nominal = count_macs(cfg, cs.size, cs.size, false), folded = count_macs(cfg, cs.size, cs.size, true);
    std::printf("%s: %.3f GMAC per image (folded decode head: %.3f)", n.c_str(), nominal.total() * 1e-9,
                folded.total() * 1e-9);
    if (cs.train)
      std::printf("; training step, batch %lld: %.2f GMAC (folded: %.2f)", static_cast<long long>(cs.batch),
                  train_macs(cfg, cs.size, cs.size, false) * 1e-9 * double(cs.batch),
                  train_macs(cfg, cs.size, cs.size, true) * 1e-9 * double(cs.batch));
    std::printf("\n");
    nlohmann::json parts;
    for (const auto& [k, v] : nominal.parts) parts[k] = v * 1e-9;
    doc["gmac_per_image"][n] = {{"nominal", nominal.total() * 1e-9}, {"folded", folded.total() * 1e-9}, {"parts", parts}};
  }

  const fs::path tmp = fs::temp_directory_path() / ("segml_bench_" + std::to_string(getpid()));
  fs::create_directories(tmp);
  const std::vector<std::string> policies = opt.wait_policies.empty() ? std::vector<std::string>{""} : opt.wait_policies;
  if (opt.compete > 0)
    std::printf("a competing process runs %d CPU-bound thread%s while each case is timed\n", opt.compete, opt.compete == 1 ? "" : "s");
  // Round-robin over (case, threads, policy), `rounds` times: each child's times join its key's.
  std::map<std::string, nlohmann::json> pooled;
  std::vector<std::string> order;
  for (int round = 0; round < opt.rounds; ++round)
    for (const std::string& n : names)
      for (int t : threads)
        for (const std::string& p : policies) {
          nlohmann::json r = run_child(find_case(n), t, p, opt, tmp);
          const std::string key = n + "/" + std::to_string(t) + "/" + p;
          std::printf("  %-13s %d thread%s%s%s: median %.1f ms, min %.1f ms, peak RSS %.0f MB\n", n.c_str(), t, t == 1 ? " " : "s",
                      p.empty() ? "" : ", wait ", p.c_str(), r["median_ms"].get<double>(), r["min_ms"].get<double>(),
                      r["peak_rss_mb"].get<double>());
          if (!pooled.count(key)) {
            order.push_back(key);
            pooled[key] = r;
            continue;
          }
          nlohmann::json& acc = pooled[key];
          for (const auto& x : r["times_ms"]) acc["times_ms"].push_back(x);
          acc["peak_rss_mb"] = std::max(acc["peak_rss_mb"].get<double>(), r["peak_rss_mb"].get<double>());
        }
  fs::remove_all(tmp);
  nlohmann::json results = nlohmann::json::array();
  for (const std::string& key : order) {
    nlohmann::json r = pooled[key];
    const std::vector<double> times = r["times_ms"].get<std::vector<double>>();
    const double med = median(times), scale = r["median_ms"].get<double>() / med;
    r["median_ms"] = med;
    r["min_ms"] = *std::min_element(times.begin(), times.end());
    r["images_per_s"] = r["images_per_s"].get<double>() * scale;
    r["gflops_nominal"] = r["gflops_nominal"].get<double>() * scale;
    r["gflops_folded"] = r["gflops_folded"].get<double>() * scale;
    const int t = r["threads"];
    r["pct_peak_nominal"] = peak[t] > 0 ? 100.0 * r["gflops_nominal"].get<double>() / peak[t] : 0.0;
    r["pct_peak_folded"] = peak[t] > 0 ? 100.0 * r["gflops_folded"].get<double>() / peak[t] : 0.0;
    results.push_back(r);
  }
  doc["results"] = results;

  print_table(results, peak);
  if (policies.size() > 1) {
    std::printf("\nWait policies (median / median with wait policy %s, %d round%s pooled):\n", policies.front().c_str(), opt.rounds,
                opt.rounds == 1 ? "" : "s");
    for (const std::string& n : names)
      for (int t : threads) {
        const double base = pooled[n + "/" + std::to_string(t) + "/" + policies.front()]["median_ms"].get<double>();
        for (const auto& r : results)
          if (r["case"] == n && r["threads"] == t) {
            const double ratio = r["median_ms"].get<double>() / base;
            std::printf("  %-13s %d thread%s, %-8s %.2fx\n", n.c_str(), t, t == 1 ? " " : "s",
                        r["wait_policy"].get<std::string>().c_str(), ratio);
            doc["wait_policy_ratio"][n][std::to_string(t)][r["wait_policy"].get<std::string>()] = ratio;
          }
      }
  }
  if (threads.size() > 1 && policies.size() == 1) {
    std::printf("\nScaling (median at %d thread(s) / median at %d threads):\n", threads.front(), threads.back());
    for (const std::string& n : names) {
      double first = 0, last = 0;
      for (const auto& r : results) {
        if (r["case"] != n) continue;
        if (r["threads"] == threads.front()) first = r["median_ms"];
        if (r["threads"] == threads.back()) last = r["median_ms"];
      }
      std::printf("  %-13s %.2fx\n", n.c_str(), first / last);
      doc["scaling"][n] = first / last;
    }
  }
  if (!opt.json_out.empty()) std::ofstream(opt.json_out) << doc.dump(2) << "\n";
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"bench/segformer: end-to-end SegFormer inference and training-step benchmark"};
  Options opt;
  std::string cases_csv;
  app.add_option("--cases", cases_csv, "comma-separated subset of: b0_512,b1_512,b2_512,b0_1024,train_b0_512,clipseg_352,clipseg_352_x8 (default all)");
  app.add_option("--case", opt.one_case, "run one case in this process (no child processes, no peak measurement)");
  app.add_option("--threads", opt.threads, "thread counts (driver default: 1 2; --case: one value)")
      ->delimiter(',')
      ->check(segml::cli::whole(1, 1024));
  app.add_option("--repeats", opt.repeats, "timed runs per case")->check(segml::cli::whole(1, 100000));
  app.add_option("--warmup", opt.warmup, "untimed runs before timing")->check(segml::cli::whole(0, 100000));
  app.add_option("--model", opt.model_dir, "HF checkpoint folder (config.json + model.safetensors) instead of random weights")
      ->check(CLI::ExistingDirectory);
  app.add_option("--input", opt.input, "safetensors with pixel_values (B,3,H,W) and, for training, labels (B,H,W)")
      ->check(CLI::ExistingFile);
  app.add_option("--save-logits", opt.save_logits, "with --case (inference): write the logits as safetensors `logits`");
  app.add_option("--prompts", opt.prompts, "CLIPSeg cases: the number of prompts (default: the case's)")
      ->check(segml::cli::whole(1, 255));
  app.add_option("--json", opt.json_out, "write the results as JSON");
  app.add_option("--compete", opt.compete, "run a competing process with this many CPU-bound threads while timing (a busy machine)")
      ->check(segml::cli::whole(0, 1024));
  app.add_option("--wait-policy", opt.wait_policy, "with --case: how idle segml threads wait: auto, passive or active (default: the environment's)")
      ->check(CLI::IsMember({"auto", "passive", "active"}));
  app.add_option("--wait-policies", opt.wait_policies, "driver: run every case under each of these wait policies (e.g. auto,passive)")
      ->delimiter(',')
      ->check(CLI::IsMember({"auto", "passive", "active"}));
  app.add_option("--rounds", opt.rounds, "driver: run every (case, threads, policy) child this many times, interleaved, pooling the times")
      ->check(segml::cli::whole(1, 1000));
  app.add_option("--burn", opt.burn, "internal: be the competing process")->group("")->check(segml::cli::whole(1, 1024));
  app.add_flag("--child", opt.child, "internal: invoked by the driver")->group("");
  CLI11_PARSE(app, argc, argv);

  if (opt.burn > 0) burn(opt.burn);
  try {
    apply_wait_policy(opt.wait_policy);
    std::stringstream ss(cases_csv);
    for (std::string n; std::getline(ss, n, ',');)
      if (!n.empty()) opt.cases.push_back(find_case(n).name);
    if (opt.one_case.empty()) return drive(opt);

    if (opt.threads.size() > 1) throw CLI::ValidationError("--case takes one --threads value");
    const nlohmann::json r = run_case(find_case(opt.one_case), opt);
    if (!opt.json_out.empty()) std::ofstream(opt.json_out) << r.dump(2) << "\n";
    if (!opt.child)
      std::printf("%s, %d thread(s): median %.1f ms, min %.1f ms, %.2f images/s, %.1f GFLOP/s nominal, peak RSS %.0f MB\n",
                  opt.one_case.c_str(), r["threads"].get<int>(), r["median_ms"].get<double>(), r["min_ms"].get<double>(),
                  r["images_per_s"].get<double>(), r["gflops_nominal"].get<double>(), r["peak_rss_mb"].get<double>());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench/segformer: %s\n", e.what());
    return 1;
  }
  return 0;
}
