// wan_vae against Diffusers' AutoencoderKLWan (reference tensors from
// tests/reference/make_vae_reference.py), plus its configuration, weight and input checks.
#include <gtest/gtest.h>

#include "parity_util.hpp"

#include <ATen/ATen.h>

#include <cstdio>
#include <filesystem>
#include <fstream>

#include "wan_vae.hpp"
#include "wanhost/errors.hpp"
#include "wanhost/kit/safetensors.hpp"

namespace fs = std::filesystem;
namespace st = wanhost::safetensors;
using wanhost::plugins::wan_vae::VaeConfig;
using wanhost::plugins::wan_vae::VaeOptions;
using wanhost::plugins::wan_vae::WanVae;

namespace {

using wanhost::testing::rel_l2;

const fs::path kRef = fs::path(WANHOST_BINARY_DIR) / "reference" / "vae";
const fs::path kTmp = WANHOST_TEST_TMP;

std::map<std::string, at::Tensor> data(const std::string& name) {
  return st::File::open((kRef / name / "data.safetensors").string()).load_all();
}

std::unique_ptr<WanVae> load(const fs::path& weights, const std::string& config_file = "",
                             bool slicing = false) {
  VaeOptions o;
  o.config_file = config_file;
  o.batch_slicing = slicing;
  auto vae = std::make_unique<WanVae>(o);
  vae->load_weights(weights.string());
  vae->to(at::kCPU, at::kFloat);
  return vae;
}

std::string message_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "(no exception)";
}

bool have_reference() {
  return fs::exists(kRef / "DONE");
}

#define REQUIRE_REFERENCE() \
  if (!have_reference()) GTEST_SKIP() << "no reference tensors in " << kRef

class Parity : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    REQUIRE_REFERENCE();
    vae_ = load(kRef / GetParam() / "model");
    data_ = data(GetParam());
  }
  std::unique_ptr<WanVae> vae_;
  std::map<std::string, at::Tensor> data_;
};

TEST_P(Parity, EncodeMatchesDiffusersInFloat32) {
  at::InferenceMode guard;
  int n = 0;
  for (int i = 0; data_.count("video_" + std::to_string(i)); ++i, ++n) {
    const auto& video = data_.at("video_" + std::to_string(i));
    const auto& want = data_.at("latents_" + std::to_string(i));
    const at::Tensor got = vae_->encode(video);
    ASSERT_EQ(got.sizes(), want.sizes()) << "video " << video.sizes();
    const double rel = rel_l2(got, want);
    EXPECT_LT(rel, 1e-4) << GetParam() << " encode of " << video.sizes();
    std::printf("[%s] encode %s: rel L2 %.3g\n", GetParam().c_str(),
                c10::str(video.sizes()).c_str(), rel);
    // The unnormalised posterior mean as Diffusers' latent_dist.mode() gives it.
    EXPECT_LT(rel_l2(vae_->encode_mean(video), data_.at("mean_" + std::to_string(i))), 1e-4);
  }
  EXPECT_GT(n, 0);
}

TEST_P(Parity, DecodeMatchesDiffusersInFloat32) {
  at::InferenceMode guard;
  int n = 0;
  for (int j = 0; data_.count("z_" + std::to_string(j)); ++j, ++n) {
    const auto& z = data_.at("z_" + std::to_string(j));
    const auto& want = data_.at("video_out_" + std::to_string(j));
    const at::Tensor got = vae_->decode(z);
    ASSERT_EQ(got.sizes(), want.sizes()) << "latents " << z.sizes();
    const double rel = rel_l2(got, want);
    EXPECT_LT(rel, 1e-4) << GetParam() << " decode of " << z.sizes();
    EXPECT_LE(got.abs().max().item<double>(), 1.0) << "decode clamps to [-1, 1]";
    std::printf("[%s] decode %s: rel L2 %.3g\n", GetParam().c_str(), c10::str(z.sizes()).c_str(),
                rel);
  }
  EXPECT_GT(n, 0);
}

INSTANTIATE_TEST_SUITE_P(Cases, Parity, ::testing::Values("base", "wan_layout", "small"));

TEST(WanVae, Bfloat16IsCloseToTheReference) {
  REQUIRE_REFERENCE();
  auto vae = load(kRef / "base" / "model");
  vae->to(at::kCPU, at::kBFloat16);
  const auto d = data("base");
  at::InferenceMode guard;
  const at::Tensor lat = vae->encode(d.at("video_0").to(at::kBFloat16));
  EXPECT_EQ(lat.scalar_type(), at::kBFloat16);
  const double enc32 = rel_l2(lat, d.at("latents_0")), enc16 = rel_l2(lat, d.at("latents_bf16_0"));
  const at::Tensor vid = vae->decode(d.at("z_0").to(at::kBFloat16));
  const double dec32 = rel_l2(vid, d.at("video_out_0")),
               dec16 = rel_l2(vid, d.at("video_out_bf16_0"));
  std::printf(
      "bf16 encode: %.3g vs fp32 Diffusers, %.3g vs bf16 Diffusers (Diffusers bf16 vs "
      "fp32: %.3g)\n",
      enc32, enc16, rel_l2(d.at("latents_bf16_0"), d.at("latents_0")));
  std::printf(
      "bf16 decode: %.3g vs fp32 Diffusers, %.3g vs bf16 Diffusers (Diffusers bf16 vs "
      "fp32: %.3g)\n",
      dec32, dec16, rel_l2(d.at("video_out_bf16_0"), d.at("video_out_0")));
  EXPECT_LT(enc32, 3e-2);
  EXPECT_LT(dec32, 3e-2);
  // The same bf16 arithmetic as Diffusers (bit-identical on CPU with torch 2.11).
  EXPECT_LT(enc16, 2e-3);
  EXPECT_LT(dec16, 2e-3);
}

TEST(WanVae, ShardedCheckpointGivesTheSameResult) {
  REQUIRE_REFERENCE();
  auto vae = load(kRef / "base" / "model_sharded");
  const auto d = data("base");
  at::InferenceMode guard;
  EXPECT_LT(rel_l2(vae->encode(d.at("video_0")), d.at("latents_0")), 1e-4);
}

TEST(WanVae, OriginalWanKeysLoad) {
  REQUIRE_REFERENCE();
  auto vae = load(kRef / "wan_layout" / "wan_original.safetensors",
                  (kRef / "wan_layout" / "model" / "config.json").string());
  const auto d = data("wan_layout");
  at::InferenceMode guard;
  EXPECT_LT(rel_l2(vae->encode(d.at("video_0")), d.at("latents_0")), 1e-4);
  EXPECT_LT(rel_l2(vae->decode(d.at("z_0")), d.at("video_out_0")), 1e-4);
}

TEST(WanVae, BatchSlicingGivesTheSameResult) {
  REQUIRE_REFERENCE();
  auto sliced = load(kRef / "small" / "model", "", true);
  const auto d = data("small");
  at::InferenceMode guard;
  ASSERT_EQ(d.at("video_0").size(0), 2);
  EXPECT_LT(rel_l2(sliced->encode(d.at("video_0")), d.at("latents_0")), 1e-4);
  EXPECT_LT(rel_l2(sliced->decode(d.at("z_0")), d.at("video_out_0")), 1e-4);
}

TEST(WanVae, EncodingIsCausal) {
  // The latents of the first 5 frames do not depend on later frames.
  REQUIRE_REFERENCE();
  auto vae = load(kRef / "small" / "model");
  const auto d = data("small");
  at::InferenceMode guard;
  const at::Tensor head = vae->encode(d.at("video_0").narrow(2, 0, 5).contiguous());
  ASSERT_EQ(head.size(2), 2);
  EXPECT_LT(rel_l2(head, d.at("latents_0").narrow(2, 0, 2)), 1e-4);
}

TEST(WanVae, WorksWithoutGradModeGuardAndKeepsNoGraph) {
  REQUIRE_REFERENCE();
  auto vae = load(kRef / "base" / "model");
  const auto d = data("base");
  const at::Tensor lat = vae->encode(d.at("video_0"));
  EXPECT_FALSE(lat.requires_grad());
  EXPECT_LT(rel_l2(lat, d.at("latents_0")), 1e-4);
}

TEST(WanVae, MisshapedMissingAndUnexpectedTensorsAreListedInOneError) {
  REQUIRE_REFERENCE();
  const std::string msg = message_of([] {
    load(kRef / "malformed" / "bad.safetensors",
         (kRef / "base" / "model" / "config.json").string());
  });
  for (const char* part :
       {"bad.safetensors", "2 missing, 1 unexpected, 1 mis-shaped", "decoder.conv_out.bias",
        "encoder.mid_block.attentions.0.norm.gamma", "encoder.down_blocks.0.extra.weight",
        "quant_conv.weight: checkpoint [8, 9, 1, 1, 1], model [8, 8, 1, 1, 1]"})
    EXPECT_NE(msg.find(part), std::string::npos) << "missing '" << part << "' in:\n" << msg;
}

TEST(WanVae, SingleFileWithoutConfigIsCheckedAgainstWan21) {
  REQUIRE_REFERENCE();
  const std::string msg =
      message_of([] { load(kRef / "base" / "model" / "diffusion_pytorch_model.safetensors"); });
  EXPECT_NE(msg.find("the Wan 2.1 defaults"), std::string::npos) << msg;
  // base_dim 16 in the file, 96 in Wan 2.1: the first convolution is named with both shapes.
  EXPECT_NE(msg.find("encoder.conv_in.weight: checkpoint [16, 3, 3, 3, 3], model [96, 3, 3, 3, 3]"),
            std::string::npos)
      << msg;
  EXPECT_EQ(msg.find(" 0 mis-shaped"), std::string::npos) << msg;
}

TEST(WanVae, InputShapesAreValidated) {
  REQUIRE_REFERENCE();
  auto vae = load(kRef / "base" / "model");
  at::InferenceMode guard;
  const auto expect = [&](const at::Tensor& x, bool enc, const std::string& part) {
    try {
      enc ? vae->encode(x) : vae->decode(x);
      ADD_FAILURE() << "no error for " << x.sizes() << ", expected '" << part << "'";
    } catch (const std::invalid_argument& e) {
      EXPECT_NE(std::string(e.what()).find(part), std::string::npos) << e.what();
    }
  };
  expect(at::zeros({1, 3, 5, 32}), true, "must have 5 dimensions [B, 3, F, H, W], got 4");
  expect(at::zeros({1, 4, 5, 32, 48}), true, "dimension 1 (channels) is 4; it must be 3");
  expect(at::zeros({1, 3, 6, 32, 48}), true,
         "dimension 2 (frames F) is 6; it must be 1 + 4k (1, 5, 9, ...)");
  expect(at::zeros({1, 3, 0, 32, 48}), true, "dimension 2 (frames F) is 0");
  expect(at::zeros({1, 3, 5, 30, 48}), true,
         "dimension 3 (height H) is 30; it must be a positive multiple of 8");
  expect(at::zeros({1, 3, 5, 32, 44}), true,
         "dimension 4 (width W) is 44; it must be a positive multiple of 8");
  expect(at::zeros({1, 3, 5, 32, 48}, at::kLong), true, "floating-point");
  expect(at::zeros({1, 5, 2, 4, 6}), false, "dimension 1 (channels) is 5; it must be 4");
  expect(at::zeros({1, 4, 0, 4, 6}), false, "dimension 2 (frames F) is 0");
  expect(at::zeros({4, 2, 4, 6}), false, "must have 5 dimensions [B, 4, F, h, w]");
}

TEST(WanVae, EncodeBeforeLoadingWeightsIsRefused) {
  WanVae vae(VaeOptions{});
  EXPECT_THROW(vae.encode(at::zeros({1, 3, 1, 8, 8})), std::logic_error);
  EXPECT_THROW(vae.decode(at::zeros({1, 16, 1, 1, 1})), std::logic_error);
}

TEST(WanVae, DefaultIsTheWan21Vae) {
  WanVae vae(VaeOptions{});
  std::int64_t count = 0, enc = 0, dec = 0;
  for (const auto& p : vae.module().named_parameters(true)) {
    count += p.value().numel();
    if (p.key().rfind("encoder.", 0) == 0) enc += p.value().numel();
    if (p.key().rfind("decoder.", 0) == 0) dec += p.value().numel();
  }
  // AutoencoderKLWan with its default config (diffusers/models/autoencoders/autoencoder_kl_wan.py;
  // total also in docs/model.md): encoder 53,595,872; decoder 73,295,331; total 126,892,531.
  EXPECT_EQ(enc, 53595872);
  EXPECT_EQ(dec, 73295331);
  EXPECT_EQ(count, 126892531);
  EXPECT_EQ(vae.latent_channels(), 16);
  EXPECT_EQ(vae.temporal_ratio(), 4);
  EXPECT_EQ(vae.spatial_ratio(), 8);
  const auto& c = vae.config();
  ASSERT_EQ(c.latents_mean.size(), 16u);
  EXPECT_DOUBLE_EQ(c.latents_mean[0], -0.7571);
  EXPECT_DOUBLE_EQ(c.latents_mean[15], -0.2921);
  EXPECT_DOUBLE_EQ(c.latents_std[8], 3.2687);
  EXPECT_DOUBLE_EQ(c.latents_std[15], 1.9160);
}

TEST(WanVae, ConfigJsonRoundTrips) {
  REQUIRE_REFERENCE();
  auto vae = load(kRef / "small" / "model");
  EXPECT_EQ(vae->config().decoder_base_dim, 12);
  EXPECT_EQ(vae->spatial_ratio(), 4);
  const VaeConfig again =
      wanhost::plugins::wan_vae::parse_config(wanhost::Json::parse(vae->config_json()));
  EXPECT_TRUE(again == vae->config());
  std::ifstream in(kRef / "small" / "model" / "config.json");
  EXPECT_TRUE(wanhost::plugins::wan_vae::parse_config(wanhost::Json::parse(in)) == vae->config());
}

TEST(WanVae, UnsupportedConfigValuesNameTheKey) {
  using wanhost::Json;
  const Json base = Json::parse(R"({"base_dim": 8, "z_dim": 2, "dim_mult": [1, 2, 2],
      "temperal_downsample": [true, true], "latents_mean": [0, 0], "latents_std": [1, 1]})");
  ASSERT_NO_THROW(wanhost::plugins::wan_vae::parse_config(base));
  const auto refused = [&](const Json& patch, const std::string& key, const std::string& part) {
    Json j = base;
    j.merge_patch(patch);
    try {
      wanhost::plugins::wan_vae::parse_config(j);
      ADD_FAILURE() << "accepted " << patch.dump();
    } catch (const wanhost::plugins::wan_vae::ConfigKeyError& e) {
      EXPECT_EQ(e.key, key) << patch.dump() << ": " << e.message;
      EXPECT_NE(e.message.find(part), std::string::npos) << e.message;
    }
  };
  refused({{"is_residual", true}}, "is_residual", "Wan 2.2");
  refused({{"patch_size", 2}}, "patch_size", "only null");
  refused({{"attn_scales", {0.5}}}, "attn_scales", "must be []");
  refused({{"temperal_downsample", {true, false}}}, "temperal_downsample", "exactly two");
  refused({{"temperal_downsample", {true, true, true}}}, "temperal_downsample",
          "len(dim_mult) - 1 = 2");
  refused({{"latents_mean", {0, 0, 0}}}, "latents_mean", "z_dim = 2");
  refused({{"latents_std", {1, 0}}}, "latents_std", "positive");
  refused({{"scale_factor_spatial", 8}}, "scale_factor_spatial", "compresses by 4");
  refused({{"scale_factor_temporal", 8}}, "scale_factor_temporal", "compresses by 4");
  refused({{"base_dim", 0}}, "base_dim", "positive integer");
  refused({{"dropout", 2}}, "dropout", "[0, 1]");
  refused({{"non_linearity", "gelu"}}, "non_linearity", "unknown AutoencoderKLWan config key");
  // The Wan 2.1 statistics are 16 values: other widths must bring their own.
  refused(Json::parse(R"({"latents_mean": null})"), "latents_mean", "required when z_dim");

  // In a file, the error names the file and the key.
  fs::create_directories(kTmp);
  const auto file = (kTmp / "config.json").string();
  Json j = base;
  j["is_residual"] = true;
  std::ofstream(file) << j.dump();
  const std::string msg = message_of([&] { wanhost::plugins::wan_vae::read_config_file(file); });
  EXPECT_NE(msg.find(file), std::string::npos) << msg;
  EXPECT_NE(msg.find("key 'is_residual'"), std::string::npos) << msg;
  j = base;
  j["_class_name"] = "AutoencoderKL";
  std::ofstream(file) << j.dump();
  EXPECT_NE(message_of([&] {
              wanhost::plugins::wan_vae::read_config_file(file);
            }).find("not an AutoencoderKLWan"),
            std::string::npos);
}

TEST(WanVae, OriginalNamesMapToDiffusersNames) {
  const VaeConfig c;  // Wan 2.1: 2 residual blocks per level, so 4 decoder entries per block
  const std::pair<const char*, const char*> cases[] = {
      {"conv1.weight", "quant_conv.weight"},
      {"conv2.bias", "post_quant_conv.bias"},
      {"encoder.conv1.weight", "encoder.conv_in.weight"},
      {"encoder.downsamples.3.shortcut.weight", "encoder.down_blocks.3.conv_shortcut.weight"},
      {"encoder.downsamples.5.time_conv.bias", "encoder.down_blocks.5.time_conv.bias"},
      {"encoder.downsamples.2.resample.1.weight", "encoder.down_blocks.2.resample.1.weight"},
      {"encoder.middle.2.residual.6.weight", "encoder.mid_block.resnets.1.conv2.weight"},
      {"decoder.middle.1.to_qkv.weight", "decoder.mid_block.attentions.0.to_qkv.weight"},
      {"decoder.upsamples.4.residual.0.gamma", "decoder.up_blocks.1.resnets.0.norm1.gamma"},
      {"decoder.upsamples.7.time_conv.weight", "decoder.up_blocks.1.upsamplers.0.time_conv.weight"},
      {"decoder.upsamples.11.resample.1.bias", "decoder.up_blocks.2.upsamplers.0.resample.1.bias"},
      {"decoder.upsamples.14.residual.3.gamma", "decoder.up_blocks.3.resnets.2.norm2.gamma"},
      {"decoder.head.2.weight", "decoder.conv_out.weight"},
      {"decoder.head.0.gamma", "decoder.norm_out.gamma"},
  };
  for (const auto& [from, to] : cases)
    EXPECT_EQ(wanhost::plugins::wan_vae::original_to_diffusers(from, c), to);
}

}  // namespace
