#!/usr/bin/env bash
# The CPU test suite on a device machine's cores (16 on an H200 machine: a faster check than the
# 2-core development machine; CI on a clean clone stays the judge). Builds everything into
# build-suite with the Debian packages of .deps/ (scripts/device/fetch-debs.sh; name .deps in
# `carry`), runs the built-in default recipe on the CPU (its metrics.jsonl to $OUT), then every CPU test
# with the GPU hidden. What the device machine lacks is skipped by the suite itself: the Python
# reference packages (parity fixtures skip), OpenMPI (tests/distributed), FFmpeg (`prepare`).
#   scripts/device/cpu_suite.sh [ctest args...]   e.g. -L core, -R Loader
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/out}
. scripts/device/deps.sh
t0=$SECONDS
configure . build-suite -DCMAKE_BUILD_TYPE=Release -DWANHOST_TEST_PYTHON="$(command -v python3)" \
  >"$OUT/configure.log" 2>&1 || { tail -30 "$OUT/configure.log"; exit 1; }
# BUILD_LIMIT_S: stop the build there (a later call on the still-warm machine continues it).
# -k 0: targets that need what the machine lacks (FFmpeg for the preparation tests) fail alone.
timeout "${BUILD_LIMIT_S:-100000}" ninja -C build-suite -k 0 -j "$(nproc)" >"$OUT/build.log" 2>&1 ||
  { grep -E "^FAILED|error:" "$OUT/build.log" | head -30; tail -2 "$OUT/build.log"; }
echo "built in $((SECONDS - t0)) s"
export CUDA_VISIBLE_DEVICES=
rm -rf /tmp/default-run
( (time build-suite/bin/wanhost run --out /tmp/default-run --set logging.progress=off) \
  >"$OUT/default-run.log" 2>&1; cp /tmp/default-run/metrics.jsonl "$OUT/default-metrics.jsonl") &
# LABELS_EXCLUDE: the labels left out (default: the GPU tests and the slow ones).
ctest --test-dir build-suite -j "$(nproc)" -LE "${LABELS_EXCLUDE:-gpu|slow}" --output-on-failure "$@" \
  >"$OUT/ctest.log" 2>&1 || true
wait
grep -E "tests passed|tests failed|^\s+[0-9]+ - " "$OUT/ctest.log" | tail -40
tail -3 "$OUT/default-run.log"
echo "total $((SECONDS - t0)) s"
