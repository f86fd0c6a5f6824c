// Scheduler plugins: the diffusion training objective (how a clean batch is noised, what the
// model should predict, the loss) and the sampling schedule for generation.
#pragma once

#include <cstdint>
#include <vector>

#include <ATen/core/Tensor.h>

#include "wanhost/batch.hpp"

namespace wanhost {

// A batch prepared for one training forward pass.
struct NoisedBatch {
  Batch noisy;           // the batch with latents replaced by the noisy input x_t
  at::Tensor timesteps;  // [B] float, on the model's scale (what the model is given)
  at::Tensor sigmas;     // [B] float in [0, 1]
  at::Tensor target;     // what the model should predict, latent layout
  at::Tensor weights;    // [B] per-sample loss weights
};

// Per-sample loss numbers, so that the host can reduce over the global batch exactly. Both
// tensors stay on the device: the host reads the step's loss once, after the last micro batch
// (no host synchronisation between micro batches).
struct LossTerms {
  at::Tensor loss;  // scalar to call backward() on: this micro batch's share of the global loss
  at::Tensor sum;   // float64 scalar: sum over this micro batch of the per-sample losses (logging)
  std::int64_t count = 0;  // samples in this micro batch
};

class Scheduler {
 public:
  virtual ~Scheduler() = default;

  // Noise `clean` for training. `seed` and `step` with each sample's key (Batch::sample_keys)
  // determine its timestep and noise (see random.hpp), whatever rank draws them. The trainer
  // passes host (CPU) batches and copies the result to the device itself, and calls this from
  // its data worker thread (run.prefetch) while loss() may run on the training thread: keep
  // the two free of shared mutable state.
  virtual NoisedBatch add_noise(const Batch& clean, std::uint64_t seed, std::int64_t step) = 0;
  // `global_batch`: number of samples in the whole optimizer step (all ranks, all micro batches);
  // the returned loss is scaled so that the sum over all of them is the mean per-sample loss.
  virtual LossTerms loss(const at::Tensor& prediction, const NoisedBatch& noised,
                         std::int64_t global_batch) = 0;

  // Sampling: the sigma schedule for `steps` steps (steps + 1 values, last 0) and one Euler step.
  virtual std::vector<double> sampling_sigmas(std::int64_t steps) const = 0;
  virtual double model_timestep(double sigma) const = 0;
  virtual at::Tensor sampling_step(const at::Tensor& sample, const at::Tensor& model_output,
                                   double sigma, double sigma_next) const = 0;
};

}  // namespace wanhost
