// seq_packer: First-Fit-Decreasing packs against packs worked out by hand, the two limits on random
// inputs (no pack over either, every sample exactly once, stream order inside a pack, the same
// packs for the same input), the collated micro batches, and the errors.
#include <algorithm>
#include <fstream>
#include <random>
#include <set>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "seq_packer.hpp"
#include "wanhost/errors.hpp"

namespace {

using wanhost::Batch;
using wanhost::CollateOptions;
using wanhost::ConfigError;
using wanhost::Json;
using wanhost::PackSegment;
using wanhost::PluginConfig;
using wanhost::Sample;
using wanhost::plugins::seq_packer::first_fit_decreasing;
using wanhost::plugins::seq_packer::PackLimits;
using wanhost::plugins::seq_packer::SeqPacker;
using Packs = std::vector<std::vector<std::size_t>>;

// The config the host would hand the plugin: the sidecar defaults, then `values`.
PluginConfig config(const Json& values) {
  std::ifstream in(WANHOST_SOURCE_DIR "/plugins/seq_packer/seq_packer.json");
  const Json manifest = Json::parse(in);
  PluginConfig cfg;
  cfg.plugin = "seq_packer";
  cfg.pointer = "/collator/seq_packer";
  for (const auto& [key, spec] : manifest.at("config").items())
    cfg.values[key] = spec.at("default");
  for (const auto& [key, v] : values.items()) cfg.values[key] = v;
  return cfg;
}

std::vector<std::int64_t> positions(std::size_t n) {
  std::vector<std::int64_t> v(n);
  for (std::size_t i = 0; i < n; ++i) v[i] = static_cast<std::int64_t>(i);
  return v;
}

TEST(SeqPacker, FirstFitDecreasingByHand) {
  // Sizes 5 9 3 7 2 6, budget 12. Largest first: 9 opens A; 7 opens B (16 > 12); 6 opens C
  // (15, 13); 5 joins B (12); 3 joins A (12); 2 joins C (A 14, B 14, C 8).
  // A = {9, 3} = positions {1, 2}, B = {7, 5} = {0, 3}, C = {6, 2} = {4, 5}.
  const std::vector<std::int64_t> sizes = {5, 9, 3, 7, 2, 6};
  EXPECT_EQ(first_fit_decreasing(sizes, positions(6), {0, 12}), (Packs{{1, 2}, {0, 3}, {4, 5}}));
  // Two a pack, no budget: 9 7 | 6 5 | 3 2.
  EXPECT_EQ(first_fit_decreasing(sizes, positions(6), {2, 0}), (Packs{{1, 3}, {0, 5}, {2, 4}}));
  // Both, budget 14 and at most 2: 9 opens A; 7 opens B (16 > 14); 6 joins B (13); 5 joins A
  // (14); 3 opens C (A and B are full); 2 joins C (5).
  EXPECT_EQ(first_fit_decreasing(sizes, positions(6), {2, 14}), (Packs{{0, 1}, {3, 5}, {2, 4}}));
  // Plain first fit in stream order would pack {5, 3, 2} {9} {7} {6}: four packs, not three.
  // Equal sizes go by stream order (the keys), not by position: keys 13 11 12 10, budget 8:
  // key 10 (position 3) and 11 (position 1) fill A, 12 (2) and 13 (0) fill B.
  EXPECT_EQ(first_fit_decreasing({4, 4, 4, 4}, {13, 11, 12, 10}, {0, 8}), (Packs{{1, 3}, {0, 2}}));
  // A sample as large as the budget fills a pack of its own.
  EXPECT_EQ(first_fit_decreasing({12, 1}, positions(2), {0, 12}), (Packs{{0}, {1}}));
}

TEST(SeqPacker, LimitsHoldOnRandomInputs) {
  std::mt19937_64 rng(42);
  for (int trial = 0; trial < 300; ++trial) {
    const std::size_t n = 1 + rng() % 40;
    const PackLimits limits{static_cast<std::int64_t>(rng() % 6),
                            trial % 3 == 0 ? 0 : static_cast<std::int64_t>(20 + rng() % 100)};
    if (limits.samples_per_pack == 0 && limits.max_tokens == 0) continue;
    std::vector<std::int64_t> sizes(n), keys = positions(n);
    for (auto& s : sizes)
      s = 1 + static_cast<std::int64_t>(rng() % (limits.max_tokens ? limits.max_tokens : 50));
    std::shuffle(keys.begin(), keys.end(), rng);
    const Packs packs = first_fit_decreasing(sizes, keys, limits);
    EXPECT_EQ(packs, first_fit_decreasing(sizes, keys, limits)) << "same input, same packs";
    std::vector<int> seen(n, 0);
    for (const auto& pack : packs) {
      ASSERT_FALSE(pack.empty());
      std::int64_t tokens = 0;
      for (std::size_t i : pack) {
        ASSERT_LT(i, n);
        ++seen[i];
        tokens += sizes[i];
      }
      EXPECT_TRUE(std::is_sorted(pack.begin(), pack.end()));
      if (limits.max_tokens) {
        EXPECT_LE(tokens, limits.max_tokens);
      }
      if (limits.samples_per_pack) {
        EXPECT_LE(static_cast<std::int64_t>(pack.size()), limits.samples_per_pack);
      }
    }
    for (std::size_t i = 0; i < n; ++i) EXPECT_EQ(seen[i], 1) << "sample " << i;
    // First fit: no two packs could have been one.
    for (std::size_t a = 0; a < packs.size(); ++a)
      for (std::size_t b = a + 1; b < packs.size(); ++b) {
        std::int64_t ta = 0, tb = 0;
        for (std::size_t i : packs[a]) ta += sizes[i];
        for (std::size_t i : packs[b]) tb += sizes[i];
        const bool count_ok =
            !limits.samples_per_pack ||
            static_cast<std::int64_t>(packs[a].size() + packs[b].size()) <= limits.samples_per_pack;
        const bool tokens_ok = !limits.max_tokens || ta + tb <= limits.max_tokens;
        EXPECT_FALSE(count_ok && tokens_ok) << "packs " << a << " and " << b << " fit together";
      }
  }
}

// A sample whose latent [2, F, H, W] and text identify it.
Sample sample(std::int64_t key, std::int64_t f, std::int64_t h, std::int64_t w) {
  Sample s;
  s.latent = at::full({2, f, h, w}, static_cast<double>(key));
  s.text = at::full({1 + key % 3, 4}, static_cast<double>(key));
  s.caption = "sample " + std::to_string(key);
  s.index = 100 + key;
  s.key = key;
  return s;
}

// Transformer tokens of a grid with patch (1, 2, 2).
CollateOptions options() {
  CollateOptions o;
  o.micro_batch = 1;  // not used by seq_packer
  o.tokens = [](const PackSegment& g) { return g.frames * (g.height / 2) * (g.width / 2); };
  return o;
}

TEST(SeqPacker, CollatesPacksInStreamOrder) {
  // Tokens: key 0: 1x4x4 -> 4; key 1: 3x4x4 -> 12; key 2: 1x2x2 -> 1; key 3: 2x4x4 -> 8.
  // Budget 13: 12 (key 1) opens A; 8 (key 3) opens B; 4 (key 0) joins B; 1 (key 2) joins A.
  SeqPacker packer(config({{"max_tokens", 13}}));
  std::vector<Sample> samples = {sample(0, 1, 4, 4), sample(1, 3, 4, 4), sample(2, 1, 2, 2),
                                 sample(3, 2, 4, 4)};
  const std::vector<Batch> packs = packer.collate(samples, options());
  ASSERT_EQ(packs.size(), 2u);
  EXPECT_EQ(packs[0].sample_keys, (std::vector<std::int64_t>{1, 2}));
  EXPECT_EQ(packs[1].sample_keys, (std::vector<std::int64_t>{0, 3}));
  EXPECT_EQ(packs[1].captions, (std::vector<std::string>{"sample 0", "sample 3"}));
  ASSERT_TRUE(packs[0].packed());
  EXPECT_EQ(packs[0].segments[1].offset, 3 * 4 * 4);
  EXPECT_EQ(packs[0].segments[1].frames * packs[0].segments[1].height, 2);
  EXPECT_EQ(packs[0].latents.sizes(), (std::vector<std::int64_t>{2, 48 + 4}));
  EXPECT_TRUE(at::equal(packs[1].latents.narrow(1, 16, 32), at::full({2, 32}, 3.0)));
  // samples_per_pack 1: one micro batch a sample, largest first.
  SeqPacker one(config({{"samples_per_pack", 1}}));
  std::vector<std::int64_t> order;
  for (const Batch& b : one.collate(samples, options())) order.push_back(b.sample_keys.at(0));
  EXPECT_EQ(order, (std::vector<std::int64_t>{1, 3, 0, 2}));
}

TEST(SeqPacker, SampleOverTheBudgetNamesBothNumbers) {
  SeqPacker packer(config({{"max_tokens", 10}}));
  try {
    packer.collate({sample(0, 1, 4, 4), sample(7, 3, 4, 4)}, options());
    FAIL() << "a sample of 12 tokens accepted under max_tokens 10";
  } catch (const ConfigError& e) {
    const std::string what = e.what();
    EXPECT_EQ(e.pointer(), "/collator/seq_packer/max_tokens");
    for (const char* part : {"key 7", "data index 107", "3x4x4", "12 transformer tokens",
                             "collator.seq_packer.max_tokens = 10"})
      EXPECT_NE(what.find(part), std::string::npos) << part << " not in: " << what;
  }
}

TEST(SeqPacker, ConfigErrors) {
  try {
    SeqPacker packer(config(Json::object()));
    FAIL() << "no limit accepted";
  } catch (const ConfigError& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("/collator/seq_packer/samples_per_pack"), std::string::npos) << what;
    EXPECT_NE(what.find("/collator/seq_packer/max_tokens"), std::string::npos) << what;
  }
  // A budget needs the model's token count.
  SeqPacker packer(config({{"max_tokens", 10}}));
  CollateOptions no_model;
  EXPECT_THROW(packer.collate({sample(0, 1, 2, 2)}, no_model), std::invalid_argument);
  // A count alone does not.
  SeqPacker count(config({{"samples_per_pack", 2}}));
  EXPECT_EQ(
      count.collate({sample(0, 1, 2, 2), sample(1, 1, 2, 2), sample(2, 1, 2, 2)}, no_model).size(),
      2u);
}

}  // namespace
