// Plugin entry point of the `seq_packer` collator; the packing itself is in seq_packer.cpp
// (linked from the seq_packer_impl library, which the tests use too).
#include "wanhost/plugin.hpp"

#include "seq_packer.hpp"

namespace wanhost::plugins::seq_packer {
namespace {

void factories(PluginFactories& f) {
  f.create_collator = [](const PluginConfig& cfg) -> std::unique_ptr<Collator> {
    return make_collator(cfg);
  };
}

}  // namespace
}  // namespace wanhost::plugins::seq_packer

WANHOST_PLUGIN("seq_packer", "1.0.0", wanhost::plugins::seq_packer::factories)
