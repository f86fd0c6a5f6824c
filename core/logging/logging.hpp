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
// The first failure to write a log file (a full disk), or "" when every write succeeded. spdlog
// reports such failures to its error handler instead of throwing; the trainer flushes the logs
// after every step and stops the run when this is set.
std::string log_write_error();

}  // namespace wanhost::core
