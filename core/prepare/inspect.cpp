// `wanhost data inspect`: what a prepared dataset folder holds, from its index.json (and the
// report of the preparation when present), with every shard opened and its safetensors header
// checked against the index (no tensor data is read).
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <map>
#include <optional>
#include <sstream>

#include "prepare.hpp"
#include "wanhost/errors.hpp"
#include "wanhost/kit/json_file.hpp"
#include "wanhost/kit/safetensors.hpp"

namespace fs = std::filesystem;

namespace wanhost::core::data {
namespace {

using Json = nlohmann::json;

// The guarded reader (regular files only; errors name the line and byte).
Json read_json(const fs::path& p) {
  return read_json_file(p.string());
}

// index.json values by JSON pointer, each type-checked: a malformed index is reported as
// "index.json, /samples/3/latent_shape: expected ...", never as a JSON library message.
struct IndexReader {
  fs::path file;
  [[noreturn]] void bad(const std::string& pointer, const std::string& what) const {
    throw FormatError(file.string() + ", " + pointer + ": " + what);
  }
  const Json& array(const Json& parent, const std::string& key, const std::string& ptr) const {
    if (!parent.is_object() || !parent.contains(key) || !parent[key].is_array())
      bad(ptr + "/" + key, "expected an array");
    return parent[key];
  }
  std::string string(const Json& parent, const std::string& key, const std::string& ptr) const {
    if (!parent.is_object() || !parent.contains(key) || !parent[key].is_string())
      bad(ptr + "/" + key, "expected a string");
    return parent[key].get<std::string>();
  }
  std::int64_t integer(const Json& parent, const std::string& key, const std::string& ptr,
                       std::int64_t min) const {
    if (!parent.is_object() || !parent.contains(key) || !parent[key].is_number_integer() ||
        parent[key].get<std::int64_t>() < min)
      bad(ptr + "/" + key, "expected an integer >= " + std::to_string(min));
    return parent[key].get<std::int64_t>();
  }
};

// Opens every shard (reading its safetensors header) and checks that each sample's tensors are
// there with the latent shape the index gives. Returns one line per problem.
std::vector<std::string> verify_shards(const fs::path& root, const Json& shards,
                                       const Json& samples, const IndexReader& r) {
  std::vector<std::string> problems;
  std::vector<std::optional<safetensors::File>> open(shards.size());
  for (std::size_t k = 0; k < shards.size(); ++k) {
    const std::string name = r.string(shards[k], "file", "/shards/" + std::to_string(k));
    const fs::path p = root / name;
    if (name.empty() || name.find('/') != std::string::npos || name[0] == '.') {
      problems.push_back("/shards/" + std::to_string(k) + "/file: '" + name +
                         "' is not a plain file name inside the dataset folder");
      continue;
    }
    std::error_code ec;
    if (!fs::exists(p, ec)) {
      problems.push_back(p.string() + ": missing");
      continue;
    }
    try {
      open[k] = safetensors::File::open(p.string());
    } catch (const std::exception& e) {
      problems.push_back(e.what());
    }
  }
  for (std::size_t i = 0; i < samples.size(); ++i) {
    const std::string ptr = "/samples/" + std::to_string(i);
    const auto k = r.integer(samples[i], "shard", ptr, 0);
    if (k >= static_cast<std::int64_t>(shards.size()))
      r.bad(ptr + "/shard", "there is no shard " + std::to_string(k));
    const auto& f = open[static_cast<std::size_t>(k)];
    if (!f) continue;  // reported above
    const Json& shape = r.array(samples[i], "latent_shape", ptr);
    for (const char* key : {"latent", "text"}) {
      const std::string tensor = r.string(samples[i], key, ptr);
      if (!f->contains(tensor)) {
        problems.push_back(f->path() + ": has no tensor '" + tensor + "' (index.json " + ptr + "/" +
                           key + ")");
      } else if (std::string(key) == "latent") {
        const auto& have = f->info(tensor).shape;
        if (Json(have) != shape)
          problems.push_back(f->path() + ": tensor '" + tensor + "' is " + Json(have).dump() +
                             ", index.json " + ptr + "/latent_shape says " + shape.dump());
      }
    }
  }
  return problems;
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
  const Json index = read_json(root / "index.json");
  const IndexReader r{root / "index.json"};
  if (!index.is_object() || index.value("format", "") != kDatasetFormat)
    r.bad("/format", std::string("expected \"") + kDatasetFormat + "\"");
  Json out;
  out["path"] = fs::absolute(root).lexically_normal().string();
  out["mode"] = index.value("mode", "");
  out["settings"] = index.value("settings", Json::object());
  out["latent_channels"] = index.value("latent_channels", 0);
  out["text_dim"] = index.value("text_dim", 0);
  const Json& samples = r.array(index, "samples", "");
  const Json& shards = r.array(index, "shards", "");
  out["shards"] = shards.size();
  out["videos"] = index.value("videos", 0);
  out["samples"] = samples.size();
  const std::vector<std::string> problems = verify_shards(root, shards, samples, r);
  out["problems"] = problems;

  Json shapes = Json::object();
  std::vector<std::int64_t> tokens;
  // Latent frame count -> [samples, pixel frames of the first of them (clips only)].
  std::map<std::int64_t, std::pair<std::int64_t, std::int64_t>> lengths;
  for (std::size_t i = 0; i < samples.size(); ++i) {
    const Json& s = samples[i];
    const std::string ptr = "/samples/" + std::to_string(i);
    const Json& shape = r.array(s, "latent_shape", ptr);
    if (shape.size() != 4 || !std::all_of(shape.begin(), shape.end(), [](const Json& d) {
          return d.is_number_integer() && d.get<std::int64_t>() > 0;
        }))
      r.bad(ptr + "/latent_shape",
            "expected 4 positive integers [channels, frames, height, width]");
    const std::string key = shape_text(shape);
    shapes[key] = shapes.value(key, 0) + 1;
    tokens.push_back(r.integer(s, "text_tokens", ptr, 0));
    auto& l = lengths[shape[1].get<std::int64_t>()];
    if (l.first++ == 0)
      l.second = s.contains("clip") ? r.integer(s["clip"], "frames", ptr + "/clip", 1) : 1;
  }
  out["latent_shapes"] = shapes;
  // Video lengths, shortest first: whole-video folders mix them (docs/data.md).
  Json frames = Json::array();
  for (const auto& [latent, l] : lengths)
    frames.push_back({{"latent_frames", latent}, {"frames", l.second}, {"count", l.first}});
  out["latent_frames"] = frames;
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
    const Json report = read_json(root / "report.json");
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
  if (st.value("whole_video", false)) {
    o << ", whole videos of " << st["min_frames"] << "-" << st["max_frames"] << " frames";
    if (st.value("fps", 0.0) > 0) o << " at " << st["fps"] << " fps";
  }
  if (st.contains("num_frames")) {
    o << ", clips of " << st["num_frames"] << " frames";
    if (st.value("fps", 0.0) > 0) o << " at " << st["fps"] << " fps";
  }
  o << "\n";
  o << "  samples     " << s["samples"] << " from " << s["videos"] << " videos in " << s["shards"]
    << " shard(s), " << (s["problems"].empty() ? "all verified" : "NOT all readable") << "\n";
  for (const auto& p : s["problems"]) o << "  PROBLEM     " << p.get<std::string>() << "\n";
  if (s.contains("input_videos"))
    o << "  inputs      " << s["input_videos"] << " file(s), " << s["skipped"].size()
      << " skipped\n";
  o << "  latents     ";
  bool first = true;
  for (auto it = s["latent_shapes"].begin(); it != s["latent_shapes"].end(); ++it) {
    o << (first ? "" : ", ") << "[" << it.key() << "] x " << it.value();
    first = false;
  }
  // The histogram of video lengths: latent frames (pixel frames) -> samples.
  if (s.contains("latent_frames") && !s["latent_frames"].empty()) {
    std::int64_t most = 1;
    for (const auto& b : s["latent_frames"]) most = std::max(most, b["count"].get<std::int64_t>());
    o << "\n  frames      latent (pixel) -> samples";
    for (const auto& b : s["latent_frames"]) {
      const std::string pixels = "(" + std::to_string(b["frames"].get<std::int64_t>()) + ")";
      char head[64];
      std::snprintf(head, sizeof head, "\n  %5lld %-6s ",
                    static_cast<long long>(b["latent_frames"].get<std::int64_t>()), pixels.c_str());
      const auto n = b["count"].get<std::int64_t>();
      o << head << std::string(static_cast<std::size_t>((n * 40 + most - 1) / most), '#') << " "
        << n;
    }
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
