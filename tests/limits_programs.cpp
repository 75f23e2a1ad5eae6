// examples/segment and examples/evaluate run as programs: every numeric flag is validated (the
// error names the flag, the value and the range), an image above --max-pixels is refused naming
// the file, and a checkpoint with a NaN weight is refused unless --allow-non-finite. Both run the
// inference engine, whose logits and metrics match the autograd model's (--autograd); evaluate's
// split default, --subset and prediction pictures. Built only with
// the examples (tests/CMakeLists.txt passes the programs' paths as SEGML_SEGMENT_PROGRAM and
// SEGML_EVALUATE_PROGRAM).
#include <doctest/doctest.h>

#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <sstream>
#include <string>

#include <segml/data/dataset.hpp>
#include <segml/io/checkpoint.hpp>
#include <segml/io/image.hpp>
#include <segml/io/image_processor.hpp>

#include "support.hpp"

using namespace segml;
namespace fs = std::filesystem;

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

// ---- the inference engine in segment and evaluate; evaluate's split, subset and pictures ----------

namespace {

nlohmann::json read_json_file(const std::string& path) {
  std::ifstream in(path);
  REQUIRE_MESSAGE(in.good(), path);
  return nlohmann::json::parse(in);
}

}  // namespace

TEST_CASE("segment: the inference engine's logits match the autograd model's (--autograd)") {
  test::TempDir dir("segment_engine");
  const std::string model = tiny_checkpoint(dir, "model", 3), image = quote(kDataDir + "street_375x500.png");
  const Run engine = run(SEGML_SEGMENT_PROGRAM, "--model " + quote(model) + " --image " + image +
                                                    " --logits engine.safetensors --mask engine.png --output overlay.png", dir);
  REQUIRE_MESSAGE(engine.status == 0, engine.output);
  CHECK(engine.output.find("inference engine") != std::string::npos);
  const Run autograd = run(SEGML_SEGMENT_PROGRAM, "--model " + quote(model) + " --image " + image +
                                                      " --logits autograd.safetensors --mask autograd.png --autograd", dir);
  REQUIRE_MESSAGE(autograd.status == 0, autograd.output);
  CHECK(autograd.output.find("autograd model") != std::string::npos);
  const Tensor<float> a = safetensors::File(dir.file("engine.safetensors")).get<float>("logits");
  const Tensor<float> b = safetensors::File(dir.file("autograd.safetensors")).get<float>("logits");
  test::compare("segment logits, engine vs autograd", a, b, 1e-4, 1e-4);
  // The label maps agree except where two classes' logits are within rounding of each other.
  const Image ma = load_label_map(dir.file("engine.png")), mb = load_label_map(dir.file("autograd.png"));
  REQUIRE(ma.data.size() == mb.data.size());
  size_t differ = 0;
  for (size_t i = 0; i < ma.data.size(); ++i) differ += ma.data[i] != mb.data[i];
  CHECK(double(differ) <= 1e-3 * double(ma.data.size()));
  // The overlay carries a legend panel to the right of the image.
  CHECK(load_image(dir.file("overlay.png")).width > 500);
}

TEST_CASE("evaluate: the engine gives the autograd model's metrics, and a confusion matrix in percentages") {
  test::TempDir dir("evaluate_engine");
  const std::string model = tiny_checkpoint(dir, "model", 3);
  const std::string base = "--model " + quote(model) + " --data " + quote(kDataDir + "hf_export") + " --split train ";
  const Run engine = run(SEGML_EVALUATE_PROGRAM, base + "--json engine.json", dir);
  REQUIRE_MESSAGE(engine.status == 0, engine.output);
  CHECK(engine.output.find("inference engine") != std::string::npos);
  CHECK(engine.output.find("rows = ground truth, columns = prediction") != std::string::npos);
  CHECK(engine.output.find("e-0") == std::string::npos);
  const Run autograd = run(SEGML_EVALUATE_PROGRAM, base + "--json autograd.json --autograd", dir);
  REQUIRE_MESSAGE(autograd.status == 0, autograd.output);
  CHECK(autograd.output.find("autograd model") != std::string::npos);
  const nlohmann::json a = read_json_file(dir.file("engine.json")), b = read_json_file(dir.file("autograd.json"));
  CHECK(a["images"] == 2);
  CHECK(std::abs(a["mean_iou"].get<double>() - b["mean_iou"].get<double>()) < 1e-3);
  CHECK(std::abs(a["overall_accuracy"].get<double>() - b["overall_accuracy"].get<double>()) < 1e-3);
}

TEST_CASE("evaluate: --split defaults to a split that exists, and an unknown split lists the splits found") {
  test::TempDir dir("evaluate_split");
  const std::string model = tiny_checkpoint(dir, "model", 3);
  const std::string base = "--model " + quote(model) + " --data " + quote(kDataDir + "hf_export") + " ";
  const Run by_default = run(SEGML_EVALUATE_PROGRAM, base + "--json d.json", dir);
  REQUIRE_MESSAGE(by_default.status == 0, by_default.output);
  CHECK(read_json_file(dir.file("d.json"))["split"] == "val");
  check_refused(run(SEGML_EVALUATE_PROGRAM, base + "--split test", dir),
                "--split: 'test' is not a split of " + kDataDir + "hf_export; splits found: train, val");
  // A dataset with neither val, validation nor test: the default names what there is.
  fs::create_directories(dir.file("only_train"));
  fs::copy(kDataDir + "hf_export/train", dir.file("only_train/train"), fs::copy_options::recursive);
  fs::copy(kDataDir + "hf_export/id2label.json", dir.file("only_train/id2label.json"));
  check_refused(run(SEGML_EVALUATE_PROGRAM, "--model " + quote(model) + " --data only_train", dir),
                "no val, validation or test split to evaluate by default; give --split (splits found: train)");
}

TEST_CASE("evaluate: --subset N --split train evaluates the N training images finetune_sidewalk --subset N uses") {
  test::TempDir dir("evaluate_subset");
  const std::string model = tiny_checkpoint(dir, "model", 3);
  const std::string base = "--model " + quote(model) + " --data " + quote(kDataDir + "hf_export") + " --split train ";
  const Run r = run(SEGML_EVALUATE_PROGRAM, base + "--subset 1 --seed 3 --json s.json", dir);
  REQUIRE_MESSAGE(r.status == 0, r.output);
  const nlohmann::json j = read_json_file(dir.file("s.json"));
  CHECK(j["images"] == 1);
  CHECK(j["subset"]["images"] == 1);
  CHECK(j["subset"]["seed"] == 3);
  // The same image as the dataset's own subset(1) with that seed, scored alone.
  DatasetOptions o;
  o.seed = 3;
  const SegmentationDataset chosen = SegmentationDataset::open(kDataDir + "hf_export", "train", o).subset(1);
  const std::string stem = chosen.path_of(0).stem().string();
  const Run p = run(SEGML_EVALUATE_PROGRAM, base + "--subset 1 --seed 3 --predictions pred", dir);
  REQUIRE_MESSAGE(p.status == 0, p.output);
  CHECK(fs::exists(dir.file("pred/" + stem + ".png")));
  CHECK(std::distance(fs::directory_iterator(dir.file("pred")), fs::directory_iterator()) == 1);
  check_refused(run(SEGML_EVALUATE_PROGRAM, base + "--subset 5", dir), "--subset 5: split \"train\" of");
  check_refused(run(SEGML_EVALUATE_PROGRAM, base + "--subset 0", dir), "--subset: got '0'");
  check_refused(run(SEGML_EVALUATE_PROGRAM, base + "--seed 2", dir), "--seed only chooses --subset's images");
}

TEST_CASE("evaluate --predictions: the prediction beside the ground truth, with a legend") {
  test::TempDir dir("evaluate_predictions");
  const std::string model = tiny_checkpoint(dir, "model", 3);
  const Run r = run(SEGML_EVALUATE_PROGRAM,
                    "--model " + quote(model) + " --data " + quote(kDataDir + "hf_export") + " --split val --predictions pred", dir);
  REQUIRE_MESSAGE(r.status == 0, r.output);
  const SegmentationDataset ds = SegmentationDataset::open(kDataDir + "hf_export", "val");
  const Sample s = ds.load(0);
  const Image out = load_image(dir.file("pred/" + ds.path_of(0).stem().string() + ".png"));
  CHECK(out.width > 2 * s.rgb.width);    // two images and a legend panel
  CHECK(out.height >= s.rgb.height);
}
