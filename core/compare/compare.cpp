#include "compare.hpp"

#include <algorithm>
#include <cctype>
#include <charconv>
#include <climits>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include "../util/files.hpp"
#include "wanhost/errors.hpp"
#include "wanhost/kit/json_file.hpp"

namespace wanhost::core::compare {
namespace {

namespace fs = std::filesystem;

// A number of the record, NaN when missing, null or not a number.
double number_or_nan(const Json& rec, const char* key) {
  const auto it = rec.find(key);
  if (it == rec.end() || !it->is_number()) return kNaN;
  return it->get<double>();
}

[[noreturn]] void bad_line(const std::string& path, long line, const std::string& what) {
  throw FormatError(path + ":" + std::to_string(line) + ": " + what);
}

// An integer field of a record (a number with an integral value).
long integer_field(const Json& rec, const char* key, const std::string& path, long line) {
  const auto it = rec.find(key);
  if (it == rec.end()) bad_line(path, line, std::string("no \"") + key + "\"");
  if (it->is_number_integer()) return it->get<long>();
  if (it->is_number_float()) {
    const double v = it->get<double>();
    if (std::isfinite(v) && v == std::floor(v) && std::fabs(v) < 1e15) return static_cast<long>(v);
  }
  bad_line(path, line, std::string("\"") + key + "\" is not an integer: " + it->dump());
}

// The string at a JSON pointer ("/a/b"), empty when a part is missing or it is no string.
std::string string_at(const Json& j, const std::string& pointer) {
  const Json::json_pointer p(pointer);
  return j.contains(p) && j[p].is_string() ? j[p].get<std::string>() : std::string();
}

// The folder's own name ("runs/a/" -> "a").
std::string folder_name(const std::string& dir) {
  fs::path p = fs::path(dir).lexically_normal();
  if (!p.has_filename()) p = p.parent_path();
  const std::string name = p.filename().string();
  return name.empty() || name == "." ? fs::absolute(p).lexically_normal().filename().string()
                                     : name;
}

// The world size the run trained with, as the manifest of the checkpoint checkpoints/LATEST
// names records it (docs/training.md, "Checkpoints"): 0 when there is none. Only the manifest is
// read (a label needs no verification of the weights' checksums).
long world_of_run(const std::string& dir) {
  const fs::path root = fs::path(dir) / "checkpoints";
  try {
    std::string name = read_file((root / "LATEST").string());
    name.erase(name.find_last_not_of(" \n\r\t") + 1);
    const Json m = read_json_file((root / name / "manifest.json").string());
    const auto w = m.find("world_size");
    return w != m.end() && w->is_number_integer() ? w->get<long>() : 0;
  } catch (const std::exception&) {
    return 0;  // no checkpoint (yet), or a damaged one: the label says "dp auto"
  }
}

std::string csv_field(const std::string& s) {
  if (s.find_first_of(",\"\r\n") == std::string::npos) return s;
  std::string out = "\"";
  for (const char c : s) {
    if (c == '"') out += '"';
    out += c;
  }
  return out + "\"";
}

// Text of a Markdown table cell: pipes escaped, line breaks flattened.
std::string md_cell(const std::string& s) {
  std::string out;
  for (const char c : s) {
    if (c == '|')
      out += "\\|";
    else if (c == '\n' || c == '\r')
      out += ' ';
    else
      out += c;
  }
  return out;
}

std::string fixed(double v, int decimals) {
  if (!std::isfinite(v)) return "n/a";
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", decimals, v);
  return buf;
}

std::string duration(double s) {
  if (!std::isfinite(s)) return "n/a";
  char buf[64];
  if (s < 60)
    std::snprintf(buf, sizeof buf, "%.1f s", s);
  else if (s < 3600)
    std::snprintf(buf, sizeof buf, "%d min %02d s", static_cast<int>(s / 60),
                  static_cast<int>(std::fmod(s, 60)));
  else
    std::snprintf(buf, sizeof buf, "%d h %02d min", static_cast<int>(s / 3600),
                  static_cast<int>(std::fmod(s, 3600) / 60));
  return buf;
}

Json number_json(double v) {
  return std::isfinite(v) ? Json(v) : Json(nullptr);
}

std::string safe_file_part(const std::string& s) {
  std::string out;
  for (const char c : s)
    out +=
        std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.' ? c : '_';
  if (out.empty() || out.find_first_not_of('.') == std::string::npos) out = "stage" + out;
  return out;
}

}  // namespace

std::string format_number(double v) {
  if (std::isnan(v)) return "nan";
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  char buf[64];
  const auto [ptr, err] = std::to_chars(buf, buf + sizeof buf, v);
  return err == std::errc() ? std::string(buf, ptr) : std::string("nan");
}

RunData read_run(const std::string& dir) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec))
    throw UsageError("compare: RUN '" + dir + "' is not a folder" +
                     (fs::exists(dir, ec) ? "" : " (it does not exist)"));
  const std::string path = (fs::path(dir) / "metrics.jsonl").string();
  if (!fs::exists(path, ec))
    throw UsageError("compare: RUN '" + dir + "' has no metrics.jsonl (" + path +
                     "); is it a run folder (wanhost run --out)?");
  if (!fs::is_regular_file(path, ec))
    throw UsageError("compare: " + path + " is not a regular file");
  std::ifstream in(path);
  if (!in) throw FormatError(path + ": cannot open");

  struct Entry {
    std::string stage;
    long stage_index;
    StepRecord rec;
  };
  std::map<long, Entry> by_step;
  RunData run;
  run.dir = dir;
  std::string text;
  long line_no = 0;
  while (std::getline(in, text)) {
    ++line_no;
    if (text.find_first_not_of(" \t\r") == std::string::npos) continue;
    Json rec;
    try {
      rec = Json::parse(text);
    } catch (const Json::exception& e) {
      std::string what = e.what();  // drop nlohmann's "[json.exception.parse_error.101] "
      if (const auto end = what.find("] "); what.rfind("[json.", 0) == 0 && end != what.npos)
        what = what.substr(end + 2);
      bad_line(path, line_no, "invalid JSON: " + what);
    }
    if (!rec.is_object()) bad_line(path, line_no, "not a JSON object");
    const auto stage = rec.find("stage");
    if (stage == rec.end() || !stage->is_string())
      bad_line(path, line_no, "no \"stage\" name (a string)");
    Entry e;
    e.stage = stage->get<std::string>();
    e.stage_index =
        rec.contains("stage_index") ? integer_field(rec, "stage_index", path, line_no) : -1;
    e.rec.step = integer_field(rec, "step", path, line_no);
    e.rec.stage_step =
        rec.contains("stage_step") ? integer_field(rec, "stage_step", path, line_no) : 0;
    const auto loss = rec.find("loss");
    if (loss != rec.end() && !loss->is_null() && !loss->is_number())
      bad_line(path, line_no, "\"loss\" is not a number: " + loss->dump());
    e.rec.loss = number_or_nan(rec, "loss");
    e.rec.tokens = number_or_nan(rec, "tokens");
    e.rec.samples = number_or_nan(rec, "samples");
    e.rec.tokens_per_s = number_or_nan(rec, "tokens_per_s");
    e.rec.samples_per_s = number_or_nan(rec, "samples_per_s");
    e.rec.step_time_s = number_or_nan(rec, "step_time_s");
    e.rec.peak_mem_gib = number_or_nan(rec, "peak_mem_gib");
    ++run.lines;
    auto [it, fresh] = by_step.insert_or_assign(e.rec.step, std::move(e));
    (void)it;
    if (!fresh) ++run.repeated_steps;
  }
  if (in.bad()) throw FormatError(path + ": read error after line " + std::to_string(line_no));

  // Group by stage name; a stage's index is the one its records give (the first seen when they
  // disagree; stages without an index go after the others, in order of appearance).
  std::map<std::string, std::size_t> slot;
  for (auto& [step, e] : by_step) {
    auto found = slot.find(e.stage);
    if (found == slot.end()) {
      found = slot.emplace(e.stage, run.stages.size()).first;
      StageRecords s;
      s.name = e.stage;
      s.index = e.stage_index;
      run.stages.push_back(std::move(s));
    }
    StageRecords& s = run.stages[found->second];
    if (s.index < 0) s.index = e.stage_index;
    s.records.push_back(e.rec);
  }
  std::stable_sort(run.stages.begin(), run.stages.end(),
                   [](const StageRecords& a, const StageRecords& b) {
                     return (a.index < 0 ? LONG_MAX : a.index) < (b.index < 0 ? LONG_MAX : b.index);
                   });
  return run;
}

std::string label_from_config(const Json& resolved, long world) {
  std::vector<std::string> parts;
  const std::string par = string_at(resolved, "/parallelism/plugin");
  if (!par.empty()) {
    std::string p = par;
    const Json::json_pointer at("/parallelism/" + par);
    const Json* cfg = resolved.contains(at) ? &resolved[at] : nullptr;
    bool layout = false;
    long product = 1;
    for (const char* key : {"tp", "pp", "cp"}) {
      if (cfg && cfg->is_object() && cfg->contains(key) && (*cfg)[key].is_number_integer()) {
        const long v = (*cfg)[key].get<long>();
        p += std::string(" ") + key + std::to_string(v);
        product *= std::max(1L, v);
        layout = true;
      }
    }
    if (cfg && cfg->is_object() && cfg->contains("dp") && (*cfg)["dp"].is_number_integer()) {
      long dp = (*cfg)["dp"].get<long>();
      if (dp <= 0 && world > 0 && world % product == 0) dp = world / product;
      p += dp > 0 ? " dp" + std::to_string(dp) : std::string(" dp auto");
      layout = true;
    }
    if (!layout && world > 0) p += " world " + std::to_string(world);
    parts.push_back(p);
  }
  const std::string collator = string_at(resolved, "/collator/plugin");
  if (!collator.empty()) parts.push_back(collator);
  const std::string sched = string_at(resolved, "/scheduler/plugin");
  if (!sched.empty()) {
    const std::string g = string_at(resolved, "/scheduler/" + sched + "/timestep_granularity");
    if (!g.empty()) parts.push_back(g + " timesteps");
  }
  std::string label;
  for (const auto& p : parts) label += (label.empty() ? "" : ", ") + p;
  const std::string name = string_at(resolved, "/run/name");
  if (!name.empty()) label += label.empty() ? name : " (" + name + ")";
  return label;
}

std::string derive_label(const std::string& dir) {
  const std::string manifest = (fs::path(dir) / "config.resolved.json").string();
  std::error_code ec;
  if (!fs::exists(manifest, ec)) return folder_name(dir);
  const std::string label = label_from_config(read_json_file(manifest), world_of_run(dir));
  return label.empty() ? folder_name(dir) : label;
}

std::vector<std::string> unique_labels(const std::vector<std::string>& labels,
                                       const std::vector<std::string>& dirs) {
  std::vector<std::string> out = labels;
  std::map<std::string, int> count;
  for (const auto& l : labels) ++count[l];
  for (std::size_t i = 0; i < out.size(); ++i)
    if (count[labels[i]] > 1 && i < dirs.size()) out[i] += " [" + folder_name(dirs[i]) + "]";
  std::map<std::string, int> seen;
  for (auto& l : out) {
    const int n = ++seen[l];
    if (n > 1) {
      std::string candidate;
      for (int k = n;; ++k) {
        candidate = l + " #" + std::to_string(k);
        if (std::find(out.begin(), out.end(), candidate) == out.end()) break;
      }
      l = candidate;
    }
  }
  return out;
}

std::vector<double> moving_average(const std::vector<double>& values, std::size_t window) {
  window = std::max<std::size_t>(window, 1);
  std::vector<double> out(values.size(), kNaN);
  std::vector<double> finite;
  finite.reserve(values.size());
  for (std::size_t i = 0; i < values.size(); ++i) {
    if (!std::isfinite(values[i])) continue;
    finite.push_back(values[i]);
    const std::size_t n = std::min(window, finite.size());
    double sum = 0;
    for (std::size_t k = finite.size() - n; k < finite.size(); ++k) sum += finite[k];
    out[i] = sum / static_cast<double>(n);
  }
  return out;
}

CurveStats curve_stats(const StageRecords& stage, const Curve& curve, std::size_t window) {
  CurveStats s;
  const auto& r = stage.records;
  s.steps = static_cast<long>(r.size());
  if (r.empty()) return s;
  s.first_step = r.front().step;
  s.last_step = r.back().step;
  std::vector<double> finite;
  for (std::size_t i = 0; i < curve.loss.size(); ++i) {
    if (!std::isfinite(curve.loss[i])) {
      ++s.nonfinite;
      continue;
    }
    finite.push_back(curve.loss[i]);
    s.final_smoothed = curve.smoothed[i];
    if (!(curve.smoothed[i] >= s.min_smoothed)) {  // also replaces the initial NaN
      s.min_smoothed = curve.smoothed[i];
      s.min_smoothed_step = curve.steps[i];
    }
  }
  double sum = 0;
  long n = 0;
  for (std::size_t i = 0; i < curve.loss.size(); ++i)
    if (std::isfinite(curve.loss[i]) && curve.steps[i] > s.last_step - static_cast<long>(window))
      sum += curve.loss[i], ++n;
  if (n > 0) s.mean_last_window = sum / static_cast<double>(n);
  if (finite.size() >= 2) {
    double mean = 0;
    for (std::size_t i = 1; i < finite.size(); ++i) mean += finite[i] - finite[i - 1];
    mean /= static_cast<double>(finite.size() - 1);
    double var = 0;
    for (std::size_t i = 1; i < finite.size(); ++i) {
      const double d = finite[i] - finite[i - 1] - mean;
      var += d * d;
    }
    s.diff_std = std::sqrt(var / static_cast<double>(finite.size() - 1));
  }
  double time = 0, tokens = 0, samples = 0, time_tokens = 0, time_samples = 0;
  long timed = 0;
  for (const auto& rec : r) {
    if (std::isfinite(rec.step_time_s)) {
      time += rec.step_time_s;
      ++timed;
      if (std::isfinite(rec.tokens)) tokens += rec.tokens, time_tokens += rec.step_time_s;
      if (std::isfinite(rec.samples)) samples += rec.samples, time_samples += rec.step_time_s;
    }
    if (std::isfinite(rec.peak_mem_gib) && !(rec.peak_mem_gib <= s.peak_mem_gib))
      s.peak_mem_gib = rec.peak_mem_gib;
  }
  if (timed > 0) {
    s.wall_time_s = time;
    s.mean_step_time_s = time / static_cast<double>(timed);
  }
  if (time_tokens > 0) s.tokens_per_s = tokens / time_tokens;
  if (time_samples > 0) s.samples_per_s = samples / time_samples;
  return s;
}

void compare_with_first(const Curve& first, const Curve& curve, CurveStats& stats) {
  std::size_t i = 0;
  for (std::size_t k = 0; k < curve.steps.size(); ++k) {
    while (i < first.steps.size() && first.steps[i] < curve.steps[k]) ++i;
    if (i == first.steps.size() || first.steps[i] != curve.steps[k]) continue;
    const double ref = first.smoothed[i], v = curve.smoothed[k];
    if (!std::isfinite(ref) || !std::isfinite(v) || ref == 0) continue;
    const double d = std::abs(v - ref) / std::abs(ref);
    if (!(d <= stats.max_rel_diff_vs_first)) {  // also replaces the initial NaN
      stats.max_rel_diff_vs_first = d;
      stats.max_rel_diff_vs_first_step = curve.steps[k];
    }
  }
}

std::vector<StageComparison> align(const std::vector<RunData>& runs, std::size_t window) {
  // Stages by name, ordered by the lowest index any run gives them, then by first appearance.
  std::vector<StageComparison> stages;
  std::map<std::string, std::size_t> slot;
  for (const auto& run : runs)
    for (const auto& st : run.stages) {
      auto it = slot.find(st.name);
      if (it == slot.end()) {
        it = slot.emplace(st.name, stages.size()).first;
        StageComparison c;
        c.name = st.name;
        c.index = st.index;
        stages.push_back(std::move(c));
      }
      StageComparison& c = stages[it->second];
      if (st.index >= 0 && (c.index < 0 || st.index < c.index)) c.index = st.index;
    }
  std::stable_sort(stages.begin(), stages.end(), [](const auto& a, const auto& b) {
    return (a.index < 0 ? LONG_MAX : a.index) < (b.index < 0 ? LONG_MAX : b.index);
  });
  std::set<std::string> stems;
  for (auto& c : stages) {
    std::string stem = "loss_" + safe_file_part(c.name);
    if (!stems.insert(stem).second) {
      for (int k = 2;; ++k)
        if (stems.insert(stem + "_" + std::to_string(k)).second) {
          stem += "_" + std::to_string(k);
          break;
        }
    }
    c.file_stem = stem;
    std::set<long> all_steps;
    for (std::size_t r = 0; r < runs.size(); ++r) {
      const auto st = std::find_if(runs[r].stages.begin(), runs[r].stages.end(),
                                   [&](const StageRecords& s) { return s.name == c.name; });
      if (st == runs[r].stages.end()) continue;
      Curve curve;
      curve.run = r;
      curve.label = runs[r].label;
      for (const auto& rec : st->records) {
        curve.steps.push_back(rec.step);
        curve.loss.push_back(rec.loss);
        all_steps.insert(rec.step);
      }
      curve.smoothed = moving_average(curve.loss, window);
      c.stats.push_back(curve_stats(*st, curve, window));
      if (!c.curves.empty()) compare_with_first(c.curves.front(), curve, c.stats.back());
      c.curves.push_back(std::move(curve));
    }
    c.steps.assign(all_steps.begin(), all_steps.end());
  }
  return stages;
}

std::string stage_csv(const StageComparison& stage) {
  std::string out = "step";
  for (const auto& c : stage.curves)
    out += "," + csv_field(c.label + " loss") + "," + csv_field(c.label + " smoothed");
  out += "\n";
  std::vector<std::size_t> at(stage.curves.size(), 0);
  for (const long step : stage.steps) {
    out += std::to_string(step);
    for (std::size_t k = 0; k < stage.curves.size(); ++k) {
      const Curve& c = stage.curves[k];
      std::size_t& i = at[k];
      while (i < c.steps.size() && c.steps[i] < step) ++i;
      if (i < c.steps.size() && c.steps[i] == step) {
        out += "," + format_number(c.loss[i]) + ",";
        if (std::isfinite(c.smoothed[i])) out += format_number(c.smoothed[i]);
      } else {
        out += ",,";
      }
    }
    out += "\n";
  }
  return out;
}

std::string summary_markdown(const std::vector<RunData>& runs,
                             const std::vector<StageComparison>& stages, std::size_t window,
                             bool with_png) {
  const std::string w = std::to_string(window);
  std::ostringstream md;
  md << "# Run comparison\n\n"
     << "Loss smoothed by a trailing moving average over " << w
     << " steps (skipped steps with a non-finite loss left out). Written by `wanhost compare`.\n\n"
     << "## Runs\n\n"
     << "| run | folder | records | repeated steps |\n"
     << "|---|---|---:|---:|\n";
  for (const auto& r : runs)
    md << "| " << md_cell(r.label) << " | `" << md_cell(r.dir) << "` | " << r.lines << " | "
       << r.repeated_steps << " |\n";
  md << "\n";
  for (const auto& s : stages) {
    md << "## Stage " << md_cell(s.name);
    if (s.index >= 0) md << " (stage " << s.index << ")";
    md << "\n\n";
    if (with_png) md << "![Stage " << s.name << " loss](" << s.file_stem << ".png)\n\n";
    md << "Curves: [" << s.file_stem << ".csv](" << s.file_stem << ".csv)\n\n"
       << "| run | steps | skipped | final smoothed loss | mean loss, last " << w
       << " steps | step-to-step std¹ | tokens/s² | samples/s² | step time (s) | wall time³ "
          "| peak memory (GiB) | smoothed loss vs "
       << md_cell(s.curves.front().label) << "⁴ |\n"
       << "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n";
    for (std::size_t k = 0; k < s.curves.size(); ++k) {
      const CurveStats& t = s.stats[k];
      md << "| " << md_cell(s.curves[k].label) << " | " << t.steps << " (" << t.first_step << "–"
         << t.last_step << ") | " << t.nonfinite << " | " << fixed(t.final_smoothed, 4) << " | "
         << fixed(t.mean_last_window, 4) << " | " << fixed(t.diff_std, 4) << " | "
         << fixed(t.tokens_per_s, 0) << " | " << fixed(t.samples_per_s, 1) << " | "
         << fixed(t.mean_step_time_s, 3) << " | " << duration(t.wall_time_s) << " | "
         << fixed(t.peak_mem_gib, 2) << " | "
         << (std::isfinite(t.max_rel_diff_vs_first)
                 ? fixed(100 * t.max_rel_diff_vs_first, 2) + " % (step " +
                       std::to_string(t.max_rel_diff_vs_first_step) + ")"
                 : std::string("—"))
         << " |\n";
    }
    md << "\n";
  }
  md << "Steps: records of the stage (first–last global step); skipped: of them with a "
        "non-finite loss, left out of every loss number. Final smoothed loss: the moving average "
        "at the stage's last finite step (the mean of its last "
     << w << " finite losses); mean loss, last " << w << " steps: the mean finite loss of the "
     << "global steps in (last − " << w << ", last].\n\n"
     << "¹ Population standard deviation of the differences between consecutive finite raw "
        "losses: the step-to-step noise of the loss, free of its trend.\n"
     << "² Sum of tokens (samples) over the sum of step times: the stage's throughput.\n"
     << "³ Sum of `step_time_s`: time in training steps (checkpoints and start-up excluded).\n"
     << "⁴ The largest relative difference between the run's smoothed loss and the first run's "
        "at the same global step (an A/B: the first run is the baseline), and where it is.\n";
  return md.str();
}

Json summary_json(const std::vector<RunData>& runs, const std::vector<StageComparison>& stages,
                  std::size_t window, bool with_png) {
  Json j = {{"window", window}, {"runs", Json::array()}, {"stages", Json::array()}};
  for (const auto& r : runs)
    j["runs"].push_back({{"label", r.label},
                         {"dir", r.dir},
                         {"records", r.lines},
                         {"repeated_steps", r.repeated_steps}});
  for (const auto& s : stages) {
    Json js = {{"name", s.name},
               {"index", s.index},
               {"csv", s.file_stem + ".csv"},
               {"png", with_png ? Json(s.file_stem + ".png") : Json(nullptr)},
               {"runs", Json::array()}};
    for (std::size_t k = 0; k < s.curves.size(); ++k) {
      const CurveStats& t = s.stats[k];
      js["runs"].push_back(
          {{"run", s.curves[k].run},
           {"label", s.curves[k].label},
           {"steps", t.steps},
           {"first_step", t.first_step},
           {"last_step", t.last_step},
           {"nonfinite_steps", t.nonfinite},
           {"final_smoothed_loss", number_json(t.final_smoothed)},
           {"mean_loss_last_window", number_json(t.mean_last_window)},
           {"min_smoothed_loss", number_json(t.min_smoothed)},
           {"min_smoothed_loss_step", t.min_smoothed_step},
           {"loss_diff_std", number_json(t.diff_std)},
           {"tokens_per_s", number_json(t.tokens_per_s)},
           {"samples_per_s", number_json(t.samples_per_s)},
           {"mean_step_time_s", number_json(t.mean_step_time_s)},
           {"wall_time_s", number_json(t.wall_time_s)},
           {"peak_mem_gib", number_json(t.peak_mem_gib)},
           {"smoothed_loss_max_rel_diff_vs_first", number_json(t.max_rel_diff_vs_first)},
           {"smoothed_loss_max_rel_diff_vs_first_step", t.max_rel_diff_vs_first_step}});
    }
    j["stages"].push_back(std::move(js));
  }
  return j;
}

}  // namespace wanhost::core::compare
