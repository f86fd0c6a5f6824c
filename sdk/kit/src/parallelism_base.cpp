#include "wanhost/kit/parallelism_base.hpp"

#include <cmath>
#include <stdexcept>

#include <ATen/ATen.h>

#include "side_tensors.hpp"
#include "wanhost/kit/compute_weights.hpp"
#include "wanhost/kit/kernel_options.hpp"
#include "wanhost/kit/precision.hpp"

namespace wanhost {
namespace {

// The clip divisor each ParallelismBase hands to its next optimizer step (beside the object, see
// side_tensors.hpp); dropped by the next step, a new optimizer or the object's destructor.
SideTensors& pending_clips() {
  static SideTensors& clips = SideTensors::make();
  return clips;
}

}  // namespace

ParallelismBase::~ParallelismBase() {
  pending_clips().set(this, at::Tensor());
}

StepLoss forward_backward_each(Model& model, const std::vector<NoisedBatch>& micro_batches,
                               const LossFn& loss, const ParallelContext& ctx) {
  // run.kernels.weight_casts=per_step: every master weight in the compute dtype in one pass,
  // before the first micro batch (the weights do not change until the optimizer step).
  const bool cast_once =
      kernel_options().weight_casts_per_step && ctx.compute_dtype != ctx.param_dtype;
  if (cast_once) refresh_compute_weights(model.module().parameters(), ctx.compute_dtype);
  StepLoss total;
  for (const auto& mb : micro_batches) {
    LossTerms terms;
    {
      AutocastGuard autocast(ctx);
      terms = loss(model.forward(mb.noisy, mb.timesteps), mb);
    }
    terms.loss.backward();
    total.add(terms);
  }
  if (cast_once) keep_used_compute_weights();
  return total;
}

void all_reduce_gradients(const std::vector<at::Tensor>& params, Communicator& group) {
  if (params.empty() || group.size() == 1) return;
  at::NoGradGuard no_grad;
  std::vector<at::Tensor> grads;
  for (at::Tensor p : params) {
    if (!p.grad().defined()) p.mutable_grad() = at::zeros_like(p);
    grads.push_back(p.grad().reshape(-1));
  }
  at::Tensor flat = at::cat(grads);
  group.all_reduce(flat, ReduceOp::Sum);
  std::int64_t off = 0;
  for (const auto& p : params) {
    const std::int64_t n = p.numel();
    p.grad().view(-1).copy_(flat.slice(0, off, off + n));
    off += n;
  }
}

void ParallelismBase::set_optimized(std::vector<AdamWParam> params) {
  optimized_ = std::move(params);
  optimizer_.reset();
}

std::vector<at::Tensor> ParallelismBase::optimized_tensors() const {
  std::vector<at::Tensor> out;
  out.reserve(optimized_.size());
  for (const auto& p : optimized_) out.push_back(p.tensor);
  return out;
}

void ParallelismBase::configure_optimizer(const OptimizerConfig& config) {
  optimizer_ = std::make_unique<AdamW>(optimized_, config);
  pending_clips().set(this, at::Tensor());
}

void ParallelismBase::optimizer_step(double lr) {
  optimizer_step_unless(lr, at::Tensor());
}

namespace {

// The update with `owner`'s pending clip (taken: a skipped step drops it too); `lr` a host
// number or a device tensor (AdamW::step's two overloads).
template <class Lr>
void step_with_pending_clip(const ParallelismBase* owner, AdamW& adamw, const Lr& lr,
                            const at::Tensor& skip) {
  adamw.step(lr, pending_clips().take(owner), skip);
}

}  // namespace

void ParallelismBase::optimizer_step_unless(double lr, const at::Tensor& skip) {
  step_with_pending_clip(this, optimizer(), lr, skip);
}

void ParallelismBase::optimizer_step_unless_device_lr(const at::Tensor& lr,
                                                      const at::Tensor& skip) {
  step_with_pending_clip(this, optimizer(), lr, skip);
}

void ParallelismBase::clip_in_optimizer_step(const at::Tensor& total_norm, double max_norm) {
  pending_clips().set(this, max_norm > 0 ? clip_divisor(total_norm, max_norm) : at::Tensor());
}

void ParallelismBase::zero_grad() {
  for (auto& p : optimized_) {
    at::Tensor& t = p.tensor;
    if (reset_ == GradReset::Drop) {
      if (t.grad().defined()) t.mutable_grad() = at::Tensor();
    } else if (t.grad().defined()) {
      t.mutable_grad().zero_();
    } else {
      t.mutable_grad() = at::zeros_like(t);
    }
  }
}

std::int64_t ParallelismBase::state_bytes() const {
  std::int64_t n = 0;
  for (const auto& p : optimized_)
    n += 2 * p.tensor.numel() * static_cast<std::int64_t>(p.tensor.element_size());
  return n + (optimizer_ ? optimizer_->state_bytes() : 0);
}

at::Tensor ParallelismBase::global_norm(const std::vector<at::Tensor>& tensors, Communicator* group,
                                        const c10::Device& device) {
  at::Tensor sq = grad_norm_squared(tensors).to(device);
  if (group && group->size() > 1) {
    sq = sq.reshape({1}).contiguous();
    group->all_reduce(sq, ReduceOp::Sum);
    sq = sq.reshape({});
  }
  // A correctly rounded square root everywhere: CUDA's is, ATen's CPU kernel is not (about 1% of
  // float64 values differ from std::sqrt in the last bit). On the CPU reading the value costs no
  // synchronisation, so std::sqrt there.
  return sq.is_cpu() ? at::scalar_tensor(std::sqrt(sq.item<double>()), sq.options()) : sq.sqrt();
}

at::Tensor ParallelismBase::clip_by_global_norm(double max_norm, Communicator* shards) {
  const std::vector<at::Tensor> tensors = optimized_tensors();
  const at::Tensor norm = global_norm(
      tensors, shards, tensors.empty() ? c10::Device(at::kCPU) : tensors.front().device());
  clip_in_optimizer_step(norm, max_norm);
  return norm;
}

AdamW& ParallelismBase::optimizer() {
  if (!optimizer_)
    throw std::logic_error(plugin_ + ": the optimizer is used before configure_optimizer");
  return *optimizer_;
}

const AdamW& ParallelismBase::optimizer() const {
  if (!optimizer_)
    throw std::logic_error(plugin_ + ": the optimizer is used before configure_optimizer");
  return *optimizer_;
}

}  // namespace wanhost
