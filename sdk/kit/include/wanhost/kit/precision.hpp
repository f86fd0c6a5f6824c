// Mixed precision: an RAII guard that runs the enclosed forward pass under LibTorch's autocast
// (bf16 matrix products on GPU, fp32 islands where the model asks for them), like
// torch.autocast in Python. On CPU with fp32 compute it does nothing.
#pragma once

#include <ATen/autocast_mode.h>

#include "wanhost/parallel.hpp"

namespace wanhost {

class AutocastGuard {
 public:
  explicit AutocastGuard(const ParallelContext& ctx)
      : device_(ctx.device.type()),
        active_(ctx.compute_dtype != at::kFloat && ctx.compute_dtype != ctx.param_dtype) {
    if (!active_) return;
    previous_enabled_ = at::autocast::is_autocast_enabled(device_);
    previous_dtype_ = at::autocast::get_autocast_dtype(device_);
    at::autocast::set_autocast_enabled(device_, true);
    at::autocast::set_autocast_dtype(device_, ctx.compute_dtype);
    at::autocast::increment_nesting();
  }
  ~AutocastGuard() {
    if (!active_) return;
    if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
    at::autocast::set_autocast_enabled(device_, previous_enabled_);
    at::autocast::set_autocast_dtype(device_, previous_dtype_);
  }
  AutocastGuard(const AutocastGuard&) = delete;
  AutocastGuard& operator=(const AutocastGuard&) = delete;

 private:
  at::DeviceType device_;
  bool active_;
  bool previous_enabled_ = false;
  at::ScalarType previous_dtype_ = at::kFloat;
};

}  // namespace wanhost
