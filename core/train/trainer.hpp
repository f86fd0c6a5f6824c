// The training loop: stages in order, each a sequence of optimizer steps over micro batches, with
// exact resume, atomic checkpoints and metrics. Plugins provide the model, the parallel strategy,
// the data source, the collator and the scheduler; everything else happens here.
#pragma once

#include <optional>
#include <string>

#include "../config/run_config.hpp"
#include "../launch/launch_env.hpp"

namespace wanhost::core {

class PluginRegistry;

struct TrainOptions {
  std::optional<std::string> resume;     // "" = LATEST of the run folder; else a checkpoint folder
  std::optional<long> stop_after_steps;  // save and stop after this many global steps
};

// Returns the process exit code (0, or kExitPreempted after SIGTERM).
int train(const RunConfig& config, const TrainOptions& options, const LaunchEnv& env,
          PluginRegistry& registry);

}  // namespace wanhost::core
