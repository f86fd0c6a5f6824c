// One timestep per pack (flow_matching timestep_granularity per_pack, the reference Megatron
// behaviour) against one per sample (the default): the same data, packs and model trained both
// ways; prints the step-to-step spread of the loss of each, and checks the reference's claim that
// one timestep per pack makes the loss noisier: measured 1.97x the step-to-step standard
// deviation here (docs/training.md); the test asks for 1.3x, so it fails when per_pack draws per
// sample (or the reverse), not when a rounding difference moves the figure.
#include <cmath>
#include <cstdio>
#include <vector>

#include <gtest/gtest.h>

#include "train_test_util.hpp"

namespace traintest {
namespace {

struct Spread {
  double mean = 0, std = 0, diff_std = 0;  // diff_std: std of successive differences / sqrt(2)
};

Spread spread(const std::vector<double>& l) {
  Spread s;
  const double n = static_cast<double>(l.size());
  for (double v : l) s.mean += v / n;
  for (double v : l) s.std += (v - s.mean) * (v - s.mean) / (n - 1);
  s.std = std::sqrt(s.std);
  double dm = 0;
  std::vector<double> d;
  for (std::size_t i = 1; i < l.size(); ++i) d.push_back(l[i] - l[i - 1]);
  for (double v : d) dm += v / static_cast<double>(d.size());
  for (double v : d) s.diff_std += (v - dm) * (v - dm) / static_cast<double>(d.size() - 1);
  s.diff_std = std::sqrt(s.diff_std / 2);
  return s;
}

// Stage 1 of the default recipe (200 steps, global batch 16 of 16-token frames) through
// seq_packer in packs of 8 (2 packs a step: per_pack draws 2 timesteps a step, per_sample 16);
// stage 2 cut to one step. The spread is taken over the last 100 steps (after the warm-up and the
// fast early fall).
TEST(TimestepGranularity, PerPackVersusPerSampleLossSpread) {
  Spread result[2];
  const char* modes[2] = {"per_sample", "per_pack"};
  for (int k = 0; k < 2; ++k) {
    const fs::path run = scratch_dir() / modes[k];
    const Result r =
        run_cli({"run", "--out", run.string(), "--set", "logging.progress=\"off\"", "--set",
                 "stages.1.steps=1", "--set", "collator.plugin=\"seq_packer\"", "--set",
                 "collator.seq_packer.samples_per_pack=8", "--set",
                 std::string("scheduler.flow_matching.timestep_granularity=\"") + modes[k] + "\""},
                {}, 900);
    ASSERT_EQ(r.code, 0) << r.describe();
    std::vector<double> losses;
    for (const Json& m : read_metrics(run))
      if (m["stage_index"] == 0 && m["stage_step"].get<long>() > 100) {
        ASSERT_TRUE(m["loss"].is_number()) << m;
        EXPECT_EQ(m["packs"], 2) << m;
        losses.push_back(m["loss"]);
      }
    ASSERT_EQ(losses.size(), 100u);
    result[k] = spread(losses);
    std::printf(
        "timestep_granularity %-10s: steps 101-200 of t2i, loss mean %.4f, std %.4f, "
        "step-to-step std %.4f\n",
        modes[k], result[k].mean, result[k].std, result[k].diff_std);
    EXPECT_TRUE(std::isfinite(result[k].std) && std::isfinite(result[k].diff_std));
  }
  std::printf("per_pack / per_sample: std %.2fx, step-to-step std %.2fx\n",
              result[1].std / result[0].std, result[1].diff_std / result[0].diff_std);
  EXPECT_GT(result[1].diff_std, 1.3 * result[0].diff_std)
      << "one timestep per pack should make the step-to-step loss noisier than one per sample";
  ::testing::Test::RecordProperty("std_per_sample", std::to_string(result[0].std));
  ::testing::Test::RecordProperty("std_per_pack", std::to_string(result[1].std));
}

}  // namespace
}  // namespace traintest
