#!/usr/bin/env python3
"""Loss A/B of two runs on the same data and seeds (scripts/device/fp8.sh): per stage, the
largest relative difference of the trailing 20-step means (as `wanhost compare --window 20`),
the largest per-step difference, the first and final smoothed losses and the median step times.
  ab_compare.py A/metrics.jsonl B/metrics.jsonl LABEL_A LABEL_B
"""
import json
import sys

W = 20


def load(path):
    out = {}
    for line in open(path):
        r = json.loads(line)
        if "loss" in r:
            out.setdefault(r["stage_index"], []).append((r["loss"], r["step_time_s"]))
    return out


def main():
    a, b = load(sys.argv[1]), load(sys.argv[2])
    name_a, name_b = sys.argv[3], sys.argv[4]
    for s in sorted(a):
        la, lb = [x[0] for x in a[s]], [x[0] for x in b.get(s, [])]
        n = min(len(la), len(lb))
        if n == 0:
            print("ab %s vs %s stage %d: no steps to compare" % (name_b, name_a, s + 1))
            continue
        worst, at, raw = 0.0, 0, 0.0
        for i in range(n):
            lo = max(0, i - W + 1)
            ma = sum(la[lo:i + 1]) / (i + 1 - lo)
            mb = sum(lb[lo:i + 1]) / (i + 1 - lo)
            d = abs(mb - ma) / ma
            if d > worst:
                worst, at = d, i + 1
            raw = max(raw, abs(lb[i] - la[i]) / la[i])
        ta = sorted(x[1] for x in a[s][n // 3:n])
        tb = sorted(x[1] for x in b[s][n // 3:n])
        print("ab %s vs %s stage %d: %d steps; smoothed (%d) loss: largest relative difference "
              "%.4f at step %d (target < 0.02); per-step largest %.4f; first/last smoothed %.4f/%.4f "
              "vs %.4f/%.4f; median step %.4f / %.4f s"
              % (name_b, name_a, s + 1, n, W, worst, at, raw, la[0], sum(la[n - W:n]) / W, lb[0],
                 sum(lb[n - W:n]) / W, ta[len(ta) // 2], tb[len(tb) // 2]))


if __name__ == "__main__":
    main()
