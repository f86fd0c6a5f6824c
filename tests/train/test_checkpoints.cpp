// The checkpoint store through the real CLI: damaged checkpoints and LATEST, retention, refusing
// to start over a run folder that holds checkpoints, and the non-finite policies.
#include <cmath>
#include <fstream>

#include <ATen/ATen.h>

#include <gtest/gtest.h>

#include "train_test_util.hpp"
#include "wanhost/kit/safetensors.hpp"

namespace traintest {
namespace {

// A copy of the complete straight run with every checkpoint (4, 8, ..., 20; LATEST = step-20).
fs::path copy_of_reference(const std::string& name) {
  const fs::path run = scratch_dir() / name;
  copy_run(reference_run(kKeepAll), run);
  return run;
}

// A file of the model weights inside a checkpoint.
fs::path some_weights(const fs::path& checkpoint) {
  for (const auto& e : fs::recursive_directory_iterator(checkpoint / "state"))
    if (e.path().extension() == ".safetensors" && e.path().filename() != "optimizer.safetensors")
      return e.path();
  ADD_FAILURE() << "no model weights in " << checkpoint;
  return {};
}

void truncate_to_half(const fs::path& file) {
  const auto size = fs::file_size(file);
  fs::resize_file(file, size / 2);
}

void flip_last_byte(const fs::path& file) {
  std::fstream f(file, std::ios::in | std::ios::out | std::ios::binary);
  f.seekg(-1, std::ios::end);
  char c = 0;
  f.get(c);
  f.seekp(-1, std::ios::end);
  f.put(static_cast<char>(c ^ 0x5A));
}

// The run folder continues from an older checkpoint after the newest has been damaged, and ends
// exactly like the straight run; the damaged step is saved again, whole.
TEST(DamagedState, TruncatedFileFallsBackToPreviousCheckpoint) {
  const fs::path run = copy_of_reference("run");
  const fs::path newest = run / "checkpoints" / step(kTotalSteps);
  truncate_to_half(newest / "state" / "optimizer.safetensors");
  std::string why;
  ASSERT_FALSE(verify_checkpoint(newest, &why));

  const Result r = run_cli(run_args(run, with(kKeepAll, {"--resume"})));
  ASSERT_EQ(r.code, 0) << r.describe();
  EXPECT_NE(r.err.find("[warning] checkpoints/LATEST names '" + step(kTotalSteps) +
                       "', which does not verify"),
            std::string::npos)
      << r.describe();
  EXPECT_NE(r.err.find("optimizer.safetensors has"), std::string::npos) << "the reason";
  EXPECT_NE(
      r.err.find("resumed from " + (run / "checkpoints" / step(kTotalSteps - kEvery)).string()),
      std::string::npos)
      << r.describe();
  const fs::path ref = reference_run(kKeepAll);
  expect_same_steps(read_metrics(ref), read_metrics(run), "after the fallback");
  expect_same_export(ref, run);
  EXPECT_TRUE(verify_checkpoint(newest, &why)) << "saved again: " << why;
  EXPECT_EQ(latest(run), step(kTotalSteps));
}

// A damaged LATEST: the newest verified checkpoint is used, with a warning.
TEST(DamagedState, CorruptLatestFallsBackToNewestVerified) {
  const fs::path run = copy_of_reference("run");
  // As if the run had stopped at step 12: later checkpoints and the export are gone.
  for (long s = kStage1Steps + kEvery; s <= kTotalSteps; s += kEvery)
    remove_tree(run / "checkpoints" / step(s));
  remove_tree(run / "export");
  write_file(run / "checkpoints" / "LATEST", std::string("\x01\xfe garbage\0\n", 12));

  const Result r = run_cli(run_args(run, with(kKeepAll, {"--resume"})));
  ASSERT_EQ(r.code, 0) << r.describe();
  EXPECT_NE(r.err.find("[warning] checkpoints/LATEST names"), std::string::npos) << r.describe();
  EXPECT_NE(r.err.find("resumed from " + (run / "checkpoints" / step(kStage1Steps)).string()),
            std::string::npos)
      << r.describe();
  const fs::path ref = reference_run(kKeepAll);
  expect_same_steps(read_metrics(ref), read_metrics(run), "after the fallback");
  expect_same_export(ref, run);
  EXPECT_EQ(latest(run), step(kTotalSteps)) << "LATEST is written whole again";
}

// LATEST names a folder that is gone: the same fallback.
TEST(DamagedState, LatestNamingAMissingFolderFallsBack) {
  const fs::path run = copy_of_reference("run");
  remove_tree(run / "checkpoints" / step(kTotalSteps));
  remove_tree(run / "export");
  const Result r = run_cli(run_args(run, with(kKeepAll, {"--resume"})));
  ASSERT_EQ(r.code, 0) << r.describe();
  EXPECT_NE(r.err.find("is not a folder"), std::string::npos) << r.describe();
  EXPECT_NE(
      r.err.find("resumed from " + (run / "checkpoints" / step(kTotalSteps - kEvery)).string()),
      std::string::npos)
      << r.describe();
  expect_same_export(reference_run(kKeepAll), run);
}

// Asking for a damaged checkpoint by name is an error (exit 2) that gives the reason, and leaves
// the run folder as it was.
TEST(DamagedState, ExplicitResumeOfDamagedCheckpointIsRefused) {
  const fs::path run = copy_of_reference("run");
  const fs::path newest = run / "checkpoints" / step(kTotalSteps);
  const fs::path weights = some_weights(newest);
  flip_last_byte(weights);
  auto before = snapshot(run);

  Result r = run_cli(run_args(run, {"--resume", newest.string()}));
  EXPECT_EQ(r.code, 2) << r.describe();
  EXPECT_NE(r.err.find("--resume " + newest.string() + ": not a complete checkpoint (" +
                       weights.string() + " fails its checksum)"),
            std::string::npos)
      << r.describe();
  EXPECT_EQ(snapshot(run), before) << "nothing in the run folder changed";

  const fs::path older = run / "checkpoints" / step(kTotalSteps - kEvery);
  truncate_to_half(older / "state" / "optimizer.safetensors");
  before = snapshot(run);
  r = run_cli(run_args(run, {"--resume", older.string()}));
  EXPECT_EQ(r.code, 2) << r.describe();
  EXPECT_NE(r.err.find("optimizer.safetensors has"), std::string::npos) << r.describe();
  EXPECT_NE(r.err.find("bytes, the manifest says"), std::string::npos) << r.describe();
  EXPECT_EQ(snapshot(run), before);

  fs::remove(older / "manifest.json");
  r = run_cli(run_args(run, {"--resume", older.string()}));
  EXPECT_EQ(r.code, 2) << r.describe();
  EXPECT_NE(r.err.find("has no manifest.json (incomplete save)"), std::string::npos)
      << r.describe();
}

// keep_last=2 keeps exactly the two newest complete checkpoints.
TEST(Retention, KeepsTheNewestTwo) {
  const fs::path run = scratch_dir() / "run";
  const Result r = run_cli(run_args(run, {"--set", "checkpoint.keep_last=2"}));
  ASSERT_EQ(r.code, 0) << r.describe();
  EXPECT_EQ(count(r.err, "checkpoint saved: "), static_cast<std::size_t>(kTotalSteps / kEvery));
  EXPECT_EQ(checkpoint_names(run),
            (std::vector<std::string>{step(kTotalSteps - kEvery), step(kTotalSteps)}));
  EXPECT_EQ(latest(run), step(kTotalSteps));
  for (const auto& name : checkpoint_names(run))
    EXPECT_TRUE(verify_checkpoint(run / "checkpoints" / name)) << name;
  EXPECT_TRUE(temporaries(run).empty());
}

// Retention never removes what LATEST names, even when newer checkpoints (here: of the run that
// was abandoned by resuming from an older checkpoint) outnumber it.
TEST(Retention, NeverRemovesWhatLatestNames) {
  const fs::path run = copy_of_reference("run");
  const Result r = run_cli(
      run_args(run, {"--resume", (run / "checkpoints" / step(kEvery)).string(), "--set",
                     "checkpoint.keep_last=1", "--stop-after-steps", std::to_string(2 * kEvery)}));
  ASSERT_EQ(r.code, 0) << r.describe();
  EXPECT_EQ(latest(run), step(2 * kEvery));
  EXPECT_EQ(checkpoint_names(run), std::vector<std::string>{step(2 * kEvery)});
  std::string why;
  EXPECT_TRUE(verify_checkpoint(run / "checkpoints" / step(2 * kEvery), &why)) << why;
  const std::vector<Json> m = read_metrics(run);
  ASSERT_EQ(m.size(), static_cast<std::size_t>(2 * kEvery)) << "later steps were dropped";
}

// `run` without --resume into a folder that holds checkpoints: exit 2, and not a byte changes
// (not config.resolved.json, not the log, not metrics.jsonl).
TEST(RunFolder, StartingOverCheckpointsIsRefused) {
  const fs::path run = copy_of_reference("run");
  const auto before = snapshot(run);
  const Result r = run_cli(run_args(run, {"--set", "stages.0.optimizer.lr=0.5"}));
  EXPECT_EQ(r.code, 2) << r.describe();
  EXPECT_NE(r.err.find("already holds checkpoints: pass --resume"), std::string::npos)
      << r.describe();
  EXPECT_EQ(snapshot(run), before);
}

// run.nonfinite=abort: the run stops at the bad step with a message naming it; the last
// checkpoint is intact and the run resumes from it.
TEST(NonFinite, AbortStopsAndKeepsLastCheckpoint) {
  const fs::path run = scratch_dir() / "run";
  const Result r = run_cli(run_args(run, with(kKeepAll, {"--set", "run.nonfinite=\"abort\""})),
                           {{"WANHOST_FAULT", "step.nan_loss:6"}});
  EXPECT_NE(r.code, 0) << r.describe();
  EXPECT_NE(r.code, 128 + 9) << r.describe();
  EXPECT_NE(r.err.find("non-finite loss at global step 6"), std::string::npos) << r.describe();
  EXPECT_NE(r.err.find("the last good checkpoint is " + (run / "checkpoints" / step(4)).string()),
            std::string::npos)
      << r.describe();
  EXPECT_EQ(read_metrics(run).size(), 5u);
  EXPECT_EQ(latest(run), step(4));
  EXPECT_EQ(checkpoint_names(run), std::vector<std::string>{step(4)});
  std::string why;
  EXPECT_TRUE(verify_checkpoint(run / "checkpoints" / step(4), &why)) << why;

  const Result resumed = run_cli(run_args(run, with(kKeepAll, {"--resume"})));
  ASSERT_EQ(resumed.code, 0) << resumed.describe();
  const fs::path ref = reference_run(kKeepAll);
  expect_same_steps(read_metrics(ref), read_metrics(run), "resumed after the abort");
  expect_same_export(ref, run);
}

// run.nonfinite=skip: the bad step is counted and skipped; the optimizer does not step, so the
// state after it equals the state before it, and training goes on with finite losses. `fault`:
// step.nan_loss (loss and gradients NaN) or step.nan_loss_only (finite gradients: the loss alone
// must stop the update).
void expect_skip_counts_and_does_not_step(const std::string& fault) {
  SCOPED_TRACE(fault);
  const fs::path run = scratch_dir() / "run";
  const long bad = 6, last = 8;
  const Result r =
      run_cli(run_args(run, {"--set", "run.nonfinite=\"skip\"", "--set", "checkpoint.every_steps=1",
                             "--set", "checkpoint.keep_last=100", "--stop-after-steps",
                             std::to_string(last)}),
              {{"WANHOST_FAULT", fault + ":" + std::to_string(bad)}});
  ASSERT_EQ(r.code, 0) << r.describe();
  const std::vector<Json> m = read_metrics(run);
  ASSERT_EQ(m.size(), static_cast<std::size_t>(last));
  for (const Json& rec : m) {
    const long s = rec["step"];
    SCOPED_TRACE("step " + std::to_string(s) + ": " + rec.dump());
    EXPECT_EQ(rec["skipped_steps"].get<long>(), s < bad ? 0 : 1);
    EXPECT_EQ(rec["loss"].is_null(), s == bad);
    EXPECT_EQ(rec["grad_norm"].is_null(), s == bad && fault == "step.nan_loss");
    if (s != bad) {
      EXPECT_TRUE(rec["loss"].is_number() && std::isfinite(rec["loss"].get<double>()));
      EXPECT_TRUE(std::isfinite(rec["grad_norm"].get<double>()));
    }
  }
  // Steps before the bad one are the straight run's.
  const std::vector<Json> ref = read_metrics(reference_run(kKeepAll));
  expect_same_steps(std::vector<Json>(ref.begin(), ref.begin() + bad - 1),
                    std::vector<Json>(m.begin(), m.begin() + bad - 1), "before the bad step");

  const auto state = [&](long s) { return run / "checkpoints" / step(s) / "state"; };
  for (const auto& e : fs::recursive_directory_iterator(state(bad))) {
    if (e.path().extension() != ".safetensors") continue;
    const fs::path rel = fs::relative(e.path(), state(bad));
    // Skipped: weights and optimizer state as after the step before.
    expect_same_tensors(state(bad - 1) / rel, e.path(), "skipped step: " + rel.string());
    // A normal step changes them (the comparison can fail).
    EXPECT_FALSE(read_file(state(bad + 1) / rel) == read_file(e.path()))
        << rel << " did not change in the step after the skipped one";
  }
  EXPECT_EQ(Json::parse(read_file(run / "checkpoints" / step(bad) / "trainer_state.json"))
                .value("skipped_steps", -1),
            1);
  EXPECT_NE(r.err.find("non-finite"), std::string::npos) << "the skip is reported";
}

TEST(NonFinite, SkipCountsAndDoesNotStep) {
  expect_skip_counts_and_does_not_step("step.nan_loss");
  expect_skip_counts_and_does_not_step("step.nan_loss_only");
}

// --resume when no checkpoint verifies: exit 2 naming each checkpoint and why, and the run folder
// (metrics history, config.resolved.json) is left as it was; without --resume the folder is
// refused too (damaged checkpoints are still checkpoints). (Issue 18: this used to restart from
// step 0, exit 0 and truncate metrics.jsonl.)
TEST(DamagedState, ResumeWhenNoCheckpointVerifiesIsRefused) {
  const fs::path run = copy_of_reference("run");
  std::vector<fs::path> damaged;
  for (const auto& name : checkpoint_names(run)) {
    damaged.push_back(some_weights(run / "checkpoints" / name));
    flip_last_byte(damaged.back());
  }
  ASSERT_EQ(damaged.size(), static_cast<std::size_t>(kTotalSteps / kEvery));
  const auto before = snapshot(run);

  Result r = run_cli(run_args(run, {"--resume"}));
  EXPECT_EQ(r.code, 2) << r.describe();
  EXPECT_NE(r.err.find("none of the " + std::to_string(damaged.size()) + " checkpoint(s) in " +
                       (run / "checkpoints").string() + " verifies"),
            std::string::npos)
      << r.describe();
  for (const auto& w : damaged)
    EXPECT_NE(r.err.find(w.string() + " fails its checksum"), std::string::npos) << w;
  EXPECT_EQ(snapshot(run), before) << "history and config kept";

  r = run_cli(run_args(run, {}));
  EXPECT_EQ(r.code, 2) << r.describe();
  EXPECT_NE(r.err.find("already holds checkpoints"), std::string::npos) << r.describe();
  EXPECT_EQ(snapshot(run), before);
}

// A folder without any checkpoint (a job requeued before its first save) starts from scratch
// under --resume, with a warning.
TEST(RunFolder, ResumeWithoutAnyCheckpointStartsFresh) {
  const fs::path run = scratch_dir() / "run";
  const Result r = run_cli(run_args(run, {"--resume", "--stop-after-steps", "2"}));
  ASSERT_EQ(r.code, 0) << r.describe();
  EXPECT_NE(r.err.find("holds no checkpoint; starting from scratch"), std::string::npos)
      << r.describe();
  EXPECT_EQ(read_metrics(run).size(), 2u);
}

// The settings that decide a checkpoint's trajectory (seed, master-weight dtype, the current
// stage's global batch) cannot change on resume: exit 2 naming old and new values, and the run
// folder is untouched, config.resolved.json included. Other changes that alter the numbers are
// accepted and named in a warning; changes that cannot (logging) are not named.
TEST(ResumeSettings, TrajectorySettingsRefusedOthersNamed) {
  const fs::path run = copy_of_reference("run");
  const std::string from = (run / "checkpoints" / step(2 * kEvery)).string();
  const auto before = snapshot(run);
  const std::vector<std::pair<std::string, std::string>> refused = {
      {"run.seed=7", "/run/seed: 1234 -> 7"},
      {"run.master_weights=\"bf16\"", "/run/master_weights: \"fp32\" -> \"bf16\""},
      {"stages.0.global_batch=8", "/stages/0/global_batch: 4 -> 8"}};
  for (const auto& [set, named] : refused) {
    SCOPED_TRACE(set);
    const Result r = run_cli(run_args(run, {"--resume", from, "--set", set}));
    EXPECT_EQ(r.code, 2) << r.describe();
    EXPECT_NE(r.err.find("--resume " + from + ": the checkpoint was trained with other values"),
              std::string::npos)
        << r.describe();
    EXPECT_NE(r.err.find(named), std::string::npos) << r.describe();
    EXPECT_EQ(snapshot(run), before) << "a refused resume changes nothing";
  }

  const Result r = run_cli(run_args(
      run, {"--resume", from, "--set", "stages.0.optimizer.lr=2e-4", "--set",
            "logging.every_steps=3", "--stop-after-steps", std::to_string(2 * kEvery + 1)}));
  ASSERT_EQ(r.code, 0) << r.describe();
  EXPECT_NE(r.err.find("1 changed setting(s) that alter the training"), std::string::npos)
      << r.describe();
  EXPECT_NE(r.err.find("/stages/0/optimizer/lr: "), std::string::npos) << r.describe();
  EXPECT_EQ(r.err.find("/logging/every_steps"), std::string::npos) << r.describe();
  const Json resolved = Json::parse(read_file(run / "config.resolved.json"));
  EXPECT_EQ(resolved["stages"][0]["optimizer"]["lr"].get<double>(), 2e-4)
      << "the accepted run's settings are the folder's";
}

// A full disk (/dev/full) under metrics.jsonl: the run stops after the step with exit 1 and a
// message naming the file and the reason, saves a checkpoint of that step first, and the file
// never holds a partial record. (Issue 18: this used to exit 0 with metrics cut mid-record.)
TEST(WriteFailures, FullDiskUnderMetricsStopsTheRun) {
  const fs::path run = scratch_dir() / "run";
  fs::create_directories(run);
  fs::create_symlink("/dev/full", run / "metrics.jsonl");
  const Result r = run_cli(run_args(run, {}));
  EXPECT_EQ(r.code, 1) << r.describe();
  EXPECT_NE(r.err.find((run / "metrics.jsonl").string() +
                       ": cannot write the metrics of step 1: No space left on device"),
            std::string::npos)
      << r.describe();
  EXPECT_NE(r.err.find("saved a checkpoint of global step 1"), std::string::npos) << r.describe();
  EXPECT_EQ(latest(run), step(1));

  // With the disk back, --resume goes on from there.
  fs::remove(run / "metrics.jsonl");
  const Result resumed = run_cli(run_args(run, {"--resume", "--stop-after-steps", "3"}));
  ASSERT_EQ(resumed.code, 0) << resumed.describe();
  EXPECT_EQ(read_metrics(run).size(), 2u) << "steps 2 and 3";
}

// The same for a rank's log file: spdlog reports the failed write to its error handler, which
// the trainer checks after every step.
TEST(WriteFailures, FullDiskUnderTheRankLogStopsTheRun) {
  const fs::path run = scratch_dir() / "run";
  fs::create_directories(run / "logs");
  fs::create_symlink("/dev/full", run / "logs" / "rank_00000.log");
  const Result r = run_cli(run_args(run, {}));
  EXPECT_EQ(r.code, 1) << r.describe();
  EXPECT_NE(r.err.find("cannot write a log file"), std::string::npos) << r.describe();
  EXPECT_NE(r.err.find("stopped after global step 1"), std::string::npos) << r.describe();
  EXPECT_EQ(read_metrics(run).size(), 1u);
}

// run.nonfinite=skip has a limit: more than run.nonfinite_max_consecutive non-finite steps in a
// row stop the run as abort does (here every step from 3 on is non-finite).
TEST(NonFinite, SkipStopsAfterTooManyInARow) {
  const fs::path run = scratch_dir() / "run";
  const Result r = run_cli(run_args(run, {"--set", "run.nonfinite=\"skip\"", "--set",
                                          "run.nonfinite_max_consecutive=4"}),
                           {{"WANHOST_FAULT", "step.nan_loss:3+"}});
  EXPECT_EQ(r.code, 1) << r.describe();
  EXPECT_NE(r.err.find("non-finite loss at global step 7 (stage 't2i'): 5 steps in a row "
                       "were non-finite, more than run.nonfinite_max_consecutive = 4 allows"),
            std::string::npos)
      << r.describe();
  EXPECT_EQ(read_metrics(run).size(), 6u);
  EXPECT_FALSE(fs::exists(run / "export"));
}

// Weights that are non-finite at the end (here from the start: the init weights hold a NaN, and
// every step is skipped within the limit) are never exported.
TEST(NonFinite, NonFiniteWeightsAreNeverExported) {
  const fs::path ref = reference_run(kKeepAll);
  const fs::path scratch = scratch_dir();  // (each call empties the folder)
  const fs::path weights = scratch / "nan-weights";
  copy_run(ref / "checkpoints" / step(kStage1Steps) / "state" / "model", weights);
  const fs::path file = weights / "diffusion_pytorch_model.safetensors";
  auto tensors = wanhost::safetensors::File::open(file.string()).load_all();
  at::Tensor& t = tensors.begin()->second;
  t = t.clone();
  t.view(-1)[0] = std::nan("");
  wanhost::safetensors::save(file.string(), tensors, {{"format", "pt"}});

  const fs::path run = scratch / "run";
  const Result r = run_cli(
      run_args(run, {"--set", "stages.0.init=\"" + weights.string() + "\"", "--set",
                     "run.nonfinite=\"skip\"", "--set", "run.nonfinite_max_consecutive=100"}));
  EXPECT_EQ(r.code, 1) << r.describe();
  EXPECT_NE(r.err.find("the final weights hold non-finite values in 1 of "), std::string::npos)
      << r.describe();
  EXPECT_NE(r.err.find(tensors.begin()->first), std::string::npos) << r.describe();
  EXPECT_FALSE(fs::exists(run / "export"));
  const auto m = read_metrics(run);
  ASSERT_EQ(m.size(), static_cast<std::size_t>(kTotalSteps));
  EXPECT_EQ(m.back()["skipped_steps"].get<long>(), kTotalSteps);
}

// A stopped run's summary names no export (none was written); leftovers of an interrupted
// LATEST swap are removed at start like those of interrupted saves.
TEST(RunFolder, StopSummaryAndLatestLeftovers) {
  const fs::path run = copy_of_reference("run");
  const fs::path leftover = run / "checkpoints" / ".LATEST.tmp-Ab12Cd";
  write_file(leftover, "step-8\n");
  const Result r = run_cli(run_args(
      run, {"--resume", (run / "checkpoints" / step(8)).string(), "--stop-after-steps", "9"}));
  ASSERT_EQ(r.code, 0) << r.describe();
  EXPECT_FALSE(fs::exists(leftover));
  EXPECT_NE(
      r.err.find("removing the leftover of an interrupted checkpoint save: " + leftover.string()),
      std::string::npos)
      << r.describe();
  EXPECT_EQ(r.err.find("Diffusers export:"), std::string::npos) << r.describe();
}

}  // namespace
}  // namespace traintest
