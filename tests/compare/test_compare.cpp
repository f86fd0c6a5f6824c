// `wanhost compare`: reading metrics.jsonl, labels from config.resolved.json, smoothing,
// alignment by global step, the CSV, the summary numbers, the errors, the PNGs, and the command
// end to end. Run folders are small synthetic ones written here.
#include <sys/wait.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "compare/compare.hpp"
#include "compare/loss_plot.hpp"
#include "parity_util.hpp"
#include "util/files.hpp"
#include "wanhost/errors.hpp"

namespace {

namespace fs = std::filesystem;
using namespace wanhost::core::compare;
using wanhost::FormatError;
using wanhost::Json;
using wanhost::UsageError;

// A fresh folder for the running test.
fs::path scratch() {
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  const fs::path dir =
      fs::path(WANHOST_TEST_TMP) / (std::string(info->test_suite_name()) + "." + info->name());
  wanhost::core::remove_tree(dir.string());
  fs::create_directories(dir);
  return dir;
}

void write(const fs::path& path, const std::string& text) {
  fs::create_directories(path.parent_path());
  std::ofstream(path) << text;
}

std::string read(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

// One metrics.jsonl line.
std::string rec(const std::string& stage, int index, long step, const std::string& loss,
                double tokens = 100, double time = 0.5, double mem = 1.0) {
  Json j = {{"stage", stage},      {"stage_index", index}, {"step", step},
            {"stage_step", step},  {"tokens", tokens},     {"samples", 4},
            {"step_time_s", time}, {"peak_mem_gib", mem}};
  std::string s = j.dump();
  return s.substr(0, s.size() - 1) + ",\"loss\":" + loss + "}\n";
}

// Run A: t2i steps 1-4 (losses 1 3 2 6), t2v steps 5-7. Run B: t2i steps 1-5, no t2v.
fs::path run_a(const fs::path& root) {
  const fs::path d = root / "a";
  write(d / "metrics.jsonl", rec("t2i", 0, 1, "1") + rec("t2i", 0, 2, "3") + rec("t2i", 0, 3, "2") +
                                 rec("t2i", 0, 4, "6", 100, 0.5, 2.5) + rec("t2v", 1, 5, "4") +
                                 rec("t2v", 1, 6, "null") + rec("t2v", 1, 7, "2"));
  write(d / "config.resolved.json", R"({
    "parallelism": {"plugin": "megatron_tpppcp",
                    "megatron_tpppcp": {"tp": 2, "pp": 1, "cp": 1, "dp": 0}},
    "collator": {"plugin": "packed", "packed": {}},
    "scheduler": {"plugin": "flow_matching",
                  "flow_matching": {"timestep_granularity": "per_pack"}},
    "run": {"name": "abl"}})");
  write(d / "checkpoints" / "LATEST", "step-4\n");
  write(d / "checkpoints" / "step-4" / "manifest.json",
        R"({"format": "wanhost-checkpoint", "files": [], "world_size": 4})");
  return d;
}

fs::path run_b(const fs::path& root) {
  const fs::path d = root / "b";
  write(d / "metrics.jsonl", rec("t2i", 0, 1, "2") + rec("t2i", 0, 2, "2") + rec("t2i", 0, 3, "2") +
                                 rec("t2i", 0, 4, "2") + rec("t2i", 0, 5, "2"));
  write(d / "config.resolved.json", R"({
    "parallelism": {"plugin": "ddp", "ddp": {"decay_1d": true}},
    "collator": {"plugin": "dense", "dense": {}},
    "scheduler": {"plugin": "flow_matching",
                  "flow_matching": {"timestep_granularity": "per_sample"}},
    "run": {"name": "base"}})");
  return d;
}

std::vector<RunData> read_both(const fs::path& root) {
  std::vector<RunData> runs = {read_run(run_a(root).string()), read_run(run_b(root).string())};
  runs[0].label = "A";
  runs[1].label = "B";
  return runs;
}

TEST(CompareSmoothing, TrailingMovingAverageIsExact) {
  const auto m = moving_average({1, 2, 3, 4, 5}, 3);
  ASSERT_EQ(m.size(), 5u);
  EXPECT_DOUBLE_EQ(m[0], 1.0);
  EXPECT_DOUBLE_EQ(m[1], 1.5);
  EXPECT_DOUBLE_EQ(m[2], 2.0);
  EXPECT_DOUBLE_EQ(m[3], 3.0);
  EXPECT_DOUBLE_EQ(m[4], 4.0);
  // A window of 1 is the curve itself.
  EXPECT_EQ(moving_average({5, 7}, 1), (std::vector<double>{5, 7}));
}

TEST(CompareSmoothing, NonFiniteLossesAreSkipped) {
  const auto m = moving_average({1, kNaN, 3, 5}, 2);
  EXPECT_DOUBLE_EQ(m[0], 1.0);
  EXPECT_TRUE(std::isnan(m[1]));
  EXPECT_DOUBLE_EQ(m[2], 2.0);  // the last two finite values: 1 and 3
  EXPECT_DOUBLE_EQ(m[3], 4.0);
}

TEST(CompareRead, StagesRepeatedStepsAndNonFiniteLosses) {
  const fs::path d = scratch() / "r";
  write(d / "metrics.jsonl", rec("t2i", 0, 1, "5") + rec("t2i", 0, 2, "null") + "\n" +
                                 rec("t2i", 0, 2, "4") +  // a resumed run wrote step 2 again
                                 rec("t2v", 1, 3, "null") + rec("t2v", 1, 4, "null") +
                                 rec("t2v", 1, 5, "1.5"));
  const RunData r = read_run(d.string());
  EXPECT_EQ(r.lines, 6);
  EXPECT_EQ(r.repeated_steps, 1);
  ASSERT_EQ(r.stages.size(), 2u);
  EXPECT_EQ(r.stages[0].name, "t2i");
  EXPECT_EQ(r.stages[1].name, "t2v");
  EXPECT_EQ(r.stages[1].index, 1);
  ASSERT_EQ(r.stages[0].records.size(), 2u);
  EXPECT_DOUBLE_EQ(r.stages[0].records[1].loss, 4.0);  // the last record of step 2 counts
  ASSERT_EQ(r.stages[1].records.size(), 3u);
  EXPECT_TRUE(std::isnan(r.stages[1].records[0].loss));
  EXPECT_TRUE(std::isnan(r.stages[1].records[1].loss));
  EXPECT_DOUBLE_EQ(r.stages[1].records[2].loss, 1.5);
}

TEST(CompareAlign, PerStageByGlobalStep) {
  const auto stages = align(read_both(scratch()), 2);
  ASSERT_EQ(stages.size(), 2u);
  EXPECT_EQ(stages[0].name, "t2i");
  EXPECT_EQ(stages[0].file_stem, "loss_t2i");
  EXPECT_EQ(stages[0].steps, (std::vector<long>{1, 2, 3, 4, 5}));
  ASSERT_EQ(stages[0].curves.size(), 2u);
  EXPECT_EQ(stages[0].curves[0].smoothed, (std::vector<double>{1, 2, 2.5, 4}));
  // Run B has no t2v: absent from that stage.
  ASSERT_EQ(stages[1].curves.size(), 1u);
  EXPECT_EQ(stages[1].curves[0].label, "A");
  EXPECT_EQ(stages[1].steps, (std::vector<long>{5, 6, 7}));
  EXPECT_EQ(stages[1].stats[0].nonfinite, 1);
  EXPECT_DOUBLE_EQ(stages[1].stats[0].final_smoothed, 3.0);  // (4 + 2) / 2, NaN left out
}

TEST(CompareAlign, CsvColumnsAndEmptyCells) {
  const auto stages = align(read_both(scratch()), 2);
  EXPECT_EQ(stage_csv(stages[0]),
            "step,A loss,A smoothed,B loss,B smoothed\n"
            "1,1,1,2,2\n"
            "2,3,2,2,2\n"
            "3,2,2.5,2,2\n"
            "4,6,4,2,2\n"
            "5,,,2,2\n");
  EXPECT_EQ(stage_csv(stages[1]),
            "step,A loss,A smoothed\n"
            "5,4,4\n"
            "6,nan,\n"
            "7,2,3\n");
}

TEST(CompareSummary, Numbers) {
  const auto runs = read_both(scratch());
  const auto stages = align(runs, 2);
  const CurveStats& a = stages[0].stats[0];
  EXPECT_EQ(a.steps, 4);
  EXPECT_EQ(a.first_step, 1);
  EXPECT_EQ(a.last_step, 4);
  EXPECT_DOUBLE_EQ(a.final_smoothed, 4.0);
  EXPECT_DOUBLE_EQ(a.mean_last_window, 4.0);  // steps 3 and 4
  // Losses 1 3 2 6: differences 2 -1 4, mean 5/3, population variance 114/27.
  EXPECT_NEAR(a.diff_std, std::sqrt(114.0 / 27.0), 1e-12);
  EXPECT_DOUBLE_EQ(a.tokens_per_s, 200.0);  // 400 tokens in 2 s
  EXPECT_DOUBLE_EQ(a.samples_per_s, 8.0);   // 16 samples in 2 s
  EXPECT_DOUBLE_EQ(a.wall_time_s, 2.0);
  EXPECT_DOUBLE_EQ(a.mean_step_time_s, 0.5);
  EXPECT_DOUBLE_EQ(a.peak_mem_gib, 2.5);
  EXPECT_DOUBLE_EQ(stages[0].stats[1].diff_std, 0.0);  // a flat loss

  const Json j = summary_json(runs, stages, 2, false);
  EXPECT_EQ(j["window"], 2);
  EXPECT_NEAR(j["stages"][0]["runs"][0]["loss_diff_std"].get<double>(), std::sqrt(114.0 / 27.0),
              1e-12);
  EXPECT_EQ(j["stages"][1]["runs"][0]["nonfinite_steps"], 1);
  EXPECT_TRUE(j["stages"][0]["png"].is_null());
  const std::string md = summary_markdown(runs, stages, 2, true);
  EXPECT_NE(md.find("## Stage t2i"), std::string::npos);
  EXPECT_NE(md.find("![Stage t2v loss](loss_t2v.png)"), std::string::npos);
  EXPECT_NE(md.find("| A | 4 (1–4) | 0 | 4.0000 | 4.0000 | 2.0548 | 200 | 8.0 | 0.500 | 2.0 s "
                    "| 2.50 | — |"),
            std::string::npos)
      << md;
  EXPECT_NE(md.find("| smoothed loss vs A⁴ |"), std::string::npos) << md;
  EXPECT_NE(md.find("| 100.00 % (step 1) |"), std::string::npos) << md;
  EXPECT_NE(md.find("consecutive finite raw losses"), std::string::npos);
}

// An A/B: each run's smoothed loss against the first run's at the same global steps. A's smoothed
// t2i losses (window 2) are 1 2 2.5 4 at steps 1-4, B's 2 everywhere (steps 1-5): relative
// differences 1, 0, 0.2, 0.5, the largest at step 1; step 5 has no A to compare with.
TEST(CompareSummary, LargestDifferenceFromTheFirstRun) {
  const auto runs = read_both(scratch());
  const auto stages = align(runs, 2);
  EXPECT_TRUE(std::isnan(stages[0].stats[0].max_rel_diff_vs_first)) << "the baseline itself";
  EXPECT_DOUBLE_EQ(stages[0].stats[1].max_rel_diff_vs_first, 1.0);
  EXPECT_EQ(stages[0].stats[1].max_rel_diff_vs_first_step, 1);
  // Against a baseline that differs least at the start, the largest difference moves on.
  Curve first, other;
  first.steps = other.steps = {10, 11, 12};
  first.smoothed = {2, 2, 4};
  other.smoothed = {2, kNaN, 5};
  CurveStats t;
  compare_with_first(first, other, t);
  EXPECT_DOUBLE_EQ(t.max_rel_diff_vs_first, 0.25);
  EXPECT_EQ(t.max_rel_diff_vs_first_step, 12);
  const Json j = summary_json(runs, stages, 2, false);
  EXPECT_DOUBLE_EQ(j["stages"][0]["runs"][1]["smoothed_loss_max_rel_diff_vs_first"].get<double>(),
                   1.0);
  EXPECT_TRUE(j["stages"][0]["runs"][0]["smoothed_loss_max_rel_diff_vs_first"].is_null());
}

TEST(CompareLabels, FromConfigResolved) {
  const fs::path root = scratch();
  // dp 0 is derived from the world size of the last checkpoint: 4 / (tp 2) = 2.
  EXPECT_EQ(derive_label(run_a(root).string()),
            "megatron_tpppcp tp2 pp1 cp1 dp2, packed, per_pack timesteps (abl)");
  EXPECT_EQ(derive_label(run_b(root).string()), "ddp, dense, per_sample timesteps (base)");
  write(root / "bare" / "metrics.jsonl", rec("t2i", 0, 1, "1"));
  EXPECT_EQ(derive_label((root / "bare").string()), "bare");
  EXPECT_EQ(derive_label((root / "bare/").string()), "bare");
  write(root / "broken" / "config.resolved.json", "{\"run\": ");
  EXPECT_THROW(derive_label((root / "broken").string()), FormatError);
  // Without a log, dp 0 stays unresolved.
  EXPECT_EQ(label_from_config(Json::parse(R"({"parallelism": {"plugin": "m",
      "m": {"tp": 1, "pp": 2, "cp": 1, "dp": 0}}})")),
            "m tp1 pp2 cp1 dp auto");
  EXPECT_EQ(unique_labels({"x", "y", "x"}, {"runs/one", "runs/two", "runs/three/"}),
            (std::vector<std::string>{"x [one]", "y", "x [three]"}));
  EXPECT_EQ(unique_labels({"x", "x"}, {"a/r", "b/r"}),
            (std::vector<std::string>{"x [r]", "x [r] #2"}));
}

TEST(CompareErrors, NamedWithFileAndLine) {
  const fs::path root = scratch();
  EXPECT_THROW(read_run((root / "missing").string()), UsageError);
  fs::create_directories(root / "empty");
  try {
    read_run((root / "empty").string());
    ADD_FAILURE() << "no error for a folder without metrics.jsonl";
  } catch (const UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("metrics.jsonl"), std::string::npos) << e.what();
  }
  write(root / "bad" / "metrics.jsonl", rec("t2i", 0, 1, "1") + rec("t2i", 0, 2, "1") + "{oops\n");
  try {
    read_run((root / "bad").string());
    ADD_FAILURE() << "no error for a bad line";
  } catch (const FormatError& e) {
    EXPECT_NE(std::string(e.what()).find((root / "bad" / "metrics.jsonl").string() + ":3:"),
              std::string::npos)
        << e.what();
  }
  write(root / "nostep" / "metrics.jsonl", rec("t2i", 0, 1, "1") + "{\"stage\": \"t2i\"}\n");
  try {
    read_run((root / "nostep").string());
    ADD_FAILURE() << "no error for a line without a step";
  } catch (const FormatError& e) {
    EXPECT_NE(std::string(e.what()).find("metrics.jsonl:2: no \"step\""), std::string::npos)
        << e.what();
  }
}

bool is_png(const fs::path& path) {
  return read(path).rfind(std::string("\x89PNG\r\n\x1a\n", 8), 0) == 0;
}

TEST(ComparePlot, WritesPngs) {
  if (!have_loss_plots()) GTEST_SKIP() << "built without PLplot";
  const fs::path root = scratch();
  const auto stages = align(read_both(root), 2);
  for (const auto& s : stages) {
    const fs::path png = root / (s.file_stem + ".png");
    draw_loss_plot(s, 2, png.string());
    EXPECT_TRUE(is_png(png)) << png;
  }
  // A folder that does not exist: an error, not an exit inside PLplot.
  EXPECT_THROW(draw_loss_plot(stages[0], 2, (root / "no" / "x.png").string()), std::runtime_error);
}

// `wanhost compare` through the program.
TEST(CompareCli, WritesEverything) {
  const fs::path root = scratch();
  const std::string a = run_a(root).string(), b = run_b(root).string();
  const fs::path out = root / "out";
  const auto r = wanhost::testing::run_wanhost("compare " + a + " " + b +
                                               " --label first --window 2 --out " + out.string());
  ASSERT_EQ(r.code, 0) << r.output;
  for (const char* f : {"loss_t2i.csv", "loss_t2v.csv", "summary.md", "summary.json"})
    EXPECT_TRUE(fs::exists(out / f)) << f;
  const std::string header =
      "step,first loss,first smoothed,\"ddp, dense, per_sample timesteps (base) loss\","
      "\"ddp, dense, per_sample timesteps (base) smoothed\"\n";
  EXPECT_EQ(read(out / "loss_t2i.csv").substr(0, header.size()), header);
  const Json j = Json::parse(read(out / "summary.json"));
  EXPECT_EQ(j["runs"][0]["label"], "first");
  if (have_loss_plots()) {
    EXPECT_TRUE(is_png(out / "loss_t2i.png"));
    EXPECT_TRUE(is_png(out / "loss_t2v.png"));
  }
  EXPECT_NE(r.output.find("non-finite loss left out"), std::string::npos) << r.output;
}

TEST(CompareCli, UsageErrors) {
  const fs::path root = scratch();
  const std::string a = run_a(root).string();
  EXPECT_EQ(wanhost::testing::run_wanhost("compare --out " + (root / "o").string()).code, 2);
  write(root / "file", "x");
  const auto to_file =
      wanhost::testing::run_wanhost("compare " + a + " --out " + (root / "file").string());
  EXPECT_EQ(to_file.code, 2) << to_file.output;
  EXPECT_NE(to_file.output.find("not a folder"), std::string::npos) << to_file.output;
  fs::create_directories(root / "norun");
  const auto norun = wanhost::testing::run_wanhost("compare " + (root / "norun").string() +
                                                   " --out " + (root / "o").string());
  EXPECT_EQ(norun.code, 2) << norun.output;
  EXPECT_NE(norun.output.find("metrics.jsonl"), std::string::npos) << norun.output;
  const auto labels = wanhost::testing::run_wanhost("compare " + a + " --label x --label y --out " +
                                                    (root / "o").string());
  EXPECT_EQ(labels.code, 2) << labels.output;
  write(root / "bad" / "metrics.jsonl", "{\"stage\": \"s\", \"step\": 1, \"loss\": 1}\n[1,\n");
  const auto bad = wanhost::testing::run_wanhost("compare " + (root / "bad").string() + " --out " +
                                                 (root / "o").string());
  EXPECT_NE(bad.code, 0);
  EXPECT_NE(bad.output.find("metrics.jsonl:2:"), std::string::npos) << bad.output;
}

}  // namespace
