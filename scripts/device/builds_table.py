"""The table of scripts/device/builds_ab.sh: for each whole-step run (tag and stage) the median
step of every build, its difference from the last build's in ms, and its ratio to the compiled
peer's step of that stage from the same call (the first summary with a peer line).
  python3 scripts/device/builds_table.py OUT BUILD...   (reads OUT/<build>/summary.txt)"""
import json
import os
import re
import sys

RUN = re.compile(r"run\s+(\S+)\s+stage (\d): median ([\d.]+) s.*peak ([\d.]+) GiB")


def read(path):
    runs, peer = {}, {}
    if not os.path.exists(path):
        return runs, peer
    for line in open(path):
        if line.startswith("peer  {"):
            p = json.loads(line[6:])
            if "step_s" in p:
                peer["1" if "_s1_" in p["name"] else "2"] = p["step_s"]
        m = RUN.match(line)
        if m:
            runs[(m.group(1), m.group(2))] = (float(m.group(3)), float(m.group(4)))
    return runs, peer


def main():
    out, builds = sys.argv[1], sys.argv[2:]
    data, peer = {}, {}
    for b in builds:
        data[b], p = read(os.path.join(out, b, "summary.txt"))
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
            cell = "%.4f s %.1f GiB" % (s, gib)
            if b != last and (tag, stage) in data[last]:
                cell += " %+.1f ms" % (1e3 * (s - data[last][(tag, stage)][0]))
            if stage in peer:
                cell += " %.3fx" % (peer[stage] / s)
            cells.append("%-30s" % cell)
        print("%-40s %-6s %s" % (tag, stage, "  ".join(cells)))


if __name__ == "__main__":
    main()
