// `wanhost model forward` against the Diffusers output of the reference case "base"
// (tests/reference/make_wan_reference.py), plus its usage errors.
#include <gtest/gtest.h>

#include <sys/wait.h>
#include "parity_util.hpp"

#include <ATen/ATen.h>

#include <cstdio>
#include <filesystem>
#include <fstream>

#include "wanhost/kit/safetensors.hpp"

namespace fs = std::filesystem;
namespace st = wanhost::safetensors;

namespace {

using wanhost::testing::run_wanhost;

const fs::path kCase = fs::path(WANHOST_BINARY_DIR) / "reference" / "wan" / "base";
const fs::path kTmp = WANHOST_TEST_TMP;

class ModelForward : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!fs::exists(kCase / "data.safetensors"))
      GTEST_SKIP() << "no reference tensors in " << kCase;
    fs::create_directories(kTmp);
    const auto data = st::File::open((kCase / "data.safetensors").string()).load_all();
    inputs_ = (kTmp / "inputs.safetensors").string();
    st::save(inputs_, {{"hidden_states", data.at("latents")},
                       {"timestep", data.at("timesteps")},
                       {"encoder_hidden_states", data.at("text")}});
    reference_ = data.at("out");
  }
  std::string inputs_;
  at::Tensor reference_;
};

TEST_F(ModelForward, MatchesDiffusersInFloat32) {
  const std::string out = (kTmp / "out.safetensors").string();
  const auto r =
      run_wanhost("model forward --plugin wan21_dit --weights " + (kCase / "model").string() +
                  " --inputs " + inputs_ + " --output " + out);
  ASSERT_EQ(r.code, 0) << r.output;
  const at::Tensor sample = st::File::open(out).load("sample");
  ASSERT_EQ(sample.sizes(), reference_.sizes());
  const double rel = ((sample - reference_).norm() / reference_.norm()).item<double>();
  EXPECT_LT(rel, 1e-4) << "relative L2 error against Diffusers";
}

TEST_F(ModelForward, Bfloat16IsCloseToTheFloat32Reference) {
  const std::string out = (kTmp / "out_bf16.safetensors").string();
  const auto r =
      run_wanhost("model forward --plugin wan21_dit --dtype bfloat16 --weights " +
                  (kCase / "model").string() + " --inputs " + inputs_ + " --output " + out);
  ASSERT_EQ(r.code, 0) << r.output;
  const at::Tensor sample = st::File::open(out).load("sample").to(at::kFloat);
  const double rel = ((sample - reference_).norm() / reference_.norm()).item<double>();
  EXPECT_LT(rel, 3e-2) << "bf16 against the fp32 reference (Diffusers bf16 itself is ~6e-3 off)";
}

TEST_F(ModelForward, UsageErrorsSayWhatIsWrong) {
  const std::string model = (kCase / "model").string();
  const std::string bad_inputs = (kTmp / "bad_inputs.safetensors").string();
  st::save(bad_inputs, {{"latents", reference_}});
  auto r = run_wanhost("model forward --plugin wan21_dit --weights " + model + " --inputs " +
                       bad_inputs + " --output " + (kTmp / "x.safetensors").string());
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("no tensor named 'hidden_states'"), std::string::npos) << r.output;

  r = run_wanhost("model forward --plugin wan21_dit --weights " + kTmp.string() + " --inputs " +
                  inputs_ + " --output " + (kTmp / "x.safetensors").string());
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("expected a folder with config.json"), std::string::npos) << r.output;

  r = run_wanhost("model forward --plugin no_such_model --weights " + model + " --inputs " +
                  inputs_ + " --output " + (kTmp / "x.safetensors").string());
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("no plugin named 'no_such_model'"), std::string::npos) << r.output;

  // Batch 0 (issue 18: embed() read the first sample of an empty batch and died with SIGSEGV).
  const std::string empty_inputs = (kTmp / "empty_inputs.safetensors").string();
  const auto data = st::File::open(inputs_).load_all();
  st::save(empty_inputs,
           {{"hidden_states", data.at("hidden_states").narrow(0, 0, 0)},
            {"timestep", data.at("timestep").narrow(0, 0, 0)},
            {"encoder_hidden_states", data.at("encoder_hidden_states").narrow(0, 0, 0)}});
  r = run_wanhost("model forward --plugin wan21_dit --weights " + model + " --inputs " +
                  empty_inputs + " --output " + (kTmp / "x.safetensors").string());
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("--inputs " + empty_inputs + ": "), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("batch is empty"), std::string::npos) << r.output;

  const std::string pickle = (kTmp / "inputs.pt").string();
  std::ofstream(pickle, std::ios::binary) << std::string("\x80\x02}q\x00.", 6);
  r = run_wanhost("model forward --plugin wan21_dit --weights " + model + " --inputs " + pickle +
                  " --output " + (kTmp / "x.safetensors").string());
  EXPECT_NE(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("pickle"), std::string::npos) << r.output;
}

}  // namespace
