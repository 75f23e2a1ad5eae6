// Class colours by name (io/palette.hpp) and the pictures that use them (io/overlay.hpp): the
// published palettes by name and synonym, a dataset's own palette first, distinct deterministic
// fallback colours, palette files with bad content refused by name, and side_by_side().
#include <doctest/doctest.h>

#include <fstream>
#include <set>
#include <string>
#include <vector>

#include <segml/io/overlay.hpp>
#include <segml/io/palette.hpp>

#include "support.hpp"

using namespace segml;

namespace {

uint32_t key(const Rgb& c) { return uint32_t(c[0]) << 16 | uint32_t(c[1]) << 8 | c[2]; }

void check_distinct(const std::vector<Rgb>& colors) {
  std::set<uint32_t> seen;
  for (const Rgb& c : colors) seen.insert(key(c));
  CHECK(seen.size() == colors.size());
}

void write(const std::string& path, const std::string& text) { std::ofstream(path) << text; }

}  // namespace

TEST_CASE("palette: names are normalised (case, separators, runs of spaces)") {
  CHECK(normalize_class_name("Sign_Symbol") == "sign symbol");
  CHECK(normalize_class_name("  Traffic--Light ") == "traffic light");
  CHECK(normalize_class_name("column_pole") == "column pole");
  CHECK(normalize_class_name("") == "");
}

TEST_CASE("palette: Cityscapes names get the Cityscapes colours, synonyms and plurals included") {
  const std::vector<std::string> city = {"road",   "sidewalk", "building", "wall",  "fence",      "pole",  "traffic light",
                                         "traffic sign", "vegetation", "terrain", "sky", "person", "rider", "car",
                                         "truck",  "bus",      "train",    "motorcycle", "bicycle"};
  CHECK(palette_for(city) == "Cityscapes");
  const std::vector<Rgb> c = class_colors(city);
  REQUIRE(c.size() == 19);
  CHECK(c[0] == Rgb{128, 64, 128});   // road
  CHECK(c[1] == Rgb{244, 35, 232});   // sidewalk
  CHECK(c[8] == Rgb{107, 142, 35});   // vegetation
  CHECK(c[10] == Rgb{70, 130, 180});  // sky
  CHECK(c[11] == Rgb{220, 20, 60});   // person
  CHECK(c[13] == Rgb{0, 0, 142});     // car
  CHECK(c[18] == Rgb{119, 11, 32});   // bicycle
  check_distinct(c);
  // The same classes under other names: synonyms, case, separators and plurals.
  const std::vector<Rgb> s = class_colors(
      {"Road", "Pavement", "Buildings", "Vegetation", "Persons", "Riders", "Cars", "Sky", "Traffic_Light", "Terrain"});
  CHECK(s[0] == Rgb{128, 64, 128});
  CHECK(s[1] == Rgb{244, 35, 232});
  CHECK(s[2] == Rgb{70, 70, 70});
  CHECK(s[3] == Rgb{107, 142, 35});
  CHECK(s[4] == Rgb{220, 20, 60});
  CHECK(s[5] == Rgb{255, 0, 0});
  CHECK(s[6] == Rgb{0, 0, 142});
  CHECK(s[7] == Rgb{70, 130, 180});
  CHECK(s[8] == Rgb{250, 170, 30});
}

TEST_CASE("palette: CamVid's names get CamVid's own colours") {
  const std::vector<std::string> camvid = {"sky",  "building", "pole", "road",       "sidewalk", "tree",
                                           "sign_symbol", "fence", "car", "pedestrian", "bicyclist"};
  CHECK(palette_for(camvid) == "CamVid");
  const std::vector<Rgb> c = class_colors(camvid);
  CHECK(c[0] == Rgb{128, 128, 128});
  CHECK(c[1] == Rgb{128, 0, 0});
  CHECK(c[2] == Rgb{192, 192, 128});
  CHECK(c[3] == Rgb{128, 64, 128});
  CHECK(c[5] == Rgb{128, 128, 0});
  CHECK(c[6] == Rgb{192, 128, 128});
  CHECK(c[9] == Rgb{64, 64, 0});
  CHECK(c[10] == Rgb{0, 128, 192});
  check_distinct(c);
  // A CamVid-like set spelled differently still reads as CamVid: plurals, case, synonyms.
  const std::vector<Rgb> s = class_colors({"Sky", "Buildings", "Trees", "Pedestrians", "Cyclist", "Pavement", "Column_Pole"});
  CHECK(s[2] == Rgb{128, 128, 0});
  CHECK(s[3] == Rgb{64, 64, 0});
  CHECK(s[4] == Rgb{0, 128, 192});
  CHECK(s[5] == Rgb{0, 0, 192});
  CHECK(s[6] == Rgb{192, 192, 128});
}

TEST_CASE("palette: ADE20K's 150 classes get mmseg's palette, all distinct") {
  std::vector<std::string> ade;
  for (const palette::Entry& e : palette::ade20k()) {
    const std::string names = e.names;
    ade.push_back(names.substr(0, names.find('|')));
  }
  REQUIRE(ade.size() == 150);
  CHECK(palette_for(ade) == "ADE20K");
  const std::vector<Rgb> c = class_colors(ade);
  CHECK(c[0] == Rgb{120, 120, 120});   // wall
  CHECK(c[2] == Rgb{6, 230, 230});     // sky
  CHECK(c[12] == Rgb{150, 5, 61});     // person
  CHECK(c[20] == Rgb{0, 102, 200});    // car
  CHECK(c[149] == Rgb{92, 0, 255});    // flag
  // mmseg's palette repeats one colour (road and skyscraper): the second gets a fallback colour.
  check_distinct(c);
  // HF's ADE20K id2label spells some classes with synonyms: the first name still finds its colour.
  const std::vector<Rgb> hf = class_colors({"wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed ",
                                            "windowpane", "grass", "cabinet", "sidewalk", "person", "earth", "door",
                                            "table", "mountain", "plant", "curtain", "chair", "car"});
  CHECK(hf[4] == Rgb{4, 200, 3});
  CHECK(hf[7] == Rgb{204, 5, 255});
  CHECK(hf[20] == Rgb{0, 102, 200});
}

TEST_CASE("palette: a dataset's own palette wins, by class name or by id") {
  test::TempDir dir("palette_dataset");
  write(dir.file("class_colors.json"), R"({"Road": [1, 2, 3], "1": "#0a0b0c"})");
  const DatasetPalette p = dataset_palette(dir.file());
  REQUIRE(p.size() == 2);
  const std::vector<Rgb> c = class_colors({"road", "sidewalk", "sky"}, p);
  CHECK(c[0] == Rgb{1, 2, 3});
  CHECK(c[1] == Rgb{10, 11, 12});
  CHECK(c[2] == Rgb{70, 130, 180});  // not in the dataset's palette: Cityscapes
  CHECK(dataset_palette(dir.file("no-such-folder")).empty());
}

TEST_CASE("palette: a bad palette file is refused, naming the file, the key and what was expected") {
  test::TempDir dir("palette_bad");
  auto refused = [&](const std::string& text, const std::string& message) {
    write(dir.file("class_colors.json"), text);
    try {
      (void)read_class_colors(dir.file("class_colors.json"));
      FAIL("accepted " << text);
    } catch (const Error& e) {
      const std::string what = e.what();
      CHECK_MESSAGE(what.find("class_colors.json") != std::string::npos, what);
      CHECK_MESSAGE(what.find(message) != std::string::npos, what);
    }
  };
  refused(R"({"road": [1, 2]})", "key \"road\": expected [r, g, b] or \"#rrggbb\"");
  refused(R"({"road": [1, 2, 300]})", "whole numbers in [0, 255]");
  refused(R"({"road": "#12345g"})", "is not \"#rrggbb\"");
  refused(R"(["road"])", "expected an object");
  refused("{not json", "invalid JSON");
}

TEST_CASE("palette: unknown names get distinct, deterministic fallback colours, never a known class's colour") {
  std::vector<std::string> names;
  for (int i = 0; i < 60; ++i) names.push_back(std::to_string(i) + " thing");
  names.push_back("road");
  const std::vector<Rgb> a = class_colors(names), b = class_colors(names);
  CHECK(a == b);
  check_distinct(a);
  CHECK(a.back() == Rgb{128, 64, 128});
  // Two synonyms in one label set never share a colour; neither do empty names.
  const std::vector<Rgb> syn = class_colors({"tree", "vegetation", "", ""});
  check_distinct(syn);
  // Many classes (beyond what the fallback hues can keep apart) are still all distinct.
  std::vector<std::string> many;
  for (int i = 0; i < 1000; ++i) many.push_back(std::to_string(i) + "c");
  check_distinct(class_colors(many));
  // id2label with a gap: the missing id gets a colour too.
  const std::vector<Rgb> gap = class_colors(std::map<int64_t, std::string>{{0, "road"}, {2, "sky"}});
  REQUIRE(gap.size() == 3);
  CHECK(gap[2] == Rgb{70, 130, 180});
  check_distinct(gap);
}

TEST_CASE("overlay: the colours given are the ones painted, and side_by_side keeps both images") {
  const Tensor<int64_t> labels = Tensor<int64_t>::from({2, 3}, {0, 1, 2, 0, 1, 2});
  const std::vector<Rgb> colors = class_colors({"road", "sky", "car"});
  const Image painted = colorize(labels, colors);
  for (int64_t p = 0; p < 6; ++p)
    for (size_t k = 0; k < 3; ++k) CHECK(painted.data[size_t(3 * p) + k] == colors[size_t(p % 3)][k]);
  Image left(20, 30, 3, 10), right(25, 40, 3, 200);
  const Image both = side_by_side(left, "prediction", right, "ground truth");
  CHECK(both.width > left.width + right.width);
  CHECK(both.height > right.height);
  CHECK(both.data[size_t(((both.height - 1) * both.width + both.width - 1) * 3)] == 200);  // right image's corner
}
