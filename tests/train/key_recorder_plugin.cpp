// Test plugin `fx_key_recorder`: the flow-matching scheduler, whose add_noise also appends one line
// per batch to the file named by $WANHOST_TEST_KEYS: the step it was given and the batch's sample
// keys ("<step>: k0 k1 ..."). add_noise runs on one thread at a time (the data worker), so lines
// never interleave.
#include <cstdio>
#include <cstdlib>
#include <string>

#include "flow_matching.hpp"
#include "wanhost/plugin.hpp"

namespace wanhost::plugins::fx_key_recorder {
namespace {

class KeyRecorder final : public Scheduler {
 public:
  explicit KeyRecorder(const PluginConfig& cfg) : inner_(flow_matching::make_scheduler(cfg)) {}

  NoisedBatch add_noise(const Batch& clean, std::uint64_t seed, std::int64_t step) override {
    if (const char* path = std::getenv("WANHOST_TEST_KEYS")) {
      std::string line = std::to_string(step) + ":";
      for (const auto k : clean.sample_keys) line += " " + std::to_string(k);
      if (std::FILE* f = std::fopen(path, "a")) {
        std::fprintf(f, "%s\n", line.c_str());
        std::fclose(f);
      }
    }
    return inner_->add_noise(clean, seed, step);
  }
  LossTerms loss(const at::Tensor& prediction, const NoisedBatch& noised,
                 std::int64_t global_batch) override {
    return inner_->loss(prediction, noised, global_batch);
  }
  std::vector<double> sampling_sigmas(std::int64_t steps) const override {
    return inner_->sampling_sigmas(steps);
  }
  double model_timestep(double sigma) const override { return inner_->model_timestep(sigma); }
  at::Tensor sampling_step(const at::Tensor& sample, const at::Tensor& model_output, double sigma,
                           double sigma_next) const override {
    return inner_->sampling_step(sample, model_output, sigma, sigma_next);
  }

 private:
  std::unique_ptr<Scheduler> inner_;
};

void factories(PluginFactories& f) {
  f.create_scheduler = [](const PluginConfig& cfg) -> std::unique_ptr<Scheduler> {
    return std::make_unique<KeyRecorder>(cfg);
  };
}

}  // namespace
}  // namespace wanhost::plugins::fx_key_recorder

WANHOST_PLUGIN("fx_key_recorder", "1.0.0", wanhost::plugins::fx_key_recorder::factories)
