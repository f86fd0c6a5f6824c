// wan_vae internals: the Wan 2.1 causal video VAE (Diffusers AutoencoderKLWan semantics) as a
// wanhost::VideoAutoencoder. Shared by the plugin entry point and the tests (library
// wan_vae_impl). The arithmetic follows Diffusers 0.42.1
// (diffusers/models/autoencoders/autoencoder_kl_wan.py, AutoencoderKLWan); docs/model.md describes
// the plugin from a user's side.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>
#include <torch/nn/module.h>

#include "wanhost/config.hpp"
#include "wanhost/encoders.hpp"

namespace wanhost::plugins::wan_vae {

using wanhost::Json;

// The architecture, as the Diffusers `config.json` of an AutoencoderKLWan states it. The defaults
// are AutoencoderKLWan's, i.e. the Wan 2.1 VAE.
struct VaeConfig {
  std::int64_t base_dim = 96;
  std::int64_t decoder_base_dim = 0;  // 0: same as base_dim (Diffusers: null)
  std::int64_t z_dim = 16;
  std::vector<std::int64_t> dim_mult{1, 2, 4, 4};
  std::int64_t num_res_blocks = 2;
  std::vector<bool> temperal_downsample{false, true, true};  // (sic: Diffusers' spelling)
  double dropout = 0.0;                                      // inference only: no effect
  std::vector<double> latents_mean;                          // z_dim values each
  std::vector<double> latents_std;
  std::int64_t in_channels = 3;
  std::int64_t out_channels = 3;

  VaeConfig();  // fills the Wan 2.1 latents_mean / latents_std
  std::int64_t decoder_dim() const { return decoder_base_dim > 0 ? decoder_base_dim : base_dim; }
  std::int64_t spatial_ratio() const { return std::int64_t{1} << (dim_mult.size() - 1); }
  std::int64_t temporal_ratio() const { return 4; }  // two temporal downsamplings (checked)
  bool operator==(const VaeConfig&) const = default;
  Json to_json() const;  // Diffusers config.json (with _class_name / _diffusers_version)
};

// A bad config key: `key` (empty for the whole object) and why.
struct ConfigKeyError {
  std::string key, message;
};

// Applies Diffusers AutoencoderKLWan config keys onto the defaults (keys missing from `keys` keep
// AutoencoderKLWan's default). Unknown keys and values this port does not support (Wan 2.2's
// is_residual, patch_size, attention in the down blocks, other than 4x temporal compression, ...)
// throw ConfigKeyError naming the key. Keys starting with '_' are ignored.
VaeConfig parse_config(const Json& keys);
// Reads and parses a config.json; throws FormatError naming the file (and the key).
VaeConfig read_config_file(const std::string& path);

// Original Wan 2.1 VAE name (Wan2.1_VAE.pth / ComfyUI single files) -> Diffusers name, for the
// architecture `c` (the flat decoder indices depend on num_res_blocks); unchanged when unknown.
std::string original_to_diffusers(const std::string& name, const VaeConfig& c);

// Plugin options (sidecar wan_vae.json).
struct VaeOptions {
  std::string config_file;          // "" = config.json of the weights folder, else the Wan 2.1 VAE
  std::optional<VaeConfig> config;  // config_file as resolve_options read it (read again if unset)
  bool batch_slicing = false;       // encode/decode one sample at a time
};
VaeOptions resolve_options(const wanhost::PluginConfig& cfg);

class AutoencoderImpl;  // the torch::nn::Module tree (encoder, decoder, quant convs)

class WanVae final : public wanhost::VideoAutoencoder {
 public:
  // Builds the architecture of `config_file` (or the Wan 2.1 VAE); weights come with
  // load_weights() (encode/decode before it throw std::logic_error).
  explicit WanVae(VaeOptions options);
  ~WanVae() override;

  // A Diffusers folder (config.json + diffusion_pytorch_model.safetensors or a sharded index), a
  // .safetensors file or an index .json. The architecture comes from the `config_file` option if
  // set, else from the folder's config.json, else stays as it is (Wan 2.1 by default). Original
  // Wan 2.1 key names are recognised. Throws FormatError listing every missing, unexpected,
  // duplicated or mis-shaped tensor.
  void load_weights(const std::string& path) override;
  void to(c10::Device device, at::ScalarType dtype) override;
  torch::nn::Module& module() override;

  at::Tensor encode(const at::Tensor& video) override;
  at::Tensor decode(const at::Tensor& latents) override;
  // The posterior mean before normalisation (what Diffusers' latent_dist.mode() returns).
  at::Tensor encode_mean(const at::Tensor& video);

  std::int64_t latent_channels() const override { return config_.z_dim; }
  std::int64_t temporal_ratio() const override { return config_.temporal_ratio(); }
  std::int64_t spatial_ratio() const override { return config_.spatial_ratio(); }
  std::string config_json() const override;

  const VaeConfig& config() const { return config_; }

 private:
  void build();
  void check_video(const at::Tensor& video) const;
  void check_latents(const at::Tensor& latents) const;
  at::Tensor encode_one(const at::Tensor& video);
  at::Tensor decode_one(const at::Tensor& z);

  VaeOptions options_;
  VaeConfig config_;
  std::shared_ptr<AutoencoderImpl> root_;
  c10::Device device_{c10::kCPU};
  at::ScalarType dtype_ = at::kFloat;
  bool loaded_ = false;
};

std::unique_ptr<wanhost::VideoAutoencoder> create_autoencoder(const wanhost::PluginConfig& cfg);

}  // namespace wanhost::plugins::wan_vae
