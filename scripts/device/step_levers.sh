#!/usr/bin/env bash
# One device call for the whole-step levers of docs/performance.md ("Whole-step levers") and the
# mixed-size pack: builds build-gpu, runs the GPU tests of packed attention and of the model's
# collapsed text padding, then (each part skipped once the call's time runs short, see BUDGET_S)
#  - bench: a pack of mixed image sizes (runs of equal segments as dense SDPA batches, and flash
#    attention 2 varlen for comparison) beside the dense stage-1 batch;
#  - bench: stage 1 and 2 block stacks with captions of 20-200 tokens padded to 512, with and
#    without collapse_text_padding;
#  - whole 1.3B steps (`wanhost run`, ddp) on synthetic data whose captions have 20-200 tokens,
#    collapse on and off; automodel_fsdp with recompute all and none;
#  - the torch.compile peer's whole step (build-perf/peer/peer_wan_step.py, captions of 20-200
#    tokens padded to 512 and not masked, as the reference) on the same GPU.
# Results: $OUT/summary.txt (the figures), $OUT/results.tar.gz (logs, bench.jsonl, metrics).
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/wanhost-levers}
R=/tmp/levers
BUDGET_S=${BUDGET_S:-560}
rm -rf "$R" && mkdir -p "$R" "$OUT"
t0=$SECONDS
left() { [ $((SECONDS - t0)) -lt $((BUDGET_S - ${1:-60})) ]; }
say() { echo "$*" | tee -a "$OUT/summary.txt"; }
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; } |
  tee "$OUT/summary.txt"
scripts/device/build.sh --tests wanhost wan21_dit ddp automodel_fsdp flow_matching synthetic dense \
  seq_packer test_kernels test_wan21_dit >"$R/build.log" 2>&1 ||
  { say "build failed:"; grep -E "error" "$R/build.log" | head -20 | tee -a "$OUT/summary.txt"; }
say "$(tail -1 "$R/build.log") ($((SECONDS - t0)) s)"
W=build-gpu/bin/wanhost

STEPS=${STEPS:-6}
# GPU tests: packed attention (runs of equal segments, flash varlen) and collapsed padding.
[ "${TESTS:-1}" = 1 ] && build-gpu/bin/test_kernels --gtest_filter='PackedAttention*' >"$R/tests.txt" 2>&1
[ "${TESTS:-1}" = 1 ] && WANHOST_TEST_PACKED_ATTENTION=flash build-gpu/bin/test_kernels --gtest_filter='PackedAttention*' \
  >>"$R/tests.txt" 2>&1
[ "${TESTS:-1}" = 1 ] && build-gpu/bin/test_wan21_dit --gtest_filter='*OnAGpu*:*Collapsed*' >>"$R/tests.txt" 2>&1
grep -E "^\[  (PASSED|FAILED) |\[collapse\]|FAILED" "$R/tests.txt" | tee -a "$OUT/summary.txt"
grep -h "key bias: SDPA backend" "$R"/*.txt 2>/dev/null | head -2 | tee -a "$OUT/summary.txt"

bench() { # LABEL ARGS...
  local label=$1
  shift
  timeout 120 $W bench --json --no-peak "$@" >"$R/b.json" 2>>"$R/bench.err" || return
  python3 - "$label" "$R/b.json" <<'EOF' | tee -a "$OUT/summary.txt"
import json, sys
r = json.loads(open(sys.argv[2]).read().strip().splitlines()[-1])
print("bench %-34s %8.2f ms  %7.1f samples/s  %9.0f tokens/s  %6.1f model TFLOP/s  %5.1f GiB" % (
    sys.argv[1], 1e3 * r["step_s"], r["samples_per_s"], r["tokens_per_s"], r["model_tflops"],
    r["peak_mem_gib"]))
EOF
  cat "$R/b.json" >>"$R/bench.jsonl"
  grep -h "key bias: SDPA backend" "$R/bench.err" 2>/dev/null | tail -1 | sed 's/^/  /' | tee -a "$OUT/summary.txt"
}
S1=(--preset wan2.1-t2v-1.3b --blocks 4 --batch 32 --video-tokens 390 --text-tokens 512)
S2=(--preset wan2.1-t2v-1.3b --blocks 4 --batch 1 --video-tokens 8190 --text-tokens 512)
MIX=(--packed --grid 1,15,26 --grid 1,20,20 --grid 1,12,32)
if [ -x "$W" ] && [ "${BENCH:-1}" = 1 ] && left 200; then
  if [ "${MIXED:-1}" = 1 ]; then
    bench "s1 dense" "${S1[@]}"
    bench "s1 packed" "${S1[@]}" --packed
    bench "s1 mixed pack (runs)" "${S1[@]}" "${MIX[@]}"
    bench "s1 mixed pack (flash varlen)" "${S1[@]}" "${MIX[@]}" --packed-attention flash
  fi
  for c in true false; do
    bench "s1 captions 20-200 collapse=$c" "${S1[@]}" --caption-tokens 20:200 \
      --option collapse_text_padding=$c
    bench "s2 captions 20-200 collapse=$c" "${S2[@]}" --caption-tokens 20:200 \
      --option collapse_text_padding=$c
  done
fi

# The compiled peer's whole step on the same GPU (captions 20-200 tokens, as above).
if [ -f build-perf/peer/peer_wan_step.py ] && left 300; then
  (cd build-perf/peer && PYTHONUNBUFFERED=1 timeout 200 python3 -c '
import peer_wan_step as p
import os
cases = [("step_s1_1.3B_mb32", 32, 1, 30, 52, 512), ("step_s2_1.3B_81f", 1, 21, 30, 52, 512)]
for c in cases:
    if c[0][6] in os.environ.get("STAGES", "1 2"): p.run(*c, compiled=True)' 2>&1 | grep -v Warning | tee "$R/peer.jsonl" | grep "{" |
    sed 's/^/peer  /' | tee -a "$OUT/summary.txt")
fi
# Whole 1.3B steps: stage 1 (32 images of 30x52 latents) and stage 2 (21 latent frames), STEPS
# steps each; the median and mean step time after the first third of the steps (warm-up: cuDNN
# builds a plan the first time a shape appears) and the peak memory.
run_steps() { # TAG STAGE EXTRA...
  local tag=$1 stage=$2
  shift 2
  local s=(--set stages.0.steps=$STEPS --set stages.0.global_batch=32 --set stages.0.micro_batch=32
    --set stages.1.steps=1 --set stages.1.global_batch=1 --set stages.1.micro_batch=1)
  [ "$stage" = 2 ] && s=(--set stages.0.steps=1 --set stages.0.global_batch=1
    --set stages.0.micro_batch=1 --set stages.1.steps=$STEPS --set stages.1.global_batch=1
    --set stages.1.micro_batch=1 --set data.synthetic.latent_frames=21)
  rm -rf /tmp/r
  timeout 150 $W run --out /tmp/r --set model.wan21_dit.preset=\"wan2.1-t2v-1.3b\" \
    --set data.synthetic.text_dim=4096 --set data.synthetic.height=30 --set data.synthetic.width=52 \
    --set data.synthetic.caption_tokens_min=20 --set data.synthetic.caption_tokens_max=200 \
    --set checkpoint.at_stage_end=false --set checkpoint.export_diffusers=false \
    --set logging.every_steps=1 --set logging.progress=\"off\" "${s[@]}" "$@" \
    >"$R/run-$tag-s$stage.txt" 2>&1
  cp /tmp/r/metrics.jsonl "$R/$tag-s$stage-metrics.jsonl" 2>/dev/null
  python3 -c 'import json, sys
r = [json.loads(l) for l in open(sys.argv[1])]
r = [x for x in r if x.get("stage_index") == int(sys.argv[2]) - 1]
r = r[max(2, len(r) // 3):]
ts = sorted(x["step_time_s"] for x in r)
med, mean = ts[len(ts) // 2], sum(ts) / len(ts)
n = 32 if sys.argv[2] == "1" else 1
print("run   %-22s stage %s: median %.4f s, mean %.4f s a step (%d steps), %.1f samples/s (median), peak %.1f GiB" % (
    sys.argv[3], sys.argv[2], med, mean, len(r), n / med, max(x["peak_mem_gib"] for x in r)))' \
    "$R/$tag-s$stage-metrics.jsonl" "$stage" "$tag" 2>&1 | tail -1 | tee -a "$OUT/summary.txt"
}
if [ -x "$W" ]; then
  for stage in ${STAGES:-1 2}; do
    left 120 && run_steps ddp-collapse $stage
    left 120 && run_steps ddp-nocollapse $stage --set model.wan21_dit.collapse_text_padding=false
  done
  for rc in ${FSDP:-none every_k all}; do
    k=()
    [ $rc = every_k ] && k=(--set parallelism.automodel_fsdp.recompute_every=2)
    for stage in ${STAGES:-1 2}; do
      left 100 && run_steps fsdp-$rc $stage --set parallelism.plugin=\"automodel_fsdp\" \
        --set parallelism.automodel_fsdp.recompute=\"$rc\" "${k[@]}"
    done
  done
fi

say "total $((SECONDS - t0)) s"
tar czf "$OUT/results.tar.gz" -C "$R" . 2>/dev/null
