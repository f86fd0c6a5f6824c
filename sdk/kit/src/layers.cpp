// The default operators of a ParallelContext: replicated linear layers and reference attention.
//
// Layouts the attention operator sees (q [B, S_q, H, Dh], k/v [B, S_kv, H, Dh]):
//  - dense: every row of the batch attends to its own keys; `kv_lengths` masks keys at positions
//    >= length (padded text rows) with a boolean mask for at::scaled_dot_product_attention.
//  - packed (args.segments, B == 1): the samples of a pack are concatenated along S. Query segment
//    i = [cu_q[i], cu_q[i+1]) attends only to key segment i = [cu_kv[i], cu_kv[i+1]).
//    Self-attention uses the same boundaries for q and kv. For cross-attention the model flattens
//    the packed batch's text into one kv sequence whose segment i holds sample i's text rows —
//    either its whole padded row block (the Diffusers/Wan semantics: padded rows are attended) or
//    only its first text_lengths[i] rows (masked semantics). So cross-attention needs no mask, only
//    kv cu_seqlens, and both variants run on the same variable-length kernel.
//    A pack made of a few runs of equal segments runs as that many dense batches (SDPA); other
//    packs on CUDA with bf16/fp16 inputs on LibTorch's variable-length flash attention
//    (at::_flash_attention_forward with cu_seqlens; differentiable through
//    FlashAttentionBackward0); elsewhere (CPU, fp32, unsupported head dims, or when the kernel
//    refuses) a per-segment SDPA loop.
//    KernelOptions::packed_attention (run.kernels.packed_attention) overrides the choice.
#include "wanhost/kit/layers.hpp"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <optional>
#include <string>

#include <ATen/ops/_flash_attention_forward.h>
#include <ATen/ops/_fused_sdp_choice.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/gelu.h>
#include <ATen/ops/linear.h>
#include <ATen/ops/scaled_dot_product_attention.h>
#include <ATen/ops/tensor.h>
#include <c10/util/Exception.h>

#include "wanhost/errors.hpp"
#include "wanhost/kit/fp8.hpp"
#include "wanhost/kit/fused.hpp"
#include "wanhost/kit/kernel_options.hpp"
#include "wanhost/log.hpp"

namespace wanhost {
namespace {

// torch.nn.Linear semantics. Computes in the input's dtype: with bf16 activations and fp32 master
// weights the weights are cast (inside fused::linear; their gradients reach the fp32 master), the
// arithmetic of a model whose weights were loaded in bf16.
class ReplicatedLinear final : public LinearLayer {
 public:
  ReplicatedLinear(std::int64_t in, std::int64_t out, bool bias, bool fp8_eligible)
      : fp8_eligible_(fp8_eligible) {
    TORCH_CHECK(in > 0 && out > 0, "linear layer needs positive sizes, got in=", in, " out=", out);
    // torch.nn.Linear.reset_parameters: kaiming_uniform_(a=sqrt(5)) is U(-1/sqrt(in), 1/sqrt(in));
    // the bias uses the same bound.
    const double bound = 1.0 / std::sqrt(static_cast<double>(in));
    weight_ = register_parameter("weight", at::empty({out, in}).uniform_(-bound, bound));
    if (bias) bias_ = register_parameter("bias", at::empty({out}).uniform_(-bound, bound));
  }

  at::Tensor forward(const at::Tensor& x) override {
    // The master copies go in as they are: both products compute in x's dtype (FP8: from the
    // weight's FP8 copy, made once per optimizer step) and return the gradients in the masters'
    // dtype (an fp32 weight gradient straight from its product, no bf16 rounding).
    if (uses_fp8(x)) return fp8_linear(x, weight_, bias_, fp8_weight_);
    return fused::linear(x, weight_, bias_);
  }

  // A block's large layer (run.fp8 applies to it) with an input FP8 takes.
  bool uses_fp8(const at::Tensor& x) const {
    return fp8_eligible_ && fp8_linear_applies(x, weight_);
  }

  // down(gelu(up(x))) as one FP8 operator (run.kernels.fp8_gelu = fused) when FP8 would run
  // both layers on its own: the same values as the two layers' forwards with ATen's GELU.
  static bool fp8_feed_forward_applies(const ReplicatedLinear& up, const ReplicatedLinear& down,
                                       const at::Tensor& x) {
    return kernel_options().fp8_fused_gelu && up.fp8_eligible_ && down.fp8_eligible_ &&
           fp8_gelu_feed_forward_applies(x, up.weight_, down.weight_);
  }
  static at::Tensor fp8_feed_forward(ReplicatedLinear& up, ReplicatedLinear& down,
                                     const at::Tensor& x) {
    return fp8_gelu_feed_forward(x, up.weight_, up.bias_, up.fp8_weight_, down.weight_, down.bias_,
                                 down.fp8_weight_);
  }

  // Layers of one input on FP8 as one operator (fp8_shared_input_linears, with
  // run.kernels.fp8_input_gradients = summed) when FP8 would run every one of them on its own:
  // the same values, the input's gradient summed in the products.
  static bool fp8_shared_input_applies(const std::vector<ReplicatedLinear*>& layers,
                                       const at::Tensor& x) {
    if (!kernel_options().fp8_summed_input_gradients) return false;
    return layers.size() > 1 && std::all_of(layers.begin(), layers.end(), [&](auto* l) {
             return l != nullptr && l->uses_fp8(x);
           });
  }
  static std::vector<at::Tensor> fp8_shared_input(const std::vector<ReplicatedLinear*>& layers,
                                                  const at::Tensor& x) {
    std::vector<at::Tensor> weights, biases;
    std::vector<Fp8WeightCache*> caches;
    for (ReplicatedLinear* l : layers) {
      weights.push_back(l->weight_);
      biases.push_back(l->bias_);
      caches.push_back(&l->fp8_weight_);
    }
    return fp8_shared_input_linears(x, weights, biases, caches);
  }

  // The master weight and bias (undefined without one).
  const at::Tensor& weight() const { return weight_; }
  const at::Tensor& bias() const { return bias_; }

 private:
  at::Tensor weight_, bias_;
  bool fp8_eligible_;
  Fp8WeightCache fp8_weight_;
};

}  // namespace

at::Tensor gelu_feed_forward(LinearLayer& up, LinearLayer& down, const at::Tensor& x) {
  auto* u = dynamic_cast<ReplicatedLinear*>(&up);
  auto* d = dynamic_cast<ReplicatedLinear*>(&down);
  if (u != nullptr && d != nullptr && ReplicatedLinear::fp8_feed_forward_applies(*u, *d, x))
    return ReplicatedLinear::fp8_feed_forward(*u, *d, x);
  if (u != nullptr && d != nullptr && !u->uses_fp8(x)) {
    if (u->bias().defined() && d->bias().defined())
      return fused::gelu_feed_forward(x, u->weight(), u->bias(), d->weight(), d->bias());
  }
  return down.forward(at::gelu(up.forward(x), "tanh"));
}

std::vector<at::Tensor> shared_input_forward(const std::vector<LinearLayer*>& layers,
                                             const at::Tensor& x) {
  std::vector<ReplicatedLinear*> replicated;
  for (LinearLayer* layer : layers) replicated.push_back(dynamic_cast<ReplicatedLinear*>(layer));
  if (ReplicatedLinear::fp8_shared_input_applies(replicated, x))
    return ReplicatedLinear::fp8_shared_input(replicated, x);
  std::vector<at::Tensor> params;
  for (ReplicatedLinear* r : replicated) {
    if (r == nullptr || r->uses_fp8(x) || !r->bias().defined()) {
      params.clear();
      break;
    }
    params.push_back(r->weight());
    params.push_back(r->bias());
  }
  if (!params.empty()) return fused::shared_input_linears(x, params);
  std::vector<at::Tensor> out;
  for (LinearLayer* layer : layers) out.push_back(layer->forward(x));
  return out;
}

namespace {

at::Tensor key_mask(const at::Tensor& kv_lengths, std::int64_t batch, std::int64_t s_kv,
                    const c10::Device& device) {
  TORCH_CHECK(kv_lengths.dim() == 1 && kv_lengths.size(0) == batch,
              "attention: kv_lengths must be [B] = [", batch, "], got ", kv_lengths.sizes());
  auto lengths = kv_lengths.to(device, at::kLong);
  auto positions = at::arange(s_kv, lengths.options());
  // [B, 1, 1, S_kv], true = attend; broadcast over heads and queries.
  return (positions.unsqueeze(0) < lengths.unsqueeze(1)).view({batch, 1, 1, s_kv});
}

// key_bias (optional): [B, S_kv] additive logits, given to SDPA as a float mask in q's dtype (what
// SDPA accepts); -inf where kv_lengths masks.
at::Tensor dense_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                           const at::Tensor& kv_lengths, const at::Tensor& key_bias = {}) {
  std::optional<at::Tensor> mask;
  if (kv_lengths.defined()) mask = key_mask(kv_lengths, q.size(0), k.size(1), q.device());
  if (key_bias.defined()) {
    auto bias = key_bias.to(q.device(), q.scalar_type()).view({q.size(0), 1, 1, k.size(1)});
    if (mask)
      bias = bias.masked_fill(mask->logical_not(), -std::numeric_limits<double>::infinity());
    mask = bias;
    // Which SDPA kernel takes a float mask here (cuDNN, memory-efficient or the unfused math
    // path) decides what the bias costs: said once a process.
    static std::atomic<bool> said{false};
    if (q.is_cuda() && !said.exchange(true)) {
      const auto backend =
          at::_fused_sdp_choice(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), mask);
      static const char* names[] = {"math", "flash", "efficient", "cudnn", "overrideable"};
      logger()->info("attention with a key bias: SDPA backend {} (q {}, k {})",
                     backend >= 0 && backend <= 4 ? names[backend] : "none", c10::str(q.sizes()),
                     c10::str(k.sizes()));
    }
  }
  auto out = at::scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2),
                                              v.transpose(1, 2), mask, 0.0, false);
  return out.transpose(1, 2);
}

// A packed batch's arguments: segments only (text lengths live in the kv segments), one batch
// row, cumulative boundaries from 0 covering q and k.
void check_packed(const at::Tensor& q, const at::Tensor& k, const AttentionArgs& args) {
  TORCH_CHECK(!args.kv_lengths.defined(),
              "attention: kv_lengths and segments are exclusive (put text lengths into the kv "
              "segments of a packed batch)");
  const AttentionSegments& seg = *args.segments;
  TORCH_CHECK(q.size(0) == 1, "attention: a packed batch must have B == 1, got B=", q.size(0));
  TORCH_CHECK(seg.host_cu_q.size() >= 2 && seg.host_cu_q.size() == seg.host_cu_kv.size(),
              "attention: packed layout needs host_cu_q and host_cu_kv of equal length n+1 >= 2");
  TORCH_CHECK(seg.host_cu_q.front() == 0 && seg.host_cu_kv.front() == 0,
              "attention: cumulative segment boundaries must start at 0");
  TORCH_CHECK(seg.host_cu_q.back() == q.size(1) && seg.host_cu_kv.back() == k.size(1),
              "attention: segments cover ", seg.host_cu_q.back(), " queries / ",
              seg.host_cu_kv.back(), " keys but the tensors hold ", q.size(1), " / ", k.size(1));
}

at::Tensor packed_attention_loop(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                 const AttentionSegments& seg, const at::Tensor& key_bias) {
  std::vector<at::Tensor> parts;
  parts.reserve(seg.host_cu_q.size() - 1);
  for (std::size_t i = 0; i + 1 < seg.host_cu_q.size(); ++i) {
    const auto q0 = seg.host_cu_q[i], nq = seg.host_cu_q[i + 1] - q0;
    const auto k0 = seg.host_cu_kv[i], nk = seg.host_cu_kv[i + 1] - k0;
    TORCH_CHECK(nq >= 0 && nk >= 0, "attention: segment boundaries must not decrease");
    if (nq == 0) continue;
    TORCH_CHECK(nk > 0, "attention: segment ", i, " has ", nq, " queries but no keys");
    parts.push_back(
        dense_attention(q.narrow(1, q0, nq), k.narrow(1, k0, nk), v.narrow(1, k0, nk), at::Tensor(),
                        key_bias.defined() ? key_bias.narrow(1, k0, nk) : at::Tensor()));
  }
  return at::cat(parts, 1);
}

std::int64_t max_length(const std::vector<std::int64_t>& cu) {
  std::int64_t m = 0;
  for (std::size_t i = 0; i + 1 < cu.size(); ++i) m = std::max(m, cu[i + 1] - cu[i]);
  return m;
}

at::Tensor device_cu(const at::Tensor& given, const std::vector<std::int64_t>& host,
                     const c10::Device& device) {
  if (given.defined() && given.device() == device && given.scalar_type() == at::kInt) return given;
  if (given.defined()) return given.to(device, at::kInt).contiguous();
  std::vector<std::int32_t> values(host.begin(), host.end());
  return at::tensor(values, at::TensorOptions().dtype(at::kInt)).to(device);
}

bool flash_eligible(const at::Tensor& q, const at::Tensor& v) {
  const auto t = q.scalar_type();
  const auto dh = q.size(-1);
  return q.is_cuda() && (t == at::kBFloat16 || t == at::kHalf) && dh % 8 == 0 && dh <= 256 &&
         v.size(-1) == dh;
}

// How packed batches are attended: WANHOST_PACKED_ATTENTION = auto (default), flash or loop.
//  - auto: a run of consecutive segments with the same lengths (one image resolution, one text
//    length: a whole stage-1 pack, or one size's group in a pack of mixed sizes, which the
//    packing collators put together) is a dense batch in disguise, so it is viewed as
//    [n, len, H, Dh] and goes to at::scaled_dot_product_attention like a dense batch (cuDNN's
//    attention on Hopper, faster than flash attention 2 varlen); a pack of up to kMaxDenseRuns
//    runs is that many dense calls. Other packs use flash attention 2 with cumulative lengths
//    (CUDA, bf16/fp16), else the per-segment loop.
//  - flash: always the variable-length flash kernel; loop: per-segment SDPA (a reference).
// cuDNN's own ragged mode (at::_cudnn_attention_forward with cumulative lengths) is not used: in
// LibTorch 2.11 on an H100 its gradients were wrong (relative errors of 1e21 against fp32) and
// its steps took ~1 s (measured 2026-11-25).
enum class PackedKernel { automatic, flash, loop };

PackedKernel packed_kernel_choice() {
  switch (kernel_options().packed_attention) {
    case KernelOptions::PackedAttention::flash:
      return PackedKernel::flash;
    case KernelOptions::PackedAttention::loop:
      return PackedKernel::loop;
    default:
      return PackedKernel::automatic;
  }
}

// A maximal run of consecutive segments with the same query and key lengths.
struct SegmentRun {
  std::int64_t count = 0, lq = 0, lkv = 0;
};

// The pack's runs of equal segments; empty when a segment has no queries or no keys (the shards
// of a context-parallel split can), which the dense path cannot batch.
std::vector<SegmentRun> equal_length_runs(const AttentionSegments& seg) {
  std::vector<SegmentRun> runs;
  for (std::size_t i = 0; i + 1 < seg.host_cu_q.size(); ++i) {
    const auto lq = seg.host_cu_q[i + 1] - seg.host_cu_q[i];
    const auto lkv = seg.host_cu_kv[i + 1] - seg.host_cu_kv[i];
    if (lq <= 0 || lkv <= 0) return {};
    if (!runs.empty() && runs.back().lq == lq && runs.back().lkv == lkv)
      ++runs.back().count;
    else
      runs.push_back({1, lq, lkv});
  }
  return runs;
}

// At most this many runs go to the dense path: each run is one SDPA call (a launch, and a small
// grid for a run of one short segment), so a pack whose sizes alternate is left to the
// variable-length kernel, which serves it in one launch.
constexpr std::size_t kMaxDenseRuns = 8;

// A pack as a few dense batches, one per run of equal segments; nullopt when the pack has more
// runs than `max_runs`. The runs are views of q/k/v (split_with_sizes, whose backward is one
// cat), so the only copies are the output's cat and, in backward, the cat of dq/dk/dv.
std::optional<at::Tensor> packed_attention_runs(const at::Tensor& q, const at::Tensor& k,
                                                const at::Tensor& v, const AttentionSegments& seg,
                                                const at::Tensor& key_bias, std::size_t max_runs) {
  const auto runs = equal_length_runs(seg);
  if (runs.empty() || runs.size() > max_runs) return std::nullopt;
  auto as_batch = [](const at::Tensor& t, std::int64_t n, std::int64_t len) {
    return t.reshape({n, len, t.size(2), t.size(3)});
  };
  auto attend = [&](const at::Tensor& qr, const at::Tensor& kr, const at::Tensor& vr,
                    const at::Tensor& br, const SegmentRun& r) {
    auto out = dense_attention(as_batch(qr, r.count, r.lq), as_batch(kr, r.count, r.lkv),
                               as_batch(vr, r.count, r.lkv), at::Tensor(),
                               br.defined() ? br.reshape({r.count, r.lkv}) : at::Tensor());
    return out.reshape({1, r.count * r.lq, q.size(2), v.size(3)});
  };
  if (runs.size() == 1) return attend(q, k, v, key_bias, runs[0]);
  std::vector<std::int64_t> q_sizes, kv_sizes;
  for (const auto& r : runs) {
    q_sizes.push_back(r.count * r.lq);
    kv_sizes.push_back(r.count * r.lkv);
  }
  const auto qs = q.split_with_sizes(q_sizes, 1);
  const auto ks = k.split_with_sizes(kv_sizes, 1), vs = v.split_with_sizes(kv_sizes, 1);
  std::vector<at::Tensor> bs(runs.size());
  if (key_bias.defined()) bs = key_bias.split_with_sizes(kv_sizes, 1);
  std::vector<at::Tensor> parts;
  parts.reserve(runs.size());
  for (std::size_t i = 0; i < runs.size(); ++i)
    parts.push_back(attend(qs[i], ks[i], vs[i], bs[i], runs[i]));
  return at::cat(parts, 1);
}

// Variable-length flash attention over [total, H, Dh]; nullopt when the kernel is unavailable
// (then remembered, and said once).
std::optional<at::Tensor> packed_attention_flash(const at::Tensor& q, const at::Tensor& k,
                                                 const at::Tensor& v,
                                                 const AttentionSegments& seg) {
  static std::atomic<bool> usable{true};
  if (!usable.load() || !flash_eligible(q, v)) return std::nullopt;
  const auto device = q.device();
  auto cu_q = device_cu(seg.cu_seqlens_q, seg.host_cu_q, device);
  auto cu_kv = device_cu(seg.cu_seqlens_kv, seg.host_cu_kv, device);
  const auto max_q = seg.max_q > 0 ? seg.max_q : max_length(seg.host_cu_q);
  const auto max_kv = seg.max_kv > 0 ? seg.max_kv : max_length(seg.host_cu_kv);
  try {
    auto result =
        at::_flash_attention_forward(q[0].contiguous(), k[0].contiguous(), v[0].contiguous(), cu_q,
                                     cu_kv, max_q, max_kv, 0.0, false, false);
    return std::get<0>(result).unsqueeze(0);
  } catch (const c10::Error& e) {
    // E.g. a GPU generation without flash attention: remember, say so once, use the loop.
    usable.store(false);
    logger()->warn("variable-length flash attention unavailable ({}); using per-segment SDPA",
                   e.what_without_backtrace());
    return std::nullopt;
  }
}

}  // namespace

void setup_data_parallel(ParallelContext& ctx) {
  ctx.layout = ParallelLayout{};
  ctx.layout.dp = ctx.world_size;
  ctx.dp = ctx.world;
  ctx.tp = ctx.pp = ctx.cp = make_local_communicator();
}

void set_default_operators(ParallelContext& ctx) {
  ctx.make_linear = [](std::int64_t in, std::int64_t out, bool bias, LinearRole role) {
    return make_replicated_linear(in, out, bias, role);
  };
  ctx.attention = default_attention;
  ctx.attention_key_bias = default_attention_key_bias;
}

ParallelContext single_process_context(c10::Device device) {
  ParallelContext ctx;
  ctx.device = device;
  ctx.param_dtype = at::kFloat;
  ctx.compute_dtype = device.is_cuda() ? at::kBFloat16 : at::kFloat;
  ctx.world = make_local_communicator();
  ctx.dp = ctx.tp = ctx.pp = ctx.cp = ctx.world;
  set_default_operators(ctx);
  return ctx;
}

std::shared_ptr<AttentionSegments> make_attention_segments(const std::vector<std::int64_t>& cu_q,
                                                           const std::vector<std::int64_t>& cu_kv,
                                                           const c10::Device& device) {
  auto seg = std::make_shared<AttentionSegments>();
  seg->host_cu_q = cu_q;
  seg->host_cu_kv = cu_kv;
  auto to_device = [&](const std::vector<std::int64_t>& cu) {
    std::vector<std::int32_t> v(cu.begin(), cu.end());
    return at::tensor(v, at::TensorOptions().dtype(at::kInt)).to(device);
  };
  seg->cu_seqlens_q = to_device(cu_q);
  seg->cu_seqlens_kv = to_device(cu_kv);
  seg->max_q = max_length(cu_q);
  seg->max_kv = max_length(cu_kv);
  return seg;
}

std::shared_ptr<LinearLayer> make_replicated_linear(std::int64_t in, std::int64_t out, bool bias) {
  return make_replicated_linear(in, out, bias, LinearRole::Replicated);
}

std::shared_ptr<LinearLayer> make_replicated_linear(std::int64_t in, std::int64_t out, bool bias,
                                                    LinearRole role) {
  // The roles a model gives its blocks' large layers (column/row parallel under tensor
  // parallelism) are the layers run.fp8 puts on FP8 products.
  return std::make_shared<ReplicatedLinear>(in, out, bias, role != LinearRole::Replicated);
}

at::Tensor default_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                             const AttentionArgs& args) {
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4,
              "attention: q, k, v must be [B, S, H, Dh], got ", q.sizes(), ", ", k.sizes(), ", ",
              v.sizes());
  if (args.segments == nullptr) return dense_attention(q, k, v, args.kv_lengths);
  check_packed(q, k, args);
  const auto choice = packed_kernel_choice();
  if (choice == PackedKernel::automatic)
    if (auto out = packed_attention_runs(q, k, v, *args.segments, {}, kMaxDenseRuns)) return *out;
  if (choice != PackedKernel::loop)
    if (auto out = packed_attention_flash(q, k, v, *args.segments)) return *out;
  return packed_attention_loop(q, k, v, *args.segments, {});
}

// Flash attention takes no bias: with one, a pack is served run by run (any number of runs) or,
// with empty segments or the loop chosen, segment by segment.
at::Tensor default_attention_key_bias(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                      const AttentionArgs& args, const at::Tensor& key_bias) {
  if (!key_bias.defined()) return default_attention(q, k, v, args);
  TORCH_CHECK(key_bias.dim() == 2 && key_bias.size(0) == k.size(0) && key_bias.size(1) == k.size(1),
              "attention: key_bias must be [B, S_kv] = [", k.size(0), ", ", k.size(1), "], got ",
              key_bias.sizes());
  if (args.segments == nullptr) return dense_attention(q, k, v, args.kv_lengths, key_bias);
  check_packed(q, k, args);
  if (packed_kernel_choice() != PackedKernel::loop)
    if (auto out = packed_attention_runs(q, k, v, *args.segments, key_bias,
                                         std::numeric_limits<std::size_t>::max()))
      return *out;
  return packed_attention_loop(q, k, v, *args.segments, key_bias);
}

void keep_key_bias_attention_consistent(ParallelContext& ctx) {
  using Plain =
      at::Tensor (*)(const at::Tensor&, const at::Tensor&, const at::Tensor&, const AttentionArgs&);
  using Biased = at::Tensor (*)(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                const AttentionArgs&, const at::Tensor&);
  const auto* plain = ctx.attention.target<Plain>();
  const auto* biased = ctx.attention_key_bias.target<Biased>();
  const bool plain_is_default = plain != nullptr && *plain == &default_attention;
  const bool biased_is_default = biased != nullptr && *biased == &default_attention_key_bias;
  if (!plain_is_default && biased_is_default) ctx.attention_key_bias = nullptr;
}

}  // namespace wanhost
