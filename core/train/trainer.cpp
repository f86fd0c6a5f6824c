#include "trainer.hpp"

#include "../plugin/registry.hpp"
#include "wanhost/log.hpp"

namespace wanhost::core {

int train(const Json& resolved, const TrainOptions&, const LaunchEnv&, PluginRegistry& registry) {
  for (const auto& kind : plugin_kinds()) {
    const std::string name = resolved.at(kind.section).at("plugin");
    if (registry.find(name)) registry.load(name);
  }
  logger()->info("plugins loaded; trainer not implemented yet");
  return 0;
}

}  // namespace wanhost::core
