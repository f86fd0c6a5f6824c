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

// A factory's result, which must be an object.
template <class T>
std::unique_ptr<T> made(std::unique_ptr<T> object, const std::string& plugin, const char* kind,
                        const char* call) {
  if (!object) throw PluginError(plugin, kind, call, "the factory returned no object");
  return object;
}

}  // namespace

const PluginDescriptor& ComponentBuilder::load(const std::string& plugin, PluginKind kind) {
  const PluginDescriptor& d = registry_.load(plugin);
  if (!(d.kinds & kind))
    throw PluginRefused("plugin '" + plugin + "' does not provide a " + kind_name(kind));
  return d;
}

std::unique_ptr<Model> ComponentBuilder::model(const PluginConfig& c, const ParallelContext& ctx) {
  const auto& d = load(c.plugin, kKindModel);
  return made(call_plugin(c.plugin, "model", "create_model",
                          [&] { return d.factories.create_model(c, ctx); }),
              c.plugin, "model", "create_model");
}

std::unique_ptr<Parallelism> ComponentBuilder::parallelism(const PluginConfig& c) {
  const auto& d = load(c.plugin, kKindParallelism);
  return made(call_plugin(c.plugin, "parallelism", "create_parallelism",
                          [&] { return d.factories.create_parallelism(c); }),
              c.plugin, "parallelism", "create_parallelism");
}

std::unique_ptr<Scheduler> ComponentBuilder::scheduler(const PluginConfig& c) {
  const auto& d = load(c.plugin, kKindScheduler);
  return made(call_plugin(c.plugin, "scheduler", "create_scheduler",
                          [&] { return d.factories.create_scheduler(c); }),
              c.plugin, "scheduler", "create_scheduler");
}

std::unique_ptr<DataSource> ComponentBuilder::data_source(const PluginConfig& c) {
  const auto& d = load(c.plugin, kKindDataSource);
  return made(call_plugin(c.plugin, "data_source", "create_data_source",
                          [&] { return d.factories.create_data_source(c); }),
              c.plugin, "data_source", "create_data_source");
}

std::unique_ptr<Collator> ComponentBuilder::collator(const PluginConfig& c) {
  const auto& d = load(c.plugin, kKindCollator);
  return made(call_plugin(c.plugin, "collator", "create_collator",
                          [&] { return d.factories.create_collator(c); }),
              c.plugin, "collator", "create_collator");
}

std::unique_ptr<VideoAutoencoder> ComponentBuilder::video_autoencoder(const PluginConfig& c) {
  const auto& d = load(c.plugin, kKindVideoAutoencoder);
  return made(call_plugin(c.plugin, "video_autoencoder", "create_video_autoencoder",
                          [&] { return d.factories.create_video_autoencoder(c); }),
              c.plugin, "video_autoencoder", "create_video_autoencoder");
}

std::unique_ptr<TextEncoder> ComponentBuilder::text_encoder(const PluginConfig& c) {
  const auto& d = load(c.plugin, kKindTextEncoder);
  return made(call_plugin(c.plugin, "text_encoder", "create_text_encoder",
                          [&] { return d.factories.create_text_encoder(c); }),
              c.plugin, "text_encoder", "create_text_encoder");
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
  const ParallelLayout layout = call_plugin(
      pc.plugin, "parallelism", "layout", [&] { return c.parallelism->layout(c.ctx.world_size); });
  if (layout.world() != c.ctx.world_size)
    throw ConfigError(pc.pointer,
                      "the parallel degrees " + layout_string(layout) + " multiply to " +
                          std::to_string(layout.world()) + ", but " +
                          std::to_string(c.ctx.world_size) + " processes were started",
                      pc.plugin);
  check_batch_split(config, layout.dp);
  call_plugin(pc.plugin, "parallelism", "setup", [&] { c.parallelism->setup(c.ctx); });

  c.scheduler = builder.scheduler(config.scheduler);
  c.collator = builder.collator(config.collator);
  for (const auto& stage : config.stages) {
    c.data.push_back(builder.data_source(stage.data));
    const std::int64_t n = call_plugin(stage.data.plugin, "data_source", "size",
                                       [&] { return c.data.back()->size(); });
    if (n <= 0)
      throw ConfigError(stage.pointer + "/data",
                        "the data source serves no samples: " + c.data.back()->describe());
  }

  c.model = build_stage_model(config, 0, builder, c.ctx);
  call_plugin(pc.plugin, "parallelism", "attach", [&] { c.parallelism->attach(*c.model); });
  return c;
}

std::vector<std::string> check_run_plugins(const RunConfig& config, ComponentBuilder& builder,
                                           int world_size) {
  std::vector<std::string> lines;
  const PluginConfig& pc = config.parallelism;
  auto parallelism = builder.parallelism(pc);
  const ParallelLayout layout = call_plugin(pc.plugin, "parallelism", "layout",
                                            [&] { return parallelism->layout(world_size); });
  if (layout.world() != world_size)
    throw ConfigError(pc.pointer,
                      "the parallel degrees " + layout_string(layout) + " multiply to " +
                          std::to_string(layout.world()) + ", not the " +
                          std::to_string(world_size) + " process(es) checked for",
                      pc.plugin);
  check_batch_split(config, layout.dp);
  lines.push_back("parallelism " + pc.plugin + ": " + layout_string(layout) + " for " +
                  std::to_string(world_size) + " process(es)");
  builder.scheduler(config.scheduler);
  lines.push_back("scheduler " + config.scheduler.plugin + ": built");
  builder.collator(config.collator);
  lines.push_back("collator " + config.collator.plugin + ": built");
  for (const auto& stage : config.stages) {
    auto data = builder.data_source(stage.data);
    const std::int64_t n =
        call_plugin(stage.data.plugin, "data_source", "size", [&] { return data->size(); });
    if (n <= 0)
      throw ConfigError(stage.pointer + "/data",
                        "the data source serves no samples: " + data->describe());
    lines.push_back("stage " + stage.name + " data: " + data->describe());
  }
  return lines;
}

}  // namespace wanhost::core
