// The kit's collators: dense stacking and packing of one micro batch, and the grouping of a
// step's samples into micro batches that the built-in `dense` and `packed` plugins use.
#include "wanhost/kit/collate.hpp"

#include <algorithm>
#include <cstdlib>
#include <map>
#include <mutex>
#include <numeric>
#include <stdexcept>

#include <ATen/ATen.h>

#include "wanhost/kit/strings.hpp"

namespace wanhost {
namespace {

std::string sample_name(const std::vector<Sample>& samples, std::size_t i) {
  return "sample " + std::to_string(i) + " (index " + std::to_string(samples[i].index) + ")";
}

// Host memory for collated text, recycled. A stage-1 batch's text is 0.1-0.3 GB; glibc maps every
// allocation over 32 MB afresh and the kernel zeroes each new page on first touch, which cost
// more than writing the text itself (2-core dev machine, stage-1 shapes, 512 rows: 0.18 s of
// input making a step, 0.05 s with those blocks reused). Buffers freed by the last tensor using
// them wait here for the next batch of a size up to 1.5x smaller; a few are kept at most.
class RecycledHostBuffers {
 public:
  static constexpr std::size_t kMinBytes = std::size_t{16} << 20;  // below: LibTorch's allocator
  static constexpr std::size_t kKept = 4;                          // free buffers kept at most

  // Never destroyed: a tensor may give its buffer back during exit.
  static RecycledHostBuffers& get() {
    static RecycledHostBuffers* pool = new RecycledHostBuffers;
    return *pool;
  }

  // at::empty(sizes, options) for a CPU tensor of kMinBytes or more, from a recycled buffer.
  at::Tensor empty(at::IntArrayRef sizes, const at::TensorOptions& options) {
    std::int64_t numel = 1;
    for (const auto n : sizes) numel *= n;
    const std::size_t bytes = static_cast<std::size_t>(numel) *
                              c10::elementSize(c10::typeMetaToScalarType(options.dtype()));
    if (!options.device().is_cpu() || options.pinned_memory() || bytes < kMinBytes)
      return at::empty(sizes, options);
    auto [data, capacity] = take(bytes);
    if (!data) {
      capacity = (bytes + 63) / 64 * 64;
      data = std::aligned_alloc(64, capacity);
      if (!data) return at::empty(sizes, options);
    }
    return at::from_blob(
        data, sizes, [this, capacity = capacity](void* p) { give(p, capacity); }, options);
  }

 private:
  std::pair<void*, std::size_t> take(std::size_t bytes) {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = free_.lower_bound(bytes);  // the smallest that fits, if not much larger
    if (it == free_.end() || it->first > bytes + bytes / 2) return {nullptr, 0};
    const std::pair<void*, std::size_t> out{it->second, it->first};
    free_.erase(it);
    return out;
  }
  void give(void* data, std::size_t capacity) {
    std::lock_guard<std::mutex> lock(mutex_);
    free_.emplace(capacity, data);
    if (free_.size() > kKept) {  // the largest goes back to the system
      auto last = std::prev(free_.end());
      std::free(last->second);
      free_.erase(last);
    }
  }

  std::mutex mutex_;
  std::multimap<std::size_t, void*> free_;  // capacity -> buffer
};

// Zero-pads each sample's text [L, D] to `rows` rows; text_lengths keeps the real L.
void collate_text(const std::vector<Sample>& samples, const CollateOptions& options, Batch& batch) {
  const std::int64_t b = static_cast<std::int64_t>(samples.size());
  const at::Tensor& first = samples[0].text;
  std::int64_t rows = options.text_rows;
  std::vector<std::int64_t> lengths(b);
  for (std::int64_t i = 0; i < b; ++i) {
    const at::Tensor& t = samples[i].text;
    if (!t.defined() || t.dim() != 2 || t.size(1) != first.size(1))
      throw std::invalid_argument("collate: " + sample_name(samples, i) + " has text shape " +
                                  (t.defined() ? shape_str(t.sizes()) : "<none>") +
                                  ", expected [L, " + std::to_string(first.size(1)) + "]");
    lengths[i] = t.size(0);
  }
  if (rows <= 0) rows = *std::max_element(lengths.begin(), lengths.end());
  for (std::int64_t i = 0; i < b; ++i)
    if (lengths[i] > rows)
      throw std::invalid_argument("collate: " + sample_name(samples, i) + " has " +
                                  std::to_string(lengths[i]) + " text rows, more than text_rows " +
                                  std::to_string(rows));
  // Every byte written once (the text, then the zero padding): a stage-1 batch's text is ~0.1-0.3
  // GB, and zeroing it all before copying the captions over doubled the memory traffic.
  batch.text = RecycledHostBuffers::get().empty({b, rows, first.size(1)}, first.options());
  for (std::int64_t i = 0; i < b; ++i) {
    at::Tensor sample = batch.text[i];
    sample.narrow(0, 0, lengths[i]).copy_(samples[i].text);
    sample.narrow(0, lengths[i], rows - lengths[i]).zero_();
  }
  batch.text_lengths = at::tensor(lengths, at::kLong).to(first.device());
}

void collate_identity(std::vector<Sample>& samples, Batch& batch) {
  for (Sample& s : samples) {
    batch.sample_keys.push_back(s.key >= 0 ? s.key : s.index);
    batch.captions.push_back(std::move(s.caption));
  }
}

void check_samples(const std::vector<Sample>& samples, const char* who) {
  if (samples.empty()) throw std::invalid_argument(std::string(who) + ": no samples");
  for (std::size_t i = 0; i < samples.size(); ++i) {
    const at::Tensor& l = samples[i].latent;
    if (!l.defined() || l.dim() != 4)
      throw std::invalid_argument(
          std::string(who) + ": " + sample_name(samples, i) + " has latent shape " +
          (l.defined() ? shape_str(l.sizes()) : "<none>") + ", expected [C, F, H, W]");
  }
}

// Stable: samples of one grid keep their order, grids keep the order of their first sample.
void group_equal_grids(std::vector<Sample>& samples) {
  std::vector<std::vector<std::int64_t>> grids;
  std::vector<std::size_t> rank(samples.size());
  for (std::size_t i = 0; i < samples.size(); ++i) {
    const auto sizes = samples[i].latent.sizes().vec();
    auto it = std::find(grids.begin(), grids.end(), sizes);
    rank[i] = static_cast<std::size_t>(it - grids.begin());
    if (it == grids.end()) grids.push_back(sizes);
  }
  if (grids.size() < 2) return;
  std::vector<std::size_t> order(samples.size());
  std::iota(order.begin(), order.end(), std::size_t{0});
  std::stable_sort(order.begin(), order.end(),
                   [&](std::size_t a, std::size_t b) { return rank[a] < rank[b]; });
  std::vector<Sample> sorted;
  sorted.reserve(samples.size());
  for (std::size_t i : order) sorted.push_back(std::move(samples[i]));
  samples = std::move(sorted);
}

}  // namespace

Batch collate_dense(std::vector<Sample> samples, const CollateOptions& options) {
  check_samples(samples, "collate_dense");
  const at::IntArrayRef expected = samples[0].latent.sizes();
  std::vector<at::Tensor> latents;
  for (std::size_t i = 0; i < samples.size(); ++i) {
    if (samples[i].latent.sizes() != expected)
      throw std::invalid_argument("collate_dense: " + sample_name(samples, i) +
                                  " has latent shape " + shape_str(samples[i].latent.sizes()) +
                                  ", but sample 0 has " + shape_str(expected) +
                                  " (use a packing collator for mixed shapes)");
    latents.push_back(samples[i].latent);
  }
  Batch batch;
  batch.latents = at::stack(latents);
  collate_text(samples, options, batch);
  collate_identity(samples, batch);
  return batch;
}

Batch collate_packed(std::vector<Sample> samples, const CollateOptions& options) {
  check_samples(samples, "collate_packed");
  group_equal_grids(samples);
  const std::int64_t channels = samples[0].latent.size(0);
  Batch batch;
  std::vector<at::Tensor> columns;
  std::int64_t offset = 0;
  for (std::size_t i = 0; i < samples.size(); ++i) {
    const at::Tensor& l = samples[i].latent;
    if (l.size(0) != channels)
      throw std::invalid_argument("collate_packed: " + sample_name(samples, i) + " has " +
                                  std::to_string(l.size(0)) + " latent channels, sample 0 has " +
                                  std::to_string(channels));
    PackSegment seg{offset, l.size(1), l.size(2), l.size(3)};
    columns.push_back(l.reshape({channels, seg.numel()}));
    batch.segments.push_back(seg);
    offset += seg.numel();
  }
  batch.latents = at::cat(columns, 1);
  collate_text(samples, options, batch);
  collate_identity(samples, batch);
  return batch;
}

std::vector<Batch> collate_in_groups(std::vector<Sample> samples, const CollateOptions& options,
                                     const CollateOne& one) {
  if (options.micro_batch <= 0)
    throw std::invalid_argument("collate: micro_batch must be positive, got " +
                                std::to_string(options.micro_batch));
  std::vector<Batch> out;
  const std::size_t mb = static_cast<std::size_t>(options.micro_batch);
  for (std::size_t start = 0; start < samples.size(); start += mb) {
    const std::size_t end = std::min(samples.size(), start + mb);
    std::vector<Sample> group(std::make_move_iterator(samples.begin() + start),
                              std::make_move_iterator(samples.begin() + end));
    out.push_back(one(std::move(group), options));
  }
  return out;
}

}  // namespace wanhost
