// The demo server (examples/demo_server/server.hpp), started in-process on an ephemeral port and
// driven with the cpp-httplib client: the page, /healthz, /api/info, /api/segment (PNG, JPEG,
// multipart; results equal to running the pipeline directly), /api/overlay, the 400/404/413/503
// errors, a few hundred random and corrupt payloads sent concurrently with valid requests (the
// server must keep answering correctly), and the model lookup in weights/. Also
// load_image_from_memory (segml/io/image.hpp). Uses a randomly initialised tiny SegFormer with a
// 64x64 input, so the whole file runs in a few seconds.
#include <doctest/doctest.h>

#include <atomic>
#include <fstream>
#include <random>
#include <semaphore>
#include <sstream>
#include <thread>

#include "demo_server_assets.hpp"
#include "server.hpp"
#include "support.hpp"

using namespace segml;
using segml::demo::DemoServer;
using segml::demo::ServerOptions;
using segml::test::TempDir;
using nlohmann::json;

namespace {

const std::string kDataDir = std::string(SEGML_FIXTURE_DIR) + "/../data/";

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  REQUIRE_MESSAGE(in, "cannot read " << path);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

std::string jpeg_bytes(const Image& img) {
  std::string out;
  const auto append = [](void* ctx, void* data, int n) { static_cast<std::string*>(ctx)->append(static_cast<char*>(data), size_t(n)); };
  REQUIRE(stbi_write_jpg_to_func(append, &out, int(img.width), int(img.height), 3, img.data.data(), 90));
  return out;
}

std::string base64_decode(const std::string& in) {
  static const std::string alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  uint32_t acc = 0;
  int bits = 0;
  for (char c : in) {
    if (c == '=') break;
    const size_t v = alphabet.find(c);
    if (v == std::string::npos) throw std::runtime_error("base64_decode: invalid character");
    acc = (acc << 6) | uint32_t(v);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out += char((acc >> bits) & 0xFF);
    }
  }
  return out;
}

// The tiny random model with a small input size, so each inference takes milliseconds.
demo::LoadedModel tiny_model() {
  demo::LoadedModel m = demo::random_model("tiny", /*seed=*/3);
  m.processor.height = m.processor.width = 64;
  return m;
}

// A DemoServer on 127.0.0.1:<ephemeral>, served by a background thread until destruction.
struct TestServer {
  explicit TestServer(ServerOptions opt = {})
      : server(tiny_model(), std::move(opt), {std::begin(demo::kWebAssets), std::end(demo::kWebAssets)}) {
    port = server.bind_to_any_port("127.0.0.1");
    REQUIRE(port > 0);
    thread = std::thread([this] { server.listen_after_bind(); });
    while (!server.is_running()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  ~TestServer() {
    server.stop();
    thread.join();
  }
  httplib::Client client() const {
    httplib::Client c("127.0.0.1", port);
    c.set_read_timeout(30);
    return c;
  }
  DemoServer server;
  int port = -1;
  std::thread thread;
};

// The (id, pixels) histogram, sorted by id, that the pipeline gives for `image`, computed directly (no server).
std::vector<std::pair<int64_t, int64_t>> reference_histogram(const Image& image) {
  demo::LoadedModel m = tiny_model();
  SegformerInference<float> engine(m.model);
  const Tensor<float> logits = engine.run(m.processor.preprocess(image));
  auto h = class_histogram(m.processor.post_process_semantic_segmentation(logits, {{image.height, image.width}})[0]);
  std::sort(h.begin(), h.end());  // by id, as histogram_of()
  return h;
}

// The (id, pixels) histogram of a /api/segment answer, sorted by id.
std::vector<std::pair<int64_t, int64_t>> histogram_of(const json& body) {
  std::vector<std::pair<int64_t, int64_t>> h;
  for (const auto& c : body["classes"]) h.emplace_back(c["id"].get<int64_t>(), c["pixels"].get<int64_t>());
  std::sort(h.begin(), h.end());
  return h;
}

// Checks a JSON error answer: the status, and that the message contains `what`.
void check_error(const httplib::Result& r, int status, const std::string& what) {
  REQUIRE(r);
  CHECK(r->status == status);
  CHECK(r->get_header_value("Content-Type") == "application/json");
  const json body = json::parse(r->body);
  CHECK(body["status"] == status);
  CHECK_MESSAGE(body["error"].get<std::string>().find(what) != std::string::npos, body["error"]);
}

// A PNG whose header claims width x height (the rest is missing).
std::string png_header(uint32_t width, uint32_t height) {
  std::string s("\x89PNG\r\n\x1A\n\0\0\0\x0DIHDR", 16);
  for (uint32_t v : {width, height})
    for (int shift = 24; shift >= 0; shift -= 8) s += char((v >> shift) & 0xFF);
  s += std::string("\x08\x02\0\0\0", 5);  // 8-bit RGB
  s += std::string(4, '\0');              // CRC (stb does not check it)
  return s;
}

}  // namespace

TEST_CASE("demo: load_image_from_memory decodes like load_image, and names the source in its errors") {
  const std::string path = kDataDir + "street_375x500.png";
  const Image from_file = load_image(path);
  const Image from_memory = load_image_from_memory(read_bytes(path), "street");
  CHECK(from_memory.height == 375);
  CHECK(from_memory.width == 500);
  CHECK(from_memory.channels == 3);
  CHECK(from_memory.data == from_file.data);
  // Grey and RGBA PNGs come back as RGB, as load_image does.
  for (const char* name : {"grey_37x53.png", "rgba_37x53.png"})
    CHECK(load_image_from_memory(read_bytes(kDataDir + name)).data == load_image(kDataDir + name).data);
  CHECK_THROWS_WITH_AS(load_image_from_memory("", "upload.png"), doctest::Contains("'upload.png': no bytes"), segml::Error);
  CHECK_THROWS_WITH_AS(load_image_from_memory(read_bytes(path).substr(0, 100), "cut.png"),
                       doctest::Contains("'cut.png': cannot decode"), segml::Error);
}

TEST_CASE("demo: base64 matches RFC 4648's test vectors") {
  const std::pair<const char*, const char*> vectors[] = {{"", ""},         {"f", "Zg=="},         {"fo", "Zm8="},
                                                         {"foo", "Zm9v"},  {"foob", "Zm9vYg=="},  {"fooba", "Zm9vYmE="},
                                                         {"foobar", "Zm9vYmFy"}};
  for (const auto& [in, out] : vectors) CHECK(demo::detail::base64(in) == out);
  const std::string all = [] {
    std::string s;
    for (int i = 0; i < 256; ++i) s += char(i);
    return s;
  }();
  CHECK(base64_decode(demo::detail::base64(all)) == all);
}

TEST_CASE("demo: the page, /healthz and /api/info") {
  TestServer ts;
  auto cli = ts.client();
  auto page = cli.Get("/");
  REQUIRE(page);
  CHECK(page->status == 200);
  CHECK(page->get_header_value("Content-Type").starts_with("text/html"));
  CHECK(page->body.find("capture=\"environment\"") != std::string::npos);
  CHECK(page->body == read_bytes(std::string(SEGML_DEMO_WEB_DIR) + "/index.html"));
  for (const auto& [path, type] : {std::pair{"/app.js", "text/javascript"}, std::pair{"/style.css", "text/css"}}) {
    auto r = cli.Get(path);
    REQUIRE(r);
    CHECK(r->status == 200);
    CHECK(r->get_header_value("Content-Type").starts_with(type));
    CHECK(r->body == read_bytes(std::string(SEGML_DEMO_WEB_DIR) + path));
  }

  auto health = cli.Get("/healthz");
  REQUIRE(health);
  CHECK(health->status == 200);
  CHECK(json::parse(health->body)["status"] == "ok");

  auto info_r = cli.Get("/api/info");
  REQUIRE(info_r);
  CHECK(info_r->status == 200);
  const json info = json::parse(info_r->body);
  CHECK(info["model"] == "random-tiny");
  CHECK(info["num_labels"] == 8);
  CHECK(info["input_size"] == json::array({64, 64}));
  REQUIRE(info["classes"].size() == 8);
  CHECK(info["classes"][0]["name"] == "road");
  for (const auto& c : info["classes"]) {
    const Rgb rgb = palette_color(c["id"].get<int64_t>());
    CHECK(c["color"] == json::array({rgb[0], rgb[1], rgb[2]}));
  }
  check_error(cli.Get("/no/such/page"), 404, "no such path");
  check_error(cli.Get("/app_js"), 404, "no such path");  // asset paths are matched literally
  CHECK(ts.server.warm_up() >= 0);
}

TEST_CASE("demo: /api/segment on PNG, JPEG and multipart uploads gives the pipeline's result") {
  TestServer ts;
  auto cli = ts.client();
  const std::string png = read_bytes(kDataDir + "street_375x500.png");
  const Image image = load_image_from_memory(png);
  const std::string jpeg = jpeg_bytes(image);

  struct Case {
    const char* name;
    httplib::Result result;
    Image decoded;
  };
  httplib::MultipartFormDataItems form = {{"image", png, "street.png", "image/png"}};
  Case cases[] = {{"png", cli.Post("/api/segment?mask=1", png, "image/png"), image},
                  {"jpeg", cli.Post("/api/segment?mask=1", jpeg, "image/jpeg"), load_image_from_memory(jpeg)},
                  {"multipart", cli.Post("/api/segment?mask=1", form), image}};
  for (auto& c : cases) {
    CAPTURE(c.name);
    REQUIRE(c.result);
    REQUIRE(c.result->status == 200);
    const json body = json::parse(c.result->body);
    CHECK(body["width"] == 500);
    CHECK(body["height"] == 375);
    CHECK(body["model_input"] == json::array({64, 64}));
    CHECK(body["logits_size"] == json::array({16, 16}));
    CHECK(histogram_of(body) == reference_histogram(c.decoded));
    double share = 0;
    int64_t pixels = 0, previous = std::numeric_limits<int64_t>::max();
    for (const auto& k : body["classes"]) {
      share += k["share"].get<double>();
      pixels += k["pixels"].get<int64_t>();
      CHECK(k["pixels"].get<int64_t>() <= previous);  // largest first
      previous = k["pixels"].get<int64_t>();
      CHECK(!k["name"].get<std::string>().empty());
    }
    CHECK(pixels == 375 * 500);
    CHECK(share == doctest::Approx(1.0));
    for (const char* t : {"decode", "preprocess", "queue", "model", "postprocess", "encode", "total"})
      CHECK(body["timings_ms"][t].get<double>() >= 0);
    for (const char* key : {"overlay_png", "mask_png"}) {
      const Image img = load_image_from_memory(base64_decode(body[key].get<std::string>()), key);
      CHECK(img.height == 375);
      CHECK(img.width == 500);
    }
  }
  // overlay=0 drops the overlay; /api/overlay answers with the PNG itself.
  auto lean = cli.Post("/api/segment?overlay=0", png, "image/png");
  REQUIRE(lean);
  CHECK(lean->status == 200);
  CHECK(!json::parse(lean->body).contains("overlay_png"));
  CHECK(!json::parse(lean->body).contains("mask_png"));
  auto ov = cli.Post("/api/overlay?alpha=0.3", jpeg, "image/jpeg");
  REQUIRE(ov);
  CHECK(ov->status == 200);
  CHECK(ov->get_header_value("Content-Type") == "image/png");
  CHECK(load_image_from_memory(ov->body).width == 500);
}

TEST_CASE("demo: non-image and corrupt uploads get 400 with a JSON error") {
  TestServer ts;
  auto cli = ts.client();
  const std::string png = read_bytes(kDataDir + "street_375x500.png");
  check_error(cli.Post("/api/segment", "", "image/png"), 400, "empty upload");
  check_error(cli.Post("/api/segment", "just some text, not an image", "image/jpeg"), 400, "not an image");
  check_error(cli.Post("/api/segment", png.substr(0, 20), "image/png"), 400, "corrupt png");
  check_error(cli.Post("/api/segment", png.substr(0, png.size() / 2), "image/png"), 400, "corrupt png");
  check_error(cli.Post("/api/segment", std::string("\xFF\xD8\xFF\xE0garbage", 11), "image/jpeg"), 400, "corrupt jpeg");
  check_error(cli.Post("/api/segment?alpha=2", png, "image/png"), 400, "'alpha'");
  check_error(cli.Post("/api/segment?mask=yes", png, "image/png"), 400, "'mask'");
  httplib::MultipartFormDataItems wrong = {{"photo", png, "a.png", "image/png"}, {"other", "x", "", ""}};
  check_error(cli.Post("/api/segment", wrong), 400, "'image'");
  auto ok = cli.Post("/api/segment", png, "image/png");  // and the server still works
  REQUIRE(ok);
  CHECK(ok->status == 200);
}

TEST_CASE("demo: too large uploads and images get 413") {
  ServerOptions opt;
  opt.max_image_mb = 0.05;    // 52428 bytes
  opt.max_pixels = 1000 * 1000;
  TestServer ts(opt);
  auto cli = ts.client();
  // Just over the limit: refused by the handler; far over it: refused by httplib before reading.
  check_error(cli.Post("/api/segment", std::string(60 * 1024, 'x'), "image/jpeg"), 413, "limit is 0.05 MB");
  check_error(cli.Post("/api/segment", std::string(3 * 1024 * 1024, 'x'), "image/jpeg"), 413, "limit is 0.05 MB");
  // A small file that decodes to a huge image.
  check_error(cli.Post("/api/segment", png_header(10000, 10000), "image/png"), 413, "10000x10000 pixels");
  // Beyond what stb decodes at all (more than 2^30 bytes).
  check_error(cli.Post("/api/segment", png_header(30000, 30000), "image/png"), 413, "30000x30000 pixels");
  // curl's default Content-Type for --data-binary: httplib caps those bodies at 8 KB.
  check_error(cli.Post("/api/segment", std::string(20 * 1024, 'x'), "application/x-www-form-urlencoded"), 413,
              "Content-Type image/jpeg");
  auto ok = cli.Post("/api/segment", read_bytes(kDataDir + "rgb_37x53.png"), "image/png");
  REQUIRE(ok);
  CHECK(ok->status == 200);
}

TEST_CASE("demo: requests beyond the queue get 503, and the queued one still completes") {
  std::binary_semaphore entered(0), release(0);
  ServerOptions opt;
  opt.queue_size = 1;
  opt.on_inference = [&] {
    entered.release();
    release.acquire();
  };
  TestServer ts(opt);
  const std::string png = read_bytes(kDataDir + "rgb_37x53.png");
  int first_status = 0;
  std::thread holder([&] {
    auto cli = ts.client();
    auto r = cli.Post("/api/segment", png, "image/png");
    first_status = r ? r->status : -1;
  });
  entered.acquire();  // the first request holds the model and the only queue slot
  auto cli = ts.client();
  auto busy = cli.Post("/api/segment", png, "image/png");
  check_error(busy, 503, "busy");
  CHECK(busy->get_header_value("Retry-After") == "1");
  auto health = cli.Get("/healthz");  // other endpoints still answer
  REQUIRE(health);
  CHECK(json::parse(health->body)["queue"]["pending"] == 1);
  release.release();
  holder.join();
  CHECK(first_status == 200);
  // The slot is free again.
  std::thread releaser([&] {
    entered.acquire();
    release.release();
  });
  auto again = cli.Post("/api/segment", png, "image/png");
  releaser.join();
  REQUIRE(again);
  CHECK(again->status == 200);
}

TEST_CASE("demo: hundreds of random and corrupt payloads, sent concurrently with valid ones, leave the server sound") {
  ServerOptions opt;
  opt.queue_size = 2;
  opt.max_image_mb = 1;
  TestServer ts(opt);
  const std::string png = read_bytes(kDataDir + "rgb_150x200.png");
  const std::string jpeg = jpeg_bytes(load_image_from_memory(png));
  const auto expected_png = reference_histogram(load_image_from_memory(png));
  const auto expected_jpeg = reference_histogram(load_image_from_memory(jpeg));

  // 320 payloads: random bytes, truncations and bit flips of a PNG and a JPEG, fake huge headers.
  std::mt19937_64 rng(42);
  std::vector<std::pair<std::string, std::string>> payloads;  // (bytes, kind)
  for (int i = 0; i < 320; ++i) {
    const std::string& base = i % 2 ? png : jpeg;
    std::string p;
    std::string kind;
    switch (i % 5) {
      case 0: {
        p.resize(1 + rng() % 4096);
        for (char& c : p) c = char(rng());
        kind = "random";
        break;
      }
      case 1:
        p = base.substr(0, rng() % base.size());
        kind = "truncated";
        break;
      case 2: {
        p = base;
        for (int k = 0; k < 1 + int(rng() % 16); ++k) p[rng() % p.size()] ^= char(1 << (rng() % 8));
        kind = "flipped";
        break;
      }
      case 3:
        p = png_header(uint32_t(1 + rng() % 100000), uint32_t(1 + rng() % 100000));
        kind = "header";
        break;
      default:
        p = base;
        kind = "valid";
    }
    payloads.emplace_back(std::move(p), std::move(kind));
  }

  std::atomic<size_t> next{0};
  std::atomic<int> ok{0}, rejected{0}, busy{0}, unexpected{0};
  std::mutex log_mutex;
  std::vector<std::string> problems;
  auto worker = [&] {
    auto cli = ts.client();
    for (size_t i; (i = next++) < payloads.size();) {
      const auto& [bytes, kind] = payloads[i];
      auto r = cli.Post("/api/segment?overlay=0", bytes, i % 3 ? "image/png" : "application/octet-stream");
      std::string problem;
      if (!r) {
        problem = "no response (" + httplib::to_string(r.error()) + ")";
      } else {
        const json body = json::parse(r->body, nullptr, false);
        if (body.is_discarded()) problem = "not JSON";
        else if (r->status == 200 && !body.contains("classes")) problem = "200 without classes";
        else if (r->status != 200 && !body.contains("error")) problem = "error without message";
        else if (r->status != 200 && r->status != 400 && r->status != 413 && r->status != 503)
          problem = "status " + std::to_string(r->status);
        else if (kind == "valid" && r->status == 200 && histogram_of(body) != (i % 2 ? expected_png : expected_jpeg))
          problem = "wrong result";
        else if (kind == "valid" && r->status != 200 && r->status != 503)
          problem = "valid image refused: " + r->body;
        else if (kind == "random" && r->status != 400)
          problem = "random bytes answered with " + std::to_string(r->status);
        else if (kind == "header" && r->status == 200)
          problem = "a bare PNG header answered with 200";
        (r->status == 200 ? ok : r->status == 503 ? busy : rejected)++;
      }
      if (!problem.empty()) {
        ++unexpected;
        std::lock_guard<std::mutex> lock(log_mutex);
        problems.push_back(kind + " payload " + std::to_string(i) + ": " + problem);
      }
    }
  };
  std::vector<std::thread> threads;
  for (int t = 0; t < 6; ++t) threads.emplace_back(worker);
  for (auto& t : threads) t.join();
  MESSAGE(ok.load(), " ok, ", rejected.load(), " rejected (400/413), ", busy.load(), " busy (503)");
  for (const auto& p : problems) MESSAGE(p);
  CHECK(unexpected == 0);
  CHECK(ok > 0);
  // At least every random payload (each checked above to get 400). A fake header is refused with
  // 400 or 413 when it reaches the decoder, but may meet a full queue first (503).
  CHECK(rejected >= 64);

  // Afterwards the server answers as before, with the same result.
  auto cli = ts.client();
  auto health = cli.Get("/healthz");
  REQUIRE(health);
  CHECK(json::parse(health->body)["queue"]["pending"] == 0);
  auto r = cli.Post("/api/segment", png, "image/png");
  REQUIRE(r);
  REQUIRE(r->status == 200);
  CHECK(histogram_of(json::parse(r->body)) == expected_png);
}

TEST_CASE("demo: the model is found in weights/, or the error says how to get one") {
  TempDir weights("demo_weights");
  CHECK_THROWS_WITH_AS(demo::find_model("", weights.file()), doctest::Contains("finetune_sidewalk"), segml::Error);
  CHECK_THROWS_WITH_AS(demo::find_model("", weights.file("missing")), doctest::Contains("No model found"), segml::Error);
  CHECK(demo::find_model("given/path", weights.file()) == "given/path");

  demo::LoadedModel m = demo::random_model("tiny", 5);
  const json pre = {{"size", {{"height", 96}, {"width", 128}}}};
  save_pretrained(m.model, weights.file("street-tiny"), &pre);
  std::filesystem::create_directories(weights.path / "an-empty-folder");
  const std::string found = demo::find_model("", weights.file());
  CHECK(found == weights.file("street-tiny"));
  const demo::LoadedModel loaded = demo::load_model(found);
  CHECK(loaded.processor.height == 96);
  CHECK(loaded.processor.width == 128);
  CHECK(loaded.model.config.id2label == m.model.config.id2label);
  // A checkpoint directly in weights/ is used as is.
  CHECK(demo::find_model("", weights.file("street-tiny")) == weights.file("street-tiny"));
}

// ---- bounded memory and refused models (the image path) ---------------------------------------

namespace {

// Resident set of this process now, in MB (/proc/self/statm).
double current_rss_mb() {
  std::ifstream statm("/proc/self/statm");
  long pages = 0, resident = 0;
  statm >> pages >> resident;
  return double(resident) * double(sysconf(_SC_PAGESIZE)) / (1024.0 * 1024.0);
}

// Samples the resident set every millisecond while alive; peak() is the largest seen.
struct RssSampler {
  std::atomic<bool> stop{false};
  std::atomic<double> max{0};
  std::thread thread{[this] {
    while (!stop) {
      const double now = current_rss_mb();
      if (now > max) max = now;
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
  }};
  double peak() {
    stop = true;
    if (thread.joinable()) thread.join();
    return std::max(max.load(), current_rss_mb());
  }
  ~RssSampler() { peak(); }
};

// A w x h PNG of horizontal stripes (compresses to a few tens of KB).
std::string striped_png(int64_t w, int64_t h) {
  Image img(h, w, 3);
  for (int64_t y = 0; y < h; ++y)
    for (int64_t x = 0; x < w; ++x)
      for (int64_t c = 0; c < 3; ++c) img.at(y, x, c) = static_cast<uint8_t>((y / 500) % 2 ? 40 + 60 * c : 220 - 50 * c);
  return demo::detail::encode_png(img);
}

}  // namespace

TEST_CASE("demo: a 7000x7000 upload stays within 400 MB above the model's footprint, with the pipeline's result") {
  ServerOptions opt;
  TestServer ts(opt);
  auto cli = ts.client();
  cli.set_read_timeout(120);
  const std::string png = striped_png(7000, 7000);
  MESSAGE("upload: 7000x7000 PNG of " << png.size() << " bytes");
  REQUIRE(png.size() < 10u * 1024 * 1024);
  // Warm: the model's own footprint (inference buffers, thread pools) with a tiny image.
  auto warm = cli.Post("/api/segment", read_bytes(kDataDir + "rgb_37x53.png"), "image/png");
  REQUIRE(warm);
  REQUIRE(warm->status == 200);

  const double before = current_rss_mb();
  json body;
  double peak = 0;
  {
    RssSampler sampler;
    auto r = cli.Post("/api/segment?mask=1", png, "image/png");
    peak = sampler.peak();
    REQUIRE(r);
    REQUIRE(r->status == 200);
    body = json::parse(r->body);
  }
  MESSAGE("resident " << before << " MB before the request, peak " << peak << " MB during it: +" << peak - before << " MB");
  CHECK(peak - before <= 400);
  CHECK(body["width"] == 7000);
  CHECK(body["height"] == 7000);
  // The answer is the pipeline's, computed on the decoded image directly.
  const Image image = load_image_from_memory(png, "stripes");
  CHECK(histogram_of(body) == reference_histogram(image));
  const std::string overlay_png = base64_decode(body["overlay_png"].get<std::string>());
  const Image blended = load_image_from_memory(overlay_png, "overlay", 100'000'000);
  CHECK(blended.height == 7000);
  CHECK(blended.width == 7000);
}

TEST_CASE("demo: load_model refuses a checkpoint with a NaN weight, naming the tensor") {
  TempDir dir("demo_nan");
  demo::LoadedModel m = demo::random_model("tiny", 5);
  m.model.decode_head.linear_fuse.weight.data().data()[7] = NAN;
  save_pretrained(m.model, dir.file());
  CHECK_THROWS_WITH_AS(demo::load_model(dir.file()),
                       doctest::Contains("decode_head.linear_fuse.weight: 1 NaN, 0 Inf"), segml::Error);
}

TEST_CASE("demo: running out of memory while segmenting gives 503 with a message, and the server carries on") {
  std::atomic<bool> fail_once{true};
  ServerOptions opt;
  opt.on_inference = [&] {
    if (fail_once.exchange(false)) throw std::bad_alloc();
  };
  TestServer ts(opt);
  auto cli = ts.client();
  const std::string png = read_bytes(kDataDir + "rgb_37x53.png");
  const auto r = cli.Post("/api/segment", png, "image/png");
  check_error(r, 503, "out of memory while segmenting this image");
  CHECK(r->get_header_value("Retry-After") == "1");
  const auto ok = cli.Post("/api/segment", png, "image/png");
  REQUIRE(ok);
  CHECK(ok->status == 200);
}
