#include "device_timing.hpp"

#include <algorithm>

#include <sys/resource.h>

#include <chrono>

#include <ATen/ATen.h>
#if WANHOST_WITH_CUDA
#include <ATen/cuda/CUDAEvent.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAFunctions.h>
#endif

namespace wanhost::core {

double time_once(const c10::Device& device, const std::function<void()>& fn) {
#if WANHOST_WITH_CUDA
  if (device.is_cuda()) {
    at::cuda::CUDAEvent start(cudaEventDefault), stop(cudaEventDefault);
    start.record();
    fn();
    stop.record();
    stop.synchronize();
    return start.elapsed_time(stop) / 1e3;
  }
#endif
  (void)device;
  const auto t0 = std::chrono::steady_clock::now();
  fn();
  return seconds_since(t0);
}

double seconds_since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

void sync_device(const c10::Device& device) {
#if WANHOST_WITH_CUDA
  if (device.is_cuda()) c10::cuda::device_synchronize();
#endif
  (void)device;
}

double peak_memory_gib(const c10::Device& device) {
#if WANHOST_WITH_CUDA
  if (device.is_cuda()) {
    const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(device.index());
    return static_cast<double>(stats.allocated_bytes[0].peak) / (1024.0 * 1024.0 * 1024.0);
  }
#endif
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return static_cast<double>(ru.ru_maxrss) / (1024.0 * 1024.0);
}

void reset_peak_memory(const c10::Device& device) {
#if WANHOST_WITH_CUDA
  if (device.is_cuda()) c10::cuda::CUDACachingAllocator::resetPeakStats(device.index());
#endif
  (void)device;
}

double matmul_peak_tflops(const c10::Device& device) {
  const bool cuda = device.is_cuda();
  const std::int64_t n = cuda ? 8192 : 1024;
  const auto opts = at::TensorOptions().device(device).dtype(cuda ? at::kBFloat16 : at::kFloat);
  auto a = at::randn({n, n}, opts), b = at::randn({n, n}, opts);
  for (int i = 0; i < 3; ++i) at::mm(a, b);
  sync_device(device);
  const int reps = cuda ? 10 : 2;
  const double t = time_once(device, [&] {
    for (int i = 0; i < reps; ++i) at::mm(a, b);
  });
  a.reset();
  b.reset();
  reset_peak_memory(device);  // the probe's buffers are not the caller's memory use
  return reps * 2.0 * n * n * n / t / 1e12;
}

}  // namespace wanhost::core
