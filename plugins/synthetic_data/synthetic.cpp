// Plugin entry point of the synthetic data source; the source itself is in synthetic_source.cpp
// (linked from the synthetic_impl library, which the tests use too).
#include "wanhost/plugin.hpp"

#include "synthetic_data.hpp"

static void factories(wanhost::PluginFactories& f) {
  f.create_data_source =
      [](const wanhost::PluginConfig& cfg) -> std::unique_ptr<wanhost::DataSource> {
    return wanhost::synthetic::make_source(cfg);
  };
}

WANHOST_PLUGIN("synthetic", "0.1.0", factories)
