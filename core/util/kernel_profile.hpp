// Where a step's device time goes: runs a function under LibTorch's profiler (Kineto/CUPTI on
// GPUs), writes a Chrome trace and sums the device kernels' time by name and by class (matrix
// products, attention, wanhost's fused kernels, norms, elementwise, copies, ...).
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include <c10/core/Device.h>

#include "wanhost/config.hpp"

namespace wanhost::core {

struct KernelTime {
  std::string name, kind;  // kind: kernel_class(name)
  double ms = 0;           // per call of the profiled function
  double calls = 0;        // per call of the profiled function
};

struct KernelProfile {
  std::vector<KernelTime> kernels;  // by time, longest first
  double total_ms = 0;              // summed kernel time per call (not wall time)
  // GPUs: from the first device activity's start to the last one's end, divided by the calls
  // (with several calls the gaps between them count too), and the activities in it:
  // span_ms - total_ms is the time the device waited between them (launch gaps, host reads; a
  // replayed CUDA graph leaves only the dependent kernels' own gaps). 0 on the CPU.
  double span_ms = 0;
  double launches = 0;  // device activities (kernels, copies, fills) per call
  // Summed time per class, longest first.
  std::vector<std::pair<std::string, double>> classes() const;
  Json to_json(std::size_t top) const;
  std::string table(std::size_t top) const;
};

// The class of a device kernel from its (demangled) name.
std::string kernel_class(const std::string& name);

// Runs fn `repeats` times under the profiler (device activity on GPUs, operators on the CPU),
// saves a Chrome trace to trace_path (unless empty) and returns per-call averages.
KernelProfile profile_kernels(const c10::Device& device, const std::function<void()>& fn,
                              int repeats, const std::string& trace_path);

}  // namespace wanhost::core
