// umt5 encoder: config.json, the forward pass (modeling_umt5.py of Transformers 5.24: per-layer
// relative position bias, T5 layer norm, gated-GELU feed-forward, no attention scaling) and
// checkpoint loading.
#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <set>
#include <sstream>

#include <ATen/ATen.h>

#include "umt5.hpp"
#include "wanhost/errors.hpp"
#include "wanhost/kit/safetensors.hpp"
#include "wanhost/kit/strings.hpp"
#include "wanhost/kit/weights.hpp"
#include "wanhost/log.hpp"

namespace wanhost::plugins::umt5 {
using wanhost::FormatError;

namespace {

using wanhost::starts_with;

std::int64_t positive_int(const Json& j, const char* key, std::int64_t fallback,
                          const std::string& file) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return fallback;
  if (!it->is_number_integer() || it->get<std::int64_t>() <= 0)
    throw FormatError(file + ": key '" + key + "' must be a positive integer, got " + it->dump());
  return it->get<std::int64_t>();
}

// The activations Transformers' ACT2FN offers that a T5-family feed-forward uses.
const std::set<std::string>& known_activations() {
  static const std::set<std::string> acts = {"relu", "gelu", "gelu_new", "gelu_pytorch_tanh",
                                             "silu", "swish"};
  return acts;
}

at::Tensor activation(const std::string& act, const at::Tensor& x) {
  if (act == "relu") return at::relu(x);
  if (act == "gelu") return at::gelu(x);
  if (act == "silu" || act == "swish") return at::silu(x);
  return at::gelu(x, "tanh");  // gelu_new, gelu_pytorch_tanh
}

// A module that only names things: `child("q")->param("weight", ...)` gives "q.weight".
struct Node : torch::nn::Module {
  std::shared_ptr<Node> child(const std::string& name) {
    return register_module(name, std::make_shared<Node>());
  }
  at::Tensor param(const std::string& name, at::IntArrayRef shape) {
    return register_parameter(name, at::empty(shape), /*requires_grad=*/false);
  }
};

}  // namespace

Umt5Config parse_config(const Json& j, const std::string& file) {
  if (!j.is_object()) throw FormatError(file + ": expected a JSON object");
  Umt5Config c;
  if (auto it = j.find("model_type"); it != j.end() && *it != "umt5")
    throw FormatError(file + ": key 'model_type' is " + it->dump() +
                      "; the umt5 plugin runs umT5 encoders (\"umt5\"), whose every layer has "
                      "its own relative position bias (T5 and mT5 share the first layer's)");
  c.vocab_size = positive_int(j, "vocab_size", c.vocab_size, file);
  c.d_model = positive_int(j, "d_model", c.d_model, file);
  c.d_kv = positive_int(j, "d_kv", c.d_kv, file);
  c.d_ff = positive_int(j, "d_ff", c.d_ff, file);
  c.num_heads = positive_int(j, "num_heads", c.num_heads, file);
  c.num_layers = positive_int(j, "num_layers", c.num_layers, file);
  c.num_buckets = positive_int(j, "relative_attention_num_buckets", c.num_buckets, file);
  c.max_distance = positive_int(j, "relative_attention_max_distance", c.max_distance, file);
  if (c.num_buckets < 4)
    throw FormatError(file + ": key 'relative_attention_num_buckets' must be at least 4, got " +
                      std::to_string(c.num_buckets));
  if (c.max_distance <= c.num_buckets / 4)
    throw FormatError(file + ": key 'relative_attention_max_distance' must exceed " +
                      "relative_attention_num_buckets / 4 = " + std::to_string(c.num_buckets / 4) +
                      ", got " + std::to_string(c.max_distance));
  if (auto it = j.find("layer_norm_epsilon"); it != j.end() && !it->is_null()) {
    if (!it->is_number() || it->get<double>() <= 0)
      throw FormatError(file + ": key 'layer_norm_epsilon' must be a positive number, got " +
                        it->dump());
    c.eps = it->get<double>();
  }
  if (auto it = j.find("feed_forward_proj"); it != j.end() && !it->is_null()) {
    if (!it->is_string())
      throw FormatError(file + ": key 'feed_forward_proj' must be a string, got " + it->dump());
    c.feed_forward_proj = it->get<std::string>();
  }
  // UMT5Config: "gated-ACT" or "ACT"; dense_act_fn is derived from it (the file's value is
  // overwritten), and gated-gelu means the tanh approximation.
  const auto& ffp = c.feed_forward_proj;
  c.gated = starts_with(ffp, "gated-");
  c.act = c.gated ? ffp.substr(6) : ffp;
  if (ffp == "gated-gelu") c.act = "gelu_new";
  if (!known_activations().count(c.act))
    throw FormatError(file + ": key 'feed_forward_proj' is \"" + ffp +
                      "\"; supported: [gated-]ACT with ACT one of relu, gelu, gelu_new, "
                      "gelu_pytorch_tanh, silu, swish (umT5: gated-gelu)");
  return c;
}

at::Tensor t5_layer_norm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  const auto variance = x.to(at::kFloat).pow(2).mean(-1, /*keepdim=*/true);
  auto y = x * at::rsqrt(variance + eps);
  if (weight.scalar_type() == at::kHalf || weight.scalar_type() == at::kBFloat16)
    y = y.to(weight.scalar_type());
  return weight * y;
}

at::Tensor relative_position_buckets(std::int64_t q_len, std::int64_t k_len,
                                     std::int64_t num_buckets, std::int64_t max_distance) {
  // Transformers' _relative_position_bucket for an encoder (bidirectional), op for op so that
  // the float rounding at bucket borders is the same.
  const auto opts = at::TensorOptions().dtype(at::kLong);
  auto rel = at::arange(k_len, opts).unsqueeze(0) - at::arange(q_len, opts).unsqueeze(1);
  const std::int64_t half = num_buckets / 2;
  auto buckets = rel.gt(0).to(at::kLong) * half;
  rel = rel.abs();
  const std::int64_t max_exact = half / 2;
  const auto is_small = rel.lt(max_exact);
  auto log_ratio = at::log(rel.to(at::kFloat) / static_cast<double>(max_exact)) /
                   std::log(static_cast<double>(max_distance) / static_cast<double>(max_exact));
  log_ratio = log_ratio * static_cast<double>(half - max_exact);
  auto large = log_ratio.to(at::kLong) + max_exact;
  large = at::minimum(large, at::full_like(large, half - 1));
  return buckets + at::where(is_small, rel, large);
}

struct Umt5Encoder::Block {
  at::Tensor q, k, v, o, rel_bias, norm_attn, wi_0, wi_1, wo, norm_ff;
};

Umt5Encoder::Umt5Encoder(const Umt5Config& config) : config_(config) {
  const auto& c = config_;
  const std::int64_t inner = c.num_heads * c.d_kv;
  shared_ = register_module("shared", std::make_shared<Node>())
                ->param("weight", {c.vocab_size, c.d_model});
  auto encoder = register_module("encoder", std::make_shared<Node>());
  auto block_list = encoder->child("block");
  for (std::int64_t i = 0; i < c.num_layers; ++i) {
    auto layers = block_list->child(std::to_string(i))->child("layer");
    auto attn_layer = layers->child("0");
    auto attn = attn_layer->child("SelfAttention");
    auto b = std::make_shared<Block>();
    b->q = attn->child("q")->param("weight", {inner, c.d_model});
    b->k = attn->child("k")->param("weight", {inner, c.d_model});
    b->v = attn->child("v")->param("weight", {inner, c.d_model});
    b->o = attn->child("o")->param("weight", {c.d_model, inner});
    b->rel_bias =
        attn->child("relative_attention_bias")->param("weight", {c.num_buckets, c.num_heads});
    b->norm_attn = attn_layer->child("layer_norm")->param("weight", {c.d_model});
    auto ff_layer = layers->child("1");
    auto ff = ff_layer->child("DenseReluDense");
    if (c.gated) {
      b->wi_0 = ff->child("wi_0")->param("weight", {c.d_ff, c.d_model});
      b->wi_1 = ff->child("wi_1")->param("weight", {c.d_ff, c.d_model});
    } else {
      b->wi_0 = ff->child("wi")->param("weight", {c.d_ff, c.d_model});
    }
    b->wo = ff->child("wo")->param("weight", {c.d_model, c.d_ff});
    b->norm_ff = ff_layer->child("layer_norm")->param("weight", {c.d_model});
    blocks_.push_back(std::move(b));
  }
  final_norm_ = encoder->child("final_layer_norm")->param("weight", {c.d_model});
}

at::Tensor Umt5Encoder::forward(const at::Tensor& ids, const at::Tensor& mask) {
  const auto& c = config_;
  const std::int64_t batch = ids.size(0), len = ids.size(1), heads = c.num_heads;
  const auto dtype = shared_.scalar_type();
  const auto device = shared_.device();

  at::Tensor x = at::embedding(shared_, ids.to(device, at::kLong));
  // Transformers' sdpa path: padded keys get the dtype's lowest value instead of the bias.
  const at::Tensor keep = mask.to(device).ne(0).view({batch, 1, 1, len});
  const at::Scalar lowest = dtype == at::kBFloat16 ? at::Scalar(-3.3895313892515355e38)
                            : dtype == at::kHalf   ? at::Scalar(-65504.0)
                                                 : at::Scalar(std::numeric_limits<float>::lowest());
  const at::Tensor buckets =
      relative_position_buckets(len, len, c.num_buckets, c.max_distance).to(device);

  for (const auto& b : blocks_) {
    const auto bias = at::embedding(b->rel_bias, buckets).permute({2, 0, 1}).unsqueeze(0);
    const auto attn_mask = at::where(keep, bias, at::scalar_tensor(lowest, bias.options()));
    const auto h = t5_layer_norm(x, b->norm_attn, c.eps);
    const auto split = [&](const at::Tensor& w) {
      return at::linear(h, w).view({batch, len, heads, c.d_kv}).transpose(1, 2);
    };
    auto attn = at::scaled_dot_product_attention(split(b->q), split(b->k), split(b->v),
                                                 attn_mask.contiguous(), 0.0, false,
                                                 /*scale=*/1.0);
    attn = attn.transpose(1, 2).reshape({batch, len, heads * c.d_kv});
    x = x + at::linear(attn, b->o);

    const auto g = t5_layer_norm(x, b->norm_ff, c.eps);
    at::Tensor ff = activation(c.act, at::linear(g, b->wi_0));
    if (c.gated) ff = ff * at::linear(g, b->wi_1);
    x = x + at::linear(ff.to(b->wo.scalar_type()), b->wo);
  }
  return t5_layer_norm(x, final_norm_, c.eps);
}

void Umt5Encoder::load_weights(const std::string& path) {
  const auto coll = wanhost::safetensors::Collection::open(path);
  std::map<std::string, std::string> source;  // parameter name -> checkpoint name
  wanhost::CheckpointProblems problems;
  for (const auto& n : coll.names()) {
    if (n == "encoder.embed_tokens.weight") {
      if (!coll.contains("shared.weight")) source["shared.weight"] = n;
      continue;  // tied to shared.weight in Transformers
    }
    // A full UMT5 (encoder-decoder) checkpoint: the encoder needs none of these.
    if (starts_with(n, "decoder.") || starts_with(n, "lm_head.")) continue;
    source[n] = n;
  }
  auto params = named_parameters(/*recurse=*/true);
  wanhost::match_weights(coll, params, source, problems);
  for (auto& m : problems.missing)
    if (m == "shared.weight") m += " (or encoder.embed_tokens.weight)";
  if (!problems.empty()) {
    std::ostringstream msg;
    msg << "umt5: checkpoint '" << path << "' does not fit the encoder (" << config_.num_layers
        << " layers, d_model " << config_.d_model << ", " << config_.num_heads << " heads x d_kv "
        << config_.d_kv << ", d_ff " << config_.d_ff << ", vocab " << config_.vocab_size
        << ", feed_forward_proj " << config_.feed_forward_proj << "): " << problems.report();
    msg << "\n  (is config.json the checkpoint's?)";
    throw FormatError(msg.str());
  }
  const std::size_t n = wanhost::load_matched_weights(coll, params, source);
  wanhost::logger()->info("umt5: loaded {} tensors from {}", n, path);
}

}  // namespace wanhost::plugins::umt5
