// demo_server: a web app that segments street scenes, for a laptop or a phone browser.
//
//   demo_server [--model DIR | --random-init tiny|b0] [--zero-shot-model DIR | --zero-shot-random-init tiny]
//               [--host 127.0.0.1] [--port 8080] [--threads N] [--max-image-mb 10]
//               [--max-pixels 50000000] [--queue 4] [--max-connections 128] [--max-upload-memory-mb 256]
//               [--header-timeout 10] [--body-timeout 30]
//               [--keep-alive-timeout 5] [--token T | --no-auth] [--tls-cert cert.pem --tls-key key.pem]
//
// Serves the page embedded from examples/demo_server/web and the REST API of
// examples/demo_server/server.hpp (documented in docs/demo.md). --zero-shot-model adds the zero-shot
// mode (a CLIPSeg folder: segments by text prompts); with it alone, only that mode is served.
// Without any model flag it serves the first SegFormer checkpoint found in weights/, and when there
// is none it says how to get or train one (or to give a CLIPSeg).
// Phones: --host 0.0.0.0; the server then needs an access token (random unless --token is given;
// --no-auth opts out), and prints a warning, the address with the token and its QR code (with
// libqrencode; else only the address). For the live camera use HTTPS (--tls-cert/--tls-key;
// docs/demo.md shows how to make a self-signed certificate). Every numeric flag is checked
// (examples/cli_checks.hpp): a bad value is refused with the flag, the value and the valid range.
#include <CLI/CLI.hpp>

#include <arpa/inet.h>
#include <ifaddrs.h>
#include <netinet/in.h>
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <optional>
#include <stdexcept>
#include <cstdio>
#include <string>
#include <vector>

#include "../cli_checks.hpp"
#include "demo_server_assets.hpp"
#include "server.hpp"

#ifdef SEGML_HAVE_QRENCODE
#include <qrencode.h>
#endif

namespace {

segml::demo::DemoServer* g_server = nullptr;

extern "C" void on_signal(int) {
  if (g_server) g_server->stop();
}

// This machine's IPv4 addresses other than loopback: where a phone on the same network connects.
std::vector<std::string> lan_addresses() {
  std::vector<std::string> out;
  ifaddrs* list = nullptr;
  if (getifaddrs(&list) != 0) return out;
  for (const ifaddrs* a = list; a; a = a->ifa_next) {
    if (!a->ifa_addr || a->ifa_addr->sa_family != AF_INET) continue;
    char buf[INET_ADDRSTRLEN] = {};
    const auto* in = reinterpret_cast<const sockaddr_in*>(a->ifa_addr);
    if (inet_ntop(AF_INET, &in->sin_addr, buf, sizeof buf) && std::string(buf).rfind("127.", 0) != 0) out.push_back(buf);
  }
  freeifaddrs(list);
  return out;
}

// Prints `text` as a QR code when stdout is a terminal: two modules per character cell (upper
// half block, ANSI colours), dark on light with a quiet zone, whatever the terminal's own colours.
void print_qr(const std::string& text) {
#ifdef SEGML_HAVE_QRENCODE
  if (!isatty(STDOUT_FILENO)) return;  // escape codes in a log file would only be noise
  QRcode* qr = QRcode_encodeString(text.c_str(), 0, QR_ECLEVEL_L, QR_MODE_8, 1);
  if (!qr) {
    std::printf("(could not make a QR code of the address)\n");
    return;
  }
  const int quiet = 2, n = qr->width + 2 * quiet;
  const auto dark = [&](int x, int y) {
    x -= quiet;
    y -= quiet;
    return x >= 0 && y >= 0 && x < qr->width && y < qr->width && (qr->data[y * qr->width + x] & 1);
  };
  for (int y = 0; y < n; y += 2) {
    std::printf("  ");
    for (int x = 0; x < n; ++x)  // foreground: the upper module; background: the lower one
      std::printf("\033[%d;%dm\u2580", dark(x, y) ? 30 : 97, dark(x, y + 1) ? 40 : 107);
    std::printf("\033[0m\n");
  }
  QRcode_free(qr);
#else
  (void)text;
  std::printf("(a QR code of this address needs libqrencode: apt-get install libqrencode-dev, then rebuild)\n");
#endif
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"SegFormer demo: a web page and REST API that segment street scenes (see docs/demo.md)"};
  std::string model_path, random_init, zero_shot_path, zero_shot_random, host = "127.0.0.1";
  int port = 8080, threads = 0;
  segml::demo::ServerOptions opt;
  std::string revision = "main";
  app.add_option("--model", model_path, "checkpoint folder (config.json + model.safetensors) or hub id (org/name); "
                 "default: the first in weights/");
  app.add_option("--revision", revision, "with hub ids (--model, --zero-shot-model): branch, tag or commit")->capture_default_str();
  app.add_option("--random-init", random_init,
                 "serve a randomly initialised model instead (tiny or b0): to try the page or measure latency")
      ->check(CLI::IsMember({"tiny", "b0"}))
      ->excludes("--model");
  app.add_option("--zero-shot-model", zero_shot_path,
                 "CLIPSeg folder (config.json, model.safetensors, vocab.json, merges.txt): adds the zero-shot mode "
                 "(segments by text prompts); or a hub id such as CIDAS/clipseg-rd64-refined");
  app.add_option("--zero-shot-random-init", zero_shot_random,
                 "a randomly initialised reduced CLIPSeg for the zero-shot mode (tiny): to try the page")
      ->check(CLI::IsMember({"tiny"}))
      ->excludes("--zero-shot-model");
  app.add_option("--host", host, "address to listen on; 0.0.0.0 to be reachable from a phone on the same network")
      ->capture_default_str();
  app.add_option("--port", port, "port")->capture_default_str()->check(segml::cli::whole(1, 65535));
  app.add_option("--threads", threads, "threads for the model's kernels (default: all cores)")
      ->check(segml::cli::whole(1, 1024));
  app.add_option("--max-image-mb", opt.max_image_mb, "largest accepted upload, in MB (larger: 413)")
      ->capture_default_str()
      ->check(segml::cli::real(0, 1024, /*open_low=*/true));
  app.add_option("--max-pixels", opt.max_pixels, "largest accepted image, in pixels (larger: 413, checked before decoding)")
      ->capture_default_str()
      ->check(segml::cli::whole(1, 1'000'000'000));
  app.add_option("--queue", opt.queue_size, "segmentation requests admitted at once (beyond: 503)")
      ->capture_default_str()
      ->check(segml::cli::whole(1, 1024));
  app.add_option("--max-connections", opt.max_connections,
                 "open connections served at once, a thread each, apart from --queue (beyond: 503)")
      ->capture_default_str()
      ->check(segml::cli::whole(1, 4096));
  app.add_option("--max-upload-memory-mb", opt.max_upload_memory_mb,
                 "request bodies held in memory at once, all connections together, in MB (beyond: 503)")
      ->capture_default_str()
      ->check(segml::cli::real(0, 65536, /*open_low=*/true));
  app.add_option("--header-timeout", opt.header_timeout_s, "seconds for a request's whole head to arrive (else 408)")
      ->capture_default_str()
      ->check(segml::cli::real(0, 3600, /*open_low=*/true));
  app.add_option("--body-timeout", opt.body_timeout_s,
                 "seconds for a request's whole body to arrive, and for the answer to be taken (else 408)")
      ->capture_default_str()
      ->check(segml::cli::real(0, 3600, /*open_low=*/true));
  app.add_option("--keep-alive-timeout", opt.keep_alive_timeout_s, "seconds an idle connection stays open")
      ->capture_default_str()
      ->check(segml::cli::real(0, 3600, /*open_low=*/true));
  std::string token;
  bool no_auth = false;
  auto* token_opt =
      app.add_option("--token", token,
                     "access token asked beyond loopback (default: a random one, printed at start)")
          ->check(CLI::Validator(
              [](std::string& t) {
                const std::string problem = segml::demo::detail::token_problem(t);
                return problem.empty() ? problem : "got '" + t + "', " + problem;
              },
              "TOKEN"));
  app.add_flag("--no-auth", no_auth, "serve beyond loopback without an access token (anyone on the network can use it)")
      ->excludes(token_opt);
  app.add_option("--tls-cert", opt.tls_cert, "PEM certificate: serve HTTPS (needed for the live camera on a phone)")
      ->check(CLI::ExistingFile);
  app.add_option("--tls-key", opt.tls_key, "PEM private key of --tls-cert")->check(CLI::ExistingFile);
  CLI11_PARSE(app, argc, argv);

  try {
    opt.token = segml::demo::detail::access_token(host, token, no_auth);
    if (segml::demo::detail::is_loopback_host(host) && (!token.empty() || no_auth))
      std::printf("Note: --host %s is loopback, where no access token is asked: %s has no effect.\n", host.c_str(),
                  no_auth ? "--no-auth" : "--token");
    if (threads > 0) segml::set_num_threads(threads);
    const bool want_zero_shot = !zero_shot_path.empty() || !zero_shot_random.empty();
    std::optional<segml::demo::LoadedModel> segformer;
    if (!random_init.empty() || !model_path.empty() || !want_zero_shot) {
      // With no model flag at all, the first checkpoint in weights/ (or an error saying how to get one).
      const std::string path = random_init.empty() ? segml::demo::find_model(model_path) : "random-" + random_init;
      const auto t0 = std::chrono::steady_clock::now();
      segformer = random_init.empty() ? segml::demo::load_model(path, revision) : segml::demo::random_model(random_init);
      const double load_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
      std::printf("Model %s: %lld classes, input %lldx%lld, loaded in %.0f ms; %d threads\n", path.c_str(),
                  static_cast<long long>(segformer->model.config.num_labels),
                  static_cast<long long>(segformer->processor.height), static_cast<long long>(segformer->processor.width),
                  load_ms, segml::num_threads());
    }
    std::optional<segml::demo::ZeroShotModel> zero_shot;
    if (want_zero_shot) {
      const auto t0 = std::chrono::steady_clock::now();
      try {
        zero_shot = zero_shot_random.empty() ? segml::demo::load_zero_shot(zero_shot_path, revision)
                                             : segml::demo::random_zero_shot(zero_shot_random);
      } catch (const std::exception& e) {
        throw std::runtime_error(std::string("--zero-shot-model: ") + e.what());
      }
      const double load_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
      const segml::CLIPSegConfig& c = zero_shot->engine->config();
      std::printf("Zero-shot model %s: CLIPSeg (vision %lld layers x %lld, patch %lld), input %lldx%lld, loaded in %.0f ms\n",
                  zero_shot->name.c_str(), static_cast<long long>(c.vision_config.num_hidden_layers),
                  static_cast<long long>(c.vision_config.hidden_size), static_cast<long long>(c.vision_config.patch_size),
                  static_cast<long long>(zero_shot->processor.height), static_cast<long long>(zero_shot->processor.width),
                  load_ms);
    }
    segml::demo::DemoServer server(std::move(segformer), std::move(zero_shot), opt,
                                   {std::begin(segml::demo::kWebAssets), std::end(segml::demo::kWebAssets)});
    std::printf("Warm-up inference: %.0f ms\n", server.warm_up());
    g_server = &server;
    std::signal(SIGINT, on_signal);
    std::signal(SIGTERM, on_signal);
    const char* scheme = server.tls() ? "https" : "http";
    if (segml::demo::detail::is_loopback_host(host)) {
      std::printf("Serving on %s://%s:%d/\n", scheme, host.c_str(), port);
      std::printf("Only this machine can connect; use --host 0.0.0.0 to reach it from a phone.\n");
    } else {
      const bool any = host == "0.0.0.0" || host == "::";
      std::vector<std::string> addresses = any ? lan_addresses() : std::vector<std::string>{host};
      if (addresses.empty()) addresses.push_back("<this-machine's-address>");
      const std::string query = opt.token.empty() ? "" : "?token=" + opt.token;
      std::printf("WARNING: listening on %s: this server is reachable from the network, not only from this machine.\n",
                  host.c_str());
      if (opt.token.empty())
        std::printf("WARNING: --no-auth: anyone who can reach this machine can use the server.\n");
      else
        std::printf("Every request needs the access token%s; open this address on the phone (same network):\n",
                    token.empty() ? " (random, new at each start; --token sets one)" : " given with --token");
      for (const std::string& ip : addresses) std::printf("  %s://%s:%d/%s\n", scheme, ip.c_str(), port, query.c_str());
      print_qr(std::string(scheme) + "://" + addresses.front() + ":" + std::to_string(port) + "/" + query);
      if (!server.tls())
        std::printf("(plain HTTP: photo upload works on a phone, the live camera needs --tls-cert/--tls-key)\n");
    }
    std::printf("Ctrl-C stops.\n");
    std::fflush(stdout);
    if (!server.listen(host, port)) {
      std::fprintf(stderr, "demo_server: cannot listen on %s:%d (port in use? try --port)\n", host.c_str(), port);
      return 1;
    }
    std::printf("Stopped.\n");
  } catch (const std::exception& e) {
    std::fprintf(stderr, "demo_server: %s\n", e.what());
    return 1;
  }
  return 0;
}
