// `pixel_vae`: a video autoencoder without weights, for demos and tests (docs/data.md, "Without
// weights: the pixel_vae autoencoder"). It has the Wan 2.1 VAE's compression shape — 8x8
// spatial, the first frame alone then groups of 4 frames, z_dim channels (docs/model.md, "Video
// autoencoder (wan_vae)") — so every latent it makes has the grid the Wan VAE would give, but
// each latent cell is plain arithmetic:
//   encode: the mean of the cell's 8x8 pixels (and of its group of 4 frames); channels 0-2 are
//           that mean's R, G, B, every further channel a fixed random linear map of them;
//   decode: channels 0-2 shown as pixels, each cell repeated over its 8x8 pixels and 4 frames
//           (nearest upsampling; the first latent frame gives one frame).
// decode(encode(v)) is therefore v averaged over those cells. What a model generates (or any
// latent dataset, the synthetic source's included) becomes viewable through channels 0-2.
// The weights folder holds only config.json; its "z_dim" (default 16) sets the channels.
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

#include <filesystem>
#include <stdexcept>

#include "wanhost/kit/json_file.hpp"
#include "wanhost/plugin.hpp"

namespace wanhost::plugins::pixel_vae {
namespace {

constexpr std::int64_t kSpatial = 8, kTemporal = 4;
// The random maps of channels 3.. are drawn from this seed, whatever the folder: a dataset
// encoded once can be decoded or extended later with the same channels.
constexpr std::uint64_t kProjectionSeed = 1234;
constexpr double kProjectionScale = 0.5;

class PixelVae final : public VideoAutoencoder {
 public:
  void load_weights(const std::string& path) override {
    if (proj_.defined()) throw std::runtime_error("pixel_vae: load_weights called twice");
    // An empty path: no folder, the defaults (how `wanhost generate` renders latents of a run
    // that has no pipeline folder, e.g. the synthetic data source's).
    const std::string config = path.empty() ? "(defaults)" : path + "/config.json";
    if (!path.empty() && !std::filesystem::is_regular_file(config))
      throw std::runtime_error("pixel_vae: no config.json in '" + path +
                               "' (expected a folder with config.json, e.g. {\"z_dim\": 16})");
    const Json cfg = path.empty() ? Json::object() : read_json_file(config);
    const auto z = cfg.find("z_dim");
    if (z != cfg.end() && !z->is_number_integer())
      throw std::runtime_error("pixel_vae: " + config + ": \"z_dim\" must be an integer");
    channels_ = z == cfg.end() ? 16 : z->get<std::int64_t>();
    if (channels_ < 3)
      throw std::runtime_error("pixel_vae: " + config + ": \"z_dim\" must be >= 3 (channels 0-2 " +
                               "are R, G, B), got " + std::to_string(channels_));
    at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(kProjectionSeed);
    at::Tensor p = at::randn({channels_, 3}, gen, at::TensorOptions(at::kFloat)) * kProjectionScale;
    p.slice(0, 0, 3).copy_(at::eye(3));
    proj_ = module_.register_buffer("proj", p);
  }

  void to(c10::Device device, at::ScalarType dtype) override {
    if (!proj_.defined()) throw std::runtime_error("pixel_vae: to() before load_weights()");
    module_.to(device, dtype);
    proj_ = module_.named_buffers()["proj"];
  }

  torch::nn::Module& module() override { return module_; }

  at::Tensor encode(const at::Tensor& video) override {
    if (video.dim() != 5 || video.size(1) != 3)
      throw std::invalid_argument("pixel_vae: expected video [B, 3, F, H, W], got " +
                                  c10::str(video.sizes()));
    const std::int64_t b = video.size(0), f = video.size(2), h = video.size(3), w = video.size(4);
    if (f < 1 || (f - 1) % kTemporal != 0)
      throw std::invalid_argument("pixel_vae: frames " + std::to_string(f) + " is not 4k+1");
    if (h % kSpatial != 0 || w % kSpatial != 0)
      throw std::invalid_argument("pixel_vae: height/width " + std::to_string(h) + "x" +
                                  std::to_string(w) + " are not multiples of 8");
    if (!proj_.defined()) throw std::runtime_error("pixel_vae: encode() before load_weights()");
    at::Tensor x = video.to(proj_.scalar_type());
    // Spatial: [B, 3, F, h, 8, w, 8] -> the mean over each 8x8 cell.
    x = x.reshape({b, 3, f, h / kSpatial, kSpatial, w / kSpatial, kSpatial}).mean({4, 6});
    // Temporal: the first frame alone, then the mean of each group of 4 (the Wan VAE's causal
    // grouping: 1 + 4k frames -> 1 + k latent frames).
    at::Tensor first = x.slice(2, 0, 1);
    if (f > 1) {
      at::Tensor rest =
          x.slice(2, 1, f)
              .reshape({b, 3, (f - 1) / kTemporal, kTemporal, h / kSpatial, w / kSpatial})
              .mean(3);
      x = at::cat({first, rest}, 2);
    } else {
      x = first;
    }
    return at::einsum("cr,brfhw->bcfhw", {proj_, x}).contiguous();
  }

  at::Tensor decode(const at::Tensor& latents) override {
    if (latents.dim() != 5 || latents.size(1) < 3 || latents.size(2) < 1)
      throw std::invalid_argument("pixel_vae: expected latents [B, C >= 3, F >= 1, h, w], got " +
                                  c10::str(latents.sizes()));
    at::Tensor rgb = latents.slice(1, 0, 3);
    at::Tensor first = rgb.slice(2, 0, 1);
    at::Tensor rest = rgb.slice(2, 1, rgb.size(2)).repeat_interleave(kTemporal, 2);
    at::Tensor v = at::cat({first, rest}, 2);
    v = v.repeat_interleave(kSpatial, 3).repeat_interleave(kSpatial, 4);
    return v.clamp(-1, 1).contiguous();
  }

  std::int64_t latent_channels() const override { return channels_; }
  std::int64_t temporal_ratio() const override { return kTemporal; }
  std::int64_t spatial_ratio() const override { return kSpatial; }
  std::string config_json() const override { return Json{{"z_dim", channels_}}.dump(); }

 private:
  torch::nn::Module module_;
  at::Tensor proj_;
  std::int64_t channels_ = 16;
};

void factories(PluginFactories& f) {
  f.create_video_autoencoder = [](const PluginConfig&) -> std::unique_ptr<VideoAutoencoder> {
    return std::make_unique<PixelVae>();
  };
}

}  // namespace
}  // namespace wanhost::plugins::pixel_vae

WANHOST_PLUGIN("pixel_vae", "0.1.0", wanhost::plugins::pixel_vae::factories)
