// `wanhost model forward`: one forward pass of a model plugin on tensors from a safetensors file,
// so anyone can check a converted checkpoint against the reference implementation.
#include <ATen/ATen.h>

#include <filesystem>

#include "../run/components.hpp"
#include "../run/resolve.hpp"
#include "app.hpp"
#include "wanhost/errors.hpp"
#include "wanhost/kit/layers.hpp"
#include "wanhost/kit/safetensors.hpp"
#include "wanhost/log.hpp"

namespace fs = std::filesystem;

namespace wanhost::core {
namespace {

struct ForwardOptions {
  std::string plugin, weights, inputs, output, dtype = "float32", device = "cpu";
  std::string entry = "forward", tokenizer;
  std::vector<std::string> prompts;
  std::vector<std::string> options;  // --option key=value for the plugin
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

// The plugin's config: its defaults, `base` values, then --option flags; validated.
PluginConfig plugin_config(const PluginManifest& m, const std::string& section,
                           const ForwardOptions& o, Json base = Json::object()) {
  apply_plugin_options(base, o.options);
  return standalone_plugin_config(m, section, std::move(base));
}

c10::Device device_of(const ForwardOptions& o) {
  if (o.device == "cuda" && !at::hasCUDA())
    throw UsageError("--device cuda: no CUDA device is visible");
  return c10::Device(o.device);
}

at::ScalarType dtype_of(const ForwardOptions& o) {
  return o.dtype == "bfloat16" ? at::kBFloat16 : at::kFloat;
}

void save_outputs(const ForwardOptions& o, const PluginManifest& m,
                  const std::map<std::string, at::Tensor>& out) {
  std::map<std::string, at::Tensor> cpu;
  for (const auto& [k, v] : out) cpu[k] = v.to(at::kCPU).contiguous();
  safetensors::save(o.output, cpu,
                    {{"plugin", m.name},
                     {"plugin_version", m.version},
                     {"entry", o.entry},
                     {"dtype", o.dtype},
                     {"device", o.device}});
  for (const auto& [k, v] : cpu)
    logger()->info("wrote {} {} ({}) to {}", k, c10::str(v.sizes()), o.dtype, o.output);
}

// Runs a plugin on tensors read from --inputs: the plugins reject inputs they cannot take (shape,
// dtype) with std::invalid_argument, which is the user's input, so a usage error naming the file.
template <typename F>
at::Tensor on_inputs(const ForwardOptions& o, F&& f) {
  try {
    return f();
  } catch (const std::invalid_argument& e) {
    throw UsageError("--inputs " + o.inputs + ": " + e.what());
  }
}

// --entry encode|decode of a video autoencoder: video [B,3,F,H,W] <-> latents.
void autoencoder_entry(PluginRegistry& reg, const PluginManifest& m, const ForwardOptions& o) {
  if (o.entry != "encode" && o.entry != "decode")
    throw UsageError("--entry " + o.entry + ": plugin '" + m.name +
                     "' is a video autoencoder; use --entry encode or --entry decode");
  if (o.inputs.empty()) throw UsageError("--inputs is required for --entry " + o.entry);
  auto vae = ComponentBuilder(reg).video_autoencoder(plugin_config(m, "vae", o));
  vae->load_weights(o.weights);
  vae->to(device_of(o), dtype_of(o));
  vae->module().eval();
  const auto in = safetensors::File::open(o.inputs).load_all();
  const bool enc = o.entry == "encode";
  const at::Tensor x =
      required_input(in, enc ? "video" : "latents", o.inputs).to(device_of(o), dtype_of(o));
  at::InferenceMode guard;
  at::Tensor y = on_inputs(o, [&] { return enc ? vae->encode(x) : vae->decode(x); });
  save_outputs(o, m, {{enc ? "latents" : "video", y}});
}

// A text encoder: token ids from --inputs (input_ids, attention_mask) -> last_hidden_state, or
// --prompt texts -> the pipeline's padded embeddings (hidden) and lengths.
void text_encoder_entry(PluginRegistry& reg, const PluginManifest& m, const ForwardOptions& o) {
  if (o.entry != "forward" && o.entry != "encode")
    throw UsageError("--entry " + o.entry + ": plugin '" + m.name +
                     "' is a text encoder; use --entry forward (--inputs with input_ids and "
                     "attention_mask) or --entry encode (--prompt ...)");
  auto te = ComponentBuilder(reg).text_encoder(plugin_config(m, "text_encoder", o));
  const std::string tokenizer = o.tokenizer.empty()
                                    ? (fs::path(o.weights).parent_path() / "tokenizer").string()
                                    : o.tokenizer;
  te->load(o.weights, tokenizer);
  te->to(device_of(o), dtype_of(o));
  te->module().eval();
  at::InferenceMode guard;
  if (o.entry == "encode") {
    if (o.prompts.empty()) throw UsageError("--entry encode needs at least one --prompt");
    TextEmbeddings e = te->encode(o.prompts);
    save_outputs(o, m, {{"hidden", e.hidden}, {"lengths", e.lengths}});
    return;
  }
  if (o.inputs.empty()) throw UsageError("--inputs is required for --entry forward");
  const auto in = safetensors::File::open(o.inputs).load_all();
  const at::Tensor ids = required_input(in, "input_ids", o.inputs).to(device_of(o), at::kLong);
  const at::Tensor mask =
      required_input(in, "attention_mask", o.inputs).to(device_of(o), at::kLong);
  save_outputs(o, m, {{"last_hidden_state", on_inputs(o, [&] { return te->forward(ids, mask); })}});
}

void forward(const GlobalOptions& g, const ForwardOptions& o) {
  auto reg = make_registry(g);
  const PluginManifest& any = reg->require(o.plugin, "", "");
  if (any.provides("video_autoencoder")) return autoencoder_entry(*reg, any, o);
  if (any.provides("text_encoder")) return text_encoder_entry(*reg, any, o);
  if (o.entry != "forward")
    throw UsageError("--entry " + o.entry + ": a model plugin has only --entry forward");
  if (o.inputs.empty()) throw UsageError("--inputs is required");
  const PluginManifest& m = reg->require(o.plugin, "model", "");
  for (const char* key : {"config_file", "weights"})
    if (!m.options.contains(key))
      throw UsageError("--plugin " + o.plugin + ": the plugin has no '" + std::string(key) +
                       "' option, which `model forward` needs to load a checkpoint folder");
  const fs::path dir(o.weights);
  if (!fs::is_directory(dir) || !fs::exists(dir / "config.json"))
    throw UsageError("--weights " + o.weights +
                     ": expected a folder with config.json and the safetensors weights");

  Json base = {{"config_file", (dir / "config.json").string()}, {"weights", dir.string()}};
  // Exactly the given text rows, like the reference forward (no extra padding for training).
  if (m.options.contains("text_len")) base["text_len"] = 0;
  const PluginConfig cfg = plugin_config(m, "model", o, std::move(base));

  ParallelContext ctx = single_process_context(device_of(o));
  ctx.param_dtype = ctx.compute_dtype = o.dtype == "bfloat16" ? at::kBFloat16 : at::kFloat;
  std::unique_ptr<Model> model = ComponentBuilder(*reg).model(cfg, ctx);
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
    sample = on_inputs(o, [&] {
      return model->forward(batch, timestep.numel() == 1 ? timestep.expand({b}) : timestep);
    });
  }
  save_outputs(o, m, {{"sample", sample}});
}

}  // namespace

void add_model_command(CLI::App& app, GlobalOptions& g) {
  auto* model = app.add_subcommand("model", "Run model plugins directly");
  model->require_subcommand(1);
  auto o = std::make_shared<ForwardOptions>();
  auto* fwd =
      model->add_subcommand("forward", "One forward pass: inputs and output as safetensors");
  fwd->add_option("--plugin", o->plugin,
                  "Model, video autoencoder or text encoder plugin (wan21_dit, wan_vae, umt5)")
      ->required();
  fwd->add_option("--weights", o->weights,
                  "Checkpoint folder (config.json + safetensors, Diffusers/Transformers layout)")
      ->required();
  fwd->add_option("--entry", o->entry,
                  "What to run: forward (DiT; text encoder on token ids), encode/decode (VAE), "
                  "encode (text encoder on --prompt)")
      ->check(CLI::IsMember({"forward", "encode", "decode"}));
  fwd->add_option("--inputs", o->inputs,
                  "safetensors with the inputs: DiT hidden_states [B,C,F,H,W], timestep [B], "
                  "encoder_hidden_states [B,L,D]; VAE video [B,3,F,H,W] or latents; text encoder "
                  "input_ids and attention_mask [B,L]")
      ->check(CLI::ExistingFile);
  fwd->add_option("--prompt", o->prompts, "Text encoder --entry encode: a text (repeatable)");
  fwd->add_option("--tokenizer", o->tokenizer,
                  "Text encoder: tokenizer folder (default: ../tokenizer beside --weights)");
  fwd->add_option("--output", o->output, "Where to write the output tensors")->required();
  fwd->add_option("--option", o->options,
                  "A plugin option, key=value (value as JSON; repeatable), e.g. max_length=226 "
                  "for umt5 (see `wanhost plugins inspect PLUGIN`)");
  fwd->add_option("--dtype", o->dtype, "Compute dtype")
      ->check(CLI::IsMember({"float32", "bfloat16"}));
  fwd->add_option("--device", o->device, "Device")->check(CLI::IsMember({"cpu", "cuda"}));
  fwd->callback([&g, o] { forward(g, *o); });
}

}  // namespace wanhost::core
