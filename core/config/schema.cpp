#include "schema.hpp"

#include <algorithm>
#include <stdexcept>

namespace wanhost::core {
namespace {

std::string escape_token(const std::string& key) {
  std::string out;
  for (char c : key) {
    if (c == '~')
      out += "~0";
    else if (c == '/')
      out += "~1";
    else
      out += c;
  }
  return out;
}

std::string type_name(const Json& v) {
  if (v.is_null()) return "null";
  if (v.is_boolean()) return "boolean";
  if (v.is_number_integer() || v.is_number_unsigned()) return "integer";
  if (v.is_number()) return "number";
  if (v.is_string()) return "string";
  if (v.is_array()) return "array";
  return "object";
}

bool matches_type(const Json& v, const std::string& type) {
  if (type == "object") return v.is_object();
  if (type == "array") return v.is_array();
  if (type == "string") return v.is_string();
  if (type == "boolean") return v.is_boolean();
  if (type == "integer") return v.is_number_integer() || v.is_number_unsigned();
  if (type == "number") return v.is_number();
  if (type == "any") return true;
  return false;
}

std::string keys_of(const Json& properties) {
  std::string s;
  for (auto it = properties.begin(); it != properties.end(); ++it)
    s += (s.empty() ? "" : ", ") + it.key();
  return s;
}

// Levenshtein distance for "did you mean" hints on misspelt keys.
std::size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<std::size_t> row(b.size() + 1);
  for (std::size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (std::size_t i = 1; i <= a.size(); ++i) {
    std::size_t diag = row[0];
    row[0] = i;
    for (std::size_t j = 1; j <= b.size(); ++j) {
      std::size_t up = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diag + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diag = up;
    }
  }
  return row[b.size()];
}

void validate_scalar(const Json& v, const Json& spec, const std::string& ptr,
                     const std::string& plugin) {
  if (auto e = spec.find("enum"); e != spec.end()) {
    if (std::find(e->begin(), e->end(), v) == e->end())
      throw ConfigError(ptr, "value " + v.dump() + " is not one of " + e->dump(), plugin);
  }
  if (v.is_number()) {
    const double x = v.get<double>();
    if (auto m = spec.find("min"); m != spec.end() && x < m->get<double>())
      throw ConfigError(ptr, "value " + v.dump() + " is below the minimum " + m->dump(), plugin);
    if (auto m = spec.find("max"); m != spec.end() && x > m->get<double>())
      throw ConfigError(ptr, "value " + v.dump() + " is above the maximum " + m->dump(), plugin);
  }
}

void validate_object(Json& v, const Json& spec, const std::string& ptr, const std::string& plugin) {
  static const Json kEmpty = Json::object();
  auto props_it = spec.find("properties");
  const Json& props = props_it != spec.end() ? *props_it : kEmpty;
  const bool additional = spec.value("additional", props_it == spec.end());
  for (auto it = v.begin(); it != v.end(); ++it) {
    if (props.contains(it.key())) continue;
    if (additional) continue;
    std::string hint;
    std::size_t best = 3;
    for (auto p = props.begin(); p != props.end(); ++p) {
      std::size_t d = edit_distance(it.key(), p.key());
      if (d < best) best = d, hint = p.key();
    }
    throw ConfigError(ptr + "/" + escape_token(it.key()),
                      "unknown key '" + it.key() + "'" +
                          (hint.empty() ? "" : " (did you mean '" + hint + "'?)") +
                          "; allowed: " + keys_of(props),
                      plugin);
  }
  for (auto p = props.begin(); p != props.end(); ++p) {
    const std::string child = ptr + "/" + escape_token(p.key());
    const Json& ps = p.value();
    if (!v.contains(p.key())) {
      if (ps.contains("default")) {
        v[p.key()] = ps["default"];
      } else if (ps.value("required", false)) {
        throw ConfigError(child, "missing required value", plugin);
      } else if (ps.value("type", "") == "object") {
        v[p.key()] = Json::object();
      } else {
        continue;
      }
    }
    validate_config(v[p.key()], ps, child, plugin);
  }
}

}  // namespace

void validate_config(Json& v, const Json& spec, const std::string& ptr, const std::string& plugin) {
  const std::string type = spec.value("type", "any");
  if (v.is_null() && spec.value("nullable", false)) return;
  if (!matches_type(v, type))
    throw ConfigError(ptr, "expected " + type + ", got " + type_name(v) + " " + v.dump(), plugin);
  if (type == "object") return validate_object(v, spec, ptr, plugin);
  if (type == "array") {
    if (auto m = spec.find("min_items"); m != spec.end() && v.size() < m->get<std::size_t>())
      throw ConfigError(
          ptr, "needs at least " + m->dump() + " item(s), got " + std::to_string(v.size()), plugin);
    if (auto items = spec.find("items"); items != spec.end())
      for (std::size_t i = 0; i < v.size(); ++i)
        validate_config(v[i], *items, ptr + "/" + std::to_string(i), plugin);
    return;
  }
  validate_scalar(v, spec, ptr, plugin);
}

void check_option_table(const Json& options, const std::string& where) {
  if (!options.is_object())
    throw std::runtime_error(where + ": 'config' must be an object of options");
  static const std::vector<std::string> kTypes = {"string", "integer", "number", "boolean",
                                                  "object", "array",   "any"};
  for (auto it = options.begin(); it != options.end(); ++it) {
    const std::string at = where + ": option '" + it.key() + "'";
    const Json& o = it.value();
    if (!o.is_object() || !o.contains("type") || !o["type"].is_string())
      throw std::runtime_error(at + " needs a \"type\"");
    const std::string type = o["type"];
    if (std::find(kTypes.begin(), kTypes.end(), type) == kTypes.end())
      throw std::runtime_error(at + " has unknown type '" + type + "'");
    if (!o.contains("default")) throw std::runtime_error(at + " needs a \"default\"");
    Json d = o["default"];
    try {
      validate_config(d, o, "/" + it.key());
    } catch (const ConfigError& e) {
      throw std::runtime_error(at + ": its default is invalid: " + e.what());
    }
  }
}

Json object_spec(const Json& options, bool additional) {
  return Json{{"type", "object"}, {"properties", options}, {"additional", additional}};
}

bool spec_allows_key(const Json& spec, const std::string& key) {
  if (spec.value("type", "any") != "object") return false;
  auto props = spec.find("properties");
  if (props != spec.end() && props->contains(key)) return true;
  return spec.value("additional", props == spec.end());
}

const Json* child_spec(const Json& spec, const std::string& key) {
  if (auto props = spec.find("properties"); props != spec.end()) {
    if (auto c = props->find(key); c != props->end()) return &*c;
  }
  if (auto items = spec.find("items"); items != spec.end()) return &*items;
  return nullptr;
}

}  // namespace wanhost::core
