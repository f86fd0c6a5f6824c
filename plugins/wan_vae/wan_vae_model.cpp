// wan_vae modules and the chunked causal encode/decode (Diffusers AutoencoderKLWan, 0.42.1).
//
// Every causal 3x3x3 convolution sees its input in chunks (encoder: the first frame, then 4 frames
// at a time; decoder: one latent frame at a time) and keeps the last frames of the previous chunk
// in a feature cache slot. Slots are taken in call order through a running index reset per chunk,
// exactly like Diffusers' `feat_cache` / `feat_idx`, including the special first-chunk rules of
// the temporal resamplers (downsample3d caches without convolving; upsample3d marks its slot
// "Rep" and then convolves against zero frames once).
#include <ATen/ATen.h>

#include <cmath>
#include <stdexcept>

#include "wan_vae.hpp"
#include "wanhost/kit/strings.hpp"

namespace wanhost::plugins::wan_vae {
namespace {

at::Tensor param(torch::nn::Module& m, const std::string& name, at::IntArrayRef shape) {
  // Frozen (requires_grad false): data preparation never trains the VAE, so no autograd state is
  // kept even without a NoGradGuard. Filled by load_weights().
  return m.register_parameter(name, at::empty(shape), /*requires_grad=*/false);
}

// A numbered child, like an entry of torch.nn.ModuleList ("0", "1", ...).
template <class M>
void append(torch::nn::Module& list, const std::shared_ptr<M>& child) {
  list.register_module(std::to_string(list.children().size()), child);
}

// The running slot index and the slots (Diffusers: feat_idx / feat_cache).
struct FeatCache {
  enum class State { kEmpty, kRep, kTensor };
  struct Slot {
    State state = State::kEmpty;
    at::Tensor frames;
  };
  std::vector<Slot> slots;
  std::size_t next_index = 0;

  Slot& next() {
    if (next_index == slots.size()) slots.emplace_back();
    return slots[next_index++];
  }
};

// The last `n` frames (dim 2) as an owned copy, so the chunk they come from can be freed.
at::Tensor last_frames(const at::Tensor& x, std::int64_t n) {
  const auto t = x.size(2);
  return x.narrow(2, std::max<std::int64_t>(0, t - n), std::min(t, n)).clone();
}

// WanCausalConv3d: zero padding of ±pad in H and W, 2*pad_t in front of the time axis only; a
// cache (earlier frames) replaces as much of the front padding as it is long.
class CausalConv3dImpl : public torch::nn::Module {
 public:
  CausalConv3dImpl(std::int64_t cin, std::int64_t cout, std::array<std::int64_t, 3> kernel,
                   std::array<std::int64_t, 3> stride = {1, 1, 1},
                   std::array<std::int64_t, 3> pad = {0, 0, 0})
      : stride_(stride), pad_(pad) {
    weight_ = param(*this, "weight", {cout, cin, kernel[0], kernel[1], kernel[2]});
    bias_ = param(*this, "bias", {cout});
  }

  at::Tensor forward(at::Tensor x, const at::Tensor& cache = {}) const {
    std::int64_t front = 2 * pad_[0];
    if (cache.defined() && front > 0) {
      x = at::cat({cache.to(x.device()), x}, 2);
      front -= cache.size(2);
    }
    if (front != 0 || pad_[1] != 0 || pad_[2] != 0)
      x = at::constant_pad_nd(x, {pad_[2], pad_[2], pad_[1], pad_[1], front, 0});
    return at::conv3d(x, weight_, bias_, stride_);
  }

 private:
  std::array<std::int64_t, 3> stride_, pad_;
  at::Tensor weight_, bias_;
};

// A causal conv run on one chunk with its cache slot (the pattern Diffusers repeats for conv_in,
// the residual convs and conv_out): the slot keeps the chunk's last 2 input frames, topped up
// with the previous slot's last frame when the chunk has a single frame.
at::Tensor cached_conv(const CausalConv3dImpl& conv, const at::Tensor& x, FeatCache* cache) {
  if (cache == nullptr) return conv.forward(x);
  FeatCache::Slot& slot = cache->next();
  at::Tensor keep = last_frames(x, 2);
  const bool has = slot.state == FeatCache::State::kTensor;
  if (keep.size(2) < 2 && has) keep = at::cat({slot.frames.narrow(2, -1, 1), keep}, 2);
  at::Tensor y = conv.forward(x, has ? slot.frames : at::Tensor());
  slot.state = FeatCache::State::kTensor;
  slot.frames = std::move(keep);
  return y;
}

// WanRMS_norm: F.normalize over channels (in fp32 for half types), times sqrt(C) and gamma.
class RmsNormImpl : public torch::nn::Module {
 public:
  RmsNormImpl(std::int64_t dim, bool images) : scale_(std::sqrt(static_cast<double>(dim))) {
    gamma_ = images ? param(*this, "gamma", {dim, 1, 1}) : param(*this, "gamma", {dim, 1, 1, 1});
  }
  at::Tensor forward(const at::Tensor& x) const {
    const auto type = x.scalar_type();
    const bool low = type == at::kHalf || type == at::kBFloat16;
    const at::Tensor xf = low ? x.to(at::kFloat) : x;
    const std::array<std::int64_t, 1> channels{1};
    const at::Tensor norm = xf.norm(2, channels, /*keepdim=*/true).clamp_min(1e-12).expand_as(xf);
    return (xf / norm).to(type) * scale_ * gamma_;
  }

 private:
  double scale_;
  at::Tensor gamma_;
};

// A Conv2d with the weight layout of torch.nn.Conv2d.
class Conv2dImpl : public torch::nn::Module {
 public:
  Conv2dImpl(std::int64_t cin, std::int64_t cout, std::int64_t kernel) {
    weight_ = param(*this, "weight", {cout, cin, kernel, kernel});
    bias_ = param(*this, "bias", {cout});
  }
  at::Tensor forward(const at::Tensor& x, std::int64_t stride, std::int64_t pad) const {
    return at::conv2d(x, weight_, bias_, {stride, stride}, {pad, pad});
  }

 private:
  at::Tensor weight_, bias_;
};

// A layer of the encoder's down_blocks list: a residual block or a resampler.
class CachedLayer : public torch::nn::Module {
 public:
  virtual at::Tensor forward(const at::Tensor& x, FeatCache* cache) = 0;
};

// WanResidualBlock: conv2(SiLU(norm2(conv1(SiLU(norm1(x)))))) + shortcut(x); dropout is the
// identity at inference.
class ResidualBlockImpl : public CachedLayer {
 public:
  ResidualBlockImpl(std::int64_t in, std::int64_t out) {
    norm1_ = register_module("norm1", std::make_shared<RmsNormImpl>(in, false));
    conv1_ = register_module(
        "conv1", std::make_shared<CausalConv3dImpl>(in, out, std::array<std::int64_t, 3>{3, 3, 3},
                                                    std::array<std::int64_t, 3>{1, 1, 1},
                                                    std::array<std::int64_t, 3>{1, 1, 1}));
    norm2_ = register_module("norm2", std::make_shared<RmsNormImpl>(out, false));
    conv2_ = register_module(
        "conv2", std::make_shared<CausalConv3dImpl>(out, out, std::array<std::int64_t, 3>{3, 3, 3},
                                                    std::array<std::int64_t, 3>{1, 1, 1},
                                                    std::array<std::int64_t, 3>{1, 1, 1}));
    if (in != out)
      shortcut_ = register_module(
          "conv_shortcut",
          std::make_shared<CausalConv3dImpl>(in, out, std::array<std::int64_t, 3>{1, 1, 1}));
  }
  at::Tensor forward(const at::Tensor& x, FeatCache* cache) override {
    const at::Tensor h = shortcut_ ? shortcut_->forward(x) : x;
    at::Tensor y = cached_conv(*conv1_, at::silu(norm1_->forward(x)), cache);
    y = cached_conv(*conv2_, at::silu(norm2_->forward(y)), cache);
    return y + h;
  }

 private:
  std::shared_ptr<RmsNormImpl> norm1_, norm2_;
  std::shared_ptr<CausalConv3dImpl> conv1_, conv2_, shortcut_;
};

// WanAttentionBlock: single-head self-attention over the H*W positions of each frame.
class AttentionBlockImpl : public torch::nn::Module {
 public:
  explicit AttentionBlockImpl(std::int64_t dim) {
    norm_ = register_module("norm", std::make_shared<RmsNormImpl>(dim, true));
    to_qkv_ = register_module("to_qkv", std::make_shared<Conv2dImpl>(dim, 3 * dim, 1));
    proj_ = register_module("proj", std::make_shared<Conv2dImpl>(dim, dim, 1));
  }
  at::Tensor forward(const at::Tensor& identity) const {
    const auto b = identity.size(0), c = identity.size(1), t = identity.size(2);
    const auto h = identity.size(3), w = identity.size(4);
    at::Tensor x = identity.permute({0, 2, 1, 3, 4}).reshape({b * t, c, h, w});
    x = norm_->forward(x);
    at::Tensor qkv = to_qkv_->forward(x, 1, 0).reshape({b * t, 1, 3 * c, -1});
    qkv = qkv.permute({0, 1, 3, 2}).contiguous();
    const auto parts = qkv.chunk(3, -1);
    x = at::scaled_dot_product_attention(parts[0], parts[1], parts[2]);
    x = x.squeeze(1).permute({0, 2, 1}).reshape({b * t, c, h, w});
    x = proj_->forward(x, 1, 0);
    return x.view({b, t, c, h, w}).permute({0, 2, 1, 3, 4}) + identity;
  }

 private:
  std::shared_ptr<RmsNormImpl> norm_;
  std::shared_ptr<Conv2dImpl> to_qkv_, proj_;
};

// WanMidBlock (one attention layer): resnets.0, attentions.0, resnets.1.
class MidBlockImpl : public torch::nn::Module {
 public:
  explicit MidBlockImpl(std::int64_t dim) {
    auto resnets = register_module("resnets", std::make_shared<torch::nn::Module>());
    auto attentions = register_module("attentions", std::make_shared<torch::nn::Module>());
    res0_ = std::make_shared<ResidualBlockImpl>(dim, dim);
    attn_ = std::make_shared<AttentionBlockImpl>(dim);
    res1_ = std::make_shared<ResidualBlockImpl>(dim, dim);
    append(*resnets, res0_);
    append(*resnets, res1_);
    append(*attentions, attn_);
  }
  at::Tensor forward(const at::Tensor& x, FeatCache* cache) {
    return res1_->forward(attn_->forward(res0_->forward(x, cache)), cache);
  }

 private:
  std::shared_ptr<ResidualBlockImpl> res0_, res1_;
  std::shared_ptr<AttentionBlockImpl> attn_;
};

// WanResample. Spatial part per frame: upsample (nearest-exact x2 in fp32, then a 3x3 conv to
// `out` channels) or downsample (zero pad right/bottom by 1, 3x3 conv with stride 2). Temporal
// part: upsample3d doubles the frames with a (3,1,1) causal conv to 2C channels before the
// spatial step; downsample3d halves them with a (3,1,1) stride-2 conv after it.
class ResampleImpl : public CachedLayer {
 public:
  enum class Mode { kUp2d, kUp3d, kDown2d, kDown3d };

  ResampleImpl(std::int64_t dim, Mode mode, std::int64_t out) : mode_(mode) {
    const bool up = mode == Mode::kUp2d || mode == Mode::kUp3d;
    // Diffusers' nn.Sequential: index 0 is the parameter-free upsample / zero pad.
    auto seq = register_module("resample", std::make_shared<torch::nn::Module>());
    conv_ = seq->register_module("1", std::make_shared<Conv2dImpl>(dim, up ? out : dim, 3));
    if (mode == Mode::kUp3d)
      time_conv_ = register_module(
          "time_conv",
          std::make_shared<CausalConv3dImpl>(dim, 2 * dim, std::array<std::int64_t, 3>{3, 1, 1},
                                             std::array<std::int64_t, 3>{1, 1, 1},
                                             std::array<std::int64_t, 3>{1, 0, 0}));
    if (mode == Mode::kDown3d)
      time_conv_ = register_module("time_conv", std::make_shared<CausalConv3dImpl>(
                                                    dim, dim, std::array<std::int64_t, 3>{3, 1, 1},
                                                    std::array<std::int64_t, 3>{2, 1, 1}));
  }

  at::Tensor forward(const at::Tensor& input, FeatCache* cache) override {
    using State = FeatCache::State;
    at::Tensor x = input;
    const auto b = x.size(0), c = x.size(1), h = x.size(3), w = x.size(4);
    if (mode_ == Mode::kUp3d && cache != nullptr) {
      FeatCache::Slot& slot = cache->next();
      if (slot.state == State::kEmpty) {
        slot.state = State::kRep;  // first chunk: no temporal upsampling
      } else {
        const auto t = x.size(2);
        at::Tensor keep = last_frames(x, 2);
        if (keep.size(2) < 2 && slot.state == State::kTensor)
          keep = at::cat({slot.frames.narrow(2, -1, 1), keep}, 2);
        if (keep.size(2) < 2 && slot.state == State::kRep)
          keep = at::cat({at::zeros_like(keep), keep}, 2);
        x = slot.state == State::kRep ? time_conv_->forward(x)
                                      : time_conv_->forward(x, slot.frames);
        slot.state = State::kTensor;
        slot.frames = std::move(keep);
        // [b, 2c, t] -> frames (2t, 2t+1) from the two channel halves.
        x = x.reshape({b, 2, c, t, h, w});
        x = at::stack({x.select(1, 0), x.select(1, 1)}, 3).reshape({b, c, 2 * t, h, w});
      }
    }
    const auto t = x.size(2);
    x = x.permute({0, 2, 1, 3, 4}).reshape({b * t, c, h, w});
    if (mode_ == Mode::kUp2d || mode_ == Mode::kUp3d) {
      const std::array<double, 2> scale{2.0, 2.0};
      x = at::_upsample_nearest_exact2d(x.to(at::kFloat), std::nullopt, at::ArrayRef<double>(scale))
              .to(x.scalar_type());
      x = conv_->forward(x, 1, 1);
    } else {
      x = conv_->forward(at::constant_pad_nd(x, {0, 1, 0, 1}), 2, 0);
    }
    x = x.view({b, t, x.size(1), x.size(2), x.size(3)}).permute({0, 2, 1, 3, 4});
    if (mode_ == Mode::kDown3d && cache != nullptr) {
      FeatCache::Slot& slot = cache->next();
      if (slot.state == State::kEmpty) {
        // First chunk: only cache (Diffusers keeps all of x; only its last frame is read).
        slot.state = State::kTensor;
        slot.frames = last_frames(x, 1);
      } else {
        at::Tensor keep = last_frames(x, 1);
        x = time_conv_->forward(at::cat({slot.frames.narrow(2, -1, 1), x}, 2));
        slot.frames = std::move(keep);
      }
    }
    return x;
  }

 private:
  Mode mode_;
  std::shared_ptr<Conv2dImpl> conv_;
  std::shared_ptr<CausalConv3dImpl> time_conv_;
};

std::shared_ptr<CausalConv3dImpl> conv333(std::int64_t in, std::int64_t out) {
  return std::make_shared<CausalConv3dImpl>(in, out, std::array<std::int64_t, 3>{3, 3, 3},
                                            std::array<std::int64_t, 3>{1, 1, 1},
                                            std::array<std::int64_t, 3>{1, 1, 1});
}

// WanEncoder3d (is_residual false, no attention in the down blocks).
class EncoderImpl : public torch::nn::Module {
 public:
  explicit EncoderImpl(const VaeConfig& c) {
    std::vector<std::int64_t> dims{c.base_dim};
    for (auto m : c.dim_mult) dims.push_back(c.base_dim * m);
    conv_in_ = register_module("conv_in", conv333(c.in_channels, dims[0]));
    auto list = register_module("down_blocks", std::make_shared<torch::nn::Module>());
    const std::size_t levels = c.dim_mult.size();
    for (std::size_t i = 0; i < levels; ++i) {
      std::int64_t in = dims[i];
      const std::int64_t out = dims[i + 1];
      for (std::int64_t r = 0; r < c.num_res_blocks; ++r, in = out)
        layers_.push_back(std::make_shared<ResidualBlockImpl>(in, out));
      if (i + 1 != levels)
        layers_.push_back(std::make_shared<ResampleImpl>(
            out,
            c.temperal_downsample[i] ? ResampleImpl::Mode::kDown3d : ResampleImpl::Mode::kDown2d,
            out));
    }
    for (auto& l : layers_) append(*list, l);
    const std::int64_t top = dims.back();
    mid_ = register_module("mid_block", std::make_shared<MidBlockImpl>(top));
    norm_out_ = register_module("norm_out", std::make_shared<RmsNormImpl>(top, false));
    conv_out_ = register_module("conv_out", conv333(top, 2 * c.z_dim));
  }
  at::Tensor forward(const at::Tensor& input, FeatCache* cache) {
    at::Tensor x = cached_conv(*conv_in_, input, cache);
    for (auto& l : layers_) x = l->forward(x, cache);
    x = mid_->forward(x, cache);
    return cached_conv(*conv_out_, at::silu(norm_out_->forward(x)), cache);
  }

 private:
  std::shared_ptr<CausalConv3dImpl> conv_in_, conv_out_;
  std::vector<std::shared_ptr<CachedLayer>> layers_;
  std::shared_ptr<MidBlockImpl> mid_;
  std::shared_ptr<RmsNormImpl> norm_out_;
};

// WanUpBlock: num_res_blocks + 1 residual blocks, then an optional upsampler (to dim / 2).
class UpBlockImpl : public torch::nn::Module {
 public:
  UpBlockImpl(std::int64_t in, std::int64_t out, std::int64_t num_res_blocks, bool up,
              bool temporal) {
    auto list = register_module("resnets", std::make_shared<torch::nn::Module>());
    for (std::int64_t r = 0; r <= num_res_blocks; ++r, in = out) {
      resnets_.push_back(std::make_shared<ResidualBlockImpl>(in, out));
      append(*list, resnets_.back());
    }
    if (up) {
      auto ups = register_module("upsamplers", std::make_shared<torch::nn::Module>());
      upsampler_ = std::make_shared<ResampleImpl>(
          out, temporal ? ResampleImpl::Mode::kUp3d : ResampleImpl::Mode::kUp2d, out / 2);
      append(*ups, upsampler_);
    }
  }
  at::Tensor forward(at::Tensor x, FeatCache* cache) {
    for (auto& r : resnets_) x = r->forward(x, cache);
    return upsampler_ ? upsampler_->forward(x, cache) : x;
  }

 private:
  std::vector<std::shared_ptr<ResidualBlockImpl>> resnets_;
  std::shared_ptr<ResampleImpl> upsampler_;
};

// WanDecoder3d (Wan 2.1 layout: a block after the first takes the channels of the previous
// block's upsampler, which halves them).
class DecoderImpl : public torch::nn::Module {
 public:
  explicit DecoderImpl(const VaeConfig& c) {
    const std::int64_t base = c.decoder_dim();
    std::vector<std::int64_t> dims{base * c.dim_mult.back()};
    for (auto it = c.dim_mult.rbegin(); it != c.dim_mult.rend(); ++it) dims.push_back(base * *it);
    conv_in_ = register_module("conv_in", conv333(c.z_dim, dims[0]));
    mid_ = register_module("mid_block", std::make_shared<MidBlockImpl>(dims[0]));
    auto list = register_module("up_blocks", std::make_shared<torch::nn::Module>());
    const std::size_t levels = c.dim_mult.size();
    for (std::size_t i = 0; i < levels; ++i) {
      const std::int64_t in = i > 0 ? dims[i] / 2 : dims[i];
      const bool up = i + 1 != levels;
      // temperal_upsample = temperal_downsample reversed.
      const bool temporal = up && c.temperal_downsample[levels - 2 - i];
      blocks_.push_back(
          std::make_shared<UpBlockImpl>(in, dims[i + 1], c.num_res_blocks, up, temporal));
      append(*list, blocks_.back());
    }
    norm_out_ = register_module("norm_out", std::make_shared<RmsNormImpl>(dims.back(), false));
    conv_out_ = register_module("conv_out", conv333(dims.back(), c.out_channels));
  }
  at::Tensor forward(const at::Tensor& input, FeatCache* cache) {
    at::Tensor x = cached_conv(*conv_in_, input, cache);
    x = mid_->forward(x, cache);
    for (auto& b : blocks_) x = b->forward(x, cache);
    return cached_conv(*conv_out_, at::silu(norm_out_->forward(x)), cache);
  }

 private:
  std::shared_ptr<CausalConv3dImpl> conv_in_, conv_out_;
  std::shared_ptr<MidBlockImpl> mid_;
  std::vector<std::shared_ptr<UpBlockImpl>> blocks_;
  std::shared_ptr<RmsNormImpl> norm_out_;
};

}  // namespace

class AutoencoderImpl : public torch::nn::Module {
 public:
  explicit AutoencoderImpl(const VaeConfig& c) {
    encoder = register_module("encoder", std::make_shared<EncoderImpl>(c));
    quant_conv = register_module(
        "quant_conv", std::make_shared<CausalConv3dImpl>(2 * c.z_dim, 2 * c.z_dim,
                                                         std::array<std::int64_t, 3>{1, 1, 1}));
    post_quant_conv = register_module(
        "post_quant_conv",
        std::make_shared<CausalConv3dImpl>(c.z_dim, c.z_dim, std::array<std::int64_t, 3>{1, 1, 1}));
    decoder = register_module("decoder", std::make_shared<DecoderImpl>(c));
  }
  std::shared_ptr<EncoderImpl> encoder;
  std::shared_ptr<CausalConv3dImpl> quant_conv, post_quant_conv;
  std::shared_ptr<DecoderImpl> decoder;
};

WanVae::WanVae(VaeOptions options) : options_(std::move(options)) {
  if (options_.config)
    config_ = *options_.config;
  else if (!options_.config_file.empty())
    config_ = read_config_file(options_.config_file);
  build();
}

WanVae::~WanVae() = default;

void WanVae::build() {
  root_ = std::make_shared<AutoencoderImpl>(config_);
  root_->to(device_, dtype_);
  loaded_ = false;
}

torch::nn::Module& WanVae::module() {
  return *root_;
}

void WanVae::to(c10::Device device, at::ScalarType dtype) {
  if (!at::isFloatingType(dtype))
    throw std::invalid_argument(std::string("wan_vae: dtype ") + c10::toString(dtype) +
                                " is not a floating-point type");
  root_->to(device, dtype);
  device_ = device;
  dtype_ = dtype;
}

std::string WanVae::config_json() const {
  return config_.to_json().dump(2);
}

void WanVae::check_video(const at::Tensor& v) const {
  const std::string what = "wan_vae encode: video ";
  if (!v.defined()) throw std::invalid_argument(what + "is undefined");
  if (v.dim() != 5)
    throw std::invalid_argument(what + "must have 5 dimensions [B, " +
                                std::to_string(config_.in_channels) + ", F, H, W], got " +
                                std::to_string(v.dim()) + ": " + wanhost::shape_str(v.sizes()));
  if (!at::isFloatingType(v.scalar_type()))
    throw std::invalid_argument(what + "must be a floating-point tensor in [-1, 1], got " +
                                c10::toString(v.scalar_type()));
  const auto s = config_.spatial_ratio();
  const auto r = config_.temporal_ratio();
  const std::string shape = " (shape " + wanhost::shape_str(v.sizes()) + ")";
  if (v.size(0) < 1) throw std::invalid_argument(what + "batch dimension 0 (B) is empty" + shape);
  if (v.size(1) != config_.in_channels)
    throw std::invalid_argument(what + "dimension 1 (channels) is " + std::to_string(v.size(1)) +
                                "; it must be " + std::to_string(config_.in_channels) + shape);
  if (v.size(2) < 1 || (v.size(2) - 1) % r != 0)
    throw std::invalid_argument(what + "dimension 2 (frames F) is " + std::to_string(v.size(2)) +
                                "; it must be 1 + " + std::to_string(r) + "k (1, " +
                                std::to_string(1 + r) + ", " + std::to_string(1 + 2 * r) +
                                ", ...): the causal encoder takes the first frame alone, then " +
                                std::to_string(r) + " frames per latent frame" + shape);
  const char* names[] = {"height H", "width W"};
  for (int d = 3; d < 5; ++d)
    if (v.size(d) < 1 || v.size(d) % s != 0)
      throw std::invalid_argument(what + "dimension " + std::to_string(d) + " (" + names[d - 3] +
                                  ") is " + std::to_string(v.size(d)) +
                                  "; it must be a positive multiple of " + std::to_string(s) +
                                  " (the spatial compression)" + shape);
}

void WanVae::check_latents(const at::Tensor& z) const {
  const std::string what = "wan_vae decode: latents ";
  if (!z.defined()) throw std::invalid_argument(what + "are undefined");
  if (z.dim() != 5)
    throw std::invalid_argument(what + "must have 5 dimensions [B, " +
                                std::to_string(config_.z_dim) + ", F, h, w], got " +
                                std::to_string(z.dim()) + ": " + wanhost::shape_str(z.sizes()));
  if (!at::isFloatingType(z.scalar_type()))
    throw std::invalid_argument(what + "must be a floating-point tensor, got " +
                                c10::toString(z.scalar_type()));
  const std::string shape = " (shape " + wanhost::shape_str(z.sizes()) + ")";
  if (z.size(1) != config_.z_dim)
    throw std::invalid_argument(what + "dimension 1 (channels) is " + std::to_string(z.size(1)) +
                                "; it must be " + std::to_string(config_.z_dim) +
                                " (z_dim of the loaded VAE)" + shape);
  const char* names[] = {"batch B", "", "frames F", "height h", "width w"};
  for (int d : {0, 2, 3, 4})
    if (z.size(d) < 1)
      throw std::invalid_argument(what + "dimension " + std::to_string(d) + " (" + names[d] +
                                  ") is 0; it must be at least 1" + shape);
}

namespace {

// Per-channel constants as the Wan pipelines build them: fp32 tensors from the config's floats,
// cast to the latents' dtype, the inverse std computed after the cast (1.0 / std.to(dtype)).
std::pair<at::Tensor, at::Tensor> norm_constants(const VaeConfig& c, const at::Tensor& like) {
  std::vector<float> mean(c.latents_mean.begin(), c.latents_mean.end());
  std::vector<float> std_(c.latents_std.begin(), c.latents_std.end());
  const auto view = std::vector<std::int64_t>{1, c.z_dim, 1, 1, 1};
  const auto to = at::TensorOptions().dtype(like.scalar_type()).device(like.device());
  return {at::tensor(mean).view(view).to(to), 1.0 / at::tensor(std_).view(view).to(to)};
}

void require_loaded(bool loaded, const char* what) {
  if (!loaded)
    throw std::logic_error(std::string("wan_vae: ") + what +
                           "() called before load_weights(): the VAE has no weights");
}

}  // namespace

at::Tensor WanVae::encode_one(const at::Tensor& x) {
  FeatCache cache;
  const std::int64_t frames = x.size(2);
  const std::int64_t r = config_.temporal_ratio();
  std::vector<at::Tensor> out;
  for (std::int64_t i = 0; i < 1 + (frames - 1) / r; ++i) {
    cache.next_index = 0;
    const at::Tensor chunk = i == 0 ? x.narrow(2, 0, 1) : x.narrow(2, 1 + r * (i - 1), r);
    out.push_back(root_->encoder->forward(chunk, &cache));
  }
  cache.slots.clear();
  at::Tensor enc = root_->quant_conv->forward(out.size() == 1 ? out[0] : at::cat(out, 2));
  out.clear();
  // DiagonalGaussianDistribution: mean = the first z_dim channels (mode()).
  return enc.narrow(1, 0, config_.z_dim);
}

at::Tensor WanVae::encode_mean(const at::Tensor& video) {
  require_loaded(loaded_, "encode");
  check_video(video);
  const at::Tensor x = video.to(device_, dtype_);
  if (!options_.batch_slicing || x.size(0) == 1) return encode_one(x);
  std::vector<at::Tensor> parts;
  for (std::int64_t b = 0; b < x.size(0); ++b) parts.push_back(encode_one(x.narrow(0, b, 1)));
  return at::cat(parts, 0);
}

at::Tensor WanVae::encode(const at::Tensor& video) {
  const at::Tensor mu = encode_mean(video);
  const auto [mean, inv_std] = norm_constants(config_, mu);
  return (mu - mean) * inv_std;
}

at::Tensor WanVae::decode_one(const at::Tensor& z) {
  const at::Tensor x = root_->post_quant_conv->forward(z);
  FeatCache cache;
  std::vector<at::Tensor> out;
  for (std::int64_t i = 0; i < x.size(2); ++i) {
    cache.next_index = 0;
    out.push_back(root_->decoder->forward(x.narrow(2, i, 1), &cache));
  }
  cache.slots.clear();
  return at::clamp(out.size() == 1 ? out[0] : at::cat(out, 2), -1.0, 1.0);
}

at::Tensor WanVae::decode(const at::Tensor& latents) {
  require_loaded(loaded_, "decode");
  check_latents(latents);
  const at::Tensor zn = latents.to(device_, dtype_);
  const auto [mean, inv_std] = norm_constants(config_, zn);
  const at::Tensor z = zn / inv_std + mean;
  if (!options_.batch_slicing || z.size(0) == 1) return decode_one(z);
  std::vector<at::Tensor> parts;
  for (std::int64_t b = 0; b < z.size(0); ++b) parts.push_back(decode_one(z.narrow(0, b, 1)));
  return at::cat(parts, 0);
}

std::unique_ptr<wanhost::VideoAutoencoder> create_autoencoder(const wanhost::PluginConfig& cfg) {
  return std::make_unique<WanVae>(resolve_options(cfg));
}

}  // namespace wanhost::plugins::wan_vae
