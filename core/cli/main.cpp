// wanhost: entry point. Maps errors to exit codes (2: usage/config, 3: plugin refused, 1: other).
#include <exception>
#include <iostream>

#include "../comm/mpi_communicator.hpp"
#include "../logging/logging.hpp"
#include "../plugin/plugin_call.hpp"
#include "../plugin/registry.hpp"
#include "../util/exit_codes.hpp"
#include "app.hpp"
#include "wanhost/errors.hpp"
#include "wanhost/log.hpp"

namespace {

// Usage and configuration errors exit 2, refused plugins 3, the rest 1. An error from a plugin
// (core/plugin/plugin_call.hpp) carries the plugin's own exception, whose type decides.
int exit_code_for(const std::exception& e) {
  using namespace wanhost::core;
  if (const auto* n = dynamic_cast<const std::nested_exception*>(&e); n && n->nested_ptr()) {
    try {
      std::rethrow_exception(n->nested_ptr());
    } catch (const std::exception& inner) {
      return exit_code_for(inner);
    } catch (...) {
      return kExitFailure;
    }
  }
  if (dynamic_cast<const wanhost::ConfigError*>(&e) || dynamic_cast<const wanhost::UsageError*>(&e))
    return kExitUsage;
  if (dynamic_cast<const PluginRefused*>(&e)) return kExitPluginRefused;
  return kExitFailure;
}

int run_cli(int argc, char** argv) {
  using namespace wanhost::core;
  setup_logging(0, 1);
  CLI::App app{"wanhost: train Wan 2.1 text-to-video diffusion transformers (host + plugins)",
               "wanhost"};
  app.require_subcommand(1);
  app.set_version_flag("--version", std::string("wanhost ") + WANHOST_VERSION + " (SDK ABI " +
                                        std::to_string(WANHOST_SDK_ABI_MAJOR) + "." +
                                        std::to_string(WANHOST_SDK_ABI_MINOR) + ", LibTorch " +
                                        WANHOST_TORCH_VERSION + ", CUDA " +
                                        (WANHOST_WITH_CUDA ? "on" : "off") + ")");
  GlobalOptions g;
  app.add_option("--plugin-dir", g.plugin_dirs, "Folder to search for plugins first (repeatable)")
      ->type_name("DIR");
  app.add_option("--log-level", g.log_level,
                 "trace, debug, info, warn, error (default: SPDLOG_LEVEL or info)")
      ->check(CLI::IsMember({"trace", "debug", "info", "warn", "error", "critical", "off"}));
  add_plugins_command(app, g);
  add_run_commands(app, g);
  add_model_command(app, g);
  add_bench_command(app, g);
  add_prepare_command(app, g);
  add_generate_command(app, g);
  add_compare_command(app, g);
  try {
    app.parse(argc, argv);
    flush_logs();
    return kExitOk;
  } catch (const CLI::RuntimeError& e) {  // a command finished with its own exit code
    flush_logs();
    return e.get_exit_code();
  } catch (const CLI::ParseError& e) {
    const int code = app.exit(e);
    return code == 0 ? kExitOk : kExitUsage;
  } catch (const std::exception& e) {
    wanhost::logger()->error("{}", error_message(e));
    flush_logs();
    return exit_code_for(e);
  } catch (...) {  // not from a plugin (call_plugin names those): a host bug
    wanhost::logger()->error("internal error: a non-standard exception reached the top level");
    flush_logs();
    return kExitFailure;
  }
}
}  // namespace

int main(int argc, char** argv) {
  const int code = run_cli(argc, argv);
  // After an MPI launch: finalize on success; on failure abort, so that ranks still waiting in a
  // collective for this one stop now instead of at their timeout.
  wanhost::core::mpi_shutdown(code);
  return code;
}
