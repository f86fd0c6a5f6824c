"""The whole-step lines of a scripts/device summary.txt, read in one place: measure_lib.sh's
"run" lines (run_steps: median step, median less the input waits, peak memory) and "peer" lines
(peer_step: the compiled peer's step of each stage).
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


def read(path):
    """([(tag, stage, median_s, less_waits_s, peak_gib or None)], {stage: peer_s})"""
    runs, peer = [], {}
    if not os.path.exists(path):
        return runs, peer
    for line in open(path):
        if line.startswith("peer  {"):
            p = json.loads(line[6:])
            if "step_s" in p:
                peer["1" if "_s1_" in p["name"] else "2"] = p["step_s"]
        m = RUN.match(line)
        if m:
            gib = float(m.group(5)) if m.group(5) else None
            runs.append((m.group(1), m.group(2), float(m.group(3)), float(m.group(4)), gib))
    return runs, peer


def ratios(summary):
    runs, peer = read(summary)
    for tag, stage, med, dev, _ in runs:
        if stage in peer:
            print("ratio %-28s stage %s: %.3fx end to end, %.3fx less input waits (peer %.4f s)"
                  % (tag, stage, peer[stage] / med, peer[stage] / dev, peer[stage]))


def table(out, builds):
    data, peer = {}, {}
    for b in builds:
        runs, p = read(os.path.join(out, b, "summary.txt"))
        data[b] = {(tag, stage): (med, gib) for tag, stage, med, _, gib in runs}
        for k, v in p.items():
            peer.setdefault(k, v)
    keys = sorted({k for b in builds for k in data[b]}, key=lambda k: (k[1], k[0]))
    last = builds[-1]
    print("peer: " + ", ".join("stage %s %.4f s" % (s, peer[s]) for s in sorted(peer)) if peer
          else "peer: none in this call (no ratios)")
    print("%-40s %-6s %s" % ("run", "stage", "  ".join("%-30s" % b for b in builds)))
    for tag, stage in keys:
        cells = []
        for b in builds:
            if (tag, stage) not in data[b]:
                cells.append("%-30s" % "-")
                continue
            s, gib = data[b][(tag, stage)]
            cell = "%.4f s" % s + (" %.1f GiB" % gib if gib is not None else "")
            if b != last and (tag, stage) in data[last]:
                cell += " %+.1f ms" % (1e3 * (s - data[last][(tag, stage)][0]))
            if stage in peer:
                cell += " %.3fx" % (peer[stage] / s)
            cells.append("%-30s" % cell)
        print("%-40s %-6s %s" % (tag, stage, "  ".join(cells)))


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--ratios":
        ratios(sys.argv[2])
    elif len(sys.argv) >= 3:
        table(sys.argv[1], sys.argv[2:])
    else:
        sys.exit(__doc__)
