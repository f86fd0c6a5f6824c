// `wanhost generate`: images and videos from a trained model, as the Diffusers WanPipeline makes
// them (diffusers/pipelines/wan/pipeline_wan.py): text embeddings, initial noise, a flow-matching
// ODE solver (samplers.hpp) with classifier-free guidance, then the VAE decoder. Docs:
// docs/generation.md.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace wanhost::core {

class PluginRegistry;

struct GenerateOptions {
  // The model: one of a run folder (its export/, else its newest verified checkpoint), one
  // checkpoint folder, or a Diffusers transformer folder; else <pipeline>/transformer.
  std::string run, checkpoint, model;
  std::string model_plugin = "wan21_dit";
  // VAE, text encoder and tokenizer (vae/, text_encoder/, tokenizer/).
  std::string pipeline;
  std::string vae_plugin, text_plugin;  // empty: the dataset's, else wan_vae / umt5
  // What to generate: texts, a file of texts (one a line), or training samples (their stored
  // text embeddings, sizes and latents) of a prepared dataset or of the run's own last stage.
  std::vector<std::string> prompts;
  std::string prompts_file, dataset;
  bool from_run_data = false;
  std::int64_t count = 4;  // samples taken from a dataset (distinct captions)
  std::string negative_prompt;
  std::int64_t steps = 50;
  double guidance = 5.0;  // classifier-free guidance scale; <= 1: none (as Diffusers)
  std::optional<double> shift;
  std::string sampler = "unipc";
  std::int64_t width = 832, height = 480, frames = 81;  // Diffusers' WanPipeline defaults
  bool size_given = false, frames_given = false, count_given = false;
  std::uint64_t seed = 0;
  std::string initial_noise;
  std::int64_t batch = 1;
  std::string device = "auto", dtype = "auto";
  int fps = 16;
  std::string out;
};

// Throws UsageError (flags), ConfigError (the run's configuration) or std::runtime_error.
void generate(PluginRegistry& registry, const GenerateOptions& options);

}  // namespace wanhost::core
