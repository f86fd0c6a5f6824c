// The kernel-figure tests' timer (CUDA builds only): the mean device time of f on the current
// stream in microseconds, after a few untimed calls (the first calls pay for module loading).
#pragma once

#include <ATen/cuda/CUDAContext.h>

#include <cuda_runtime_api.h>

#include <functional>

namespace wanhost::testing {

inline double time_us(const std::function<void()>& f) {
  constexpr int kWarmup = 3, kIters = 20;
  for (int i = 0; i < kWarmup; ++i) f();
  cudaEvent_t start, stop;
  cudaEventCreate(&start);
  cudaEventCreate(&stop);
  const auto stream = at::cuda::getCurrentCUDAStream().stream();
  cudaEventRecord(start, stream);
  for (int i = 0; i < kIters; ++i) f();
  cudaEventRecord(stop, stream);
  cudaEventSynchronize(stop);
  float ms = 0;
  cudaEventElapsedTime(&ms, start, stop);
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  return 1e3 * ms / kIters;
}

}  // namespace wanhost::testing
