// The `--device auto|cpu|cuda` flag of the commands that run encoders or a model outside a run
// (`prepare`, `generate`): auto takes the first CUDA device when one is visible.
#pragma once

#include <string>

#include <c10/core/Device.h>

namespace wanhost::core {

// Throws UsageError naming --device when CUDA is asked for and none is visible.
c10::Device device_for_flag(const std::string& flag);

}  // namespace wanhost::core
