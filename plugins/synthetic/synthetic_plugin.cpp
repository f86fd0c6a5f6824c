// Plugin entry point of the synthetic data source; the source itself is in synthetic_source.cpp
// (linked from the synthetic_impl library, which the tests use too).
#include "wanhost/plugin.hpp"

#include "synthetic.hpp"

namespace wanhost::plugins::synthetic {
namespace {

void factories(wanhost::PluginFactories& f) {
  f.create_data_source =
      [](const wanhost::PluginConfig& cfg) -> std::unique_ptr<wanhost::DataSource> {
    return make_source(cfg);
  };
}

}  // namespace
}  // namespace wanhost::plugins::synthetic

WANHOST_PLUGIN("synthetic", "0.1.0", wanhost::plugins::synthetic::factories)
