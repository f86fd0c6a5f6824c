#!/usr/bin/env bash
# Multi-GPU runs of the AutoModel path (issue 9) on a device-tool machine with several GPUs:
# builds build-gpu (scripts/device/build.sh), then automodel_fsdp with Wan 2.1 1.3B at the
# stage-1 and stage-2 shapes on 1 GPU and on all GPUs (one process a GPU, torchrun-style
# variables) with the same global batch, and Wan 2.1 14B dimensions at the DFM performance shape
# (37440 tokens, micro batch 1) over all GPUs. Results (metrics.jsonl, logs) under $OUT.
# Env: NGPU (default: all visible), PHASES (default: "s1 s2 p14"), P14_LAYERS (default 10),
# FUSED (fused_kernels: auto).
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/wanhost-multi}
mkdir -p "$OUT"
NGPU=${NGPU:-$(nvidia-smi -L | wc -l)}
PHASES=${PHASES:-s1 s2 p14}
has() { [[ " $PHASES " == *" $1 "* ]]; }
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; nvidia-smi topo -m; } >"$OUT/machine.txt" 2>&1
head -3 "$OUT/machine.txt"
W=build-gpu/bin/wanhost
# Builds what a training run needs (a no-op ninja run when built; the carried packages the binary
# links against are unpacked either way).
scripts/device/build.sh >"$OUT/build.log" 2>&1 || { echo "build failed:"; grep -E "error|Error" "$OUT/build.log" | head -20; }
tail -1 "$OUT/build.log"
[ -x "$W" ] || { echo "no wanhost binary"; exit 1; }

common=(configs/wan21-1.3b.json --plugins automodel_fsdp --set run.threads=4 --set checkpoint.every_steps=0
  --set checkpoint.at_stage_end=false --set checkpoint.export_diffusers=false
  --set logging.every_steps=1 --set logging.progress=\"off\" --set logging.tensorboard=false
  --set run.comm_timeout_s=300 --set model.wan21_dit.fused_kernels=\"${FUSED:-auto}\")
# launch NAME NPROC ARGS...: one process a GPU with torchrun-style variables; rank 0's output kept.
launch() {
  local name=$1 n=$2; shift 2
  local t0=$SECONDS pids=() port=$((29400 + RANDOM % 500))
  rm -rf "/tmp/$name"
  for ((r = 0; r < n; r++)); do
    RANK=$r WORLD_SIZE=$n LOCAL_RANK=$r LOCAL_WORLD_SIZE=$n MASTER_ADDR=127.0.0.1 MASTER_PORT=$port \
      NCCL_NVLS_ENABLE=0 timeout ${RUN_TIMEOUT:-170} $W run --out "/tmp/$name" "$@" >"$OUT/$name.rank$r.txt" 2>&1 &
    pids+=($!)
  done
  local rc=0
  for p in "${pids[@]}"; do wait "$p" || rc=$?; done
  cp "/tmp/$name/metrics.jsonl" "$OUT/$name.metrics.jsonl" 2>/dev/null
  echo "== $name ($n GPU) rc=$rc in $((SECONDS - t0)) s"
  grep -E "on this rank|automodel_fsdp:|error|Error" "$OUT/$name.rank0.txt" | head -4
  python3 - "$OUT/$name.metrics.jsonl" <<'PY'
import json, sys
try:
    rows = [json.loads(l) for l in open(sys.argv[1])]
except FileNotFoundError:
    sys.exit(0)
print("losses", [round(r["loss"], 5) if r["loss"] is not None else None for r in rows])
tail = rows[2:] or rows
avg = lambda k: sum(r[k] for r in tail) / len(tail)
print(f"steady (steps 3+): {avg('tokens_per_s'):.0f} tokens/s, {avg('tflops_per_gpu'):.1f} TFLOP/s/GPU, "
      f"step {avg('step_time_s'):.3f} s, peak {max(r['peak_mem_gib'] for r in rows):.1f} GiB")
PY
}

S1=(--set stages.0.steps=10 --set stages.0.global_batch=64 --set stages.0.micro_batch=32
  --set stages.1.steps=1 --set stages.1.global_batch=$NGPU --set stages.1.micro_batch=1 --set stages.1.data.synthetic.latent_frames=1)
S2=(--set stages.0.steps=1 --set stages.0.global_batch=$NGPU --set stages.0.micro_batch=1
  --set stages.1.steps=10 --set stages.1.global_batch=$((2 * NGPU)) --set stages.1.micro_batch=1)
if has s1; then
  launch s1-1gpu 1 "${common[@]}" "${S1[@]}"
  launch s1-${NGPU}gpu "$NGPU" "${common[@]}" "${S1[@]}"
fi
if has s2; then
  launch s2-1gpu 1 "${common[@]}" "${S2[@]}"
  launch s2-${NGPU}gpu "$NGPU" "${common[@]}" "${S2[@]}"
fi
if has p14; then
  # 14B dimensions (dim 5120, 40 heads, FFN 13824) with P14_LAYERS of the 40 blocks, so fp32
  # master weights + AdamW fit on the lent GPUs; 24 latent frames of 60 x 104 latent cells (480x832) = 37440 tokens.
  P14=(--set model.wan21_dit.preset=\"wan2.1-t2v-14b\" --set "model.wan21_dit.overrides={\"num_layers\":${P14_LAYERS:-10}}"
    --set stages.0.steps=1 --set stages.0.global_batch=$NGPU --set stages.0.micro_batch=1
    --set stages.1.steps=5 --set stages.1.global_batch=$NGPU --set stages.1.micro_batch=1
    --set stages.1.data.synthetic.latent_frames=24 --set stages.1.data.synthetic.height=60
    --set stages.1.data.synthetic.width=104)
  launch p14-${NGPU}gpu "$NGPU" "${common[@]}" "${P14[@]}"
fi
