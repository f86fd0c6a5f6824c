// Entry point of the wan21_dit model plugin (the model itself is in wan21_dit_impl).
#include "wan21_dit.hpp"
#include "wanhost/plugin.hpp"

namespace wanhost::plugins::wan21_dit {
namespace {

void factories(wanhost::PluginFactories& f) {
  f.create_model = [](const wanhost::PluginConfig& cfg,
                      const wanhost::ParallelContext& ctx) -> std::unique_ptr<wanhost::Model> {
    return create_model(cfg, ctx);
  };
}

}  // namespace
}  // namespace wanhost::plugins::wan21_dit

WANHOST_PLUGIN("wan21_dit", "0.1.0", wanhost::plugins::wan21_dit::factories)
