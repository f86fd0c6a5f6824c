#!/usr/bin/env bash
# GPU smoke test and first figures (writes under $OUT): the default recipe on the GPU, then a
# few steps of the 1.3B preset at the stage-1 and stage-2 shapes (240x416).
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/wanhost-out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
W=build-gpu/bin/wanhost
$W --version | tee -a "$OUT/gpu.txt"
$W run --out /tmp/r-default --set logging.progress=\"off\" 2>&1 | tail -8 | tee "$OUT/default.txt"
common=(--set model.wan21_dit.preset=\"wan2.1-t2v-1.3b\" --set data.synthetic.text_dim=4096
  --set data.synthetic.height=30 --set data.synthetic.width=52 --set checkpoint.at_stage_end=false
  --set checkpoint.export_diffusers=false --set logging.every_steps=1 --set logging.progress=\"off\")
$W run --out /tmp/r-s1 "${common[@]}" --set stages.0.steps=6 --set stages.0.global_batch=32 \
  --set stages.0.micro_batch=${S1_MB:-16} --set stages.1.steps=1 --set stages.1.global_batch=1 \
  --set stages.1.micro_batch=1 2>&1 | tail -12 | tee "$OUT/s1.txt"
cp /tmp/r-s1/metrics.jsonl "$OUT/s1-metrics.jsonl" 2>/dev/null
$W run --out /tmp/r-s2 "${common[@]}" --set stages.0.steps=1 --set stages.0.global_batch=1 \
  --set stages.0.micro_batch=1 --set stages.1.steps=6 --set stages.1.global_batch=1 \
  --set stages.1.micro_batch=1 --set data.synthetic.latent_frames=21 2>&1 | tail -12 | tee "$OUT/s2.txt"
cp /tmp/r-s2/metrics.jsonl "$OUT/s2-metrics.jsonl" 2>/dev/null
true
