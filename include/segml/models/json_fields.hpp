// segml/models/json_fields.hpp: typed readers for the fields of an HF config.json.
//
//   detail::JsonFields r{json_object, "path/config.json"};
//   r.integer("hidden_size", c.hidden_size);   // absent: c.hidden_size keeps its default
//
// A field that is absent leaves the target unchanged (HF's default stays). A field present with the
// wrong JSON type is a segml::Error naming the source, the field, what was expected and what was
// found ("config 'x/config.json': field 'hidden_size' must be an integer, got \"768\""). `prefix`
// names a nested object in messages ("text_config.").
// read_config_json(path) parses a config file, naming it when it is missing or not JSON.
// Does not: check ranges (each config's validate() does that).
#pragma once

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdint>
#include <fstream>
#include <string>
#include <vector>

#include "segml/core/error.hpp"

namespace segml::detail {

struct JsonFields {
  const nlohmann::json& j;
  const std::string& source;
  std::string prefix = {};

  [[noreturn]] void wrong(const char* key, const char* expected) const {
    fail("config '", source, "': field '", prefix, key, "' must be ", expected, ", got ", j[key].dump());
  }
  void integer(const char* key, int64_t& out) const {
    if (!j.contains(key)) return;
    if (!j[key].is_number_integer()) wrong(key, "an integer");
    out = j[key].get<int64_t>();
  }
  void number(const char* key, double& out) const {
    if (!j.contains(key)) return;
    if (!j[key].is_number()) wrong(key, "a number");
    out = j[key].get<double>();
  }
  void boolean(const char* key, bool& out) const {
    if (!j.contains(key)) return;
    if (!j[key].is_boolean()) wrong(key, "true or false");
    out = j[key].get<bool>();
  }
  void string(const char* key, std::string& out) const {
    if (!j.contains(key)) return;
    if (!j[key].is_string()) wrong(key, "a string");
    out = j[key].get<std::string>();
  }
  void int_list(const char* key, std::vector<int64_t>& out) const {
    if (!j.contains(key)) return;
    const auto& v = j[key];
    if (!v.is_array() || !std::all_of(v.begin(), v.end(), [](const auto& e) { return e.is_number_integer(); }))
      wrong(key, "a list of integers");
    out = v.get<std::vector<int64_t>>();
  }
};

// The JSON of a config file; an error names the file when it cannot be read or parsed.
inline nlohmann::json read_config_json(const std::string& path) {
  std::ifstream in(path);
  if (!in) fail("config '", path, "': cannot open file (missing or unreadable)");
  try {
    return nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    fail("config '", path, "': invalid JSON: ", e.what());
  }
}

}  // namespace segml::detail
