// Entry point of the wan_vae video autoencoder plugin (the VAE itself is in wan_vae_impl).
#include "wan_vae.hpp"
#include "wanhost/plugin.hpp"

namespace wanhost::plugins::wan_vae {
namespace {

void factories(wanhost::PluginFactories& f) {
  f.create_video_autoencoder =
      [](const wanhost::PluginConfig& cfg) -> std::unique_ptr<wanhost::VideoAutoencoder> {
    return create_autoencoder(cfg);
  };
}

}  // namespace
}  // namespace wanhost::plugins::wan_vae

WANHOST_PLUGIN("wan_vae", "0.1.0", wanhost::plugins::wan_vae::factories)
