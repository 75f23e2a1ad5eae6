// segml/hub/download.hpp: downloads a repo's files from the HuggingFace hub into the HF cache.
//
//   fs::path snap = hub::download_snapshot("nvidia/segformer-b0-finetuned-ade-512-512", hub::model_files(), opt);
//
// Does what huggingface_hub's hf_hub_download does, file by file, leaving the cache layout of
// hub/cache.hpp (blobs, snapshot symlinks, refs, .no_exist) so Python sees segml's downloads:
//  - HEAD {endpoint}/{repo}/resolve/{revision}/{file} with `Authorization: Bearer <token>` when
//    there is one, following relative redirects (a renamed repo); the answer gives X-Repo-Commit,
//    the ETag (X-Linked-Etag for LFS files) and the size (X-Linked-Size, else Content-Length). An
//    absolute redirect (LFS files live on a CDN) is where the bytes are fetched from.
//  - Once the first file named the commit, the other files are asked for at that commit, so one
//    snapshot never mixes two commits.
//  - GET into blobs/<etag>.incomplete, resuming a previous partial download with `Range: bytes=N-`
//    (a server that answers 200 instead of 206 restarts the file); the token is sent only to the
//    endpoint's own origin, never to a redirect's other host. The size is checked (a server sending
//    more than it announced is cut off), then the file is renamed into blobs/<etag> and linked from
//    snapshots/<commit>/<file>; refs/<revision> is written when the revision is a branch or tag.
//    A per-blob lock file (.locks/, like huggingface_hub) keeps two processes from writing one blob.
//  - Optional files answered 404 are recorded under .no_exist/<commit>/ as huggingface_hub does.
//  - A progress bar on stderr (bytes, MB/s, ETA); redrawn in place on a terminal, one line otherwise.
//  - Bounded: connect and read timeouts ($HF_HUB_ETAG_TIMEOUT for HEAD, $HF_HUB_DOWNLOAD_TIMEOUT for
//    GET, 10 s each by default), at most 10 redirects, header values checked (40-hex commit, ETag a
//    safe file name), files that are not weights at most 64 MB, the announced size checked against
//    the free disk space first. HTTP header lines are bounded by cpp-httplib (8 KB).
//  - Errors name the URL and say what to do: 401 / 403 (gated or private: set HF_TOKEN), 404 (repo,
//    revision or file not found), a repo holding only pytorch_model.bin (tools/convert_weights.py),
//    network failures (HF_ENDPOINT, HF_HUB_OFFLINE, huggingface-cli download).
//
// Compiled only when SEGML_WITH_HUB is defined (the segml CMake target defines it when cpp-httplib
// and OpenSSL are found, and links them); otherwise download_snapshot() fails with a message saying
// this build cannot download and how to get the files another way.
#pragma once

#include <string>

#include "segml/hub/cache.hpp"

#if defined(SEGML_WITH_HUB)
// Eigen first: httplib.h pulls in <resolv.h>, whose `_res` macro breaks Eigen's headers read after it.
#include <Eigen/Core>
#include <httplib.h>

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <iostream>
#endif

namespace segml::hub {

namespace detail {
// The command line that downloads a repo with Python's huggingface_hub, for error messages.
inline std::string cli_download_hint(const std::string& repo_id, const std::string& revision) {
  return "`huggingface-cli download " + repo_id + (revision == "main" ? "" : " --revision " + revision) +
         "` (it fills the same cache), or download the files elsewhere and pass their folder instead of the id";
}
}  // namespace detail

#if !defined(SEGML_WITH_HUB)

// This build has no HTTP client: say so and how to get the files.
inline fs::path download_snapshot(const std::string& repo_id, const FileSet&, const Options& opt,
                                  const std::string& cache_state = "") {
  fail("hub: '", repo_id, "' (revision '", opt.revision, "') is not in the HF cache (", cache_state,
       ") and this build cannot download (segml was built without cpp-httplib and OpenSSL: install "
       "libcpp-httplib-dev libssl-dev and rebuild, or define SEGML_WITH_HUB=1 and link cpp-httplib). Fix: ",
       detail::cli_download_hint(repo_id, opt.revision));
}

#else

namespace detail {

struct Url {
  std::string scheme, host_port, target;  // "https", "huggingface.co:443", "/org/name/resolve/..."
  std::string origin() const { return scheme + "://" + host_port; }
};

inline Url parse_url(const std::string& url) {
  Url u;
  const size_t colon = url.find("://");
  if (colon == std::string::npos) fail("hub: '", url, "' is not a URL (expected http://host/... or https://host/...)");
  u.scheme = url.substr(0, colon);
  for (char& c : u.scheme) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  if (u.scheme != "http" && u.scheme != "https")
    fail("hub: '", url, "' uses scheme '", u.scheme, "', expected http or https (check HF_ENDPOINT)");
  const size_t slash = url.find('/', colon + 3);
  u.host_port = url.substr(colon + 3, slash == std::string::npos ? std::string::npos : slash - colon - 3);
  u.target = slash == std::string::npos ? "/" : url.substr(slash);
  if (u.host_port.empty()) fail("hub: '", url, "' has no host (check HF_ENDPOINT)");
  return u;
}

inline bool is_absolute_location(const std::string& loc) {
  auto starts = [&](const char* p) {
    const std::string s(p);
    if (loc.size() < s.size()) return false;
    for (size_t i = 0; i < s.size(); ++i)
      if (std::tolower(static_cast<unsigned char>(loc[i])) != s[i]) return false;
    return true;
  };
  return starts("http://") || starts("https://") || starts("//");
}

// A Location header resolved against the URL that sent it.
inline std::string resolve_location(const Url& base, const std::string& loc) {
  if (loc.rfind("//", 0) == 0) return base.scheme + ":" + loc;
  if (is_absolute_location(loc)) return loc;
  if (!loc.empty() && loc.front() == '/') return base.origin() + loc;
  const std::string path = base.target.substr(0, base.target.find('?'));
  return base.origin() + path.substr(0, path.rfind('/') + 1) + loc;
}

// Percent-encodes all but unreserved characters ('/' too unless keep_slash).
inline std::string percent_encode(const std::string& s, bool keep_slash) {
  static const char* hex = "0123456789ABCDEF";
  std::string out;
  for (unsigned char c : s) {
    if (std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~' || (keep_slash && c == '/')) {
      out.push_back(static_cast<char>(c));
    } else {
      out.push_back('%');
      out.push_back(hex[c >> 4]);
      out.push_back(hex[c & 15]);
    }
  }
  return out;
}

// An ETag without W/ and quotes; "" when it is not a safe blob file name.
inline std::string clean_etag(std::string e) {
  if (e.rfind("W/", 0) == 0) e = e.substr(2);
  if (e.size() >= 2 && e.front() == '"' && e.back() == '"') e = e.substr(1, e.size() - 2);
  if (e.empty() || e.size() > 128 || e == "." || e == "..") return "";
  for (char c : e)
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '-' && c != '_' && c != '.') return "";
  return e;
}

inline double seconds_env(const char* name, double fallback) {
  const std::string v = env(name);
  if (v.empty()) return fallback;
  char* end = nullptr;
  const double s = std::strtod(v.c_str(), &end);
  if (end == v.c_str() || *end != '\0' || !(s > 0) || s > 3600)
    fail("hub: ", name, "='", v, "', expected a number of seconds in (0, 3600]");
  return s;
}

// Progress of one file on stderr: "model.safetensors  45%  6.3/14.0 MB  5.1 MB/s  ETA 3 s".
class ProgressBar {
 public:
  ProgressBar(std::string name, uint64_t total, uint64_t start, bool enabled)
      : name_(std::move(name)), total_(total), start_(start), enabled_(enabled), tty_(::isatty(2) == 1),
        t0_(std::chrono::steady_clock::now()), last_(t0_) {}
  void update(uint64_t done, bool final = false) {
    if (!enabled_) return;
    const auto now = std::chrono::steady_clock::now();
    if (!final && (!tty_ || now - last_ < std::chrono::milliseconds(100))) return;
    last_ = now;
    const double secs = std::max(1e-3, std::chrono::duration<double>(now - t0_).count());
    const double rate = static_cast<double>(done - start_) / secs;  // bytes/s this session
    const double mb = 1e6;
    char line[256];
    if (final) {
      std::snprintf(line, sizeof line, "%s: %.1f MB in %.1f s (%.1f MB/s)%s", name_.c_str(), done / mb, secs, rate / mb,
                    start_ ? " (resumed)" : "");
    } else {
      const double pct = total_ ? 100.0 * static_cast<double>(done) / static_cast<double>(total_) : 100.0;
      const double eta = rate > 0 ? static_cast<double>(total_ - std::min(done, total_)) / rate : 0;
      std::snprintf(line, sizeof line, "%s: %3.0f%%  %.1f/%.1f MB  %.1f MB/s  ETA %.0f s", name_.c_str(), pct, done / mb,
                    total_ / mb, rate / mb, eta);
    }
    std::cerr << (tty_ ? "\r\033[K" : "") << line << (final || !tty_ ? "\n" : "") << std::flush;
  }

 private:
  std::string name_;
  uint64_t total_, start_;
  bool enabled_, tty_;
  std::chrono::steady_clock::time_point t0_, last_;
};

// An exclusive lock on a file, held while alive (flock; released when the descriptor closes).
class FileLock {
 public:
  explicit FileLock(const fs::path& p) {
    std::error_code ec;
    fs::create_directories(p.parent_path(), ec);
    fd_ = ::open(p.c_str(), O_CREAT | O_RDWR | O_CLOEXEC, 0644);
    if (fd_ < 0) fail("hub: cannot create the lock file '", p.string(), "' (is the cache writable?)");
    if (::flock(fd_, LOCK_EX) != 0) {
      ::close(fd_);
      fail("hub: cannot lock '", p.string(), "'");
    }
  }
  ~FileLock() { ::close(fd_); }
  FileLock(const FileLock&) = delete;
  FileLock& operator=(const FileLock&) = delete;

 private:
  int fd_ = -1;
};

// Writes `text` to `path` atomically (temp file + rename), creating the folders.
inline void write_text_atomic(const fs::path& path, const std::string& text) {
  std::error_code ec;
  fs::create_directories(path.parent_path(), ec);
  const fs::path tmp = path.string() + ".tmp" + std::to_string(::getpid());
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out << text;
    if (!out) fail("hub: cannot write '", tmp.string(), "' (is the cache writable?)");
  }
  fs::rename(tmp, path, ec);
  if (ec) fail("hub: cannot rename '", tmp.string(), "' to '", path.string(), "': ", ec.message());
}

// Downloads the files of one repo at one revision into the cache (see the file comment).
class Downloader {
 public:
  Downloader(std::string repo_id, const Options& opt, std::string cache_state)
      : repo_(std::move(repo_id)), revision_(opt.revision), rev_(opt.revision), opt_(opt),
        cache_state_(std::move(cache_state)), endpoint_(endpoint()), token_(token()),
        repo_dir_(repo_folder(repo_)), head_timeout_(seconds_env("HF_HUB_ETAG_TIMEOUT", 10)),
        get_timeout_(seconds_env("HF_HUB_DOWNLOAD_TIMEOUT", 10)) {
    parse_url(endpoint_);  // a bad HF_ENDPOINT fails here, naming it
  }

  fs::path run(const FileSet& files) {
    for (const auto& f : files.required) {
      const Meta m = head(f);
      if (!ok(m)) http_fail(m, f);
      fetch(f, m, kMaxSmallFileBytes);
    }
    for (const auto& f : files.optional) {
      const Meta m = head(f);
      if (ok(m)) fetch(f, m, kMaxSmallFileBytes);
      else if (entry_missing(m)) record_absent(f, m);
      else http_fail(m, f);
    }
    if (files.weights) fetch_weights();
    if (commit_.empty()) fail("hub: '", endpoint_, "' named no commit (X-Repo-Commit) for '", repo_, "'");
    if (revision_ != commit_) write_text_atomic(repo_dir_ / "refs" / revision_, commit_);
    return repo_dir_ / "snapshots" / commit_;
  }

 private:
  struct Meta {
    std::string url;       // the URL that answered (after relative redirects)
    int status = 0;
    std::string commit, etag, location, error_code, error_message;
    uint64_t size = 0;
    bool has_size = false;
  };
  static bool ok(const Meta& m) { return m.status == 200 || (m.status >= 300 && m.status < 400); }
  static bool entry_missing(const Meta& m) {
    return m.status == 404 && m.error_code != "RepoNotFound" && m.error_code != "RevisionNotFound";
  }

  std::string file_url(const std::string& file) const {
    return endpoint_ + "/" + repo_ + "/resolve/" + percent_encode(rev_, false) + "/" + percent_encode(file, true);
  }

  httplib::Headers headers_for(const Url& u) const {
    httplib::Headers h = {{"Accept-Encoding", "identity"}, {"User-Agent", "segml/0.1; hf_hub/compatible"}};
    if (!token_.empty() && u.origin() == parse_url(endpoint_).origin()) h.emplace("Authorization", "Bearer " + token_);
    return h;
  }

  std::unique_ptr<httplib::Client> client(const Url& u, double timeout) const {
    auto c = std::make_unique<httplib::Client>(u.origin());
    const auto us = static_cast<time_t>(timeout * 1e6);
    c->set_connection_timeout(us / 1000000, us % 1000000);
    c->set_read_timeout(us / 1000000, us % 1000000);
    c->set_write_timeout(us / 1000000, us % 1000000);
    c->set_follow_location(false);
    c->set_decompress(false);
    return c;
  }

  // HEAD of one file, following relative redirects; the commit it names becomes the revision asked
  // for next.
  Meta head(const std::string& file) {
    std::string url = file_url(file);
    for (int hop = 0; hop <= 10; ++hop) {
      const Url u = parse_url(url);
      auto res = client(u, head_timeout_)->Head(u.target, headers_for(u));
      if (!res) network_fail(url, httplib::to_string(res.error()) + " error");
      Meta m;
      m.url = url;
      m.status = res->status;
      const std::string loc = res->get_header_value("Location");
      if (m.status >= 300 && m.status < 400 && !loc.empty() && !is_absolute_location(loc)) {
        url = resolve_location(u, loc);
        continue;
      }
      m.error_code = res->get_header_value("X-Error-Code").substr(0, 100);
      m.error_message = res->get_header_value("X-Error-Message").substr(0, 500);
      m.commit = res->get_header_value("X-Repo-Commit");
      if (!m.commit.empty() && !is_commit_hash(m.commit))
        fail("hub: ", url, " sent X-Repo-Commit '", m.commit.substr(0, 100), "', expected a 40-hex commit");
      if (!ok(m)) return m;
      if (m.status >= 300) {
        if (loc.empty() || loc.size() > 8192) fail("hub: ", url, " redirects (HTTP ", m.status, ") without a usable Location");
        m.location = resolve_location(u, loc);
      }
      const std::string linked = res->get_header_value("X-Linked-Etag");
      const std::string raw_etag = linked.empty() ? res->get_header_value("ETag") : linked;
      m.etag = clean_etag(raw_etag);
      if (m.etag.empty())
        fail("hub: ", url, " sent ETag '", raw_etag.substr(0, 200), "', expected a hex digest (the blob's file name)");
      const std::string size = res->has_header("X-Linked-Size") ? res->get_header_value("X-Linked-Size")
                                                                : res->get_header_value("Content-Length");
      if (size.empty() || size.size() > 19 || size.find_first_not_of("0123456789") != std::string::npos)
        fail("hub: ", url, " sent size '", size.substr(0, 40), "' (X-Linked-Size / Content-Length), expected a byte count");
      m.size = std::stoull(size);
      m.has_size = true;
      if (m.commit.empty()) fail("hub: ", url, " sent no X-Repo-Commit header (is HF_ENDPOINT a HuggingFace hub?)");
      if (commit_.empty()) {
        commit_ = m.commit;
        rev_ = m.commit;  // the rest of the snapshot comes from the same commit
      }
      return m;
    }
    fail("hub: more than 10 redirects from ", file_url(file));
  }

  void fetch_weights() {
    Meta m = head("model.safetensors");
    if (ok(m)) return fetch("model.safetensors", m, UINT64_MAX);
    if (!entry_missing(m)) http_fail(m, "model.safetensors");
    m = head("model.safetensors.index.json");
    if (ok(m)) {
      fetch("model.safetensors.index.json", m, kMaxSmallFileBytes);
      for (const auto& shard : index_shards(repo_dir_ / "snapshots" / commit_ / "model.safetensors.index.json")) {
        const Meta s = head(shard);
        if (!ok(s)) http_fail(s, shard);
        fetch(shard, s, UINT64_MAX);
      }
      return;
    }
    if (!entry_missing(m)) http_fail(m, "model.safetensors.index.json");
    const Meta bin = head("pytorch_model.bin");
    if (ok(bin))
      fail("hub: '", repo_, "' (revision '", revision_, "') has pytorch_model.bin only; segml reads safetensors. Convert it: ",
           "huggingface-cli download ", repo_, " --local-dir ", fs::path(repo_).filename().string(), " && /usr/bin/python3 ",
           "tools/convert_weights.py ", fs::path(repo_).filename().string(), " (then pass that folder)");
    fail("hub: '", repo_, "' (revision '", revision_, "') has no weights: neither model.safetensors nor "
         "model.safetensors.index.json (", file_url("model.safetensors"), " answered 404)");
  }

  void record_absent(const std::string& file, const Meta& m) {
    const std::string commit = commit_.empty() ? m.commit : commit_;
    if (commit.empty()) return;  // nothing to record it under: asked again next time
    if (commit_.empty()) commit_ = rev_ = commit;
    write_text_atomic(repo_dir_ / ".no_exist" / commit / file, "");
  }

  // The blob of `file` (downloaded unless already there) and its snapshot link.
  void fetch(const std::string& file, const Meta& m, uint64_t max_size) {
    if (!is_safe_relative(file)) fail("hub: refusing file name '", file, "' (not a plain relative path)");
    if (m.size > max_size)
      fail("hub: ", m.url, " announces ", m.size, " bytes for '", file, "', more than the ", max_size, " allowed for it");
    std::error_code ec;
    const fs::path blobs = repo_dir_ / "blobs", blob = blobs / m.etag;
    if (!fs::exists(blob, ec)) {
      fs::create_directories(blobs, ec);
      if (ec) fail("hub: cannot create '", blobs.string(), "': ", ec.message(), " (set HF_HUB_CACHE to a writable folder)");
      const FileLock lock(cache_dir() / ".locks" / repo_dir_.filename() / (m.etag + ".lock"));
      if (!fs::exists(blob, ec)) download_blob(file, m, blob);
    }
    link(file, m.etag);
  }

  void link(const std::string& file, const std::string& etag) {
    const fs::path pointer = repo_dir_ / "snapshots" / commit_ / file;
    std::error_code ec;
    fs::create_directories(pointer.parent_path(), ec);
    std::string target;
    for (size_t i = 0, depth = 2 + static_cast<size_t>(std::count(file.begin(), file.end(), '/')); i < depth; ++i)
      target += "../";
    target += "blobs/" + etag;
    const fs::path tmp = pointer.string() + ".tmp" + std::to_string(::getpid());
    fs::remove(tmp, ec);
    fs::create_symlink(target, tmp, ec);
    if (ec) fail("hub: cannot create the link '", tmp.string(), "' -> '", target, "': ", ec.message());
    fs::rename(tmp, pointer, ec);
    if (ec) fail("hub: cannot rename '", tmp.string(), "' to '", pointer.string(), "': ", ec.message());
  }

  void download_blob(const std::string& file, const Meta& m, const fs::path& blob) {
    const fs::path part = blob.string() + ".incomplete";
    std::error_code ec;
    uint64_t have = fs::exists(part, ec) ? fs::file_size(part, ec) : 0;
    if (ec || have > m.size) {
      fs::remove(part, ec);
      have = 0;
    }
    const fs::space_info space = fs::space(blob.parent_path(), ec);
    if (!ec && space.available < m.size - have)
      fail("hub: '", file, "' needs ", (m.size - have) / 1000000 + 1, " MB more but '", blob.parent_path().string(),
           "' has ", space.available / 1000000, " MB free (set HF_HUB_CACHE to a bigger disk)");
    get(file, m.location.empty() ? m.url : m.location, part, have, m.size);
    const uint64_t got = fs::file_size(part, ec);
    if (ec || got != m.size)
      fail("hub: '", file, "' is ", got, " bytes after download, expected ", m.size, " (from ", m.url,
           "); run again to resume");
    fs::rename(part, blob, ec);
    if (ec) fail("hub: cannot rename '", part.string(), "' to '", blob.string(), "': ", ec.message());
  }

  // GET `url` into `part`, appending from byte `have` when the server honours the Range.
  void get(const std::string& file, std::string url, const fs::path& part, uint64_t have, uint64_t size) {
    for (int hop = 0; hop <= 10; ++hop) {
      const Url u = parse_url(url);
      httplib::Headers h = headers_for(u);
      if (have > 0) h.emplace("Range", "bytes=" + std::to_string(have) + "-");
      int status = 0;
      std::string location, problem;
      std::FILE* out = nullptr;
      uint64_t written = have;
      ProgressBar bar(file, size, have, opt_.progress);
      auto on_response = [&](const httplib::Response& r) {
        status = r.status;
        if (status >= 300 && status < 400) {
          location = r.get_header_value("Location");
          return false;
        }
        if (status == 206) {
          const std::string range = r.get_header_value("Content-Range");  // "bytes N-M/T"
          if (range.rfind("bytes " + std::to_string(have) + "-", 0) != 0) {
            problem = "answered Range bytes=" + std::to_string(have) + "- with Content-Range '" + range.substr(0, 100) + "'";
            return false;
          }
        } else if (status == 200) {
          written = 0;  // the server ignored the Range: start over
        } else {
          return false;
        }
        out = std::fopen(part.c_str(), status == 206 ? "ab" : "wb");
        if (!out) problem = "cannot open '" + part.string() + "' for writing";
        return out != nullptr;
      };
      auto on_data = [&](const char* data, size_t n) {
        if (written + n > size) {
          problem = "sent more than the " + std::to_string(size) + " bytes it announced";
          return false;
        }
        if (std::fwrite(data, 1, n, out) != n) {
          problem = "writing '" + part.string() + "' failed (disk full?)";
          return false;
        }
        written += n;
        bar.update(written);
        return true;
      };
      auto res = client(u, get_timeout_)->Get(u.target, h, on_response, on_data);
      if (out) {
        if (std::fflush(out) != 0 && problem.empty()) problem = "writing '" + part.string() + "' failed (disk full?)";
        ::fsync(::fileno(out));
        std::fclose(out);
      }
      if (status >= 300 && status < 400 && !location.empty() && location.size() <= 8192) {
        url = resolve_location(u, location);
        continue;
      }
      if (status == 416 && have > 0) {  // the partial file does not fit the blob any more: start over
        std::error_code ec;
        fs::remove(part, ec);
        have = 0;
        continue;
      }
      if (!problem.empty()) {
        std::error_code ec;
        if (problem.find("more than") != std::string::npos || problem.find("Content-Range") != std::string::npos)
          fs::remove(part, ec);
        fail("hub: downloading '", file, "' from ", url, ": the server ", problem);
      }
      if (status != 200 && status != 206) {
        Meta m;
        m.url = url;
        m.status = status;
        if (status == 0) network_fail(url, res ? std::string("no answer") : httplib::to_string(res.error()) + " error");
        http_fail(m, file);
      }
      if (!res)
        fail("hub: downloading '", file, "' from ", url, " stopped after ", written, " of ", size, " bytes (",
             httplib::to_string(res.error()), "); run again to resume from there");
      bar.update(written, true);
      return;
    }
    fail("hub: more than 10 redirects while downloading '", file, "'");
  }

  [[noreturn]] void network_fail(const std::string& url, const std::string& what) const {
    fail("hub: cannot reach ", url, " (", what, "). Tried: ", cache_state_, "; then the hub at ", endpoint_,
         env("HF_ENDPOINT").empty() ? " (the default; HF_ENDPOINT changes it)" : " (from HF_ENDPOINT)",
         ". Fix: check the network and HF_ENDPOINT; or download '", repo_, "' with ",
         cli_download_hint(repo_, revision_), "; HF_HUB_OFFLINE=1 uses the cache only");
  }

  [[noreturn]] void http_fail(const Meta& m, const std::string& file) const {
    const std::string why = m.error_message.empty() ? "" : " (" + m.error_message + ")";
    if (m.status == 401 || m.status == 403) {
      if (m.error_code == "RepoNotFound")
        fail("hub: repository '", repo_, "' not found, or private or gated (HTTP ", m.status, " for ", m.url, why,
             "): check the id (and that no local folder was meant); for a private or gated repo set HF_TOKEN");
      fail("hub: '", repo_, "' is gated or private (HTTP ", m.status, " for ", m.url, why, "): ",
           token_.empty() ? "set HF_TOKEN to an access token (or run `huggingface-cli login`), after accepting the "
                            "repo's conditions on its page"
                          : "the token sent (HF_TOKEN or " + (hf_home() / "token").string() +
                                ") has no access; accept the repo's conditions on " + endpoint_ + "/" + repo_);
    }
    if (m.status == 404) {
      if (m.error_code == "RevisionNotFound")
        fail("hub: revision '", revision_, "' not found in '", repo_, "' (HTTP 404 for ", m.url, why, ")");
      if (m.error_code == "RepoNotFound")
        fail("hub: repository '", repo_, "' not found (HTTP 404 for ", m.url, why,
             "), and no local file or folder of that name exists");
      fail("hub: '", file, "' not found in '", repo_, "' at revision '", revision_, "' (HTTP 404 for ", m.url, why,
           "): is the id right, and is it a SegFormer / CLIPSeg model repo?");
    }
    fail("hub: HTTP ", m.status, " for ", m.url, why, " while fetching '", file, "' of '", repo_, "'");
  }

  std::string repo_, revision_, rev_;
  Options opt_;
  std::string cache_state_, endpoint_, token_;
  fs::path repo_dir_;
  double head_timeout_, get_timeout_;
  std::string commit_;
};

}  // namespace detail

// Downloads `files` of `repo_id` at opt.revision into the HF cache and returns the snapshot folder.
// `cache_state` says what the cache lookup found, for the error messages.
inline fs::path download_snapshot(const std::string& repo_id, const FileSet& files, const Options& opt,
                                  const std::string& cache_state = "") {
  return detail::Downloader(repo_id, opt, cache_state.empty() ? "the HF cache" : cache_state).run(files);
}

#endif  // SEGML_WITH_HUB

}  // namespace segml::hub
