// Run outputs for humans and machines: metrics.jsonl (one JSON object a step) and TensorBoard
// event files written natively (TFRecord framing + hand-encoded Event protos, no Python).
#pragma once

#include <cstdint>
#include <fstream>
#include <string>

#include "wanhost/config.hpp"

namespace wanhost::core {

class MetricsLog {
 public:
  // Opens <run>/metrics.jsonl for appending. When resuming from global step `resume_step`, lines
  // of later steps (written after that checkpoint by the interrupted run) are dropped first, so
  // the file never holds a step twice.
  // A metrics.jsonl that is not a regular file (a device such as /dev/null) is appended to as
  // it is.
  MetricsLog(const std::string& run_dir, long resume_step);
  ~MetricsLog();
  MetricsLog(const MetricsLog&) = delete;
  MetricsLog& operator=(const MetricsLog&) = delete;
  // Appends one line. Throws std::runtime_error naming the file and the reason (a full disk)
  // when the line cannot be written whole; what was written of it is cut off again, so the file
  // never ends in a partial record.
  void write(const Json& record);

 private:
  std::string path_;
  int fd_ = -1;
};

class TensorBoardWriter {
 public:
  // A new events file in <run>/tensorboard/. `start_step` > 0 writes a SessionLog START at that
  // step, which tells TensorBoard to discard events of later steps from the interrupted run.
  TensorBoardWriter(const std::string& run_dir, long start_step);
  void scalar(const std::string& tag, double value, long step);
  // Throws std::runtime_error naming the file when a write failed (a full disk).
  void flush();

 private:
  void record(const std::string& event_proto);
  std::string path_;
  std::ofstream out_;
};

// CRC-32C (Castagnoli), as TFRecord framing needs (exposed for tests).
std::uint32_t crc32c(const void* data, std::size_t n);

}  // namespace wanhost::core
