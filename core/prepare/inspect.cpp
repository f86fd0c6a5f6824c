// `wanhost data inspect`: what a prepared dataset folder holds, from its index.json (and the
// report of the preparation when present), without reading tensor data.
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <sstream>

#include "../util/files.hpp"
#include "prepare.hpp"
#include "wanhost/errors.hpp"

namespace fs = std::filesystem;

namespace wanhost::core::data {
namespace {

using Json = nlohmann::json;

Json read_json(const fs::path& p, const std::string& what) {
  std::string text;
  try {
    text = read_file(p.string());
  } catch (const std::exception& e) {
    throw UsageError(what + ": cannot read " + p.string() + ": " + e.what());
  }
  try {
    return Json::parse(text);
  } catch (const Json::parse_error& e) {
    throw FormatError(p.string() + ": invalid JSON at byte " + std::to_string(e.byte));
  }
}

std::string shape_text(const Json& shape) {
  std::string s;
  for (const auto& d : shape) s += (s.empty() ? "" : "x") + std::to_string(d.get<std::int64_t>());
  return s;
}

}  // namespace

Json inspect_dataset(const std::string& dir) {
  const fs::path root(dir);
  if (!fs::is_directory(root)) throw UsageError("DIR " + dir + ": not a folder");
  if (!fs::exists(root / "index.json"))
    throw UsageError("DIR " + dir +
                     ": no index.json (not a dataset folder written by `wanhost prepare`, or the "
                     "preparation has not finished; run it again to resume)");
  const Json index = read_json(root / "index.json", "DIR " + dir);
  if (index.value("format", "") != kDatasetFormat)
    throw FormatError((root / "index.json").string() + ": /format is not \"" + kDatasetFormat +
                      "\"");
  Json out;
  out["path"] = fs::absolute(root).lexically_normal().string();
  out["mode"] = index.value("mode", "");
  out["settings"] = index.value("settings", Json::object());
  out["latent_channels"] = index.value("latent_channels", 0);
  out["text_dim"] = index.value("text_dim", 0);
  const Json& samples = index.at("samples");
  const Json& shards = index.at("shards");
  out["shards"] = shards.size();
  out["videos"] = index.value("videos", 0);
  out["samples"] = samples.size();
  std::int64_t missing = 0;
  for (const auto& s : shards)
    if (!fs::exists(root / s.at("file").get<std::string>())) ++missing;
  out["missing_shards"] = missing;

  Json shapes = Json::object();
  std::vector<std::int64_t> tokens;
  for (std::size_t i = 0; i < samples.size(); ++i) {
    const Json& s = samples[i];
    const std::string key = shape_text(s.at("latent_shape"));
    shapes[key] = shapes.value(key, 0) + 1;
    tokens.push_back(s.at("text_tokens").get<std::int64_t>());
  }
  out["latent_shapes"] = shapes;
  Json t = Json::object();
  if (!tokens.empty()) {
    std::sort(tokens.begin(), tokens.end());
    double sum = 0;
    for (auto v : tokens) sum += static_cast<double>(v);
    t["min"] = tokens.front();
    t["max"] = tokens.back();
    t["mean"] = sum / static_cast<double>(tokens.size());
    t["median"] = tokens[tokens.size() / 2];
    // Up to 8 equal-width bins over [1, max].
    const std::int64_t width = std::max<std::int64_t>(1, (tokens.back() + 7) / 8);
    Json hist = Json::array();
    for (std::int64_t lo = 1; lo <= tokens.back(); lo += width) {
      const std::int64_t hi = lo + width - 1;
      const auto n = std::count_if(tokens.begin(), tokens.end(),
                                   [&](std::int64_t v) { return v >= lo && v <= hi; });
      hist.push_back({{"from", lo}, {"to", hi}, {"count", n}});
    }
    t["histogram"] = hist;
  }
  out["text_tokens"] = t;
  if (fs::exists(root / "report.json")) {
    const Json report = read_json(root / "report.json", "DIR " + dir);
    out["input_videos"] = report.value("videos", 0);
    out["skipped"] = report.value("skipped", Json::array());
  }
  return out;
}

std::string describe_inspection(const Json& s) {
  std::ostringstream o;
  const Json& st = s["settings"];
  o << s["path"].get<std::string>() << "\n";
  o << "  mode        " << s["mode"].get<std::string>();
  if (st.contains("height")) o << ", " << st["height"] << "x" << st["width"] << " pixels";
  if (st.contains("frames_per_video")) o << ", " << st["frames_per_video"] << " frames a video";
  if (st.contains("num_frames")) {
    o << ", clips of " << st["num_frames"] << " frames";
    if (st.value("fps", 0.0) > 0) o << " at " << st["fps"] << " fps";
  }
  o << "\n";
  o << "  samples     " << s["samples"] << " from " << s["videos"] << " videos in " << s["shards"]
    << " shard(s)";
  if (s["missing_shards"].get<std::int64_t>() > 0)
    o << " (" << s["missing_shards"] << " shard file(s) MISSING)";
  o << "\n";
  if (s.contains("input_videos"))
    o << "  inputs      " << s["input_videos"] << " file(s), " << s["skipped"].size()
      << " skipped\n";
  o << "  latents     ";
  bool first = true;
  for (auto it = s["latent_shapes"].begin(); it != s["latent_shapes"].end(); ++it) {
    o << (first ? "" : ", ") << "[" << it.key() << "] x " << it.value();
    first = false;
  }
  o << "\n  text        dim " << s["text_dim"];
  const Json& t = s["text_tokens"];
  if (t.contains("min")) {
    char mean[32];
    std::snprintf(mean, sizeof mean, "%.1f", t["mean"].get<double>());
    o << ", tokens min " << t["min"] << ", median " << t["median"] << ", mean " << mean << ", max "
      << t["max"] << "\n";
    std::int64_t most = 1;
    for (const auto& b : t["histogram"]) most = std::max(most, b["count"].get<std::int64_t>());
    for (const auto& b : t["histogram"]) {
      char head[48];
      std::snprintf(head, sizeof head, "  %5lld-%-5lld ",
                    static_cast<long long>(b["from"].get<std::int64_t>()),
                    static_cast<long long>(b["to"].get<std::int64_t>()));
      const auto n = b["count"].get<std::int64_t>();
      o << head << std::string(static_cast<std::size_t>((n * 40 + most - 1) / most), '#') << " "
        << n << "\n";
    }
  } else {
    o << "\n";
  }
  if (s.contains("skipped"))
    for (const auto& k : s["skipped"])
      o << "  skipped     " << k["file"].get<std::string>() << ": "
        << k["reason"].get<std::string>() << "\n";
  return o.str();
}

}  // namespace wanhost::core::data
