// Encoder plugins for data preparation: the video autoencoder (pixels <-> latents) and the text
// encoder (captions -> embeddings). Training never runs them; `wanhost prepare` does, once per
// dataset, and `wanhost model forward --entry ...` runs them for parity checks.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>
#include <torch/nn/module.h>

namespace wanhost {

// A causal video VAE (Wan 2.1: 8x spatial, 4x temporal compression, 16 latent channels).
class VideoAutoencoder {
 public:
  virtual ~VideoAutoencoder() = default;

  // Loads weights from a Diffusers folder (config.json + safetensors, e.g. <pipeline>/vae) or a
  // single safetensors file. Lists every missing, unexpected or mis-shaped tensor in one error.
  virtual void load_weights(const std::string& path) = 0;
  virtual void to(c10::Device device, at::ScalarType dtype) = 0;
  virtual torch::nn::Module& module() = 0;

  // video [B, 3, F, H, W] in [-1, 1] with F = 1 + temporal_ratio()*k and H, W multiples of
  // spatial_ratio() -> normalised latents [B, C, 1 + k, H/s, W/s]: the posterior mean, then
  // (mu - latents_mean) / latents_std as the Wan pipelines do. Throws std::invalid_argument
  // naming the offending dimension.
  virtual at::Tensor encode(const at::Tensor& video) = 0;
  // The inverse: normalised latents -> video in [-1, 1] (clamped).
  virtual at::Tensor decode(const at::Tensor& latents) = 0;

  virtual std::int64_t latent_channels() const = 0;
  virtual std::int64_t temporal_ratio() const = 0;
  virtual std::int64_t spatial_ratio() const = 0;
  virtual std::string config_json() const = 0;
};

// Text embeddings at the encoder's context length: rows past lengths[b] are zero.
struct TextEmbeddings {
  at::Tensor hidden;   // [B, L, D] (L = max_length())
  at::Tensor lengths;  // [B] int64: real token count (with the end-of-sequence token)
};

// A text encoder with its tokenizer (Wan 2.1: umT5-XXL encoder, 512 tokens).
class TextEncoder {
 public:
  virtual ~TextEncoder() = default;

  // `model_dir`: config.json + safetensors (Transformers layout, e.g. <pipeline>/text_encoder);
  // `tokenizer_dir`: the tokenizer folder (e.g. <pipeline>/tokenizer).
  virtual void load(const std::string& model_dir, const std::string& tokenizer_dir) = 0;
  virtual void to(c10::Device device, at::ScalarType dtype) = 0;
  virtual torch::nn::Module& module() = 0;

  // Token ids as the reference tokenizer gives them (end-of-sequence appended, truncated to
  // max_length(), no padding).
  virtual std::vector<std::vector<std::int64_t>> tokenize(
      const std::vector<std::string>& texts) const = 0;
  // ids [B, L] int64, mask [B, L] (1 = token, 0 = padding) -> last hidden state [B, L, D].
  virtual at::Tensor forward(const at::Tensor& ids, const at::Tensor& mask) = 0;
  // Tokenize, pad to max_length(), run, and zero the rows past each text's length (the pipeline's
  // behaviour).
  virtual TextEmbeddings encode(const std::vector<std::string>& texts) = 0;

  virtual std::int64_t max_length() const = 0;
  virtual std::int64_t hidden_size() const = 0;
};

}  // namespace wanhost
