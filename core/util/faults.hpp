// Test-only fault injection: the one interface through which the host's tests make a run crash,
// diverge or hang at a chosen place. Off unless the environment variable WANHOST_FAULT is set.
//
//   WANHOST_FAULT=<site>:<global step>   where to fault ("<site>:<N>+": step N and every later one)
//   WANHOST_FAULT_RANK=<r>               only on rank r (as given to set_fault_rank)
//
// Kill sites (SIGKILL, as a crash): step.before_optimizer, save.files_written,
// save.manifest_written, save.renamed. Other sites: step.nan_loss (the step's loss and gradients
// become NaN), step.nan_loss_only (its loss alone), step.hang (the rank stops responding before
// its gradient reduction).
#pragma once

#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>

namespace wanhost::core {

void set_fault_rank(int rank);
// True when WANHOST_FAULT is set at all: the run's steps stay eager (a step replayed as a CUDA
// graph runs none of the host code a fault lives in).
bool faults_configured();
// True when WANHOST_FAULT names `site` at global step `step` (on this rank).
bool fault_active(const char* site, long step);
// Kills the process when WANHOST_FAULT names `site` at `step`.
void fault_point(const char* site, long step);
// The faults of a training step after its backward pass: step.nan_loss poisons `loss_sum` and the
// gradients of `model`, step.nan_loss_only `loss_sum`; step.hang never returns.
void step_faults(long step, at::Tensor& loss_sum, torch::nn::Module& model);

}  // namespace wanhost::core
