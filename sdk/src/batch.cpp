// Batch helpers and the two built-in collators (dense stacking and packing).
#include "wanhost/batch.hpp"

#include <algorithm>
#include <sstream>
#include <stdexcept>

#include <ATen/ATen.h>

#include "wanhost/data.hpp"

namespace wanhost {
namespace {

std::string shape_string(at::IntArrayRef sizes) {
  std::ostringstream s;
  s << "[";
  for (std::size_t i = 0; i < sizes.size(); ++i) s << (i ? ", " : "") << sizes[i];
  s << "]";
  return s.str();
}

std::string sample_name(const std::vector<Sample>& samples, std::size_t i) {
  return "sample " + std::to_string(i) + " (index " + std::to_string(samples[i].index) + ")";
}

// For a packed batch: the sample each latent column belongs to, as int64 [N] on `device`;
// columns outside every segment (padding a packer may add) map to B, one past the last sample.
at::Tensor column_owner(const Batch& batch, std::int64_t columns, const at::Device& device) {
  const std::int64_t b = batch.batch_size();
  at::Tensor owner = at::full({columns}, b, at::kLong);
  for (std::int64_t i = 0; i < b; ++i) {
    const PackSegment& s = batch.segments[i];
    if (s.offset < 0 || s.offset + s.numel() > columns)
      throw std::invalid_argument(
          "Batch: segment " + std::to_string(i) + " [" + std::to_string(s.offset) + ", " +
          std::to_string(s.offset + s.numel()) + ") lies outside the packed latents of " +
          std::to_string(columns) + " columns");
    owner.narrow(0, s.offset, s.numel()).fill_(i);
  }
  return owner.to(device);
}

void check_per_sample(const Batch& batch, const at::Tensor& per_sample, const char* what) {
  if (per_sample.dim() != 1 || per_sample.size(0) != batch.batch_size())
    throw std::invalid_argument(std::string("Batch::") + what + ": expected a [" +
                                std::to_string(batch.batch_size()) + "] tensor, got " +
                                shape_string(per_sample.sizes()));
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
                                  (t.defined() ? shape_string(t.sizes()) : "<none>") +
                                  ", expected [L, " + std::to_string(first.size(1)) + "]");
    lengths[i] = t.size(0);
  }
  if (rows <= 0) rows = *std::max_element(lengths.begin(), lengths.end());
  batch.text = at::zeros({b, rows, first.size(1)}, first.options());
  for (std::int64_t i = 0; i < b; ++i) {
    if (lengths[i] > rows)
      throw std::invalid_argument("collate: " + sample_name(samples, i) + " has " +
                                  std::to_string(lengths[i]) + " text rows, more than text_rows " +
                                  std::to_string(rows));
    batch.text[i].narrow(0, 0, lengths[i]).copy_(samples[i].text);
  }
  batch.text_lengths = at::tensor(lengths, at::kLong).to(first.device());
}

void collate_identity(std::vector<Sample>& samples, Batch& batch) {
  for (Sample& s : samples) {
    batch.sample_keys.push_back(s.index);
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
          (l.defined() ? shape_string(l.sizes()) : "<none>") + ", expected [C, F, H, W]");
  }
}

}  // namespace

at::Tensor Batch::per_sample_to_latent(const at::Tensor& per_sample) const {
  check_per_sample(*this, per_sample, "per_sample_to_latent");
  if (!packed()) return per_sample.view({batch_size(), 1, 1, 1, 1});
  // Padding columns get 0: index B selects the appended zero.
  at::Tensor owner = column_owner(*this, latents.size(1), per_sample.device());
  at::Tensor padded = at::cat({per_sample, at::zeros({1}, per_sample.options())});
  return padded.index_select(0, owner).unsqueeze(0);
}

at::Tensor Batch::per_sample_mean(const at::Tensor& elementwise) const {
  const std::int64_t b = batch_size();
  at::Tensor x = elementwise.to(at::kFloat);
  if (!packed()) return x.reshape({b, -1}).mean(1);
  // Sum each column over channels, then add columns up per owner; bin B collects padding.
  at::Tensor owner = column_owner(*this, x.size(1), x.device());
  at::Tensor sums = at::zeros({b + 1}, x.options()).index_add(0, owner, x.sum(0));
  std::vector<float> counts(b);
  for (std::int64_t i = 0; i < b; ++i)
    counts[i] = static_cast<float>(segments[i].numel() * x.size(0));
  return sums.narrow(0, 0, b) / at::tensor(counts, x.options());
}

PackSegment Batch::grid(std::int64_t i) const {
  if (i < 0 || i >= batch_size())
    throw std::out_of_range("Batch::grid: sample " + std::to_string(i) + " of " +
                            std::to_string(batch_size()));
  if (packed()) return segments[i];
  return PackSegment{0, latents.size(2), latents.size(3), latents.size(4)};
}

Batch Batch::to(const at::Device& device) const {
  Batch out = *this;
  for (at::Tensor* t : {&out.latents, &out.text, &out.text_lengths})
    if (t->defined()) *t = t->to(device);
  return out;
}

Batch collate_dense(std::vector<Sample> samples, const CollateOptions& options) {
  check_samples(samples, "collate_dense");
  const at::IntArrayRef expected = samples[0].latent.sizes();
  std::vector<at::Tensor> latents;
  for (std::size_t i = 0; i < samples.size(); ++i) {
    if (samples[i].latent.sizes() != expected)
      throw std::invalid_argument("collate_dense: " + sample_name(samples, i) +
                                  " has latent shape " + shape_string(samples[i].latent.sizes()) +
                                  ", but sample 0 has " + shape_string(expected) +
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

}  // namespace wanhost
