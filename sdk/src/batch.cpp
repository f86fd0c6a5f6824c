// Batch helpers: per-sample values spread over the latent layout and reduced back.
#include "wanhost/batch.hpp"

#include <sstream>
#include <stdexcept>

#include <ATen/ATen.h>

namespace wanhost {
namespace {

std::string shape_string(at::IntArrayRef sizes) {
  std::ostringstream s;
  s << "[";
  for (std::size_t i = 0; i < sizes.size(); ++i) s << (i ? ", " : "") << sizes[i];
  s << "]";
  return s.str();
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

}  // namespace wanhost
