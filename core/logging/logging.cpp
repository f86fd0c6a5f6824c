#include "logging.hpp"

#include <spdlog/cfg/env.h>
#include <spdlog/sinks/basic_file_sink.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <cstdio>
#include <filesystem>
#include <mutex>

namespace wanhost::core {
namespace {

std::string prefix(int rank, int world) {
  return "[%Y-%m-%d %H:%M:%S.%e] [rank " + std::to_string(rank) + "/" + std::to_string(world) +
         "] [%^%l%$] %v";
}

int g_rank = 0, g_world = 1;
std::mutex g_error_mutex;
std::string g_log_error;  // guarded by g_error_mutex

// spdlog's error handler (sinks throw into the logger, which catches and calls this): keep the
// first message and say it once on stderr, which needs no disk.
void on_log_error(const std::string& message) {
  std::lock_guard<std::mutex> lock(g_error_mutex);
  if (!g_log_error.empty()) return;
  g_log_error = message;
  std::fprintf(stderr, "wanhost: cannot write a log file: %s\n", message.c_str());
}

}  // namespace

void setup_logging(int rank, int world_size, const std::string& level) {
  g_rank = rank;
  g_world = world_size;
  auto log = spdlog::get("wanhost");
  if (!log) {
    auto console = std::make_shared<spdlog::sinks::stderr_color_sink_mt>();
    log = std::make_shared<spdlog::logger>("wanhost", console);
    log->set_error_handler(on_log_error);
    spdlog::register_logger(log);
  }
  log->set_pattern(prefix(rank, world_size));  // every sink
  log->set_level(spdlog::level::info);
  spdlog::cfg::load_env_levels();  // SPDLOG_LEVEL=debug or SPDLOG_LEVEL=wanhost=debug
  if (!level.empty()) log->set_level(spdlog::level::from_str(level));
  // Console: other ranks only report warnings and errors; their files get everything.
  log->sinks().front()->set_level(rank == 0 ? spdlog::level::trace : spdlog::level::warn);
  log->flush_on(spdlog::level::warn);
}

void add_rank_log_file(const std::string& run_dir) {
  auto log = spdlog::get("wanhost");
  if (!log) return;
  std::filesystem::create_directories(std::filesystem::path(run_dir) / "logs");
  char name[32];
  std::snprintf(name, sizeof name, "rank_%05d.log", g_rank);
  const std::string path = (std::filesystem::path(run_dir) / "logs" / name).string();
  for (const auto& sink : log->sinks())
    if (auto f = std::dynamic_pointer_cast<spdlog::sinks::basic_file_sink_mt>(sink);
        f && f->filename() == path)
      return;
  auto file = std::make_shared<spdlog::sinks::basic_file_sink_mt>(path, /*truncate=*/false);
  file->set_pattern(prefix(g_rank, g_world));
  file->set_level(spdlog::level::trace);
  log->sinks().push_back(file);
}

void flush_logs() {
  if (auto log = spdlog::get("wanhost")) log->flush();
}

std::string log_write_error() {
  std::lock_guard<std::mutex> lock(g_error_mutex);
  return g_log_error;
}

}  // namespace wanhost::core
