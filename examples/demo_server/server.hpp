// examples/demo_server/server.hpp: the demo web server — a SegFormer behind a small REST API and a
// single-page app (see docs/demo.md). Header-only so that tests/test_demo_server.cpp can start it
// in-process; examples/demo_server.cpp is only the command line around it.
//
// Guarantees:
//  - GET /              the page (index.html, app.js, style.css: the assets given to the server).
//  - GET /healthz       {"status": "ok", ...}: the model is loaded and the server answers.
//  - GET /api/info      the model name, input size, classes (id, name, palette colour) and limits.
//  - POST /api/segment  image bytes (the raw body, or a multipart field "image") -> JSON: the label
//                       map size, the classes present with their pixel share (largest first), the
//                       server-side timings, and base64 PNGs: the blended overlay (overlay=1, the
//                       default) and the colour mask (mask=1). Query: overlay, mask, alpha.
//  - POST /api/overlay  the same input -> the overlay PNG itself (for curl).
//  - Every error is JSON {"error": "...", "status": N}: 400 for an empty, non-image or corrupt
//    upload, 413 for an upload larger than max_image_mb (or with more than max_pixels pixels),
//    503 when queue_size segmentation requests are already admitted (or the memory ran out while
//    segmenting, with a message saying so), 404 for unknown paths, and 500
//    (the server keeps running) if anything else throws.
//  - At most queue_size segmentation requests are in flight; they take turns on the model (one
//    inference at a time, each using all the kernel threads). Beyond that, 503 with Retry-After.
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
#include <functional>
#include <memory>
#include <mutex>
#include <new>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <segml/io/checkpoint.hpp>
#include <segml/io/image.hpp>
#include <segml/io/image_processor.hpp>
#include <segml/io/overlay.hpp>
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
         "Then run: demo_server --model weights/<folder>";
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
inline LoadedModel load_model(const std::string& path) {
  namespace fs = std::filesystem;
  LoadOptions opt;
  opt.strict = true;
  opt.allow_non_finite = false;
  SegformerForSemanticSegmentation<float> model = from_pretrained<float>(path, opt);
  model.eval();
  const fs::path folder = fs::is_directory(path) ? fs::path(path) : fs::path(path).parent_path();
  const fs::path pre = folder / "preprocessor_config.json";
  SegformerImageProcessor processor =
      fs::exists(pre) ? SegformerImageProcessor::from_json_file(pre.string()) : SegformerImageProcessor();
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
  res.set_content(body.dump(), "application/json");
}

inline void send_error(httplib::Response& res, int status, const std::string& message) {
  send_json(res, status, {{"error", message}, {"status", status}});
}

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
  DemoServer(SegformerForSemanticSegmentation<float> model, SegformerImageProcessor processor, std::string model_name,
             ServerOptions options = {}, std::vector<Asset> assets = {})
      : model_(std::move(model)),
        engine_(model_),
        processor_(std::move(processor)),
        name_(std::move(model_name)),
        opt_(std::move(options)),
        assets_(std::move(assets)),
        admission_(std::max(0, opt_.queue_size)) {
    model_.eval();
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
      : DemoServer(std::move(loaded.model), std::move(loaded.processor), std::move(loaded.name), std::move(options),
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
    engine_.run(Tensor<float>::zeros({1, 3, processor_.height, processor_.width}));
    return ms(t0, Clock::now());
  }

  nlohmann::json info() const {
    nlohmann::json classes = nlohmann::json::array();
    for (const auto& [id, label] : model_.config.id2label) {
      const Rgb c = palette_color(id);
      classes.push_back({{"id", id}, {"name", label}, {"color", {c[0], c[1], c[2]}}});
    }
    const auto& cfg = model_.config;
    return {{"model", name_},
            {"num_labels", cfg.num_labels},
            {"classes", classes},
            {"input_size", {processor_.height, processor_.width}},
            {"architecture", {{"hidden_sizes", cfg.hidden_sizes}, {"depths", cfg.depths}}},
            {"threads", num_threads()},
            {"queue_size", admission_.capacity()},
            {"max_image_mb", opt_.max_image_mb},
            {"max_pixels", opt_.max_pixels},
            {"max_connections", opt_.max_connections}};
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
    http_->Post("/api/segment", [this](const httplib::Request& req, httplib::Response& res) { handle(req, res, false); });
    http_->Post("/api/overlay", [this](const httplib::Request& req, httplib::Response& res) { handle(req, res, true); });

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
        detail::send_error(res, 404, "no such path: " + req.path + " (see GET /api/info, POST /api/segment)");
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
      if (!png_only) detail::send_json(res, 200, body);
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

  // Decode, queue, run, post-process. With `png_res`, writes the overlay PNG there instead of JSON.
  nlohmann::json segment(const httplib::Request& req, httplib::Response* png_res) {
    const auto t0 = Clock::now();
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
    const bool want_overlay = png_res || query_number(req, "overlay", 1, 0, 1) != 0;
    const bool want_mask = !png_res && query_number(req, "mask", 0, 0, 1) != 0;
    const double alpha = query_number(req, "alpha", 0.5, 0, 1);

    std::optional<detail::Admission::Ticket> ticket = admission_.try_enter();
    if (!ticket)
      throw detail::HttpError(503, "busy: " + std::to_string(admission_.capacity()) +
                                       " requests are already queued; retry shortly");
    // Decoding, post-processing and encoding hold image-sized buffers: at most max_pixels of them
    // at once across all requests (the lease is given back when this function returns).
    const detail::PixelBudget::Lease pixels = pixel_budget_.acquire(int64_t(w) * h);
    Image image;
    try {
      image = load_image_from_memory(bytes, "upload", opt_.max_pixels);
    } catch (const Error& e) {
      throw detail::HttpError(400, std::string("corrupt ") + format + ": " + e.what());
    }
    const auto t_decoded = Clock::now();
    const Tensor<float> pixel_values = processor_.preprocess(image);
    const auto t_pre = Clock::now();
    Tensor<float> logits;
    Clock::time_point t_start;
    {
      std::lock_guard<std::mutex> lock(model_mutex_);
      t_start = Clock::now();
      if (opt_.on_inference) opt_.on_inference();
      logits = engine_.run(pixel_values);
    }
    const auto t_model = Clock::now();
    // Streamed to the image size, 1 byte per pixel (never classes x H x W floats, nor int64 ids).
    LabelMap labels = processor_.post_process_label_map(logits, 0, image.height, image.width);
    const auto histogram = class_histogram(labels);
    const auto t_post = Clock::now();
    ticket.reset();

    // The overlay is blended into the decoded image itself (the original is not needed after it).
    if (png_res) {
      overlay_in_place(image, labels, alpha);
      labels = LabelMap();
      png_res->set_content(detail::encode_png(image), "image/png");
      return {};
    }
    nlohmann::json classes = nlohmann::json::array();
    const double total_px = double(labels.numel());
    for (const auto& [id, count] : histogram) {  // most frequent first
      const Rgb c = palette_color(id);
      const auto it = model_.config.id2label.find(id);
      classes.push_back({{"id", id},
                         {"name", it == model_.config.id2label.end() ? "class " + std::to_string(id) : it->second},
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
    if (want_overlay) {
      overlay_in_place(image, labels, alpha);
      out["overlay_png"] = detail::base64(detail::encode_png(image));
    }
    if (want_mask) {
      colorize_in_place(image, labels);
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

  SegformerForSemanticSegmentation<float> model_;
  SegformerInference<float> engine_;
  SegformerImageProcessor processor_;
  std::string name_;
  ServerOptions opt_;
  std::vector<Asset> assets_;
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
