// wan21_dit configuration (presets, Diffusers config.json, plugin options), FLOP counts and
// weights: loading Diffusers checkpoints (single file or sharded, either output-modulation form)
// and original Wan 2.1 checkpoints, and saving in the Diffusers layout.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <fstream>
#include <set>
#include <sstream>
#include <stdexcept>

#include <ATen/core/grad_mode.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/eye.h>

#include "wan21_dit.hpp"
#include "wanhost/errors.hpp"
#include "wanhost/kit/json_file.hpp"
#include "wanhost/kit/safetensors.hpp"
#include "wanhost/kit/strings.hpp"
#include "wanhost/kit/weights.hpp"
#include "wanhost/log.hpp"

namespace wanhost::plugins::wan21_dit {
using wanhost::ConfigError;
using wanhost::FormatError;

namespace {

using wanhost::shape_str;
using wanhost::starts_with;

// The Diffusers version whose WanTransformer3DModel the parity tests pin (tests/reference).
constexpr const char* kDiffusersVersion = "0.42.1";

// A bad Diffusers config key; turned into a ConfigError naming where the key came from.
struct KeyError {
  std::string key, message;
};

std::int64_t positive_int(const Json& v, const std::string& key) {
  if (!v.is_number_integer() || v.get<std::int64_t>() <= 0)
    throw KeyError{key, "must be a positive integer, got " + v.dump()};
  return v.get<std::int64_t>();
}

// The largest weight tensor and the largest model a config may ask for. Products of config
// integers are checked before use: signed overflow is undefined behaviour, and a layer no machine
// can hold is a config error, not an allocator failure deep inside LibTorch.
constexpr std::int64_t kMaxTensorElements = std::int64_t{1} << 36;
constexpr std::int64_t kMaxModelElements = std::int64_t{1} << 42;

std::int64_t checked_product(std::int64_t a, std::int64_t b, std::int64_t limit,
                             const std::string& key, const std::string& what) {
  std::int64_t r = 0;
  if (__builtin_mul_overflow(a, b, &r) || r > limit)
    throw KeyError{key, what + " = " + std::to_string(a) + " x " + std::to_string(b) +
                            " is more than the " + std::to_string(limit) +
                            " elements wan21_dit allows"};
  return r;
}

void validate(const WanConfig& c) {
  const auto T = kMaxTensorElements;
  const std::int64_t d = checked_product(c.heads, c.head_dim, T, "num_attention_heads",
                                         "the width num_attention_heads x attention_head_dim");
  checked_product(d, d, T, "num_attention_heads", "an attention projection (width x width)");
  checked_product(6 * d, d, T, "num_attention_heads", "the time projection (6 x width x width)");
  checked_product(d, c.ffn_dim, T, "ffn_dim", "an FFN layer (width x ffn_dim)");
  checked_product(d, c.text_dim, T, "text_dim", "the text projection (width x text_dim)");
  checked_product(d, c.freq_dim, T, "freq_dim", "the time embedding (width x freq_dim)");
  const std::int64_t pv =
      checked_product(checked_product(c.patch[0], c.patch[1], T, "patch_size", "the patch area"),
                      c.patch[2], T, "patch_size", "the patch volume");
  for (const auto& [key, channels] :
       {std::pair{"in_channels", c.in_channels}, std::pair{"out_channels", c.out_channels}})
    checked_product(checked_product(channels, pv, T, key, std::string(key) + " x patch volume"), d,
                    T, key, std::string("the patch projection (") + key + " x patch x width)");
  // One block holds about 8 width x width + 2 width x ffn_dim weights (each term checked above).
  checked_product(c.num_layers, 8 * d * d + 2 * d * c.ffn_dim, kMaxModelElements, "num_layers",
                  "the blocks' weights (num_layers x per-block weights)");
  if (c.head_dim % 2 != 0 || c.head_dim < 6)
    throw KeyError{"attention_head_dim",
                   "must be even and >= 6 (3-D RoPE splits each head into three rotated parts), "
                   "got " +
                       std::to_string(c.head_dim)};
}

WanConfig apply_keys(WanConfig c, const Json& keys) {
  if (!keys.is_object()) throw KeyError{"", "must be a JSON object"};
  for (const auto& [key, v] : keys.items()) {
    if (!key.empty() && key[0] == '_') continue;  // _class_name, _diffusers_version, ...
    if (key == "patch_size") {
      if (!v.is_array() || v.size() != 3) throw KeyError{key, "must be [t, h, w], got " + v.dump()};
      for (int i = 0; i < 3; ++i) c.patch[i] = positive_int(v[i], key);
    } else if (key == "num_attention_heads") {
      c.heads = positive_int(v, key);
    } else if (key == "attention_head_dim") {
      c.head_dim = positive_int(v, key);
    } else if (key == "in_channels") {
      c.in_channels = positive_int(v, key);
    } else if (key == "out_channels") {
      // Diffusers: out_channels = out_channels or in_channels (resolved below).
      c.out_channels = v.is_null() || (v.is_number_integer() && v.get<std::int64_t>() == 0)
                           ? 0
                           : positive_int(v, key);
    } else if (key == "text_dim") {
      c.text_dim = positive_int(v, key);
    } else if (key == "freq_dim") {
      c.freq_dim = positive_int(v, key);
    } else if (key == "ffn_dim") {
      c.ffn_dim = positive_int(v, key);
    } else if (key == "num_layers") {
      c.num_layers = positive_int(v, key);
    } else if (key == "rope_max_seq_len") {
      c.rope_max_seq_len = positive_int(v, key);
    } else if (key == "cross_attn_norm") {
      if (!v.is_boolean()) throw KeyError{key, "must be true or false"};
      c.cross_attn_norm = v.get<bool>();
    } else if (key == "qk_norm") {
      // Diffusers builds the across-heads RMSNorm whatever this says; keep the value for export.
      if (!v.is_string() && !v.is_null()) throw KeyError{key, "must be a string"};
      c.qk_norm = v.is_null() ? std::string("rms_norm_across_heads") : v.get<std::string>();
    } else if (key == "eps") {
      if (!v.is_number() || v.get<double>() <= 0) throw KeyError{key, "must be a positive number"};
      c.eps = v.get<double>();
    } else if (key == "image_dim" || key == "added_kv_proj_dim" || key == "pos_embed_seq_len") {
      if (!v.is_null())
        throw KeyError{key,
                       "image conditioning (Wan I2V/FLF2V) is not supported by wan21_dit; only "
                       "text-to-video configs (null) are"};
    } else {
      throw KeyError{key,
                     "unknown WanTransformer3DModel config key (known: patch_size, "
                     "num_attention_heads, attention_head_dim, in_channels, out_channels, "
                     "text_dim, freq_dim, ffn_dim, num_layers, cross_attn_norm, qk_norm, eps, "
                     "image_dim, added_kv_proj_dim, rope_max_seq_len, pos_embed_seq_len)"};
    }
  }
  if (c.out_channels == 0) c.out_channels = c.in_channels;
  validate(c);
  return c;
}

// Original Wan 2.1 checkpoints name the top-level layers differently (diffusers
// scripts/convert_wan_to_diffusers.py, TRANSFORMER_KEYS_RENAME_DICT).
bool looks_original(const std::vector<std::string>& names) {
  for (auto n : names) {
    if (starts_with(n, "model.diffusion_model.")) n = n.substr(22);
    if (starts_with(n, "time_embedding.") || starts_with(n, "text_embedding.") ||
        starts_with(n, "time_projection.") || starts_with(n, "head.") ||
        n.find(".self_attn.") != std::string::npos)
      return true;
  }
  return false;
}

// Folder helpers use POSIX, not std::filesystem: LibTorch exports its own, ABI-mismatched copies
// of several std::filesystem functions.
void make_dirs(const std::string& path) {
  for (std::size_t slash = path.find('/', 1);; slash = path.find('/', slash + 1)) {
    const auto part = path.substr(0, slash);
    if (::mkdir(part.c_str(), 0755) != 0 && errno != EEXIST)
      throw std::runtime_error("cannot create folder " + part + ": " + std::strerror(errno));
    if (slash == std::string::npos) break;
  }
}

void fsync_path(const std::string& path, int flags) {
  const int fd = ::open(path.c_str(), flags | O_CLOEXEC);
  if (fd >= 0) {
    ::fsync(fd);
    ::close(fd);
  }
}

// Writes `text` to `dir`/`name` atomically (temporary file in the same folder, fsync, rename,
// folder fsync).
void write_atomic(const std::string& dir, const std::string& name, const std::string& text) {
  const auto path = dir + "/" + name;
  const auto tmp = path + ".tmp-" + std::to_string(::getpid());
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) throw std::runtime_error("cannot write " + tmp + ": " + std::strerror(errno));
  std::size_t done = 0;
  bool ok = true;
  while (ok && done < text.size()) {
    const auto n = ::write(fd, text.data() + done, text.size() - done);
    if (n < 0 && errno == EINTR) continue;
    ok = n >= 0;
    if (ok) done += static_cast<std::size_t>(n);
  }
  ok = ok && ::fsync(fd) == 0;
  ok = (::close(fd) == 0) && ok;
  if (!ok || ::rename(tmp.c_str(), path.c_str()) != 0) {
    const std::string why = std::strerror(errno);
    ::unlink(tmp.c_str());
    throw std::runtime_error("cannot write " + path + ": " + why);
  }
  fsync_path(dir, O_RDONLY | O_DIRECTORY);
}

}  // namespace

Json WanConfig::to_json() const {
  return Json{{"_class_name", "WanTransformer3DModel"},
              {"_diffusers_version", kDiffusersVersion},
              {"added_kv_proj_dim", nullptr},
              {"attention_head_dim", head_dim},
              {"cross_attn_norm", cross_attn_norm},
              {"eps", eps},
              {"ffn_dim", ffn_dim},
              {"freq_dim", freq_dim},
              {"image_dim", nullptr},
              {"in_channels", in_channels},
              {"num_attention_heads", heads},
              {"num_layers", num_layers},
              {"out_channels", out_channels},
              {"patch_size", Json::array({patch[0], patch[1], patch[2]})},
              {"pos_embed_seq_len", nullptr},
              {"qk_norm", qk_norm},
              {"rope_max_seq_len", rope_max_seq_len},
              {"text_dim", text_dim}};
}

// The Wan-AI/Wan2.1-T2V-{1.3B,14B}-Diffusers transformer configs (docs/model.md "Presets").
// "tiny": a 2-block, 64-wide model whose CPU training step takes milliseconds.
WanConfig preset_config(const std::string& name) {
  WanConfig c;  // the defaults are the tiny preset
  if (name == "tiny") return c;
  c.head_dim = 128;
  c.text_dim = 4096;
  c.freq_dim = 256;
  if (name == "wan2.1-t2v-1.3b") {
    c.heads = 12;
    c.ffn_dim = 8960;
    c.num_layers = 30;
  } else if (name == "wan2.1-t2v-14b") {
    c.heads = 40;
    c.ffn_dim = 13824;
    c.num_layers = 40;
  } else {
    throw std::invalid_argument("unknown preset '" + name +
                                "' (known: tiny, wan2.1-t2v-1.3b, wan2.1-t2v-14b)");
  }
  return c;
}

WanConfig apply_config_json(WanConfig c, const Json& keys, const std::string& pointer,
                            const std::string& plugin) {
  try {
    return apply_keys(std::move(c), keys);
  } catch (const KeyError& e) {
    throw ConfigError(e.key.empty() ? pointer : pointer + "/" + e.key, e.message, plugin);
  }
}

WanOptions resolve_options(const wanhost::PluginConfig& cfg) {
  WanOptions o;
  const auto preset = cfg.get_or<std::string>("preset", "tiny");
  try {
    o.config = preset_config(preset);
  } catch (const std::invalid_argument& e) {
    cfg.fail("preset", e.what());
  }
  const auto file = cfg.get_or<std::string>("config_file", "");
  if (!file.empty()) {
    Json j;
    try {
      j = wanhost::read_json_file(file);
    } catch (const wanhost::FormatError& e) {
      cfg.fail("config_file", e.what());
    }
    // Keys missing from the file take WanTransformer3DModel's defaults (= the 14B architecture).
    try {
      o.config = apply_keys(preset_config("wan2.1-t2v-14b"), j);
    } catch (const KeyError& e) {
      cfg.fail("config_file", "'" + file + "'" + (e.key.empty() ? "" : ", key '" + e.key + "'") +
                                  ": " + e.message);
    }
  }
  if (cfg.has("overrides"))
    o.config = apply_config_json(o.config, cfg.values.at("overrides"), cfg.pointer + "/overrides",
                                 cfg.plugin);
  o.weights = cfg.get_or<std::string>("weights", "");
  o.init_seed = cfg.get_or<std::int64_t>("init_seed", 0);
  o.init_method = cfg.get_or<std::string>("init_method", "pytorch");
  if (o.init_method != "pytorch" && o.init_method != "megatron")
    cfg.fail("init_method", "must be pytorch or megatron, got '" + o.init_method + "'");
  o.mask_text_padding = cfg.get_or<bool>("mask_text_padding", false);
  o.collapse_text_padding = cfg.get_or<bool>("collapse_text_padding", true);
  const auto rows_from = cfg.get_or<std::string>("collapsed_rows_from", "longest");
  if (rows_from != "longest" && rows_from != "text_rows")
    cfg.fail("collapsed_rows_from", "must be longest or text_rows, got '" + rows_from + "'");
  o.collapse_from_text_rows = rows_from == "text_rows";
  o.text_len = cfg.get_or<std::int64_t>("text_len", 512);
  o.fused_kernels = cfg.get_or<std::string>("fused_kernels", "auto");
  if (o.fused_kernels != "auto" && o.fused_kernels != "on" && o.fused_kernels != "off")
    cfg.fail("fused_kernels", "must be auto, on or off, got '" + o.fused_kernels + "'");
  o.activation_checkpointing = cfg.get_or<bool>("activation_checkpointing", false);
  if (o.init_seed < 0) cfg.fail("init_seed", "must be >= 0");
  if (o.text_len < 0) cfg.fail("text_len", "must be >= 0");
  return o;
}

std::vector<std::pair<std::string, std::vector<std::int64_t>>> diffusers_shapes(
    const WanConfig& c) {
  const auto d = c.dim(), f = c.ffn_dim;
  std::vector<std::pair<std::string, std::vector<std::int64_t>>> s;
  // torch's named_parameters() order: a module's own parameters, then its children's.
  s.push_back({"scale_shift_table", {1, 2, d}});
  auto linear = [&](const std::string& name, std::int64_t in, std::int64_t out) {
    s.push_back({name + ".weight", {out, in}});
    s.push_back({name + ".bias", {out}});
  };
  s.push_back({"patch_embedding.weight", {d, c.in_channels, c.patch[0], c.patch[1], c.patch[2]}});
  s.push_back({"patch_embedding.bias", {d}});
  linear("condition_embedder.time_embedder.linear_1", c.freq_dim, d);
  linear("condition_embedder.time_embedder.linear_2", d, d);
  linear("condition_embedder.time_proj", d, 6 * d);
  linear("condition_embedder.text_embedder.linear_1", c.text_dim, d);
  linear("condition_embedder.text_embedder.linear_2", d, d);
  for (std::int64_t i = 0; i < c.num_layers; ++i) {
    const auto b = "blocks." + std::to_string(i) + ".";
    s.push_back({b + "scale_shift_table", {1, 6, d}});
    for (const std::string attn : {"attn1", "attn2"}) {
      for (const std::string p : {"to_q", "to_k", "to_v", "to_out.0"})
        linear(b + attn + "." + p, d, d);
      s.push_back({b + attn + ".norm_q.weight", {d}});
      s.push_back({b + attn + ".norm_k.weight", {d}});
    }
    if (c.cross_attn_norm) {
      s.push_back({b + "norm2.weight", {d}});
      s.push_back({b + "norm2.bias", {d}});
    }
    linear(b + "ffn.net.0.proj", d, f);
    linear(b + "ffn.net.2", f, d);
  }
  linear("proj_out", d, c.out_channels * c.patch_volume());
  return s;
}

// docs/model.md "FLOPs", with the patch-embedding / proj_out widths generalised from 64 each.
double forward_flops(const WanConfig& c, std::int64_t tokens, std::int64_t text_tokens) {
  const double d = static_cast<double>(c.dim()), f = static_cast<double>(c.ffn_dim);
  const double layers = static_cast<double>(c.num_layers);
  const double s = static_cast<double>(tokens), t = static_cast<double>(text_tokens);
  const double io = static_cast<double>((c.in_channels + c.out_channels) * c.patch_volume());
  const double video_params = layers * (6 * d * d + 2 * d * f) + io * d;
  const double text_params = layers * 2 * d * d + static_cast<double>(c.text_dim) * d + d * d;
  return 2 * s * video_params + 2 * t * text_params + layers * 4 * s * s * d +
         layers * 4 * s * t * d;
}

std::string original_to_diffusers(const std::string& in) {
  std::string n = starts_with(in, "model.diffusion_model.") ? in.substr(22) : in;
  static const std::pair<const char*, const char*> kTop[] = {
      {"time_embedding.0.", "condition_embedder.time_embedder.linear_1."},
      {"time_embedding.2.", "condition_embedder.time_embedder.linear_2."},
      {"text_embedding.0.", "condition_embedder.text_embedder.linear_1."},
      {"text_embedding.2.", "condition_embedder.text_embedder.linear_2."},
      {"time_projection.1.", "condition_embedder.time_proj."},
      {"head.head.", "proj_out."},
  };
  for (const auto& [from, to] : kTop)
    if (starts_with(n, from)) return to + n.substr(std::strlen(from));
  if (n == "head.modulation") return "scale_shift_table";
  if (!starts_with(n, "blocks.")) return n;
  // blocks.<i>.<rest>
  const auto dot = n.find('.', 7);
  if (dot == std::string::npos) return n;
  const auto prefix = n.substr(0, dot + 1);
  const auto rest = n.substr(dot + 1);
  // The original's affine pre-cross-attention norm is `norm3`; Diffusers calls it `norm2`.
  static const std::pair<const char*, const char*> kBlock[] = {
      {"self_attn.q.", "attn1.to_q."},
      {"self_attn.k.", "attn1.to_k."},
      {"self_attn.v.", "attn1.to_v."},
      {"self_attn.o.", "attn1.to_out.0."},
      {"self_attn.norm_q.", "attn1.norm_q."},
      {"self_attn.norm_k.", "attn1.norm_k."},
      {"cross_attn.q.", "attn2.to_q."},
      {"cross_attn.k.", "attn2.to_k."},
      {"cross_attn.v.", "attn2.to_v."},
      {"cross_attn.o.", "attn2.to_out.0."},
      {"cross_attn.norm_q.", "attn2.norm_q."},
      {"cross_attn.norm_k.", "attn2.norm_k."},
      {"norm3.", "norm2."},
      {"ffn.0.", "ffn.net.0.proj."},
      {"ffn.2.", "ffn.net.2."},
  };
  if (rest == "modulation") return prefix + "scale_shift_table";
  for (const auto& [from, to] : kBlock)
    if (starts_with(rest, from)) return prefix + to + rest.substr(std::strlen(from));
  return n;
}

// Loads a checkpoint into the parameters. Accepted: Diffusers layout (single file, sharded index
// or a folder holding either), with the output modulation as top-level `scale_shift_table` or as
// `norm_out.linear.*` (an identity pair with the table as bias: what Diffusers trees with an
// AdaLayerNorm head convert the table to; bias = [shift; scale]); original Wan 2.1 keys (detected
// by their names, optional `model.diffusion_model.` prefix). Every missing, unexpected,
// duplicated or mis-shaped tensor is reported in one FormatError. Values are converted to the
// parameters' dtype and device.
void WanModel::load_weights(const std::string& path) {
  const auto coll = wanhost::safetensors::Collection::open(path);
  const auto names = coll.names();
  const bool original = looks_original(names);
  const auto d = options_.config.dim();

  std::map<std::string, std::string> source;  // model name -> checkpoint name
  wanhost::CheckpointProblems problems;
  for (const auto& n : names) {
    std::string target = starts_with(n, "model.diffusion_model.") ? n.substr(22) : n;
    if (original) target = original_to_diffusers(target);
    if (target.find("norm_added_q") != std::string::npos) continue;  // Diffusers ignores these too
    if (auto [it, fresh] = source.emplace(target, n); !fresh)
      problems.duplicated.push_back(n + " and " + it->second + " both give " + target);
  }

  // Output modulation stored as an adaptive LayerNorm: recover the table from its bias.
  at::Tensor table_from_norm_out;
  const bool has_w = source.count("norm_out.linear.weight"),
             has_b = source.count("norm_out.linear.bias");
  if (has_w || has_b) {
    const auto w_name = has_w ? source["norm_out.linear.weight"] : std::string();
    const auto b_name = has_b ? source["norm_out.linear.bias"] : std::string();
    source.erase("norm_out.linear.weight");
    source.erase("norm_out.linear.bias");
    if (!has_w || !has_b) {
      problems.missing.push_back(has_w ? "norm_out.linear.bias" : "norm_out.linear.weight");
    } else if (coll.info(w_name).shape != std::vector<std::int64_t>{2 * d, d} ||
               coll.info(b_name).shape != std::vector<std::int64_t>{2 * d}) {
      problems.misshaped.push_back(
          "norm_out.linear: checkpoint " + shape_str(coll.info(w_name).shape) + " / " +
          shape_str(coll.info(b_name).shape) + ", model [" + std::to_string(2 * d) + ", " +
          std::to_string(d) + "] / [" + std::to_string(2 * d) + "]");
    } else {
      auto w = coll.load(w_name).to(at::kDouble);
      auto eye = at::eye(d, at::TensorOptions().dtype(at::kDouble));
      if ((w - at::cat({eye, eye}, 0)).abs().max().item<double>() > 1e-6)
        problems.unusable.push_back(
            w_name +
            ": not the identity pair of a converted scale_shift_table; a trained "
            "SiLU+linear output modulation cannot be represented by the Wan head");
      else if (source.count("scale_shift_table"))
        problems.duplicated.push_back(b_name + " and " + source["scale_shift_table"] +
                                      " both give scale_shift_table");
      else
        table_from_norm_out = coll.load(b_name).view({1, 2, d});
    }
  }

  auto params = root_->named_parameters(true);
  std::set<std::string> filled;  // by the plugin itself: the table recovered from norm_out
  if (table_from_norm_out.defined()) filled.insert("scale_shift_table");
  wanhost::match_weights(coll, params, source, problems, filled);

  if (!problems.empty()) {
    std::ostringstream msg;
    msg << "wan21_dit: checkpoint '" << path << "' ("
        << (original ? "original Wan 2.1 keys" : "Diffusers keys") << ") does not fit the model ("
        << options_.config.num_layers << " blocks, dim " << d << "): " << problems.report();
    msg << "\n  (is the model config the checkpoint's? set config_file to its config.json)";
    throw FormatError(msg.str());
  }

  wanhost::load_matched_weights(coll, params, source);
  if (table_from_norm_out.defined()) {
    at::NoGradGuard no_grad;
    params["scale_shift_table"].copy_(table_from_norm_out);
  }
  wanhost::logger()->info("wan21_dit: loaded {} tensors from {}{}", params.size(), path,
                          original                        ? " (original Wan 2.1 keys)"
                          : table_from_norm_out.defined() ? " (norm_out.linear head)"
                                                          : "");
}

// Diffusers layout: config.json + diffusion_pytorch_model.safetensors, each written atomically.
void WanModel::save_weights(const std::string& dir) {
  make_dirs(dir);
  // A stale sharded index beside the new single file would make the folder ambiguous to load.
  const auto index = dir + "/diffusion_pytorch_model.safetensors.index.json";
  if (::unlink(index.c_str()) != 0 && errno != ENOENT)
    throw std::runtime_error("cannot remove stale " + index + ": " + std::strerror(errno));
  std::map<std::string, at::Tensor> tensors;
  for (const auto& item : root_->named_parameters(true))
    tensors[item.key()] = item.value().detach();
  wanhost::safetensors::save(dir + "/diffusion_pytorch_model.safetensors", tensors,
                             {{"format", "pt"}});
  write_atomic(dir, "config.json", config_json() + "\n");
}

std::string WanModel::config_json() const {
  return options_.config.to_json().dump(2);
}

}  // namespace wanhost::plugins::wan21_dit
