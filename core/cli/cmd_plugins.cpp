// `wanhost plugins list|inspect`: answered from sidecar manifests and ABI tags read from the
// files; no plugin code runs.
#include <cstdio>
#include <iostream>
#include <optional>

#include "../plugin/abi_reader.hpp"
#include "../plugin/registry.hpp"
#include "../run/resolve.hpp"
#include "app.hpp"
#include "wanhost/log.hpp"

namespace wanhost::core {
namespace {

Json manifest_json(const PluginManifest& m) {
  return Json{
      {"name", m.name},         {"version", m.version},        {"kinds", m.kinds},
      {"path", m.library_path}, {"manifest", m.manifest_path}, {"description", m.description}};
}

void warn_refused(const PluginRegistry& r) {
  for (const auto& [file, why] : r.refused()) logger()->warn("refused {}: {}", file, why);
}

// "" when `run` may load the plugin as far as can be told without loading it, else why not.
std::string refusal(const PluginManifest& m) {
  return check_before_loading(m);
}

void list(const GlobalOptions& g, bool json) {
  auto reg = make_registry(g);
  warn_refused(*reg);
  if (json) {
    Json out = Json::array();
    for (const auto& m : reg->plugins()) {
      Json j = manifest_json(m);
      const std::string why = refusal(m);
      j["compatible"] = why.empty();
      if (!why.empty()) j["problem"] = why;
      out.push_back(j);
    }
    std::cout << out.dump(2) << "\n";
    return;
  }
  std::printf("%-20s %-10s %-24s %-14s %s\n", "NAME", "VERSION", "KINDS", "STATUS", "PATH");
  std::vector<std::string> problems;
  for (const auto& m : reg->plugins()) {
    std::string kinds;
    for (const auto& k : m.kinds) kinds += (kinds.empty() ? "" : ",") + k;
    const std::string why = refusal(m);
    std::printf("%-20s %-10s %-24s %-14s %s\n", m.name.c_str(), m.version.c_str(), kinds.c_str(),
                why.empty() ? "ok" : "INCOMPATIBLE", m.library_path.c_str());
    if (!why.empty()) problems.push_back(m.name + ": " + why);
  }
  for (const auto& p : problems) std::printf("\nINCOMPATIBLE %s", p.c_str());
  if (!problems.empty()) std::printf("\n");
  for (const auto& [unused, used] : reg->shadowed())
    std::printf("\nnot used: %s (a plugin of the same name was found first: %s)", unused.c_str(),
                used.c_str());
  std::printf("\nsearched:%s\n", reg->describe_search_path().c_str());
}

// One option of a plugin's config table, as `plugins inspect` prints it.
std::string option_line(const std::string& key, const Json& spec) {
  std::string s = key + " (" + spec.value("type", "any");
  if (spec.value("nullable", false)) s += " or null";
  s += ", default " + spec.value("default", Json(nullptr)).dump();
  if (spec.contains("min")) s += ", min " + spec["min"].dump();
  if (spec.contains("max")) s += ", max " + spec["max"].dump();
  if (spec.contains("min_items")) s += ", at least " + spec["min_items"].dump() + " items";
  s += ")";
  if (spec.contains("enum")) s += " one of " + spec["enum"].dump();
  return s;
}

void inspect(const GlobalOptions& g, const std::string& name, bool json) {
  auto reg = make_registry(g);
  const PluginManifest& m = reg->require(name, "", "");
  Json out = manifest_json(m);
  out["config"] = m.options;
  const AbiTag host = current_abi_tag();
  std::optional<AbiTag> tag;
  const std::string why = check_before_loading(m, &tag);
  // "compatible": every check `run` makes before loading the library passes (the ones after it,
  // such as unresolved symbols, need its code to run).
  out["abi"] = {{"plugin", tag ? Json(describe(*tag)) : Json(nullptr)},
                {"host", describe(host)},
                {"compatible", why.empty()},
                {"problem", why}};
  if (json) {
    std::cout << out.dump(2) << "\n";
    return;
  }
  std::cout << m.name << " " << m.version << "  (" << out["kinds"].dump() << ")\n"
            << "  " << m.description << "\n"
            << "  library:  " << m.library_path << "\n"
            << "  manifest: " << m.manifest_path << "\n"
            << "  ABI:      " << (tag ? describe(*tag) : std::string("-"))
            << (why.empty() ? "  (compatible)" : "  (NOT compatible: " + why + ")")
            << "\n  config:\n";
  for (auto it = m.options.begin(); it != m.options.end(); ++it) {
    std::cout << "    " << option_line(it.key(), *it);
    if (it->contains("description"))
      std::cout << "\n        " << (*it)["description"].get<std::string>();
    std::cout << "\n";
  }
}

}  // namespace

std::unique_ptr<PluginRegistry> make_registry(const GlobalOptions& g) {
  std::vector<std::string> warnings;
  auto path = plugin_search_path(g.plugin_dirs, std::getenv("WANHOST_PLUGIN_PATH"), &warnings);
  for (const auto& w : warnings) logger()->warn("{}", w);
  return std::make_unique<PluginRegistry>(std::move(path));
}

void add_plugins_command(CLI::App& app, GlobalOptions& g) {
  auto* plugins = app.add_subcommand(
      "plugins", "List and inspect plugins (reads their manifests; loads no code)");
  plugins->require_subcommand(1);
  auto* ls = plugins->add_subcommand("list", "List the plugins found on the search path");
  auto json_list = std::make_shared<bool>(false);
  ls->add_flag("--json", *json_list,
               "Machine-readable output: a list of {name, kinds, version, path, ...}");
  ls->callback([&g, json_list] { list(g, *json_list); });

  auto* ins =
      plugins->add_subcommand("inspect", "Show one plugin: kinds, version, ABI, config options");
  auto name = std::make_shared<std::string>();
  auto json_ins = std::make_shared<bool>(false);
  ins->add_option("NAME", *name, "Plugin name")->required();
  ins->add_flag("--json", *json_ins, "Machine-readable output");
  ins->callback([&g, name, json_ins] { inspect(g, *name, *json_ins); });
}

}  // namespace wanhost::core
