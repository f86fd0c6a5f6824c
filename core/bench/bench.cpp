// `wanhost bench`: forward + backward of N blocks of a model plugin at given shapes, timed with
// CUDA events (std::chrono on CPU), median of --iters runs after --warmup runs. Counts model FLOPs
// the way the plain-PyTorch peer benchmark does (docs/performance.md): Model::forward_flops of the
// blocks (matrix products and attention), backward = 2x forward. MFU is against a bf16 matrix
// product peak measured here (8192^3 at::mm, as the peer does).
#include "bench.hpp"

#include <ATen/ATen.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <functional>
#include <iostream>
#include <random>

#include "../plugin/registry.hpp"
#include "../run/components.hpp"
#include "../run/resolve.hpp"
#include "../util/device_timing.hpp"
#include "../util/kernel_profile.hpp"
#include "../util/step_graph.hpp"
#include "bench_kernels.hpp"
#include "wanhost/errors.hpp"
#include "wanhost/kit/compute_weights.hpp"
#include "wanhost/kit/kernel_options.hpp"
#include "wanhost/kit/layers.hpp"
#include "wanhost/log.hpp"

namespace wanhost::core {
namespace {

using Grid = std::array<std::int64_t, 3>;  // token grid (frames, height, width) of a sample

std::int64_t count(const Grid& g) {
  return g[0] * g[1] * g[2];
}

// The samples' token grids: --grid F,H,W (several with --packed: sample i takes grid i mod n), or
// one from --video-tokens.
std::vector<Grid> token_grids(const BenchOptions& o) {
  std::vector<Grid> out;
  for (const auto& text : o.grids) {
    Grid g{};
    if (std::sscanf(text.c_str(), "%ld,%ld,%ld", &g[0], &g[1], &g[2]) != 3 || g[0] <= 0 ||
        g[1] <= 0 || g[2] <= 0)
      throw UsageError("--grid " + text + ": expected three positive integers F,H,W");
    if (o.grids.size() == 1 && count(g) != o.video_tokens)
      throw UsageError("--grid " + text + " holds " + std::to_string(count(g)) +
                       " tokens but --video-tokens is " + std::to_string(o.video_tokens));
    out.push_back(g);
  }
  if (out.size() > 1 && !o.packed)
    throw UsageError("--grid given " + std::to_string(out.size()) +
                     " times: samples of different sizes need --packed");
  if (out.size() > static_cast<std::size_t>(o.batch))
    throw UsageError("--grid given " + std::to_string(out.size()) + " times for --batch " +
                     std::to_string(o.batch) + ": some grids would have no sample");
  if (!out.empty()) return out;
  const auto s = o.video_tokens;
  if (s % 390 == 0) return {{s / 390, 15, 26}};  // 240x416 frames (Wan's 30x52 latents)
  std::int64_t h = 1;
  for (std::int64_t d = 1; d * d <= s; ++d)
    if (s % d == 0) h = d;
  return {{1, h, s / h}};
}

// Real caption rows of each sample: --caption-tokens MIN:MAX drawn from a fixed seed (the same
// lengths in every run), else all --text-tokens rows.
std::vector<std::int64_t> caption_lengths(const BenchOptions& o) {
  std::vector<std::int64_t> out(static_cast<std::size_t>(o.batch), o.text_tokens);
  if (o.caption_tokens.empty()) return out;
  long lo = 0, hi = 0;
  char tail = 0;
  if (std::sscanf(o.caption_tokens.c_str(), "%ld:%ld%c", &lo, &hi, &tail) != 2 || lo < 0 ||
      hi < lo || hi > o.text_tokens)
    throw UsageError("--caption-tokens " + o.caption_tokens +
                     ": expected MIN:MAX with 0 <= MIN <= MAX <= --text-tokens (" +
                     std::to_string(o.text_tokens) + ")");
  std::mt19937_64 gen(20261204);
  std::uniform_int_distribution<std::int64_t> length(lo, hi);
  for (auto& l : out) l = length(gen);
  return out;
}

const Grid& grid_of_sample(const std::vector<Grid>& grids, std::int64_t i) {
  return grids[static_cast<std::size_t>(i) % grids.size()];
}

PluginConfig model_config(const PluginManifest& m, const BenchOptions& o, std::int64_t blocks) {
  Json values;
  for (const char* key : {"preset", "overrides"})
    if (!m.options.contains(key))
      throw UsageError("--plugin " + o.plugin + ": the plugin has no '" + std::string(key) +
                       "' option, which `bench` needs to choose the architecture");
  values["preset"] = o.preset;
  values["overrides"] = Json{{"num_layers", blocks}};
  if (m.options.contains("text_len")) values["text_len"] = o.text_tokens;
  apply_plugin_options(values, o.options);
  return standalone_plugin_config(m, "model", std::move(values));
}

Batch make_batch(const BenchOptions& o, const std::vector<Grid>& grids,
                 const std::vector<std::int64_t>& caption_rows, std::int64_t channels,
                 std::int64_t text_dim, const c10::Device& device, at::ScalarType dtype) {
  // Latent grid for patch (1, 2, 2), the patch of every Wan 2.1 preset.
  const auto opts = at::TensorOptions().device(device).dtype(dtype);
  Batch b;
  if (o.packed) {
    // Each grid's samples together, as the packing collators order a pack (collate_packed).
    std::int64_t offset = 0;
    for (const Grid& g : grids)
      for (std::int64_t i = 0; i < o.batch; ++i) {
        if (&grid_of_sample(grids, i) != &g) continue;
        b.segments.push_back(PackSegment{offset, g[0], 2 * g[1], 2 * g[2]});
        offset += 4 * count(g);
      }
    b.latents = at::randn({channels, offset}, opts);
  } else {
    const Grid& g = grids[0];
    b.latents = at::randn({o.batch, channels, g[0], 2 * g[1], 2 * g[2]}, opts);
  }
  b.text = at::randn({o.batch, o.text_tokens, text_dim}, opts);
  b.text_lengths = at::tensor(caption_rows, at::kLong).to(device);
  for (std::int64_t i = 0; i < o.batch; ++i) b.sample_keys.push_back(i);
  b.captions.resize(static_cast<std::size_t>(o.batch));
  return b;
}

}  // namespace

void run_bench(PluginRegistry& registry, BenchOptions o) {
  if (o.blocks < 1 || o.batch < 1 || o.video_tokens < 1 || o.text_tokens < 1)
    throw UsageError("--blocks, --batch, --video-tokens and --text-tokens must be positive");
  if (o.iters < 1 || o.warmup < 0) throw UsageError("--iters must be >= 1 and --warmup >= 0");
  if (o.device.empty()) o.device = at::hasCUDA() ? "cuda" : "cpu";
  if (o.device == "cuda" && !at::hasCUDA())
    throw UsageError("--device cuda: no CUDA device is visible");
  // "cuda" means the current device: name its index (the allocator's statistics need one).
  c10::Device device(o.device);
  if (device.is_cuda() && !device.has_index()) device = c10::Device(c10::kCUDA, 0);
  if (o.cuda_graph && !device.is_cuda())
    throw UsageError("--cuda-graph needs a GPU (--device cuda); this run is on " + device.str());
  if (o.kernels && (o.cuda_graph || o.packed || !o.grids.empty() || !o.profile.empty()))
    throw UsageError(
        "--kernels times single operators on dense rows: it takes no --cuda-graph, "
        "--packed, --grid or --profile");
  try {
    set_kernel_options(parse_kernel_options(o.packed_attention, "fused", o.lt_epilogues,
                                            o.weight_casts, o.fp8_gelu, o.fp8_input_gradients));
  } catch (const std::invalid_argument& e) {
    throw UsageError(std::string("--packed-attention/--lt-epilogues: ") + e.what());
  }
  try {
    set_fp8_recipe(parse_fp8_recipe(o.fp8));
    set_fp8_fast_accumulation(parse_fp8_fast_accumulation(o.fp8_fast_accumulation));
  } catch (const std::invalid_argument& e) {
    throw UsageError(std::string("--fp8/--fp8-fast-accumulation: ") + e.what());
  }
  if (o.dtype.empty()) o.dtype = device.is_cuda() ? "bfloat16" : "float32";
  const auto dtype = o.dtype == "bfloat16" ? at::kBFloat16 : at::kFloat;
  if (o.fp8_gelu == "fused" && o.fp8 == "off")
    throw UsageError(
        "--fp8-gelu fused makes the feed-forward one FP8 operator: it needs --fp8 tensorwise or "
        "delayed");
  if (o.weight_casts == "per_step" && (!o.fp32_master || dtype == at::kFloat))
    throw UsageError(
        "--weight-casts per_step casts fp32 master weights to the compute dtype: it needs "
        "--fp32-master and --dtype bfloat16");
  const auto grids = token_grids(o);
  const auto caption_rows = caption_lengths(o);

  ComponentBuilder builder(registry);
  const PluginManifest& m = registry.require(o.plugin, "model", "");

  if (o.kernels) {
    // The operators at the model's widths: from its Diffusers-style config.
    const auto cfg = Json::parse(
        builder.model(model_config(m, o, 1), single_process_context(c10::kCPU))->config_json());
    for (const char* key : {"num_attention_heads", "attention_head_dim", "ffn_dim"})
      if (!cfg.contains(key) || !cfg[key].is_number_integer())
        throw UsageError("--kernels: the config of plugin " + o.plugin + " has no integer '" + key +
                         "' to size the operators from");
    KernelBenchShape shape;
    shape.samples = o.batch;
    shape.rows_per_sample = o.video_tokens;
    shape.heads = cfg["num_attention_heads"];
    shape.dim = shape.heads * cfg["attention_head_dim"].get<std::int64_t>();
    shape.ffn = cfg["ffn_dim"];
    Json r = bench_kernels(device, dtype, shape, o.warmup, o.iters);
    r["plugin"] = m.name;
    r["preset"] = o.preset;
    r["dtype"] = o.dtype;
    if (o.json)
      std::cout << r.dump() << std::endl;
    else
      std::printf("%s", kernel_bench_table(r).c_str());
    return;
  }

  // Block FLOPs: the model's forward_flops is linear in the block count, so the difference to
  // a model with one block more gives one block's share (embedding and head excluded, like the
  // peer), per sample grid. The probes are built on the CPU and only asked for their counts.
  double step_flops = 0;
  {
    auto ctx = single_process_context(c10::Device(c10::kCPU));
    auto probe_a = builder.model(model_config(m, o, 1), ctx);
    auto probe_b = builder.model(model_config(m, o, 2), ctx);
    for (std::int64_t i = 0; i < o.batch; ++i) {
      const Grid& g = grid_of_sample(grids, i);
      const PackSegment seg{0, g[0], 2 * g[1], 2 * g[2]};
      step_flops +=
          3.0 * o.blocks *
          (probe_b->forward_flops(seg, o.text_tokens) - probe_a->forward_flops(seg, o.text_tokens));
    }
  }

  ParallelContext ctx = single_process_context(device);
  ctx.compute_dtype = dtype;
  ctx.param_dtype = o.fp32_master ? at::kFloat : dtype;
  auto model = builder.model(model_config(m, o, o.blocks), ctx);
  model->module().to(device, ctx.param_dtype);
  model->module().train();

  const auto& shapes = model->module().named_parameters(true);
  std::int64_t channels = 16, text_dim = 0;
  for (const auto& p : shapes) {
    if (p.key() == "patch_embedding.weight") channels = p.value().size(1);
    if (p.key() == "condition_embedder.text_embedder.linear_1.weight") text_dim = p.value().size(1);
  }
  if (text_dim == 0)
    throw UsageError("--plugin " + o.plugin +
                     ": no condition_embedder.text_embedder.linear_1.weight parameter to size the "
                     "text input from");
  Batch batch = make_batch(o, grids, caption_rows, channels, text_dim, device, dtype);
  const auto timesteps = at::rand({o.batch}, at::TensorOptions().device(device)) * 1000;

  // Input part once, outside the timed region; the blocks get a fresh leaf every step.
  Activations act;
  at::Tensor hidden;
  {
    at::NoGradGuard no_grad;
    act = model->embed(batch, timesteps);
    hidden = act.hidden.detach();
    for (auto& c : act.context) c = c.detach();
  }
  std::vector<at::Tensor> params;
  for (auto& p : model->module().parameters(true)) params.push_back(p);

  // --weight-casts per_step (checked above to come with fp32 masters and bf16 compute): the
  // masters cast in one pass a step, as a training step casts them.
  const bool cast_once = kernel_options().weight_casts_per_step;
  auto eager_step = [&] {
    for (auto& p : params) p.mutable_grad() = at::Tensor();
    weights_changed();        // as before a training step: FP8 and compute-dtype copies made again
    fp8_step_begins(device);  // --fp8 delayed: the amax histories' step
    if (cast_once) refresh_compute_weights(params, dtype);
    auto h = hidden.detach().requires_grad_(true);
    for (std::int64_t i = 0; i < model->num_blocks(); ++i) h = model->block_forward(i, h, act);
    h.to(at::kFloat).square().mean().backward();
    if (cast_once) keep_used_compute_weights();
  };

  const double peak = o.skip_peak ? 0.0 : matmul_peak_tflops(device);
  std::function<void()> step = eager_step;
  std::unique_ptr<StepGraph> graph;
  if (o.cuda_graph) {
    // The warm-up and capture allocate what an eager step does: the peak memory counts them
    // (replays allocate nothing; the graph's pool keeps the step's intermediates reserved).
    sync_device(device);
    reset_peak_memory(device);
    try {
      // At least one eager step first: cuBLAS/cuDNN create their plans and workspaces there.
      graph = std::make_unique<StepGraph>(device, eager_step, std::max(o.warmup, 1));
    } catch (const std::invalid_argument& e) {
      throw UsageError(std::string("--cuda-graph: ") + e.what());
    }
    step = [&] { graph->replay(); };
    sync_device(device);
  } else {
    for (int i = 0; i < o.warmup; ++i) step();
    sync_device(device);
    reset_peak_memory(device);
  }
  std::vector<double> times;
  for (int i = 0; i < o.iters; ++i) times.push_back(time_once(device, step));
  const double t = median(times);
  const double peak_gib = peak_memory_gib(device);
  // The profile runs after the timed steps so that the profiler's overhead stays out of them.
  KernelProfile profile;
  if (!o.profile.empty()) profile = profile_kernels(device, step, std::min(o.iters, 3), o.profile);
  double tokens = 0;
  for (std::int64_t i = 0; i < o.batch; ++i) tokens += count(grid_of_sample(grids, i));
  Json grids_json = Json::array();
  for (const auto& g : grids) grids_json.push_back({g[0], g[1], g[2]});
  const double tflops = step_flops / t / 1e12;
  Json r{
      {"plugin", m.name},
      {"preset", o.preset},
      {"blocks", o.blocks},
      {"batch", o.batch},
      {"video_tokens", o.video_tokens},
      {"grid", grids_json[0]},
      {"grids", grids_json},
      {"text_tokens", o.text_tokens},
      {"caption_tokens", caption_rows},
      {"dtype", o.dtype},
      {"params", o.fp32_master ? "float32" : o.dtype},
      {"packed", o.packed},
      {"cuda_graph", o.cuda_graph},
      // the FP8 choices as the kit holds them (what the products read), not the flags' text
      {"fp8", fp8_recipe_name(fp8_recipe())},
      {"weight_casts", o.weight_casts},
      {"fp8_gelu", kernel_options().fp8_fused_gelu ? "fused" : "separate"},
      {"fp8_fast_accumulation", fp8_fast_accumulation_name(fp8_fast_accumulation())},
      {"fp8_input_gradients", kernel_options().fp8_summed_input_gradients ? "summed" : "separate"},
      {"device", device.str()},
      {"options", o.options},
      {"iters", o.iters},
      {"step_s", t},
      {"min_s", *std::min_element(times.begin(), times.end())},
      {"max_s", *std::max_element(times.begin(), times.end())},
      {"tokens_per_s", tokens / t},
      {"samples_per_s", static_cast<double>(o.batch) / t},
      {"model_tflops", tflops},
      {"step_tflop", step_flops / 1e12},
      {"matmul_peak_tflops", peak > 0 ? Json(peak) : Json(nullptr)},
      {"mfu", peak > 0 ? Json(tflops / peak) : Json(nullptr)},
      {"peak_mem_gib", peak_gib}};
  if (!o.profile.empty()) {
    r["profile"] = profile.to_json(o.profile_top);
    r["profile"]["trace"] = o.profile;
  }
  if (o.json) {
    std::cout << r.dump() << std::endl;
    return;
  }
  std::string sizes;
  for (const auto& g : grids)
    sizes += (sizes.empty() ? "" : ", ") + std::to_string(count(g)) + " (" + std::to_string(g[0]) +
             "x" + std::to_string(g[1]) + "x" + std::to_string(g[2]) + ")";
  std::printf(
      "%s %s: %ld blocks, batch %ld x %s tokens%s, text %ld, %s on %s%s\n"
      "  step %.4f s (median of %d; min %.4f, max %.4f)\n"
      "  %.0f tokens/s, %.1f model TFLOP/s",
      m.name.c_str(), o.preset.c_str(), o.blocks, o.batch, sizes.c_str(), o.packed ? " packed" : "",
      o.text_tokens, o.dtype.c_str(), o.device.c_str(), o.cuda_graph ? " (CUDA graph)" : "", t,
      o.iters, *std::min_element(times.begin(), times.end()),
      *std::max_element(times.begin(), times.end()), tokens / t, tflops);
  if (peak > 0)
    std::printf(", MFU %.1f%% of %.1f TFLOP/s (measured matmul)", 100 * tflops / peak, peak);
  std::printf("\n");
  std::printf("  peak memory %.2f GiB%s\n", peak_gib, device.is_cuda() ? "" : " (process RSS)");
  if (!o.profile.empty())
    std::printf("%s  trace: %s\n", profile.table(o.profile_top).c_str(), o.profile.c_str());
}

}  // namespace wanhost::core
