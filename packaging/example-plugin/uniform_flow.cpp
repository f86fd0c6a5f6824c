// uniform_flow: an example third-party wanhost plugin (a scheduler variant), built against the
// installed SDK only: the contract (WanHost::sdk) and, for its keyed random draws, the kit
// (WanHost::kit). Rectified flow: x_t = (1 - sigma) x0 + sigma eps, the model predicts the
// velocity eps - x0; sigma is drawn uniformly from [min_sigma, max_sigma] for every sample, and
// every sample weighs the same in the loss.
#include <ATen/ATen.h>

#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "wanhost/kit/keyed_random.hpp"
#include "wanhost/log.hpp"
#include "wanhost/plugin.hpp"
#include "wanhost/random.hpp"

namespace {

double shifted(double sigma, double shift) {
  return shift * sigma / (1.0 + (shift - 1.0) * sigma);
}

class UniformFlow final : public wanhost::Scheduler {
 public:
  explicit UniformFlow(const wanhost::PluginConfig& cfg)
      : min_sigma_(cfg.get<double>("min_sigma")),
        max_sigma_(cfg.get<double>("max_sigma")),
        timesteps_(cfg.get<std::int64_t>("num_train_timesteps")),
        sampling_shift_(cfg.get<double>("sampling_shift")) {
    if (min_sigma_ > max_sigma_) cfg.fail("min_sigma", "must not exceed max_sigma");
    if (!(sampling_shift_ > 0)) cfg.fail("sampling_shift", "must be > 0");
    wanhost::logger()->info("uniform_flow {}: training sigma uniform in [{}, {}]",
                            UNIFORM_FLOW_VERSION, min_sigma_, max_sigma_);
  }

  wanhost::NoisedBatch add_noise(const wanhost::Batch& clean, std::uint64_t seed,
                                 std::int64_t step) override {
    const std::int64_t b = clean.batch_size();
    if (b == 0) throw std::invalid_argument("uniform_flow: add_noise on an empty batch");
    std::vector<float> sigmas(b);
    for (std::int64_t i = 0; i < b; ++i) {
      // The sample's own key: the same timestep whatever rank or micro batch draws it.
      at::Generator gen = wanhost::keyed_generator(seed, step, clean.sample_keys[i],
                                                   wanhost::RandomStream::Timestep);
      const double u = at::rand({1}, gen, at::TensorOptions(at::kDouble)).item<double>();
      sigmas[i] = static_cast<float>(min_sigma_ + (max_sigma_ - min_sigma_) * u);
    }
    // Each sample's noise drawn with its own grid from its key (the kit's helper), so dense and
    // packed batches agree.
    const at::Tensor noise = wanhost::per_sample_noise(clean, seed, step);
    const at::Device device = clean.latents.device();
    at::Tensor sigma = at::tensor(sigmas, at::kFloat).to(device);
    at::Tensor x0 = clean.latents.to(at::kFloat);
    at::Tensor eps = noise;
    at::Tensor s = clean.per_sample_to_latent(sigma);

    wanhost::NoisedBatch out;
    out.noisy = clean;
    out.noisy.latents = (1 - s) * x0 + s * eps;
    out.target = eps - x0;
    out.sigmas = sigma;
    out.timesteps = sigma * static_cast<double>(timesteps_);
    out.weights = at::ones_like(sigma);
    return out;
  }

  wanhost::LossTerms loss(const at::Tensor& prediction, const wanhost::NoisedBatch& noised,
                          std::int64_t global_batch) override {
    if (global_batch <= 0) throw std::invalid_argument("uniform_flow: global_batch must be > 0");
    if (prediction.sizes() != noised.target.sizes())
      throw std::invalid_argument("uniform_flow: prediction and target shapes differ");
    at::Tensor per_sample =
        noised.noisy.per_sample_mean((prediction.to(at::kFloat) - noised.target).square());
    wanhost::LossTerms terms;
    terms.loss = per_sample.sum() / static_cast<double>(global_batch);
    terms.sum = per_sample.detach().sum().to(at::kDouble);
    terms.count = noised.noisy.batch_size();
    return terms;
  }

  std::vector<double> sampling_sigmas(std::int64_t steps) const override {
    if (steps < 1) throw std::invalid_argument("uniform_flow: sampling needs at least one step");
    std::vector<double> out;
    for (std::int64_t k = 0; k < steps; ++k)
      out.push_back(
          shifted(1.0 - static_cast<double>(k) / static_cast<double>(steps), sampling_shift_));
    out.push_back(0.0);
    return out;
  }

  double model_timestep(double sigma) const override {
    return sigma * static_cast<double>(timesteps_);
  }

  at::Tensor sampling_step(const at::Tensor& sample, const at::Tensor& model_output, double sigma,
                           double sigma_next) const override {
    at::Tensor next = sample.to(at::kFloat) + (sigma_next - sigma) * model_output.to(at::kFloat);
    return next.to(sample.scalar_type());
  }

 private:
  double min_sigma_;
  double max_sigma_;
  std::int64_t timesteps_;
  double sampling_shift_;
};

void factories(wanhost::PluginFactories& f) {
  f.create_scheduler = [](const wanhost::PluginConfig& cfg) -> std::unique_ptr<wanhost::Scheduler> {
    return std::make_unique<UniformFlow>(cfg);
  };
}

}  // namespace

WANHOST_PLUGIN("uniform_flow", UNIFORM_FLOW_VERSION, factories)
