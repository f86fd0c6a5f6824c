#include "step_graph.hpp"

#include <stdexcept>
#include <string>

#if WANHOST_WITH_CUDA
#include <ATen/cuda/CUDAEvent.h>
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace wanhost::core {

#if WANHOST_WITH_CUDA
struct StepGraph::Impl {
  at::cuda::CUDAGraph graph;
};

StepGraph::StepGraph(const c10::Device& device, const std::function<void()>& fn, int warmup) {
  if (!device.is_cuda())
    throw std::invalid_argument("CUDA graphs need a CUDA device, not " + device.str());
  c10::cuda::CUDAGuard device_guard(device);
  // Capture cannot run on the legacy default stream; the side stream starts after all work
  // queued so far and the caller's stream continues after the capture's warm-up work.
  const auto caller = c10::cuda::getCurrentCUDAStream(device.index());
  const auto side = c10::cuda::getStreamFromPool(false, device.index());
  at::cuda::CUDAEvent ready;
  ready.record(caller);
  ready.block(side);
  impl_ = std::make_unique<Impl>();
  {
    c10::cuda::CUDAStreamGuard stream_guard(side);
    for (int i = 0; i < warmup; ++i) fn();
    try {
      impl_->graph.capture_begin();
      fn();
      impl_->graph.capture_end();
    } catch (const std::exception& e) {
      throw std::runtime_error(std::string("capturing the step as a CUDA graph failed: ") +
                               e.what());
    }
  }
  at::cuda::CUDAEvent done;
  done.record(side);
  done.block(caller);
}

void StepGraph::replay() {
  impl_->graph.replay();
}
#else
struct StepGraph::Impl {};

StepGraph::StepGraph(const c10::Device& device, const std::function<void()>&, int) {
  throw std::invalid_argument("CUDA graphs need a CUDA build of wanhost (device " + device.str() +
                              ")");
}

void StepGraph::replay() {}
#endif

StepGraph::~StepGraph() = default;

}  // namespace wanhost::core
