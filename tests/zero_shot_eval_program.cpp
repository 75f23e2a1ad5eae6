// examples/evaluate --zero-shot-model run as a program on a reduced HF-layout CLIPSeg folder and a
// small generated labelled dataset (three images of different sizes, ignore pixels, id2label names
// with capitals, underscores and dashes): the prompts built from id2label (cleaned names, the
// template, a prompts file), the figures of --json against the same computation done in-process
// (engine, sigmoid, bilinear upsampling, argmax, HF mean_iou), the optional "no class" threshold,
// the other outputs (Markdown, confusion SVG, prediction overlays, progress, latency) and clear
// errors. Built with the examples (SEGML_EVALUATE_PROGRAM is the program's path).
#include <doctest/doctest.h>

#include <cmath>
#include <fstream>
#include <iterator>
#include <optional>
#include <set>
#include <string>

#include <segml/data/dataset.hpp>
#include <segml/io/image.hpp>
#include <segml/models/clip/tokenization_clip.hpp>
#include <segml/models/clipseg/clipseg_inference.hpp>
#include <segml/models/clipseg/pretrained_clipseg.hpp>
#include <segml/models/clipseg/processing_clipseg.hpp>
#include <segml/train/metrics.hpp>

#include "clipseg_support.hpp"
#include "support.hpp"

using namespace segml;
namespace fs = std::filesystem;

namespace {

const std::string kProgram = SEGML_EVALUATE_PROGRAM;

void write(const fs::path& p, const std::string& s) { std::ofstream(p, std::ios::binary) << s; }

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  REQUIRE_MESSAGE(in.good(), path);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// The reduced CLIPSeg folder of tests/clipseg_support.hpp with a square processor size.
std::string eval_clipseg_folder(const test::TempDir& dir, const std::string& name, int64_t size) {
  test::TinyClipseg o;
  o.height = o.width = size;
  o.max_position_embeddings = 24;
  o.vision_layers = 3;
  o.extract_layers = {0, 1, 2};
  o.seed = 7;
  return test::write_tiny_clipseg_folder(dir.file(name), o);
}

// A labelled dataset in the split layout: data/id2label.json and data/val/{images,labels}/*.png,
// three images of different sizes; labels are bands of the 3 classes with an ignored (255) block.
const std::vector<std::string> kId2Label = {"Road", "parked_car", "sky-top"};
std::string eval_dataset(const test::TempDir& dir) {
  const fs::path root = dir.file("data");
  fs::create_directories(root / "val" / "images");
  fs::create_directories(root / "val" / "labels");
  nlohmann::json id2label = nlohmann::json::object();
  for (size_t c = 0; c < kId2Label.size(); ++c) id2label[std::to_string(c)] = kId2Label[c];
  write(root / "id2label.json", id2label.dump());
  const std::vector<std::pair<int64_t, int64_t>> sizes = {{40, 56}, {33, 47}, {64, 64}};
  for (size_t i = 0; i < sizes.size(); ++i) {
    const auto [h, w] = sizes[i];
    Image img(h, w, 3), label(h, w, 1);
    for (int64_t y = 0; y < h; ++y)
      for (int64_t x = 0; x < w; ++x) {
        const int64_t cls = y < h / 3 ? 2 : (x < w / 2 ? 0 : 1);
        const bool ignored = x > w - 6 && y > h - 6;
        label.data[size_t(y * w + x)] = static_cast<uint8_t>(ignored ? 255 : cls);
        for (int64_t k = 0; k < 3; ++k)
          img.data[size_t((y * w + x) * 3 + k)] =
              static_cast<uint8_t>((cls * 80 + x * (k + 1) * 3 + y * 5 + int64_t(i) * 40) % 256);
      }
    const std::string stem = "img" + std::to_string(i);
    save_png((root / "val" / "images" / (stem + ".png")).string(), img);
    save_png((root / "val" / "labels" / (stem + ".png")).string(), label);
  }
  return root.string();
}

// What the library computes in-process for `prompts` on the dataset: the engine's logits per image,
// each class's sigmoid upsampled to the label's size (zero_shot_probability), the first maximal
// class per pixel (or "no class" = n when no class exceeds `threshold`), HF mean_iou.
struct InProcess {
  train::MeanIoU metrics;
  std::set<int64_t> predicted;  // the class ids predicted somewhere
  double unassigned = 0;        // share of the evaluated pixels with no class
};
InProcess in_process(const std::string& folder, const std::string& data, const std::vector<std::string>& prompts,
                     std::optional<double> threshold = std::nullopt) {
  CLIPSegInference<float> engine(clipseg_from_pretrained<float>(folder));
  const CLIPTokenizer tok = CLIPTokenizer::from_pretrained(folder);
  const ViTImageProcessor processor = clipseg_image_processor(folder);
  std::vector<std::vector<int64_t>> ids;
  for (const auto& p : prompts) ids.push_back(tok.encode(p));
  const int64_t n = int64_t(prompts.size());
  const SegmentationDataset ds = SegmentationDataset::open(data, "val");
  train::MeanIoUAccumulator acc(n);
  InProcess out;
  double none = 0, evaluated = 0;
  for (size_t i = 0; i < ds.size(); ++i) {
    const Sample s = ds.load(i);
    const int64_t H = s.label.height, W = s.label.width;
    const Tensor<float> logits = engine.run(processor.preprocess(s.rgb), ids);
    std::vector<Tensor<float>> prob;
    for (int64_t k = 0; k < n; ++k) prob.push_back(zero_shot_probability(logits, k, H, W));
    std::vector<int64_t> pred(size_t(H * W));
    for (int64_t p = 0; p < H * W; ++p) {
      int64_t best = 0;
      for (int64_t k = 1; k < n; ++k)
        if (prob[size_t(k)].data()[p] > prob[size_t(best)].data()[p]) best = k;
      if (threshold && !(prob[size_t(best)].data()[p] > *threshold)) best = n;
      pred[size_t(p)] = best;
      out.predicted.insert(best);
      if (s.label.data[size_t(p)] != 255) evaluated += 1, none += best == n;
    }
    acc.add(pred.data(), s.label.data.data(), H * W);
  }
  out.metrics = acc.compute();
  out.unassigned = none / evaluated;
  return out;
}

nlohmann::json read_json(const std::string& path) {
  std::ifstream in(path);
  REQUIRE_MESSAGE(in.good(), path);
  return nlohmann::json::parse(in);
}

double num(const nlohmann::json& v) { return v.is_null() ? std::nan("") : v.get<double>(); }

// The figures of evaluate's --json equal the in-process ones (NaN as null).
void check_figures(const nlohmann::json& j, const train::MeanIoU& m) {
  auto same = [](double a, double b) { return (std::isnan(a) && std::isnan(b)) || std::abs(a - b) < 1e-12; };
  CHECK(same(num(j["mean_iou"]), m.mean_iou));
  CHECK(same(num(j["mean_accuracy"]), m.mean_accuracy));
  CHECK(same(num(j["overall_accuracy"]), m.overall_accuracy));
  REQUIRE(j["per_category_iou"].size() == m.per_category_iou.size());
  for (size_t c = 0; c < m.per_category_iou.size(); ++c) {
    CHECK_MESSAGE(same(num(j["per_category_iou"][c]), m.per_category_iou[c]), "class ", c);
    CHECK_MESSAGE(same(num(j["per_category_accuracy"][c]), m.per_category_accuracy[c]), "class ", c);
  }
}

}  // namespace

TEST_CASE("evaluate --zero-shot-model: prompts from id2label, the figures of the library, every output") {
  test::TempDir dir("zero_shot_eval");
  const std::string model = eval_clipseg_folder(dir, "model", 48);
  const std::string data = eval_dataset(dir);
  const test::ProgramRun r = test::run_program(
      kProgram,
      "--zero-shot-model model --data data --split val --json out/val.json --markdown out/val.md "
      "--confusion out/confusion.svg --predictions out/pred",
      dir.file());
  INFO(r.output);
  REQUIRE(r.status == 0);
  for (const char* text : {"mean IoU", "ETA", "[3/3]", "vision tower", "decoder (3 prompts)", "Throughput"})
    CHECK_MESSAGE(r.output.find(text) != std::string::npos, text);

  const nlohmann::json j = read_json(dir.file("out/val.json"));
  // The prompts: the cleaned names with the default template "{}".
  const std::vector<std::string> prompts = {"road", "parked car", "sky top"};
  CHECK(j["zero_shot"]["prompts"].get<std::vector<std::string>>() == prompts);
  CHECK(j["zero_shot"]["prompt_template"] == "{}");
  CHECK(j["zero_shot"]["threshold"].is_null());
  CHECK(j["id2label"].get<std::vector<std::string>>() == kId2Label);
  CHECK(j["images"] == 3);
  const InProcess want = in_process(model, data, prompts);
  CHECK(want.predicted.size() >= 2);  // the scaled head makes several classes win somewhere
  CHECK(!want.predicted.count(3));    // without a threshold every pixel gets a class
  check_figures(j, want.metrics);

  const std::string md = read_text(dir.file("out/val.md"));
  CHECK(md.find("| parked_car |") != std::string::npos);
  CHECK(md.find("\"parked car\"") != std::string::npos);
  CHECK(read_text(dir.file("out/confusion.svg")).find("sky-top") != std::string::npos);
  for (const char* stem : {"img0", "img1", "img2"}) {
    const std::string p = dir.file(std::string("out/pred/") + stem + ".png");
    REQUIRE_MESSAGE(fs::exists(p), p);
  }
  CHECK(load_image(dir.file("out/pred/img1.png")).width > 2 * 47);  // prediction | ground truth | legend
}

TEST_CASE("evaluate --zero-shot-model: --prompt-template, --prompts-file and --zero-shot-threshold") {
  test::TempDir dir("zero_shot_eval_prompts");
  const std::string model = eval_clipseg_folder(dir, "model", 32);
  const std::string data = eval_dataset(dir);

  SUBCASE("a template") {
    REQUIRE(test::run_program(kProgram, "--zero-shot-model model --data data --split val --json t.json "
                                        "--prompt-template 'a photo of a {}.'", dir.file()).status == 0);
    const nlohmann::json j = read_json(dir.file("t.json"));
    const std::vector<std::string> prompts = {"a photo of a road.", "a photo of a parked car.", "a photo of a sky top."};
    CHECK(j["zero_shot"]["prompts"].get<std::vector<std::string>>() == prompts);
    check_figures(j, in_process(model, data, prompts).metrics);
  }
  SUBCASE("a prompts file replaces single classes, by id or by name") {
    write(dir.file("prompts.json"), R"({"1": "a car", "sky top": "the sky"})");
    REQUIRE(test::run_program(kProgram, "--zero-shot-model model --data data --split val --json p.json "
                                        "--prompt-template 'the {}' --prompts-file prompts.json", dir.file()).status == 0);
    const std::vector<std::string> prompts = {"the road", "a car", "the sky"};
    const nlohmann::json j = read_json(dir.file("p.json"));
    CHECK(j["zero_shot"]["prompts"].get<std::vector<std::string>>() == prompts);
    check_figures(j, in_process(model, data, prompts).metrics);
  }
  SUBCASE("a threshold: pixels where no class exceeds it are misses of their true class") {
    const std::vector<std::string> prompts = {"road", "parked car", "sky top"};
    const test::ProgramRun r = test::run_program(
        kProgram, "--zero-shot-model model --data data --split val --json h.json --confusion h.svg --zero-shot-threshold 0.6",
        dir.file());
    REQUIRE_MESSAGE(r.status == 0, r.output);
    const nlohmann::json j = read_json(dir.file("h.json"));
    const InProcess want = in_process(model, data, prompts, 0.6);
    CHECK(want.unassigned > 0);  // the threshold leaves some pixels without a class ...
    CHECK(want.unassigned < 1);  // ... and not all
    check_figures(j, want.metrics);
    CHECK(std::abs(j["zero_shot"]["unassigned_fraction"].get<double>() - want.unassigned) < 1e-12);
    CHECK(j["zero_shot"]["threshold"] == 0.6);
    CHECK(read_text(dir.file("h.svg")).find("(no class)") != std::string::npos);
    // At 1 no class reaches it: every evaluated pixel is a miss.
    REQUIRE(test::run_program(kProgram, "--zero-shot-model model --data data --split val --json one.json "
                                        "--zero-shot-threshold 1", dir.file()).status == 0);
    const nlohmann::json one = read_json(dir.file("one.json"));
    CHECK(one["mean_iou"] == 0.0);
    CHECK(one["overall_accuracy"] == 0.0);
    CHECK(one["zero_shot"]["unassigned_fraction"] == 1.0);
  }
}

TEST_CASE("evaluate --zero-shot-model: bad input gets a clear error") {
  test::TempDir dir("zero_shot_eval_errors");
  eval_clipseg_folder(dir, "model", 32);
  eval_dataset(dir);
  auto fails = [&](const std::string& args, const std::string& expected) {
    const test::ProgramRun r = test::run_program(kProgram, args, dir.file());
    CHECK_MESSAGE(r.status != 0, args);
    CHECK_MESSAGE(r.output.find(expected) != std::string::npos, args << "\n" << r.output << "\nexpected: " << expected);
  };
  const std::string base = "--data data --split val ";
  fails(base + "--zero-shot-model model --model model", "both --model and --zero-shot-model");
  fails(base, "no model: give --model");
  fails(base + "--zero-shot-model model --prompt-template 'a photo'", "'a photo' contains 0 \"{}\"; expected exactly one");
  fails(base + "--zero-shot-model model --prompt-template '{} and {}'", "contains 2 \"{}\"");
  fails(base + "--model model --prompt-template 'a {}'", "--prompt-template applies to --zero-shot-model only");
  fails(base + "--zero-shot-model model --autograd", "--autograd applies to --model only");
  fails(base + "--zero-shot-model model --zero-shot-threshold 1.5", "--zero-shot-threshold");
  fails(base + "--zero-shot-model ./missing", "--zero-shot-model: './missing' is not a folder");
  write(dir.file("bad_key.json"), R"({"bus": "a bus"})");
  fails(base + "--zero-shot-model model --prompts-file bad_key.json", "key \"bus\" is not a class id or name");
  write(dir.file("bad_value.json"), R"({"0": 3})");
  fails(base + "--zero-shot-model model --prompts-file bad_value.json", "must be a non-empty string");
  fails(base + "--zero-shot-model model --prompt-template '{} {} {} {} {} {} {} {} {} {} {} {} {} {}'", "contains 14");
  fails(base + "--zero-shot-model model --prompt-template 'a very very very long photo of a nice {}'",
        "tokens; the text model takes at most 24");
  fs::remove(dir.file("model/vocab.json"));
  fails(base + "--zero-shot-model model", "vocab.json");
}
