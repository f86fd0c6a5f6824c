// `packed`: micro batches of stages/N/micro_batch consecutive samples, each concatenated into one
// packed sequence with per-sample segments (wanhost/kit/collate.hpp), whatever their grids.
#include "wanhost/kit/collate.hpp"
#include "wanhost/plugin.hpp"

namespace wanhost::plugins::packed {
namespace {

class PackedCollator final : public Collator {
 public:
  std::vector<Batch> collate(std::vector<Sample> samples, const CollateOptions& options) override {
    return collate_in_groups(std::move(samples), options, collate_packed);
  }
};

void factories(PluginFactories& f) {
  f.create_collator = [](const PluginConfig&) -> std::unique_ptr<Collator> {
    return std::make_unique<PackedCollator>();
  };
}

}  // namespace
}  // namespace wanhost::plugins::packed

WANHOST_PLUGIN("packed", "1.0.0", wanhost::plugins::packed::factories)
