// The optimizer every parallelism plugin uses, so that all paths apply the same update and store
// the same state: AdamW with decoupled weight decay (torch.optim.AdamW semantics), plus
// global-norm gradient clipping. State tensors are plain named tensors, saved in checkpoints.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include <ATen/core/Tensor.h>

#include "wanhost/parallelism.hpp"

namespace wanhost {

// A parameter with its weight-decay decision made by the caller (SDK 1.1): for optimizers over
// shards, whose 1-D flat tensors no longer show the parameter's rank.
struct AdamWParam {
  std::string name;
  at::Tensor tensor;
  bool decay = true;
};

class AdamW {
 public:
  // `params`: (name, tensor) pairs; the tensors are updated in place from their .grad().
  // Parameters whose name ends in "bias" or that have one dimension get no weight decay when
  // `decay_1d` is false (the Megatron reference); the AutoModel reference decays everything.
  AdamW(std::vector<std::pair<std::string, at::Tensor>> params, const OptimizerConfig& config,
        bool decay_1d = true);
  AdamW(std::vector<AdamWParam> params, const OptimizerConfig& config);  // SDK 1.1
  // The rule of the first constructor: false for biases and 1-D parameters unless `decay_1d`.
  static bool decays(const std::string& name, std::int64_t dims, bool decay_1d);

  void step(double lr);
  // The update as if every gradient had first been divided by `grad_divisor` (a scalar tensor on
  // the parameters' device, e.g. clip_divisor()'s): LibTorch's fused kernel divides each gradient
  // as it reads it (its grad_scale), so clipping takes no pass over the gradients of its own. The
  // gradients' values after the call are unspecified (zero_grad resets them). Since kit 1.3.
  void step(double lr, const at::Tensor& grad_divisor);
  // The update of step(lr, grad_divisor) (an undefined divisor: none) unless `skip`, a 0-dim
  // tensor on the parameters' device, is nonzero: then parameters, moments and the step count stay
  // as they are. Decided on the device (the fused kernel's found_inf), so that nothing is read on
  // the host; the per-tensor path reads `skip` (one synchronisation on a GPU). Since kit 1.4.
  void step(double lr, const at::Tensor& grad_divisor, const at::Tensor& skip);
  // The same with the learning rate as a 0-dim float32 tensor on the parameters' device, read by
  // the fused kernel where it runs (a step captured in a CUDA graph takes each replay's value).
  // On a GPU the fused kernel rounds a host learning rate to float32 too, so this is the update
  // of step(double) bit for bit there; the per-tensor path reads the tensor on the host. Since
  // kit 1.6 (SDK 2.6, Parallelism::optimizer_step_unless_device_lr).
  void step(const at::Tensor& lr, const at::Tensor& grad_divisor, const at::Tensor& skip);
  // Updates made so far, skipped steps not counted (out of line since kit 1.4: it may read the
  // device-side count, a synchronisation on a GPU).
  std::int64_t steps() const;
  ~AdamW();  // out of line since kit 1.4 (drops the device-side count)
  AdamW(const AdamW&) = delete;
  AdamW& operator=(const AdamW&) = delete;

  // "<param>.exp_avg", "<param>.exp_avg_sq" and "__step__" (int64 scalar).
  std::map<std::string, at::Tensor> state() const;
  // Throws std::runtime_error listing missing or mis-shaped entries.
  void load_state(const std::map<std::string, at::Tensor>& state);
  std::int64_t state_bytes() const;

 private:
  struct Slot {
    std::string name;
    at::Tensor param, exp_avg, exp_avg_sq;
    bool decay;
  };
  // step()'s body: `device_lr` (defined) or else `lr` is the learning rate.
  void update(double lr, const at::Tensor& device_lr, const at::Tensor& grad_divisor,
              const at::Tensor& skip);
  std::vector<Slot> slots_;
  OptimizerConfig config_;
  // The update count a fresh or loaded optimizer starts from. From the first step with gradients
  // on, the count lives where the parameters are (kit 1.5), in a kit-internal table keyed by the
  // object (a member would change the layout of a 1.x class), advanced there by each step, so that
  // a step captured in a CUDA graph counts on every replay.
  std::int64_t step_ = 0;
};

// Squared L2 norm (float64 scalar tensor on the parameters' device) of the given gradients;
// undefined gradients count as zero. Parallel plugins sum it over their shards.
at::Tensor grad_norm_squared(const std::vector<at::Tensor>& params);
// What clip_gradients multiplies by, as a divisor for AdamW::step: max(1, (total_norm + 1e-6) /
// max_norm), 1 where total_norm is not finite or max_norm <= 0 (off); a float scalar on
// total_norm's device, never read on the host. Since kit 1.3.
at::Tensor clip_divisor(const at::Tensor& total_norm, double max_norm);
// Scales every gradient by min(1, max_norm / (total_norm + 1e-6)) (torch.nn.utils semantics);
// `total_norm` is a scalar tensor (on any device), never read on the host; max_norm <= 0: off.
void clip_gradients(const std::vector<at::Tensor>& params, double max_norm,
                    const at::Tensor& total_norm);

}  // namespace wanhost
