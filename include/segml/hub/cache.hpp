// segml/hub/cache.hpp: HuggingFace hub ids and the local HF cache (no network here).
//
// A model may be named by a hub repo id ("org/name" or "name") plus a revision (a branch, a tag or a
// 40-hex commit; default "main"). This file knows where huggingface_hub keeps downloaded repos and
// reads that cache exactly as Python does, so a model Python downloaded is used offline and what
// segml downloads (hub/download.hpp) is seen by Python:
//
//   <cache>/models--org--name/refs/<revision>           the commit the branch or tag pointed to
//   <cache>/models--org--name/snapshots/<commit>/<file>  symlinks to ../../blobs/<etag>
//   <cache>/models--org--name/blobs/<etag>               the files' contents
//   <cache>/models--org--name/.no_exist/<commit>/<file>  empty: the file is known to be absent
//
// <cache> is $HF_HUB_CACHE, else $HUGGINGFACE_HUB_CACHE (older name), else $HF_HOME/hub, else
// $XDG_CACHE_HOME/huggingface/hub, else ~/.cache/huggingface/hub. HF_HUB_OFFLINE=1 (or
// TRANSFORMERS_OFFLINE=1; also ON / YES / TRUE) forbids the network. The token is $HF_TOKEN (or the
// older $HUGGING_FACE_HUB_TOKEN), else the file $HF_TOKEN_PATH, else $HF_HOME/token.
//
// Guarantees: repo ids, revisions, commits and file names are validated before they become paths
// (no "..", no absolute paths), so a hostile id or index file cannot reach outside the cache; files
// read here are bounded in size. A cached snapshot counts only when it holds every file asked for
// (FileSet): a half-downloaded model is completed, not loaded.
// Not here: HTTP (hub/download.hpp) and the one entry point that combines both (hub/hub.hpp).
#pragma once

#include <nlohmann/json.hpp>

#include <cctype>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "segml/core/error.hpp"

namespace segml::hub {

namespace fs = std::filesystem;

// How a hub id is resolved: which revision, whether the network may be used, whether to draw the
// progress bar.
struct Options {
  std::string revision = "main";  // branch, tag or 40-hex commit
  bool local_files_only = false;  // HF's local_files_only: the cache only, never the network
  bool progress = true;           // progress bar on stderr while downloading
};

// The files a caller needs from a repo. `weights`: model.safetensors, or
// model.safetensors.index.json plus every shard it names.
struct FileSet {
  std::vector<std::string> required;
  std::vector<std::string> optional;  // a 404 is fine (recorded under .no_exist/)
  bool weights = false;
};
inline FileSet model_files() { return {{"config.json"}, {"preprocessor_config.json"}, true}; }
inline FileSet processor_files() { return {{}, {"preprocessor_config.json"}, false}; }
inline FileSet tokenizer_files() {
  return {{"vocab.json", "merges.txt"}, {"tokenizer_config.json", "special_tokens_map.json"}, false};
}

// Bounds for files read from the cache or the network that are not weights (JSON, vocabularies).
inline constexpr uint64_t kMaxSmallFileBytes = 64ull << 20;
inline constexpr size_t kMaxRepoIdLength = 96;  // the hub's own limit on one name

// ---- environment --------------------------------------------------------------------------------

inline std::string env(const char* name) {
  const char* v = std::getenv(name);
  return v ? std::string(v) : std::string();
}

// huggingface_hub's truthy values: 1, ON, YES, TRUE (any case).
inline bool env_true(const char* name) {
  std::string v = env(name);
  for (char& c : v) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  return v == "1" || v == "ON" || v == "YES" || v == "TRUE";
}

inline bool offline() { return env_true("HF_HUB_OFFLINE") || env_true("TRANSFORMERS_OFFLINE"); }

inline fs::path hf_home() {
  if (auto v = env("HF_HOME"); !v.empty()) return v;
  if (auto v = env("XDG_CACHE_HOME"); !v.empty()) return fs::path(v) / "huggingface";
  if (auto v = env("HOME"); !v.empty()) return fs::path(v) / ".cache" / "huggingface";
  return fs::path(".cache") / "huggingface";
}

inline fs::path cache_dir() {
  if (auto v = env("HF_HUB_CACHE"); !v.empty()) return v;
  if (auto v = env("HUGGINGFACE_HUB_CACHE"); !v.empty()) return v;
  return hf_home() / "hub";
}

// $HF_ENDPOINT without a trailing '/', default https://huggingface.co.
inline std::string endpoint() {
  std::string e = env("HF_ENDPOINT");
  if (e.empty()) e = "https://huggingface.co";
  while (e.size() > 1 && e.back() == '/') e.pop_back();
  return e;
}

// The user's token, or "" (see the file comment for where it is looked up).
inline std::string token() {
  auto strip = [](std::string s) {
    while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.pop_back();
    size_t i = 0;
    while (i < s.size() && std::isspace(static_cast<unsigned char>(s[i]))) ++i;
    return s.substr(i);
  };
  if (auto t = strip(env("HF_TOKEN")); !t.empty()) return t;
  if (auto t = strip(env("HUGGING_FACE_HUB_TOKEN")); !t.empty()) return t;
  const fs::path file = env("HF_TOKEN_PATH").empty() ? hf_home() / "token" : fs::path(env("HF_TOKEN_PATH"));
  std::error_code ec;
  if (!fs::is_regular_file(file, ec)) return "";
  std::ifstream in(file, std::ios::binary);
  std::string text(4096, '\0');
  in.read(text.data(), static_cast<std::streamsize>(text.size()));
  text.resize(static_cast<size_t>(in.gcount()));
  return strip(text);
}

// ---- names --------------------------------------------------------------------------------------

// Why `id` is not a valid hub repo id ("" when it is): one or two parts separated by '/', each of
// letters, digits, '-', '_', '.', not starting or ending with '-' or '.', no "--" or "..".
inline std::string repo_id_error(const std::string& id) {
  if (id.empty()) return "it is empty";
  if (id.size() > 2 * kMaxRepoIdLength + 1) return "it is longer than " + std::to_string(2 * kMaxRepoIdLength + 1) + " characters";
  const size_t slash = id.find('/');
  if (slash != std::string::npos && id.find('/', slash + 1) != std::string::npos)
    return "a repo id has at most one '/' (org/name)";
  std::vector<std::string> parts = {id.substr(0, slash)};
  if (slash != std::string::npos) parts.push_back(id.substr(slash + 1));
  for (const std::string& p : parts) {
    if (p.empty()) return "it has an empty part";
    if (p.size() > kMaxRepoIdLength) return "a part is longer than " + std::to_string(kMaxRepoIdLength) + " characters";
    for (char c : p)
      if (!std::isalnum(static_cast<unsigned char>(c)) && c != '-' && c != '_' && c != '.')
        return std::string("it contains '") + c + "' (allowed: letters, digits, '-', '_', '.')";
    if (p.front() == '-' || p.front() == '.' || p.back() == '-' || p.back() == '.')
      return "a part starts or ends with '-' or '.'";
    if (p.find("--") != std::string::npos || p.find("..") != std::string::npos) return "it contains '--' or '..'";
  }
  return "";
}

inline bool is_commit_hash(const std::string& s) {
  if (s.size() != 40) return false;
  for (char c : s)
    if (!std::isdigit(static_cast<unsigned char>(c)) && !(c >= 'a' && c <= 'f')) return false;
  return true;
}

// A relative path made of safe parts ("config.json", "refs/pr/1", "sub/model-00001.safetensors").
inline bool is_safe_relative(const std::string& s, size_t max_length = 512) {
  if (s.empty() || s.size() > max_length || s.front() == '/' || s.back() == '/') return false;
  size_t start = 0;
  while (start <= s.size()) {
    size_t end = s.find('/', start);
    if (end == std::string::npos) end = s.size();
    const std::string part = s.substr(start, end - start);
    if (part.empty() || part == "." || part == "..") return false;
    for (char c : part)
      if (static_cast<unsigned char>(c) < 0x20 || c == '\\' || c == 0x7f) return false;
    start = end + 1;
  }
  return true;
}

inline void check_revision(const std::string& revision) {
  if (!is_safe_relative(revision, 256))
    fail("hub: revision '", revision, "' is not a valid branch, tag or commit (expected e.g. main, v1.0 or a 40-hex commit)");
}

// The repo's folder in the cache: models--org--name.
inline fs::path repo_folder(const std::string& repo_id) {
  std::string name = "models--" + repo_id;
  const size_t slash = name.find('/');
  if (slash != std::string::npos) name.replace(slash, 1, "--");
  return cache_dir() / name;
}

// Reads a small file whole; fails beyond kMaxSmallFileBytes.
inline std::string read_small_file(const fs::path& p) {
  std::error_code ec;
  const auto size = fs::file_size(p, ec);
  if (ec) fail("hub: cannot read '", p.string(), "': ", ec.message());
  if (size > kMaxSmallFileBytes)
    fail("hub: '", p.string(), "' is ", size, " bytes, more than the ", kMaxSmallFileBytes, " allowed for this file");
  std::ifstream in(p, std::ios::binary);
  std::string s(static_cast<size_t>(size), '\0');
  in.read(s.data(), static_cast<std::streamsize>(size));
  if (static_cast<uint64_t>(in.gcount()) != size) fail("hub: cannot read '", p.string(), "'");
  return s;
}

// ---- lookup -------------------------------------------------------------------------------------

// The commit `revision` names in the cache: the revision itself when it is a commit, else the
// content of refs/<revision>; nullopt when the cache does not know it.
inline std::optional<std::string> cached_commit(const std::string& repo_id, const std::string& revision) {
  if (is_commit_hash(revision)) return revision;
  const fs::path ref = repo_folder(repo_id) / "refs" / revision;
  std::error_code ec;
  if (!fs::is_regular_file(ref, ec)) return std::nullopt;
  std::ifstream in(ref);
  std::string commit(128, '\0');
  in.read(commit.data(), static_cast<std::streamsize>(commit.size()));
  commit.resize(static_cast<size_t>(in.gcount()));
  while (!commit.empty() && std::isspace(static_cast<unsigned char>(commit.back()))) commit.pop_back();
  if (!is_commit_hash(commit)) fail("hub: '", ref.string(), "' holds '", commit, "', expected a 40-hex commit");
  return commit;
}

// The shard files an index names (validated as relative paths inside the repo).
inline std::vector<std::string> index_shards(const fs::path& index) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(read_small_file(index));
  } catch (const nlohmann::json::exception& e) {
    fail("hub: '", index.string(), "' is not valid JSON: ", e.what());
  }
  if (!j.is_object() || !j.contains("weight_map") || !j["weight_map"].is_object())
    fail("hub: '", index.string(), "' has no weight_map object");
  std::set<std::string> shards;
  for (const auto& [key, value] : j["weight_map"].items()) {
    if (!value.is_string() || !is_safe_relative(value.get<std::string>()))
      fail("hub: '", index.string(), "' maps tensor '", key, "' to ", value.dump(), ", expected a shard file name in the repo");
    shards.insert(value.get<std::string>());
  }
  if (shards.size() > 10000) fail("hub: '", index.string(), "' names ", shards.size(), " shards, more than 10000");
  return {shards.begin(), shards.end()};
}

// What `files` lacks in the cached snapshot of `commit` (file names; empty = complete). An optional
// file counts as present when it is there or recorded under .no_exist/<commit>/.
inline std::vector<std::string> missing_files(const std::string& repo_id, const std::string& commit, const FileSet& files) {
  const fs::path repo = repo_folder(repo_id), snap = repo / "snapshots" / commit;
  std::error_code ec;
  auto has = [&](const std::string& f) { return fs::exists(snap / f, ec); };  // follows the symlink
  auto known_absent = [&](const std::string& f) { return fs::exists(repo / ".no_exist" / commit / f, ec); };
  std::vector<std::string> missing;
  for (const auto& f : files.required)
    if (!has(f)) missing.push_back(f);
  for (const auto& f : files.optional)
    if (!has(f) && !known_absent(f)) missing.push_back(f);
  if (files.weights) {
    if (has("model.safetensors")) return missing;
    if (has("model.safetensors.index.json")) {
      for (const auto& s : index_shards(snap / "model.safetensors.index.json"))
        if (!has(s)) missing.push_back(s);
    } else if (!has("pytorch_model.bin")) {  // the loader says how to convert that one
      missing.push_back("model.safetensors");
    }
  }
  return missing;
}

// The cached snapshot folder of (repo_id, revision) when it holds every file of `files`.
inline std::optional<fs::path> cached_snapshot(const std::string& repo_id, const std::string& revision,
                                               const FileSet& files) {
  const std::optional<std::string> commit = cached_commit(repo_id, revision);
  if (!commit) return std::nullopt;
  std::error_code ec;
  const fs::path snap = repo_folder(repo_id) / "snapshots" / *commit;
  if (!fs::is_directory(snap, ec) || !missing_files(repo_id, *commit, files).empty()) return std::nullopt;
  return snap;
}

// One line on what the cache holds for (repo_id, revision), for error messages.
inline std::string describe_cache(const std::string& repo_id, const std::string& revision, const FileSet& files) {
  const fs::path repo = repo_folder(repo_id);
  std::error_code ec;
  if (!fs::is_directory(repo, ec)) return "the cache has no " + repo.string();
  const std::optional<std::string> commit = cached_commit(repo_id, revision);
  if (!commit) return "the cache has no " + (repo / "refs" / revision).string();
  if (!fs::is_directory(repo / "snapshots" / *commit, ec))
    return "the cache has no " + (repo / "snapshots" / *commit).string();
  std::string list;
  for (const auto& f : missing_files(repo_id, *commit, files)) list += (list.empty() ? "" : ", ") + f;
  return "the cached snapshot " + (repo / "snapshots" / *commit).string() + " lacks " + list;
}

}  // namespace segml::hub
