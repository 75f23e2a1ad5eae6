// examples/cli_checks.hpp: the validators of the example programs' numeric flags.
//
// Every numeric flag of every program is checked before it is used: a value that is not a number,
// not finite, or out of the flag's range is refused with CLI11's usual "--flag: ..." error, which
// here names the value given and the valid range in plain figures (never a 300-digit bound):
//
//   --lr: got 'nan', expected a finite number > 0
//   --steps: got '-5', expected a whole number >= 1
//
// Use: app.add_option("--lr", lr)->check(segml::cli::positive_real());
#pragma once

#include <CLI/CLI.hpp>

#include <charconv>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <iomanip>
#include <limits>
#include <sstream>
#include <string>
#include <system_error>

namespace segml::cli {

namespace detail {

// A bound as people write it: 0.001, 65535, 1000000, 1e+30.
inline std::string figure(double v) {
  std::ostringstream os;
  if (v == std::floor(v) && std::fabs(v) < 1e15)
    os << static_cast<int64_t>(v);
  else
    os << std::setprecision(6) << v;
  return os.str();
}

inline bool parse_whole(const std::string& s, int64_t& v) {
  const char* end = s.data() + s.size();
  const auto [p, ec] = std::from_chars(s.data(), end, v);
  return ec == std::errc() && p == end && !s.empty();
}

inline bool parse_real(const std::string& s, double& v) {
  if (s.empty()) return false;
  char* end = nullptr;
  v = std::strtod(s.c_str(), &end);
  return end == s.c_str() + s.size();
}

// "[lo, hi]", ">= lo", "<= hi" or "> lo" (open_low) for the description and the error.
inline std::string range_text(double lo, double hi, bool open_low) {
  const bool has_lo = lo > -std::numeric_limits<double>::max(), has_hi = hi < std::numeric_limits<double>::max();
  if (has_lo && has_hi && !open_low) return "in [" + figure(lo) + ", " + figure(hi) + "]";
  std::string t;
  if (has_lo) t = (open_low ? "> " : ">= ") + figure(lo);
  if (has_hi) t += std::string(t.empty() ? "" : " and ") + "<= " + figure(hi);
  return t;
}

}  // namespace detail

// A whole number in [lo, hi].
inline CLI::Validator whole(int64_t lo, int64_t hi = std::numeric_limits<int64_t>::max()) {
  const std::string range = detail::range_text(lo == std::numeric_limits<int64_t>::min() ? -std::numeric_limits<double>::max()
                                                                                         : double(lo),
                                               hi == std::numeric_limits<int64_t>::max() ? std::numeric_limits<double>::max()
                                                                                         : double(hi),
                                               false);
  return CLI::Validator(
      [lo, hi, range](std::string& s) -> std::string {
        int64_t v = 0;
        if (!detail::parse_whole(s, v) || v < lo || v > hi) return "got '" + s + "', expected a whole number " + range;
        return "";
      },
      "(" + range + ")");
}

// A finite real number in [lo, hi] (in (lo, hi] when open_low).
inline CLI::Validator real(double lo, double hi = std::numeric_limits<double>::max(), bool open_low = false) {
  const std::string range = detail::range_text(lo, hi, open_low);
  return CLI::Validator(
      [lo, hi, open_low, range](std::string& s) -> std::string {
        double v = 0;
        if (!detail::parse_real(s, v) || !std::isfinite(v) || v < lo || v > hi || (open_low && v == lo))
          return "got '" + s + "', expected a finite number " + range;
        return "";
      },
      "(" + range + ")");
}

inline CLI::Validator positive_whole() { return whole(1); }
inline CLI::Validator non_negative_whole() { return whole(0); }
inline CLI::Validator positive_real() { return real(0.0, std::numeric_limits<double>::max(), true); }
inline CLI::Validator non_negative_real() { return real(0.0); }

}  // namespace segml::cli
