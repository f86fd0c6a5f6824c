// Which frames of a video become samples, and where captions come from. Pure functions of the
// probe results and the options, so they are unit-tested without videos.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace wanhost::core::data {

// Frames mode: `count` evenly spaced presentation indices over [0, total - 1] (the reference's
// int(linspace(0, total - 1, count)), i.e. rounded down). Needs total >= count (else empty).
std::vector<std::int64_t> even_frames(std::int64_t total, std::int64_t count);

struct ClipPlan {
  std::vector<std::int64_t> frames;  // presentation indices, one per clip frame (may repeat)
  double start = 0, end = 0;         // seconds: first frame's time, last frame's time + 1/fps
};

// Video mode: clips of `num_frames` frames. With fps > 0 the video is resampled to that rate
// (target frame j at time j / fps shows the source frame on screen then); with fps == 0 every
// source frame is used. Of the M resampled frames, `clips` (0: as many as fit) non-overlapping
// clips are taken, spread evenly from the start to the end (one clip: from the start). Returns no
// clip when M < num_frames; `available` receives M.
std::vector<ClipPlan> plan_clips(const std::vector<double>& times, double frame_duration,
                                 std::int64_t num_frames, double fps, std::int64_t clips,
                                 std::int64_t* available = nullptr);

// Video mode with --whole-video: the video as one clip, resampled as plan_clips does, from its
// first frame, of the largest `multiple`k+1 frames <= min(M, max_frames) (the frames past that are
// dropped from the end). Returns no clip when that is fewer than `min_frames`; `available`
// receives M. The Wan VAE's `multiple` is 4 (first frame alone, then groups of 4).
std::vector<ClipPlan> plan_whole_video(const std::vector<double>& times, double frame_duration,
                                       double fps, std::int64_t min_frames, std::int64_t max_frames,
                                       std::int64_t multiple = 4,
                                       std::int64_t* available = nullptr);

// Captions of the videos under an input folder, from (first match wins):
//   <dir>/<stem>.txt or <dir>/<name>.txt   the whole file;
//   <dir>/<stem>.json or <dir>/<name>.json its "caption" string;
//   <input>/captions.jsonl                 lines {"file": relative path or file name, "caption"}.
// Captions are trimmed and their runs of white space collapsed to one space.
class CaptionFinder {
 public:
  // Reads captions.jsonl when present; malformed lines are listed in problems() and ignored.
  explicit CaptionFinder(std::filesystem::path input);
  // The caption of `video` (a path below the input folder), or nullopt with `reason` set.
  std::optional<std::string> find(const std::filesystem::path& video, std::string* reason) const;
  // Files whose name makes them captions rather than videos (.txt, .json, .jsonl).
  static bool is_caption_file(const std::filesystem::path& path);
  const std::vector<std::string>& problems() const { return problems_; }

 private:
  std::filesystem::path input_;
  std::map<std::string, std::string> by_path_, by_name_;  // from captions.jsonl
  std::map<std::string, int> name_count_;                 // names listed more than once
  std::vector<std::string> problems_;
};

// Trim + collapse white space.
std::string clean_caption(const std::string& text);

}  // namespace wanhost::core::data
