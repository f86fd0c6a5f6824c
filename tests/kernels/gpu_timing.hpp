// The kernel-figure tests' timer (CUDA builds only): the mean device time of f on the current
// stream in microseconds, after a few untimed calls (the first calls pay for module loading).
#pragma once

#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAGuard.h>

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

// The same for kernels too short to time eagerly (the host's launch work would be timed): the
// mean device time of f from a CUDA graph of kIters calls, as a replayed training step runs them.
// f must launch on the current stream (it is a side stream while capturing).
inline double replayed_time_us(const std::function<void()>& f) {
  constexpr int kIters = 20;
  f();  // loads the modules, outside the capture
  const auto side = at::cuda::getStreamFromPool();
  at::cuda::CUDAStreamGuard guard(side);
  at::cuda::CUDAGraph graph;
  graph.capture_begin();
  for (int i = 0; i < kIters; ++i) f();
  graph.capture_end();
  graph.replay();
  cudaEvent_t start, stop;
  cudaEventCreate(&start);
  cudaEventCreate(&stop);
  cudaEventRecord(start, side.stream());
  graph.replay();
  cudaEventRecord(stop, side.stream());
  cudaEventSynchronize(stop);
  float ms = 0;
  cudaEventElapsedTime(&ms, start, stop);
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  return 1e3 * ms / kIters;
}

}  // namespace wanhost::testing
