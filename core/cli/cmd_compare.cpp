// `wanhost compare RUN... --out DIR`: loss curves of several runs side by side (core/compare/).
#include <filesystem>
#include <memory>

#include <fmt/format.h>

#include "../compare/compare.hpp"
#include "../compare/loss_plot.hpp"
#include "../util/files.hpp"
#include "app.hpp"
#include "wanhost/errors.hpp"
#include "wanhost/log.hpp"

namespace wanhost::core {
namespace {

namespace fs = std::filesystem;

struct CompareOptions {
  std::vector<std::string> runs;
  std::vector<std::string> labels;
  std::string out;
  std::size_t window = 50;
};

void run_compare(const CompareOptions& o) {
  using namespace compare;
  if (o.runs.empty()) throw UsageError("compare: name at least one RUN folder");
  if (o.labels.size() > o.runs.size())
    throw UsageError("compare: " + std::to_string(o.labels.size()) + " --label for " +
                     std::to_string(o.runs.size()) + " run(s); give at most one per RUN");
  std::error_code ec;
  if (fs::exists(o.out, ec) && !fs::is_directory(o.out, ec))
    throw UsageError("compare: --out " + o.out + " exists and is not a folder");

  std::vector<RunData> runs;
  std::vector<std::string> labels, dirs;
  for (std::size_t i = 0; i < o.runs.size(); ++i) {
    runs.push_back(read_run(o.runs[i]));
    labels.push_back(i < o.labels.size() && !o.labels[i].empty() ? o.labels[i]
                                                                 : derive_label(o.runs[i]));
    dirs.push_back(o.runs[i]);
  }
  labels = unique_labels(labels, dirs);
  for (std::size_t i = 0; i < runs.size(); ++i) {
    runs[i].label = labels[i];
    if (runs[i].lines == 0) logger()->warn("compare: {} has no records in metrics.jsonl", dirs[i]);
    if (runs[i].repeated_steps > 0)
      logger()->warn("compare: {}: {} step(s) recorded more than once; the last record counts",
                     dirs[i], runs[i].repeated_steps);
  }
  const std::vector<StageComparison> stages = align(runs, o.window);

  fs::create_directories(o.out, ec);
  if (ec) throw std::runtime_error("compare: cannot create " + o.out + ": " + ec.message());
  std::vector<std::string> written;
  const auto out = [&](const std::string& name) { return (fs::path(o.out) / name).string(); };
  std::string plot_error;
  const bool plots = have_loss_plots();
  if (!plots)
    logger()->warn(
        "compare: this wanhost was built without PLplot: writing CSV and Markdown only (the PNGs "
        "need libplplot-dev and plplot-driver-cairo at build time)");
  for (const auto& s : stages) {
    for (std::size_t k = 0; k < s.curves.size(); ++k)
      if (s.stats[k].nonfinite > 0)
        logger()->warn("compare: stage '{}', {}: {} step(s) with a non-finite loss left out",
                       s.name, s.curves[k].label, s.stats[k].nonfinite);
    write_file_atomic(out(s.file_stem + ".csv"), stage_csv(s));
    written.push_back(out(s.file_stem + ".csv"));
    if (plots && plot_error.empty()) {
      try {
        draw_loss_plot(s, o.window, out(s.file_stem + ".png"));
        written.push_back(out(s.file_stem + ".png"));
      } catch (const std::exception& e) {
        plot_error = e.what();
      }
    }
  }
  const bool with_png = plots && plot_error.empty();
  write_file_atomic(out("summary.md"), summary_markdown(runs, stages, o.window, with_png));
  write_file_atomic(out("summary.json"), summary_json(runs, stages, o.window, with_png).dump(2));
  written.push_back(out("summary.md"));
  written.push_back(out("summary.json"));
  for (const auto& s : stages)
    for (std::size_t k = 0; k < s.curves.size(); ++k)
      logger()->info(
          "compare: stage '{}': {}: {} steps, final smoothed loss {}{}", s.name, s.curves[k].label,
          s.stats[k].steps, format_number(s.stats[k].final_smoothed),
          k == 0 ? std::string()
                 : fmt::format("; smoothed loss at most {:.2f} % from {}'s (step {})",
                               100 * s.stats[k].max_rel_diff_vs_first, s.curves.front().label,
                               s.stats[k].max_rel_diff_vs_first_step));
  for (const auto& f : written) logger()->info("compare: wrote {}", f);
  if (!plot_error.empty())
    throw std::runtime_error("compare: " + plot_error +
                             " (the CSV files and summaries were written without plots)");
}

}  // namespace

void add_compare_command(CLI::App& app, GlobalOptions&) {
  auto o = std::make_shared<CompareOptions>();
  auto* cmd = app.add_subcommand(
      "compare",
      "Compare the loss curves of runs: per stage a PNG, a CSV and summary.md/.json (see "
      "docs/training.md)");
  cmd->add_option("runs", o->runs, "Run folders (each with metrics.jsonl)")
      ->required()
      ->type_name("RUN...");
  cmd->add_option("--out", o->out, "Folder for the plots, CSVs and summaries (created)")
      ->required()
      ->type_name("DIR");
  cmd->add_option("--label", o->labels,
                  "Name of a run in legends and tables, in the order of the RUNs (repeatable; "
                  "default: parallelism layout, collator, timesteps and run.name from its "
                  "config.resolved.json)")
      ->type_name("NAME")
      ->allow_extra_args(false);  // --label A RUN: RUN is not a second label
  cmd->add_option("--window", o->window, "Steps of the trailing moving average")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  cmd->callback([o] { run_compare(*o); });
}

}  // namespace wanhost::core
