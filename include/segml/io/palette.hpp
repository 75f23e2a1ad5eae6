// segml/io/palette.hpp: the colour of each class, chosen by the class's NAME.
//
//   std::vector<Rgb> colors = class_colors(model.config.id2label);          // index = class id
//   std::vector<Rgb> colors = class_colors(names, read_class_colors(dir));  // a dataset's own palette wins
//
// Guarantees:
//  - Three published palettes are known by name: Cityscapes (its 19 evaluated classes, the colours
//    of cityscapesscripts' labels.py), ADE20K (the 150 SceneParsing classes, the palette mmseg and the
//    HF examples use) and CamVid (its 11 classes as in the SegNet tutorial, the dataset's own colours).
//  - Names are compared after normalize_class_name(): ASCII lower case, '_', '-', '/', '.' and runs
//    of white space become one space, trimmed ("Sign_Symbol" -> "sign symbol"); a name not found is
//    retried without a plural 's' / 'es' ("trees" -> "tree"). Each palette also knows the usual
//    synonyms of its names (tree / vegetation, pedestrian / person, bicyclist / rider,
//    sign symbol / traffic sign, column pole / pole, pavement / sidewalk, car / vehicle, ...).
//  - class_colors(names, dataset_palette): for each class, in order of precedence,
//      1. the dataset's palette (keys: a class id "3" or a class name, normalised),
//      2. the palette that knows most of the label set (exact names first, then synonyms; ties go to
//         Cityscapes, then ADE20K, then CamVid), by name or synonym,
//      3. the other two palettes, by name or synonym,
//      4. a fallback: golden-ratio hues at two brightness levels, skipping colours close to those
//         already used.
//    No two classes get the same colour: a class whose colour is already taken (two synonyms in one
//    label set, or a palette's repeated entries) gets the next fallback colour instead. The result
//    depends only on the names and the dataset palette: the same on every run and platform.
//  - read_class_colors(file): a dataset's palette, JSON {"class name or id": [r, g, b] or "#rrggbb"};
//    dataset_palette(dir) reads DIR/class_colors.json when present (empty otherwise). Bad files get
//    an error naming the file, the key and what was expected.
// Does not: paint anything (io/overlay.hpp does), guess colours from images.
#pragma once

#include <algorithm>
#include <array>
#include <cctype>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "segml/core/error.hpp"

namespace segml {

using Rgb = std::array<uint8_t, 3>;

// "Sign_Symbol" -> "sign symbol" (see the file comment). `separators` are the characters read as a
// space besides white space (evaluate's prompts keep '/' and '.': separators "_-").
inline std::string normalize_class_name(const std::string& name, std::string_view separators = "_-/.") {
  std::string out;
  for (unsigned char c : name) {
    const bool space = separators.find(static_cast<char>(c)) != std::string_view::npos || std::isspace(c);
    if (space) {
      if (!out.empty() && out.back() != ' ') out += ' ';
    } else {
      out += static_cast<char>(std::tolower(c));
    }
  }
  while (!out.empty() && out.back() == ' ') out.pop_back();
  return out;
}

namespace palette {

// One class of a published palette: its colour, then "name|synonym|synonym" (normalised names).
struct Entry {
  Rgb color;
  const char* names;
};

// Cityscapes' 19 evaluated classes (train ids 0..18), colours of cityscapesscripts' labels.py.
inline const std::vector<Entry>& cityscapes() {
  static const std::vector<Entry> e = {
      {{128, 64, 128}, "road|street|roadway|lane|drivable area"},
      {{244, 35, 232}, "sidewalk|pavement|footpath|walkway|side walk"},
      {{70, 70, 70}, "building|house|construction"},
      {{102, 102, 156}, "wall"},
      {{190, 153, 153}, "fence|guard rail|railing"},
      {{153, 153, 153}, "pole|column pole|columnpole|lamp post|pole group"},
      {{250, 170, 30}, "traffic light|traffic signal|stoplight"},
      {{220, 220, 0}, "traffic sign|sign|sign symbol|signsymbol|road sign|signboard"},
      {{107, 142, 35}, "vegetation|tree|nature|bush|plant"},
      {{152, 251, 152}, "terrain|grass|soil"},
      {{70, 130, 180}, "sky"},
      {{220, 20, 60}, "person|pedestrian|people|human|persons"},
      {{255, 0, 0}, "rider|bicyclist|cyclist|motorcyclist"},
      {{0, 0, 142}, "car|vehicle|automobile|cars"},
      {{0, 0, 70}, "truck|lorry"},
      {{0, 60, 100}, "bus"},
      {{0, 80, 100}, "train|tram|on rails"},
      {{0, 0, 230}, "motorcycle|motorbike"},
      {{119, 11, 32}, "bicycle|bike"},
  };
  return e;
}

// CamVid's 11 classes (SegNet tutorial), the dataset's own colours.
inline const std::vector<Entry>& camvid() {
  static const std::vector<Entry> e = {
      {{128, 128, 128}, "sky"},
      {{128, 0, 0}, "building|house"},
      {{192, 192, 128}, "pole|column pole|columnpole"},
      {{128, 64, 128}, "road|street"},
      {{0, 0, 192}, "sidewalk|pavement|side walk"},
      {{128, 128, 0}, "tree|vegetation"},
      {{192, 128, 128}, "sign symbol|signsymbol|sign|traffic sign"},
      {{64, 64, 128}, "fence"},
      {{64, 0, 128}, "car|vehicle"},
      {{64, 64, 0}, "pedestrian|person|people"},
      {{0, 128, 192}, "bicyclist|cyclist|rider"},
  };
  return e;
}

// ADE20K SceneParsing's 150 classes (ids 0..149 of the reduced labels), mmseg's palette.
inline const std::vector<Entry>& ade20k() {
  static const std::vector<Entry> e = {
      {{120, 120, 120}, "wall"}, {{180, 120, 120}, "building|edifice"}, {{6, 230, 230}, "sky"},
      {{80, 50, 50}, "floor|flooring"}, {{4, 200, 3}, "tree|vegetation"}, {{120, 120, 80}, "ceiling"},
      {{140, 140, 140}, "road|route|street"}, {{204, 5, 255}, "bed"}, {{230, 230, 230}, "windowpane|window"},
      {{4, 250, 7}, "grass"}, {{224, 5, 255}, "cabinet"}, {{235, 255, 7}, "sidewalk|pavement"},
      {{150, 5, 61}, "person|pedestrian|people|human|individual"}, {{120, 120, 70}, "earth|ground"},
      {{8, 255, 51}, "door|double door"}, {{255, 6, 82}, "table"}, {{143, 255, 140}, "mountain|mount"},
      {{204, 255, 4}, "plant|flora|plant life"}, {{255, 51, 7}, "curtain|drape|drapery"}, {{204, 70, 3}, "chair"},
      {{0, 102, 200}, "car|vehicle|automobile|auto"}, {{61, 230, 250}, "water"}, {{255, 6, 51}, "painting|picture"},
      {{11, 102, 255}, "sofa|couch"}, {{255, 7, 71}, "shelf"}, {{255, 9, 224}, "house"}, {{9, 7, 230}, "sea"},
      {{220, 220, 220}, "mirror"}, {{255, 9, 92}, "rug|carpet"}, {{112, 9, 255}, "field"},
      {{8, 255, 214}, "armchair"}, {{7, 255, 224}, "seat"}, {{255, 184, 6}, "fence|fencing"},
      {{10, 255, 71}, "desk"}, {{255, 41, 10}, "rock|stone"}, {{7, 255, 255}, "wardrobe|closet|press"},
      {{224, 255, 8}, "lamp"}, {{102, 8, 255}, "bathtub|tub"}, {{255, 61, 6}, "railing|rail"},
      {{255, 194, 7}, "cushion"}, {{255, 122, 8}, "base|pedestal|stand"}, {{0, 255, 20}, "box"},
      {{255, 8, 41}, "column|pillar"}, {{255, 5, 153}, "signboard|sign|traffic sign|sign symbol"},
      {{6, 51, 255}, "chest of drawers|chest|bureau|dresser"}, {{235, 12, 255}, "counter"},
      {{160, 150, 20}, "sand"}, {{0, 163, 255}, "sink"}, {{140, 140, 140}, "skyscraper"},
      {{250, 10, 15}, "fireplace|hearth"}, {{20, 255, 0}, "refrigerator|icebox"},
      {{31, 255, 0}, "grandstand|covered stand"}, {{255, 31, 0}, "path"}, {{255, 224, 0}, "stairs|steps"},
      {{153, 255, 0}, "runway"}, {{0, 0, 255}, "case|display case|showcase|vitrine"},
      {{255, 71, 0}, "pool table|billiard table|snooker table"}, {{0, 235, 255}, "pillow"},
      {{0, 173, 255}, "screen door"}, {{31, 0, 255}, "stairway|staircase"}, {{11, 200, 200}, "river"},
      {{255, 82, 0}, "bridge"}, {{0, 255, 245}, "bookcase"}, {{0, 61, 255}, "blind|screen blind"},
      {{0, 255, 112}, "coffee table|cocktail table"}, {{0, 255, 133}, "toilet"}, {{255, 0, 0}, "flower"},
      {{255, 163, 0}, "book"}, {{255, 102, 0}, "hill"}, {{194, 255, 0}, "bench"}, {{0, 143, 255}, "countertop"},
      {{51, 255, 0}, "stove|kitchen stove|range"}, {{0, 82, 255}, "palm|palm tree"},
      {{0, 255, 41}, "kitchen island"}, {{0, 255, 173}, "computer"}, {{10, 0, 255}, "swivel chair"},
      {{173, 255, 0}, "boat"}, {{0, 255, 153}, "bar"}, {{255, 92, 0}, "arcade machine"},
      {{255, 0, 255}, "hovel|hut|shack|shanty"}, {{255, 0, 245}, "bus"}, {{255, 0, 102}, "towel"},
      {{255, 173, 0}, "light|light source"}, {{255, 0, 20}, "truck|motortruck|lorry"}, {{255, 184, 184}, "tower"},
      {{0, 31, 255}, "chandelier"}, {{0, 255, 61}, "awning|sunshade|sunblind"},
      {{0, 71, 255}, "streetlight|street lamp|street light"}, {{255, 0, 204}, "booth|cubicle|stall|kiosk"},
      {{0, 255, 194}, "television receiver|television|tv|tv set"}, {{0, 255, 82}, "airplane|aeroplane|plane"},
      {{0, 10, 255}, "dirt track"}, {{0, 112, 255}, "apparel|clothes|wearing apparel"},
      {{51, 0, 255}, "pole|column pole"}, {{0, 194, 255}, "land|soil"}, {{0, 122, 255}, "bannister|banister|handrail"},
      {{0, 255, 163}, "escalator"}, {{255, 153, 0}, "ottoman|pouf|hassock"}, {{0, 255, 10}, "bottle"},
      {{255, 112, 0}, "buffet|sideboard"}, {{143, 255, 0}, "poster|placard|bill"}, {{82, 0, 255}, "stage"},
      {{163, 255, 0}, "van"}, {{255, 235, 0}, "ship"}, {{8, 184, 170}, "fountain"},
      {{133, 0, 255}, "conveyer belt|conveyor belt"}, {{0, 255, 92}, "canopy"},
      {{184, 0, 255}, "washer|washing machine"}, {{255, 0, 31}, "plaything|toy"},
      {{0, 184, 255}, "swimming pool|pool"}, {{0, 214, 255}, "stool"}, {{255, 0, 112}, "barrel|cask"},
      {{92, 255, 0}, "basket|handbasket"}, {{0, 224, 255}, "waterfall|falls"}, {{112, 224, 255}, "tent"},
      {{70, 184, 160}, "bag"}, {{163, 0, 255}, "minibike|motorbike|motorcycle"}, {{153, 0, 255}, "cradle"},
      {{71, 255, 0}, "oven"}, {{255, 0, 163}, "ball"}, {{255, 204, 0}, "food|solid food"},
      {{255, 0, 143}, "step|stair"}, {{0, 255, 235}, "tank|storage tank"}, {{133, 255, 0}, "trade name|brand name|brand"},
      {{255, 0, 235}, "microwave|microwave oven"}, {{245, 0, 255}, "pot|flowerpot"},
      {{255, 0, 122}, "animal|animate being|beast"}, {{255, 245, 0}, "bicycle|bike"}, {{10, 190, 212}, "lake"},
      {{214, 255, 0}, "dishwasher|dish washer"}, {{0, 204, 255}, "screen|silver screen|projection screen"},
      {{20, 0, 255}, "blanket|cover"}, {{255, 255, 0}, "sculpture"}, {{0, 153, 255}, "hood|exhaust hood"},
      {{0, 41, 255}, "sconce"}, {{0, 255, 204}, "vase"}, {{41, 0, 255}, "traffic light|traffic signal|stoplight"},
      {{41, 255, 0}, "tray"}, {{173, 0, 255}, "ashcan|trash can|garbage can|wastebin|dustbin"},
      {{0, 245, 255}, "fan"}, {{71, 0, 255}, "pier|wharf|dock"}, {{122, 0, 255}, "crt screen"},
      {{0, 255, 184}, "plate"}, {{0, 92, 255}, "monitor|monitoring device"},
      {{184, 255, 0}, "bulletin board|notice board"}, {{0, 133, 255}, "shower"}, {{255, 214, 0}, "radiator"},
      {{25, 194, 194}, "glass|drinking glass"}, {{102, 255, 0}, "clock"}, {{92, 0, 255}, "flag"},
  };
  return e;
}

// A palette's names split once: first name (the dataset's own) and synonyms.
struct Named {
  std::string name;
  std::vector<std::string> synonyms;
  Rgb color;
};
inline std::vector<Named> split(const std::vector<Entry>& entries) {
  std::vector<Named> out;
  for (const Entry& e : entries) {
    Named n{{}, {}, e.color};
    std::string s = e.names;
    size_t start = 0;
    while (true) {
      const size_t bar = s.find('|', start);
      const std::string part = s.substr(start, bar == std::string::npos ? std::string::npos : bar - start);
      if (n.name.empty()) n.name = part;
      else n.synonyms.push_back(part);
      if (bar == std::string::npos) break;
      start = bar + 1;
    }
    out.push_back(std::move(n));
  }
  return out;
}

struct Known {
  const char* title;
  std::vector<Named> classes;
};
// In tie-breaking order: Cityscapes, ADE20K, CamVid.
inline const std::vector<Known>& known() {
  static const std::vector<Known> k = {
      {"Cityscapes", split(cityscapes())}, {"ADE20K", split(ade20k())}, {"CamVid", split(camvid())}};
  return k;
}

// `name` (normalised) and its singular forms: "trees" -> {"trees", "tree"}, "buses" -> {.., "buse", "bus"}.
inline std::vector<std::string> spellings(const std::string& name) {
  std::vector<std::string> s{name};
  if (name.size() > 3 && name.back() == 's' && name[name.size() - 2] != 's') s.push_back(name.substr(0, name.size() - 1));
  if (name.size() > 4 && name.compare(name.size() - 2, 2, "es") == 0) s.push_back(name.substr(0, name.size() - 2));
  return s;
}

// 2 = the palette's own name, 1 = a synonym, 0 = unknown; `color` is set when found.
inline int find(const Known& p, const std::string& normalized, Rgb* color) {
  for (int pass = 2; pass >= 1; --pass)
    for (const std::string& s : spellings(normalized))
      for (const Named& c : p.classes) {
        const bool hit = pass == 2 ? s == c.name : std::find(c.synonyms.begin(), c.synonyms.end(), s) != c.synonyms.end();
        if (hit) {
          if (color) *color = c.color;
          return pass;
        }
      }
  return 0;
}

inline Rgb hsv(double h, double s, double v) {
  const double c = v * s, hp = h * 6.0, x = c * (1.0 - std::abs(std::fmod(hp, 2.0) - 1.0)), m = v - c;
  double r = 0, g = 0, b = 0;
  if (hp < 1) r = c, g = x;
  else if (hp < 2) r = x, g = c;
  else if (hp < 3) g = c, b = x;
  else if (hp < 4) g = x, b = c;
  else if (hp < 5) r = x, b = c;
  else r = c, b = x;
  auto q = [&](double u) { return static_cast<uint8_t>(std::lround(255.0 * (u + m))); };
  return {q(r), q(g), q(b)};
}

inline int distance2(const Rgb& a, const Rgb& b) {
  int d = 0;
  for (size_t k = 0; k < 3; ++k) d += (int(a[k]) - int(b[k])) * (int(a[k]) - int(b[k]));
  return d;
}

// The k-th fallback candidate: hue k * golden ratio, alternating bright / darker, never grey.
inline Rgb fallback_candidate(uint64_t k) {
  const double golden = 0.6180339887498949;
  const double h = std::fmod(0.11 + static_cast<double>(k) * golden, 1.0);
  const double v = (k % 2 == 0) ? 0.95 : 0.70;
  const double s = (k / 2) % 2 == 0 ? 0.75 : 0.55;
  return hsv(h, s, v);
}

// The index in known() of the palette that knows most of `normalized` names: exact names count
// first, synonyms break ties, then the order of known().
inline size_t best_known(const std::vector<std::string>& normalized) {
  const auto& k = known();
  size_t best = 0;
  std::pair<int, int> best_score{-1, -1};
  for (size_t p = 0; p < k.size(); ++p) {
    std::pair<int, int> score{0, 0};
    for (const std::string& n : normalized) {
      const int f = find(k[p], n, nullptr);
      score.first += f == 2, score.second += f >= 1;
    }
    if (score > best_score) best_score = score, best = p;
  }
  return best;
}

}  // namespace palette

// A dataset's own colours: class name (normalised) or decimal id -> colour.
using DatasetPalette = std::map<std::string, Rgb>;

// "#rrggbb" or [r, g, b] (0..255), or an error naming `where`.
inline Rgb parse_color(const nlohmann::json& v, const std::string& where) {
  if (v.is_string()) {
    const std::string s = v.get<std::string>();
    const bool ok = s.size() == 7 && s[0] == '#' &&
                    std::all_of(s.begin() + 1, s.end(), [](unsigned char c) { return std::isxdigit(c) != 0; });
    SEGML_CHECK(ok, where, ": colour \"", s, "\" is not \"#rrggbb\"");
    const unsigned long x = std::stoul(s.substr(1), nullptr, 16);
    return {static_cast<uint8_t>(x >> 16), static_cast<uint8_t>((x >> 8) & 0xff), static_cast<uint8_t>(x & 0xff)};
  }
  SEGML_CHECK(v.is_array() && v.size() == 3, where, ": expected [r, g, b] or \"#rrggbb\", got ", v.dump());
  Rgb c{};
  for (size_t k = 0; k < 3; ++k) {
    SEGML_CHECK(v[k].is_number_integer() && v[k].get<int64_t>() >= 0 && v[k].get<int64_t>() <= 255, where,
                ": colour components must be whole numbers in [0, 255], got ", v.dump());
    c[k] = static_cast<uint8_t>(v[k].get<int64_t>());
  }
  return c;
}

// A palette JSON file {"class name or id": [r, g, b] or "#rrggbb", ...} (at most 1 MiB, 65536 keys).
inline DatasetPalette read_class_colors(const std::filesystem::path& path) {
  std::error_code ec;
  const auto bytes = std::filesystem::file_size(path, ec);
  SEGML_CHECK(!ec, "class colours ", path.string(), ": cannot read (", ec.message(), ")");
  SEGML_CHECK(bytes <= (1u << 20), "class colours ", path.string(), ": ", bytes, " bytes; at most 1 MiB expected");
  std::ifstream in(path);
  SEGML_CHECK(in.good(), "class colours ", path.string(), ": cannot open");
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    fail("class colours ", path.string(), ": invalid JSON (", e.what(), ")");
  }
  SEGML_CHECK(j.is_object() && j.size() <= 65536, "class colours ", path.string(),
              ": expected an object {\"class name or id\": [r, g, b] or \"#rrggbb\"}");
  DatasetPalette p;
  for (const auto& [key, value] : j.items())
    p[normalize_class_name(key)] = parse_color(value, "class colours " + path.string() + ", key \"" + key + "\"");
  return p;
}

// DIR/class_colors.json when the dataset ships one, else an empty palette.
inline DatasetPalette dataset_palette(const std::filesystem::path& dir) {
  const std::filesystem::path file = dir / "class_colors.json";
  return std::filesystem::exists(file) ? read_class_colors(file) : DatasetPalette{};
}

// The colour of each class of `names` (index = id); see the file comment for the rules.
inline std::vector<Rgb> class_colors(const std::vector<std::string>& names, const DatasetPalette& dataset = {}) {
  std::vector<std::string> norm;
  for (const std::string& n : names) norm.push_back(normalize_class_name(n));
  const auto& known = palette::known();
  const size_t best = palette::best_known(norm);
  std::vector<Rgb> out(names.size());
  std::vector<bool> done(names.size(), false);
  std::vector<Rgb> used;
  std::set<uint32_t> taken;
  auto take = [&](size_t i, const Rgb& c) {
    if (!taken.insert(uint32_t(c[0]) << 16 | uint32_t(c[1]) << 8 | c[2]).second) return;  // never two classes alike
    out[i] = c, done[i] = true, used.push_back(c);
  };
  for (size_t i = 0; i < names.size(); ++i) {  // 1. the dataset's own palette
    auto it = dataset.find(std::to_string(i));
    if (it == dataset.end()) it = dataset.find(norm[i]);
    if (it != dataset.end()) take(i, it->second);
  }
  std::vector<size_t> order{best};
  for (size_t p = 0; p < known.size(); ++p)
    if (p != best) order.push_back(p);
  for (size_t p : order)  // 2. and 3. the published palettes by name, the best-matching first
    for (size_t i = 0; i < names.size(); ++i) {
      Rgb c{};
      if (!done[i] && !norm[i].empty() && palette::find(known[p], norm[i], &c) > 0) take(i, c);
    }
  uint64_t k = 0;  // 4. distinct fallback colours
  for (size_t i = 0; i < names.size(); ++i) {
    for (; !done[i] && k < 4096 && used.size() < 1024; ++k) {  // far from every colour in use
      const Rgb c = palette::fallback_candidate(k);
      bool close = false;
      for (size_t u = 0; u < used.size() && !close; ++u) close = palette::distance2(c, used[u]) < 50 * 50;
      if (!close) take(i, c);
    }
    // Very many classes: any colour not yet in use, stepping through the RGB cube.
    for (uint32_t v = static_cast<uint32_t>(i) * 0x9e3779u; !done[i]; v += 0x9e3779u)
      take(i, Rgb{static_cast<uint8_t>(v >> 16), static_cast<uint8_t>(v >> 8), static_cast<uint8_t>(v)});
  }
  return out;
}

// The same for a model's id2label (config.json): ids 0..max id; an id without a name gets a fallback colour.
inline std::vector<Rgb> class_colors(const std::map<int64_t, std::string>& id2label, const DatasetPalette& dataset = {}) {
  if (id2label.empty()) return {};
  const int64_t last = id2label.rbegin()->first;
  SEGML_CHECK(id2label.begin()->first >= 0 && last < (int64_t{1} << 24), "class_colors: class ids must be in [0, 2^24), got ",
              id2label.begin()->first, "..", last);
  std::vector<std::string> names(static_cast<size_t>(last + 1));
  for (const auto& [id, name] : id2label) names[static_cast<size_t>(id)] = name;
  return class_colors(names, dataset);
}

// Which published palette class_colors() prefers for `names`: "Cityscapes", "ADE20K" or "CamVid".
inline std::string palette_for(const std::vector<std::string>& names) {
  std::vector<std::string> norm;
  for (const std::string& n : names) norm.push_back(normalize_class_name(n));
  return palette::known()[palette::best_known(norm)].title;
}

}  // namespace segml
