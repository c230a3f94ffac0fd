"""Learn to Grow against fine-tuning one network and one separate network per task.

Usage: ``.venv/bin/python bench/bench_continual.py [--sequences split-digits permuted-digits]
[--seed 0] [--threads 1] [--json FILE]``

On each task sequence, the example network ``specs/examples/continual_digits.yaml`` learns
every task three ways with the same training settings (``ContinualConfig()``):

- Learn to Grow (``learn_sequence``): search reuse / adapt / new per layer, train the task's
  own parameters, once per candidate λ of the size penalty (0.1, 0.3, 1), keeping per task
  the best on its validation split;
- Learn to Grow with one fixed λ (0.3, no choice: the validation split unused);
- fine-tuning: one network, a head per task, the whole path trained on each new task;
- separate networks: one network per task, each trained alone.

Printed per sequence and method: the average test accuracy after the last task, the
forgetting (mean drop of earlier tasks from their best accuracy; Learn to Grow's must be
exactly 0.0, and the script fails otherwise) and the parameters relative to the separate
networks. The goal: Learn to Grow at ≤ 50% of the parameters, within 1 point of the
separate networks' accuracy.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from grow_ir.growth.continual import (  # noqa: E402
    ContinualConfig,
    ContinualHistory,
    learn_sequence,
    load_tasks,
)
from grow_ir.growth.continual.baselines import finetune_sequence, separate_sequence  # noqa: E402
from grow_ir.spec import load_spec  # noqa: E402

SPEC = ROOT / "specs" / "examples" / "continual_digits.yaml"
FIXED = 0.3
METHODS = ("learn to grow", f"ltg, fixed λ {FIXED:g}", "fine-tuning", "separate networks")


def run_sequence(name: str, config: ContinualConfig) -> dict[str, dict[str, float]]:
    """The three methods on one sequence: final metrics and wall time per method."""
    spec = load_spec(SPEC)
    tasks = load_tasks([name])
    runs: dict[str, ContinualHistory] = {}
    seconds: dict[str, float] = {}
    for method in METHODS:
        start = time.perf_counter()
        if method == "learn to grow":
            runs[method] = learn_sequence(spec, tasks, config).history
        elif method.startswith("ltg"):
            fixed = replace(config, penalties=(FIXED,))
            runs[method] = learn_sequence(spec, tasks, fixed).history
        elif method == "fine-tuning":
            runs[method] = finetune_sequence(spec, tasks, config)
        else:
            runs[method] = separate_sequence(spec, tasks, config)
        seconds[method] = time.perf_counter() - start
    separate = runs["separate networks"].final["params"]
    return {
        method: {
            "average_accuracy": h.final["average_accuracy"],
            "forgetting": h.final["forgetting"],
            "params": h.final["params"],
            "relative_params": h.final["params"] / separate,
            "seconds": seconds[method],
            "choices": [r.choices for r in h.tasks],
            "penalties": [r.penalty for r in h.tasks],
        }
        for method, h in runs.items()
    }


def table(name: str, rows: dict[str, dict[str, float]]) -> str:
    """The printed table of one sequence."""
    lines = [
        f"{name}",
        f"  {'method':<18} {'avg acc':>8} {'forgetting':>11} {'params':>8} "
        f"{'vs separate':>12} {'time':>7}",
    ]
    for method, r in rows.items():
        lines.append(
            f"  {method:<18} {r['average_accuracy']:>8.1%} {100 * r['forgetting']:>8.2f} pt "
            f"{r['params']:>8,} {r['relative_params']:>12.0%} {r['seconds']:>6.1f}s"
        )
    ours, separate = rows["learn to grow"], rows["separate networks"]
    diff = round(100 * (ours["average_accuracy"] - separate["average_accuracy"]), 2) + 0.0
    met = ours["relative_params"] <= 0.5 and diff >= -1.0
    lines.append(
        f"  learn to grow - separate networks: {diff:+.2f} points of accuracy at "
        f"{ours['relative_params']:.0%} of their parameters "
        f"(goal: >= -1 point at <= 50%: {'met' if met else 'not met'})"
    )
    for i, choices in enumerate(ours["choices"][1:], start=1):
        picks = ", ".join(f"{layer}={c}" for layer, c in choices.items())
        lines.append(f"    task{i}: {picks} (λ {ours['penalties'][i]:g})")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sequences", nargs="+", default=["split-digits", "permuted-digits"], metavar="NAME"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = ContinualConfig(seed=args.seed)
    results = {}
    for name in args.sequences:
        results[name] = run_sequence(name, config)
        print(table(name, results[name]), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    bad = [n for n, rows in results.items() for m in METHODS[:2] if rows[m]["forgetting"] != 0.0]
    if bad:
        print(f"FAIL: learn to grow forgot on {', '.join(bad)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
