// The run manifest: resolution of built-in default recipe <- manifest file <- --plugins <- --set,
// then validation against the host schema (run_schema.json) and each selected plugin's option
// table (from its sidecar manifest; no plugin code runs). Every problem is a ConfigError naming
// the JSON pointer, so `wanhost validate` and `wanhost run` exit 2 with a precise message.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "wanhost/config.hpp"

namespace wanhost::core {

class PluginRegistry;
struct PluginManifest;

struct RunConfigRequest {
  std::vector<std::string> manifest_paths;  // merged in order over the built-in default recipe
  std::vector<std::string> plugins;         // --plugins a,b (already split)
  std::vector<std::string> sets;            // --set a.b.c=value (each)
};

const Json& run_schema();
const Json& default_recipe();

// Parses a JSON manifest file; syntax errors name the file, line and column.
Json read_json_file(const std::string& path);

Json resolve_run_config(const RunConfigRequest& request, const PluginRegistry& registry);

// A plugin's config outside a run (`bench`, `model forward`, `prepare`): `values` completed with
// the manifest's defaults and validated, pointer /<section>/<plugin>.
PluginConfig standalone_plugin_config(const PluginManifest& m, const std::string& section,
                                      Json values = Json::object());

// A value given on the command line (--set, --option): JSON if it parses, else the text itself.
Json parse_cli_value(const std::string& text, const std::string& flag);

// `--option key=value` flags onto a plugin's config values: the value is read as JSON, else taken
// as a string (a bare word). Throws UsageError naming the flag. Validate the values afterwards.
void apply_plugin_options(Json& values, const std::vector<std::string>& options);

}  // namespace wanhost::core
