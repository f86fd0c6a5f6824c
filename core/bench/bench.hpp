// `wanhost bench`: the block benchmark (forward + backward of N blocks of a model plugin at given
// shapes) and, with --kernels, each fused operator against its ATen reference. The command line
// lives in core/cli/cmd_bench.cpp.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace wanhost::core {

class PluginRegistry;

struct BenchOptions {
  std::string plugin = "wan21_dit", preset = "wan2.1-t2v-1.3b", dtype, device;
  std::vector<std::string> grids;  // --grid F,H,W (repeatable with --packed)
  std::string profile;             // Chrome trace path; empty = no profile
  std::size_t profile_top = 25;
  std::int64_t blocks = 4, batch = 1, video_tokens = 390, text_tokens = 512;
  std::string
      caption_tokens;  // --caption-tokens MIN:MAX: real text rows per sample (of text_tokens)
  int warmup = 3, iters = 10;
  bool packed = false, json = false, fp32_master = false, skip_peak = false, cuda_graph = false;
  bool kernels = false;  // each fused operator against its ATen reference instead of blocks
  std::vector<std::string> options;                               // key=json for the model plugin
  std::string packed_attention = "auto", lt_epilogues = "dgelu";  // KernelOptions
  std::string fp8 = "off";                                        // run.fp8
  std::string weight_casts = "per_use";           // run.kernels.weight_casts (with --fp32-master)
  std::string fp8_gelu = "separate";              // run.kernels.fp8_gelu (with --fp8 tensorwise)
  std::string fp8_fast_accumulation = "forward";  // run.fp8_fast_accumulation (with --fp8)
  std::string fp8_input_gradients = "summed";     // run.kernels.fp8_input_gradients (with --fp8)
};

// Runs the benchmark and prints its table (or one JSON object with json).
void run_bench(PluginRegistry& registry, BenchOptions options);

}  // namespace wanhost::core
