// Reading videos with the FFmpeg libraries (libavformat/libavcodec/libswscale): any container and
// codec the installed FFmpeg reads.
//
// Two passes over a file: probe_video() only demuxes (no decoding) and records the presentation
// time of every frame of the best video stream; decode_frames() decodes and keeps the frames
// wanted, converted to RGB, resized preserving the aspect ratio so that they cover H x W, and
// centre-cropped to H x W. Frame k is the k-th frame in presentation order.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

namespace wanhost::core::data {

// A file that cannot be read as a video (unreadable, no video stream, corrupt, truncated). The
// message says what went wrong (with FFmpeg's own words where it gave any); prepare skips the file
// and lists it in its report.
class VideoError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct VideoProbe {
  std::string codec;           // decoder name, e.g. "h264"
  std::string container;       // demuxer name, e.g. "mov,mp4,m4a,3gp,3g2,mj2"
  int width = 0, height = 0;   // coded size
  double sample_aspect = 1.0;  // pixel aspect ratio (1 for square pixels)
  double fps = 0;              // average frame rate the container states (0: unknown)
  // Presentation time of every frame in seconds, ascending, the first one 0.
  std::vector<double> times;
  // Duration of the last frame (the median spacing of the frames; 1/fps for a single frame).
  double frame_duration = 0;

  std::int64_t frames() const { return static_cast<std::int64_t>(times.size()); }
  double duration() const { return times.empty() ? 0.0 : times.back() + frame_duration; }
};

// Demuxes the whole file without decoding. Throws VideoError.
VideoProbe probe_video(const std::string& path);

// How frames are scaled: the frame (with its pixel aspect ratio applied) is scaled by
// s = max(H / h, W / w) to cover the target, with area averaging when shrinking and bicubic
// interpolation when enlarging, then the centre H x W is cut out.
struct FrameGeometry {
  int scaled_width = 0, scaled_height = 0;  // after scaling, before the crop
  int crop_x = 0, crop_y = 0;               // top-left corner of the crop in the scaled frame
};
FrameGeometry cover_and_crop(int width, int height, double sample_aspect, int target_height,
                             int target_width);

struct DecodeStats {
  std::int64_t decoded = 0;  // frames that went through the decoder
  std::int64_t errors = 0;   // packets the decoder rejected (tolerated while frames keep coming)
};

// Decodes the frames with presentation indices `wanted` (ascending, unique) and returns them as
// uint8 RGB [wanted.size(), height, width, 3]. Stops as soon as the last wanted frame is out.
// `threads`: decoder threads (>= 1). Throws VideoError when the file cannot be decoded or ends
// before a wanted frame.
at::Tensor decode_frames(const std::string& path, const std::vector<std::int64_t>& wanted,
                         int height, int width, int threads, DecodeStats* stats = nullptr);

// Routes FFmpeg's log through wanhost's logger (debug level) and keeps the last error message of
// each thread for VideoError messages. Call once before using the functions above.
void install_ffmpeg_log();

// "libavformat 59.27.100, libavcodec 59.37.100, libswscale 6.7.100".
std::string ffmpeg_versions();

}  // namespace wanhost::core::data
