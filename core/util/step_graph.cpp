#include "step_graph.hpp"

#include <optional>
#include <stdexcept>
#include <string>

#if WANHOST_WITH_CUDA
#include <ATen/cuda/CUDAEvent.h>
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>
#endif

namespace wanhost::core {

#if WANHOST_WITH_CUDA
struct StepGraph::Impl {
  at::cuda::CUDAGraph graph;
};

StepGraph::Pool StepGraph::new_pool() {
  return at::cuda::graph_pool_handle();
}

StepGraph::StepGraph(const c10::Device& device, const std::function<void()>& fn,
                     const Options& options) {
  if (!device.is_cuda())
    throw std::invalid_argument("CUDA graphs need a CUDA device, not " + device.str());
  c10::cuda::CUDAGuard device_guard(device);
  const auto caller = c10::cuda::getCurrentCUDAStream(device.index());
  // Capture cannot run on the legacy default stream. A side stream starts after all work queued
  // so far and the caller's stream continues after the capture's warm-up work.
  std::optional<c10::cuda::CUDAStream> side;
  if (!options.on_current_stream) {
    side = c10::cuda::getStreamFromPool(false, device.index());
    at::cuda::CUDAEvent ready;
    ready.record(caller);
    ready.block(*side);
  } else if (caller == c10::cuda::getDefaultCUDAStream(device.index())) {
    throw std::invalid_argument(
        "capturing a CUDA graph on the current stream needs a stream other than the default one");
  }
  impl_ = std::make_unique<Impl>();
  {
    c10::cuda::CUDAStreamGuard stream_guard(side ? *side : caller);
    for (int i = 0; i < options.warmup; ++i) fn();
    bool capturing = false;
    try {
      impl_->graph.capture_begin(options.pool, options.other_threads
                                                   ? cudaStreamCaptureModeThreadLocal
                                                   : cudaStreamCaptureModeGlobal);
      capturing = true;
      fn();
      capturing = false;
      impl_->graph.capture_end();
    } catch (const std::exception& e) {
      // End the capture (its graph is dropped) so that the stream and the allocator's pool routing
      // are back to normal; capture_end throws for an invalidated capture after doing so.
      if (capturing) {
        try {
          impl_->graph.capture_end();
        } catch (const std::exception&) {
        }
      }
      (void)cudaGetLastError();  // the capture's error is not sticky; clear it
      impl_.reset();
      throw std::runtime_error(std::string("capturing the step as a CUDA graph failed: ") +
                               e.what());
    }
  }
  if (side) {
    at::cuda::CUDAEvent done;
    done.record(*side);
    done.block(caller);
  }
}

void StepGraph::replay() {
  impl_->graph.replay();
}

struct SideStreamScope::Impl {
  c10::cuda::CUDAStream previous;
  c10::cuda::CUDAStreamGuard guard;
};

SideStreamScope::SideStreamScope(const c10::Device& device) {
  if (!device.is_cuda()) return;
  const auto previous = c10::cuda::getCurrentCUDAStream(device.index());
  const auto side = c10::cuda::getStreamFromPool(false, device.index());
  at::cuda::CUDAEvent ready;
  ready.record(previous);
  ready.block(side);
  impl_.reset(new Impl{previous, c10::cuda::CUDAStreamGuard(side)});
}

SideStreamScope::~SideStreamScope() {
  if (!impl_) return;
  at::cuda::CUDAEvent done;
  done.record(c10::cuda::getCurrentCUDAStream(impl_->previous.device_index()));
  done.block(impl_->previous);
  impl_.reset();  // the guard puts the previous stream back
}
#else
struct StepGraph::Impl {};

StepGraph::Pool StepGraph::new_pool() {
  throw std::invalid_argument("CUDA graphs need a CUDA build of wanhost");
}

StepGraph::StepGraph(const c10::Device& device, const std::function<void()>&, const Options&) {
  throw std::invalid_argument("CUDA graphs need a CUDA build of wanhost (device " + device.str() +
                              ")");
}

void StepGraph::replay() {}

struct SideStreamScope::Impl {};

SideStreamScope::SideStreamScope(const c10::Device& device) {
  if (device.is_cuda())
    throw std::invalid_argument("a CUDA stream needs a CUDA build of wanhost (device " +
                                device.str() + ")");
}

SideStreamScope::~SideStreamScope() = default;
#endif

StepGraph::~StepGraph() = default;

}  // namespace wanhost::core
