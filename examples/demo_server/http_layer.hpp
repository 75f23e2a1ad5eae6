// examples/demo_server/http_layer.hpp: the demo server's HTTP layer below the routes — what keeps
// slow, hostile or unauthenticated clients from stalling it or reading it (see docs/demo.md,
// "Connections" and "The access token"). Used by server.hpp; knows nothing of the model.
//
// Guarantees:
//  - GuardedServer<httplib::Server or httplib::SSLServer> handles each connection itself (httplib
//    still parses and routes the requests): at most max_connections served at once, a thread each
//    (ConnectionPool; beyond, 503 and close, or a plain close when even the spare threads are busy);
//    the TLS handshake and the request head must each arrive within header_timeout_s, the body
//    within body_timeout_s, and the answer be taken within body_timeout_s (a deadline for the whole,
//    not per read); heads over 64 KB and bodies over the given limit are cut off; idle keep-alive
//    connections close after keep_alive_timeout_s. Every accepted socket is closed.
//  - check_framing() refuses, from the headers alone, what two readers could delimit differently.
//  - The access token: is_loopback_host(), access_token() (random_token(): 18 bytes of getrandom),
//    offered_tokens() (query, cookie, bearer), same_secret() (constant time).
//  - t_connection lets the route handlers (on the connection's thread) set the body's deadline and
//    budget, and close the connection after an answer that left the request unread.
// Does not: parse HTTP itself, rate-limit per client, or encrypt anything over plain HTTP.
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
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <deque>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include <segml/core/error.hpp>

// cpp-httplib, with the flags of Debian's prebuilt library (CPPHTTPLIB_OPENSSL_SUPPORT: OpenSSL's
// headers come with it). Included after segml by server.hpp, since it breaks Eigen's headers.
#include <httplib.h>

namespace segml::demo::detail {

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

}  // namespace segml::demo::detail
