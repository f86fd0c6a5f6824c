// The flow_matching scheduler plugin, linked directly (flow_matching_impl).
#include <algorithm>
#include <cmath>
#include <fstream>
#include <numbers>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>

#include "flow_matching.hpp"
#include "wanhost/data.hpp"
#include "wanhost/errors.hpp"
#include "wanhost/kit/collate.hpp"

using namespace wanhost;
using namespace wanhost::plugins;
using flow_matching::FlowMatchingScheduler;
using flow_matching::Options;

namespace {

constexpr std::uint64_t kSeed = 1234;

// The config the host would hand the plugin: every default of the sidecar manifest, then
// `overrides`.
PluginConfig config(const Json& overrides = Json::object()) {
  std::ifstream in(WANHOST_SOURCE_DIR "/plugins/flow_matching/flow_matching.json");
  const Json manifest = Json::parse(in);
  PluginConfig cfg{"flow_matching", "/scheduler/flow_matching", Json::object(), {}};
  for (const auto& [key, schema] : manifest.at("config").items())
    cfg.values[key] = schema.at("default");
  for (const auto& [key, value] : overrides.items()) cfg.values[key] = value;
  return cfg;
}

FlowMatchingScheduler scheduler(const Json& overrides = Json::object()) {
  return FlowMatchingScheduler(Options::from_config(config(overrides)));
}

Sample sample(std::int64_t key, std::int64_t frames, std::int64_t height, std::int64_t width) {
  Sample s;
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(static_cast<std::uint64_t>(key));
  s.latent = at::randn({4, frames, height, width}, gen, at::TensorOptions(at::kFloat));
  s.text = at::ones({2, 3});
  s.index = key;
  return s;
}

std::vector<Sample> samples(const std::vector<std::int64_t>& keys) {
  std::vector<Sample> out;
  for (std::int64_t k : keys) out.push_back(sample(k, 2, 3, 2));
  return out;
}

std::vector<Sample> mixed_samples() {
  return {sample(10, 1, 2, 2), sample(20, 3, 2, 1), sample(30, 2, 3, 3)};
}

struct Moments {
  double mean = 0, std = 0;
};

template <class F>
Moments moments(int n, F&& value) {
  double s = 0, s2 = 0;
  for (int i = 0; i < n; ++i) {
    const double v = value(i);
    s += v;
    s2 += v * v;
  }
  const double mean = s / n;
  return {mean, std::sqrt(s2 / n - mean * mean)};
}

double logit(double p) {
  return std::log(p / (1 - p));
}

at::Tensor sigmas_of(const NoisedBatch& n) {
  return n.sigmas.cpu();
}

// The noise a sample got inside a batch, as [C, F, H, W].
at::Tensor noise_of(const NoisedBatch& n, const Batch& clean, std::int64_t i) {
  at::Tensor eps = n.target + clean.latents;
  if (!clean.packed()) return eps[i];
  const PackSegment g = clean.grid(i);
  return eps.narrow(1, g.offset, g.numel()).reshape({eps.size(0), g.frames, g.height, g.width});
}

}  // namespace

TEST(FlowMatchingConfig, DefaultsFollowTheAutoModelPretrainPreset) {
  const Options o = Options::from_config(config());
  EXPECT_EQ(o.sampling, flow_matching::TimestepSampling::LogitNormal);
  EXPECT_EQ(o.logit_mean, 0.0);
  EXPECT_EQ(o.logit_std, 1.5);
  EXPECT_EQ(o.shift, 2.5);
  EXPECT_EQ(o.mix_uniform_ratio, 0.2);
  EXPECT_EQ(o.mode_scale, 1.29);
  EXPECT_EQ(o.min_sigma, 0.0);
  EXPECT_EQ(o.max_sigma, 1.0);
  EXPECT_EQ(o.num_train_timesteps, 1000);
  EXPECT_EQ(o.loss_weighting, flow_matching::LossWeighting::Shift);
  EXPECT_EQ(o.loss_reduction, flow_matching::LossReduction::PerSample);
  EXPECT_EQ(o.granularity, flow_matching::Granularity::PerSample);
  EXPECT_EQ(o.sampling_shift, 3.0);
  EXPECT_FALSE(o.round_timesteps_bf16);
}

TEST(FlowMatchingConfig, BadValuesNameTheKey) {
  try {
    Options::from_config(config({{"timestep_sampling", "cosine"}}));
    FAIL() << "no ConfigError";
  } catch (const ConfigError& e) {
    EXPECT_EQ(e.pointer(), "/scheduler/flow_matching/timestep_sampling");
  }
  EXPECT_THROW(Options::from_config(config({{"shift", 0.0}})), ConfigError);
  EXPECT_THROW(Options::from_config(config({{"min_sigma", 0.6}, {"max_sigma", 0.5}})), ConfigError);
  EXPECT_THROW(Options::from_config(config({{"loss_weighting", "snr"}})), ConfigError);
  EXPECT_NE(flow_matching::make_scheduler(config()), nullptr);
}

TEST(FlowMatchingSigma, ShiftFormula) {
  for (double s : {1.0, 2.5, 3.0, 5.0}) {
    EXPECT_DOUBLE_EQ(flow_matching::shift_sigma(0.0, s), 0.0);
    EXPECT_DOUBLE_EQ(flow_matching::shift_sigma(1.0, s), 1.0);
    for (double u : {0.01, 0.3, 0.5, 0.9})
      EXPECT_NEAR(flow_matching::shift_sigma(u, s), s / (s + 1 / u - 1), 1e-12);
  }
  EXPECT_DOUBLE_EQ(flow_matching::shift_sigma(0.5, 3.0), 0.75);
  // A monotone map: the median of a shifted logit-normal(0, ·) is shift(0.5).
  FlowMatchingScheduler fm = scheduler({{"shift", 3.0}, {"mix_uniform_ratio", 0.0}});
  std::vector<double> sigmas;
  for (int i = 0; i < 4001; ++i) sigmas.push_back(fm.draw_sigma(kSeed, 0, i));
  std::nth_element(sigmas.begin(), sigmas.begin() + 2000, sigmas.end());
  EXPECT_NEAR(sigmas[2000], 0.75, 0.02);
}

TEST(FlowMatchingSigma, LogitNormalStatistics) {
  FlowMatchingScheduler fm = scheduler(
      {{"logit_mean", 0.3}, {"logit_std", 0.8}, {"shift", 1.0}, {"mix_uniform_ratio", 0.0}});
  const int n = 20000;
  const Moments m = moments(n, [&](int i) { return logit(fm.draw_sigma(kSeed, 5, i)); });
  EXPECT_NEAR(m.mean, 0.3, 4 * 0.8 / std::sqrt(n));
  EXPECT_NEAR(m.std, 0.8, 0.02);
}

TEST(FlowMatchingSigma, UniformStatistics) {
  FlowMatchingScheduler fm = scheduler({{"timestep_sampling", "uniform"}, {"shift", 1.0}});
  const Moments m = moments(20000, [&](int i) { return fm.draw_sigma(kSeed, 1, i); });
  EXPECT_NEAR(m.mean, 0.5, 0.01);
  EXPECT_NEAR(m.std, std::sqrt(1.0 / 12), 0.01);
}

TEST(FlowMatchingSigma, ModeStatisticsMatchTheDensity) {
  const double scale = 1.29;
  FlowMatchingScheduler fm =
      scheduler({{"timestep_sampling", "mode"}, {"shift", 1.0}, {"mix_uniform_ratio", 0.0}});
  // Moments of u(v) = 1 - v - scale (cos²(πv/2) - 1 + v), v ~ U(0, 1), by quadrature.
  double e1 = 0, e2 = 0;
  const int q = 100000;
  for (int k = 0; k < q; ++k) {
    const double v = (k + 0.5) / q, c = std::cos(std::numbers::pi * v / 2);
    const double u = std::clamp(1 - v - scale * (c * c - 1 + v), 0.0, 1.0);
    e1 += u / q;
    e2 += u * u / q;
  }
  const Moments m = moments(20000, [&](int i) { return fm.draw_sigma(kSeed, 2, i); });
  EXPECT_NEAR(m.mean, e1, 0.01);
  EXPECT_NEAR(m.std, std::sqrt(e2 - e1 * e1), 0.01);
  EXPECT_LT(m.std, std::sqrt(1.0 / 12));  // peaked in the middle
}

TEST(FlowMatchingSigma, MixUniformIsPerSample) {
  // A very narrow logit-normal puts u at 0.5; the mixed-in uniform draws land anywhere.
  FlowMatchingScheduler fm = scheduler({{"logit_std", 1e-4}, {"mix_uniform_ratio", 0.25}});
  int far = 0;
  const int n = 20000;
  for (int i = 0; i < n; ++i) far += std::abs(fm.draw_u(kSeed, 0, i) - 0.5) > 0.05;
  EXPECT_NEAR(static_cast<double>(far) / n, 0.25 * 0.9, 0.015);
}

TEST(FlowMatchingSigma, ClampAndFloor) {
  FlowMatchingScheduler fm = scheduler({{"min_sigma", 0.2}, {"max_sigma", 0.55}});
  for (int i = 0; i < 2000; ++i) {
    const double s = fm.draw_sigma(kSeed, 3, i);
    EXPECT_GE(s, 0.2);
    EXPECT_LE(s, 0.55);
  }
  FlowMatchingScheduler wide = scheduler({{"timestep_sampling", "uniform"}});
  for (int i = 0; i < 2000; ++i) EXPECT_GT(wide.draw_sigma(kSeed, 3, i), 0.0);
}

TEST(FlowMatchingNoise, SameKeySameNumbersWhateverTheBatch) {
  FlowMatchingScheduler fm = scheduler();
  const Batch a = collate_dense(samples({5, 9, 2}), CollateOptions{});
  const Batch b = collate_dense(samples({2, 77, 5, 13}), CollateOptions{});
  const NoisedBatch na = fm.add_noise(a, kSeed, 40);
  const NoisedBatch nb = fm.add_noise(b, kSeed, 40);
  // Key 5 is sample 0 of a and sample 2 of b; key 2 is sample 2 of a and sample 0 of b.
  EXPECT_EQ(sigmas_of(na)[0].item<float>(), sigmas_of(nb)[2].item<float>());
  EXPECT_EQ(sigmas_of(na)[2].item<float>(), sigmas_of(nb)[0].item<float>());
  EXPECT_TRUE(at::equal(noise_of(na, a, 0), noise_of(nb, b, 2)));
  EXPECT_TRUE(at::allclose(noise_of(na, a, 0), fm.draw_noise(kSeed, 40, 5, {4, 2, 3, 2})));
  EXPECT_TRUE(at::equal(na.target[0], nb.target[2]));
  EXPECT_TRUE(at::allclose(noise_of(na, a, 2), noise_of(nb, b, 0)));
  // Different keys, steps and seeds give different numbers.
  EXPECT_NE(sigmas_of(na)[0].item<float>(), sigmas_of(na)[1].item<float>());
  EXPECT_FALSE(at::allclose(noise_of(na, a, 0), noise_of(na, a, 1)));
  EXPECT_NE(fm.draw_sigma(kSeed, 40, 5), fm.draw_sigma(kSeed, 41, 5));
  EXPECT_NE(fm.draw_sigma(kSeed, 40, 5), fm.draw_sigma(kSeed + 1, 40, 5));
  EXPECT_FALSE(at::allclose(fm.draw_noise(kSeed, 40, 5, {8}), fm.draw_noise(kSeed, 41, 5, {8})));
}

TEST(FlowMatchingNoise, PackedAndDenseGetTheSameNumbers) {
  FlowMatchingScheduler fm = scheduler();
  const Batch dense = collate_dense(samples({3, 8}), CollateOptions{});
  const Batch packed = collate_packed(samples({3, 8}), CollateOptions{});
  const NoisedBatch nd = fm.add_noise(dense, kSeed, 7);
  const NoisedBatch np = fm.add_noise(packed, kSeed, 7);
  EXPECT_TRUE(at::equal(nd.sigmas, np.sigmas));
  for (std::int64_t i = 0; i < 2; ++i) {
    EXPECT_TRUE(at::allclose(noise_of(nd, dense, i), noise_of(np, packed, i)));
    const PackSegment g = packed.grid(i);
    EXPECT_TRUE(at::allclose(nd.noisy.latents[i].reshape({4, g.numel()}),
                             np.noisy.latents.narrow(1, g.offset, g.numel())));
  }
}

TEST(FlowMatchingNoise, NoisingTargetTimestepsWeights) {
  FlowMatchingScheduler fm = scheduler();
  const Batch clean = collate_dense(samples({1, 2, 3}), CollateOptions{});
  const NoisedBatch n = fm.add_noise(clean, kSeed, 0);
  for (std::int64_t i = 0; i < 3; ++i) {
    const float s = n.sigmas[i].item<float>();
    at::Tensor eps = fm.draw_noise(kSeed, 0, clean.sample_keys[i], {4, 2, 3, 2});
    EXPECT_TRUE(at::allclose(n.noisy.latents[i], (1 - s) * clean.latents[i] + s * eps));
    EXPECT_TRUE(at::allclose(n.target[i], eps - clean.latents[i]));
    EXPECT_FLOAT_EQ(n.timesteps[i].item<float>(), 1000 * s);
    EXPECT_FLOAT_EQ(n.weights[i].item<float>(), 1 + 2.5f * s);
    EXPECT_FLOAT_EQ(s, static_cast<float>(fm.draw_sigma(kSeed, 0, clean.sample_keys[i])));
  }
  EXPECT_EQ(n.noisy.sample_keys, clean.sample_keys);
  EXPECT_TRUE(at::equal(n.noisy.text, clean.text));

  FlowMatchingScheduler unweighted = scheduler({{"loss_weighting", "none"}});
  EXPECT_TRUE(at::equal(unweighted.add_noise(clean, kSeed, 0).weights, at::ones({3})));

  FlowMatchingScheduler rounded = scheduler({{"round_timesteps_bf16", true}});
  const NoisedBatch r = rounded.add_noise(clean, kSeed, 0);
  EXPECT_TRUE(at::equal(r.timesteps, (r.sigmas * 1000).to(at::kBFloat16).to(at::kFloat)));
}

TEST(FlowMatchingNoise, PerPackSharesOneSigma) {
  FlowMatchingScheduler fm = scheduler({{"timestep_granularity", "per_pack"}});
  const Batch packed = collate_packed(mixed_samples(), CollateOptions{});
  const NoisedBatch n = fm.add_noise(packed, kSeed, 11);
  const float first = static_cast<float>(fm.draw_sigma(kSeed, 11, 10));
  for (std::int64_t i = 0; i < 3; ++i) EXPECT_EQ(n.sigmas[i].item<float>(), first);
  // The noise stays per sample.
  EXPECT_TRUE(at::allclose(noise_of(n, packed, 1), fm.draw_noise(kSeed, 11, 20, {4, 3, 2, 1})));

  FlowMatchingScheduler per_sample = scheduler();
  const NoisedBatch ps = per_sample.add_noise(packed, kSeed, 11);
  EXPECT_EQ(ps.sigmas[0].item<float>(), first);
  EXPECT_NE(ps.sigmas[1].item<float>(), first);
}

TEST(FlowMatchingLoss, EqualsHandComputedWeightedMse) {
  FlowMatchingScheduler fm = scheduler();
  const Batch clean = collate_dense(samples({4, 5}), CollateOptions{});
  const NoisedBatch n = fm.add_noise(clean, kSeed, 3);
  at::Tensor pred = at::randn_like(n.target).requires_grad_(true);
  const LossTerms t = fm.loss(pred, n, 8);
  double sum = 0;
  for (std::int64_t i = 0; i < 2; ++i) {
    const double mse = (pred[i] - n.target[i]).square().mean().item<double>();
    sum += (1 + 2.5 * n.sigmas[i].item<double>()) * mse;
  }
  EXPECT_NEAR(t.loss.item<double>(), sum / 8, 1e-5);
  EXPECT_EQ(t.sum.scalar_type(), at::kDouble);
  EXPECT_NEAR(t.sum.item<double>(), sum, 1e-4);
  EXPECT_EQ(t.count, 2);
  t.loss.backward();
  EXPECT_TRUE(pred.grad().defined());
  EXPECT_GT(pred.grad().abs().sum().item<double>(), 0.0);
  EXPECT_THROW(fm.loss(pred.narrow(0, 0, 1), n, 8), std::invalid_argument);
}

TEST(FlowMatchingLoss, MicroBatchSharesSumToTheGlobalMean) {
  FlowMatchingScheduler fm = scheduler();
  const std::vector<std::int64_t> keys{1, 2, 3, 4, 5, 6};
  const Batch all = collate_dense(samples(keys), CollateOptions{});
  const NoisedBatch n_all = fm.add_noise(all, kSeed, 9);
  const at::Tensor pred_all = at::zeros_like(n_all.target);
  const LossTerms whole = fm.loss(pred_all, n_all, 6);

  double total = 0, logged = 0;
  std::int64_t count = 0;
  for (const auto& part : std::vector<std::vector<std::int64_t>>{{1, 2}, {3, 4, 5}, {6}}) {
    const Batch mb = collate_dense(samples(part), CollateOptions{});
    const NoisedBatch n = fm.add_noise(mb, kSeed, 9);
    const LossTerms t = fm.loss(at::zeros_like(n.target), n, 6);
    total += t.loss.item<double>();
    logged += t.sum.item<double>();
    count += t.count;
  }
  EXPECT_NEAR(total, whole.loss.item<double>(), 1e-5);
  EXPECT_NEAR(logged / count, whole.sum.item<double>() / whole.count, 1e-5);
  EXPECT_NEAR(total, whole.sum.item<double>() / 6, 1e-5);
}

TEST(FlowMatchingLoss, PackedEqualsSeparateSamples) {
  FlowMatchingScheduler fm = scheduler();
  const std::vector<Sample> mixed = mixed_samples();
  const Batch packed = collate_packed(mixed, CollateOptions{});
  const NoisedBatch np = fm.add_noise(packed, kSeed, 2);
  at::Tensor pred = at::randn_like(np.target);
  const LossTerms lp = fm.loss(pred, np, 3);

  // Each sample alone in a dense batch of one, with the matching slice of the prediction.
  double separate = 0;
  for (std::int64_t i = 0; i < 3; ++i) {
    const Batch one = collate_dense({mixed[i]}, CollateOptions{});
    const NoisedBatch n1 = fm.add_noise(one, kSeed, 2);
    const PackSegment g = packed.grid(i);
    at::Tensor p1 = pred.narrow(1, g.offset, g.numel()).reshape(n1.target.sizes());
    separate += fm.loss(p1, n1, 3).loss.item<double>();
  }
  EXPECT_NEAR(lp.loss.item<double>(), separate, 1e-5);
}

TEST(FlowMatchingLoss, PerTokenReductionWeighsBySampleSize) {
  FlowMatchingScheduler fm = scheduler({{"loss_reduction", "per_token"}});
  const Batch packed = collate_packed(mixed_samples(), CollateOptions{});
  const NoisedBatch n = fm.add_noise(packed, kSeed, 2);
  at::Tensor pred = at::randn_like(n.target);
  // Megatron: Σ_tokens w·mean_c(err) / Σ_tokens, here for a micro batch of 3 out of 6.
  at::Tensor err = (pred - n.target).square().mean(0) * packed.per_sample_to_latent(n.weights)[0];
  const double token_mean = err.mean().item<double>();
  EXPECT_NEAR(fm.loss(pred, n, 6).loss.item<double>(), token_mean * 3 / 6, 1e-5);

  // Equal grids: the same as the per-sample reduction.
  const Batch dense = collate_dense(samples({1, 2, 3}), CollateOptions{});
  const NoisedBatch nd = fm.add_noise(dense, kSeed, 2);
  at::Tensor pd = at::randn_like(nd.target);
  EXPECT_NEAR(fm.loss(pd, nd, 5).loss.item<double>(),
              scheduler().loss(pd, nd, 5).loss.item<double>(), 1e-6);
}

TEST(FlowMatchingSampling, SigmasMatchDiffusersEuler) {
  // diffusers 0.42.1 FlowMatchEulerDiscreteScheduler(shift=s).set_timesteps(n).sigmas (float32).
  const std::vector<double> s3{1.0, 0.857692301273346, 0.602150559425354, 0.008928571827709675,
                               0.0};
  const std::vector<double> s5{1.0, 0.8347120881080627, 0.0244140662252903, 0.0};
  const std::vector<double> got3 = scheduler({{"sampling_shift", 3.0}}).sampling_sigmas(4);
  const std::vector<double> got5 = scheduler({{"sampling_shift", 5.0}}).sampling_sigmas(3);
  ASSERT_EQ(got3.size(), s3.size());
  ASSERT_EQ(got5.size(), s5.size());
  for (std::size_t i = 0; i < s3.size(); ++i) EXPECT_NEAR(got3[i], s3[i], 1e-6);
  for (std::size_t i = 0; i < s5.size(); ++i) EXPECT_NEAR(got5[i], s5[i], 1e-6);
  EXPECT_EQ(scheduler().sampling_sigmas(1), (std::vector<double>{1.0, 0.0}));
  EXPECT_THROW(scheduler().sampling_sigmas(0), std::invalid_argument);
  EXPECT_DOUBLE_EQ(scheduler().model_timestep(0.25), 250.0);
}

TEST(FlowMatchingSampling, EulerIntegratesAStraightFlowExactly) {
  // Along x_σ = (1-σ) x0 + σ ε the velocity dx/dσ = ε - x0 is constant, so Euler is exact.
  FlowMatchingScheduler fm = scheduler();
  at::Tensor x0 = at::randn({4, 2, 3, 3}), eps = at::randn({4, 2, 3, 3});
  const std::vector<double> sigmas = fm.sampling_sigmas(7);
  at::Tensor x = (1 - sigmas[0]) * x0 + sigmas[0] * eps;
  for (std::size_t k = 0; k + 1 < sigmas.size(); ++k) {
    x = fm.sampling_step(x, eps - x0, sigmas[k], sigmas[k + 1]);
    EXPECT_TRUE(at::allclose(x, (1 - sigmas[k + 1]) * x0 + sigmas[k + 1] * eps, 1e-5, 1e-5));
  }
  EXPECT_TRUE(at::allclose(x, x0, 1e-5, 1e-5));
  at::Tensor half = fm.sampling_step(x0.to(at::kBFloat16), eps, 1.0, 0.5);
  EXPECT_EQ(half.scalar_type(), at::kBFloat16);
}
