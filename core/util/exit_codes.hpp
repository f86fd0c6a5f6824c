// Exit codes of the wanhost program (documented in docs/architecture.md, "Errors and exit codes").
#pragma once

namespace wanhost::core {

inline constexpr int kExitOk = 0;
inline constexpr int kExitFailure = 1;        // runtime failure
inline constexpr int kExitUsage = 2;          // bad flag, bad manifest, unknown plugin
inline constexpr int kExitPluginRefused = 3;  // a plugin exists but may not be loaded
inline constexpr int kExitPreempted = 75;  // SIGTERM: saved a checkpoint and stopped (EX_TEMPFAIL)

}  // namespace wanhost::core
