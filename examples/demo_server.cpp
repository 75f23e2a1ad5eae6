// demo_server: a web app that segments street scenes, for a laptop or a phone browser.
//
//   demo_server [--model DIR | --random-init tiny|b0] [--host 127.0.0.1] [--port 8080] [--threads N] [--max-image-mb 10]
//               [--queue 4] [--tls-cert cert.pem --tls-key key.pem]
//
// Serves the page embedded from examples/demo_server/web and the REST API of
// examples/demo_server/server.hpp (documented in docs/demo.md). Without --model it serves the first
// checkpoint found in weights/, and when there is none it says how to get or train one.
// Phones: --host 0.0.0.0 and open http://<laptop-ip>:8080; for the live camera use HTTPS
// (--tls-cert/--tls-key; docs/demo.md shows how to make a self-signed certificate).
#include <CLI/CLI.hpp>

#include <arpa/inet.h>
#include <ifaddrs.h>
#include <netinet/in.h>

#include <chrono>
#include <csignal>
#include <cstdio>
#include <string>
#include <vector>

#include "demo_server_assets.hpp"
#include "server.hpp"

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

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"SegFormer demo: a web page and REST API that segment street scenes (see docs/demo.md)"};
  std::string model_path, random_init, host = "127.0.0.1";
  int port = 8080, threads = 0;
  segml::demo::ServerOptions opt;
  app.add_option("--model", model_path, "checkpoint folder (config.json + model.safetensors); default: the first in weights/");
  app.add_option("--random-init", random_init,
                 "serve a randomly initialised model instead (tiny or b0): to try the page or measure latency")
      ->check(CLI::IsMember({"tiny", "b0"}))
      ->excludes("--model");
  app.add_option("--host", host, "address to listen on; 0.0.0.0 to be reachable from a phone on the same network")
      ->capture_default_str();
  app.add_option("--port", port, "port")->capture_default_str()->check(CLI::Range(1, 65535));
  app.add_option("--threads", threads, "threads for the model's kernels (default: all cores)")->check(CLI::PositiveNumber);
  app.add_option("--max-image-mb", opt.max_image_mb, "largest accepted upload, in MB (larger: 413)")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--queue", opt.queue_size, "segmentation requests admitted at once (beyond: 503)")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--tls-cert", opt.tls_cert, "PEM certificate: serve HTTPS (needed for the live camera on a phone)")
      ->check(CLI::ExistingFile);
  app.add_option("--tls-key", opt.tls_key, "PEM private key of --tls-cert")->check(CLI::ExistingFile);
  CLI11_PARSE(app, argc, argv);

  try {
    if (threads > 0) segml::set_num_threads(threads);
    const std::string path = random_init.empty() ? segml::demo::find_model(model_path) : "random-" + random_init;
    const auto t0 = std::chrono::steady_clock::now();
    segml::demo::LoadedModel loaded =
        random_init.empty() ? segml::demo::load_model(path) : segml::demo::random_model(random_init);
    const double load_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    std::printf("Model %s: %lld classes, input %lldx%lld, loaded in %.0f ms; %d threads\n", path.c_str(),
                static_cast<long long>(loaded.model.config.num_labels), static_cast<long long>(loaded.processor.height),
                static_cast<long long>(loaded.processor.width), load_ms, segml::num_threads());
    segml::demo::DemoServer server(std::move(loaded), opt,
                                   {std::begin(segml::demo::kWebAssets), std::end(segml::demo::kWebAssets)});
    std::printf("Warm-up inference: %.0f ms\n", server.warm_up());
    g_server = &server;
    std::signal(SIGINT, on_signal);
    std::signal(SIGTERM, on_signal);
    const char* scheme = server.tls() ? "https" : "http";
    if (host == "0.0.0.0") {
      std::printf("Serving on %s://localhost:%d/ and, from a phone on the same network:\n", scheme, port);
      for (const std::string& ip : lan_addresses()) std::printf("  %s://%s:%d/\n", scheme, ip.c_str(), port);
      if (!server.tls())
        std::printf("(plain HTTP: photo upload works on a phone, the live camera needs --tls-cert/--tls-key)\n");
    } else {
      std::printf("Serving on %s://%s:%d/\n", scheme, host.c_str(), port);
      if (host == "127.0.0.1" || host == "localhost")
        std::printf("Only this machine can connect; use --host 0.0.0.0 to reach it from a phone.\n");
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
