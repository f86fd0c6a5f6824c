// Model plugins. A model exposes its structure — an input part, a list of identical blocks and an
// output part — so that parallelism plugins can drive execution block by block (FSDP gathers one
// block's weights at a time, pipeline parallelism assigns blocks to stages) without hooks.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>

#include "wanhost/batch.hpp"
#include "wanhost/parallel.hpp"

namespace wanhost {

// The state between the parts of a forward pass.
struct Activations {
  at::Tensor hidden;  // tokens [B, S, D] (packed: [1, N_tokens, D])
  std::vector<at::Tensor>
      context;  // differentiable conditioning every block reads (e.g. time
                // modulation, projected text); gradients flow back to the input part
  std::vector<at::Tensor> aux;    // non-differentiable per-batch tensors (e.g. RoPE tables)
  AttentionArgs self_attention;   // packing layout for self-attention
  AttentionArgs cross_attention;  // text lengths / packing layout for cross-attention
  std::shared_ptr<AttentionSegments> segments_self, segments_cross;  // owners of the layouts above
};

// What the model predicts for a (noisy) batch: same layout as Batch::latents.
class Model {
 public:
  virtual ~Model() = default;

  // The root module: parameters named as in the Diffusers checkpoint layout.
  virtual torch::nn::Module& module() = 0;

  // Input part: noisy latents + timesteps (model scale, [B] float) + text -> activations.
  virtual Activations embed(const Batch& noisy, const at::Tensor& timesteps) = 0;
  virtual std::int64_t num_blocks() const = 0;
  virtual torch::nn::Module& block_module(std::int64_t i) = 0;
  // Block i: returns the new hidden state. Must be a pure function of its arguments and the
  // block's parameters (parallelism plugins recompute it in backward).
  virtual at::Tensor block_forward(std::int64_t i, const at::Tensor& hidden,
                                   const Activations& act) = 0;
  // Output part: hidden -> prediction in the layout of noisy.latents.
  virtual at::Tensor head(const at::Tensor& hidden, const Activations& act, const Batch& noisy) = 0;

  // The whole forward pass (input part, every block, output part) on one process.
  at::Tensor forward(const Batch& noisy, const at::Tensor& timesteps) {
    Activations act = embed(noisy, timesteps);
    at::Tensor h = act.hidden;
    for (std::int64_t i = 0; i < num_blocks(); ++i) h = block_forward(i, h, act);
    return head(h, act, noisy);
  }

  // Model FLOPs of one forward pass of one sample with this latent grid and text length
  // (matrix products and attention; backward is counted as 2x by the caller).
  virtual double forward_flops(const PackSegment& grid, std::int64_t text_tokens) const = 0;
  // Number of transformer tokens for a latent grid.
  virtual std::int64_t tokens(const PackSegment& grid) const = 0;

  // Weights in the model's native (Diffusers) layout; loading checks names and shapes and lists
  // every missing, unexpected or mis-shaped tensor in one error.
  virtual void load_weights(const std::string& path) = 0;
  virtual void save_weights(const std::string& dir) = 0;
  // The resolved model config (Diffusers config.json form) for exports and checkpoints.
  virtual std::string config_json() const = 0;

  // SDK 2.5 (CUDA graphs of whole training steps, docs/performance.md): what, besides the shapes,
  // dtypes and devices of the batch's tensors, decides the work the model's forward and backward
  // launch for `noisy`: every shape and every kernel. Two batches with the same key and tensor
  // shapes must launch the same work, reading the tensors' values only on the device (or copying
  // host tensors to the device asynchronously, as a pinned `text_lengths`), because a captured
  // step is replayed on the next batch of that key with its values written into the captured
  // tensors. Return the host-side choices the model makes from the batch's values (e.g. a row
  // count chosen from the longest caption), "" when it makes none, std::nullopt (the default)
  // when it cannot promise this for the batch: its steps then run eagerly. The host only calls
  // this on models built against SDK 2.5 or newer.
  virtual std::optional<std::string> graph_key(const Batch& noisy) const {
    (void)noisy;
    return std::nullopt;
  }
};

}  // namespace wanhost
