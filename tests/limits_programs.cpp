// examples/segment and examples/evaluate run as programs: every numeric flag is validated (the
// error names the flag, the value and the range), an image above --max-pixels is refused naming
// the file, and a checkpoint with a NaN weight is refused unless --allow-non-finite. Built only with
// the examples (tests/CMakeLists.txt passes the programs' paths as SEGML_SEGMENT_PROGRAM and
// SEGML_EVALUATE_PROGRAM).
#include <doctest/doctest.h>

#include <sys/wait.h>

#include <cmath>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>

#include <segml/io/checkpoint.hpp>
#include <segml/io/image_processor.hpp>

#include "support.hpp"

using namespace segml;

namespace {

const std::string kDataDir = std::string(SEGML_FIXTURE_DIR) + "/../data/";

std::string quote(const std::string& s) { return "'" + s + "'"; }

struct Run {
  int status;
  std::string output;  // stdout and stderr
};

// Runs `program args` in `dir`, capturing its output.
Run run(const std::string& program, const std::string& args, const test::TempDir& dir) {
  const std::string log = dir.file("output.txt");
  const std::string cmd = "cd " + quote(dir.file()) + " && " + quote(program) + " " + args + " > " + quote(log) + " 2>&1";
  const int raw = std::system(cmd.c_str());
  std::ifstream in(log);
  std::stringstream ss;
  ss << in.rdbuf();
  return {WIFEXITED(raw) ? WEXITSTATUS(raw) : -1, ss.str()};
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
  check_refused(run(SEGML_SEGMENT_PROGRAM, base + "--repeat -1", dir), "--repeat: got '-1', expected a whole number in [1, 1e+06]");
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
