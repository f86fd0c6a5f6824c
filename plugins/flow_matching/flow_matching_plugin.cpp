// Plugin entry point of the flow-matching scheduler; the scheduler itself is in
// flow_matching_scheduler.cpp (linked from the flow_matching_impl library, which the tests use
// too).
#include "wanhost/plugin.hpp"

#include "flow_matching.hpp"

namespace wanhost::plugins::flow_matching {
namespace {

void factories(wanhost::PluginFactories& f) {
  f.create_scheduler = [](const wanhost::PluginConfig& cfg) -> std::unique_ptr<wanhost::Scheduler> {
    return make_scheduler(cfg);
  };
}

}  // namespace
}  // namespace wanhost::plugins::flow_matching

WANHOST_PLUGIN("flow_matching", "0.1.0", wanhost::plugins::flow_matching::factories)
