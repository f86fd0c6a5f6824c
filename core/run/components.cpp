#include "components.hpp"

#include <filesystem>

#include <ATen/Context.h>

#include "../plugin/plugin_call.hpp"
#include "../plugin/registry.hpp"
#include "resolve.hpp"
#include "wanhost/errors.hpp"
#include "wanhost/kit/layers.hpp"
#include "wanhost/log.hpp"

namespace fs = std::filesystem;

namespace wanhost::core {
namespace {

const char* kind_name(PluginKind kind) {
  for (const auto& k : plugin_kinds())
    if (k.bit == kind) return k.name;
  return "?";
}

std::string layout_string(const ParallelLayout& l) {
  return "dp=" + std::to_string(l.dp) + " tp=" + std::to_string(l.tp) +
         " pp=" + std::to_string(l.pp) + " cp=" + std::to_string(l.cp);
}

// Calls one factory of plugin `c.plugin` (descriptor `d`) across the plugin boundary; its
// result must be an object.
template <class Make>
auto create(const PluginDescriptor& d, const PluginConfig& c, PluginKind kind, const char* call,
            Make make) {
  const std::string k = kind_name(kind);
  auto object = call_plugin(c.plugin, k, call, [&] { return make(d.factories); });
  if (!object) throw PluginError(c.plugin, k, call, "the factory returned no object");
  return object;
}

// The parallelism plugin's layout for `world_size` processes, checked against it, and every
// stage's batch split over its data-parallel degree.
ParallelLayout checked_layout(const RunConfig& config, Parallelism& parallelism, int world_size) {
  const PluginConfig& pc = config.parallelism;
  const ParallelLayout layout = call_plugin(pc.plugin, "parallelism", "layout",
                                            [&] { return parallelism.layout(world_size); });
  if (layout.world() != world_size)
    throw ConfigError(pc.pointer,
                      "the parallel degrees " + layout_string(layout) + " multiply to " +
                          std::to_string(layout.world()) + ", not the " +
                          std::to_string(world_size) + " process(es) of this run",
                      pc.plugin);
  check_batch_split(config, layout.dp);
  return layout;
}

// Every stage's data source, each checked to serve samples.
std::vector<std::unique_ptr<DataSource>> stage_data_sources(const RunConfig& config,
                                                            ComponentBuilder& builder) {
  std::vector<std::unique_ptr<DataSource>> out;
  for (const auto& stage : config.stages) {
    out.push_back(builder.data_source(stage.data));
    DataSource& data = *out.back();
    const std::int64_t n =
        call_plugin(stage.data.plugin, "data_source", "size", [&] { return data.size(); });
    if (n <= 0)
      throw ConfigError(stage.pointer + "/data",
                        "the data source serves no samples: " + data.describe());
  }
  return out;
}

}  // namespace

const PluginDescriptor& ComponentBuilder::load(const std::string& plugin, PluginKind kind) {
  const PluginDescriptor& d = registry_.load(plugin);
  if (!(d.kinds & kind))
    throw PluginRefused("plugin '" + plugin + "' does not provide a " + kind_name(kind));
  return d;
}

std::unique_ptr<Model> ComponentBuilder::model(const PluginConfig& c, const ParallelContext& ctx) {
  return create(load(c.plugin, kKindModel), c, kKindModel, "create_model",
                [&](const PluginFactories& f) { return f.create_model(c, ctx); });
}

std::unique_ptr<Parallelism> ComponentBuilder::parallelism(const PluginConfig& c) {
  return create(load(c.plugin, kKindParallelism), c, kKindParallelism, "create_parallelism",
                [&](const PluginFactories& f) { return f.create_parallelism(c); });
}

std::unique_ptr<Scheduler> ComponentBuilder::scheduler(const PluginConfig& c) {
  return create(load(c.plugin, kKindScheduler), c, kKindScheduler, "create_scheduler",
                [&](const PluginFactories& f) { return f.create_scheduler(c); });
}

std::unique_ptr<DataSource> ComponentBuilder::data_source(const PluginConfig& c) {
  return create(load(c.plugin, kKindDataSource), c, kKindDataSource, "create_data_source",
                [&](const PluginFactories& f) { return f.create_data_source(c); });
}

std::unique_ptr<Collator> ComponentBuilder::collator(const PluginConfig& c) {
  return create(load(c.plugin, kKindCollator), c, kKindCollator, "create_collator",
                [&](const PluginFactories& f) { return f.create_collator(c); });
}

std::unique_ptr<VideoAutoencoder> ComponentBuilder::video_autoencoder(const PluginConfig& c) {
  return create(load(c.plugin, kKindVideoAutoencoder), c, kKindVideoAutoencoder,
                "create_video_autoencoder",
                [&](const PluginFactories& f) { return f.create_video_autoencoder(c); });
}

std::unique_ptr<TextEncoder> ComponentBuilder::text_encoder(const PluginConfig& c) {
  return create(load(c.plugin, kKindTextEncoder), c, kKindTextEncoder, "create_text_encoder",
                [&](const PluginFactories& f) { return f.create_text_encoder(c); });
}

PluginConfig ComponentBuilder::standalone_config(const std::string& plugin, const std::string& kind,
                                                 const std::string& section, Json values) {
  const PluginManifest& m = registry_.require(plugin, kind, "");
  return standalone_plugin_config(m, section, std::move(values));
}

c10::Device run_device(const RunConfig& config, int local_rank) {
  const std::string& wanted = config.run.device;
  if (wanted == "cpu") return c10::Device(c10::kCPU);
  const bool cuda = at::hasCUDA();
  if (wanted == "cuda" && !cuda)
    throw ConfigError("/run/device",
                      "\"cuda\" requested but no CUDA device is visible to this process");
  if (!cuda) return c10::Device(c10::kCPU);
  return c10::Device(c10::kCUDA, static_cast<c10::DeviceIndex>(local_rank));
}

std::unique_ptr<Model> build_stage_model(const RunConfig& config, std::size_t stage,
                                         ComponentBuilder& builder, const ParallelContext& ctx) {
  auto model = builder.model(config.model, ctx);
  const StageConfig& s = config.stages.at(stage);
  if (s.loads_weights()) {
    if (!fs::exists(s.init))
      throw ConfigError(s.pointer + "/init", "no weights at '" + s.init + "'");
    logger()->info("stage {}: loading weights from {}", s.name, s.init);
    call_plugin(config.model.plugin, "model", "load_weights", [&] { model->load_weights(s.init); });
  }
  return model;
}

RunComponents build_run(const RunConfig& config, ComponentBuilder& builder,
                        const c10::Device& device, CommunicatorPtr world) {
  RunComponents c;
  // This process's place and dtypes and the kit's default operators; the parallelism plugin
  // fills in the groups and may swap the operators in setup().
  c.ctx = single_process_context(device);
  c.ctx.world_rank = world->rank();
  c.ctx.world_size = world->size();
  c.ctx.world = world;
  c.ctx.param_dtype = config.run.master_weights == "bf16" ? at::kBFloat16 : at::kFloat;
  if (config.run.precision != "auto")
    c.ctx.compute_dtype = config.run.precision == "bf16" ? at::kBFloat16 : at::kFloat;

  const PluginConfig& pc = config.parallelism;
  c.parallelism = builder.parallelism(pc);
  c.parallelism_sdk_minor = builder.registry().load(pc.plugin).tag.sdk_minor;
  checked_layout(config, *c.parallelism, c.ctx.world_size);
  call_plugin(pc.plugin, "parallelism", "setup", [&] { c.parallelism->setup(c.ctx); });
  keep_key_bias_attention_consistent(c.ctx);
  c.scheduler = builder.scheduler(config.scheduler);
  c.collator = builder.collator(config.collator);
  c.data = stage_data_sources(config, builder);

  c.model = build_stage_model(config, 0, builder, c.ctx);
  c.model_sdk_minor = builder.registry().load(config.model.plugin).tag.sdk_minor;
  call_plugin(pc.plugin, "parallelism", "attach", [&] { c.parallelism->attach(*c.model); });
  return c;
}

std::vector<std::string> check_run_plugins(const RunConfig& config, ComponentBuilder& builder,
                                           int world_size) {
  const ParallelLayout layout =
      checked_layout(config, *builder.parallelism(config.parallelism), world_size);
  std::vector<std::string> lines = {"parallelism " + config.parallelism.plugin + ": " +
                                    layout_string(layout) + " for " + std::to_string(world_size) +
                                    " process(es)"};
  builder.scheduler(config.scheduler);
  lines.push_back("scheduler " + config.scheduler.plugin + ": built");
  builder.collator(config.collator);
  lines.push_back("collator " + config.collator.plugin + ": built");
  const auto data = stage_data_sources(config, builder);
  for (std::size_t k = 0; k < data.size(); ++k)
    lines.push_back("stage " + config.stages[k].name + " data: " + data[k]->describe());
  return lines;
}

}  // namespace wanhost::core
