#!/usr/bin/env bash
# One device call for FP8 linear layers (run.fp8, docs/performance.md "FP8 linear layers"):
# builds build-gpu, then, each part skipped once the call's time runs short (BUDGET_S) and each
# chosen by PARTS (default: all of them, in this order):
#  - tests:   each binary under a time limit: the FP8 products against their emulation and the
#             fused kernels (test_kernels), the FP8 cast kernel itself (test_fp8_cast_kernel), AdamW (test_optim), the weight copies, graphs and host
#             reads (test_compute_weights, test_train_units),
#             the model's GPU tests (test_wan21_dit *OnAGpu*);
#  - bench:   4-block stacks of stage 1 and 2 (captions of 20-200 tokens padded to 512) and 14B
#             2 blocks x 37440 tokens, fp8 off and tensorwise (BENCH_RECIPES, BENCH_GELU=1,
#             BENCH_SHAPES="s1 s2 14b", BENCH_FP8_ARGS: more flags for the FP8 runs);
#             with BENCH_FULL=1 (default) also
#             stage 1 and 2 with full 512-row captions (nothing for the padded-row collapse);
#             BENCH_CASTS=1 adds stage-1 blocks with fp32 masters, weights cast at each use and
#             in one pass a step (--weight-casts);
#  - profile: device time per kernel class of the stage-1 bench (PROFILE_SHAPES: also 14b),
#             fp8 off and tensorwise (PROFILE_RECIPES);
#  - ab:      the loss A/B: 1.3B dimensions, AB_LAYERS blocks (default 8), AB_STEPS steps
#             (default 300) of each stage (AB_S2_BATCH clips a stage-2 step, default 1), bf16
#             and FP8 on the same data and seeds; `wanhost
#             compare`'s largest smoothed-loss difference per stage, CSVs and summaries (PNGs
#             where the build has PLplot; else run `wanhost compare` here on the returned
#             metrics); AB_FLOOR=1 adds bf16 with the fused kernels off, the same arithmetic with
#             other roundings (the noise floor); AB_TENSORWISE=0 leaves the tensorwise run out;
#  - steps:   whole 1.3B steps (`wanhost run`, ddp), stage 1 and 2, fp8 off and tensorwise
#             (STEP_PRECISIONS="bf16": bf16 only);
#             FP8_DELAYED=1 adds delayed scaling (run.fp8 = delayed) to graphsteps' FP8 runs
#             (with GRAPH_FP8=1) and to the loss A/B;
#  - graphsteps: whole bf16 steps, text padded to 252 rows, eagerly and with run.cuda_graphs
#             (steps replayed as CUDA graphs); GRAPH_FP8=1 adds FP8 steps with graphs,
#             GRAPH_ADAMW=1 bf16 graphs with LibTorch's fused AdamW (the default is wanhost's
#             kernel), GRAPH_CASTS=1 bf16 graphs with the weights cast in one pass a step
#             (run.kernels.weight_casts=per_step), FP8_GELU=1 (with GRAPH_FP8) FP8 graphs with the
#             feed-forward's GELU in the FP8 casts (run.kernels.fp8_gelu; with FP8_DELAYED=1 the
#             delayed recipe's), FP8_SUMS=1 (with the three above) also the input gradients of
#             the layers that share an input summed in their products
#             (run.kernels.fp8_input_gradients), FP8_FAST=input_gradients|all (with the three)
#             also fast accumulation in more products (run.fp8_fast_accumulation; in the A/B
#             too, beside delayed scaling's run), GRAPH_BF16=0 no bf16 runs (GRAPH_EAGER=0: no
#             eager one), GRAPH_FP8_BASES=0
#             neither tensorwise nor delayed without the operator, FP8_GELU_ALONE=0 not the
#             operator without FP8_SUMS / FP8_FAST either;
#  - peerstep: the compiled peer's whole step (build-perf/peer/peer_wan_step.py), before the
#             whole steps so that a call short of time still compares them, and every whole-step
#             run's ratio to it at the end ("ratio" lines);
#  - stepprofile: one whole 1.3B bf16 step of each stage (STAGES) under the profiler
#             (logging.profile_step): device time per kernel class and the longest kernels, the
#             optimizer, gradient casts and clipping included; PROFILE_LEVERS=1 also with the
#             weights cast in one pass and wanhost's AdamW, PROFILE_FP8=1 also with FP8 on top;
#             PROFILE_GRAPHS=1 first a replayed step (bf16 unless GRAPH_BF16=0; FP8 too with
#             GRAPH_FP8=1, the recipes and the operator as graphsteps) with the
#             device's idle time between its kernels (PROFILE_EAGER=0: only those);
#             PROFILE_STAGES: the stages profiled (default STAGES);
#  - peer:    the compiled peer's blocks (build-perf/peer/peer_wan_block.py) on the same GPU.
#  - ncu:     the FP8 cast kernel under Nsight Compute (not in the default PARTS).
# PREBUILT=1 with a carried build-carry/ (scripts/device/prebuilt.sh --program TEST...) skips the
# build (~150 s of a fresh machine); the tests are then those carried.
# Results: $OUT/summary.txt, $OUT/ab/ (PNGs, CSVs, summaries), $OUT/results.tar.gz.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/wanhost-fp8}
R=/tmp/fp8
BUDGET_S=${BUDGET_S:-570}
PARTS=${PARTS:-tests bench profile ab steps graphsteps peerstep stepprofile peer}
want() { [[ " $PARTS " == *" $1 "* ]]; }
. scripts/device/measure_lib.sh
start wanhost wan21_dit ddp automodel_fsdp flow_matching synthetic dense test_kernels \
  $(want tests && echo test_fp8_cast_kernel test_row_kernel_sums test_wan21_dit test_optim \
    test_compute_weights test_train_units)

# A GPU test binary under a time limit (a hanging test must not take the whole call); its exit
# status goes into the summary when it is not 0 (124: timed out).
# GPU_TESTS="test_kernels ...": only those binaries (default: all below).
gpu_test() { # BINARY ARGS... (TEST_S: the limit, default 150 s)
  [ -z "${GPU_TESTS:-}" ] || [[ " $GPU_TESTS " == *" $1 "* ]] || return 0
  local bin=$BIN/$1
  shift
  [ -x "$bin" ] || { say "$bin: not built"; return; }
  timeout "${TEST_S:-150}" "$bin" "$@" >>"$R/tests.txt" 2>&1
  local rc=$?
  [ $rc = 0 ] || say "$(basename "$bin") exit $rc"
}
if want tests; then
  : >"$R/tests.txt"
  gpu_test test_kernels --gtest_filter='Fp8*:FusedGpu*'
  # The FP8 cast kernel called directly: several row tiles a block, every output bit for bit.
  gpu_test test_fp8_cast_kernel --gtest_also_run_disabled_tests
  # CAST_VARIANTS="NAME...": carried builds of the same test with another cast kernel (an A/B of
  # kernel variants in one call; name them in GPU_TESTS too).
  for v in ${CAST_VARIANTS:-}; do
    echo "== $v" >>"$R/tests.txt"
    gpu_test "$v" --gtest_also_run_disabled_tests
  done
  # The row kernels' one-pass parameter-gradient sums against the two-pass form, and their times.
  gpu_test test_row_kernel_sums --gtest_also_run_disabled_tests
  # The model's GPU tests: fused against plain path, captured step, packed and collapsed text.
  gpu_test test_wan21_dit --gtest_filter='*OnAGpu*'
  # LibTorch's fused CUDA AdamW with the device-side skip (found_inf) and clip (grad_scale), and
  # wanhost's AdamW kernel against it.
  gpu_test test_optim
  # The weights' one cast pass a step: the fused operators' autograd functions read the copies.
  gpu_test test_compute_weights
  # The step's text_lengths handed on the host, pinned (SDK 2.4 models); whole steps replayed as
  # CUDA graphs against eager ones (run.cuda_graphs); the step's numbers read through pinned memory.
  TEST_S=240 gpu_test test_train_units \
    --gtest_filter="${TRAIN_TESTS:-StepPrefetcher*:CudaGraphs*:HostRead*:Fp8FeedForward*}"
  grep -E "^== |^\[  (PASSED|FAILED) |FAILED|figures|Failure" "$R/tests.txt" | head -40 |
    tee -a "$OUT/summary.txt"
fi

# PARTS=ncu: the FP8 cast kernel under Nsight Compute (where the device has it): throughput, memory
# and warp-stall sections of test_fp8_cast_kernel's figures at 12480 x 1536 (the four casts, 23 launches
# each: tensorwise, E5M2 with column sums, with GELU's derivative, delayed without sums), for
# why the casts move bytes at ~1.7 TB/s of an H100's 3.35 (docs/performance.md, 2026-12-05).
if want ncu; then
  NCU=$(command -v ncu || ls /usr/local/cuda/bin/ncu 2>/dev/null || true)
  if [ -n "$NCU" ] && [ -x "$BIN/test_fp8_cast_kernel" ]; then
    for t in test_fp8_cast_kernel ${CAST_VARIANTS:-}; do
      [ -x "$BIN/$t" ] || continue
      timeout 150 "$NCU" --kernel-name regex:cast_transpose_wide --launch-skip 4 --launch-count 92 \
        --section SpeedOfLight --section MemoryWorkloadAnalysis --section Occupancy \
        --section WarpStateStats --section LaunchStats --section SchedulerStats \
        "$BIN/$t" --gtest_filter='*Figures*' --gtest_also_run_disabled_tests \
        >"$OUT/ncu-$t.txt" 2>&1
      say "ncu $t exit $? ($(wc -l <"$OUT/ncu-$t.txt") lines in ncu-$t.txt)"
    done
  else
    say "ncu: not on this machine or no test_fp8_cast_kernel"
  fi
fi

# The bench flags of a run.fp8 recipe's block stacks (bench and profile parts), into BF: the
# feed-forward operator with BENCH_GELU=1 and BENCH_FP8_ARGS (e.g. "--fp8-fast-accumulation all");
# none for fp8=off.
bench_fp8_flags() { # RECIPE
  BF=()
  [ "$1" = off ] && return
  [ "${BENCH_GELU:-0}" = 1 ] && BF=(--fp8-gelu fused)
  BF+=(${BENCH_FP8_ARGS:-})
}
S1=(--preset wan2.1-t2v-1.3b --blocks 4 --batch 32 --video-tokens 390 --text-tokens 512)
S2=(--preset wan2.1-t2v-1.3b --blocks 4 --batch 1 --video-tokens 8190 --text-tokens 512)
P14=(--preset wan2.1-t2v-14b --blocks 2 --batch 1 --video-tokens 37440 --text-tokens 512)
if want bench && [ -x "$W" ] && left 200; then
  # BENCH_RECIPES: the run.fp8 recipes benched (default "off tensorwise"); BENCH_GELU=1 puts the
  # FP8 ones on the feed-forward operator (--fp8-gelu fused).
  for f in ${BENCH_RECIPES:-off tensorwise}; do
    bench_fp8_flags "$f"
    g=("${BF[@]}")
    # BENCH_SHAPES: which of the three (default "s1 s2 14b").
    bs=" ${BENCH_SHAPES:-s1 s2 14b} "
    [[ $bs == *" s1 "* ]] && bench "s1 captions 20-200 fp8=$f ${g[*]}" "${S1[@]}" \
      --caption-tokens 20:200 --fp8 $f "${g[@]}"
    [[ $bs == *" s2 "* ]] && bench "s2 captions 20-200 fp8=$f ${g[*]}" "${S2[@]}" \
      --caption-tokens 20:200 --fp8 $f "${g[@]}"
    [[ $bs == *" 14b "* ]] && bench "14B 2 blocks fp8=$f ${g[*]}" "${P14[@]}" --fp8 $f "${g[@]}"
  done
  if [ "${BENCH_CASTS:-0}" = 1 ]; then # fp32 masters: weights cast at each use vs in one pass
    for c in per_use per_step; do
      bench "s1 fp32 masters casts $c" "${S1[@]}" --caption-tokens 20:200 --fp32-master \
        --weight-casts $c
    done
  fi
  if [ "${BENCH_FULL:-1}" = 1 ]; then # captions padded to 512 with no collapse to gain from
    bench "s1 full captions fp8=off" "${S1[@]}" --fp8 off
    bench "s2 full captions fp8=off" "${S2[@]}" --fp8 off
  fi
fi
# Where a block stack's time goes (device time per kernel class): PROFILE_SHAPES "s1" (default,
# the stage-1 blocks) and/or "14b"; PROFILE_RECIPES the run.fp8 recipes (default "off
# tensorwise"), the FP8 ones with bench's flags (BENCH_GELU, BENCH_FP8_ARGS).
if want profile && [ -x "$W" ] && left 200; then
  for shape in ${PROFILE_SHAPES:-s1}; do
    case $shape in
      s1) shape_args=("${S1[@]}" --caption-tokens 20:200) ;;
      14b) shape_args=("${P14[@]}") ;;
      *) say "PROFILE_SHAPES: unknown shape '$shape' (s1, 14b)"; continue ;;
    esac
    for f in ${PROFILE_RECIPES:-off tensorwise}; do
      left 150 || { say "profile $shape fp8=$f skipped: time"; continue; }
      bench_fp8_flags "$f"
      g=("${BF[@]}")
      timeout 150 $W bench --no-peak "${shape_args[@]}" --fp8 $f "${g[@]}" \
        --profile "$R/trace-$shape-$f.json" --profile-top 16 >"$R/profile-$shape-$f.txt" 2>&1
      say "profile $shape fp8=$f ${g[*]}:"
      grep -v "^\[" "$R/profile-$shape-$f.txt" | head -44 >>"$OUT/summary.txt"
    done
  done
fi
# The loss A/B: the seed recipe's model dimensions and optimizer (configs/wan21-1.3b.json) on
# synthetic latents, AB_LAYERS blocks, both stages, the same seeds and data for both runs.
# AB_S1_STEPS: stage 1's steps (default AB_STEPS; 1 for a stage-2 A/B only, e.g. with more clips).
# AB_S2_BATCH: clips a stage-2 step (default 1, as the recipe; one micro batch each): at one clip a
# step two bf16 runs that differ only in rounding part by ~4 % (2026-12-04), more than the 2 %
# bound, so a larger batch is what lets the bound say something about FP8.
AB_STEPS=${AB_STEPS:-300}
ab_run() { # TAG EXTRA...
  local tag=$1
  shift
  rm -rf "$R/ab-$tag"
  timeout 240 $W run configs/wan21-1.3b.json --out "$R/ab-$tag" \
    --set "model.wan21_dit.overrides={\"num_layers\":${AB_LAYERS:-8}}" \
    --set stages.0.steps=${AB_S1_STEPS:-$AB_STEPS} --set stages.0.global_batch=32 \
    --set stages.0.micro_batch=32 \
    --set stages.0.optimizer.lr=1e-4 --set stages.0.lr_schedule.warmup_steps=30 \
    --set stages.1.steps=$AB_STEPS --set stages.1.global_batch=${AB_S2_BATCH:-1} \
    --set stages.1.micro_batch=1 \
    --set stages.1.optimizer.lr=1e-4 \
    --set data.synthetic.caption_tokens_min=20 --set data.synthetic.caption_tokens_max=200 \
    --set checkpoint.at_stage_end=false --set checkpoint.export_diffusers=false \
    --set checkpoint.every_steps=100000 --set logging.every_steps=1 --set logging.progress=\"off\" \
    "$@" >"$R/ab-$tag.txt" 2>&1
  say "ab $tag: exit $? after $((SECONDS - t0)) s; $(grep -c loss "$R/ab-$tag/metrics.jsonl" 2>/dev/null) steps"
}
if want ab && [ -x "$W" ] && left 150; then
  ab_run bf16
  runs=("$R/ab-bf16") labels=(--label bf16)
  # AB_TENSORWISE=0: no tensorwise run (its A/B is on record; a call then fits delayed and the
  # noise floor at AB_S2_BATCH > 1).
  if [ "${AB_TENSORWISE:-1}" = 1 ] && left 100; then
    ab_run fp8 --set run.fp8=\"tensorwise\"
    runs+=("$R/ab-fp8") labels+=(--label fp8-tensorwise)
  fi
  # FP8_DELAYED=1: delayed scaling too (run.fp8 = delayed, 16 steps of history).
  # FP8_GELU=1: its FP8 runs with the feed-forward operator (the same values as the separate
  # layers, bit for bit on a GPU: Fp8Gpu.FusedFeedForward*).
  if [ "${FP8_DELAYED:-0}" = 1 ] && left 130; then
    G8=()
    [ "${FP8_GELU:-0}" = 1 ] && G8=(--set run.kernels.fp8_gelu=\"fused\")
    # AB_DELAYED_PLAIN=0: not this run (its A/B is on record), only the fast-accumulation one.
    if [ "${AB_DELAYED_PLAIN:-1}" = 1 ]; then
      ab_run fp8-delayed --set run.fp8=\"delayed\" "${G8[@]}"
      runs+=("$R/ab-fp8-delayed") labels+=(--label fp8-delayed)
    fi
    # FP8_FAST=input_gradients|all: the same with fast accumulation in more products.
    if [ -n "${FP8_FAST:-}" ] && left 130; then
      ab_run fp8-delayed-fast --set run.fp8=\"delayed\" "${G8[@]}" \
        --set run.fp8_fast_accumulation=\"$FP8_FAST\"
      runs+=("$R/ab-fp8-delayed-fast") labels+=(--label "fp8-delayed-fast-$FP8_FAST")
    fi
  fi
  # The noise floor (AB_FLOOR=1): bf16 again with the fused kernels off, the same arithmetic with
  # other roundings. Where this pair parts as far as bf16 and FP8, the 2 % bound measures how
  # chaotic one-sample steps are, not FP8.
  if [ "${AB_FLOOR:-0}" = 1 ] && left 130; then
    ab_run bf16-unfused --set model.wan21_dit.fused_kernels=\"off\"
    runs+=("$R/ab-bf16-unfused") labels+=(--label bf16-unfused)
  fi
  # `wanhost compare` gives each run's largest smoothed-loss difference from the first (bf16) per
  # stage (the 2 % bound); the runs' metrics travel in results.tar.gz.
  mkdir -p "$OUT/ab"
  $W compare "${runs[@]}" --out "$OUT/ab" "${labels[@]}" --window 20 >"$R/compare.txt" 2>&1
  grep -o "stage '.*" "$R/compare.txt" | sed 's/^/ab /' | tee -a "$OUT/summary.txt"
fi

# The compiled peer's whole step first (its ratio lines come after the whole-step runs): a call
# whose runs take longer than planned still compares them (on 2026-12-05 the peer came last and
# the budget skipped it).
want peerstep && peer_step 150

# Whole 1.3B steps (30 blocks), medians after the first third (measure_lib.sh).
STEPS=${STEPS:-8}
if want steps && [ -x "$W" ]; then
  for stage in ${STAGES:-1 2}; do
    left 100 && run_steps ddp-bf16 $stage
    [[ " ${STEP_PRECISIONS:-bf16 fp8} " == *" fp8 "* ]] && left 100 &&
      run_steps ddp-fp8 $stage --set run.fp8=\"tensorwise\"
  done
  for extra in ${EXTRA_RUNS:-}; do # fsdp-none: automodel_fsdp, recompute none; mmap0: see below
    case $extra in
      fsdp-none)
        for stage in ${STAGES:-1 2}; do
          left 100 && run_steps fsdp-none $stage --set parallelism.plugin=\"automodel_fsdp\" \
            --set parallelism.automodel_fsdp.recompute=\"none\"
        done ;;
      mmap0) # glibc reusing large host blocks instead of fresh zeroed pages (docs/performance.md)
        left 100 && MALLOC_MMAP_MAX_=0 run_steps ddp-bf16-mmap0 1 ;;
    esac
  done
fi
# Whole steps replayed as CUDA graphs (run.cuda_graphs) and the same steps eagerly: text padded to
# a fixed 252 rows (each batch's longest caption would change the shapes every step; 252 >= the
# longest caption, and the model pads to its text_len of 512 itself, so the arithmetic is that of
# 512 rows, while 512 rows on the host took ~0.3 s of input making a 32-sample step on an H200
# machine, more than the step), and the collapsed text rows taken from those 252 rows
# (collapsed_rows_from = text_rows: 256 kept rows every step, the common case of captions of
# 20-200 tokens, instead of 192 for a batch whose longest caption is at most 188: a second key,
# whose eager step beside the first key's graph ran out of memory on an 80 GB H100, 2026-12-05).
# Stage 1 keeps its LR warm-up (the update reads the LR on the device, SDK 2.6: a warm-up's steps
# are replayed too).
G=(--set stages.0.text_rows=252 --set stages.1.text_rows=252
  --set model.wan21_dit.collapsed_rows_from=\"text_rows\")
# GRAPH_ARGS: more `wanhost run` arguments for every graphsteps and profile run (words).
G+=(${GRAPH_ARGS:-})
# Replayed steps with delayed scaling and the feed-forward operator (the FP8 recipe the levers
# build on), and the levers FP8_SUMS / FP8_FAST ask for on top of it (graphsteps' last FP8 run and
# stepprofile's).
DG=(--set run.cuda_graphs=true --set run.fp8=\"delayed\" --set run.kernels.fp8_gelu=\"fused\")
LEVERS=()
[ "${FP8_SUMS:-0}" = 1 ] && LEVERS+=(--set run.kernels.fp8_input_gradients=\"summed\")
[ -n "${FP8_FAST:-}" ] && LEVERS+=(--set run.fp8_fast_accumulation=\"$FP8_FAST\")
if want graphsteps && [ -x "$W" ]; then
  for stage in ${STAGES:-1 2}; do
    # GRAPH_BF16=0: no bf16 runs (a call about FP8 only).
    if [ "${GRAPH_BF16:-1}" = 1 ]; then
      [ "${GRAPH_EAGER:-1}" = 1 ] && left 100 && run_steps ddp-bf16-t252 $stage "${G[@]}"
      left 100 && run_steps ddp-bf16-graphs $stage "${G[@]}" --set run.cuda_graphs=true
    fi
    # GRAPH_ADAMW=1: the same with LibTorch's fused AdamW (run.kernels.adamw = fused; the default
    # is wanhost's multi-tensor kernel since 2026-12-05): the AdamW kernel's A/B.
    [ "${GRAPH_ADAMW:-0}" = 1 ] && left 100 && run_steps ddp-bf16-graphs-torch-adamw $stage \
      "${G[@]}" --set run.cuda_graphs=true --set run.kernels.adamw=\"fused\"
    # GRAPH_CASTS=1: every master weight cast to bf16 in one pass a step (run.kernels.weight_casts).
    C=(--set run.cuda_graphs=true --set run.kernels.weight_casts=\"per_step\")
    [ "${GRAPH_CASTS:-0}" = 1 ] && left 100 && run_steps ddp-bf16-graphs-casts $stage "${G[@]}" \
      "${C[@]}"
    # GRAPH_FP8=1: FP8 linear layers replayed too (cheaper arithmetic than the bf16 peer's).
    # GRAPH_FP8_BASES=0: neither this run nor delayed scaling's without the operator (a call
    # about the levers on top of delayed + operator only).
    [ "${GRAPH_FP8:-0}${GRAPH_FP8_BASES:-1}" = 11 ] && left 100 && run_steps ddp-fp8-graphs \
      $stage "${G[@]}" --set run.cuda_graphs=true --set run.fp8=\"tensorwise\"
    # FP8_DELAYED=1 (with GRAPH_FP8): the same with delayed scaling (run.fp8 = delayed: no max|x|
    # pass, the scales from the last 16 steps' maxima).
    [ "${GRAPH_FP8:-0}${FP8_DELAYED:-0}${GRAPH_FP8_BASES:-1}" = 111 ] && left 100 &&
      run_steps ddp-fp8-delayed-graphs $stage "${G[@]}" --set run.cuda_graphs=true \
        --set run.fp8=\"delayed\"
    # FP8_GELU=1 FP8_DELAYED=1 (with GRAPH_FP8): the feed-forward operator with delayed scaling
    # (its compute-bound max|x| pass gone: GELU evaluated once a step each way).
    # (FP8_GELU_ALONE=0: not this run, only the levers on top of it below.)
    [ "${GRAPH_FP8:-0}${FP8_DELAYED:-0}${FP8_GELU:-0}${FP8_GELU_ALONE:-1}" = 1111 ] && left 100 &&
      run_steps ddp-fp8-delayed-graphs-gelu $stage "${G[@]}" "${DG[@]}"
    # FP8_SUMS=1 (with GRAPH_FP8, FP8_DELAYED and FP8_GELU): the same with the input gradients
    # of the layers that share an input summed inside their products
    # (run.kernels.fp8_input_gradients = summed; the default since 2026-12-05 evening, so the
    # runs above sum them too; GRAPH_ARGS='--set run.kernels.fp8_input_gradients="separate"'
    # gives every run the old way).
    [ "${GRAPH_FP8:-0}${FP8_DELAYED:-0}${FP8_GELU:-0}${FP8_SUMS:-0}" = 1111 ] && left 100 &&
      run_steps ddp-fp8-delayed-graphs-gelu-sums $stage "${G[@]}" "${DG[@]}" \
        --set run.kernels.fp8_input_gradients=\"summed\"
    # FP8_FAST=input_gradients|all (with GRAPH_FP8, FP8_DELAYED and FP8_GELU, and FP8_SUMS when
    # set): the same with fast accumulation in more products (run.fp8_fast_accumulation).
    [ "${GRAPH_FP8:-0}${FP8_DELAYED:-0}${FP8_GELU:-0}" = 111 ] && [ -n "${FP8_FAST:-}" ] &&
      left 100 && run_steps ddp-fp8-delayed-graphs-gelu-fast-$FP8_FAST $stage "${G[@]}" \
      "${DG[@]}" "${LEVERS[@]}"
    # FP8_GELU=1 (with GRAPH_FP8, without FP8_DELAYED): the tensorwise recipe with the
    # feed-forward's GELU inside the FP8 casts.
    [ "${GRAPH_FP8:-0}${FP8_GELU:-0}${FP8_DELAYED:-0}" = 110 ] && left 100 &&
      run_steps ddp-fp8-graphs-gelu $stage "${G[@]}" --set run.cuda_graphs=true \
        --set run.fp8=\"tensorwise\" --set run.kernels.fp8_gelu=\"fused\"
  done
fi
want peerstep && ratios
# PROFILE_LEVERS=1: the same profile with the built levers on (weights cast in one pass a step;
# wanhost's AdamW kernel is the default), and PROFILE_FP8=1 with FP8 linear layers too.
# PROFILE_GRAPHS=1: a replayed step (graphsteps' settings: one key a stage, the profiled step a
# replay of it), bf16 and, with GRAPH_FP8=1, FP8: its kernels and the device's idle time between
# them ("device span"), what is left of a step once the host launches nothing.
profile_step() { # TAG STAGE EXTRA...
  local tag=$1 stage=$2
  shift 2
  left 100 || return 1
  STEPS=8 run_steps profile-$tag $stage --set logging.profile_step=$((stage == 1 ? 6 : 7)) "$@"
  say "whole-step profile, stage $stage, $tag:"
  sed -n '/profile of global step/,/^\[/p' "$R/run-profile-$tag-s$stage.txt" | grep -v "^\[" |
    head -40 >>"$OUT/summary.txt"
}
if want stepprofile && [ -x "$W" ]; then
  L=(--set run.kernels.weight_casts=\"per_step\")
  for stage in ${PROFILE_STAGES:-${STAGES:-1 2}}; do
    if [ "${PROFILE_GRAPHS:-0}" = 1 ]; then
      if [ "${GRAPH_BF16:-1}" = 1 ]; then
        profile_step bf16-graphs $stage "${G[@]}" --set run.cuda_graphs=true || break
      fi
      # FP8 (GRAPH_FP8=1): tensorwise, or with FP8_DELAYED=1 delayed scaling (and with FP8_GELU=1
      # also the feed-forward operator).
      [ "${GRAPH_FP8:-0}${FP8_DELAYED:-0}" = 10 ] && { profile_step fp8-graphs $stage "${G[@]}" \
        --set run.cuda_graphs=true --set run.fp8=\"tensorwise\" || break; }
      [ "${GRAPH_FP8:-0}${FP8_DELAYED:-0}${GRAPH_FP8_BASES:-1}" = 111 ] && {
        profile_step fp8-delayed-graphs $stage "${G[@]}" --set run.cuda_graphs=true \
          --set run.fp8=\"delayed\" || break
      }
      [ "${GRAPH_FP8:-0}${FP8_DELAYED:-0}${FP8_GELU:-0}${FP8_GELU_ALONE:-1}" = 1111 ] && {
        profile_step fp8-delayed-graphs-gelu $stage "${G[@]}" "${DG[@]}" || break
      }
      # With FP8_SUMS=1 and/or FP8_FAST: the same with those levers (graphsteps' last FP8 run).
      if [ "${GRAPH_FP8:-0}${FP8_DELAYED:-0}${FP8_GELU:-0}" = 111 ] && [ ${#LEVERS[@]} -gt 0 ]; then
        profile_step fp8-delayed-graphs-levers $stage "${G[@]}" "${DG[@]}" "${LEVERS[@]}" || break
      fi
      [ "${PROFILE_EAGER:-1}" = 1 ] || continue
    fi
    profile_step bf16 $stage || break
    [ "${PROFILE_LEVERS:-0}" = 1 ] && { profile_step bf16-levers $stage "${L[@]}" || break; }
    [ "${PROFILE_FP8:-0}" = 1 ] &&
      { profile_step fp8-levers $stage "${L[@]}" --set run.fp8=\"tensorwise\" || break; }
    # With FP8_GELU=1 too: the feed-forward operator's kernels against the separate GELU's.
    [ "${PROFILE_FP8:-0}${FP8_GELU:-0}" = 11 ] &&
      { profile_step fp8-gelu $stage "${L[@]}" --set run.fp8=\"tensorwise\" \
        --set run.kernels.fp8_gelu=\"fused\" || break; }
  done
fi
if want peer && [ -f build-perf/peer/peer_wan_block.py ] && left 190; then
  PYTHONUNBUFFERED=1 timeout 200 python3 build-perf/peer/peer_wan_block.py compiled 2>&1 |
    grep -v Warning | tee "$R/peer_block.jsonl" | grep "{" | sed 's/^/peer block /' |
    tee -a "$OUT/summary.txt"
fi

say "total $((SECONDS - t0)) s"
tar czf "$OUT/results.tar.gz" -C "$R" --exclude='ab-*/checkpoints' --exclude='trace-*' . 2>/dev/null
