// Learning-rate schedules of a stage (stages/N/lr_schedule, stages/N/optimizer/lr).
#pragma once

#include "../config/run_config.hpp"

namespace wanhost::core {

// The LR for the optimizer step taken after `steps_done` steps of the stage:
//  constant:               lr
//  linear_warmup_constant: lr * (f + (1 - f) * n / W) for n < W, then lr   (f =
//                          warmup_start_factor)
//  cosine:                 warm-up as above, then min + (lr - min) * (1 + cos(pi * (n - W) /
//                          (T - W))) / 2 with min = lr * min_lr_factor and T the stage's steps.
// The Megatron reference warms up from 0 (f = 0); the AutoModel one from 0.1 * lr (f = 0.1).
double learning_rate(const StageConfig& stage, long steps_done);

}  // namespace wanhost::core
