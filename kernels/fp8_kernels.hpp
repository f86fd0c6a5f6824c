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

// An elementwise function of x (and, for gelu_grad, of a second matrix `aux` of x's layout)
// that max|x| and the cast apply to each element as they read it, so that its result is never
// written to memory: the FP8 GELU feed-forward quantises gelu(pre) and dh * gelu'(pre) straight
// from pre and dh (sdk/kit/src/fp8.cpp). Each value is rounded to bf16 before it is used, as
// the separate ATen kernels' bf16 outputs are (at::gelu(pre, "tanh"),
// at::gelu_backward(dh, pre, "tanh"), whose fp32 arithmetic it spells alike:
// aten/src/ATen/native/cuda/ActivationGeluKernel.cu). bf16 sources only.
enum class Fp8Prologue {
  none,       // x
  gelu,       // gelu_tanh(x)
  gelu_grad,  // x * gelu_tanh'(aux): x the gradient of gelu's output, aux gelu's input
};

// x [rows, cols] row-major, cols even. The dequantisation scale is made from max|x| (device
// partials: no host synchronisation) as ATen's `amax.clamp_min(min_amax) / top` makes it
// (a NaN amax stays NaN; the division is a product with inv_top = float(1.0 / top), as ATen
// divides by a host scalar) and written to scale_out[0]. Each element becomes
// fp8(float(x) * (1 / scale)) (fp32 product, one round to nearest even, saturated to the
// format's largest finite value). With fp8_amax_partials this replaces ATen's norm, clamp,
// division and reciprocal kernels of each operand (~2400 small kernels of a 30-block FP8 step,
// their launches and gaps). Writes q [rows, cols]
// row-major when q is not null, and qt [cols, padded_rows] (qt[c][r] = q[r][c], zeros for r >=
// rows) when qt is not null; padded_rows >= rows and even. With column_partials not null, also the
// column sums of x (unscaled, fp32) per kFp8CastTileRows rows: column_partials [ceil(padded_rows /
// kFp8CastTileRows), cols], every slot written (a bias gradient is their sum over the tiles:
// deterministic, no atomics).
//
// Delayed scaling (Transformer Engine's DelayedScaling; run.fp8 = "delayed"): with `history` set,
// the operand's max|x| over the finite values is also recorded, by every block's atomic maximum,
// into history[step % history_len] (the current step's slot, zero at the step's start), and
// history[(step + 1) % history_len] is set to zero (the next step's slot: nobody reads or writes
// it this step). Without amax_partials the scale is made from the history instead of from x:
// the largest entry but those two slots, i.e. max|x| of the last history_len - 2 steps (zeros of
// steps not yet run add nothing), and values beyond it saturate. No kernel of its own and no
// host synchronisation: the step count is read on the device, so a captured step replays right.
struct Fp8Scale {
  // device: max|x| in fp32 as fp8_amax_partials leaves it, `amax_count` partial maxima (each
  // block of the cast reduces them again: no kernel of its own, no zeroed accumulator); null
  // for a scale made from `history`
  const float* amax_partials = nullptr;
  int amax_count = 0;
  float min_amax = 0.f;        // the clamp of an all-zero operand
  float inv_top = 0.f;         // float(1.0 / the format's largest value)
  float* scale_out = nullptr;  // device, the dequantisation scale (written by one thread)
  // device, delayed scaling (may be null): the ring of per-step maxima, its length (>= 3) and
  // the step count that picks the current slot
  float* history = nullptr;
  int history_len = 0;
  const std::int64_t* step = nullptr;
};

// max|x| over x's n elements (fp32 or bf16, contiguous) as fp8_amax_blocks(n) partial maxima
// into `partials` (their maximum is max|x|; a NaN anywhere makes it NaN, as ATen's infinity norm):
// one pass with 16-byte loads where x's address allows, in place of ATen's reduction.
int fp8_amax_blocks(std::int64_t n);
// With a prologue, of the prologue's values (aux: see Fp8Prologue; null for none and gelu).
cudaError_t fp8_amax_partials(Fp8Source source, const void* x, std::int64_t n, float* partials,
                              cudaStream_t stream, Fp8Prologue prologue = Fp8Prologue::none,
                              const void* aux = nullptr);
// With a prologue, q, qt and the column sums are those of the prologue's values.
cudaError_t fp8_cast_transpose(Fp8Source source, const void* x, std::int64_t rows,
                               std::int64_t cols, const Fp8Scale& scale, Fp8Format format, void* q,
                               void* qt, std::int64_t padded_rows, float* column_partials,
                               cudaStream_t stream, Fp8Prologue prologue = Fp8Prologue::none,
                               const void* aux = nullptr);

constexpr std::int64_t kFp8CastTileRows = 64;  // rows per slot of column_partials

}  // namespace wanhost::kernels
