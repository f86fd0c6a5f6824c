#include "lr_schedule.hpp"

#include <algorithm>
#include <cmath>

namespace wanhost::core {

double learning_rate(const StageConfig& stage, long n) {
  const double lr = stage.optimizer.lr;
  const LrScheduleConfig& s = stage.lr_schedule;
  if (s.type == "constant") return lr;
  const long warmup = s.warmup_steps;
  const double f = s.warmup_start_factor;
  if (n < warmup)
    return lr * (f + (1.0 - f) * static_cast<double>(n) / static_cast<double>(warmup));
  if (s.type == "linear_warmup_constant") return lr;
  const long total = stage.steps;
  const double min_lr = lr * s.min_lr_factor;
  const double span = static_cast<double>(std::max(1L, total - warmup));
  const double progress = std::clamp(static_cast<double>(n - warmup) / span, 0.0, 1.0);
  return min_lr + (lr - min_lr) * 0.5 * (1.0 + std::cos(M_PI * progress));
}

}  // namespace wanhost::core
