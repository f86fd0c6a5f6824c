// `wanhost model forward --plugin wan_vae --entry encode|decode` against the Diffusers outputs of
// the reference case "base" (tests/reference/make_vae_reference.py), plus its input errors.
#include <gtest/gtest.h>

#include <sys/wait.h>
#include "parity_util.hpp"

#include <ATen/ATen.h>

#include <cstdio>
#include <filesystem>

#include "wanhost/kit/safetensors.hpp"

namespace fs = std::filesystem;
namespace st = wanhost::safetensors;

namespace {

using wanhost::testing::rel_l2;
using wanhost::testing::run_wanhost;

const fs::path kCase = fs::path(WANHOST_BINARY_DIR) / "reference" / "vae" / "base";
const fs::path kTmp = WANHOST_TEST_TMP;

class VaeForward : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!fs::exists(kCase / "data.safetensors"))
      GTEST_SKIP() << "no reference tensors in " << kCase;
    fs::create_directories(kTmp);
    data_ = st::File::open((kCase / "data.safetensors").string()).load_all();
  }
  std::string write(const std::string& file, const std::string& name, const at::Tensor& t) {
    const std::string path = (kTmp / file).string();
    st::save(path, {{name, t}});
    return path;
  }
  std::string run(const std::string& entry, const std::string& inputs, const std::string& out,
                  int want_code, const std::string& extra = "") {
    const auto r =
        run_wanhost("model forward --plugin wan_vae --weights " + (kCase / "model").string() +
                    " --entry " + entry + " --inputs " + inputs + " --output " + out + extra);
    EXPECT_EQ(r.code, want_code) << r.output;
    return r.output;
  }
  std::map<std::string, at::Tensor> data_;
};

TEST_F(VaeForward, EncodeMatchesDiffusersInFloat32) {
  const std::string out = (kTmp / "latents.safetensors").string();
  run("encode", write("video.safetensors", "video", data_.at("video_1")), out, 0);
  const at::Tensor latents = st::File::open(out).load("latents");
  ASSERT_EQ(latents.sizes(), data_.at("latents_1").sizes());
  EXPECT_LT(rel_l2(latents, data_.at("latents_1")), 1e-4);
}

TEST_F(VaeForward, DecodeMatchesDiffusersInFloat32) {
  const std::string out = (kTmp / "video_out.safetensors").string();
  run("decode", write("z.safetensors", "latents", data_.at("z_0")), out, 0);
  const at::Tensor video = st::File::open(out).load("video");
  ASSERT_EQ(video.sizes(), data_.at("video_out_0").sizes());
  EXPECT_LT(rel_l2(video, data_.at("video_out_0")), 1e-4);
}

TEST_F(VaeForward, Bfloat16EncodeIsClose) {
  const std::string out = (kTmp / "latents_bf16.safetensors").string();
  run("encode", write("video_bf16.safetensors", "video", data_.at("video_0")), out, 0,
      " --dtype bfloat16");
  const at::Tensor latents = st::File::open(out).load("latents");
  EXPECT_EQ(latents.scalar_type(), at::kBFloat16);
  EXPECT_LT(rel_l2(latents.to(at::kFloat), data_.at("latents_0")), 3e-2);
}

TEST_F(VaeForward, BadInputsSayWhatIsWrong) {
  const std::string out = (kTmp / "never.safetensors").string();
  const at::Tensor six_frames = data_.at("video_0").narrow(2, 0, 4).contiguous();
  // The input's fault: a usage error (exit 2) naming the file.
  const std::string bad_frames = write("bad_frames.safetensors", "video", six_frames);
  std::string msg = run("encode", bad_frames, out, 2);
  EXPECT_NE(msg.find("--inputs " + bad_frames + ": "), std::string::npos) << msg;
  EXPECT_NE(msg.find("dimension 2 (frames F) is 4; it must be 1 + 4k"), std::string::npos) << msg;
  const at::Tensor narrow = data_.at("video_0").narrow(4, 0, 44).contiguous();
  msg = run("encode", write("bad_width.safetensors", "video", narrow), out, 2);
  EXPECT_NE(msg.find("dimension 4 (width W) is 44; it must be a positive multiple of 8"),
            std::string::npos)
      << msg;
  // The encoder's input name is "video", the decoder's "latents".
  msg = run("decode", write("named_video.safetensors", "video", data_.at("z_0")), out, 2);
  EXPECT_NE(msg.find("no tensor named 'latents'"), std::string::npos) << msg;
  EXPECT_FALSE(fs::exists(out));
}

}  // namespace
