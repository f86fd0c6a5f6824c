// The command-line front end: one function per command, sharing the options every command has.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "../launch/launch_env.hpp"
#include "../plugin/registry.hpp"

namespace wanhost::core {

// Exit codes (documented in docs/cli.md).
inline constexpr int kExitOk = 0;
inline constexpr int kExitFailure = 1;
inline constexpr int kExitUsage = 2;          // bad flag, bad manifest, unknown plugin
inline constexpr int kExitPluginRefused = 3;  // a plugin exists but may not be loaded
inline constexpr int kExitPreempted = 75;  // SIGTERM: saved a checkpoint and stopped (EX_TEMPFAIL)

struct GlobalOptions {
  std::vector<std::string> plugin_dirs;
  std::string log_level;
  LaunchFlags launch;
  std::optional<int> rank, world_size, local_rank, master_port;
  std::optional<std::string> master_addr;
};

// Builds the plugin registry from --plugin-dir, WANHOST_PLUGIN_PATH and the built-in folder.
std::unique_ptr<PluginRegistry> make_registry(const GlobalOptions& g);

// Command registration: each adds its subcommand to `app` and sets its callback.
void add_plugins_command(CLI::App& app, GlobalOptions& g);
void add_run_commands(CLI::App& app, GlobalOptions& g);  // run, validate

}  // namespace wanhost::core
