// Exact resume through the real CLI: a run stopped (--stop-after-steps, SIGTERM) or killed
// (SIGKILL at every fault site) and resumed must reproduce the straight run step for step: the
// same loss, LR and gradient norm at every step, bit for bit, and the same final weights.
#include <csignal>
#include <thread>

#include <gtest/gtest.h>

#include "train_test_util.hpp"

namespace traintest {
namespace {

// The checkpoints of the same step in two runs hold the same state: every tensor of every
// safetensors file under state/, and the same trainer_state.json.
void expect_same_checkpoint(const fs::path& a, const fs::path& b) {
  SCOPED_TRACE("checkpoint " + a.string() + " vs " + b.string());
  ASSERT_TRUE(verify_checkpoint(a));
  ASSERT_TRUE(verify_checkpoint(b));
  EXPECT_EQ(Json::parse(read_file(a / "trainer_state.json")),
            Json::parse(read_file(b / "trainer_state.json")));
  int files = 0;
  for (const auto& e : fs::recursive_directory_iterator(a / "state")) {
    if (e.path().extension() != ".safetensors") continue;
    ++files;
    expect_same_tensors(e.path(), b / fs::relative(e.path(), a), e.path().filename().string());
  }
  EXPECT_GE(files, 2) << "model weights and optimizer state";
}

// Every checkpoint of `run` equals the same step's checkpoint of the straight run `ref`.
void expect_same_checkpoints(const fs::path& run, const fs::path& ref) {
  for (long s = kEvery; s <= kTotalSteps; s += kEvery)
    expect_same_checkpoint(run / "checkpoints" / step(s), ref / "checkpoints" / step(s));
}

// `extra`: settings of both runs; `state_file`: a file the checkpoint of step k must hold under
// state/ (besides the model's and the optimizer's).
void stop_and_resume(long k, const std::vector<std::string>& extra = {},
                     const std::string& state_file = "") {
  const std::vector<std::string> settings = with(kKeepAll, extra);
  const fs::path ref = reference_run(settings);
  const fs::path run = scratch_dir() / "run";

  const Result first =
      run_cli(run_args(run, with(settings, {"--stop-after-steps", std::to_string(k)})));
  ASSERT_EQ(first.code, 0) << first.describe();
  ASSERT_EQ(read_metrics(run).size(), static_cast<std::size_t>(k));
  ASSERT_EQ(latest(run), "step-" + std::to_string(k));
  if (!state_file.empty()) {
    EXPECT_TRUE(fs::exists(run / "checkpoints" / step(k) / "state" / state_file)) << state_file;
  }
  EXPECT_FALSE(fs::exists(run / "export")) << "a stopped run exports nothing";
  const std::vector<Json> all = read_metrics(ref);
  expect_same_steps(std::vector<Json>(all.begin(), all.begin() + k), read_metrics(run),
                    "before the stop");

  const Result second = run_cli(run_args(run, with(settings, {"--resume"})));
  ASSERT_EQ(second.code, 0) << second.describe();
  EXPECT_NE(second.err.find("resumed from " +
                            (run / "checkpoints" / ("step-" + std::to_string(k))).string()),
            std::string::npos)
      << second.describe();
  expect_same_steps(read_metrics(ref), read_metrics(run), "after the resume");
  expect_same_export(ref, run);
  EXPECT_EQ(latest(run), "step-" + std::to_string(kTotalSteps));
  expect_same_checkpoints(run, ref);
}

TEST(ExactResume, StopInsideStage1) {
  stop_and_resume(6);  // not a multiple of checkpoint.every_steps: the stop saves on its own
}

TEST(ExactResume, StopAtStageBoundary) {
  stop_and_resume(kStage1Steps);
}

TEST(ExactResume, StopInsideStage2) {
  stop_and_resume(kStage1Steps + 3);
}

// Delayed FP8 scaling (run.fp8 = delayed): each rank's amax histories and the step count travel
// in the checkpoint (state/fp8_history-rank0.safetensors, compared with the straight run's like
// every state file), so the resumed steps scale their operands as the straight run's did; at a
// stage boundary the next stage starts its histories afresh in both.
const std::vector<std::string> kDelayedFp8 = {"--set", "run.fp8=\"delayed\"", "--set",
                                              "run.fp8_amax_history=4"};

TEST(ExactResume, DelayedFp8StopInsideStage1) {
  stop_and_resume(6, kDelayedFp8, "fp8_history-rank0.safetensors");
}

TEST(ExactResume, DelayedFp8StopAtStageBoundary) {
  stop_and_resume(kStage1Steps, kDelayedFp8, "fp8_history-rank0.safetensors");
}

// SIGKILL at `site` in global step `step`; then --resume.
struct Fault {
  const char* site;
  long step;
  const char* name;
};

void PrintTo(const Fault& f, std::ostream* os) {
  *os << f.site << ":" << f.step;
}

class KilledAndResumed : public ::testing::TestWithParam<Fault> {};

TEST_P(KilledAndResumed, ResumesExactly) {
  const Fault f = GetParam();
  const fs::path ref = reference_run(kKeepAll);
  const fs::path run = scratch_dir() / "run";
  const std::string fault = std::string(f.site) + ":" + std::to_string(f.step);
  const bool in_save = std::string(f.site).rfind("save.", 0) == 0;
  const std::string step_dir = "step-" + std::to_string(f.step);
  // The last checkpoint published before the fault.
  const long good = (in_save ? f.step - 1 : f.step) / kEvery * kEvery;
  const std::string good_dir = "step-" + std::to_string(good);

  const Result killed = run_cli(run_args(run, kKeepAll), {{"WANHOST_FAULT", fault}});
  ASSERT_EQ(killed.code, 128 + SIGKILL) << killed.describe();
  // The metrics of the step that died before its optimizer step are not written; a save happens
  // after the step's metrics.
  EXPECT_EQ(read_metrics(run).size(), static_cast<std::size_t>(in_save ? f.step : f.step - 1));
  // The last good state is intact and named by LATEST.
  ASSERT_EQ(latest(run), good_dir);
  std::string why;
  EXPECT_TRUE(verify_checkpoint(run / "checkpoints" / good_dir, &why)) << why;
  expect_same_checkpoint(run / "checkpoints" / good_dir, ref / "checkpoints" / good_dir);
  const std::string site(f.site);
  if (site == "save.files_written" || site == "save.manifest_written") {
    EXPECT_EQ(temporaries(run), std::vector<std::string>{".tmp-" + step_dir});
    EXPECT_FALSE(fs::exists(run / "checkpoints" / step_dir));
    EXPECT_EQ(fs::exists(run / "checkpoints" / (".tmp-" + step_dir) / "manifest.json"),
              site == "save.manifest_written");
  } else if (site == "save.renamed") {
    EXPECT_TRUE(temporaries(run).empty());
    EXPECT_TRUE(verify_checkpoint(run / "checkpoints" / step_dir)) << "renamed, LATEST not swapped";
  } else {
    EXPECT_TRUE(temporaries(run).empty());
    EXPECT_FALSE(fs::exists(run / "checkpoints" / step_dir));
  }

  const Result resumed = run_cli(run_args(run, with(kKeepAll, {"--resume"})));
  ASSERT_EQ(resumed.code, 0) << resumed.describe();
  EXPECT_NE(resumed.err.find("resumed from " + (run / "checkpoints" / good_dir).string()),
            std::string::npos)
      << resumed.describe();
  EXPECT_EQ(resumed.err.find("removing the leftover") != std::string::npos,
            site == "save.files_written" || site == "save.manifest_written")
      << resumed.describe();
  EXPECT_TRUE(temporaries(run).empty()) << "the leftover of the interrupted save is removed";
  expect_same_steps(read_metrics(ref), read_metrics(run), "after the resume");
  expect_same_export(ref, run);
  // The step that was interrupted saves cleanly the second time, as does every later one.
  EXPECT_EQ(latest(run), "step-" + std::to_string(kTotalSteps));
  expect_same_checkpoints(run, ref);
}

INSTANTIATE_TEST_SUITE_P(
    FaultSites, KilledAndResumed,
    ::testing::Values(Fault{"step.before_optimizer", 6, "BeforeOptimizerStep6"},
                      Fault{"save.files_written", 8, "SaveFilesWrittenStep8"},
                      Fault{"save.manifest_written", 8, "SaveManifestWrittenStep8"},
                      Fault{"save.renamed", 8, "SaveRenamedStep8"},
                      // In stage 2, and in the save at the end of stage 1.
                      Fault{"step.before_optimizer", kStage1Steps + 2, "BeforeOptimizerStep14"},
                      Fault{"save.renamed", kStage1Steps, "SaveRenamedStageEnd"}),
    [](const ::testing::TestParamInfo<Fault>& i) { return std::string(i.param.name); });

// SIGTERM: the run saves a checkpoint at the step it is in, exits with 75, and --resume finishes
// it as if nothing had happened. Stage 1 is long here, so that the signal lands well before the
// end of the run.
TEST(Sigterm, SavesStopsAndResumesExactly) {
  const std::vector<std::string> longer = {"--set", "stages.0.steps=150", "--set",
                                           "checkpoint.every_steps=5"};
  const fs::path ref = reference_run(longer);
  const fs::path run = scratch_dir() / "run";
  Process p(run_args(run, longer));
  const fs::path latest_file = run / "checkpoints" / "LATEST";
  while (p.running() && !fs::exists(latest_file))
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  ASSERT_TRUE(p.running()) << p.wait().describe();
  p.signal(SIGTERM);
  const Result stopped = p.wait();
  ASSERT_EQ(stopped.code, 75) << stopped.describe();
  EXPECT_NE(stopped.err.find("SIGTERM"), std::string::npos) << stopped.describe();
  const std::vector<Json> before = read_metrics(run);
  ASSERT_FALSE(before.empty());
  const long stop_step = before.back()["step"];
  EXPECT_LT(stop_step, 150) << "the signal came after the run had ended";
  EXPECT_EQ(latest(run), "step-" + std::to_string(stop_step)) << "a checkpoint at the stop";
  EXPECT_TRUE(verify_checkpoint(run / "checkpoints" / ("step-" + std::to_string(stop_step))));
  EXPECT_FALSE(fs::exists(run / "export"));

  const Result resumed = run_cli(run_args(run, with(longer, {"--resume"})));
  ASSERT_EQ(resumed.code, 0) << resumed.describe();
  expect_same_steps(read_metrics(ref), read_metrics(run), "after SIGTERM and --resume");
  expect_same_export(ref, run);
}

}  // namespace
}  // namespace traintest
