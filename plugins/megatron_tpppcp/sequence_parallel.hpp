// Sequence parallelism with tensor parallelism (Korthikanti et al. 2022): between a block's
// tensor-parallel regions the hidden state holds rank r's contiguous r-th 1/tp of the tokens
// (of the pack, or of this rank's context-parallel share). The model gathers it before the
// column-parallel layers (ParallelContext::gather_sequence) and the row-parallel layers
// reduce-scatter it back (tensor_parallel.hpp); norms, modulation and residuals run on the
// shard, so per-sample modulation needs the samples' boundaries within the shard.
#pragma once

#include <memory>

#include "wanhost/model.hpp"

namespace wanhost::plugins::megatron_tpppcp {

struct SequenceShare {
  std::shared_ptr<Activations> local;            // hidden and modulation bounds of the shard
  std::shared_ptr<AttentionSegments> cross_all;  // the cross-attention layout over all tokens
};

// Rank `rank` of `tp`'s shard of `act` (whose hidden is [B, N, D] with N a multiple of tp: the
// model pads packed samples to ParallelContext::token_multiple). Throws ConfigError for a dense
// batch whose N does not split.
SequenceShare sequence_share_of(const Activations& act, int tp, int rank);

}  // namespace wanhost::plugins::megatron_tpppcp
