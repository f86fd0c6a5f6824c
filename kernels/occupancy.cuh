// Blocks of a kernel that run at once on the current GPU (its multiprocessors times the kernel's
// resident blocks), for the kernels that size their grids to one wave or a few: asked of the
// runtime once a device and kernel (shared by fp8_kernels.cu and adamw_kernels.cu).
#pragma once

#include <atomic>
#include <cstddef>

#include <cuda_runtime_api.h>

namespace wanhost::kernels {

inline constexpr int kOccupancyDevices = 64;

// `cache`: the caller's, one slot a device (0: not asked yet; one static array a kernel).
// `fallback` where the runtime does not say (not cached, the error cleared so that the launch's
// own check is not misled).
// `dynamic_shared`: the bytes of dynamic shared memory a block launches with.
template <typename Kernel>
int blocks_at_once(Kernel kernel, int threads, std::atomic<int> (&cache)[kOccupancyDevices],
                   int fallback, std::size_t dynamic_shared = 0) {
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess || device < 0 || device >= kOccupancyDevices) {
    (void)cudaGetLastError();
    return fallback;
  }
  if (const int known = cache[device].load(std::memory_order_relaxed); known > 0) return known;
  int multiprocessors = 0, per_multiprocessor = 0;
  if (cudaDeviceGetAttribute(&multiprocessors, cudaDevAttrMultiProcessorCount, device) !=
          cudaSuccess ||
      cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_multiprocessor, kernel, threads,
                                                    dynamic_shared) != cudaSuccess ||
      multiprocessors * per_multiprocessor <= 0) {
    (void)cudaGetLastError();
    return fallback;
  }
  cache[device].store(multiprocessors * per_multiprocessor, std::memory_order_relaxed);
  return multiprocessors * per_multiprocessor;
}

}  // namespace wanhost::kernels
