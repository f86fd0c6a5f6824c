// Writing generated samples: PNG images (libpng) and H.264 MP4 videos (the FFmpeg libraries:
// libavformat's mp4 muxer, libavcodec's libx264 encoder, libswscale for RGB -> YUV 4:2:0).
// Files are written under a temporary name and renamed into place, so a crash never leaves a
// partial file behind a final name.
#pragma once

#include <string>

#include <ATen/core/Tensor.h>

namespace wanhost::core {

// Pixels of a decoded sample: video [3, F, H, W] in [-1, 1] -> uint8 [F, H, W, 3] (rounded, as
// Diffusers' VideoProcessor.postprocess_video does for PIL output).
at::Tensor to_rgb8(const at::Tensor& video);

// rgb: uint8 [H, W, 3].
void write_png(const std::string& path, const at::Tensor& rgb);
// rgb: uint8 [F, H, W, 3] with even H and W; `fps` frames a second. Throws std::runtime_error when
// this build has no FFmpeg or the encoder fails (naming the file).
void write_mp4(const std::string& path, const at::Tensor& rgb, int fps);
// True when this build can write MP4 files.
bool can_write_mp4();

}  // namespace wanhost::core
