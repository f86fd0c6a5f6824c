// Fused kernels of the Wan DiT block; see fused_kernels.hpp for the contract. One warp per token
// row, 16-byte accesses (8 bf16 channels per lane and step), fp32 arithmetic, row statistics by
// warp shuffles; parameter-gradient sums by a column kernel with register accumulators.
#include "fused_kernels.hpp"

#include "occupancy.cuh"
#include "vector_loads.cuh"

#include <algorithm>
#include <atomic>

#include <cuda_bf16.h>

namespace wanhost::kernels {
namespace {

constexpr int kWarps = 8;
constexpr int kThreads = kWarps * 32;
constexpr int kVec = 8;
using bf16 = __nv_bfloat16;

// Eight bf16 channels in one 16-byte access. The word is loaded by an intrinsic: read through a
// uint4 pointer and then taken apart as bf16 pairs, the compiler split it into four 4-byte loads
// (PTX ld.global.nc.v2.u16, 2026-12-05) in the column kernels, the gated kernels and the
// re-reading row kernels, four times the memory instructions of a 16-byte access.
// load8: data nothing in the kernel writes (the non-coherent read-only path);
// load8_coherent: data the kernel itself may have written (a residual form's x_out).
__device__ __forceinline__ void load8(const bf16* p, float (&o)[kVec]) {
  bf16x8_to_floats(__ldg(reinterpret_cast<const uint4*>(p)), o);
}

__device__ __forceinline__ void load8_coherent(const bf16* p, float (&o)[kVec]) {
  bf16x8_to_floats(__ldcg(reinterpret_cast<const uint4*>(p)), o);
}

// Eight channels rounded to bf16, in one 16-byte store (an intrinsic, for the same reason).
__device__ __forceinline__ void store8(bf16* p, const float (&v)[kVec]) {
  uint4 raw;
  auto* h = reinterpret_cast<__nv_bfloat162*>(&raw);
#pragma unroll
  for (int i = 0; i < 4; ++i) h[i] = __floats2bfloat162_rn(v[2 * i], v[2 * i + 1]);
  __stwb(reinterpret_cast<uint4*>(p), raw);
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

// The one-pass backward kernel (rms_rope_bwd with block_partials) keeps one fp32 row of D sums a
// warp in shared memory: D at most this (48 KB a block); the LayerNorm backwards' one-pass form
// two rows (96 KB a block: two blocks a multiprocessor). With the kernels' re-reading rows that
// form measured no faster than the column kernel; its register form is faster: 89.7 -> 78.0 us
// (H100) and 73.4 -> 70.9 us (H200) for 32 x 390 x 1536, the sums included (2026-12-05,
// docs/performance.md).
constexpr std::int64_t kOnePassMaxDim = 1536;

// Rows whose sums a one-pass backward keeps in shared memory (both one-pass forms).
bool one_pass_fits(const RowLayout& l) {
  return l.dim > 0 && l.dim % kVec == 0 && l.dim <= kOnePassMaxDim;
}

// Adds 8 floats to p (16-byte aligned shared memory).
__device__ __forceinline__ void add8(float* p, const float (&v)[kVec]) {
  auto* q = reinterpret_cast<float4*>(p);
  float4 a = q[0], b = q[1];
  a.x += v[0], a.y += v[1], a.z += v[2], a.w += v[3];
  b.x += v[4], b.y += v[5], b.z += v[6], b.w += v[7];
  q[0] = a, q[1] = b;
}

// 8 gate values at channel ch, or ones without a gate (a plain residual connection).
__device__ __forceinline__ void load_gate8(const float* gt, std::int64_t ch, float (&o)[kVec]) {
  if (gt != nullptr) {
    loadf8(gt + ch, o);
    return;
  }
#pragma unroll
  for (int i = 0; i < kVec; ++i) o[i] = 1.f;
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ __forceinline__ float round_bf16(float v) {
  return __bfloat162float(__float2bfloat16_rn(v));
}

// Row stride of the input x of the RMSNorm kernels (a q/k slice of a merged projection).
__host__ __device__ __forceinline__ std::int64_t x_stride(const RowLayout& l) {
  return l.x_stride > 0 ? l.x_stride : l.dim;
}

struct Range {
  std::int64_t begin, end;
};

// Rows [begin, end) of chunk c (`per_chunk` rows each) of sample b (possibly empty).
__device__ __forceinline__ Range chunk_rows(const RowLayout& l, std::int64_t b, std::int64_t c,
                                            std::int64_t per_chunk) {
  std::int64_t s0, s1;
  if (l.cu != nullptr) {
    s0 = l.cu[b];
    s1 = l.cu[b + 1];
  } else {
    s0 = b * l.rows_per_sample;
    s1 = s0 + l.rows_per_sample;
  }
  const std::int64_t begin = s0 + c * per_chunk;
  const std::int64_t end = begin + per_chunk < s1 ? begin + per_chunk : s1;
  return {begin, end};
}

// The rows of a row kernel's block: chunk blockIdx.x of sample blockIdx.y.
__device__ __forceinline__ Range block_rows(const RowLayout& l) {
  return chunk_rows(l, blockIdx.y, blockIdx.x, kRowsPerBlock);
}

// Parameter gradients (per-sample sums over rows of a product of row tensors) are column sums:
// a separate kernel reads the rows again with each thread owning 8 channels and a stride of rows,
// so the sums stay in registers (no atomics; one fixed-order reduction over the block's row lanes
// at the end). Block: kColLanes row lanes x 32 channel groups = 256 channels x kColRows rows;
// grid (ceil(D / 256), partial_chunks, samples). Term(b, r, ch, out) gives the K terms of 8
// channels of row r (of sample b).
constexpr int kColLanes = kThreads / 32;
constexpr int kColChannels = 32 * kVec;

template <int K, typename Term>
__global__ void __launch_bounds__(kThreads)
    column_sums(RowLayout l, Term term, float* __restrict__ partials) {
  __shared__ float red[kColLanes][K][kColChannels];
  const int lane = threadIdx.x % 32, row_lane = threadIdx.x / 32;
  const std::int64_t b = blockIdx.z, chunk = blockIdx.y;
  const std::int64_t col0 = static_cast<std::int64_t>(blockIdx.x) * kColChannels;
  const std::int64_t ch = col0 + lane * kVec;
  const Range rows = chunk_rows(l, b, chunk, kColRows);
  float acc[K][kVec];
#pragma unroll
  for (int k = 0; k < K; ++k)
#pragma unroll
    for (int i = 0; i < kVec; ++i) acc[k][i] = 0.f;
  if (ch < l.dim) {
    for (std::int64_t r = rows.begin + row_lane; r < rows.end; r += kColLanes) {
      float t[K][kVec];
      term(b, r, ch, t);
#pragma unroll
      for (int k = 0; k < K; ++k)
#pragma unroll
        for (int i = 0; i < kVec; ++i) acc[k][i] += t[k][i];
    }
  }
#pragma unroll
  for (int k = 0; k < K; ++k)
#pragma unroll
    for (int i = 0; i < kVec; ++i) red[row_lane][k][lane * kVec + i] = acc[k][i];
  __syncthreads();
  float* slot = partials + ((b * gridDim.y + chunk) * K) * l.dim;  // gridDim.y = partial_chunks
  for (int idx = threadIdx.x; idx < K * kColChannels; idx += kThreads) {
    const int k = idx / kColChannels, c = idx % kColChannels;
    if (col0 + c >= l.dim) continue;
    float sum = 0.f;
#pragma unroll
    for (int j = 0; j < kColLanes; ++j) sum += red[j][k][c];
    slot[k * l.dim + col0 + c] = sum;
  }
}

template <int K, typename Term>
cudaError_t launch_column_sums(const RowLayout& l, const Term& term, float* partials,
                               cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>((l.dim + kColChannels - 1) / kColChannels),
                  static_cast<unsigned>(partial_chunks(l)), static_cast<unsigned>(l.samples));
  column_sums<K><<<grid, kThreads, 0, stream>>>(l, term, partials);
  return cudaGetLastError();
}

// A lane's part of a row: channel groups ch = lane * 8 + j * 256 * kRowWarps (j = 0, 1, ...;
// ch < d). With kCached > 0 (D <= kCached * 256 * kRowWarps) the loops are unrolled and a row's
// 16-byte words are kept in registers (RowWords), so each row is read from memory once and every
// load of a pass is in flight at once; with kCached = 0 (any D) the passes read the row again
// (from L1/L2), one word at a time. With a warp a row both forms do the same arithmetic in the
// same order; with several (RowTeam) a row's sums are taken in another order. In a replayed 1.3B
// stage-1 step on an H100 the re-reading LayerNorm forward took 72 us a call against ~42 us of
// memory traffic, and the register form 53 us (2026-12-05, docs/performance.md).
constexpr int kCachedGroups = 6;  // D <= 1536 (Wan 1.3B)
static_assert(kOnePassMaxDim <= kCachedGroups * 32 * kVec,
              "the one-pass RMSNorm backward launches the register form");

// `lane`: the thread's lane within its row (0 .. 32 kRowWarps - 1, see RowTeam).
template <int kCached, int kRowWarps, typename F>
__device__ __forceinline__ void for_groups(int lane, std::int64_t d, F&& f) {
  constexpr std::int64_t kStride = static_cast<std::int64_t>(kRowWarps) * 32 * kVec;
  if constexpr (kCached > 0) {
#pragma unroll
    for (int j = 0; j < kCached; ++j) {
      const std::int64_t ch = lane * kVec + static_cast<std::int64_t>(j) * kStride;
      if (ch < d) f(j, ch);
    }
  } else {
    int j = 0;
    for (std::int64_t ch = lane * kVec; ch < d; ch += kStride, ++j) f(j, ch);
  }
}

// The warps that share a row. A row of up to kCachedGroups * 256 channels (D <= 1536, Wan 1.3B)
// takes a warp; a wider one up to kWideRowWarps times that (D <= 6144: Wan 14B's 5120) takes
// kWideRowWarps warps, so that it too stays in registers (RowWords) instead of being read again
// from L1/L2 for every pass; the re-reading form (kCached = 0) is left for wider rows. A row's
// sums are then its warps' sums added in order of warp through shared memory, behind a barrier
// of the row's own warps (named barrier 1 + team): deterministic.
constexpr int kWideRowWarps = 4;

template <int kRowWarps>
struct RowTeam {
  static_assert(kWarps % kRowWarps == 0 && kWarps / kRowWarps < 16, "named barriers 1..15");
  static constexpr int kTeams = kWarps / kRowWarps;  // rows a block works on at once
  int lane = (static_cast<int>(threadIdx.x) / 32 % kRowWarps) * 32 + threadIdx.x % 32;
  int team = static_cast<int>(threadIdx.x) / 32 / kRowWarps;

  __device__ __forceinline__ void sync() const {
    if constexpr (kRowWarps > 1)
      asm volatile("bar.sync %0, %1;" ::"r"(1 + team), "r"(32 * kRowWarps) : "memory");
  }
};

// The sums over a row's lanes of each of v's K values, in every lane of the row (in place).
template <int kRowWarps, int K>
__device__ __forceinline__ void row_sums(const RowTeam<kRowWarps>& t, float (&v)[K]) {
#pragma unroll
  for (int k = 0; k < K; ++k) v[k] = warp_sum(v[k]);
  if constexpr (kRowWarps > 1) {
    __shared__ float parts[kWarps][K];
    if (threadIdx.x % 32 == 0)
#pragma unroll
      for (int k = 0; k < K; ++k) parts[threadIdx.x / 32][k] = v[k];
    t.sync();
#pragma unroll
    for (int k = 0; k < K; ++k) {
      v[k] = 0.f;
#pragma unroll
      for (int i = 0; i < kRowWarps; ++i) v[k] += parts[t.team * kRowWarps + i][k];
    }
    t.sync();  // read by all before the row's next sums are written
  }
}

template <int kRowWarps>
__device__ __forceinline__ float row_sum(const RowTeam<kRowWarps>& t, float v) {
  float one[1] = {v};
  row_sums(t, one);
  return one[0];
}

// A lane's 16-byte words of one bf16 row: kept (kCached > 0) or read again (kCached = 0).
template <int kCached>
struct RowWords {
  uint4 w[kCached > 0 ? kCached : 1];
  const bf16* row;
  // The first read of group j (channel ch); kept.
  __device__ __forceinline__ void fetch(int j, std::int64_t ch) {
    if constexpr (kCached > 0) w[j] = __ldg(reinterpret_cast<const uint4*>(row + ch));
  }
  // Group j as floats (after fetch, or for kCached = 0 from memory).
  __device__ __forceinline__ void get(int j, std::int64_t ch, float (&o)[kVec]) const {
    if constexpr (kCached > 0)
      bf16x8_to_floats(w[j], o);
    else
      load8_coherent(row + ch, o);  // the row may be the kernel's own x_out
  }
  // Group j set to bf16(v) (written to `row` by the caller too).
  __device__ __forceinline__ void keep(int j, const float (&v)[kVec]) {
    if constexpr (kCached > 0) {
      auto* h = reinterpret_cast<__nv_bfloat162*>(&w[j]);
#pragma unroll
      for (int i = 0; i < 4; ++i) h[i] = __floats2bfloat162_rn(v[2 * i], v[2 * i + 1]);
    }
  }
};

// The first read of every group of a lane's part of the rows (all of them in flight at once with
// kCached > 0; nothing to do with kCached = 0, whose passes read as they go).
template <int kCached, int kRowWarps, typename... Words>
__device__ __forceinline__ void fetch_rows(int lane, std::int64_t d, Words&... rows) {
  for_groups<kCached, kRowWarps>(lane, d,
                                 [&](int j, std::int64_t ch) { (rows.fetch(j, ch), ...); });
}

// With `res_y` (the residual form): the normalised row is x_out = bf16(x + res_y * gate) (gate
// null: 1), written out and (kCached = 0) read back by the same thread for the statistics and the
// output. Bounded to 3 blocks a multiprocessor (80 registers, no spills), as the backward: at 85
// registers the register form held 2 (registers are allocated 8 a thread at a time), and a
// stage-1 call's 390 blocks took two waves of 264 places instead of one of 396.
template <int kCached, int kRowWarps>
__global__ void __launch_bounds__(kThreads, kRowWarps == 1 ? 3 : 2)
    ln_modulate_fwd(RowLayout l, const bf16* __restrict__ x, const float* __restrict__ scale,
                    const float* __restrict__ shift, float eps, bf16* __restrict__ y,
                    float* __restrict__ mean_out, float* __restrict__ rstd_out,
                    const bf16* __restrict__ res_y, const float* __restrict__ gate, bf16* x_out) {
  const Range rows = block_rows(l);
  const RowTeam<kRowWarps> team;
  const int lane = team.lane;
  const std::int64_t d = l.dim;
  const float* sc = scale + blockIdx.y * l.vec_stride;
  const float* sh = shift + blockIdx.y * l.vec_stride;
  const float* gt = gate != nullptr ? gate + blockIdx.y * l.gate_stride : nullptr;
  const float inv_d = 1.f / static_cast<float>(d);
  for (std::int64_t r = rows.begin + team.team; r < rows.end; r += team.kTeams) {
    RowWords<kCached> xw{{}, x + r * d};
    float s = 0.f;
    if (res_y != nullptr) {
      RowWords<kCached> yw{{}, res_y + r * d};
      fetch_rows<kCached, kRowWarps>(lane, d, xw, yw);
      for_groups<kCached, kRowWarps>(lane, d, [&](int j, std::int64_t ch) {
        float xv[kVec], yv[kVec], gv[kVec];
        xw.get(j, ch, xv);
        yw.get(j, ch, yv);
        load_gate8(gt, ch, gv);
#pragma unroll
        for (int i = 0; i < kVec; ++i) {
          xv[i] = round_bf16(xv[i] + yv[i] * gv[i]);
          s += xv[i];
        }
        store8(x_out + r * d + ch, xv);
        xw.keep(j, xv);
      });
      xw.row = x_out + r * d;
    } else {
      fetch_rows<kCached, kRowWarps>(lane, d, xw);
      for_groups<kCached, kRowWarps>(lane, d, [&](int j, std::int64_t ch) {
        float xv[kVec];
        xw.get(j, ch, xv);
#pragma unroll
        for (int i = 0; i < kVec; ++i) s += xv[i];
      });
    }
    const float mean = row_sum(team, s) * inv_d;
    float v = 0.f;
    for_groups<kCached, kRowWarps>(lane, d, [&](int j, std::int64_t ch) {
      float xv[kVec];
      xw.get(j, ch, xv);
#pragma unroll
      for (int i = 0; i < kVec; ++i) v += (xv[i] - mean) * (xv[i] - mean);
    });
    const float rstd = rsqrtf(row_sum(team, v) * inv_d + eps);
    for_groups<kCached, kRowWarps>(lane, d, [&](int j, std::int64_t ch) {
      float xv[kVec], scv[kVec], shv[kVec], out[kVec];
      xw.get(j, ch, xv);
      loadf8(sc + ch, scv);
      loadf8(sh + ch, shv);
#pragma unroll
      for (int i = 0; i < kVec; ++i) out[i] = (xv[i] - mean) * rstd * (1.f + scv[i]) + shv[i];
      store8(y + r * d + ch, out);
    });
    if (lane == 0) {
      mean_out[r] = mean;
      rstd_out[r] = rstd;
    }
  }
}

// The residual form adds g_res (the gradient reaching the normalised row directly) to dx and,
// with `dy`, writes the residual branch's gradient dy = bf16(dx * gate) (gate null: 1).
// kSums: the one-pass form (block_partials written; its own instantiation, so that the two-pass
// form keeps its registers).
template <int kCached, bool kSums, int kRowWarps>
__global__ void __launch_bounds__(kThreads, kSums || kRowWarps > 1 ? 2 : 3)
    ln_modulate_bwd(RowLayout l, const bf16* __restrict__ g, const bf16* __restrict__ x,
                    const float* __restrict__ scale, const float* __restrict__ mean_in,
                    const float* __restrict__ rstd_in, bf16* __restrict__ dx,
                    const bf16* __restrict__ g_res, const float* __restrict__ gate,
                    bf16* __restrict__ dy, float* __restrict__ block_partials) {
  const std::int64_t d = l.dim;
  const Range rows = block_rows(l);
  static_assert(!kSums || kRowWarps == 1, "one-pass sums: a warp a row");
  const RowTeam<kRowWarps> team;
  const int warp = threadIdx.x / 32, lane = team.lane;
  const float* sc = scale + blockIdx.y * l.vec_stride;
  const float* gt = gate != nullptr ? gate + blockIdx.y * l.gate_stride : nullptr;
  const float inv_d = 1.f / static_cast<float>(d);
  // One pass (kSums): d shift and d scale summed as the
  // rows go by into this warp's two fp32 rows of shared memory (as rms_rope_bwd does), instead of
  // a column kernel reading g and x again.
  extern __shared__ float4 shared_words[];
  float* shift_sums = reinterpret_cast<float*>(shared_words) + 2 * warp * d;
  float* scale_sums = shift_sums + d;
  if constexpr (kSums) {
    for (std::int64_t c = lane; c < 2 * d; c += 32) shift_sums[c] = 0.f;
    __syncwarp();
  }
  for (std::int64_t r = rows.begin + team.team; r < rows.end; r += team.kTeams) {
    RowWords<kCached> xw{{}, x + r * d}, gw{{}, g + r * d};
    const float mean = mean_in[r], rstd = rstd_in[r];
    float a = 0.f, b = 0.f;
    fetch_rows<kCached, kRowWarps>(lane, d, xw, gw);
    for_groups<kCached, kRowWarps>(lane, d, [&](int j, std::int64_t ch) {
      float xv[kVec], gv[kVec], scv[kVec];
      xw.get(j, ch, xv);
      gw.get(j, ch, gv);
      loadf8(sc + ch, scv);
#pragma unroll
      for (int i = 0; i < kVec; ++i) {
        const float gs = gv[i] * (1.f + scv[i]);
        a += gs;
        b += gs * (xv[i] - mean) * rstd;
      }
    });
    float ab[2] = {a, b};
    row_sums(team, ab);
    a = ab[0] * inv_d;
    b = ab[1] * inv_d;
    for_groups<kCached, kRowWarps>(lane, d, [&](int j, std::int64_t ch) {
      float xv[kVec], gv[kVec], scv[kVec], out[kVec], scale_terms[kVec];
      xw.get(j, ch, xv);
      gw.get(j, ch, gv);
      loadf8(sc + ch, scv);
#pragma unroll
      for (int i = 0; i < kVec; ++i) {
        const float xhat = (xv[i] - mean) * rstd;
        out[i] = rstd * (gv[i] * (1.f + scv[i]) - a - xhat * b);
        scale_terms[i] = gv[i] * xhat;
      }
      if constexpr (kSums) {  // this lane's own 8 channels
        add8(shift_sums + ch, gv);
        add8(scale_sums + ch, scale_terms);
      }
      if (g_res != nullptr) {
        float rv[kVec];
        load8(g_res + r * d + ch, rv);
#pragma unroll
        for (int i = 0; i < kVec; ++i) out[i] += rv[i];
      }
      store8(dx + r * d + ch, out);
      if (dy != nullptr) {
        float gv2[kVec];
        load_gate8(gt, ch, gv2);
#pragma unroll
        for (int i = 0; i < kVec; ++i) out[i] = round_bf16(out[i]) * gv2[i];
        store8(dy + r * d + ch, out);
      }
    });
  }
  if constexpr (!kSums) return;
  __syncthreads();
  // The warps' rows added in order of warp: block_partials[sample, chunk, 2, D].
  const float* sums = reinterpret_cast<const float*>(shared_words);
  float* slot =
      block_partials + (blockIdx.y * static_cast<std::int64_t>(gridDim.x) + blockIdx.x) * 2 * d;
  for (std::int64_t c = threadIdx.x; c < 2 * d; c += kThreads) {
    float total = 0.f;
#pragma unroll
    for (int j = 0; j < kWarps; ++j) total += sums[2 * j * d + c];
    slot[c] = total;
  }
}

// d shift = sum g, d scale = sum g * xhat.
struct LnModulateTerms {
  const bf16* g;
  const bf16* x;
  const float* mean;
  const float* rstd;
  std::int64_t d;
  __device__ void operator()(std::int64_t, std::int64_t r, std::int64_t ch,
                             float (&t)[2][kVec]) const {
    float xv[kVec];
    load8(g + r * d + ch, t[0]);
    load8(x + r * d + ch, xv);
    const float m = mean[r], rs = rstd[r];
#pragma unroll
    for (int i = 0; i < kVec; ++i) t[1][i] = t[0][i] * (xv[i] - m) * rs;
  }
};

__global__ void __launch_bounds__(kThreads)
    gated_fwd(RowLayout l, const bf16* __restrict__ x, const bf16* __restrict__ y,
              const float* __restrict__ gate, bf16* __restrict__ out) {
  const Range rows = block_rows(l);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const std::int64_t d = l.dim;
  const float* gt = gate + blockIdx.y * l.vec_stride;
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

// sum x (a bias gradient: the column sums of the output gradient).
struct RowsTerm {
  const bf16* x;
  std::int64_t d;
  __device__ void operator()(std::int64_t, std::int64_t r, std::int64_t ch,
                             float (&t)[1][kVec]) const {
    load8(x + r * d + ch, t[0]);
  }
};

// The gated residual's backward in one column pass: d gate = sum g * y, and dy = bf16(g * gate[b])
// written as the rows go by (each element of a sample's rows by one thread), so g is read once;
// a row kernel writing dy and this kernel reading g again took 1.17 + 0.96 ms of a replayed
// stage-1 step on an H100 (2026-12-05, docs/performance.md).
struct GatedBackwardTerm {
  const bf16* g;
  const bf16* y;
  const float* gate;
  std::int64_t gate_stride, d;
  bf16* dy;
  __device__ void operator()(std::int64_t b, std::int64_t r, std::int64_t ch,
                             float (&t)[1][kVec]) const {
    float yv[kVec], gv[kVec], out[kVec];
    load8(g + r * d + ch, t[0]);
    load8(y + r * d + ch, yv);
    loadf8(gate + b * gate_stride + ch, gv);
#pragma unroll
    for (int i = 0; i < kVec; ++i) {
      out[i] = t[0][i] * gv[i];
      t[0][i] *= yv[i];
    }
    store8(dy + r * d + ch, out);
  }
};

// d gate = sum g * y.
struct GateTerm {
  const bf16* g;
  const bf16* y;
  std::int64_t d;
  __device__ void operator()(std::int64_t, std::int64_t r, std::int64_t ch,
                             float (&t)[1][kVec]) const {
    float yv[kVec];
    load8(g + r * d + ch, t[0]);
    load8(y + r * d + ch, yv);
#pragma unroll
    for (int i = 0; i < kVec; ++i) t[0][i] *= yv[i];
  }
};

struct Rope {
  const float* cos;
  const float* sin;
  std::int64_t table_rows, head_dim;
};

// A row's angles: row (r % table_rows) of the cos/sin tables (null without RoPE). Made once a
// row: the 64-bit modulo is not repeated for each channel group of the row.
struct RopeRow {
  const float* cos;
  const float* sin;
  int head_dim;
};

__device__ __forceinline__ RopeRow rope_row(const Rope& rp, std::int64_t r) {
  if (rp.cos == nullptr) return {nullptr, nullptr, 0};
  const std::int64_t at = (r % rp.table_rows) * (rp.head_dim / 2);
  return {rp.cos + at, rp.sin + at, static_cast<int>(rp.head_dim)};
}

// cos/sin of the 4 pairs held in channels [ch, ch + 8) of the row (ch < D < 2^31).
__device__ __forceinline__ void rope_angles(const RopeRow& rr, std::int64_t ch, float (&c)[4],
                                            float (&s)[4]) {
  const int at = (static_cast<int>(ch) % rr.head_dim) / 2;
  loadf4(rr.cos + at, c);
  loadf4(rr.sin + at, s);
}

template <int kCached, int kRowWarps>
__global__ void __launch_bounds__(kThreads)
    rms_rope_fwd(RowLayout l, const bf16* __restrict__ x, const float* __restrict__ w, Rope rp,
                 float eps, bf16* __restrict__ y, float* __restrict__ rstd_out) {
  const Range rows = block_rows(l);
  const RowTeam<kRowWarps> team;
  const int lane = team.lane;
  const std::int64_t d = l.dim;
  const float inv_d = 1.f / static_cast<float>(d);
  for (std::int64_t r = rows.begin + team.team; r < rows.end; r += team.kTeams) {
    RowWords<kCached> xw{{}, x + r * x_stride(l)};
    float ss = 0.f;
    fetch_rows<kCached, kRowWarps>(lane, d, xw);
    for_groups<kCached, kRowWarps>(lane, d, [&](int j, std::int64_t ch) {
      float xv[kVec];
      xw.get(j, ch, xv);
#pragma unroll
      for (int i = 0; i < kVec; ++i) ss += xv[i] * xv[i];
    });
    const float rstd = rsqrtf(row_sum(team, ss) * inv_d + eps);
    const RopeRow rr = rope_row(rp, r);
    for_groups<kCached, kRowWarps>(lane, d, [&](int j, std::int64_t ch) {
      float xv[kVec], wv[kVec], t[kVec];
      xw.get(j, ch, xv);
      loadf8(w + ch, wv);
#pragma unroll
      for (int i = 0; i < kVec; ++i) t[i] = round_bf16(xv[i] * rstd * wv[i]);
      if (rr.cos != nullptr) {
        float c[4], s[4];
        rope_angles(rr, ch, c, s);
#pragma unroll
        for (int p = 0; p < 4; ++p) {
          const float e = t[2 * p], o = t[2 * p + 1];
          t[2 * p] = e * c[p] - o * s[p];
          t[2 * p + 1] = e * s[p] + o * c[p];
        }
      }
      store8(y + r * d + ch, t);
    });
    if (lane == 0) rstd_out[r] = rstd;
  }
}

// The gradient of the normalised (pre-RoPE) values: g rotated back by the row's angles.
__device__ __forceinline__ void unrotate(const RopeRow& rr, std::int64_t ch, float (&g)[kVec]) {
  if (rr.cos == nullptr) return;
  float c[4], s[4];
  rope_angles(rr, ch, c, s);
#pragma unroll
  for (int p = 0; p < 4; ++p) {
    const float ge = g[2 * p], go = g[2 * p + 1];
    g[2 * p] = ge * c[p] + go * s[p];
    g[2 * p + 1] = go * c[p] - ge * s[p];
  }
}

template <int kCached, int kRowWarps>
__global__ void __launch_bounds__(kThreads)
    rms_rope_bwd(RowLayout l, const bf16* __restrict__ g, const bf16* __restrict__ x,
                 const float* __restrict__ w, Rope rp, const float* __restrict__ rstd_in,
                 bf16* __restrict__ dx, float* __restrict__ block_partials, int rows_per_block) {
  const std::int64_t d = l.dim;
  const Range rows = chunk_rows(l, blockIdx.y, blockIdx.x, rows_per_block);
  const RowTeam<kRowWarps> team;  // one-pass sums (block_partials) with a warp a row only
  const int warp = threadIdx.x / 32, lane = team.lane;
  const float inv_d = 1.f / static_cast<float>(d);
  // One pass (block_partials set; the same for every thread): the weight gradient's terms
  // (rotated-back g) * xhat summed as the rows go by, instead of a column kernel reading g and x
  // again (4.5 ms of a replayed 1.3B stage-1 step on an H100, 2026-12-05, docs/performance.md).
  // Each warp adds its rows' terms, in order, into its own fp32 row of shared memory (kWarps x D
  // floats, D <= kOnePassMaxDim); then the warps are added in order of warp and the block writes
  // block_partials[sample, chunk, D]: deterministic, no atomics.
  extern __shared__ float4 shared_words[];
  float* weight_sums = reinterpret_cast<float*>(shared_words) + warp * d;
  if (block_partials != nullptr) {
    for (std::int64_t c = lane; c < d; c += 32) weight_sums[c] = 0.f;
    __syncwarp();
  }
  for (std::int64_t r = rows.begin + team.team; r < rows.end; r += team.kTeams) {
    RowWords<kCached> xw{{}, x + r * x_stride(l)}, gw{{}, g + r * d};
    const float rstd = rstd_in[r];
    const RopeRow rr = rope_row(rp, r);
    float dot = 0.f;
    fetch_rows<kCached, kRowWarps>(lane, d, xw, gw);
    for_groups<kCached, kRowWarps>(lane, d, [&](int j, std::int64_t ch) {
      float xv[kVec], gv[kVec], wv[kVec];
      xw.get(j, ch, xv);
      gw.get(j, ch, gv);
      loadf8(w + ch, wv);
      unrotate(rr, ch, gv);
#pragma unroll
      for (int i = 0; i < kVec; ++i) dot += gv[i] * wv[i] * xv[i] * rstd;
    });
    dot = row_sum(team, dot) * inv_d;
    for_groups<kCached, kRowWarps>(lane, d, [&](int j, std::int64_t ch) {
      float xv[kVec], gv[kVec], wv[kVec], out[kVec], weight_terms[kVec];
      xw.get(j, ch, xv);
      gw.get(j, ch, gv);
      loadf8(w + ch, wv);
      unrotate(rr, ch, gv);
#pragma unroll
      for (int i = 0; i < kVec; ++i) {
        const float xhat = xv[i] * rstd;
        out[i] = rstd * (gv[i] * wv[i] - xhat * dot);
        weight_terms[i] = gv[i] * xhat;
      }
      store8(dx + r * d + ch, out);
      if (block_partials != nullptr) add8(weight_sums + ch, weight_terms);  // this lane's own
    });
  }
  if (block_partials == nullptr) return;
  __syncthreads();
  const float* sums = reinterpret_cast<const float*>(shared_words);
  float* slot =
      block_partials + (blockIdx.y * static_cast<std::int64_t>(gridDim.x) + blockIdx.x) * d;
  for (std::int64_t c = threadIdx.x; c < d; c += kThreads) {
    float total = 0.f;
#pragma unroll
    for (int j = 0; j < kWarps; ++j) total += sums[j * d + c];
    slot[c] = total;
  }
}

// d weight = sum (rotated-back g) * xhat.
struct RmsWeightTerm {
  const bf16* g;
  const bf16* x;
  const float* rstd;
  Rope rp;
  std::int64_t d, xs;
  __device__ void operator()(std::int64_t, std::int64_t r, std::int64_t ch,
                             float (&t)[1][kVec]) const {
    float xv[kVec];
    load8(g + r * d + ch, t[0]);
    load8(x + r * xs + ch, xv);
    unrotate(rope_row(rp, r), ch, t[0]);
    const float rs = rstd[r];
#pragma unroll
    for (int i = 0; i < kVec; ++i) t[0][i] *= xv[i] * rs;
  }
};

// The row kernels' form for rows of D channels: a warp's registers (narrow), kWideRowWarps
// warps' registers (wide), or a warp reading the row again for each pass.
template <typename Kernel>
Kernel row_kernel(const RowLayout& l, Kernel narrow, Kernel wide, Kernel reread) {
  constexpr std::int64_t kNarrow = static_cast<std::int64_t>(kCachedGroups) * 32 * kVec;
  if (l.dim <= kNarrow) return narrow;
  return l.dim <= kNarrow * kWideRowWarps ? wide : reread;
}

dim3 grid_of(const RowLayout& l) {
  return dim3(static_cast<unsigned>(l.chunks), static_cast<unsigned>(l.samples));
}

}  // namespace

cudaError_t layer_norm_modulate_forward(const RowLayout& l, const void* x, const float* scale,
                                        const float* shift, float eps, void* y, float* mean,
                                        float* rstd, cudaStream_t stream) {
  const auto kernel =
      row_kernel(l, ln_modulate_fwd<kCachedGroups, 1>,
                 ln_modulate_fwd<kCachedGroups, kWideRowWarps>, ln_modulate_fwd<0, 1>);
  kernel<<<grid_of(l), kThreads, 0, stream>>>(l, static_cast<const bf16*>(x), scale, shift, eps,
                                              static_cast<bf16*>(y), mean, rstd, nullptr, nullptr,
                                              nullptr);
  return cudaGetLastError();
}

cudaError_t gated_residual_norm_forward(const RowLayout& l, const void* x, const void* y,
                                        const float* gate, const float* scale, const float* shift,
                                        float eps, void* x_out, void* n, float* mean, float* rstd,
                                        cudaStream_t stream) {
  const auto kernel =
      row_kernel(l, ln_modulate_fwd<kCachedGroups, 1>,
                 ln_modulate_fwd<kCachedGroups, kWideRowWarps>, ln_modulate_fwd<0, 1>);
  kernel<<<grid_of(l), kThreads, 0, stream>>>(
      l, static_cast<const bf16*>(x), scale, shift, eps, static_cast<bf16*>(n), mean, rstd,
      static_cast<const bf16*>(y), gate, static_cast<bf16*>(x_out));
  return cudaGetLastError();
}

cudaError_t gated_residual_norm_backward(const RowLayout& l, const void* grad_x, const void* grad_n,
                                         const void* x_out, const void* y, const float* gate,
                                         const float* scale, const float* mean, const float* rstd,
                                         void* dx, void* dy, float* norm_partials,
                                         float* gate_partials, cudaStream_t stream) {
  const auto* gn = static_cast<const bf16*>(grad_n);
  const auto* xb = static_cast<const bf16*>(x_out);
  auto* dxb = static_cast<bf16*>(dx);
  const auto kernel = row_kernel(l, ln_modulate_bwd<kCachedGroups, false, 1>,
                                 ln_modulate_bwd<kCachedGroups, false, kWideRowWarps>,
                                 ln_modulate_bwd<0, false, 1>);
  kernel<<<grid_of(l), kThreads, 0, stream>>>(l, gn, xb, scale, mean, rstd, dxb,
                                              static_cast<const bf16*>(grad_x), gate,
                                              static_cast<bf16*>(dy), nullptr);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  err = launch_column_sums<2>(l, LnModulateTerms{gn, xb, mean, rstd, l.dim}, norm_partials, stream);
  if (err != cudaSuccess || gate_partials == nullptr) return err;
  return launch_column_sums<1>(l, GateTerm{dxb, static_cast<const bf16*>(y), l.dim}, gate_partials,
                               stream);
}

cudaError_t layer_norm_modulate_backward(const RowLayout& l, const void* grad, const void* x,
                                         const float* scale, const float* mean, const float* rstd,
                                         const void* grad_through, void* dx, float* partials,
                                         cudaStream_t stream) {
  const auto* g = static_cast<const bf16*>(grad);
  const auto* xb = static_cast<const bf16*>(x);
  const auto kernel = row_kernel(l, ln_modulate_bwd<kCachedGroups, false, 1>,
                                 ln_modulate_bwd<kCachedGroups, false, kWideRowWarps>,
                                 ln_modulate_bwd<0, false, 1>);
  kernel<<<grid_of(l), kThreads, 0, stream>>>(l, g, xb, scale, mean, rstd, static_cast<bf16*>(dx),
                                              static_cast<const bf16*>(grad_through), nullptr,
                                              nullptr, nullptr);
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  return launch_column_sums<2>(l, LnModulateTerms{g, xb, mean, rstd, l.dim}, partials, stream);
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
  return launch_column_sums<1>(
      l,
      GatedBackwardTerm{static_cast<const bf16*>(grad), static_cast<const bf16*>(y), gate,
                        l.vec_stride, l.dim, static_cast<bf16*>(dy)},
      partials, stream);
}

cudaError_t rms_norm_rope_forward(const RowLayout& l, const void* x, const float* w,
                                  const float* cos, const float* sin, std::int64_t table_rows,
                                  std::int64_t head_dim, float eps, void* y, float* rstd,
                                  cudaStream_t stream) {
  const Rope rp{cos, sin, table_rows, head_dim};
  const auto kernel = row_kernel(l, rms_rope_fwd<kCachedGroups, 1>,
                                 rms_rope_fwd<kCachedGroups, kWideRowWarps>, rms_rope_fwd<0, 1>);
  kernel<<<grid_of(l), kThreads, 0, stream>>>(l, static_cast<const bf16*>(x), w, rp, eps,
                                              static_cast<bf16*>(y), rstd);
  return cudaGetLastError();
}

cudaError_t rms_norm_rope_backward(const RowLayout& l, const void* grad, const void* x,
                                   const float* w, const float* cos, const float* sin,
                                   std::int64_t table_rows, std::int64_t head_dim,
                                   const float* rstd, void* dx, float* partials,
                                   cudaStream_t stream) {
  const Rope rp{cos, sin, table_rows, head_dim};
  const auto* g = static_cast<const bf16*>(grad);
  const auto* xb = static_cast<const bf16*>(x);
  const auto kernel = row_kernel(l, rms_rope_bwd<kCachedGroups, 1>,
                                 rms_rope_bwd<kCachedGroups, kWideRowWarps>, rms_rope_bwd<0, 1>);
  kernel<<<grid_of(l), kThreads, 0, stream>>>(l, g, xb, w, rp, rstd, static_cast<bf16*>(dx),
                                              nullptr, kRowsPerBlock);
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  return launch_column_sums<1>(l, RmsWeightTerm{g, xb, rstd, rp, l.dim, x_stride(l)}, partials,
                               stream);
}

bool rms_norm_rope_backward_one_pass_fits(const RowLayout& l) {
  return one_pass_fits(l);
}

std::int64_t rms_norm_rope_backward_one_pass_rows(const RowLayout& l) {
  // The one-pass form holds 2 blocks a multiprocessor (124 registers, 48 KB of shared memory at
  // D = 1536): a stage-1 call's 390 blocks of 32 rows took 1.5 waves of an H100's 264 places.
  // More rows a block (a multiple of its warps) make the grid one wave where the samples allow.
  static std::atomic<int> cache[kOccupancyDevices];
  const int places =
      blocks_at_once(rms_rope_bwd<kCachedGroups, 1>, kThreads, cache, 0,
                     sizeof(float) * kWarps * static_cast<std::size_t>(kOnePassMaxDim));
  const std::int64_t blocks = l.chunks * l.samples;
  if (places <= 0 || blocks <= places || l.samples > places) return kRowsPerBlock;
  const std::int64_t per_sample = places / l.samples;  // blocks a sample may have
  const std::int64_t rows = (l.chunks * kRowsPerBlock + per_sample - 1) / per_sample;
  return (rows + kWarps - 1) / kWarps * kWarps;
}

cudaError_t rms_norm_rope_backward_one_pass(const RowLayout& l, const void* grad, const void* x,
                                            const float* w, const float* cos, const float* sin,
                                            std::int64_t table_rows, std::int64_t head_dim,
                                            const float* rstd, void* dx, float* block_partials,
                                            std::int64_t rows_per_block, cudaStream_t stream) {
  if (!rms_norm_rope_backward_one_pass_fits(l) || rows_per_block < kRowsPerBlock ||
      rows_per_block % kWarps != 0 || rows_per_block > (1 << 30))
    return cudaErrorInvalidValue;
  const Rope rp{cos, sin, table_rows, head_dim};
  const std::size_t shared = sizeof(float) * kWarps * static_cast<std::size_t>(l.dim);
  const dim3 grid(static_cast<unsigned>(rms_norm_rope_backward_one_pass_blocks(l, rows_per_block)),
                  static_cast<unsigned>(l.samples));
  // D <= kOnePassMaxDim: the register form's rows too.
  rms_rope_bwd<kCachedGroups, 1><<<grid, kThreads, shared, stream>>>(
      l, static_cast<const bf16*>(grad), static_cast<const bf16*>(x), w, rp, rstd,
      static_cast<bf16*>(dx), block_partials, static_cast<int>(rows_per_block));
  return cudaGetLastError();
}

bool layer_norm_one_pass_fits(const RowLayout& l) {
  return one_pass_fits(l);
}

namespace {

// ln_modulate_bwd's shared memory in one pass (2 kWarps D floats) passes the default 48 KB: the
// register form is allowed the most it can take, once a device.
cudaError_t allow_ln_one_pass_shared() {
  static std::atomic<bool> allowed[kOccupancyDevices];  // a slot a device (occupancy.cuh's)
  int device = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err != cudaSuccess) return err;
  if (device >= 0 && device < kOccupancyDevices && allowed[device].load(std::memory_order_relaxed))
    return cudaSuccess;
  err = cudaFuncSetAttribute(ln_modulate_bwd<kCachedGroups, true, 1>,
                             cudaFuncAttributeMaxDynamicSharedMemorySize,
                             static_cast<int>(sizeof(float) * 2 * kWarps * kOnePassMaxDim));
  if (err == cudaSuccess && device >= 0 && device < kOccupancyDevices) allowed[device].store(true);
  return err;
}

std::size_t ln_one_pass_shared(const RowLayout& l) {
  return sizeof(float) * 2 * kWarps * static_cast<std::size_t>(l.dim);
}

}  // namespace

cudaError_t layer_norm_modulate_backward_one_pass(const RowLayout& l, const void* grad,
                                                  const void* x, const float* scale,
                                                  const float* mean, const float* rstd,
                                                  const void* grad_through, void* dx,
                                                  float* block_partials, cudaStream_t stream) {
  if (!layer_norm_one_pass_fits(l)) return cudaErrorInvalidValue;
  if (const cudaError_t err = allow_ln_one_pass_shared(); err != cudaSuccess) return err;
  ln_modulate_bwd<kCachedGroups, true, 1><<<grid_of(l), kThreads, ln_one_pass_shared(l), stream>>>(
      l, static_cast<const bf16*>(grad), static_cast<const bf16*>(x), scale, mean, rstd,
      static_cast<bf16*>(dx), static_cast<const bf16*>(grad_through), nullptr, nullptr,
      block_partials);
  return cudaGetLastError();
}

cudaError_t gated_residual_norm_backward_one_pass(
    const RowLayout& l, const void* grad_x, const void* grad_n, const void* x_out, const void* y,
    const float* gate, const float* scale, const float* mean, const float* rstd, void* dx, void* dy,
    float* norm_block_partials, float* gate_partials, cudaStream_t stream) {
  if (!layer_norm_one_pass_fits(l)) return cudaErrorInvalidValue;
  if (const cudaError_t err = allow_ln_one_pass_shared(); err != cudaSuccess) return err;
  auto* dxb = static_cast<bf16*>(dx);
  ln_modulate_bwd<kCachedGroups, true, 1><<<grid_of(l), kThreads, ln_one_pass_shared(l), stream>>>(
      l, static_cast<const bf16*>(grad_n), static_cast<const bf16*>(x_out), scale, mean, rstd, dxb,
      static_cast<const bf16*>(grad_x), gate, static_cast<bf16*>(dy), norm_block_partials);
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess || gate_partials == nullptr) return err;
  return launch_column_sums<1>(l, GateTerm{dxb, static_cast<const bf16*>(y), l.dim}, gate_partials,
                               stream);
}

cudaError_t column_sums(const RowLayout& l, const void* x, float* partials, cudaStream_t stream) {
  return launch_column_sums<1>(l, RowsTerm{static_cast<const bf16*>(x), l.dim}, partials, stream);
}

namespace {

// sum_slots: a block is `lanes` warps (4 to 32, as many as the slots ask, so that a thread loads
// at most slots / 32 words: in a replayed step a thread's loads come one after another from L2,
// and 8 warps for 128 slots took 3.6 us a call, 2026-12-05 profile); lane l of each warp owns 4
// adjacent columns (one 16-byte load a slot where width is a multiple of 4), warp j sums slots
// j, j + lanes, ... in order, and the warps' sums are added in order of warp: 128 columns a
// block, deterministic for a given number of slots. Groups beyond the grid's 65535 rows are
// taken by the same blocks in turn (group += gridDim.y).
constexpr int kMaxSlotLanes = 32;
constexpr int kSlotColumns = 32 * 4;

__global__ void __launch_bounds__(kMaxSlotLanes * 32)
    sum_slots_kernel(const float* __restrict__ partials, std::int64_t groups, std::int64_t slots,
                     std::int64_t width, float* __restrict__ out) {
  __shared__ float red[kMaxSlotLanes][kSlotColumns];
  const int lanes = static_cast<int>(blockDim.x / 32);
  const int lane = threadIdx.x % 32, slot_lane = threadIdx.x / 32;
  const std::int64_t col = static_cast<std::int64_t>(blockIdx.x) * kSlotColumns + lane * 4;
  const std::int64_t c = static_cast<std::int64_t>(blockIdx.x) * kSlotColumns + threadIdx.x;
  for (std::int64_t group = blockIdx.y; group < groups; group += gridDim.y) {
    const float* base = partials + group * slots * width;
    float acc[4] = {0.f, 0.f, 0.f, 0.f};
    if (width % 4 == 0) {  // the same for every thread: rows of whole 16-byte words
      if (col < width)
#pragma unroll 4
        for (std::int64_t s = slot_lane; s < slots; s += lanes) {
          const float4 v = __ldg(reinterpret_cast<const float4*>(base + s * width + col));
          acc[0] += v.x, acc[1] += v.y, acc[2] += v.z, acc[3] += v.w;
        }
    } else {
      for (std::int64_t s = slot_lane; s < slots; s += lanes)
#pragma unroll
        for (int i = 0; i < 4; ++i)
          if (col + i < width) acc[i] += base[s * width + col + i];
    }
    __syncthreads();  // the previous group's sums are read
#pragma unroll
    for (int i = 0; i < 4; ++i) red[slot_lane][lane * 4 + i] = acc[i];
    __syncthreads();
    if (threadIdx.x < kSlotColumns && c < width) {
      float total = 0.f;
      for (int j = 0; j < lanes; ++j) total += red[j][threadIdx.x];
      out[group * width + c] = total;
    }
  }
}

}  // namespace

cudaError_t sum_slots(const float* partials, std::int64_t groups, std::int64_t slots,
                      std::int64_t width, float* out, cudaStream_t stream) {
  if (groups <= 0 || width <= 0) return cudaSuccess;
  if (slots < 0) return cudaErrorInvalidValue;
  // Warps a block: the slots rounded up to a power of two, 4 (the 128 threads of the final sums)
  // to kMaxSlotLanes.
  int lanes = 4;
  while (lanes < kMaxSlotLanes && lanes < slots) lanes *= 2;
  constexpr std::int64_t kMostGridRows = 65535;
  const dim3 grid(static_cast<unsigned>((width + kSlotColumns - 1) / kSlotColumns),
                  static_cast<unsigned>(std::min(groups, kMostGridRows)));
  sum_slots_kernel<<<grid, lanes * 32, 0, stream>>>(partials, groups, slots, width, out);
  return cudaGetLastError();
}

}  // namespace wanhost::kernels
