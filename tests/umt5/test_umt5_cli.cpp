// `wanhost model forward --plugin umt5` end to end on the reference data of
// tests/reference/make_umt5_reference.py: --entry forward (token ids) and --entry encode
// (prompts, the plugin's default max_length 512), plus errors users can cause.
#include <gtest/gtest.h>

#include <sys/stat.h>
#include <sys/wait.h>
#include "parity_util.hpp"

#include <ATen/ATen.h>

#include <cstdio>
#include <fstream>

#include "wanhost/config.hpp"
#include "wanhost/kit/safetensors.hpp"

namespace st = wanhost::safetensors;

namespace {

using wanhost::testing::read_json;
using wanhost::testing::rel_l2;
using wanhost::testing::run_wanhost;

const std::string kRef = std::string(WANHOST_BINARY_DIR) + "/reference/umt5";
const std::string kTmp = WANHOST_TEST_TMP;

class Umt5Cli : public ::testing::Test {
 protected:
  void SetUp() override {
    struct stat s;
    if (::stat((kRef + "/DONE").c_str(), &s) != 0) GTEST_SKIP() << "no reference data in " << kRef;
    ::mkdir(kTmp.c_str(), 0755);
    data_ = st::File::open(kRef + "/data.safetensors").load_all();
  }
  std::map<std::string, at::Tensor> data_;
};

TEST_F(Umt5Cli, ForwardMatchesTransformers) {
  const std::string in = kTmp + "/ids.safetensors", out = kTmp + "/hidden.safetensors";
  st::save(in,
           {{"input_ids", data_.at("input_ids")}, {"attention_mask", data_.at("attention_mask")}});
  // No --tokenizer: the default is ../tokenizer beside --weights, as in a pipeline folder.
  const auto r = run_wanhost("model forward --plugin umt5 --weights " + kRef + "/model --inputs " +
                             in + " --output " + out);
  ASSERT_EQ(r.code, 0) << r.output;
  const auto hidden = st::File::open(out).load("last_hidden_state");
  ASSERT_EQ(hidden.sizes(), data_.at("last_hidden_state").sizes());
  EXPECT_LT(rel_l2(hidden, data_.at("last_hidden_state")), 1e-4);
}

TEST_F(Umt5Cli, EncodePromptsLikeThePipeline) {
  std::ifstream meta_in(kRef + "/meta.json");
  const auto meta = wanhost::Json::parse(meta_in);
  const auto texts = meta["batch_texts"].get<std::vector<std::string>>();
  const std::int64_t ref_len = meta["large_max"].get<std::int64_t>();
  // The first two texts are shorter than the reference's 64 tokens, so their rows do not depend
  // on the padded length (padding is masked and the position bias is relative).
  const std::string out = kTmp + "/encode.safetensors";
  const auto r = run_wanhost("model forward --plugin umt5 --entry encode --weights " + kRef +
                             "/model --tokenizer " + kRef + "/tokenizer --prompt '" + texts[0] +
                             "' --prompt '" + texts[1] + "' --output " + out);
  ASSERT_EQ(r.code, 0) << r.output;
  const auto file = st::File::open(out);
  const auto hidden = file.load("hidden"), lengths = file.load("lengths");
  ASSERT_EQ(hidden.sizes(), (std::vector<std::int64_t>{2, 512, 32}));
  EXPECT_TRUE(at::equal(lengths, data_.at("encode_lengths").narrow(0, 0, 2)));
  const auto ref = data_.at("encode_hidden").narrow(0, 0, 2);
  EXPECT_LT(rel_l2(hidden.narrow(1, 0, ref_len), ref), 1e-4);
  EXPECT_TRUE(hidden.narrow(1, ref_len, 512 - ref_len).eq(0).all().item<bool>());
}

// --option reaches the plugin: max_length sets the padded text length (the AutoModel recipe's 226).
TEST_F(Umt5Cli, PluginOptionsFromTheCommandLine) {
  const auto meta = read_json(kRef + "/meta.json");
  const auto texts = meta["batch_texts"].get<std::vector<std::string>>();
  const std::int64_t ref_len = meta["large_max"].get<std::int64_t>();
  const std::string out = kTmp + "/encode_short.safetensors";
  const std::string base = "model forward --plugin umt5 --entry encode --weights " + kRef +
                           "/model --tokenizer " + kRef + "/tokenizer --prompt '" + texts[0] +
                           "' --prompt '" + texts[1] + "' --output " + out;
  auto r = run_wanhost(base + " --option max_length=" + std::to_string(ref_len));
  ASSERT_EQ(r.code, 0) << r.output;
  const auto hidden = st::File::open(out).load("hidden");
  ASSERT_EQ(hidden.sizes(), (std::vector<std::int64_t>{2, ref_len, 32}));
  EXPECT_LT(rel_l2(hidden, data_.at("encode_hidden").narrow(0, 0, 2)), 1e-4);

  r = run_wanhost(base + " --option max_length=long");
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("/text_encoder/umt5/max_length"), std::string::npos) << r.output;
  r = run_wanhost(base + " --option max_length");
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("--option max_length: expected key=value"), std::string::npos)
      << r.output;
}

TEST_F(Umt5Cli, ErrorsNameTheFileOrTensor) {
  const std::string out = kTmp + "/never.safetensors";
  auto r =
      run_wanhost("model forward --plugin umt5 --entry encode --weights " + kRef +
                  "/model --tokenizer " + kTmp + "/missing_tokenizer --prompt x --output " + out);
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.output.find(kTmp + "/missing_tokenizer"), std::string::npos) << r.output;

  // A wrong-shaped weight is named with both shapes.
  const std::string bad = kTmp + "/bad_model";
  ::mkdir(bad.c_str(), 0755);
  {
    std::ifstream src(kRef + "/model/config.json", std::ios::binary);
    std::ofstream dst(bad + "/config.json", std::ios::binary);
    dst << src.rdbuf();
  }
  auto tensors = st::File::open(kRef + "/model/model.safetensors").load_all();
  tensors["encoder.block.0.layer.1.DenseReluDense.wo.weight"] = at::zeros({32, 63});
  st::save(bad + "/model.safetensors", tensors);
  r = run_wanhost("model forward --plugin umt5 --entry encode --weights " + bad + " --tokenizer " +
                  kRef + "/tokenizer --prompt x --output " + out);
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_NE(r.output.find("encoder.block.0.layer.1.DenseReluDense.wo.weight: checkpoint [32, 63], "
                          "model [32, 64]"),
            std::string::npos)
      << r.output;

  r = run_wanhost("model forward --plugin umt5 --entry decode --weights " + kRef +
                  "/model --output " + out);
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("text encoder"), std::string::npos) << r.output;
}

}  // namespace
