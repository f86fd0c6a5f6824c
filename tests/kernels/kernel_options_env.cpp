// Test-only: perf.sh runs this suite a second time with other kernel choices, given as
// WANHOST_TEST_LT_EPILOGUES / WANHOST_TEST_PACKED_ATTENTION (the values of run.kernels).
#include <cstdlib>

#include "wanhost/kit/kernel_options.hpp"

namespace {
const bool kSet = [] {
  const char* lt = std::getenv("WANHOST_TEST_LT_EPILOGUES");
  const char* pa = std::getenv("WANHOST_TEST_PACKED_ATTENTION");
  if (lt || pa)
    wanhost::set_kernel_options(
        wanhost::parse_kernel_options(pa ? pa : "auto", "fused", lt ? lt : "dgelu"));
  return true;
}();
}  // namespace
