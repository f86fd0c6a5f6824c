// `wanhost prepare`: a folder of videos with captions -> a latent dataset folder (docs/data.md).
//
//   videos --(FFmpeg, every core)--> RGB frames H x W --(video_autoencoder plugin)--> latents
//   captions --(text_encoder plugin)--> embeddings at their real token length
//
// The dataset folder holds prepare.json (the settings), shard-NNNNN.safetensors (a fixed group of
// input videos each: latents, text embeddings and, in the metadata, the sample records), index.json
// (every sample: shard, tensor names, caption, source, frame or clip, latent shape, token count)
// and report.json (counts, skipped inputs with the reason, throughput). Shards are written
// atomically and a re-run keeps every shard whose inputs and settings are unchanged.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace wanhost::core {
class PluginRegistry;
}

namespace wanhost::core::data {

inline constexpr const char* kDatasetFormat = "wanhost-latents";
inline constexpr int kDatasetVersion = 1;

struct PrepareOptions {
  std::string input, output, model;
  std::string mode;  // "frames" or "video"
  std::int64_t height = 240, width = 416;
  std::int64_t frames_per_video = 40;  // frames mode
  std::int64_t num_frames = 81;        // video mode: frames per clip (4k + 1)
  double fps = 0;                      // video mode: resample to this rate (0: source rate)
  std::int64_t clips_per_video = 1;    // video mode (0: as many as fit)
  // Video mode, --whole-video: each video is one clip of its own length from its first frame,
  // the largest 4k+1 frames <= max_frames; videos giving fewer than min_frames are skipped.
  bool whole_video = false;
  std::int64_t min_frames = 5, max_frames = 129;  // 129: 8 s at 16 fps, the reference's longest
  std::int64_t videos_per_shard = 32;
  std::string vae_plugin = "wan_vae", text_plugin = "umt5";
  std::string device = "auto";  // auto, cpu, cuda
  std::string dtype = "auto";   // auto (bf16 on cuda, fp32 on cpu), fp32, bf16
  std::int64_t workers = 0;     // decoding threads (0: every core)
  std::int64_t batch = 0;       // samples per VAE call (0: 8 frames or 1 clip)
  std::int64_t text_batch = 16;
  std::string progress = "auto";  // auto (bar on a TTY, else lines), bar, lines, none
  // Which of the mode-specific flags the user gave (to refuse those of the other mode).
  bool frames_per_video_given = false, num_frames_given = false, fps_given = false,
       clips_given = false, min_frames_given = false, max_frames_given = false;
};

// Checks the flags on their own (before touching any file): throws UsageError naming the flag.
void validate_options(const PrepareOptions& o);

struct PrepareSummary {
  std::int64_t videos = 0, prepared = 0, skipped = 0, samples = 0;
  std::int64_t shards = 0, shards_written = 0, shards_reused = 0;
  double seconds = 0, frames_per_second = 0;
};

// Runs the whole preparation. Throws UsageError (bad flags, missing folders, an output folder
// prepared with other settings) or std::runtime_error when no sample could be prepared (after
// writing report.json).
PrepareSummary prepare(PluginRegistry& registry, const PrepareOptions& o);

// `wanhost data inspect`: the summary of a dataset folder (counts, latent shapes, token-count
// histogram, and "problems": missing or unreadable shards, tensors the index names that a shard
// lacks) as JSON, and as text. A malformed index.json throws FormatError naming the pointer.
nlohmann::json inspect_dataset(const std::string& dir);
std::string describe_inspection(const nlohmann::json& summary);

}  // namespace wanhost::core::data
