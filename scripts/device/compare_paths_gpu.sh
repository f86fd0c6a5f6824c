#!/usr/bin/env bash
# The comparison experiment's GPU size on a GPU machine of the `device` tool, which has no FFmpeg:
# the three runs on the synthetic source (configs/experiments/compare_paths/gpu_synthetic.json),
# samples rendered by pixel_vae, and the run folders without their weights packed into
# $OUT/compare_paths_gpu.tar.gz; `wanhost compare` then runs on the development machine.
# Carry .deps (scripts/device/fetch-debs.sh).
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/compare-paths-gpu}
mkdir -p "$OUT"
W=build-gpu/bin/wanhost
R=configs/experiments/compare_paths
work=/tmp/cpg
rm -rf "$work" && mkdir -p "$work/runs" "$work/samples"
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; } |
  tee "$work/machine.txt"
t0=$SECONDS
scripts/device/build.sh runtime >"$work/build.log" 2>&1 ||
  { grep -E "error|Error" "$work/build.log" | head -20; tail -5 "$work/build.log"; }
echo "build: $((SECONDS - t0)) s" | tee -a "$work/timings.txt"
declare -A preset=([automodel]=automodel [megatron_per_pack]=megatron [megatron_per_sample]=megatron)
for run in automodel megatron_per_pack megatron_per_sample; do
  t=$SECONDS
  $W run "$R/gpu_synthetic.json" "configs/presets/${preset[$run]}_reference.json" "$R/$run.json" \
    --out "$work/runs/$run" --set "run.name=$run" --set logging.progress=off \
    >"$work/runs/$run.log" 2>&1
  echo "$run: exit $? in $((SECONDS - t)) s" | tee -a "$work/timings.txt"
  t=$SECONDS
  $W generate --run "$work/runs/$run" --from-run-data --count 4 --steps 20 --guidance 5 \
    --vae-plugin pixel_vae --out "$work/samples/$run" >"$work/samples/$run.log" 2>&1
  echo "generate $run: exit $? in $((SECONDS - t)) s" | tee -a "$work/timings.txt"
  tail -3 "$work/runs/$run.log"
done
cd "$work" && tar czf "$OUT/compare_paths_gpu.tar.gz" machine.txt timings.txt build.log \
  runs/*.log runs/*/metrics.jsonl runs/*/config.resolved.json samples/*.log samples/*/*.png \
  samples/*/samples.jsonl 2>/dev/null
ls -la "$OUT"
