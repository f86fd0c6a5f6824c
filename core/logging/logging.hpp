// The process-wide logger: every line carries "[rank r/w]"; the console shows rank 0's messages
// plus warnings and errors from every rank; each rank also writes its own file
// (<run>/logs/rank_NNNNN.log) once the run folder is known. SPDLOG_LEVEL is honoured.
#pragma once

#include <string>

namespace wanhost::core {

// Installs the "wanhost" logger (idempotent: a second call only updates rank and level).
// `level`: "trace", "debug", "info", "warn", "error" or "" (SPDLOG_LEVEL, else info).
void setup_logging(int rank, int world_size, const std::string& level = "");
// Adds the per-rank log file <run_dir>/logs/rank_NNNNN.log (appending).
void add_rank_log_file(const std::string& run_dir);
// Flushes every sink (at exit and before a fatal error).
void flush_logs();

}  // namespace wanhost::core
