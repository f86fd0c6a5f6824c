// Error types shared by the host and plugins. The host maps them to exit codes:
// ConfigError and UsageError -> 2 (the user must change a flag or a manifest), anything else -> 1.
#pragma once

#include <stdexcept>
#include <string>

namespace wanhost {

// A bad command-line flag or argument. The message names the flag.
class UsageError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// A bad configuration value. `pointer` is the JSON pointer (RFC 6901) into the resolved run
// manifest, e.g. "/stages/0/global_batch"; `plugin` names the plugin whose schema was broken (if
// any).
class ConfigError : public std::runtime_error {
 public:
  ConfigError(std::string pointer, const std::string& message, std::string plugin = {})
      : std::runtime_error(format(pointer, message, plugin)),
        pointer_(std::move(pointer)),
        plugin_(std::move(plugin)) {}
  const std::string& pointer() const { return pointer_; }
  const std::string& plugin() const { return plugin_; }

 private:
  static std::string format(const std::string& pointer, const std::string& message,
                            const std::string& plugin) {
    std::string where = pointer.empty() ? std::string("/") : pointer;
    std::string s = "config error at " + where;
    if (!plugin.empty()) s += " (plugin '" + plugin + "')";
    return s + ": " + message;
  }
  std::string pointer_;
  std::string plugin_;
};

// A file that is malformed or unsafe to read. The message names the file and, where it helps,
// the byte offset or key.
class FormatError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

}  // namespace wanhost
