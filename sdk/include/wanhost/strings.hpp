// Small text helpers for error messages, shared by plugins so that every "missing / unexpected /
// mis-shaped tensors" listing reads the same.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace wanhost {

// "[16, 3, 4]"
template <class Sizes>
std::string shape_str(const Sizes& sizes) {
  std::string out = "[";
  bool first = true;
  for (auto s : sizes) {
    out += (first ? "" : ", ") + std::to_string(static_cast<std::int64_t>(s));
    first = false;
  }
  return out + "]";
}

// The first `limit` items, one per indented line, then "... and N more".
inline std::string listing(const std::vector<std::string>& items, std::size_t limit = 20) {
  std::string out;
  for (std::size_t i = 0; i < items.size() && i < limit; ++i) out += "\n    " + items[i];
  if (items.size() > limit)
    out += "\n    ... and " + std::to_string(items.size() - limit) + " more";
  return out;
}

inline bool starts_with(const std::string& s, const std::string& prefix) {
  return s.compare(0, prefix.size(), prefix) == 0;
}

}  // namespace wanhost
