// Data plugins: sources (random access to samples) and collators (a step's samples -> micro
// batches).
//
// The host owns the sample order (seeded shuffle per epoch, split over data-parallel ranks,
// resumable by a single counter), so a source only has to answer "sample i" deterministically.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "wanhost/batch.hpp"

namespace wanhost {

// Threads: during training the host calls get() (and collators their collate()) from one worker
// thread that makes the next step's batches while the current step trains (run.prefetch), one
// call at a time; nothing else of the source is used meanwhile.
class DataSource {
 public:
  virtual ~DataSource() = default;
  // Number of samples; the host iterates over epochs of this many.
  virtual std::int64_t size() const = 0;
  // Sample `index` (0 <= index < size()); must return the same sample for the same index.
  virtual Sample get(std::int64_t index) = 0;
  // Latent token grid of sample `index` without loading it (for packing and FLOP counts); the
  // default loads the sample.
  virtual PackSegment grid(std::int64_t index) {
    Sample s = get(index);
    return PackSegment{0, s.latent.size(1), s.latent.size(2), s.latent.size(3)};
  }
  // One line for logs: what this source serves.
  virtual std::string describe() const = 0;
};

struct CollateOptions {
  // Pad text embeddings to this many rows (0: to the longest in the batch). The reference paths
  // differ here (AutoModel 226, Megatron 512); whether padded rows are attended is the model's
  // choice (wan21_dit: mask_text_padding).
  std::int64_t text_rows = 0;
  // Samples per micro batch, as the stage asks (run manifest: stages/N/micro_batch). Collators
  // that form micro batches by another rule (token budgets) may ignore it.
  std::int64_t micro_batch = 1;
  // SDK 2.1: the model's transformer token count of a latent grid (Model::tokens), for collators
  // that pack by a token budget. The host always sets it during a run; it is empty only where no
  // model exists (collators that need it then fail with a message).
  std::function<std::int64_t(const PackSegment&)> tokens;
};

// Turns this rank's samples of one optimizer step into its micro batches. Called on the data
// worker thread (see DataSource), one call at a time.
class Collator {
 public:
  virtual ~Collator() = default;
  // `samples` are in stream order, each with its key set (Sample::key). Every sample must end
  // up in exactly one micro batch, with its key in Batch::sample_keys; the result must not
  // depend on anything but the samples and the options (a resumed run collates as the straight
  // run did).
  virtual std::vector<Batch> collate(std::vector<Sample> samples,
                                     const CollateOptions& options) = 0;
};

}  // namespace wanhost
