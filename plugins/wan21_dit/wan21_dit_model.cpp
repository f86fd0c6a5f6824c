// The Wan 2.1 DiT forward pass: input part (patch, time and text embedding, RoPE tables), blocks
// and output part, with Diffusers' parameter names and its fp32 islands
// (diffusers/models/transformers/transformer_wan.py, WanTransformer3DModel).
//
// Dtypes: parameters are ctx.param_dtype (fp32 master weights); activations run in
// ctx.compute_dtype (bf16 on GPU, fp32 on CPU). Linear layers compute in their input's dtype, so a
// bf16 run is the arithmetic of Diffusers loaded with torch_dtype=bf16: the time embedder, the
// modulation tables, every LayerNorm and the residual gates stay fp32; everything else is bf16.
// The dtypes are explicit, so the result is the same with or without an enclosing autocast
// (wanhost::AutocastGuard): the two places where autocast would change them (the fp32 time
// embedder, the bf16 q/k RMSNorm) run with autocast excluded.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <stdexcept>
#include <tuple>

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/core/grad_mode.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/constant_pad_nd.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/gelu.h>
#include <ATen/ops/layer_norm.h>
#include <ATen/ops/linear.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/outer.h>
#include <ATen/ops/pow.h>
#include <ATen/ops/randn.h>
#include <ATen/ops/rms_norm.h>
#include <ATen/ops/rsqrt.h>
#include <ATen/ops/silu.h>
#include <ATen/ops/stack.h>
#include <ATen/ops/tensor.h>
#include <ATen/ops/zeros.h>
#include <c10/core/DispatchKeySet.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/functions/utils.h>

#include "wan21_dit.hpp"
#include "wanhost/errors.hpp"
#include "wanhost/kit/collectives.hpp"
#include "wanhost/kit/fused.hpp"
#include "wanhost/kit/layers.hpp"

namespace wanhost::plugins::wan21_dit {

using wanhost::Activations;
using wanhost::AttentionSegments;
using wanhost::Batch;
using wanhost::LinearLayer;
using wanhost::LinearRole;

struct WanModel::Attention {
  std::shared_ptr<LinearLayer> q, k, v, out;
  at::Tensor norm_q, norm_k;  // RMSNorm weights over the whole inner dim (all heads)
};

struct WanModel::Block {
  std::shared_ptr<torch::nn::Module> module;
  Attention self, cross;
  at::Tensor norm2_weight, norm2_bias;  // affine pre-cross-attention LayerNorm (if configured)
  std::shared_ptr<LinearLayer> ffn_up, ffn_down;
  at::Tensor table;  // scale_shift_table [1, 6, D]
};

// 3-D RoPE tables (diffusers/models/transformers/transformer_wan.py, WanRotaryPosEmbed): per axis
// cos/sin of pos * theta^(-2j/n) computed in float64, stored fp32; one value per rotated pair
// (Diffusers stores each twice and reads every other).
struct WanModel::Rope {
  std::array<at::Tensor, 3> cos, sin;  // [max_len, n_axis / 2] fp32, CPU
  std::int64_t max_len = 0;
  std::map<std::array<std::int64_t, 3>, std::pair<at::Tensor, at::Tensor>> cache;  // on device
  std::int64_t generation = 0;  // times the cache was cleared

  explicit Rope(const WanConfig& c) : max_len(c.rope_max_seq_len) {
    const std::array<std::int64_t, 3> dims{c.rope_t_dim(), c.rope_h_dim(), c.rope_h_dim()};
    const auto f64 = at::TensorOptions().dtype(at::kDouble);
    const auto positions = at::arange(max_len, f64);
    for (int a = 0; a < 3; ++a) {
      const auto n = dims[a];
      auto freqs = at::pow(10000.0, at::arange(0, n, 2, f64) / static_cast<double>(n)).reciprocal();
      auto angles = at::outer(positions, freqs);
      cos[a] = angles.cos().to(at::kFloat);
      sin[a] = angles.sin().to(at::kFloat);
    }
  }

  // [S, Dh/2] tables of a token grid (frame-major token order).
  const std::pair<at::Tensor, at::Tensor>& grid(std::int64_t f, std::int64_t h, std::int64_t w,
                                                const c10::Device& device) {
    const std::array<std::int64_t, 3> key{f, h, w};
    if (auto it = cache.find(key); it != cache.end()) return it->second;
    if (f > max_len || h > max_len || w > max_len)
      throw std::invalid_argument("wan21_dit: token grid " + std::to_string(f) + "x" +
                                  std::to_string(h) + "x" + std::to_string(w) +
                                  " exceeds rope_max_seq_len = " + std::to_string(max_len));
    auto table = [&](const std::array<at::Tensor, 3>& t) {
      auto tf = t[0].narrow(0, 0, f).view({f, 1, 1, -1}).expand({f, h, w, -1});
      auto th = t[1].narrow(0, 0, h).view({1, h, 1, -1}).expand({f, h, w, -1});
      auto tw = t[2].narrow(0, 0, w).view({1, 1, w, -1}).expand({f, h, w, -1});
      return at::cat({tf, th, tw}, -1).reshape({f * h * w, -1}).to(device);
    };
    // Bucketed data has few grids; bound it anyway. A cleared table may be one a captured step
    // reads: the generation is part of the graph key, so such a graph is never replayed again.
    if (cache.size() > 256) {
      cache.clear();
      ++generation;
    }
    return cache.emplace(key, std::make_pair(table(cos), table(sin))).first->second;
  }
};

namespace {

std::shared_ptr<torch::nn::Module> child(torch::nn::Module& parent, const std::string& name) {
  return parent.register_module(name, std::make_shared<torch::nn::Module>());
}

at::Tensor plain_layer_norm(const at::Tensor& x, double eps) {
  return at::layer_norm(x, {x.size(-1)}, {}, {}, eps);
}

// Rotates adjacent channel pairs (2k, 2k+1) of x [B, S, H, Dh] by the angles in cos/sin
// [1, S, 1, Dh/2]. Products run in fp32 (promotion) and are rounded once to x's dtype.
at::Tensor apply_rope(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  auto pairs = x.unflatten(-1, {-1, 2});
  auto x1 = pairs.select(-1, 0), x2 = pairs.select(-1, 1);
  auto even = x1 * cos - x2 * sin;
  auto odd = x1 * sin + x2 * cos;
  return at::stack({even, odd}, -1).flatten(-2).to(x.scalar_type());
}

// Each sample's token run in a packed batch (its padding included, see WanModel::embed), or null
// for a dense one: the cross-attention layout has one query segment a sample.
const std::vector<std::int64_t>* packed_bounds(const Activations& act) {
  return act.segments_cross ? &act.segments_cross->host_cu_q : nullptr;
}

// Tokens of a sample's run in a packed batch: its tokens rounded up to a multiple of `multiple`.
std::int64_t padded(std::int64_t tokens, std::int64_t multiple) {
  return (tokens + multiple - 1) / multiple * multiple;
}

// normed * (1 + scale) + shift with per-sample scale/shift [B, 1, D]. Packed tokens [1, N, D] are
// modulated one sample at a time: expanding the tables to [N, D] would keep six token-sized
// tensors per block alive for backward.
at::Tensor modulate(const at::Tensor& normed, const at::Tensor& scale, const at::Tensor& shift,
                    const Activations& act) {
  const auto* cu = packed_bounds(act);
  if (cu == nullptr) return normed * (1 + scale) + shift;
  std::vector<at::Tensor> parts;
  for (std::size_t i = 0; i + 1 < cu->size(); ++i) {
    auto part = normed.narrow(1, (*cu)[i], (*cu)[i + 1] - (*cu)[i]);
    parts.push_back(part * (1 + scale[i]) + shift[i]);
  }
  return at::cat(parts, 1);
}

// x * gate with per-sample gates [B, 1, D] (promotes to fp32 like the reference).
at::Tensor gated(const at::Tensor& x, const at::Tensor& gate, const Activations& act) {
  const auto* cu = packed_bounds(act);
  if (cu == nullptr) return x * gate;
  std::vector<at::Tensor> parts;
  for (std::size_t i = 0; i + 1 < cu->size(); ++i)
    parts.push_back(x.narrow(1, (*cu)[i], (*cu)[i + 1] - (*cu)[i]) * gate[i]);
  return at::cat(parts, 1);
}

// x rounded to `dtype` (float64, float32, bfloat16 or half), toward -inf when `down`.
template <class Half16>
double round_16bit(float f, bool down) {
  Half16 h(f);
  if (down && static_cast<float>(h) > f) {
    const float r = h;
    const std::uint16_t bits = r > 0 ? h.x - 1 : r < 0 ? h.x + 1 : 0x8001;  // next value down
    h = Half16(bits, Half16::from_bits());
  }
  return static_cast<float>(h);
}

double representable(double x, at::ScalarType dtype, bool down) {
  if (dtype == at::kDouble) return x;
  float f = static_cast<float>(x);
  if (down && f > x) f = std::nextafter(f, -std::numeric_limits<float>::infinity());
  if (dtype == at::kBFloat16) return round_16bit<c10::BFloat16>(f, down);
  if (dtype == at::kHalf) return round_16bit<c10::Half>(f, down);
  return f;
}

// Rows beyond the longest caption that collapsed padding keeps at least: several, so that the
// sample with the longest caption also spreads its padding weight over more than one rounded bias.
constexpr std::int64_t kCollapsedPaddingRows = 4;
// The kept row count is rounded up to a multiple of this: few distinct shapes, so that the
// attention kernels' per-shape plans (cuDNN builds one per shape, ~1 s) are made once, not on
// every step with a new longest caption; and aligned rows for the kernels that take a bias.
constexpr std::int64_t kCollapsedRowsMultiple = 64;

// The collapsed padding's key bias, flat (text_context puts it third into Activations::aux, after
// the RoPE tables), or an undefined tensor.
const at::Tensor& cross_key_bias(const Activations& act) {
  static const at::Tensor none;
  return act.aux.size() > 2 ? act.aux[2] : none;
}

[[noreturn]] void bad_batch(const std::string& what) {
  throw std::invalid_argument("wan21_dit: " + what);
}

}  // namespace

WanModel::WanModel(WanOptions options, const wanhost::ParallelContext& ctx)
    : options_(std::move(options)), ctx_(ctx) {
  if (!ctx_.make_linear)
    ctx_.make_linear = [](std::int64_t in, std::int64_t out, bool bias, LinearRole role) {
      return wanhost::make_replicated_linear(in, out, bias, role);
    };
  if (!ctx_.attention) {
    ctx_.attention = wanhost::default_attention;
    ctx_.attention_key_bias = wanhost::default_attention_key_bias;
  }
  if (ctx_.token_multiple < 1)
    throw std::invalid_argument("wan21_dit: ParallelContext::token_multiple must be >= 1, got " +
                                std::to_string(ctx_.token_multiple));
  // Tensor parallelism splits q/k/v and the first FFN layer by output features (whole heads on
  // every rank) and the attention output and second FFN layer by input features.
  if (const auto tp = ctx_.layout.tp; tp > 1) {
    const auto& c = options_.config;
    if (c.heads % tp != 0 || c.ffn_dim % tp != 0)
      throw wanhost::ConfigError(
          "/model/wan21_dit",
          "tensor parallelism over " + std::to_string(tp) + " ranks needs the attention heads (" +
              std::to_string(c.heads) + ") and the FFN width (" + std::to_string(c.ffn_dim) +
              ") to be multiples of " + std::to_string(tp),
          "wan21_dit");
    if (!ctx_.tp || ctx_.tp->size() != tp)
      throw std::invalid_argument("wan21_dit: layout.tp=" + std::to_string(tp) +
                                  " but the context has no tensor-parallel group of that size");
  }
  if (options_.fused_kernels == "on" && !(wanhost::fused::kernels_built() && ctx_.device.is_cuda()))
    throw wanhost::ConfigError(
        "/model/wan21_dit/fused_kernels",
        "\"on\" needs a CUDA build of wanhost running on a GPU (this is " +
            std::string(wanhost::fused::kernels_built() ? "a CUDA" : "a CPU-only") + " build on " +
            ctx_.device.str() + "); use auto or off",
        "wan21_dit");
  fused_ =
      options_.fused_kernels != "off" && wanhost::fused::kernels_built() && ctx_.device.is_cuda();
  build();
  root_->to(ctx_.device, ctx_.param_dtype);
  rope_ = std::make_unique<Rope>(options_.config);
  if (options_.weights.empty())
    initialize(options_.init_seed);
  else
    load_weights(options_.weights);
}

WanModel::~WanModel() = default;

// Registers every parameter under its Diffusers name (diffusers/models/transformers/
// transformer_wan.py, WanTransformer3DModel), in Diffusers' order.
void WanModel::build() {
  const auto& c = options_.config;
  const auto d = c.dim();
  root_ = std::make_shared<torch::nn::Module>("WanTransformer3DModel");
  auto linear = [&](torch::nn::Module& parent, const std::string& name, std::int64_t in,
                    std::int64_t out, LinearRole role) {
    auto layer = ctx_.make_linear(in, out, true, role);
    parent.register_module(name, layer);
    linears_.emplace_back(layer, in);
    return layer;
  };

  auto patch = child(*root_, "patch_embedding");
  patch_weight_ = patch->register_parameter(
      "weight", at::empty({d, c.in_channels, c.patch[0], c.patch[1], c.patch[2]}));
  patch_bias_ = patch->register_parameter("bias", at::empty({d}));

  auto cond = child(*root_, "condition_embedder");
  auto time = child(*cond, "time_embedder");
  time_1_ = linear(*time, "linear_1", c.freq_dim, d, LinearRole::Replicated);
  time_2_ = linear(*time, "linear_2", d, d, LinearRole::Replicated);
  time_proj_ = linear(*cond, "time_proj", d, 6 * d, LinearRole::Replicated);
  auto text = child(*cond, "text_embedder");
  text_1_ = linear(*text, "linear_1", c.text_dim, d, LinearRole::Replicated);
  text_2_ = linear(*text, "linear_2", d, d, LinearRole::Replicated);

  auto blocks = child(*root_, "blocks");
  auto make_attention = [&](torch::nn::Module& parent, const std::string& name) {
    auto m = child(parent, name);
    Attention a;
    a.q = linear(*m, "to_q", d, d, LinearRole::ColumnParallel);
    a.k = linear(*m, "to_k", d, d, LinearRole::ColumnParallel);
    a.v = linear(*m, "to_v", d, d, LinearRole::ColumnParallel);
    a.out = linear(*child(*m, "to_out"), "0", d, d, LinearRole::RowParallel);
    a.norm_q = child(*m, "norm_q")->register_parameter("weight", at::empty({d}));
    a.norm_k = child(*m, "norm_k")->register_parameter("weight", at::empty({d}));
    return a;
  };
  for (std::int64_t i = 0; i < c.num_layers; ++i) {
    auto b = std::make_shared<Block>();
    b->module = child(*blocks, std::to_string(i));
    b->self = make_attention(*b->module, "attn1");
    b->cross = make_attention(*b->module, "attn2");
    if (c.cross_attn_norm) {
      auto norm2 = child(*b->module, "norm2");
      b->norm2_weight = norm2->register_parameter("weight", at::empty({d}));
      b->norm2_bias = norm2->register_parameter("bias", at::empty({d}));
    }
    auto net = child(*child(*b->module, "ffn"), "net");
    b->ffn_up = linear(*child(*net, "0"), "proj", d, c.ffn_dim, LinearRole::ColumnParallel);
    b->ffn_down = linear(*net, "2", c.ffn_dim, d, LinearRole::RowParallel);
    b->table = b->module->register_parameter("scale_shift_table", at::empty({1, 6, d}));
    blocks_.push_back(b);
  }
  proj_out_ =
      linear(*root_, "proj_out", d, c.out_channels * c.patch_volume(), LinearRole::Replicated);
  out_table_ = root_->register_parameter("scale_shift_table", at::empty({1, 2, d}));
}

// PyTorch default initialisation, as WanTransformer3DModel.from_config gives (the reference's
// pretrain mode, NVIDIA-NeMo/DFM dfm/src/automodel/recipes/train.py; docs/model.md):
// Linear/Conv3d U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias, RMSNorm/LayerNorm weight 1
// and bias 0, modulation tables randn/sqrt(D). Nothing is zero-initialised in the reference.
// Drawn in parameter order from a CPU generator seeded with `seed`, so every device and rank
// gets the same values.
void WanModel::initialize(std::int64_t seed) {
  at::NoGradGuard no_grad;
  auto gen = at::detail::createCPUGenerator(static_cast<std::uint64_t>(seed));
  const auto& c = options_.config;
  std::map<const void*, std::int64_t> fan_in;
  for (auto& [layer, in] : linears_)
    for (auto& p : layer->parameters(false)) fan_in[p.unsafeGetTensorImpl()] = in;
  fan_in[patch_weight_.unsafeGetTensorImpl()] = c.in_channels * c.patch_volume();
  fan_in[patch_bias_.unsafeGetTensorImpl()] = c.in_channels * c.patch_volume();

  const auto f32 = at::TensorOptions().dtype(at::kFloat);
  const bool megatron = options_.init_method == "megatron";
  for (auto& item : root_->named_parameters(true)) {
    const auto& name = item.key();
    auto& p = item.value();
    at::Tensor value;
    auto ends_with = [&](const std::string& s) {
      return name.size() >= s.size() && name.compare(name.size() - s.size(), s.size(), s) == 0;
    };
    if (megatron && fan_in.count(p.unsafeGetTensorImpl())) {
      // Megatron-LM's init_method_normal(0.02) and scaled_init_method_normal for the layers that
      // feed a residual (megatron/core/utils.py); biases zero.
      const bool residual = ends_with("to_out.0.weight") || ends_with("ffn.net.2.weight");
      const double std =
          residual ? 0.02 / std::sqrt(2.0 * static_cast<double>(c.num_layers)) : 0.02;
      value = ends_with(".bias") ? at::zeros(p.sizes(), f32)
                                 : at::empty(p.sizes(), f32).normal_(0.0, std, gen);
    } else if (auto it = fan_in.find(p.unsafeGetTensorImpl()); it != fan_in.end()) {
      const double bound = 1.0 / std::sqrt(static_cast<double>(it->second));
      value = at::empty(p.sizes(), f32).uniform_(-bound, bound, gen);
    } else if (ends_with("scale_shift_table")) {
      value = at::randn(p.sizes(), gen, f32) / std::sqrt(static_cast<double>(c.dim()));
    } else if (ends_with(".bias")) {
      value = at::zeros(p.sizes(), f32);  // LayerNorm bias
    } else {
      value = at::ones(p.sizes(), f32);  // RMSNorm / LayerNorm weight
    }
    p.copy_(value);
  }
}

torch::nn::Module& WanModel::block_module(std::int64_t i) {
  return *blocks_.at(static_cast<std::size_t>(i))->module;
}

std::vector<WanModel::TokenGrid> WanModel::token_grids(const Batch& b) const {
  const auto& c = options_.config;
  auto grid = [&](std::int64_t f, std::int64_t h, std::int64_t w) {
    if (f <= 0 || h <= 0 || w <= 0 || f % c.patch[0] || h % c.patch[1] || w % c.patch[2])
      bad_batch("latent grid " + std::to_string(f) + "x" + std::to_string(h) + "x" +
                std::to_string(w) + " is not a positive multiple of the patch size");
    return TokenGrid{f / c.patch[0], h / c.patch[1], w / c.patch[2]};
  };
  const auto& x = b.latents;
  if (!b.packed()) {
    if (x.dim() != 5 || x.size(1) != c.in_channels)
      bad_batch("dense latents must be [B, " + std::to_string(c.in_channels) + ", F, H, W]");
    // Every later step reads the first sample's grid, text and timestep.
    if (x.size(0) == 0) bad_batch("the batch is empty (batch size 0)");
    return std::vector<TokenGrid>(x.size(0), grid(x.size(2), x.size(3), x.size(4)));
  }
  if (x.dim() != 2 || x.size(0) != c.in_channels)
    bad_batch("packed latents must be [" + std::to_string(c.in_channels) + ", N]");
  std::vector<TokenGrid> grids;
  std::int64_t offset = 0;
  for (const auto& s : b.segments) {
    if (s.offset != offset)
      bad_batch("packed segments must tile the latents in order (segment at " +
                std::to_string(s.offset) + ", expected " + std::to_string(offset) + ")");
    grids.push_back(grid(s.frames, s.height, s.width));
    offset += s.numel();
  }
  if (offset != x.size(1))
    bad_batch("packed segments cover " + std::to_string(offset) + " latent columns of " +
              std::to_string(x.size(1)));
  return grids;
}

// Latents -> patch vectors [B, S, C*pt*ph*pw] (packed: [1, N, ...]), ordered like the Conv3d weight
// (channel, then pt, ph, pw) so that the patch embedding is one matrix product.
at::Tensor WanModel::patch_tokens(const Batch& b) const {
  const auto& p = options_.config.patch;
  auto patchify = [&](const at::Tensor& x) {  // [B, C, F, H, W]
    const auto n = x.size(0), ch = x.size(1);
    const auto f = x.size(2) / p[0], h = x.size(3) / p[1], w = x.size(4) / p[2];
    return x.reshape({n, ch, f, p[0], h, p[1], w, p[2]})
        .permute({0, 2, 4, 6, 1, 3, 5, 7})
        .reshape({n, f * h * w, ch * p[0] * p[1] * p[2]});
  };
  auto x = b.latents.to(ctx_.device, ctx_.compute_dtype);
  if (!b.packed()) return patchify(x);
  if (const auto n = uniform_unpadded_pack(b); n > 0) {
    // Samples of one grid, no padding: the pack is a dense batch laid side by side, patchified
    // in one pass ([C, n*F*H*W] -> [n, C, F, H, W]) instead of a copy per sample.
    const auto& g = b.segments.front();
    auto dense = x.view({x.size(0), n, g.frames, g.height, g.width}).transpose(0, 1);
    return patchify(dense).reshape({1, -1, x.size(0) * p[0] * p[1] * p[2]});
  }
  std::vector<at::Tensor> parts;
  for (const auto& s : b.segments) {
    parts.push_back(patchify(
        x.narrow(1, s.offset, s.numel()).reshape({1, x.size(0), s.frames, s.height, s.width})));
    // Padding tokens (ParallelContext::token_multiple): zero patches.
    const auto n = parts.back().size(1), pad = padded(n, ctx_.token_multiple) - n;
    if (pad > 0) parts.push_back(at::zeros({1, pad, parts.back().size(2)}, x.options()));
  }
  return at::cat(parts, 1);
}

// Sinusoid (cos first) -> time_embedder (fp32 island) -> temb [B, D] in compute dtype, and
// timestep_proj = time_proj(SiLU(temb)) [B, 6, D] (diffusers/models/transformers/
// transformer_wan.py, WanTimeTextImageEmbedding).
std::tuple<at::Tensor, at::Tensor> WanModel::time_embedding(const at::Tensor& timesteps) {
  const auto& c = options_.config;
  const auto half = c.freq_dim / 2;
  const auto t = timesteps.to(ctx_.device, at::kFloat).reshape({-1});
  const auto f32 = at::TensorOptions().dtype(at::kFloat).device(ctx_.device);
  auto exponent = at::arange(half, f32) * (-std::log(10000.0));
  auto freqs = (exponent / static_cast<double>(half)).exp();
  auto args = t.unsqueeze(1) * freqs.unsqueeze(0);
  auto sinusoid = at::cat({args.cos(), args.sin()}, -1);
  if (c.freq_dim % 2) sinusoid = at::constant_pad_nd(sinusoid, {0, 1});
  at::Tensor temb;
  {
    c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
    // Diffusers feeds the sinusoid in the time embedder's parameter dtype: fp32 when its
    // _keep_in_fp32_modules apply (fp32 master weights here), bf16 in an all-bf16 model.
    const auto embedder_dtype = time_1_->parameters(false).front().scalar_type();
    temb = time_2_->forward(at::silu(time_1_->forward(sinusoid.to(embedder_dtype))))
               .to(ctx_.compute_dtype);
  }
  auto proj = time_proj_->forward(at::silu(temb)).unflatten(1, {6, c.dim()});
  return {temb, proj};
}

std::vector<std::int64_t> WanModel::host_text_lengths(const Batch& b, std::int64_t n) {
  const auto rows = b.text.size(1);
  std::vector<std::int64_t> lengths(static_cast<std::size_t>(n), rows);
  if (b.text_lengths.defined()) {
    auto l = b.text_lengths.to(at::kCPU, at::kLong).contiguous();
    if (l.numel() != n) bad_batch("text_lengths must hold one length per sample");
    for (std::int64_t i = 0; i < n; ++i) {
      lengths[i] = l.data_ptr<std::int64_t>()[i];
      if (lengths[i] < 0 || lengths[i] > rows)
        bad_batch("text length " + std::to_string(lengths[i]) + " outside [0, " +
                  std::to_string(rows) + "]");
    }
  }
  return lengths;
}

// Everything else the forward pass shapes from the batch comes from tensor shapes (the latent
// grid) or the model's options; tables made on first use (RoPE, padding biases) are cached, so a
// step of a key seen before makes none, and a replay reads them where they were. The RoPE cache's
// generation is in the key: a graph whose table was evicted is not replayed.
std::optional<std::string> WanModel::graph_key(const Batch& b) const {
  if (b.packed() || b.text.dim() != 3) return std::nullopt;
  if (b.text_lengths.defined() && !b.text_lengths.device().is_cpu()) return std::nullopt;
  const std::string rope = "rope " + std::to_string(rope_->generation);
  if (options_.mask_text_padding) return rope;  // lengths read on the device only
  const auto total = std::max(b.text.size(1), options_.text_len);
  const auto kept = collapsed_rows(host_text_lengths(b, b.text.size(0)), b.text.size(1), total);
  return rope + ", text rows " + std::to_string(kept);
}

// Text rows -> projected context. Rows past each sample's length are zeroed (the Wan pipeline's
// padding). Unmasked (default, Diffusers/Wan parity): the text is zero-padded to at least
// text_len rows and every row is attended. Masked: only each sample's first length rows are
// attended (at least one row, so an empty prompt still has a key).
at::Tensor WanModel::text_context(const Batch& b, Activations& act,
                                  const std::vector<std::int64_t>& host_cu_q) {
  const auto& c = options_.config;
  const auto n = static_cast<std::int64_t>(host_cu_q.size()) - 1;
  const auto& text = b.text;
  if (text.dim() != 3 || text.size(0) != n || text.size(2) != c.text_dim)
    bad_batch("text must be [" + std::to_string(n) + ", L, " + std::to_string(c.text_dim) +
              "], got " + c10::str(text.sizes()));
  const auto rows = text.size(1);
  std::vector<std::int64_t> lengths = host_text_lengths(b, n);
  auto x = text.to(ctx_.device, ctx_.compute_dtype);
  // The lengths on the device without waiting for it: the trainer hands text_lengths on the
  // host, pinned (SDK 2.4), so the copy is asynchronous (a blocking copy waits for the device);
  // a batch already on the device is used as it is.
  auto len_dev = b.text_lengths.defined()
                     ? b.text_lengths.to(ctx_.device, at::kLong, /*non_blocking=*/true)
                     : at::tensor(lengths, at::TensorOptions().dtype(at::kLong)).to(ctx_.device);
  auto keep = at::arange(rows, len_dev.options()).unsqueeze(0) < len_dev.unsqueeze(1);
  x = x * keep.unsqueeze(-1).to(x.scalar_type());

  const bool packed = b.packed();
  std::vector<std::int64_t> cu_kv{0};
  if (!options_.mask_text_padding) {
    auto total = std::max(rows, options_.text_len);
    // Collapsed padding: every sample keeps `kept` rows (its real ones, then padded rows whose
    // key bias makes them weigh as all of its padded rows), exact as described at
    // collapsed_padding_bias.
    const auto kept = collapsed_rows(lengths, rows, total);
    if (kept < total) {
      // Each sample's row of a table made once (on the device, in the compute dtype, of whose
      // values the biases are), gathered by the device lengths: nothing is copied from the host.
      act.aux.push_back(padding_bias_table(total, kept).index_select(0, len_dev).view({-1}));
      total = kept;
    }
    if (total > rows) x = at::constant_pad_nd(x, {0, 0, 0, total - rows});
    if (total < rows) x = x.narrow(1, 0, total);
    if (packed) {
      x = x.reshape({1, n * total, c.text_dim});
      for (std::int64_t i = 0; i < n; ++i) cu_kv.push_back(cu_kv.back() + total);
    }
  } else {
    for (auto& l : lengths) l = std::max<std::int64_t>(l, 1);
    if (packed) {
      std::vector<at::Tensor> parts;
      for (std::int64_t i = 0; i < n; ++i) {
        parts.push_back(x[i].narrow(0, 0, lengths[i]));
        cu_kv.push_back(cu_kv.back() + lengths[i]);
      }
      x = at::cat(parts, 0).unsqueeze(0);
    } else {
      act.cross_attention.kv_lengths = len_dev.clamp_min(1);
    }
  }
  if (packed) {
    act.segments_cross = wanhost::make_attention_segments(host_cu_q, cu_kv, ctx_.device);
    act.cross_attention.segments = act.segments_cross.get();
  }
  return text_2_->forward(at::gelu(text_1_->forward(x), "tanh"));
}

// Unmasked text pads every caption to `total` rows with zero rows, which the text MLP and the k/v
// projections turn into one key and one value repeated: attending to a sample's m = total - l
// padded rows equals attending to any r >= 1 of them whose logits carry biases b_j with
// sum_j exp(b_j) = m (softmax weights are proportional to exp(logit)), in value and in every
// gradient (a shared row's gradient is the sum over the rows it stands for). Every sample keeps
// `kept` rows: its l real rows (bias 0), then r = kept - l padded rows. Attention adds the bias in
// the activations' dtype, so each b_j is a value of `dtype`: all rows but the last take the
// largest representable bias whose weight is not above an equal share of what is left, the last
// the rest, rounded to nearest. The weights then sum to m up to that last rounding: exact in
// float64, within float32 rounding in float32, and in bfloat16 within 1.6 % of the last row's
// weight (about m / r), a systematic error of at most 0.4 % of the padding's weight when r = 4
// and less with more rows, below bf16 attention's own rounding of each probability (0.4 %).
at::Tensor collapsed_padding_bias(const std::vector<std::int64_t>& lengths, std::int64_t total,
                                  std::int64_t kept, at::ScalarType dtype) {
  const auto n = static_cast<std::int64_t>(lengths.size());
  at::Tensor bias = at::zeros({n, kept}, at::kDouble);
  auto* out = bias.data_ptr<double>();
  for (std::int64_t i = 0; i < n; ++i) {
    const std::int64_t l = lengths[static_cast<std::size_t>(i)], r = kept - l;
    double left = static_cast<double>(total - l);
    for (std::int64_t j = 0; j < r; ++j) {
      const bool last = j + 1 == r;
      const double b =
          representable(std::log(last ? left : left / static_cast<double>(r - j)), dtype, !last);
      out[i * kept + l + j] = b;
      left -= std::exp(b);
    }
  }
  return bias;
}

wanhost::Activations WanModel::embed(const Batch& b, const at::Tensor& timesteps) {
  const auto& c = options_.config;
  const auto grids = token_grids(b);
  const auto n = static_cast<std::int64_t>(grids.size());
  if (timesteps.numel() != n)
    bad_batch("expected " + std::to_string(n) + " timesteps, got " +
              std::to_string(timesteps.numel()));
  // Packed batches: each sample's run padded to a multiple of ctx.token_multiple (a sequence
  // split needs equal shares of every sample). `cu`: the samples' runs, padding included (one
  // modulation, text and cross-attention segment a sample); `cu_self`: the real tokens and the
  // padding of each sample as separate self-attention segments, so that padding tokens attend
  // only to each other and no real token sees them. With token_multiple 1 both are the samples'.
  const auto multiple = b.packed() ? ctx_.token_multiple : 1;
  std::vector<std::int64_t> cu{0}, cu_self{0};
  for (const auto& g : grids) {
    cu.push_back(cu.back() + padded(g.count(), multiple));
    cu_self.push_back(cu_self.back() + g.count());
    if (cu_self.back() != cu.back()) cu_self.push_back(cu.back());
  }

  Activations act;
  const auto cdt = ctx_.compute_dtype;
  act.hidden = at::linear(patch_tokens(b), patch_weight_.reshape({c.dim(), -1}).to(cdt),
                          patch_bias_.to(cdt));
  auto [temb, proj] = time_embedding(timesteps);

  std::vector<at::Tensor> cos, sin;
  for (std::size_t i = 0; i < (b.packed() ? grids.size() : 1); ++i) {
    const auto& [tc, ts] = rope_->grid(grids[i].f, grids[i].h, grids[i].w, ctx_.device);
    cos.push_back(tc);
    sin.push_back(ts);
    // Padding tokens take the first position's angles (a finite rotation, never seen by a real
    // token).
    const auto pad = (cu[i + 1] - cu[i]) - grids[i].count();
    if (b.packed() && pad > 0) {
      cos.push_back(tc.narrow(0, 0, 1).expand({pad, tc.size(1)}));
      sin.push_back(ts.narrow(0, 0, 1).expand({pad, ts.size(1)}));
    }
  }
  auto rope_view = [](const std::vector<at::Tensor>& t) {
    auto all = t.size() == 1 ? t[0] : at::cat(t, 0);
    return all.view({1, all.size(0), 1, all.size(1)});
  };
  act.aux = {rope_view(cos), rope_view(sin)};

  if (b.packed()) {
    act.segments_self = wanhost::make_attention_segments(cu_self, cu_self, ctx_.device);
    act.self_attention.segments = act.segments_self.get();
  }
  auto context = text_context(b, act, cu);
  act.context = {proj, context, temb};
  return act;
}

const at::Tensor& WanModel::padding_bias_table(std::int64_t total, std::int64_t kept) {
  auto it = padding_bias_tables_.find({total, kept});
  if (it == padding_bias_tables_.end()) {
    // Never evicted: a step captured as a CUDA graph reads its table at the table's address on
    // every replay. There are few (padded, kept) pairs, each at most 256 x 256 values.
    std::vector<std::int64_t> every(static_cast<std::size_t>(kept));
    std::iota(every.begin(), every.end(), std::int64_t{0});
    it = padding_bias_tables_
             .emplace(std::make_pair(total, kept),
                      collapsed_padding_bias(every, total, kept, ctx_.compute_dtype)
                          .to(ctx_.device, ctx_.compute_dtype))
             .first;
  }
  return it->second;
}

std::int64_t WanModel::collapsed_rows(const std::vector<std::int64_t>& lengths, std::int64_t rows,
                                      std::int64_t total) const {
  if (!options_.collapse_text_padding || !ctx_.attention_key_bias || lengths.empty()) return total;
  // Every length is at most `rows`: keeping rows + 4 is as exact as keeping longest + 4.
  const auto longest =
      options_.collapse_from_text_rows ? rows : *std::max_element(lengths.begin(), lengths.end());
  const auto kept = longest + kCollapsedPaddingRows;
  return std::min(
      total, (kept + kCollapsedRowsMultiple - 1) / kCollapsedRowsMultiple * kCollapsedRowsMultiple);
}

at::Tensor WanModel::attention(Attention& a, const at::Tensor& x, const at::Tensor& src, bool rope,
                               const Activations& act, const wanhost::AttentionArgs& args,
                               const at::Tensor& key_bias) {
  const auto& c = options_.config;
  auto attend = [&](const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
    if (!key_bias.defined()) return ctx_.attention(q, k, v, args);
    return ctx_.attention_key_bias(q, k, v, args, key_bias.view({k.size(0), -1}));
  };
  // Sequence parallelism: the block's input holds this rank's tokens; the layers see them all.
  const at::Tensor xs = whole_sequence(x);
  const at::Tensor ss = src.is_same(x) ? xs : src;
  // q, k and v (self-attention), k and v (cross-attention) read one input: one operator, whose
  // backward sums the input's gradient inside the products (wanhost::shared_input_forward).
  at::Tensor q, k, v;
  if (ss.is_same(xs)) {
    const auto qkv = wanhost::shared_input_forward({a.q.get(), a.k.get(), a.v.get()}, xs);
    q = qkv[0], k = qkv[1], v = qkv[2];
  } else {
    q = a.q->forward(xs);
    const auto kv = wanhost::shared_input_forward({a.k.get(), a.v.get()}, ss);
    k = kv[0], v = kv[1];
  }
  const bool split_heads = ctx_.layout.tp > 1;  // q/k/v hold this rank's heads only
  if (fused_ && !split_heads) {
    // RMSNorm (+ RoPE for self-attention) in one pass over q and k.
    const at::Tensor none;
    q = wanhost::fused::rms_norm_rope(q, a.norm_q, rope ? act.aux[0] : none,
                                      rope ? act.aux[1] : none, c.head_dim, c.eps);
    k = wanhost::fused::rms_norm_rope(k, a.norm_k, rope ? act.aux[0] : none,
                                      rope ? act.aux[1] : none, c.head_dim, c.eps);
    auto o = attend(q, k, v.unflatten(-1, {-1, c.head_dim})).flatten(2);
    return a.out->forward(o.to(q.scalar_type()));
  }
  // torch.nn.RMSNorm over all heads; its weight is in the activations' dtype like in a bf16 model.
  {
    c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
    if (split_heads) {
      q = rms_norm_over_heads(q, a.norm_q);
      k = rms_norm_over_heads(k, a.norm_k);
    } else {
      q = at::rms_norm(q, {q.size(-1)}, a.norm_q.to(q.scalar_type()), c.eps);
      k = at::rms_norm(k, {k.size(-1)}, a.norm_k.to(k.scalar_type()), c.eps);
    }
  }
  q = q.unflatten(-1, {-1, c.head_dim});
  k = k.unflatten(-1, {-1, c.head_dim});
  v = v.unflatten(-1, {-1, c.head_dim});
  if (rope) {
    q = apply_rope(q, act.aux[0], act.aux[1]);
    k = apply_rope(k, act.aux[0], act.aux[1]);
  }
  auto o = attend(q, k, v).flatten(2).to(q.scalar_type());
  return a.out->forward(o);
}

at::Tensor WanModel::whole_sequence(const at::Tensor& x) const {
  return ctx_.gather_sequence ? ctx_.gather_sequence(x) : x;
}

// RMSNorm over all heads when this rank holds only some of them (tensor parallelism): the sum of
// squares is summed over the group, each rank scales its own features by its part of the full
// weight. The weight's gradient is summed over the group (collectives::copy_to_group), so every
// rank holds the whole gradient of the whole weight, as for any replicated parameter.
at::Tensor WanModel::rms_norm_over_heads(const at::Tensor& x, const at::Tensor& weight) const {
  namespace coll = wanhost::collectives;
  const auto& group = ctx_.tp;
  const auto part = x.size(-1);
  // With sequence parallelism every replicated gradient is this rank's part, summed over the
  // group by the parallelism (parallel.hpp, gather_sequence).
  const auto w = (ctx_.gather_sequence ? weight : coll::copy_to_group(weight, group))
                     .narrow(0, group->rank() * part, part);
  const auto xf = x.to(at::kFloat);
  const auto sum_sq = coll::sum_over_group(xf.square().sum(-1, /*keepdim=*/true), group);
  const auto y =
      xf * at::rsqrt(sum_sq / static_cast<double>(part * group->size()) + options_.config.eps);
  return (y.to(x.scalar_type()) * w.to(x.scalar_type()));
}

namespace {

// The backward of a checkpointed block: recomputes the block with gradients and back-propagates
// through it (a reentrant backward, as torch.utils.checkpoint's reentrant variant does).
class CheckpointBackward final : public torch::autograd::Node {
 public:
  std::function<torch::autograd::variable_list(const at::Tensor&)> recompute;
  torch::autograd::variable_list apply(torch::autograd::variable_list&& grads) override {
    return recompute(grads.at(0));
  }
  std::string name() const override { return "wanhost::plugins::wan21_dit::CheckpointBackward"; }
  void release_variables() override { recompute = nullptr; }
};

}  // namespace

at::Tensor WanModel::block_forward(std::int64_t i, const at::Tensor& hidden,
                                   const Activations& act) {
  if (options_.activation_checkpointing && at::GradMode::is_enabled())
    return block_checkpointed(i, hidden, act);
  return block_impl(i, hidden, act);
}

// Forward without a graph; backward recomputes from the block input and the differentiable
// conditioning (modulation and text context), whose gradients it returns.
at::Tensor WanModel::block_checkpointed(std::int64_t i, const at::Tensor& hidden,
                                        const Activations& act) {
  const std::vector<at::Tensor> inputs{hidden, act.context.at(0), act.context.at(1)};
  at::Tensor out;
  {
    at::NoGradGuard no_grad;
    out = block_impl(i, hidden, act);
  }
  auto node =
      std::shared_ptr<CheckpointBackward>(new CheckpointBackward(), torch::autograd::deleteNode);
  node->set_next_edges(torch::autograd::collect_next_edges(inputs));
  node->recompute = [this, i, inputs, saved = act](const at::Tensor& grad) {
    at::AutoGradMode grad_mode(true);
    std::vector<at::Tensor> leaves;
    for (const auto& t : inputs) leaves.push_back(t.detach().requires_grad_(t.requires_grad()));
    Activations a = saved;
    a.context[0] = leaves[1];
    a.context[1] = leaves[2];
    auto y = block_impl(i, leaves[0], a);
    torch::autograd::backward({y}, {grad});
    torch::autograd::variable_list grads;
    for (const auto& l : leaves) grads.push_back(l.requires_grad() ? l.grad() : at::Tensor());
    return grads;
  };
  torch::autograd::create_gradient_edge(out, node);
  return out;
}

// One WanTransformerBlock (diffusers/models/transformers/transformer_wan.py).
at::Tensor WanModel::block_impl(std::int64_t i, const at::Tensor& hidden, const Activations& act) {
  auto& blk = *blocks_.at(static_cast<std::size_t>(i));
  const auto eps = options_.config.eps;
  const auto cdt = hidden.scalar_type();
  // shift, scale, gate (self-attention), shift, scale, gate (FFN); each [B, 1, D] fp32.
  const auto m = (blk.table.to(at::kFloat) + act.context[0].to(at::kFloat)).chunk(6, 1);

  if (fused_) {
    // The same arithmetic through wanhost::fused: one pass each for norm + modulation and for
    // the gated residuals, in bf16 between the passes (fp32 inside them); the feed-forward as one
    // operator (its GELU gradient in a cuBLASLt epilogue, fused::gelu_feed_forward).
    namespace fused = wanhost::fused;
    const auto* seg = act.segments_cross.get();  // one segment a sample (padding included)
    // Each residual connection and the norm after it are one operator (gated_residual_norm).
    // The block's input is both the first norm's input and the first residual's base: its two
    // gradients are summed inside the norm's backward pass (layer_norm_modulate_with_input).
    at::Tensor x, n1;
    std::tie(x, n1) = fused::layer_norm_modulate_with_input(hidden, m[1], m[0], eps, seg);
    auto a = attention(blk.self, n1, n1, true, act, act.self_attention);
    at::Tensor n2;
    if (blk.norm2_weight.defined()) {
      // Affine LayerNorm = LayerNorm * (1 + (weight - 1)) + bias, the same for every sample.
      const auto n = m[0].size(0), d = x.size(-1);
      std::tie(x, n2) = fused::gated_residual_norm(
          x, a, m[2], (blk.norm2_weight.to(at::kFloat) - 1).view({1, 1, d}).expand({n, 1, d}),
          blk.norm2_bias.to(at::kFloat).view({1, 1, d}).expand({n, 1, d}), eps, seg);
    } else {
      x = n2 = fused::gated_residual(x, a, m[2], seg);
    }
    auto c = attention(blk.cross, n2, act.context[1], false, act, act.cross_attention,
                       cross_key_bias(act));
    at::Tensor n3;
    std::tie(x, n3) = fused::gated_residual_norm(x, c, at::Tensor(), m[4], m[3], eps, seg);
    auto f = wanhost::gelu_feed_forward(*blk.ffn_up, *blk.ffn_down, whole_sequence(n3));
    return fused::gated_residual(x, f.to(cdt), m[5], seg);
  }

  auto x = hidden;
  auto n1 = modulate(plain_layer_norm(x.to(at::kFloat), eps), m[1], m[0], act).to(cdt);
  auto a = attention(blk.self, n1, n1, true, act, act.self_attention);
  x = (x.to(at::kFloat) + gated(a, m[2], act)).to(cdt);

  auto n2 = x;
  if (blk.norm2_weight.defined())
    n2 = at::layer_norm(x.to(at::kFloat), {x.size(-1)}, blk.norm2_weight.to(at::kFloat),
                        blk.norm2_bias.to(at::kFloat), eps)
             .to(cdt);
  x = x + attention(blk.cross, n2, act.context[1], false, act, act.cross_attention,
                    cross_key_bias(act));

  auto n3 = modulate(plain_layer_norm(x.to(at::kFloat), eps), m[4], m[3], act).to(cdt);
  auto f = blk.ffn_down->forward(at::gelu(blk.ffn_up->forward(whole_sequence(n3)), "tanh"));
  return (x.to(at::kFloat) + gated(f.to(at::kFloat), m[5], act)).to(cdt);
}

// Output head (diffusers/models/transformers/transformer_wan.py, WanTransformer3DModel.forward):
// (shift, scale) = table + temb, no SiLU — the original arithmetic.
// The sum promotes like Diffusers': fp32 with an fp32 table, bf16 in an all-bf16 model.
at::Tensor WanModel::head(const at::Tensor& hidden, const Activations& act, const Batch& noisy) {
  const auto cdt = hidden.scalar_type();
  const auto m = (out_table_ + act.context[2].unsqueeze(1)).chunk(2, 1);
  auto y = modulate(plain_layer_norm(hidden.to(at::kFloat), options_.config.eps), m[1], m[0], act)
               .to(cdt);
  if (const auto* cu = packed_bounds(act); cu != nullptr && ctx_.token_multiple > 1) {
    // Padding tokens (embed) are dropped: the prediction has the latents' layout.
    std::vector<at::Tensor> real;
    for (std::size_t i = 0; i < noisy.segments.size(); ++i)
      real.push_back(y.narrow(1, (*cu)[i], tokens(noisy.segments[i])));
    y = at::cat(real, 1);
  }
  return unpatchify(proj_out_->forward(y), noisy);
}

// [B, S, pt*ph*pw*C_out] (patch position major, channel minor) -> the latents' layout.
at::Tensor WanModel::unpatchify(const at::Tensor& y, const Batch& b) const {
  const auto& c = options_.config;
  const auto& p = c.patch;
  const auto co = c.out_channels;
  if (!b.packed()) {
    const auto& x = b.latents;
    const auto n = x.size(0), f = x.size(2) / p[0], h = x.size(3) / p[1], w = x.size(4) / p[2];
    return y.reshape({n, f, h, w, p[0], p[1], p[2], co})
        .permute({0, 7, 1, 4, 2, 5, 3, 6})
        .reshape({n, co, x.size(2), x.size(3), x.size(4)});
  }
  if (const auto n = uniform_unpadded_pack(b); n > 0) {
    // One grid, no padding: unpatchified as a dense batch, then laid side by side again.
    const auto& g = b.segments.front();
    const auto f = g.frames / p[0], h = g.height / p[1], w = g.width / p[2];
    return y.reshape({n, f, h, w, p[0], p[1], p[2], co})
        .permute({7, 0, 1, 4, 2, 5, 3, 6})
        .reshape({co, n * g.numel()});
  }
  std::vector<at::Tensor> parts;
  std::int64_t token = 0;
  for (const auto& s : b.segments) {
    const auto f = s.frames / p[0], h = s.height / p[1], w = s.width / p[2];
    parts.push_back(y[0].narrow(0, token, f * h * w)
                        .reshape({f, h, w, p[0], p[1], p[2], co})
                        .permute({6, 0, 3, 1, 4, 2, 5})
                        .reshape({co, s.numel()}));
    token += f * h * w;
  }
  return at::cat(parts, 1);
}

std::int64_t WanModel::uniform_unpadded_pack(const Batch& b) const {
  if (!b.packed() || b.segments.empty()) return 0;
  const auto& g = b.segments.front();
  for (const auto& s : b.segments)
    if (s.frames != g.frames || s.height != g.height || s.width != g.width) return 0;
  if (tokens(g) % ctx_.token_multiple != 0) return 0;  // padded runs: the general path
  return static_cast<std::int64_t>(b.segments.size());
}

std::int64_t WanModel::tokens(const wanhost::PackSegment& g) const {
  const auto& p = options_.config.patch;
  return (g.frames / p[0]) * (g.height / p[1]) * (g.width / p[2]);
}

// Text rows actually attended: unmasked text is padded to text_len rows.
double WanModel::forward_flops(const wanhost::PackSegment& grid, std::int64_t text_tokens) const {
  const auto t =
      options_.mask_text_padding ? text_tokens : std::max(text_tokens, options_.text_len);
  return wanhost::plugins::wan21_dit::forward_flops(options_.config, tokens(grid), t);
}

std::unique_ptr<wanhost::Model> create_model(const wanhost::PluginConfig& cfg,
                                             const wanhost::ParallelContext& ctx) {
  return std::make_unique<WanModel>(resolve_options(cfg), ctx);
}

}  // namespace wanhost::plugins::wan21_dit
