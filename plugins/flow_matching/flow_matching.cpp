// Plugin entry point of the flow-matching scheduler; the scheduler itself is in
// flow_matching_scheduler.cpp (linked from the flow_matching_impl library, which the tests use
// too).
#include "wanhost/plugin.hpp"

#include "flow_matching.hpp"

static void factories(wanhost::PluginFactories& f) {
  f.create_scheduler = [](const wanhost::PluginConfig& cfg) -> std::unique_ptr<wanhost::Scheduler> {
    return wanhost::flow_matching::make_scheduler(cfg);
  };
}

WANHOST_PLUGIN("flow_matching", "0.1.0", factories)
