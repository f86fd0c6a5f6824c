#include "prepare.hpp"

#include <sys/stat.h>
#include <unistd.h>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/core/InferenceMode.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <filesystem>
#include <map>
#include <mutex>
#include <optional>
#include <thread>

#include "../config/schema.hpp"
#include "../plugin/registry.hpp"
#include "../run/components.hpp"
#include "../run/resolve.hpp"
#include "../util/device_flag.hpp"
#include "../util/device_timing.hpp"
#include "../util/files.hpp"
#include "frame_plan.hpp"
#include "video_reader.hpp"
#include "wanhost/errors.hpp"
#include "wanhost/kit/json_file.hpp"
#include "wanhost/kit/safetensors.hpp"
#include "wanhost/log.hpp"

namespace fs = std::filesystem;

namespace wanhost::core::data {
namespace {

using Json = nlohmann::json;
using Clock = std::chrono::steady_clock;

// --whole-video cuts each video to 4k+1 frames: the Wan VAE keeps the first frame and compresses
// each following group of 4 (the --num-frames rule).
constexpr std::int64_t kTemporalRatio = 4;

std::string shard_name(std::int64_t k) {
  char buf[48];
  std::snprintf(buf, sizeof buf, "shard-%05lld.safetensors", static_cast<long long>(k));
  return buf;
}

// ---- inputs -------------------------------------------------------------------------------------

struct VideoTask {
  fs::path path;
  std::string rel;  // relative to the input folder, '/'-separated
  std::int64_t size = 0, mtime_ns = 0;
  std::string caption;
  std::string skip;  // set when the video is skipped before decoding (caption problems)
};

// Every regular file below `input` that is not a caption file, hidden, or inside `output`; sorted
// by relative path.
std::vector<VideoTask> scan_inputs(const fs::path& input, const fs::path& output) {
  std::vector<VideoTask> out;
  std::error_code ec;
  const fs::path out_abs = fs::weakly_canonical(output, ec);
  fs::recursive_directory_iterator it(input, fs::directory_options::skip_permission_denied, ec);
  if (ec) throw UsageError("--input " + input.string() + ": cannot list: " + ec.message());
  for (; it != fs::recursive_directory_iterator(); it.increment(ec)) {
    if (ec) throw UsageError("--input " + input.string() + ": cannot list: " + ec.message());
    const fs::path p = it->path();
    const std::string name = p.filename().string();
    if (!name.empty() && name[0] == '.') {
      if (it->is_directory()) it.disable_recursion_pending();
      continue;
    }
    if (it->is_directory() && fs::weakly_canonical(p, ec) == out_abs) {
      it.disable_recursion_pending();  // the dataset being written inside the input folder
      continue;
    }
    if (!it->is_regular_file() || CaptionFinder::is_caption_file(p)) continue;
    struct stat st {};
    if (::stat(p.c_str(), &st) != 0) continue;
    VideoTask t;
    t.path = p;
    t.rel = p.lexically_relative(input).generic_string();
    t.size = static_cast<std::int64_t>(st.st_size);
    t.mtime_ns = static_cast<std::int64_t>(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec;
    out.push_back(std::move(t));
  }
  std::sort(out.begin(), out.end(),
            [](const VideoTask& a, const VideoTask& b) { return a.rel < b.rel; });
  return out;
}

// ---- decoding (worker threads) ------------------------------------------------------------------

struct Decoded {
  std::string skip;   // why the video was skipped (empty: decoded)
  at::Tensor frames;  // uint8 [K, H, W, 3]: the distinct frames needed, in presentation order
  std::vector<std::vector<std::int64_t>> rows;  // per sample: rows of `frames`
  std::vector<Json> records;                    // per sample: frame or clip description
  Json video;                                   // what the probe found
  std::int64_t decoded = 0;                     // frames through the decoder
};

Decoded decode_video(const VideoTask& t, const PrepareOptions& o, int threads) {
  Decoded d;
  try {
    const VideoProbe p = probe_video(t.path.string());
    d.video = {{"codec", p.codec},     {"width", p.width}, {"height", p.height},
               {"frames", p.frames()}, {"fps", p.fps},     {"duration", p.duration()}};
    std::vector<std::int64_t> wanted;
    if (o.mode == "frames") {
      const auto idx = even_frames(p.frames(), o.frames_per_video);
      if (idx.empty()) {
        d.skip = "too short: " + std::to_string(p.frames()) + " frame(s), --frames-per-video " +
                 std::to_string(o.frames_per_video) + " needs at least as many";
        return d;
      }
      wanted = idx;
      for (std::size_t k = 0; k < idx.size(); ++k) {
        d.rows.push_back({static_cast<std::int64_t>(k)});
        d.records.push_back(
            {{"frame", idx[k]}, {"time", p.times[static_cast<std::size_t>(idx[k])]}});
      }
    } else {
      std::int64_t available = 0;
      const auto clips = o.whole_video
                             ? plan_whole_video(p.times, p.frame_duration, o.fps, o.min_frames,
                                                o.max_frames, kTemporalRatio, &available)
                             : plan_clips(p.times, p.frame_duration, o.num_frames, o.fps,
                                          o.clips_per_video, &available);
      if (clips.empty()) {
        char dur[32];
        std::snprintf(dur, sizeof dur, "%.3f", p.duration());
        d.skip =
            "too short: " + std::string(dur) + " s (" + std::to_string(p.frames()) +
            " frames) gives " + std::to_string(available) + " frame(s)" +
            (o.fps > 0 ? " at --fps " + Json(o.fps).dump() : std::string()) +
            (o.whole_video ? ", --whole-video needs --min-frames " + std::to_string(o.min_frames)
                           : ", a clip needs --num-frames " + std::to_string(o.num_frames));
        return d;
      }
      for (const auto& c : clips) wanted.insert(wanted.end(), c.frames.begin(), c.frames.end());
      std::sort(wanted.begin(), wanted.end());
      wanted.erase(std::unique(wanted.begin(), wanted.end()), wanted.end());
      for (const auto& c : clips) {
        std::vector<std::int64_t> r;
        for (std::int64_t f : c.frames)
          r.push_back(std::lower_bound(wanted.begin(), wanted.end(), f) - wanted.begin());
        d.rows.push_back(std::move(r));
        Json clip = {{"first", c.frames.front()},
                     {"last", c.frames.back()},
                     {"frames", static_cast<std::int64_t>(c.frames.size())},
                     {"start", c.start},
                     {"end", c.end},
                     {"fps", o.fps > 0 ? o.fps : p.fps}};
        if (o.whole_video) clip["available"] = available;  // frames the whole video gave
        d.records.push_back({{"clip", std::move(clip)}});
      }
    }
    DecodeStats stats;
    d.frames = decode_frames(t.path.string(), wanted, static_cast<int>(o.height),
                             static_cast<int>(o.width), threads, &stats);
    d.decoded = stats.decoded;
  } catch (const std::exception& e) {
    d = Decoded{};
    d.skip = e.what();
  }
  return d;
}

// Decodes the given tasks on `workers` threads, at most `window` videos ahead of the consumer.
class DecodePool {
 public:
  DecodePool(std::vector<const VideoTask*> tasks, const PrepareOptions& o, int workers,
             int codec_threads, std::size_t window)
      : tasks_(std::move(tasks)), o_(o), codec_threads_(codec_threads), window_(window) {
    for (int i = 0; i < workers; ++i) threads_.emplace_back([this] { work(); });
  }
  ~DecodePool() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    for (auto& t : threads_) t.join();
  }
  // The result of task `i` (in order: i = 0, 1, ...), waiting for it.
  Decoded take(std::size_t i) {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return done_.count(i) != 0; });
    Decoded d = std::move(done_.at(i));
    done_.erase(i);
    consumed_ = i + 1;
    cv_.notify_all();
    return d;
  }
  std::int64_t frames_decoded() const { return decoded_.load(); }

 private:
  void work() {
    for (;;) {
      std::size_t i = 0;
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock,
                 [&] { return stop_ || (next_ < tasks_.size() && next_ < consumed_ + window_); });
        if (stop_) return;
        i = next_++;
      }
      Decoded d = decode_video(*tasks_[i], o_, codec_threads_);
      decoded_ += d.decoded;
      {
        std::lock_guard<std::mutex> lock(mu_);
        done_.emplace(i, std::move(d));
      }
      cv_.notify_all();
    }
  }

  std::vector<const VideoTask*> tasks_;
  const PrepareOptions& o_;
  int codec_threads_;
  std::size_t window_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::size_t next_ = 0, consumed_ = 0;
  bool stop_ = false;
  std::map<std::size_t, Decoded> done_;
  std::atomic<std::int64_t> decoded_{0};
  std::vector<std::thread> threads_;
};

// ---- progress -----------------------------------------------------------------------------------

class Progress {
 public:
  Progress(const std::string& mode, std::int64_t total)
      : total_(total), start_(Clock::now()), last_(start_) {
    bar_ = mode == "bar" || (mode == "auto" && ::isatty(STDERR_FILENO));
    quiet_ = mode == "none";
  }
  void update(std::int64_t videos, std::int64_t samples, std::int64_t frames, bool final = false) {
    if (quiet_) return;
    const double t = seconds_since(start_);
    const double fps = t > 0 ? static_cast<double>(frames) / t : 0.0;
    char line[256];
    if (bar_) {
      constexpr int kWidth = 30;
      const double f = total_ > 0 ? static_cast<double>(videos) / static_cast<double>(total_) : 1;
      const int fill = static_cast<int>(f * kWidth);
      std::string bar(static_cast<std::size_t>(fill), '#');
      bar.resize(kWidth, '.');
      const double eta = f > 0 ? t * (1 - f) / f : 0;
      std::snprintf(line, sizeof line,
                    "\r[%s] %lld/%lld videos, %lld samples, %.1f frames/s, %.0f s, ETA %.0f s",
                    bar.c_str(), static_cast<long long>(videos), static_cast<long long>(total_),
                    static_cast<long long>(samples), fps, t, eta);
      std::fputs(line, stderr);
      if (final) std::fputs("\n", stderr);
      std::fflush(stderr);
      return;
    }
    if (!final && seconds_since(last_) < 10.0) return;
    last_ = Clock::now();
    logger()->info("prepare: {}/{} videos, {} samples, {:.1f} frames/s, {:.0f} s", videos, total_,
                   samples, fps, t);
  }

 private:
  std::int64_t total_;
  Clock::time_point start_, last_;
  bool bar_ = false, quiet_ = false;
};

// ---- encoders -----------------------------------------------------------------------------------

struct Encoders {
  std::unique_ptr<VideoAutoencoder> vae;
  std::unique_ptr<TextEncoder> text;
  c10::Device device{c10::kCPU};
  at::ScalarType dtype = at::kFloat;
};

Encoders load_encoders(PluginRegistry& reg, const PrepareOptions& o, c10::Device device,
                       at::ScalarType dtype) {
  Encoders e;
  e.device = device;
  e.dtype = dtype;
  const fs::path model(o.model);
  ComponentBuilder builder(reg);
  e.vae = builder.video_autoencoder(
      builder.standalone_config(o.vae_plugin, "video_autoencoder", "vae"));
  e.vae->load_weights((model / "vae").string());
  e.vae->to(device, dtype);
  e.vae->module().eval();
  e.text = builder.text_encoder(
      builder.standalone_config(o.text_plugin, "text_encoder", "text_encoder"));
  e.text->load((model / "text_encoder").string(), (model / "tokenizer").string());
  e.text->to(device, dtype);
  e.text->module().eval();
  const std::int64_t s = e.vae->spatial_ratio(), r = e.vae->temporal_ratio();
  if (s <= 0 || o.height % s != 0 || o.width % s != 0)
    throw UsageError("--height/--width " + std::to_string(o.height) + "x" +
                     std::to_string(o.width) + ": must be multiples of the VAE's spatial ratio " +
                     std::to_string(s));
  if (o.mode == "video" && o.whole_video && (r <= 0 || kTemporalRatio % r != 0))
    throw UsageError("--whole-video: videos are cut to " + std::to_string(kTemporalRatio) +
                     "k+1 frames, which this VAE (temporal ratio " + std::to_string(r) +
                     ") cannot encode; use --num-frames");
  if (o.mode == "video" && !o.whole_video && (r <= 0 || (o.num_frames - 1) % r != 0))
    throw UsageError("--num-frames " + std::to_string(o.num_frames) + ": must be " +
                     std::to_string(r) + "k+1 for this VAE (temporal ratio " + std::to_string(r) +
                     ")");
  return e;
}

// ---- shards -------------------------------------------------------------------------------------

Json settings_json(const PrepareOptions& o) {
  Json s = {{"mode", o.mode},
            {"height", o.height},
            {"width", o.width},
            {"videos_per_shard", o.videos_per_shard},
            {"vae_plugin", o.vae_plugin},
            {"text_plugin", o.text_plugin},
            {"model", fs::absolute(o.model).lexically_normal().string()}};
  if (o.mode == "frames") {
    s["frames_per_video"] = o.frames_per_video;
  } else if (o.whole_video) {
    // Written only in this mode, so that folders of clips keep the settings they always had.
    s["whole_video"] = true;
    s["min_frames"] = o.min_frames;
    s["max_frames"] = o.max_frames;
    s["fps"] = o.fps;
  } else {
    s["num_frames"] = o.num_frames;
    s["fps"] = o.fps;
    s["clips_per_video"] = o.clips_per_video;
  }
  return s;
}

// The flag that sets a settings key, for messages.
std::string flag_of(const std::string& key) {
  if (key == "model") return "--model";
  std::string f = "--" + key;
  std::replace(f.begin(), f.end(), '_', '-');
  return f;
}

Json sources_json(const std::vector<VideoTask>& tasks, std::size_t begin, std::size_t end) {
  Json s = Json::array();
  for (std::size_t i = begin; i < end; ++i)
    s.push_back({{"file", tasks[i].rel}, {"size", tasks[i].size}, {"mtime_ns", tasks[i].mtime_ns}});
  return s;
}

// Whether `path` is a finished shard of these inputs and settings.
bool shard_is_current(const fs::path& path, const std::string& sources,
                      const std::string& settings) {
  if (!fs::exists(path)) return false;
  try {
    const auto f = safetensors::File::open(path.string());
    const auto& m = f.metadata();
    const auto get = [&](const char* k) {
      auto it = m.find(k);
      return it == m.end() ? std::string() : it->second;
    };
    return get("format") == kDatasetFormat && get("sources") == sources &&
           get("settings") == settings;
  } catch (const std::exception& e) {
    logger()->warn("prepare: {} is damaged and will be written again: {}", path.string(), e.what());
    return false;
  }
}

struct ShardBuilder {
  std::map<std::string, at::Tensor> tensors;
  Json samples = Json::array(), videos = Json::array(), skipped = Json::array();
  std::int64_t latents = 0;
};

at::Tensor to_pixels(
    const at::Tensor& rgb) {  // uint8 [K, H, W, 3] -> float [K, 3, H, W] in [-1, 1]
  return rgb.permute({0, 3, 1, 2}).to(at::kFloat).div_(127.5).sub_(1.0);
}

// Encodes one decoded video's samples into the shard.
void add_video(ShardBuilder& b, Encoders& e, const VideoTask& t, const Decoded& d,
               const PrepareOptions& o, at::ScalarType store, std::int64_t text_slot) {
  const at::Tensor px = to_pixels(d.frames);
  const std::int64_t batch = o.batch > 0 ? o.batch : (o.mode == "frames" ? 8 : 1);
  const auto n = static_cast<std::int64_t>(d.rows.size());
  for (std::int64_t s0 = 0; s0 < n; s0 += batch) {
    const std::int64_t s1 = std::min(n, s0 + batch);
    std::vector<at::Tensor> inputs;
    for (std::int64_t s = s0; s < s1; ++s) {
      const auto& rows = d.rows[static_cast<std::size_t>(s)];
      inputs.push_back(px.index_select(0, at::tensor(rows, at::kLong)).permute({1, 0, 2, 3}));
    }
    at::Tensor lat;
    {
      c10::InferenceMode guard;
      lat = e.vae->encode(at::stack(inputs).to(e.device, e.dtype)).to(at::kCPU, store);
    }
    for (std::int64_t s = s0; s < s1; ++s) {
      const std::string key = "latent." + std::to_string(b.latents++);
      at::Tensor one = lat[s - s0].contiguous().clone();
      Json rec = d.records[static_cast<std::size_t>(s)];
      rec["latent"] = key;
      rec["text"] = "text." + std::to_string(text_slot);
      rec["source"] = t.rel;
      rec["caption"] = t.caption;
      rec["latent_shape"] = one.sizes().vec();
      b.samples.push_back(rec);
      b.tensors.emplace(key, std::move(one));
    }
  }
}

// Encodes the captions of the shard's prepared videos (b.videos[*].caption) in batches.
void add_texts(ShardBuilder& b, Encoders& e, const PrepareOptions& o, at::ScalarType store) {
  const auto n = static_cast<std::int64_t>(b.videos.size());
  std::vector<std::int64_t> tokens(static_cast<std::size_t>(n), 0);
  for (std::int64_t v0 = 0; v0 < n; v0 += o.text_batch) {
    const std::int64_t v1 = std::min(n, v0 + o.text_batch);
    std::vector<std::string> texts;
    for (std::int64_t v = v0; v < v1; ++v)
      texts.push_back(b.videos[static_cast<std::size_t>(v)]["caption"].get<std::string>());
    TextEmbeddings emb;
    {
      c10::InferenceMode guard;
      emb = e.text->encode(texts);
    }
    const at::Tensor hidden = emb.hidden.to(at::kCPU, store);
    const at::Tensor lengths = emb.lengths.to(at::kCPU, at::kLong);
    for (std::int64_t v = v0; v < v1; ++v) {
      const std::int64_t len = lengths[v - v0].item<std::int64_t>();
      if (len < 1 || len > hidden.size(1))
        throw std::runtime_error("text encoder plugin '" + o.text_plugin + "' returned length " +
                                 std::to_string(len) + " for a text of " +
                                 std::to_string(hidden.size(1)) + " rows");
      b.tensors.emplace("text." + std::to_string(v),
                        hidden[v - v0].slice(0, 0, len).contiguous().clone());
      tokens[static_cast<std::size_t>(v)] = len;
      b.videos[static_cast<std::size_t>(v)]["text_tokens"] = len;
    }
  }
  if (n > 0) b.tensors.emplace("text_lengths", at::tensor(tokens, at::kLong));
  for (auto& s : b.samples) {
    const std::int64_t v = std::stoll(s["text"].get<std::string>().substr(5));
    s["text_tokens"] = tokens[static_cast<std::size_t>(v)];
  }
}

// Reads a finished shard's records.
struct ShardRecords {
  Json samples, videos, skipped;
};

ShardRecords read_shard(const fs::path& path) {
  const auto f = safetensors::File::open(path.string());
  const auto& m = f.metadata();
  ShardRecords r;
  try {
    r.samples = Json::parse(m.at("samples"));
    r.videos = Json::parse(m.at("videos"));
    r.skipped = Json::parse(m.at("skipped"));
  } catch (const std::exception& e) {
    throw FormatError(path.string() + ": shard metadata is incomplete or invalid: " + e.what());
  }
  return r;
}

void check_output_settings(const fs::path& out, const Json& settings) {
  const fs::path pj = out / "prepare.json";
  if (!fs::exists(pj)) return;
  Json old;
  try {
    old = read_json_file(pj.string());
  } catch (const std::exception& e) {
    throw UsageError("--output " + out.string() + ": " + pj.string() +
                     " is not valid JSON; remove the folder or choose another --output (" +
                     e.what() + ")");
  }
  const Json prev = old.is_object() && old.contains("settings") && old["settings"].is_object()
                        ? old["settings"]
                        : Json::object();
  std::string diff;
  const auto text = [](const Json& v) { return v.is_null() ? std::string("unset") : v.dump(); };
  Json keys = settings;
  keys.update(prev);  // keys of either side: a setting dropped now is a difference too
  for (auto it = keys.begin(); it != keys.end(); ++it) {
    const Json before = prev.value(it.key(), Json()), now = settings.value(it.key(), Json());
    if (before != now)
      diff += (diff.empty() ? "" : ", ") + flag_of(it.key()) + " " + text(before) + " then, " +
              text(now) + " now";
  }
  if (!diff.empty())
    throw UsageError("--output " + out.string() +
                     ": this folder was prepared with other settings (" + diff +
                     "); choose another --output or remove the folder");
}

// The registry's lookup, as a usage error naming the flag.
void require_plugin(const PluginRegistry& reg, const std::string& flag, const std::string& name,
                    const std::string& kind) {
  try {
    reg.require(name, kind, "");
  } catch (const ConfigError& e) {
    std::string why = e.what();
    const std::string prefix = "config error at /: ";
    if (why.rfind(prefix, 0) == 0) why = why.substr(prefix.size());
    throw UsageError(flag + " " + name + ": " + why);
  }
}

}  // namespace

void validate_options(const PrepareOptions& o) {
  if (o.mode != "frames" && o.mode != "video")
    throw UsageError("--mode " + o.mode + ": expected frames or video");
  for (const auto& [flag, v] :
       {std::pair<const char*, std::int64_t>{"--height", o.height}, {"--width", o.width}})
    if (v < 16 || v % 16 != 0)
      throw UsageError(std::string(flag) + " " + std::to_string(v) +
                       ": must be a positive multiple of 16 (8x VAE compression times the 2x2 "
                       "patches), e.g. 240x416 or 480x832");
  if (o.mode == "frames") {
    if (o.whole_video || o.num_frames_given || o.fps_given || o.clips_given || o.min_frames_given ||
        o.max_frames_given)
      throw UsageError(std::string(o.whole_video        ? "--whole-video"
                                   : o.num_frames_given ? "--num-frames"
                                   : o.fps_given        ? "--fps"
                                   : o.clips_given      ? "--clips-per-video"
                                   : o.min_frames_given ? "--min-frames"
                                                        : "--max-frames") +
                       ": applies to --mode video only (frames mode takes --frames-per-video)");
    if (o.frames_per_video < 1)
      throw UsageError("--frames-per-video " + std::to_string(o.frames_per_video) +
                       ": must be at least 1");
  } else {
    if (o.frames_per_video_given)
      throw UsageError(
          "--frames-per-video: applies to --mode frames only (video mode takes --num-frames)");
    if (o.whole_video && (o.num_frames_given || o.clips_given))
      throw UsageError(std::string(o.num_frames_given ? "--num-frames" : "--clips-per-video") +
                       ": cannot be combined with --whole-video (each video becomes one clip of "
                       "its own length; --max-frames caps it)");
    if (!o.whole_video && (o.min_frames_given || o.max_frames_given))
      throw UsageError(std::string(o.min_frames_given ? "--min-frames" : "--max-frames") +
                       ": applies to --whole-video only (clips take --num-frames)");
    const auto four_k_plus_one = [](const char* flag, std::int64_t v) {
      if (v < 1 || (v - 1) % 4 != 0)
        throw UsageError(std::string(flag) + " " + std::to_string(v) +
                         ": must be 4k+1 (1, 5, 9, ..., 81): the VAE keeps the first frame and "
                         "compresses each following group of 4");
    };
    if (o.whole_video) {
      four_k_plus_one("--min-frames", o.min_frames);
      four_k_plus_one("--max-frames", o.max_frames);
      if (o.min_frames > o.max_frames)
        throw UsageError("--min-frames " + std::to_string(o.min_frames) +
                         ": must not exceed --max-frames " + std::to_string(o.max_frames));
    } else {
      four_k_plus_one("--num-frames", o.num_frames);
    }
    if (!(o.fps >= 0) || !std::isfinite(o.fps))
      throw UsageError("--fps " + Json(o.fps).dump() + ": must be > 0 (or 0: the source rate)");
    if (o.clips_per_video < 0)
      throw UsageError("--clips-per-video " + std::to_string(o.clips_per_video) +
                       ": must be >= 0 (0: as many as fit)");
  }
  if (o.videos_per_shard < 1)
    throw UsageError("--videos-per-shard " + std::to_string(o.videos_per_shard) +
                     ": must be at least 1");
  if (o.workers < 0) throw UsageError("--workers " + std::to_string(o.workers) + ": must be >= 0");
  if (o.batch < 0) throw UsageError("--batch " + std::to_string(o.batch) + ": must be >= 0");
  if (o.text_batch < 1)
    throw UsageError("--text-batch " + std::to_string(o.text_batch) + ": must be at least 1");
  if (o.device != "auto" && o.device != "cpu" && o.device != "cuda")
    throw UsageError("--device " + o.device + ": expected auto, cpu or cuda");
  if (o.dtype != "auto" && o.dtype != "fp32" && o.dtype != "bf16")
    throw UsageError("--dtype " + o.dtype + ": expected auto, fp32 or bf16");
}

PrepareSummary prepare(PluginRegistry& registry, const PrepareOptions& o) {
  validate_options(o);
  const auto start = Clock::now();
  const fs::path input(o.input), output(o.output), model(o.model);
  if (!fs::is_directory(input)) throw UsageError("--input " + o.input + ": not a folder");
  if (fs::weakly_canonical(input) == fs::weakly_canonical(output))
    throw UsageError("--output " + o.output + ": must not be the --input folder");
  if (!fs::is_directory(model))
    throw UsageError("--model " + o.model +
                     ": not a folder (expected a Diffusers pipeline folder with vae/, "
                     "text_encoder/ and tokenizer/)");
  for (const char* sub : {"vae", "text_encoder", "tokenizer"})
    if (!fs::is_directory(model / sub))
      throw UsageError("--model " + o.model + ": no " + sub +
                       "/ folder (expected a Diffusers pipeline folder with vae/, text_encoder/ "
                       "and tokenizer/)");
  // Fail on unknown or wrong-kind plugins before any work.
  require_plugin(registry, "--vae-plugin", o.vae_plugin, "video_autoencoder");
  require_plugin(registry, "--text-plugin", o.text_plugin, "text_encoder");

  const c10::Device device = device_for_flag(o.device);
  const at::ScalarType dtype =
      o.dtype == "bf16" || (o.dtype == "auto" && device.is_cuda()) ? at::kBFloat16 : at::kFloat;

  install_ffmpeg_log();
  std::vector<VideoTask> tasks = scan_inputs(input, output);
  if (tasks.empty())
    throw UsageError("--input " + o.input + ": no video files (every file is a caption file)");
  const CaptionFinder captions(input);
  for (const auto& p : captions.problems()) logger()->warn("prepare: {}", p);
  for (auto& t : tasks) {
    auto c = captions.find(t.path, &t.skip);
    if (c) t.caption = *c;
  }

  fs::create_directories(output);
  const Json settings = settings_json(o);
  check_output_settings(output, settings);
  write_file_atomic(
      (output / "prepare.json").string(),
      Json{{"format", kDatasetFormat}, {"version", kDatasetVersion}, {"settings", settings}}.dump(
          2) +
          "\n");

  // Shard k = videos [k * V, (k + 1) * V) of the sorted inputs.
  const auto per = static_cast<std::size_t>(o.videos_per_shard);
  const std::size_t num_shards = (tasks.size() + per - 1) / per;
  const std::string settings_text = settings.dump();
  std::vector<std::size_t> todo;
  std::vector<std::string> sources(num_shards);
  for (std::size_t k = 0; k < num_shards; ++k) {
    sources[k] = sources_json(tasks, k * per, std::min(tasks.size(), (k + 1) * per)).dump();
    if (!shard_is_current(output / shard_name(static_cast<std::int64_t>(k)), sources[k],
                          settings_text))
      todo.push_back(k);
  }
  // Shards past the end belong to an earlier, larger input folder.
  for (std::size_t k = num_shards;; ++k) {
    const fs::path stale = output / shard_name(static_cast<std::int64_t>(k));
    if (!fs::exists(stale)) break;
    logger()->info("prepare: removing {} (the input folder now has fewer videos)", stale.string());
    fs::remove(stale);
  }
  logger()->info(
      "prepare: {} video file(s) in {}, {} shard(s) of {} video(s): {} to write, {} "
      "already done; {} mode {}x{}; {}",
      tasks.size(), o.input, num_shards, per, todo.size(), num_shards - todo.size(), o.mode,
      o.height, o.width, ffmpeg_versions());

  std::int64_t frames_decoded = 0, frames_encoded = 0;
  double decode_seconds = 0;
  if (!todo.empty()) {
    Encoders enc = load_encoders(registry, o, device, dtype);
    logger()->info("prepare: encoders {} + {} on {} ({})", o.vae_plugin, o.text_plugin,
                   device.str(), dtype == at::kBFloat16 ? "bf16" : "fp32");
    std::vector<const VideoTask*> work;
    for (std::size_t k : todo)
      for (std::size_t i = k * per; i < std::min(tasks.size(), (k + 1) * per); ++i)
        if (tasks[i].skip.empty()) work.push_back(&tasks[i]);
    const int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
    const int workers = static_cast<int>(std::clamp<std::int64_t>(
        o.workers > 0 ? o.workers : cores, 1, std::max<std::int64_t>(1, work.size())));
    const int codec_threads = std::max(1, cores / workers);
    Progress progress(o.progress, static_cast<std::int64_t>(work.size()));
    const auto decode_start = Clock::now();
    DecodePool pool(work, o, workers, codec_threads, static_cast<std::size_t>(2 * workers + 2));
    std::size_t taken = 0;
    std::int64_t samples_done = 0;
    for (std::size_t k : todo) {
      ShardBuilder b;
      for (std::size_t i = k * per; i < std::min(tasks.size(), (k + 1) * per); ++i) {
        const VideoTask& t = tasks[i];
        if (!t.skip.empty()) {
          b.skipped.push_back({{"file", t.rel}, {"reason", t.skip}});
          continue;
        }
        const Decoded d = pool.take(taken++);
        if (!d.skip.empty()) {
          b.skipped.push_back({{"file", t.rel}, {"reason", d.skip}});
        } else {
          const auto slot = static_cast<std::int64_t>(b.videos.size());
          const std::int64_t before = b.latents;
          add_video(b, enc, t, d, o, dtype, slot);
          samples_done += b.latents - before;
          frames_encoded += d.frames.size(0);
          Json v = d.video;
          v["file"] = t.rel;
          v["caption"] = t.caption;
          v["text"] = "text." + std::to_string(slot);
          v["samples"] = b.latents - before;
          b.videos.push_back(v);
        }
        progress.update(static_cast<std::int64_t>(taken), samples_done, pool.frames_decoded());
      }
      add_texts(b, enc, o, dtype);
      const fs::path path = output / shard_name(static_cast<std::int64_t>(k));
      safetensors::save(path.string(), b.tensors,
                        {{"format", kDatasetFormat},
                         {"version", std::to_string(kDatasetVersion)},
                         {"settings", settings_text},
                         {"sources", sources[k]},
                         {"samples", b.samples.dump()},
                         {"videos", b.videos.dump()},
                         {"skipped", b.skipped.dump()},
                         {"dtype", dtype == at::kBFloat16 ? "bf16" : "fp32"},
                         {"vae_plugin", o.vae_plugin},
                         {"text_plugin", o.text_plugin}});
      logger()->debug("prepare: wrote {} ({} samples)", path.string(), b.samples.size());
    }
    progress.update(static_cast<std::int64_t>(taken), samples_done, pool.frames_decoded(), true);
    frames_decoded = pool.frames_decoded();
    decode_seconds = seconds_since(decode_start);
  }

  // index.json and report.json from every shard's records.
  Json index_samples = Json::array(), shards = Json::array(), skipped = Json::array();
  Json latent_shapes = Json::object();
  std::int64_t prepared = 0, text_dim = 0, channels = 0;
  for (std::size_t k = 0; k < num_shards; ++k) {
    const std::string name = shard_name(static_cast<std::int64_t>(k));
    const ShardRecords r = read_shard(output / name);
    for (auto s : r.samples) {
      s["shard"] = static_cast<std::int64_t>(k);
      channels = s["latent_shape"][0].get<std::int64_t>();
      index_samples.push_back(std::move(s));
    }
    for (const auto& s : r.skipped) skipped.push_back(s);
    prepared += static_cast<std::int64_t>(r.videos.size());
    if (text_dim == 0 && !r.videos.empty()) {
      const auto f = safetensors::File::open((output / name).string());
      text_dim = f.info(r.videos[0]["text"].get<std::string>()).shape.at(1);
    }
    shards.push_back({{"file", name},
                      {"videos", r.videos},
                      {"samples", static_cast<std::int64_t>(r.samples.size())},
                      {"skipped", static_cast<std::int64_t>(r.skipped.size())}});
  }
  PrepareSummary sum;
  sum.videos = static_cast<std::int64_t>(tasks.size());
  sum.prepared = prepared;
  sum.skipped = static_cast<std::int64_t>(skipped.size());
  sum.samples = static_cast<std::int64_t>(index_samples.size());
  sum.shards = static_cast<std::int64_t>(num_shards);
  sum.shards_written = static_cast<std::int64_t>(todo.size());
  sum.shards_reused = sum.shards - sum.shards_written;
  sum.seconds = seconds_since(start);
  sum.frames_per_second =
      decode_seconds > 0 ? static_cast<double>(frames_decoded) / decode_seconds : 0.0;

  Json report = {
      {"input", fs::absolute(input).lexically_normal().string()},
      {"videos", sum.videos},
      {"prepared", sum.prepared},
      {"skipped_count", sum.skipped},
      {"skipped", skipped},
      {"samples", sum.samples},
      {"shards",
       {{"total", sum.shards}, {"written", sum.shards_written}, {"reused", sum.shards_reused}}},
      {"caption_problems", captions.problems()},
      {"frames_decoded", frames_decoded},
      {"frames_encoded", frames_encoded},
      {"decode_seconds", decode_seconds},
      {"frames_per_second", sum.frames_per_second},
      {"seconds", sum.seconds},
      {"device", device.str()},
      {"dtype", dtype == at::kBFloat16 ? "bf16" : "fp32"}};
  write_file_atomic((output / "report.json").string(), report.dump(2) + "\n");
  for (const auto& s : skipped)
    logger()->warn("prepare: skipped {}: {}", s["file"].get<std::string>(),
                   s["reason"].get<std::string>());
  if (sum.samples == 0)
    throw std::runtime_error("prepare: nothing could be prepared: all " +
                             std::to_string(sum.videos) + " input file(s) were skipped (see " +
                             (output / "report.json").string() + ")");
  {
    Json index = {{"format", kDatasetFormat},
                  {"version", kDatasetVersion},
                  {"mode", o.mode},
                  {"settings", settings},
                  {"latent_channels", channels},
                  {"text_dim", text_dim},
                  {"videos", sum.prepared},
                  {"shards", shards},
                  {"samples", index_samples}};
    write_file_atomic((output / "index.json").string(), index.dump(1) + "\n");
  }
  logger()->info(
      "prepare: {} samples from {} of {} videos ({} skipped) in {} shard(s) ({} written, {} "
      "kept); decoded {} frames at {:.1f} frames/s; {:.1f} s",
      sum.samples, sum.prepared, sum.videos, sum.skipped, sum.shards, sum.shards_written,
      sum.shards_reused, frames_decoded, sum.frames_per_second, sum.seconds);
  return sum;
}

}  // namespace wanhost::core::data
