// `wanhost bench`: the command line of the benchmark (core/bench/bench.hpp).
#include "../bench/bench.hpp"
#include "app.hpp"

namespace wanhost::core {

void add_bench_command(CLI::App& app, GlobalOptions& g) {
  auto o = std::make_shared<BenchOptions>();
  auto* b = app.add_subcommand(
      "bench", "Time forward+backward of N model blocks at given shapes (tokens/s, TFLOP/s, MFU)");
  b->add_option("--plugin", o->plugin, "Model plugin")->capture_default_str();
  b->add_option("--preset", o->preset, "Architecture preset of the plugin")->capture_default_str();
  b->add_option("--blocks", o->blocks, "Number of blocks")->capture_default_str();
  b->add_option("--batch", o->batch, "Samples per step")->capture_default_str();
  b->add_option("--video-tokens", o->video_tokens, "Video tokens per sample")
      ->capture_default_str();
  b->add_option("--grid", o->grids,
                "Token grid F,H,W of a sample (default: multiples of 15x26 when --video-tokens "
                "divides by 390, else 1 x H x W). Repeat it with --packed for a pack of mixed "
                "sizes: sample i takes grid i mod n (--video-tokens is then not used)");
  b->add_option("--text-tokens", o->text_tokens,
                "Text rows per sample (captions padded to this many, as the reference pads to 512)")
      ->capture_default_str();
  b->add_option("--caption-tokens", o->caption_tokens,
                "MIN:MAX: each sample's caption has a length drawn uniformly from MIN..MAX (fixed "
                "seed); the rest of its --text-tokens rows are padding (default: all rows real)");
  b->add_option("--dtype", o->dtype, "Compute dtype (default: bfloat16 on GPU, float32 on CPU)")
      ->check(CLI::IsMember({"float32", "bfloat16"}));
  b->add_flag("--fp32-master", o->fp32_master,
              "Keep parameters in fp32 (training's master weights) instead of the compute dtype");
  b->add_option("--device", o->device, "cpu or cuda (default: cuda when visible)")
      ->check(CLI::IsMember({"cpu", "cuda"}));
  b->add_flag("--packed", o->packed, "Pack the batch's samples into one sequence");
  b->add_option("--option", o->options,
                "Model plugin option key=value (value as JSON), e.g. fused_kernels=off");
  b->add_option("--warmup", o->warmup, "Untimed steps first")->capture_default_str();
  b->add_option("--iters", o->iters, "Timed steps (the median is reported)")->capture_default_str();
  b->add_flag("--cuda-graph", o->cuda_graph,
              "Capture the step once as a CUDA graph and time its replays (GPU only)");
  b->add_flag("--no-peak", o->skip_peak, "Skip the matrix-product peak (no MFU)");
  b->add_flag("--kernels", o->kernels,
              "Time each fused operator (forward + backward) against its ATen reference at the "
              "preset's widths and --batch x --video-tokens rows, instead of whole blocks");
  b->add_option(
       "--packed-attention", o->packed_attention,
       "Packed attention kernel on CUDA: auto, flash or loop (run.kernels.packed_attention)")
      ->check(CLI::IsMember({"auto", "flash", "loop"}))
      ->capture_default_str();
  b->add_option("--lt-epilogues", o->lt_epilogues,
                "cuBLASLt epilogues of the feed-forward: off, all, or a comma list of gelu, "
                "dgelu, bgrad (run.kernels.lt_epilogues)")
      ->capture_default_str();
  b->add_option("--weight-casts", o->weight_casts,
                "With --fp32-master: cast the weights to the compute dtype where each is used "
                "(per_use) or all in one multi-tensor pass a step (per_step; "
                "run.kernels.weight_casts)")
      ->check(CLI::IsMember({"per_use", "per_step"}))
      ->capture_default_str();
  b->add_option("--fp8", o->fp8,
                "FP8 products for the blocks' large linear layers: off, tensorwise or delayed "
                "(run.fp8, with 16 steps of history); the weights are quantised once per timed "
                "step, as once per optimizer step")
      ->check(CLI::IsMember({"off", "tensorwise", "delayed"}))
      ->capture_default_str();
  b->add_option("--fp8-gelu", o->fp8_gelu,
                "With --fp8 on: the feed-forward's GELU as ATen's kernel between the two "
                "FP8 layers (separate) or applied inside their FP8 cast kernels (fused; "
                "run.kernels.fp8_gelu)")
      ->check(CLI::IsMember({"separate", "fused"}))
      ->capture_default_str();
  b->add_option("--fp8-fast-accumulation", o->fp8_fast_accumulation,
                "With --fp8 on: the FP8 products with fast accumulation: forward, "
                "input_gradients (and the input-gradient products) or all "
                "(run.fp8_fast_accumulation)")
      ->check(CLI::IsMember({"forward", "input_gradients", "all"}))
      ->capture_default_str();
  b->add_option("--fp8-input-gradients", o->fp8_input_gradients,
                "With --fp8 on: the input gradients of layers that share an input added by "
                "separate passes (separate) or inside their products (summed; "
                "run.kernels.fp8_input_gradients)")
      ->check(CLI::IsMember({"separate", "summed"}))
      ->capture_default_str();
  b->add_flag("--json", o->json, "Print one JSON object");
  b->add_option("--profile", o->profile,
                "Profile a few steps after the timed ones: write a Chrome trace to this file and "
                "print the device time per kernel class and the longest kernels");
  b->add_option("--profile-top", o->profile_top, "Kernels listed by --profile")
      ->capture_default_str();
  b->callback([&g, o] { run_bench(*make_registry(g), *o); });
}

}  // namespace wanhost::core
