// The FP8 casts of the FP8 linear layers (sdk/kit/src/fp8.cpp, docs/performance.md "FP8 linear
// layers"): one pass that scales a row-major matrix, rounds it to E4M3 or E5M2 and writes it
// row-major, transposed, or both. The transposed copy is what the weight-gradient product needs
// (at::_scaled_mm takes its first operand row-major and its second column-major, so contracting
// over the tokens needs both operands with the tokens last); its token count is padded with zero
// columns to a multiple of 16. A plain launcher over raw pointers, free of LibTorch.
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

namespace wanhost::kernels {

enum class Fp8Format { e4m3, e5m2 };
enum class Fp8Source { f32, bf16 };  // what x holds

// x [rows, cols] row-major, cols even. Each element becomes
// fp8(float(x) * inv_scale[0]) (fp32 product, one round to nearest even, saturated to the
// format's largest finite value); inv_scale is a device pointer (the reciprocal of the
// dequantisation scale, made on the device: no host synchronisation). Writes q [rows, cols]
// row-major when q is not null, and qt [cols, padded_rows] (qt[c][r] = q[r][c], zeros for r >=
// rows) when qt is not null; padded_rows >= rows and even. With column_partials not null, also the
// column sums of x (unscaled, fp32) per kFp8CastTileRows rows: column_partials [ceil(padded_rows /
// kFp8CastTileRows), cols], every slot written (a bias gradient is their sum over the tiles:
// deterministic, no atomics).
cudaError_t fp8_cast_transpose(Fp8Source source, const void* x, std::int64_t rows,
                               std::int64_t cols, const float* inv_scale, Fp8Format format, void* q,
                               void* qt, std::int64_t padded_rows, float* column_partials,
                               cudaStream_t stream);

constexpr std::int64_t kFp8CastTileRows = 64;  // rows per slot of column_partials

}  // namespace wanhost::kernels
