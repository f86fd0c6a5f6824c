// `wanhost generate`: samples from a trained model (core/generate/generate.hpp,
// docs/generation.md).
#include <regex>

#include "../generate/generate.hpp"
#include "app.hpp"
#include "wanhost/errors.hpp"

namespace wanhost::core {

void add_generate_command(CLI::App& app, GlobalOptions& g) {
  auto o = std::make_shared<GenerateOptions>();
  auto size = std::make_shared<std::string>();
  auto shift = std::make_shared<double>(0.0);
  auto* cmd = app.add_subcommand(
      "generate", "Generate images (PNG) or videos (MP4) from a trained model, with the latents");
  cmd->add_option("--run", o->run,
                  "A run folder: its export/, else its newest checkpoint that verifies")
      ->type_name("DIR");
  cmd->add_option("--checkpoint", o->checkpoint, "A checkpoint folder (checkpoints/step-N)")
      ->type_name("DIR");
  cmd->add_option("--model", o->model, "A Diffusers transformer folder (config.json + safetensors)")
      ->type_name("DIR");
  cmd->add_option("--model-plugin", o->model_plugin,
                  "Model plugin for --model (default wan21_dit)");
  cmd->add_option("--pipeline", o->pipeline,
                  "Pipeline folder with vae/, text_encoder/, tokenizer/ (and transformer/ when no "
                  "model is given); default with --dataset: the one it was prepared with")
      ->type_name("DIR");
  cmd->add_option("--vae-plugin", o->vae_plugin, "video_autoencoder plugin (default wan_vae)");
  cmd->add_option("--text-plugin", o->text_plugin, "text_encoder plugin (default umt5)");
  cmd->add_option("--prompt", o->prompts, "A prompt (repeatable)");
  cmd->add_option("--prompts", o->prompts_file, "A file of prompts, one a line")
      ->check(CLI::ExistingFile);
  cmd->add_option("--dataset", o->dataset,
                  "A prepared latent dataset: generate from its first --count distinct captions, "
                  "each at its training sample's size, with that sample decoded beside it")
      ->type_name("DIR");
  cmd->add_flag("--from-run-data", o->from_run_data,
                "Like --dataset, with the run's own last-stage data source (e.g. synthetic)");
  cmd->add_option("--count", o->count, "Samples taken with --dataset / --from-run-data (4)");
  cmd->add_option("--negative-prompt", o->negative_prompt,
                  "Text of the unconditional branch of guidance (default: empty)");
  cmd->add_option("--steps", o->steps, "Sampling steps (50)");
  cmd->add_option("--guidance", o->guidance,
                  "Classifier-free guidance scale (5.0; <= 1 turns guidance off)");
  cmd->add_option("--shift", *shift,
                  "Time shift of the sampling schedule (default: the run's scheduler "
                  "sampling_shift, else the pipeline's scheduler flow_shift, else 3.0)");
  cmd->add_option("--sampler", o->sampler,
                  "unipc (UniPC multistep with flow sigmas, as the Wan pipelines) or euler (the "
                  "scheduler plugin's flow-matching Euler)")
      ->check(CLI::IsMember({"unipc", "euler"}));
  cmd->add_option("--size", *size, "WIDTHxHEIGHT in pixels (832x480)")->type_name("WxH");
  cmd->add_option("--frames", o->frames, "Frames, 4k+1 (81; 1 = an image)");
  cmd->add_option("--seed", o->seed, "Seed of the initial noise (0); sample i draws its own");
  cmd->add_option("--initial-noise", o->initial_noise,
                  "safetensors with 'latents' [N, C, F, H, W]: the initial noise of each sample")
      ->check(CLI::ExistingFile);
  cmd->add_option("--batch", o->batch, "Samples a forward pass (1)");
  cmd->add_option("--fps", o->fps, "Frame rate of the MP4 files (16)");
  cmd->add_option("--device", o->device, "auto, cpu or cuda")
      ->check(CLI::IsMember({"auto", "cpu", "cuda"}));
  cmd->add_option("--dtype", o->dtype, "auto (bf16 on CUDA, fp32 on CPU), float32, bfloat16")
      ->check(CLI::IsMember({"auto", "float32", "bfloat16"}));
  cmd->add_option("--out", o->out, "Output folder")->required()->type_name("DIR");
  cmd->callback([&g, o, size, shift, cmd] {
    GenerateOptions opts = *o;
    if (cmd->count("--shift")) opts.shift = *shift;
    opts.frames_given = cmd->count("--frames") > 0;
    opts.count_given = cmd->count("--count") > 0;
    if (cmd->count("--size")) {
      std::smatch m;
      if (!std::regex_match(*size, m, std::regex(R"((\d{1,6})x(\d{1,6}))")))
        throw UsageError("--size " + *size + ": expected WIDTHxHEIGHT, e.g. 832x480");
      opts.width = std::stoll(m[1]);
      opts.height = std::stoll(m[2]);
      opts.size_given = true;
    }
    auto reg = make_registry(g);
    generate(*reg, opts);
  });
}

}  // namespace wanhost::core
