// FP8 casts (fp8_kernels.hpp). A 64 x 64 tile per block of 32 x 8 threads: each thread reads two
// neighbouring elements of a row (a warp reads a row's 64 elements in one access), writes their
// two bytes row-major, and keeps them in shared memory, from which the warps write the tile's
// columns as rows of the transposed copy (again 64 neighbouring bytes a warp). ATen's generic
// copy of a transposed byte matrix reads one byte per 32-byte sector; this reads and writes whole
// sectors. The column sums (a bias gradient) come from the same reads. Operands whose columns are a
// multiple of 8 and whose addresses allow (every operand of the FP8 layers) take a variant with
// 16-byte loads and 8- and 16-byte stores, several tiles a block (cast_transpose_wide). max|x|
// comes from a one-pass kernel of partial maxima that every cast block reduces again
// (amax_partials), or from a history (delayed scaling), recorded by the casts.
#include "fp8_kernels.hpp"

#include "fp8_cast_grid.hpp"
#include "occupancy.cuh"

#include "vector_loads.cuh"

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <type_traits>

#include <cuda_bf16.h>
#include <cuda_fp8.h>

namespace wanhost::kernels {
namespace {

constexpr int kTile = static_cast<int>(kFp8CastTileRows);
constexpr int kTileRowsPerPass = 8;  // threadIdx.y

__device__ __forceinline__ void load_pair(const float* x, float& a, float& b) {
  const float2 v = *reinterpret_cast<const float2*>(x);
  a = v.x;
  b = v.y;
}

__device__ __forceinline__ void load_pair(const __nv_bfloat16* x, float& a, float& b) {
  const float2 v = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(x));
  a = v.x;
  b = v.y;
}

__device__ __forceinline__ unsigned char to_fp8(float v, Fp8Format format) {
  return __nv_cvt_float_to_fp8(v, __NV_SATFINITE,
                               format == Fp8Format::e4m3 ? __NV_E4M3 : __NV_E5M2);
}

// x scaled by inv and rounded, saturating, but an infinite x becomes NaN: a value beyond a
// delayed scale's range saturates, an overflow of the model must stay visible (under current
// scaling an infinity makes the scale infinite and every value NaN anyway).
__device__ __forceinline__ unsigned char scaled_fp8(float x, float inv, Fp8Format format) {
  return to_fp8(isinf(x) ? __int_as_float(0x7fc00000) : x * inv, format);
}

// The prologues (Fp8Prologue): value(x, aux) of one element. kAux: whether aux is read.
struct Identity {
  static constexpr bool kAux = false;
  __device__ __forceinline__ static float value(float x, float) { return x; }
};

__device__ __forceinline__ float round_to_bf16(float v) {
  return __bfloat162float(__float2bfloat16_rn(v));
}

// GELU with the tanh approximation and its derivative in fp32, each operation as ATen's CUDA
// kernels write it (aten/src/ATen/native/cuda/ActivationGeluKernel.cu: kBeta is the double
// sqrt(2) * 2/sqrt(pi) * 0.5 rounded to float once, M_SQRT2 and M_2_SQRTPI spelled out), then
// rounded to bf16 as their bf16 outputs are.
constexpr double kSqrt2 = 1.41421356237309504880, kTwoOverSqrtPi = 1.12837916709551257390;
constexpr float kGeluBeta = static_cast<float>(kSqrt2 * kTwoOverSqrtPi * 0.5);
constexpr float kGeluKappa = 0.044715f;

struct GeluTanh {
  static constexpr bool kAux = false;
  __device__ __forceinline__ static float value(float x, float) {
    const float x_cube = x * x * x;
    const float inner = kGeluBeta * (x + kGeluKappa * x_cube);
    return round_to_bf16(0.5f * x * (1.f + tanhf(inner)));
  }
};

struct GeluTanhGrad {  // value(dy, x) = dy * gelu'(x)
  static constexpr bool kAux = true;
  __device__ __forceinline__ static float value(float dy, float x) {
    const float x_sq = x * x;
    const float x_cube = x_sq * x;
    const float inner = kGeluBeta * (x + kGeluKappa * x_cube);
    const float tanh_inner = tanhf(inner);
    const float left = 0.5f * x;
    const float right = 1.f + tanh_inner;
    const float left_derivative = 0.5f * right;
    const float tanh_derivative = 1.f - tanh_inner * tanh_inner;
    const float inner_derivative = kGeluBeta * (1.f + 3.f * kGeluKappa * x_sq);
    const float right_derivative = left * tanh_derivative * inner_derivative;
    return round_to_bf16(dy * (left_derivative + right_derivative));
  }
};

// |v| when finite, else 0: what the history records (a step with an infinite or NaN operand is
// not finite anyway; its maximum must not set the scales of the steps after it).
__device__ __forceinline__ float finite_abs(float v) {
  const float m = fabsf(v);
  return m <= 3.402823466e38f ? m : 0.f;
}

// The element pair (r, c), (r, c + 1) as two FP8 bytes (low byte: column c), its values added to
// the column sums.
template <typename Op, typename In>
__device__ __forceinline__ unsigned short pair_bytes(const In* x, const In* aux, std::int64_t at,
                                                     float inv, Fp8Format format, float& sum0,
                                                     float& sum1, bool record, float& amax) {
  float a, b, aux_a = 0.f, aux_b = 0.f;
  load_pair(x + at, a, b);
  if constexpr (Op::kAux) load_pair(aux + at, aux_a, aux_b);
  a = Op::value(a, aux_a);
  b = Op::value(b, aux_b);
  sum0 += a;
  sum1 += b;
  if (record) amax = fmaxf(amax, fmaxf(finite_abs(a), finite_abs(b)));
  return static_cast<unsigned short>(scaled_fp8(a, inv, format) |
                                     (scaled_fp8(b, inv, format) << 8));
}

constexpr int kAmaxThreads = 256;
constexpr int kAmaxMaxBlocks = 512;  // partials each cast block reduces again: 2 KiB from L2
constexpr int kAmaxUnroll = 4;       // 16-byte loads in flight per thread and iteration

// max(a, b) that keeps a NaN of either (ATen's max reductions propagate NaN; fmaxf drops it).
__device__ __forceinline__ float nan_max(float a, float b) {
  return (a != a || a > b) ? a : b;
}

// The eight (bf16) or four (fp32) elements of one 16-byte load, as floats (the element type
// chosen by the pointer's).
__device__ __forceinline__ void unpack(const uint4& v, const __nv_bfloat16*, float* out) {
  bf16x8_to_floats(v, out);
}
__device__ __forceinline__ void unpack(const uint4& v, const float*, float* out) {
  f32x4_to_floats(v, out);
}

// max|value| of the elements of one 16-byte load of x (and of aux).
template <typename Op, typename In>
__device__ __forceinline__ float abs_max_of(const uint4& v, const uint4& aux) {
  constexpr int kPerLoad = 16 / sizeof(In);
  float x[kPerLoad], a[kPerLoad] = {};
  unpack(v, static_cast<const In*>(nullptr), x);
  if constexpr (Op::kAux) unpack(aux, static_cast<const In*>(nullptr), a);
  float m = 0.f;
#pragma unroll
  for (int k = 0; k < kPerLoad; ++k) m = nan_max(m, fabsf(Op::value(x[k], a[k])));
  return m;
}
__device__ __forceinline__ float to_float(__nv_bfloat16 v) {
  return __bfloat162float(v);
}
__device__ __forceinline__ float to_float(float v) {
  return v;
}

// The block's maximum of `v` (every thread's), returned to every thread; NaN-keeping.
__device__ __forceinline__ float block_nan_max(float v) {
  __shared__ float warps[32];
#pragma unroll
  for (int o = 16; o > 0; o /= 2) v = nan_max(v, __shfl_xor_sync(0xffffffffu, v, o));
  const int tid = threadIdx.x + threadIdx.y * blockDim.x;
  const int nwarps = (blockDim.x * blockDim.y + 31) / 32;
  __syncthreads();  // `warps` may still be read by a previous call
  if (tid % 32 == 0) warps[tid / 32] = v;
  __syncthreads();
  float m = warps[0];
  for (int w = 1; w < nwarps; ++w) m = nan_max(m, warps[w]);
  return m;
}

bool aligned_to(const void* p, std::uintptr_t bytes) {
  return p == nullptr || reinterpret_cast<std::uintptr_t>(p) % bytes == 0;
}

template <typename Op, typename In>
__global__ void __launch_bounds__(kAmaxThreads)
    amax_partials(const In* __restrict__ x, const In* __restrict__ aux, std::int64_t n,
                  bool wide_loads, float* __restrict__ partials) {
  constexpr int kPerLoad = 16 / sizeof(In);
  float m = 0.f;
  std::int64_t scalar_from = 0;
  if (wide_loads) {  // x (and aux) 16-byte aligned
    const std::int64_t loads = n / kPerLoad;
    const auto* v = reinterpret_cast<const uint4*>(x);
    const auto* va = reinterpret_cast<const uint4*>(aux);
    const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * kAmaxThreads;
    std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * kAmaxThreads + threadIdx.x;
    const uint4 none = make_uint4(0u, 0u, 0u, 0u);
    for (; i + (kAmaxUnroll - 1) * stride < loads; i += kAmaxUnroll * stride) {
      uint4 r[kAmaxUnroll], ra[kAmaxUnroll];
#pragma unroll
      for (int k = 0; k < kAmaxUnroll; ++k) {
        r[k] = v[i + k * stride];
        ra[k] = Op::kAux ? va[i + k * stride] : none;
      }
#pragma unroll
      for (int k = 0; k < kAmaxUnroll; ++k) m = nan_max(m, abs_max_of<Op, In>(r[k], ra[k]));
    }
    for (; i < loads; i += stride)
      m = nan_max(m, abs_max_of<Op, In>(v[i], Op::kAux ? va[i] : none));
    scalar_from = loads * kPerLoad;
  }
  for (std::int64_t i =
           scalar_from + static_cast<std::int64_t>(blockIdx.x) * kAmaxThreads + threadIdx.x;
       i < n; i += static_cast<std::int64_t>(gridDim.x) * kAmaxThreads)
    m = nan_max(m, fabsf(Op::value(to_float(x[i]), Op::kAux ? to_float(aux[i]) : 0.f)));
  m = block_nan_max(m);
  if (threadIdx.x == 0) partials[blockIdx.x] = m;
}

// The dequantisation scale from max|x| with ATen's arithmetic (fp8_kernels.hpp).
__device__ __forceinline__ float dequantisation_scale(float amax, float min_amax, float inv_top) {
  const float clamped = amax < min_amax ? min_amax : amax;  // NaN stays NaN, as at::clamp_min
  return __fmul_rn(clamped, inv_top);
}

// What a cast kernel is asked (fp8_cast_transpose's arguments but x and the stream).
struct CastArgs {
  std::int64_t rows, cols, padded_rows;
  const float* amax_partials;
  int amax_count;
  float min_amax, inv_top;
  float* scale_out;
  float* history;
  int history_len;
  const std::int64_t* step;
  Fp8Format format;
  unsigned char* q;
  unsigned char* qt;
  float* column_partials;
  std::int64_t row_tiles_per_block;  // cast_transpose_wide: consecutive row tiles a block casts
};

// The operand's 1 / scale for a tile's block: max|x| from the partials (every block reduces them
// alike), the scale with ATen's arithmetic, written by the first block's first thread.
// Delayed scaling (fp8_kernels.hpp): the history's current and next slots.
struct Slots {
  int current, next;
};
__device__ __forceinline__ Slots history_slots(const CastArgs& a) {
  const std::int64_t step = *a.step;
  const auto len = static_cast<std::int64_t>(a.history_len);
  const auto current = static_cast<int>(((step % len) + len) % len);
  return {current, (current + 1) % a.history_len};
}

// The operand's 1 / scale for a tile's block: max|x| from the partials (every block reduces them
// alike), or from the history (delayed scaling), the scale with ATen's arithmetic, written by the
// first block's first thread (who also clears the history's next slot).
__device__ __forceinline__ float tile_inverse_scale(const CastArgs& a) {
  const int tid = threadIdx.x + threadIdx.y * blockDim.x;
  const int threads = blockDim.x * blockDim.y;
  const bool first = blockIdx.x == 0 && blockIdx.y == 0 && tid == 0;
  float amax = 0.f;
  if (a.amax_partials != nullptr) {
    for (int i = tid; i < a.amax_count; i += threads) amax = nan_max(amax, a.amax_partials[i]);
  } else {
    const Slots s = history_slots(a);
    for (int i = tid; i < a.history_len; i += threads)
      if (i != s.current && i != s.next) amax = nan_max(amax, a.history[i]);
  }
  if (a.history != nullptr && first) a.history[history_slots(a).next] = 0.f;
  const float scale = dequantisation_scale(block_nan_max(amax), a.min_amax, a.inv_top);
  if (first) *a.scale_out = scale;
  return __frcp_rn(scale);  // at::reciprocal's 1 / scale, correctly rounded
}

// Delayed scaling: the block's max|value| over the finite values into the current slot. Values
// are non-negative floats, whose order is that of their bits as integers.
__device__ __forceinline__ void record_amax(const CastArgs& a, float thread_max) {
  if (a.history == nullptr) return;  // the same for every thread of the block
  const float m = block_nan_max(thread_max);
  if (threadIdx.x == 0 && threadIdx.y == 0)
    atomicMax(reinterpret_cast<int*>(a.history + history_slots(a).current), __float_as_int(m));
}

template <typename Op, typename In>
__global__ void __launch_bounds__(32 * kTileRowsPerPass)
    cast_transpose(const In* __restrict__ x, const In* __restrict__ aux, const CastArgs a) {
  // +4 bytes a row: the transposed reads of one warp (rows 2 tx and 2 tx + 1) spread over banks.
  __shared__ unsigned char tile[kTile][kTile + 4];
  __shared__ float sums[kTileRowsPerPass][kTile];
  const std::int64_t r0 = static_cast<std::int64_t>(blockIdx.x) * kTile;
  const std::int64_t c0 = static_cast<std::int64_t>(blockIdx.y) * kTile;
  const int tx = threadIdx.x, ty = threadIdx.y;
  const float inv = tile_inverse_scale(a);
  const std::int64_t c = c0 + 2 * tx;
  float sum0 = 0.f, sum1 = 0.f;  // columns c and c + 1 over this thread's rows of the tile
  float amax = 0.f;              // of the finite values (delayed scaling's record)
  const bool record = a.history != nullptr;  // the same for every thread
  for (int i = ty; i < kTile; i += kTileRowsPerPass) {
    const std::int64_t r = r0 + i;
    unsigned short bytes = 0;  // rows past the matrix: the zero padding of qt
    if (r < a.rows && c < a.cols) {
      bytes = pair_bytes<Op>(x, aux, r * a.cols + c, inv, a.format, sum0, sum1, record, amax);
      if (a.q != nullptr) *reinterpret_cast<unsigned short*>(a.q + r * a.cols + c) = bytes;
    }
    tile[i][2 * tx] = static_cast<unsigned char>(bytes & 0xff);
    tile[i][2 * tx + 1] = static_cast<unsigned char>(bytes >> 8);
  }
  record_amax(a, amax);
  if (a.column_partials != nullptr) {  // the same for every thread of the block
    // The tile's column sums, its rows added in a fixed order (deterministic).
    sums[ty][2 * tx] = sum0;
    sums[ty][2 * tx + 1] = sum1;
    __syncthreads();
    if (ty < 2 && c0 + 2 * tx + ty < a.cols) {
      const int k = 2 * tx + ty;
      float s = 0.f;
#pragma unroll
      for (int i = 0; i < kTileRowsPerPass; ++i) s += sums[i][k];
      a.column_partials[static_cast<std::int64_t>(blockIdx.x) * a.cols + c0 + k] = s;
    }
  }
  if (a.qt == nullptr) return;  // the same for every thread of the block
  __syncthreads();
  const std::int64_t r = r0 + 2 * tx;
  for (int j = ty; j < kTile; j += kTileRowsPerPass) {
    const std::int64_t cc = c0 + j;
    if (cc < a.cols && r < a.padded_rows) {  // padded_rows even: r + 1 is inside too
      const auto bytes = static_cast<unsigned short>(tile[2 * tx][j] | (tile[2 * tx + 1][j] << 8));
      *reinterpret_cast<unsigned short*>(a.qt + cc * a.padded_rows + r) = bytes;
    }
  }
}

// The same cast with 16-byte loads and wide stores, for the common case (cols a multiple of 8,
// x 16-byte aligned, q 8-byte and qt 16-byte aligned, padded_rows a multiple of 16). Same tiles
// (64 x 64, so the column partials are laid out alike) and threads, mapped differently, and a
// block takes `row_tiles_per_block` tiles of one tile column one after the other: the scale is
// made once a block, while its first tile's loads are in flight, each next tile's loads are
// issued before the current tile is written, and delayed scaling records one maximum a block
// (a block a tile spent most of its time waiting on those, not moving bytes: measured on an H100
// at 1.7-2.1 TB/s, 2026-12-05). Rows pass: a thread converts 8 neighbouring elements of a row
// (one 16-byte load of bf16, two of fp32) into one 8-byte store of q and of the shared tile; 8
// threads a row, 32 rows a pass, both passes' loads in flight together. Columns pass: a thread
// gathers 16 rows of one tile column from shared memory into one 16-byte store of qt, four
// neighbouring threads the four 16-row bands of one column (a warp writes 8 whole 64-byte pieces of
// qt rows, not 32 half sectors); the tile's 8-byte groups are permuted per band
// (swizzled_group), so neither pass has bank conflicts (in the rows pass a half warp's 8-byte
// stores cover two whole rows; in the columns pass a warp reads 8 words of 8 banks). Column
// sums: each thread's 8 columns over its 2 rows of a tile, then the 32 row groups added in a
// fixed order (deterministic; the same sums whatever the tiles a block takes).
struct Eight {
  float v[8];
};
// The 16-byte words of eight neighbouring elements (one of bf16, two of fp32), as loaded.
template <typename In>
struct RawEight {
  static constexpr int kWords = 8 * static_cast<int>(sizeof(In)) / 16;
  uint4 w[kWords];
};
template <typename In>
__device__ __forceinline__ RawEight<In> load_raw(const In* x) {
  const auto* words = reinterpret_cast<const uint4*>(x);
  RawEight<In> r;
#pragma unroll
  for (int k = 0; k < RawEight<In>::kWords; ++k) r.w[k] = words[k];
  return r;
}
template <typename In>
__device__ __forceinline__ Eight floats_of(const RawEight<In>& r) {
  constexpr int kPerLoad = 16 / static_cast<int>(sizeof(In));
  Eight e;
#pragma unroll
  for (int k = 0; k < RawEight<In>::kWords; ++k)
    unpack(r.w[k], static_cast<const In*>(nullptr), e.v + k * kPerLoad);
  return e;
}

constexpr int kWideThreads = 32 * kTileRowsPerPass;

// Where the 8-byte group `group` of tile row `row` lies in shared memory: the groups of each 16-row
// band are permuted (XOR with the band), so that a warp of the columns pass, reading one byte
// column of four bands (rows 16 apart: the same bank unpermuted), reads four different banks.
__device__ __forceinline__ int swizzled_group(int row, int group) {
  return group ^ (row / 16);
}
constexpr int kWideGroups = kTile / 8;                        // 8-column groups of a tile row
constexpr int kWideRowsPerPass = kWideThreads / kWideGroups;  // 32
constexpr int kWidePasses = kTile / kWideRowsPerPass;         // 2

// One thread's loads of a tile: its 8 columns of 2 rows (and of aux), and whether each row is
// inside the matrix (rows past it are the zero padding of qt).
template <typename Op, typename In>
struct TileLoads {
  RawEight<In> x[kWidePasses], aux[Op::kAux ? kWidePasses : 1];
  bool inside[kWidePasses];
};
template <typename Op, typename In>
__device__ __forceinline__ void load_tile(TileLoads<Op, In>& t, const In* x, const In* aux,
                                          const CastArgs& a, std::int64_t r0, std::int64_t c,
                                          int row_in_pass) {
#pragma unroll
  for (int pass = 0; pass < kWidePasses; ++pass) {
    const std::int64_t r = r0 + row_in_pass + pass * kWideRowsPerPass;
    t.inside[pass] = r < a.rows && c < a.cols;
    if (t.inside[pass]) {
      t.x[pass] = load_raw(x + r * a.cols + c);
      if constexpr (Op::kAux) t.aux[pass] = load_raw(aux + r * a.cols + c);
    }
  }
}

template <typename Op, typename In>
__global__ void __launch_bounds__(kWideThreads)
    cast_transpose_wide(const In* __restrict__ x, const In* __restrict__ aux, const CastArgs a) {
  __shared__ __align__(16) unsigned char tile[kTile][kTile];
  __shared__ __align__(16) float sums[kWideRowsPerPass][kTile];
  const std::int64_t row_tiles = (a.padded_rows + kTile - 1) / kTile;
  // Tile columns along x: the blocks that run together read whole rows (neighbouring 128-byte
  // pieces of each row), not one 64-column strip of many rows.
  const std::int64_t first_tile = static_cast<std::int64_t>(blockIdx.y) * a.row_tiles_per_block;
  const std::int64_t end_tile = first_tile + a.row_tiles_per_block < row_tiles
                                    ? first_tile + a.row_tiles_per_block
                                    : row_tiles;
  const std::int64_t c0 = static_cast<std::int64_t>(blockIdx.x) * kTile;
  const int tid = threadIdx.x + threadIdx.y * 32;
  const int group = tid % kWideGroups, row_in_pass = tid / kWideGroups;
  const std::int64_t c = c0 + 8 * group;  // c + 8 <= cols whenever c < cols (cols % 8 == 0)
  TileLoads<Op, In> now, next;
  load_tile(now, x, aux, a, first_tile * kTile, c, row_in_pass);
  const float inv = tile_inverse_scale(a);   // while the first tile's loads are in flight
  float amax = 0.f;                          // of the finite values (delayed scaling's record)
  const bool record = a.history != nullptr;  // the same for every thread
  for (std::int64_t t = first_tile; t < end_tile; ++t) {
    const std::int64_t r0 = t * kTile;
    if (t + 1 < end_tile) load_tile(next, x, aux, a, r0 + kTile, c, row_in_pass);
    float colsum[8] = {};
#pragma unroll
    for (int pass = 0; pass < kWidePasses; ++pass) {
      const int i = row_in_pass + pass * kWideRowsPerPass;
      uint2 bytes = make_uint2(0u, 0u);  // rows past the matrix: the zero padding of qt
      if (now.inside[pass]) {
        Eight in = floats_of(now.x[pass]);
        if constexpr (Op::kAux) {
          const Eight at = floats_of(now.aux[pass]);
#pragma unroll
          for (int k = 0; k < 8; ++k) in.v[k] = Op::value(in.v[k], at.v[k]);
        } else {
#pragma unroll
          for (int k = 0; k < 8; ++k) in.v[k] = Op::value(in.v[k], 0.f);
        }
        unsigned int word[2] = {0u, 0u};
#pragma unroll
        for (int k = 0; k < 8; ++k) {
          colsum[k] += in.v[k];
          if (record) amax = fmaxf(amax, finite_abs(in.v[k]));
          word[k / 4] |= static_cast<unsigned int>(scaled_fp8(in.v[k], inv, a.format))
                         << (8 * (k % 4));
        }
        bytes = make_uint2(word[0], word[1]);
        if (a.q != nullptr) *reinterpret_cast<uint2*>(a.q + (r0 + i) * a.cols + c) = bytes;
      }
      *reinterpret_cast<uint2*>(&tile[i][8 * swizzled_group(i, group)]) = bytes;
    }
    if (a.column_partials != nullptr) {  // the same for every thread of the block
      // Two 16-byte stores, the upper half first in groups 4-7: each quarter warp's eight stores
      // then fall on 32 different banks (eight scalar stores a thread met 8-way conflicts).
      const float4 low = make_float4(colsum[0], colsum[1], colsum[2], colsum[3]);
      const float4 high = make_float4(colsum[4], colsum[5], colsum[6], colsum[7]);
      const bool high_first = group >= 4;
      auto* row = reinterpret_cast<float4*>(&sums[row_in_pass][8 * group]);
      row[high_first ? 1 : 0] = high_first ? high : low;
      row[high_first ? 0 : 1] = high_first ? low : high;
    }
    __syncthreads();  // the tile and its sums are written
    if (a.column_partials != nullptr && tid < kTile && c0 + tid < a.cols) {
      float total = 0.f;
      for (int i = 0; i < kWideRowsPerPass; ++i) total += sums[i][tid];
      a.column_partials[t * a.cols + c0 + tid] = total;
    }
    if (a.qt != nullptr) {
      // Four neighbouring threads write 64 neighbouring bytes of one row of qt (whole sectors).
      const int column = tid / 4, first_row = 16 * (tid % 4);
      const std::int64_t cc = c0 + column;
      const int at = 8 * swizzled_group(first_row, column / 8) + column % 8;
      // padded_rows % 16 == 0: the 16 rows are all inside or all outside.
      if (cc < a.cols && r0 + first_row < a.padded_rows) {
        unsigned int word[4] = {0u, 0u, 0u, 0u};
#pragma unroll
        for (int k = 0; k < 16; ++k)
          word[k / 4] |= static_cast<unsigned int>(tile[first_row + k][at]) << (8 * (k % 4));
        *reinterpret_cast<uint4*>(a.qt + cc * a.padded_rows + r0 + first_row) =
            make_uint4(word[0], word[1], word[2], word[3]);
      }
    }
    __syncthreads();  // the tile and its sums are read before the next tile writes them
    now = next;
  }
  record_amax(a, amax);
}

}  // namespace

namespace {

// Calls f(Op{}, typed x, typed aux) for the source and prologue, or returns false for a
// combination that does not exist (a prologue on fp32, gelu_grad without aux).
template <typename F>
bool dispatch(Fp8Source source, Fp8Prologue prologue, const void* x, const void* aux, F&& f) {
  if (source == Fp8Source::f32) {
    if (prologue != Fp8Prologue::none) return false;
    f(Identity{}, static_cast<const float*>(x), static_cast<const float*>(nullptr));
    return true;
  }
  const auto* typed = static_cast<const __nv_bfloat16*>(x);
  const auto* typed_aux = static_cast<const __nv_bfloat16*>(aux);
  switch (prologue) {
    case Fp8Prologue::none:
      f(Identity{}, typed, typed_aux);
      return true;
    case Fp8Prologue::gelu:
      f(GeluTanh{}, typed, typed_aux);
      return true;
    case Fp8Prologue::gelu_grad:
      if (aux == nullptr) return false;
      f(GeluTanhGrad{}, typed, typed_aux);
      return true;
  }
  return false;
}

// Blocks of cast_transpose_wide<Op, In> that run at once on the current device (60-75 registers
// a thread: 3-4 a multiprocessor; 4 on 132 where the runtime does not say).
template <typename Op, typename In>
std::int64_t wide_blocks_at_once() {
  static std::atomic<int> cache[kOccupancyDevices];
  return blocks_at_once(cast_transpose_wide<Op, In>, kWideThreads, cache, 4 * 132);
}

}  // namespace

cudaError_t fp8_cast_transpose(Fp8Source source, const void* x, std::int64_t rows,
                               std::int64_t cols, const Fp8Scale& scale, Fp8Format format, void* q,
                               void* qt, std::int64_t padded_rows, float* column_partials,
                               cudaStream_t stream, Fp8Prologue prologue, const void* aux) {
  const bool from_partials = scale.amax_partials != nullptr && scale.amax_count > 0;
  const bool history = scale.history != nullptr && scale.history_len >= 3 && scale.step != nullptr;
  if (rows <= 0 || cols <= 0 || cols % 2 != 0 || padded_rows < rows || padded_rows % 2 != 0 ||
      !(from_partials || history) || (scale.history != nullptr && !history) ||
      scale.scale_out == nullptr)
    return cudaErrorInvalidValue;
  const std::int64_t row_tiles = (padded_rows + kTile - 1) / kTile;
  const std::int64_t col_tiles = (cols + kTile - 1) / kTile;
  if (row_tiles > 0x7fffffff || col_tiles > 65535) return cudaErrorInvalidConfiguration;
  const dim3 block(32, kTileRowsPerPass);
  const CastArgs args{rows,
                      cols,
                      padded_rows,
                      from_partials ? scale.amax_partials : nullptr,
                      scale.amax_count,
                      scale.min_amax,
                      scale.inv_top,
                      scale.scale_out,
                      scale.history,
                      scale.history_len,
                      scale.step,
                      format,
                      static_cast<unsigned char*>(q),
                      static_cast<unsigned char*>(qt),
                      column_partials,
                      1};
  const bool wide_shape = cols % 8 == 0 && padded_rows % 16 == 0 && aligned_to(x, 16) &&
                          aligned_to(aux, 16) && aligned_to(q, 8) && aligned_to(qt, 16);
  const bool known = dispatch(source, prologue, x, aux, [&](auto op, auto typed, auto typed_aux) {
    using Op = decltype(op);
    using In = std::remove_cv_t<std::remove_pointer_t<decltype(typed)>>;
    if (wide_shape) {
      CastArgs a = args;
      a.row_tiles_per_block =
          fp8_cast_row_tiles_per_block(row_tiles, col_tiles, wide_blocks_at_once<Op, In>());
      const std::int64_t row_groups =
          (row_tiles + a.row_tiles_per_block - 1) / a.row_tiles_per_block;
      // (more than 65535 row groups, over 33 M rows: the general kernel's grid takes them)
      if (row_groups <= 65535) {
        // Grid (column tiles, row groups).
        const dim3 grid(static_cast<unsigned>(col_tiles), static_cast<unsigned>(row_groups));
        cast_transpose_wide<Op, In><<<grid, block, 0, stream>>>(typed, typed_aux, a);
        return;
      }
    }
    const dim3 grid(static_cast<unsigned>(row_tiles), static_cast<unsigned>(col_tiles));
    cast_transpose<Op, In><<<grid, block, 0, stream>>>(typed, typed_aux, args);
  });
  return known ? cudaGetLastError() : cudaErrorInvalidValue;
}

int fp8_amax_blocks(std::int64_t n) {
  const std::int64_t per_block = static_cast<std::int64_t>(kAmaxThreads) * kAmaxUnroll * 8;
  const std::int64_t blocks = (std::max<std::int64_t>(n, 1) + per_block - 1) / per_block;
  return static_cast<int>(std::min<std::int64_t>(blocks, kAmaxMaxBlocks));
}

cudaError_t fp8_amax_partials(Fp8Source source, const void* x, std::int64_t n, float* partials,
                              cudaStream_t stream, Fp8Prologue prologue, const void* aux) {
  if (n <= 0 || x == nullptr || partials == nullptr) return cudaErrorInvalidValue;
  const int blocks = fp8_amax_blocks(n);
  const bool wide_loads = aligned_to(x, 16) && aligned_to(aux, 16);
  const bool known = dispatch(source, prologue, x, aux, [&](auto op, auto typed, auto typed_aux) {
    using Op = decltype(op);
    using In = std::remove_cv_t<std::remove_pointer_t<decltype(typed)>>;
    amax_partials<Op, In>
        <<<blocks, kAmaxThreads, 0, stream>>>(typed, typed_aux, n, wide_loads, partials);
  });
  return known ? cudaGetLastError() : cudaErrorInvalidValue;
}

}  // namespace wanhost::kernels
