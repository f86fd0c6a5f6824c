// The run configuration as typed values. A run manifest is resolved and validated once
// (core/run/resolve.hpp: defaults, --plugins, --set, schemas); parse_run_config() then reads the
// result into these structs, so the rest of the host never looks settings up by string, and checks
// the rules that span several settings (every stage's, before step 1).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "wanhost/config.hpp"
#include "wanhost/kit/fp8.hpp"
#include "wanhost/kit/kernel_options.hpp"
#include "wanhost/parallelism.hpp"

namespace wanhost::core {

struct RunSettings {
  std::string name, out;
  std::uint64_t seed = 0;
  bool shared_randomness = false;  // randomness: shared_across_data_parallel (else per_sample)
  std::string device;              // auto | cpu | cuda
  std::string precision;           // auto | fp32 | bf16 (compute)
  std::string master_weights;      // fp32 | bf16
  Fp8Recipe fp8 = Fp8Recipe::off;  // run.fp8
  int fp8_amax_history = 16;       // run.fp8_amax_history (delayed)
  Fp8FastAccumulation fp8_fast_accumulation = Fp8FastAccumulation::forward;
  bool skip_nonfinite = false;  // nonfinite: skip (else abort)
  long nonfinite_max_consecutive = 10;
  int threads = 0;
  bool prefetch = true;
  bool cuda_graphs = false;  // run.cuda_graphs
  double comm_init_timeout_s = 0, comm_timeout_s = 0;
  double peak_tflops = 0;
  KernelOptions kernels;  // run.kernels
};

struct LrScheduleConfig {
  std::string type;  // constant | linear_warmup_constant | cosine
  long warmup_steps = 0;
  double warmup_start_factor = 0, min_lr_factor = 0;
};

struct StageConfig {
  std::size_t index = 0;
  std::string name;
  std::string pointer;  // "/stages/N", for messages
  long steps = 0, global_batch = 0, micro_batch = 0;
  std::int64_t text_rows = 0;
  std::string init;              // "previous", "random", or a weights path
  bool carry_optimizer = false;  // optimizer_state "carry" (else "fresh")
  OptimizerConfig optimizer;
  double clip_grad_norm = 0;
  LrScheduleConfig lr_schedule;
  PluginConfig data;  // the data plugin's config with this stage's overrides merged in

  // The stage starts from weights of its own (a path), not the previous stage's or random ones.
  bool loads_weights() const { return init != "previous" && init != "random"; }
};

struct CheckpointSettings {
  long every_steps = 0;
  int keep_last = 0;
  bool at_stage_end = true, export_diffusers = true;
};

struct LoggingSettings {
  long every_steps = 1;
  bool tensorboard = true;
  std::string progress;  // auto | on | off
  long profile_step = 0;
};

struct RunConfig {
  Json resolved;  // what config.resolved.json holds
  RunSettings run;
  PluginConfig model, parallelism, scheduler, collator, data;
  std::vector<StageConfig> stages;
  CheckpointSettings checkpoint;
  LoggingSettings logging;

  long total_steps() const;
  // The plugin configs of every section, in plugin_kinds() order (model, parallelism, ...).
  std::vector<const PluginConfig*> plugin_configs() const;
};

// Reads a resolved, validated manifest. Checks what no single schema entry can: the profiled
// step lies inside the run. Throws ConfigError naming the pointer.
RunConfig parse_run_config(const Json& resolved);

// Every stage's batch arithmetic for `dp` data-parallel ranks: the global batch splits into dp
// equal shares of whole micro batches. Throws ConfigError at /stages/N/global_batch.
void check_batch_split(const RunConfig& config, int dp);

// Deep merge: objects merge key by key, anything else (arrays too) is replaced by `over`.
void merge_into(Json& base, const Json& over);

// A selected plugin's name and config for a run-manifest section ("model", "data", ...).
PluginConfig section_config(const Json& resolved, const std::string& section);
// The effective config of a stage's data plugin (top-level config + the stage's overrides).
PluginConfig stage_data_config(const Json& resolved, std::size_t stage);

}  // namespace wanhost::core
