// segml/data/dataset.hpp: SegmentationDataset, a folder of images with per-pixel class-id labels.
//
// Two layouts are read (DIR/id2label.json, {"0": "road", "1": ...}, is required by both):
//  - split layout: DIR/{split}/images/*.{jpg,jpeg,png} + DIR/{split}/labels/<same stem>.png
//    (e.g. CamVid as prepared in ../shared/data/camvid, or write_synthetic_dataset's output);
//  - flat layout: DIR/images + DIR/labels, split into train/val/test by a seeded shuffle of the
//    sorted file list (fractions DatasetOptions::{train,val}_fraction, test gets the rest).
// Labels are single-channel 8-bit PNGs of class ids; 255 = ignore.
//
// Guarantees: the file list, the flat-layout split and subset(n) depend only on the folder contents
// and DatasetOptions::seed. open() checks that every image has a label and (check_sizes) that the
// headers of both are readable and agree on the size, so a bad dataset fails before training;
// load() re-checks and also reports corrupt pixel data and (validate_labels) out-of-range ids.
// Images above the pixel limit (max_image_pixels(), io/image.hpp) are refused from their header, by
// open() (check_sizes) and by load(), before anything is decoded.
// Every error is a segml::Error naming the file. An optional class map (JSON, see ClassMap) remaps
// ids on load. Does not: cache decoded images, augment, resize or normalise (train/ does that).
#pragma once

#include <algorithm>
#include <array>
#include <cctype>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "segml/core/error.hpp"
#include "segml/core/random.hpp"
#include "segml/io/image.hpp"

namespace segml {

struct DatasetOptions {
  double train_fraction = 0.8;  // flat layout only; test gets 1 - train - val
  double val_fraction = 0.1;
  uint64_t seed = 0;                // flat-layout split and subset() order
  std::filesystem::path class_map;  // optional class-map JSON applied on load (see ClassMap)
  bool validate_labels = true;      // a stored id >= num_labels other than 255 is an error
  bool check_sizes = true;          // open() reads every header and compares image/label sizes
};

// One decoded example.
struct Sample {
  Image rgb;    // (height, width, 3)
  Image label;  // (height, width, 1) ids of id2label(); 255 = ignore
};

namespace detail {

// A JSON file, or an error naming it.
inline nlohmann::json read_json_file(const std::filesystem::path& path, const std::string& what) {
  std::ifstream in(path);
  SEGML_CHECK(in.good(), "cannot open ", what, " ", path.string());
  try {
    return nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    fail(what, " ", path.string(), ": invalid JSON (", e.what(), ")");
  }
}

// std::stoi that accepts only a whole decimal string; -1 otherwise.
inline int parse_id(const std::string& key) {
  if (key.empty() || key.size() > 3 ||
      !std::all_of(key.begin(), key.end(), [](unsigned char c) { return std::isdigit(c); }))
    return -1;
  return std::stoi(key);
}

// {"0": "name", ...} with keys exactly 0..n-1, n in [1, 255] -> names, index = id.
inline std::vector<std::string> id2label_from_json(const nlohmann::json& j, const std::string& where) {
  SEGML_CHECK(j.is_object() && !j.empty() && j.size() < 256, where,
              ": expected an object {\"0\": \"name\", ...} with 1 to 255 classes");
  std::vector<std::string> names(j.size());
  for (const auto& [key, value] : j.items()) {
    const int id = parse_id(key);
    SEGML_CHECK(id >= 0 && static_cast<size_t>(id) < names.size(), where, ": key \"", key,
                "\" is not a class id in 0..", names.size() - 1, " (the ids must be exactly 0..n-1)");
    SEGML_CHECK(value.is_string(), where, ": the name of class ", key, " is not a string");
    names[static_cast<size_t>(id)] = value.get<std::string>();
  }
  return names;
}

// Width and height from an image file's header (no decode).
inline std::pair<int, int> image_size(const std::filesystem::path& path) {
  int w = 0, h = 0, c = 0;
  if (!stbi_info(path.c_str(), &w, &h, &c)) {
    const char* why = stbi_failure_reason();
    fail("cannot read image header ", path.string(), " (corrupt or unsupported format): ", why ? why : "unknown");
  }
  return {w, h};
}

}  // namespace detail

// The class names of an id2label.json, index = id.
inline std::vector<std::string> read_id2label(const std::filesystem::path& path) {
  return detail::id2label_from_json(detail::read_json_file(path, "id2label"), path.string());
}

// Remaps stored class ids on load: lut[old] = new id, 255 for ids the map does not mention.
// File format, either
//   {"map": {"old_id": new_id, ...}, "id2label": {"0": "name", ...}}   (new names given), or
//   {"old_id": new_id, ...}   (each new class is named after the old classes mapped to it, "a+b").
// New ids are 0..n-1 (all used) or 255 (ignore).
struct ClassMap {
  std::array<uint8_t, 256> lut{};
  std::vector<std::string> id2label;

  static ClassMap read(const std::filesystem::path& path, const std::vector<std::string>& old_id2label) {
    const std::string where = "class map " + path.string();
    const nlohmann::json j = detail::read_json_file(path, "class map");
    SEGML_CHECK(j.is_object(), where, ": expected a JSON object");
    const bool named = j.contains("map");
    const nlohmann::json& map = named ? j["map"] : j;
    SEGML_CHECK(map.is_object() && !map.empty(), where, ": expected a non-empty object {\"old_id\": new_id, ...}");
    ClassMap cm;
    cm.lut.fill(255);
    int max_new = -1;
    for (const auto& [key, value] : map.items()) {
      const int old_id = detail::parse_id(key);
      SEGML_CHECK(old_id >= 0 && old_id < 256, where, ": key \"", key, "\" is not a class id in 0..255");
      SEGML_CHECK(value.is_number_integer() && value.get<int>() >= 0 && value.get<int>() <= 255, where, ": class ", key,
                  " maps to ", value.dump(), "; expected an integer id in 0..255");
      const int new_id = value.get<int>();
      cm.lut[static_cast<size_t>(old_id)] = static_cast<uint8_t>(new_id);
      if (new_id != 255) max_new = std::max(max_new, new_id);
    }
    if (named) {
      SEGML_CHECK(j.contains("id2label"), where, ": has \"map\" but no \"id2label\"");
      cm.id2label = detail::id2label_from_json(j["id2label"], where + " id2label");
      SEGML_CHECK(max_new < static_cast<int>(cm.id2label.size()), where, ": maps to class ", max_new,
                  " but its id2label has only ", cm.id2label.size(), " classes");
      return cm;
    }
    cm.id2label.assign(static_cast<size_t>(max_new + 1), "");
    for (size_t old_id = 0; old_id < 256; ++old_id) {
      const uint8_t n = cm.lut[old_id];
      if (n == 255) continue;
      const std::string old_name = old_id < old_id2label.size() ? old_id2label[old_id] : std::to_string(old_id);
      std::string& name = cm.id2label[n];
      name += (name.empty() ? "" : "+") + old_name;
    }
    for (size_t n = 0; n < cm.id2label.size(); ++n)
      SEGML_CHECK(!cm.id2label[n].empty(), where, ": no class maps to new id ", n, " (new ids must be 0..n-1)");
    return cm;
  }
};

class SegmentationDataset {
 public:
  // Opens split "train", "val" or "test" (any folder name in the split layout) of `dir`.
  static SegmentationDataset open(const std::filesystem::path& dir, const std::string& split,
                                  const DatasetOptions& options = {}) {
    namespace fs = std::filesystem;
    SEGML_CHECK(fs::is_directory(dir), "SegmentationDataset: no folder ", dir.string());
    SegmentationDataset ds;
    ds.split_ = split;
    ds.options_ = options;
    const fs::path id2label_path = dir / "id2label.json";
    SEGML_CHECK(fs::exists(id2label_path), "SegmentationDataset: missing ", id2label_path.string(),
                " ({\"0\": \"class name\", ...})");
    ds.stored_id2label_ = read_id2label(id2label_path);
    ds.lut_ = identity_lut();
    ds.id2label_ = ds.stored_id2label_;
    if (!options.class_map.empty()) {
      const ClassMap cm = ClassMap::read(options.class_map, ds.stored_id2label_);
      ds.lut_ = cm.lut;
      ds.id2label_ = cm.id2label;
    }

    const bool split_layout = fs::is_directory(dir / split / "images") || fs::is_directory(dir / "train" / "images") ||
                              fs::is_directory(dir / "val" / "images") || fs::is_directory(dir / "test" / "images");
    if (split_layout) {
      SEGML_CHECK(fs::is_directory(dir / split / "images"), "SegmentationDataset: no folder ",
                  (dir / split / "images").string(), " (split \"", split, "\" is missing)");
      ds.items_ = list_pairs(dir / split / "images", dir / split / "labels");
    } else {
      SEGML_CHECK(fs::is_directory(dir / "images"), "SegmentationDataset: ", dir.string(), " has neither ", split,
                  "/images (split layout) nor images/ (flat layout)");
      SEGML_CHECK(split == "train" || split == "val" || split == "test", "SegmentationDataset: split \"", split,
                  "\" of the flat layout in ", dir.string(), " must be train, val or test");
      const double ft = options.train_fraction, fv = options.val_fraction;
      SEGML_CHECK(ft >= 0 && fv >= 0 && ft + fv <= 1 + 1e-9, "SegmentationDataset: split fractions train ", ft,
                  ", val ", fv, " must be >= 0 with a sum <= 1");
      std::vector<Item> all = list_pairs(dir / "images", dir / "labels");
      const size_t n = all.size();
      const size_t n_train = std::min(n, static_cast<size_t>(std::llround(ft * static_cast<double>(n))));
      const size_t n_val = std::min(n - n_train, static_cast<size_t>(std::llround(fv * static_cast<double>(n))));
      const std::vector<size_t> order = permutation(n, options.seed);
      const size_t begin = split == "train" ? 0 : split == "val" ? n_train : n_train + n_val;
      const size_t end = split == "train" ? n_train : split == "val" ? n_train + n_val : n;
      for (size_t k = begin; k < end; ++k) ds.items_.push_back(all[order[k]]);
      std::sort(ds.items_.begin(), ds.items_.end(), [](const Item& a, const Item& b) { return a.image < b.image; });
    }
    if (options.check_sizes)
      for (const Item& it : ds.items_) {
        const auto [iw, ih] = detail::image_size(it.image);
        const auto [lw, lh] = detail::image_size(it.label);
        detail::check_pixels("SegmentationDataset", it.image.string(), iw, ih, 0);  // before any decoding
        check_same_size(it, iw, ih, lw, lh);
      }
    return ds;
  }

  size_t size() const { return items_.size(); }
  const std::string& split() const { return split_; }
  // Class names after the class map, index = id.
  const std::vector<std::string>& id2label() const { return id2label_; }
  int num_labels() const { return static_cast<int>(id2label_.size()); }
  const std::filesystem::path& path_of(size_t i) const { return item(i).image; }
  const std::filesystem::path& label_path_of(size_t i) const { return item(i).label; }

  // Decodes example i: RGB image and class ids (class map applied).
  Sample load(size_t i) const {
    const Item& it = item(i);
    Sample s{load_image(it.image.string()), load_label_map(it.label.string())};
    check_same_size(it, s.rgb.width, s.rgb.height, s.label.width, s.label.height);
    if (options_.validate_labels) {
      std::array<bool, 256> present{};
      for (uint8_t v : s.label.data) present[v] = true;
      for (size_t v = stored_id2label_.size(); v < 255; ++v)
        SEGML_CHECK(!present[v], "SegmentationDataset: label map ", it.label.string(), " contains class id ", v,
                    " but id2label.json defines ", stored_id2label_.size(), " classes (0..",
                    stored_id2label_.size() - 1, ", 255 = ignore)");
    }
    for (uint8_t& v : s.label.data) v = lut_[v];
    return s;
  }

  // The first n examples after a shuffle seeded by DatasetOptions::seed (e.g. to overfit a few).
  SegmentationDataset subset(size_t n) const {
    SEGML_CHECK(n <= items_.size(), "SegmentationDataset::subset: asked for ", n, " examples but split \"", split_,
                "\" has ", items_.size());
    SegmentationDataset ds = *this;
    const std::vector<size_t> order = permutation(items_.size(), options_.seed);
    ds.items_.clear();
    for (size_t k = 0; k < n; ++k) ds.items_.push_back(items_[order[k]]);
    return ds;
  }

 private:
  struct Item {
    std::filesystem::path image, label;
  };

  const Item& item(size_t i) const {
    SEGML_CHECK(i < items_.size(), "SegmentationDataset: index ", i, " out of range for split \"", split_, "\" of ",
                items_.size(), " examples");
    return items_[i];
  }

  static std::array<uint8_t, 256> identity_lut() {
    std::array<uint8_t, 256> lut{};
    for (size_t v = 0; v < lut.size(); ++v) lut[v] = static_cast<uint8_t>(v);
    return lut;
  }

  static void check_same_size(const Item& it, int64_t iw, int64_t ih, int64_t lw, int64_t lh) {
    SEGML_CHECK(iw == lw && ih == lh, "SegmentationDataset: label ", it.label.string(), " is ", lw, "x", lh,
                " but its image ", it.image.string(), " is ", iw, "x", ih);
  }

  // Images of `images` (sorted by name) paired with labels/<stem>.png.
  static std::vector<Item> list_pairs(const std::filesystem::path& images, const std::filesystem::path& labels) {
    namespace fs = std::filesystem;
    SEGML_CHECK(fs::is_directory(labels), "SegmentationDataset: no folder ", labels.string(), " for the images in ",
                images.string());
    std::vector<fs::path> files;
    for (const fs::directory_entry& e : fs::directory_iterator(images)) {
      if (!e.is_regular_file()) continue;
      std::string ext = e.path().extension().string();
      std::transform(ext.begin(), ext.end(), ext.begin(),
                     [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
      if (ext == ".jpg" || ext == ".jpeg" || ext == ".png") files.push_back(e.path());
    }
    SEGML_CHECK(!files.empty(), "SegmentationDataset: no images (*.jpg, *.jpeg, *.png) in ", images.string());
    std::sort(files.begin(), files.end());
    std::vector<Item> items;
    std::map<std::string, fs::path> stems;
    for (const fs::path& f : files) {
      const std::string stem = f.stem().string();
      auto [pos, fresh] = stems.emplace(stem, f);
      SEGML_CHECK(fresh, "SegmentationDataset: images ", pos->second.string(), " and ", f.string(),
                  " share the stem \"", stem, "\" and so one label file");
      const fs::path label = labels / (stem + ".png");
      SEGML_CHECK(fs::is_regular_file(label), "SegmentationDataset: image ", f.string(), " has no label (expected ",
                  label.string(), ")");
      items.push_back({f, label});
    }
    return items;
  }

  // A seeded Fisher-Yates permutation of 0..n-1 (Philox stream: same on every platform).
  static std::vector<size_t> permutation(size_t n, uint64_t seed) {
    std::vector<size_t> order(n);
    for (size_t i = 0; i < n; ++i) order[i] = i;
    const Generator gen(seed);
    for (size_t i = n; i > 1; --i) {
      const PhiloxBlock b = gen.block_at(i);
      const uint64_t r = (static_cast<uint64_t>(b.w[0]) << 32) | b.w[1];
      const auto j = static_cast<size_t>(r % i);  // uniform in [0, i) up to a bias below i / 2^64
      std::swap(order[i - 1], order[j]);
    }
    return order;
  }

  std::string split_;
  DatasetOptions options_;
  std::vector<std::string> stored_id2label_, id2label_;
  std::array<uint8_t, 256> lut_{};
  std::vector<Item> items_;
};

}  // namespace segml
