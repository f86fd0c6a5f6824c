#define BOOST_DLL_USE_STD_FS
#include "registry.hpp"

#include <dlfcn.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <boost/dll/shared_library.hpp>
#include <cstddef>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include "../config/schema.hpp"
#include "abi_reader.hpp"
#include "wanhost/kit/json_file.hpp"
#include "wanhost/log.hpp"

namespace fs = std::filesystem;

namespace wanhost::core {

class LoadedPlugin {
 public:
  boost::dll::shared_library library;
  // A copy: a plugin of an older SDK minor provides a shorter descriptor, the rest stays zero.
  PluginDescriptor descriptor{};
};

namespace {
// SDK 2.0's descriptor: the oldest a 2.x host accepts (1.x plugins are refused by their tag).
constexpr std::size_t kMinDescriptorSize = sizeof(PluginDescriptor);
}  // namespace

void LoadedPluginDeleter::operator()(LoadedPlugin* p) const {
  delete p;
}

const std::vector<KindInfo>& plugin_kinds() {
  static const std::vector<KindInfo> kinds = {
      {kKindModel, "model", "model"},
      {kKindParallelism, "parallelism", "parallelism"},
      {kKindDataSource, "data_source", "data"},
      {kKindCollator, "collator", "collator"},
      {kKindScheduler, "scheduler", "scheduler"},
      // Used by `wanhost prepare` and `model forward`, not by training runs: no run section.
      {kKindVideoAutoencoder, "video_autoencoder", nullptr},
      {kKindTextEncoder, "text_encoder", nullptr},
  };
  return kinds;
}

const KindInfo* kind_by_name(const std::string& name) {
  for (const auto& k : plugin_kinds())
    if (name == k.name) return &k;
  return nullptr;
}

const KindInfo* kind_by_section(const std::string& section) {
  for (const auto& k : plugin_kinds())
    if (k.section && section == k.section) return &k;
  return nullptr;
}

bool PluginManifest::provides(const std::string& kind) const {
  return std::find(kinds.begin(), kinds.end(), kind) != kinds.end();
}

namespace {

bool valid_plugin_name(const std::string& s) {
  if (s.empty() || s.size() > 63 || !(s[0] >= 'a' && s[0] <= 'z')) return false;
  return std::all_of(s.begin(), s.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_';
  });
}

// Why a folder's ancestors may not be trusted, or "": one that others (or its group) may write
// to could have the plugin folder replaced under it, unless it is sticky (like /tmp), where only
// an entry's owner may rename or remove it.
std::string unsafe_ancestor(const std::string& dir) {
  fs::path p = fs::absolute(dir).lexically_normal();
  for (p = p.parent_path(); !p.empty(); p = p.parent_path()) {
    struct stat st {};
    if (stat(p.c_str(), &st) != 0) break;
    if ((st.st_mode & (S_IWGRP | S_IWOTH)) && !(st.st_mode & S_ISVTX))
      return "lies in " + p.string() + ", which is writable by " +
             ((st.st_mode & S_IWOTH) ? "others" : "its group") +
             " and not sticky (anyone could replace the plugin folder); run chmod go-w on it";
    if (p == p.root_path()) break;
  }
  return {};
}

// Why a folder or file may not be trusted, or "".
std::string unsafe_reason(const std::string& path, bool want_dir) {
  struct stat st {};
  if (lstat(path.c_str(), &st) != 0) return "cannot stat: " + std::string(strerror(errno));
  if (S_ISLNK(st.st_mode))
    return "is a symbolic link (plugins must be regular files in their folder)";
  if (want_dir ? !S_ISDIR(st.st_mode) : !S_ISREG(st.st_mode))
    return want_dir ? "is not a directory" : "is not a regular file";
  if (st.st_mode & (S_IWGRP | S_IWOTH))
    return std::string("is writable by ") + ((st.st_mode & S_IWOTH) ? "others" : "its group") +
           " (mode " +
           [&] {
             std::ostringstream o;
             o << std::oct << (st.st_mode & 07777);
             return o.str();
           }() +
           "); run chmod go-w on it";
  if (st.st_uid != 0 && st.st_uid != geteuid())
    return "is owned by uid " + std::to_string(st.st_uid) + ", neither root nor the current user";
  return {};
}

std::string join(const std::vector<std::string>& v, const char* sep = ", ") {
  std::string s;
  for (const auto& x : v) s += (s.empty() ? "" : sep) + x;
  return s;
}

}  // namespace

PluginManifest read_plugin_manifest(const std::string& json_path, const std::string& library_path) {
  const Json j = wanhost::read_json_file(json_path);  // FormatError names the file and byte
  auto need_string = [&](const char* key) {
    if (!j.is_object() || !j.contains(key) || !j[key].is_string())
      throw std::runtime_error(json_path + ": sidecar manifest needs a string \"" + key + "\"");
    return j[key].get<std::string>();
  };
  PluginManifest m;
  m.name = need_string("name");
  m.version = need_string("version");
  if (j.contains("description") && !j["description"].is_string())
    throw std::runtime_error(json_path + ": \"description\" must be a string");
  m.description = j.value("description", "");
  if (!valid_plugin_name(m.name))
    throw std::runtime_error(json_path + ": plugin name '" + m.name +
                             "' must match [a-z][a-z0-9_]*");
  if (!j.contains("kinds") || !j["kinds"].is_array() || j["kinds"].empty())
    throw std::runtime_error(json_path + ": sidecar manifest needs a non-empty array \"kinds\"");
  for (const auto& k : j["kinds"]) {
    if (!k.is_string() || !kind_by_name(k.get<std::string>())) {
      std::vector<std::string> names;
      for (const auto& ki : plugin_kinds()) names.push_back(ki.name);
      throw std::runtime_error(json_path + ": unknown plugin kind " + k.dump() +
                               " (known: " + join(names) + ")");
    }
    m.kinds.push_back(k.get<std::string>());
  }
  if (j.contains("config")) {
    check_option_table(j["config"], json_path);
    m.options = j["config"];
  }
  for (auto it = j.begin(); it != j.end(); ++it) {
    static const std::set<std::string> known = {"name", "version", "description", "kinds",
                                                "config"};
    if (!known.count(it.key()))
      throw std::runtime_error(json_path + ": unknown key '" + it.key() + "' in sidecar manifest");
  }
  m.library_path = library_path;
  m.manifest_path = json_path;
  return m;
}

std::vector<std::string> builtin_plugin_dirs() {
  std::error_code ec;
  fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  if (ec) return {};
  const fs::path exe_dir = exe.parent_path();
  std::vector<fs::path> candidates;
  if (exe_dir.filename() == "wanhost") {
    // Installed packages: <prefix>/lib/wanhost/wanhost (started by the <prefix>/bin/wanhost
    // launcher) with its plugins in <prefix>/lib/wanhost/plugins.
    candidates = {exe_dir / "plugins"};
  } else {
    // Build tree (build/bin/wanhost, build/plugins) or a host installed as <prefix>/bin/wanhost.
    const fs::path prefix = exe_dir.parent_path();
    candidates = {prefix / "plugins", prefix / "lib" / "wanhost" / "plugins",
                  prefix / "lib64" / "wanhost" / "plugins"};
  }
  std::vector<std::string> dirs;
  for (const fs::path& p : candidates)
    if (fs::is_directory(p, ec)) dirs.push_back(p.string());
  return dirs;
}

std::vector<SearchPath> plugin_search_path(const std::vector<std::string>& flag_dirs,
                                           const char* env_value,
                                           std::vector<std::string>* warnings) {
  std::vector<SearchPath> out;
  for (const auto& d : flag_dirs)
    out.push_back({fs::absolute(d).lexically_normal().string(), "--plugin-dir"});
  if (env_value) {
    std::stringstream ss(env_value);
    std::string entry;
    while (std::getline(ss, entry, ':')) {
      if (entry.empty()) continue;  // an empty entry would mean the current directory: never
      if (entry[0] != '/') {
        if (warnings)
          warnings->push_back("WANHOST_PLUGIN_PATH entry '" + entry +
                              "' ignored: not an absolute path");
        continue;
      }
      out.push_back({fs::path(entry).lexically_normal().string(), "WANHOST_PLUGIN_PATH"});
    }
  }
  for (const auto& d : builtin_plugin_dirs()) out.push_back({d, "built-in"});
  return out;
}

PluginRegistry::PluginRegistry(std::vector<SearchPath> path) : path_(std::move(path)) {
  for (const auto& sp : path_) scan(sp);
}

PluginRegistry::~PluginRegistry() = default;

void PluginRegistry::scan(const SearchPath& sp) {
  std::error_code ec;
  if (!fs::exists(sp.dir, ec)) return;
  if (std::string why = unsafe_reason(sp.dir, true); !why.empty()) {
    refused_.emplace_back(sp.dir, "plugin folder " + why);
    return;
  }
  // The folders a user names. (The built-in folder lies beside the program itself: whoever could
  // swap it could swap the program.)
  if (sp.origin != "built-in")
    if (std::string why = unsafe_ancestor(sp.dir); !why.empty()) {
      refused_.emplace_back(sp.dir, "plugin folder " + why);
      return;
    }
  std::vector<fs::path> files;
  for (const auto& e : fs::directory_iterator(sp.dir, ec))
    if (e.path().extension() == ".so") files.push_back(e.path());
  std::sort(files.begin(), files.end());
  for (const auto& so : files) {
    const std::string so_path = so.string();
    if (std::string why = unsafe_reason(so_path, false); !why.empty()) {
      refused_.emplace_back(so_path, why);
      continue;
    }
    struct stat st {};
    stat(so_path.c_str(), &st);
    bool duplicate_file = false;  // the same file reached through two folders counts once
    for (const auto& p : plugins_) {
      struct stat other {};
      if (stat(p.library_path.c_str(), &other) == 0 && other.st_dev == st.st_dev &&
          other.st_ino == st.st_ino)
        duplicate_file = true;
    }
    if (duplicate_file) continue;
    fs::path sidecar = so;
    sidecar.replace_extension(".json");
    if (!fs::exists(sidecar, ec)) {
      refused_.emplace_back(so_path,
                            "no sidecar manifest " + sidecar.filename().string() + " beside it");
      continue;
    }
    if (std::string why = unsafe_reason(sidecar.string(), false); !why.empty()) {
      refused_.emplace_back(sidecar.string(), why);
      continue;
    }
    PluginManifest m;
    try {
      m = read_plugin_manifest(sidecar.string(), so_path);
    } catch (const std::exception& e) {
      refused_.emplace_back(so_path, e.what());
      continue;
    }
    if (const PluginManifest* other = find(m.name)) {
      if (fs::path(other->library_path).parent_path() == so.parent_path()) {
        // One folder, two files of one name: neither is preferred by the search order.
        refused_.emplace_back(so_path, "another file in the same folder, " + other->library_path +
                                           ", is also plugin '" + m.name +
                                           "' (the one first in name order is used)");
      } else {
        // The folder searched first wins: a plugin under development (--plugin-dir) shadows the
        // installed one of the same name.
        shadowed_.emplace_back(so_path, other->library_path);
        logger()->info("plugin '{}': using {} (searched first); {} is not used", m.name,
                       other->library_path, so_path);
      }
      continue;
    }
    plugins_.push_back(std::move(m));
  }
}

const PluginManifest* PluginRegistry::find(const std::string& name) const {
  for (const auto& p : plugins_)
    if (p.name == name) return &p;
  return nullptr;
}

std::string PluginRegistry::describe_search_path() const {
  std::string s;
  for (const auto& sp : path_) s += "\n  " + sp.dir + " (" + sp.origin + ")";
  if (path_.empty()) s = " (none)";
  return s;
}

const PluginManifest& PluginRegistry::require(const std::string& name, const std::string& kind,
                                              const std::string& pointer) const {
  const PluginManifest* m = find(name);
  if (m && (kind.empty() || m->provides(kind))) return *m;
  std::vector<std::string> names;
  for (const auto& p : plugins_)
    if (kind.empty() || p.provides(kind)) names.push_back(p.name);
  std::string msg =
      m ? "plugin '" + name + "' is not a " + kind + " plugin (it provides " + join(m->kinds) + ")"
        : "no plugin named '" + name + "'";
  msg += "; available" + (kind.empty() ? std::string() : " " + kind + " plugins") + ": " +
         (names.empty() ? std::string("none") : join(names)) +
         "; searched:" + describe_search_path();
  for (const auto& [file, why] : refused_) msg += "\n  refused " + file + ": " + why;
  throw ConfigError(pointer, msg);
}

std::string check_before_loading(const PluginManifest& m, std::optional<AbiTag>* tag_out) {
  const std::string& path = m.library_path;
  std::optional<AbiTag> tag;
  try {
    tag = read_abi_tag(path);
  } catch (const std::exception& e) {
    return e.what();
  }
  if (tag_out) *tag_out = tag;
  if (!tag)
    return path + " has no " WANHOST_ABI_SECTION
                  " section (not built with WANHOST_PLUGIN from the wanhost SDK)";
  const AbiTag host = current_abi_tag();
  if (std::string why = abi_mismatch(*tag, host); !why.empty())
    return path + " was built for " + describe(*tag) + ", this host is " + describe(host) + " (" +
           why + "); rebuild the plugin against this SDK";
  const std::string tag_name(tag->plugin_name, strnlen(tag->plugin_name, sizeof tag->plugin_name));
  if (tag_name != m.name)
    return path + " calls itself '" + tag_name + "' but its sidecar " + m.manifest_path +
           " says '" + m.name + "'";
  return {};
}

const PluginDescriptor& load_plugin_library(const PluginManifest& m, LoadedPluginPtr& holder) {
  const std::string& path = m.library_path;
  // 1. The ABI tag, read from the file: nothing of the plugin runs before this passes.
  std::optional<AbiTag> tag;
  if (std::string why = check_before_loading(m, &tag); !why.empty())
    throw PluginRefused("plugin '" + m.name + "' refused: " + why);

  // 2. Load eagerly so unresolved symbols fail now, privately so plugins cannot clash.
  LoadedPluginPtr loaded(new LoadedPlugin);
  boost::dll::fs::error_code ec;
  dlerror();
  // RTLD_NODELETE: objects made by a plugin may outlive the registry; its code must stay mapped.
  const auto mode = static_cast<boost::dll::load_mode::type>(RTLD_NOW | RTLD_LOCAL | RTLD_NODELETE);
  loaded->library.load(path, mode, ec);
  if (ec) {
    const char* err = dlerror();
    throw PluginRefused("plugin '" + m.name + "' failed to load from " + path + ": " +
                        (err ? err : ec.message()));
  }
  if (!loaded->library.has(WANHOST_ENTRY_POINT))
    throw PluginRefused("plugin '" + m.name + "' refused: " + path +
                        " has no entry point '" WANHOST_ENTRY_POINT
                        "' (declare the plugin with the WANHOST_PLUGIN macro)");
  auto entry = loaded->library.get<const PluginDescriptor*()>(WANHOST_ENTRY_POINT);
  const PluginDescriptor* d = entry();
  if (!d) throw PluginRefused("plugin '" + m.name + "': entry point returned no descriptor");
  if (std::memcmp(&d->tag, &*tag, sizeof(AbiTag)) != 0 || d->descriptor_size < kMinDescriptorSize ||
      d->name == nullptr || d->version == nullptr || m.name != d->name)
    throw PluginRefused("plugin '" + m.name +
                        "' refused: its descriptor does not match its ABI tag");
  std::memcpy(&loaded->descriptor, d, std::min<std::size_t>(d->descriptor_size, sizeof *d));
  for (const auto& k : plugin_kinds()) {
    const bool declared = m.provides(k.name), provided = (d->kinds & k.bit) != 0;
    if (declared != provided)
      throw PluginRefused(
          "plugin '" + m.name + "': sidecar " + m.manifest_path +
          (declared ? " declares kind '" : " omits kind '") + k.name +
          (declared ? "' that the library does not provide" : "' that the library provides"));
  }
  if (m.version != d->version)
    logger()->warn("plugin '{}': sidecar says version {}, library says {}", m.name, m.version,
                   d->version);
  holder = std::move(loaded);
  return holder->descriptor;
}

const PluginDescriptor& PluginRegistry::load(const std::string& name) {
  if (auto it = loaded_.find(name); it != loaded_.end()) return it->second->descriptor;
  const PluginManifest& m = require(name, "", "");
  LoadedPluginPtr holder;
  const PluginDescriptor& d = load_plugin_library(m, holder);
  logger()->debug("loaded plugin {} {} from {}", m.name, m.version, m.library_path);
  loaded_[name] = std::move(holder);
  return d;
}

}  // namespace wanhost::core
