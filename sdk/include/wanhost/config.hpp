// Configuration values handed to plugins. The host validates every plugin's section of the run
// manifest against the schema in the plugin's sidecar manifest (types, ranges, enums, no unknown
// keys) and fills in defaults *before* the plugin sees it, so plugins can read values directly.
#pragma once

#include <map>
#include <string>

#include <nlohmann/json.hpp>

#include "wanhost/errors.hpp"

namespace wanhost {

using Json = nlohmann::json;

// A plugin's validated configuration plus where it lives in the resolved manifest, so that
// errors found later (e.g. two values that contradict each other) can still name the pointer.
struct PluginConfig {
  std::string plugin;   // plugin name
  std::string pointer;  // JSON pointer of this section, e.g. "/data/synthetic"
  Json values = Json::object();
  // Keys whose value was set somewhere else than `pointer`, and where: a stage's data overrides
  // ("mode" -> "/stages/1/data/synthetic"), so that errors name the place the user wrote.
  std::map<std::string, std::string> key_pointers;

  // Where the value of `key` was set.
  std::string where(const std::string& key) const {
    auto it = key_pointers.find(key);
    return (it != key_pointers.end() ? it->second : pointer) + "/" + key;
  }

  template <class T>
  T get(const std::string& key) const {
    auto it = values.find(key);
    if (it == values.end()) throw ConfigError(where(key), "missing value", plugin);
    try {
      return it->template get<T>();
    } catch (const nlohmann::json::exception& e) {
      throw ConfigError(where(key), std::string("wrong type: ") + e.what(), plugin);
    }
  }
  template <class T>
  T get_or(const std::string& key, T fallback) const {
    auto it = values.find(key);
    if (it == values.end() || it->is_null()) return fallback;
    return get<T>(key);
  }
  bool has(const std::string& key) const {
    auto it = values.find(key);
    return it != values.end() && !it->is_null();
  }
  // Raise a ConfigError for a key of this section.
  [[noreturn]] void fail(const std::string& key, const std::string& message) const {
    throw ConfigError(key.empty() ? pointer : where(key), message, plugin);
  }
};

}  // namespace wanhost
