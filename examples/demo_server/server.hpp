// examples/demo_server/server.hpp: the demo web server — a SegFormer and/or a CLIPSeg (zero-shot,
// by text prompts) behind a small REST API and a single-page app (see docs/demo.md). Header-only so
// that tests/test_demo_server.cpp can start it in-process; examples/demo_server.cpp is only the
// command line around it.
//
// Guarantees:
//  - GET /              the page (index.html, app.js, style.css: the assets given to the server).
//  - GET /healthz       {"status": "ok", ...}: the model is loaded and the server answers.
//  - GET /api/info      the modes served ("segment", "zero_shot"), the SegFormer's name, input size,
//                       classes (id, name, palette colour), the zero-shot model with its default
//                       prompts and threshold and prompt limits, and the server's limits.
//  - POST /api/segment  image bytes (the raw body, or a multipart field "image") -> JSON: the label
//                       map size, the classes present with their pixel share (largest first), the
//                       server-side timings, and base64 PNGs: the blended overlay (overlay=1, the
//                       default) and the colour mask (mask=1); with label_map=1 the label map itself,
//                       run-length encoded ("rle-varint", see detail::encode_label_runs), and the
//                       palette of every class id (what the page asks for: it colours the map
//                       itself). Query: overlay, mask, label_map, alpha.
//  - Timings: decode, preprocess, queue, model, postprocess and encode add up to total (the server's
//    time from the received body to the answer); also sent as a Server-Timing header.
//  - Colours: class_colors() is the one place they are chosen (legend, /api/info, palette, PNGs).
//  - GET /api/examples, /api/examples/N.jpg  the page's example scenes: segml's street renderer at
//                       480x360 from fixed seeds, JPEG, rendered on first request and kept.
//  - POST /api/overlay  the same input -> the overlay PNG itself (for curl).
//  - POST /api/zero_shot the same image input, plus the prompts (multipart field or query
//                       "prompts", separated by ';' or line breaks; default kDefaultPrompts) ->
//                       JSON as /api/segment with every prompt as a class (id k = prompt k, largest
//                       share first), the "nothing" share, the timings split as examples/zero_shot's
//                       (preprocess, text, vision, decoder, postprocess), and base64 PNGs: overlay
//                       (overlay=1, default), RGBA mask with "nothing" transparent (mask=1), 8-bit
//                       label map 0 = nothing, k = prompt k (labels=1); label_map=1 as for
//                       /api/segment (palette id 0 = nothing). Query: threshold (default
//                       0.1), alpha. 400 for more than kMaxPrompts prompts, an empty one, more than
//                       kMaxPromptText bytes of text, or a prompt over the text model's positions
//                       (77 tokens), naming the prompt. With only one of the two models, the other
//                       endpoint answers 404 saying which flag adds it.
//  - Every error is JSON {"error": "...", "status": N}: 400 for an empty, non-image or corrupt
//    upload, 413 for an upload larger than max_image_mb (or with more than max_pixels pixels),
//    503 when queue_size segmentation requests are already admitted (or the memory ran out while
//    segmenting, with a message saying so), 404 for unknown paths, and 500
//    (the server keeps running) if anything else throws.
//  - At most queue_size segmentation requests (both endpoints together) are in flight; they take
//    turns on the models (one inference at a time, each using all the kernel threads; the engines
//    are not thread-safe). Beyond that, 503 with Retry-After. The CLIPSeg engine caches the text
//    features per prompt, so repeated prompts cost only the image.
//  - The HTTP layer (detail::GuardedServer in http_layer.hpp, HTTP or HTTPS) survives slow and
//    hostile clients: at most max_connections open connections are served (a thread each, apart
//    from the queue; beyond, 503 and close); the TLS handshake and the request head must each
//    arrive within header_timeout_s, the body within body_timeout_s (else 408 and close); idle
//    connections close after keep_alive_timeout_s. The bodies held at once, all connections
//    together, are limited to max_upload_memory_mb (beyond: 503). Before any body is read, the
//    framing is checked (one plain Content-Length, or chunked alone; else 400; no length on a POST:
//    411) and a declared length over the limit gets 413 at once.
//  - With a token (ServerOptions::token; demo_server sets one beyond loopback), every request but
//    GET /healthz needs it: ?token=, the cookie segml_token (set when the query's token is right)
//    or Authorization: Bearer; else 401. Compared in constant time.
// Does not: rate-limit per client, batch requests, or keep uploaded images.
#pragma once

#include <nlohmann/json.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <mutex>
#include <new>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <segml/data/synthetic_scenes.hpp>
#include <segml/io/checkpoint.hpp>
#include <segml/io/image.hpp>
#include <segml/io/image_processor.hpp>
#include <segml/io/overlay.hpp>
#include <segml/models/clip/tokenization_clip.hpp>
#include <segml/models/clipseg/clipseg_inference.hpp>
#include <segml/models/clipseg/pretrained_clipseg.hpp>
#include <segml/models/clipseg/processing_clipseg.hpp>
#include <segml/models/segformer_inference.hpp>

// After Eigen (via segml): httplib.h pulls in <resolv.h>, whose `_res` macro breaks Eigen's headers.
#include <httplib.h>

#include "http_layer.hpp"

namespace segml::demo {

// A file of the web page, embedded in the binary (see embed_assets.cmake).
struct Asset {
  const char* path;  // URL path, e.g. "/app.js"
  const char* content_type;
  const unsigned char* data;
  size_t size;
};

struct ServerOptions {
  int queue_size = 4;                 // segmentation requests admitted at once (running + waiting)
  double max_image_mb = 10;           // larger uploads get 413
  int64_t max_pixels = 50'000'000;    // decoded images with more pixels get 413 (decompression bombs)
  std::string tls_cert, tls_key;      // both set: HTTPS
  std::function<void()> on_inference; // test hook: runs under the model lock, before each inference
  // The HTTP layer (see "Connections" in docs/demo.md).
  int max_connections = 128;          // open connections served at once (a thread each); beyond: 503
  double header_timeout_s = 10;       // the whole request line + headers must arrive within this
  double body_timeout_s = 30;         // the whole body must arrive, and the answer be taken, within this
  double keep_alive_timeout_s = 5;    // an idle connection is closed after this
  int keep_alive_max = 100;           // requests per connection
  double max_upload_memory_mb = 256;  // request bodies held at once, all connections together; beyond: 503
  std::string token;                  // not empty: every request but /healthz needs this access token
};

// A checkpoint folder with its image processor (preprocessor_config.json, else HF's defaults).
struct LoadedModel {
  SegformerForSemanticSegmentation<float> model;
  SegformerImageProcessor processor;
  std::string name;  // the path it was loaded from
};

namespace detail {

inline bool is_checkpoint_folder(const std::filesystem::path& dir) {
  std::error_code ec;
  return std::filesystem::is_regular_file(dir / "config.json", ec) &&
         (std::filesystem::is_regular_file(dir / "model.safetensors", ec) ||
          std::filesystem::is_regular_file(dir / "model.safetensors.index.json", ec));
}

}  // namespace detail

// What to do when there is no model: printed by demo_server and used in its error.
inline std::string how_to_get_a_model(const std::string& weights_dir) {
  return "No model found: pass --model DIR (a folder with config.json + model.safetensors), or put one in " +
         weights_dir +
         "/.\n"
         "To train one on this machine in a few minutes (procedural street scenes, B0 from scratch):\n"
         "    build/examples/finetune_sidewalk --output weights/street-b0\n"
         "  (add --steps 300 for a quicker, rougher model; --data DIR for your own dataset, see docs/training.md)\n"
         "A pretrained Hugging Face SegFormer works too (e.g. nvidia/segformer-b0-finetuned-ade-512-512): a folder\n"
         "  with config.json + model.safetensors (convert a pytorch_model.bin with tools/convert_weights.py).\n"
         "Then run: demo_server --model weights/<folder>\n"
         "For zero-shot segmentation from text prompts instead (no training), give a CLIPSeg folder:\n"
         "    demo_server --zero-shot-model clipseg-rd64-refined   (huggingface-cli download CIDAS/clipseg-rd64-refined)";
}

// The model to serve: `path` when given; else the checkpoint in `weights_dir` itself or in one of
// its sub-folders (the first by name). Throws with how_to_get_a_model() when there is none.
inline std::string find_model(const std::string& path, const std::string& weights_dir = "weights") {
  namespace fs = std::filesystem;
  if (!path.empty()) return path;
  std::error_code ec;
  if (detail::is_checkpoint_folder(weights_dir)) return weights_dir;
  std::vector<fs::path> found;
  if (fs::is_directory(weights_dir, ec))
    for (const auto& e : fs::directory_iterator(weights_dir, ec))
      if (e.is_directory() && detail::is_checkpoint_folder(e.path())) found.push_back(e.path());
  if (found.empty()) throw Error(how_to_get_a_model(weights_dir));
  std::sort(found.begin(), found.end());
  return found.front().string();
}

// Loads a checkpoint to serve: strict (every tensor must match), and a checkpoint with NaN or Inf
// weights is refused (from_pretrained's default), since it would answer one class everywhere.
// `path` may be a hub id (at `revision`), found in the HF cache or downloaded (hub/hub.hpp).
inline LoadedModel load_model(const std::string& path, const std::string& revision = "main") {
  LoadOptions opt;
  opt.strict = true;
  opt.allow_non_finite = false;
  opt.revision = revision;
  SegformerForSemanticSegmentation<float> model = from_pretrained<float>(path, opt);
  model.eval();
  SegformerImageProcessor processor = SegformerImageProcessor::from_pretrained(path, nullptr, {revision});
  return {std::move(model), std::move(processor), path};
}

// A randomly initialised model with street-scene classes: for trying the page, tests and latency
// measurements without a checkpoint (its predictions are noise). preset: "tiny" or "b0".
inline LoadedModel random_model(const std::string& preset, uint64_t seed = 0) {
  SegformerConfig config;  // B0
  if (preset == "tiny") {
    config.hidden_sizes = {8, 16, 24, 32};
    config.depths = {1, 2, 1, 1};
    config.num_attention_heads = {1, 2, 3, 4};
    config.decoder_hidden_size = 16;
  } else if (preset != "b0") {
    fail("random_model: unknown preset '", preset, "' (tiny or b0)");
  }
  config.set_labels({"road", "sidewalk", "building", "sky", "car", "person", "pole", "vegetation"});
  SegformerForSemanticSegmentation<float> model(config, seed);
  model.eval();
  return {std::move(model), SegformerImageProcessor(), "random-" + preset};
}

// A CLIPSeg checkpoint for the zero-shot mode: the engine (which holds its own packed copy of the
// weights), the CLIP tokenizer and the image processor of an HF-layout folder.
struct ZeroShotModel {
  std::unique_ptr<CLIPSegInference<float>> engine;
  CLIPTokenizer tokenizer;
  ViTImageProcessor processor;
  std::string name;  // the path it was loaded from
};

// The zero-shot defaults the page starts with: the Cityscapes street classes most photos show.
inline constexpr const char* kDefaultPrompts = "road; sidewalk; car; person; bicycle; traffic light; building; tree; sky";
constexpr double kDefaultZeroShotThreshold = 0.1;
constexpr int kMaxPrompts = 32;              // per request
constexpr size_t kMaxPromptText = 4096;      // bytes of prompt text per request, all prompts together

// Loads a CLIPSeg folder (config.json, model.safetensors, vocab.json, merges.txt, optionally
// preprocessor_config.json) to serve: strict, and NaN / Inf weights are refused.
// `folder` may be a hub id (at `revision`).
inline ZeroShotModel load_zero_shot(const std::string& folder, const std::string& revision = "main") {
  LoadOptions opt;
  opt.strict = true;
  opt.allow_non_finite = false;
  opt.revision = revision;
  auto engine = std::make_unique<CLIPSegInference<float>>(clipseg_from_pretrained<float>(folder, opt));
  return {std::move(engine), CLIPTokenizer::from_pretrained(folder, {revision}), clipseg_image_processor(folder, {revision}),
          folder};
}

// Writes a randomly initialised, reduced CLIPSeg as an HF folder (64 x 64 input, 4 vision layers of
// width 32, a vocabulary of the letters and digits with and without "</w>", so that any ASCII
// prompt tokenises, letter by letter). For trying the zero-shot page and tests: its masks are noise.
inline void write_random_clipseg(const std::string& folder, uint64_t seed = 0) {
  CLIPSegConfig c = CLIPSegConfig::rd64_refined();
  c.text_config.vocab_size = 80;
  c.text_config.hidden_size = 32;
  c.text_config.intermediate_size = 64;
  c.text_config.num_hidden_layers = 2;
  c.text_config.num_attention_heads = 2;
  c.text_config.max_position_embeddings = 77;
  c.vision_config.hidden_size = 32;
  c.vision_config.intermediate_size = 64;
  c.vision_config.num_hidden_layers = 4;
  c.vision_config.num_attention_heads = 2;
  c.vision_config.image_size = 64;
  c.projection_dim = 24;
  c.reduce_dim = 16;
  c.decoder_num_attention_heads = 2;
  c.decoder_intermediate_size = 32;
  c.extract_layers = {1, 2, 3};
  CLIPSegForImageSegmentation<float> model(c, seed);
  // Scale the head up so that the logits spread around 0 and several prompts win somewhere.
  for (auto* t : {&model.decoder.tconv4.weight, &model.decoder.tconv4.bias}) {
    Tensor<float>& w = t->data();
    for (int64_t i = 0; i < w.numel(); ++i) w.data()[i] *= 20.0f;
  }
  const nlohmann::json pre = {{"do_resize", true},   {"size", {{"height", 64}, {"width", 64}}},
                              {"resample", 2},       {"do_rescale", true},
                              {"rescale_factor", 1 / 255.0}, {"do_normalize", true},
                              {"image_processor_type", "ViTImageProcessor"}};
  save_pretrained(model, folder, &pre);
  nlohmann::json vocab = nlohmann::json::object();
  int64_t id = 0;
  std::string symbols;
  for (char ch = 'a'; ch <= 'z'; ++ch) symbols += ch;
  for (char ch = '0'; ch <= '9'; ++ch) symbols += ch;
  for (char ch : symbols) vocab[std::string(1, ch)] = id++;
  for (char ch : symbols) vocab[std::string(1, ch) + "</w>"] = id++;
  for (const char* t : {"<|startoftext|>", "<|endoftext|>"}) vocab[t] = id++;
  SEGML_CHECK(id <= c.text_config.vocab_size, "write_random_clipseg: vocabulary of ", id, " > vocab_size");
  std::ofstream(std::filesystem::path(folder) / "vocab.json", std::ios::binary) << vocab.dump();
  std::ofstream(std::filesystem::path(folder) / "merges.txt", std::ios::binary) << "#version: 0.2\na b\n";
}

// A random reduced CLIPSeg (write_random_clipseg), written to a temporary folder, loaded, and the
// folder removed. preset: "tiny".
inline ZeroShotModel random_zero_shot(const std::string& preset, uint64_t seed = 0) {
  if (preset != "tiny") fail("random_zero_shot: unknown preset '", preset, "' (tiny)");
  namespace fs = std::filesystem;
  static std::atomic<int> counter{0};
  const fs::path dir = fs::temp_directory_path() /
                       ("segml-demo-clipseg-" + std::to_string(::getpid()) + "-" + std::to_string(counter++));
  struct Remove {
    fs::path p;
    ~Remove() {
      std::error_code ec;
      fs::remove_all(p, ec);
    }
  } remove{dir};
  write_random_clipseg(dir.string(), seed);
  ZeroShotModel m = load_zero_shot(dir.string());
  m.name = "random-" + preset + "-clipseg";
  return m;
}

// The colours of a request's classes: names[id] is class id's name, the answer colors[id]. The one
// place the server picks colours: the legend, /api/info, the palette sent with the label map (by
// which the page colours it) and the server-side PNGs all take them from here: the colours of the
// names (segml::class_colors, io/palette.hpp: Cityscapes, ADE20K and CamVid colours by class name,
// distinct fallback hues), as segment and evaluate draw them. In zero-shot mode names[0] is
// "nothing" (never drawn: white here, as zero_shot's) and the prompts are coloured by their words.
inline std::vector<Rgb> class_colors(const std::vector<std::string>& names, bool zero_shot = false) {
  if (!zero_shot) return segml::class_colors(names);
  std::vector<Rgb> out{Rgb{255, 255, 255}};
  for (const Rgb& c : segml::class_colors(std::vector<std::string>(names.begin() + 1, names.end()))) out.push_back(c);
  return out;
}

namespace detail {

inline std::string base64(const std::string& in) {
  static constexpr char kAlphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  out.reserve((in.size() + 2) / 3 * 4);
  size_t i = 0;
  for (; i + 2 < in.size(); i += 3) {
    const uint32_t v = uint32_t(uint8_t(in[i])) << 16 | uint32_t(uint8_t(in[i + 1])) << 8 | uint8_t(in[i + 2]);
    for (int s = 18; s >= 0; s -= 6) out += kAlphabet[(v >> s) & 63];
  }
  if (i < in.size()) {
    const bool two = i + 1 < in.size();
    const uint32_t v = uint32_t(uint8_t(in[i])) << 16 | (two ? uint32_t(uint8_t(in[i + 1])) << 8 : 0);
    out += kAlphabet[(v >> 18) & 63];
    out += kAlphabet[(v >> 12) & 63];
    out += two ? kAlphabet[(v >> 6) & 63] : '=';
    out += '=';
  }
  return out;
}

inline std::string encode_png(const Image& img) {
  std::string bytes;
  const auto append = [](void* ctx, void* data, int size) {
    static_cast<std::string*>(ctx)->append(static_cast<const char*>(data), static_cast<size_t>(size));
  };
  if (!stbi_write_png_to_func(append, &bytes, static_cast<int>(img.width), static_cast<int>(img.height),
                              static_cast<int>(img.channels), img.data.data(), static_cast<int>(img.width * img.channels)))
    fail("encode_png: PNG encoding failed");
  return bytes;
}

// The image formats accepted, recognised by their first bytes (stb also guesses formats without a
// signature, such as TGA, which would let random bytes through).
inline const char* sniff_image_format(const std::string& b) {
  const auto starts = [&](std::string_view magic) { return b.size() >= magic.size() && std::string_view(b).substr(0, magic.size()) == magic; };
  if (starts("\xFF\xD8\xFF")) return "jpeg";
  if (starts("\x89PNG\r\n\x1A\n")) return "png";
  if (starts("GIF87a") || starts("GIF89a")) return "gif";
  if (starts("BM")) return "bmp";
  return nullptr;
}

// An error that becomes the HTTP status `status` with a JSON body.
struct HttpError : std::runtime_error {
  int status;
  HttpError(int s, const std::string& what) : std::runtime_error(what), status(s) {}
};

inline void send_json(httplib::Response& res, int status, const nlohmann::json& body) {
  res.status = status;
  // Invalid UTF-8 (e.g. a client's text quoted in an error) becomes U+FFFD rather than an exception.
  res.set_content(body.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace), "application/json");
}

inline void send_error(httplib::Response& res, int status, const std::string& message) {
  send_json(res, status, {{"error", message}, {"status", status}});
}

// "road; a car\nsky" -> {"road", "a car", "sky"}: prompts separated by ';' or line breaks, trimmed.
// 400 for an empty prompt (naming its position), more than kMaxPrompts prompts, or more than
// kMaxPromptText bytes of text.
inline std::vector<std::string> split_prompts(const std::string& text) {
  if (text.size() > kMaxPromptText)
    throw HttpError(400, "prompts: " + std::to_string(text.size()) + " bytes of text; at most " +
                             std::to_string(kMaxPromptText) + " are accepted");
  std::vector<std::string> out;
  size_t start = 0;
  while (true) {
    const size_t end = text.find_first_of(";\n", start);
    std::string p = text.substr(start, end == std::string::npos ? std::string::npos : end - start);
    const size_t a = p.find_first_not_of(" \t\r\n"), b = p.find_last_not_of(" \t\r\n");
    p = a == std::string::npos ? "" : p.substr(a, b - a + 1);
    const bool last = end == std::string::npos;
    // A trailing separator ("road; car;") ends the list; an empty prompt elsewhere is an error.
    if (p.empty() && !(last && !out.empty()))
      throw HttpError(400, "prompts: prompt " + std::to_string(out.size() + 1) +
                               " is empty (give text prompts separated by ';' or line breaks, e.g. 'road; car; sky')");
    if (!p.empty()) out.push_back(p);
    if (out.size() > size_t(kMaxPrompts))
      throw HttpError(400, "prompts: more than " + std::to_string(kMaxPrompts) + " prompts; at most " +
                               std::to_string(kMaxPrompts) + " per request");
    if (last) break;
    start = end + 1;
  }
  return out;
}

// The label map as RGBA: prompt k's colour colors[k], opaque; "nothing" (0) fully transparent.
inline Image zero_shot_mask(const LabelMap& labels, const std::vector<Rgb>& colors) {
  Image out(labels.height, labels.width, 4);
  for (int64_t p = 0; p < labels.numel(); ++p) {
    const int64_t k = labels[p];
    if (k == 0) continue;
    const Rgb c = colors[size_t(k)];
    for (int64_t ch = 0; ch < 3; ++ch) out.data[size_t(p * 4 + ch)] = c[size_t(ch)];
    out.data[size_t(p * 4 + 3)] = 255;
  }
  return out;
}

// ---- the compact label map ----------------------------------------------------------------------
// "rle-varint" (docs/demo.md, "The label map payload"): the label map in row-major order as runs,
// each run two unsigned LEB128 varints: the label, then the run's length (>= 1; runs go on across
// rows). A 480x360 street scene takes a few KB; a map of noise at most 2 bytes per pixel for ids
// below 128. base64 in the JSON. Encoding is one pass over the bytes: well under 1 ms at 480x360.
inline void put_varint(std::string& out, uint64_t v) {
  while (v >= 0x80) {
    out += char(uint8_t(v & 0x7F) | 0x80);
    v >>= 7;
  }
  out += char(uint8_t(v));
}

inline std::string encode_label_runs(const LabelMap& labels) {
  std::string out;
  const int64_t n = labels.numel();
  int64_t p = 0;
  while (p < n) {
    const int64_t id = labels[p];
    int64_t q = p + 1;
    if (labels.is_narrow()) {
      const uint8_t* d = labels.narrow.data.data();
      while (q < n && d[q] == d[p]) ++q;
    } else {
      while (q < n && labels.wide[size_t(q)] == labels.wide[size_t(p)]) ++q;
    }
    put_varint(out, uint64_t(id));
    put_varint(out, uint64_t(q - p));
    p = q;
  }
  return out;
}

// {"encoding": "rle-varint", "width", "height", "data": base64 of encode_label_runs}.
inline nlohmann::json label_map_json(const LabelMap& labels) {
  return {{"encoding", "rle-varint"},
          {"width", labels.width},
          {"height", labels.height},
          {"data", base64(encode_label_runs(labels))}};
}

// The palette of a payload: colors[id] as [r, g, b], for every id the model can answer.
inline nlohmann::json palette_json(const std::vector<Rgb>& colors) {
  nlohmann::json out = nlohmann::json::array();
  for (const Rgb& c : colors) out.push_back({c[0], c[1], c[2]});
  return out;
}

// The server-side pictures, coloured by `colors` (the one palette of a request, see class_colors):
// the overlay (1 - alpha) * pixel + alpha * colour, rounded (overlay()'s formula), leaving label
// `transparent` as it is; and the colour mask.
inline void paint_overlay(Image& rgb, const LabelMap& labels, const std::vector<Rgb>& colors, double alpha,
                          int64_t transparent = -1) {
  SEGML_CHECK(rgb.channels == 3 && rgb.height == labels.height && rgb.width == labels.width,
              "paint_overlay: the image is ", rgb.height, "x", rgb.width, "x", rgb.channels, ", the labels ", labels.height,
              "x", labels.width);
  for (int64_t p = 0; p < labels.numel(); ++p) {
    const int64_t id = labels[p];
    if (id == transparent) continue;
    const Rgb& c = colors[size_t(id)];
    uint8_t* px = rgb.data.data() + 3 * p;
    for (size_t k = 0; k < 3; ++k) px[k] = static_cast<uint8_t>(std::lround((1.0 - alpha) * px[k] + alpha * c[k]));
  }
}

inline void paint_mask(Image& rgb, const LabelMap& labels, const std::vector<Rgb>& colors) {
  SEGML_CHECK(rgb.channels == 3 && rgb.height == labels.height && rgb.width == labels.width,
              "paint_mask: the image is ", rgb.height, "x", rgb.width, "x", rgb.channels, ", the labels ", labels.height,
              "x", labels.width);
  for (int64_t p = 0; p < labels.numel(); ++p) {
    const Rgb& c = colors[size_t(labels[p])];
    std::copy(c.begin(), c.end(), rgb.data.begin() + 3 * p);
  }
}

// The Server-Timing header (W3C) of a timings_ms object: "decode;dur=3.1, model;dur=80.2, ...".
inline std::string server_timing(const nlohmann::json& timings_ms) {
  std::string out;
  for (const auto& [name, v] : timings_ms.items()) {
    char buf[64];
    std::snprintf(buf, sizeof buf, "%s%s;dur=%.3f", out.empty() ? "" : ", ", name.c_str(), v.get<double>());
    out += buf;
  }
  return out;
}

// ---- example scenes -----------------------------------------------------------------------------
// The page's example photos: street scenes of the built-in renderer (data/synthetic_scenes.hpp),
// 480x360 JPEG, rendered on first request and kept (a few tens of KB each).
constexpr int kExampleWidth = 480, kExampleHeight = 360;
inline constexpr uint64_t kExampleSeeds[] = {11, 23, 42, 77};
constexpr int kNumExamples = int(sizeof(kExampleSeeds) / sizeof(kExampleSeeds[0]));

inline std::string encode_jpeg(const Image& img, int quality) {
  std::string bytes;
  const auto append = [](void* ctx, void* data, int size) {
    static_cast<std::string*>(ctx)->append(static_cast<const char*>(data), static_cast<size_t>(size));
  };
  if (!stbi_write_jpg_to_func(append, &bytes, static_cast<int>(img.width), static_cast<int>(img.height),
                              static_cast<int>(img.channels), img.data.data(), quality))
    fail("encode_jpeg: JPEG encoding failed");
  return bytes;
}

class ExampleScenes {
 public:
  // Example k (0-based, < kNumExamples) as JPEG bytes.
  const std::string& jpeg(int k) {
    std::lock_guard<std::mutex> lock(mutex_);
    std::string& bytes = cache_[size_t(k)];
    if (bytes.empty()) bytes = encode_jpeg(generate_scene(kExampleSeeds[k], kExampleWidth, kExampleHeight).image, 90);
    return bytes;
  }

 private:
  std::mutex mutex_;
  std::string cache_[kNumExamples];
};

// Bounded admission: at most `capacity` holders at a time; try_enter() never waits.
class Admission {
 public:
  explicit Admission(int capacity) : capacity_(capacity) {}
  class Ticket {
   public:
    explicit Ticket(std::atomic<int>* n) : n_(n) {}
    Ticket(Ticket&& o) noexcept : n_(std::exchange(o.n_, nullptr)) {}
    Ticket(const Ticket&) = delete;
    Ticket& operator=(const Ticket&) = delete;
    Ticket& operator=(Ticket&&) = delete;
    ~Ticket() {
      if (n_) n_->fetch_sub(1);
    }

   private:
    std::atomic<int>* n_;
  };
  std::optional<Ticket> try_enter() {
    int cur = pending_.load();
    do {
      if (cur >= capacity_) return std::nullopt;
    } while (!pending_.compare_exchange_weak(cur, cur + 1));
    return Ticket(&pending_);
  }
  int pending() const { return pending_.load(); }
  int capacity() const { return capacity_; }

 private:
  const int capacity_;
  std::atomic<int> pending_{0};
};

// The decoded pixels held at once by the admitted requests, all together, bounded by `budget`: a
// request waits (it is already admitted, so the wait is bounded by the queue) until its image fits
// next to the others, so N concurrent large uploads cost what one does, while small ones run side
// by side. An image larger than the whole budget (it passed max_pixels) waits to run alone.
class PixelBudget {
 public:
  explicit PixelBudget(int64_t budget) : budget_(std::max<int64_t>(1, budget)) {}
  class Lease {
   public:
    Lease(PixelBudget* b, int64_t n) : b_(b), n_(n) {}
    Lease(Lease&& o) noexcept : b_(std::exchange(o.b_, nullptr)), n_(o.n_) {}
    Lease(const Lease&) = delete;
    Lease& operator=(const Lease&) = delete;
    Lease& operator=(Lease&&) = delete;
    ~Lease() {
      if (b_) b_->release(n_);
    }

   private:
    PixelBudget* b_;
    int64_t n_;
  };
  Lease acquire(int64_t pixels) {
    const int64_t n = std::clamp<int64_t>(pixels, 1, budget_);
    std::unique_lock<std::mutex> lock(mutex_);
    freed_.wait(lock, [&] { return used_ + n <= budget_; });
    used_ += n;
    return Lease(this, n);
  }
  int64_t used() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return used_;
  }

 private:
  void release(int64_t n) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      used_ -= n;
    }
    freed_.notify_all();
  }
  const int64_t budget_;
  mutable std::mutex mutex_;
  std::condition_variable freed_;
  int64_t used_ = 0;
};

}  // namespace detail

class DemoServer {
 public:
  // Either model or both: `segformer` for /api/segment, `zero_shot` for /api/zero_shot.
  DemoServer(std::optional<LoadedModel> segformer, std::optional<ZeroShotModel> zero_shot, ServerOptions options = {},
             std::vector<Asset> assets = {})
      : opt_(std::move(options)), assets_(std::move(assets)), admission_(std::max(0, opt_.queue_size)) {
    SEGML_CHECK(segformer || zero_shot,
                "demo_server: no model to serve: give a SegFormer (--model) or a CLIPSeg (--zero-shot-model), or both");
    if (segformer) {
      seg_ = std::make_unique<Segformer>(std::move(*segformer));
      seg_->model.eval();
    }
    if (zero_shot) {
      SEGML_CHECK(zero_shot->engine, "demo_server: the zero-shot model has no engine");
      zs_ = std::make_unique<ZeroShotModel>(std::move(*zero_shot));
    }
    name_ = seg_ ? seg_->name : zs_->name;
    SEGML_CHECK(opt_.max_image_mb > 0, "demo_server: --max-image-mb must be positive, got ", opt_.max_image_mb);
    SEGML_CHECK(opt_.tls_cert.empty() == opt_.tls_key.empty(), "demo_server: HTTPS needs both --tls-cert and --tls-key");
    SEGML_CHECK(opt_.max_connections >= 1, "demo_server: --max-connections must be >= 1, got ", opt_.max_connections);
    SEGML_CHECK(opt_.max_upload_memory_mb >= opt_.max_image_mb, "demo_server: --max-upload-memory-mb (",
                opt_.max_upload_memory_mb, ") must be at least --max-image-mb (", opt_.max_image_mb, ")");
    SEGML_CHECK(opt_.keep_alive_max >= 1, "demo_server: keep_alive_max must be >= 1, got ", opt_.keep_alive_max);
    for (const auto& [flag, v] : {std::pair{"--header-timeout", opt_.header_timeout_s}, std::pair{"--body-timeout", opt_.body_timeout_s},
                                  std::pair{"--keep-alive-timeout", opt_.keep_alive_timeout_s}})
      SEGML_CHECK(v > 0 && v <= 3600, "demo_server: ", flag, " must be in (0, 3600] seconds, got ", v);
    if (!opt_.token.empty()) {
      const std::string problem = detail::token_problem(opt_.token);
      SEGML_CHECK(problem.empty(), "demo_server: --token: ", problem);
    }
    const detail::HttpLimits limits{opt_.max_connections, opt_.header_timeout_s, opt_.body_timeout_s,
                                    opt_.keep_alive_timeout_s, opt_.keep_alive_max};
    if (opt_.tls_cert.empty()) {
      auto plain = std::make_unique<detail::GuardedServer<httplib::Server>>(limits);
      widen_backlog_ = [s = plain.get()] { s->widen_backlog(); };
      http_ = std::move(plain);
    } else {
      for (const std::string* f : {&opt_.tls_cert, &opt_.tls_key})
        SEGML_CHECK(std::filesystem::is_regular_file(*f), "demo_server: TLS file '", *f, "' does not exist");
      auto tls = std::make_unique<detail::GuardedServer<httplib::SSLServer>>(limits, opt_.tls_cert.c_str(), opt_.tls_key.c_str());
      widen_backlog_ = [s = tls.get()] { s->widen_backlog(); };
      http_ = std::move(tls);
      SEGML_CHECK(http_->is_valid(), "demo_server: cannot use the TLS certificate '", opt_.tls_cert, "' with key '",
                  opt_.tls_key, "' (are they PEM files that belong together?)");
    }
    setup_routes();
  }
  DemoServer(LoadedModel loaded, ServerOptions options = {}, std::vector<Asset> assets = {})
      : DemoServer(std::optional<LoadedModel>(std::move(loaded)), std::nullopt, std::move(options), std::move(assets)) {}
  DemoServer(SegformerForSemanticSegmentation<float> model, SegformerImageProcessor processor, std::string model_name,
             ServerOptions options = {}, std::vector<Asset> assets = {})
      : DemoServer(LoadedModel{std::move(model), std::move(processor), std::move(model_name)}, std::move(options),
                   std::move(assets)) {}
  DemoServer(const DemoServer&) = delete;
  DemoServer& operator=(const DemoServer&) = delete;

  // Binds and serves until stop(); false if the address cannot be bound.
  bool listen(const std::string& host, int port) {
    if (!http_->bind_to_port(host, port)) return false;
    widen_backlog_();
    return http_->listen_after_bind();
  }
  // For tests: bind an ephemeral port (returned, or -1), then serve with listen_after_bind().
  int bind_to_any_port(const std::string& host) {
    const int port = http_->bind_to_any_port(host);
    if (port > 0) widen_backlog_();
    return port;
  }
  bool listen_after_bind() { return http_->listen_after_bind(); }
  void stop() { http_->stop(); }
  bool is_running() const { return http_->is_running(); }
  bool tls() const { return !opt_.tls_cert.empty(); }

  // Runs the model once on a blank input, so that the first request does not pay for the
  // first-call costs (thread pools, allocations). Returns the time it took, in ms.
  double warm_up() {
    const auto t0 = Clock::now();
    std::lock_guard<std::mutex> lock(model_mutex_);
    if (seg_) seg_->engine.run(Tensor<float>::zeros({1, 3, seg_->processor.height, seg_->processor.width}));
    if (zs_) {
      std::vector<std::vector<int64_t>> ids;
      for (const std::string& p : detail::split_prompts(kDefaultPrompts)) ids.push_back(zs_->tokenizer.encode(p));
      zs_->engine->run(Tensor<float>::zeros({1, 3, zs_->processor.height, zs_->processor.width}), ids);
    }
    return ms(t0, Clock::now());
  }

  bool has_segformer() const { return seg_ != nullptr; }
  bool has_zero_shot() const { return zs_ != nullptr; }

  // The SegFormer's fields (model, num_labels, classes, input_size, architecture) when it is served,
  // "modes" (["segment"], ["zero_shot"] or both) and, with a CLIPSeg, "zero_shot": its name, input
  // size, the default prompts and threshold, and the prompt limits.
  nlohmann::json info() const {
    nlohmann::json out = {{"model", name_},
                          {"modes", nlohmann::json::array()},
                          {"threads", num_threads()},
                          {"queue_size", admission_.capacity()},
                          {"max_image_mb", opt_.max_image_mb},
                          {"max_pixels", opt_.max_pixels},
                          {"max_connections", opt_.max_connections}};
    if (seg_) {
      nlohmann::json classes = nlohmann::json::array();
      for (const auto& [id, label] : seg_->model.config.id2label) {
        if (id < 0 || id >= int64_t(seg_->colors.size())) continue;
        const Rgb c = seg_->colors[size_t(id)];
        classes.push_back({{"id", id}, {"name", label}, {"color", {c[0], c[1], c[2]}}});
      }
      const auto& cfg = seg_->model.config;
      out["modes"].push_back("segment");
      out["num_labels"] = cfg.num_labels;
      out["classes"] = classes;
      out["input_size"] = {seg_->processor.height, seg_->processor.width};
      out["architecture"] = {{"hidden_sizes", cfg.hidden_sizes}, {"depths", cfg.depths}};
    }
    if (zs_) {
      out["modes"].push_back("zero_shot");
      const CLIPSegConfig& c = zs_->engine->config();
      out["zero_shot"] = {{"model", zs_->name},
                          {"input_size", {zs_->processor.height, zs_->processor.width}},
                          {"default_prompts", kDefaultPrompts},
                          {"default_threshold", kDefaultZeroShotThreshold},
                          {"max_prompts", kMaxPrompts},
                          {"max_prompt_tokens", c.text_config.max_position_embeddings},
                          {"max_prompt_text", kMaxPromptText}};
    }
    return out;
  }

 private:
  using Clock = std::chrono::steady_clock;
  static double ms(Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double, std::milli>(b - a).count(); }

  size_t max_bytes() const { return static_cast<size_t>(opt_.max_image_mb * 1024 * 1024); }

  void setup_routes() {
    // The connections are detail::GuardedServer's (deadlines, connection cap); these two only fill
    // httplib's Keep-Alive header.
    http_->set_keep_alive_timeout(std::max<time_t>(1, time_t(std::ceil(opt_.keep_alive_timeout_s))));
    http_->set_keep_alive_max_count(size_t(opt_.keep_alive_max));
    // Headroom for the multipart framing; httplib answers 413 to a body beyond it.
    http_->set_payload_max_length(max_body());
    // Before any body is read: the access token, then the framing (see admit()).
    http_->set_pre_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
      return admit(req, res) ? httplib::Server::HandlerResponse::Unhandled : httplib::Server::HandlerResponse::Handled;
    });
    http_->set_expect_100_continue_handler(
        [this](const httplib::Request& req, httplib::Response& res) { return admit(req, res) ? 100 : res.status; });

    for (const Asset& asset : assets_) {
      const auto serve = [asset](const httplib::Request&, httplib::Response& res) {
        res.set_content(reinterpret_cast<const char*>(asset.data), asset.size, asset.content_type);
        res.set_header("Cache-Control", "no-cache");
      };
      std::string pattern;  // httplib matches paths as regular expressions
      for (const char* c = asset.path; *c; ++c) pattern += *c == '.' ? std::string("\\.") : std::string(1, *c);
      http_->Get(pattern, serve);
      if (std::string_view(asset.path) == "/index.html") http_->Get("/", serve);
    }
    http_->Get("/healthz", [this](const httplib::Request&, httplib::Response& res) {
      detail::send_json(res, 200,
                        {{"status", "ok"},
                         {"model", name_},
                         {"queue", {{"pending", admission_.pending()}, {"capacity", admission_.capacity()}}},
                         {"served", served_.load()},
                         {"uptime_s", std::chrono::duration<double>(Clock::now() - started_).count()}});
    });
    http_->Get("/api/info", [this](const httplib::Request&, httplib::Response& res) { detail::send_json(res, 200, info()); });
    http_->Get("/api/examples", [](const httplib::Request&, httplib::Response& res) {
      nlohmann::json list = nlohmann::json::array();
      for (int k = 1; k <= detail::kNumExamples; ++k)
        list.push_back({{"id", k},
                        {"name", "Street scene " + std::to_string(k)},
                        {"url", "api/examples/" + std::to_string(k) + ".jpg"},
                        {"width", detail::kExampleWidth},
                        {"height", detail::kExampleHeight}});
      detail::send_json(res, 200, {{"examples", list}});
    });
    http_->Get(R"(/api/examples/(\d{1,3})\.jpg)", [this](const httplib::Request& req, httplib::Response& res) {
      const int k = std::stoi(req.matches[1].str());
      if (k < 1 || k > detail::kNumExamples)
        return detail::send_error(res, 404, "no example " + std::to_string(k) + ": there are " +
                                                std::to_string(detail::kNumExamples) + " (see GET /api/examples)");
      const std::string& jpeg = examples_.jpeg(k - 1);
      res.set_content(jpeg.data(), jpeg.size(), "image/jpeg");
      res.set_header("Cache-Control", "max-age=3600");
    });
    http_->Post("/api/segment", [this](const httplib::Request& req, httplib::Response& res) { handle(req, res, false); });
    http_->Post("/api/overlay", [this](const httplib::Request& req, httplib::Response& res) { handle(req, res, true); });
    http_->Post("/api/zero_shot", [this](const httplib::Request& req, httplib::Response& res) { handle_zero_shot(req, res); });

    // Errors httplib raises itself (404, 413 for an oversized body, 400 for a malformed request)
    // get a JSON body; responses our handlers already filled are left alone.
    http_->set_error_handler([this](const httplib::Request& req, httplib::Response& res) {
      if (!res.body.empty()) return;
      detail::Connection* conn = detail::t_connection;
      if (conn && (res.status == 400 || res.status == 413)) {
        conn->close_after_answer();  // httplib's own refusal: what is left of the request is unknown
        if (conn->timed_out()) {
          res.status = 408;
          detail::send_error(res, 408,
                             conn->in_body() ? "request timeout: the body did not arrive within " + seconds_text(opt_.body_timeout_s) +
                                                   " (--body-timeout)"
                                             : "request timeout: the request head did not arrive within " +
                                                   seconds_text(opt_.header_timeout_s) + " (--header-timeout)");
          return;
        }
        if (conn->head_too_large()) {
          res.status = 431;
          detail::send_error(res, 431, "request head too large: the request line and headers are limited to " +
                                           std::to_string(detail::Connection::kMaxHead / 1024) + " KB");
          return;
        }
        if (conn->over_budget()) {
          res.status = 503;
          res.set_header("Retry-After", "1");
          detail::send_error(res, 503, "busy: the uploads in progress already hold " + mb_text(opt_.max_upload_memory_mb) +
                                           " (--max-upload-memory-mb); retry shortly");
          return;
        }
        if (conn->body_too_large()) res.status = 413;
      }
      if (res.status == 404)
        detail::send_error(res, 404, "no such path: " + req.path + " (see GET /api/info, POST /api/segment, POST /api/zero_shot)");
      else if (res.status == 413 && req.get_header_value("Content-Type") == "application/x-www-form-urlencoded")
        detail::send_error(res, 413,
                           "form-encoded bodies are limited to 8 KB: send the image with Content-Type image/jpeg or "
                           "image/png (curl: -H 'Content-Type: image/jpeg'), or as multipart field 'image'");
      else if (res.status == 413)
        detail::send_error(res, 413, "upload too large: the limit is " + mb_text() + " (--max-image-mb)");
      else
        detail::send_error(res, res.status, "bad request");
    });
    http_->set_exception_handler([](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
      std::string what = "unknown error";
      try {
        std::rethrow_exception(ep);
      } catch (const std::exception& e) {
        what = e.what();
      } catch (...) {
      }
      detail::send_error(res, 500, "internal error: " + what);
    });
  }

  size_t max_body() const { return max_bytes() + 64 * 1024; }

  static std::string seconds_text(double s) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%g s", s);
    return buf;
  }

  // Admits a request from its head alone, before its body is read: true to go on; false with `res`
  // filled (401 without the access token, 400 for ambiguous framing, 413 for a declared body over
  // the limit) and the connection closed after the answer, since its body was not read. With a
  // right token in the query, sets the cookie that carries it for the page's own requests.
  bool admit(const httplib::Request& req, httplib::Response& res) {
    std::optional<detail::Refusal> refusal;
    bool set_cookie = false;
    if (!opt_.token.empty() && req.path != "/healthz") {
      bool from_query = false, valid = false, valid_query = false;
      const std::vector<std::string> offered = detail::offered_tokens(req, from_query);
      for (size_t i = 0; i < offered.size(); ++i)
        if (detail::same_secret(offered[i], opt_.token)) {
          valid = true;
          valid_query = valid_query || (from_query && i == 0);
        }
      if (!valid)
        refusal = detail::Refusal{401, offered.empty() ? "this server needs its access token: open the address with ?token=... "
                                                         "that demo_server printed, or send 'Authorization: Bearer <token>'"
                                                       : "wrong access token: use the one demo_server printed at start"};
      set_cookie = valid_query;
    }
    if (!refusal) refusal = detail::check_framing(req, max_body(), mb_text() + " (--max-image-mb)");
    if (!refusal && req.get_header_value("Content-Type") == "application/x-www-form-urlencoded" &&
        std::strtoull(req.get_header_value("Content-Length").c_str(), nullptr, 10) > 8192)
      refusal = detail::Refusal{413, "form-encoded bodies are limited to 8 KB: send the image with Content-Type image/jpeg or "
                                     "image/png (curl: -H 'Content-Type: image/jpeg'), or as multipart field 'image'"};
    if (refusal) {
      detail::send_error(res, refusal->status, refusal->message);
      if (refusal->status == 401) res.set_header("WWW-Authenticate", "Bearer realm=\"segml demo\"");
      res.set_header("Connection", "close");
      if (detail::t_connection) detail::t_connection->close_after_answer();
      return false;
    }
    if (set_cookie && !res.has_header("Set-Cookie"))
      res.set_header("Set-Cookie", "segml_token=" + opt_.token + "; Path=/; HttpOnly; SameSite=Strict" + (tls() ? "; Secure" : ""));
    if (detail::t_connection)
      detail::t_connection->begin_body(opt_.body_timeout_s, max_body(), opt_.body_timeout_s, &body_budget_);
    return true;
  }

  std::string mb_text() const { return mb_text(opt_.max_image_mb); }
  static std::string mb_text(double mb) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%g MB", mb);
    return buf;
  }

  void handle(const httplib::Request& req, httplib::Response& res, bool png_only) {
    try {
      const nlohmann::json body = segment(req, png_only ? &res : nullptr);
      if (!png_only) {
        res.set_header("Server-Timing", detail::server_timing(body["timings_ms"]));
        detail::send_json(res, 200, body);
      }
      ++served_;
    } catch (const detail::HttpError& e) {
      if (e.status == 503) res.set_header("Retry-After", "1");
      detail::send_error(res, e.status, e.what());
    } catch (const std::bad_alloc&) {  // not a bare "std::bad_alloc": say what, and that it may pass
      res.set_header("Retry-After", "1");
      detail::send_error(res, 503, "out of memory while segmenting this image; retry shortly, or send a smaller image");
    } catch (const std::exception& e) {
      detail::send_error(res, 500, std::string("internal error: ") + e.what());
    }
  }

  void handle_zero_shot(const httplib::Request& req, httplib::Response& res) {
    try {
      const nlohmann::json body = zero_shot(req);
      res.set_header("Server-Timing", detail::server_timing(body["timings_ms"]));
      detail::send_json(res, 200, body);
      ++served_;
    } catch (const detail::HttpError& e) {
      if (e.status == 503) res.set_header("Retry-After", "1");
      detail::send_error(res, e.status, e.what());
    } catch (const std::bad_alloc&) {
      res.set_header("Retry-After", "1");
      detail::send_error(res, 503, "out of memory while segmenting this image; retry shortly, or send a smaller image");
    } catch (const std::exception& e) {
      detail::send_error(res, 500, std::string("internal error: ") + e.what());
    }
  }

  // A text field of the request: the multipart field `key`, else the query parameter; `fallback`
  // when neither is there.
  static std::string text_field(const httplib::Request& req, const char* key, const std::string& fallback) {
    if (req.is_multipart_form_data() && req.has_file(key)) return req.get_file_value(key).content;
    if (req.has_param(key)) return req.get_param_value(key);
    return fallback;
  }

  // The prompts of a zero-shot request, tokenised and checked: 400 naming the prompt that is not
  // valid text or is longer than the text model's positions.
  std::vector<std::vector<int64_t>> tokenize_prompts(const std::vector<std::string>& prompts) const {
    const int64_t max_tokens = zs_->engine->config().text_config.max_position_embeddings;
    // A prompt quoted in an error: at most 60 bytes of it.
    const auto quoted = [](const std::string& p) { return p.size() <= 60 ? p : p.substr(0, 60) + "..."; };
    std::vector<std::vector<int64_t>> ids;
    for (size_t k = 0; k < prompts.size(); ++k) {
      try {
        ids.push_back(zs_->tokenizer.encode(prompts[k]));
      } catch (const Error& e) {
        throw detail::HttpError(400, "prompts: prompt " + std::to_string(k + 1) + " ('" + quoted(prompts[k]) +
                                         "') cannot be tokenised: " + e.what());
      }
      if (int64_t(ids.back().size()) > max_tokens)
        throw detail::HttpError(400, "prompts: prompt " + std::to_string(k + 1) + " ('" + quoted(prompts[k]) + "') is " +
                                         std::to_string(ids.back().size()) + " tokens; the text model takes at most " +
                                         std::to_string(max_tokens) + " (with the start and end tokens)");
    }
    return ids;
  }

  // POST /api/zero_shot: the image as for /api/segment, the prompts (multipart field or query
  // "prompts"), query threshold, overlay, mask, labels, alpha. See docs/demo.md.
  nlohmann::json zero_shot(const httplib::Request& req) {
    if (!zs_)
      throw detail::HttpError(404, "this server runs no zero-shot model (start demo_server with --zero-shot-model DIR)");
    const auto t0 = Clock::now();
    const CheckedUpload up = check_upload(req);
    const std::vector<std::string> prompts = detail::split_prompts(text_field(req, "prompts", kDefaultPrompts));
    const auto t_tok0 = Clock::now();
    const std::vector<std::vector<int64_t>> ids = tokenize_prompts(prompts);
    const double tokenize_ms = ms(t_tok0, Clock::now());
    const double threshold = query_number(req, "threshold", kDefaultZeroShotThreshold, 0, 1);
    const bool want_overlay = query_number(req, "overlay", 1, 0, 1) != 0;
    const bool want_mask = query_number(req, "mask", 0, 0, 1) != 0;
    const bool want_labels = query_number(req, "labels", 0, 0, 1) != 0;
    const bool want_label_map = query_number(req, "label_map", 0, 0, 1) != 0;
    const double alpha = query_number(req, "alpha", 0.5, 0, 1);

    std::optional<detail::Admission::Ticket> ticket = enter_queue();
    const detail::PixelBudget::Lease pixels = pixel_budget_.acquire(int64_t(up.width) * up.height);
    Image image = decode(up);
    const auto t_decoded = Clock::now();
    const Tensor<float> pixel_values = zs_->processor.preprocess(image);
    const auto t_pre = Clock::now();
    Tensor<float> logits;
    Clock::time_point t_start;
    CLIPSegTimings engine_ms;
    {
      // One inference at a time on the machine, whichever the model (the engines are not thread-safe).
      std::lock_guard<std::mutex> lock(model_mutex_);
      t_start = Clock::now();
      if (opt_.on_inference) opt_.on_inference();
      const Tensor<float> cond = zs_->engine->text_features(ids);  // cached per prompt
      engine_ms.text = zs_->engine->timings().text;
      const auto features = zs_->engine->encode_image(pixel_values);
      engine_ms.vision = zs_->engine->timings().vision;
      logits = zs_->engine->decode(features, cond);
      engine_ms.decoder = zs_->engine->timings().decoder;
    }
    const auto t_model = Clock::now();
    LabelMap labels = post_process_zero_shot(logits, threshold, image.height, image.width);
    const auto histogram = class_histogram(labels);
    const auto t_post = Clock::now();
    ticket.reset();

    std::vector<int64_t> count(prompts.size() + 1, 0);
    for (const auto& [id, n] : histogram) count[size_t(id)] = n;
    std::vector<size_t> order(prompts.size());
    for (size_t k = 0; k < order.size(); ++k) order[k] = k;
    std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return count[a + 1] > count[b + 1]; });
    const double total_px = double(labels.numel());
    std::vector<std::string> names = {"nothing"};
    names.insert(names.end(), prompts.begin(), prompts.end());
    const std::vector<Rgb> colors = class_colors(names, /*zero_shot=*/true);
    nlohmann::json classes = nlohmann::json::array();
    for (size_t k : order) {  // every prompt, most pixels first
      const int64_t id = int64_t(k) + 1;
      const Rgb c = colors[size_t(id)];
      classes.push_back({{"id", id},
                         {"name", prompts[k]},
                         {"color", {c[0], c[1], c[2]}},
                         {"pixels", count[size_t(id)]},
                         {"share", double(count[size_t(id)]) / total_px},
                         {"tokens", ids[k].size()}});
    }
    nlohmann::json out = {{"width", labels.width},
                          {"height", labels.height},
                          {"model", zs_->name},
                          {"model_input", {pixel_values.size(2), pixel_values.size(3)}},
                          {"logits_size", {logits.size(0), logits.size(1), logits.size(2)}},
                          {"format", up.format},
                          {"threshold", threshold},
                          {"prompts", prompts},
                          {"classes", classes},
                          {"nothing", {{"pixels", count[0]}, {"share", double(count[0]) / total_px}}}};
    if (want_label_map) {
      out["label_map"] = detail::label_map_json(labels);
      out["palette"] = detail::palette_json(colors);  // id 0, "nothing", is left uncoloured
    }
    if (want_labels) out["labels_png"] = detail::base64(detail::encode_png(labels.narrow));
    if (want_mask) out["mask_png"] = detail::base64(detail::encode_png(detail::zero_shot_mask(labels, colors)));
    if (want_overlay) {
      detail::paint_overlay(image, labels, colors, alpha, /*transparent=*/0);
      out["overlay_png"] = detail::base64(detail::encode_png(image));
    }
    image = Image();
    labels = LabelMap();
    const auto t_end = Clock::now();
    const double model_ms = ms(t_start, t_model);
    // The parts decode, preprocess, queue, model, postprocess and encode add up to total: the
    // tokenization counts in the model's text part, the rest before decoding (checking the upload,
    // the admission) in decode.
    out["timings_ms"] = {{"decode", ms(t0, t_decoded) - tokenize_ms},
                         {"preprocess", ms(t_decoded, t_pre)},
                         {"tokenize", tokenize_ms},
                         {"queue", ms(t_pre, t_start)},
                         {"text", tokenize_ms + engine_ms.text},
                         {"vision", engine_ms.vision},
                         {"decoder", engine_ms.decoder},
                         {"model", tokenize_ms + model_ms},
                         {"postprocess", ms(t_model, t_post)},
                         {"encode", ms(t_post, t_end)},
                         {"total", ms(t0, t_end)}};
    return out;
  }

  // The upload's bytes: a multipart field "image" (or its only file), else the raw body.
  static const std::string& upload_bytes(const httplib::Request& req) {
    if (!req.is_multipart_form_data()) return req.body;
    if (req.files.count("image")) return req.files.find("image")->second.content;
    if (req.files.size() == 1) return req.files.begin()->second.content;
    throw detail::HttpError(400, "multipart upload without a field named 'image'");
  }

  static double query_number(const httplib::Request& req, const char* key, double fallback, double lo, double hi) {
    if (!req.has_param(key)) return fallback;
    const std::string v = req.get_param_value(key);
    try {
      size_t used = 0;
      const double x = std::stod(v, &used);
      if (used == v.size() && x >= lo && x <= hi) return x;
    } catch (const std::exception&) {
    }
    throw detail::HttpError(400, std::string("query parameter '") + key + "' must be a number in [" + std::to_string(lo) +
                                     ", " + std::to_string(hi) + "], got '" + v + "'");
  }

  // An upload checked from its bytes and header alone (before admission): its format and size.
  struct CheckedUpload {
    const std::string& bytes;
    const char* format;
    int width, height;
  };

  CheckedUpload check_upload(const httplib::Request& req) const {
    const std::string& bytes = upload_bytes(req);
    if (bytes.empty())
      throw detail::HttpError(400, "empty upload: send a JPEG or PNG as the request body or as multipart field 'image'");
    if (bytes.size() > max_bytes())
      throw detail::HttpError(413, "upload too large: " + std::to_string(bytes.size()) + " bytes; the limit is " + mb_text() +
                                       " (--max-image-mb)");
    const char* format = detail::sniff_image_format(bytes);
    if (!format) throw detail::HttpError(400, "not an image: expected JPEG or PNG bytes (BMP and GIF also work)");
    const auto too_many_pixels = [&](int64_t w, int64_t h) {
      if (w * h > opt_.max_pixels)
        throw detail::HttpError(413, "image too large: " + std::to_string(w) + "x" + std::to_string(h) +
                                         " pixels; the limit is " + std::to_string(opt_.max_pixels) + " pixels");
    };
    int64_t png_w = 0, png_h = 0;  // IHDR: stb refuses huge sizes as "unknown"
    if (segml::detail::png_declared_size(reinterpret_cast<const unsigned char*>(bytes.data()), bytes.size(), png_w, png_h))
      too_many_pixels(png_w, png_h);
    int w = 0, h = 0, n = 0;
    if (!stbi_info_from_memory(reinterpret_cast<const unsigned char*>(bytes.data()), static_cast<int>(bytes.size()), &w, &h, &n))
      throw detail::HttpError(400, std::string("corrupt ") + format + ": cannot read its header");
    too_many_pixels(w, h);
    return {bytes, format, w, h};
  }

  // A place in the queue (given back when the ticket is reset or destroyed), else 503.
  std::optional<detail::Admission::Ticket> enter_queue() {
    std::optional<detail::Admission::Ticket> ticket = admission_.try_enter();
    if (!ticket)
      throw detail::HttpError(503, "busy: " + std::to_string(admission_.capacity()) +
                                       " requests are already queued; retry shortly");
    return ticket;
  }

  Image decode(const CheckedUpload& up) const {
    try {
      return load_image_from_memory(up.bytes, "upload", opt_.max_pixels);
    } catch (const Error& e) {
      throw detail::HttpError(400, std::string("corrupt ") + up.format + ": " + e.what());
    }
  }

  // Decode, queue, run, post-process. With `png_res`, writes the overlay PNG there instead of JSON.
  nlohmann::json segment(const httplib::Request& req, httplib::Response* png_res) {
    if (!seg_)
      throw detail::HttpError(404, "this server runs no SegFormer (start demo_server with --model): use POST /api/zero_shot");
    const auto t0 = Clock::now();
    const CheckedUpload up = check_upload(req);
    const char* format = up.format;
    const bool want_overlay = png_res || query_number(req, "overlay", 1, 0, 1) != 0;
    const bool want_mask = !png_res && query_number(req, "mask", 0, 0, 1) != 0;
    const bool want_label_map = !png_res && query_number(req, "label_map", 0, 0, 1) != 0;
    const double alpha = query_number(req, "alpha", 0.5, 0, 1);

    std::optional<detail::Admission::Ticket> ticket = enter_queue();
    // Decoding, post-processing and encoding hold image-sized buffers: at most max_pixels of them
    // at once across all requests (the lease is given back when this function returns).
    const detail::PixelBudget::Lease pixels = pixel_budget_.acquire(int64_t(up.width) * up.height);
    Image image = decode(up);
    const auto t_decoded = Clock::now();
    const Tensor<float> pixel_values = seg_->processor.preprocess(image);
    const auto t_pre = Clock::now();
    Tensor<float> logits;
    Clock::time_point t_start;
    {
      std::lock_guard<std::mutex> lock(model_mutex_);
      t_start = Clock::now();
      if (opt_.on_inference) opt_.on_inference();
      logits = seg_->engine.run(pixel_values);
    }
    const auto t_model = Clock::now();
    // Streamed to the image size, 1 byte per pixel (never classes x H x W floats, nor int64 ids).
    LabelMap labels = seg_->processor.post_process_label_map(logits, 0, image.height, image.width);
    const auto histogram = class_histogram(labels);
    const auto t_post = Clock::now();
    ticket.reset();

    // The overlay is blended into the decoded image itself (the original is not needed after it).
    const std::vector<Rgb>& colors = seg_->colors;
    if (png_res) {
      detail::paint_overlay(image, labels, colors, alpha);
      labels = LabelMap();
      png_res->set_content(detail::encode_png(image), "image/png");
      const auto t_end = Clock::now();
      png_res->set_header("Server-Timing", detail::server_timing({{"decode", ms(t0, t_decoded)},
                                                                  {"preprocess", ms(t_decoded, t_pre)},
                                                                  {"queue", ms(t_pre, t_start)},
                                                                  {"model", ms(t_start, t_model)},
                                                                  {"postprocess", ms(t_model, t_post)},
                                                                  {"encode", ms(t_post, t_end)},
                                                                  {"total", ms(t0, t_end)}}));
      return {};
    }
    nlohmann::json classes = nlohmann::json::array();
    const double total_px = double(labels.numel());
    for (const auto& [id, count] : histogram) {  // most frequent first
      const Rgb c = colors[size_t(id)];
      classes.push_back({{"id", id},
                         {"name", seg_->names[size_t(id)]},
                         {"color", {c[0], c[1], c[2]}},
                         {"pixels", count},
                         {"share", double(count) / total_px}});
    }
    nlohmann::json out = {{"width", labels.width},
                          {"height", labels.height},
                          {"model_input", {pixel_values.size(2), pixel_values.size(3)}},
                          {"logits_size", {logits.size(2), logits.size(3)}},
                          {"format", format},
                          {"classes", classes}};
    // The decoded image's buffer holds the overlay, then the mask: no other full-size image.
    if (want_label_map) {
      out["label_map"] = detail::label_map_json(labels);
      out["palette"] = detail::palette_json(colors);
    }
    if (want_overlay) {
      detail::paint_overlay(image, labels, colors, alpha);
      out["overlay_png"] = detail::base64(detail::encode_png(image));
    }
    if (want_mask) {
      detail::paint_mask(image, labels, colors);
      out["mask_png"] = detail::base64(detail::encode_png(image));
    }
    image = Image();
    labels = LabelMap();
    const auto t_end = Clock::now();
    out["timings_ms"] = {{"decode", ms(t0, t_decoded)},      {"preprocess", ms(t_decoded, t_pre)},
                         {"queue", ms(t_pre, t_start)},      {"model", ms(t_start, t_model)},
                         {"postprocess", ms(t_model, t_post)}, {"encode", ms(t_post, t_end)},
                         {"total", ms(t0, t_end)}};
    return out;
  }

  struct Segformer {
    explicit Segformer(LoadedModel m)
        : model(std::move(m.model)), engine(model), processor(std::move(m.processor)), name(std::move(m.name)) {
      for (int64_t id = 0; id < model.config.num_labels; ++id) {
        const auto it = model.config.id2label.find(id);
        names.push_back(it == model.config.id2label.end() ? "class " + std::to_string(id) : it->second);
      }
      colors = class_colors(names);
    }
    SegformerForSemanticSegmentation<float> model;
    SegformerInference<float> engine;
    SegformerImageProcessor processor;
    std::string name;
    std::vector<std::string> names;  // by class id, 0..num_labels-1
    std::vector<Rgb> colors;         // class_colors(names)
  };
  std::unique_ptr<Segformer> seg_;  // null: no SegFormer served
  std::unique_ptr<ZeroShotModel> zs_;  // null: no zero-shot mode
  std::string name_;  // the SegFormer's, else the CLIPSeg's
  ServerOptions opt_;
  std::vector<Asset> assets_;
  detail::ExampleScenes examples_;
  detail::Admission admission_;
  detail::PixelBudget pixel_budget_{opt_.max_pixels};
  std::mutex model_mutex_;
  std::atomic<int64_t> served_{0};
  const Clock::time_point started_ = Clock::now();
  detail::BodyBudget body_budget_{static_cast<size_t>(opt_.max_upload_memory_mb * 1024 * 1024)};  // before http_
  std::unique_ptr<httplib::Server> http_;
  std::function<void()> widen_backlog_;  // of http_, once bound
};

}  // namespace segml::demo
