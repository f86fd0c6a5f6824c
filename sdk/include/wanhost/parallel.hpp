// What a model is built with: where it runs, which ranks share its work, and the two operators a
// parallelism plugin may swap (linear layers for tensor parallelism, attention for context
// parallelism and packing). The model never talks to NCCL or MPI itself.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>
#include <torch/nn/module.h>

#include "wanhost/communicator.hpp"

namespace wanhost {

struct ParallelLayout {
  int dp = 1;  // data parallel (FSDP shards over these ranks)
  int tp = 1;  // tensor parallel
  int pp = 1;  // pipeline parallel
  int cp = 1;  // context parallel
  int world() const { return dp * tp * pp * cp; }
};

// How a linear layer is split over the tensor-parallel group.
enum class LinearRole {
  Replicated,      // every rank holds the whole layer
  ColumnParallel,  // output features split; output stays split
  RowParallel,     // input features split; output all-reduced
};

// A linear layer y = x W^T + b with parameters named `weight` [out, in] and `bias` [out], as in
// torch.nn.Linear, so checkpoints keep their usual names. Parallel variants hold their shard.
class LinearLayer : public torch::nn::Module {
 public:
  virtual at::Tensor forward(const at::Tensor& x) = 0;
};

using LinearFactory = std::function<std::shared_ptr<LinearLayer>(
    std::int64_t in_features, std::int64_t out_features, bool bias, LinearRole role)>;

// Segment boundaries for attention over packed sequences (cumulative, int32 on the compute device
// for flash attention; the host copy for CPU paths).
struct AttentionSegments {
  at::Tensor cu_seqlens_q;   // [n+1]
  at::Tensor cu_seqlens_kv;  // [n+1]
  std::vector<std::int64_t> host_cu_q, host_cu_kv;
  std::int64_t max_q = 0, max_kv = 0;
};

// q [B, S_q, H, Dh], k/v [B, S_kv, H, Dh] -> [B, S_q, H, Dh].
//  - kv_lengths: optional [B] int64; keys at positions >= length are masked out (padded text);
//  - segments: optional packed layout (B == 1): token i attends only within its own segment.
struct AttentionArgs {
  at::Tensor kv_lengths;
  const AttentionSegments* segments = nullptr;
};
using AttentionFn = std::function<at::Tensor(const at::Tensor& q, const at::Tensor& k,
                                             const at::Tensor& v, const AttentionArgs& args)>;
// SDK 2.3: attention with an additive logit bias per key, `key_bias` [B, S_kv] float32 (packed:
// [1, S_kv]), broadcast over heads and queries; a key with bias ln(m) weighs as m identical keys
// (padded text rows collapsed into a few, wan21_dit's collapse_text_padding). Otherwise as
// AttentionFn.
using KeyBiasAttentionFn =
    std::function<at::Tensor(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                             const AttentionArgs& args, const at::Tensor& key_bias)>;

struct ParallelContext {
  int world_rank = 0;
  int world_size = 1;
  ParallelLayout layout;
  c10::Device device = c10::Device(c10::kCPU);
  at::ScalarType param_dtype = at::kFloat;    // master weights
  at::ScalarType compute_dtype = at::kFloat;  // autocast dtype on GPU (bf16), fp32 on CPU
  CommunicatorPtr world, dp, tp, pp, cp;

  // The host fills both with the kit's defaults (wanhost/kit/layers.hpp: replicated
  // torch.nn.Linear semantics, reference/flash attention); a parallelism plugin may replace them
  // in setup().
  LinearFactory make_linear;
  AttentionFn attention;

  // SDK 2.1: in a packed batch the model pads each sample's token sequence to a multiple of this
  // many tokens (a parallelism that splits sequences sets it in setup(): 2 x cp for the
  // load-balanced context-parallel split of every sample, as Megatron-Bridge's Wan task encoder
  // pads, times tp with sequence parallelism). Padding tokens attend only to each other, never
  // reach the prediction, and so never reach the loss. 1: no padding.
  std::int64_t token_multiple = 1;

  // SDK 2.2: sequence parallelism (Korthikanti et al. 2022, "Reducing Activation Recomputation
  // in Large Transformer Models"). When a parallelism sets it, the hidden state between a
  // block's tensor-parallel regions holds only this rank's part of the tokens (norms, modulation
  // and residuals on sequence shards): the model passes every hidden-state tensor that a
  // column-parallel layer reads through it (an all-gather along the tokens, dimension 1) and
  // row-parallel layers return their output split along the tokens again. Tensors that are
  // whole on every rank (the text context) are not passed through it. With it set, every
  // replicated parameter's gradient on a rank is that rank's part (the plugin sums them over the
  // tensor-parallel group), so a model does not sum them itself (wan21_dit's q/k norm weight).
  // Empty: no sequence parallelism.
  std::function<at::Tensor(const at::Tensor&)> gather_sequence;

  // SDK 2.3: `attention` with a per-key logit bias (KeyBiasAttentionFn), for keys that stand for
  // several identical ones. The host fills it with the kit's default beside `attention`; a
  // parallelism that replaces `attention` in setup() and leaves this one as the host set it gets
  // it emptied by the host after setup() (so an older plugin's own attention is never bypassed).
  // Empty: not offered; a model then attends to every key itself.
  KeyBiasAttentionFn attention_key_bias;
};

}  // namespace wanhost
