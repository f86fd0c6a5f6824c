// What flows from data sources through the collator and the scheduler into the model.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

namespace wanhost {

// One training example as a data source yields it.
struct Sample {
  at::Tensor latent;  // [C, F, H, W] normalised VAE latents (F = 1 for an image)
  at::Tensor text;    // [L, D_text] text-encoder output at its real token length L
  std::string caption;
  std::int64_t index = 0;  // position in the data source (stable identity of the sample)
  // The key of this sample's randomness (timestep, noise; see random.hpp): the host sets it to
  // the sample's position in the stage's sample stream before collation. -1: not set (collators
  // then use `index`).
  std::int64_t key = -1;
};

// Where each sample sits inside a packed batch.
struct PackSegment {
  std::int64_t offset = 0;  // first latent element column of this sample in Batch::latents
  std::int64_t frames = 0, height = 0, width = 0;  // latent grid of this sample
  std::int64_t numel() const { return frames * height * width; }
};

// A micro batch as the model consumes it. Two layouts:
//  - dense:  latents [B, C, F, H, W], every sample the same grid;
//  - packed: latents [C, N] with N = sum of the samples' F*H*W, each sample's [C, F, H, W]
//  flattened
//    over its last three dims and concatenated in order; `segments` tells where each one is.
// In both layouts `text` is [B, L_max, D_text] zero-padded with `text_lengths` [B] (int64).
// SDK 2.4: in training the host moves every tensor of a step's batches to the device except
// `text_lengths`, which a model built against SDK 2.4 or newer receives on the host (pinned on a
// GPU: a non_blocking copy to the device does not wait), because a model reads the lengths on
// the host to plan its shapes; models of older minors get it on the device, as before.
struct Batch {
  at::Tensor latents;
  at::Tensor text;
  at::Tensor text_lengths;
  std::vector<PackSegment> segments;      // empty for dense batches
  std::vector<std::int64_t> sample_keys;  // global sample ids: keys for per-sample randomness
  std::vector<std::string> captions;

  bool packed() const { return !segments.empty(); }
  std::int64_t batch_size() const { return static_cast<std::int64_t>(sample_keys.size()); }

  // Spreads one value per sample ([B]) over the latent layout: [B,1,1,1,1] for dense batches,
  // [1, N] for packed ones. Used to apply per-sample sigmas and loss weights elementwise.
  at::Tensor per_sample_to_latent(const at::Tensor& per_sample) const;
  // The reverse for a reduction: mean over each sample's elements of an elementwise tensor with
  // the latents' layout, as [B] (float32).
  at::Tensor per_sample_mean(const at::Tensor& elementwise) const;
  // Latent grid of sample i.
  PackSegment grid(std::int64_t i) const;
  Batch to(const at::Device& device) const;
};

}  // namespace wanhost
