#!/usr/bin/env bash
# Makes the comparison experiment's video dataset (docs/comparison.md) with the ffmpeg program's
# generators (lavfi sources: color, smptebars, rgbtestsrc, testsrc2, pal100bars, gradients,
# mandelbrot, life, cellauto; filters: overlay, scale, scroll, hue, fade, zoompan, geq): shapes
# moving, circling, growing and shrinking over coloured backgrounds, scrolling colour bars, drifting
# gradients, fades, colour cycles, zooms and evolving cellular patterns, in several frame sizes
# (aspect ratios) and durations, each with a caption file <stem>.txt that describes what is seen,
# e.g. "a red square moves from left to right over a blue background".
#
#   make_videos.sh OUT_DIR [--count N] [--fps F] [--min-seconds S] [--max-seconds S] [--jobs J]
#
#   --count N        videos (default 60); video i is scene kind i mod 10, so every kind appears
#   --fps F          frame rate of the files (default 16, Wan 2.1's)
#   --min-seconds S, --max-seconds S
#                    durations, in steps of 0.25 s (default 1 to 4)
#   --jobs J         ffmpeg processes at once (default: the cores)
#
# Deterministic: every choice is a hash of the video's index, no clock or $RANDOM, and the
# encoders run single-threaded with bit-exact flags, so the same FFmpeg makes the same files on
# every run. OUT_DIR is emptied first. H.264 (libx264) when FFmpeg has it, else MPEG-4 part 2.
set -euo pipefail

usage() {
  sed -n '/^#   make_videos/,/^#   --jobs/p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}
[ $# -ge 1 ] || usage
out=$1
shift
count=60 fps=16 min_s=1 max_s=4 jobs=$(nproc)
while [ $# -gt 0 ]; do
  case $1 in
    --count) count=$2; shift 2 ;;
    --fps) fps=$2; shift 2 ;;
    --min-seconds) min_s=$2; shift 2 ;;
    --max-seconds) max_s=$2; shift 2 ;;
    --jobs) jobs=$2; shift 2 ;;
    *) echo "make_videos.sh: unknown argument '$1'" >&2; usage ;;
  esac
done
for v in "$count" "$fps" "$jobs"; do
  [[ $v =~ ^[1-9][0-9]*$ ]] || { echo "make_videos.sh: '$v' is not a positive integer" >&2; exit 2; }
done
command -v ffmpeg >/dev/null || {
  echo "make_videos.sh: the ffmpeg program is missing (Debian: apt-get install ffmpeg;" \
    "scripts/bootstrap.sh installs it)" >&2
  exit 1
}
# Durations in quarter seconds.
min_q=$(awk -v s="$min_s" 'BEGIN { printf "%d", s * 4 + 0.5 }')
max_q=$(awk -v s="$max_s" 'BEGIN { printf "%d", s * 4 + 0.5 }')
if [ "$min_q" -lt 1 ] || [ "$max_q" -lt "$min_q" ]; then
  echo "make_videos.sh: need 0 < --min-seconds <= --max-seconds" >&2
  exit 2
fi

rm -rf "$out"
mkdir -p "$out"

codec=(-c:v mpeg4 -q:v 3)
encoders=$(ffmpeg -hide_banner -encoders 2>/dev/null || true)
if grep -q ' libx264 ' <<<"$encoders"; then
  codec=(-c:v libx264 -preset veryfast -crf 16 -x264-params threads=1)
fi
ff() {
  ffmpeg -nostdin -hide_banner -loglevel error -y -threads 1 -filter_threads 1 "$@"
}
encode() {  # encode OUTPUT: the lavfi graph's output into an .mp4, reproducibly
  ff "${graph_in[@]}" -frames:v "$frames" -map_metadata -1 -fflags +bitexact -flags:v +bitexact \
    "${codec[@]}" -pix_fmt yuv420p -r "$fps" "$1"
}

# pick I K N: a number in [0, N) from the video index I and the choice K (a 64-bit mix; bash
# arithmetic wraps like C's unsigned multiply up to the sign, hence the masks).
pick() {
  local v=$(((($1 + 1) * 0x9E3779B97F4A7C15 + ($2 + 1) * 0xBF58476D1CE4E5B9) & 0x7FFFFFFFFFFFFFFF))
  v=$((((v ^ (v >> 31)) * 0x94D049BB133111EB) & 0x7FFFFFFFFFFFFFFF))
  v=$((v ^ (v >> 29)))
  echo $((v % $3))
}

colour_names=(red green blue yellow cyan magenta white black orange purple gray pink)
colour_hex=(0xE02020 0x20B030 0x2040E0 0xF0E020 0x20E0E0 0xE020E0 0xF0F0F0 0x101010 0xF08010
  0x8020C0 0x808080 0xF090B0)
sizes=(320x240 426x240 240x240 240x320 480x272 360x240)
motions=("from left to right" "from right to left" "from top to bottom" "from bottom to top"
  "diagonally from the top left to the bottom right" "in a circle")

# Two colours for video I that stand apart (summed |R|+|G|+|B| difference over 240 of 765):
# foreground FG and background BG (indices).
colour_distance() {
  local a=${colour_hex[$1]} b=${colour_hex[$2]} d=0 k
  for k in 16 8 0; do
    local x=$(((a >> k) & 255)) y=$(((b >> k) & 255))
    d=$((d + (x > y ? x - y : y - x)))
  done
  echo "$d"
}
two_colours() {
  local n=${#colour_names[@]} k=2
  fg=$(pick "$1" 1 "$n")
  while :; do
    bg=$((($(pick "$1" "$k" $((n - 1))) + fg + 1) % n))
    [ "$(colour_distance "$fg" "$bg")" -gt 240 ] && break
    k=$((k + 100))
  done
}

# Overlay position expressions of a sprite of w x h moving by motion index M over D seconds.
motion_xy() {
  local m=$1 d=$2
  case $m in
    0) mx="(W-w)*t/$d" my="(H-h)/2" ;;
    1) mx="(W-w)*(1-t/$d)" my="(H-h)/2" ;;
    2) mx="(W-w)/2" my="(H-h)*t/$d" ;;
    3) mx="(W-w)/2" my="(H-h)*(1-t/$d)" ;;
    4) mx="(W-w)*t/$d" my="(H-h)*t/$d" ;;
    5) mx="(W-w)/2+(H-h)/2*cos(2*PI*t/$d)" my="(H-h)/2+(H-h)/2*sin(2*PI*t/$d)" ;;
  esac
}

make_one() {
  local i=$1
  local kind=$((i % 10)) round=$((i / 10))
  local size=${sizes[$(pick "$i" 3 ${#sizes[@]})]}
  local w=${size%x*} h=${size#*x}
  local q=$((min_q + $(pick "$i" 4 $((max_q - min_q + 1)))))
  frames=$((q * fps / 4))
  local d
  d=$(awk -v q="$q" 'BEGIN { printf "%g", q / 4 }')
  local r=$fps side=$((h / 3)) fg bg caption name
  two_colours "$i"
  local src="color=c=${colour_hex[$bg]}:s=${size}:r=${r}"
  local sprite="color=c=${colour_hex[$fg]}:s=${side}x${side}:r=${r}"
  local disc="format=rgba,geq=r='r(X,Y)':g='g(X,Y)':b='b(X,Y)':a='if(lt(hypot(X-(W-1)/2,Y-(H-1)/2),W/2),255,0)'"
  local fgn=${colour_names[$fg]} bgn=${colour_names[$bg]}
  case $kind in
    0 | 1)  # one shape moving
      local m=$(((round + kind * 3) % ${#motions[@]}))  # every motion in turn
      motion_xy "$m" "$d"
      local shape=square chain=$sprite
      if [ "$kind" = 1 ]; then shape=disc chain="$sprite,$disc"; fi
      graph_in=(-f lavfi -i "$src" -f lavfi -i "$chain"
        -filter_complex "[0][1]overlay=x='$mx':y='$my':shortest=1")
      name=${shape}_move
      caption="a $fgn $shape moves ${motions[$m]} over a $bgn background"
      ;;
    2)  # one shape growing or shrinking in the middle
      local shape=square chain=$sprite grow
      if [ "$(pick "$i" 6 2)" = 1 ]; then shape=disc chain="$sprite,$disc"; fi
      local big=$((h * 3 / 4))
      if [ $((round % 2)) = 0 ]; then  # growing and shrinking in turn
        grow="8+($big-8)*t/$d" caption="a $fgn $shape grows in the middle of a $bgn background"
      else
        grow="$big-($big-8)*t/$d" caption="a $fgn $shape shrinks in the middle of a $bgn background"
      fi
      graph_in=(-f lavfi -i "$src" -f lavfi -i "$chain"
        -filter_complex "[1]scale=w='$grow':h='$grow':eval=frame[s];[0][s]overlay=x='(W-w)/2':y='(H-h)/2':shortest=1")
      name=${shape}_$([ "${caption/grows/}" != "$caption" ] && echo grow || echo shrink)
      ;;
    3)  # two squares in opposite directions
      local c2=$((($(pick "$i" 8 $((${#colour_names[@]} - 2))) + 1 + fg) % ${#colour_names[@]}))
      [ "$c2" = "$bg" ] && c2=$(((c2 + 1) % ${#colour_names[@]}))
      [ "$c2" = "$fg" ] && c2=$(((c2 + 1) % ${#colour_names[@]}))
      [ "$c2" = "$bg" ] && c2=$(((c2 + 1) % ${#colour_names[@]}))
      local s2="color=c=${colour_hex[$c2]}:s=${side}x${side}:r=${r}"
      if [ $((round % 2)) = 0 ]; then
        graph_in=(-f lavfi -i "$src" -f lavfi -i "$sprite" -f lavfi -i "$s2" -filter_complex
          "[0][1]overlay=x='(W-w)*t/$d':y='(H-h)/4':shortest=1[a];[a][2]overlay=x='(W-w)*(1-t/$d)':y='3*(H-h)/4':shortest=1")
        caption="a $fgn square moves right and a ${colour_names[$c2]} square moves left over a $bgn background"
      else
        graph_in=(-f lavfi -i "$src" -f lavfi -i "$sprite" -f lavfi -i "$s2" -filter_complex
          "[0][1]overlay=x='(W-w)/4':y='(H-h)*t/$d':shortest=1[a];[a][2]overlay=x='3*(W-w)/4':y='(H-h)*(1-t/$d)':shortest=1")
        caption="a $fgn square moves down and a ${colour_names[$c2]} square moves up over a $bgn background"
      fi
      name=two_squares
      ;;
    4)  # bars and test patterns, scrolling or still
      local pats=(smptebars rgbtestsrc pal100bars testsrc2)
      local pwords=("colour bars" "red, green and blue stripes" "bright colour bars"
        "a test pattern with a moving counter")
      local p dirs=("to the left" "to the right" "upwards" "downwards" "")
      p=$((round % ${#pats[@]}))
      local dir=$(((round + $(pick "$i" 11 2)) % ${#dirs[@]}))
      local sc=("scroll=horizontal=0.02" "scroll=horizontal=-0.02" "scroll=vertical=0.03"
        "scroll=vertical=-0.03" "null")
      graph_in=(-f lavfi -i "${pats[$p]}=s=${size}:r=${r}" -vf "${sc[$dir]}")
      local verb=scroll
      [ "$p" = 3 ] && verb=scrolls
      if [ "$dir" = 4 ]; then
        caption="${pwords[$p]} $([ "$p" = 3 ] && echo stays || echo stay) still"
      else
        caption="${pwords[$p]} $verb ${dirs[$dir]}"
      fi
      name=${pats[$p]}
      ;;
    5)  # a drifting two-colour gradient
      local types=(linear radial) t
      t=$((round % 2))
      graph_in=(-f lavfi -i "gradients=s=${size}:r=${r}:c0=${colour_hex[$fg]}:c1=${colour_hex[$bg]}:nb_colors=2:speed=0.03:seed=$i:type=${types[$t]}")
      caption="a ${types[$t]} gradient from $fgn to $bgn slowly drifts"
      name=gradient
      ;;
    6)  # a fade from black or to black
      [ "$fgn" = black ] && fg=6 fgn=white
      if [ $((round % 2)) = 0 ]; then
        graph_in=(-f lavfi -i "color=c=${colour_hex[$fg]}:s=${size}:r=${r}" -vf "fade=t=in:st=0:d=$d")
        caption="the screen fades from black to $fgn"
      else
        graph_in=(-f lavfi -i "color=c=${colour_hex[$fg]}:s=${size}:r=${r}" -vf "fade=t=out:st=0:d=$d")
        caption="the screen fades from $fgn to black"
      fi
      name=fade
      ;;
    7)  # colours cycling through the hues
      local pats=(smptebars testsrc2 rgbtestsrc)
      local pwords=("colour bars" "a test pattern" "red, green and blue stripes") p
      p=$((round % ${#pats[@]}))
      graph_in=(-f lavfi -i "${pats[$p]}=s=${size}:r=${r}" -vf "hue=H=2*PI*t/$d")
      caption="${pwords[$p]} whose colours cycle through the rainbow"
      name=hue_${pats[$p]}
      ;;
    8)  # the camera zooming in or out
      local pats=(smptebars rgbtestsrc testsrc2)
      local pwords=("colour bars" "red, green and blue stripes" "a test pattern") p z
      p=$((round % ${#pats[@]}))
      local centre="x='iw/2-(iw/zoom/2)':y='ih/2-(ih/zoom/2)'"
      if [ "$(pick "$i" 16 2)" = 0 ]; then
        z="zoom+1.5/$frames" caption="the camera zooms in on ${pwords[$p]}"
      else
        z="if(eq(on,0),2.5,max(zoom-1.5/$frames,1))" caption="the camera zooms out from ${pwords[$p]}"
      fi
      graph_in=(-f lavfi -i "${pats[$p]}=s=${size}:r=${r}"
        -vf "zoompan=z='$z':d=1:s=${size}:fps=${r}:$centre")
      name=zoom_${pats[$p]}
      ;;
    9)  # evolving cellular patterns and a fractal
      local t
      t=$((round % 3))
      [ "$fgn" = black ] && fg=6 fgn=white
      local cw=$((w / 8)) ch=$((h / 8))
      case $t in
        0)
          graph_in=(-f lavfi -i "life=s=${cw}x${ch}:r=${r}:ratio=0.35:seed=$i:mold=0:life_color=${colour_hex[$fg]}:death_color=black"
            -vf "scale=${w}x${h}:flags=neighbor")
          caption="a $fgn game of life pattern evolves on a black background"
          name=life
          ;;
        1)
          graph_in=(-f lavfi -i "cellauto=s=${cw}x${ch}:r=${r}:rule=30:scroll=1:seed=$i:random_fill_ratio=0.5"
            -vf "scale=${w}x${h}:flags=neighbor")
          caption="a white and black cellular automaton pattern scrolls upwards"
          name=cellauto
          ;;
        2)
          graph_in=(-f lavfi -i "mandelbrot=s=${size}:r=${r}")
          caption="the camera zooms into a colourful mandelbrot fractal"
          name=mandelbrot
          ;;
      esac
      ;;
  esac
  caption=${caption//" a orange"/" an orange"}
  caption=${caption/#"a orange"/"an orange"}
  local stem
  stem=$(printf 'v%03d_%s' "$i" "$name")
  encode "$out/$stem.mp4"
  printf '%s\n' "$caption" >"$out/$stem.txt"
}

running=0
for ((i = 0; i < count; i++)); do
  make_one "$i" &
  running=$((running + 1))
  if [ "$running" -ge "$jobs" ]; then
    wait -n || true  # a failed video is counted below
    running=$((running - 1))
  fi
done
while [ "$running" -gt 0 ]; do
  wait -n || true
  running=$((running - 1))
done
n=$(find "$out" -name '*.mp4' | wc -l)
if [ "$n" -ne "$count" ]; then
  echo "make_videos.sh: made $n of $count videos (see the ffmpeg errors above)" >&2
  exit 1
fi
echo "made $count videos with captions in $out (${codec[1]}, $fps fps, ${min_s}-${max_s} s)"
