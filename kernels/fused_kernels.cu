// Fused kernels of the Wan DiT block; see fused_kernels.hpp for the contract. One warp per token
// row, 16-byte accesses (8 bf16 channels per lane and step), fp32 arithmetic, row statistics by
// warp shuffles, parameter-gradient sums in shared memory per block.
#include "fused_kernels.hpp"

#include <cuda_bf16.h>

namespace wanhost::kernels {
namespace {

constexpr int kWarps = 8;
constexpr int kThreads = kWarps * 32;
constexpr int kVec = 8;
using bf16 = __nv_bfloat16;

__device__ __forceinline__ void load8(const bf16* p, float (&o)[kVec]) {
  const uint4 raw = *reinterpret_cast<const uint4*>(p);
  const auto* h = reinterpret_cast<const __nv_bfloat162*>(&raw);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 f = __bfloat1622float2(h[i]);
    o[2 * i] = f.x;
    o[2 * i + 1] = f.y;
  }
}

__device__ __forceinline__ void store8(bf16* p, const float (&v)[kVec]) {
  uint4 raw;
  auto* h = reinterpret_cast<__nv_bfloat162*>(&raw);
#pragma unroll
  for (int i = 0; i < 4; ++i) h[i] = __floats2bfloat162_rn(v[2 * i], v[2 * i + 1]);
  *reinterpret_cast<uint4*>(p) = raw;
}

__device__ __forceinline__ void loadf8(const float* p, float (&o)[kVec]) {
  const float4 a = reinterpret_cast<const float4*>(p)[0];
  const float4 b = reinterpret_cast<const float4*>(p)[1];
  o[0] = a.x, o[1] = a.y, o[2] = a.z, o[3] = a.w;
  o[4] = b.x, o[5] = b.y, o[6] = b.z, o[7] = b.w;
}

__device__ __forceinline__ void loadf4(const float* p, float (&o)[4]) {
  const float4 a = *reinterpret_cast<const float4*>(p);
  o[0] = a.x, o[1] = a.y, o[2] = a.z, o[3] = a.w;
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ __forceinline__ float round_bf16(float v) {
  return __bfloat162float(__float2bfloat16_rn(v));
}

struct Range {
  std::int64_t begin, end;
};

// The rows of this block: chunk blockIdx.x of sample blockIdx.y (possibly empty).
__device__ __forceinline__ Range block_rows(const RowLayout& l) {
  const std::int64_t b = blockIdx.y, c = blockIdx.x;
  std::int64_t s0, s1;
  if (l.cu != nullptr) {
    s0 = l.cu[b];
    s1 = l.cu[b + 1];
  } else {
    s0 = b * l.rows_per_sample;
    s1 = s0 + l.rows_per_sample;
  }
  const std::int64_t begin = s0 + c * kRowsPerBlock;
  const std::int64_t end = begin + kRowsPerBlock < s1 ? begin + kRowsPerBlock : s1;
  return {begin, end};
}

__device__ __forceinline__ void zero_shared(float* acc, std::int64_t n) {
  for (std::int64_t i = threadIdx.x; i < n; i += kThreads) acc[i] = 0.f;
  __syncthreads();
}

// Writes this block's K x D sums into partials [samples, chunks, K, D].
__device__ __forceinline__ void flush_partials(const RowLayout& l, const float* acc, int k,
                                               float* partials) {
  __syncthreads();
  const std::int64_t slot = (static_cast<std::int64_t>(blockIdx.y) * l.chunks + blockIdx.x) * k;
  for (std::int64_t i = threadIdx.x; i < k * l.dim; i += kThreads)
    partials[slot * l.dim + i] = acc[i];
}

__global__ void __launch_bounds__(kThreads)
    ln_modulate_fwd(RowLayout l, const bf16* __restrict__ x, const float* __restrict__ scale,
                    const float* __restrict__ shift, float eps, bf16* __restrict__ y,
                    float* __restrict__ mean_out, float* __restrict__ rstd_out) {
  const Range rows = block_rows(l);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const std::int64_t d = l.dim;
  const float* sc = scale + blockIdx.y * d;
  const float* sh = shift + blockIdx.y * d;
  const float inv_d = 1.f / static_cast<float>(d);
  for (std::int64_t r = rows.begin + warp; r < rows.end; r += kWarps) {
    const bf16* xr = x + r * d;
    float xv[kVec], s = 0.f;
    for (std::int64_t ch = lane * kVec; ch < d; ch += 32 * kVec) {
      load8(xr + ch, xv);
#pragma unroll
      for (int i = 0; i < kVec; ++i) s += xv[i];
    }
    const float mean = warp_sum(s) * inv_d;
    float v = 0.f;
    for (std::int64_t ch = lane * kVec; ch < d; ch += 32 * kVec) {
      load8(xr + ch, xv);
#pragma unroll
      for (int i = 0; i < kVec; ++i) v += (xv[i] - mean) * (xv[i] - mean);
    }
    const float rstd = rsqrtf(warp_sum(v) * inv_d + eps);
    for (std::int64_t ch = lane * kVec; ch < d; ch += 32 * kVec) {
      float scv[kVec], shv[kVec], out[kVec];
      load8(xr + ch, xv);
      loadf8(sc + ch, scv);
      loadf8(sh + ch, shv);
#pragma unroll
      for (int i = 0; i < kVec; ++i) out[i] = (xv[i] - mean) * rstd * (1.f + scv[i]) + shv[i];
      store8(y + r * d + ch, out);
    }
    if (lane == 0) {
      mean_out[r] = mean;
      rstd_out[r] = rstd;
    }
  }
}

__global__ void __launch_bounds__(kThreads)
    ln_modulate_bwd(RowLayout l, const bf16* __restrict__ g, const bf16* __restrict__ x,
                    const float* __restrict__ scale, const float* __restrict__ mean_in,
                    const float* __restrict__ rstd_in, bf16* __restrict__ dx,
                    float* __restrict__ partials) {
  extern __shared__ float acc[];  // [2][D]: d shift, d scale
  const std::int64_t d = l.dim;
  zero_shared(acc, 2 * d);
  const Range rows = block_rows(l);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const float* sc = scale + blockIdx.y * d;
  const float inv_d = 1.f / static_cast<float>(d);
  for (std::int64_t r = rows.begin + warp; r < rows.end; r += kWarps) {
    const bf16* xr = x + r * d;
    const bf16* gr = g + r * d;
    const float mean = mean_in[r], rstd = rstd_in[r];
    float xv[kVec], gv[kVec], scv[kVec], a = 0.f, b = 0.f;
    for (std::int64_t ch = lane * kVec; ch < d; ch += 32 * kVec) {
      load8(xr + ch, xv);
      load8(gr + ch, gv);
      loadf8(sc + ch, scv);
#pragma unroll
      for (int i = 0; i < kVec; ++i) {
        const float gs = gv[i] * (1.f + scv[i]);
        a += gs;
        b += gs * (xv[i] - mean) * rstd;
      }
    }
    a = warp_sum(a) * inv_d;
    b = warp_sum(b) * inv_d;
    for (std::int64_t ch = lane * kVec; ch < d; ch += 32 * kVec) {
      float out[kVec];
      load8(xr + ch, xv);
      load8(gr + ch, gv);
      loadf8(sc + ch, scv);
#pragma unroll
      for (int i = 0; i < kVec; ++i) {
        const float xhat = (xv[i] - mean) * rstd;
        out[i] = rstd * (gv[i] * (1.f + scv[i]) - a - xhat * b);
        atomicAdd(&acc[ch + i], gv[i]);
        atomicAdd(&acc[d + ch + i], gv[i] * xhat);
      }
      store8(dx + r * d + ch, out);
    }
  }
  flush_partials(l, acc, 2, partials);
}

__global__ void __launch_bounds__(kThreads)
    gated_fwd(RowLayout l, const bf16* __restrict__ x, const bf16* __restrict__ y,
              const float* __restrict__ gate, bf16* __restrict__ out) {
  const Range rows = block_rows(l);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const std::int64_t d = l.dim;
  const float* gt = gate + blockIdx.y * d;
  for (std::int64_t r = rows.begin + warp; r < rows.end; r += kWarps) {
    for (std::int64_t ch = lane * kVec; ch < d; ch += 32 * kVec) {
      float xv[kVec], yv[kVec], gv[kVec], o[kVec];
      load8(x + r * d + ch, xv);
      load8(y + r * d + ch, yv);
      loadf8(gt + ch, gv);
#pragma unroll
      for (int i = 0; i < kVec; ++i) o[i] = xv[i] + yv[i] * gv[i];
      store8(out + r * d + ch, o);
    }
  }
}

__global__ void __launch_bounds__(kThreads)
    gated_bwd(RowLayout l, const bf16* __restrict__ g, const bf16* __restrict__ y,
              const float* __restrict__ gate, bf16* __restrict__ dy, float* __restrict__ partials) {
  extern __shared__ float acc[];  // [1][D]: d gate
  const std::int64_t d = l.dim;
  zero_shared(acc, d);
  const Range rows = block_rows(l);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const float* gt = gate + blockIdx.y * d;
  for (std::int64_t r = rows.begin + warp; r < rows.end; r += kWarps) {
    for (std::int64_t ch = lane * kVec; ch < d; ch += 32 * kVec) {
      float gv[kVec], yv[kVec], gate_v[kVec], o[kVec];
      load8(g + r * d + ch, gv);
      load8(y + r * d + ch, yv);
      loadf8(gt + ch, gate_v);
#pragma unroll
      for (int i = 0; i < kVec; ++i) {
        o[i] = gv[i] * gate_v[i];
        atomicAdd(&acc[ch + i], gv[i] * yv[i]);
      }
      store8(dy + r * d + ch, o);
    }
  }
  flush_partials(l, acc, 1, partials);
}

struct Rope {
  const float* cos;
  const float* sin;
  std::int64_t table_rows, head_dim;
};

// cos/sin of the 4 pairs held in channels [ch, ch + 8) of row r.
__device__ __forceinline__ void rope_angles(const Rope& rp, std::int64_t r, std::int64_t ch,
                                            float (&c)[4], float (&s)[4]) {
  const std::int64_t half = rp.head_dim / 2;
  const std::int64_t at = (r % rp.table_rows) * half + (ch % rp.head_dim) / 2;
  loadf4(rp.cos + at, c);
  loadf4(rp.sin + at, s);
}

__global__ void __launch_bounds__(kThreads)
    rms_rope_fwd(RowLayout l, const bf16* __restrict__ x, const float* __restrict__ w, Rope rp,
                 float eps, bf16* __restrict__ y, float* __restrict__ rstd_out) {
  const Range rows = block_rows(l);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const std::int64_t d = l.dim;
  const float inv_d = 1.f / static_cast<float>(d);
  for (std::int64_t r = rows.begin + warp; r < rows.end; r += kWarps) {
    const bf16* xr = x + r * d;
    float xv[kVec], ss = 0.f;
    for (std::int64_t ch = lane * kVec; ch < d; ch += 32 * kVec) {
      load8(xr + ch, xv);
#pragma unroll
      for (int i = 0; i < kVec; ++i) ss += xv[i] * xv[i];
    }
    const float rstd = rsqrtf(warp_sum(ss) * inv_d + eps);
    for (std::int64_t ch = lane * kVec; ch < d; ch += 32 * kVec) {
      float wv[kVec], t[kVec];
      load8(xr + ch, xv);
      loadf8(w + ch, wv);
#pragma unroll
      for (int i = 0; i < kVec; ++i) t[i] = round_bf16(xv[i] * rstd * wv[i]);
      if (rp.cos != nullptr) {
        float c[4], s[4];
        rope_angles(rp, r, ch, c, s);
#pragma unroll
        for (int p = 0; p < 4; ++p) {
          const float e = t[2 * p], o = t[2 * p + 1];
          t[2 * p] = e * c[p] - o * s[p];
          t[2 * p + 1] = e * s[p] + o * c[p];
        }
      }
      store8(y + r * d + ch, t);
    }
    if (lane == 0) rstd_out[r] = rstd;
  }
}

// The gradient of the normalised (pre-RoPE) values: g rotated back by the row's angles.
__device__ __forceinline__ void unrotate(const Rope& rp, std::int64_t r, std::int64_t ch,
                                         float (&g)[kVec]) {
  if (rp.cos == nullptr) return;
  float c[4], s[4];
  rope_angles(rp, r, ch, c, s);
#pragma unroll
  for (int p = 0; p < 4; ++p) {
    const float ge = g[2 * p], go = g[2 * p + 1];
    g[2 * p] = ge * c[p] + go * s[p];
    g[2 * p + 1] = go * c[p] - ge * s[p];
  }
}

__global__ void __launch_bounds__(kThreads)
    rms_rope_bwd(RowLayout l, const bf16* __restrict__ g, const bf16* __restrict__ x,
                 const float* __restrict__ w, Rope rp, const float* __restrict__ rstd_in,
                 bf16* __restrict__ dx, float* __restrict__ partials) {
  extern __shared__ float acc[];  // [1][D]: d weight
  const std::int64_t d = l.dim;
  zero_shared(acc, d);
  const Range rows = block_rows(l);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const float inv_d = 1.f / static_cast<float>(d);
  for (std::int64_t r = rows.begin + warp; r < rows.end; r += kWarps) {
    const bf16* xr = x + r * d;
    const bf16* gr = g + r * d;
    const float rstd = rstd_in[r];
    float xv[kVec], gv[kVec], wv[kVec], dot = 0.f;
    for (std::int64_t ch = lane * kVec; ch < d; ch += 32 * kVec) {
      load8(xr + ch, xv);
      load8(gr + ch, gv);
      loadf8(w + ch, wv);
      unrotate(rp, r, ch, gv);
#pragma unroll
      for (int i = 0; i < kVec; ++i) dot += gv[i] * wv[i] * xv[i] * rstd;
    }
    dot = warp_sum(dot) * inv_d;
    for (std::int64_t ch = lane * kVec; ch < d; ch += 32 * kVec) {
      float out[kVec];
      load8(xr + ch, xv);
      load8(gr + ch, gv);
      loadf8(w + ch, wv);
      unrotate(rp, r, ch, gv);
#pragma unroll
      for (int i = 0; i < kVec; ++i) {
        const float xhat = xv[i] * rstd;
        out[i] = rstd * (gv[i] * wv[i] - xhat * dot);
        atomicAdd(&acc[ch + i], gv[i] * xhat);
      }
      store8(dx + r * d + ch, out);
    }
  }
  flush_partials(l, acc, 1, partials);
}

dim3 grid_of(const RowLayout& l) {
  return dim3(static_cast<unsigned>(l.chunks), static_cast<unsigned>(l.samples));
}

size_t shared_bytes(const RowLayout& l, int k) {
  return static_cast<size_t>(k) * static_cast<size_t>(l.dim) * sizeof(float);
}

}  // namespace

cudaError_t layer_norm_modulate_forward(const RowLayout& l, const void* x, const float* scale,
                                        const float* shift, float eps, void* y, float* mean,
                                        float* rstd, cudaStream_t stream) {
  ln_modulate_fwd<<<grid_of(l), kThreads, 0, stream>>>(l, static_cast<const bf16*>(x), scale, shift,
                                                       eps, static_cast<bf16*>(y), mean, rstd);
  return cudaGetLastError();
}

cudaError_t layer_norm_modulate_backward(const RowLayout& l, const void* grad, const void* x,
                                         const float* scale, const float* mean, const float* rstd,
                                         void* dx, float* partials, cudaStream_t stream) {
  ln_modulate_bwd<<<grid_of(l), kThreads, shared_bytes(l, 2), stream>>>(
      l, static_cast<const bf16*>(grad), static_cast<const bf16*>(x), scale, mean, rstd,
      static_cast<bf16*>(dx), partials);
  return cudaGetLastError();
}

cudaError_t gated_residual_forward(const RowLayout& l, const void* x, const void* y,
                                   const float* gate, void* out, cudaStream_t stream) {
  gated_fwd<<<grid_of(l), kThreads, 0, stream>>>(
      l, static_cast<const bf16*>(x), static_cast<const bf16*>(y), gate, static_cast<bf16*>(out));
  return cudaGetLastError();
}

cudaError_t gated_residual_backward(const RowLayout& l, const void* grad, const void* y,
                                    const float* gate, void* dy, float* partials,
                                    cudaStream_t stream) {
  gated_bwd<<<grid_of(l), kThreads, shared_bytes(l, 1), stream>>>(l, static_cast<const bf16*>(grad),
                                                                  static_cast<const bf16*>(y), gate,
                                                                  static_cast<bf16*>(dy), partials);
  return cudaGetLastError();
}

cudaError_t rms_norm_rope_forward(const RowLayout& l, const void* x, const float* w,
                                  const float* cos, const float* sin, std::int64_t table_rows,
                                  std::int64_t head_dim, float eps, void* y, float* rstd,
                                  cudaStream_t stream) {
  const Rope rp{cos, sin, table_rows, head_dim};
  rms_rope_fwd<<<grid_of(l), kThreads, 0, stream>>>(l, static_cast<const bf16*>(x), w, rp, eps,
                                                    static_cast<bf16*>(y), rstd);
  return cudaGetLastError();
}

cudaError_t rms_norm_rope_backward(const RowLayout& l, const void* grad, const void* x,
                                   const float* w, const float* cos, const float* sin,
                                   std::int64_t table_rows, std::int64_t head_dim,
                                   const float* rstd, void* dx, float* partials,
                                   cudaStream_t stream) {
  const Rope rp{cos, sin, table_rows, head_dim};
  rms_rope_bwd<<<grid_of(l), kThreads, shared_bytes(l, 1), stream>>>(
      l, static_cast<const bf16*>(grad), static_cast<const bf16*>(x), w, rp, rstd,
      static_cast<bf16*>(dx), partials);
  return cudaGetLastError();
}

}  // namespace wanhost::kernels
