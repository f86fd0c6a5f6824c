// The kit's collators: dense stacking and packing of one micro batch, and the grouping of a
// step's samples into micro batches that the built-in `dense` and `packed` plugins use.
#include "wanhost/kit/collate.hpp"

#include <algorithm>
#include <numeric>
#include <stdexcept>

#include <ATen/ATen.h>

#include "wanhost/kit/strings.hpp"

namespace wanhost {
namespace {

std::string sample_name(const std::vector<Sample>& samples, std::size_t i) {
  return "sample " + std::to_string(i) + " (index " + std::to_string(samples[i].index) + ")";
}

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
  batch.text = at::empty({b, rows, first.size(1)}, first.options());
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
