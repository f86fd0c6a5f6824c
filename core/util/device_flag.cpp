#include "device_flag.hpp"

#include <ATen/Context.h>

#include "wanhost/errors.hpp"

namespace wanhost::core {

c10::Device device_for_flag(const std::string& flag) {
  if (flag == "cuda" && !at::hasCUDA())
    throw UsageError("--device cuda: no CUDA device is visible");
  if (flag == "cuda" || (flag == "auto" && at::hasCUDA())) return c10::Device(c10::kCUDA, 0);
  return c10::Device(c10::kCPU);
}

}  // namespace wanhost::core
