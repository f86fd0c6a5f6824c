// What a resumed run may change. A checkpoint keeps the resolved config it was trained with; the
// resumed run's config is compared with it, setting by setting (JSON pointers), before anything is
// loaded or written:
//  - refused (ConfigError, exit 2): the settings that would silently give another trajectory than
//    the one the checkpoint is on: run.seed and run.randomness (every timestep and noise draw),
//    run.master_weights (the optimizer state's dtype) and the current stage's global_batch (the
//    data position is counted in samples of it);
//  - named in one warning: every other change that can alter the numbers (learning rate, schedule,
//    steps, model options, data, scheduler, collator, parallelism, ...);
//  - quiet: settings that cannot (run folder and name, logging, checkpointing, threads, prefetch,
//    timeouts, the MFU peak, the choice among equivalent kernels).
// docs/training.md ("Stopping and resuming") lists the same.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

#include "wanhost/config.hpp"

namespace wanhost::core {

struct ResumeChanges {
  // One "POINTER: OLD -> NEW" line per changed setting (values as JSON; "(absent)").
  std::vector<std::string> refused, altering;
  std::string first_refused;  // the pointer of refused.front()
};

// `saved`: the checkpoint's config.resolved.json; `now`: this run's; `stage`: the stage the
// checkpoint is in.
ResumeChanges compare_resume_settings(const Json& saved, const Json& now, std::size_t stage);

}  // namespace wanhost::core
