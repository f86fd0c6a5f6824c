#include "stop_signal.hpp"

#include <atomic>
#include <csignal>

namespace wanhost::core {
namespace {

std::atomic<bool> g_stop{false};
static_assert(std::atomic<bool>::is_always_lock_free, "the flag is set from a signal handler");

extern "C" void on_sigterm(int) {
  g_stop.store(true);
}

}  // namespace

void install_stop_signal_handler() {
  struct sigaction sa {};
  sa.sa_handler = on_sigterm;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;  // interrupted reads and writes continue
  sigaction(SIGTERM, &sa, nullptr);
}

bool stop_signal_received() {
  return g_stop.load();
}

}  // namespace wanhost::core
