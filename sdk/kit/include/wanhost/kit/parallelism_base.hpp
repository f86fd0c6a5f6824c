// The optimizer half of a parallelism plugin, shared by the built-in ones: AdamW over the tensors
// this rank updates (whole parameters when replicated, flat shards when sharded), zero_grad,
// gradient-norm clipping over the whole model, the optimizer's checkpoint state and the memory
// figure. A plugin derives from ParallelismBase, names its tensors in attach() with
// set_optimized(), and implements the rest of the lifecycle (wanhost/parallelism.hpp).
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "wanhost/communicator.hpp"
#include "wanhost/kit/optim.hpp"
#include "wanhost/parallelism.hpp"

namespace wanhost {

// The forward and backward of each micro batch through the model's own forward (under autocast
// on a GPU), their losses added up: a step of a plugin whose every rank runs whole models.
StepLoss forward_backward_each(Model& model, const std::vector<NoisedBatch>& micro_batches,
                               const LossFn& loss, const ParallelContext& ctx);

// Sums the gradients of `params` over `group` in one flat buffer (one collective instead of one
// a tensor); a missing gradient counts as zeros and is allocated.
void all_reduce_gradients(const std::vector<at::Tensor>& params, Communicator& group);

class ParallelismBase : public Parallelism {
 public:
  // How zero_grad() resets the gradients of the optimized tensors.
  enum class GradReset {
    Drop,         // undefined: autograd allocates them again in the next backward
    ZeroInPlace,  // kept and zeroed (allocated zeroed the first time): gradients a plugin
                  // writes into itself (reduce-scatter into shards) need their buffers
  };

  // `plugin`: the plugin's name, for messages.
  ParallelismBase(std::string plugin, GradReset reset)
      : plugin_(std::move(plugin)), reset_(reset) {}
  ~ParallelismBase() override;  // out of line since kit 1.3 (drops a clip still waiting)

  // AdamW over the tensors of set_optimized(), fresh state.
  void configure_optimizer(const OptimizerConfig& config) override;
  void optimizer_step(double lr) override;
  // The AdamW update with the pending clip, skipped on the device when `skip` is nonzero (the
  // fused kernel's found_inf): no host synchronisation. Since kit 1.4 (SDK 2.4); optimizer_step
  // is this with nothing to skip, so a plugin that adds work after the update overrides this one.
  void optimizer_step_unless(double lr, const at::Tensor& skip) override;
  // The same with the learning rate read on the device (AdamW::step's tensor overload). Since kit
  // 1.6 (SDK 2.6); a plugin that adds work after the update overrides both.
  void optimizer_step_unless_device_lr(const at::Tensor& lr, const at::Tensor& skip) override;
  void zero_grad() override;
  // 2 x the optimized tensors' bytes (values and gradients) + the optimizer state.
  std::int64_t state_bytes() const override;

 protected:
  // The tensors this rank updates, with their weight-decay decision; drops the optimizer (the
  // host configures a new one next: a stage with new weights starts with fresh state).
  void set_optimized(std::vector<AdamWParam> params);
  const std::vector<AdamWParam>& optimized() const { return optimized_; }
  std::vector<at::Tensor> optimized_tensors() const;

  // The global gradient norm of the optimized tensors (float64 scalar on their device), their
  // squared norms summed over `shards` when each rank holds a part of the model (null:
  // every rank holds all of it); then clips them to max_norm (0: off) in the next
  // optimizer_step (clip_in_optimizer_step). No host synchronisation.
  at::Tensor clip_by_global_norm(double max_norm, Communicator* shards = nullptr);
  // The L2 norm of `tensors`' gradients (float64 scalar on `device`), their squared norms summed
  // over `group` (null or of size 1: none); no host synchronisation on a GPU. For a plugin that
  // counts each gradient once itself (kit 1.3).
  static at::Tensor global_norm(const std::vector<at::Tensor>& tensors, Communicator* group,
                                const c10::Device& device);
  // Clips the optimized tensors' gradients to max_norm (0: off), given their global norm, inside
  // the next optimizer_step(): AdamW divides each gradient as it reads it (clip_divisor), which
  // saves a pass over every gradient; until then the gradients are unclipped. Since kit 1.3 (a
  // plugin that computes its own norm calls this instead of clip_gradients).
  void clip_in_optimizer_step(const at::Tensor& total_norm, double max_norm);

  // The optimizer (throws std::logic_error naming the plugin before configure_optimizer).
  AdamW& optimizer();
  const AdamW& optimizer() const;
  bool has_optimizer() const { return optimizer_ != nullptr; }
  const std::string& plugin_name() const { return plugin_; }

 private:
  std::string plugin_;
  GradReset reset_;
  std::vector<AdamWParam> optimized_;
  std::unique_ptr<AdamW> optimizer_;
};

}  // namespace wanhost
