// `wanhost compare`: reads the metrics.jsonl of several run folders, lines their loss curves up
// by global step per stage, smooths them and writes a CSV per stage, summary.md and summary.json
// (the PNGs are drawn by loss_plot.hpp). Everything here is pure and testable: files in, numbers
// and text out.
#pragma once

#include <cstddef>
#include <limits>
#include <string>
#include <vector>

#include "wanhost/config.hpp"

namespace wanhost::core::compare {

inline constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// One line of metrics.jsonl (the keys compare uses; a missing or null number is NaN).
struct StepRecord {
  long step = 0;        // global step
  long stage_step = 0;  // step within the stage
  double loss = kNaN;   // NaN: a skipped (non-finite) step
  double tokens = kNaN, samples = kNaN;
  double tokens_per_s = kNaN, samples_per_s = kNaN;
  double step_time_s = kNaN, peak_mem_gib = kNaN;
};

// The records of one stage of one run, sorted by global step, each step once.
struct StageRecords {
  std::string name;
  long index = 0;
  std::vector<StepRecord> records;
};

struct RunData {
  std::string dir;                   // the run folder as given
  std::string label;                 // legend / table name (unique among the compared runs)
  std::vector<StageRecords> stages;  // in stage_index order
  long lines = 0;                    // records read from metrics.jsonl
  long repeated_steps = 0;           // lines of a step seen before (the last one counts)
};

// Reads <dir>/metrics.jsonl. Throws UsageError when `dir` is not a folder or has no
// metrics.jsonl, FormatError "FILE:LINE: ..." for a line that is not a JSON object with numeric
// "step" and string "stage" (NaN / Infinity literals and null losses are accepted as non-finite).
// A step that appears twice (a resumed run) keeps its last line. The label is left empty.
RunData read_run(const std::string& dir);

// The label a run gets from its config.resolved.json: "<parallelism plugin> [layout], <collator>,
// <timestep granularity> timesteps (<run.name>)", e.g. "megatron_tpppcp tp2 pp1 cp1 dp2, packed,
// per_pack timesteps (ablation)". `world` (0: unknown) resolves dp = 0 ("derive") of a layout;
// parts the manifest lacks are left out. Empty when nothing is known.
std::string label_from_config(const Json& resolved, long world = 0);

// The label of the run folder `dir`: label_from_config of its config.resolved.json (read with the
// guarded JSON reader; a malformed file throws FormatError), the world size taken from its rank-0
// log when there is one; the folder's name when there is no manifest.
std::string derive_label(const std::string& dir);

// Makes labels unique: a repeated label gets " [<folder name>]" appended, then " #2", " #3"...
std::vector<std::string> unique_labels(const std::vector<std::string>& labels,
                                       const std::vector<std::string>& dirs);

// Trailing moving average over the finite values: out[i] is the mean of the last `window` finite
// values up to and including i (fewer at the start); NaN where values[i] is not finite.
std::vector<double> moving_average(const std::vector<double>& values, std::size_t window);

// One run's loss curve in one stage.
struct Curve {
  std::size_t run = 0;  // index into the runs
  std::string label;
  std::vector<long> steps;       // global steps
  std::vector<double> loss;      // raw (NaN: skipped step)
  std::vector<double> smoothed;  // moving average (NaN where loss is)
};

// The numbers of one run in one stage (NaN where the metrics lack them).
struct CurveStats {
  long steps = 0;      // records in the stage
  long nonfinite = 0;  // of them with a non-finite loss (left out of every loss number)
  long first_step = 0, last_step = 0;
  double final_smoothed = kNaN;    // the moving average at the last finite step
  double mean_last_window = kNaN;  // mean finite loss over steps (last_step - window, last_step]
  double min_smoothed = kNaN;
  long min_smoothed_step = 0;
  double diff_std = kNaN;       // population std of consecutive differences of the finite losses
  double tokens_per_s = kNaN;   // sum of tokens / sum of step times
  double samples_per_s = kNaN;  // sum of samples / sum of step times
  double mean_step_time_s = kNaN;
  double wall_time_s = kNaN;  // sum of step_time_s
  double peak_mem_gib = kNaN;
  // Against the first run that has the stage (an A/B): the largest |smoothed - first's smoothed| /
  // |first's smoothed| over the steps where both are finite, and that step (NaN, 0: the first run
  // itself, or no common step).
  double max_rel_diff_vs_first = kNaN;
  long max_rel_diff_vs_first_step = 0;
};

struct StageComparison {
  std::string name;
  long index = 0;
  std::string file_stem;      // "loss_<name>" made safe for a file name, unique
  std::vector<long> steps;    // union of the curves' steps, sorted
  std::vector<Curve> curves;  // runs that have the stage, in run order
  std::vector<CurveStats> stats;
};

// Lines the runs up per stage (by stage name, ordered by the lowest stage index any run gives
// it) and smooths each curve with `window`.
std::vector<StageComparison> align(const std::vector<RunData>& runs, std::size_t window);

CurveStats curve_stats(const StageRecords& stage, const Curve& curve, std::size_t window);
// Sets stats.max_rel_diff_vs_first(_step) of `curve` against `first` (curves of one stage).
void compare_with_first(const Curve& first, const Curve& curve, CurveStats& stats);

// The CSV of one stage: "step", then per run "<label> loss" and "<label> smoothed"; an empty cell
// where a run has no record at that step, "nan" for a skipped step's raw loss.
std::string stage_csv(const StageComparison& stage);
// summary.md and summary.json.
std::string summary_markdown(const std::vector<RunData>& runs,
                             const std::vector<StageComparison>& stages, std::size_t window,
                             bool with_png);
Json summary_json(const std::vector<RunData>& runs, const std::vector<StageComparison>& stages,
                  std::size_t window, bool with_png);

// Shortest text that reads back as the same double ("nan" for NaN).
std::string format_number(double v);

}  // namespace wanhost::core::compare
