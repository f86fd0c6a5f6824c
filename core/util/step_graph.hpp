// A training step captured once as a CUDA graph and then replayed: one launch for the ~1000
// kernels of a step instead of one host call each, so the GPU stops waiting on the host between
// kernels (stage 1 of the 1.3B model spent ~2.4 ms of a 31 ms step idle between kernels on an
// H200, 2026-12-01). `wanhost bench --cuda-graph` and the trainer (run.cuda_graphs) use it.
//
// What a captured step may do: fixed shapes and device addresses (replay reuses the tensors the
// capture allocated, from the graph's private memory pool, and overwrites them), no host
// synchronisation, no host-side branching on device values, everything on the capture's stream.
// Tensors the step leaves behind (outputs, parameter gradients) are the capture's: each replay
// writes its results into them again. Host memory a captured copy reads (a pinned tensor copied
// with non_blocking) is read again, at the same address, by every replay.
#pragma once

#include <functional>
#include <memory>
#include <utility>

#include <c10/core/Device.h>

namespace wanhost::core {

class StepGraph {
 public:
  // A memory pool several graphs may share when they never run at the same time (their
  // intermediates reuse the same memory); {0, 0}: a pool of the graph's own.
  using Pool = std::pair<unsigned long long, unsigned long long>;
  static Pool new_pool();  // throws std::invalid_argument without CUDA

  struct Options {
    int warmup = 2;  // calls of fn before the capture, on the capture's stream
    // Capture on the caller's current stream, which must not be the default stream: the
    // caller's own earlier calls on it were the warm-up (cuBLAS workspaces, caches). Else on a
    // side stream that starts after the caller's queued work and that the caller then waits for.
    bool on_current_stream = false;
    Pool pool{0, 0};
    // Other threads keep using the GPU during the capture (an input prefetcher); only this
    // thread's calls that cannot be captured fail it (cudaStreamCaptureModeThreadLocal).
    bool other_threads = false;
  };

  // Runs fn options.warmup times, then captures one call of it; a capture that fails (fn throws,
  // or does something a graph cannot hold) is ended, nothing of it runs, and the stream can be
  // used again. Throws std::invalid_argument when the device is not a GPU or the build has no
  // CUDA, std::runtime_error when the capture fails.
  StepGraph(const c10::Device& device, const std::function<void()>& fn, const Options& options);
  StepGraph(const c10::Device& device, const std::function<void()>& fn, int warmup = 2)
      : StepGraph(device, fn, Options{warmup}) {}
  ~StepGraph();
  StepGraph(const StepGraph&) = delete;
  StepGraph& operator=(const StepGraph&) = delete;

  // Launches the captured step on the current stream (asynchronous, as the step itself was).
  void replay();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// A stream of its own as the device's current stream while it lives (a graph cannot be captured on
// the default stream, and is best captured on the stream its warm-up ran on). It starts after the
// work queued so far; the previous stream waits for its work at the end. Nothing on a CPU device.
class SideStreamScope {
 public:
  explicit SideStreamScope(const c10::Device& device);
  ~SideStreamScope();
  SideStreamScope(const SideStreamScope&) = delete;
  SideStreamScope& operator=(const SideStreamScope&) = delete;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace wanhost::core
