# Where a step of the peer's Wan 2.1 blocks spends its GPU time (eager or torch.compile), per
# kernel class, from torch.profiler:  profile_peer.py [eager|compiled] [s1|s2|p14]
import os, sys, collections
import torch
from torch.profiler import profile, ProfilerActivity
here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(here, "../../build-perf/peer"))
import peer_wan_block as pb  # a real module: torch.compile must be able to import it
mode = sys.argv[1] if len(sys.argv) > 1 else "eager"
case = sys.argv[2] if len(sys.argv) > 2 else "s1"
D, H, Fd, L, B, S, T = {"s1": (1536, 12, 8960, 4, 32, 390, 512),
                        "s2": (1536, 12, 8960, 4, 1, 8190, 512),
                        "p14": (5120, 40, 13824, 2, 1, 37440, 512)}[case]
layers = torch.nn.ModuleList([pb.Block(D, H, Fd) for _ in range(L)]).cuda().bfloat16()
x = torch.randn(B, S, D, device="cuda", dtype=torch.bfloat16, requires_grad=True)
ctx = torch.randn(B, T, D, device="cuda", dtype=torch.bfloat16)
temb = torch.randn(B, 6, D, device="cuda", dtype=torch.bfloat16)
ang = torch.rand(S, 1, D // H // 2, device="cuda") * 6.28
cos, sin = ang.cos().bfloat16(), ang.sin().bfloat16()
def blocks(x):
    h = x
    for l in layers: h = l(h, ctx, temb, cos, sin)
    return h
fn = torch.compile(blocks) if mode == "compiled" else blocks
def step():
    fn(x).float().square().mean().backward()
for _ in range(3): step()
torch.cuda.synchronize()
reps = 3
with profile(activities=[ProfilerActivity.CUDA]) as prof:
    for _ in range(reps): step()
    torch.cuda.synchronize()
classes = collections.Counter()
total = 0
for e in prof.key_averages():
    t = e.device_time_total if hasattr(e, "device_time_total") else e.cuda_time_total
    if t <= 0 or e.key.startswith("aten::") or "ProfilerStep" in e.key or "Torch-Compiled" in e.key \
            or "CompiledFunction" in e.key: continue
    k = e.key.lower()
    c = ("attention" if ("flash" in k or "attention" in k or "fmha" in k or "sdpa" in k) else
         "matmul" if ("gemm" in k or "cutlass" in k or "sm90" in k or "nvjet" in k or "xmma" in k) else
         "triton" if "triton" in k else
         "norm" if "norm" in k else "elementwise/other")
    classes[c] += t / reps; total += t / reps
print(f"{mode} peer, {case}: kernel time per step {total/1e3:.2f} ms")
for c, t in classes.most_common(): print(f"  {c:20s} {t/1e3:8.2f} ms  {100*t/total:5.1f}%")
print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=30, max_name_column_width=90))
