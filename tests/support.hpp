// tests/support.hpp: fixture loading and tensor comparison shared by the tests.
//
// Fixtures are written by tools/make_fixtures.py (PyTorch). compare() prints one line per tensor,
// "name: max abs diff X (tol Y) OK|NOT OK", and fails the doctest check when out of tolerance.
#pragma once

#include <doctest/doctest.h>

#include <sys/wait.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <string>

#include <unistd.h>

#include <segml/autograd/gradcheck.hpp>
#include <segml/io/safetensors.hpp>
#include <segml/models/config.hpp>

namespace segml::test {

inline constexpr const char* kFixtureVersion = "1";

// Built with AddressSanitizer: its allocator aborts on sizes it cannot serve instead of failing
// them, and its shadow memory and quarantine make resident-memory figures meaningless; the tests
// of either skip that part under it (the Release run checks it).
#if defined(__SANITIZE_ADDRESS__)
inline constexpr bool kAddressSanitizer = true;
#else
inline constexpr bool kAddressSanitizer = false;
#endif

// The model_tiny fixture's architecture (tools/fixtures/model_tiny.py): four stages of 8 to 32
// channels, a 16-channel decode head; the caller sets the labels.
inline SegformerConfig tiny_segformer_config() {
  SegformerConfig c;
  c.hidden_sizes = {8, 16, 24, 32};
  c.depths = {1, 2, 1, 1};
  c.num_attention_heads = {1, 2, 3, 4};
  c.sr_ratios = {8, 4, 2, 1};
  c.decoder_hidden_size = 16;
  return c;
}

inline std::string fixture_path(const std::string& group) {
  return std::string(SEGML_FIXTURE_DIR) + "/" + group + ".safetensors";
}

// Loads tests/fixtures/<group>.safetensors; a missing or stale file fails with a hint.
class Fixture {
 public:
  explicit Fixture(const std::string& group) : file_(load(group)) {}
  template <class T = float>
  Tensor<T> get(const std::string& name) const {
    if (!file_.contains(name))
      FAIL("fixture '" << file_.path() << "' has no tensor '" << name
                       << "'. HINT: re-run /usr/bin/python3 tools/make_fixtures.py");
    return file_.get<T>(name);
  }
  bool contains(const std::string& name) const { return file_.contains(name); }
  const safetensors::File& file() const { return file_; }

 private:
  static safetensors::File load(const std::string& group) {
    const std::string path = fixture_path(group);
    if (!std::filesystem::exists(path))
      throw Error("missing fixture " + path + ". HINT: run /usr/bin/python3 tools/make_fixtures.py " + group);
    safetensors::File f(path);
    auto it = f.metadata().find("fixture_version");
    if (it == f.metadata().end() || it->second != kFixtureVersion)
      throw Error("fixture " + path + " has another format version. HINT: re-run /usr/bin/python3 tools/make_fixtures.py");
    return f;
  }
  safetensors::File file_;
};

template <class A, class B>
double max_abs_diff(const Tensor<A>& a, const Tensor<B>& b) {
  const Tensor<A> ca = a.contiguous();
  const Tensor<B> cb = b.contiguous();
  double m = 0;
  for (int64_t i = 0; i < ca.numel(); ++i) {
    const double d = std::abs(static_cast<double>(ca.data()[i]) - static_cast<double>(cb.data()[i]));
    if (std::isnan(d)) return INFINITY;
    m = std::max(m, d);
  }
  return m;
}

// Checks |got - want| <= atol + rtol * |want| elementwise; prints the max abs diff either way.
template <class A, class B>
void compare(const std::string& name, const Tensor<A>& got, const Tensor<B>& want, double atol, double rtol = 0) {
  REQUIRE_MESSAGE(got.shape() == want.shape(),
                  name << ": shape " << shape_str(got.shape()) << " vs expected " << shape_str(want.shape()));
  const Tensor<A> ca = got.contiguous();
  const Tensor<B> cb = want.contiguous();
  bool ok = true;
  double worst = 0;
  for (int64_t i = 0; i < ca.numel(); ++i) {
    const double g = static_cast<double>(ca.data()[i]), w = static_cast<double>(cb.data()[i]);
    const double d = std::abs(g - w);
    if (!(d <= atol + rtol * std::abs(w))) ok = false;
    worst = std::max(worst, std::isnan(d) ? INFINITY : d);
  }
  MESSAGE(name << ": max abs diff " << worst << " (atol " << atol << ", rtol " << rtol << ") " << std::string(ok ? "OK" : "NOT OK"));
  CHECK_MESSAGE(ok, name << ": max abs diff " << worst << " exceeds tolerance");
}

// A fresh, empty folder under the system temp dir, removed on destruction. Unique per process and
// per instance: ctest runs the test cases of one executable as parallel processes.
class TempDir {
 public:
  explicit TempDir(const std::string& name = "tmp") {
    static int counter = 0;
    path = std::filesystem::temp_directory_path() /
           ("segml_" + name + "_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
    std::filesystem::remove_all(path);
    std::filesystem::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  // path / name as a string ("" gives the folder itself).
  std::string file(const std::string& name = "") const { return name.empty() ? path.string() : (path / name).string(); }

  std::filesystem::path path;
};

// A program's exit status and its output (stdout and stderr together).
struct ProgramRun {
  int status;
  std::string output;
};

inline std::string shell_quote(const std::string& s) { return "'" + s + "'"; }

// Runs `program args` (args already shell-quoted as needed) in folder `dir`, capturing its output.
inline ProgramRun run_program(const std::string& program, const std::string& args, const std::string& dir) {
  const std::string log = dir + "/program-output.txt";
  const std::string cmd =
      "cd " + shell_quote(dir) + " && " + shell_quote(program) + " " + args + " > " + shell_quote(log) + " 2>&1";
  const int raw = std::system(cmd.c_str());
  std::ifstream in(log);
  std::stringstream ss;
  ss << in.rdbuf();
  return {WIFEXITED(raw) ? WEXITSTATUS(raw) : -1, ss.str()};
}

// Deterministic uniform random tensor in [lo, hi).
template <class T>
Tensor<T> random_tensor(const Shape& shape, uint64_t seed, double lo = -1.0, double hi = 1.0) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> u(lo, hi);
  Tensor<T> t = Tensor<T>::empty(shape);
  for (int64_t i = 0; i < t.numel(); ++i) t.data()[i] = static_cast<T>(u(rng));
  return t;
}

// Runs gradcheck and reports its result through doctest.
inline void check_gradients(const std::string& name, const GradcheckFn& f, const std::vector<Tensor<double>>& inputs,
                            GradcheckOptions opt = {}) {
  const GradcheckResult r = gradcheck(f, inputs, opt);
  MESSAGE("gradcheck " << name << ": " << r.report);
  CHECK_MESSAGE(r.ok, "gradcheck " << name << " failed:\n" << r.report);
}

}  // namespace segml::test
