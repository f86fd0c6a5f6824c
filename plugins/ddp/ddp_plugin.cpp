// `ddp`: replicated data parallelism. Each rank runs whole micro batches of its share of the
// global batch; the loss of every micro batch is already scaled by 1/global_batch, so summing the
// gradients over ranks gives the gradient of the global mean loss. Optimizer state is identical on
// every rank, so only rank 0 writes it to checkpoints.
#include <filesystem>

#include <ATen/ATen.h>

#include "wanhost/errors.hpp"
#include "wanhost/kit/checkpoint_state.hpp"
#include "wanhost/kit/layers.hpp"
#include "wanhost/kit/parallelism_base.hpp"
#include "wanhost/kit/safetensors.hpp"
#include "wanhost/log.hpp"
#include "wanhost/plugin.hpp"

namespace wanhost::plugins::ddp {
namespace {

using namespace wanhost;
namespace fs = std::filesystem;

class DataParallel final : public ParallelismBase {
 public:
  explicit DataParallel(const PluginConfig& cfg)
      : ParallelismBase("ddp", GradReset::Drop), decay_1d_(cfg.get<bool>("decay_1d")) {}

  ParallelLayout layout(int world_size) const override {
    ParallelLayout l;
    l.dp = world_size;
    return l;
  }

  void setup(ParallelContext& ctx) override {
    setup_data_parallel(ctx);
    ctx_ = ctx;
  }

  void attach(Model& model) override {
    model.module().to(ctx_.device, ctx_.param_dtype);
    std::vector<AdamWParam> params;
    for (auto& p : model.module().named_parameters(/*recurse=*/true))
      params.push_back({p.key(), p.value(), AdamW::decays(p.key(), p.value().dim(), decay_1d_)});
    // Every rank must start from the same weights, whatever its own initialisation did.
    if (ctx_.world_size > 1) {
      at::NoGradGuard no_grad;
      for (auto& p : params) {
        at::Tensor t = p.tensor.detach();
        ctx_.dp->broadcast(t, 0);
      }
    }
    set_optimized(std::move(params));
  }

  StepLoss forward_backward(Model& model, const std::vector<NoisedBatch>& micro_batches,
                            const LossFn& loss) override {
    return forward_backward_each(model, micro_batches, loss, ctx_);
  }

  at::Tensor reduce_and_clip_gradients(double max_norm) override {
    all_reduce_gradients(optimized_tensors(), *ctx_.dp);
    return clip_by_global_norm(max_norm);  // replicated: every rank holds every gradient
  }

  // One rank: the step is the model's, the kit's clip and fused AdamW (device-side count, skip
  // and clip), with no collective. Several ranks: not captured (the host does not capture
  // multi-process steps yet).
  bool steps_capturable() const override { return ctx_.world_size == 1; }

  std::map<std::string, at::Tensor> full_weights(Model& model) override {
    std::map<std::string, at::Tensor> out;
    for (auto& p : model.module().named_parameters(true)) out[p.key()] = p.value().detach();
    for (auto& b : model.module().named_buffers(true)) out[b.key()] = b.value().detach();
    return out;
  }

  void save_state(Model& model, const std::string& dir) override {
    if (ctx_.world_rank != 0) return;  // replicated: rank 0 holds everything
    model.save_weights((fs::path(dir) / "model").string());
    safetensors::save((fs::path(dir) / "optimizer.safetensors").string(), optimizer().state(),
                      {{"format", "wanhost-adamw"}, {"parallelism", "ddp"}});
  }

  // Its own checkpoint or another parallelism plugin's (automodel_fsdp, megatron_tpppcp): whole
  // tensors either way (wanhost/kit/checkpoint_state.hpp), copied into the existing parameters
  // so the optimizer's references hold.
  void load_state(Model& model, const std::string& dir) override {
    at::NoGradGuard no_grad;
    WholeState::Shapes shapes;
    for (auto& p : model.module().named_parameters(true)) shapes[p.key()] = p.value().sizes().vec();
    const std::unique_ptr<WholeState> state = WholeState::open(dir, shapes);
    if (ctx_.world_rank == 0 && state->writer() != "ddp")
      logger()->info("ddp: loading the checkpoint of {}", state->writer());
    std::map<std::string, at::Tensor> opt;
    for (auto& p : model.module().named_parameters(true)) {
      at::Tensor t = p.value();
      t.copy_(state->tensor(p.key(), "param"));
      for (const char* what : {"exp_avg", "exp_avg_sq"})
        opt[p.key() + "." + what] = state->tensor(p.key(), what).to(t.device(), t.scalar_type());
    }
    opt["__step__"] = state->step();
    optimizer().load_state(opt);
  }

 private:
  bool decay_1d_;
  ParallelContext ctx_;
};

void factories(PluginFactories& f) {
  f.create_parallelism = [](const PluginConfig& cfg) -> std::unique_ptr<Parallelism> {
    return std::make_unique<DataParallel>(cfg);
  };
}

}  // namespace
}  // namespace wanhost::plugins::ddp

WANHOST_PLUGIN("ddp", "0.1.0", wanhost::plugins::ddp::factories)
