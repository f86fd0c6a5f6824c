#!/usr/bin/env python3
"""No include cycle between the folders of core/ (docs/architecture.md draws the layers).

Reads every source file under core/<folder>/, takes its `#include "../<other>/..."` lines as an
edge folder -> other, and fails when the folder graph has a cycle, printing it. With --print the
graph is printed (the diagram in docs/architecture.md follows it).
"""
import pathlib
import re
import sys

INCLUDE = re.compile(r'^\s*#\s*include\s+"\.\./([a-z_]+)/')


def folder_graph(core: pathlib.Path):
    graph = {}
    for path in sorted(core.glob("*/*")):
        if path.suffix not in {".cpp", ".hpp", ".in"}:
            continue
        src = path.parent.name
        graph.setdefault(src, {})
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            m = INCLUDE.match(line)
            if m and m.group(1) != src:
                graph[src].setdefault(m.group(1), f"{path.relative_to(core.parent)}:{n}")
    return graph


def find_cycle(graph):
    state = {}
    stack = []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, {})):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def main():
    root = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 and sys.argv[1] != "--print" else
                        pathlib.Path(__file__).resolve().parents[2])
    graph = folder_graph(root / "core")
    if "--print" in sys.argv:
        for src in sorted(graph):
            print(f"{src} -> {', '.join(sorted(graph[src])) or '(nothing)'}")
    cycle = find_cycle(graph)
    if cycle:
        print("include cycle between core folders: " + " -> ".join(cycle), file=sys.stderr)
        for a, b in zip(cycle, cycle[1:]):
            print(f"  {a} -> {b}: {graph[a][b]}", file=sys.stderr)
        return 1
    print(f"core/: {len(graph)} folders, no include cycle")
    return 0


if __name__ == "__main__":
    sys.exit(main())
