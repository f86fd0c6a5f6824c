#include "frame_plan.hpp"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "wanhost/kit/json_file.hpp"

namespace fs = std::filesystem;

namespace wanhost::core::data {
namespace {

// Tolerance for comparing frame times (timestamps are rounded to the stream's time base).
constexpr double kTimeEps = 1e-6;

std::string lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

// A caption file's text; nullopt when it cannot be read or is not a regular file (a FIFO would
// block the preparation).
std::optional<std::string> read_text(const fs::path& p) {
  try {
    return read_regular_file(p.string(), std::size_t{16} << 20);
  } catch (const std::exception&) {
    return std::nullopt;
  }
}

}  // namespace

std::vector<std::int64_t> even_frames(std::int64_t total, std::int64_t count) {
  std::vector<std::int64_t> out;
  if (count < 1 || total < count) return out;
  for (std::int64_t k = 0; k < count; ++k) {
    // Exact integer form of floor(k * (total - 1) / (count - 1)).
    out.push_back(count == 1 ? 0 : k * (total - 1) / (count - 1));
  }
  return out;
}

namespace {

// The video resampled to `fps` (0: every source frame): resampled frame j shows presentation
// index source[j] at time at[j].
struct Resampled {
  std::vector<std::int64_t> source;
  std::vector<double> at;
};

Resampled resample(const std::vector<double>& times, double frame_duration, double fps) {
  Resampled r;
  if (fps > 0) {
    const double duration = times.empty() ? 0.0 : times.back() + frame_duration;
    const auto m = static_cast<std::int64_t>(std::floor(duration * fps + kTimeEps));
    for (std::int64_t j = 0; j < m; ++j) {
      const double t = static_cast<double>(j) / fps;
      auto it = std::upper_bound(times.begin(), times.end(), t + kTimeEps);
      r.source.push_back(std::max<std::int64_t>(0, (it - times.begin()) - 1));
      r.at.push_back(t);
    }
  } else {
    for (std::size_t i = 0; i < times.size(); ++i) {
      r.source.push_back(static_cast<std::int64_t>(i));
      r.at.push_back(times[i]);
    }
  }
  return r;
}

// The clip of resampled frames [first, first + count).
ClipPlan clip_of(const Resampled& r, std::int64_t first, std::int64_t count, double step_time) {
  ClipPlan p;
  p.frames.assign(r.source.begin() + first, r.source.begin() + first + count);
  p.start = r.at[static_cast<std::size_t>(first)];
  p.end = r.at[static_cast<std::size_t>(first + count - 1)] + step_time;
  return p;
}

}  // namespace

std::vector<ClipPlan> plan_clips(const std::vector<double>& times, double frame_duration,
                                 std::int64_t num_frames, double fps, std::int64_t clips,
                                 std::int64_t* available) {
  const Resampled r = resample(times, frame_duration, fps);
  const auto m = static_cast<std::int64_t>(r.source.size());
  if (available) *available = m;
  std::vector<ClipPlan> out;
  if (num_frames < 1 || m < num_frames) return out;
  const std::int64_t fit = m / num_frames;
  const std::int64_t n = clips <= 0 ? fit : std::min(clips, fit);
  const double step_time = fps > 0 ? 1.0 / fps : frame_duration;
  for (std::int64_t c = 0; c < n; ++c) {
    const std::int64_t first = n == 1 ? 0 : (c * (m - num_frames) + (n - 1) / 2) / (n - 1);
    out.push_back(clip_of(r, first, num_frames, step_time));
  }
  return out;
}

std::vector<ClipPlan> plan_whole_video(const std::vector<double>& times, double frame_duration,
                                       double fps, std::int64_t min_frames, std::int64_t max_frames,
                                       std::int64_t multiple, std::int64_t* available) {
  const Resampled r = resample(times, frame_duration, fps);
  const auto m = static_cast<std::int64_t>(r.source.size());
  if (available) *available = m;
  std::vector<ClipPlan> out;
  const std::int64_t cap = std::min(m, max_frames);
  if (cap < 1 || multiple < 1) return out;
  const std::int64_t count = (cap - 1) / multiple * multiple + 1;
  if (count < std::max<std::int64_t>(1, min_frames)) return out;
  out.push_back(clip_of(r, 0, count, fps > 0 ? 1.0 / fps : frame_duration));
  return out;
}

std::string clean_caption(const std::string& text) {
  std::string out;
  bool space = false;
  for (unsigned char c : text) {
    if (std::isspace(c)) {
      space = !out.empty();
      continue;
    }
    if (space) out += ' ';
    space = false;
    out += static_cast<char>(c);
  }
  return out;
}

bool CaptionFinder::is_caption_file(const fs::path& path) {
  const std::string ext = lower(path.extension().string());
  return ext == ".txt" || ext == ".json" || ext == ".jsonl";
}

CaptionFinder::CaptionFinder(fs::path input) : input_(std::move(input)) {
  const fs::path jsonl = input_ / "captions.jsonl";
  const auto text = read_text(jsonl);
  if (!text) return;
  std::istringstream in(*text);
  std::string line;
  for (int n = 1; std::getline(in, line); ++n) {
    if (clean_caption(line).empty()) continue;
    const std::string where = jsonl.string() + ":" + std::to_string(n);
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(line);
    } catch (const nlohmann::json::parse_error& e) {
      problems_.push_back(where + ": invalid JSON (byte " + std::to_string(e.byte) + ")");
      continue;
    }
    if (!j.is_object() || !j.contains("file") || !j["file"].is_string() || !j.contains("caption") ||
        !j["caption"].is_string()) {
      problems_.push_back(where + ": expected {\"file\": string, \"caption\": string}");
      continue;
    }
    const fs::path file = fs::path(j["file"].get<std::string>()).lexically_normal();
    const std::string caption = j["caption"].get<std::string>();
    by_path_[file.generic_string()] = caption;
    const std::string name = file.filename().string();
    by_name_[name] = caption;
    ++name_count_[name];
  }
}

std::optional<std::string> CaptionFinder::find(const fs::path& video, std::string* reason) const {
  const fs::path dir = video.parent_path();
  const std::string stem = video.stem().string(), name = video.filename().string();
  const auto accept = [&](const std::string& text,
                          const std::string& from) -> std::optional<std::string> {
    std::string c = clean_caption(text);
    if (c.empty()) {
      if (reason) *reason = "empty caption in " + from;
      return std::nullopt;
    }
    return c;
  };
  for (const std::string& base : {stem, name}) {
    const fs::path txt = dir / (base + ".txt");
    if (auto t = read_text(txt)) return accept(*t, txt.string());
  }
  for (const std::string& base : {stem, name}) {
    const fs::path js = dir / (base + ".json");
    const auto t = read_text(js);
    if (!t) continue;
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(*t);
    } catch (const nlohmann::json::parse_error& e) {
      if (reason)
        *reason =
            "caption file " + js.string() + ": invalid JSON at byte " + std::to_string(e.byte);
      return std::nullopt;
    }
    if (!j.is_object() || !j.contains("caption") || !j["caption"].is_string()) {
      if (reason) *reason = "caption file " + js.string() + ": no string \"caption\" at /caption";
      return std::nullopt;
    }
    return accept(j["caption"].get<std::string>(), js.string());
  }
  const std::string rel = video.lexically_relative(input_).lexically_normal().generic_string();
  if (auto it = by_path_.find(rel); it != by_path_.end())
    return accept(it->second, (input_ / "captions.jsonl").string());
  if (auto it = by_name_.find(name); it != by_name_.end()) {
    if (name_count_.at(name) > 1) {
      if (reason)
        *reason = "captions.jsonl lists the file name " + name +
                  " more than once; use its path relative to the input folder";
      return std::nullopt;
    }
    return accept(it->second, (input_ / "captions.jsonl").string());
  }
  if (reason)
    *reason = "missing caption (no " + stem + ".txt, " + stem + ".json or captions.jsonl entry)";
  return std::nullopt;
}

}  // namespace wanhost::core::data
