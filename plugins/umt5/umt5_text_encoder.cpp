// umt5 as a wanhost::TextEncoder: loading a Transformers text_encoder/ folder and a tokenizer/
// folder, token ids -> last hidden state, and the Wan pipelines' encode (clean, tokenize, pad to
// max_length, run, zero the rows past each text's length).

#include <stdexcept>

#include <ATen/ATen.h>

#include "umt5.hpp"
#include "wanhost/errors.hpp"

namespace wanhost::plugins::umt5 {
using wanhost::FormatError;

namespace {

std::string parent_of(const std::string& path) {
  const auto slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  return slash == 0 ? "/" : path.substr(0, slash);
}

std::string index_str(std::int64_t b, std::int64_t t) {
  return "[" + std::to_string(b) + ", " + std::to_string(t) + "]";
}

}  // namespace

Umt5TextEncoder::Umt5TextEncoder(const wanhost::PluginConfig& config)
    : max_length_(config.get<std::int64_t>("max_length")),
      clean_(config.get<bool>("clean_prompt")) {
  if (max_length_ < 2)
    config.fail("max_length", "must be at least 2 (the end-of-sequence token takes one)");
}

void Umt5TextEncoder::load(const std::string& model_dir, const std::string& tokenizer_dir) {
  // `model_dir`: the text_encoder/ folder, or one of its .safetensors / index files.
  const std::string folder = is_dir(model_dir) ? model_dir : parent_of(model_dir);
  const std::string config_path = folder + "/config.json";
  if (!is_file(config_path))
    throw FormatError("umt5: cannot read " + config_path +
                      " (expected a Transformers text_encoder/ folder: config.json + "
                      "model.safetensors or model.safetensors.index.json)");
  auto encoder = std::make_shared<Umt5Encoder>(parse_config(read_json(config_path), config_path));
  Tokenizer tokenizer;
  tokenizer.load(tokenizer_dir);
  if (tokenizer.max_id() >= encoder->config().vocab_size)
    throw FormatError("umt5: the tokenizer in '" + tokenizer_dir + "' has token ids up to " +
                      std::to_string(tokenizer.max_id()) + " but the encoder's vocab_size (" +
                      config_path + ") is " + std::to_string(encoder->config().vocab_size));
  encoder->load_weights(model_dir);
  encoder_ = std::move(encoder);
  tokenizer_ = std::move(tokenizer);
}

const Umt5Encoder& Umt5TextEncoder::loaded() const {
  if (!encoder_) throw std::logic_error("umt5: load() must be called first");
  return *encoder_;
}

void Umt5TextEncoder::to(c10::Device device, at::ScalarType dtype) {
  loaded();
  if (dtype != at::kFloat && dtype != at::kBFloat16)
    throw std::invalid_argument(std::string("umt5: dtype ") + c10::toString(dtype) +
                                " is not supported (float32 or bfloat16; umT5 activations "
                                "overflow float16)");
  encoder_->to(device, dtype);
}

torch::nn::Module& Umt5TextEncoder::module() {
  loaded();
  return *encoder_;
}

std::int64_t Umt5TextEncoder::hidden_size() const {
  return loaded().config().d_model;
}

std::vector<std::vector<std::int64_t>> Umt5TextEncoder::tokenize(
    const std::vector<std::string>& texts) const {
  loaded();  // the tokenizer is loaded together with the encoder
  std::vector<std::vector<std::int64_t>> out;
  out.reserve(texts.size());
  for (std::size_t i = 0; i < texts.size(); ++i) {
    try {
      out.push_back(tokenizer_.encode(clean_ ? clean_prompt(texts[i]) : texts[i], max_length_));
    } catch (const std::invalid_argument& e) {
      throw std::invalid_argument("umt5: text " + std::to_string(i) + ": " + e.what());
    }
  }
  return out;
}

at::Tensor Umt5TextEncoder::forward(const at::Tensor& ids, const at::Tensor& mask) {
  const auto& enc = loaded();
  if (ids.dim() != 2)
    throw std::invalid_argument("umt5: ids must be [B, L], got " + c10::str(ids.sizes()));
  if (mask.sizes() != ids.sizes())
    throw std::invalid_argument("umt5: mask " + c10::str(mask.sizes()) +
                                " must have the shape of ids " + c10::str(ids.sizes()));
  if (!at::isIntegralType(ids.scalar_type(), /*includeBool=*/false))
    throw std::invalid_argument(std::string("umt5: ids must be integers, got ") +
                                c10::toString(ids.scalar_type()));
  const std::int64_t vocab = enc.config().vocab_size;
  const auto cpu_ids = ids.to(at::kCPU, at::kLong).contiguous();
  const auto bad_ids = at::logical_or(cpu_ids.lt(0), cpu_ids.ge(vocab)).nonzero();
  if (bad_ids.size(0) > 0) {
    const auto b = bad_ids[0][0].item<std::int64_t>(), t = bad_ids[0][1].item<std::int64_t>();
    throw std::invalid_argument("umt5: ids" + index_str(b, t) + " = " +
                                std::to_string(cpu_ids[b][t].item<std::int64_t>()) +
                                " is outside the vocabulary [0, " + std::to_string(vocab) + ")");
  }
  const auto cpu_mask = mask.to(at::kCPU, at::kDouble);
  const auto bad_mask = at::logical_and(cpu_mask.ne(0), cpu_mask.ne(1)).nonzero();
  if (bad_mask.size(0) > 0) {
    const auto b = bad_mask[0][0].item<std::int64_t>(), t = bad_mask[0][1].item<std::int64_t>();
    throw std::invalid_argument("umt5: mask" + index_str(b, t) + " = " +
                                std::to_string(cpu_mask[b][t].item<double>()) +
                                " (1 = token, 0 = padding)");
  }
  at::NoGradGuard no_grad;
  return encoder_->forward(ids, mask);
}

wanhost::TextEmbeddings Umt5TextEncoder::encode(const std::vector<std::string>& texts) {
  loaded();
  if (texts.empty()) throw std::invalid_argument("umt5: encode() needs at least one text");
  const auto tokens = tokenize(texts);
  const auto batch = static_cast<std::int64_t>(texts.size());
  auto ids = at::full({batch, max_length_}, tokenizer_.pad_id(), at::kLong);
  auto lengths = at::empty({batch}, at::kLong);
  for (std::int64_t b = 0; b < batch; ++b) {
    const auto& t = tokens[static_cast<std::size_t>(b)];
    const auto n = static_cast<std::int64_t>(t.size());
    ids[b].narrow(0, 0, n).copy_(at::tensor(t, at::kLong));
    lengths[b] = n;
  }
  const auto positions = at::arange(max_length_, at::kLong).unsqueeze(0);
  const auto mask = positions.lt(lengths.unsqueeze(1)).to(at::kLong);
  const auto device = encoder_->parameters().front().device();
  const auto mask_on_device = mask.to(device);
  // The tokenizer's ids lie in the vocabulary (checked at load) and the mask is built above, so
  // forward()'s checks of caller-given tensors (and their copies to the host) are skipped.
  at::NoGradGuard no_grad;
  at::Tensor hidden = encoder_->forward(ids.to(device), mask_on_device);
  // The pipeline keeps rows [0, length) and zero-pads back to max_length.
  hidden = hidden.masked_fill(mask_on_device.eq(0).unsqueeze(-1), 0);
  return {hidden, lengths.to(device)};
}

}  // namespace wanhost::plugins::umt5
