// The fused and FP8 cast kernels' partial sums (parameter and bias gradients, written a slot per
// block of rows) reduced over their slots on the GPU by kernels::sum_slots, in a fixed order: one
// small kernel where ATen's general reduction took ~4.7 us a call, 670 calls in a replayed 1.3B
// stage-1 step on an H100 (docs/performance.md). Internal to libwanhost_kit; CUDA builds only.
#pragma once

#include <cstdint>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/util/Exception.h>

#include "fused_kernels.hpp"

namespace wanhost::slot_sums {

// partials [G..., S..., W...] (fp32, contiguous, on a GPU) summed over the `slot_dims` dimensions
// that follow the first `group_dims`: [G..., W...].
inline at::Tensor summed(const at::Tensor& partials, std::int64_t group_dims,
                         std::int64_t slot_dims) {
  TORCH_CHECK(
      partials.is_cuda() && partials.scalar_type() == at::kFloat && partials.is_contiguous() &&
          group_dims >= 0 && slot_dims >= 0 && group_dims + slot_dims <= partials.dim(),
      "slot sums: fp32 contiguous partial sums on a GPU expected, got ", partials.toString(), " ",
      partials.sizes(), " (", group_dims, " group and ", slot_dims, " slot dimensions)");
  std::int64_t groups = 1, slots = 1, width = 1;
  std::vector<std::int64_t> out_sizes;
  for (std::int64_t i = 0; i < partials.dim(); ++i) {
    const auto n = partials.size(i);
    if (i < group_dims) {
      groups *= n;
      out_sizes.push_back(n);
    } else if (i < group_dims + slot_dims) {
      slots *= n;
    } else {
      width *= n;
      out_sizes.push_back(n);
    }
  }
  auto out = at::empty(out_sizes, partials.options());
  const auto err =
      kernels::sum_slots(partials.data_ptr<float>(), groups, slots, width, out.data_ptr<float>(),
                         at::cuda::getCurrentCUDAStream(partials.get_device()).stream());
  TORCH_CHECK(err == cudaSuccess, "slot sums of ", partials.sizes(), ": ", cudaGetErrorString(err));
  return out;
}

}  // namespace wanhost::slot_sums
