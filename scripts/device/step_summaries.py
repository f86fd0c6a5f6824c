"""The whole-step lines of a scripts/device summary.txt, read in one place: measure_lib.sh's
"run" lines (run_steps: median step, median less the input waits, peak memory) and "peer" lines
(peer_step: the compiled peer's step of each stage); for builds_ab.sh's table also the block
stacks' "bench" lines (measure_lib.sh bench) and the compiled peer's blocks ("peer block" lines,
fp8.sh's peer part), whose 14B case gives the 14B bench lines a ratio.
  python3 scripts/device/step_summaries.py --ratios SUMMARY
      each run's ratio to the peer's step of its stage from the same summary ("ratio" lines;
      measure_lib.sh ratios)
  python3 scripts/device/step_summaries.py OUT BUILD...
      scripts/device/builds_ab.sh's table from OUT/<build>/summary.txt: each run's median step
      per build, its difference from the last build's in ms, and its ratio to the peer's step of
      its stage (the first summary with one)"""
import json
import os
import re
import sys

RUN = re.compile(r"run\s+(\S+)\s+stage (\d): median ([\d.]+) s.*less input waits: median "
                 r"([\d.]+) s(?:.*peak ([\d.]+) GiB)?")
BENCH = re.compile(r"bench (.+?)\s+([\d.]+) ms\s")
PEER_14B = "perf_14B_seq37440"  # peer_wan_block.py's case of the bench's 14B shape


class Summary:
    """One summary.txt's lines: runs [(tag, stage, median_s, less_waits_s, peak_gib or None)],
    peer {stage: step_s}, benches [(label, ms)] and the compiled peer's 14B blocks (ms or None)."""

    def __init__(self, path):
        self.runs, self.peer, self.benches, self.peer_14b = [], {}, [], None
        if not os.path.exists(path):
            return
        for line in open(path):
            if line.startswith("peer  {"):
                p = json.loads(line[6:])
                if "step_s" in p:
                    self.peer["1" if "_s1_" in p["name"] else "2"] = p["step_s"]
            elif line.startswith("peer block {"):
                p = json.loads(line[len("peer block "):])
                if p.get("name") == PEER_14B and p.get("compiled") and "step_s" in p:
                    self.peer_14b = 1e3 * p["step_s"]
            elif m := RUN.match(line):
                gib = float(m.group(5)) if m.group(5) else None
                self.runs.append(
                    (m.group(1), m.group(2), float(m.group(3)), float(m.group(4)), gib))
            elif m := BENCH.match(line):
                self.benches.append((m.group(1).strip(), float(m.group(2))))


def ratios(summary):
    sm = Summary(summary)
    runs, peer = sm.runs, sm.peer
    for tag, stage, med, dev, _ in runs:
        if stage in peer:
            print("ratio %-28s stage %s: %.3fx end to end, %.3fx less input waits (peer %.4f s)"
                  % (tag, stage, peer[stage] / med, peer[stage] / dev, peer[stage]))


def table(out, builds):
    summaries = {b: Summary(os.path.join(out, b, "summary.txt")) for b in builds}
    data, peer = {}, {}
    for b, sm in summaries.items():
        data[b] = {(tag, stage): (med, gib) for tag, stage, med, _, gib in sm.runs}
        for k, v in sm.peer.items():
            peer.setdefault(k, v)
    keys = sorted({k for b in builds for k in data[b]}, key=lambda k: (k[1], k[0]))
    print("%-40s %-6s %s" % ("build", "", "  ".join("%-30s" % b for b in builds)))
    if not keys:
        bench_table(summaries)
        return
    print("peer: " + ", ".join("stage %s %.4f s" % (s, peer[s]) for s in sorted(peer)) if peer
          else "peer: none in this call (no ratios)")
    for tag, stage in keys:
        per_build = {b: data[b].get((tag, stage)) for b in builds}
        seconds = {b: v[0] if v else None for b, v in per_build.items()}
        text = {b: "%.4f s" % v[0] + (" %.1f GiB" % v[1] if v[1] is not None else "")
                for b, v in per_build.items() if v}
        cells = row_cells(builds, seconds, text, 1e3,
                          peer[stage] if stage in peer else None)
        print("%-40s %-6s %s" % (tag, stage, cells))
    bench_table(summaries)


def row_cells(builds, values, text, to_ms, reference):
    """One table row: each build's cell `text[b]` ("-" where values[b] is None), then its
    difference from the last build's value in ms (values times to_ms) and, with a reference
    time, the ratio reference / value."""
    last = values[builds[-1]]
    cells = []
    for b in builds:
        v = values[b]
        if v is None:
            cells.append("%-30s" % "-")
            continue
        cell = text[b]
        if b != builds[-1] and last is not None:
            cell += " %+.1f ms" % (to_ms * (v - last))
        if reference is not None:
            cell += " %.3fx" % (reference / v)
        cells.append("%-30s" % cell)
    return "  ".join(cells)


def bench_table(summaries):
    builds = list(summaries)
    data = {b: dict(sm.benches) for b, sm in summaries.items()}
    peer = next((sm.peer_14b for sm in summaries.values() if sm.peer_14b is not None), None)
    labels = list(dict.fromkeys(l for b in builds for l in data[b]))
    if not labels:
        return
    print("bench blocks; peer's 14B blocks: " +
          ("%.1f ms" % peer if peer is not None else "none in this call (no ratios)"))
    for label in labels:
        ms = {b: data[b].get(label) for b in builds}
        text = {b: "%.2f ms" % v for b, v in ms.items() if v is not None}
        cells = row_cells(builds, ms, text, 1.0, peer if label.startswith("14B") else None)
        print("  %-45s %s" % (label[:45], cells))


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--ratios":
        ratios(sys.argv[2])
    elif len(sys.argv) >= 3:
        table(sys.argv[1], sys.argv[2:])
    else:
        sys.exit(__doc__)
