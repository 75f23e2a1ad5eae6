// Hub ids and the HF cache (segml/hub/): repo id rules, the cache's location from the environment,
// a cache laid out by huggingface_hub used without network, offline errors; and, when built with
// cpp-httplib, downloads from a mock hub on 127.0.0.1 (tests/mock_hub.hpp): single-file and
// sharded checkpoints, a CLIPSeg repo (model, tokenizer, processor), the exact cache layout,
// offline reuse with the server stopped, revisions as branch and commit, resumed partial
// downloads, the token kept from the CDN, and the errors.
#include <doctest/doctest.h>

#include <filesystem>
#include <fstream>
#include <string>

#include <segml/hub/hub.hpp>
#include <segml/io/checkpoint.hpp>
#include <segml/io/image_processor.hpp>
#include <segml/models/clip/tokenization_clip.hpp>
#include <segml/models/clipseg/pretrained_clipseg.hpp>
#include <segml/models/clipseg/processing_clipseg.hpp>

#include "clipseg_support.hpp"
#include "mock_hub.hpp"
#include "support.hpp"

using namespace segml;
namespace fs = std::filesystem;
using test::IsolatedHub;
using test::ScopedEnv;

namespace {

LoadOptions quiet(const std::string& revision = "main") {
  LoadOptions o;
  o.verbose = false;
  o.revision = revision;
  return o;
}

[[maybe_unused]] std::string read_file(const fs::path& p) {  // used by the download tests only
  std::ifstream in(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

void write_file(const fs::path& p, const std::string& bytes) {
  fs::create_directories(p.parent_path());
  std::ofstream(p, std::ios::binary) << bytes;
}

// Lays `files` out as huggingface_hub does: blobs/<etag>, snapshots/<commit>/<file> -> ../../blobs/<etag>,
// refs/<branch> (when a branch is given).
void populate_cache(const fs::path& cache, const std::string& repo_id, const std::string& commit,
                    const std::map<std::string, std::string>& files, const std::string& branch) {
  std::string folder = "models--" + repo_id;
  folder.replace(folder.find('/'), 1, "--");
  const fs::path repo = cache / folder;
  for (const auto& [name, bytes] : files) {
    const std::string etag = test::hex_digest(bytes);
    write_file(repo / "blobs" / etag, bytes);
    fs::create_directories(repo / "snapshots" / commit);
    fs::create_symlink("../../blobs/" + etag, repo / "snapshots" / commit / name);
  }
  if (!branch.empty()) write_file(repo / "refs" / branch, commit);
}

// Every tensor of `a` equals the same tensor of `b`, byte for byte.
bool same_weights(SegformerForSemanticSegmentation<float>& a, SegformerForSemanticSegmentation<float>& b) {
  const auto ea = state_dict_entries(a), eb = state_dict_entries(b);
  if (ea.size() != eb.size()) return false;
  for (const auto& [name, e] : ea)
    if (!eb.count(name) || eb.at(name).bytes != e.bytes) return false;
  return true;
}

// The model saved in a folder, loaded.
SegformerForSemanticSegmentation<float> model_from_files(const std::map<std::string, std::string>& files) {
  test::TempDir dir("hub_ref");
  for (const auto& [name, bytes] : files) write_file(fs::path(dir.file()) / name, bytes);
  return from_pretrained<float>(dir.file(), quiet());
}

}  // namespace

TEST_CASE("hub ids: valid and invalid repo ids") {
  for (const char* ok : {"nvidia/segformer-b0-finetuned-ade-512-512", "gpt2", "CIDAS/clipseg-rd64-refined", "a_b/c.d"})
    CHECK_MESSAGE(hub::repo_id_error(ok).empty(), ok);
  CHECK(hub::repo_id_error("").find("empty") != std::string::npos);
  CHECK(hub::repo_id_error("a/b/c").find("at most one '/'") != std::string::npos);
  CHECK(hub::repo_id_error("/name").find("empty part") != std::string::npos);
  CHECK(hub::repo_id_error("org/na me").find("' '") != std::string::npos);
  CHECK(hub::repo_id_error("org/-name").find("starts or ends") != std::string::npos);
  CHECK(hub::repo_id_error("org/a--b").find("'--'") != std::string::npos);
  CHECK(hub::repo_id_error("../x").find("starts or ends") != std::string::npos);
  CHECK(hub::repo_id_error(std::string(200, 'a')).find("longer") != std::string::npos);
  CHECK(hub::is_commit_hash(std::string(40, 'a')));
  CHECK_FALSE(hub::is_commit_hash(std::string(40, 'A')));
  CHECK_FALSE(hub::is_commit_hash("main"));
  CHECK_THROWS_WITH_AS(hub::check_revision("../etc"), doctest::Contains("not a valid branch"), Error);
  CHECK_NOTHROW(hub::check_revision("refs/pr/1"));
}

TEST_CASE("hub cache: folders, endpoint, token and offline come from the environment as in huggingface_hub") {
  IsolatedHub iso;
  {
    ScopedEnv a("HF_HUB_CACHE", nullptr), b("HF_HOME", "/x/home"), c("XDG_CACHE_HOME", "/x/xdg");
    CHECK(hub::cache_dir() == fs::path("/x/home/hub"));
    ScopedEnv d("HF_HOME", nullptr);
    CHECK(hub::cache_dir() == fs::path("/x/xdg/huggingface/hub"));
    ScopedEnv e("XDG_CACHE_HOME", nullptr), f("HOME", "/x/user");
    CHECK(hub::cache_dir() == fs::path("/x/user/.cache/huggingface/hub"));
    ScopedEnv g("HUGGINGFACE_HUB_CACHE", "/x/legacy");
    CHECK(hub::cache_dir() == fs::path("/x/legacy"));
  }
  CHECK(hub::cache_dir() == fs::path(iso.dir.file("cache")));
  CHECK(hub::repo_folder("org/name") == fs::path(iso.dir.file("cache")) / "models--org--name");
  CHECK(hub::repo_folder("gpt2") == fs::path(iso.dir.file("cache")) / "models--gpt2");
  {
    ScopedEnv e("HF_ENDPOINT", nullptr);
    CHECK(hub::endpoint() == "https://huggingface.co");
    ScopedEnv f("HF_ENDPOINT", "http://mirror.local:8080//");
    CHECK(hub::endpoint() == "http://mirror.local:8080");
  }
  CHECK(hub::token().empty());
  write_file(fs::path(iso.dir.file("home")) / "token", "hf_fromfile\n");
  CHECK(hub::token() == "hf_fromfile");
  {
    ScopedEnv t("HF_TOKEN", " hf_fromenv ");
    CHECK(hub::token() == "hf_fromenv");
  }
  CHECK_FALSE(hub::offline());
  for (const char* v : {"1", "ON", "yes", "True"}) {
    ScopedEnv o("HF_HUB_OFFLINE", v);
    CHECK(hub::offline());
  }
  {
    ScopedEnv o("HF_HUB_OFFLINE", "0");
    CHECK_FALSE(hub::offline());
    ScopedEnv t("TRANSFORMERS_OFFLINE", "1");
    CHECK(hub::offline());
  }
}

TEST_CASE("hub cache: a model laid out by huggingface_hub is loaded without network, by branch and by commit") {
  IsolatedHub iso;  // HF_ENDPOINT is a closed port: any network use would fail
  const auto files = test::tiny_segformer_repo({"sky", "road", "car"}, false);
  const std::string commit = test::commit_of("python-download");
  populate_cache(iso.dir.file("cache"), "org/tiny", commit, files, "main");
  auto model = from_pretrained<float>("org/tiny", quiet());
  CHECK(model.config.num_labels == 3);
  CHECK(model.config.id2label.at(0) == "sky");
  auto expected = model_from_files(files);
  CHECK(same_weights(model, expected));
  auto by_commit = from_pretrained<float>("org/tiny", quiet(commit));
  CHECK(same_weights(by_commit, expected));
  std::string source;
  const auto processor = SegformerImageProcessor::from_pretrained("org/tiny", &source);
  CHECK(processor.height == 32);
  CHECK(source.find("snapshots/" + commit + "/preprocessor_config.json") != std::string::npos);
  // Offline changes nothing when the cache has everything.
  ScopedEnv off("HF_HUB_OFFLINE", "1");
  CHECK(from_pretrained<float>("org/tiny", quiet()).config.num_labels == 3);
}

TEST_CASE("hub cache: offline without the files, the error says what was tried and how to fix it") {
  IsolatedHub iso;
  ScopedEnv off("HF_HUB_OFFLINE", "1");
  CHECK_THROWS_WITH_AS(from_pretrained<float>("org/absent", quiet()),
                       doctest::Contains("'org/absent' (revision 'main') is not available offline"), Error);
  try {
    from_pretrained<float>("org/absent", quiet("v2"));
    FAIL("expected an error");
  } catch (const Error& e) {
    const std::string msg = e.what();
    CHECK(msg.find("the cache has no " + (fs::path(iso.dir.file("cache")) / "models--org--absent").string()) != std::string::npos);
    CHECK(msg.find("HF_HUB_OFFLINE") != std::string::npos);
    CHECK(msg.find("huggingface-cli download org/absent --revision v2") != std::string::npos);
  }
  // A snapshot lacking the weights is named with what it lacks.
  const auto files = test::tiny_segformer_repo({"a", "b"}, false);
  populate_cache(iso.dir.file("cache"), "org/half", test::commit_of("half"), {{"config.json", files.at("config.json")}}, "main");
  CHECK_THROWS_WITH_AS(from_pretrained<float>("org/half", quiet()), doctest::Contains("lacks preprocessor_config.json, model.safetensors"),
                       Error);
  // local_files_only does the same without the environment variable.
  ScopedEnv on("HF_HUB_OFFLINE", nullptr);
  LoadOptions local = quiet();
  local.local_files_only = true;
  CHECK_THROWS_WITH_AS(from_pretrained<float>("org/absent", local), doctest::Contains("local_files_only is set"), Error);
}

TEST_CASE("hub: an existing path is a path, a string that is neither path nor repo id is refused") {
  IsolatedHub iso;
  const auto files = test::tiny_segformer_repo({"a", "b"}, false);
  for (const auto& [name, bytes] : files) write_file(fs::path(iso.dir.file("org/local")) / name, bytes);
  const fs::path cwd = fs::current_path();
  fs::current_path(iso.dir.file());
  CHECK(hub::resolve("org/local", hub::model_files()) == "org/local");
  CHECK(from_pretrained<float>("org/local", quiet("no-such-branch")).config.num_labels == 2);
  fs::current_path(cwd);
  CHECK_THROWS_WITH_AS(from_pretrained<float>("/no/such/folder", quiet()),
                       doctest::Contains("'/no/such/folder' does not exist, and it is not a hub repo id either"), Error);
  CHECK_THROWS_WITH_AS(from_pretrained<float>("org/na me", quiet()), doctest::Contains("it contains ' '"), Error);
  CHECK_THROWS_WITH_AS(from_pretrained<float>("org/name", quiet("../../x")), doctest::Contains("revision '../../x'"), Error);
}

#if !defined(SEGML_WITH_HUB)
TEST_CASE("hub: a build without cpp-httplib says it cannot download") {
  IsolatedHub iso;
  CHECK_THROWS_WITH_AS(from_pretrained<float>("org/absent", quiet()), doctest::Contains("this build cannot download"), Error);
}
#else

namespace {
// The repo's cache folder.
fs::path repo_dir(const IsolatedHub& iso, const std::string& folder) { return fs::path(iso.dir.file("cache")) / folder; }

// The requests `server` got whose path holds `needle` (of one method, when given).
size_t count_requests(const test::MockHub& hub, const std::string& server, const std::string& needle = "",
                      const std::string& method = "") {
  size_t n = 0;
  for (const auto& r : hub.requests())
    n += r.server == server && r.path.find(needle) != std::string::npos && (method.empty() || r.method == method);
  return n;
}
}  // namespace

TEST_CASE("hub download: a single-file checkpoint lands in huggingface_hub's layout and loads offline with the server stopped") {
  test::MockHub hub;
  IsolatedHub iso(hub.endpoint());
  const auto files = test::tiny_segformer_repo({"sky", "road"}, false);
  hub.add("org/tiny", files);
  auto model = from_pretrained<float>("org/tiny", quiet());
  auto expected = model_from_files(files);
  CHECK(same_weights(model, expected));

  const std::string commit = test::commit_of("org/tiny@main");
  const fs::path repo = repo_dir(iso, "models--org--tiny");
  CHECK(read_file(repo / "refs" / "main") == commit);
  for (const auto& [name, bytes] : files) {
    const fs::path link = repo / "snapshots" / commit / name;
    REQUIRE(fs::is_symlink(link));
    const std::string digest = test::hex_digest(bytes);
    // LFS files are named by their sha256 (X-Linked-Etag), the others by their git hash (ETag).
    const std::string etag = name.ends_with(".safetensors") ? digest : digest.substr(0, 40);
    CHECK(fs::read_symlink(link) == fs::path("../../blobs/" + etag));
    CHECK(read_file(repo / "blobs" / etag) == bytes);
  }
  CHECK_FALSE(fs::exists(repo / "blobs" / (test::hex_digest(files.at("model.safetensors")) + ".incomplete")));
  // The first file fixed the commit: the others were asked for at it, so the snapshot is one commit.
  CHECK(count_requests(hub, "hub", "/resolve/main/config.json", "HEAD") == 1);
  CHECK(count_requests(hub, "hub", "/resolve/main/", "HEAD") == 1);
  CHECK(count_requests(hub, "hub", "/resolve/" + commit + "/model.safetensors", "HEAD") == 1);

  // The image processor finds the same snapshot; nothing more is asked of the hub.
  const size_t before = hub.requests().size();
  std::string source;
  CHECK(SegformerImageProcessor::from_pretrained("org/tiny", &source).width == 32);
  CHECK(hub.requests().size() == before);

  hub.stop();
  ScopedEnv off("HF_HUB_OFFLINE", "1");
  auto again = from_pretrained<float>("org/tiny", quiet());
  CHECK(same_weights(again, expected));
}

TEST_CASE("hub download: a CLIPSeg repo by id: model, tokenizer and image processor, then offline with the server stopped") {
  test::MockHub hub;
  IsolatedHub iso(hub.endpoint());
  test::TempDir src("hub_clipseg");
  test::TinyClipseg o;
  o.height = 48;
  test::write_tiny_clipseg_folder(src.file("m"), o);
  std::map<std::string, std::string> files;
  for (const auto& e : fs::directory_iterator(src.file("m"))) files[e.path().filename().string()] = read_file(e.path());
  REQUIRE(files.count("vocab.json") == 1);
  hub.add("CIDAS/tiny-clipseg", files);
  const std::string commit = test::commit_of("CIDAS/tiny-clipseg@main");
  auto check_all = [&] {
    LoadOptions opt = quiet();
    opt.strict = true;
    const auto model = clipseg_from_pretrained<float>("CIDAS/tiny-clipseg", opt);
    CHECK(model.config.text_config.vocab_size == 100);
    const CLIPTokenizer tok = CLIPTokenizer::from_pretrained("CIDAS/tiny-clipseg", {"main", false, false});
    CHECK(tok.encode("road car") == CLIPTokenizer::from_pretrained(src.file("m")).encode("road car"));
    CHECK(clipseg_image_processor("CIDAS/tiny-clipseg").height == 48);
  };
  check_all();
  const fs::path repo = repo_dir(iso, "models--CIDAS--tiny-clipseg");
  for (const char* f : {"config.json", "model.safetensors", "preprocessor_config.json", "vocab.json", "merges.txt"})
    CHECK_MESSAGE(fs::is_symlink(repo / "snapshots" / commit / f), f);
  // The tokenizer's optional files the repo lacks are recorded, so the offline run does not ask.
  CHECK(fs::exists(repo / ".no_exist" / commit / "tokenizer_config.json"));
  hub.stop();
  ScopedEnv off("HF_HUB_OFFLINE", "1");
  check_all();
}

TEST_CASE("hub download: a sharded checkpoint, and a missing optional file recorded under .no_exist") {
  test::MockHub hub;
  IsolatedHub iso(hub.endpoint());
  auto files = test::tiny_segformer_repo({"a", "b", "c", "d"}, true);
  files.erase("preprocessor_config.json");
  hub.add("sharded", files);  // a repo id without an org
  auto model = from_pretrained<float>("sharded", quiet());
  auto expected = model_from_files(files);
  CHECK(same_weights(model, expected));
  const std::string commit = test::commit_of("sharded@main");
  const fs::path snap = repo_dir(iso, "models--sharded") / "snapshots" / commit;
  CHECK(fs::is_symlink(snap / "model-00001-of-00002.safetensors"));
  CHECK(fs::is_symlink(snap / "model-00002-of-00002.safetensors"));
  CHECK(fs::exists(repo_dir(iso, "models--sharded") / ".no_exist" / commit / "preprocessor_config.json"));
  std::string source;
  SegformerImageProcessor::from_pretrained("sharded", &source);
  CHECK(source == "HF defaults");
}

TEST_CASE("hub download: --revision as a branch writes refs/<branch>; as a commit it writes no ref") {
  test::MockHub hub;
  IsolatedHub iso(hub.endpoint());
  hub.add("org/rev", test::tiny_segformer_repo({"main-a", "main-b"}, false));
  hub.add("org/rev", test::tiny_segformer_repo({"v1-a", "v1-b", "v1-c"}, false), "v1");
  CHECK(from_pretrained<float>("org/rev", quiet("v1")).config.id2label.at(0) == "v1-a");
  const fs::path repo = repo_dir(iso, "models--org--rev");
  CHECK(read_file(repo / "refs" / "v1") == test::commit_of("org/rev@v1"));
  CHECK_FALSE(fs::exists(repo / "refs" / "main"));
  const std::string main_commit = test::commit_of("org/rev@main");
  CHECK(from_pretrained<float>("org/rev", quiet(main_commit)).config.id2label.at(0) == "main-a");
  CHECK(fs::is_directory(repo / "snapshots" / main_commit));
  CHECK_FALSE(fs::exists(repo / "refs" / main_commit));
  CHECK_FALSE(fs::exists(repo / "refs" / "main"));
  CHECK_THROWS_WITH_AS(from_pretrained<float>("org/rev", quiet("v9")), doctest::Contains("revision 'v9' not found in 'org/rev'"), Error);
}

TEST_CASE("hub download: a truncated .incomplete blob is resumed with a Range request, or restarted on a 200") {
  for (bool ignore_range : {false, true}) {
    CAPTURE(ignore_range);
    test::MockHub hub;
    hub.ignore_range = ignore_range;
    IsolatedHub iso(hub.endpoint());
    const auto files = test::tiny_segformer_repo({"a", "b"}, false);
    hub.add("org/resume", files);
    const std::string weights = files.at("model.safetensors");
    const std::string etag = test::hex_digest(weights);
    const size_t half = weights.size() / 2;
    // What an interrupted download leaves, with garbage after the valid bytes the 200 must replace.
    write_file(repo_dir(iso, "models--org--resume") / "blobs" / (etag + ".incomplete"),
               weights.substr(0, half - 8) + (ignore_range ? std::string(8, 'x') : weights.substr(half - 8, 8)));
    auto model = from_pretrained<float>("org/resume", quiet());
    auto expected = model_from_files(files);
    CHECK(same_weights(model, expected));
    CHECK(read_file(repo_dir(iso, "models--org--resume") / "blobs" / etag) == weights);
    bool ranged = false;
    for (const auto& r : hub.requests()) ranged |= r.server == "cdn" && r.range == "bytes=" + std::to_string(half) + "-";
    CHECK(ranged);
  }
}

TEST_CASE("hub download: the token goes to the hub but not to the CDN; a gated repo without it is a clear 401") {
  test::MockHub hub;
  IsolatedHub iso(hub.endpoint());
  const auto files = test::tiny_segformer_repo({"a", "b"}, false);
  hub.add("org/gated", files, "main", "hf_secret");
  CHECK_THROWS_WITH_AS(from_pretrained<float>("org/gated", quiet()), doctest::Contains("'org/gated' is gated or private (HTTP 401"),
                       Error);
  CHECK_THROWS_WITH_AS(from_pretrained<float>("org/gated", quiet()), doctest::Contains("set HF_TOKEN"), Error);
  {
    ScopedEnv t("HF_TOKEN", "hf_wrong");
    CHECK_THROWS_WITH_AS(from_pretrained<float>("org/gated", quiet()), doctest::Contains("has no access"), Error);
  }
  hub.clear_log();
  write_file(fs::path(iso.dir.file("home")) / "token", "hf_secret\n");  // as `huggingface-cli login` does
  CHECK(from_pretrained<float>("org/gated", quiet()).config.num_labels == 2);
  size_t hub_requests = 0, cdn_requests = 0;
  for (const auto& r : hub.requests()) {
    if (r.server == "hub") {
      ++hub_requests;
      CHECK(r.authorization == "Bearer hf_secret");
    } else {
      ++cdn_requests;
      CHECK(r.authorization.empty());
    }
  }
  CHECK(hub_requests >= 3);
  CHECK(cdn_requests == 1);
}

TEST_CASE("hub download: a renamed repo's relative redirect is followed") {
  test::MockHub hub;
  IsolatedHub iso(hub.endpoint());
  hub.add("org/new-name", test::tiny_segformer_repo({"a", "b", "c"}, false));
  hub.rename("org/old-name", "org/new-name");
  CHECK(from_pretrained<float>("org/old-name", quiet()).config.num_labels == 3);
  CHECK(fs::is_directory(repo_dir(iso, "models--org--old-name") / "snapshots"));
  CHECK(count_requests(hub, "hub", "/org/new-name/resolve/") >= 3);
}

TEST_CASE("hub download: 404s name the URL; a pytorch_model.bin-only repo gets the conversion command") {
  test::MockHub hub;
  IsolatedHub iso(hub.endpoint());
  CHECK_THROWS_WITH_AS(from_pretrained<float>("org/nothing", quiet()),
                       doctest::Contains(("repository 'org/nothing' not found (HTTP 404 for " + hub.endpoint() +
                                          "/org/nothing/resolve/main/config.json").c_str()),
                       Error);
  auto files = test::tiny_segformer_repo({"a", "b"}, false);
  hub.add("org/noconfig", {{"model.safetensors", files.at("model.safetensors")}});
  CHECK_THROWS_WITH_AS(from_pretrained<float>("org/noconfig", quiet()),
                       doctest::Contains("'config.json' not found in 'org/noconfig' at revision 'main'"), Error);
  hub.add("org/torch", {{"config.json", files.at("config.json")}, {"pytorch_model.bin", "pickle"}});
  CHECK_THROWS_WITH_AS(from_pretrained<float>("org/torch", quiet()), doctest::Contains("tools/convert_weights.py"), Error);
  hub.add("org/empty", {{"config.json", files.at("config.json")}});
  CHECK_THROWS_WITH_AS(from_pretrained<float>("org/empty", quiet()), doctest::Contains("has no weights"), Error);
}

TEST_CASE("hub download: a server sending more than it announced is cut off, and nothing is kept") {
  test::MockHub hub;
  hub.announce_less_by = 100;
  IsolatedHub iso(hub.endpoint());
  const auto files = test::tiny_segformer_repo({"a", "b"}, false);
  hub.add("org/liar", files);
  CHECK_THROWS_WITH_AS(from_pretrained<float>("org/liar", quiet()), doctest::Contains("sent more than the"), Error);
  const std::string etag = test::hex_digest(files.at("model.safetensors"));
  CHECK_FALSE(fs::exists(repo_dir(iso, "models--org--liar") / "blobs" / etag));
  CHECK_FALSE(fs::exists(repo_dir(iso, "models--org--liar") / "blobs" / (etag + ".incomplete")));
}

TEST_CASE("hub download: an unreachable endpoint says what was tried and how to fix it") {
  IsolatedHub iso("http://127.0.0.1:9");
  try {
    from_pretrained<float>("org/far", quiet());
    FAIL("expected an error");
  } catch (const Error& e) {
    const std::string msg = e.what();
    CHECK(msg.find("cannot reach http://127.0.0.1:9/org/far/resolve/main/config.json") != std::string::npos);
    CHECK(msg.find("the cache has no") != std::string::npos);
    CHECK(msg.find("HF_ENDPOINT") != std::string::npos);
    CHECK(msg.find("HF_HUB_OFFLINE=1") != std::string::npos);
    CHECK(msg.find("huggingface-cli download org/far") != std::string::npos);
  }
  ScopedEnv bad("HF_ENDPOINT", "ftp://example.org");
  CHECK_THROWS_WITH_AS(from_pretrained<float>("org/far", quiet()), doctest::Contains("expected http or https"), Error);
}

#endif  // SEGML_WITH_HUB
