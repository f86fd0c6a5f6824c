// Shared by the GPU parity tests of tests/kernels.
#pragma once

#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include <algorithm>

namespace wanhost::testing {

// ||a - b|| / ||b|| in float64 on the CPU; a NaN in `a` fails the calling test.
inline double rel_err(const at::Tensor& a, const at::Tensor& b) {
  auto x = a.to(at::kDouble).cpu(), y = b.to(at::kDouble).cpu();
  EXPECT_FALSE(x.isnan().any().item<bool>()) << "NaN in the tested output";
  return (x - y).norm().item<double>() / std::max(y.norm().item<double>(), 1e-30);
}

}  // namespace wanhost::testing
