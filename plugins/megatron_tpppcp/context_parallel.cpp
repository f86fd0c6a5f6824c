#include "context_parallel.hpp"

#include <stdexcept>
#include <string>

#include <ATen/ATen.h>

#include "wanhost/kit/collectives.hpp"
#include "wanhost/kit/layers.hpp"

namespace wanhost::plugins::megatron_tpppcp {

std::vector<std::int64_t> local_positions(const std::vector<std::int64_t>& sample_cu, int cp,
                                          int rank) {
  std::vector<std::int64_t> out;
  for (std::size_t i = 0; i + 1 < sample_cu.size(); ++i) {
    const std::int64_t start = sample_cu[i], run = sample_cu[i + 1] - start;
    if (run % (2 * cp) != 0)
      throw std::invalid_argument("megatron_tpppcp: sample " + std::to_string(i) +
                                  " of a pack has " + std::to_string(run) +
                                  " tokens, not a multiple of 2 x cp = " + std::to_string(2 * cp) +
                                  " (the model must pad to ParallelContext::token_multiple)");
    const std::int64_t chunk = run / (2 * cp);
    for (const std::int64_t c :
         {static_cast<std::int64_t>(rank), static_cast<std::int64_t>(2 * cp - 1 - rank)})
      for (std::int64_t t = 0; t < chunk; ++t) out.push_back(start + c * chunk + t);
  }
  return out;
}

void ContextKeys::add(const AttentionSegments* segments, at::Tensor pack_order) {
  std::lock_guard<std::mutex> lock(mutex_);
  order_[segments] = std::move(pack_order);
}

void ContextKeys::remove(const AttentionSegments* segments) {
  std::lock_guard<std::mutex> lock(mutex_);
  order_.erase(segments);
}

at::Tensor ContextKeys::find(const AttentionSegments* segments) const {
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = order_.find(segments);
  return it == order_.end() ? at::Tensor() : it->second;
}

AttentionFn context_parallel_attention(AttentionFn inner, CommunicatorPtr group,
                                       std::shared_ptr<ContextKeys> keys) {
  return [inner = std::move(inner), group = std::move(group), keys = std::move(keys)](
             const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
             const AttentionArgs& args) {
    const at::Tensor order = args.segments ? keys->find(args.segments) : at::Tensor();
    if (!order.defined()) return inner(q, k, v, args);
    namespace coll = wanhost::collectives;
    const at::Tensor all_k = coll::all_gather_along(k, 1, group).index_select(1, order);
    const at::Tensor all_v = coll::all_gather_along(v, 1, group).index_select(1, order);
    return inner(q, all_k, all_v, args);
  };
}

KeyBiasAttentionFn context_parallel_attention_key_bias(KeyBiasAttentionFn inner,
                                                       std::shared_ptr<ContextKeys> keys) {
  return [inner = std::move(inner), keys = std::move(keys)](
             const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
             const AttentionArgs& args, const at::Tensor& key_bias) {
    if (args.segments && keys->find(args.segments).defined())
      throw std::logic_error(
          "megatron_tpppcp: a key bias on context-parallel self-attention is not supported");
    return inner(q, k, v, args, key_bias);
  };
}

ContextShare share_of(const Activations& full, const std::vector<std::int64_t>& real_tokens, int cp,
                      int rank) {
  if (!full.segments_cross || !full.segments_self)
    throw std::invalid_argument(
        "megatron_tpppcp: context parallelism needs packed micro batches (collator seq_packer or "
        "packed)");
  // Sample runs (padding included) are the cross-attention segments' query side.
  const std::vector<std::int64_t>& sample_cu = full.segments_cross->host_cu_q;
  const auto n = sample_cu.size() - 1;
  if (real_tokens.size() != n)
    throw std::logic_error("megatron_tpppcp: " + std::to_string(real_tokens.size()) +
                           " token counts for a pack of " + std::to_string(n) + " samples");
  const c10::Device device = full.hidden.device();
  std::vector<std::vector<std::int64_t>> per_rank;
  for (int r = 0; r < cp; ++r) per_rank.push_back(local_positions(sample_cu, cp, r));
  const std::int64_t share = static_cast<std::int64_t>(per_rank[0].size());
  std::vector<std::int64_t> order(static_cast<std::size_t>(sample_cu.back()));
  for (int r = 0; r < cp; ++r)
    for (std::int64_t j = 0; j < share; ++j)
      order[static_cast<std::size_t>(per_rank[r][j])] = r * share + j;

  ContextShare out;
  const auto long_opts = at::TensorOptions().dtype(at::kLong);
  out.positions = at::tensor(per_rank[static_cast<std::size_t>(rank)], long_opts).to(device);
  out.pack_order = at::tensor(order, long_opts).to(device);

  // Local layouts: each sample keeps run / cp tokens; its real tokens come first (padding is the
  // tail of a run and chunk r lies before chunk 2cp-1-r), then its padding tokens.
  std::vector<std::int64_t> cu_local{0}, cu_self_q{0}, cu_self_kv{0};
  const auto& mine = per_rank[static_cast<std::size_t>(rank)];
  std::size_t at_token = 0;
  for (std::size_t i = 0; i < n; ++i) {
    const std::int64_t start = sample_cu[i], run = sample_cu[i + 1] - start;
    const std::int64_t real_end = start + real_tokens[i];
    std::int64_t real = 0, pad = 0;
    for (std::int64_t t = 0; t < run / cp; ++t, ++at_token)
      (mine[at_token] < real_end ? real : pad)++;
    cu_local.push_back(cu_local.back() + run / cp);
    cu_self_q.push_back(cu_self_q.back() + real);
    cu_self_kv.push_back(real_end);
    if (real_tokens[i] < run) {  // the padding attends only to itself (as Model::embed lays out)
      cu_self_q.push_back(cu_self_q.back() + pad);
      cu_self_kv.push_back(sample_cu[i + 1]);
    }
  }
  auto local = std::make_shared<Activations>(full);
  local->hidden = full.hidden.index_select(1, out.positions);
  for (auto& t : local->aux)  // RoPE tables [1, N, 1, Dh]
    if (t.defined() && t.dim() >= 2 && t.size(1) == sample_cu.back())
      t = t.index_select(1, out.positions);
  local->segments_self = make_attention_segments(cu_self_q, cu_self_kv, device);
  local->segments_cross =
      make_attention_segments(cu_local, full.segments_cross->host_cu_kv, device);
  local->self_attention.segments = local->segments_self.get();
  local->cross_attention.segments = local->segments_cross.get();
  out.local = std::move(local);
  return out;
}

}  // namespace wanhost::plugins::megatron_tpppcp
