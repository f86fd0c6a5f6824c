// Logging for plugins: the host configures one spdlog logger ("wanhost") with the rank prefix, the
// console policy (rank 0 + warnings from every rank) and the per-rank file; plugins log through it.
#pragma once

#include <memory>

#include <spdlog/spdlog.h>

namespace wanhost {

// The process-wide logger (never null; a plain console logger before the host configured one).
std::shared_ptr<spdlog::logger> logger();

}  // namespace wanhost
