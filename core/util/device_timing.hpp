// Timing on the compute device: CUDA events on GPUs, a host clock on the CPU; the matrix
// product peak that MFU figures are measured against; peak memory (`wanhost bench`, run metrics).
#pragma once

#include <chrono>
#include <functional>
#include <vector>

#include <c10/core/Device.h>

namespace wanhost::core {

// Host seconds since `t` (the steady clock: wall time of host work, waits included).
double seconds_since(std::chrono::steady_clock::time_point t);
// Seconds of one call of fn (on a GPU: between two events on the current stream).
double time_once(const c10::Device& device, const std::function<void()>& fn);
// The median of timings (the upper middle one of an even count); v must not be empty.
double median(std::vector<double> v);
// Waits for all work queued on the device (no-op on the CPU).
void sync_device(const c10::Device& device);
// TFLOP/s of an 8192^3 bf16 matrix product on a GPU (1024^3 fp32 on the CPU). Resets the
// device's peak-memory statistics afterwards, so the probe does not count as the caller's use.
double matmul_peak_tflops(const c10::Device& device);
// GPU: the caching allocator's peak of allocated bytes since the last reset; CPU: the process's
// peak resident set.
double peak_memory_gib(const c10::Device& device);
void reset_peak_memory(const c10::Device& device);  // GPU only (the CPU's peak cannot be reset)

}  // namespace wanhost::core
