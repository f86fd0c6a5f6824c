// Data source plugin "latent_dataset": serves the samples of a dataset folder written by
// `wanhost prepare` (format in docs/data.md).
//
// The host owns the sample order (seeded permutation per stage and epoch, split over data-parallel
// ranks, resumed from the step counter), so this source only answers "sample i": index.json is
// read once at start (shard, tensor names, latent shape and caption of every sample), grid(i)
// comes from it without touching a shard, and get(i) copies two tensors out of a memory-mapped
// shard. A few shards stay open (least recently used are closed first).
#include <sys/stat.h>

#include <ATen/ATen.h>

#include <fstream>
#include <list>
#include <map>
#include <mutex>
#include <sstream>

#include "wanhost/kit/json_file.hpp"
#include "wanhost/kit/safetensors.hpp"
#include "wanhost/log.hpp"
#include "wanhost/plugin.hpp"

namespace wanhost::plugins::latent_dataset {
namespace {

using wanhost::FormatError;
using wanhost::Json;
namespace st = wanhost::safetensors;

constexpr const char* kFormat = "wanhost-latents";
constexpr int kVersion = 1;

struct Entry {
  std::int64_t shard = 0;
  std::string latent, text, caption;
  std::int64_t channels = 0, frames = 0, height = 0, width = 0;
};

std::string join(const std::string& dir, const std::string& name) {
  return dir.empty() || dir.back() == '/' ? dir + name : dir + "/" + name;
}

bool is_dir(const std::string& p) {
  struct stat s {};
  return ::stat(p.c_str(), &s) == 0 && S_ISDIR(s.st_mode);
}

class LatentDataset final : public wanhost::DataSource {
 public:
  explicit LatentDataset(const wanhost::PluginConfig& cfg)
      : dir_(cfg.get<std::string>("path")),
        open_files_(static_cast<std::size_t>(cfg.get<std::int64_t>("open_files"))) {
    if (dir_.empty())
      cfg.fail("path", "required: the dataset folder written by `wanhost prepare --output DIR`");
    if (!is_dir(dir_)) cfg.fail("path", "'" + dir_ + "' is not a folder");
    index_path_ = join(dir_, "index.json");
    struct stat st {};
    if (::lstat(index_path_.c_str(), &st) != 0)
      cfg.fail("path", "'" + dir_ +
                           "' has no index.json: not a dataset folder of `wanhost prepare`, or "
                           "its preparation has not finished (run it again to resume)");
    const Json index = wanhost::read_json_file(index_path_);  // FormatError names file and byte
    read_index(index);
    const std::string want = cfg.get<std::string>("mode");
    if (want != "any" && want != mode_)
      cfg.fail("mode", "'" + dir_ + "' was prepared in " + mode_ + " mode, not " + want);
    const auto max = cfg.get<std::int64_t>("max_samples");
    if (max > 0 && max < static_cast<std::int64_t>(entries_.size()))
      entries_.resize(static_cast<std::size_t>(max));
  }

  std::int64_t size() const override { return static_cast<std::int64_t>(entries_.size()); }

  wanhost::Sample get(std::int64_t index) override {
    const Entry& e = entry(index);
    std::lock_guard<std::mutex> lock(mu_);
    const st::File& f = shard(e.shard);
    wanhost::Sample s;
    s.latent = f.load(e.latent);
    s.text = f.load(e.text);
    const std::vector<std::int64_t> want{e.channels, e.frames, e.height, e.width};
    if (s.latent.sizes().vec() != want)
      throw FormatError(f.path() + ": tensor " + e.latent + " has shape " +
                        c10::str(s.latent.sizes()) + ", index.json says " +
                        c10::str(c10::IntArrayRef(want)));
    if (s.text.dim() != 2 || s.text.size(0) < 1)
      throw FormatError(f.path() + ": tensor " + e.text + " has shape " + c10::str(s.text.sizes()) +
                        ", expected [tokens, dim]");
    s.latent = s.latent.to(at::kFloat);
    s.text = s.text.to(at::kFloat);
    s.caption = e.caption;
    s.index = index;
    return s;
  }

  wanhost::PackSegment grid(std::int64_t index) override {
    const Entry& e = entry(index);
    return wanhost::PackSegment{0, e.frames, e.height, e.width};
  }

  std::string describe() const override {
    std::ostringstream o;
    o << "latent dataset " << dir_ << ": " << entries_.size()
      << (mode_ == "frames" ? " frames" : " clips") << " from " << videos_ << " videos in "
      << shards_.size() << " shard(s)";
    if (!entries_.empty()) {
      // Latent frame count -> samples: whole-video folders mix lengths (only the packed
      // collator, or micro batch 1, takes them).
      std::map<std::int64_t, std::int64_t> frames;
      for (const Entry& e : entries_) ++frames[e.frames];
      const Entry& e = entries_.front();
      o << ", latent [" << e.channels << ", ";
      if (frames.size() == 1)
        o << e.frames;
      else
        o << frames.begin()->first << "-" << frames.rbegin()->first;
      o << ", " << e.height << ", " << e.width << "]";
      o << ", latent frames {";
      for (auto it = frames.begin(); it != frames.end(); ++it)
        o << (it == frames.begin() ? "" : ", ") << it->first << ": " << it->second;
      o << "}";
    }
    o << ", text dim " << text_dim_;
    return o.str();
  }

 private:
  [[noreturn]] void bad(const std::string& pointer, const std::string& why) const {
    throw FormatError(index_path_ + " at " + pointer + ": " + why);
  }

  void read_index(const Json& index) {
    if (!index.is_object() || index.value("format", "") != kFormat)
      bad("/format", std::string("expected \"") + kFormat + "\"");
    if (!index.contains("version") || !index["version"].is_number_integer())
      bad("/version", "missing");
    if (index["version"].get<int>() > kVersion)
      bad("/version", "version " + index["version"].dump() +
                          " was written by a newer wanhost (this plugin reads version " +
                          std::to_string(kVersion) + ")");
    mode_ = index.value("mode", "");
    if (mode_ != "frames" && mode_ != "video") bad("/mode", "expected \"frames\" or \"video\"");
    videos_ = index.value("videos", std::int64_t{0});
    text_dim_ = index.value("text_dim", std::int64_t{0});
    const Json& shards = index.contains("shards") ? index["shards"] : Json();
    if (!shards.is_array()) bad("/shards", "expected an array");
    for (std::size_t k = 0; k < shards.size(); ++k) {
      const Json& s = shards[k];
      if (!s.is_object() || !s.contains("file") || !s["file"].is_string())
        bad("/shards/" + std::to_string(k) + "/file", "expected a file name");
      const std::string name = s["file"].get<std::string>();
      if (name.empty() || name.find('/') != std::string::npos || name[0] == '.')
        bad("/shards/" + std::to_string(k) + "/file",
            "'" + name + "' is not a plain file name inside the dataset folder");
      shards_.push_back(join(dir_, name));
    }
    const Json& samples = index.contains("samples") ? index["samples"] : Json();
    if (!samples.is_array()) bad("/samples", "expected an array");
    entries_.reserve(samples.size());
    for (std::size_t i = 0; i < samples.size(); ++i) {
      const Json& s = samples[i];
      const std::string ptr = "/samples/" + std::to_string(i);
      if (!s.is_object()) bad(ptr, "expected an object");
      Entry e;
      const auto str = [&](const char* key) {
        if (!s.contains(key) || !s[key].is_string()) bad(ptr + "/" + key, "expected a string");
        return s[key].get<std::string>();
      };
      e.latent = str("latent");
      e.text = str("text");
      e.caption = str("caption");
      if (!s.contains("shard") || !s["shard"].is_number_integer() || s["shard"].get<long>() < 0 ||
          s["shard"].get<std::size_t>() >= shards_.size())
        bad(ptr + "/shard", "expected the number of an entry of /shards");
      e.shard = s["shard"].get<std::int64_t>();
      const Json& shape = s.contains("latent_shape") ? s["latent_shape"] : Json();
      if (!shape.is_array() || shape.size() != 4)
        bad(ptr + "/latent_shape", "expected [channels, frames, height, width]");
      for (const auto& d : shape)
        if (!d.is_number_integer() || d.get<long>() < 1)
          bad(ptr + "/latent_shape", "expected positive integers");
      e.channels = shape[0].get<std::int64_t>();
      e.frames = shape[1].get<std::int64_t>();
      e.height = shape[2].get<std::int64_t>();
      e.width = shape[3].get<std::int64_t>();
      entries_.push_back(std::move(e));
    }
  }

  const Entry& entry(std::int64_t index) const {
    if (index < 0 || index >= size())
      throw std::out_of_range("latent_dataset: sample " + std::to_string(index) +
                              " is outside [0, " + std::to_string(size()) + ")");
    return entries_[static_cast<std::size_t>(index)];
  }

  // The open shard `k`, opening it (and closing the least recently used) when needed.
  const st::File& shard(std::int64_t k) {
    auto it = open_.find(k);
    if (it != open_.end()) {
      lru_.splice(lru_.begin(), lru_, it->second.second);
      return it->second.first;
    }
    st::File f = st::File::open(shards_[static_cast<std::size_t>(k)]);
    if (open_.size() >= open_files_) {
      open_.erase(lru_.back());
      lru_.pop_back();
    }
    lru_.push_front(k);
    return open_.emplace(k, std::make_pair(std::move(f), lru_.begin())).first->second.first;
  }

  std::string dir_, index_path_, mode_;
  std::size_t open_files_;
  std::int64_t videos_ = 0, text_dim_ = 0;
  std::vector<std::string> shards_;
  std::vector<Entry> entries_;
  std::mutex mu_;
  std::list<std::int64_t> lru_;  // most recently used first
  std::map<std::int64_t, std::pair<st::File, std::list<std::int64_t>::iterator>> open_;
};

void factories(wanhost::PluginFactories& f) {
  f.create_data_source =
      [](const wanhost::PluginConfig& cfg) -> std::unique_ptr<wanhost::DataSource> {
    return std::make_unique<LatentDataset>(cfg);
  };
}

}  // namespace
}  // namespace wanhost::plugins::latent_dataset

WANHOST_PLUGIN("latent_dataset", "0.1.0", wanhost::plugins::latent_dataset::factories)
