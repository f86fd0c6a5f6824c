# Shared by the one-call measurement scripts of scripts/device (step_levers.sh, fp8.sh): sourced
# after the script has set OUT (what comes back), R (scratch) and BUDGET_S (seconds the call may
# take). Gives:
#   start TARGET...        header (date, GPU) into $OUT/summary.txt, build-gpu with the tests;
#                          sets W (the program)
#   left [MARGIN_S]        true while the call has more than MARGIN_S (default 60) seconds left
#   say TEXT               a line into the summary (and stdout)
#   bench LABEL ARGS...    `wanhost bench --json` with ARGS: one summary line, JSON kept
#   peer_step [MARGIN_S]   the compiled peer's whole step (build-perf/peer/peer_wan_step.py) at
#                          stage 1 and/or 2 (STAGES), captions of 20-200 tokens padded to 512,
#                          while more than MARGIN_S (default 150) seconds are left (else said)
#   ratios                 each whole-step run of the summary against the peer's step (same call)
#   run_steps TAG STAGE EXTRA...
#                          whole 1.3B steps (`wanhost run`, STEPS steps of one stage, synthetic
#                          data with 20-200 token captions); the median and mean after the first
#                          third (cuDNN builds a plan the first time a shape appears), the median
#                          less the waits for inputs, peak memory
t0=$SECONDS
left() { [ $((SECONDS - t0)) -lt $((BUDGET_S - ${1:-60})) ]; }
say() { echo "$*" | tee -a "$OUT/summary.txt"; }

start() {
  rm -rf "$R" && mkdir -p "$R" "$OUT"
  { date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; } |
    tee "$OUT/summary.txt"
  # PREBUILT=1 with a carried build-carry/ (scripts/device/prebuilt.sh): no build.
  if [ "${PREBUILT:-0}" = 1 ] && [ -x build-carry/bin/wanhost ]; then
    . build-carry/env.sh 2>"$R/build.log"
    BIN=build-carry/bin
    # Test binaries of build-device/ run the program and write scratch files at that build's
    # absolute paths, compiled in (the device's checkout lies at the same absolute path as the
    # dev machine's, as the file names in its test output show): the carried folders stand in.
    mkdir -p build-device
    ln -sfn "$PWD/build-carry/bin" build-device/bin
    ln -sfn "$PWD/build-carry/plugins" build-device/plugins
    say "prebuilt: $(ls build-carry/bin | tr '\n' ' ')($((SECONDS - t0)) s)"
    grep "not found" "$R/build.log" | head -5 | tee -a "$OUT/summary.txt"
  else
    scripts/device/build.sh --tests "$@" >"$R/build.log" 2>&1 ||
      { say "build failed:"; grep -E "error" "$R/build.log" | head -20 | tee -a "$OUT/summary.txt"; }
    BIN=build-gpu/bin
    say "$(tail -1 "$R/build.log") ($((SECONDS - t0)) s)"
  fi
  W=$BIN/wanhost
}

bench() { # LABEL ARGS...
  local label=$1
  shift
  timeout 150 $W bench --json --no-peak "$@" >"$R/b.json" 2>"$R/b.err"
  local rc=$?
  cat "$R/b.err" >>"$R/bench.err"
  [ $rc = 0 ] || { say "bench $label failed: $(tail -2 "$R/b.err")"; return; }
  python3 - "$label" "$R/b.json" <<'EOF' | tee -a "$OUT/summary.txt"
import json, sys
r = json.loads(open(sys.argv[2]).read().strip().splitlines()[-1])
print("bench %-34s %8.2f ms  %7.2f samples/s  %9.0f tokens/s  %6.1f model TFLOP/s  %5.1f GiB" % (
    sys.argv[1], 1e3 * r["step_s"], r["samples_per_s"], r["tokens_per_s"], r["model_tflops"],
    r["peak_mem_gib"]))
EOF
  cat "$R/b.json" >>"$R/bench.jsonl"
  grep -h "key bias: SDPA backend" "$R/b.err" 2>/dev/null | tail -1 | sed 's/^/  /' |
    tee -a "$OUT/summary.txt"
}

peer_step() { # [MARGIN_S]: only while the call has more than that left (default 150), else said
  [ -f build-perf/peer/peer_wan_step.py ] || { say "no build-perf/peer/peer_wan_step.py"; return; }
  left "${1:-150}" || {
    say "peer step skipped: under ${1:-150} s of BUDGET_S=$BUDGET_S left (no ratio lines)"
    return
  }
  (cd build-perf/peer && PYTHONUNBUFFERED=1 timeout 200 python3 -c '
import peer_wan_step as p
import os
cases = [("step_s1_1.3B_mb32", 32, 1, 30, 52, 512), ("step_s2_1.3B_81f", 1, 21, 30, 52, 512)]
for c in cases:
    if c[0][6] in os.environ.get("STAGES", "1 2"): p.run(*c, compiled=True)' 2>&1 | grep -v Warning |
    tee "$R/peer.jsonl" | grep "{" | sed 's/^/peer  /' | tee -a "$OUT/summary.txt")
}

# Every whole-step run of the summary against the peer's step of its stage from the same call:
# end to end (median step) and less the input waits (what the device takes).
ratios() {
  python3 scripts/device/step_summaries.py --ratios "$OUT/summary.txt" | tee -a "$OUT/summary.txt"
}

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
  # A profiled step's 50 longest kernels (logging.profile_step), beside the log's 15.
  cp /tmp/r/profile/summary.json "$R/$tag-s$stage-profile.json" 2>/dev/null
  python3 -c 'import json, sys
r = [json.loads(l) for l in open(sys.argv[1])]
r = [x for x in r if x.get("stage_index") == int(sys.argv[2]) - 1]
r = r[max(2, len(r) // 3):]
ts = sorted(x["step_time_s"] for x in r)
# The step time less the wait for its inputs (the loss is read every step, so the GPU idles
# while the host waits): what the GPU takes when the input pipeline keeps up.
cs = sorted(x["step_time_s"] - x.get("data_wait_s", 0) for x in r)
med, mean, cmed = ts[len(ts) // 2], sum(ts) / len(ts), cs[len(cs) // 2]
n = 32 if sys.argv[2] == "1" else 1
modes = [x["cuda_graph"] for x in r if "cuda_graph" in x]
graphs = "; %d of %d steps replayed from a CUDA graph" % (modes.count("replayed"), len(r)) if modes else ""
# Where the input worker spent its time (metrics input_make_s, input_to_device_s), medians.
med_of = lambda k: sorted(x.get(k, 0) for x in r)[len(r) // 2]
inputs = "; inputs made in %.3f s, handed to the device in %.3f s" % (
    med_of("input_make_s"), med_of("input_to_device_s"))
print("run   %-22s stage %s: median %.4f s, mean %.4f s a step (%d steps), %.1f samples/s (median); "
      "less input waits: median %.4f s, %.1f samples/s; peak %.1f GiB%s%s" % (
    sys.argv[3], sys.argv[2], med, mean, len(r), n / med, cmed, n / cmed,
    max(x["peak_mem_gib"] for x in r), graphs, inputs))' \
    "$R/$tag-s$stage-metrics.jsonl" "$stage" "$tag" 2>&1 | tail -1 | tee -a "$OUT/summary.txt"
}
