// `seq_packer`: a rank's samples of one step packed First-Fit-Decreasing into packed micro batches
// under a sample count and a token budget (seq_packer.hpp).
#include "seq_packer.hpp"

#include <algorithm>
#include <numeric>
#include <stdexcept>
#include <string>

#include <ATen/core/Tensor.h>

#include "wanhost/kit/collate.hpp"
#include "wanhost/kit/strings.hpp"

namespace wanhost::plugins::seq_packer {

std::vector<std::vector<std::size_t>> first_fit_decreasing(const std::vector<std::int64_t>& tokens,
                                                           const std::vector<std::int64_t>& order,
                                                           const PackLimits& limits) {
  if (order.size() != tokens.size())
    throw std::invalid_argument("seq_packer: one stream position a sample is needed");
  std::vector<std::size_t> by_size(tokens.size());
  std::iota(by_size.begin(), by_size.end(), std::size_t{0});
  std::sort(by_size.begin(), by_size.end(), [&](std::size_t a, std::size_t b) {
    if (tokens[a] != tokens[b]) return tokens[a] > tokens[b];
    if (order[a] != order[b]) return order[a] < order[b];
    return a < b;
  });
  struct Pack {
    std::int64_t tokens = 0;
    std::vector<std::size_t> members;
  };
  std::vector<Pack> packs;
  for (std::size_t i : by_size) {
    if (limits.max_tokens > 0 && tokens[i] > limits.max_tokens)
      throw std::invalid_argument("seq_packer: sample " + std::to_string(i) + " has " +
                                  std::to_string(tokens[i]) + " tokens, more than max_tokens " +
                                  std::to_string(limits.max_tokens));
    auto fits = [&](const Pack& p) {
      return (limits.max_tokens <= 0 || p.tokens + tokens[i] <= limits.max_tokens) &&
             (limits.samples_per_pack <= 0 ||
              static_cast<std::int64_t>(p.members.size()) < limits.samples_per_pack);
    };
    auto it = std::find_if(packs.begin(), packs.end(), fits);
    if (it == packs.end()) it = packs.insert(packs.end(), Pack{});
    it->tokens += tokens[i];
    it->members.push_back(i);
  }
  std::vector<std::vector<std::size_t>> out;
  out.reserve(packs.size());
  for (Pack& p : packs) {
    std::sort(p.members.begin(), p.members.end());  // stream order inside a pack
    out.push_back(std::move(p.members));
  }
  return out;
}

SeqPacker::SeqPacker(PluginConfig config) : config_(std::move(config)) {
  limits_.samples_per_pack = config_.get<std::int64_t>("samples_per_pack");
  limits_.max_tokens = config_.get<std::int64_t>("max_tokens");
  if (limits_.samples_per_pack < 0) config_.fail("samples_per_pack", "must be >= 0");
  if (limits_.max_tokens < 0) config_.fail("max_tokens", "must be >= 0");
  if (limits_.samples_per_pack == 0 && limits_.max_tokens == 0)
    config_.fail("", "set samples_per_pack or max_tokens (or both): with " +
                         config_.where("samples_per_pack") + " = 0 and " +
                         config_.where("max_tokens") + " = 0 a pack would have no limit");
}

std::vector<Batch> SeqPacker::collate(std::vector<Sample> samples, const CollateOptions& options) {
  if (samples.empty()) throw std::invalid_argument("seq_packer: no samples");
  if (limits_.max_tokens > 0 && !options.tokens)
    throw std::invalid_argument(
        "seq_packer: max_tokens needs the model's token count (CollateOptions::tokens), which "
        "the caller did not set");
  std::vector<std::int64_t> tokens, order;
  for (std::size_t i = 0; i < samples.size(); ++i) {
    const Sample& s = samples[i];
    const std::int64_t key = s.key >= 0 ? s.key : s.index;
    auto name = [&] {
      return "sample " + std::to_string(i) + " of the step (key " + std::to_string(key) +
             ", data index " + std::to_string(s.index) + ")";
    };
    if (!s.latent.defined() || s.latent.dim() != 4)
      throw std::invalid_argument(
          "seq_packer: " + name() + " has latent shape " +
          (s.latent.defined() ? shape_str(s.latent.sizes()) : std::string("<none>")) +
          ", expected [C, F, H, W]");
    const PackSegment grid{0, s.latent.size(1), s.latent.size(2), s.latent.size(3)};
    // Without a token count (a caller with no model) the latent grid's size orders the samples.
    const std::int64_t t = options.tokens ? options.tokens(grid) : grid.numel();
    if (limits_.max_tokens > 0 && t > limits_.max_tokens)
      config_.fail("max_tokens", name() + ", latent grid " + std::to_string(grid.frames) + "x" +
                                     std::to_string(grid.height) + "x" +
                                     std::to_string(grid.width) + ", has " + std::to_string(t) +
                                     " transformer tokens, more than collator.seq_packer."
                                     "max_tokens = " +
                                     std::to_string(limits_.max_tokens) +
                                     ": no pack can hold it; raise max_tokens");
    tokens.push_back(t);
    order.push_back(key);
  }
  std::vector<Batch> out;
  for (const auto& pack : first_fit_decreasing(tokens, order, limits_)) {
    std::vector<Sample> members;
    members.reserve(pack.size());
    for (std::size_t i : pack) members.push_back(std::move(samples[i]));
    out.push_back(collate_packed(std::move(members), options));
  }
  return out;
}

std::unique_ptr<Collator> make_collator(const PluginConfig& config) {
  return std::make_unique<SeqPacker>(config);
}

}  // namespace wanhost::plugins::seq_packer
