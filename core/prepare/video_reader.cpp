#include "video_reader.hpp"

#include <ATen/ATen.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdarg>
#include <cstring>
#include <memory>
#include <mutex>

extern "C" {
#include <libavcodec/avcodec.h>
#include <libavformat/avformat.h>
#include <libavutil/imgutils.h>
#include <libavutil/log.h>
#include <libswscale/swscale.h>
}

#include "wanhost/log.hpp"

namespace wanhost::core::data {
namespace {

thread_local std::string t_last_error;

void log_callback(void* avcl, int level, const char* fmt, va_list args) {
  if (level > AV_LOG_WARNING) return;
  char line[1024];
  int prefix = 0;  // no "[mov @ 0x...]" context: messages name the file themselves
  va_list copy;
  va_copy(copy, args);
  av_log_format_line2(avcl, level, fmt, copy, line, sizeof line, &prefix);
  va_end(copy);
  std::string text(line);
  while (!text.empty() && (text.back() == '\n' || text.back() == '\r')) text.pop_back();
  if (text.empty()) return;
  if (level <= AV_LOG_ERROR) t_last_error = text;
  logger()->debug("ffmpeg: {}", text);
}

std::string av_error(int code) {
  char buf[AV_ERROR_MAX_STRING_SIZE] = {0};
  av_strerror(code, buf, sizeof buf);
  return buf;
}

// "what: FFmpeg's reason (its last log line)".
[[noreturn]] void fail(const std::string& what, int code) {
  std::string msg = what;
  if (code < 0) msg += ": " + av_error(code);
  if (!t_last_error.empty() && msg.find(t_last_error) == std::string::npos)
    msg += " (" + t_last_error + ")";
  throw VideoError(msg);
}

struct FormatCloser {
  void operator()(AVFormatContext* c) const { avformat_close_input(&c); }
};
struct CodecCloser {
  void operator()(AVCodecContext* c) const { avcodec_free_context(&c); }
};
struct PacketFree {
  void operator()(AVPacket* p) const { av_packet_free(&p); }
};
struct FrameFree {
  void operator()(AVFrame* f) const { av_frame_free(&f); }
};
struct SwsFree {
  void operator()(SwsContext* s) const { sws_freeContext(s); }
};
using FormatPtr = std::unique_ptr<AVFormatContext, FormatCloser>;

// Opens the file and finds its best video stream.
FormatPtr open_input(const std::string& path, int* stream_index) {
  static std::once_flag log_once;
  std::call_once(log_once, [] { av_log_set_callback(log_callback); });
  t_last_error.clear();
  AVFormatContext* raw = nullptr;
  int rc = avformat_open_input(&raw, path.c_str(), nullptr, nullptr);
  if (rc < 0) fail("cannot open as a video", rc);
  FormatPtr fmt(raw);
  rc = avformat_find_stream_info(fmt.get(), nullptr);
  if (rc < 0) fail("cannot read stream information", rc);
  rc = av_find_best_stream(fmt.get(), AVMEDIA_TYPE_VIDEO, -1, -1, nullptr, 0);
  if (rc < 0) fail("no video stream", rc);
  *stream_index = rc;
  for (unsigned i = 0; i < fmt->nb_streams; ++i)
    if (static_cast<int>(i) != rc) fmt->streams[i]->discard = AVDISCARD_ALL;
  const AVCodecParameters* par = fmt->streams[rc]->codecpar;
  if (par->width <= 0 || par->height <= 0)
    fail("the video stream has no frame size (" + std::to_string(par->width) + "x" +
             std::to_string(par->height) + ")",
         0);
  return fmt;
}

// The swscale colour matrix for a frame's colour space (SWS_CS_* share AVColorSpace's values).
int sws_colorspace(AVColorSpace cs) {
  switch (cs) {
    case AVCOL_SPC_BT709:
    case AVCOL_SPC_FCC:
    case AVCOL_SPC_BT470BG:
    case AVCOL_SPC_SMPTE170M:
    case AVCOL_SPC_SMPTE240M:
    case AVCOL_SPC_BT2020_NCL:
    case AVCOL_SPC_BT2020_CL:
      return static_cast<int>(cs);
    default:
      return SWS_CS_DEFAULT;
  }
}

// The deprecated full-range "J" formats -> their plain twin (the range is passed separately).
AVPixelFormat plain_format(AVPixelFormat f, bool* full_range) {
  switch (f) {
    case AV_PIX_FMT_YUVJ420P:
      *full_range = true;
      return AV_PIX_FMT_YUV420P;
    case AV_PIX_FMT_YUVJ422P:
      *full_range = true;
      return AV_PIX_FMT_YUV422P;
    case AV_PIX_FMT_YUVJ444P:
      *full_range = true;
      return AV_PIX_FMT_YUV444P;
    case AV_PIX_FMT_YUVJ440P:
      *full_range = true;
      return AV_PIX_FMT_YUV440P;
    case AV_PIX_FMT_YUVJ411P:
      *full_range = true;
      return AV_PIX_FMT_YUV411P;
    default:
      return f;
  }
}

// Converts decoded frames to RGB, scaled and cropped (see cover_and_crop).
class FrameConverter {
 public:
  FrameConverter(int height, int width) : height_(height), width_(width) {}

  // Writes frame `f` into out[H, W, 3] (uint8, contiguous).
  void convert(const AVFrame* f, double sample_aspect, at::Tensor out) {
    const FrameGeometry g = cover_and_crop(f->width, f->height, sample_aspect, height_, width_);
    bool full_range = f->color_range == AVCOL_RANGE_JPEG;
    const AVPixelFormat src = plain_format(static_cast<AVPixelFormat>(f->format), &full_range);
    const bool shrink = g.scaled_width < f->width || g.scaled_height < f->height;
    const int flags = (shrink ? SWS_AREA : SWS_BICUBIC) | SWS_ACCURATE_RND | SWS_FULL_CHR_H_INT;
    const std::array<int, 6> key{f->width,       f->height,       static_cast<int>(src),
                                 g.scaled_width, g.scaled_height, flags};
    if (key != key_) details_for_ = nullptr, key_ = key;  // a new context may reuse the address
    SwsContext* ctx =
        sws_getCachedContext(ctx_.release(), f->width, f->height, src, g.scaled_width,
                             g.scaled_height, AV_PIX_FMT_RGB24, flags, nullptr, nullptr, nullptr);
    ctx_.reset(ctx);
    if (!ctx)
      fail("cannot convert frames of format " +
               std::string(av_get_pix_fmt_name(src) ? av_get_pix_fmt_name(src) : "?") + " to RGB",
           0);
    const int cs = sws_colorspace(f->colorspace);
    if (ctx != details_for_ || cs != cs_ || full_range != full_range_) {
      sws_setColorspaceDetails(ctx, sws_getCoefficients(cs), full_range ? 1 : 0,
                               sws_getCoefficients(SWS_CS_DEFAULT), 1, 0, 1 << 16, 1 << 16);
      details_for_ = ctx, cs_ = cs, full_range_ = full_range;
    }
    const std::size_t row = static_cast<std::size_t>(g.scaled_width) * 3;
    scaled_.resize(row * static_cast<std::size_t>(g.scaled_height));
    std::uint8_t* dst[4] = {scaled_.data(), nullptr, nullptr, nullptr};
    int dst_stride[4] = {static_cast<int>(row), 0, 0, 0};
    sws_scale(ctx, f->data, f->linesize, 0, f->height, dst, dst_stride);
    auto* o = out.data_ptr<std::uint8_t>();
    const std::size_t out_row = static_cast<std::size_t>(width_) * 3;
    for (int y = 0; y < height_; ++y)
      std::memcpy(o + static_cast<std::size_t>(y) * out_row,
                  scaled_.data() + static_cast<std::size_t>(y + g.crop_y) * row +
                      static_cast<std::size_t>(g.crop_x) * 3,
                  out_row);
  }

 private:
  int height_, width_;
  std::unique_ptr<SwsContext, SwsFree> ctx_;
  std::array<int, 6> key_{};
  const SwsContext* details_for_ = nullptr;  // the context the colour details were set on
  int cs_ = -1;
  bool full_range_ = false;
  std::vector<std::uint8_t> scaled_;
};

double aspect_of(AVRational r) {
  return r.num > 0 && r.den > 0 ? av_q2d(r) : 1.0;
}

}  // namespace

void install_ffmpeg_log() {
  av_log_set_callback(log_callback);
}

std::string ffmpeg_versions() {
  const auto v = [](unsigned x) {
    return std::to_string(AV_VERSION_MAJOR(x)) + "." + std::to_string(AV_VERSION_MINOR(x)) + "." +
           std::to_string(AV_VERSION_MICRO(x));
  };
  return "libavformat " + v(avformat_version()) + ", libavcodec " + v(avcodec_version()) +
         ", libswscale " + v(swscale_version());
}

FrameGeometry cover_and_crop(int width, int height, double sample_aspect, int target_height,
                             int target_width) {
  const double display_w = width * (sample_aspect > 0 ? sample_aspect : 1.0);
  const double s = std::max(static_cast<double>(target_width) / display_w,
                            static_cast<double>(target_height) / height);
  FrameGeometry g;
  g.scaled_width = std::max(target_width, static_cast<int>(std::lround(display_w * s)));
  g.scaled_height = std::max(target_height, static_cast<int>(std::lround(height * s)));
  g.crop_x = (g.scaled_width - target_width) / 2;
  g.crop_y = (g.scaled_height - target_height) / 2;
  return g;
}

VideoProbe probe_video(const std::string& path) {
  int vs = -1;
  FormatPtr fmt = open_input(path, &vs);
  AVStream* st = fmt->streams[vs];
  VideoProbe p;
  const AVCodecDescriptor* desc = avcodec_descriptor_get(st->codecpar->codec_id);
  p.codec = desc ? desc->name : "unknown";
  p.container = fmt->iformat->name;
  p.width = st->codecpar->width;
  p.height = st->codecpar->height;
  p.sample_aspect = aspect_of(st->codecpar->sample_aspect_ratio);
  AVRational rate = st->avg_frame_rate.num > 0 ? st->avg_frame_rate : st->r_frame_rate;
  p.fps = rate.num > 0 && rate.den > 0 ? av_q2d(rate) : 0.0;
  if (avcodec_find_decoder(st->codecpar->codec_id) == nullptr)
    fail("no decoder for codec " + p.codec + " in this FFmpeg build", 0);

  std::vector<std::int64_t> stamps;
  bool untimed = false;
  std::unique_ptr<AVPacket, PacketFree> pkt(av_packet_alloc());
  for (;;) {
    const int rc = av_read_frame(fmt.get(), pkt.get());
    if (rc == AVERROR_EOF) break;
    if (rc < 0) {
      if (stamps.empty()) fail("cannot read the first packet", rc);
      break;  // a damaged tail: what came before is still a video (decode_frames checks it)
    }
    if (pkt->stream_index == vs && !(pkt->flags & AV_PKT_FLAG_DISCARD)) {
      const std::int64_t ts = pkt->pts != AV_NOPTS_VALUE ? pkt->pts : pkt->dts;
      if (ts == AV_NOPTS_VALUE) untimed = true;
      stamps.push_back(ts);
    }
    av_packet_unref(pkt.get());
  }
  if (stamps.empty()) fail("the video stream has no frames", 0);
  const double tb = av_q2d(st->time_base);
  if (untimed || tb <= 0) {
    // No timestamps (raw elementary streams): frames at the stated rate.
    const double fps = p.fps > 0 ? p.fps : 25.0;
    for (std::size_t i = 0; i < stamps.size(); ++i) p.times.push_back(static_cast<double>(i) / fps);
  } else {
    std::sort(stamps.begin(), stamps.end());
    for (std::int64_t s : stamps) p.times.push_back(static_cast<double>(s - stamps.front()) * tb);
  }
  std::vector<double> gaps;
  for (std::size_t i = 1; i < p.times.size(); ++i) gaps.push_back(p.times[i] - p.times[i - 1]);
  if (!gaps.empty()) {
    std::nth_element(gaps.begin(), gaps.begin() + gaps.size() / 2, gaps.end());
    p.frame_duration = gaps[gaps.size() / 2];
  }
  if (p.frame_duration <= 0) p.frame_duration = p.fps > 0 ? 1.0 / p.fps : 0.04;
  if (p.fps <= 0) p.fps = 1.0 / p.frame_duration;
  return p;
}

at::Tensor decode_frames(const std::string& path, const std::vector<std::int64_t>& wanted,
                         int height, int width, int threads, DecodeStats* stats) {
  at::Tensor out = at::empty({static_cast<std::int64_t>(wanted.size()), height, width, 3},
                             at::TensorOptions(at::kByte));
  if (wanted.empty()) return out;
  int vs = -1;
  FormatPtr fmt = open_input(path, &vs);
  AVStream* st = fmt->streams[vs];
  const AVCodec* codec = avcodec_find_decoder(st->codecpar->codec_id);
  if (!codec) fail("no decoder for this codec in this FFmpeg build", 0);
  std::unique_ptr<AVCodecContext, CodecCloser> dec(avcodec_alloc_context3(codec));
  int rc = avcodec_parameters_to_context(dec.get(), st->codecpar);
  if (rc < 0) fail("cannot set up the decoder", rc);
  dec->thread_count = std::max(1, threads);
  dec->thread_type = FF_THREAD_FRAME | FF_THREAD_SLICE;
  dec->pkt_timebase = st->time_base;
  rc = avcodec_open2(dec.get(), codec, nullptr);
  if (rc < 0) fail("cannot open the " + std::string(codec->name) + " decoder", rc);

  FrameConverter conv(height, width);
  std::unique_ptr<AVPacket, PacketFree> pkt(av_packet_alloc());
  std::unique_ptr<AVFrame, FrameFree> frame(av_frame_alloc());
  std::int64_t index = 0;  // presentation index of the next frame out of the decoder
  std::size_t next = 0;    // next entry of `wanted`
  DecodeStats local;
  std::string first_error;
  const auto note_error = [&](const std::string& what, int code) {
    ++local.errors;
    if (first_error.empty())
      first_error = what + ": " + av_error(code) +
                    (t_last_error.empty() ? std::string() : " (" + t_last_error + ")");
  };
  const auto drain = [&]() {
    for (;;) {
      const int r = avcodec_receive_frame(dec.get(), frame.get());
      if (r == AVERROR(EAGAIN) || r == AVERROR_EOF) return;
      if (r < 0) {
        note_error("decoding failed", r);
        return;
      }
      ++local.decoded;
      if (next < wanted.size() && wanted[next] == index) {
        const double sar =
            aspect_of(frame->sample_aspect_ratio.num > 0 ? frame->sample_aspect_ratio
                                                         : st->codecpar->sample_aspect_ratio);
        conv.convert(frame.get(), sar, out[static_cast<std::int64_t>(next)]);
        ++next;
      }
      ++index;
      av_frame_unref(frame.get());
    }
  };
  bool eof = false;
  while (next < wanted.size() && !eof) {
    rc = av_read_frame(fmt.get(), pkt.get());
    if (rc < 0) {
      if (rc != AVERROR_EOF) note_error("reading the file failed", rc);
      eof = true;
      break;
    }
    if (pkt->stream_index == vs) {
      const int s = avcodec_send_packet(dec.get(), pkt.get());
      if (s < 0 && s != AVERROR(EAGAIN)) note_error("the decoder rejected a packet", s);
      drain();
    }
    av_packet_unref(pkt.get());
  }
  if (next < wanted.size()) {  // flush the frames still inside the decoder
    avcodec_send_packet(dec.get(), nullptr);
    drain();
  }
  if (stats) *stats = local;
  if (next < wanted.size())
    throw VideoError("truncated or corrupt: decoding ended after " + std::to_string(index) +
                     " frame(s), frame " + std::to_string(wanted[next]) + " is needed" +
                     (first_error.empty() ? std::string() : "; first error: " + first_error));
  return out;
}

}  // namespace wanhost::core::data
