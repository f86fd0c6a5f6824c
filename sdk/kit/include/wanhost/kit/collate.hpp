// Collation helpers for collator plugins: one micro batch from samples (dense stacking or
// packing), and a step's samples grouped into micro batches.
#pragma once

#include <functional>
#include <vector>

#include "wanhost/data.hpp"

namespace wanhost {

// Stacks same-shape samples into [B, C, F, H, W]. Throws std::invalid_argument naming the sample
// whose shape differs.
Batch collate_dense(std::vector<Sample> samples, const CollateOptions& options);

// Packs samples of any grids into one packed batch (see Batch). Samples of the same latent grid
// are put next to each other (the grids in the order they first appear, the samples of a grid in
// the given order), so that the attention serves each grid's run as one dense batch
// (docs/performance.md); a sample's loss does not depend on its place in the pack.
Batch collate_packed(std::vector<Sample> samples, const CollateOptions& options);

using CollateOne = std::function<Batch(std::vector<Sample>, const CollateOptions&)>;

// Consecutive groups of options.micro_batch samples (the last one may be smaller), each made
// into one micro batch by `one`.
std::vector<Batch> collate_in_groups(std::vector<Sample> samples, const CollateOptions& options,
                                     const CollateOne& one);

}  // namespace wanhost
