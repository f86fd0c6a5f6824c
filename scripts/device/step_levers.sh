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
. scripts/device/measure_lib.sh
start wanhost wan21_dit ddp automodel_fsdp flow_matching synthetic dense seq_packer test_kernels \
  test_wan21_dit

STEPS=${STEPS:-6}
# GPU tests: packed attention (runs of equal segments, flash varlen) and collapsed padding.
[ "${TESTS:-1}" = 1 ] && build-gpu/bin/test_kernels --gtest_filter='PackedAttention*' >"$R/tests.txt" 2>&1
[ "${TESTS:-1}" = 1 ] && WANHOST_TEST_PACKED_ATTENTION=flash build-gpu/bin/test_kernels --gtest_filter='PackedAttention*' \
  >>"$R/tests.txt" 2>&1
[ "${TESTS:-1}" = 1 ] && build-gpu/bin/test_wan21_dit --gtest_filter='*OnAGpu*:*Collapsed*' >>"$R/tests.txt" 2>&1
grep -E "^\[  (PASSED|FAILED) |\[collapse\]|FAILED" "$R/tests.txt" | tee -a "$OUT/summary.txt"
grep -h "key bias: SDPA backend" "$R"/*.txt 2>/dev/null | head -2 | tee -a "$OUT/summary.txt"

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
peer_step 300
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
