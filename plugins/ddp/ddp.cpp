// `ddp`: replicated data parallelism. Each rank runs whole micro batches of its share of the
// global batch; the loss of every micro batch is already scaled by 1/global_batch, so summing the
// gradients over ranks gives the gradient of the global mean loss. Optimizer state is identical on
// every rank, so only rank 0 writes it to checkpoints.
#include <filesystem>

#include <ATen/ATen.h>

#include "wanhost/errors.hpp"
#include "wanhost/log.hpp"
#include "wanhost/optim.hpp"
#include "wanhost/plugin.hpp"
#include "wanhost/precision.hpp"
#include "wanhost/safetensors.hpp"

namespace {

using namespace wanhost;
namespace fs = std::filesystem;

class DataParallel final : public Parallelism {
 public:
  explicit DataParallel(const PluginConfig& cfg) : decay_1d_(cfg.get<bool>("decay_1d")) {}

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
    params_.clear();
    named_.clear();
    for (auto& p : model.module().named_parameters(/*recurse=*/true)) {
      named_.emplace_back(p.key(), p.value());
      params_.push_back(p.value());
    }
    // Every rank must start from the same weights, whatever its own initialisation did.
    if (ctx_.world_size > 1) {
      at::NoGradGuard no_grad;
      for (auto& p : params_) {
        at::Tensor t = p.detach();
        ctx_.dp->broadcast(t, 0);
      }
    }
    // The optimizer held the previous model's tensors; the host configures a new one next (a
    // stage with new weights starts with fresh optimizer state: run_config refuses "carry").
    optimizer_.reset();
  }

  void configure_optimizer(const OptimizerConfig& config) override {
    optimizer_ = std::make_unique<AdamW>(named_, config, decay_1d_);
  }

  StepLoss forward_backward(Model& model, const std::vector<NoisedBatch>& micro_batches,
                            const LossFn& loss) override {
    StepLoss total;
    for (const auto& mb : micro_batches) {
      LossTerms terms;
      {
        AutocastGuard autocast(ctx_);
        at::Tensor prediction = model.forward(mb.noisy, mb.timesteps);
        terms = loss(prediction, mb);
      }
      terms.loss.backward();
      total.sum += terms.sum;
      total.count += terms.count;
    }
    return total;
  }

  double reduce_and_clip_gradients(double max_norm) override {
    if (ctx_.world_size > 1) {
      // One flat buffer: one collective per step instead of one per tensor.
      std::vector<at::Tensor> grads;
      for (auto& p : params_) {
        if (!p.grad().defined()) p.mutable_grad() = at::zeros_like(p);
        grads.push_back(p.grad().reshape(-1));
      }
      at::Tensor flat = at::cat(grads);
      ctx_.dp->all_reduce(flat, ReduceOp::Sum);
      std::int64_t off = 0;
      for (auto& p : params_) {
        const std::int64_t n = p.numel();
        p.grad().view(-1).copy_(flat.slice(0, off, off + n));
        off += n;
      }
    }
    const double norm = std::sqrt(grad_norm_squared(params_).item<double>());
    clip_gradients(params_, max_norm, norm);
    return norm;
  }

  void optimizer_step(double lr) override { optimizer_->step(lr); }

  void zero_grad() override {
    for (auto& p : params_)
      if (p.grad().defined()) p.mutable_grad() = at::Tensor();
  }

  std::map<std::string, at::Tensor> full_weights(Model& model) override {
    std::map<std::string, at::Tensor> out;
    for (auto& p : model.module().named_parameters(true)) out[p.key()] = p.value().detach();
    for (auto& b : model.module().named_buffers(true)) out[b.key()] = b.value().detach();
    return out;
  }

  void save_state(Model& model, const std::string& dir) override {
    if (ctx_.world_rank != 0) return;  // replicated: rank 0 holds everything
    model.save_weights((fs::path(dir) / "model").string());
    safetensors::save((fs::path(dir) / "optimizer.safetensors").string(), optimizer_->state(),
                      {{"format", "wanhost-adamw"}, {"parallelism", "ddp"}});
  }

  void load_state(Model& model, const std::string& dir) override {
    // Copies into the existing parameters (same tensors), so the optimizer's references hold.
    model.load_weights((fs::path(dir) / "model").string());
    if (!optimizer_) throw std::logic_error("ddp: load_state before configure_optimizer");
    const std::string opt = (fs::path(dir) / "optimizer.safetensors").string();
    optimizer_->load_state(safetensors::File::open(opt).load_all());  // copied onto the device
  }

  std::int64_t state_bytes() const override {
    std::int64_t n = 0;
    for (const auto& p : params_)
      n += 2 * p.numel() * static_cast<std::int64_t>(p.element_size());  // + grads
    return n + (optimizer_ ? optimizer_->state_bytes() : 0);
  }

 private:
  bool decay_1d_;
  ParallelContext ctx_;
  std::vector<at::Tensor> params_;
  std::vector<std::pair<std::string, at::Tensor>> named_;
  std::unique_ptr<AdamW> optimizer_;
};

void factories(PluginFactories& f) {
  f.create_parallelism = [](const PluginConfig& cfg) -> std::unique_ptr<Parallelism> {
    return std::make_unique<DataParallel>(cfg);
  };
}

}  // namespace

WANHOST_PLUGIN("ddp", "0.1.0", factories)
