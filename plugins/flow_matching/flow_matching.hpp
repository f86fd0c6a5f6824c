// Internal interface of the flow_matching scheduler plugin: the plugin entry point and the tests
// both build on it (the tests link the implementation directly instead of loading the .so).
//
// Rectified-flow objective as in the reference DFM FlowMatchingPipeline (NVIDIA-NeMo/DFM
// dfm/src/automodel/flow_matching/flow_matching_pipeline.py):
//   σ = clamp(shift(u), min_sigma, max_sigma), u from the timestep sampling mode,
//   x_t = (1 - σ) x0 + σ ε,  target v = ε - x0,  model timestep t = num_train_timesteps · σ,
//   weight w = 1 + shift · σ (or 1),  loss = w · mean (prediction - v)².
// Unlike the reference, every sample draws σ and ε from generators keyed by (seed, step, sample
// key), so the numbers do not depend on batch composition, rank or layout; "per_pack" granularity
// reproduces the reference Megatron behaviour of one σ for a whole micro batch (NVIDIA-NeMo/DFM
// dfm/src/megatron/model/wan/wan_step.py::wan_data_step hands FlowMatchingPipeline.step a pack as
// one batch row).
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include <ATen/core/Tensor.h>

#include "wanhost/config.hpp"
#include "wanhost/scheduler.hpp"

namespace wanhost::plugins::flow_matching {

enum class TimestepSampling { Uniform, LogitNormal, Mode };
enum class LossWeighting { None, Shift };
enum class Granularity { PerSample, PerPack };
// PerSample: every sample weighs the same (AutoModel: element mean over equal-shape samples).
// PerToken: token mean inside a micro batch, micro batches weigh by their sample count (Megatron's
// masked token mean, where longer samples weigh more).
enum class LossReduction { PerSample, PerToken };

struct Options {
  TimestepSampling sampling = TimestepSampling::LogitNormal;
  double logit_mean = 0.0;
  double logit_std = 1.5;
  double mode_scale = 1.29;
  double mix_uniform_ratio = 0.2;
  double shift = 2.5;
  double min_sigma = 0.0;
  double max_sigma = 1.0;
  std::int64_t num_train_timesteps = 1000;
  bool round_timesteps_bf16 = false;
  LossWeighting loss_weighting = LossWeighting::Shift;
  LossReduction loss_reduction = LossReduction::PerSample;
  Granularity granularity = Granularity::PerSample;
  double sampling_shift = 3.0;

  // Reads and cross-checks a validated plugin config (all keys of flow_matching.json present).
  static Options from_config(const PluginConfig& cfg);
};

// The flow time shift s·u / (1 + (s - 1)·u), the same as s / (s + 1/u - 1) of the reference.
double shift_sigma(double u, double shift);

class FlowMatchingScheduler final : public Scheduler {
 public:
  explicit FlowMatchingScheduler(Options options);

  const Options& options() const { return options_; }

  // The σ that sample `key` gets at (seed, step) before per-pack sharing.
  double draw_sigma(std::uint64_t seed, std::int64_t step, std::int64_t key) const;
  // The unshifted, unclamped u of the sampling mode (for distribution tests).
  double draw_u(std::uint64_t seed, std::int64_t step, std::int64_t key) const;
  // Sample `key`'s standard normal noise of `shape`, fp32 on the CPU.
  at::Tensor draw_noise(std::uint64_t seed, std::int64_t step, std::int64_t key,
                        at::IntArrayRef shape) const;

  NoisedBatch add_noise(const Batch& clean, std::uint64_t seed, std::int64_t step) override;
  LossTerms loss(const at::Tensor& prediction, const NoisedBatch& noised,
                 std::int64_t global_batch) override;

  std::vector<double> sampling_sigmas(std::int64_t steps) const override;
  double model_timestep(double sigma) const override;
  at::Tensor sampling_step(const at::Tensor& sample, const at::Tensor& model_output, double sigma,
                           double sigma_next) const override;

 private:
  std::vector<double> batch_sigmas(const Batch& clean, std::uint64_t seed, std::int64_t step) const;
  at::Tensor to_model_timesteps(const at::Tensor& sigmas) const;

  Options options_;
};

std::unique_ptr<Scheduler> make_scheduler(const PluginConfig& cfg);

}  // namespace wanhost::plugins::flow_matching
