// A HuggingFace hub on 127.0.0.1 for the hub tests (tests/test_hub.cpp, tests/hub_program.cpp), and
// what goes with it: scoped environment variables, an isolated HF cache, tiny repos.
//
// MockHub runs two httplib servers in threads of the test process: the "hub", which serves
// /{repo}/resolve/{revision}/{file} the way huggingface.co does (X-Repo-Commit, ETag, X-Linked-Etag,
// X-Linked-Size, X-Error-Code; a 302 to the CDN for LFS files, *.safetensors; 401 for a gated repo
// without its token; 404 RepoNotFound / RevisionNotFound / EntryNotFound; a relative 307 for a
// renamed repo), and the "CDN", another origin that serves the LFS blobs with Range support (206),
// or as a plain 200 ignoring the Range when asked to. Every request is logged with its
// Authorization and Range headers.
#pragma once

#include <doctest/doctest.h>

#include <cstdlib>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include <segml/io/checkpoint.hpp>
#include <segml/io/image_processor.hpp>

#include "support.hpp"

#if defined(SEGML_WITH_HUB)
#include <httplib.h>

#include <thread>
#endif

namespace segml::test {

// Sets (or, with nullptr, unsets) an environment variable until the end of the scope.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const char* value) : name_(name) {
    if (const char* old = std::getenv(name)) old_ = old;
    if (value) ::setenv(name, value, 1);
    else ::unsetenv(name);
  }
  ~ScopedEnv() {
    if (old_) ::setenv(name_.c_str(), old_->c_str(), 1);
    else ::unsetenv(name_.c_str());
  }
  ScopedEnv(const ScopedEnv&) = delete;
  ScopedEnv& operator=(const ScopedEnv&) = delete;

 private:
  std::string name_;
  std::optional<std::string> old_;
};

// An HF cache and home of its own, no token, online, the endpoint given (or a closed port).
struct IsolatedHub {
  explicit IsolatedHub(const std::string& endpoint = "http://127.0.0.1:9")
      : cache("HF_HUB_CACHE", dir.file("cache").c_str()), home("HF_HOME", dir.file("home").c_str()),
        legacy_cache("HUGGINGFACE_HUB_CACHE", nullptr), token("HF_TOKEN", nullptr), legacy_token("HUGGING_FACE_HUB_TOKEN", nullptr),
        token_path("HF_TOKEN_PATH", nullptr), offline("HF_HUB_OFFLINE", nullptr), tf_offline("TRANSFORMERS_OFFLINE", nullptr),
        ep("HF_ENDPOINT", endpoint.c_str()) {}
  TempDir dir{"hub"};
  ScopedEnv cache, home, legacy_cache, token, legacy_token, token_path, offline, tf_offline, ep;
};

// A tiny SegFormer repo's files: config.json, preprocessor_config.json and the weights, either
// model.safetensors or model.safetensors.index.json plus two shards. `labels` names the classes.
inline std::map<std::string, std::string> tiny_segformer_repo(const std::vector<std::string>& labels, bool sharded,
                                                              uint64_t seed = 1) {
  SegformerConfig c;
  c.hidden_sizes = {8, 16, 24, 32};
  c.depths = {1, 1, 1, 1};
  c.num_attention_heads = {1, 2, 3, 4};
  c.decoder_hidden_size = 16;
  c.set_labels(labels);
  SegformerForSemanticSegmentation<float> model(c, seed);
  SegformerImageProcessor p;
  p.height = p.width = 32;
  const nlohmann::json pre = p.to_json();
  TempDir dir("tiny_repo");
  save_pretrained(model, dir.file(), &pre);
  auto read = [&](const std::string& name) {
    std::ifstream in(dir.file(name), std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), {});
  };
  std::map<std::string, std::string> files = {{"config.json", read("config.json")},
                                              {"preprocessor_config.json", read("preprocessor_config.json")}};
  if (!sharded) {
    files["model.safetensors"] = read("model.safetensors");
    return files;
  }
  std::map<std::string, safetensors::Entry> all = state_dict_entries(model), half[2];
  nlohmann::json index = {{"metadata", {{"total_size", 0}}}, {"weight_map", nlohmann::json::object()}};
  size_t i = 0;
  for (auto& [name, e] : all) {
    const std::string shard = "model-0000" + std::to_string(i % 2 + 1) + "-of-00002.safetensors";
    index["weight_map"][name] = shard;
    half[i++ % 2][name] = e;
  }
  for (int k = 0; k < 2; ++k) {
    const std::vector<char> bytes = safetensors::serialize(half[k], {{"format", "pt"}});
    files["model-0000" + std::to_string(k + 1) + "-of-00002.safetensors"] = std::string(bytes.begin(), bytes.end());
  }
  files["model.safetensors.index.json"] = index.dump(2);
  return files;
}

// A 64-hex digest of `s` (the mock's stand-in for git's and LFS's hashes).
inline std::string hex_digest(const std::string& s) {
  std::string out;
  for (uint64_t seed : {1469598103934665603ull, 1099511628211ull, 7ull, 0x9e3779b97f4a7c15ull}) {
    uint64_t h = seed;
    for (unsigned char c : s) h = (h ^ c) * 1099511628211ull;
    char buf[17];
    std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(h));
    out += buf;
  }
  return out;
}

inline std::string commit_of(const std::string& name) { return hex_digest(name).substr(0, 40); }

#if defined(SEGML_WITH_HUB)

class MockHub {
 public:
  struct Repo {
    std::map<std::string, std::string> refs;                                 // branch / tag -> commit
    std::map<std::string, std::map<std::string, std::string>> files;         // commit -> file -> bytes
    std::string token;                                                       // "" = public
  };
  struct Request {
    std::string server, method, path, authorization, range;
  };

  MockHub() {
    hub_.Get(R"(/(.+)/resolve/([^/]+)/(.+))", [this](const httplib::Request& q, httplib::Response& r) { serve_hub(q, r); });
    cdn_.Get(R"(/lfs/([0-9a-f]+))", [this](const httplib::Request& q, httplib::Response& r) { serve_cdn(q, r); });
    hub_port_ = hub_.bind_to_any_port("127.0.0.1");
    cdn_port_ = cdn_.bind_to_any_port("127.0.0.1");
    REQUIRE(hub_port_ > 0);
    REQUIRE(cdn_port_ > 0);
    hub_thread_ = std::thread([this] { hub_.listen_after_bind(); });
    cdn_thread_ = std::thread([this] { cdn_.listen_after_bind(); });
    while (!hub_.is_running() || !cdn_.is_running()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  ~MockHub() { stop(); }
  MockHub(const MockHub&) = delete;
  MockHub& operator=(const MockHub&) = delete;

  void stop() {
    hub_.stop();
    cdn_.stop();
    if (hub_thread_.joinable()) hub_thread_.join();
    if (cdn_thread_.joinable()) cdn_thread_.join();
  }

  std::string endpoint() const { return "http://127.0.0.1:" + std::to_string(hub_port_); }
  std::string cdn_origin() const { return "http://127.0.0.1:" + std::to_string(cdn_port_); }

  // A repo whose `branch` (and main) points at commit_of(repo_id + branch) holding `files`.
  void add(const std::string& repo_id, const std::map<std::string, std::string>& files, const std::string& branch = "main",
           const std::string& token = "") {
    std::lock_guard<std::mutex> lock(mu_);
    Repo& repo = repos_[repo_id];
    const std::string commit = commit_of(repo_id + "@" + branch);
    repo.refs[branch] = commit;
    if (!repo.refs.count("main")) repo.refs["main"] = commit;
    repo.files[commit] = files;
    repo.token = token;
    for (const auto& [name, bytes] : files) blobs_[hex_digest(bytes)] = bytes;
  }
  void rename(const std::string& old_id, const std::string& new_id) {
    std::lock_guard<std::mutex> lock(mu_);
    renamed_[old_id] = new_id;
  }
  std::vector<Request> requests() const {
    std::lock_guard<std::mutex> lock(mu_);
    return log_;
  }
  void clear_log() {
    std::lock_guard<std::mutex> lock(mu_);
    log_.clear();
  }

  bool ignore_range = false;       // the CDN answers 200 with the whole blob to a Range request
  int64_t announce_less_by = 0;    // X-Linked-Size smaller than the blob by this many bytes

 private:
  void note(const char* server, const httplib::Request& q) {
    std::lock_guard<std::mutex> lock(mu_);
    log_.push_back({server, q.method, q.path, q.get_header_value("Authorization"), q.get_header_value("Range")});
  }

  void serve_hub(const httplib::Request& q, httplib::Response& r) {
    note("hub", q);
    std::lock_guard<std::mutex> lock(mu_);
    const std::string repo_id = q.matches[1], revision = q.matches[2], file = q.matches[3];
    auto error = [&](int status, const std::string& code, const std::string& message) {
      r.status = status;
      r.set_header("X-Error-Code", code);
      r.set_header("X-Error-Message", message);
      r.set_content("{\"error\":\"" + message + "\"}", "application/json");
    };
    if (renamed_.count(repo_id)) {  // a renamed repo: the hub answers with a relative redirect
      r.status = 307;
      r.set_header("Location", "/" + renamed_[repo_id] + "/resolve/" + revision + "/" + file);
      return;
    }
    auto it = repos_.find(repo_id);
    if (it == repos_.end()) return error(404, "RepoNotFound", "Repository not found");
    const Repo& repo = it->second;
    if (!repo.token.empty() && q.get_header_value("Authorization") != "Bearer " + repo.token)
      return error(401, "GatedRepo", "Access to model " + repo_id + " is restricted");
    const std::string commit = repo.refs.count(revision) ? repo.refs.at(revision) : revision;
    auto snap = repo.files.find(commit);
    if (snap == repo.files.end()) return error(404, "RevisionNotFound", "Invalid rev id: " + revision);
    r.set_header("X-Repo-Commit", commit);
    auto f = snap->second.find(file);
    if (f == snap->second.end()) return error(404, "EntryNotFound", file + " does not exist on \"" + revision + "\"");
    const std::string digest = hex_digest(f->second);
    if (file.ends_with(".safetensors")) {  // an LFS file: metadata here, bytes on the CDN
      r.status = 302;
      r.set_header("ETag", "\"" + digest.substr(0, 40) + "\"");  // the pointer file's git hash
      r.set_header("X-Linked-Etag", "\"" + digest + "\"");
      r.set_header("X-Linked-Size", std::to_string(static_cast<int64_t>(f->second.size()) - announce_less_by));
      r.set_header("Location", cdn_origin() + "/lfs/" + digest);
      return;
    }
    r.set_header("ETag", "\"" + digest.substr(0, 40) + "\"");
    r.set_content(f->second, "application/octet-stream");
  }

  void serve_cdn(const httplib::Request& q, httplib::Response& r) {
    note("cdn", q);
    std::lock_guard<std::mutex> lock(mu_);
    auto it = blobs_.find(q.matches[1]);
    if (it == blobs_.end()) {
      r.status = 404;
      return;
    }
    const std::string bytes = it->second;
    if (ignore_range || announce_less_by) {  // chunked: httplib applies no Range to it
      r.status = 200;
      r.set_chunked_content_provider("application/octet-stream", [bytes](size_t offset, httplib::DataSink& sink) {
        if (offset < bytes.size()) sink.write(bytes.data() + offset, bytes.size() - offset);
        else sink.done();
        return true;
      });
      return;
    }
    r.set_content(bytes, "application/octet-stream");  // httplib answers a Range with 206
  }

  httplib::Server hub_, cdn_;
  int hub_port_ = 0, cdn_port_ = 0;
  std::thread hub_thread_, cdn_thread_;
  mutable std::mutex mu_;
  std::map<std::string, Repo> repos_;
  std::map<std::string, std::string> blobs_, renamed_;
  std::vector<Request> log_;
};

#endif  // SEGML_WITH_HUB

}  // namespace segml::test
