// Parallelism plugins: how one optimizer step of a model is spread over processes. A plugin decides
// the process layout and groups, may swap the model's operators (linear layers, attention) before
// the model is built, owns the parameters' placement (replicated, sharded) and the optimizer state,
// and runs the forward/backward passes of a step's micro batches (so that pipeline schedules fit).
// The host owns everything else: data order, noise, the loss, LR schedule, logging, checkpoints.
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

struct StepLoss {
  double sum = 0;  // sum of per-sample losses over this rank's micro batches
  std::int64_t count = 0;
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
  // Finishes gradient reduction, returns the global gradient norm before clipping (non-finite if
  // any gradient is) and clips to `max_norm` when max_norm > 0. Identical on all ranks.
  virtual double reduce_and_clip_gradients(double max_norm) = 0;
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
};

}  // namespace wanhost
