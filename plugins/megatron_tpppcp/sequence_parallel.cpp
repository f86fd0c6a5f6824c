#include "sequence_parallel.hpp"

#include <algorithm>
#include <string>

#include <ATen/ATen.h>

#include "wanhost/errors.hpp"
#include "wanhost/kit/layers.hpp"

namespace wanhost::plugins::megatron_tpppcp {

SequenceShare sequence_share_of(const Activations& act, int tp, int rank) {
  const std::int64_t n = act.hidden.size(1);
  if (n % tp != 0)
    throw ConfigError("/parallelism/megatron_tpppcp/sequence_parallel",
                      "sequence parallelism splits a micro batch's " + std::to_string(n) +
                          " tokens over tp=" + std::to_string(tp) +
                          " ranks, which does not divide them; pack the batches (collator "
                          "seq_packer or packed: samples are padded to fit) or set "
                          "sequence_parallel=false",
                      "megatron_tpppcp");
  const std::int64_t part = n / tp, lo = rank * part, hi = lo + part;
  SequenceShare out;
  auto local = std::make_shared<Activations>(act);
  local->hidden = act.hidden.narrow(1, lo, part);
  if (act.segments_cross) {
    // Modulation reads one segment a sample: the samples' runs clipped to the shard (empty for
    // the samples of other ranks). Cross-attention keeps its layout over all tokens.
    out.cross_all = act.segments_cross;
    std::vector<std::int64_t> cu;
    for (const std::int64_t b : act.segments_cross->host_cu_q)
      cu.push_back(std::clamp(b, lo, hi) - lo);
    local->segments_cross =
        make_attention_segments(cu, act.segments_cross->host_cu_kv, act.hidden.device());
    local->cross_attention.segments = out.cross_all.get();
  }
  out.local = std::move(local);
  return out;
}

}  // namespace wanhost::plugins::megatron_tpppcp
