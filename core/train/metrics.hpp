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
  MetricsLog(const std::string& run_dir, long resume_step);
  void write(const Json& record);

 private:
  std::ofstream out_;
};

class TensorBoardWriter {
 public:
  // A new events file in <run>/tensorboard/. `start_step` > 0 writes a SessionLog START at that
  // step, which tells TensorBoard to discard events of later steps from the interrupted run.
  TensorBoardWriter(const std::string& run_dir, long start_step);
  void scalar(const std::string& tag, double value, long step);
  void flush();

 private:
  void record(const std::string& event_proto);
  std::ofstream out_;
};

// CRC-32C (Castagnoli), as TFRecord framing needs (exposed for tests).
std::uint32_t crc32c(const void* data, std::size_t n);

}  // namespace wanhost::core
