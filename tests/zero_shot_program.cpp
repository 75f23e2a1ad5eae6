// examples/zero_shot run as a program on HF-layout CLIPSeg folders with reduced configs: the
// contract of its flags (--output overlay with legend, --mask label map, --logits raw decoder logits
// (num_prompts, H, W) at the processor's resolution, per-prompt heat maps, the latency split), the
// same numbers as the library computes in-process, folders of images, a non-square processor size,
// and clear errors. Built with the examples (SEGML_ZERO_SHOT_PROGRAM is the program's path).
#include <doctest/doctest.h>

#include <fstream>
#include <set>
#include <string>

#include <segml/io/image.hpp>
#include <segml/models/clip/tokenization_clip.hpp>
#include <segml/models/clipseg/clipseg_inference.hpp>
#include <segml/models/clipseg/pretrained_clipseg.hpp>
#include <segml/models/clipseg/processing_clipseg.hpp>

#include "clipseg_support.hpp"
#include "support.hpp"

using namespace segml;
namespace fs = std::filesystem;

namespace {

const std::string kProgram = SEGML_ZERO_SHOT_PROGRAM;

std::string tiny_folder(const test::TempDir& dir, const std::string& name, int64_t height, int64_t width) {
  test::TinyClipseg o;
  o.height = height;
  o.width = width;
  return test::write_tiny_clipseg_folder(dir.file(name), o);
}

// A 100 x 70 RGB test picture: a gradient with a bright block.
std::string test_image(const test::TempDir& dir, const std::string& name, int64_t h = 70, int64_t w = 100) {
  Image img(h, w, 3);
  for (int64_t y = 0; y < h; ++y)
    for (int64_t x = 0; x < w; ++x)
      for (int64_t k = 0; k < 3; ++k) {
        const bool block = x > w / 3 && x < 2 * w / 3 && y > h / 4;
        img.data[size_t((y * w + x) * 3 + k)] = static_cast<uint8_t>(block ? 230 - 40 * k : (x * 2 + y * (k + 1)) % 256);
      }
  const std::string path = dir.file(name);
  save_png(path, img);
  return path;
}

// What the library computes in-process for `prompts` on `image`: the engine's logits.
Tensor<float> library_logits(const std::string& folder, const std::string& image, const std::vector<std::string>& prompts) {
  CLIPSegInference<float> engine(clipseg_from_pretrained<float>(folder));
  const CLIPTokenizer tok = CLIPTokenizer::from_pretrained(folder);
  std::vector<std::vector<int64_t>> ids;
  for (const auto& p : prompts) ids.push_back(tok.encode(p));
  return engine.run(clipseg_image_processor(folder).preprocess(to_rgb(load_image(image))), ids);
}

}  // namespace

TEST_CASE("zero_shot: the output contract on one image (overlay, mask, logits, heat maps, latency split)") {
  test::TempDir dir("zero_shot");
  const std::string model = tiny_folder(dir, "model", 64, 64);
  const std::string image = test_image(dir, "street.png");
  const test::ProgramRun r = test::run_program(
      kProgram,
      "--model model --image street.png --prompts 'road;a car;car road' --output out/overlay.png --mask out/mask.png "
      "--logits out/logits.safetensors --heatmaps out/heat",
      dir.file());
  INFO(r.output);
  REQUIRE(r.status == 0);
  for (const char* phase : {"preprocess", "vision tower", "text", "decoder", "post-process"})
    CHECK_MESSAGE(r.output.find(phase) != std::string::npos, phase);

  // --logits: tensor `logits` (num_prompts, H, W) at the processor's resolution, equal to the library's.
  safetensors::File f(dir.file("out/logits.safetensors"));
  const Tensor<float> logits = f.get<float>("logits");
  CHECK(logits.shape() == Shape{3, 64, 64});
  const Tensor<float> want = library_logits(model, image, {"road", "a car", "car road"});
  CHECK(test::max_abs_diff(logits, want) < 1e-5);

  // --mask: the label map at the image's size, 0 = nothing, k = prompt k; as post_process_zero_shot.
  const Image mask = load_label_map(dir.file("out/mask.png"));
  REQUIRE(mask.height == 70);
  REQUIRE(mask.width == 100);
  REQUIRE(mask.channels == 1);
  const LabelMap labels = post_process_zero_shot(logits, 0.1, 70, 100);
  CHECK(mask.data == labels.narrow.data);
  std::set<int> seen(mask.data.begin(), mask.data.end());
  CHECK(*seen.rbegin() <= 3);
  CHECK(seen.size() >= 2);  // the scaled head makes several prompts win somewhere

  // --output: the image with a legend panel on its right; one heat map per prompt.
  const Image overlay = load_image(dir.file("out/overlay.png"));
  CHECK(overlay.height >= 70);
  CHECK(overlay.width > 100);
  for (const char* heat : {"street_1_road.png", "street_2_a-car.png", "street_3_car-road.png"}) {
    const std::string p = dir.file("out/heat/") + heat;
    REQUIRE_MESSAGE(fs::exists(p), p);
    CHECK(load_image(p).width == 100);
  }

  // --threshold: at 1 nothing reaches it (sigmoid < 1); at 0 every pixel goes to some prompt.
  REQUIRE(test::run_program(kProgram, "--model model --image street.png --prompts 'road;a car' --threshold 1 --mask m1.png --no-heatmaps",
                            dir.file()).status == 0);
  const Image m1 = load_label_map(dir.file("m1.png"));
  CHECK(std::all_of(m1.data.begin(), m1.data.end(), [](uint8_t v) { return v == 0; }));
  CHECK(!fs::exists(dir.file("overlay-heatmaps")));
}

TEST_CASE("zero_shot: a folder of images, and a non-square processor size (beyond HF)") {
  test::TempDir dir("zero_shot_folder");
  const std::string model = tiny_folder(dir, "model", 48, 80);
  fs::create_directories(dir.file("images"));
  test_image(dir, "images/a.png");
  test_image(dir, "images/b.png", 90, 60);
  const test::ProgramRun r = test::run_program(
      kProgram, "--model model --image images --prompts 'road;car' --output overlays --mask masks --logits logits", dir.file());
  INFO(r.output);
  REQUIRE(r.status == 0);
  for (const char* stem : {"a", "b"}) {
    CHECK(fs::exists(dir.file(std::string("overlays/") + stem + ".png")));
    CHECK(fs::exists(dir.file(std::string("masks/") + stem + ".png")));
    const Tensor<float> l = safetensors::File(dir.file(std::string("logits/") + stem + ".safetensors")).get<float>("logits");
    CHECK(l.shape() == Shape{2, 48, 80});
  }
  CHECK(load_label_map(dir.file("masks/b.png")).height == 90);
  CHECK(fs::exists(dir.file("overlays/heatmaps/b_2_car.png")));
}

TEST_CASE("zero_shot: bad input gets a clear error") {
  test::TempDir dir("zero_shot_errors");
  tiny_folder(dir, "model", 64, 64);
  test_image(dir, "street.png");
  auto fails = [&](const std::string& args, const std::string& expected) {
    const test::ProgramRun r = test::run_program(kProgram, args, dir.file());
    CHECK_MESSAGE(r.status != 0, args);
    CHECK_MESSAGE(r.output.find(expected) != std::string::npos, args << "\n" << r.output << "\nexpected: " << expected);
  };
  fails("--model model --image street.png --prompts 'road;;car'", "prompt 2 is empty");
  fails("--model model --image street.png --prompts 'road' --threshold 1.5", "--threshold");
  fails("--model model --image street.png --prompts 'road' --threads 0", "--threads");
  fails("--model model --image missing.png --prompts 'road'", "missing.png");
  fails("--model model --image street.png --prompts 'road road road road road road road road road road road road road "
        "road road road'",
        "tokens; the text model takes at most 16");
  fs::remove(dir.file("model/vocab.json"));
  fails("--model model --image street.png --prompts 'road'", "vocab.json");
}
