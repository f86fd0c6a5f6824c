// Flow-matching scheduler: see flow_matching.hpp for the objective and NVIDIA-NeMo/DFM
// dfm/src/automodel/flow_matching/flow_matching_pipeline.py::FlowMatchingPipeline for the
// reference it follows.
#include "flow_matching.hpp"

#include <algorithm>
#include <cmath>
#include <numbers>
#include <stdexcept>
#include <string>

#include <ATen/ATen.h>

#include "wanhost/kit/keyed_random.hpp"
#include "wanhost/random.hpp"

namespace wanhost::plugins::flow_matching {
namespace {

// The reference floors u before the shift so that σ never reaches exactly 0 (1/u stays finite).
constexpr double kMinU = 1e-5;

template <class Enum, std::size_t N>
Enum parse_enum(const PluginConfig& cfg, const std::string& key,
                const std::pair<const char*, Enum> (&names)[N]) {
  const std::string value = cfg.get<std::string>(key);
  std::string known;
  for (const auto& [name, e] : names) {
    if (value == name) return e;
    known += (known.empty() ? "" : ", ") + std::string(name);
  }
  cfg.fail(key, "unknown value '" + value + "' (expected one of: " + known + ")");
}

double uniform01(at::Generator& gen) {
  return at::rand({1}, gen, at::TensorOptions(at::kDouble)).item<double>();
}

double standard_normal(at::Generator& gen) {
  return at::randn({1}, gen, at::TensorOptions(at::kDouble)).item<double>();
}

double sigmoid(double x) {
  return 1.0 / (1.0 + std::exp(-x));
}

}  // namespace

Options Options::from_config(const PluginConfig& cfg) {
  Options o;
  o.sampling = parse_enum(cfg, "timestep_sampling",
                          {std::pair{"uniform", TimestepSampling::Uniform},
                           std::pair{"logit_normal", TimestepSampling::LogitNormal},
                           std::pair{"mode", TimestepSampling::Mode}});
  o.logit_mean = cfg.get<double>("logit_mean");
  o.logit_std = cfg.get<double>("logit_std");
  o.mode_scale = cfg.get<double>("mode_scale");
  o.mix_uniform_ratio = cfg.get<double>("mix_uniform_ratio");
  o.shift = cfg.get<double>("shift");
  o.min_sigma = cfg.get<double>("min_sigma");
  o.max_sigma = cfg.get<double>("max_sigma");
  o.num_train_timesteps = cfg.get<std::int64_t>("num_train_timesteps");
  o.round_timesteps_bf16 = cfg.get<bool>("round_timesteps_bf16");
  o.loss_weighting = parse_enum(
      cfg, "loss_weighting",
      {std::pair{"none", LossWeighting::None}, std::pair{"shift", LossWeighting::Shift}});
  o.loss_reduction = parse_enum(cfg, "loss_reduction",
                                {std::pair{"per_sample", LossReduction::PerSample},
                                 std::pair{"per_token", LossReduction::PerToken}});
  o.granularity = parse_enum(cfg, "timestep_granularity",
                             {std::pair{"per_sample", Granularity::PerSample},
                              std::pair{"per_pack", Granularity::PerPack}});
  o.sampling_shift = cfg.get<double>("sampling_shift");
  // The schema checks each value alone; these need more than one value or a strict bound.
  if (!(o.shift > 0)) cfg.fail("shift", "must be > 0");
  if (!(o.sampling_shift > 0)) cfg.fail("sampling_shift", "must be > 0");
  if (o.logit_std < 0) cfg.fail("logit_std", "must be >= 0");
  if (o.mix_uniform_ratio < 0 || o.mix_uniform_ratio > 1)
    cfg.fail("mix_uniform_ratio", "must be in [0, 1]");
  if (o.min_sigma < 0 || o.max_sigma > 1 || o.min_sigma > o.max_sigma)
    cfg.fail("min_sigma", "need 0 <= min_sigma <= max_sigma <= 1");
  if (o.num_train_timesteps < 1) cfg.fail("num_train_timesteps", "must be >= 1");
  return o;
}

double shift_sigma(double u, double shift) {
  return shift * u / (1.0 + (shift - 1.0) * u);
}

FlowMatchingScheduler::FlowMatchingScheduler(Options options) : options_(options) {}

double FlowMatchingScheduler::draw_u(std::uint64_t seed, std::int64_t step,
                                     std::int64_t key) const {
  at::Generator gen = keyed_generator(seed, step, key, RandomStream::Timestep);
  // The mixing coin is drawn whatever the settings so that u uses the same draws in every mode.
  // Unlike the reference (one coin per micro batch in FlowMatchingPipeline.sample_timesteps) it is
  // flipped per sample.
  const double coin = uniform01(gen);
  const bool use_uniform = options_.sampling == TimestepSampling::Uniform ||
                           (options_.mix_uniform_ratio > 0 && coin < options_.mix_uniform_ratio);
  if (use_uniform) return uniform01(gen);
  if (options_.sampling == TimestepSampling::LogitNormal)
    return sigmoid(options_.logit_mean + options_.logit_std * standard_normal(gen));
  // "mode" sampling (SD3): density peaked at the middle, heavier for larger mode_scale.
  const double v = uniform01(gen);
  const double c = std::cos(std::numbers::pi * v / 2);
  return std::clamp(1.0 - v - options_.mode_scale * (c * c - 1.0 + v), 0.0, 1.0);
}

double FlowMatchingScheduler::draw_sigma(std::uint64_t seed, std::int64_t step,
                                         std::int64_t key) const {
  const double u = std::max(draw_u(seed, step, key), kMinU);
  return std::clamp(shift_sigma(u, options_.shift), options_.min_sigma, options_.max_sigma);
}

at::Tensor FlowMatchingScheduler::draw_noise(std::uint64_t seed, std::int64_t step,
                                             std::int64_t key, at::IntArrayRef shape) const {
  at::Generator gen = keyed_generator(seed, step, key, RandomStream::Noise);
  return at::randn(shape, gen, at::TensorOptions(at::kFloat));
}

std::vector<double> FlowMatchingScheduler::batch_sigmas(const Batch& clean, std::uint64_t seed,
                                                        std::int64_t step) const {
  const auto& keys = clean.sample_keys;
  std::vector<double> sigmas(keys.size());
  if (options_.granularity == Granularity::PerPack) {
    std::fill(sigmas.begin(), sigmas.end(), draw_sigma(seed, step, keys.front()));
  } else {
    for (std::size_t i = 0; i < keys.size(); ++i) sigmas[i] = draw_sigma(seed, step, keys[i]);
  }
  return sigmas;
}

at::Tensor FlowMatchingScheduler::to_model_timesteps(const at::Tensor& sigmas) const {
  at::Tensor t = sigmas * static_cast<double>(options_.num_train_timesteps);
  // The reference adapters hand the model bf16 timesteps (NVIDIA-NeMo/DFM
  // dfm/src/automodel/flow_matching/adapters/simple.py, SimpleAdapter.prepare_inputs); optional,
  // for bit-matching.
  if (options_.round_timesteps_bf16) t = t.to(at::kBFloat16).to(at::kFloat);
  return t;
}

NoisedBatch FlowMatchingScheduler::add_noise(const Batch& clean, std::uint64_t seed,
                                             std::int64_t step) {
  const std::int64_t b = clean.batch_size();
  if (b == 0) throw std::invalid_argument("flow_matching: add_noise on an empty batch");
  if (!clean.packed() && clean.latents.size(0) != b)
    throw std::invalid_argument("flow_matching: batch has " + std::to_string(b) +
                                " sample keys but latents of batch size " +
                                std::to_string(clean.latents.size(0)));
  const at::Device device = clean.latents.device();
  const std::vector<double> drawn = batch_sigmas(clean, seed, step);
  at::Tensor sigmas =
      at::tensor(std::vector<float>(drawn.begin(), drawn.end()), at::kFloat).to(device);

  at::Tensor x0 = clean.latents.to(at::kFloat);
  // Each sample's noise drawn with its own shape from its key (a sample gets the same noise in a
  // dense and in a packed batch; packed padding columns stay zero).
  at::Tensor eps = per_sample_noise(clean, seed, step);
  at::Tensor s = clean.per_sample_to_latent(sigmas);

  NoisedBatch out;
  out.noisy = clean;
  out.noisy.latents = (1 - s) * x0 + s * eps;
  out.target = eps - x0;
  out.sigmas = sigmas;
  out.timesteps = to_model_timesteps(sigmas);
  out.weights = options_.loss_weighting == LossWeighting::Shift ? 1 + options_.shift * sigmas
                                                                : at::ones_like(sigmas);
  return out;
}

LossTerms FlowMatchingScheduler::loss(const at::Tensor& prediction, const NoisedBatch& noised,
                                      std::int64_t global_batch) {
  if (global_batch <= 0) throw std::invalid_argument("flow_matching: global_batch must be > 0");
  if (prediction.sizes() != noised.target.sizes())
    throw std::invalid_argument("flow_matching: prediction and target shapes differ");
  const Batch& batch = noised.noisy;
  const std::int64_t b = batch.batch_size();
  at::Tensor per_sample =
      batch.per_sample_mean((prediction.to(at::kFloat) - noised.target).square()) *
      noised.weights.to(prediction.device(), at::kFloat);

  at::Tensor share;
  if (options_.loss_reduction == LossReduction::PerToken) {
    // Token mean inside the micro batch; the micro batch then counts as its b samples.
    std::vector<float> tokens(b);
    for (std::int64_t i = 0; i < b; ++i) tokens[i] = static_cast<float>(batch.grid(i).numel());
    at::Tensor n = at::tensor(tokens, per_sample.options());
    share = (per_sample * n).sum() / n.sum() * static_cast<double>(b);
  } else {
    share = per_sample.sum();
  }
  LossTerms terms;
  terms.loss = share / static_cast<double>(global_batch);
  terms.sum = per_sample.detach().sum().to(at::kDouble);  // stays on the device
  terms.count = b;
  return terms;
}

// FlowMatchEulerDiscreteScheduler.set_timesteps with a fixed shift
// (diffusers/schedulers/scheduling_flow_match_euler_discrete.py): a linspace from the shifted
// training range [shift(1/T), 1], shifted again, then a final 0.
std::vector<double> FlowMatchingScheduler::sampling_sigmas(std::int64_t steps) const {
  if (steps < 1) throw std::invalid_argument("flow_matching: sampling needs at least one step");
  const double s = options_.sampling_shift;
  const double hi = shift_sigma(1.0, s);
  const double lo = shift_sigma(1.0 / static_cast<double>(options_.num_train_timesteps), s);
  std::vector<double> sigmas;
  for (std::int64_t k = 0; k < steps; ++k) {
    const double f = steps == 1 ? 0.0 : static_cast<double>(k) / static_cast<double>(steps - 1);
    sigmas.push_back(shift_sigma(hi + (lo - hi) * f, s));
  }
  sigmas.push_back(0.0);
  return sigmas;
}

double FlowMatchingScheduler::model_timestep(double sigma) const {
  double t = sigma * static_cast<double>(options_.num_train_timesteps);
  if (options_.round_timesteps_bf16) t = static_cast<double>(c10::BFloat16(static_cast<float>(t)));
  return t;
}

at::Tensor FlowMatchingScheduler::sampling_step(const at::Tensor& sample,
                                                const at::Tensor& model_output, double sigma,
                                                double sigma_next) const {
  // Euler along the predicted velocity, in fp32 like diffusers.
  at::Tensor next = sample.to(at::kFloat) + (sigma_next - sigma) * model_output.to(at::kFloat);
  return next.to(sample.scalar_type());
}

std::unique_ptr<Scheduler> make_scheduler(const PluginConfig& cfg) {
  return std::make_unique<FlowMatchingScheduler>(Options::from_config(cfg));
}

}  // namespace wanhost::plugins::flow_matching
