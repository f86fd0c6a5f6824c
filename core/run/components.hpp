// The one place where plugin names and configs become components. `wanhost run`, `bench`,
// `model forward`, `prepare` and `validate` all build through a ComponentBuilder: it loads the
// plugin, checks that it provides the kind asked for, and calls its factory across the plugin
// boundary (core/plugin/plugin_call.hpp), so every error names the plugin.
//
// build_run() makes a whole training run's components from a typed RunConfig, in the order of the
// parallelism lifecycle (wanhost/parallelism.hpp): layout, setup, model (+ the first stage's
// weights), attach; and the scheduler, the collator and every stage's data source, so that a
// mistake in a later stage's data settings fails before step 1.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <c10/core/Device.h>

#include "../config/run_config.hpp"
#include "wanhost/communicator.hpp"
#include "wanhost/config.hpp"
#include "wanhost/plugin.hpp"

namespace wanhost::core {

class PluginRegistry;

class ComponentBuilder {
 public:
  explicit ComponentBuilder(PluginRegistry& registry) : registry_(registry) {}

  std::unique_ptr<Model> model(const PluginConfig& config, const ParallelContext& ctx);
  std::unique_ptr<Parallelism> parallelism(const PluginConfig& config);
  std::unique_ptr<Scheduler> scheduler(const PluginConfig& config);
  std::unique_ptr<DataSource> data_source(const PluginConfig& config);
  std::unique_ptr<Collator> collator(const PluginConfig& config);
  std::unique_ptr<VideoAutoencoder> video_autoencoder(const PluginConfig& config);
  std::unique_ptr<TextEncoder> text_encoder(const PluginConfig& config);

  // A plugin's config outside a run (bench, model forward, prepare): the plugin must provide
  // `kind`; `values` are completed with its manifest's defaults and validated, pointer
  // /<section>/<plugin>.
  PluginConfig standalone_config(const std::string& plugin, const std::string& kind,
                                 const std::string& section, Json values = Json::object());

  PluginRegistry& registry() { return registry_; }

 private:
  const PluginDescriptor& load(const std::string& plugin, PluginKind kind);
  PluginRegistry& registry_;
};

// Everything a training run is made of.
struct RunComponents {
  ParallelContext ctx;
  std::unique_ptr<Parallelism> parallelism;
  // The SDK minor the parallelism plugin was built against: what of the interface it implements
  // (optimizer_step_unless since 2.4).
  std::uint32_t parallelism_sdk_minor = 0;
  std::unique_ptr<Model> model;
  // The same for the model plugin (text_lengths on the host since 2.4, wanhost/batch.hpp).
  std::uint32_t model_sdk_minor = 0;
  std::unique_ptr<Scheduler> scheduler;
  std::unique_ptr<Collator> collator;
  std::vector<std::unique_ptr<DataSource>> data;  // one per stage
};

// Where this process runs a run: run.device ("auto" picks CUDA device `local_rank` when one is
// visible). Throws ConfigError at /run/device when CUDA is asked for and absent.
c10::Device run_device(const RunConfig& config, int local_rank);

// Builds a run's components for this process (rank `rank` of `world`, on `device`). Checks the
// parallel degrees against the world size and every stage's batch split before returning.
RunComponents build_run(const RunConfig& config, ComponentBuilder& builder,
                        const c10::Device& device, CommunicatorPtr world);

// The model of stage `stage` built with `ctx`, with the stage's init weights loaded when it has
// its own (a path). For the first stage and for later stages that start from new weights.
std::unique_ptr<Model> build_stage_model(const RunConfig& config, std::size_t stage,
                                         ComponentBuilder& builder, const ParallelContext& ctx);

// Builds the plugins of a run that are cheap to build, without training: the parallelism (its
// layout for `world_size` processes), the scheduler, the collator and every stage's data source,
// so that their own checks run (`wanhost validate`). The model is not built (that would allocate
// its weights). Returns one line per component.
std::vector<std::string> check_run_plugins(const RunConfig& config, ComponentBuilder& builder,
                                           int world_size);

}  // namespace wanhost::core
