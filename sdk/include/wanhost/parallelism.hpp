// Parallelism plugins: how one optimizer step of a model is spread over processes. A plugin decides
// the process layout and groups, may swap the model's operators (linear layers, attention) before
// the model is built, owns the parameters' placement (replicated, sharded) and the optimizer state,
// and runs the forward/backward passes of a step's micro batches (so that pipeline schedules fit).
// The host owns everything else: data order, noise, the loss, LR schedule, logging, checkpoints.
//
// Lifecycle: the host calls, in this order and always on its training thread,
//
//   layout(world_size)                  once, before anything else (degrees checked against it)
//   setup(ctx)                          once: groups, operators
//   -- the host builds the model with ctx (and loads a stage's init weights) --
//   attach(model)                       the model now belongs to the plugin's placement
//   configure_optimizer(config)         fresh AdamW state for the attached parameters
//   load_state(model, dir)              only when resuming, after configure_optimizer
//   per optimizer step:
//     zero_grad()
//     forward_backward(model, micro_batches, loss)
//     reduce_and_clip_gradients(max_norm)
//     optimizer_step(lr)                skipped for a step whose loss or norm is not finite
//                                       (SDK 2.4+: optimizer_step_unless, decided on the device;
//                                       2.6+ in captured steps: optimizer_step_unless_device_lr)
//   save_state(model, dir)              between steps, every rank, into a folder shared by all
//   at a stage with new weights: attach(new model), then configure_optimizer(...) again
//   at a stage with init "previous" and optimizer_state "fresh": configure_optimizer(...) again
//   full_weights(model)                 at the end (export), every rank
//
// state_bytes() may be called between any two of these. The loss function given to
// forward_backward may be called from it on the training thread only. The kit's ParallelismBase
// (wanhost/kit/parallelism_base.hpp) implements the optimizer half of this for plugins whose
// ranks each hold a set of named tensors to update.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "wanhost/model.hpp"
#include "wanhost/parallel.hpp"
#include "wanhost/scheduler.hpp"

namespace wanhost {

struct OptimizerConfig {
  double lr = 5e-5;  // initial; the host sets the scheduled value before every step
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0.0;
};

// Gives the loss for one micro batch's prediction; the plugin calls backward on LossTerms::loss.
using LossFn = std::function<LossTerms(const at::Tensor& prediction, const NoisedBatch& batch)>;

// The loss numbers of one rank's micro batches, on the device (no host synchronisation).
struct StepLoss {
  at::Tensor sum;  // float64 scalar: sum of per-sample losses over this rank's micro batches
  std::int64_t count = 0;

  // Adds one micro batch's terms (sum starts as the first micro batch's).
  void add(const LossTerms& terms) {
    const at::Tensor s = terms.sum.detach();
    sum = sum.defined() ? sum + s : s;
    count += terms.count;
  }
};

class Parallelism {
 public:
  virtual ~Parallelism() = default;

  // Parallel degrees for `world_size` processes; throws ConfigError when they do not multiply to
  // it.
  virtual ParallelLayout layout(int world_size) const = 0;
  // Completes `ctx` before the model is built: sub-group communicators (ctx.world is set), and the
  // operators (ctx.make_linear, ctx.attention) when the plugin swaps them. The data-parallel rank
  // of this process is ctx.dp->rank().
  virtual void setup(ParallelContext& ctx) = 0;
  // Takes over a built model with its initial weights (identical on all ranks): moves it to the
  // device, shards it, etc.
  virtual void attach(Model& model) = 0;
  // (Re)creates the optimizer state (AdamW) for the parameters this rank holds.
  virtual void configure_optimizer(const OptimizerConfig& config) = 0;

  // Forward and backward of this rank's micro batches of one step; gradients accumulate.
  virtual StepLoss forward_backward(Model& model, const std::vector<NoisedBatch>& micro_batches,
                                    const LossFn& loss) = 0;
  // Finishes gradient reduction and returns the global gradient norm before clipping (a float64
  // scalar on the device; non-finite if any gradient is), identical on all ranks; clips to
  // `max_norm` when max_norm > 0 (torch.nn.utils.clip_grad_norm_ semantics), without reading
  // the norm on the host. The clip must take effect by the end of the next optimizer_step (the
  // kit's ParallelismBase applies it inside the AdamW update, see clip_in_optimizer_step).
  virtual at::Tensor reduce_and_clip_gradients(double max_norm) = 0;
  virtual void optimizer_step(double lr) = 0;
  virtual void zero_grad() = 0;

  // The complete model weights in the model's native names (for export); every rank gets them.
  virtual std::map<std::string, at::Tensor> full_weights(Model& model) = 0;
  // This rank's share of a checkpoint (weights + optimizer state), written as files into `dir`
  // (which is shared by all ranks; names must include the rank). Loading may happen at another
  // data-parallel size where the plugin supports resharding; otherwise it throws with a message.
  virtual void save_state(Model& model, const std::string& dir) = 0;
  virtual void load_state(Model& model, const std::string& dir) = 0;
  // Bytes of parameters + gradients + optimizer state held by this rank (for memory reports).
  virtual std::int64_t state_bytes() const = 0;

  // SDK 2.4: optimizer_step(lr) unless `skip` (a 0-dim tensor on the device, nonzero when the
  // step's loss or gradient norm is not finite), decided on the device: the host launches the
  // update before it reads the step's numbers, so the device does not wait for the host between
  // the backward pass and the update. A skipped step leaves weights and optimizer state (its step
  // count included) as they were. This default reads `skip` on the host (one synchronisation);
  // the kit's ParallelismBase hands it to the fused AdamW. The host calls it only on plugins
  // built against SDK 2.4 or newer (older ones get the read, then optimizer_step).
  virtual void optimizer_step_unless(double lr, const at::Tensor& skip) {
    if (!skip.defined() || skip.item<double>() == 0) optimizer_step(lr);
  }

  // SDK 2.5 (run.cuda_graphs, docs/performance.md "Whole-step CUDA graphs"): true when a step,
  // zero_grad() through optimizer_step_unless(), may be captured as a CUDA graph on one GPU and
  // replayed for later steps of the same shapes without any of these calls being made again on the
  // host: no host synchronisation, nothing read on the host, no host state that changes from step
  // to step, every kernel and collective on the current stream (or on streams forked from it and
  // joined back to it). The default says no: the host then runs every step eagerly. The host asks
  // only plugins built against SDK 2.5 or newer.
  virtual bool steps_capturable() const { return false; }

  // SDK 2.6 (run.cuda_graphs): optimizer_step_unless(lr, skip) with the learning rate as a 0-dim
  // float32 tensor on the device, read where the update runs, so that a step captured as a CUDA
  // graph takes each replay's learning rate (the steps of a warm-up or a decay are replayed too,
  // instead of each being a graph of its own). LibTorch's fused AdamW rounds its learning rate to
  // float32 on a GPU whichever way it is given, so there this is optimizer_step_unless(lr, skip)
  // bit for bit. The host calls it only on plugins built against SDK 2.6 or newer whose
  // steps_capturable() is true. This default reads `lr` on the host (a synchronisation, which a
  // capture refuses); the kit's ParallelismBase hands the tensor to the fused AdamW. A plugin that
  // overrides optimizer_step_unless to add work after the update overrides this one too.
  virtual void optimizer_step_unless_device_lr(const at::Tensor& lr, const at::Tensor& skip) {
    optimizer_step_unless(lr.item<double>(), skip);
  }
};

}  // namespace wanhost
