// Fused operators of DiT blocks: differentiable, with CUDA kernels for bf16 tensors on a GPU
// (kernels/, when wanhost is built with CUDA) and plain ATen reference arithmetic everywhere else
// (CPU, fp32, unsupported sizes). Both paths compute the same function; the reference is the
// arithmetic of the Diffusers model, rounding points included.
//
// Token tensors are [B, S, D] (dense: B samples of S tokens) or [1, N, D] with `segments` (packed:
// sample i owns tokens [host_cu_q[i], host_cu_q[i+1]); the kernels read cu_seqlens_q on the
// device, so no call synchronises with the host). Per-sample vectors (scale, shift, gate) are
// [n, 1, D] fp32, one row per sample.
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

#include <ATen/core/Tensor.h>

#include "wanhost/parallel.hpp"

namespace wanhost::fused {

// True when this build has the CUDA kernels (they still run only on eligible tensors).
bool kernels_built();
// True when the kernels would handle a token tensor like x: CUDA, bf16, D a multiple of 8.
bool kernels_apply(const at::Tensor& x);

// (LayerNorm(x, no affine, eps) * (1 + scale) + shift) in fp32, rounded to x's dtype.
at::Tensor layer_norm_modulate(const at::Tensor& x, const at::Tensor& scale,
                               const at::Tensor& shift, double eps,
                               const AttentionSegments* segments = nullptr);

// {x, layer_norm_modulate(x, scale, shift)} for an x that is also a residual connection's base
// (kit 1.11): the first output has x's values, and the gradients reaching x through both outputs
// are summed inside the norm's backward pass (one rounding to x's dtype) instead of by autograd
// after it: a pass over the rows and a kernel less on the kernels' tensors.
std::pair<at::Tensor, at::Tensor> layer_norm_modulate_with_input(
    const at::Tensor& x, const at::Tensor& scale, const at::Tensor& shift, double eps,
    const AttentionSegments* segments = nullptr);

// (x + y * gate) in fp32, rounded to x's dtype (a gated residual connection).
at::Tensor gated_residual(const at::Tensor& x, const at::Tensor& y, const at::Tensor& gate,
                          const AttentionSegments* segments = nullptr);

// A residual connection and the norm after it in one pass (SDK 1.2):
// x_out = gated_residual(x, y, gate) (an undefined gate is 1: x + y) and
// n = layer_norm_modulate(x_out, scale, shift); returns {x_out, n}. Saves a pass over x_out in
// forward and the sum of x_out's two gradients in backward.
std::pair<at::Tensor, at::Tensor> gated_residual_norm(const at::Tensor& x, const at::Tensor& y,
                                                      const at::Tensor& gate,
                                                      const at::Tensor& scale,
                                                      const at::Tensor& shift, double eps,
                                                      const AttentionSegments* segments = nullptr);

// RMSNorm over the last dim of x [B, S, D] with `weight` [D] (applied in x's dtype, like
// torch.nn.RMSNorm of a bf16 model), split into heads of head_dim -> [B, S, H, head_dim], then,
// if cos/sin are defined, rotary embedding of adjacent channel pairs: cos/sin hold one angle per
// pair, [S_table, head_dim / 2] fp32 (any view with that many elements), token s of sample b uses
// table row (b * S + s) % S_table. The rotation runs in fp32 and rounds once to x's dtype.
at::Tensor rms_norm_rope(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& cos,
                         const at::Tensor& sin, std::int64_t head_dim, double eps);

// x W^T + b (torch.nn.functional.linear; bias may be undefined). The matrix products are
// LibTorch's (cuBLAS); on the kernels' tensors the bias gradient, a sum over every token row of
// the output gradient, is wanhost's column-sum kernel instead of ATen's reduction.
// Weight and bias may be x's dtype or fp32 master copies (since kit 1.3): the product runs in x's
// dtype and the gradients come back in the parameters' dtype; on the kernels' tensors an fp32
// weight gradient is written by its product in fp32 (never rounded to bf16, no cast pass).
at::Tensor linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias);

// Linear layers reading one input (attention's q, k and v): x W_i^T + b_i for each pair of
// `weights_and_biases` (W_0, b_0, W_1, b_1, ...; biases required; dtypes as fused::linear's), in
// order. On the kernels' tensors the backward accumulates the input gradient inside the products
// (cuBLAS beta = 1) instead of one product per layer and a sum of their results. Since kit 1.3.
std::vector<at::Tensor> shared_input_linears(const at::Tensor& x,
                                             const std::vector<at::Tensor>& weights_and_biases);

// down(gelu_tanh(up(x))): x [..., D], w_up [F, D], b_up [F], w_down [D_out, F], b_down [D_out]
// (biases required). On the kernels' tensors the GELU runs in the up-projection's cuBLASLt
// epilogue, which also keeps the pre-activation for backward, and the backward applies the GELU
// gradient in the epilogue of the product that makes the hidden gradient; bias gradients by the
// column-sum kernel. WANHOST_LT_EPILOGUES (off, all, or a comma list of gelu, dgelu, bgrad)
// picks the epilogues for A/B timing; bgrad also moves fused::linear's bias gradient into its
// weight-gradient product (BGRADB). Weights and biases as fused::linear's (x's dtype or fp32).
at::Tensor gelu_feed_forward(const at::Tensor& x, const at::Tensor& w_up, const at::Tensor& b_up,
                             const at::Tensor& w_down, const at::Tensor& b_down);

// How many products cuBLASLt refused (no algorithm for the shape and epilogue) and ATen computed
// instead; the first refusal of each kind is logged as a warning.
std::int64_t lt_fallback_count();

// The reference arithmetic of the operators (ATen only; what the fused path is tested against).
namespace reference {
at::Tensor layer_norm_modulate(const at::Tensor& x, const at::Tensor& scale,
                               const at::Tensor& shift, double eps,
                               const AttentionSegments* segments = nullptr);
std::pair<at::Tensor, at::Tensor> layer_norm_modulate_with_input(
    const at::Tensor& x, const at::Tensor& scale, const at::Tensor& shift, double eps,
    const AttentionSegments* segments = nullptr);
at::Tensor gated_residual(const at::Tensor& x, const at::Tensor& y, const at::Tensor& gate,
                          const AttentionSegments* segments = nullptr);
at::Tensor rms_norm_rope(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& cos,
                         const at::Tensor& sin, std::int64_t head_dim, double eps);
at::Tensor gelu_feed_forward(const at::Tensor& x, const at::Tensor& w_up, const at::Tensor& b_up,
                             const at::Tensor& w_down, const at::Tensor& b_down);
std::pair<at::Tensor, at::Tensor> gated_residual_norm(const at::Tensor& x, const at::Tensor& y,
                                                      const at::Tensor& gate,
                                                      const at::Tensor& scale,
                                                      const at::Tensor& shift, double eps,
                                                      const AttentionSegments* segments = nullptr);
}  // namespace reference

}  // namespace wanhost::fused
