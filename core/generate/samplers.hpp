// The ODE solvers of `wanhost generate` for flow-matching models (the model predicts the velocity
// v = noise - x0; x_sigma = (1 - sigma) x0 + sigma noise).
//
//  - euler: the scheduler plugin's own sampling schedule and step (flow_matching: Diffusers'
//    FlowMatchEulerDiscreteScheduler with a fixed shift), so a third-party scheduler plugin
//    generates with its own schedule.
//  - unipc: Diffusers' UniPCMultistepScheduler as the Wan 2.1 pipelines configure it
//    (diffusers/schedulers/scheduling_unipc_multistep.py with use_flow_sigmas=True,
//    prediction_type="flow_prediction", solver_order=2, solver_type="bh2", predict_x0=True,
//    lower_order_final=True, final_sigmas_type="zero"; Zhao et al., "UniPC: A Unified
//    Predictor-Corrector Framework for Fast Sampling of Diffusion Models", 2023). Its timesteps are
//    integers (sigma * num_train_timesteps truncated), as the Diffusers scheduler hands them to the
//    transformer.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "wanhost/scheduler.hpp"

namespace wanhost::core {

class Sampler {
 public:
  virtual ~Sampler() = default;
  std::int64_t steps() const { return static_cast<std::int64_t>(timesteps_.size()); }
  // What the model is given at step i (model scale) and the noise level there.
  double timestep(std::int64_t i) const { return timesteps_.at(static_cast<std::size_t>(i)); }
  double sigma(std::int64_t i) const { return sigmas_.at(static_cast<std::size_t>(i)); }
  // The sample after step i, from the sample x at step i and the model's (guided) velocity v.
  // Steps must be taken in order 0, 1, ..., steps() - 1 (multistep solvers keep history).
  virtual at::Tensor step(std::int64_t i, const at::Tensor& x, const at::Tensor& v) = 0;

 protected:
  std::vector<double> sigmas_;     // steps() + 1 values, the last one 0
  std::vector<double> timesteps_;  // steps() values
};

std::unique_ptr<Sampler> make_euler_sampler(const Scheduler& scheduler, std::int64_t steps);
std::unique_ptr<Sampler> make_unipc_sampler(double shift, std::int64_t num_train_timesteps,
                                            std::int64_t steps);

// The UniPC schedule alone (for tests): steps + 1 sigmas (float32 values, as Diffusers keeps them)
// and the integer timesteps.
void unipc_flow_schedule(double shift, std::int64_t num_train_timesteps, std::int64_t steps,
                         std::vector<double>& sigmas, std::vector<double>& timesteps);

}  // namespace wanhost::core
