#include "resolve.hpp"

#include <algorithm>
#include <charconv>
#include <cstring>
#include <fstream>
#include <sstream>

#include "../config/embedded_configs.hpp"
#include "../config/run_config.hpp"
#include "../config/schema.hpp"
#include "../plugin/registry.hpp"
#include "wanhost/errors.hpp"
#include "wanhost/kit/json_file.hpp"
#include "wanhost/log.hpp"

namespace wanhost::core {
namespace {

std::string escape_token(const std::string& key) {
  std::string out;
  for (char c : key) out += c == '~' ? "~0" : c == '/' ? "~1" : std::string(1, c);
  return out;
}

// "a.b.0.c" or the JSON pointer "/a/b/0/c" -> tokens.
std::vector<std::string> split_path(const std::string& path) {
  std::vector<std::string> tokens;
  const bool pointer = !path.empty() && path[0] == '/';
  std::stringstream ss(pointer ? path.substr(1) : path);
  std::string t;
  while (std::getline(ss, t, pointer ? '/' : '.')) {
    if (pointer) {  // RFC 6901 unescaping: ~1 is '/', ~0 is '~'
      std::string u;
      for (std::size_t i = 0; i < t.size(); ++i) {
        if (t[i] == '~' && i + 1 < t.size())
          u += t[++i] == '1' ? '/' : '~';
        else
          u += t[i];
      }
      t = u;
    }
    tokens.push_back(t);
  }
  return tokens;
}

std::string pointer_of(const std::vector<std::string>& tokens, std::size_t n) {
  std::string p;
  for (std::size_t i = 0; i < n; ++i) p += "/" + escape_token(tokens[i]);
  return p;
}

// Walks `root` along tokens[0..n); returns null when a step does not exist.
Json* walk(Json& root, const std::vector<std::string>& tokens, std::size_t n) {
  Json* cur = &root;
  for (std::size_t i = 0; i < n; ++i) {
    const std::string& t = tokens[i];
    if (cur->is_object()) {
      auto it = cur->find(t);
      if (it == cur->end()) return nullptr;
      cur = &*it;
    } else if (cur->is_array()) {
      std::size_t idx = 0;
      auto [p, ec] = std::from_chars(t.data(), t.data() + t.size(), idx);
      if (ec != std::errc() || p != t.data() + t.size() || idx >= cur->size()) return nullptr;
      cur = &(*cur)[idx];
    } else {
      return nullptr;
    }
  }
  return cur;
}

// The schema of the setting at tokens[0..n): the host schema, and below a plugin's section or a
// stage's data overrides that plugin's option table. Null when unknown.
Json spec_at(const std::vector<std::string>& tokens, std::size_t n,
             const PluginRegistry& registry) {
  Json spec = run_schema();
  for (std::size_t i = 0; i < n; ++i) {
    const bool kind_section = i == 1 && kind_by_section(tokens[0]) != nullptr;
    const bool stage_data = i == 3 && tokens[0] == "stages" && tokens[2] == "data";
    if ((kind_section || stage_data) && tokens[i] != "plugin") {
      const PluginManifest* m = registry.find(tokens[i]);
      if (!m) return nullptr;
      spec = object_spec(m->options);
      continue;
    }
    const Json* child = child_spec(spec, tokens[i]);
    if (!child) {
      if (!spec_allows_key(spec, tokens[i])) return nullptr;
      spec = Json{{"type", "any"}};  // inside an open object: anything goes
      continue;
    }
    spec = *child;
  }
  return spec;
}

void apply_set(Json& raw, const Json& filled, const std::string& assignment,
               const PluginRegistry& registry) {
  const auto eq = assignment.find('=');
  if (eq == std::string::npos || eq == 0)
    throw ConfigError("", "--set '" + assignment + "': expected KEY.PATH=VALUE");
  const std::string path = assignment.substr(0, eq), text = assignment.substr(eq + 1);
  const auto tokens = split_path(path);
  if (tokens.empty()) throw ConfigError("", "--set '" + assignment + "': empty key path");
  Json value = parse_cli_value(text, "--set " + assignment);
  // Walk the resolved config; a step that does not exist there may be created only inside an
  // object whose schema allows that key (a known setting, or an open object such as
  // stage_defaults or a model's overrides). Validation afterwards checks the value.
  Json& view = const_cast<Json&>(filled);
  Json* cur = &raw;
  for (std::size_t i = 0; i < tokens.size(); ++i) {
    const bool last = i + 1 == tokens.size();
    const Json* here = walk(view, tokens, i);
    const bool exists_next = walk(view, tokens, i + 1) != nullptr;
    if (!exists_next && here) {  // (no `here`: inside an open object created by this --set)
      const std::string missing = pointer_of(tokens, i + 1);
      if (here->is_array() || (!here->is_object() && i == 0))
        throw ConfigError(missing, "--set " + path + ": there is no such setting (" + missing +
                                       " does not exist)");
      if (!here->is_object())
        throw ConfigError(pointer_of(tokens, i), "--set " + path + ": there is no such setting (" +
                                                     pointer_of(tokens, i) + " is not an object)");
      // A new last key is left to validation, which names the schema's keys ("did you mean").
      const Json parent_spec = spec_at(tokens, i, registry);
      if (!last && (parent_spec.is_null() || !(spec_allows_key(parent_spec, tokens[i]) ||
                                               parent_spec.value("type", "") == "any")))
        throw ConfigError(missing, "--set " + path + ": there is no such setting (" + missing +
                                       " does not exist)");
    }
    if (cur->is_array()) {
      std::size_t idx = 0;
      auto [p, ec] = std::from_chars(tokens[i].data(), tokens[i].data() + tokens[i].size(), idx);
      if (ec != std::errc() || idx >= cur->size())
        throw ConfigError(pointer_of(tokens, i + 1), "--set " + path + ": index out of range");
      cur = &(*cur)[idx];
    } else {
      if (!cur->is_object()) *cur = Json::object();
      if (!cur->contains(tokens[i]) && exists_next && !last)
        (*cur)[tokens[i]] = *walk(view, tokens, i + 1);  // a default so far: start from its value
      cur = &(*cur)[tokens[i]];
    }
    if (last) *cur = value;
  }
}

void validate_plugin_section(Json& cfg, const KindInfo& kind, const PluginRegistry& registry) {
  const std::string section = kind.section;
  Json& s = cfg[section];
  const std::string name = s["plugin"].get<std::string>();
  const std::string ptr = "/" + section;
  registry.require(name, kind.name, ptr + "/plugin");
  for (auto it = s.begin(); it != s.end(); ++it) {
    if (it.key() == "plugin") continue;
    const std::string key_ptr = ptr + "/" + escape_token(it.key());
    const PluginManifest* m = registry.find(it.key());
    if (!m || !m->provides(kind.name))
      throw ConfigError(key_ptr, "'" + it.key() +
                                     "' is neither \"plugin\" nor the name of an installed " +
                                     std::string(kind.name) +
                                     " plugin (a section holds one config object per plugin name)");
    if (!it->is_object())
      throw ConfigError(key_ptr, "expected the config object of plugin '" + m->name + "'", m->name);
    if (it.key() == name) {
      validate_config(*it, object_spec(m->options), key_ptr, m->name);
    } else {
      Json copy = *it;  // configs kept for other plugins of this kind: checked, not filled
      validate_config(copy, object_spec(m->options), key_ptr, m->name);
    }
  }
  if (!s.contains(name)) {
    Json fresh = Json::object();
    validate_config(fresh, object_spec(registry.find(name)->options), ptr + "/" + name, name);
    s[name] = fresh;
  }
}

// A stage's data overrides are keyed by the data plugin's name. Overrides kept for another data
// plugin (the recipe's, before --plugins or a manifest swapped it) do not apply to the selected
// one: they are dropped with a warning that says so, and that stage runs on the selected plugin's
// top-level config. A key that names no data plugin at all is an error (a typo).
void validate_stage_data(Json& cfg, const PluginRegistry& registry, bool warn) {
  const std::string data_plugin = cfg["data"]["plugin"];
  const PluginManifest* m = registry.find(data_plugin);
  for (std::size_t i = 0; i < cfg["stages"].size(); ++i) {
    Json& d = cfg["stages"][i]["data"];
    const std::string ptr = "/stages/" + std::to_string(i) + "/data";
    std::vector<std::string> dropped;
    for (auto it = d.begin(); it != d.end(); ++it) {
      if (it.key() == data_plugin) continue;
      const PluginManifest* other = registry.find(it.key());
      if (!other || !other->provides("data_source"))
        throw ConfigError(ptr + "/" + escape_token(it.key()),
                          "'" + it.key() +
                              "' is not an installed data source plugin: stage data overrides "
                              "are keyed by the data plugin's name (the selected one is '" +
                              data_plugin + "')");
      dropped.push_back(it.key());
    }
    for (const auto& key : dropped) {
      d.erase(key);
      if (warn)
        logger()->warn(
            "{}/{}: these overrides are for data plugin '{}', but the run uses '{}'; they are "
            "dropped, and stage {} reads the settings of /data/{} (add {}/{} to set them per "
            "stage)",
            ptr, key, key, data_plugin, i, data_plugin, ptr, data_plugin);
    }
    for (auto it = d.begin(); it != d.end(); ++it) {
      Json merged = cfg["data"][data_plugin];
      merge_into(merged, *it);
      validate_config(merged, object_spec(m ? m->options : Json::object()), ptr + "/" + data_plugin,
                      data_plugin);
    }
  }
}

// Merges /stage_defaults under every stage (a stage's own values win). The defaults are first
// checked on their own against the stage schema, so errors point into /stage_defaults.
void apply_stage_defaults(Json& cfg) {
  auto d = cfg.find("stage_defaults");
  if (d == cfg.end() || !d->is_object() || d->empty() || !cfg.contains("stages") ||
      !cfg["stages"].is_array())
    return;
  Json spec = run_schema()["properties"]["stages"]["items"];
  for (auto& [key, prop] : spec["properties"].items()) prop.erase("required");
  Json check = *d;
  validate_config(check, spec, "/stage_defaults");
  for (auto& stage : cfg["stages"]) {
    if (!stage.is_object()) continue;
    Json merged = *d;
    merge_into(merged, stage);
    stage = merged;
  }
}

// Rules across keys of a stage. "carry" keeps the AdamW moments of the previous stage's
// parameters: they mean nothing for weights a stage loads or draws anew.
void validate_stage_rules(const Json& cfg) {
  const Json& stages = cfg["stages"];
  for (std::size_t i = 1; i < stages.size(); ++i) {
    const std::string init = stages[i]["init"];
    if (init != "previous" && stages[i]["optimizer_state"] == "carry")
      throw ConfigError("/stages/" + std::to_string(i) + "/optimizer_state",
                        "'carry' keeps the optimizer state of the previous stage's weights, but "
                        "this stage starts from new weights (init '" +
                            init + "'); use 'fresh', or init 'previous'");
  }
}

Json validate_all(Json cfg, const PluginRegistry& registry, bool warn) {
  apply_stage_defaults(cfg);
  validate_config(cfg, run_schema(), "");
  validate_stage_rules(cfg);
  for (const auto& kind : plugin_kinds())
    if (kind.section) validate_plugin_section(cfg, kind, registry);
  validate_stage_data(cfg, registry, warn);
  return cfg;
}

}  // namespace

const Json& run_schema() {
  static const Json schema = Json::parse(embedded_run_schema());
  return schema;
}

const Json& default_recipe() {
  static const Json recipe = Json::parse(embedded_default_recipe());
  return recipe;
}

Json read_json_file(const std::string& path) {
  try {
    return wanhost::read_json_file(path);  // regular files only; errors name line and byte
  } catch (const FormatError& e) {
    throw ConfigError("", std::string("manifest ") + e.what());
  }
}

Json resolve_run_config(const RunConfigRequest& request, const PluginRegistry& registry) {
  // What the user asked for (manifests, then --plugins), kept apart from the built-in recipe so
  // that the recipe's configs for plugins the user replaced do not leak into the result.
  Json user = Json::object();
  for (const auto& path : request.manifest_paths) {
    Json manifest = read_json_file(path);
    if (!manifest.is_object()) throw ConfigError("", path + ": a manifest must be a JSON object");
    merge_into(user, manifest);
  }
  for (const auto& name : request.plugins) {
    const PluginManifest* m = registry.find(name);
    if (!m) registry.require(name, "", "");  // throws: lists what exists and where we looked
    bool used = false;
    for (const auto& kind : m->kinds)
      if (const char* section = kind_by_name(kind)->section) {
        user[section]["plugin"] = name;
        used = true;
      }
    if (!used)
      throw UsageError("--plugins " + name + ": a " + m->kinds.front() +
                       " plugin is not part of a training run (`wanhost prepare` uses it)");
  }
  Json raw = default_recipe();
  for (const auto& kind : plugin_kinds()) {
    if (!kind.section) continue;
    const std::string section = kind.section;
    if (!user.contains(section) || !user[section].contains("plugin") || !raw.contains(section))
      continue;
    const std::string old = raw[section].value("plugin", "");
    if (old == user[section]["plugin"].get<std::string>() || user[section].contains(old)) continue;
    raw[section].erase(old);  // (stage data overrides for it: dropped with a warning below)
  }
  merge_into(raw, user);
  // Warnings only from the final pass (the intermediate ones would repeat them).
  Json filled = validate_all(raw, registry, request.sets.empty());
  for (std::size_t i = 0; i < request.sets.size(); ++i) {
    apply_set(raw, filled, request.sets[i], registry);
    filled = validate_all(raw, registry, i + 1 == request.sets.size());
  }
  return filled;
}

Json parse_cli_value(const std::string& text, const std::string& flag) {
  try {
    return Json::parse(text);
  } catch (const Json::parse_error&) {
    return text;                         // not JSON: a plain string
  } catch (const Json::out_of_range&) {  // e.g. 1e400: a number JSON numbers here cannot hold
    throw UsageError(flag + ": " + text +
                     " is out of range (numbers must fit a 64-bit integer or a double)");
  }
}

PluginConfig standalone_plugin_config(const PluginManifest& m, const std::string& section,
                                      Json values) {
  PluginConfig cfg;
  cfg.plugin = m.name;
  cfg.pointer = "/" + section + "/" + m.name;
  cfg.values = std::move(values);
  validate_config(cfg.values, object_spec(m.options), cfg.pointer, m.name);
  return cfg;
}

void apply_plugin_options(Json& values, const std::vector<std::string>& options) {
  for (const auto& kv : options) {
    const auto eq = kv.find('=');
    if (eq == std::string::npos || eq == 0)
      throw UsageError("--option " + kv + ": expected key=value (value as JSON)");
    values[kv.substr(0, eq)] = parse_cli_value(kv.substr(eq + 1), "--option " + kv);
  }
}

}  // namespace wanhost::core
