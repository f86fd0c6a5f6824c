#include "media_writer.hpp"

#include <ATen/ATen.h>
#include <png.h>

#include <cstdio>
#include <filesystem>
#include <memory>
#include <stdexcept>

#if WANHOST_WITH_FFMPEG
extern "C" {
#include <libavcodec/avcodec.h>
#include <libavformat/avformat.h>
#include <libavutil/error.h>
#include <libavutil/opt.h>
#include <libswscale/swscale.h>
}
#endif

namespace fs = std::filesystem;

namespace wanhost::core {
namespace {

std::string temporary_name(const std::string& path) {
  const fs::path p(path);
  return (p.parent_path() / ("." + p.filename().string() + ".tmp")).string();
}

void rename_into_place(const std::string& tmp, const std::string& path) {
  std::error_code ec;
  fs::rename(tmp, path, ec);
  if (ec) {
    fs::remove(tmp, ec);
    throw std::runtime_error(path + ": cannot rename the written file into place: " + ec.message());
  }
}

#if WANHOST_WITH_FFMPEG
std::string av_error(int code) {
  char buf[AV_ERROR_MAX_STRING_SIZE] = {0};
  av_strerror(code, buf, sizeof buf);
  return buf;
}

// Owners of the FFmpeg objects of one file.
struct Mp4Encoder {
  AVFormatContext* format = nullptr;
  AVCodecContext* codec = nullptr;
  AVFrame* frame = nullptr;
  AVPacket* packet = nullptr;
  SwsContext* sws = nullptr;
  AVStream* stream = nullptr;
  std::string path;

  ~Mp4Encoder() {
    sws_freeContext(sws);
    av_packet_free(&packet);
    av_frame_free(&frame);
    avcodec_free_context(&codec);
    if (format) {
      if (format->pb) avio_closep(&format->pb);
      avformat_free_context(format);
    }
  }
  void check(int rc, const char* what) const {
    if (rc < 0) throw std::runtime_error(path + ": " + what + ": " + av_error(rc));
  }
  // Sends one frame (nullptr: flush) and writes every packet the encoder gives back.
  void encode(AVFrame* f) {
    check(avcodec_send_frame(codec, f), "encoding a frame");
    for (;;) {
      const int rc = avcodec_receive_packet(codec, packet);
      if (rc == AVERROR(EAGAIN) || rc == AVERROR_EOF) return;
      check(rc, "encoding a frame");
      // Every frame lasts one tick of 1/fps; without a duration the mp4 muxer ends the track
      // (its edit list) at the last frame's start and players drop that frame.
      if (packet->duration <= 0) packet->duration = 1;
      av_packet_rescale_ts(packet, codec->time_base, stream->time_base);
      packet->stream_index = stream->index;
      check(av_interleaved_write_frame(format, packet), "writing a packet");
    }
  }
};
#endif

}  // namespace

at::Tensor to_rgb8(const at::Tensor& video) {
  if (video.dim() != 4 || video.size(0) != 3)
    throw std::invalid_argument("expected a decoded video [3, F, H, W], got " +
                                c10::str(video.sizes()));
  at::Tensor x = video.detach().to(at::kCPU, at::kFloat);
  x = ((x + 1.0) * 0.5).clamp(0.0, 1.0).mul(255.0).round().to(at::kByte);
  return x.permute({1, 2, 3, 0}).contiguous();
}

void write_png(const std::string& path, const at::Tensor& rgb) {
  if (rgb.dim() != 3 || rgb.size(2) != 3 || rgb.scalar_type() != at::kByte)
    throw std::invalid_argument("write_png: expected uint8 [H, W, 3], got " +
                                c10::str(rgb.sizes()));
  const at::Tensor pixels = rgb.contiguous();
  png_image image{};
  image.version = PNG_IMAGE_VERSION;
  image.width = static_cast<png_uint_32>(pixels.size(1));
  image.height = static_cast<png_uint_32>(pixels.size(0));
  image.format = PNG_FORMAT_RGB;
  const std::string tmp = temporary_name(path);
  if (!png_image_write_to_file(&image, tmp.c_str(), 0, pixels.data_ptr<std::uint8_t>(), 0,
                               nullptr)) {
    std::remove(tmp.c_str());
    throw std::runtime_error(path + ": cannot write the PNG: " + image.message);
  }
  rename_into_place(tmp, path);
}

bool can_write_mp4() {
#if WANHOST_WITH_FFMPEG
  return avcodec_find_encoder(AV_CODEC_ID_H264) != nullptr;
#else
  return false;
#endif
}

void write_mp4(const std::string& path, const at::Tensor& rgb, int fps) {
  if (rgb.dim() != 4 || rgb.size(3) != 3 || rgb.scalar_type() != at::kByte)
    throw std::invalid_argument("write_mp4: expected uint8 [F, H, W, 3], got " +
                                c10::str(rgb.sizes()));
  if (fps < 1) throw std::invalid_argument("write_mp4: fps must be >= 1");
#if !WANHOST_WITH_FFMPEG
  throw std::runtime_error(path +
                           ": this build of wanhost has no FFmpeg libraries, so it cannot "
                           "write MP4 videos (install them and rebuild)");
#else
  const int h = static_cast<int>(rgb.size(1)), w = static_cast<int>(rgb.size(2));
  if (h % 2 || w % 2)
    throw std::invalid_argument(path + ": H.264 with 4:2:0 chroma needs an even frame size, got " +
                                std::to_string(w) + "x" + std::to_string(h));
  const at::Tensor pixels = rgb.contiguous();
  const std::string tmp = temporary_name(path);
  try {
    Mp4Encoder e;
    e.path = path;
    e.check(avformat_alloc_output_context2(&e.format, nullptr, "mp4", tmp.c_str()),
            "creating the mp4 container");
    const AVCodec* codec = avcodec_find_encoder_by_name("libx264");
    if (!codec) codec = avcodec_find_encoder(AV_CODEC_ID_H264);
    if (!codec)
      throw std::runtime_error(path + ": the installed FFmpeg libraries have no H.264 encoder");
    e.stream = avformat_new_stream(e.format, nullptr);
    e.codec = avcodec_alloc_context3(codec);
    e.frame = av_frame_alloc();
    e.packet = av_packet_alloc();
    if (!e.stream || !e.codec || !e.frame || !e.packet)
      throw std::runtime_error(path + ": out of memory setting up the encoder");
    e.codec->width = w;
    e.codec->height = h;
    e.codec->pix_fmt = AV_PIX_FMT_YUV420P;
    e.codec->time_base = AVRational{1, fps};
    e.codec->framerate = AVRational{fps, 1};
    e.codec->gop_size = fps;
    if (e.format->oformat->flags & AVFMT_GLOBALHEADER)
      e.codec->flags |= AV_CODEC_FLAG_GLOBAL_HEADER;
    // Near-lossless quality: samples are small and their details are what one looks at.
    av_opt_set(e.codec->priv_data, "crf", "12", 0);
    av_opt_set(e.codec->priv_data, "preset", "medium", 0);
    e.check(avcodec_open2(e.codec, codec, nullptr), "opening the H.264 encoder");
    e.check(avcodec_parameters_from_context(e.stream->codecpar, e.codec),
            "setting the stream parameters");
    e.stream->time_base = e.codec->time_base;
    e.check(avio_open(&e.format->pb, tmp.c_str(), AVIO_FLAG_WRITE), "opening the file");
    e.check(avformat_write_header(e.format, nullptr), "writing the mp4 header");
    e.frame->format = AV_PIX_FMT_YUV420P;
    e.frame->width = w;
    e.frame->height = h;
    e.check(av_frame_get_buffer(e.frame, 0), "allocating a frame");
    e.sws = sws_getContext(w, h, AV_PIX_FMT_RGB24, w, h, AV_PIX_FMT_YUV420P, SWS_BICUBIC, nullptr,
                           nullptr, nullptr);
    if (!e.sws) throw std::runtime_error(path + ": cannot set up the RGB -> YUV conversion");
    const std::uint8_t* base = pixels.data_ptr<std::uint8_t>();
    for (std::int64_t f = 0; f < pixels.size(0); ++f) {
      e.check(av_frame_make_writable(e.frame), "preparing a frame");
      const std::uint8_t* src[1] = {base + f * static_cast<std::int64_t>(h) * w * 3};
      const int stride[1] = {3 * w};
      sws_scale(e.sws, src, stride, 0, h, e.frame->data, e.frame->linesize);
      e.frame->pts = f;
      e.encode(e.frame);
    }
    e.encode(nullptr);
    e.check(av_write_trailer(e.format), "finishing the mp4 file");
  } catch (...) {
    std::error_code ec;
    fs::remove(tmp, ec);
    throw;
  }
  rename_into_place(tmp, path);
#endif
}

}  // namespace wanhost::core
