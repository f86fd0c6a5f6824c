// Fused elementwise/normalisation kernels of the Wan DiT block (CUDA, bf16 activations). Plain
// launchers over raw pointers, free of LibTorch, so nvcc compiles them quickly; the SDK's
// wanhost::fused operators (sdk/src/fused.cpp) wrap them in autograd functions.
//
// Rows: a token tensor is viewed as [T, D] rows. Rows are grouped by sample: sample b owns rows
// [cu[b], cu[b+1]) when `cu` (int32, device) is given, else [b*S, (b+1)*S). Every kernel runs on
// a (chunks, samples) grid, `kRowsPerBlock` rows per block, one warp per row; `chunks` must be
// ceil(longest sample / kRowsPerBlock). Backward kernels write partial sums of the per-sample (or
// per-tensor) parameter gradients over kColRows rows each into `partials`
// [samples, partial_chunks(l), K, D] (every slot written, zeros included), which the caller sums
// over chunks (sum_slots below): deterministic, no atomics.
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

namespace wanhost::kernels {

// Rows per block of the row kernels (8 warps, four rows each; one row per warp measured the same
// on an H200, docs/performance.md).
constexpr int kRowsPerBlock = 32;
constexpr int kColRows = 128;  // rows per partial sum of a parameter gradient

struct RowLayout {
  const std::int32_t* cu = nullptr;  // [samples + 1] or null (dense)
  std::int64_t rows_per_sample = 0;  // dense S
  std::int64_t samples = 0;
  std::int64_t chunks = 0;
  std::int64_t dim = 0;  // D (multiple of 8)
  // Row stride of x in the RMSNorm kernels (0: D): a slice of a wider, row-major tensor, e.g. q
  // of a merged q/k/v projection. A multiple of 8; every other tensor is [T, D] contiguous.
  std::int64_t x_stride = 0;
  // Elements between consecutive samples' per-sample vectors (scale, shift, gate): D when they are
  // [samples, D] contiguous, 6 D for chunks of a [samples, 6, D] modulation table, 0 for one
  // vector shared by every sample. A multiple of 4 (16-byte loads).
  std::int64_t vec_stride = 0;
  // The same for the gate of the residual-norm kernels (its own: e.g. a table chunk while scale
  // and shift are a shared affine LayerNorm's).
  std::int64_t gate_stride = 0;
};

// Partial sums per sample: ceil(longest sample / kColRows), from chunks = ceil(longest / 32).
inline constexpr std::int64_t partial_chunks(const RowLayout& l) {
  return (l.chunks + kColRows / kRowsPerBlock - 1) / (kColRows / kRowsPerBlock);
}

// y = bf16(LN(x) * (1 + scale[b]) + shift[b]); mean/rstd [T] fp32 saved for backward.
// x, y bf16 [T, D]; scale, shift fp32, sample b's vector at b * vec_stride.
cudaError_t layer_norm_modulate_forward(const RowLayout& l, const void* x, const float* scale,
                                        const float* shift, float eps, void* y, float* mean,
                                        float* rstd, cudaStream_t stream);
// dx (bf16) and partials K=2: [0] = sum g (d shift), [1] = sum g * xhat (d scale). With
// grad_through (null: none), the gradient x also receives directly (x used as a residual
// connection's base too), dx = bf16(grad_through + the norm's dx): one pass instead of a sum of
// the two bf16 gradients after it.
cudaError_t layer_norm_modulate_backward(const RowLayout& l, const void* grad, const void* x,
                                         const float* scale, const float* mean, const float* rstd,
                                         const void* grad_through, void* dx, float* partials,
                                         cudaStream_t stream);

// The two above in one pass, for a residual connection followed by the next norm:
// x_out = bf16(x + y * gate[b]) (gate null: 1), n = bf16(LN(x_out) * (1 + scale[b]) + shift[b]);
// mean/rstd of x_out saved. Gate vectors at b * gate_stride.
cudaError_t gated_residual_norm_forward(const RowLayout& l, const void* x, const void* y,
                                        const float* gate, const float* scale, const float* shift,
                                        float eps, void* x_out, void* n, float* mean, float* rstd,
                                        cudaStream_t stream);
// Given the gradients reaching x_out directly (grad_x) and through n (grad_n): dx = grad_x +
// the norm's dx (bf16), dy = bf16(dx * gate[b]); norm_partials K=2 as layer_norm_modulate's;
// gate_partials (null: not wanted) K=1: sum dx * y.
cudaError_t gated_residual_norm_backward(const RowLayout& l, const void* grad_x, const void* grad_n,
                                         const void* x_out, const void* y, const float* gate,
                                         const float* scale, const float* mean, const float* rstd,
                                         void* dx, void* dy, float* norm_partials,
                                         float* gate_partials, cudaStream_t stream);

// The two LayerNorm backwards above in one pass: the row kernel sums d shift and d scale as it
// goes, into block_partials [samples, chunks, 2, D] (one slot a block of kRowsPerBlock rows,
// every slot written), instead of a column kernel reading g and x again; the gate's sums stay with
// the column kernel (partials as above). Only where layer_norm_one_pass_fits (D <= 1536: the
// block's sums in shared memory); cudaErrorInvalidValue elsewhere.
bool layer_norm_one_pass_fits(const RowLayout& l);
cudaError_t layer_norm_modulate_backward_one_pass(const RowLayout& l, const void* grad,
                                                  const void* x, const float* scale,
                                                  const float* mean, const float* rstd,
                                                  const void* grad_through, void* dx,
                                                  float* block_partials, cudaStream_t stream);
cudaError_t gated_residual_norm_backward_one_pass(
    const RowLayout& l, const void* grad_x, const void* grad_n, const void* x_out, const void* y,
    const float* gate, const float* scale, const float* mean, const float* rstd, void* dx, void* dy,
    float* norm_block_partials, float* gate_partials, cudaStream_t stream);

// out = bf16(x + y * gate[b]); x, y, out bf16, gate fp32 (sample b's at b * vec_stride).
cudaError_t gated_residual_forward(const RowLayout& l, const void* x, const void* y,
                                   const float* gate, void* out, cudaStream_t stream);
// dy = bf16(g * gate[b]); partials K=1: sum g * y (d gate). One column pass reads g and y once
// for both (a row kernel writing dy and a column kernel reading g again were two).
cudaError_t gated_residual_backward(const RowLayout& l, const void* grad, const void* y,
                                    const float* gate, void* dy, float* partials,
                                    cudaStream_t stream);

// RMSNorm over D with weight w (fp32 [D]), rounded to bf16, then (when cos/sin are given) RoPE on
// adjacent channel pairs of each head of head_dim channels: table row = token row % table_rows,
// cos/sin fp32 [table_rows, head_dim / 2]. rstd [T] fp32 saved for backward.
cudaError_t rms_norm_rope_forward(const RowLayout& l, const void* x, const float* w,
                                  const float* cos, const float* sin, std::int64_t table_rows,
                                  std::int64_t head_dim, float eps, void* y, float* rstd,
                                  cudaStream_t stream);
// dx (bf16) and partials K=1: sum (rotated-back g) * xhat (d weight).
cudaError_t rms_norm_rope_backward(const RowLayout& l, const void* grad, const void* x,
                                   const float* w, const float* cos, const float* sin,
                                   std::int64_t table_rows, std::int64_t head_dim,
                                   const float* rstd, void* dx, float* partials,
                                   cudaStream_t stream);

// The same in one pass: the row kernel sums the weight gradient as it goes, into
// block_partials [samples, rms_norm_rope_backward_one_pass_blocks(l, rows_per_block), D] (one
// slot a block of rows_per_block rows, every slot written), instead of a column kernel reading g
// and x again. Only where rms_norm_rope_backward_one_pass_fits (D <= 1536: the block's sums in
// shared memory); cudaErrorInvalidValue elsewhere, or for rows_per_block that is not a multiple
// of 8 of at least kRowsPerBlock. rms_norm_rope_backward_one_pass_rows gives the rows a block
// that keep the grid to one wave of the current GPU where the samples allow (kRowsPerBlock where
// it is one already).
bool rms_norm_rope_backward_one_pass_fits(const RowLayout& l);
std::int64_t rms_norm_rope_backward_one_pass_rows(const RowLayout& l);
inline constexpr std::int64_t rms_norm_rope_backward_one_pass_blocks(const RowLayout& l,
                                                                     std::int64_t rows_per_block) {
  return (l.chunks * kRowsPerBlock + rows_per_block - 1) / rows_per_block;
}
cudaError_t rms_norm_rope_backward_one_pass(const RowLayout& l, const void* grad, const void* x,
                                            const float* w, const float* cos, const float* sin,
                                            std::int64_t table_rows, std::int64_t head_dim,
                                            const float* rstd, void* dx, float* block_partials,
                                            std::int64_t rows_per_block, cudaStream_t stream);

// partials K=1: sum of the rows of x (bf16 [T, D]) per sample.
cudaError_t column_sums(const RowLayout& l, const void* x, float* partials, cudaStream_t stream);

// out [groups, width] = partials [groups, slots, width] (fp32, contiguous; any number of groups)
// summed over slots, in a fixed order: the partial sums above (and the FP8 cast's column sums)
// reduced to the caller's gradients by one small kernel instead of ATen's general reduction (~4.7
// us a call, 670 calls in a replayed 1.3B stage-1 step on an H100, 2026-12-05,
// docs/performance.md). Deterministic.
cudaError_t sum_slots(const float* partials, std::int64_t groups, std::int64_t slots,
                      std::int64_t width, float* out, cudaStream_t stream);

}  // namespace wanhost::kernels
