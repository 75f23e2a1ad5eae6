// tests/test_data.cpp: the synthetic street-scene generator and SegmentationDataset.
//
// Generator: determinism per seed, class coverage and pixel shares over a batch, colour variety
// within each class. Dataset: write/read round trip of write_synthetic_dataset (reuse and
// regeneration), the seeded flat-layout split and subset(), class maps, every error case (written
// into a temporary folder), a folder written by tools/export_hf_dataset.py (tests/data/hf_export),
// and CamVid in ../shared/data/camvid when that folder exists.
#include <doctest/doctest.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <segml/data/dataset.hpp>
#include <segml/data/synthetic_scenes.hpp>
#include <segml/io/image.hpp>
#include <set>
#include <string>
#include <vector>

#include "support.hpp"

namespace fs = std::filesystem;
using doctest::Contains;

namespace {

// A fresh folder under the system temp dir, removed when the test ends.
using segml::test::TempDir;

void write_text(const fs::path& path, const std::string& text) {
  fs::create_directories(path.parent_path());
  std::ofstream(path) << text;
}

// A w x h image filled with `value` (1 or 3 channels), saved as PNG.
void write_png(const fs::path& path, int64_t w, int64_t h, int64_t channels, uint8_t value) {
  fs::create_directories(path.parent_path());
  segml::save_png(path.string(), segml::Image(h, w, channels, value));
}

// DIR/images/img_NN.png + DIR/labels/img_NN.png (n pairs, 8x6) and a 3-class id2label.json.
void write_flat_dataset(const fs::path& dir, int n) {
  write_text(dir / "id2label.json", R"({"0": "a", "1": "b", "2": "c"})");
  for (int i = 0; i < n; ++i) {
    char stem[16];
    std::snprintf(stem, sizeof stem, "img_%02d", i);
    write_png(dir / "images" / (std::string(stem) + ".png"), 8, 6, 3, static_cast<uint8_t>(i));
    write_png(dir / "labels" / (std::string(stem) + ".png"), 8, 6, 1, static_cast<uint8_t>(i % 3));
  }
}

std::vector<std::string> names(const segml::SegmentationDataset& ds) {
  std::vector<std::string> out;
  for (size_t i = 0; i < ds.size(); ++i) out.push_back(ds.path_of(i).filename().string());
  return out;
}

}  // namespace

TEST_CASE("synthetic scenes: same seed gives the same bytes, another seed another scene") {
  const segml::Scene a = segml::generate_scene(7, 160, 120);
  const segml::Scene b = segml::generate_scene(7, 160, 120);
  const segml::Scene c = segml::generate_scene(8, 160, 120);
  CHECK(a.image.height == 120);
  CHECK(a.image.width == 160);
  CHECK(a.image.channels == 3);
  CHECK(a.label.channels == 1);
  CHECK(a.image.data.size() == 120 * 160 * 3);
  CHECK(a.label.data.size() == 120 * 160);
  CHECK(a.image.data == b.image.data);
  CHECK(a.label.data == b.label.data);
  CHECK(a.image.data != c.image.data);
  CHECK(a.label.data != c.label.data);
  CHECK_THROWS_WITH_AS(segml::generate_scene(0, 8, 240), Contains("generate_scene: size"), segml::Error);
}

TEST_CASE("synthetic scenes: all classes appear, with plausible pixel shares and varied colours") {
  constexpr int kScenes = 40, kClasses = 8;
  std::array<double, kClasses> pixels{};
  std::array<int, kClasses> scenes_with{};
  std::array<std::set<uint32_t>, kClasses> colours;  // distinct RGB values per class
  double total = 0;
  for (int s = 0; s < kScenes; ++s) {
    const segml::Scene sc = segml::generate_scene(1000 + static_cast<uint64_t>(s));
    CHECK(sc.image.width == 320);
    CHECK(sc.image.height == 240);
    std::array<bool, kClasses> present{};
    bool ids_valid = true;  // no ignore pixels unless asked for
    for (size_t p = 0; p < sc.label.data.size(); ++p) {
      const uint8_t l = sc.label.data[p];
      if (l >= kClasses) {
        ids_valid = false;
        continue;
      }
      pixels[l] += 1;
      present[l] = true;
      const uint8_t* rgb = &sc.image.data[3 * p];
      colours[l].insert(uint32_t(rgb[0]) << 16 | uint32_t(rgb[1]) << 8 | rgb[2]);
    }
    CHECK(ids_valid);
    total += static_cast<double>(sc.label.data.size());
    for (int k = 0; k < kClasses; ++k) scenes_with[k] += present[k];
  }
  std::array<double, kClasses> share{};
  for (int k = 0; k < kClasses; ++k) {
    share[k] = pixels[k] / total;
    MESSAGE(segml::synthetic_id2label()[k] << ": " << share[k] * 100 << "% of pixels, in " << scenes_with[k] << "/"
                                           << kScenes << " scenes, " << colours[k].size() << " distinct colours");
    CHECK(scenes_with[k] >= kScenes / 2);
    CHECK(colours[k].size() >= 500);  // texture, lighting and noise: never one colour per class
  }
  using C = segml::SceneClass;
  auto at = [&](C c) { return share[static_cast<int>(c)]; };
  CHECK(at(C::road) > 0.25);
  CHECK(at(C::sky) > 0.05);
  CHECK(at(C::building) > 0.1);
  CHECK(at(C::sidewalk) > 0.02);
  CHECK(at(C::vegetation) > 0.02);
  CHECK(at(C::car) > 0.01);
  CHECK(at(C::car) < 0.15);
  CHECK(at(C::person) > 0.0005);
  CHECK(at(C::person) < 0.02);
  CHECK(at(C::pole) > 0.002);
  CHECK(at(C::pole) < 0.04);
  CHECK(at(C::road) > at(C::person) * 20);
  CHECK(at(C::sky) > at(C::pole));
}

TEST_CASE("synthetic scenes: ignore_boundaries marks a thin band of 255 on class boundaries") {
  segml::SceneOptions opt;
  opt.ignore_boundaries = true;
  const segml::Scene plain = segml::generate_scene(3);
  const segml::Scene marked = segml::generate_scene(3, 320, 240, opt);
  CHECK(plain.image.data == marked.image.data);
  size_t ignored = 0, changed = 0;
  for (size_t p = 0; p < marked.label.data.size(); ++p) {
    if (marked.label.data[p] == 255)
      ++ignored;
    else
      changed += marked.label.data[p] != plain.label.data[p];
  }
  CHECK(changed == 0);
  MESSAGE("ignored pixels: " << ignored);
  CHECK(ignored > 100);
  CHECK(ignored < marked.label.data.size() / 10);
}

TEST_CASE("write_synthetic_dataset: round trip through SegmentationDataset, reuse and regeneration") {
  TempDir tmp("synthetic");
  const fs::path dir = tmp.path / "scenes";
  CHECK(segml::write_synthetic_dataset(dir, 5, 3, 2, 96, 64, 11));
  CHECK(fs::exists(dir / "synthetic.json"));
  CHECK(fs::exists(dir / "test" / "labels" / "0001.png"));
  const auto stamp = fs::last_write_time(dir / "train" / "images" / "0000.jpg");
  CHECK_FALSE(segml::write_synthetic_dataset(dir, 5, 3, 2, 96, 64, 11));  // same parameters: reused
  CHECK(fs::last_write_time(dir / "train" / "images" / "0000.jpg") == stamp);

  const int sizes[3] = {5, 3, 2};
  const char* splits[3] = {"train", "val", "test"};
  for (int s = 0; s < 3; ++s) {
    const segml::SegmentationDataset ds = segml::SegmentationDataset::open(dir, splits[s]);
    REQUIRE(ds.size() == static_cast<size_t>(sizes[s]));
    CHECK(ds.id2label() == segml::synthetic_id2label());
    CHECK(ds.num_labels() == 8);
    for (size_t i = 0; i < ds.size(); ++i) {
      const segml::Sample sample = ds.load(i);
      const segml::Scene scene = segml::generate_scene(segml::synthetic_scene_seed(11, s, static_cast<int>(i)), 96, 64);
      // Photos are JPEG (quality 95): close, not identical. Labels are PNG: identical.
      REQUIRE(sample.rgb.data.size() == scene.image.data.size());
      double abs_err = 0;
      for (size_t p = 0; p < scene.image.data.size(); ++p) abs_err += std::abs(int(sample.rgb.data[p]) - int(scene.image.data[p]));
      CHECK(abs_err / static_cast<double>(scene.image.data.size()) < 4.0);
      CHECK(sample.label.data == scene.label.data);
    }
  }
  CHECK(segml::SegmentationDataset::open(dir, "train").path_of(4).filename() == "0004.jpg");

  // Other parameters: regenerated, stale files gone.
  CHECK(segml::write_synthetic_dataset(dir, 3, 1, 0, 96, 64, 11));
  CHECK(segml::SegmentationDataset::open(dir, "train").size() == 3);
  CHECK_FALSE(fs::exists(dir / "train" / "images" / "0004.jpg"));
  CHECK_THROWS_WITH_AS(segml::SegmentationDataset::open(dir, "test"), Contains("no images"), segml::Error);

  CHECK_THROWS_WITH_AS(segml::write_synthetic_dataset(tmp.path / "tiny", 1, 0, 0, 8, 8, 0),
                       Contains("write_synthetic_dataset: size"), segml::Error);
  CHECK_FALSE(fs::exists(tmp.path / "tiny"));

  // A folder we did not make is left alone.
  write_text(tmp.path / "foreign" / "notes.txt", "mine");
  CHECK_THROWS_WITH_AS(segml::write_synthetic_dataset(tmp.path / "foreign", 1, 1, 1, 32, 32, 0),
                       Contains("refusing to write"), segml::Error);
}

TEST_CASE("SegmentationDataset: the flat layout's split and subset() are seeded and deterministic") {
  TempDir tmp("flat");
  write_flat_dataset(tmp.path, 20);
  segml::DatasetOptions opt;
  opt.seed = 1;
  const auto train = segml::SegmentationDataset::open(tmp.path, "train", opt);
  const auto val = segml::SegmentationDataset::open(tmp.path, "val", opt);
  const auto test = segml::SegmentationDataset::open(tmp.path, "test", opt);
  CHECK(train.size() == 16);
  CHECK(val.size() == 2);
  CHECK(test.size() == 2);
  std::set<std::string> all;
  for (const auto* ds : {&train, &val, &test})
    for (const std::string& n : names(*ds)) all.insert(n);
  CHECK(all.size() == 20);  // disjoint and complete
  const std::vector<std::string> train_names = names(train);
  CHECK(names(segml::SegmentationDataset::open(tmp.path, "train", opt)) == train_names);
  CHECK(std::is_sorted(train_names.begin(), train_names.end()));

  segml::DatasetOptions other = opt;
  other.seed = 2;
  CHECK(names(segml::SegmentationDataset::open(tmp.path, "val", other)) != names(val));

  segml::DatasetOptions halves = opt;
  halves.train_fraction = 0.5;
  halves.val_fraction = 0.25;
  CHECK(segml::SegmentationDataset::open(tmp.path, "train", halves).size() == 10);
  CHECK(segml::SegmentationDataset::open(tmp.path, "val", halves).size() == 5);
  CHECK(segml::SegmentationDataset::open(tmp.path, "test", halves).size() == 5);
  halves.val_fraction = 0.6;
  CHECK_THROWS_WITH_AS(segml::SegmentationDataset::open(tmp.path, "train", halves), Contains("fractions"),
                       segml::Error);
  CHECK_THROWS_WITH_AS(segml::SegmentationDataset::open(tmp.path, "validation", opt), Contains("train, val or test"),
                       segml::Error);

  const auto few = train.subset(3);
  CHECK(few.size() == 3);
  CHECK(names(train.subset(3)) == names(few));
  for (const std::string& n : names(few)) CHECK(std::count(train_names.begin(), train_names.end(), n) == 1);
  CHECK(names(train.subset(16)).size() == 16);
  CHECK_THROWS_WITH_AS(train.subset(17), Contains("asked for 17"), segml::Error);

  const segml::Sample s = train.load(0);
  CHECK(s.rgb.channels == 3);
  CHECK(s.rgb.width == 8);
  CHECK(s.label.height == 6);
  CHECK_THROWS_WITH_AS(train.load(16), Contains("out of range"), segml::Error);
}

TEST_CASE("SegmentationDataset: errors name the folder or file") {
  TempDir tmp("errors");
  const fs::path d = tmp.path;
  CHECK_THROWS_WITH_AS(segml::SegmentationDataset::open(d / "nope", "train"), Contains("no folder"), segml::Error);

  fs::create_directories(d / "train" / "images");
  CHECK_THROWS_WITH_AS(segml::SegmentationDataset::open(d, "train"), Contains("id2label.json"), segml::Error);
  write_text(d / "id2label.json", R"({"0": "a", "2": "c"})");
  CHECK_THROWS_WITH_AS(segml::SegmentationDataset::open(d, "train"), Contains("key \"2\""), segml::Error);
  write_text(d / "id2label.json", R"({"0": "a", )");
  CHECK_THROWS_WITH_AS(segml::SegmentationDataset::open(d, "train"), Contains("invalid JSON"), segml::Error);
  write_text(d / "id2label.json", R"({"0": "a", "1": "b", "2": "c"})");

  CHECK_THROWS_WITH_AS(segml::SegmentationDataset::open(d, "train"), Contains("labels"), segml::Error);
  fs::create_directories(d / "train" / "labels");
  CHECK_THROWS_WITH_AS(segml::SegmentationDataset::open(d, "train"), Contains("no images"), segml::Error);
  CHECK_THROWS_WITH_AS(segml::SegmentationDataset::open(d, "test"), Contains("test/images"), segml::Error);

  write_png(d / "train" / "images" / "a.png", 8, 6, 3, 10);
  CHECK_THROWS_WITH_AS(segml::SegmentationDataset::open(d, "train"), Contains("a.png has no label"), segml::Error);

  write_png(d / "train" / "labels" / "a.png", 4, 4, 1, 0);
  CHECK_THROWS_WITH_AS(segml::SegmentationDataset::open(d, "train"), Contains("is 4x4 but its image"), segml::Error);
  segml::DatasetOptions lazy;
  lazy.check_sizes = false;
  const auto unchecked = segml::SegmentationDataset::open(d, "train", lazy);
  CHECK_THROWS_WITH_AS(unchecked.load(0), Contains("labels/a.png is 4x4"), segml::Error);

  write_png(d / "train" / "labels" / "a.png", 8, 6, 1, 9);  // id 9 of 3 classes
  const auto bad_ids = segml::SegmentationDataset::open(d, "train");
  CHECK_THROWS_WITH_AS(bad_ids.load(0), Contains("contains class id 9"), segml::Error);
  segml::DatasetOptions trusting;
  trusting.validate_labels = false;
  CHECK(segml::SegmentationDataset::open(d, "train", trusting).load(0).label.data[0] == 9);
  write_png(d / "train" / "labels" / "a.png", 8, 6, 1, 255);  // all ignore: valid
  CHECK(segml::SegmentationDataset::open(d, "train").load(0).label.data[0] == 255);

  write_text(d / "train" / "images" / "b.jpg", "this is not a JPEG");
  write_png(d / "train" / "labels" / "b.png", 8, 6, 1, 0);
  CHECK_THROWS_WITH_AS(segml::SegmentationDataset::open(d, "train"), Contains("b.jpg"), segml::Error);
  const auto corrupt = segml::SegmentationDataset::open(d, "train", lazy);
  REQUIRE(corrupt.size() == 2);
  CHECK(corrupt.path_of(1).filename() == "b.jpg");
  CHECK_THROWS_WITH_AS(corrupt.load(1), Contains("b.jpg"), segml::Error);
  fs::remove(d / "train" / "images" / "b.jpg");

  write_png(d / "train" / "images" / "a.jpeg", 8, 6, 3, 0);  // same stem as a.png
  CHECK_THROWS_WITH_AS(segml::SegmentationDataset::open(d, "train"), Contains("share the stem"), segml::Error);
  fs::remove(d / "train" / "images" / "a.jpeg");

  segml::Image rgb_label(6, 8, 3, 0);
  rgb_label.data[0] = 1;  // a colour label map
  segml::save_png((d / "train" / "labels" / "a.png").string(), rgb_label);
  CHECK_THROWS_WITH_AS(segml::SegmentationDataset::open(d, "train").load(0), Contains("labels/a.png"), segml::Error);
}

TEST_CASE("SegmentationDataset: class map remaps ids on load, unmapped ids become 255") {
  TempDir tmp("classmap");
  const fs::path d = tmp.path;
  write_text(d / "id2label.json", R"({"0": "a", "1": "b", "2": "c"})");
  write_png(d / "images" / "x.png", 4, 1, 3, 0);
  segml::Image label(1, 4, 1, 0);
  label.data = {0, 1, 2, 255};
  fs::create_directories(d / "labels");
  segml::save_png((d / "labels" / "x.png").string(), label);

  segml::DatasetOptions opt;
  opt.train_fraction = 1;
  opt.val_fraction = 0;
  opt.class_map = d / "map.json";
  write_text(opt.class_map, R"({"0": 1, "2": 0})");
  const auto ds = segml::SegmentationDataset::open(d, "train", opt);
  CHECK(ds.id2label() == std::vector<std::string>{"c", "a"});
  CHECK(ds.load(0).label.data == std::vector<uint8_t>{1, 255, 0, 255});

  write_text(opt.class_map, R"({"map": {"0": 0, "1": 0, "2": 1}, "id2label": {"0": "ab", "1": "c"}})");
  const auto named = segml::SegmentationDataset::open(d, "train", opt);
  CHECK(named.id2label() == std::vector<std::string>{"ab", "c"});
  CHECK(named.num_labels() == 2);
  CHECK(named.load(0).label.data == std::vector<uint8_t>{0, 0, 1, 255});

  write_text(opt.class_map, R"({"map": {"0": 5}, "id2label": {"0": "x"}})");
  CHECK_THROWS_WITH_AS(segml::SegmentationDataset::open(d, "train", opt), Contains("maps to class 5"), segml::Error);
  write_text(opt.class_map, R"({"0": 1})");
  CHECK_THROWS_WITH_AS(segml::SegmentationDataset::open(d, "train", opt), Contains("no class maps to new id 0"),
                       segml::Error);
  write_text(opt.class_map, R"({"zero": 1})");
  CHECK_THROWS_WITH_AS(segml::SegmentationDataset::open(d, "train", opt), Contains("map.json"), segml::Error);
}

TEST_CASE("SegmentationDataset: CamVid (../shared/data/camvid)") {
  const fs::path dir = SEGML_SHARED_DIR "/data/camvid";
  if (!fs::is_directory(dir)) {
    MESSAGE("skipped: no CamVid folder at " << dir.string());
    return;
  }
  const auto train = segml::SegmentationDataset::open(dir, "train");  // checks every header's size
  const auto val = segml::SegmentationDataset::open(dir, "val");
  CHECK(train.size() == 367);
  CHECK(val.size() == 101);
  REQUIRE(train.num_labels() == 11);
  CHECK(train.id2label()[0] == "sky");
  CHECK(train.id2label()[10] == "bicyclist");
  CHECK_THROWS_WITH_AS(segml::SegmentationDataset::open(dir, "test"), Contains("test/images"), segml::Error);

  std::array<size_t, 256> histogram{};
  for (const auto* ds : {&train, &val})
    for (size_t i = 0; i < ds->size(); i += 9) {  // every 9th pair: decoding all takes too long under ASan
      const segml::Sample s = ds->load(i);        // validates ids < 11 or 255
      CHECK(s.rgb.width == 480);
      CHECK(s.rgb.height == 360);
      CHECK(s.label.width == 480);
      CHECK(s.label.height == 360);
      for (uint8_t v : s.label.data) ++histogram[v];
    }
  for (size_t v = 0; v < 256; ++v)
    if (histogram[v]) CHECK_MESSAGE((v <= 10 || v == 255), "label value " << v);
  for (size_t v = 0; v <= 10; ++v) CHECK(histogram[v] > 0);
}

TEST_CASE("SegmentationDataset: reads a folder written by tools/export_hf_dataset.py (class map applied)") {
  // tests/data/hf_export and its expected contents come from tools/fixtures/hf_export.py: HF-style rows
  // (JPEG and PNG images, L and palette labels) exported with 6 classes collapsed to 3.
  const fs::path dir = fs::path(SEGML_FIXTURE_DIR) / ".." / "data" / "hf_export";
  const segml::test::Fixture fx("hf_export");
  const auto train = segml::SegmentationDataset::open(dir, "train");
  const auto val = segml::SegmentationDataset::open(dir, "val");
  CHECK(train.size() == 2);
  CHECK(val.size() == 1);
  CHECK(train.id2label() == std::vector<std::string>{"road+sidewalk", "person", "car+tree"});
  CHECK(train.path_of(0).filename() == "000000.jpg");
  for (const auto* ds : {&train, &val})
    for (size_t i = 0; i < ds->size(); ++i) {
      const std::string key = ds->split() + "." + std::to_string(i);
      const segml::Sample s = ds->load(i);
      const segml::Tensor<int64_t> want_label = fx.get<int64_t>(key + ".label"), want_rgb = fx.get<int64_t>(key + ".rgb");
      REQUIRE(s.label.height == want_label.size(0));
      REQUIRE(s.label.width == want_label.size(1));
      REQUIRE(s.rgb.channels == 3);
      int64_t label_diffs = 0, rgb_max_diff = 0;
      for (int64_t k = 0; k < want_label.numel(); ++k) label_diffs += s.label.data[size_t(k)] != want_label.data()[k];
      for (int64_t k = 0; k < want_rgb.numel(); ++k)
        rgb_max_diff = std::max<int64_t>(rgb_max_diff, std::abs(int64_t(s.rgb.data[size_t(k)]) - want_rgb.data()[k]));
      CHECK_MESSAGE(label_diffs == 0, key << ": " << label_diffs << " label pixels differ");
      // PNG decodes exactly; stb's JPEG decoder differs from libjpeg (PIL) by a few levels.
      const bool jpeg = ds->path_of(i).extension() == ".jpg";
      const std::string what = key + (jpeg ? " (JPEG)" : " (PNG)");
      MESSAGE(what << ": max abs pixel diff vs PIL " << rgb_max_diff);
      CHECK(rgb_max_diff <= (jpeg ? 8 : 0));
    }
}
