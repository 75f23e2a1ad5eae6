// zero_shot: zero-shot segmentation from text prompts with a CLIPSeg checkpoint (no training).
//
//   zero_shot --model clipseg-rd64-refined --image street.jpg --prompts "road;a car;pedestrian crossing the street"
//             [--output overlay.png] [--mask mask.png] [--logits logits.safetensors] [--heatmaps DIR]
//             [--no-heatmaps] [--threshold 0.1] [--alpha A] [--threads N] [--repeat R] [--max-pixels P]
//             [--allow-non-finite] [--revision REV]
//
// --model may also be the hub id itself (CIDAS/clipseg-rd64-refined): found in the HF cache or
// downloaded into it, at --revision (docs/weights.md, hub ids).
// The model folder is what `huggingface-cli download CIDAS/clipseg-rd64-refined` gives: config.json,
// model.safetensors, preprocessor_config.json and the CLIP tokenizer's vocab.json + merges.txt.
// The pipeline is HF's: ViTImageProcessor (PIL-exact resize to the processor's size, 352 x 352 for
// rd64-refined), CLIPTokenizer, CLIPSegForImageSegmentation, then HF's blog's post-processing: a
// sigmoid per prompt, bilinear upsampling to the image, argmax with a "nothing" channel at
// --threshold. The model runs on the inference engine (models/clipseg/clipseg_inference.hpp): the
// vision tower once per image, the text tower once per prompt, the decoder for all prompts at once.
// Writes
//   --output    the image with each prompt's pixels coloured and a legend (prompt, share of pixels);
//   --mask      the label map, 8-bit PNG: 0 = nothing, k = the k-th prompt (1-based);
//   --logits    the raw decoder logits, float32 tensor `logits` (num_prompts, H, W) at the processor's
//               resolution, as HF's model returns them;
//   --heatmaps  a folder with one heat map per prompt (its probability over the image),
//               <image stem>_<k>_<prompt>.png; by default next to the overlay (<overlay stem>-heatmaps/),
//               --no-heatmaps skips them.
// With a folder as --image, every image in it is processed and --output, --mask, --logits name
// folders (<stem>.png / <stem>.safetensors). Prints the latency of each phase: preprocess (decode,
// resize, normalise), vision tower, text (tokenize + text tower; cached prompts cost nothing),
// decoder, post-process (sigmoid, upsample, argmax); --repeat R runs the model R times and reports
// medians. An image over --max-pixels pixels is refused from its header before decoding.
#include <CLI/CLI.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <string>
#include <vector>

#include <segml/io/image.hpp>
#include <segml/io/overlay.hpp>
#include <segml/models/clip/tokenization_clip.hpp>
#include <segml/models/clipseg/clipseg_inference.hpp>
#include <segml/models/clipseg/pretrained_clipseg.hpp>
#include <segml/models/clipseg/processing_clipseg.hpp>

#include "cli_checks.hpp"
#include "program_support.hpp"

namespace fs = std::filesystem;
using namespace segml;

namespace {

using program::Clock;
using program::median;
using program::ms_since;

// "road; a car ;x" -> {"road", "a car", "x"}; empty prompts are an error naming their position.
std::vector<std::string> split_prompts(const std::string& text) {
  std::vector<std::string> out;
  size_t start = 0;
  while (true) {
    const size_t end = text.find(';', start);
    std::string p = text.substr(start, end == std::string::npos ? std::string::npos : end - start);
    const size_t a = p.find_first_not_of(" \t\r\n"), b = p.find_last_not_of(" \t\r\n");
    p = a == std::string::npos ? "" : p.substr(a, b - a + 1);
    if (p.empty()) fail("--prompts: prompt ", out.size() + 1, " is empty (prompts are separated by ';')");
    out.push_back(p);
    if (end == std::string::npos) break;
    start = end + 1;
  }
  return out;
}

// A file-name-safe form of a prompt: letters and digits kept, runs of anything else as one '-'.
std::string slug(const std::string& prompt) {
  std::string s;
  for (unsigned char c : prompt) {
    if (std::isalnum(c)) s += static_cast<char>(std::tolower(c));
    else if (!s.empty() && s.back() != '-') s += '-';
  }
  while (!s.empty() && s.back() == '-') s.pop_back();
  if (s.size() > 40) s.resize(40);
  return s.empty() ? "prompt" : s;
}

// Creates the folder a file is written into.
void ensure_parent(const std::string& file) {
  const fs::path parent = fs::path(file).parent_path();
  if (!parent.empty()) fs::create_directories(parent);
}

struct Outputs {
  std::string overlay, mask, logits, heatmaps;  // empty: not written
};

struct Timing {
  double preprocess = 0, vision = 0, text = 0, decoder = 0, postprocess = 0;
};

struct Session {
  CLIPSegInference<float>& engine;
  const ViTImageProcessor& processor;
  const std::vector<std::vector<int64_t>>& ids;
  const std::vector<std::string>& prompts;
  double threshold, alpha;
  int repeat;
  int64_t max_pixels;
};

Timing segment_one(Session& s, const std::string& image_path, const Outputs& out) {
  Timing t;
  auto t0 = Clock::now();
  Image image = load_image(image_path, s.max_pixels);
  const Image rgb = to_rgb(image);
  const Tensor<float> pixel_values = s.processor.preprocess(rgb);
  t.preprocess = ms_since(t0);

  const Tensor<float> cond = s.engine.text_features(s.ids);
  t.text += s.engine.timings().text;
  std::vector<double> vision, decoder;
  Tensor<float> logits;
  for (int r = 0; r < s.repeat; ++r) {
    const auto features = s.engine.encode_image(pixel_values);
    logits = s.engine.decode(features, cond);
    vision.push_back(s.engine.timings().vision);
    decoder.push_back(s.engine.timings().decoder);
  }
  t.vision = median(vision);
  t.decoder = median(decoder);

  t0 = Clock::now();
  const LabelMap labels = post_process_zero_shot(logits, s.threshold, rgb.height, rgb.width);
  t.postprocess = ms_since(t0);
  const auto histogram = class_histogram(labels);

  for (const std::string* file : {&out.overlay, &out.mask, &out.logits})
    if (!file->empty()) ensure_parent(*file);
  if (!out.mask.empty()) save_png(out.mask, labels.narrow);
  if (!out.overlay.empty()) {
    // Prompt k is label k + 1 and takes the colour of its name (io/palette.hpp); 0 stays the image.
    std::vector<Rgb> colors{Rgb{255, 255, 255}};
    for (const Rgb& c : class_colors(s.prompts)) colors.push_back(c);
    Image blended = rgb;
    overlay_in_place(blended, labels, s.alpha, /*transparent=*/0, colors);
    std::map<int64_t, std::string> names{{0, "nothing"}};
    for (size_t k = 0; k < s.prompts.size(); ++k) names[int64_t(k) + 1] = s.prompts[k];
    save_png(out.overlay, add_legend(blended, histogram, names, 40, /*transparent=*/0, colors));
  }
  if (!out.heatmaps.empty()) {
    fs::create_directories(out.heatmaps);
    const std::string stem = fs::path(image_path).stem().string();
    for (size_t k = 0; k < s.prompts.size(); ++k) {
      const Tensor<float> p = zero_shot_probability(logits, int64_t(k), rgb.height, rgb.width);
      const std::string name = stem + "_" + std::to_string(k + 1) + "_" + slug(s.prompts[k]) + ".png";
      save_png((fs::path(out.heatmaps) / name).string(), heatmap_overlay(rgb, p));
    }
  }
  if (!out.logits.empty()) safetensors::save(out.logits, {{"logits", safetensors::make_entry(logits)}}, {{"format", "pt"}});

  std::printf("%s: %lldx%lld -> logits [%lld, %lld, %lld]\n", image_path.c_str(), static_cast<long long>(rgb.width),
              static_cast<long long>(rgb.height), static_cast<long long>(logits.size(0)),
              static_cast<long long>(logits.size(1)), static_cast<long long>(logits.size(2)));
  std::vector<int64_t> count(s.prompts.size() + 1, 0);
  for (const auto& [id, n] : histogram) count[size_t(id)] = n;
  const double total = double(labels.numel());
  for (size_t k = 0; k <= s.prompts.size(); ++k)
    std::printf("  %zu %-32s %5.1f%% of the pixels\n", k, k == 0 ? "(nothing)" : s.prompts[k - 1].c_str(),
                100.0 * double(count[k]) / total);
  const std::string med = s.repeat > 1 ? " (median of " + std::to_string(s.repeat) + ")" : "";
  std::printf("  latency: preprocess %.1f ms | vision tower %.1f ms%s | text %.1f ms | decoder %.1f ms%s | "
              "post-process %.1f ms\n",
              t.preprocess, t.vision, med.c_str(), t.text, t.decoder, med.c_str(), t.postprocess);
  return t;
}

Timing segment_file(Session& s, const std::string& image_path, const Outputs& out) {
  try {
    return segment_one(s, image_path, out);
  } catch (const std::bad_alloc&) {
    fail("'", image_path, "': out of memory while segmenting it (a smaller image or --max-pixels helps)");
  } catch (const std::exception& e) {
    const std::string what = e.what();
    if (what.find(image_path) != std::string::npos) throw;
    fail("'", image_path, "': ", what);
  }
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Zero-shot segmentation from text prompts with a CLIPSeg checkpoint (HF folder)"};
  std::string model_path, image_arg, prompt_text;
  Outputs out;
  out.overlay = "overlay.png";
  int threads = 0, repeat = 1;
  double threshold = 0.1, alpha = 0.5;
  int64_t max_pixels = kDefaultMaxPixels;
  bool allow_non_finite = false, no_heatmaps = false;
  std::string revision = "main";
  app.add_option("--model", model_path, "CLIPSeg checkpoint folder (config.json, model.safetensors, vocab.json, merges.txt), "
                 "or a hub id such as CIDAS/clipseg-rd64-refined (HF cache, else downloaded)")
      ->required();
  app.add_option("--revision", revision, "with a hub id: branch, tag or commit")->capture_default_str();
  app.add_option("--image", image_arg, "an image, or a folder of images")->required()->check(CLI::ExistingPath);
  app.add_option("--prompts", prompt_text, "text prompts separated by ';', e.g. \"road;a car;pedestrian\"")->required();
  app.add_option("--output", out.overlay, "overlay PNG with legend (with a folder as --image: a folder, default zero-shot-output)")
      ->capture_default_str();
  app.add_option("--mask", out.mask, "label map PNG: 0 = nothing, k = prompt k");
  app.add_option("--logits", out.logits, "raw decoder logits as safetensors (tensor `logits`, (num_prompts, H, W))");
  app.add_option("--heatmaps", out.heatmaps, "folder for one heat map per prompt (default: <overlay stem>-heatmaps)");
  app.add_flag("--no-heatmaps", no_heatmaps, "do not write the heat maps");
  app.add_option("--threshold", threshold, "probability a prompt must exceed to label a pixel (else: nothing)")
      ->capture_default_str()
      ->check(cli::real(0.0, 1.0));
  app.add_option("--alpha", alpha, "opacity of the prompt colours in the overlay")->capture_default_str()->check(cli::real(0.0, 1.0));
  app.add_option("--threads", threads, "threads for the kernels (default: all cores)")->check(cli::whole(1, 1024));
  app.add_option("--repeat", repeat, "run the model this many times per image and report the median latency")
      ->check(cli::whole(1, 1000000));
  app.add_option("--max-pixels", max_pixels, "refuse images with more pixels than this (read from the header, before decoding)")
      ->capture_default_str()
      ->check(cli::positive_whole());
  app.add_flag("--allow-non-finite", allow_non_finite, "load a checkpoint with NaN / Inf weights anyway (to inspect it)");
  CLI11_PARSE(app, argc, argv);

  try {
    if (threads > 0) set_num_threads(threads);
    const std::vector<std::string> prompts = split_prompts(prompt_text);
    if (prompts.size() > 255) fail("--prompts: ", prompts.size(), " prompts given; at most 255 (the mask is 8-bit)");
    auto t0 = Clock::now();
    LoadOptions opt;
    opt.allow_non_finite = allow_non_finite;
    opt.revision = revision;
    // The engine keeps its own (packed) copy of the weights; the model is freed once it is built.
    CLIPSegInference<float> engine(clipseg_from_pretrained<float>(model_path, opt));
    const CLIPSegConfig& config = engine.config();
    const CLIPTokenizer tokenizer = CLIPTokenizer::from_pretrained(model_path, {revision});
    const ViTImageProcessor processor = clipseg_image_processor(model_path, {revision});
    std::vector<std::vector<int64_t>> ids;
    const int64_t max_tokens = config.text_config.max_position_embeddings;
    for (const std::string& p : prompts) {
      ids.push_back(tokenizer.encode(p));
      if (int64_t(ids.back().size()) > max_tokens)
        fail("--prompts: '", p, "' is ", ids.back().size(), " tokens; the text model takes at most ", max_tokens);
    }
    std::printf("model %s: CLIPSeg (vision %lld x %lld, patch %lld), loaded in %.0f ms; processor %lldx%lld; "
                "%zu prompts; threshold %.3g; %d threads\n",
                model_path.c_str(), static_cast<long long>(config.vision_config.num_hidden_layers),
                static_cast<long long>(config.vision_config.hidden_size),
                static_cast<long long>(config.vision_config.patch_size), ms_since(t0),
                static_cast<long long>(processor.height), static_cast<long long>(processor.width), prompts.size(), threshold,
                num_threads());
    Session s{engine, processor, ids, prompts, threshold, alpha, repeat, max_pixels};

    if (!fs::is_directory(image_arg)) {
      if (!no_heatmaps && out.heatmaps.empty() && !out.overlay.empty())
        out.heatmaps = (fs::path(out.overlay).parent_path() / (fs::path(out.overlay).stem().string() + "-heatmaps")).string();
      if (no_heatmaps) out.heatmaps.clear();
      segment_file(s, image_arg, out);
      return 0;
    }
    if (app.count("--output") == 0) out.overlay = "zero-shot-output";
    if (!no_heatmaps && out.heatmaps.empty()) out.heatmaps = (fs::path(out.overlay) / "heatmaps").string();
    if (no_heatmaps) out.heatmaps.clear();
    const std::vector<fs::path> images = program::images_in(image_arg, "zero_shot");
    for (const std::string* dir : {&out.overlay, &out.mask, &out.logits})
      if (!dir->empty()) fs::create_directories(*dir);
    Timing sum;
    for (const auto& path : images) {
      Outputs one;
      const std::string stem = path.stem().string();
      if (!out.overlay.empty()) one.overlay = (fs::path(out.overlay) / (stem + ".png")).string();
      if (!out.mask.empty()) one.mask = (fs::path(out.mask) / (stem + ".png")).string();
      if (!out.logits.empty()) one.logits = (fs::path(out.logits) / (stem + ".safetensors")).string();
      one.heatmaps = out.heatmaps;
      const Timing t = segment_file(s, path.string(), one);
      sum.preprocess += t.preprocess;
      sum.vision += t.vision;
      sum.text += t.text;
      sum.decoder += t.decoder;
      sum.postprocess += t.postprocess;
    }
    const double n = double(images.size());
    std::printf("%zu images; mean latency: preprocess %.1f ms | vision tower %.1f ms | text %.1f ms | decoder %.1f ms | "
                "post-process %.1f ms\n",
                images.size(), sum.preprocess / n, sum.vision / n, sum.text / n, sum.decoder / n, sum.postprocess / n);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "zero_shot: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
