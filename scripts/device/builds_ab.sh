#!/usr/bin/env bash
# Several carried builds measured on one machine in one device call, so that their differences
# are not the machines' (H100s of one kind differed by ~4 % in the peer's step, 2026-12-05).
#   BUILDS="next main" scripts/device/builds_ab.sh
# Each name is a build-carry-<name>/ folder (scripts/device/prebuilt.sh --program ... , then
# copied; carry them with build-perf). The first build also runs the GPU tests named in TESTS
# (fp8.sh GPU_TESTS, e.g. "test_kernels test_row_kernel_sums") and the compiled peer's whole step;
# every build runs fp8.sh's graphsteps (bf16 and FP8 replayed 1.3B steps) at STAGES (default
# "1 2"). Results: $OUT/<name>/ (fp8.sh's), and $OUT/table.txt: each run's median step per build,
# its difference from the last build's and its ratio to the peer's step from this call
# (scripts/device/step_summaries.py). FIRST_BUDGET_S / BUDGET_S: seconds the first build (tests,
# peer, steps; default 420) and each other build (default 200) may take; fp8.sh guards each whole
# step with `left 100`, so a budget must pass 100 s by ~28 s a run.
# EACH_PARTS: the fp8.sh parts every build runs (default graphsteps; e.g. "bench" with
# BENCH_SHAPES=14b BENCH_RECIPES="off delayed" BENCH_GELU=1 BENCH_FULL=0 for the 14B blocks, when
# the first build also runs the compiled peer's blocks and the table gives the 14B ratios).
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/wanhost-builds}
BUILDS=${BUILDS:?'BUILDS="name ...": the build-carry-<name>/ folders to measure'}
mkdir -p "$OUT"
first=1
for b in $BUILDS; do
  if [ ! -x "build-carry-$b/bin/wanhost" ]; then
    echo "build-carry-$b: not carried (or no bin/wanhost); skipped" | tee -a "$OUT/table.txt"
    continue
  fi
  rm -rf build-carry && cp -r "build-carry-$b" build-carry
  each=${EACH_PARTS:-graphsteps}
  parts=$each tests= budget=${BUDGET_S:-200}
  if [ $first = 1 ]; then
    tests=${TESTS:-} budget=${FIRST_BUDGET_S:-420}
    [[ " $each " == *" graphsteps "* ]] && parts="peerstep $parts"
    [[ " $each " == *" bench "* ]] && parts="$parts peer"
    [ -n "$tests" ] && parts="tests $parts"
  fi
  PREBUILT=1 BUDGET_S=$budget PARTS="$parts" GPU_TESTS="$tests" STAGES="${STAGES:-1 2}" \
    GRAPH_EAGER=0 GRAPH_FP8=${GRAPH_FP8:-1} GRAPH_FP8_BASES=0 FP8_DELAYED=1 FP8_GELU=1 \
    STEPS=${STEPS:-16} OUT="$OUT/$b" bash scripts/device/fp8.sh >/dev/null 2>&1
  echo "== $b (exit $?)" >>"$OUT/table.txt"
  grep -E "^\[  (PASSED|FAILED) |FAILED|^\[ figures|exit [0-9]|not built" "$OUT/$b/summary.txt" \
    >>"$OUT/table.txt"
  first=0
done
python3 scripts/device/step_summaries.py "$OUT" $BUILDS | tee -a "$OUT/table.txt"
