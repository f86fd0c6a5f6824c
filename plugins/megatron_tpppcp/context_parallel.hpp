// Context parallelism: every pack split over the cp ranks of a group. Each sample's run of P
// tokens (padded by the model to a multiple of 2 x cp, ParallelContext::token_multiple) is cut
// into 2 x cp equal chunks and rank r keeps chunks r and 2cp-1-r (the load-balanced split of
// Megatron-LM's context parallelism, megatron/core/transformer/... get_batch_on_this_cp_rank;
// Megatron-Bridge's Wan task encoder pads for it). Norms, modulation, feed-forward and
// cross-attention need only the rank's own tokens; self-attention gathers the keys and values of
// the whole pack from the group (exact; its backward sums every rank's gradient of them).
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <vector>

#include <ATen/core/Tensor.h>

#include "wanhost/communicator.hpp"
#include "wanhost/model.hpp"
#include "wanhost/parallel.hpp"

namespace wanhost::plugins::megatron_tpppcp {

// Positions (in the pack) of rank `rank`'s tokens, samples in order, for samples whose padded
// runs have the boundaries `sample_cu` (each run a multiple of 2 x cp). Throws
// std::invalid_argument naming a run that is not.
std::vector<std::int64_t> local_positions(const std::vector<std::int64_t>& sample_cu, int cp,
                                          int rank);

// The keys and values that self-attention needs from the other ranks: segment layouts of this
// rank's micro batches (registered while they are in flight) and, for each, the order that puts
// the gathered keys (rank after rank) back into pack order.
class ContextKeys {
 public:
  void add(const AttentionSegments* segments, at::Tensor pack_order);
  void remove(const AttentionSegments* segments);
  // The pack order for `segments`, or an undefined tensor when they are not this rank's
  // self-attention layout (cross-attention: the text is whole on every rank).
  at::Tensor find(const AttentionSegments* segments) const;

 private:
  mutable std::mutex mutex_;
  std::map<const AttentionSegments*, at::Tensor> order_;
};

// An attention operator for context parallelism around `inner`: for a registered self-attention
// layout, k and v are gathered from the group and put into pack order first.
AttentionFn context_parallel_attention(AttentionFn inner, CommunicatorPtr group,
                                       std::shared_ptr<ContextKeys> keys);

// The same around an attention with a key bias (SDK 2.3), which the model uses for cross-attention
// only (collapsed text padding): whole text on every rank, so it passes through; a registered
// self-attention layout with a key bias is refused (std::logic_error).
KeyBiasAttentionFn context_parallel_attention_key_bias(KeyBiasAttentionFn inner,
                                                       std::shared_ptr<ContextKeys> keys);

// This rank's share of a packed micro batch's activations (from Model::embed on the whole pack).
struct ContextShare {
  std::shared_ptr<Activations> local;  // hidden, RoPE tables and segment layouts of the share
  at::Tensor positions;                // [N / cp] int64: the share's positions in the pack
  at::Tensor pack_order;               // [N] int64: gathered (rank-major) index of each position
};

// `real_tokens`: the tokens of each sample without padding (the model's tokens(grid)).
ContextShare share_of(const Activations& full, const std::vector<std::int64_t>& real_tokens, int cp,
                      int rank);

}  // namespace wanhost::plugins::megatron_tpppcp
