#include "run_config.hpp"

#include <limits>
#include <stdexcept>

namespace wanhost::core {
namespace {

StageConfig parse_stage(const Json& resolved, std::size_t k) {
  const Json& s = resolved.at("stages").at(k);
  StageConfig st;
  st.index = k;
  st.name = s.at("name");
  st.pointer = "/stages/" + std::to_string(k);
  st.steps = s.at("steps");
  st.global_batch = s.at("global_batch");
  st.micro_batch = s.at("micro_batch");
  st.text_rows = s.at("text_rows");
  st.init = s.at("init");
  st.carry_optimizer = s.at("optimizer_state") == "carry";
  const Json& o = s.at("optimizer");
  st.optimizer.lr = o.at("lr");
  st.optimizer.beta1 = o.at("beta1");
  st.optimizer.beta2 = o.at("beta2");
  st.optimizer.eps = o.at("eps");
  st.optimizer.weight_decay = o.at("weight_decay");
  st.clip_grad_norm = o.at("clip_grad_norm");
  const Json& l = s.at("lr_schedule");
  st.lr_schedule.type = l.at("type");
  st.lr_schedule.warmup_steps = l.at("warmup_steps");
  st.lr_schedule.warmup_start_factor = l.at("warmup_start_factor");
  st.lr_schedule.min_lr_factor = l.at("min_lr_factor");
  st.data = stage_data_config(resolved, k);
  return st;
}

}  // namespace

long RunConfig::total_steps() const {
  long n = 0;
  for (const auto& s : stages) n += s.steps;
  return n;
}

std::vector<const PluginConfig*> RunConfig::plugin_configs() const {
  return {&model, &parallelism, &data, &collator, &scheduler};
}

RunConfig parse_run_config(const Json& resolved) {
  RunConfig c;
  c.resolved = resolved;
  const Json& r = resolved.at("run");
  c.run.name = r.at("name");
  c.run.out = r.at("out");
  if (c.run.out.empty())
    throw ConfigError("/run/out", "the run folder is empty: give --out DIR or run.out");
  c.run.seed = r.at("seed");
  c.run.shared_randomness = r.at("randomness") == "shared_across_data_parallel";
  c.run.device = r.at("device");
  c.run.precision = r.at("precision");
  c.run.master_weights = r.at("master_weights");
  c.run.fp8 = parse_fp8_recipe(r.at("fp8"));  // the schema allows only the recipe names
  c.run.fp8_amax_history = r.at("fp8_amax_history");
  // (the schema allows only the names)
  c.run.fp8_fast_accumulation = parse_fp8_fast_accumulation(r.at("fp8_fast_accumulation"));
  c.run.skip_nonfinite = r.at("nonfinite") == "skip";
  c.run.nonfinite_max_consecutive = r.at("nonfinite_max_consecutive");
  c.run.threads = r.at("threads");
  c.run.prefetch = r.at("prefetch");
  c.run.cuda_graphs = r.at("cuda_graphs");
  c.run.comm_init_timeout_s = r.at("comm_init_timeout_s");
  c.run.comm_timeout_s = r.at("comm_timeout_s");
  c.run.peak_tflops = r.at("peak_tflops");
  const Json& k = r.at("kernels");
  try {
    c.run.kernels =
        parse_kernel_options(k.at("packed_attention"), k.at("adamw"), k.at("lt_epilogues"),
                             k.at("weight_casts"), k.at("fp8_gelu"), k.at("fp8_input_gradients"));
  } catch (const std::invalid_argument& e) {
    throw ConfigError("/run/kernels/lt_epilogues", e.what());
  }
  c.model = section_config(resolved, "model");
  c.parallelism = section_config(resolved, "parallelism");
  c.scheduler = section_config(resolved, "scheduler");
  c.collator = section_config(resolved, "collator");
  c.data = section_config(resolved, "data");
  long total = 0;
  for (std::size_t k = 0; k < resolved.at("stages").size(); ++k) {
    c.stages.push_back(parse_stage(resolved, k));
    const long steps = c.stages.back().steps;
    // A sample's stream position is stage_step x global_batch + j: it must fit in 64 bits.
    long samples = 0;
    if (__builtin_mul_overflow(steps, c.stages.back().global_batch, &samples))
      throw ConfigError(c.stages.back().pointer + "/steps",
                        std::to_string(steps) + " steps of global_batch " +
                            std::to_string(c.stages.back().global_batch) +
                            " are more samples than a 64-bit count holds");
    if (steps > std::numeric_limits<long>::max() - total)
      throw ConfigError(c.stages.back().pointer + "/steps",
                        "the stages' steps add up to more than " +
                            std::to_string(std::numeric_limits<long>::max()));
    total += steps;
  }
  const Json& ck = resolved.at("checkpoint");
  c.checkpoint.every_steps = ck.at("every_steps");
  c.checkpoint.keep_last = ck.at("keep_last");
  c.checkpoint.at_stage_end = ck.at("at_stage_end");
  c.checkpoint.export_diffusers = ck.at("export_diffusers");
  const Json& lg = resolved.at("logging");
  c.logging.every_steps = lg.at("every_steps");
  c.logging.tensorboard = lg.at("tensorboard");
  c.logging.progress = lg.at("progress");
  c.logging.profile_step = lg.at("profile_step");
  if (c.logging.profile_step > total)
    throw ConfigError("/logging/profile_step",
                      "global step " + std::to_string(c.logging.profile_step) +
                          " is past the run's last step (the stages' steps add up to " +
                          std::to_string(total) + ")");
  return c;
}

void check_batch_split(const RunConfig& config, int dp) {
  for (const auto& s : config.stages)
    if (s.global_batch % dp != 0 || (s.global_batch / dp) % s.micro_batch != 0)
      throw ConfigError(s.pointer + "/global_batch",
                        "global_batch " + std::to_string(s.global_batch) + " must split into " +
                            std::to_string(dp) +
                            " data-parallel rank(s) x whole micro batches of " +
                            std::to_string(s.micro_batch));
}

void merge_into(Json& base, const Json& over) {
  if (!base.is_object() || !over.is_object()) {
    base = over;
    return;
  }
  for (auto it = over.begin(); it != over.end(); ++it) {
    if (base.contains(it.key()))
      merge_into(base[it.key()], *it);
    else
      base[it.key()] = *it;
  }
}

PluginConfig section_config(const Json& resolved, const std::string& section) {
  PluginConfig c;
  c.plugin = resolved.at(section).at("plugin").get<std::string>();
  c.pointer = "/" + section + "/" + c.plugin;
  c.values = resolved.at(section).value(c.plugin, Json::object());
  return c;
}

PluginConfig stage_data_config(const Json& resolved, std::size_t stage) {
  PluginConfig c = section_config(resolved, "data");
  const Json& over = resolved.at("stages").at(stage).at("data");
  if (auto it = over.find(c.plugin); it != over.end() && it->is_object()) {
    merge_into(c.values, *it);
    const std::string here = "/stages/" + std::to_string(stage) + "/data/" + c.plugin;
    for (auto key = it->begin(); key != it->end(); ++key) c.key_pointers[key.key()] = here;
  }
  return c;
}

}  // namespace wanhost::core
