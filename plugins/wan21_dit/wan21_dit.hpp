// wan21_dit internals: the Wan 2.1 text-to-video DiT (Diffusers WanTransformer3DModel semantics)
// as a wanhost::Model. Shared by the plugin entry point and the tests (library wan21_dit_impl).
// The model's arithmetic, names and dtype islands follow Diffusers
// (diffusers/models/transformers/transformer_wan.py, WanTransformer3DModel); docs/model.md
// describes the plugin from a user's side.
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>

#include "wanhost/batch.hpp"
#include "wanhost/config.hpp"
#include "wanhost/model.hpp"
#include "wanhost/parallel.hpp"

namespace wanhost::plugins::wan21_dit {

using wanhost::Json;

// The architecture, as the Diffusers `config.json` of a WanTransformer3DModel states it.
struct WanConfig {
  std::array<std::int64_t, 3> patch{1, 2, 2};
  std::int64_t heads = 2;
  std::int64_t head_dim = 32;
  std::int64_t in_channels = 16;
  std::int64_t out_channels = 16;
  std::int64_t text_dim = 32;
  std::int64_t freq_dim = 32;
  std::int64_t ffn_dim = 256;
  std::int64_t num_layers = 2;
  bool cross_attn_norm = true;
  std::string qk_norm = "rms_norm_across_heads";  // accepted and ignored, as Diffusers does
  double eps = 1e-6;
  std::int64_t rope_max_seq_len = 1024;

  std::int64_t dim() const { return heads * head_dim; }
  std::int64_t patch_volume() const { return patch[0] * patch[1] * patch[2]; }
  // RoPE channel split inside a head: [time | height | width].
  std::int64_t rope_h_dim() const { return 2 * (head_dim / 6); }
  std::int64_t rope_t_dim() const { return head_dim - 2 * rope_h_dim(); }
  Json to_json() const;  // Diffusers config.json (with _class_name / _diffusers_version)
};

// Everything the plugin config decides (sidecar wan21_dit.json).
struct WanOptions {
  WanConfig config;
  std::string weights;  // checkpoint to load; empty = initialise from init_seed
  std::int64_t init_seed = 0;
  std::string init_method = "pytorch";  // pytorch (Diffusers from_config) | megatron
  bool mask_text_padding = false;       // false: attend zero-padded text rows like Diffusers/Wan
  bool collapse_text_padding = true;    // padded rows as a few biased keys (exact, faster)
  // collapsed_rows_from: the kept rows follow the batch's longest caption ("longest") or its
  // padded text rows ("text_rows": the same count every step of a fixed stages[].text_rows, so
  // steps replayed as CUDA graphs keep one key).
  bool collapse_from_text_rows = false;
  std::int64_t text_len = 512;            // unmasked text is zero-padded to at least this many rows
  std::string fused_kernels = "auto";     // auto | on | off (wanhost::fused CUDA kernels)
  bool activation_checkpointing = false;  // recompute each block in backward
};

// Named architectures: "tiny", "wan2.1-t2v-1.3b", "wan2.1-t2v-14b". Throws std::invalid_argument.
WanConfig preset_config(const std::string& name);
// Applies Diffusers config keys onto `base`; unknown keys or unsupported values (image
// conditioning, ...) throw ConfigError at `pointer`/key. Keys starting with '_' are ignored.
WanConfig apply_config_json(WanConfig base, const Json& keys, const std::string& pointer,
                            const std::string& plugin);
// Plugin config (validated against the sidecar) -> options; reads `config_file` if given.
WanOptions resolve_options(const wanhost::PluginConfig& cfg);

// Diffusers tensor names and shapes of a WanTransformer3DModel with this config (registration
// order). 825 tensors / 1,418,996,800 values for the 1.3B preset.
std::vector<std::pair<std::string, std::vector<std::int64_t>>> diffusers_shapes(const WanConfig& c);
// Model FLOPs of one forward pass (docs/model.md "FLOPs") for `tokens` video tokens and
// `text_tokens` attended text rows.
double forward_flops(const WanConfig& c, std::int64_t tokens, std::int64_t text_tokens);

// Collapsed text padding's key biases ([n, kept] float64, every value one of `dtype`): for samples
// of `lengths` real text rows padded to `total`, rows >= length get biases whose weights
// (exp(bias)) sum to total - length; real rows 0 (wan21_dit_model.cpp says how, and how exactly).
at::Tensor collapsed_padding_bias(const std::vector<std::int64_t>& lengths, std::int64_t total,
                                  std::int64_t kept, at::ScalarType dtype);

// Original Wan 2.1 key -> Diffusers key (ComfyUI prefix stripped); unchanged when unknown.
std::string original_to_diffusers(const std::string& name);

class WanModel final : public wanhost::Model {
 public:
  WanModel(WanOptions options, const wanhost::ParallelContext& ctx);
  ~WanModel() override;

  torch::nn::Module& module() override { return *root_; }
  wanhost::Activations embed(const wanhost::Batch& noisy, const at::Tensor& timesteps) override;
  std::int64_t num_blocks() const override { return static_cast<std::int64_t>(blocks_.size()); }
  torch::nn::Module& block_module(std::int64_t i) override;
  at::Tensor block_forward(std::int64_t i, const at::Tensor& hidden,
                           const wanhost::Activations& act) override;
  at::Tensor head(const at::Tensor& hidden, const wanhost::Activations& act,
                  const wanhost::Batch& noisy) override;
  double forward_flops(const wanhost::PackSegment& grid, std::int64_t text_tokens) const override;
  std::int64_t tokens(const wanhost::PackSegment& grid) const override;
  void load_weights(const std::string& path) override;
  void save_weights(const std::string& dir) override;
  std::string config_json() const override;
  // Dense batches with text_lengths on the host (or none): the kept text rows (collapsed
  // padding), the one shape the model chooses from the batch's values, and the RoPE cache's
  // generation; packed batches and lengths on the device: none (their steps run eagerly).
  std::optional<std::string> graph_key(const wanhost::Batch& noisy) const override;

  const WanOptions& options() const { return options_; }
  // Whether blocks run the fused operators (wanhost::fused) instead of the plain ATen arithmetic.
  bool fused() const { return fused_; }
  // Deterministic from-scratch initialisation (options().init_method; tables randn/sqrt(D)).
  void initialize(std::int64_t seed);

  struct Attention;
  struct Block;

 private:
  struct Rope;
  struct TokenGrid {
    std::int64_t f, h, w;
    std::int64_t count() const { return f * h * w; }
  };

  void build();
  std::vector<TokenGrid> token_grids(const wanhost::Batch& b) const;
  at::Tensor patch_tokens(const wanhost::Batch& b) const;
  std::tuple<at::Tensor, at::Tensor> time_embedding(const at::Tensor& timesteps);
  at::Tensor text_context(const wanhost::Batch& b, wanhost::Activations& act,
                          const std::vector<std::int64_t>& host_cu_q);
  // key_bias (flat, optional): collapsed text padding's per-key logit bias (cross-attention).
  at::Tensor attention(Attention& a, const at::Tensor& x, const at::Tensor& src, bool rope,
                       const wanhost::Activations& act, const wanhost::AttentionArgs& args,
                       const at::Tensor& key_bias = {});
  // Text rows every sample keeps in cross-attention: `total` (every padded row) unless padding is
  // collapsed (collapse_text_padding and a context that offers attention_key_bias). `rows`: the
  // batch's text rows (each length is at most rows).
  std::int64_t collapsed_rows(const std::vector<std::int64_t>& lengths, std::int64_t rows,
                              std::int64_t total) const;
  // The batch's text lengths on the host ([n] values checked against the text's rows; every
  // length `rows` when the batch has none). Reads a device tensor back (a synchronisation).
  static std::vector<std::int64_t> host_text_lengths(const wanhost::Batch& b, std::int64_t n);
  // collapsed_padding_bias for every length below `kept` ([kept, kept]: row l is a sample of l
  // real rows), in the compute dtype on the device, made once per (total, kept).
  const at::Tensor& padding_bias_table(std::int64_t total, std::int64_t kept);
  // A hidden-state tensor as the tensor-parallel layers read it: all tokens (ParallelContext::
  // gather_sequence under sequence parallelism; otherwise itself).
  at::Tensor whole_sequence(const at::Tensor& x) const;
  // q/k RMSNorm over all heads when tensor parallelism leaves this rank some of them.
  at::Tensor rms_norm_over_heads(const at::Tensor& x, const at::Tensor& weight) const;
  // One block's arithmetic (block_forward adds activation checkpointing around it).
  at::Tensor block_impl(std::int64_t i, const at::Tensor& hidden, const wanhost::Activations& act);
  at::Tensor block_checkpointed(std::int64_t i, const at::Tensor& hidden,
                                const wanhost::Activations& act);
  at::Tensor unpatchify(const at::Tensor& y, const wanhost::Batch& b) const;
  // The number of samples of a packed batch whose samples all have one grid and no padding
  // (a dense batch side by side: patchified in one pass); 0 otherwise.
  std::int64_t uniform_unpadded_pack(const wanhost::Batch& b) const;

  WanOptions options_;
  wanhost::ParallelContext ctx_;
  bool fused_ = false;
  std::shared_ptr<torch::nn::Module> root_;
  std::vector<std::shared_ptr<Block>> blocks_;
  std::unique_ptr<Rope> rope_;
  std::map<std::pair<std::int64_t, std::int64_t>, at::Tensor> padding_bias_tables_;
  // Top-level parameters / layers (handles into root_).
  at::Tensor patch_weight_, patch_bias_, out_table_;
  std::shared_ptr<wanhost::LinearLayer> time_1_, time_2_, time_proj_, text_1_, text_2_, proj_out_;
  // (linear layer, fan_in) pairs, in creation order, for initialize().
  std::vector<std::pair<std::shared_ptr<wanhost::LinearLayer>, std::int64_t>> linears_;
};

std::unique_ptr<wanhost::Model> create_model(const wanhost::PluginConfig& cfg,
                                             const wanhost::ParallelContext& ctx);

}  // namespace wanhost::plugins::wan21_dit
