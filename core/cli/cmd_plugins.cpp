// `wanhost plugins list|inspect`: answered from sidecar manifests and ABI tags read from the
// files; no plugin code runs.
#include <cstdio>
#include <iostream>

#include "../config/run_config.hpp"
#include "../plugin/abi_reader.hpp"
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

void list(const GlobalOptions& g, bool json) {
  auto reg = make_registry(g);
  warn_refused(*reg);
  if (json) {
    Json out = Json::array();
    for (const auto& m : reg->plugins()) out.push_back(manifest_json(m));
    std::cout << out.dump(2) << "\n";
    return;
  }
  std::printf("%-20s %-10s %-24s %s\n", "NAME", "VERSION", "KINDS", "PATH");
  for (const auto& m : reg->plugins()) {
    std::string kinds;
    for (const auto& k : m.kinds) kinds += (kinds.empty() ? "" : ",") + k;
    std::printf("%-20s %-10s %-24s %s\n", m.name.c_str(), m.version.c_str(), kinds.c_str(),
                m.library_path.c_str());
  }
  std::printf("\nsearched:%s\n", reg->describe_search_path().c_str());
}

void inspect(const GlobalOptions& g, const std::string& name, bool json) {
  auto reg = make_registry(g);
  const PluginManifest& m = reg->require(name, "", "");
  Json out = manifest_json(m);
  out["config"] = m.options;
  const AbiTag host = current_abi_tag();
  try {
    if (auto tag = read_abi_tag(m.library_path)) {
      const std::string why = abi_mismatch(*tag, host);
      out["abi"] = {{"plugin", describe(*tag)},
                    {"host", describe(host)},
                    {"compatible", why.empty()},
                    {"problem", why}};
    } else {
      out["abi"] = {{"plugin", nullptr},
                    {"host", describe(host)},
                    {"compatible", false},
                    {"problem", "no " WANHOST_ABI_SECTION " section"}};
    }
  } catch (const std::exception& e) {
    out["abi"] = {{"plugin", nullptr},
                  {"host", describe(host)},
                  {"compatible", false},
                  {"problem", e.what()}};
  }
  if (json) {
    std::cout << out.dump(2) << "\n";
    return;
  }
  std::cout << m.name << " " << m.version << "  (" << out["kinds"].dump() << ")\n"
            << "  " << m.description << "\n"
            << "  library:  " << m.library_path << "\n"
            << "  manifest: " << m.manifest_path << "\n"
            << "  ABI:      "
            << (out["abi"]["plugin"].is_null() ? "-" : out["abi"]["plugin"].get<std::string>())
            << (out["abi"]["compatible"].get<bool>()
                    ? "  (compatible)"
                    : "  (NOT compatible: " + out["abi"]["problem"].get<std::string>() + ")")
            << "\n  config:\n";
  for (auto it = m.options.begin(); it != m.options.end(); ++it) {
    std::cout << "    " << it.key() << " (" << it->value("type", "") << ", default "
              << (*it)["default"].dump() << ")";
    if (it->contains("enum")) std::cout << " one of " << (*it)["enum"].dump();
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

void apply_plugin_options(Json& values, const std::vector<std::string>& options) {
  for (const auto& kv : options) {
    const auto eq = kv.find('=');
    if (eq == std::string::npos || eq == 0)
      throw UsageError("--option " + kv + ": expected key=value (value as JSON)");
    values[kv.substr(0, eq)] = parse_cli_value(kv.substr(eq + 1));
  }
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
