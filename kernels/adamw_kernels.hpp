// AdamW over many fp32 tensors in a few launches (run.kernels.adamw = "wanhost"; sdk/kit/src/
// optim.cpp, docs/performance.md): the update of torch.optim.AdamW(fused=True) (decoupled weight
// decay, bias-corrected moments, gradients divided by an optional device-side divisor, the whole
// update skipped when a device-side flag is 1), written for the memory's rate. LibTorch's fused
// kernel launches at most 320 blocks of 64 Ki-element chunks at a time (~70 launches for a 1.3B
// model, each too small to fill an H200) and, given a divisor, writes every gradient back; this
// one strides a grid sized to the GPU over every chunk of up to kAdamWTensorsPerLaunch tensors
// whose addresses travel in the kernel's parameters, and never writes a gradient. A plain launcher
// over raw pointers, free of LibTorch.
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

namespace wanhost::kernels {

struct AdamWTensor {
  float* param;
  const float* grad;
  float* exp_avg;
  float* exp_avg_sq;
  std::int64_t numel;
};

struct AdamWScalars {
  float beta1, beta2, weight_decay, eps;
  float lr;                   // used when lr_ptr is null
  const float* lr_ptr;        // device: the learning rate (may be null)
  const float* step;          // device: the update count including this update (>= 1)
  const float* grad_divisor;  // device: each gradient is divided by it (may be null)
  const float* skip;          // device: the update is skipped when it holds 1 (may be null)
};

inline constexpr int kAdamWTensorsPerLaunch = 512;

// Updates `count` tensors (any count: split into launches of kAdamWTensorsPerLaunch) on `stream`.
// Tensors must be contiguous; empty ones are passed over. Per element, in fp32:
//   g = grad / divisor;  p -= lr * wd * p;  m = beta1 m + (1 - beta1) g;
//   v = beta2 v + (1 - beta2) g^2;  p -= (lr / (1 - beta1^step)) m / (sqrt(v) / sqrt(1 -
//   beta2^step) + eps)
// with the moments' updates as fma(beta, m, fma(-beta, g, g)) (LibTorch's order).
cudaError_t adamw_update(const AdamWTensor* tensors, int count, const AdamWScalars& s,
                         cudaStream_t stream);

}  // namespace wanhost::kernels
