// wan_vae configuration (Diffusers config.json, plugin options) and weights: Diffusers folders,
// single or sharded safetensors, and original Wan 2.1 VAE key names.
#include <sys/stat.h>

#include <ATen/core/grad_mode.h>
#include <ATen/ops/empty.h>

#include <cmath>
#include <cstring>
#include <fstream>
#include <map>
#include <sstream>
#include <stdexcept>

#include "wan_vae.hpp"
#include "wanhost/errors.hpp"
#include "wanhost/kit/json_file.hpp"
#include "wanhost/kit/safetensors.hpp"
#include "wanhost/kit/strings.hpp"
#include "wanhost/kit/weights.hpp"
#include "wanhost/log.hpp"

namespace wanhost::plugins::wan_vae {
using wanhost::FormatError;

namespace {

using wanhost::starts_with;

// The Diffusers version whose AutoencoderKLWan the parity tests pin (tests/reference).
constexpr const char* kDiffusersVersion = "0.42.1";

// Wan 2.1 VAE latent statistics (AutoencoderKLWan defaults; diffusers/models/autoencoders/
// autoencoder_kl_wan.py).
const std::vector<double> kWanMean{-0.7571, -0.7089, -0.9113, 0.1075,  -0.1745, 0.9653,
                                   -0.1517, 1.5508,  0.4134,  -0.0715, 0.5517,  -0.3632,
                                   -0.1922, -0.9497, 0.2503,  -0.2921};
const std::vector<double> kWanStd{2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
                                  3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160};

std::int64_t positive_int(const Json& v, const std::string& key) {
  if (!v.is_number_integer() || v.get<std::int64_t>() <= 0)
    throw ConfigKeyError{key, "must be a positive integer, got " + v.dump()};
  return v.get<std::int64_t>();
}

std::vector<double> numbers(const Json& v, const std::string& key) {
  if (!v.is_array()) throw ConfigKeyError{key, "must be an array of numbers, got " + v.dump()};
  std::vector<double> out;
  for (const auto& x : v) {
    if (!x.is_number() || !std::isfinite(x.get<double>()))
      throw ConfigKeyError{key, "must be an array of finite numbers, got " + x.dump()};
    out.push_back(x.get<double>());
  }
  return out;
}

void validate(const VaeConfig& c) {
  const auto levels = static_cast<std::int64_t>(c.dim_mult.size());
  if (static_cast<std::int64_t>(c.temperal_downsample.size()) != levels - 1)
    throw ConfigKeyError{"temperal_downsample",
                         "must have len(dim_mult) - 1 = " + std::to_string(levels - 1) +
                             " entries (one per downsampling level), got " +
                             std::to_string(c.temperal_downsample.size())};
  std::int64_t temporal = 0;
  for (bool t : c.temperal_downsample) temporal += t ? 1 : 0;
  if (temporal != 2)
    throw ConfigKeyError{"temperal_downsample",
                         "wan_vae supports exactly two temporal downsamplings (4x, the Wan 2.1 "
                         "layout: the chunked causal encoder turns 4 frames into 1 latent "
                         "frame), got " +
                             std::to_string(temporal)};
  for (const auto& [key, values] :
       {std::pair<const char*, const std::vector<double>*>{"latents_mean", &c.latents_mean},
        {"latents_std", &c.latents_std}})
    if (static_cast<std::int64_t>(values->size()) != c.z_dim)
      throw ConfigKeyError{key, "must have z_dim = " + std::to_string(c.z_dim) + " values, got " +
                                    std::to_string(values->size()) +
                                    (values->size() == 16 ? " (the Wan 2.1 default)" : "")};
  for (double s : c.latents_std)
    if (!(s > 0)) throw ConfigKeyError{"latents_std", "must be positive, got " + Json(s).dump()};
}

VaeConfig apply_keys(VaeConfig c, const Json& keys) {
  if (!keys.is_object()) throw ConfigKeyError{"", "must be a JSON object"};
  bool mean_given = false, std_given = false;
  for (const auto& [key, v] : keys.items()) {
    if (!key.empty() && key[0] == '_') continue;  // _class_name, _diffusers_version, ...
    if (key == "base_dim") {
      c.base_dim = positive_int(v, key);
    } else if (key == "decoder_base_dim") {
      c.decoder_base_dim = v.is_null() ? 0 : positive_int(v, key);
    } else if (key == "z_dim") {
      c.z_dim = positive_int(v, key);
    } else if (key == "dim_mult") {
      if (!v.is_array() || v.empty())
        throw ConfigKeyError{key,
                             "must be a non-empty array of positive integers, got " + v.dump()};
      c.dim_mult.clear();
      for (const auto& m : v) c.dim_mult.push_back(positive_int(m, key));
    } else if (key == "num_res_blocks") {
      c.num_res_blocks = positive_int(v, key);
    } else if (key == "attn_scales") {
      if (!v.is_array()) throw ConfigKeyError{key, "must be an array, got " + v.dump()};
      if (!v.empty())
        throw ConfigKeyError{key,
                             "must be [] (attention only in the mid blocks, as in Wan 2.1); "
                             "attention inside the down blocks is not supported (Diffusers' "
                             "chunked encoder cannot run it either), got " +
                                 v.dump()};
    } else if (key == "temperal_downsample") {
      if (!v.is_array()) throw ConfigKeyError{key, "must be an array of booleans, got " + v.dump()};
      c.temperal_downsample.clear();
      for (const auto& t : v) {
        if (!t.is_boolean())
          throw ConfigKeyError{key, "must be an array of booleans, got " + t.dump()};
        c.temperal_downsample.push_back(t.get<bool>());
      }
    } else if (key == "dropout") {
      if (!v.is_number() || v.get<double>() < 0 || v.get<double>() > 1)
        throw ConfigKeyError{key, "must be a number in [0, 1], got " + v.dump()};
      c.dropout = v.get<double>();
    } else if (key == "latents_mean") {
      c.latents_mean = numbers(v, key);
      mean_given = true;
    } else if (key == "latents_std") {
      c.latents_std = numbers(v, key);
      std_given = true;
    } else if (key == "is_residual") {
      if (!v.is_boolean()) throw ConfigKeyError{key, "must be true or false, got " + v.dump()};
      if (v.get<bool>())
        throw ConfigKeyError{key,
                             "true (the Wan 2.2 VAE: residual down/up blocks) is not supported "
                             "by wan_vae; only the Wan 2.1 VAE (false) is"};
    } else if (key == "in_channels") {
      c.in_channels = positive_int(v, key);
    } else if (key == "out_channels") {
      c.out_channels = positive_int(v, key);
    } else if (key == "patch_size") {
      if (!v.is_null() && !(v.is_number_integer() && v.get<std::int64_t>() == 1))
        throw ConfigKeyError{key,
                             "only null is supported (patchified inputs are the Wan 2.2 VAE's), "
                             "got " +
                                 v.dump()};
    } else if (key == "scale_factor_temporal" || key == "scale_factor_spatial") {
      if (!v.is_null()) positive_int(v, key);  // checked against the architecture below
    } else {
      throw ConfigKeyError{key,
                           "unknown AutoencoderKLWan config key (known: base_dim, "
                           "decoder_base_dim, z_dim, dim_mult, num_res_blocks, attn_scales, "
                           "temperal_downsample, dropout, latents_mean, latents_std, "
                           "is_residual, in_channels, out_channels, patch_size, "
                           "scale_factor_temporal, scale_factor_spatial)"};
    }
  }
  if (c.z_dim != 16) {
    // The Wan 2.1 statistics only fit 16 channels: other widths must state their own.
    if (!mean_given)
      throw ConfigKeyError{"latents_mean",
                           "is required when z_dim is not 16 (the Wan 2.1 "
                           "default has 16 values)"};
    if (!std_given)
      throw ConfigKeyError{"latents_std",
                           "is required when z_dim is not 16 (the Wan 2.1 "
                           "default has 16 values)"};
  }
  validate(c);
  for (const auto& [key, want] :
       {std::pair<const char*, std::int64_t>{"scale_factor_temporal", c.temporal_ratio()},
        {"scale_factor_spatial", c.spatial_ratio()}}) {
    auto it = keys.find(key);
    if (it != keys.end() && !it->is_null() && it->get<std::int64_t>() != want)
      throw ConfigKeyError{key, "is " + it->dump() +
                                    " but the architecture (dim_mult, "
                                    "temperal_downsample) compresses by " +
                                    std::to_string(want)};
  }
  return c;
}

// POSIX, not std::filesystem (LibTorch exports ABI-mismatched copies of some of its functions).
bool is_dir(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}
bool is_file(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

bool looks_original(const std::vector<std::string>& names) {
  for (const auto& n : names)
    if (starts_with(n, "encoder.downsamples.") || starts_with(n, "decoder.upsamples.") ||
        starts_with(n, "encoder.middle.") || starts_with(n, "decoder.middle.") ||
        starts_with(n, "encoder.conv1.") || starts_with(n, "decoder.conv1."))
      return true;
  return false;
}

// Residual block: original Sequential indices (0 norm1, 2 conv1, 3 norm2, 6 conv2) -> names.
std::string residual_name(const std::string& rest) {
  static const std::pair<const char*, const char*> kMap[] = {
      {"residual.0.", "norm1."}, {"residual.2.", "conv1."},       {"residual.3.", "norm2."},
      {"residual.6.", "conv2."}, {"shortcut.", "conv_shortcut."},
  };
  for (const auto& [from, to] : kMap)
    if (starts_with(rest, from)) return to + rest.substr(std::strlen(from));
  return rest;
}

}  // namespace

VaeConfig::VaeConfig() : latents_mean(kWanMean), latents_std(kWanStd) {}

Json VaeConfig::to_json() const {
  Json down = Json::array();
  for (bool t : temperal_downsample) down.push_back(t);
  return Json{{"_class_name", "AutoencoderKLWan"},
              {"_diffusers_version", kDiffusersVersion},
              {"attn_scales", Json::array()},
              {"base_dim", base_dim},
              {"decoder_base_dim", decoder_base_dim > 0 ? Json(decoder_base_dim) : Json(nullptr)},
              {"dim_mult", dim_mult},
              {"dropout", dropout},
              {"in_channels", in_channels},
              {"is_residual", false},
              {"latents_mean", latents_mean},
              {"latents_std", latents_std},
              {"num_res_blocks", num_res_blocks},
              {"out_channels", out_channels},
              {"patch_size", nullptr},
              {"scale_factor_spatial", spatial_ratio()},
              {"scale_factor_temporal", temporal_ratio()},
              {"temperal_downsample", down},
              {"z_dim", z_dim}};
}

VaeConfig parse_config(const Json& keys) {
  return apply_keys(VaeConfig(), keys);
}

VaeConfig read_config_file(const std::string& path) {
  Json j;
  try {
    j = read_json_file(path);
  } catch (const FormatError& e) {
    throw FormatError(std::string("wan_vae: config file ") + e.what());
  }
  if (j.is_object() && j.contains("_class_name") && j["_class_name"] != "AutoencoderKLWan")
    throw FormatError("wan_vae: config file '" + path +
                      "', key '_class_name': " + j["_class_name"].dump() +
                      " is not an AutoencoderKLWan config (is this the pipeline's vae/ folder?)");
  try {
    return parse_config(j);
  } catch (const ConfigKeyError& e) {
    throw FormatError("wan_vae: config file '" + path + "'" +
                      (e.key.empty() ? "" : ", key '" + e.key + "'") + ": " + e.message);
  }
}

std::string original_to_diffusers(const std::string& name, const VaeConfig& c) {
  if (starts_with(name, "conv1.")) return "quant_conv." + name.substr(6);
  if (starts_with(name, "conv2.")) return "post_quant_conv." + name.substr(6);
  for (const std::string side : {"encoder.", "decoder."}) {
    if (!starts_with(name, side)) continue;
    const std::string rest = name.substr(side.size());
    if (starts_with(rest, "conv1.")) return side + "conv_in." + rest.substr(6);
    if (starts_with(rest, "head.0.")) return side + "norm_out." + rest.substr(7);
    if (starts_with(rest, "head.2.")) return side + "conv_out." + rest.substr(7);
    if (starts_with(rest, "middle.1.")) return side + "mid_block.attentions.0." + rest.substr(9);
    if (starts_with(rest, "middle.0.") || starts_with(rest, "middle.2."))
      return side + "mid_block.resnets." + (rest[7] == '0' ? "0." : "1.") +
             residual_name(rest.substr(9));
    const std::string list = side == "encoder." ? "downsamples." : "upsamples.";
    if (!starts_with(rest, list)) return name;
    const auto dot = rest.find('.', list.size());
    if (dot == std::string::npos) return name;
    std::int64_t index = 0;
    try {
      index = std::stoll(rest.substr(list.size(), dot - list.size()));
    } catch (const std::exception&) {
      return name;
    }
    const std::string tail = rest.substr(dot + 1);
    if (side == "encoder.")  // same flat indices as Diffusers' down_blocks
      return side + "down_blocks." + std::to_string(index) + "." + residual_name(tail);
    // Decoder: each up block is (num_res_blocks + 1) residual blocks and, except the last, one
    // resampler, flattened.
    const std::int64_t per_block = c.num_res_blocks + 2;
    const std::int64_t block = index / per_block, j = index % per_block;
    const std::string prefix = side + "up_blocks." + std::to_string(block) + ".";
    if (j <= c.num_res_blocks)
      return prefix + "resnets." + std::to_string(j) + "." + residual_name(tail);
    return prefix + "upsamplers.0." + tail;
  }
  return name;
}

VaeOptions resolve_options(const wanhost::PluginConfig& cfg) {
  VaeOptions o;
  o.config_file = cfg.get_or<std::string>("config_file", "");
  o.batch_slicing = cfg.get_or<bool>("batch_slicing", false);
  if (!o.config_file.empty()) {
    try {
      o.config = read_config_file(o.config_file);
    } catch (const FormatError& e) {
      cfg.fail("config_file", e.what());
    }
  }
  return o;
}

// Loads a checkpoint into the parameters (see the header). Values are converted to the
// parameters' dtype and device.
void WanVae::load_weights(const std::string& path) {
  std::string config_from = options_.config_file;
  VaeConfig wanted = config_;
  if (config_from.empty() && is_dir(path) && is_file(path + "/config.json")) {
    config_from = path + "/config.json";
    wanted = read_config_file(config_from);
  }
  if (!(wanted == config_)) {
    config_ = wanted;
    build();
  }
  loaded_ = false;

  const auto coll = wanhost::safetensors::Collection::open(path);
  const auto names = coll.names();
  const bool original = looks_original(names);
  std::map<std::string, std::string> source;  // model name -> checkpoint name
  wanhost::CheckpointProblems problems;
  for (const auto& n : names) {
    const std::string target = original ? original_to_diffusers(n, config_) : n;
    if (auto [it, fresh] = source.emplace(target, n); !fresh)
      problems.duplicated.push_back(n + " and " + it->second + " both give " + target);
  }
  auto params = module().named_parameters(true);
  wanhost::match_weights(coll, params, source, problems, {},
                         [&](const std::string& target, const std::string& n) {
                           return original && target != n ? n + " (= " + target + ")" : n;
                         });

  if (!problems.empty()) {
    std::ostringstream msg;
    msg << "wan_vae: checkpoint '" << path << "' ("
        << (original ? "original Wan 2.1 VAE keys" : "Diffusers keys")
        << ") does not fit the VAE (base_dim " << config_.base_dim << ", z_dim " << config_.z_dim
        << ", " << config_.dim_mult.size() << " levels, " << config_.num_res_blocks
        << " residual blocks each; config from "
        << (config_from.empty() ? std::string("the Wan 2.1 defaults") : "'" + config_from + "'")
        << "): " << problems.report();
    msg << "\n  (is the config the checkpoint's? set the config_file option to its config.json)";
    throw FormatError(msg.str());
  }

  wanhost::load_matched_weights(coll, params, source);
  loaded_ = true;
  wanhost::logger()->info("wan_vae: loaded {} tensors from {}{}", params.size(), path,
                          original ? " (original Wan 2.1 VAE keys)" : "");
}

}  // namespace wanhost::plugins::wan_vae
