// AdamW over many tensors (adamw_kernels.hpp). Each block takes chunks of kChunk elements in turn
// (chunk blockIdx.x, then + gridDim.x, ...) from the concatenation of the launch's tensors, and
// each thread moves four neighbouring floats of every array with 16-byte accesses where the
// addresses allow. The tensors' addresses and chunk offsets are kernel parameters (up to ~25 KB:
// CUDA 12.1+ on sm_70+), so nothing is copied to the device for a launch and a captured launch
// replays as it was recorded.
#include "adamw_kernels.hpp"

#include "occupancy.cuh"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>

namespace wanhost::kernels {
namespace {

constexpr int kThreads = 256;
constexpr std::int64_t kChunk = 16 * 1024;  // elements of one tensor a block takes at a time

struct Launch {
  AdamWTensor tensors[kAdamWTensorsPerLaunch];
  // chunk_start[i]: the launch's first chunk of tensor i; chunk_start[count]: all chunks.
  std::int64_t chunk_start[kAdamWTensorsPerLaunch + 1];
  int count;
};

struct Coefficients {
  float lr, beta1, beta2, weight_decay, eps, bias1, bias2_sqrt, divisor;
  bool divide;
};

// One element's update, in the order of LibTorch's fused AdamW (fused_adam_utils.cuh), so that
// both round alike.
__device__ __forceinline__ void adamw_element(float& p, float g, float& m, float& v,
                                              const Coefficients& c) {
  if (c.divide) g = g / c.divisor;
  if (c.weight_decay != 0.f) p -= c.lr * c.weight_decay * p;
  m = fmaf(c.beta1, m, fmaf(-c.beta1, g, g));
  v = fmaf(c.beta2, v, fmaf(-c.beta2, g * g, g * g));
  const float step_size = c.lr / c.bias1;
  const float denom = sqrtf(v) / c.bias2_sqrt + c.eps;
  p -= step_size * m / denom;
}

__device__ __forceinline__ bool aligned16(const void* a) {
  return (reinterpret_cast<std::uintptr_t>(a) & 15) == 0;
}

// At most 64 registers a thread, so that 4 blocks fit an SM: enough loads in flight for HBM.
__global__ void __launch_bounds__(kThreads, 4)
    adamw_kernel(const __grid_constant__ Launch launch, const AdamWScalars s) {
  if (s.skip != nullptr && *s.skip == 1.f) return;
  Coefficients c;
  c.lr = s.lr_ptr != nullptr ? *s.lr_ptr : s.lr;
  c.beta1 = s.beta1, c.beta2 = s.beta2, c.weight_decay = s.weight_decay, c.eps = s.eps;
  const float step = *s.step;
  c.bias1 = 1.f - powf(s.beta1, step);
  c.bias2_sqrt = sqrtf(1.f - powf(s.beta2, step));
  c.divide = s.grad_divisor != nullptr;
  c.divisor = c.divide ? *s.grad_divisor : 1.f;
  const std::int64_t chunks = launch.chunk_start[launch.count];
  int t = 0;  // the tensor of `chunk`: chunks are visited in increasing order
  for (std::int64_t chunk = blockIdx.x; chunk < chunks; chunk += gridDim.x) {
    while (launch.chunk_start[t + 1] <= chunk) ++t;
    const AdamWTensor& x = launch.tensors[t];
    const std::int64_t begin = (chunk - launch.chunk_start[t]) * kChunk;
    const std::int64_t n = x.numel - begin < kChunk ? x.numel - begin : kChunk;
    float* p = x.param + begin;
    const float* g = x.grad + begin;
    float* m = x.exp_avg + begin;
    float* v = x.exp_avg_sq + begin;
    std::int64_t scalar_from = 0;
    if (aligned16(p) && aligned16(g) && aligned16(m) && aligned16(v)) {
      const std::int64_t n4 = n / 4;
      for (std::int64_t i = threadIdx.x; i < n4; i += kThreads) {
        float4 pp = reinterpret_cast<float4*>(p)[i];
        const float4 gg = reinterpret_cast<const float4*>(g)[i];
        float4 mm = reinterpret_cast<float4*>(m)[i];
        float4 vv = reinterpret_cast<float4*>(v)[i];
        adamw_element(pp.x, gg.x, mm.x, vv.x, c);
        adamw_element(pp.y, gg.y, mm.y, vv.y, c);
        adamw_element(pp.z, gg.z, mm.z, vv.z, c);
        adamw_element(pp.w, gg.w, mm.w, vv.w, c);
        reinterpret_cast<float4*>(p)[i] = pp;
        reinterpret_cast<float4*>(m)[i] = mm;
        reinterpret_cast<float4*>(v)[i] = vv;
      }
      scalar_from = n4 * 4;
    }
    for (std::int64_t i = scalar_from + threadIdx.x; i < n; i += kThreads) {
      float pi = p[i], mi = m[i], vi = v[i];
      adamw_element(pi, g[i], mi, vi, c);
      p[i] = pi, m[i] = mi, v[i] = vi;
    }
  }
}

// Blocks a launch needs at most to keep every SM of the current device full (the update runs
// every step: asked once a device).
int full_grid() {
  static std::atomic<int> cache[kOccupancyDevices];
  return blocks_at_once(adamw_kernel, kThreads, cache, 1024);
}

}  // namespace

cudaError_t adamw_update(const AdamWTensor* tensors, int count, const AdamWScalars& s,
                         cudaStream_t stream) {
  if (count < 0 || (count > 0 && tensors == nullptr) || s.step == nullptr)
    return cudaErrorInvalidValue;
  const int grid_cap = full_grid();
  Launch launch;
  launch.count = 0;
  launch.chunk_start[0] = 0;
  auto flush = [&]() -> cudaError_t {
    if (launch.count == 0) return cudaSuccess;
    const std::int64_t chunks = launch.chunk_start[launch.count];
    const auto grid = static_cast<unsigned>(std::min<std::int64_t>(chunks, grid_cap));
    adamw_kernel<<<grid, kThreads, 0, stream>>>(launch, s);
    launch.count = 0;
    return cudaGetLastError();
  };
  for (int i = 0; i < count; ++i) {
    const AdamWTensor& x = tensors[i];
    if (x.numel <= 0) continue;
    if (x.param == nullptr || x.grad == nullptr || x.exp_avg == nullptr || x.exp_avg_sq == nullptr)
      return cudaErrorInvalidValue;
    const int k = launch.count++;
    launch.tensors[k] = x;
    launch.chunk_start[k + 1] = launch.chunk_start[k] + (x.numel + kChunk - 1) / kChunk;
    if (launch.count == kAdamWTensorsPerLaunch) {
      if (const cudaError_t err = flush(); err != cudaSuccess) return err;
    }
  }
  return flush();
}

}  // namespace wanhost::kernels
