// examples/segment and examples/evaluate run as programs: every numeric flag is validated (the
// error names the flag, the value and the range), an image above --max-pixels is refused naming
// the file, and a checkpoint with a NaN weight is refused unless --allow-non-finite. Built only with
// the examples (tests/CMakeLists.txt passes the programs' paths as SEGML_SEGMENT_PROGRAM and
// SEGML_EVALUATE_PROGRAM).
#include <doctest/doctest.h>

#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>

#include <segml/io/checkpoint.hpp>
#include <segml/io/image.hpp>
#include <segml/io/image_processor.hpp>

#include "support.hpp"

using namespace segml;

namespace {

const std::string kDataDir = std::string(SEGML_FIXTURE_DIR) + "/../data/";

std::string quote(const std::string& s) { return test::shell_quote(s); }

using Run = test::ProgramRun;

// Runs `program args` in `dir`, capturing its output.
Run run(const std::string& program, const std::string& args, const test::TempDir& dir) {
  return test::run_program(program, args, dir.file());
}

// A tiny checkpoint with `labels` classes in dir/name; `poison` puts one NaN into the classifier.
std::string tiny_checkpoint(const test::TempDir& dir, const std::string& name, int64_t labels, bool poison = false) {
  SegformerConfig c;
  c.hidden_sizes = {8, 16, 24, 32};
  c.depths = {1, 1, 1, 1};
  c.num_attention_heads = {1, 2, 3, 4};
  c.decoder_hidden_size = 16;
  c.set_labels(labels == 3 ? std::vector<std::string>{"road+sidewalk", "person", "car+tree"}
                           : std::vector<std::string>(static_cast<size_t>(labels), "x"));
  SegformerForSemanticSegmentation<float> model(c, 1);
  if (poison) model.decode_head.classifier.weight.data().data()[2] = NAN;
  SegformerImageProcessor p;
  p.height = p.width = 32;
  const nlohmann::json pre = p.to_json();
  save_pretrained(model, dir.file(name), &pre);
  return dir.file(name);
}

// Runs `program args` in `dir` (the shell execs the program) and returns its peak RSS in MB, from
// wait4. A forked child starts with its parent's high-water mark, so the test process itself must
// stay small: big inputs are made in a child process (write_in_child).
double peak_rss_of_run(const std::string& program, const std::string& args, const test::TempDir& dir, int& status) {
  const std::string cmd = "cd " + quote(dir.file()) + " && exec " + quote(program) + " " + args + " > run.txt 2>&1";
  const pid_t pid = fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    execl("/bin/sh", "sh", "-c", cmd.c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  int raw = 0;
  rusage ru{};
  REQUIRE(wait4(pid, &raw, 0, &ru) == pid);
  status = WIFEXITED(raw) ? WEXITSTATUS(raw) : -1;
  return double(ru.ru_maxrss) / 1024.0;
}

// Runs `write` in a child process (so that its memory never counts in this process's peak).
template <class F>
void write_in_child(F&& write) {
  const pid_t pid = fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    write();
    _exit(0);
  }
  int raw = 0;
  REQUIRE(waitpid(pid, &raw, 0) == pid);
  REQUIRE((WIFEXITED(raw) && WEXITSTATUS(raw) == 0));
}

void check_refused(const Run& r, const std::string& message) {
  CHECK(r.status != 0);
  CHECK_MESSAGE(r.output.find(message) != std::string::npos, r.output);
}

}  // namespace

TEST_CASE("segment: numeric flags are validated, naming the flag, the value and the range") {
  test::TempDir dir("segment_flags");
  const std::string model = tiny_checkpoint(dir, "model", 3), image = quote(kDataDir + "rgb_37x53.png");
  const std::string base = "--model " + quote(model) + " --image " + image + " ";
  check_refused(run(SEGML_SEGMENT_PROGRAM, base + "--threads 0", dir), "--threads: got '0', expected a whole number in [1, 1024]");
  check_refused(run(SEGML_SEGMENT_PROGRAM, base + "--repeat -1", dir), "--repeat: got '-1', expected a whole number in [1, 1000000]");
  check_refused(run(SEGML_SEGMENT_PROGRAM, base + "--alpha nan", dir), "--alpha: got 'nan', expected a finite number in [0, 1]");
  check_refused(run(SEGML_SEGMENT_PROGRAM, base + "--alpha 1.5", dir), "--alpha: got '1.5'");
  check_refused(run(SEGML_SEGMENT_PROGRAM, base + "--max-pixels 0", dir), "--max-pixels: got '0', expected a whole number >= 1");
  check_refused(run(SEGML_SEGMENT_PROGRAM, base + "--max-pixels abc", dir), "--max-pixels: got 'abc'");
  const Run ok = run(SEGML_SEGMENT_PROGRAM, base + "--threads 1 --repeat 2 --alpha 0.25 --mask mask.png", dir);
  CHECK_MESSAGE(ok.status == 0, ok.output);
}

TEST_CASE("segment: an image above --max-pixels and a NaN checkpoint are refused, naming the file and the tensor") {
  test::TempDir dir("segment_limits");
  const std::string model = tiny_checkpoint(dir, "model", 3), poisoned = tiny_checkpoint(dir, "poisoned", 3, true);
  const std::string image = kDataDir + "rgb_37x53.png";
  check_refused(run(SEGML_SEGMENT_PROGRAM, "--model " + quote(model) + " --image " + quote(image) + " --max-pixels 1000", dir),
                "load_image '" + image + "': image is 53x37 (1961 pixels), above the limit of 1000 pixels");
  check_refused(run(SEGML_SEGMENT_PROGRAM, "--model " + quote(poisoned) + " --image " + quote(image), dir),
                "decode_head.classifier.weight: 1 NaN, 0 Inf");
  const Run inspect = run(SEGML_SEGMENT_PROGRAM, "--model " + quote(poisoned) + " --image " + quote(image) + " --allow-non-finite", dir);
  CHECK_MESSAGE(inspect.status == 0, inspect.output);
  CHECK(inspect.output.find("warning") != std::string::npos);
}

TEST_CASE("evaluate: numeric flags are validated, and --max-pixels and NaN checkpoints are refused by name") {
  test::TempDir dir("evaluate_limits");
  const std::string model = tiny_checkpoint(dir, "model", 3), poisoned = tiny_checkpoint(dir, "poisoned", 3, true);
  const std::string base = "--data " + quote(kDataDir + "hf_export") + " --split val ";
  check_refused(run(SEGML_EVALUATE_PROGRAM, base + "--model " + quote(model) + " --batch-size 0", dir),
                "--batch-size: got '0', expected a whole number in [1, 1024]");
  check_refused(run(SEGML_EVALUATE_PROGRAM, base + "--model " + quote(model) + " --threads -2", dir), "--threads: got '-2'");
  check_refused(run(SEGML_EVALUATE_PROGRAM, base + "--model " + quote(model) + " --max-pixels 1e3", dir), "--max-pixels: got '1e3'");
  check_refused(run(SEGML_EVALUATE_PROGRAM, base + "--model " + quote(model) + " --max-pixels 10", dir),
                "val/images/000000.png': image is");
  check_refused(run(SEGML_EVALUATE_PROGRAM, base + "--model " + quote(poisoned), dir), "decode_head.classifier.weight: 1 NaN");
  const Run ok = run(SEGML_EVALUATE_PROGRAM, base + "--model " + quote(model) + " --batch-size 2 --threads 1", dir);
  CHECK_MESSAGE(ok.status == 0, ok.output);
  const Run inspect = run(SEGML_EVALUATE_PROGRAM, base + "--model " + quote(poisoned) + " --allow-non-finite", dir);
  CHECK_MESSAGE(inspect.status == 0, inspect.output);
}

TEST_CASE("segment: a 7000x7000 image peaks at most 400 MB above the model's own footprint") {
  // A B0 with 8 street classes at HF's default input (512x512): the model's own footprint is its
  // peak with a small image.
  test::TempDir dir("segment_memory");
  write_in_child([&] {
    SegformerConfig c = SegformerConfig::b0();
    c.set_labels({"road", "sidewalk", "building", "sky", "car", "person", "pole", "vegetation"});
    SegformerForSemanticSegmentation<float> b0(c, 1);
    save_pretrained(b0, dir.file("b0"));
  });
  const std::string model = dir.file("b0");
  write_in_child([&] {
    Image stripes(7000, 7000, 3);  // 147 MB, in the child; the PNG is small
    for (int64_t y = 0; y < stripes.height; ++y)
      for (int64_t x = 0; x < stripes.width * 3; ++x) stripes.data[static_cast<size_t>(y * stripes.width * 3 + x)] = (y / 700) % 2 ? 200 : 30;
    save_png(dir.file("big.png"), stripes);
  });
  int status = 0;
  const double footprint = peak_rss_of_run(SEGML_SEGMENT_PROGRAM, "--model " + quote(model) + " --image " +
                                                                      quote(kDataDir + "rgb_37x53.png") + " --output small.png --mask small_mask.png",
                                           dir, status);
  REQUIRE(status == 0);
  const double peak =
      peak_rss_of_run(SEGML_SEGMENT_PROGRAM, "--model " + quote(model) + " --image big.png --output big_overlay.png --mask big_mask.png", dir, status);
  REQUIRE(status == 0);
  MESSAGE("segment peak RSS: " << footprint << " MB with a 37x53 image, " << peak << " MB with 7000x7000: +" << peak - footprint << " MB");
  CHECK(peak - footprint <= 400);
  const Image mask = load_label_map(dir.file("big_mask.png"));
  CHECK(mask.height == 7000);
  CHECK(mask.width == 7000);
}
