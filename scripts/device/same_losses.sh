#!/usr/bin/env bash
# Runs the built-in default recipe on the CPU with this tree and with another source tree (a
# `git archive` of an earlier commit, unpacked into a git-ignored folder named in `carry`), on the
# same machine, and compares their metrics.jsonl step by step: a change that must not alter
# training shows 0 differing steps. Uses the Debian packages of .deps/ like cpu_suite.sh.
#   scripts/device/same_losses.sh OTHER_SOURCE_DIR
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/out}
other=$1
. scripts/device/deps.sh
build() {  # source build-dir
  configure "$1" "$2" -DCMAKE_BUILD_TYPE=Release -DWANHOST_BUILD_TESTS=OFF >/dev/null
  ninja -C "$2" -j "$(nproc)" wanhost ddp wan21_dit synthetic flow_matching \
    $(grep -q "add_custom_target(runtime" "$1/CMakeLists.txt" && echo runtime) >"$OUT/build-$(basename "$2").log" 2>&1
}
build . build-same-new &
build "$other" build-same-old &
wait
export CUDA_VISIBLE_DEVICES=
for b in new old; do
  rm -rf "/tmp/run-$b"
  build-same-$b/bin/wanhost run --out "/tmp/run-$b" --set logging.progress=off >"$OUT/run-$b.log" 2>&1 &
done
wait
cp /tmp/run-new/metrics.jsonl "$OUT/metrics-new.jsonl"; cp /tmp/run-old/metrics.jsonl "$OUT/metrics-old.jsonl"
python3 - "$OUT/metrics-old.jsonl" "$OUT/metrics-new.jsonl" <<'PY'
import json, sys
a = [json.loads(l) for l in open(sys.argv[1])]
b = [json.loads(l) for l in open(sys.argv[2])]
keys = ("stage", "step", "loss", "lr", "grad_norm")
d = [i for i, (x, y) in enumerate(zip(a, b)) if any(x[k] != y[k] for k in keys)]
print(f"{len(a)} / {len(b)} steps; {len(d)} differ in {keys}" + (f"; first: {a[d[0]]} vs {b[d[0]]}" if d else ""))
PY
