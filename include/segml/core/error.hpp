// segml/core/error.hpp: the one exception type and the checks that throw it.
//
// Contract: every check is active in release builds too. A message names the op
// (or file / tensor / argument) and the shapes or values involved, so a user can
// act on it without a debugger.
#pragma once

#include <cstdint>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace segml {

// Thrown for every user-facing error: bad shapes, bad arguments, bad files.
class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};

using Shape = std::vector<int64_t>;

// "[2, 3, 4]"
inline std::string shape_str(const Shape& s) {
  std::ostringstream os;
  os << '[';
  for (size_t i = 0; i < s.size(); ++i) os << (i ? ", " : "") << s[i];
  os << ']';
  return os.str();
}

namespace detail {
inline void append(std::ostringstream&) {}
template <class A, class... Rest>
inline void append(std::ostringstream& os, const A& a, const Rest&... rest) {
  if constexpr (std::is_same_v<A, Shape>)
    os << shape_str(a);
  else
    os << a;
  append(os, rest...);
}
}  // namespace detail

// Builds a message from its pieces (shapes print as [a, b, c]) and throws segml::Error.
template <class... Args>
[[noreturn]] inline void fail(const Args&... args) {
  std::ostringstream os;
  detail::append(os, args...);
  throw Error(os.str());
}

// SEGML_CHECK(cond, pieces...): throws segml::Error("pieces...") when cond is false.
#define SEGML_CHECK(cond, ...)                   \
  do {                                           \
    if (!(cond)) ::segml::fail(__VA_ARGS__);     \
  } while (0)

}  // namespace segml
