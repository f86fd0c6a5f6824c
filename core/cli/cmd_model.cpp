// `wanhost model forward`: one forward pass of a model plugin on tensors from a safetensors file,
// so anyone can check a converted checkpoint against the reference implementation.
#include <ATen/ATen.h>

#include <filesystem>

#include "../config/schema.hpp"
#include "app.hpp"
#include "wanhost/errors.hpp"
#include "wanhost/log.hpp"
#include "wanhost/safetensors.hpp"

namespace fs = std::filesystem;

namespace wanhost::core {
namespace {

struct ForwardOptions {
  std::string plugin, weights, inputs, output, dtype = "float32", device = "cpu";
};

at::Tensor required_input(const std::map<std::string, at::Tensor>& in, const std::string& name,
                          const std::string& file) {
  auto it = in.find(name);
  if (it == in.end()) {
    std::string have;
    for (const auto& [k, v] : in) have += (have.empty() ? "" : ", ") + k;
    throw UsageError("--inputs " + file + ": no tensor named '" + name + "' (it has: " + have +
                     ")");
  }
  return it->second;
}

void forward(const GlobalOptions& g, const ForwardOptions& o) {
  auto reg = make_registry(g);
  const PluginManifest& m = reg->require(o.plugin, "model", "");
  for (const char* key : {"config_file", "weights"})
    if (!m.options.contains(key))
      throw UsageError("--plugin " + o.plugin + ": the plugin has no '" + std::string(key) +
                       "' option, which `model forward` needs to load a checkpoint folder");
  const fs::path dir(o.weights);
  if (!fs::is_directory(dir) || !fs::exists(dir / "config.json"))
    throw UsageError("--weights " + o.weights +
                     ": expected a folder with config.json and the safetensors weights");

  PluginConfig cfg;
  cfg.plugin = m.name;
  cfg.pointer = "/model/" + m.name;
  cfg.values = {{"config_file", (dir / "config.json").string()}, {"weights", dir.string()}};
  // Exactly the given text rows, like the reference forward (no extra padding for training).
  if (m.options.contains("text_len")) cfg.values["text_len"] = 0;
  validate_config(cfg.values, object_spec(m.options), cfg.pointer, m.name);

  if (o.device == "cuda" && !at::hasCUDA())
    throw UsageError("--device cuda: no CUDA device is visible");
  ParallelContext ctx = ParallelContext::single(c10::Device(o.device));
  ctx.param_dtype = ctx.compute_dtype = o.dtype == "bfloat16" ? at::kBFloat16 : at::kFloat;
  const PluginDescriptor& d = reg->load(m.name);
  std::unique_ptr<Model> model = d.factories.create_model(cfg, ctx);
  model->module().to(ctx.device, ctx.param_dtype);
  model->module().eval();

  const auto in = safetensors::File::open(o.inputs).load_all();
  const auto as = [&](const at::Tensor& t) { return t.to(ctx.device, ctx.param_dtype); };
  Batch batch;
  batch.latents = as(required_input(in, "hidden_states", o.inputs));
  batch.text = as(required_input(in, "encoder_hidden_states", o.inputs));
  const at::Tensor timestep =
      required_input(in, "timestep", o.inputs).to(ctx.device, at::kFloat).reshape({-1});
  const std::int64_t b = batch.latents.size(0);
  batch.text_lengths =
      at::full({b}, batch.text.size(1), at::TensorOptions().dtype(at::kLong).device(ctx.device));
  for (std::int64_t i = 0; i < b; ++i) batch.sample_keys.push_back(i);
  batch.captions.resize(static_cast<std::size_t>(b));

  at::Tensor sample;
  {
    at::InferenceMode guard;
    sample = model->forward(batch, timestep.numel() == 1 ? timestep.expand({b}) : timestep);
  }
  safetensors::save(o.output, {{"sample", sample.to(at::kCPU).contiguous()}},
                    {{"plugin", m.name},
                     {"plugin_version", m.version},
                     {"dtype", o.dtype},
                     {"device", o.device}});
  logger()->info("wrote sample {} ({}) to {}", c10::str(sample.sizes()), o.dtype, o.output);
}

}  // namespace

void add_model_command(CLI::App& app, GlobalOptions& g) {
  auto* model = app.add_subcommand("model", "Run model plugins directly");
  model->require_subcommand(1);
  auto o = std::make_shared<ForwardOptions>();
  auto* fwd =
      model->add_subcommand("forward", "One forward pass: inputs and output as safetensors");
  fwd->add_option("--plugin", o->plugin, "Model plugin, e.g. wan21_dit")->required();
  fwd->add_option("--weights", o->weights,
                  "Checkpoint folder (config.json + safetensors, Diffusers layout)")
      ->required();
  fwd->add_option(
         "--inputs", o->inputs,
         "safetensors with hidden_states [B,C,F,H,W], timestep [B], encoder_hidden_states [B,L,D]")
      ->required()
      ->check(CLI::ExistingFile);
  fwd->add_option("--output", o->output, "Where to write the output tensor 'sample'")->required();
  fwd->add_option("--dtype", o->dtype, "Compute dtype")
      ->check(CLI::IsMember({"float32", "bfloat16"}));
  fwd->add_option("--device", o->device, "Device")->check(CLI::IsMember({"cpu", "cuda"}));
  fwd->callback([&g, o] { forward(g, *o); });
}

}  // namespace wanhost::core
