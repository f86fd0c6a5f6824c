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

// (x + y * gate) in fp32, rounded to x's dtype (a gated residual connection).
at::Tensor gated_residual(const at::Tensor& x, const at::Tensor& y, const at::Tensor& gate,
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
at::Tensor linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias);

// The reference arithmetic of the three operators (ATen only; what the fused path is tested
// against).
namespace reference {
at::Tensor layer_norm_modulate(const at::Tensor& x, const at::Tensor& scale,
                               const at::Tensor& shift, double eps,
                               const AttentionSegments* segments = nullptr);
at::Tensor gated_residual(const at::Tensor& x, const at::Tensor& y, const at::Tensor& gate,
                          const AttentionSegments* segments = nullptr);
at::Tensor rms_norm_rope(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& cos,
                         const at::Tensor& sin, std::int64_t head_dim, double eps);
}  // namespace reference

}  // namespace wanhost::fused
