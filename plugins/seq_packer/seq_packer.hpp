// seq_packer internals: the token-budget packing of a step's samples (First-Fit-Decreasing), shared
// by the plugin entry point and the tests (library seq_packer_impl).
//
// NeMo DFM's Megatron path packs the same way (dfm/src/megatron/data/common/
// sequence_packing_utils.py, first_fit_decreasing: first fit over the samples' padded lengths
// sorted longest first); docs/training.md ("Packing") describes the plugin from a user's side.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "wanhost/config.hpp"
#include "wanhost/data.hpp"

namespace wanhost::plugins::seq_packer {

struct PackLimits {
  std::int64_t samples_per_pack = 0;  // 0: no count limit
  std::int64_t max_tokens = 0;        // transformer tokens per pack; 0: no budget
};

// First-Fit-Decreasing: the samples (their sizes in `tokens`, their stream order in `order`, both
// one entry a sample) sorted by size, largest first, ties by `order` then position; each goes into
// the first pack (in the order packs were opened) where it keeps within both limits, else into a
// new pack. Returns the packs as positions into `tokens`, each pack's positions ascending (stream
// order). Every position is in exactly one pack. A sample larger than max_tokens is the caller's
// to reject first (std::invalid_argument here).
std::vector<std::vector<std::size_t>> first_fit_decreasing(const std::vector<std::int64_t>& tokens,
                                                           const std::vector<std::int64_t>& order,
                                                           const PackLimits& limits);

class SeqPacker final : public Collator {
 public:
  // Throws ConfigError (naming both keys) when neither limit is set.
  explicit SeqPacker(PluginConfig config);
  // One packed micro batch a pack (CollateOptions::micro_batch is not used). A sample over
  // max_tokens is a ConfigError at collator.seq_packer.max_tokens naming the sample and both
  // numbers.
  std::vector<Batch> collate(std::vector<Sample> samples, const CollateOptions& options) override;
  const PackLimits& limits() const { return limits_; }

 private:
  PluginConfig config_;
  PackLimits limits_;
};

std::unique_ptr<Collator> make_collator(const PluginConfig& config);

}  // namespace wanhost::plugins::seq_packer
