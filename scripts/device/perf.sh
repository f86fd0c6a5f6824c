#!/usr/bin/env bash
# GPU performance run (docs/performance.md): builds build-gpu (wanhost, the plugins a run needs and
# the kernel tests), runs the kernel parity tests, `wanhost bench` at the reference shapes (fused
# kernels on and off, dense and packed), the plain-PyTorch peer on the same shapes in the same
# call, and short training runs. Results under $OUT. The peer script travels in the ignored
# folder build-perf/peer (copy the peer scripts there from the team's benchmark folder and name
# build-perf in `carry`, with .deps).
# PHASES (default: tests bench peer run); also ab, graph (--cuda-graph), profile, trace, ncu,
# bench14off, benchckpt, benchmix, runab (per-tensor AdamW), runnopf (run.prefetch=false),
# runpack (seq_packer at 12480 tokens), runmegatron (megatron_tpppcp + seq_packer at 12480 tokens),
# runfsdp (automodel_fsdp with recompute all, every_k=2 and none: 12 files, so read the figures
# it prints, or tar $OUT).
# The device tool brings back at most 8 files from $OUT: machine.txt, build.log and
# test_kernels.txt are always written; each run phase adds 4 (5 with KEEP_TRACE=1). For more,
# point OUT at a scratch folder and tar it into the tool's $OUT after this script.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/wanhost-perf}
PHASES=${PHASES:-tests bench peer run}
mkdir -p "$OUT"
t0=$SECONDS
has() { [[ " $PHASES " == *" $1 "* ]]; }
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; } |
  tee "$OUT/machine.txt"
scripts/device/build.sh --tests wanhost wan21_dit ddp automodel_fsdp megatron_tpppcp flow_matching synthetic dense seq_packer test_kernels test_wan21_dit \
  >"$OUT/build.log" 2>&1 || { echo "build failed:"; grep -E "error|Error" "$OUT/build.log" | head -20; }
tail -1 "$OUT/build.log"
W=build-gpu/bin/wanhost
if has tests && [ -x build-gpu/bin/test_kernels ]; then
  build-gpu/bin/test_kernels 2>&1 | tee "$OUT/test_kernels.txt" | grep -E "^\[  |OK|FAIL|rel|Expected|Which" | tail -30
  # Every cuBLASLt epilogue on (by default only DGELU runs): the feed-forward and linear tests
  # then also check the GELU_AUX_BIAS and BGRADB products (and that cuBLASLt refused none).
  WANHOST_TEST_LT_EPILOGUES=all build-gpu/bin/test_kernels \
    --gtest_filter='FusedGpu.GeluFeedForward:FusedGpu.LinearBiasGradient' 2>&1 |
    tee -a "$OUT/test_kernels.txt" | grep -E "FAIL|PASSED|refused" | tail -5
  WANHOST_TEST_PACKED_ATTENTION=flash build-gpu/bin/test_kernels --gtest_filter='PackedAttention*' 2>&1 |
    tee -a "$OUT/test_kernels.txt" | grep -E "FAIL|PASSED|warn" | tail -5
  # The whole model: fused block path vs the plain path (against fp32), dense and packed.
  build-gpu/bin/test_wan21_dit --gtest_filter='*OnAGpu*' 2>&1 | tee -a "$OUT/test_kernels.txt" |
    grep -E "OK|FAIL|fused|Expected" | tail -12
fi
bench() { echo "-- bench $*"; timeout 150 $W bench --json "$@" 2>&1 | tee -a "$OUT/bench.jsonl" | tail -2; }
S1=(--preset wan2.1-t2v-1.3b --blocks 4 --batch 32 --video-tokens 390 --text-tokens 512)
S2=(--preset wan2.1-t2v-1.3b --blocks 4 --batch 1 --video-tokens 8190 --text-tokens 512)
P14=(--preset wan2.1-t2v-14b --blocks 2 --batch 1 --video-tokens 37440 --text-tokens 512)
if has bench && [ -x "$W" ]; then
  # BENCH_SHORT=1: the stage-1/2 cases with fused kernels on only (no fused-off runs, no 14B).
  short=${BENCH_SHORT:-0}
  bench "${S1[@]}"
  bench "${S1[@]}" --packed
  [ "$short" = 1 ] || bench "${S1[@]}" --option fused_kernels=off --no-peak
  bench "${S2[@]}" --no-peak
  [ "$short" = 1 ] || bench "${S2[@]}" --option fused_kernels=off --no-peak
  [ "$short" = 1 ] && [ "${BENCH_14:-0}" != 1 ] || bench "${P14[@]}" --no-peak
  has bench14off && bench "${P14[@]}" --option fused_kernels=off --no-peak
  # A/B of single changes: each cuBLASLt epilogue on its own.
  abbench() { echo "# $1" >>"$OUT/bench.jsonl"; bench "$@"; }
  if has ab; then
    for e in off gelu dgelu all; do abbench --lt-epilogues=$e "${S1[@]}" --no-peak; done
    abbench --lt-epilogues=off "${S2[@]}" --no-peak
  fi
  # The step captured once as a CUDA graph and replayed (no host launches between kernels).
  if has graph; then
    bench "${S1[@]}" --cuda-graph --no-peak
    [ "$short" = 1 ] || bench "${S1[@]}" --packed --cuda-graph --no-peak
    bench "${S2[@]}" --cuda-graph --no-peak
    [ "$short" = 1 ] || bench "${P14[@]}" --cuda-graph --no-peak
  fi
  has benchckpt && bench "${S1[@]}" --option activation_checkpointing=true --no-peak
  # A pack of mixed image sizes (flash attention 2 varlen, not the equal-segment dense path).
  has benchmix && bench "${S1[@]}" --packed --grid 1,15,26 --grid 1,20,20 --grid 1,12,32 --no-peak
fi
if has peer; then
  PYTHONUNBUFFERED=1 timeout ${PEER_TIMEOUT:-240} python3 build-perf/peer/peer_wan_block.py \
    ${PEER_MODES:-compiled} 2>&1 | grep -v Warning | tee "$OUT/peer.jsonl" | tail -8
fi
if has profile && [ -x "$W" ]; then
  # Kernel time per class and the longest kernels: wanhost (--profile) and the compiled peer.
  prof() { echo "== wanhost $*"; timeout 150 $W bench --no-peak --iters 5 --profile /tmp/trace.json "$@" 2>&1 | grep -v "^ERROR:"; }
  { prof "${S1[@]}"; prof "${S1[@]}" --packed; prof "${S2[@]}"; prof "${P14[@]}"; } >"$OUT/profile.txt"
  # One stage-1 step as a Chrome trace (chrome://tracing, Perfetto): gaps between kernels show.
  has trace && timeout 120 $W bench --no-peak --iters 1 --profile "$OUT/trace-s1.json" "${S1[@]}" \
    >/dev/null 2>&1
  grep -A12 "^== \|kernel time" "$OUT/profile.txt" | grep -v "^--" | head -80
  for c in ${PEER_PROFILE-s1 p14}; do
    PYTHONUNBUFFERED=1 timeout 150 python3 scripts/device/profile_peer.py compiled $c 2>&1 |
      grep -v Warning >>"$OUT/profile-peer.txt"
  done
  grep -A8 "kernel time per step" "$OUT/profile-peer.txt"
fi
# Hardware counters of the fused kernels (Nsight Compute; works on the Firecracker machines only):
# achieved DRAM bandwidth, what limits each kernel. NCU_KERNELS picks the kernels (a regex).
if has ncu && [ -x "$W" ]; then
  timeout 240 ncu --clock-control none --kernel-name "regex:${NCU_KERNELS:-ln_modulate|rms_rope|column_sums}" \
    --launch-skip 0 --launch-count ${NCU_COUNT:-12} --section SpeedOfLight --section MemoryWorkloadAnalysis \
    --section Occupancy --section LaunchStats $W bench --no-peak --warmup 0 --iters 1 "${S1[@]}" \
    >"$OUT/ncu.txt" 2>&1
  grep -E "^  [a-z_].*\(|Duration|DRAM Throughput|Memory Throughput|Achieved Occupancy|Registers Per|Compute \(SM\) Thr" \
    "$OUT/ncu.txt" | head -120
fi
# Whole training steps of the 1.3B preset (stage-1 and stage-2 shapes); `runs TAG` writes
# run-s1TAG.txt, s1TAG-metrics.jsonl and the same for s2; with PROFILE_STEP=N (e.g. 5) also
# s1TAG-profile.json / s2TAG-profile.json, the kernel time of global step N by class.
runs() {
  local tag=$1
  common=(--set model.wan21_dit.preset=\"wan2.1-t2v-1.3b\" --set data.synthetic.text_dim=4096
    --set data.synthetic.height=30 --set data.synthetic.width=52 --set checkpoint.at_stage_end=false
    --set checkpoint.export_diffusers=false --set logging.every_steps=1 --set logging.progress=\"off\"
    --set logging.profile_step=${PROFILE_STEP:-0} ${RUN_EXTRA:-})
  rm -rf /tmp/r-s1 /tmp/r-s2
  timeout 150 $W run --out /tmp/r-s1 "${common[@]}" --set stages.0.steps=6 --set stages.0.global_batch=32 \
    --set stages.0.micro_batch=32 --set stages.1.steps=1 --set stages.1.global_batch=1 \
    --set stages.1.micro_batch=1 >"$OUT/run-s1$tag.txt" 2>&1
  cp /tmp/r-s1/metrics.jsonl "$OUT/s1$tag-metrics.jsonl" 2>/dev/null; tail -3 "$OUT/run-s1$tag.txt"
  cp /tmp/r-s1/profile/summary.json "$OUT/s1$tag-profile.json" 2>/dev/null
  [ "${KEEP_TRACE:-0}" = 1 ] && cp /tmp/r-s1/profile/trace-rank0.json "$OUT/s1$tag-trace.json" 2>/dev/null
  timeout 150 $W run --out /tmp/r-s2 "${common[@]}" --set stages.0.steps=1 --set stages.0.global_batch=1 \
    --set stages.0.micro_batch=1 --set stages.1.steps=6 --set stages.1.global_batch=1 \
    --set stages.1.micro_batch=1 --set data.synthetic.latent_frames=21 >"$OUT/run-s2$tag.txt" 2>&1
  cp /tmp/r-s2/metrics.jsonl "$OUT/s2$tag-metrics.jsonl" 2>/dev/null; tail -3 "$OUT/run-s2$tag.txt"
  cp /tmp/r-s2/profile/summary.json "$OUT/s2$tag-profile.json" 2>/dev/null
}
if [ -x "$W" ]; then
  has run && runs ""
  # What the fused AdamW buys: the same runs with the per-tensor update.
  has runab && RUN_EXTRA="--set run.kernels.adamw=loop" runs "-adamw-loop"
  # What prefetching the next step's batches on a worker thread buys.
  has runnopf && RUN_EXTRA="--set run.prefetch=false" runs "-noprefetch"
  # The same steps with seq_packer: stage 1's 32 images in one pack of 12480 tokens (32 x 390).
  has runpack && RUN_EXTRA="--set collator.plugin=\"seq_packer\" --set collator.seq_packer.max_tokens=12480" \
    runs "-seqpack"
  # The Megatron path on one GPU (tp=pp=cp=dp=1) on the same packs: against runpack's ddp.
  has runmegatron && RUN_EXTRA="--set parallelism.plugin=\"megatron_tpppcp\" --set collator.plugin=\"seq_packer\" --set collator.seq_packer.max_tokens=12480" \
    runs "-megatron"
  # automodel_fsdp on one GPU with each `recompute` choice (docs/parallelism.md), against `run`'s
  # ddp: each stage's mean step time after 2 warm-up steps, its peak GPU memory and losses (the
  # choices train alike: equal losses up to bf16 rounding).
  steps() { # TAG LABEL: the figures of s1TAG-metrics.jsonl and s2TAG-metrics.jsonl
    for s in 1 2; do
      python3 -c 'import json, sys
r = [json.loads(l) for l in open(sys.argv[1])]
r = [x for x in r if x["stage_index"] == int(sys.argv[2]) - 1][2:]
print("%s stage %s: %.3f s a step (mean of %d), peak %.1f GiB, losses %s" % (sys.argv[3],
      sys.argv[2], sum(x["step_time_s"] for x in r) / len(r), len(r),
      max(x["peak_mem_gib"] for x in r), " ".join("%.5f" % x["loss"] for x in r)))' \
        "$OUT/s$s$1-metrics.jsonl" $s "$2" 2>&1 | tail -1
    done
  }
  if has runfsdp; then
    has run && steps "" ddp
    for rc in all every_k none; do
      k=; [ $rc = every_k ] && k="--set parallelism.automodel_fsdp.recompute_every=2"
      RUN_EXTRA="--set parallelism.plugin=\"automodel_fsdp\" --set parallelism.automodel_fsdp.recompute=\"$rc\" $k" \
        runs "-fsdp-$rc"
      steps "-fsdp-$rc" "automodel_fsdp recompute=$rc"
    done
  fi
fi
echo "total $((SECONDS - t0)) s"
