// The boundary between the host and plugin code. Every call the host makes into a plugin goes
// through call_plugin(), so that an error leaving the plugin says which plugin, of which kind, in
// which call: the original exception is kept nested inside a PluginError (its type still decides
// the exit code: a ConfigError from a plugin's own checks is a usage error, exit 2), and anything
// that is not a std::exception (`throw 42`) becomes a PluginError of its own instead of ending the
// process in std::terminate.
#pragma once

#include <exception>
#include <stdexcept>
#include <string>
#include <utility>

namespace wanhost::core {

// The message of an error for a user: LibTorch's c10::Error without its C++ stack trace (its
// what() appends one), any other exception's what().
std::string error_message(const std::exception& e);

class PluginError : public std::runtime_error {
 public:
  PluginError(const std::string& plugin, const std::string& kind, const std::string& call,
              const std::string& detail)
      : std::runtime_error("plugin '" + plugin + "' (" + kind + ") failed in " + call + ": " +
                           detail) {}
};

// Runs `f` (a call into plugin `plugin` of kind `kind`), attaching the plugin to what it throws.
template <class F>
decltype(auto) call_plugin(const std::string& plugin, const std::string& kind, const char* call,
                           F&& f) {
  try {
    return std::forward<F>(f)();
  } catch (const PluginError&) {
    throw;  // already named by an inner boundary
  } catch (const std::exception& e) {
    std::throw_with_nested(PluginError(plugin, kind, call, error_message(e)));
  } catch (...) {
    throw PluginError(plugin, kind, call, "a non-standard exception (not a std::exception)");
  }
}

}  // namespace wanhost::core
