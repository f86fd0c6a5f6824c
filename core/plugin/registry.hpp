// Finds plugins, reads their sidecar manifests (no plugin code runs for listing or validating),
// and loads them on demand after checking their ABI tag from the file.
//
// Search order: --plugin-dir (in the order given), WANHOST_PLUGIN_PATH (':'-separated absolute
// folders), then the folder that belongs to this executable (build/plugins next to build/bin, or
// <prefix>/lib/wanhost/plugins when installed: the packages' real executable is
// <prefix>/lib/wanhost/wanhost, next to that folder). Never the current directory.
// Refused, each with its own message: non-regular files and symlinks, files or folders writable by
// group or others (a --plugin-dir or WANHOST_PLUGIN_PATH folder also when one of its ancestors
// is, unless that one is sticky), files
// owned by someone other than root or this user, a missing or malformed sidecar, a second file of
// the same plugin name in one folder, an ABI tag that does not match this host, a missing entry
// point, unresolved symbols (libraries are loaded with RTLD_NOW).
// Two plugins of one name in different folders: the folder searched first wins (logged; listed
// by `plugins list`), so a plugin built with --plugin-dir replaces the installed one.
#pragma once

#include <map>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "wanhost/config.hpp"
#include "wanhost/plugin.hpp"

namespace wanhost::core {

// Kind names as they appear in sidecar manifests and as run-manifest sections.
struct KindInfo {
  PluginKind bit;
  const char* name;     // "data_source"
  const char* section;  // run manifest section: "data"; null for kinds runs do not use
};
const std::vector<KindInfo>& plugin_kinds();
const KindInfo* kind_by_name(const std::string& name);
const KindInfo* kind_by_section(const std::string& section);

struct PluginManifest {
  std::string name, version, description;
  std::vector<std::string> kinds;
  Json options = Json::object();  // the plugin's config option table
  std::string library_path;       // the .so
  std::string manifest_path;      // the sidecar .json
  bool provides(const std::string& kind) const;
};

// Reads and checks a sidecar manifest; throws std::runtime_error naming the file.
PluginManifest read_plugin_manifest(const std::string& json_path, const std::string& library_path);

struct SearchPath {
  std::string dir;
  std::string origin;  // "--plugin-dir", "WANHOST_PLUGIN_PATH", "built-in"
};

// Builds the search path. `env_value` is WANHOST_PLUGIN_PATH (may be null). Relative entries of
// the variable are ignored with a warning (they would depend on the current directory).
std::vector<SearchPath> plugin_search_path(const std::vector<std::string>& flag_dirs,
                                           const char* env_value,
                                           std::vector<std::string>* warnings);
// The plugin folder that belongs to the running executable.
std::vector<std::string> builtin_plugin_dirs();

class LoadedPlugin;
// Owns a loaded library (defined in registry.cpp, so callers need not see Boost.DLL).
struct LoadedPluginDeleter {
  void operator()(LoadedPlugin* p) const;
};
using LoadedPluginPtr = std::unique_ptr<LoadedPlugin, LoadedPluginDeleter>;

// A plugin file that exists but may not be loaded (ABI mismatch, no entry point, unresolved
// symbols, ...). The host exits with its own code (3) for these.
class PluginRefused : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

class PluginRegistry {
 public:
  // Scans the folders (see the file comment for what is refused and which duplicate wins).
  explicit PluginRegistry(std::vector<SearchPath> path);
  ~PluginRegistry();

  const std::vector<PluginManifest>& plugins() const { return plugins_; }
  const PluginManifest* find(const std::string& name) const;
  // Like find(), but throws a ConfigError at `pointer` listing the available plugins (of `kind`
  // when given), the folders searched and the files refused.
  const PluginManifest& require(const std::string& name, const std::string& kind,
                                const std::string& pointer) const;
  // Files that were found but refused, with the reason (reported by `plugins list`).
  const std::vector<std::pair<std::string, std::string>>& refused() const { return refused_; }
  // Plugins not used because one of the same name lies in a folder searched earlier:
  // (not used, used).
  const std::vector<std::pair<std::string, std::string>>& shadowed() const { return shadowed_; }
  const std::vector<SearchPath>& search_path() const { return path_; }
  std::string describe_search_path() const;

  // Checks the ABI tag from the file, then loads the library and returns its descriptor.
  // Throws std::runtime_error with the reason. Loaded plugins stay loaded for the process lifetime.
  const PluginDescriptor& load(const std::string& name);

 private:
  void scan(const SearchPath& sp);
  std::vector<SearchPath> path_;
  std::vector<PluginManifest> plugins_;
  std::vector<std::pair<std::string, std::string>> refused_;
  std::vector<std::pair<std::string, std::string>> shadowed_;
  std::map<std::string, LoadedPluginPtr> loaded_;
};

// The checks made before a plugin's library is loaded (its ABI tag read from the file: magic, SDK
// version, LibTorch, C++ ABI, CUDA, name): "" when they pass, else why the plugin is refused.
// `tag` receives the tag when one was read. Used by `plugins list|inspect`, which load no code.
std::string check_before_loading(const PluginManifest& manifest,
                                 std::optional<AbiTag>* tag = nullptr);

// Loads one plugin file after the checks above (exposed for tests).
const PluginDescriptor& load_plugin_library(const PluginManifest& manifest,
                                            LoadedPluginPtr& holder);

}  // namespace wanhost::core
