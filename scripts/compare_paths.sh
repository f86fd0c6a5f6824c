#!/usr/bin/env bash
# The comparison experiment end to end (docs/comparison.md): the AutoModel path against the
# Megatron path, twice (per-pack and per-sample timesteps), through the two-stage recipe on a
# synthetic video dataset, with samples from every run and the loss comparison.
#
#   scripts/compare_paths.sh [--size cpu|gpu|smoke] [--out DIR] [--fresh] [--np N]
#
#   --size cpu     (default) the tiny DiT on 2 CPU ranks (mpirun -np 2), ~13 minutes on 2 cores
#   --size gpu     the Wan 2.1 1.3B dimensions at reduced depth on one GPU in bf16, < 10 minutes on
#                  an H200
#   --size smoke   a handful of steps of everything (the CTest `experiment`), < 2 minutes on 2 cores
#   --out DIR      where everything goes (default runs/compare-paths-SIZE)
#   --fresh        delete DIR first; otherwise finished steps are kept and an interrupted run
#                  continues from its last checkpoint
#   --np N         processes for the cpu and smoke sizes (default 2; 1 runs without mpirun)
#
# Steps, each skipped when already done in DIR: 1. videos (scripts/experiment/make_videos.sh),
# 2. tiny encoders (scripts/experiment/make_tiny_encoders.py), 3. `wanhost prepare` into a frames
# folder (stage 1) and a whole-videos folder (stage 2), 4. the three runs (recipes in
# configs/experiments/compare_paths/), 5. `wanhost generate` from each run: images from the
# prompts of stage 1 with the stage-1 weights, videos from the prompts of stage 2 with the final
# weights, 6. `wanhost compare` over the three runs.
# Needs the README's set-up: `scripts/bootstrap.sh test` (the build, and the Python packages of
# tests/reference/requirements.txt in .venv, which the tiny text encoder is made with).
# Environment: WANHOST_BUILD_DIR (default build), WANHOST_PYTHON (default .venv/bin/python).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
RECIPES=$ROOT/configs/experiments/compare_paths
BUILD=${WANHOST_BUILD_DIR:-$ROOT/build}
case $BUILD in /*) ;; *) BUILD=$ROOT/$BUILD ;; esac
PY=${WANHOST_PYTHON:-$ROOT/.venv/bin/python}
WANHOST=$BUILD/bin/wanhost
SETUP="run the README's set-up first: scripts/bootstrap.sh test"

tag='[compare_paths]'
[ -t 2 ] && tag=$'\033[1m[compare_paths]\033[0m'
say() { printf '%s %s\n' "$tag" "$*" >&2; }
die() {
  printf '%s error: %s\n' "$tag" "$*" >&2
  exit 1
}
usage() {
  sed -n '/^#   scripts\/compare_paths.sh/,/^#   --np/p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

size=cpu out='' fresh=0 np=2
while [ $# -gt 0 ]; do
  case $1 in
    --size) size=${2:-}; shift 2 || usage ;;
    --out) out=${2:-}; shift 2 || usage ;;
    --fresh) fresh=1; shift ;;
    --np) np=${2:-}; shift 2 || usage ;;
    -h | --help) usage ;;
    *) echo "compare_paths.sh: unknown argument '$1'" >&2; usage ;;
  esac
done
[[ $np =~ ^[1-9][0-9]*$ ]] || die "--np $np: not a positive number"

# The sizes. Videos: count, durations (s), frame rate. Prepared frames: HEIGHT x WIDTH, frames
# taken from each video for stage 1, the whole videos' frame rate and longest clip for stage 2.
# Samples: images and videos generated per run, sampling steps. compare's moving-average window.
case $size in
  cpu)
    videos=60 min_s=1 max_s=4 fps=16
    height=96 width=160 frames_per_video=8 whole_fps=8 max_frames=33
    text_dim=32 gen_images=6 gen_videos=4 gen_steps=20 window=50
    ;;
  smoke)
    videos=10 min_s=1 max_s=1.5 fps=8
    height=32 width=48 frames_per_video=2 whole_fps=8 max_frames=9
    text_dim=32 gen_images=1 gen_videos=1 gen_steps=2 window=2
    ;;
  gpu)
    videos=120 min_s=1 max_s=4 fps=16
    height=240 width=416 frames_per_video=16 whole_fps=16 max_frames=65
    text_dim=4096 gen_images=8 gen_videos=4 gen_steps=20 window=25
    np=1
    ;;
  *) die "--size $size: expected cpu, gpu or smoke" ;;
esac
out=${out:-$ROOT/runs/compare-paths-$size}
case $out in /*) ;; *) out=$PWD/$out ;; esac

# --- What the experiment needs --------------------------------------------------------------
[ -x "$WANHOST" ] || die "no wanhost program at $WANHOST: $SETUP (or build the runtime target)"
for p in pixel_vae umt5 latent_dataset wan21_dit flow_matching automodel_fsdp megatron_tpppcp \
  seq_packer dense; do
  [ -f "$BUILD/plugins/$p.so" ] ||
    die "plugin $p is not built ($BUILD/plugins/$p.so is missing; umt5 needs libsentencepiece-dev): $SETUP"
done
"$WANHOST" prepare --help >/dev/null 2>&1 ||
  die "this wanhost was built without FFmpeg's libraries, so it has no 'prepare': $SETUP"
command -v ffmpeg >/dev/null || die "the ffmpeg program is missing (apt-get install ffmpeg): $SETUP"
[ -x "$PY" ] || die "no Python at $PY: $SETUP"
"$PY" -c 'import torch, transformers, sentencepiece' 2>/dev/null ||
  die "$PY lacks torch, transformers or sentencepiece (tests/reference/requirements.txt): $SETUP"
if [ "$size" = gpu ] && ! nvidia-smi -L >/dev/null 2>&1; then
  die "--size gpu needs an NVIDIA GPU (nvidia-smi finds none); the CPU size is --size cpu"
fi
launch=("$WANHOST")
if [ "$size" != gpu ] && [ "$np" -gt 1 ]; then
  MPIRUN=$(command -v mpirun || true)
  [ -n "$MPIRUN" ] || die "mpirun is missing (Debian: openmpi-bin), needed for --np $np: $SETUP, or pass --np 1"
  # As the tests do (tests/distributed/CMakeLists.txt): more ranks than cores allowed, shared
  # memory without cross-memory attach (often not permitted in containers).
  launch=("$MPIRUN" -np "$np" --oversubscribe --mca btl "self,vader"
    --mca btl_vader_single_copy_mechanism none "$WANHOST")
  if [ "$(id -u)" = 0 ]; then
    export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
  fi
fi
# --- The output folder ------------------------------------------------------------------------
if [ $fresh = 1 ] && [ -e "$out" ]; then
  # Only a folder this script made (or an empty one) is deleted.
  if [ ! -f "$out/experiment.txt" ] && [ -n "$(ls -A "$out" 2>/dev/null)" ]; then
    die "--fresh: $out is not empty and holds no experiment.txt: not removing it"
  fi
  say "--fresh: removing $out"
  rm -rf "$out"
fi
mkdir -p "$out/.done"
stamp=$out/experiment.txt
want="size=$size np=$np"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" != "$want" ]; then
  die "$out holds an experiment with other settings ($(cat "$stamp"); now $want): use --fresh or another --out"
fi
echo "$want" >"$stamp"
timings=$out/timings.tsv
t_start=$SECONDS

# step NAME COMMAND...: runs COMMAND unless NAME is done, records its seconds.
step() {
  local name=$1
  shift
  if [ -f "$out/.done/$name" ]; then
    say "$name: done before, kept"
    return 0
  fi
  say "$name ..."
  local t0=$SECONDS
  "$@"
  printf '%s\t%d\n' "$name" $((SECONDS - t0)) >>"$timings"
  touch "$out/.done/$name"
  say "$name: $((SECONDS - t0)) s"
}

# 1. Videos with captions.
make_videos() {
  bash "$ROOT/scripts/experiment/make_videos.sh" "$out/videos" --count "$videos" --fps "$fps" \
    --min-seconds "$min_s" --max-seconds "$max_s" >&2
}
step videos make_videos

# 2. The tiny text encoder, its tokenizer and pixel_vae's config: the pipeline folder.
make_encoders() {
  "$PY" "$ROOT/scripts/experiment/make_tiny_encoders.py" "$out/encoders" --text-dim "$text_dim" >&2
}
step encoders make_encoders

# 3. The two latent datasets (prepare keeps finished shards of an interrupted run itself).
prepare() {  # prepare NAME ARGS...
  local name=$1
  shift
  "$WANHOST" prepare --input "$out/videos" --output "$out/data/$name" --model "$out/encoders" \
    --vae-plugin pixel_vae --text-plugin umt5 --height "$height" --width "$width" \
    --progress lines "$@" >"$out/data/$name.log" 2>&1 ||
    die "prepare $name failed: see $out/data/$name.log"
  grep -h "prepare: [0-9]* samples" "$out/data/$name.log" | sed 's/.*prepare: /  /' >&2 || true
}
mkdir -p "$out/data"
step prepare_frames prepare frames --mode frames --frames-per-video "$frames_per_video"
step prepare_whole prepare whole --mode video --whole-video --fps "$whole_fps" \
  --max-frames "$max_frames"

# 4. The three runs: the size's recipe, the path's reference preset, the run's file.
runs=(automodel megatron_per_pack megatron_per_sample)
declare -A preset=([automodel]=automodel [megatron_per_pack]=megatron [megatron_per_sample]=megatron)
train() {  # train RUN
  local run=$1 dir=$out/runs/$1
  local args=("$RECIPES/$size.json" "$ROOT/configs/presets/${preset[$run]}_reference.json"
    "$RECIPES/$run.json" --out "$dir" --set "run.name=$run"
    --set "stages.0.data.latent_dataset.path=$out/data/frames"
    --set "stages.1.data.latent_dataset.path=$out/data/whole")
  if [ -f "$dir/checkpoints/LATEST" ]; then
    say "  $run: continuing from its last checkpoint"
    args+=(--resume)
  else
    rm -rf "$dir" "$dir.log"
  fi
  mkdir -p "$out/runs"
  local shown=("${launch[@]}" run "${args[@]}")
  say "  ${shown[*]//"$ROOT"\//}"
  # The whole output goes to runs/RUN.log; the trainer's progress lines (every
  # logging.every_steps) and stage summaries are shown.
  set +e
  "${launch[@]}" run "${args[@]}" 2>&1 | tee -a "$dir.log" |
    { grep --line-buffered -E '\[t2[iv]\] step|^  stage|\[error\]' |
      sed -u 's/^\[[^]]*\] \[[^]]*\] \[[a-z]*\] /  /' >&2 || true; }
  local rc=${PIPESTATUS[0]}
  set -e
  [ "$rc" = 0 ] || die "run $run failed (exit $rc): see $dir.log"
  [ -d "$dir/export" ] || die "run $run ended without its export/: see $dir.log"
}
for run in "${runs[@]}"; do
  step "run_$run" train "$run"
done

# 5. Samples from the prompts each stage trained on.
stage_end_checkpoint() {  # the checkpoint of stage 1's last step
  "$PY" - "$1" <<'EOF'
import json, sys
cfg = json.load(open(sys.argv[1] + "/config.resolved.json"))
print(f"{sys.argv[1]}/checkpoints/step-{cfg['stages'][0]['steps']}")
EOF
}
generate() {  # generate RUN
  local run=$1 dir=$out/runs/$1 ckpt
  ckpt=$(stage_end_checkpoint "$dir")
  [ -d "$ckpt" ] || die "no stage-1 checkpoint $ckpt"
  local common=(--pipeline "$out/encoders" --vae-plugin pixel_vae --steps "$gen_steps"
    --guidance 5.0 --sampler unipc --seed 0)
  rm -rf "$out/samples/$run"
  mkdir -p "$out/samples/$run"
  "$WANHOST" generate --checkpoint "$ckpt" --dataset "$out/data/frames" --count "$gen_images" \
    "${common[@]}" --out "$out/samples/$run/t2i" >"$out/samples/$run/t2i.log" 2>&1 ||
    die "generate (t2i) for $run failed: see $out/samples/$run/t2i.log"
  "$WANHOST" generate --run "$dir" --dataset "$out/data/whole" --count "$gen_videos" \
    "${common[@]}" --out "$out/samples/$run/t2v" >"$out/samples/$run/t2v.log" 2>&1 ||
    die "generate (t2v) for $run failed: see $out/samples/$run/t2v.log"
}
for run in "${runs[@]}"; do
  step "generate_$run" generate "$run"
done

# 6. The loss curves side by side.
compare() {
  local labels=() dirs=()
  for run in "${runs[@]}"; do
    dirs+=("$out/runs/$run")
    labels+=(--label "$run")
  done
  rm -rf "$out/compare"
  "$WANHOST" compare "${dirs[@]}" --out "$out/compare" "${labels[@]}" --window "$window" \
    >"$out/compare.log" 2>&1 || die "compare failed: see $out/compare.log"
}
step compare compare

# --- Where everything is -------------------------------------------------------------------------
say "finished in $((SECONDS - t_start)) s (this invocation; every step's seconds: $timings)"
{
  echo "outputs in $out:"
  echo "  videos/             the generated videos and their captions"
  echo "  data/frames, data/whole   the prepared latent datasets (wanhost data inspect DIR)"
  for run in "${runs[@]}"; do
    echo "  runs/$run/   metrics.jsonl, logs, checkpoints, export/"
  done
  if [ -d "$out/samples" ]; then
    echo "  samples/RUN/t2i/    images (NNN.png) from stage 1's prompts and weights, beside the"
    echo "                      training sample (NNN.reference.png)"
    echo "  samples/RUN/t2v/    videos (NNN.mp4; all frames in NNN.frames.png) from stage 2's"
    echo "                      prompts and the final weights, beside the training sample"
  fi
  if [ -d "$out/compare" ]; then
    echo "  compare/            loss_STAGE.png, loss_STAGE.csv, summary.md, summary.json"
  fi
} >&2
if [ -f "$out/compare/summary.md" ]; then
  echo >&2
  cat "$out/compare/summary.md" >&2
fi
