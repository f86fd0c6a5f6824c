// Test plugin `fx_padded_ddp`: one-process data parallelism (ddp's arithmetic) that sets
// ParallelContext::token_multiple from its option `token_multiple`, as a parallelism splitting
// sequences would: the model pads every packed sample's tokens, and the trainer's token budget
// and pack_efficiency count the padding. One process only.
#include <filesystem>
#include <stdexcept>

#include <ATen/ATen.h>

#include "wanhost/kit/layers.hpp"
#include "wanhost/kit/parallelism_base.hpp"
#include "wanhost/kit/safetensors.hpp"
#include "wanhost/plugin.hpp"

namespace wanhost::plugins::fx_padded_ddp {
namespace {

namespace fs = std::filesystem;

class PaddedDdp final : public ParallelismBase {
 public:
  explicit PaddedDdp(const PluginConfig& cfg)
      : ParallelismBase("fx_padded_ddp", GradReset::Drop),
        multiple_(cfg.get<std::int64_t>("token_multiple")) {}

  ParallelLayout layout(int world_size) const override {
    if (world_size != 1) throw std::invalid_argument("fx_padded_ddp: one process only");
    return ParallelLayout{};
  }
  void setup(ParallelContext& ctx) override {
    setup_data_parallel(ctx);
    ctx.token_multiple = multiple_;
    ctx_ = ctx;
  }
  void attach(Model& model) override {
    model.module().to(ctx_.device, ctx_.param_dtype);
    std::vector<AdamWParam> params;
    for (auto& p : model.module().named_parameters(true))
      params.push_back({p.key(), p.value(), AdamW::decays(p.key(), p.value().dim(), true)});
    set_optimized(std::move(params));
  }
  StepLoss forward_backward(Model& model, const std::vector<NoisedBatch>& micro_batches,
                            const LossFn& loss) override {
    return forward_backward_each(model, micro_batches, loss, ctx_);
  }
  at::Tensor reduce_and_clip_gradients(double max_norm) override {
    return clip_by_global_norm(max_norm);
  }
  std::map<std::string, at::Tensor> full_weights(Model& model) override {
    std::map<std::string, at::Tensor> out;
    for (auto& p : model.module().named_parameters(true)) out[p.key()] = p.value().detach();
    return out;
  }
  void save_state(Model& model, const std::string& dir) override {
    model.save_weights((fs::path(dir) / "model").string());
    safetensors::save((fs::path(dir) / "optimizer.safetensors").string(), optimizer().state(),
                      {{"format", "wanhost-adamw"}});
  }
  void load_state(Model& model, const std::string& dir) override {
    model.load_weights((fs::path(dir) / "model").string());
    optimizer().load_state(
        safetensors::File::open((fs::path(dir) / "optimizer.safetensors").string()).load_all());
  }

 private:
  std::int64_t multiple_;
  ParallelContext ctx_;
};

void factories(PluginFactories& f) {
  f.create_parallelism = [](const PluginConfig& cfg) -> std::unique_ptr<Parallelism> {
    return std::make_unique<PaddedDdp>(cfg);
  };
}

}  // namespace
}  // namespace wanhost::plugins::fx_padded_ddp

WANHOST_PLUGIN("fx_padded_ddp", "1.0.0", wanhost::plugins::fx_padded_ddp::factories)
