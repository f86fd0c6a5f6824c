// SIGTERM (preemption) handling: the program installs the handler first thing, so a SIGTERM at any
// moment after that (plugin loading, config checks, model building, a step) becomes a clean stop
// with exit 75 instead of the default kill (143). Only the dynamic loader's work before main()
// (loading LibTorch, ~0.1 s) comes before it.
#pragma once

namespace wanhost::core {

// Installs the SIGTERM handler (idempotent, async-signal-safe: it only sets a flag).
void install_stop_signal_handler();
// True once a SIGTERM has arrived.
bool stop_signal_received();

}  // namespace wanhost::core
