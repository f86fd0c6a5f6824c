// The command-line front end: one function per command, sharing the options every command has.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "../launch/launch_env.hpp"
#include "../plugin/registry.hpp"
#include "../util/exit_codes.hpp"

namespace wanhost::core {

struct GlobalOptions {
  std::vector<std::string> plugin_dirs;
  std::string log_level;
  LaunchFlags launch;
};

// Builds the plugin registry from --plugin-dir, WANHOST_PLUGIN_PATH and the built-in folder.
std::unique_ptr<PluginRegistry> make_registry(const GlobalOptions& g);

// Command registration: each adds its subcommand to `app` and sets its callback.
void add_plugins_command(CLI::App& app, GlobalOptions& g);
void add_run_commands(CLI::App& app, GlobalOptions& g);      // run, validate
void add_model_command(CLI::App& app, GlobalOptions& g);     // model forward
void add_bench_command(CLI::App& app, GlobalOptions& g);     // bench
void add_prepare_command(CLI::App& app, GlobalOptions& g);   // prepare, data inspect
void add_generate_command(CLI::App& app, GlobalOptions& g);  // generate
void add_compare_command(CLI::App& app, GlobalOptions& g);   // compare

}  // namespace wanhost::core
