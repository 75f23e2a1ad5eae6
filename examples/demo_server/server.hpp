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
//    503 when queue_size segmentation requests are already admitted, 404 for unknown paths, and 500
//    (the server keeps running) if anything else throws.
//  - At most queue_size segmentation requests are in flight; they take turns on the model (one
//    inference at a time, each using all the kernel threads). Beyond that, 503 with Retry-After.
//  - The HTTP layer (detail::GuardedServer, HTTP or HTTPS) survives slow and hostile clients: at
//    most max_connections open connections are served (a thread each, apart from the queue; beyond,
//    503 and close); the TLS handshake and the request head must each arrive within
//    header_timeout_s, the body within body_timeout_s (else 408 and close); idle connections close
//    after keep_alive_timeout_s. The bodies held at once, all connections together, are limited to
//    max_upload_memory_mb (beyond: 503).
//    Before any body is read, the framing is checked (one plain Content-Length, or chunked alone;
//    else 400; no length on a POST: 411) and a declared length over the limit gets 413 at once.
//  - With a token (ServerOptions::token; demo_server sets one beyond loopback), every request but
//    GET /healthz needs it: ?token=, the cookie segml_token (set when the query's token is right)
//    or Authorization: Bearer; else 401. Compared in constant time.
// Does not: rate-limit per client, batch requests, or keep uploaded images.
#pragma once

#include <nlohmann/json.hpp>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <deque>
#include <filesystem>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include <segml/io/checkpoint.hpp>
#include <segml/io/image.hpp>
#include <segml/io/image_processor.hpp>
#include <segml/io/overlay.hpp>
#include <segml/models/segformer_inference.hpp>

// After Eigen (via segml): httplib.h pulls in <resolv.h>, whose `_res` macro breaks Eigen's headers.
#include <httplib.h>

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

inline LoadedModel load_model(const std::string& path) {
  namespace fs = std::filesystem;
  LoadOptions opt;
  opt.strict = true;
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


// ---- The HTTP layer: access token, request framing, connections ---------------------------------

// Whether `host` (a --host value) is only reachable from this machine: localhost, 127.0.0.0/8, ::1.
inline bool is_loopback_host(const std::string& host) {
  std::string h = host;
  std::transform(h.begin(), h.end(), h.begin(), [](unsigned char c) { return char(std::tolower(c)); });
  if (h == "localhost") return true;
  in_addr v4{};
  if (inet_pton(AF_INET, h.c_str(), &v4) == 1) return (ntohl(v4.s_addr) >> 24) == 127;
  in6_addr v6{};
  if (inet_pton(AF_INET6, h.c_str(), &v6) == 1) return IN6_IS_ADDR_LOOPBACK(&v6);
  return false;  // 0.0.0.0, ::, a LAN address or a host name
}

// A token of 18 random bytes from the kernel's CSPRNG (getrandom), in base64url: 24 characters.
inline std::string random_token() {
  unsigned char bytes[18];
  size_t got = 0;
  while (got < sizeof bytes) {
    const ssize_t n = getrandom(bytes + got, sizeof bytes - got, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) fail("demo_server: cannot read random bytes for the access token (getrandom: ", std::strerror(errno), ")");
    got += size_t(n);
  }
  static constexpr char kAlphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
  std::string out;
  for (size_t i = 0; i < sizeof bytes; i += 3) {
    const uint32_t v = uint32_t(bytes[i]) << 16 | uint32_t(bytes[i + 1]) << 8 | bytes[i + 2];
    for (int s = 18; s >= 0; s -= 6) out += kAlphabet[(v >> s) & 63];
  }
  return out;
}

// Why `token` cannot be an access token (it goes into URLs and a cookie), or "" when it can.
inline std::string token_problem(const std::string& token) {
  if (token.size() < 8 || token.size() > 256) return "expected 8 to 256 characters (it has " + std::to_string(token.size()) + ")";
  for (char c : token)
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '-' && c != '_' && c != '.' && c != '~')
      return std::string("expected only letters, digits and - _ . ~ (it has '") + c + "')";
  return "";
}

// The access token for a server listening on `host`: none on loopback or with no_auth, else
// `given` when not empty, else a fresh random one.
inline std::string access_token(const std::string& host, const std::string& given, bool no_auth) {
  if (no_auth || is_loopback_host(host)) return "";
  return given.empty() ? random_token() : given;
}

// Compares two secrets in a time that depends on their lengths only.
inline bool same_secret(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  volatile unsigned char diff = 0;
  for (size_t i = 0; i < a.size(); ++i) diff = diff | static_cast<unsigned char>(a[i] ^ b[i]);
  return diff == 0;
}

inline std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

inline bool iequals(std::string_view a, std::string_view b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
           return std::tolower(static_cast<unsigned char>(x)) == std::tolower(static_cast<unsigned char>(y));
         });
}

// A refusal before the body is read: the status and the message of the JSON error.
struct Refusal {
  int status;
  std::string message;
};

// Checks how the request delimits its body, from its headers alone (before anything is read), so
// that no two readers can disagree on where it ends: at most one Content-Length, all digits; no
// Transfer-Encoding but "chunked", never together with Content-Length; no body on methods that
// have none; a declared length within `max_body` (else 413 at once).
inline std::optional<Refusal> check_framing(const httplib::Request& req, size_t max_body, const std::string& limit_text) {
  const size_t lengths = req.headers.count("Content-Length"), encodings = req.headers.count("Transfer-Encoding");
  if (lengths > 1)
    return Refusal{400, "ambiguous request: " + std::to_string(lengths) + " Content-Length headers, expected at most one"};
  if (encodings > 1)
    return Refusal{400, "ambiguous request: " + std::to_string(encodings) + " Transfer-Encoding headers, expected at most one"};
  if (lengths && encodings) return Refusal{400, "ambiguous request: both Content-Length and Transfer-Encoding, expected one"};
  if (encodings) {
    const std::string te = req.get_header_value("Transfer-Encoding");
    if (!iequals(trim(te), "chunked"))
      return Refusal{400, "unsupported Transfer-Encoding '" + te + "': expected chunked (or a Content-Length)"};
  }
  uint64_t length = 0;
  if (lengths) {
    const std::string cl = req.get_header_value("Content-Length");
    const std::string_view digits = trim(cl);
    if (digits.empty() || !std::all_of(digits.begin(), digits.end(), [](char c) { return c >= '0' && c <= '9'; }))
      return Refusal{400, "bad Content-Length '" + cl + "': expected a whole number of bytes >= 0"};
    if (digits.size() > 18) return Refusal{413, "upload too large: Content-Length " + cl + "; the limit is " + limit_text};
    length = std::stoull(std::string(digits));
  }
  const bool has_body = encodings || length > 0;
  const std::string& m = req.method;
  const bool body_method = m == "POST" || m == "PUT" || m == "PATCH" || m == "DELETE";
  if (has_body && !body_method) return Refusal{400, "a " + m + " request has no body, but this one declares one"};
  // Without either header httplib would read the body until the client closes the connection.
  if (body_method && !lengths && !encodings)
    return Refusal{411, "a " + m + " request needs a Content-Length header (or Transfer-Encoding: chunked)"};
  if (length > max_body)
    return Refusal{413, "upload too large: Content-Length " + std::to_string(length) + " bytes; the limit is " + limit_text};
  return std::nullopt;
}

// The access token a request carries, if any: the query's "token", the cookie "segml_token", or
// "Authorization: Bearer ...". Sets `from_query` when the query carries one.
inline std::vector<std::string> offered_tokens(const httplib::Request& req, bool& from_query) {
  std::vector<std::string> out;
  from_query = req.has_param("token");
  if (from_query) out.push_back(req.get_param_value("token"));
  const auto [begin, end] = req.headers.equal_range("Authorization");
  for (auto it = begin; it != end; ++it) {
    const std::string_view v = trim(it->second);
    if (v.size() > 7 && iequals(v.substr(0, 7), "Bearer ")) out.emplace_back(trim(v.substr(7)));
  }
  const auto [cb, ce] = req.headers.equal_range("Cookie");
  for (auto it = cb; it != ce; ++it) {
    std::string_view rest = it->second;
    while (!rest.empty()) {
      const size_t semi = rest.find(';');
      const std::string_view pair = trim(rest.substr(0, semi));
      rest = semi == std::string_view::npos ? std::string_view() : rest.substr(semi + 1);
      if (pair.starts_with("segml_token=")) out.emplace_back(pair.substr(12));
    }
  }
  return out;
}

// The request bodies held in memory by all connections at once, at most `capacity` bytes: counted
// as they arrive and given back when their request is done.
struct BodyBudget {
  explicit BodyBudget(size_t bytes) : capacity(bytes) {}
  bool take(size_t n) {
    if (used.fetch_add(n) + n <= capacity) return true;
    used.fetch_sub(n);
    return false;
  }
  void give_back(size_t n) { used.fetch_sub(n); }
  const size_t capacity;
  std::atomic<size_t> used{0};
};

// How a connection thread treats the connection it is given (set by ConnectionPool).
enum class ConnectionMode { serve, refuse, drop };
inline thread_local ConnectionMode t_connection_mode = ConnectionMode::serve;

// The connections' threads: one per open connection, created on demand, at most max_connections
// serving at once; up to `spare` more only answer 503 ("too many connections") and close, and
// beyond those a connection is closed at once. Threads are kept for reuse and joined at shutdown;
// every accepted socket is closed by its job.
class ConnectionPool final : public httplib::TaskQueue {
 public:
  ConnectionPool(int max_connections, int spare) : max_(max_connections), spare_(spare) {}
  ~ConnectionPool() override { shutdown(); }

  void enqueue(std::function<void()> fn) override {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      const ConnectionMode mode = serving_ < max_     ? ConnectionMode::serve
                                  : refusing_ < spare_ ? ConnectionMode::refuse
                                                       : ConnectionMode::drop;
      if (mode != ConnectionMode::drop) {
        ++(mode == ConnectionMode::serve ? serving_ : refusing_);
        jobs_.push_back({std::move(fn), mode});
        if (size_t(waiting_) >= jobs_.size())
          cv_.notify_one();  // a waiting thread takes it
        else if (int(threads_.size()) < max_ + spare_)
          threads_.emplace_back([this] { work(); });
        // else a thread is about to finish its job and take this one
        return;
      }
    }
    run(fn, ConnectionMode::drop);  // on the accepting thread: closes the socket at once
  }

  void shutdown() override {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (stopped_) return;
      stopped_ = true;
    }
    cv_.notify_all();
    for (std::thread& t : threads_) t.join();
  }

 private:
  struct Job {
    std::function<void()> fn;
    ConnectionMode mode;
  };

  static void run(const std::function<void()>& fn, ConnectionMode mode) {
    t_connection_mode = mode;
    try {
      fn();
    } catch (...) {  // process_and_close_socket does not throw; a thread must not end the program
    }
    t_connection_mode = ConnectionMode::serve;
  }

  void work() {
    // OpenSSL writes without MSG_NOSIGNAL: a client gone mid-answer must give EPIPE, not end the
    // process. Blocked in this thread only, SIGPIPE stays pending here and is never delivered.
    sigset_t pipe;
    sigemptyset(&pipe);
    sigaddset(&pipe, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &pipe, nullptr);
    for (;;) {
      Job job;
      {
        std::unique_lock<std::mutex> lock(mutex_);
        ++waiting_;
        cv_.wait(lock, [this] { return !jobs_.empty() || stopped_; });
        --waiting_;
        if (jobs_.empty()) return;  // stopped, and every accepted socket handled
        job = std::move(jobs_.front());
        jobs_.pop_front();
      }
      run(job.fn, job.mode);
      std::lock_guard<std::mutex> lock(mutex_);
      --(job.mode == ConnectionMode::serve ? serving_ : refusing_);
    }
  }

  const int max_, spare_;
  std::mutex mutex_;
  std::condition_variable cv_;
  std::deque<Job> jobs_;
  std::vector<std::thread> threads_;
  int serving_ = 0, refusing_ = 0, waiting_ = 0;
  bool stopped_ = false;
};

// One client connection: the socket (plain, or TLS when given an SSL_CTX) as an httplib::Stream
// whose reads and writes wait at most until the deadline of what is being read (the TLS handshake
// and the request head, then the body) or written (the answer), however slowly the bytes trickle
// in. Heads beyond kMaxHead bytes and bodies beyond max_body bytes are cut off (httplib reads a
// line whole, whatever its length; chunked uploads declare no length). Also ends its waits when the
// server stops.
class Connection final : public httplib::Stream {
 public:
  using Clock = std::chrono::steady_clock;
  Connection(int sock, const std::atomic<socket_t>& listening, SSL_CTX* tls = nullptr)
      : sock_(sock), listening_(listening), tls_(tls) {}
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;
  ~Connection() override {
    if (ssl_) SSL_free(ssl_);
  }

  // With TLS: the handshake, within timeout_s (the socket becomes non-blocking, so that no read
  // waits for a whole TLS record). Without: nothing to do. False when it fails or times out.
  bool handshake(double timeout_s) {
    if (!tls_) return true;
    const int flags = fcntl(sock_, F_GETFL, 0);
    if (flags < 0 || fcntl(sock_, F_SETFL, flags | O_NONBLOCK) < 0) return false;
    ssl_ = SSL_new(tls_);
    if (!ssl_ || SSL_set_fd(ssl_, sock_) != 1) return false;
    const auto until = Clock::now() + seconds(timeout_s);
    for (;;) {
      ERR_clear_error();  // SSL_get_error reads this thread's error queue
      const int r = SSL_accept(ssl_);
      if (r == 1) return handshaken_ = true;
      const int e = SSL_get_error(ssl_, r);
      if (!((e == SSL_ERROR_WANT_READ && wait(POLLIN, until)) || (e == SSL_ERROR_WANT_WRITE && wait(POLLOUT, until))))
        return false;
    }
  }

  // Waits up to `idle` for the next request's first byte; false if none came.
  bool wait_for_request(double idle_s) {
    return off_ < len_ || (ssl_ && SSL_pending(ssl_) > 0) || wait(POLLIN, Clock::now() + seconds(idle_s));
  }
  // The request head must arrive within head_s from now.
  void begin_request(double head_s) {
    give_back_body();
    phase_ = Phase::head;
    deadline_ = Clock::now() + seconds(head_s);
    head_read_ = body_read_ = 0;
    timed_out_ = too_large_ = head_too_large_ = over_budget_ = must_close_ = false;
  }
  // The head has been read: the body must arrive within body_s, the answer be taken within send_s.
  // Its bytes count against `budget` (when given) until the next request or the close.
  void begin_body(double body_s, size_t max_body, double send_s, BodyBudget* budget = nullptr) {
    phase_ = Phase::body;
    deadline_ = Clock::now() + seconds(body_s);
    max_body_ = max_body;
    send_s_ = send_s;
    budget_ = budget;
  }
  void close_after_answer() { must_close_ = true; }
  bool must_close() const { return must_close_ || timed_out_ || too_large_ || head_too_large_ || over_budget_; }
  bool timed_out() const { return timed_out_; }
  bool in_body() const { return phase_ == Phase::body; }
  bool body_too_large() const { return too_large_; }
  bool over_budget() const { return over_budget_; }
  bool head_too_large() const { return head_too_large_; }
  static constexpr size_t kMaxHead = 64 * 1024;  // request line + headers

  // Closes the socket. After an answer that left part of the request unread, first half-closes and
  // reads what the client still sends (at most a second), so that the client gets the answer
  // rather than a reset.
  void close(bool linger) {
    give_back_body();
    if (handshaken_ && !timed_out_) {
      ERR_clear_error();
      SSL_shutdown(ssl_);  // close_notify, without waiting for the client's
    }
    if (linger) {
      ::shutdown(sock_, SHUT_WR);
      const auto until = Clock::now() + std::chrono::seconds(1);
      char sink[4096];
      while (wait(POLLIN, until) && ::recv(sock_, sink, sizeof sink, 0) > 0) {
      }
    }
    ::shutdown(sock_, SHUT_RDWR);
    ::close(sock_);
  }

  bool is_readable() const override { return off_ < len_ || wait(POLLIN, deadline_); }
  bool is_writable() const override { return wait(POLLOUT, send_deadline()); }

  ssize_t read(char* ptr, size_t size) override {
    size_t& count = phase_ == Phase::head ? head_read_ : body_read_;
    const size_t limit = phase_ == Phase::head ? kMaxHead : max_body_;
    if (count >= limit) {
      (phase_ == Phase::head ? head_too_large_ : too_large_) = true;
      return -1;
    }
    if (off_ == len_) {
      const ssize_t n = receive(buf_, sizeof buf_);
      if (n <= 0) return n;
      off_ = 0;
      len_ = size_t(n);
    }
    const size_t n = std::min({size, len_ - off_, limit - count});
    if (phase_ == Phase::body && budget_) {
      if (!budget_->take(n)) {
        over_budget_ = true;
        return -1;
      }
      budget_held_ += n;
    }
    count += n;
    std::memcpy(ptr, buf_ + off_, n);
    off_ += n;
    sending_ = false;
    return ssize_t(n);
  }

  ssize_t write(const char* ptr, size_t size) override {
    if (!sending_) {  // the first write after reading: the answer's deadline starts
      sending_ = true;
      send_until_ = Clock::now() + seconds(send_s_);
    }
    if (ssl_) {
      for (;;) {
        ERR_clear_error();
        const int r = SSL_write(ssl_, ptr, int(std::min<size_t>(size, 1 << 30)));
        if (r > 0) return r;
        const int e = SSL_get_error(ssl_, r);
        if (!((e == SSL_ERROR_WANT_WRITE && wait(POLLOUT, send_until_)) || (e == SSL_ERROR_WANT_READ && wait(POLLIN, send_until_))))
          return -1;
      }
    }
    if (!wait(POLLOUT, send_until_)) return -1;
    ssize_t n;
    do n = ::send(sock_, ptr, size, MSG_NOSIGNAL);
    while (n < 0 && errno == EINTR);
    return n;
  }

  void get_remote_ip_and_port(std::string& ip, int& port) const override { address(true, ip, port); }
  void get_local_ip_and_port(std::string& ip, int& port) const override { address(false, ip, port); }
  socket_t socket() const override { return sock_; }

 private:
  enum class Phase { head, body };
  // Reads what has arrived, waiting at most until deadline_: > 0 bytes, 0 at the end of the stream,
  // -1 on error or timeout (then timed_out_, unless the server stops).
  ssize_t receive(char* buf, size_t size) {
    for (;;) {
      if (ssl_) {
        ERR_clear_error();
        const int r = SSL_read(ssl_, buf, int(std::min<size_t>(size, 1 << 30)));
        if (r > 0) return r;
        const int e = SSL_get_error(ssl_, r);
        if (e == SSL_ERROR_ZERO_RETURN) return 0;
        if (e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE) return -1;
        if (wait(e == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT, deadline_)) continue;
      } else if (wait(POLLIN, deadline_)) {
        const ssize_t n = ::recv(sock_, buf, size, 0);
        if (n >= 0 || errno != EINTR) return n;
        continue;
      }
      timed_out_ = listening_ != INVALID_SOCKET;
      return -1;
    }
  }

  void give_back_body() {
    if (budget_) budget_->give_back(budget_held_);
    budget_held_ = 0;
    budget_ = nullptr;
  }

  static Clock::duration seconds(double s) {
    return std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(s));
  }
  Clock::time_point send_deadline() const { return sending_ ? send_until_ : Clock::now() + seconds(send_s_); }

  // Waits until the socket is ready for `events`, at most until `until`; false on timeout or when
  // the server stops. Polls in slices so that a stop is noticed within 100 ms.
  bool wait(short events, Clock::time_point until) const {
    for (;;) {
      if (listening_ == INVALID_SOCKET) return false;
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(until - Clock::now()).count();
      if (left <= 0) return false;
      pollfd p{sock_, events, 0};
      const int r = ::poll(&p, 1, int(std::min<int64_t>(left, 100)));
      if (r > 0) return true;
      if (r < 0 && errno != EINTR) return false;
    }
  }

  void address(bool remote, std::string& ip, int& port) const {
    sockaddr_storage a{};
    socklen_t len = sizeof a;
    ip.clear();
    port = 0;
    if ((remote ? getpeername : getsockname)(sock_, reinterpret_cast<sockaddr*>(&a), &len) != 0) return;
    char buf[INET6_ADDRSTRLEN] = {};
    if (a.ss_family == AF_INET) {
      const auto* in = reinterpret_cast<const sockaddr_in*>(&a);
      if (inet_ntop(AF_INET, &in->sin_addr, buf, sizeof buf)) ip = buf;
      port = ntohs(in->sin_port);
    } else if (a.ss_family == AF_INET6) {
      const auto* in = reinterpret_cast<const sockaddr_in6*>(&a);
      if (inet_ntop(AF_INET6, &in->sin6_addr, buf, sizeof buf)) ip = buf;
      port = ntohs(in->sin6_port);
    }
  }

  int sock_;
  const std::atomic<socket_t>& listening_;
  SSL_CTX* tls_;
  SSL* ssl_ = nullptr;
  bool handshaken_ = false;
  char buf_[4096];
  size_t off_ = 0, len_ = 0;
  Phase phase_ = Phase::head;
  Clock::time_point deadline_ = Clock::now(), send_until_ = Clock::now();
  size_t max_body_ = 0, body_read_ = 0, head_read_ = 0;
  BodyBudget* budget_ = nullptr;
  size_t budget_held_ = 0;
  double send_s_ = 30;
  bool sending_ = false, timed_out_ = false, too_large_ = false, head_too_large_ = false, over_budget_ = false,
       must_close_ = false;
};

// The connection the current thread serves (null outside GuardedServer's connection threads).
inline thread_local Connection* t_connection = nullptr;

struct HttpLimits {
  int max_connections = 128;
  double header_timeout_s = 10, body_timeout_s = 30, keep_alive_timeout_s = 5;
  int keep_alive_max = 100;
};

// httplib's server (Base: httplib::Server, or httplib::SSLServer for HTTPS) with its connections
// handled by Connection instead of httplib's own loop: deadlines for the TLS handshake and the head,
// the body and the answer; bounded keep-alive; a 503 answer for connections beyond the cap.
// httplib still parses the requests and routes them.
template <class Base>
class GuardedServer final : public Base {
 public:
  template <class... Args>
  explicit GuardedServer(const HttpLimits& limits, Args&&... base_args) : Base(std::forward<Args>(base_args)...), limits_(limits) {
    this->new_task_queue = [this] { return new ConnectionPool(limits_.max_connections, kSpare); };
  }
  // A deeper accept backlog than httplib's 5, so that bursts of connections are not dropped.
  void widen_backlog() {
    if (this->svr_sock_ != INVALID_SOCKET) ::listen(this->svr_sock_, SOMAXCONN);
  }

 private:
  static constexpr int kSpare = 8;  // threads that only answer 503 to connections beyond the cap

  SSL_CTX* tls_context() const {
    if constexpr (std::is_base_of_v<httplib::SSLServer, Base>) return this->ssl_context();
    return nullptr;
  }

  bool process_and_close_socket(socket_t sock) override {
    if (t_connection_mode != ConnectionMode::serve) {
      refuse(sock, t_connection_mode == ConnectionMode::refuse);
      return false;
    }
    Connection conn(sock, this->svr_sock_, tls_context());
    if (!conn.handshake(limits_.header_timeout_s)) {
      conn.close(false);
      return false;
    }
    t_connection = &conn;
    bool ok = false;
    for (int served = 0; served < limits_.keep_alive_max && this->svr_sock_ != INVALID_SOCKET; ++served) {
      if (!conn.wait_for_request(limits_.keep_alive_timeout_s)) break;
      conn.begin_request(limits_.header_timeout_s);
      bool closed = false;
      ok = this->process_request(conn, served + 1 == limits_.keep_alive_max, closed, nullptr);
      if (!ok || closed || conn.must_close()) break;
    }
    t_connection = nullptr;
    conn.close(conn.must_close());
    return ok;
  }

  // A connection beyond the cap: with a thread, reads the request head (briefly), answers 503 and
  // closes; without one (`answer` false), just closes.
  void refuse(socket_t sock, bool answer) {
    Connection conn(sock, this->svr_sock_, tls_context());
    if (answer && conn.handshake(0.5)) {
      conn.begin_request(0.5);
      std::string head;
      char c;
      while (head.size() < 16384 && !head.ends_with("\r\n\r\n") && conn.read(&c, 1) == 1) head += c;
      const std::string body =
          nlohmann::json{{"error", "too many connections: the server serves at most " + std::to_string(limits_.max_connections) +
                                       " at once (--max-connections); retry shortly"},
                         {"status", 503}}
              .dump();
      const std::string answer_text = "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: " +
                                      std::to_string(body.size()) + "\r\nRetry-After: 1\r\nConnection: close\r\n\r\n" + body;
      conn.begin_body(0.5, 0, 1);
      conn.write(answer_text.data(), answer_text.size());
    }
    conn.close(answer);
  }

  HttpLimits limits_;
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
    if (std::string_view(format) == "png" && bytes.size() >= 24) {  // IHDR: stb refuses huge sizes as "unknown"
      const auto be32 = [&](size_t at) {
        uint32_t v = 0;
        for (size_t k = 0; k < 4; ++k) v = v << 8 | uint8_t(bytes[at + k]);
        return int64_t(v);
      };
      too_many_pixels(be32(16), be32(20));
    }
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
    Image image;
    try {
      image = load_image_from_memory(bytes, "upload");
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
    const Tensor<int64_t> labels =
        processor_.post_process_semantic_segmentation(logits, {{image.height, image.width}})[0];
    const auto histogram = class_histogram(labels);
    const auto t_post = Clock::now();
    ticket.reset();

    if (png_res) {
      png_res->set_content(detail::encode_png(overlay(image, labels, alpha)), "image/png");
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
    nlohmann::json out = {{"width", labels.size(1)},
                          {"height", labels.size(0)},
                          {"model_input", {pixel_values.size(2), pixel_values.size(3)}},
                          {"logits_size", {logits.size(2), logits.size(3)}},
                          {"format", format},
                          {"classes", classes}};
    if (want_overlay) out["overlay_png"] = detail::base64(detail::encode_png(overlay(image, labels, alpha)));
    if (want_mask) out["mask_png"] = detail::base64(detail::encode_png(colorize(labels)));
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
  std::mutex model_mutex_;
  std::atomic<int64_t> served_{0};
  const Clock::time_point started_ = Clock::now();
  detail::BodyBudget body_budget_{static_cast<size_t>(opt_.max_upload_memory_mb * 1024 * 1024)};  // before http_
  std::unique_ptr<httplib::Server> http_;
  std::function<void()> widen_backlog_;  // of http_, once bound
};

}  // namespace segml::demo
