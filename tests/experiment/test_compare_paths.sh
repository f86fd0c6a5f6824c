#!/usr/bin/env bash
# CTest experiment_compare_paths_smoke (tests/experiment/CMakeLists.txt):
#   test_compare_paths.sh BUILD_DIR PYTHON OUT_DIR
# Runs scripts/compare_paths.sh --size smoke into OUT_DIR, checks what it must leave there, runs
# it again and checks that every step was kept. Exit 77 (skipped) without ffmpeg or the Python
# packages.
set -uo pipefail
build=$1 python=$2 out=$3
root=$(cd "$(dirname "$0")/../.." && pwd)
fail() {
  echo "FAIL: $*" >&2
  exit 1
}
command -v ffmpeg >/dev/null || { echo "SKIP: no ffmpeg program"; exit 77; }
"$python" -c 'import torch, transformers, sentencepiece' 2>/dev/null ||
  { echo "SKIP: $python lacks torch, transformers or sentencepiece"; exit 77; }
np=2
command -v mpirun >/dev/null || np=1

export WANHOST_BUILD_DIR=$build WANHOST_PYTHON=$python
log=$out.log
t0=$SECONDS
"$root/scripts/compare_paths.sh" --size smoke --np $np --out "$out" --fresh >"$log" 2>&1 ||
  { tail -40 "$log" >&2; fail "compare_paths.sh --size smoke failed (log: $log)"; }
echo "first run: $((SECONDS - t0)) s (--np $np)"

runs=(automodel megatron_per_pack megatron_per_sample)
for f in videos/v000_square_move.mp4 videos/v000_square_move.txt encoders/tokenizer/spiece.model \
  encoders/text_encoder/config.json encoders/vae/config.json data/frames/index.json \
  data/whole/index.json compare/loss_t2i.png compare/loss_t2v.png compare/loss_t2i.csv \
  compare/loss_t2v.csv compare/summary.md compare/summary.json timings.tsv; do
  [ -s "$out/$f" ] || fail "$out/$f is missing or empty"
done
[ "$(find "$out/videos" -name '*.mp4' | wc -l)" = 10 ] || fail "expected 10 videos in $out/videos"
for run in "${runs[@]}"; do
  [ "$(wc -l <"$out/runs/$run/metrics.jsonl")" = 7 ] ||
    fail "$out/runs/$run/metrics.jsonl: expected 4 + 3 steps"
  [ -d "$out/runs/$run/export" ] || fail "$out/runs/$run/export is missing"
  for f in t2i/000.png t2i/000.reference.png t2i/samples.jsonl t2v/000.mp4 t2v/000.reference.mp4 \
    t2v/samples.jsonl; do
    [ -s "$out/samples/$run/$f" ] || fail "$out/samples/$run/$f is missing or empty"
  done
  grep -q "\"$run\"" "$out/compare/summary.json" || fail "compare/summary.json does not name $run"
done
# The runs differ where their recipes say, and nowhere else that matters to the comparison.
"$python" - "$out" <<'PY' || fail "the runs' resolved configurations differ from what the recipes say"
import json, sys
out = sys.argv[1]
cfg = {r: json.load(open(f"{out}/runs/{r}/config.resolved.json"))
       for r in ("automodel", "megatron_per_pack", "megatron_per_sample")}
fm = lambda r: cfg[r]["scheduler"]["flow_matching"]
assert cfg["automodel"]["parallelism"]["plugin"] == "automodel_fsdp"
assert cfg["megatron_per_pack"]["parallelism"]["plugin"] == "megatron_tpppcp"
assert cfg["megatron_per_sample"]["parallelism"]["plugin"] == "megatron_tpppcp"
assert fm("megatron_per_pack")["timestep_granularity"] == "per_pack"
assert cfg["megatron_per_pack"]["run"]["randomness"] == "shared_across_data_parallel"
assert fm("megatron_per_sample")["timestep_granularity"] == "per_sample"
assert cfg["megatron_per_sample"]["run"]["randomness"] == "per_sample"
assert fm("automodel")["timestep_granularity"] == "per_sample"
for r in cfg:
    assert cfg[r]["collator"]["plugin"] == ("dense" if r == "automodel" else "seq_packer"), r
    assert cfg[r]["run"]["seed"] == cfg["automodel"]["run"]["seed"], r
    assert [(s["steps"], s["global_batch"]) for s in cfg[r]["stages"]] == \
        [(s["steps"], s["global_batch"]) for s in cfg["automodel"]["stages"]], r
PY

# A second invocation keeps everything.
"$root/scripts/compare_paths.sh" --size smoke --np $np --out "$out" >"$log.again" 2>&1 ||
  { tail -40 "$log.again" >&2; fail "the second invocation failed (log: $log.again)"; }
kept=$(grep -c "done before, kept" "$log.again")
[ "$kept" = 11 ] || fail "the second invocation kept $kept of 11 steps (log: $log.again)"
# ... and refuses another size in the same folder.
if "$root/scripts/compare_paths.sh" --size cpu --out "$out" >"$log.other" 2>&1; then
  fail "--size cpu into a smoke folder was accepted"
fi
grep -q "use --fresh or another --out" "$log.other" || fail "no clear message for another size"
echo "ok: $((SECONDS - t0)) s in all"
