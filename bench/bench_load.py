"""Time of ``load_spec`` on spec files of 100 to 20,000 nodes: is loading linear in size?

Usage: ``.venv/bin/python bench/bench_load.py [--sizes 100,1000,5000,20000] [--repeat 3]``

Each spec is a YAML file (written as ``save`` writes one: one node per line) of a chain of
``linear`` (8 features) and ``relu`` nodes, every fourth node a residual ``add`` of the two
nodes before it, so references are resolved both to the previous node and by name. The
time covers the whole load: reading and parsing the text, validating each entry,
resolving references, the topological sort, type inference, initialising parameters and
the verifier. ``ms/node`` is the best of ``--repeat`` loads divided by the node count;
``×/node`` is that relative to the smallest spec's (1.0 = linear in the size).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from grow_ir.spec import load_spec
from grow_ir.spec.text import to_yaml


def chain_spec(nodes: int) -> dict[str, Any]:
    """A spec of ``nodes`` nodes: linear, relu, linear, add(previous two), repeated."""
    entries: list[dict[str, Any]] = []
    for i in range(nodes):
        kind = i % 4
        if kind in (0, 2):
            entries.append({"name": f"n{i}", "op": "linear", "out_features": 8})
        elif kind == 1:
            entries.append({"name": f"n{i}", "op": "relu"})
        else:
            entries.append({"name": f"n{i}", "op": "add", "inputs": [f"n{i - 1}", f"n{i - 2}"]})
    return {
        "version": 1,
        "name": f"chain{nodes}",
        "seed": 0,
        "inputs": {"x": {"shape": ["batch", 8]}},
        "nodes": entries,
        "outputs": {"y": f"n{nodes - 1}"},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100,1000,5000,20000")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    sizes = [int(s) for s in args.sizes.split(",")]
    print(f"{'nodes':>7} {'load s':>8} {'ms/node':>8} {'×/node':>7}")
    base = None
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            path = Path(tmp) / f"chain{n}.yaml"
            path.write_text(to_yaml(chain_spec(n)), encoding="utf-8")
            best = float("inf")
            for _ in range(args.repeat):
                start = time.perf_counter()
                graph = load_spec(path)
                best = min(best, time.perf_counter() - start)
            assert len(graph.nodes) == n
            per_node = best * 1e3 / n
            base = base or per_node
            print(f"{n:>7,} {best:>8.2f} {per_node:>8.3f} {per_node / base:>7.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
