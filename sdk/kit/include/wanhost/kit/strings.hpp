// Small text helpers for error messages, shared by plugins so that every "missing / unexpected /
// mis-shaped tensors" listing reads the same.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
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

// What does not fit between a checkpoint and a model, gathered while matching names so that one
// error lists all of it (the plugins' load_weights).
struct CheckpointProblems {
  std::vector<std::string> missing, unexpected, misshaped, duplicated, unusable;

  bool empty() const {
    return missing.empty() && unexpected.empty() && misshaped.empty() && duplicated.empty() &&
           unusable.empty();
  }
  // Records "name: checkpoint [..], model [..]".
  template <class A, class B>
  void shape(const std::string& name, const A& checkpoint, const B& model) {
    misshaped.push_back(name + ": checkpoint " + shape_str(checkpoint) + ", model " +
                        shape_str(model));
  }
  // "2 missing, 1 unexpected, 1 mis-shaped, 0 duplicated, 0 unusable tensor(s)", then each
  // non-empty category as a listing.
  std::string report() const {
    std::string out = std::to_string(missing.size()) + " missing, " +
                      std::to_string(unexpected.size()) + " unexpected, " +
                      std::to_string(misshaped.size()) + " mis-shaped, " +
                      std::to_string(duplicated.size()) + " duplicated, " +
                      std::to_string(unusable.size()) + " unusable tensor(s)";
    const std::pair<const char*, const std::vector<std::string>*> parts[] = {
        {"missing", &missing},
        {"unexpected", &unexpected},
        {"mis-shaped", &misshaped},
        {"duplicated", &duplicated},
        {"unusable", &unusable}};
    for (const auto& [label, items] : parts)
      if (!items->empty()) out += std::string("\n  ") + label + ":" + listing(*items);
    return out;
  }
};

}  // namespace wanhost
