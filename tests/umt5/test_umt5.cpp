// umt5: parity with Transformers' UMT5EncoderModel (fp32, bf16, gated-gelu and relu, single-file
// and sharded checkpoints), token ids of its T5Tokenizer, the Diffusers Wan pipeline's prompt
// cleaning and encode, and the errors users can cause.
//
// Error measure: relative L2 (Frobenius) norm ||x - ref||_2 / ||ref||_2 over a whole tensor.
#include <sys/stat.h>

#include <cstdio>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <gtest/gtest.h>

#include "parity_util.hpp"

#include "umt5.hpp"
#include "wanhost/errors.hpp"
#include "wanhost/kit/safetensors.hpp"

namespace {

using wanhost::testing::exists;
using wanhost::testing::read_json;
using wanhost::testing::rel_l2;

using wanhost::Json;
using wanhost::plugins::umt5::Umt5TextEncoder;
namespace st = wanhost::safetensors;

const std::string kRef = std::string(WANHOST_BINARY_DIR) + "/reference/umt5";
const std::string kTmp = WANHOST_TEST_TMP;

WANHOST_ONE_THREAD_TESTS();

#define REQUIRE_REFERENCE()                                                          \
  if (!exists(kRef + "/DONE"))                                                       \
  GTEST_SKIP() << "no reference data in " << kRef                                    \
               << " (the umt5_reference fixture needs WANHOST_TEST_PYTHON with the " \
                  "packages of tests/reference/requirements.txt)"

void write_text(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary);
  out << text;
  if (!out) throw std::runtime_error("cannot write " + path);
}

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot read " + path);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// A fresh folder under the test's temporary directory.
std::string tmp_dir(const std::string& name) {
  ::mkdir(kTmp.c_str(), 0755);
  const std::string dir = kTmp + "/" + name;
  ::mkdir(dir.c_str(), 0755);
  for (const char* f : {"config.json", "model.safetensors", "tokenizer.json", "spiece.model"})
    std::remove((dir + "/" + f).c_str());
  return dir;
}

// The plugin's config as the host hands it over: sidecar defaults plus `values`.
wanhost::PluginConfig plugin_config(const Json& values = Json::object()) {
  auto sidecar = read_json(std::string(WANHOST_SOURCE_DIR) + "/plugins/umt5/umt5.json");
  wanhost::PluginConfig cfg{"umt5", "/text_encoder/umt5", Json::object(), {}};
  for (const auto& [key, spec] : sidecar["config"].items()) cfg.values[key] = spec["default"];
  for (const auto& [key, v] : values.items()) cfg.values[key] = v;
  return cfg;
}

std::unique_ptr<Umt5TextEncoder> encoder(const std::string& model = "model",
                                         Json values = Json::object()) {
  auto e = std::make_unique<Umt5TextEncoder>(plugin_config(values));
  e->load(model.front() == '/' ? model : kRef + "/" + model, kRef + "/tokenizer");
  return e;
}

std::map<std::string, at::Tensor> data() {
  return st::File::open(kRef + "/data.safetensors").load_all();
}

std::string sci(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2e", v);
  return buf;
}

template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "(no error)";
}

// ---- text ----------------------------------------------------------------------------------

TEST(Umt5Text, CleaningMatchesTheWanPipeline) {
  REQUIRE_REFERENCE();
  const auto tokens = read_json(kRef + "/tokens.json");
  for (const auto& c : tokens["cases"])
    EXPECT_EQ(wanhost::plugins::umt5::clean_prompt(c["text"].get<std::string>()),
              c["cleaned"].get<std::string>())
        << "text: " << c["text"].dump();
}

TEST(Umt5Text, HtmlUnescapeMatchesPython) {
  REQUIRE_REFERENCE();
  const auto tokens = read_json(kRef + "/tokens.json");
  ASSERT_GT(tokens["unescape"].size(), 20u);
  for (const auto& c : tokens["unescape"])
    EXPECT_EQ(wanhost::plugins::umt5::html_unescape(c["text"].get<std::string>()),
              c["once"].get<std::string>())
        << "text: " << c["text"].dump();
}

TEST(Umt5Text, InvalidUtf8IsRefusedWithItsOffset) {
  EXPECT_NE(error_of([] {
              wanhost::plugins::umt5::clean_prompt(
                  "ab\xff"
                  "cd");
            }).find("byte 2"),
            std::string::npos);
  EXPECT_NE(error_of([] { wanhost::plugins::umt5::clean_prompt("a\xc3"); }).find("byte 1"),
            std::string::npos);
  EXPECT_NE(error_of([] { wanhost::plugins::umt5::clean_prompt("\xed\xa0\x80"); }).find("UTF-8"),
            std::string::npos)
      << "a surrogate is not valid UTF-8";
}

TEST(Umt5Text, RelativePositionBucketsFollowTheT5Formula) {
  // 32 buckets, max distance 128: 16 per direction, |d| < 8 exact, else
  // 8 + floor(ln(|d| / 8) / ln(16) * 8) capped at 15; keys after the query add 16.
  const auto b = wanhost::plugins::umt5::relative_position_buckets(1, 301, 32, 128);
  const std::map<std::int64_t, std::int64_t> expect = {
      {0, 0}, {1, 17}, {7, 23}, {8, 24}, {12, 25}, {16, 26}, {127, 31}, {128, 31}, {300, 31}};
  for (const auto& [d, bucket] : expect) EXPECT_EQ(b[0][d].item<std::int64_t>(), bucket) << d;
  const auto back = wanhost::plugins::umt5::relative_position_buckets(301, 1, 32, 128);
  const std::map<std::int64_t, std::int64_t> expect_back = {{1, 1},   {7, 7},    {8, 8},   {12, 9},
                                                            {16, 10}, {127, 15}, {300, 15}};
  for (const auto& [d, bucket] : expect_back)
    EXPECT_EQ(back[d][0].item<std::int64_t>(), bucket) << -d;
}

// ---- tokenizer -----------------------------------------------------------------------------

TEST(Umt5Tokenizer, IdsMatchTransformers) {
  REQUIRE_REFERENCE();
  const auto tokens = read_json(kRef + "/tokens.json");
  std::vector<std::string> texts;
  std::vector<std::vector<std::int64_t>> small, large, raw;
  for (const auto& c : tokens["cases"]) {
    texts.push_back(c["text"].get<std::string>());
    small.push_back(c["ids_small"].get<std::vector<std::int64_t>>());
    large.push_back(c["ids_large"].get<std::vector<std::int64_t>>());
    raw.push_back(c["raw_ids_large"].get<std::vector<std::int64_t>>());
  }
  const auto got_small = encoder("model", {{"max_length", tokens["small_max"]}})->tokenize(texts);
  const auto got_large = encoder("model", {{"max_length", tokens["large_max"]}})->tokenize(texts);
  const auto got_raw =
      encoder("model", {{"max_length", tokens["large_max"]}, {"clean_prompt", false}})
          ->tokenize(texts);
  for (std::size_t i = 0; i < texts.size(); ++i) {
    EXPECT_EQ(got_small[i], small[i])
        << "max_length " << tokens["small_max"] << ", text: " << Json(texts[i]).dump();
    EXPECT_EQ(got_large[i], large[i])
        << "max_length " << tokens["large_max"] << ", text: " << Json(texts[i]).dump();
    EXPECT_EQ(got_raw[i], raw[i]) << "uncleaned, text: " << Json(texts[i]).dump();
  }
  // The cases exercise truncation and the empty text.
  EXPECT_EQ(small.front(), std::vector<std::int64_t>{1});
  EXPECT_TRUE(std::any_of(small.begin(), small.end(), [&](const auto& ids) {
    return static_cast<std::int64_t>(ids.size()) == tokens["small_max"].get<std::int64_t>();
  }));
}

// ---- encoder -------------------------------------------------------------------------------

TEST(Umt5Encoder, ForwardMatchesTransformersInFloat32) {
  REQUIRE_REFERENCE();
  const auto d = data();
  auto e = encoder();
  const auto out = e->forward(d.at("input_ids"), d.at("attention_mask"));
  ASSERT_EQ(out.sizes(), d.at("last_hidden_state").sizes());
  const double err = rel_l2(out, d.at("last_hidden_state"));
  RecordProperty("rel_l2_fp32", sci(err));
  EXPECT_LT(err, 1e-4);
  EXPECT_EQ(e->hidden_size(), 32);
}

TEST(Umt5Encoder, ShardedAndRenamedCheckpointsGiveTheSameOutput) {
  REQUIRE_REFERENCE();
  const auto d = data();
  const auto single = encoder()->forward(d.at("input_ids"), d.at("attention_mask"));
  const auto sharded = encoder("model_sharded")->forward(d.at("input_ids"), d.at("attention_mask"));
  EXPECT_TRUE(at::equal(single, sharded));

  // The embedding as encoder.embed_tokens.weight (tied to shared.weight in Transformers).
  const auto dir = tmp_dir("embed_tokens");
  write_text(dir + "/config.json", read_text(kRef + "/model/config.json"));
  auto tensors = st::File::open(kRef + "/model/model.safetensors").load_all();
  tensors["encoder.embed_tokens.weight"] = tensors.at("shared.weight");
  tensors.erase("shared.weight");
  st::save(dir + "/model.safetensors", tensors);
  EXPECT_TRUE(at::equal(single, encoder(dir)->forward(d.at("input_ids"), d.at("attention_mask"))));
}

TEST(Umt5Encoder, ReluFeedForwardMatchesTransformers) {
  REQUIRE_REFERENCE();
  const auto d = data();
  const auto out = encoder("model_relu")->forward(d.at("input_ids"), d.at("attention_mask"));
  const double err = rel_l2(out, d.at("relu_last_hidden_state"));
  RecordProperty("rel_l2_relu_fp32", sci(err));
  EXPECT_LT(err, 1e-4);
}

TEST(Umt5Encoder, Bfloat16IsCloseToTransformersBfloat16) {
  REQUIRE_REFERENCE();
  const auto d = data();
  auto e = encoder();
  e->to(at::kCPU, at::kBFloat16);
  const auto out = e->forward(d.at("input_ids"), d.at("attention_mask"));
  EXPECT_EQ(out.scalar_type(), at::kBFloat16);
  const double vs_bf16 = rel_l2(out, d.at("last_hidden_state_bf16"));
  const double vs_fp32 = rel_l2(out, d.at("last_hidden_state"));
  const double ref_vs_fp32 = rel_l2(d.at("last_hidden_state_bf16"), d.at("last_hidden_state"));
  RecordProperty("rel_l2_bf16_vs_transformers_bf16", sci(vs_bf16));
  RecordProperty("rel_l2_bf16_vs_fp32", sci(vs_fp32));
  RecordProperty("rel_l2_transformers_bf16_vs_fp32", sci(ref_vs_fp32));
  EXPECT_LT(vs_bf16, 2e-2);
  EXPECT_LT(vs_fp32, 2 * ref_vs_fp32 + 1e-3) << "Transformers bf16 is " << ref_vs_fp32 << " off";
}

TEST(Umt5Encoder, EncodeMatchesTheWanPipeline) {
  REQUIRE_REFERENCE();
  const auto d = data();
  const auto meta = read_json(kRef + "/meta.json");
  auto e = encoder("model", {{"max_length", meta["large_max"]}});
  EXPECT_EQ(e->max_length(), meta["large_max"].get<std::int64_t>());
  const auto emb = e->encode(meta["batch_texts"].get<std::vector<std::string>>());
  const auto& ref = d.at("encode_hidden");
  ASSERT_EQ(emb.hidden.sizes(), ref.sizes());
  EXPECT_TRUE(at::equal(emb.lengths, d.at("encode_lengths")))
      << emb.lengths << " vs " << d.at("encode_lengths");
  const double err = rel_l2(emb.hidden, ref);
  RecordProperty("rel_l2_encode_fp32", sci(err));
  EXPECT_LT(err, 1e-4);
  for (std::int64_t b = 0; b < ref.size(0); ++b) {
    const auto n = emb.lengths[b].item<std::int64_t>();
    EXPECT_TRUE(emb.hidden[b].narrow(0, n, ref.size(1) - n).eq(0).all().item<bool>()) << b;
    EXPECT_TRUE(emb.hidden[b].narrow(0, 0, n).ne(0).any(-1).all().item<bool>()) << b;
  }
  EXPECT_NE(error_of([&] { e->encode({}); }).find("at least one text"), std::string::npos);
}

// ---- errors --------------------------------------------------------------------------------

TEST(Umt5Errors, MissingTokenizerIsNamed) {
  REQUIRE_REFERENCE();
  Umt5TextEncoder e(plugin_config());
  const auto msg = error_of([&] { e.load(kRef + "/model", kRef + "/no_such_tokenizer"); });
  EXPECT_NE(msg.find(kRef + "/no_such_tokenizer"), std::string::npos) << msg;
  EXPECT_NE(msg.find("--tokenizer"), std::string::npos) << msg;

  // A folder with tokenizer.json but no spiece.model.
  const auto dir = tmp_dir("tokenizer_json_only");
  write_text(dir + "/tokenizer.json", read_text(kRef + "/tokenizer/tokenizer.json"));
  const auto msg2 = error_of([&] { e.load(kRef + "/model", dir); });
  EXPECT_NE(msg2.find("no spiece.model in '" + dir + "'"), std::string::npos) << msg2;
  EXPECT_NE(msg2.find("it has tokenizer.json"), std::string::npos) << msg2;

  // Something that is not a SentencePiece model.
  const auto bad = tmp_dir("tokenizer_broken");
  write_text(bad + "/spiece.model", "not a model");
  const auto msg3 = error_of([&] { e.load(kRef + "/model", bad); });
  EXPECT_NE(msg3.find(bad + "/spiece.model"), std::string::npos) << msg3;
}

TEST(Umt5Errors, CheckpointProblemsAreListedTogether) {
  REQUIRE_REFERENCE();
  const auto dir = tmp_dir("bad_checkpoint");
  write_text(dir + "/config.json", read_text(kRef + "/model/config.json"));
  auto tensors = st::File::open(kRef + "/model/model.safetensors").load_all();
  tensors["encoder.block.1.layer.0.SelfAttention.q.weight"] = at::zeros({32, 16});
  tensors.erase("encoder.final_layer_norm.weight");
  tensors["encoder.block.7.layer.0.SelfAttention.q.weight"] = at::zeros({32, 32});
  st::save(dir + "/model.safetensors", tensors);
  const auto msg = error_of([&] { encoder(dir); });
  EXPECT_NE(msg.find("1 missing, 1 unexpected, 1 mis-shaped"), std::string::npos) << msg;
  EXPECT_NE(msg.find("encoder.final_layer_norm.weight"), std::string::npos) << msg;
  EXPECT_NE(msg.find("encoder.block.7.layer.0.SelfAttention.q.weight"), std::string::npos) << msg;
  EXPECT_NE(msg.find("encoder.block.1.layer.0.SelfAttention.q.weight: checkpoint [32, 16], "
                     "model [32, 32]"),
            std::string::npos)
      << msg;
}

TEST(Umt5Errors, UnsupportedConfigValuesNameTheKey) {
  REQUIRE_REFERENCE();
  const auto base = read_json(kRef + "/model/config.json");
  const std::vector<std::pair<std::string, Json>> cases = {
      {"feed_forward_proj", "gated-tanh"},
      {"feed_forward_proj", "gated-gelu-x"},
      {"model_type", "t5"},
      {"d_model", -4},
      {"relative_attention_num_buckets", 2},
      {"layer_norm_epsilon", "small"},
      {"vocab_size", 305}};  // below the tokenizer's ids (300 pieces + 10 added tokens)
  for (std::size_t i = 0; i < cases.size(); ++i) {
    const auto& [key, value] = cases[i];
    // A neutral folder name, so that only the message itself can name the key.
    const auto dir = tmp_dir("config_case_" + std::to_string(i));
    auto j = base;
    j[key] = value;
    write_text(dir + "/config.json", j.dump());
    const auto msg = error_of([&] { encoder(dir); });
    EXPECT_NE(msg.find(dir + "/config.json"), std::string::npos) << msg;
    EXPECT_NE(msg.find(key), std::string::npos) << key << ": " << msg;
  }
}

TEST(Umt5Errors, BadInputsAndOptionsSayWhatIsWrong) {
  REQUIRE_REFERENCE();
  auto e = encoder();
  auto ids = at::ones({2, 5}, at::kLong);
  auto mask = at::ones({2, 5}, at::kLong);
  ids[1][3] = 320;
  EXPECT_NE(error_of([&] { e->forward(ids, mask); }).find("ids[1, 3] = 320"), std::string::npos);
  ids[1][3] = 4;
  mask[0][2] = 2;
  EXPECT_NE(error_of([&] { e->forward(ids, mask); }).find("mask[0, 2]"), std::string::npos);
  EXPECT_NE(error_of([&] { e->forward(ids, at::ones({2, 4})); }).find("shape"), std::string::npos);
  EXPECT_NE(error_of([&] { e->to(at::kCPU, at::kHalf); }).find("float16"), std::string::npos);
  EXPECT_NE(error_of([&] { e->tokenize({"ok", "bad \xff"}); }).find("text 1"), std::string::npos);

  try {
    Umt5TextEncoder tiny(plugin_config({{"max_length", 1}}));
    ADD_FAILURE() << "max_length 1 was accepted";
  } catch (const wanhost::ConfigError& err) {
    EXPECT_EQ(err.pointer(), "/text_encoder/umt5/max_length");
  }
  Umt5TextEncoder fresh(plugin_config());
  EXPECT_NE(error_of([&] { fresh.encode({"x"}); }).find("load()"), std::string::npos);
}

}  // namespace
