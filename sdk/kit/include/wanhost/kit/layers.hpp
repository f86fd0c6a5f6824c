// The default operators of a ParallelContext and the contexts built from them: what the host
// gives a model when no parallelism plugin swaps an operator, and what parallel variants fall
// back to at degree 1.
#pragma once

#include <cstdint>
#include <memory>

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include "wanhost/parallel.hpp"

namespace wanhost {

// A context for one process: no parallelism, fp32 master weights, bf16 compute on CUDA (fp32 on
// the CPU), the default operators below.
ParallelContext single_process_context(c10::Device device = c10::Device(c10::kCPU));

// Puts the default operators into `ctx` (make_linear: replicated, FP8-eligible by role; attention:
// default_attention; attention_key_bias: default_attention_key_bias).
void set_default_operators(ParallelContext& ctx);

// Pure data parallelism: layout dp = world size, ctx.dp = ctx.world, single-rank tp/pp/cp
// groups; the operators stay as they are. What ddp and automodel_fsdp set up.
void setup_data_parallel(ParallelContext& ctx);

// A packed attention layout from the cumulative boundaries of its queries and keys: the host
// copies, the int32 device copies flash attention reads, and the longest segments.
std::shared_ptr<AttentionSegments> make_attention_segments(const std::vector<std::int64_t>& cu_q,
                                                           const std::vector<std::int64_t>& cu_kv,
                                                           const c10::Device& device);

// torch.nn.Linear semantics, computed in the input's dtype.
std::shared_ptr<LinearLayer> make_replicated_linear(std::int64_t in, std::int64_t out, bool bias);
// Kit 1.2: the same, for a layer of the given role; a block's large layers (column or row
// parallel) run on FP8 products when run.fp8 asks for them (wanhost/kit/fp8.hpp).
std::shared_ptr<LinearLayer> make_replicated_linear(std::int64_t in, std::int64_t out, bool bias,
                                                    LinearRole role);
// down(gelu_tanh(up(x))), a DiT block's feed-forward. When both are the kit's replicated layers
// this is fused::gelu_feed_forward over their parameters (cast to x's dtype, like their forward),
// or with run.fp8 on both and run.kernels.fp8_gelu = fused, fp8_gelu_feed_forward (kit 1.8);
// other layers (tensor-parallel, adapters) run their own forward with ATen's GELU.
at::Tensor gelu_feed_forward(LinearLayer& up, LinearLayer& down, const at::Tensor& x);
// Several layers reading the same input (attention's q, k and v; cross-attention's k and v):
// their outputs, in order. When all are the kit's replicated layers with biases and none runs
// on FP8 products, fused::shared_input_linears over their parameters (the input gradient
// accumulated inside the products); when all are the kit's replicated layers on FP8 products
// (run.fp8) and run.kernels.fp8_input_gradients = summed, fp8_shared_input_linears (the same,
// since kit 1.10); otherwise each layer's own forward. Since kit 1.3.
std::vector<at::Tensor> shared_input_forward(const std::vector<LinearLayer*>& layers,
                                             const at::Tensor& x);
// Dense: at::scaled_dot_product_attention with a key mask from kv_lengths. Packed: per segment
// on CPU; variable-length flash attention on CUDA where LibTorch provides it (the kernel is
// chosen by kit::KernelOptions::packed_attention, see wanhost/kit/kernel_options.hpp).
at::Tensor default_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                             const AttentionArgs& args);
// default_attention with an additive logit bias per key (ParallelContext::attention_key_bias):
// dense and packed batches on SDPA with a float mask (flash attention takes no bias).
at::Tensor default_attention_key_bias(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                      const AttentionArgs& args, const at::Tensor& key_bias);
// After a parallelism's setup(): when it replaced ctx.attention but left attention_key_bias as
// the default, empties attention_key_bias (the default would bypass the plugin's attention).
void keep_key_bias_attention_consistent(ParallelContext& ctx);

}  // namespace wanhost
