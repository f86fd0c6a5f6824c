// umt5: the umT5 encoder (Transformers `UMT5EncoderModel`) with its SentencePiece tokenizer and
// the Wan pipelines' prompt handling, as a wanhost text encoder (Wan 2.1 uses umT5-XXL, 512
// tokens). The classes live in a static library so that the tests link them directly; the plugin
// module adds only the entry point.
#pragma once

#include <cstdint>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>

#include "wanhost/config.hpp"
#include "wanhost/encoders.hpp"

namespace wanhost::plugins::umt5 {

using wanhost::Json;

// Files of a checkpoint folder (POSIX stat: LibTorch's bundled filesystem functions are not
// used here). read_json skips the values of `skip_top_level` keys (a 16 MB vocabulary) and throws
// FormatError naming the file.
bool is_file(const std::string& path);
bool is_dir(const std::string& path);
Json read_json(const std::string& path, const std::set<std::string>& skip_top_level = {});

// The keys of a Transformers UMT5Config that the encoder uses; defaults are UMT5Config's.
struct Umt5Config {
  std::int64_t vocab_size = 250112;
  std::int64_t d_model = 512;
  std::int64_t d_kv = 64;
  std::int64_t d_ff = 1024;
  std::int64_t num_heads = 6;
  std::int64_t num_layers = 8;
  std::int64_t num_buckets = 32;    // relative_attention_num_buckets
  std::int64_t max_distance = 128;  // relative_attention_max_distance
  double eps = 1e-6;                // layer_norm_epsilon
  std::string feed_forward_proj = "gated-gelu";
  bool gated = true;             // "gated-ACT": wo(act(wi_0 x) * wi_1 x); "ACT": wo(act(wi x))
  std::string act = "gelu_new";  // gated-gelu means the tanh approximation, as in Transformers
};

// Reads a Transformers config.json (object `j`, read from `file`). Keys absent from it take
// UMT5Config's defaults; unsupported values throw wanhost::FormatError naming the file and key.
Umt5Config parse_config(const Json& j, const std::string& file);

// T5 layer norm: x * rsqrt(mean(x^2) + eps) with the mean in fp32, no bias, no mean subtraction.
at::Tensor t5_layer_norm(const at::Tensor& x, const at::Tensor& weight, double eps);

// The bidirectional relative-position buckets [q_len, k_len] (int64) of T5/umT5 encoders.
at::Tensor relative_position_buckets(std::int64_t q_len, std::int64_t k_len,
                                     std::int64_t num_buckets, std::int64_t max_distance);

// The encoder. Parameter names are the Transformers ones (`shared.weight`,
// `encoder.block.{i}.layer.0.SelfAttention.q.weight`, ...), so loading is a name lookup. The
// parameters do not require gradients: the encoder is frozen.
class Umt5Encoder : public torch::nn::Module {
 public:
  explicit Umt5Encoder(const Umt5Config& config);
  // ids [B, L] int64 in [0, vocab_size), mask [B, L] (nonzero = token) -> [B, L, d_model].
  at::Tensor forward(const at::Tensor& ids, const at::Tensor& mask);
  const Umt5Config& config() const { return config_; }

  // Loads a Transformers checkpoint: a folder holding model.safetensors or
  // model.safetensors.index.json (any single candidate), a .safetensors file or an index. The
  // embedding may be stored as shared.weight and/or encoder.embed_tokens.weight (tied in
  // Transformers; shared.weight wins when both are present). Decoder and lm_head tensors of a
  // full UMT5 checkpoint are ignored. Every missing, unexpected or mis-shaped tensor is reported
  // in one wanhost::FormatError.
  void load_weights(const std::string& path);

 private:
  struct Block;
  Umt5Config config_;
  at::Tensor shared_;
  at::Tensor final_norm_;
  std::vector<std::shared_ptr<Block>> blocks_;
};

// The Wan pipelines' prompt cleaning (diffusers pipeline_wan.py `prompt_clean`, original Wan
// `HuggingfaceTokenizer(clean='whitespace')`): html.unescape twice, strip (str.isspace), collapse
// every run of Unicode White_Space (`\s` of the `regex` module, which diffusers imports as `re`) to
// one space, strip. ftfy.fix_text, which the pipelines apply first when ftfy is installed, is not
// reproduced. Throws std::invalid_argument for text
// that is not valid UTF-8 (naming the byte offset).
std::string clean_prompt(const std::string& text);
// Python's html.unescape (HTML5 named and numeric character references).
std::string html_unescape(const std::string& text);

// The tokenizer of a Transformers/Diffusers tokenizer folder: SentencePiece on spiece.model, the
// added (special) tokens of tokenizer.json or tokenizer_config.json matched in the text first as
// the fast tokenizer does, end-of-sequence appended, truncated to max_length.
class Tokenizer {
 public:
  Tokenizer();
  ~Tokenizer();
  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;

  // Throws wanhost::FormatError naming the folder or file when something is missing or broken.
  void load(const std::string& dir);
  std::vector<std::int64_t> encode(const std::string& text, std::int64_t max_length) const;
  std::int64_t pad_id() const { return pad_id_; }
  std::int64_t max_id() const { return max_id_; }  // the largest id encode() can return

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  std::int64_t pad_id_ = 0, eos_id_ = 1, max_id_ = 0;
};

// The plugin: options max_length (token context) and clean_prompt (apply clean_prompt()).
class Umt5TextEncoder final : public wanhost::TextEncoder {
 public:
  explicit Umt5TextEncoder(const wanhost::PluginConfig& config);
  void load(const std::string& model_dir, const std::string& tokenizer_dir) override;
  void to(c10::Device device, at::ScalarType dtype) override;
  torch::nn::Module& module() override;
  std::vector<std::vector<std::int64_t>> tokenize(
      const std::vector<std::string>& texts) const override;
  at::Tensor forward(const at::Tensor& ids, const at::Tensor& mask) override;
  wanhost::TextEmbeddings encode(const std::vector<std::string>& texts) override;
  std::int64_t max_length() const override { return max_length_; }
  std::int64_t hidden_size() const override;

 private:
  const Umt5Encoder& loaded() const;
  std::int64_t max_length_;
  bool clean_;
  std::shared_ptr<Umt5Encoder> encoder_;
  Tokenizer tokenizer_;
};

}  // namespace wanhost::plugins::umt5
