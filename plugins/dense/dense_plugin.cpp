// `dense`: micro batches of stages/N/micro_batch consecutive samples, stacked into
// [B, C, F, H, W] (wanhost/kit/collate.hpp). Samples of one micro batch must share a grid.
#include "wanhost/kit/collate.hpp"
#include "wanhost/plugin.hpp"

namespace wanhost::plugins::dense {
namespace {

class DenseCollator final : public Collator {
 public:
  std::vector<Batch> collate(std::vector<Sample> samples, const CollateOptions& options) override {
    return collate_in_groups(std::move(samples), options, collate_dense);
  }
};

void factories(PluginFactories& f) {
  f.create_collator = [](const PluginConfig&) -> std::unique_ptr<Collator> {
    return std::make_unique<DenseCollator>();
  };
}

}  // namespace
}  // namespace wanhost::plugins::dense

WANHOST_PLUGIN("dense", "1.0.0", wanhost::plugins::dense::factories)
