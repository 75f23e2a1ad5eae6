// segment: semantic segmentation of an image (or a folder of images) with a SegFormer checkpoint.
//
//   segment --model weights/segformer-b0-finetuned-ade-512-512 --image street.jpg
//           [--output overlay.png] [--mask mask.png] [--logits logits.safetensors]
//           [--pixel-values pixel_values.safetensors] [--threads N] [--repeat R] [--alpha A]
//           [--max-pixels P] [--allow-non-finite] [--revision REV] [--autograd]
//
// --model is a folder, or a hub id (segment --model nvidia/segformer-b0-finetuned-ade-512-512 ...)
// found in the HF cache or downloaded into it, at --revision (docs/weights.md, hub ids).
// The pipeline is HF's: SegformerImageProcessor (from the model folder's preprocessor_config.json
// when present, else HF's defaults), the model run by the inference engine (SegformerInference:
// no autograd, folded decode head), then post_process_semantic_segmentation to the original image
// size. --autograd runs the autograd model in eval mode instead (slower; the same logits to
// float32 rounding: to compare, or to look inside). Writes
//   --output        the image blended with the class colours (class_colors(): by class name,
//                   io/palette.hpp), plus a legend of the classes present;
//   --mask          the label map as an 8-bit greyscale PNG of class ids (needs num_labels <= 256);
//   --logits        the model's raw logits, float32 tensor `logits` (1, num_labels, h, w);
//   --pixel-values  the preprocessed input, float32 tensor `pixel_values` (1, 3, H, W)
//                   (with --logits, tools/check_checkpoint.py compares against PyTorch).
// With a folder as --image, every image in it is processed in turn and --output, --mask, --logits
// and --pixel-values name folders; each output file is named after its input (<stem>.png / .safetensors).
// Prints the latency of preprocessing (decode + resize + normalise), the model and postprocessing
// (upsample + argmax); with --repeat R the model runs R times and the median is reported.
//
// Memory: an image's size is read from its header and an image of more than --max-pixels pixels
// (default 100 million) is refused before decoding. The full-size prediction is streamed (never
// num_labels x H x W floats) into a 1-byte-per-pixel map (4 with more than 256 labels), and the
// overlay is blended into the decoded image itself: a 7000x7000 image peaks about 300 MB above the
// model's own footprint. Any failure for an image names the image.
// A checkpoint with NaN or Inf weights is refused (--allow-non-finite loads it, to inspect it).
// Every numeric flag is checked (examples/cli_checks.hpp).
#include <CLI/CLI.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <optional>
#include <string>
#include <vector>

#include <segml/io/checkpoint.hpp>
#include <segml/io/image.hpp>
#include <segml/io/image_processor.hpp>
#include <segml/io/overlay.hpp>
#include <segml/models/segformer_inference.hpp>

#include "cli_checks.hpp"
#include "program_support.hpp"

namespace fs = std::filesystem;
using namespace segml;

namespace {

using program::Clock;
using program::median;
using program::ms_since;

struct Outputs {
  std::string overlay, mask, logits, pixel_values;  // empty: not written
};

struct Timing {
  double preprocess = 0, model = 0, postprocess = 0;
};

// The model: the engine, or (--autograd) the autograd model in eval mode.
struct Runner {
  SegformerConfig config;
  std::optional<SegformerInference<float>> engine;
  std::optional<SegformerForSemanticSegmentation<float>> model;
  std::vector<Rgb> colors;  // class_colors(config.id2label)
  Tensor<float> run(const Tensor<float>& pixel_values) {
    if (engine) return engine->run(pixel_values);
    NoGradGuard no_grad;
    return model->forward(Var<float>(pixel_values)).logits.data();
  }
};

Timing segment_one(Runner& model, const SegformerImageProcessor& processor,
                   const std::string& image_path, const Outputs& out, int repeat, double alpha, int64_t max_pixels) {
  Timing t;
  auto t0 = Clock::now();
  Image image = load_image(image_path, max_pixels);
  const int64_t height = image.height, width = image.width;
  const Tensor<float> pixel_values = processor.preprocess(image);
  t.preprocess = ms_since(t0);

  std::vector<double> runs;
  Tensor<float> logits;
  for (int r = 0; r < repeat; ++r) {
    t0 = Clock::now();
    logits = model.run(pixel_values);
    runs.push_back(ms_since(t0));
  }
  t.model = median(runs);
  // The full-size steps below need the memory more than the next inference needs its recycled
  // buffers (re-allocating them costs a few ms).
  release_tensor_cache();

  t0 = Clock::now();
  LabelMap labels = processor.post_process_label_map(logits, 0, height, width);
  t.postprocess = ms_since(t0);
  const auto histogram = class_histogram(labels);

  if (!out.mask.empty()) {
    SEGML_CHECK(labels.is_narrow(), "segment: --mask writes 8-bit class ids, but the model has ",
                model.config.num_labels, " labels");
    save_png(out.mask, labels.narrow);
  }
  if (!out.overlay.empty()) {
    overlay_in_place(image, labels, alpha, model.colors);  // the original is not needed any more
    labels = LabelMap();
    const Image with_legend = add_legend(image, histogram, model.config.id2label, model.colors);
    image = Image();
    save_png(out.overlay, with_legend);
  }
  if (!out.logits.empty()) safetensors::save(out.logits, {{"logits", safetensors::make_entry(logits)}}, {{"format", "pt"}});
  if (!out.pixel_values.empty())
    safetensors::save(out.pixel_values, {{"pixel_values", safetensors::make_entry(pixel_values)}}, {{"format", "pt"}});

  std::printf("%s: %lldx%lld -> logits [%lld, %lld, %lld, %lld]; %zu classes present\n", image_path.c_str(),
              static_cast<long long>(width), static_cast<long long>(height), static_cast<long long>(logits.size(0)),
              static_cast<long long>(logits.size(1)), static_cast<long long>(logits.size(2)),
              static_cast<long long>(logits.size(3)), histogram.size());
  std::printf("  latency: preprocess %.1f ms | model %.1f ms%s | postprocess %.1f ms\n", t.preprocess, t.model,
              repeat > 1 ? (" (median of " + std::to_string(repeat) + ")").c_str() : "", t.postprocess);
  return t;
}

// segment_one, with any failure (including running out of memory) reported for that image.
Timing segment_file(Runner& model, const SegformerImageProcessor& processor,
                    const std::string& image_path, const Outputs& out, int repeat, double alpha, int64_t max_pixels) {
  try {
    return segment_one(model, processor, image_path, out, repeat, alpha, max_pixels);
  } catch (const std::bad_alloc&) {
    fail("'", image_path, "': out of memory while segmenting it (a smaller image or --max-pixels helps)");
  } catch (const std::exception& e) {
    const std::string what = e.what();
    if (what.find(image_path) != std::string::npos) throw;  // already names the image
    fail("'", image_path, "': ", what);
  }
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Semantic segmentation with a SegFormer checkpoint (HF folder: config.json + model.safetensors)"};
  std::string model_path, image_arg;
  Outputs out;
  out.overlay = "overlay.png";
  int threads = 0, repeat = 1;
  double alpha = 0.5;
  int64_t max_pixels = kDefaultMaxPixels;
  bool allow_non_finite = false, autograd = false;
  std::string revision = "main";
  app.add_option("--model", model_path, "checkpoint folder (or its model.safetensors), or a hub id such as "
                 "nvidia/segformer-b0-finetuned-ade-512-512 (HF cache, else downloaded)")->required();
  app.add_option("--revision", revision, "with a hub id: branch, tag or commit")->capture_default_str();
  app.add_option("--image", image_arg, "an image, or a folder of images")->required()->check(CLI::ExistingPath);
  app.add_option("--output", out.overlay, "overlay PNG (with a folder as --image: a folder, default segment-output)")->capture_default_str();
  app.add_option("--mask", out.mask, "label map PNG of class ids");
  app.add_option("--logits", out.logits, "raw logits as safetensors (tensor `logits`)");
  app.add_option("--pixel-values", out.pixel_values, "preprocessed input as safetensors (tensor `pixel_values`)");
  app.add_option("--threads", threads, "threads for the kernels (default: all cores)")->check(cli::whole(1, 1024));
  app.add_option("--repeat", repeat, "run the model this many times and report the median latency")
      ->check(cli::whole(1, 1000000));
  app.add_option("--alpha", alpha, "opacity of the class colours in the overlay")->capture_default_str()->check(cli::real(0.0, 1.0));
  app.add_option("--max-pixels", max_pixels, "refuse images with more pixels than this (read from the header, before decoding)")
      ->capture_default_str()
      ->check(cli::positive_whole());
  app.add_flag("--allow-non-finite", allow_non_finite, "load a checkpoint with NaN / Inf weights anyway (to inspect it)");
  app.add_flag("--autograd", autograd,
               "run the autograd model instead of the inference engine (slower, same logits to float32 rounding)");
  CLI11_PARSE(app, argc, argv);

  try {
    if (threads > 0) set_num_threads(threads);
    LoadOptions opt;
    opt.strict = false;  // report, but run, e.g. an encoder-only checkpoint with a fresh head
    opt.allow_non_finite = allow_non_finite;
    opt.revision = revision;
    auto t0 = Clock::now();
    Runner model;
    {
      SegformerForSemanticSegmentation<float> loaded = from_pretrained<float>(model_path, opt);
      loaded.eval();
      model.config = loaded.config;
      if (autograd) model.model.emplace(std::move(loaded));
      else model.engine.emplace(loaded);  // its own packed copy of the weights; the model is freed here
    }
    model.colors = class_colors(model.config.id2label);
    std::string processor_source;
    const SegformerImageProcessor processor = SegformerImageProcessor::from_pretrained(model_path, &processor_source, {revision});
    std::printf("model %s: %lld labels, loaded in %.0f ms (%s); processor %s (%lldx%lld); %d threads\n",
                model_path.c_str(), static_cast<long long>(model.config.num_labels), ms_since(t0),
                autograd ? "autograd model" : "inference engine",
                processor_source.c_str(), static_cast<long long>(processor.height),
                static_cast<long long>(processor.width), num_threads());

    if (!fs::is_directory(image_arg)) {
      segment_file(model, processor, image_arg, out, repeat, alpha, max_pixels);
      return 0;
    }
    if (app.count("--output") == 0) out.overlay = "segment-output";
    const std::vector<fs::path> images = program::images_in(image_arg, "segment");
    for (const std::string* dir : {&out.overlay, &out.mask, &out.logits, &out.pixel_values})
      if (!dir->empty()) fs::create_directories(*dir);
    Timing sum;
    for (const auto& path : images) {
      const std::string stem = path.stem().string();
      auto name = [&](const std::string& dir, const char* ext) { return dir.empty() ? dir : (fs::path(dir) / (stem + ext)).string(); };
      const Outputs one{name(out.overlay, ".png"), name(out.mask, ".png"), name(out.logits, ".safetensors"),
                        name(out.pixel_values, ".safetensors")};
      const Timing t = segment_file(model, processor, path.string(), one, repeat, alpha, max_pixels);
      sum.preprocess += t.preprocess;
      sum.model += t.model;
      sum.postprocess += t.postprocess;
    }
    const double n = static_cast<double>(images.size());
    std::printf("%zu images; mean latency: preprocess %.1f ms | model %.1f ms | postprocess %.1f ms\n", images.size(),
                sum.preprocess / n, sum.model / n, sum.postprocess / n);
  } catch (const std::bad_alloc&) {
    std::fprintf(stderr, "segment: out of memory while loading the model '%s'\n", model_path.c_str());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "segment: %s\n", e.what());
    return 1;
  }
  return 0;
}
