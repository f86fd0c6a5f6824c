#!/usr/bin/env bash
# Makes the small input folder of the `wanhost prepare` tests with the ffmpeg program: videos in
# several containers, codecs, sizes, frame rates and durations, captions in all three forms, and
# inputs that must be skipped (truncated, garbage, too short, no caption).
#   make_videos.sh OUT_DIR
# What each file is matters to test_prepare.cpp (frame counts, rates, colours); keep them in step.
set -euo pipefail
out=$1
rm -rf "$out"
mkdir -p "$out/sub"
ff() { ffmpeg -nostdin -hide_banner -loglevel error -y "$@"; }
encoders=$(ffmpeg -hide_banner -encoders 2>/dev/null || true)
has_encoder() { grep -q " $1 " <<<"$encoders"; }

h264=mpeg4
if has_encoder libx264; then h264=libx264; fi
vpx=
if has_encoder libvpx-vp9; then vpx=libvpx-vp9; elif has_encoder libvpx; then vpx=libvpx; fi

# a.mp4: 64x48, 10 fps, 20 frames (2 s); caption in a.txt.
ff -f lavfi -i testsrc=size=64x48:rate=10 -frames:v 20 -c:v $h264 -pix_fmt yuv420p "$out/a.mp4"
printf '  a test pattern\n  with a   counter \n' >"$out/a.txt"

# b.webm (VP9/VP8) or b.mkv (mpeg4) when FFmpeg has no libvpx: 80x60, 12 fps, 18 frames (1.5 s);
# caption in b.json.
if [ -n "$vpx" ]; then
  ff -f lavfi -i testsrc2=size=80x60:rate=12 -frames:v 18 -c:v $vpx -b:v 200k "$out/b.webm"
else
  ff -f lavfi -i testsrc2=size=80x60:rate=12 -frames:v 18 -c:v mpeg4 "$out/b.mkv"
fi
printf '{"caption": "colour bars moving", "other": 1}\n' >"$out/b.json"

# sub/c.mkv: MJPEG, 96x54, 8 fps, 24 frames (3 s); caption in captions.jsonl by relative path.
ff -f lavfi -i testsrc=size=96x54:rate=8 -frames:v 24 -c:v mjpeg -q:v 5 "$out/sub/c.mkv"

# d.avi: MPEG-4 part 2, portrait 48x64, 25 fps, 25 frames (1 s); captions.jsonl by file name.
ff -f lavfi -i testsrc=size=48x64:rate=25 -frames:v 25 -c:v mpeg4 "$out/d.avi"

# wide.mkv: FFV1, 128x48, 10 fps, 10 frames: red with a green strip on the left 1/8 and a blue
# strip on the right 1/8; a centre crop to 3:2 keeps only red (a squeeze would not).
ff -f lavfi -i color=c=red:size=128x48:rate=10 -frames:v 10 \
  -vf "drawbox=x=0:y=0:w=16:h=48:color=lime:t=fill,drawbox=x=112:y=0:w=16:h=48:color=blue:t=fill" \
  -c:v ffv1 -pix_fmt yuv444p "$out/wide.mkv"
echo "a red field" >"$out/wide.txt"

# short.mp4: 3 frames only (too short for 5 frames or a 5-frame clip).
ff -f lavfi -i testsrc=size=64x48:rate=10 -frames:v 3 -c:v $h264 -pix_fmt yuv420p "$out/short.mp4"
echo "too short" >"$out/short.txt"

# truncated.mp4: the first half of a valid mp4 (its index is at the end: unreadable).
ff -f lavfi -i testsrc=size=64x48:rate=10 -frames:v 30 -c:v $h264 -pix_fmt yuv420p "$out/full.tmp.mp4"
size=$(stat -c %s "$out/full.tmp.mp4")
head -c $((size / 2)) "$out/full.tmp.mp4" >"$out/truncated.mp4"
rm "$out/full.tmp.mp4"
echo "cut in half" >"$out/truncated.txt"

# garbage.mp4: random bytes.
head -c 4096 /dev/urandom >"$out/garbage.mp4"
echo "not a video" >"$out/garbage.txt"

# nocap.mp4: a good video without a caption.
ff -f lavfi -i testsrc=size=64x48:rate=10 -frames:v 10 -c:v $h264 -pix_fmt yuv420p "$out/nocap.mp4"

{
  echo '{"file": "sub/c.mkv", "caption": "a pattern in a sub folder"}'
  echo 'this line is not JSON'
  echo '{"file": "d.avi", "caption": "a portrait pattern"}'
} >"$out/captions.jsonl"

echo "made test videos in $out (h264 encoder: $h264, vpx encoder: ${vpx:-none})"
