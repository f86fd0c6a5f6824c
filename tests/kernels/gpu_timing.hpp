// The kernel-figure tests' timers (CUDA builds only): the mean device time of f in microseconds,
// eagerly on the current stream after a few untimed calls (the first calls pay for module
// loading), or replayed from a CUDA graph.
#pragma once

#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAGuard.h>

#include <cuda_runtime_api.h>

#include <functional>

namespace wanhost::testing {

// Device milliseconds that `launch` takes on `stream`, between two events.
inline float event_ms(cudaStream_t stream, const std::function<void()>& launch) {
  cudaEvent_t start, stop;
  cudaEventCreate(&start);
  cudaEventCreate(&stop);
  cudaEventRecord(start, stream);
  launch();
  cudaEventRecord(stop, stream);
  cudaEventSynchronize(stop);
  float ms = 0;
  cudaEventElapsedTime(&ms, start, stop);
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  return ms;
}

inline double time_us(const std::function<void()>& f) {
  constexpr int kWarmup = 3, kIters = 20;
  for (int i = 0; i < kWarmup; ++i) f();
  const float ms = event_ms(at::cuda::getCurrentCUDAStream().stream(), [&] {
    for (int i = 0; i < kIters; ++i) f();
  });
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
  return 1e3 * event_ms(side.stream(), [&] { graph.replay(); }) / kIters;
}

}  // namespace wanhost::testing
