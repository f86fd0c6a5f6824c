// The reference presets (configs/presets/*.json) layered over the default recipe: each value
// reaches config.resolved.json and changes what the run does (docs/training.md, "The two
// reference paths").
#include <gtest/gtest.h>

#include <fstream>

#include "train_test_util.hpp"

using namespace traintest;

namespace {

Json resolved(const fs::path& run) {
  std::ifstream f(run / "config.resolved.json");
  return Json::parse(f);
}

std::vector<Json> metrics(const fs::path& run) {
  std::vector<Json> out;
  std::ifstream f(run / "metrics.jsonl");
  for (std::string line; std::getline(f, line);)
    if (!line.empty()) out.push_back(Json::parse(line));
  return out;
}

const std::string kDefault = std::string(WANHOST_SOURCE_DIR) + "/configs/default.json";

// `run RECIPE PRESET --out OUT <tiny settings> <extra>` (the files first: --set takes every
// KEY=VALUE word that follows it).
std::vector<std::string> preset_run(const std::string& preset, const fs::path& out,
                                    const std::vector<std::string>& extra = {}) {
  std::vector<std::string> args = run_args(out, extra);
  args.insert(args.begin() + 1, {kDefault, preset});
  return args;
}
const std::string kMegatron =
    std::string(WANHOST_SOURCE_DIR) + "/configs/presets/megatron_reference.json";

}  // namespace

TEST(Presets, MegatronReferenceTakesEffect) {
  const fs::path dir = scratch_dir();
  Result r = run_cli(preset_run(kMegatron, dir / "mc"));
  ASSERT_EQ(r.code, 0) << r.describe();
  const Json c = resolved(dir / "mc");
  EXPECT_EQ(c.at("parallelism").at("plugin"), "megatron_tpppcp");
  EXPECT_EQ(c.at("parallelism").at("megatron_tpppcp").at("decay_1d"), false);
  EXPECT_EQ(c.at("collator").at("plugin"), "seq_packer");
  EXPECT_EQ(c.at("collator").at("seq_packer").at("samples_per_pack"), 32);
  EXPECT_EQ(c.at("run").at("randomness"), "shared_across_data_parallel");
  EXPECT_EQ(c.at("run").at("master_weights"), "fp32");
  EXPECT_EQ(c.at("model").at("wan21_dit").at("init_method"), "megatron");
  EXPECT_EQ(c.at("scheduler").at("flow_matching").at("timestep_granularity"), "per_pack");
  EXPECT_EQ(c.at("scheduler").at("flow_matching").at("loss_reduction"), "per_token");
  EXPECT_EQ(c.at("stages").at(0).at("text_rows"), 512);
  EXPECT_EQ(c.at("stages").at(0).at("optimizer").at("beta2"), 0.95);
  // Effects: a step's 4 samples in one pack (not 2 micro batches of 2), and Megatron's init
  // (the first loss differs from the same run with the PyTorch default init).
  const auto m = metrics(dir / "mc");
  ASSERT_EQ(m.size(), static_cast<std::size_t>(kTotalSteps));
  EXPECT_EQ(m.front().at("packs").get<double>(), 1.0);
  EXPECT_EQ(m.front().at("samples").get<double>(), 4.0);
  r = run_cli(preset_run(kMegatron, dir / "mc-pytorch-init",
                         {"--set", "model.wan21_dit.init_method=\"pytorch\""}));
  ASSERT_EQ(r.code, 0) << r.describe();
  EXPECT_NE(metrics(dir / "mc-pytorch-init").front().at("loss").get<double>(),
            m.front().at("loss").get<double>());
}

TEST(Presets, AutomodelReferenceTakesEffect) {
  const std::string automodel =
      std::string(WANHOST_SOURCE_DIR) + "/configs/presets/automodel_reference.json";
  const fs::path dir = scratch_dir();
  Result r = run_cli(preset_run(automodel, dir / "am"));
  ASSERT_EQ(r.code, 0) << r.describe();
  const Json c = resolved(dir / "am");
  EXPECT_EQ(c.at("run").at("master_weights"), "bf16");
  EXPECT_EQ(c.at("model").at("wan21_dit").at("text_len"), 226);
  EXPECT_EQ(c.at("stages").at(0).at("text_rows"), 226);
  EXPECT_EQ(c.at("stages").at(0).at("optimizer").at("weight_decay"), 0.1);
  EXPECT_EQ(c.at("stages").at(0).at("optimizer").at("beta2"), 0.95);
  EXPECT_EQ(c.at("stages").at(0).at("lr_schedule").at("warmup_start_factor"), 0.1);
  EXPECT_EQ(c.at("scheduler").at("flow_matching").at("timestep_granularity"), "per_sample");
  EXPECT_EQ(c.at("scheduler").at("flow_matching").at("round_timesteps_bf16"), true);
  // Effects: the warm-up starts at 0.1 x lr (the default recipe's stage 1 sets lr 0.002 and
  // leaves the start factor to the preset), and 226 text rows give another loss than 512.
  const auto m = metrics(dir / "am");
  ASSERT_EQ(m.size(), static_cast<std::size_t>(kTotalSteps));
  EXPECT_NEAR(m.front().at("lr").get<double>(), 0.1 * 0.002, 1e-12);
  r = run_cli(preset_run(automodel, dir / "am-512", {"--set", "model.wan21_dit.text_len=512"}));
  ASSERT_EQ(r.code, 0) << r.describe();
  EXPECT_NE(metrics(dir / "am-512").front().at("loss").get<double>(),
            m.front().at("loss").get<double>());
}
