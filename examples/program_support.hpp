// examples/program_support.hpp: small helpers the example programs share (not part of the library).
//   ms_since(t0)          milliseconds since a steady_clock time point
//   median(v)             the median of a non-empty list (mean of the two middle values when even)
//   images_in(folder)     the image files of a folder (by extension), sorted; an error if there are none
#pragma once

#include <algorithm>
#include <cctype>
#include <chrono>
#include <filesystem>
#include <string>
#include <vector>

#include <segml/core/error.hpp>

namespace segml::program {

using Clock = std::chrono::steady_clock;

inline double ms_since(Clock::time_point t0) { return std::chrono::duration<double, std::milli>(Clock::now() - t0).count(); }

inline double median(std::vector<double> v) {
  SEGML_CHECK(!v.empty(), "median of no values");
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

inline bool is_image_file(const std::filesystem::path& p) {
  std::string ext = p.extension().string();
  std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  for (const char* e : {".png", ".jpg", ".jpeg", ".bmp", ".tga", ".ppm", ".pgm", ".gif"})
    if (ext == e) return true;
  return false;
}

// The image files directly in `folder`, sorted by name. `program` names the caller in the error.
inline std::vector<std::filesystem::path> images_in(const std::string& folder, const char* program) {
  std::vector<std::filesystem::path> images;
  for (const auto& e : std::filesystem::directory_iterator(folder))
    if (e.is_regular_file() && is_image_file(e.path())) images.push_back(e.path());
  std::sort(images.begin(), images.end());
  if (images.empty()) fail(program, ": no images in folder '", folder, "'");
  return images;
}

}  // namespace segml::program
