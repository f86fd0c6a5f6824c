// A small schema language for configuration, used both for the host's run manifest and for the
// `config` section of every plugin's sidecar manifest (so configs are checked without loading
// plugin code). A spec is a JSON object:
//   {"type": "object", "properties": {name: spec, ...}, "additional": false}
//   {"type": "array", "items": spec, "min_items": 1}
//   {"type": "string" | "integer" | "number" | "boolean", "enum": [...], "min": x, "max": y}
//   common: "default": value, "description": "...", "nullable": true, "required": true
// Validation fills in defaults and reports the first problem as a ConfigError naming the JSON
// pointer (and the plugin whose schema it breaks).
#pragma once

#include <string>

#include "wanhost/config.hpp"

namespace wanhost::core {

// Checks `value` against `spec`, filling defaults for absent keys. Throws ConfigError.
void validate_config(Json& value, const Json& spec, const std::string& pointer,
                     const std::string& plugin = {});

// Checks that a plugin's option table is itself well formed (every option has a known type and a
// default of that type). `where` names the sidecar file. Throws std::runtime_error.
void check_option_table(const Json& options, const std::string& where);

// The spec of an object with exactly these options.
Json object_spec(const Json& options, bool additional = false);

// Does `spec` allow a key `key` in the object it describes (a known property or additional keys)?
bool spec_allows_key(const Json& spec, const std::string& key);
// The spec of property `key` (or of array items), or null.
const Json* child_spec(const Json& spec, const std::string& key);

}  // namespace wanhost::core
