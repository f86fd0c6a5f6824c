// A training step captured once as a CUDA graph and then replayed: one launch for the ~1000
// kernels of a step instead of one host call each, so the GPU stops waiting on the host between
// kernels (stage 1 of the 1.3B model spent ~2.4 ms of a 31 ms step idle between kernels on an
// H200, 2026-12-01). `wanhost bench --cuda-graph` uses it.
//
// What a captured step may do: fixed shapes and device addresses (replay reuses the tensors the
// capture allocated, from the graph's private memory pool, and overwrites them), no host
// synchronisation, no host-side branching on device values, everything on the current stream.
// Tensors the step leaves behind (outputs, parameter gradients) are the capture's: each replay
// writes its results into them again.
#pragma once

#include <functional>
#include <memory>

#include <c10/core/Device.h>

namespace wanhost::core {

class StepGraph {
 public:
  // Runs fn `warmup` times on a side stream (cuBLAS/cuDNN plans, workspaces, algorithm caches
  // settle there), then captures one call of it. Throws std::invalid_argument when the device is
  // not a GPU or the build has no CUDA, std::runtime_error when the capture fails.
  StepGraph(const c10::Device& device, const std::function<void()>& fn, int warmup = 2);
  ~StepGraph();
  StepGraph(const StepGraph&) = delete;
  StepGraph& operator=(const StepGraph&) = delete;

  // Launches the captured step on the current stream (asynchronous, as the step itself was).
  void replay();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace wanhost::core
