#include "wanhost/log.hpp"

#include <spdlog/sinks/stdout_color_sinks.h>

namespace wanhost {

std::shared_ptr<spdlog::logger> logger() {
  // The host registers its configured "wanhost" logger at start-up; before that (or in tests and
  // tools without the host) a plain stderr logger stands in.
  if (auto l = spdlog::get("wanhost")) return l;
  static std::shared_ptr<spdlog::logger> fallback = spdlog::stderr_color_mt("wanhost-default");
  return fallback;
}

}  // namespace wanhost
