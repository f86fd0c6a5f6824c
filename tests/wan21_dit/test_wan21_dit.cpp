// wan21_dit: parity with Diffusers' WanTransformer3DModel (outputs and parameter gradients, fp32
// and bf16), packed == per-sample, every checkpoint form, checkpoint errors, FLOPs and shapes,
// and the default attention operator.
//
// Error measure everywhere: relative L2 (Frobenius) norm ||x - ref||_2 / ||ref||_2 over a whole
// tensor; for gradients per parameter tensor, reporting the maximum over tensors.
#include <sys/stat.h>

#include <cstdio>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>
#include <gtest/gtest.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/function.h>
#include <set>
#if WANHOST_WITH_CUDA
#include <c10/cuda/CUDAFunctions.h>
#endif

#include "parity_util.hpp"
#include "util/step_graph.hpp"

#include "wan21_dit.hpp"
#include "wanhost/errors.hpp"
#include "wanhost/kit/fused.hpp"
#include "wanhost/kit/kernel_options.hpp"
#include "wanhost/kit/layers.hpp"
#include "wanhost/kit/precision.hpp"
#include "wanhost/kit/safetensors.hpp"

namespace {

using wanhost::testing::exists;
using wanhost::testing::read_json;

using wanhost::Json;
using wanhost::plugins::wan21_dit::WanModel;

const std::string kRef = std::string(WANHOST_BINARY_DIR) + "/reference/wan";
const std::vector<std::string> kCases = {"base", "wide", "patch_t2"};

WANHOST_ONE_THREAD_TESTS();

#define REQUIRE_REFERENCE()                                                               \
  if (!exists(kRef + "/DONE"))                                                            \
  GTEST_SKIP() << "no reference tensors in " << kRef                                      \
               << " (the wan21_dit_reference fixture needs WANHOST_TEST_PYTHON with the " \
                  "packages of tests/reference/requirements.txt)"

// The plugin's config as the host would hand it over: sidecar defaults plus `values`.
wanhost::PluginConfig plugin_config(const Json& values) {
  auto sidecar = read_json(std::string(WANHOST_SOURCE_DIR) + "/plugins/wan21_dit/wan21_dit.json");
  wanhost::PluginConfig cfg{"wan21_dit", "/model/wan21_dit", Json::object(), {}};
  for (const auto& [key, spec] : sidecar["config"].items()) cfg.values[key] = spec["default"];
  for (const auto& [key, v] : values.items()) cfg.values[key] = v;
  return cfg;
}

std::unique_ptr<WanModel> make_model(const Json& values, at::ScalarType compute = at::kFloat) {
  auto ctx = wanhost::single_process_context();
  ctx.compute_dtype = compute;
  return std::make_unique<WanModel>(
      wanhost::plugins::wan21_dit::resolve_options(plugin_config(values)), ctx);
}

// A model loading the reference weights of `name`, with text padded like the reference input.
std::unique_ptr<WanModel> case_model(const std::string& name, Json extra = Json::object(),
                                     at::ScalarType compute = at::kFloat) {
  auto meta = read_json(kRef + "/" + name + "/meta.json");
  Json values = {{"config_file", kRef + "/" + name + "/model/config.json"},
                 {"weights", kRef + "/" + name + "/model"},
                 {"text_len", meta["text_len"]}};
  for (const auto& [k, v] : extra.items()) values[k] = v;
  return make_model(values, compute);
}

std::map<std::string, at::Tensor> case_data(const std::string& name) {
  return wanhost::safetensors::File::open(kRef + "/" + name + "/data.safetensors").load_all();
}

wanhost::Batch dense_batch(std::map<std::string, at::Tensor>& d) {
  wanhost::Batch b;
  b.latents = d["latents"];
  b.text = d["text"];
  b.text_lengths = d["text_lengths"];
  for (std::int64_t i = 0; i < b.latents.size(0); ++i) b.sample_keys.push_back(i);
  return b;
}

double rel(const at::Tensor& x, const at::Tensor& ref) {
  auto r = ref.to(at::kDouble), a = x.to(at::kDouble);
  return (a - r).norm().item<double>() / std::max(r.norm().item<double>(), 1e-30);
}

std::map<std::string, at::Tensor> params(WanModel& m) {
  std::map<std::string, at::Tensor> out;
  for (const auto& item : m.module().named_parameters(true)) out[item.key()] = item.value();
  return out;
}

TEST(Wan21Dit, MatchesDiffusersFp32OutputsAndGradients) {
  REQUIRE_REFERENCE();
  for (const auto& name : kCases) {
    auto model = case_model(name);
    auto d = case_data(name);
    // Same parameter names in the same order as Diffusers' named_parameters().
    std::vector<std::string> names;
    for (const auto& item : model->module().named_parameters(true)) names.push_back(item.key());
    EXPECT_EQ(
        names,
        read_json(kRef + "/" + name + "/meta.json")["parameters"].get<std::vector<std::string>>());
    auto out = model->forward(dense_batch(d), d["timesteps"]);
    ASSERT_EQ(out.sizes(), d["out"].sizes()) << name;
    (out * d["probe"]).sum().backward();
    const double out_err = rel(out, d["out"]);
    double grad_err = 0;
    std::string worst;
    for (auto& [pname, p] : params(*model)) {
      ASSERT_TRUE(d.count("grad." + pname)) << name << ": no reference gradient for " << pname;
      ASSERT_TRUE(p.grad().defined()) << name << ": no gradient for " << pname;
      const double e = rel(p.grad(), d["grad." + pname]);
      if (e > grad_err) grad_err = e, worst = pname;
    }
    std::printf("[parity fp32] %-9s output rel err %.3e, max param-grad rel err %.3e (%s)\n",
                name.c_str(), out_err, grad_err, worst.c_str());
    EXPECT_LT(out_err, 1e-4) << name;
    EXPECT_LT(grad_err, 1e-4) << name << " worst " << worst;
  }
}

TEST(Wan21Dit, MaskedTextEqualsUnpaddedReference) {
  REQUIRE_REFERENCE();
  for (const auto& name : kCases) {
    auto model = case_model(name, {{"mask_text_padding", true}});
    auto d = case_data(name);
    at::NoGradGuard no_grad;
    auto out = model->forward(dense_batch(d), d["timesteps"]);
    const double err = rel(out, d["out_masked"]);
    std::printf("[parity masked] %-9s output rel err %.3e (padding changes it by %.3e)\n",
                name.c_str(), err, rel(d["out"], d["out_masked"]));
    EXPECT_LT(err, 1e-4) << name;
  }
}

// bf16 compute with fp32 master weights vs Diffusers loaded with torch_dtype=bf16 (fp32 islands
// kept). Measured and printed; asserted only loosely.
TEST(Wan21Dit, Bf16ErrorIsMeasured) {
  REQUIRE_REFERENCE();
  for (const auto& name : kCases) {
    auto model = case_model(name, Json::object(), at::kBFloat16);
    auto d = case_data(name);
    at::NoGradGuard no_grad;
    auto out = model->forward(dense_batch(d), d["timesteps"]);
    EXPECT_EQ(out.scalar_type(), at::kBFloat16);
    const double vs_fp32 = rel(out, d["out"]);
    const double vs_diffusers_bf16 = rel(out, d["out_bf16"]);
    const double diffusers_bf16_vs_fp32 = rel(d["out_bf16"], d["out"]);
    std::printf(
        "[parity bf16] %-9s ours vs fp32 ref %.3e | Diffusers bf16 vs fp32 ref %.3e | "
        "ours vs Diffusers bf16 %.3e\n",
        name.c_str(), vs_fp32, diffusers_bf16_vs_fp32, vs_diffusers_bf16);
    EXPECT_LT(vs_fp32, 3e-2) << name;
    EXPECT_LT(vs_diffusers_bf16, 3e-2) << name;
    // The trainer may wrap the forward in autocast: the model's explicit dtypes make it a no-op.
    auto ctx = wanhost::single_process_context();
    ctx.compute_dtype = at::kBFloat16;
    wanhost::AutocastGuard autocast(ctx);
    auto under_autocast = model->forward(dense_batch(d), d["timesteps"]);
    EXPECT_TRUE(at::equal(under_autocast, out)) << name << " rel " << rel(under_autocast, out);
  }
}

// bf16 master weights too (master_weights: bf16, the AutoModel recipe's all-bf16 model).
TEST(Wan21Dit, AllBf16MatchesDiffusersAllBf16) {
  REQUIRE_REFERENCE();
  for (const auto& name : kCases) {
    auto meta = read_json(kRef + "/" + name + "/meta.json");
    auto ctx = wanhost::single_process_context();
    ctx.param_dtype = ctx.compute_dtype = at::kBFloat16;
    auto model = std::make_unique<WanModel>(
        wanhost::plugins::wan21_dit::resolve_options(
            plugin_config({{"config_file", kRef + "/" + name + "/model/config.json"},
                           {"weights", kRef + "/" + name + "/model"},
                           {"text_len", meta["text_len"]}})),
        ctx);
    auto d = case_data(name);
    at::NoGradGuard no_grad;
    auto out = model->forward(dense_batch(d), d["timesteps"]);
    // Diffusers' .to(bf16) also rounds its RoPE tables to bf16; wan21_dit keeps them fp32 (as
    // from_pretrained(torch_dtype=bf16) does), and is otherwise the same arithmetic.
    const double err = rel(out, d["out_all_bf16_fp32_rope"]);
    std::printf(
        "[parity all-bf16] %-9s ours vs Diffusers .to(bf16) with fp32 RoPE %.3e | with "
        "its bf16 RoPE %.3e | vs fp32 ref %.3e\n",
        name.c_str(), err, rel(out, d["out_all_bf16"]), rel(out, d["out"]));
    EXPECT_LT(err, 1e-6) << name;
  }
}

// Three samples of different grids, text lengths and timesteps packed into one sequence give
// what each gives alone (outputs and parameter gradients), in both text-padding modes.
TEST(Wan21Dit, PackedEqualsPerSample) {
  REQUIRE_REFERENCE();
  for (bool masked : {false, true}) {
    auto model = case_model("base", {{"mask_text_padding", masked}});
    const auto& cfg = model->options().config;
    auto gen = at::make_generator<at::CPUGeneratorImpl>(17);
    const std::vector<std::array<std::int64_t, 3>> grids = {{3, 6, 10}, {1, 4, 4}, {5, 2, 8}};
    const std::vector<std::int64_t> lengths = {13, 4, 20};
    const std::int64_t rows = 20;
    auto text = at::randn({3, rows, cfg.text_dim}, gen);
    for (int i = 0; i < 3; ++i) text[i].narrow(0, lengths[i], rows - lengths[i]).zero_();
    auto timesteps = at::tensor({812.5f, 40.0f, 377.25f});

    wanhost::Batch packed;
    std::vector<at::Tensor> latents, probes;
    std::int64_t offset = 0;
    for (int i = 0; i < 3; ++i) {
      const auto [f, h, w] = grids[i];
      latents.push_back(at::randn({cfg.in_channels, f, h, w}, gen));
      probes.push_back(at::randn({cfg.out_channels, f, h, w}, gen));
      packed.segments.push_back({offset, f, h, w});
      packed.sample_keys.push_back(i);
      offset += f * h * w;
    }
    auto flat = [](const std::vector<at::Tensor>& xs) {
      std::vector<at::Tensor> cols;
      for (const auto& x : xs) cols.push_back(x.reshape({x.size(0), -1}));
      return at::cat(cols, 1);
    };
    packed.latents = flat(latents);
    packed.text = text;
    packed.text_lengths = at::tensor(lengths);

    model->module().zero_grad();
    auto out_packed = model->forward(packed, timesteps);
    (out_packed * flat(probes)).sum().backward();
    std::map<std::string, at::Tensor> grad_packed;
    for (auto& [n, p] : params(*model)) grad_packed[n] = p.grad().clone();

    model->module().zero_grad();
    std::vector<at::Tensor> outs;
    for (int i = 0; i < 3; ++i) {
      wanhost::Batch one;
      one.latents = latents[i].unsqueeze(0);
      one.text = text.narrow(0, i, 1);
      one.text_lengths = at::tensor({lengths[i]});
      one.sample_keys = {i};
      auto out = model->forward(one, timesteps.narrow(0, i, 1));
      (out[0] * probes[i]).sum().backward();
      outs.push_back(out[0]);
    }
    const double out_err = rel(out_packed, flat(outs));
    double grad_err = 0;
    for (auto& [n, p] : params(*model))
      grad_err = std::max(grad_err, rel(grad_packed[n], p.grad()));
    std::printf("[packed] mask_text_padding=%d output rel err %.3e, max grad rel err %.3e\n",
                masked, out_err, grad_err);
    EXPECT_LT(out_err, 1e-5);
    EXPECT_LT(grad_err, 1e-5);
  }
}

TEST(Wan21Dit, LoadsEveryCheckpointForm) {
  REQUIRE_REFERENCE();
  for (const auto& name : {std::string("base"), std::string("wide")}) {
    auto reference = case_model(name);
    auto ref = params(*reference);
    std::vector<std::string> forms = {"model_norm_out", "wan_original.safetensors",
                                      "model/diffusion_pytorch_model.safetensors"};
    if (name == "base") forms.push_back("model_sharded");  // also: original keys with prefix
    for (const auto& form : forms) {
      auto m = case_model(name, {{"weights", kRef + "/" + name + "/" + form}});
      auto got = params(*m);
      ASSERT_EQ(got.size(), ref.size());
      for (auto& [n, p] : ref)
        EXPECT_TRUE(at::equal(got[n], p)) << name << "/" << form << ": " << n;
    }
  }
}

TEST(Wan21Dit, MalformedCheckpointListsEveryProblem) {
  REQUIRE_REFERENCE();
  try {
    case_model("base", {{"weights", kRef + "/malformed/bad.safetensors"}});
    FAIL() << "loading a malformed checkpoint succeeded";
  } catch (const wanhost::FormatError& e) {
    const std::string msg = e.what();
    for (const char* part : {"2 missing, 1 unexpected, 1 mis-shaped", "proj_out.bias",
                             "blocks.1.attn2.norm_k.weight", "blocks.0.attn1.to_extra.weight",
                             "blocks.0.ffn.net.2.weight: checkpoint [5, 7], model [48, 80]"})
      EXPECT_NE(msg.find(part), std::string::npos) << "missing '" << part << "' in:\n" << msg;
  }
  // An adaptive-LayerNorm head whose weight is not the identity pair (trained with SiLU + linear)
  // has no equivalent in the Wan head arithmetic.
  auto tensors = wanhost::safetensors::File::open(
                     kRef + "/base/model_norm_out/diffusion_pytorch_model.safetensors")
                     .load_all();
  tensors["norm_out.linear.weight"] = tensors["norm_out.linear.weight"] * 0.5;
  ::mkdir(WANHOST_TEST_TMP, 0755);
  const std::string trained = std::string(WANHOST_TEST_TMP) + "/norm_out_trained.safetensors";
  wanhost::safetensors::save(trained, tensors);
  try {
    case_model("base", {{"weights", trained}});
    FAIL() << "loading a trained norm_out.linear head succeeded";
  } catch (const wanhost::FormatError& e) {
    EXPECT_NE(std::string(e.what()).find("1 unusable"), std::string::npos) << e.what();
  }
  // Weights of an integer, boolean or 8-bit float type are refused, never cast (the kit's one
  // rule for every plugin, wanhost/kit/weights.hpp).
  for (const at::ScalarType type : {at::kInt, at::kBool, at::kFloat8_e4m3fn}) {
    auto typed = wanhost::safetensors::File::open(
                     kRef + "/base/model_norm_out/diffusion_pytorch_model.safetensors")
                     .load_all();
    typed["proj_out.bias"] = typed["proj_out.bias"].to(type);
    const std::string file = std::string(WANHOST_TEST_TMP) + "/typed.safetensors";
    wanhost::safetensors::save(file, typed);
    try {
      case_model("base", {{"weights", file}});
      FAIL() << "loading a " << c10::toString(type) << " weight succeeded";
    } catch (const wanhost::FormatError& e) {
      const std::string msg = e.what();
      EXPECT_NE(msg.find("1 unusable"), std::string::npos) << msg;
      EXPECT_NE(msg.find("proj_out.bias: dtype " + wanhost::safetensors::dtype_tag(type)),
                std::string::npos)
          << msg;
    }
  }
  // A checkpoint of another architecture: every tensor that does not fit is named.
  try {
    make_model({{"weights", kRef + "/base/model"}});  // tiny preset, base weights
    FAIL() << "loading a checkpoint of another architecture succeeded";
  } catch (const wanhost::FormatError& e) {
    EXPECT_NE(std::string(e.what()).find("mis-shaped"), std::string::npos) << e.what();
  }
}

TEST(Wan21Dit, SaveAndReloadRoundTrip) {
  REQUIRE_REFERENCE();
  const std::string dir = std::string(WANHOST_TEST_TMP) + "/saved/nested";
  auto model = case_model("wide");
  model->save_weights(dir);
  auto again = make_model({{"config_file", dir + "/config.json"}, {"weights", dir}});
  EXPECT_EQ(again->config_json(), model->config_json());
  auto a = params(*model), b = params(*again);
  for (auto& [n, p] : a) EXPECT_TRUE(at::equal(p, b[n])) << n;
  // Diffusers-compatible config: the reference's own config.json describes the same model.
  auto ours = read_json(dir + "/config.json"), theirs = read_json(kRef + "/wide/model/config.json");
  for (const auto& [k, v] : theirs.items())
    if (k != "_diffusers_version") {
      EXPECT_EQ(ours[k], v) << k;
    }
}

TEST(Wan21Dit, FlopsFollowTheFormula) {
  const auto c13 = wanhost::plugins::wan21_dit::preset_config("wan2.1-t2v-1.3b");
  const auto c14 = wanhost::plugins::wan21_dit::preset_config("wan2.1-t2v-14b");
  // docs/model.md "FLOPs", 240x416: 390 tokens per latent frame, 512 text rows.
  EXPECT_NEAR(wanhost::plugins::wan21_dit::forward_flops(c13, 21 * 390, 512) / 1e12, 33.78, 0.01);
  EXPECT_NEAR(wanhost::plugins::wan21_dit::forward_flops(c13, 390, 512) / 1e12, 1.19, 0.01);
  EXPECT_NEAR(wanhost::plugins::wan21_dit::forward_flops(c14, 21 * 390, 512) / 1e12, 256.39, 0.05);
  EXPECT_NEAR(wanhost::plugins::wan21_dit::forward_flops(c14, 33 * 390, 512) / 1e12, 450.99, 0.05);
  // Exact formula for 1.3B at S = 8190, T = 512.
  const double d = 1536, f = 8960, l = 30, s = 8190, t = 512;
  const double pv = l * (6 * d * d + 2 * d * f) + 128 * d;
  const double pt = l * 2 * d * d + 4096 * d + d * d;
  EXPECT_DOUBLE_EQ(wanhost::plugins::wan21_dit::forward_flops(c13, 8190, 512),
                   2 * s * pv + 2 * t * pt + l * 4 * s * s * d + l * 4 * s * t * d);
  // The model's own counter: tokens of a latent grid, text padded to text_len unless masked.
  auto tiny = make_model(Json::object());
  wanhost::PackSegment grid{0, 21, 30, 52};
  EXPECT_EQ(tiny->tokens(grid), 21 * 15 * 26);
  EXPECT_DOUBLE_EQ(tiny->forward_flops(grid, 100),
                   wanhost::plugins::wan21_dit::forward_flops(tiny->options().config, 8190, 512));
  auto masked = make_model({{"mask_text_padding", true}});
  EXPECT_DOUBLE_EQ(masked->forward_flops(grid, 100),
                   wanhost::plugins::wan21_dit::forward_flops(masked->options().config, 8190, 100));
}

TEST(Wan21Dit, PresetShapesMatchDiffusers) {
  auto count = [](const wanhost::plugins::wan21_dit::WanConfig& c) {
    std::int64_t values = 0;
    auto shapes = wanhost::plugins::wan21_dit::diffusers_shapes(c);
    for (const auto& [n, s] : shapes) {
      std::int64_t v = 1;
      for (auto x : s) v *= x;
      values += v;
    }
    return std::make_pair(shapes.size(), values);
  };
  EXPECT_EQ(count(wanhost::plugins::wan21_dit::preset_config("wan2.1-t2v-1.3b")),
            std::make_pair(std::size_t{825}, std::int64_t{1418996800}));
  EXPECT_EQ(count(wanhost::plugins::wan21_dit::preset_config("wan2.1-t2v-14b")),
            std::make_pair(std::size_t{1095}, std::int64_t{14288491584}));
  auto tiny = make_model(Json::object());
  auto expected = wanhost::plugins::wan21_dit::diffusers_shapes(tiny->options().config);
  auto named = tiny->module().named_parameters(true);
  ASSERT_EQ(named.size(), expected.size());
  for (std::size_t i = 0; i < expected.size(); ++i) {
    EXPECT_EQ(named[i].key(), expected[i].first);
    EXPECT_EQ(named[i].value().sizes().vec(), expected[i].second) << expected[i].first;
  }
  EXPECT_EQ(tiny->num_blocks(), 2);
  EXPECT_TRUE(tiny->block_module(1).named_parameters().contains("attn1.to_out.0.weight"));
}

TEST(Wan21Dit, InitialisationIsDeterministic) {
  auto a = make_model({{"init_seed", 7}}), b = make_model({{"init_seed", 7}});
  auto c = make_model({{"init_seed", 8}});
  auto pa = params(*a), pb = params(*b), pc = params(*c);
  for (auto& [n, p] : pa) EXPECT_TRUE(at::equal(p, pb[n])) << n;
  EXPECT_FALSE(at::equal(pa["blocks.0.attn1.to_q.weight"], pc["blocks.0.attn1.to_q.weight"]));
  EXPECT_TRUE(at::equal(pa["blocks.0.attn1.norm_q.weight"], at::ones({64})));
  const double bound = 1.0 / std::sqrt(64.0);
  EXPECT_LE(pa["blocks.0.ffn.net.0.proj.weight"].abs().max().item<double>(), bound);
  EXPECT_NEAR(pa["blocks.1.scale_shift_table"].std().item<double>(), 1.0 / 8.0, 0.02);
}

// init_method=megatron: Megatron-LM's normal(0, 0.02) for every linear layer and the patch
// embedding, 0.02/sqrt(2 x layers) for the layers that feed a residual, zero biases; norms and
// modulation tables as the default.
TEST(Wan21Dit, MegatronInitialisation) {
  auto a = make_model({{"init_method", "megatron"}, {"overrides", {{"num_layers", 8}}}});
  auto pa = params(*a);
  const double residual = 0.02 / std::sqrt(2.0 * 8);
  for (const auto& [name, p] : pa) {
    const bool linear =
        name.find("to_") != std::string::npos || name.find("ffn.net") != std::string::npos ||
        name.find("embedder") != std::string::npos || name.find("time_proj") != std::string::npos ||
        name.find("proj_out") != std::string::npos ||
        name.find("patch_embedding") != std::string::npos;
    if (!linear) continue;
    if (name.size() > 5 && name.compare(name.size() - 5, 5, ".bias") == 0) {
      EXPECT_EQ(p.abs().max().item<double>(), 0.0) << name;
      continue;
    }
    const bool feeds_residual = name.find("to_out.0.weight") != std::string::npos ||
                                name.find("ffn.net.2.weight") != std::string::npos;
    const double want = feeds_residual ? residual : 0.02;
    EXPECT_NEAR(p.std().item<double>(), want, 0.15 * want) << name;
    EXPECT_NEAR(p.mean().item<double>(), 0.0, 0.1 * want) << name;
  }
  EXPECT_TRUE(at::equal(pa["blocks.0.attn1.norm_q.weight"], at::ones({64})));
  EXPECT_NEAR(pa["blocks.1.scale_shift_table"].std().item<double>(), 1.0 / 8.0, 0.02);
  try {
    make_model({{"init_method", "xavier"}});
    ADD_FAILURE() << "init_method xavier accepted";
  } catch (const wanhost::ConfigError& e) {
    EXPECT_EQ(e.pointer(), "/model/wan21_dit/init_method") << e.what();
  }
}

TEST(Wan21Dit, ConfigErrorsNameTheKey) {
  auto expect_error = [](const Json& values, const std::string& pointer) {
    try {
      make_model(values);
      ADD_FAILURE() << "accepted " << values.dump();
    } catch (const wanhost::ConfigError& e) {
      EXPECT_EQ(e.pointer(), pointer) << e.what();
    }
  };
  expect_error({{"overrides", {{"image_dim", 1280}}}}, "/model/wan21_dit/overrides/image_dim");
  expect_error({{"overrides", {{"num_heads", 4}}}}, "/model/wan21_dit/overrides/num_heads");
  expect_error({{"overrides", {{"attention_head_dim", 5}}}},
               "/model/wan21_dit/overrides/attention_head_dim");
  expect_error({{"config_file", "/nonexistent/config.json"}}, "/model/wan21_dit/config_file");
  ::mkdir(WANHOST_TEST_TMP, 0755);
  const std::string i2v = std::string(WANHOST_TEST_TMP) + "/i2v_config.json";
  std::ofstream(i2v) << R"({"_class_name": "WanTransformer3DModel", "image_dim": 1280})";
  expect_error({{"config_file", i2v}}, "/model/wan21_dit/config_file");
}

// Whether the autograd graph behind `t` holds a node named `name`.
bool graph_has(const at::Tensor& t, const std::string& name) {
  std::vector<torch::autograd::Node*> todo{t.grad_fn().get()};
  std::set<torch::autograd::Node*> seen;
  while (!todo.empty()) {
    auto* n = todo.back();
    todo.pop_back();
    if (n == nullptr || !seen.insert(n).second) continue;
    if (n->name() == name) return true;
    for (const auto& e : n->next_edges()) todo.push_back(e.function.get());
  }
  return false;
}

// activation_checkpointing: the block forward runs without a graph and again in backward; the
// outputs and every gradient (parameters and the latents' input) equal the plain run's.
TEST(Wan21Dit, ActivationCheckpointingGivesTheSameGradients) {
  wanhost::Batch b;
  b.latents = at::randn({2, 16, 2, 8, 8});
  b.text = at::randn({2, 16, 32});
  b.text_lengths = at::tensor({16, 9});
  b.sample_keys = {0, 1};
  const auto t = at::tensor({500.0f, 20.0f});
  auto probe = at::randn_like(b.latents);
  std::map<std::string, at::Tensor> grads[2];
  at::Tensor outs[2], input_grads[2];
  for (int ckpt = 0; ckpt < 2; ++ckpt) {
    auto model = make_model({{"activation_checkpointing", ckpt == 1}, {"init_seed", 3}});
    wanhost::Batch bb = b;
    bb.latents = b.latents.clone().requires_grad_(true);
    outs[ckpt] = model->forward(bb, t);
    EXPECT_EQ(graph_has(outs[ckpt], "wanhost::plugins::wan21_dit::CheckpointBackward"), ckpt == 1);
    (outs[ckpt] * probe).sum().backward();
    for (auto& [n, p] : params(*model)) {
      ASSERT_TRUE(p.grad().defined()) << n << (ckpt ? " (checkpointed)" : "");
      grads[ckpt][n] = p.grad().clone();
    }
    input_grads[ckpt] = bb.latents.grad().clone();
  }
  EXPECT_LT(rel(outs[1], outs[0]), 1e-6);
  EXPECT_LT(rel(input_grads[1], input_grads[0]), 1e-5);
  for (const auto& [n, g] : grads[0]) EXPECT_LT(rel(grads[1].at(n), g), 1e-5) << n;
}

// ParallelContext::token_multiple: in a packed batch each sample's tokens are padded to a multiple
// (for sequence splits); the padding attends only to itself and is dropped before the output, so
// the prediction and every gradient (parameters and the latents) equal the unpadded run's. Three
// samples of mixed grids (12, 1 and 6 tokens: with 4 one needs no padding, with 5 all do), both
// text-padding modes.
TEST(Wan21Dit, PaddedPackGivesTheUnpaddedResult) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(23);
  const std::vector<std::array<std::int64_t, 3>> grids = {{2, 4, 6}, {1, 2, 2}, {3, 4, 2}};
  wanhost::Batch b;
  std::int64_t offset = 0;
  for (std::size_t i = 0; i < grids.size(); ++i) {
    const auto [f, h, w] = grids[i];
    b.segments.push_back({offset, f, h, w});
    b.sample_keys.push_back(static_cast<std::int64_t>(i));
    offset += f * h * w;
  }
  b.latents = at::randn({16, offset}, gen);
  b.text = at::randn({3, 12, 32}, gen);
  b.text_lengths = at::tensor({12L, 5L, 9L});
  for (std::int64_t i = 0; i < 3; ++i) {
    const auto l = b.text_lengths[i].item<std::int64_t>();
    b.text[i].narrow(0, l, 12 - l).zero_();
  }
  const auto t = at::tensor({700.0f, 35.0f, 260.0f});
  const auto probe = at::randn({16, offset}, gen);
  struct Run {
    at::Tensor out, input_grad;
    std::map<std::string, at::Tensor> grads;
  };
  for (bool masked : {false, true}) {
    auto run = [&](std::int64_t multiple) {
      auto ctx = wanhost::single_process_context();
      ctx.token_multiple = multiple;
      WanModel model(wanhost::plugins::wan21_dit::resolve_options(plugin_config(
                         {{"init_seed", 5}, {"mask_text_padding", masked}, {"text_len", 16}})),
                     ctx);
      wanhost::Batch bb = b;
      bb.latents = b.latents.clone().requires_grad_(true);
      Run r;
      r.out = model.forward(bb, t);
      (r.out * probe).sum().backward();
      r.input_grad = bb.latents.grad().clone();
      for (auto& [n, p] : params(model)) r.grads[n] = p.grad().clone();
      return r;
    };
    const Run plain = run(1);
    for (std::int64_t multiple : {4, 5}) {
      const Run padded = run(multiple);
      ASSERT_EQ(padded.out.sizes(), b.latents.sizes());
      const double out_err = rel(padded.out, plain.out);
      const double in_err = rel(padded.input_grad, plain.input_grad);
      // Every parameter gradient as one vector (1e-6), and each tensor alone (1e-5: a tensor
      // whose gradient is a sum with much cancellation shows the rounding of other summation
      // orders more).
      double worst = 0;
      std::string worst_name;
      std::vector<at::Tensor> all, all_plain;
      for (const auto& [n, g] : plain.grads) {
        const double e = rel(padded.grads.at(n), g);
        if (e > worst) worst = e, worst_name = n;
        all.push_back(padded.grads.at(n).reshape(-1));
        all_plain.push_back(g.reshape(-1));
      }
      const double grad_err = rel(at::cat(all), at::cat(all_plain));
      std::printf(
          "[token_multiple %ld] mask_text_padding=%d output %.3e, latents grad %.3e, parameter "
          "grads %.3e, worst tensor %.3e (%s)\n",
          static_cast<long>(multiple), masked, out_err, in_err, grad_err, worst,
          worst_name.c_str());
      EXPECT_LT(out_err, 1e-6) << multiple;
      EXPECT_LT(in_err, 1e-6) << multiple;
      EXPECT_LT(grad_err, 1e-6) << multiple;
      EXPECT_LT(worst, 1e-5) << multiple << " " << worst_name;
    }
  }
}

// The same on a GPU through the fused block path (per-sample kernels over padded runs, variable-
// length flash attention over the real and padding segments) in bf16: with token_multiple 4 the
// output and every gradient are no farther from the fp32 unpadded run than the unpadded bf16
// fused run is (1.5x + 2e-3, as FusedKernelsMatchThePlainPathOnAGpu).
TEST(Wan21Dit, PaddedPackOnAGpu) {
  if (!(wanhost::fused::kernels_built() && at::hasCUDA()))
    GTEST_SKIP() << "needs a CUDA build and a GPU";
  auto gen = at::make_generator<at::CPUGeneratorImpl>(29);
  wanhost::Batch b;
  b.segments = {{0, 2, 16, 16}, {2 * 16 * 16, 1, 6, 10}, {2 * 16 * 16 + 60, 4, 8, 12}};
  const std::int64_t n = 2 * 16 * 16 + 60 + 4 * 8 * 12;
  b.latents = at::randn({16, n}, gen);
  b.text = at::randn({3, 16, 32}, gen);
  b.text_lengths = at::tensor({16L, 9L, 3L});
  b.sample_keys = {0, 1, 2};
  const auto t = at::tensor({500.0f, 20.0f, 930.0f});
  const auto probe = at::randn({16, n}, gen);
  struct Run {
    at::Tensor out, input_grad;
    std::map<std::string, at::Tensor> grads;
  };
  auto run = [&](at::ScalarType compute, const char* fused, std::int64_t multiple) {
    auto ctx = wanhost::single_process_context(c10::Device(c10::kCUDA, 0));
    ctx.compute_dtype = compute;
    ctx.token_multiple = multiple;
    WanModel model(wanhost::plugins::wan21_dit::resolve_options(
                       plugin_config({{"fused_kernels", fused}, {"init_seed", 3}})),
                   ctx);
    wanhost::Batch bb = b;
    bb.latents = b.latents.to(at::kCUDA).requires_grad_(true);
    Run r;
    r.out = model.forward(bb, t.to(at::kCUDA));
    (r.out.to(at::kFloat) * probe.to(at::kCUDA)).sum().backward();
    r.input_grad = bb.latents.grad().cpu();
    for (auto& [name, p] : params(model)) r.grads[name] = p.grad().cpu();
    r.out = r.out.cpu();
    return r;
  };
  const Run ref = run(at::kFloat, "off", 1), base = run(at::kBFloat16, "on", 1);
  for (const char* fused : {"on", "off"}) {
    const Run padded = run(at::kBFloat16, fused, 4);
    auto no_worse = [&](const at::Tensor& x, const at::Tensor& p, const at::Tensor& r,
                        const std::string& what) {
      const double e = rel(x, r), ep = rel(p, r);
      EXPECT_LE(e, 1.5 * ep + 2e-3)
          << fused << " " << what << ": padded " << e << ", unpadded " << ep;
    };
    no_worse(padded.out, base.out, ref.out, "output");
    no_worse(padded.input_grad, base.input_grad, ref.input_grad, "latents gradient");
    for (const auto& [name, g] : ref.grads)
      no_worse(padded.grads.at(name), base.grads.at(name), g, name);
  }
}

// fused_kernels "on" needs the CUDA kernels and a GPU; "auto" quietly uses the ATen arithmetic.
TEST(Wan21Dit, FusedKernelsOnNeedsAGpu) {
  if (wanhost::fused::kernels_built() && at::hasCUDA()) GTEST_SKIP() << "a GPU is present";
  try {
    make_model({{"fused_kernels", "on"}});
    ADD_FAILURE() << "fused_kernels=on accepted on " << (at::hasCUDA() ? "a GPU" : "the CPU");
  } catch (const wanhost::ConfigError& e) {
    EXPECT_EQ(e.pointer(), "/model/wan21_dit/fused_kernels");
    EXPECT_NE(std::string(e.what()).find("needs a CUDA build of wanhost running on a GPU"),
              std::string::npos)
        << e.what();
  }
  EXPECT_NO_THROW(make_model({{"fused_kernels", "auto"}}));
}

// On a GPU, the fused block path (wanhost::fused kernels and cuBLASLt epilogues) computes the
// plain path's function: against the same model in fp32, the bf16 fused run's output and every
// gradient (parameters and latents) are no farther off than the bf16 plain run's. Dense and packed
// batches (two samples of other sizes, so the kernels' per-sample rows are exercised).
TEST(Wan21Dit, FusedKernelsMatchThePlainPathOnAGpu) {
  if (!(wanhost::fused::kernels_built() && at::hasCUDA()))
    GTEST_SKIP() << "needs a CUDA build and a GPU";
  auto gen = at::make_generator<at::CPUGeneratorImpl>(5);
  wanhost::Batch dense;
  dense.latents = at::randn({2, 16, 2, 16, 16}, gen);
  dense.text = at::randn({2, 16, 32}, gen);
  dense.text_lengths = at::tensor({16, 9});
  dense.sample_keys = {0, 1};
  wanhost::Batch packed;
  packed.latents = at::randn({16, 2 * 16 * 16 + 4 * 8 * 12}, gen);
  packed.segments = {{0, 2, 16, 16}, {2 * 16 * 16, 4, 8, 12}};
  packed.text = dense.text;
  packed.text_lengths = dense.text_lengths;
  packed.sample_keys = {0, 1};
  const auto t = at::tensor({500.0f, 20.0f});
  for (const auto* batch : {&dense, &packed}) {
    const char* kind = batch == &dense ? "dense" : "packed";
    auto probe = at::randn(batch->latents.sizes(), gen);
    struct Run {
      at::Tensor out, input_grad;
      std::map<std::string, at::Tensor> grads;
    };
    auto run = [&](at::ScalarType compute, const char* fused) {
      auto ctx = wanhost::single_process_context(c10::Device(c10::kCUDA, 0));
      ctx.compute_dtype = compute;
      WanModel model(wanhost::plugins::wan21_dit::resolve_options(
                         plugin_config({{"fused_kernels", fused}, {"init_seed", 3}})),
                     ctx);
      wanhost::Batch b = *batch;
      b.latents = batch->latents.to(at::kCUDA).requires_grad_(true);
      Run r;
      r.out = model.forward(b, t.to(at::kCUDA));
      (r.out.to(at::kFloat) * probe.to(at::kCUDA)).sum().backward();
      r.input_grad = b.latents.grad().cpu();
      for (auto& [n, p] : params(model)) r.grads[n] = p.grad().cpu();
      r.out = r.out.cpu();
      return r;
    };
    const Run ref = run(at::kFloat, "off"), plain = run(at::kBFloat16, "off"),
              fused = run(at::kBFloat16, "on");
    auto no_worse = [&](const at::Tensor& f, const at::Tensor& p, const at::Tensor& r,
                        const std::string& what) {
      const double ef = rel(f, r), ep = rel(p, r);
      EXPECT_LE(ef, 1.5 * ep + 2e-3) << kind << " " << what << ": fused " << ef << ", plain " << ep;
    };
    no_worse(fused.out, plain.out, ref.out, "output");
    no_worse(fused.input_grad, plain.input_grad, ref.input_grad, "latents gradient");
    for (const auto& [n, g] : ref.grads) no_worse(fused.grads.at(n), plain.grads.at(n), g, n);
  }
}

// `wanhost bench --cuda-graph`: the block stack's forward + backward captured once as a CUDA graph
// and replayed gives what the eager step gives, also after new values are written into the
// captured input (a replay recomputes; it does not hand back the capture's results).
TEST(Wan21Dit, CapturedStepReplaysTheEagerStepOnAGpu) {
  if (!(wanhost::fused::kernels_built() && at::hasCUDA()))
    GTEST_SKIP() << "needs a CUDA build and a GPU";
  const c10::Device gpu(c10::kCUDA, 0);
  auto ctx = wanhost::single_process_context(gpu);
  ctx.compute_dtype = at::kBFloat16;
  WanModel model(wanhost::plugins::wan21_dit::resolve_options(
                     plugin_config({{"fused_kernels", "on"}, {"init_seed", 3}})),
                 ctx);
  model.module().to(gpu, at::kBFloat16);
  auto gen = at::make_generator<at::CPUGeneratorImpl>(9);
  wanhost::Batch b;
  b.latents = at::randn({2, 16, 2, 16, 16}, gen).to(gpu, at::kBFloat16);
  b.text = at::randn({2, 16, 32}, gen).to(gpu, at::kBFloat16);
  b.text_lengths = at::tensor({16, 16});
  b.sample_keys = {0, 1};
  wanhost::Activations act;
  at::Tensor hidden;
  {
    at::NoGradGuard no_grad;
    act = model.embed(b, at::tensor({500.0f, 20.0f}).to(gpu));
    hidden = act.hidden.detach().clone();
    for (auto& c : act.context) c = c.detach();
  }
  const auto probe = at::randn(hidden.sizes(), gen).to(gpu);
  auto step = [&] {
    for (auto& [n, p] : params(model)) p.mutable_grad() = at::Tensor();
    auto h = hidden.detach().requires_grad_(true);
    for (std::int64_t i = 0; i < model.num_blocks(); ++i) h = model.block_forward(i, h, act);
    (h.to(at::kFloat) * probe).sum().backward();
  };
  auto to_cpu = [](const std::map<std::string, at::Tensor>& m) {
    std::map<std::string, at::Tensor> out;
    for (const auto& [n, g] : m) out[n] = g.to(at::kFloat).cpu().clone();
    return out;
  };
  auto grads = [&] {
    std::map<std::string, at::Tensor> g;
    for (auto& [n, p] : params(model))
      if (p.grad().defined()) g[n] = p.grad();  // the blocks' parameters (embed ran without grad)
    return g;
  };
  wanhost::core::StepGraph graph(gpu, step, 1);
  const auto captured = grads();  // replays write into the gradients the capture allocated
  ASSERT_FALSE(captured.empty());
  const at::Tensor first = hidden.clone(), second = (hidden * 0.5 + 0.25).contiguous();
  std::vector<std::map<std::string, at::Tensor>> eager;
  for (const auto& x : {first, second}) {
    hidden.copy_(x);
    step();
    eager.push_back(to_cpu(grads()));
    graph.replay();
    graph.replay();  // twice: a replay starts from the captured state, not from the last one
    const auto got = to_cpu(captured);
    ASSERT_EQ(got.size(), eager.back().size());
    for (const auto& [n, g] : eager.back()) {
      EXPECT_LE(rel(got.at(n), g), 1e-2) << n;
      EXPECT_GT(g.abs().sum().item<double>(), 0.0) << n << " has no gradient";
    }
  }
  // The two inputs' gradients differ by more than the tolerance: a replay that returned the
  // capture's (first input's) gradients would fail above.
  double changed = 0;
  for (const auto& [n, g] : eager[1]) changed = std::max(changed, rel(g, eager[0].at(n)));
  EXPECT_GT(changed, 5e-2);
}

// Collapsed text padding's key biases (collapsed_padding_bias): real rows 0; every value one of the
// compute dtype's (the attention adds the mask in that dtype); the padded rows' weights sum to the
// number of padded rows: exactly in float64, to float32 rounding, and in bf16 / half within the
// last row's rounding (1.6 % / 0.2 % of its weight for biases below 8, docs/model.md).
TEST(Wan21Dit, CollapsedPaddingBiasesAddUpToThePadding) {
  const std::vector<std::int64_t> lengths = {0, 7, 60, 123};
  const std::int64_t total = 512, kept = 128;
  for (const auto dtype : {at::kDouble, at::kFloat, at::kBFloat16, at::kHalf}) {
    const at::Tensor b =
        wanhost::plugins::wan21_dit::collapsed_padding_bias(lengths, total, kept, dtype);
    ASSERT_EQ(b.sizes(), (std::vector<std::int64_t>{4, kept}));
    EXPECT_TRUE(at::equal(b.to(dtype).to(at::kDouble), b)) << dtype << ": a value not of the dtype";
    for (std::size_t i = 0; i < lengths.size(); ++i) {
      const auto l = lengths[i];
      const auto row = b[static_cast<std::int64_t>(i)];
      if (l > 0) {
        EXPECT_EQ(row.narrow(0, 0, l).abs().max().item<double>(), 0.0);
      }
      const at::Tensor w = row.narrow(0, l, kept - l).exp();
      const double m = static_cast<double>(total - l), sum = w.sum().item<double>();
      const double last = w[-1].item<double>();
      const double allowed = dtype == at::kDouble  ? 1e-12 * m
                             : dtype == at::kFloat ? 1e-6 * m
                             : dtype == at::kHalf  ? 2e-3 * last
                                                   : 1.6e-2 * last;
      EXPECT_LE(std::abs(sum - m), allowed) << dtype << ", length " << l << ": weights " << sum;
      EXPECT_GT(w.min().item<double>(), 0.0);
    }
  }
}

// Collapsed text padding (collapse_text_padding, on by default): cross-attention over each
// sample's real rows plus a few padded rows with a key bias equals attending to every padded row.
// fp32: outputs, latent and parameter gradients within 1e-6 of the uncollapsed model, dense and
// packed (mixed grids, an empty prompt, a prompt filling all given rows); the collapsed run
// attends to max(length) + 4 text rows a sample, rounded up to a multiple of 64. bf16 (CPU): the
// collapsed model is no further from the fp32 result than the uncollapsed one (the biases' weights
// add up within the rounding the test above bounds).
void check_collapsed_padding(const c10::Device& device, double tol) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(23);
  const std::vector<std::int64_t> lengths = {0, 7, 20, 13};
  const std::int64_t rows = 20, text_len = 160;
  auto text = at::randn({4, rows, 32}, gen);
  for (int i = 0; i < 4; ++i) text[i].narrow(0, lengths[i], rows - lengths[i]).normal_(0, 1, gen);
  wanhost::Batch dense;
  dense.latents = at::randn({4, 16, 2, 4, 6}, gen);
  dense.text = text;
  dense.text_lengths = at::tensor(lengths);
  dense.sample_keys = {0, 1, 2, 3};
  wanhost::Batch packed = dense;
  packed.latents = at::randn({16, 2 * 4 * 6 * 2 + 1 * 6 * 4 * 2}, gen);
  packed.segments = {{0, 2, 4, 6}, {48, 2, 4, 6}, {96, 1, 6, 4}, {120, 1, 6, 4}};
  const auto t = at::tensor({500.0f, 20.0f, 999.0f, 250.0f});

  struct Run {
    at::Tensor out, input_grad;
    std::map<std::string, at::Tensor> grads;
    std::vector<std::int64_t> kv_rows;  // text rows per sample seen by biased cross-attention
  };
  auto run = [&](const wanhost::Batch& batch, bool collapse, at::ScalarType compute) {
    auto ctx = wanhost::single_process_context(device);
    ctx.compute_dtype = compute;
    auto seen = std::make_shared<std::vector<std::int64_t>>();
    ctx.attention_key_bias = [seen](const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                    const wanhost::AttentionArgs& args, const at::Tensor& bias) {
      seen->push_back(args.segments ? args.segments->host_cu_kv[1] : k.size(1));
      return wanhost::default_attention_key_bias(q, k, v, args, bias);
    };
    WanModel model(
        wanhost::plugins::wan21_dit::resolve_options(plugin_config(
            {{"init_seed", 9}, {"text_len", text_len}, {"collapse_text_padding", collapse}})),
        ctx);
    wanhost::Batch b = batch;
    b.latents = batch.latents.to(device).requires_grad_(true);
    Run r;
    r.out = model.forward(b, t.to(device));
    auto probe = at::ones_like(r.out, at::kFloat).cumsum(-1).sin();
    (r.out.to(at::kFloat) * probe).sum().backward();
    r.input_grad = b.latents.grad().cpu();
    for (auto& [n, p] : params(model)) r.grads[n] = p.grad().cpu();
    r.out = r.out.cpu();
    r.kv_rows = *seen;
    return r;
  };
  for (const auto* batch : {&dense, &packed}) {
    const char* kind = batch == &dense ? "dense" : "packed";
    const Run off = run(*batch, false, at::kFloat), on = run(*batch, true, at::kFloat);
    EXPECT_TRUE(off.kv_rows.empty()) << kind;
    ASSERT_FALSE(on.kv_rows.empty()) << kind << ": the collapsed model never used the key bias";
    EXPECT_EQ(on.kv_rows[0], 64) << kind;  // longest caption + 4, rounded up to 64
    EXPECT_LT(rel(on.out, off.out), tol) << kind;
    EXPECT_LT(rel(on.input_grad, off.input_grad), tol) << kind;
    // Cross-attention's key bias gets a zero gradient in exact arithmetic (it adds q.b to every
    // logit of a query alike; the softmax ignores that): its computed gradient is rounding noise,
    // compared in absolute terms against the gradients' scale.
    // All parameter gradients as one vector within `tol`; each tensor within 200 x tol: small
    // gradients made of cancelling sums (the cross-attention norm's and biases') carry fp32
    // rounding of a few 1e-5 relative (the model keeps fp32 islands, so float64 does not help);
    // a wrong bias or row count shows at 1e-3 and above.
    double worst = 0, scale = 0, zero_grad_diff = 0, diff2 = 0, norm2 = 0;
    std::string where;
    for (const auto& [n, g] : off.grads) {
      const double d = (on.grads.at(n) - g).norm().item<double>(), gn = g.norm().item<double>();
      scale = std::max(scale, gn);
      diff2 += d * d;
      norm2 += gn * gn;
      if (n.find("attn2.to_k.bias") != std::string::npos) {
        zero_grad_diff = std::max(zero_grad_diff, d);
        continue;
      }
      if (const double e = rel(on.grads.at(n), g); e > worst) worst = e, where = n;
    }
    EXPECT_LT(std::sqrt(diff2 / norm2), tol) << kind << " all parameter gradients";
    EXPECT_LT(worst, 200 * tol) << kind << " worst " << where;
    EXPECT_LT(zero_grad_diff, tol * scale) << kind << " attn2.to_k.bias";
    std::printf(
        "[collapse] %s %s fp32: output %.2e, parameter gradients %.2e (worst tensor %.2e, %s)\n",
        device.str().c_str(), kind, rel(on.out, off.out), std::sqrt(diff2 / norm2), worst,
        where.c_str());

    const Run on16 = run(*batch, true, at::kBFloat16), off16 = run(*batch, false, at::kBFloat16);
    const double e_on = rel(on16.out, off.out), e_off = rel(off16.out, off.out);
    std::printf("[collapse] %s %s bf16 vs fp32: collapsed %.3e, every padded row %.3e\n",
                device.str().c_str(), kind, e_on, e_off);
    EXPECT_LE(e_on, 1.5 * e_off + 1e-3) << kind;
    EXPECT_LE(rel(on16.input_grad, off.input_grad),
              1.5 * rel(off16.input_grad, off.input_grad) + 1e-3)
        << kind;
  }
}

TEST(Wan21Dit, CollapsedTextPaddingIsExact) {
  check_collapsed_padding(c10::Device(c10::kCPU), 1e-6);
}

// The same on a GPU (fp32 within 1e-5: other kernels' summation order): SDPA with a bf16 bias,
// fused kernels on.
TEST(Wan21Dit, CollapsedTextPaddingOnAGpu) {
  if (!at::hasCUDA()) GTEST_SKIP() << "needs a GPU";
  check_collapsed_padding(c10::Device(c10::kCUDA, 0), 1e-5);
}

// Model::graph_key (SDK 2.5): the kept text rows, the one shape the forward pass chooses from the
// batch's values, as the cross-attention sees them (and the RoPE cache's generation); batches of
// equal keys take equal shapes.
TEST(Wan21Dit, GraphKeyIsTheTextRowsTheCrossAttentionSees) {
  auto ctx = wanhost::single_process_context();
  auto seen = std::make_shared<std::vector<std::int64_t>>();
  ctx.attention_key_bias = [seen](const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                  const wanhost::AttentionArgs& args, const at::Tensor& bias) {
    seen->push_back(k.size(1));
    return wanhost::default_attention_key_bias(q, k, v, args, bias);
  };
  WanModel model(wanhost::plugins::wan21_dit::resolve_options(
                     plugin_config({{"init_seed", 4}, {"text_len", 512}})),
                 ctx);
  auto batch = [](std::vector<std::int64_t> lengths) {
    wanhost::Batch b;
    const auto n = static_cast<std::int64_t>(lengths.size());
    b.latents = at::randn({n, 16, 1, 4, 4});
    b.text = at::randn({n, 300, 32});
    b.text_lengths = at::tensor(lengths);
    for (std::int64_t i = 0; i < n; ++i) b.sample_keys.push_back(i);
    return b;
  };
  at::Tensor out;  // the last forward's
  auto rows_seen_by = [&](WanModel& m, const wanhost::Batch& b) {
    seen->clear();
    at::NoGradGuard no_grad;
    out = m.forward(b, at::full({b.batch_size()}, 500.0f));
    EXPECT_FALSE(seen->empty());
    return seen->empty() ? -1 : seen->front();
  };
  auto rows_seen = [&](const wanhost::Batch& b) { return rows_seen_by(model, b); };
  const auto short_a = batch({20, 50}), short_b = batch({31, 44}), long_c = batch({20, 290});
  const auto key_a = model.graph_key(short_a), key_c = model.graph_key(long_c);
  ASSERT_TRUE(key_a && key_c);
  EXPECT_EQ(*key_a, "rope 0, text rows " + std::to_string(rows_seen(short_a)));
  EXPECT_EQ(model.graph_key(short_b), key_a);
  EXPECT_EQ(rows_seen(short_b), rows_seen(short_a));
  EXPECT_EQ(*key_c, "rope 0, text rows " + std::to_string(rows_seen(long_c)));
  EXPECT_NE(*key_c, *key_a);
  // collapsed_rows_from = text_rows: the kept rows follow the batch's 300 rows (+ 4, rounded up
  // to 64: 320) whatever its captions, so one key, and the outputs of keeping fewer rows.
  WanModel fixed(wanhost::plugins::wan21_dit::resolve_options(plugin_config(
                     {{"init_seed", 4}, {"text_len", 512}, {"collapsed_rows_from", "text_rows"}})),
                 ctx);
  EXPECT_EQ(fixed.graph_key(short_a), std::optional<std::string>("rope 0, text rows 320"));
  EXPECT_EQ(fixed.graph_key(long_c), fixed.graph_key(short_a));
  for (const auto* b : {&short_a, &long_c}) {
    EXPECT_EQ(rows_seen_by(fixed, *b), 320);
    const at::Tensor kept_320 = out;
    rows_seen(*b);
    EXPECT_LT(rel(kept_320, out), 1e-5) << "kept 320 rows vs the longest caption's";
  }
  // Packed batches (host-side segment layouts) and masked text (lengths read on the device).
  wanhost::Batch packed = short_a;
  packed.latents = at::randn({16, 32});
  packed.segments = {{0, 1, 4, 4}, {16, 1, 4, 4}};
  EXPECT_FALSE(model.graph_key(packed).has_value());
  auto masked = make_model({{"mask_text_padding", true}});
  EXPECT_EQ(masked->graph_key(short_a), std::optional<std::string>("rope 0"));
}

// A captured step reads its RoPE table where the cache made it; the cache clears itself past 256
// grids, and the key then changes, so a graph whose table is gone is never replayed.
TEST(Wan21Dit, GraphKeyChangesWhenTheRopeCacheIsCleared) {
  auto model = make_model(Json::object());
  wanhost::Batch b;
  b.text = at::randn({1, 2, 32});
  b.text_lengths = at::tensor({2}, at::kLong);
  b.sample_keys = {0};
  const auto first = model->graph_key(b);
  at::NoGradGuard no_grad;
  for (std::int64_t h = 1; h <= 17; ++h)
    for (std::int64_t w = 1; w <= 16; ++w) {  // 272 token grids of 1 x h x w
      b.latents = at::zeros({1, 16, 1, 2 * h, 2 * w});
      model->forward(b, at::full({1}, 500.0f));
    }
  const auto after = model->graph_key(b);
  ASSERT_TRUE(first && after);
  EXPECT_NE(*after, *first);
}

// The forward pass of a training step does not wait for the device: with the trainer's inputs
// (SDK 2.4: the batch on the device, text_lengths pinned on the host), embedding (collapsed text
// padding included), blocks and head make no synchronising CUDA call after a first pass (which
// builds tables and plans), so the host runs ahead of the device and the pass could be captured
// in a CUDA graph. CUDA's sync debug mode turns any synchronising call into an error naming it.
TEST(Wan21Dit, ForwardDoesNotWaitForTheDeviceOnAGpu) {
  if (!at::hasCUDA()) GTEST_SKIP() << "needs a GPU";
#if WANHOST_WITH_CUDA
  const c10::Device gpu(c10::kCUDA, 0);
  auto ctx = wanhost::single_process_context(gpu);
  ctx.compute_dtype = at::kBFloat16;
  WanModel model(wanhost::plugins::wan21_dit::resolve_options(
                     plugin_config({{"init_seed", 3}, {"text_len", 64}})),
                 ctx);
  wanhost::Batch b;
  b.latents = at::randn({2, 16, 2, 4, 6}).to(gpu);
  b.text = at::randn({2, 20, 32}).to(gpu);
  b.text_lengths = at::tensor({7, 20}, at::kLong).pin_memory();
  b.sample_keys = {0, 1};
  const at::Tensor t = at::tensor({500.0f, 20.0f}).to(gpu);
  (void)model.forward(b, t);
  c10::cuda::device_synchronize();
  c10::cuda::warning_state().set_sync_debug_mode(c10::cuda::SyncDebugMode::L_ERROR);
  std::string error;
  try {
    (void)model.forward(b, t);
  } catch (const c10::Error& e) {
    error = e.what_without_backtrace();
  }
  c10::cuda::warning_state().set_sync_debug_mode(c10::cuda::SyncDebugMode::L_DISABLED);
  EXPECT_EQ(error, "") << "the forward pass synchronised with the device";
#endif
}

// mask_text_padding: an empty prompt (length 0) still attends one key row, its zeroed first row:
// the same as that prompt given as one zero row of length 1, in a dense and in a packed batch,
// and finite. (Without the rule a dense batch masks every key of the sample, a NaN row, and a
// packed one has an empty key segment.)
TEST(Wan21Dit, EmptyPromptKeepsOneKeyRowWhenMasked) {
  auto model = make_model({{"mask_text_padding", true}, {"init_seed", 5}});
  wanhost::Batch empty;
  empty.latents = at::randn({2, 16, 1, 8, 8});
  empty.text = at::randn({2, 16, 32});
  empty.text_lengths = at::tensor({0, 9});
  empty.sample_keys = {0, 1};
  wanhost::Batch one = empty;
  one.text = empty.text.clone();
  one.text[0].zero_();
  one.text_lengths = at::tensor({1, 9});
  const auto pack = [](wanhost::Batch b) {
    b.latents = at::cat({b.latents[0].reshape({16, 64}), b.latents[1].reshape({16, 64})}, 1);
    b.segments = {wanhost::PackSegment{0, 1, 8, 8}, wanhost::PackSegment{64, 1, 8, 8}};
    return b;
  };
  const auto t = at::tensor({500.0f, 20.0f});
  at::NoGradGuard no_grad;
  const at::Tensor dense = model->forward(empty, t);
  EXPECT_TRUE(at::isfinite(dense).all().item<bool>());
  EXPECT_LT(rel(dense, model->forward(one, t)), 1e-6);
  const at::Tensor packed = model->forward(pack(empty), t);
  EXPECT_TRUE(at::isfinite(packed).all().item<bool>());
  EXPECT_LT(rel(packed, model->forward(pack(one), t)), 1e-6);
  EXPECT_LT(rel(packed.narrow(1, 0, 64).reshape({16, 1, 8, 8}), dense[0]), 1e-5);
}

// default_attention: key masks equal truncation, packed segments equal separate calls.
TEST(DefaultAttention, MaskAndPackedSegmentsAgree) {
  auto q = at::randn({2, 7, 3, 8}), k = at::randn({2, 5, 3, 8}), v = at::randn({2, 5, 3, 8});
  wanhost::AttentionArgs masked;
  masked.kv_lengths = at::tensor({3, 5});
  auto out = wanhost::default_attention(q, k, v, masked);
  auto first = wanhost::default_attention(q.narrow(0, 0, 1), k.narrow(0, 0, 1).narrow(1, 0, 3),
                                          v.narrow(0, 0, 1).narrow(1, 0, 3), {});
  EXPECT_LT(rel(out.narrow(0, 0, 1), first), 1e-6);
  EXPECT_LT(
      rel(out.narrow(0, 1, 1),
          wanhost::default_attention(q.narrow(0, 1, 1), k.narrow(0, 1, 1), v.narrow(0, 1, 1), {})),
      1e-6);

  wanhost::AttentionSegments seg;
  seg.host_cu_q = {0, 7, 14};
  seg.host_cu_kv = {0, 3, 8};
  wanhost::AttentionArgs packed;
  packed.segments = &seg;
  auto qp = at::cat({q[0], q[1]}, 0).unsqueeze(0);
  auto kp = at::cat({k[0].narrow(0, 0, 3), k[1]}, 0).unsqueeze(0);
  auto vp = at::cat({v[0].narrow(0, 0, 3), v[1]}, 0).unsqueeze(0);
  auto outp = wanhost::default_attention(qp, kp, vp, packed);
  EXPECT_LT(rel(outp[0].narrow(0, 0, 7), out[0]), 1e-6);
  EXPECT_LT(rel(outp[0].narrow(0, 7, 7), out[1]), 1e-6);
  seg.host_cu_q = {0, 7, 13};  // does not cover the queries
  EXPECT_THROW(wanhost::default_attention(qp, kp, vp, packed), c10::Error);
}

// A pack of a few runs of equal segments (each run one dense SDPA batch) gives the per-segment
// loop's outputs and gradients; so does a pack whose sizes alternate (more runs than the dense
// path takes). Self-attention (q and kv runs alike) and cross-attention (runs differ in kv).
// The host's rule after a parallelism's setup(): a plugin that replaced `attention` but not
// `attention_key_bias` loses the default biased one (it would bypass the plugin's attention), so
// the model then computes every padded row itself; one that replaced both, or neither, keeps it.
TEST(DefaultAttention, KeyBiasAttentionFollowsAReplacedAttention) {
  auto own = [](const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                const wanhost::AttentionArgs& args) {
    return wanhost::default_attention(q, k, v, args);
  };
  auto ctx = wanhost::single_process_context();
  wanhost::keep_key_bias_attention_consistent(ctx);
  EXPECT_TRUE(static_cast<bool>(ctx.attention_key_bias)) << "defaults untouched";
  ctx.attention = own;
  wanhost::keep_key_bias_attention_consistent(ctx);
  EXPECT_FALSE(static_cast<bool>(ctx.attention_key_bias)) << "attention replaced alone";
  auto both = wanhost::single_process_context();
  both.attention = own;
  both.attention_key_bias = [](const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                               const wanhost::AttentionArgs& args, const at::Tensor& bias) {
    return wanhost::default_attention_key_bias(q, k, v, args, bias);
  };
  wanhost::keep_key_bias_attention_consistent(both);
  EXPECT_TRUE(static_cast<bool>(both.attention_key_bias)) << "both replaced";
  // Without a biased attention the model collapses nothing: the same result as collapse off.
  auto batch = wanhost::Batch{};
  batch.latents = at::randn({1, 16, 1, 4, 4});
  batch.text = at::randn({1, 5, 32});
  batch.text_lengths = at::tensor({5});
  batch.sample_keys = {0};
  const auto t = at::tensor({300.0f});
  auto options = wanhost::plugins::wan21_dit::resolve_options(plugin_config({{"init_seed", 2}}));
  WanModel without(options, ctx);
  options.collapse_text_padding = false;
  WanModel off(options, both);
  at::NoGradGuard no_grad;
  EXPECT_TRUE(at::equal(without.forward(batch, t), off.forward(batch, t)));
}

TEST(DefaultAttention, RunsOfEqualSegmentsEqualTheLoop) {
  using wanhost::KernelOptions;
  const KernelOptions saved = wanhost::kernel_options();
  struct Case {
    std::vector<std::int64_t> q, kv;
  };
  const std::vector<Case> cases = {
      {{5, 5, 5, 3, 3, 9}, {5, 5, 5, 3, 3, 9}},
      {{5, 5, 5, 3, 3, 9}, {6, 6, 6, 6, 2, 6}},
      {{4, 2, 4, 2, 4, 2, 4, 2, 4, 2}, {4, 2, 4, 2, 4, 2, 4, 2, 4, 2}}};
  for (const Case& c : cases) {
    wanhost::AttentionSegments seg;
    seg.host_cu_q = {0};
    seg.host_cu_kv = {0};
    for (std::size_t i = 0; i < c.q.size(); ++i) {
      seg.host_cu_q.push_back(seg.host_cu_q.back() + c.q[i]);
      seg.host_cu_kv.push_back(seg.host_cu_kv.back() + c.kv[i]);
    }
    const auto q = at::randn({1, seg.host_cu_q.back(), 3, 8});
    const auto k = at::randn({1, seg.host_cu_kv.back(), 3, 8});
    const auto v = at::randn({1, seg.host_cu_kv.back(), 3, 8});
    const auto gy = at::randn_like(q);
    wanhost::AttentionArgs args;
    args.segments = &seg;
    auto run = [&](KernelOptions::PackedAttention kind) {
      KernelOptions o = saved;
      o.packed_attention = kind;
      wanhost::set_kernel_options(o);
      std::vector<at::Tensor> in{q.clone().requires_grad_(true), k.clone().requires_grad_(true),
                                 v.clone().requires_grad_(true)};
      auto y = wanhost::default_attention(in[0], in[1], in[2], args);
      auto g = torch::autograd::grad({y}, in, {gy});
      g.insert(g.begin(), y.detach());
      return g;
    };
    const auto dense = run(KernelOptions::PackedAttention::automatic);
    const auto loop = run(KernelOptions::PackedAttention::loop);
    const char* names[] = {"output", "dq", "dk", "dv"};
    for (int i = 0; i < 4; ++i)
      EXPECT_LT(rel(dense[i], loop[i]), 1e-6) << names[i] << ", case " << &c - cases.data();
  }
  wanhost::set_kernel_options(saved);
}

}  // namespace
