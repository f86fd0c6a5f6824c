// 16-byte accesses shared by the kernels (fused_kernels.cu, fp8_kernels.cu): one uint4 word
// holds eight bf16 or four fp32 elements; these turn it into floats. Device code only.
#pragma once

#include <cuda_bf16.h>

namespace wanhost::kernels {

// Eight bf16 elements of one 16-byte word as floats, in order.
__device__ __forceinline__ void bf16x8_to_floats(const uint4& raw, float* out) {
  const auto* h = reinterpret_cast<const __nv_bfloat162*>(&raw);
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    const float2 f = __bfloat1622float2(h[k]);
    out[2 * k] = f.x;
    out[2 * k + 1] = f.y;
  }
}

// Four fp32 elements of one 16-byte word, in order.
__device__ __forceinline__ void f32x4_to_floats(const uint4& raw, float* out) {
  const auto* f = reinterpret_cast<const float*>(&raw);
#pragma unroll
  for (int k = 0; k < 4; ++k) out[k] = f[k];
}

}  // namespace wanhost::kernels
