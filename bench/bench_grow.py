"""Time of one growth step (a pass, then re-lowering to torch) on ResNets of 12 to 2,000 nodes.

Usage: ``.venv/bin/python bench/bench_grow.py [--seconds 1.5] [--max-nodes 2100] [--profile]``

Each graph is a CIFAR ResNet written as a spec with ``blocks:`` templates: a stem conv,
stage 1 of basic blocks (16 channels), then for stages 2 and 3 one downsampling block
(stride-2 conv, 1×1 projection shortcut) followed by a stage of basic blocks (32, 64
channels), global pooling and a linear head. With 3 blocks per stage it is ResNet-20 (19
convs on the main path, 2 projections, one linear layer: 72 nodes); deeper stages make
the larger graphs, one stage of one block the smallest.

For each size four growth steps are timed, each on the same input graph (its derived
indexes warm, as after training on it), each to a fresh result:

- ``widen``: the stem to twice its width, which widens stage 1's whole channel group (every
  residual add of the stage, its batchnorms, its blocks' input columns);
- ``widen_block``: the first conv of stage 1's first block to twice its width (its
  batchnorm, relu and the next conv's input columns: the inner width GradMax grows);
- ``insert_block``: one more basic block at the end of stage 1 (ZeroInit);
- ``insert_layer``: an identity 3×3 conv after stage 1's first block.

Each is reported alone, with a full ``to_torch`` of the result (``+full``: every module
rebuilt, as before incremental lowering) and with ``to_torch(result, reuse=module)``
(``+reuse``: the modules of unchanged nodes taken over from the input graph's lowering,
as the trainer's growth step does), side by side in one run: in rounds that run every
cell of a graph once, in turn (at least 5, about ``--seconds`` per step), garbage
collected between runs; ``×`` is full ÷ reuse. ``relower`` is ``to_torch(result,
reuse=module)`` alone, on a fresh result of the pass each run (as the pass returns it:
verified, types inferred; the pass itself untimed): the re-lowering a growth step pays.
The targets (ResNet-20 ≤ 5 ms, 2,000 nodes ≤ 20 ms) are checked against it and against
the whole step (``+reuse``: the pass, then re-lowering), each step marked MISSED where it
is over. ``cold`` is the same with the result's indexes cold (a copy of it without its
derived indexes or verified mark: verification and type inference included).
``to_torch`` lowers the input graph with its indexes cold. ``gc`` is the full collection
that frees a dropped lowering (fx modules are freed only by the cyclic collector),
``frozen`` the same after ``gc.freeze()``. Two tables: the median of the runs, and their
minimum (the least disturbed by other processes); a third says how many nodes each step
changes and how many modules its re-lowering builds. torch runs single-threaded.
``verify`` is the verification of the result alone (indexes cold), the part of ``cold``
that checks the graph. The last two tables time the trainer's whole growth step
(``apply_growth``: ``update_params``, the pass, re-lowering, the new submodules moved, the
optimizer state carried over) and ``update_params`` alone. ``--profile`` prints cProfile's
top functions for each step with re-lowering, on ResNet-20 and on the largest graph timed.
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import gc
import io
import pstats
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from grow_ir.backends.torch import to_torch, update_params
from grow_ir.growth.actions import GrowthContext, TrainState, apply_growth
from grow_ir.growth.config import GrowthConfig
from grow_ir.growth.policy import GrowthRequest
from grow_ir.ir.graph import Graph
from grow_ir.ir.verify import verify
from grow_ir.ir.verify_delta import changes
from grow_ir.passes import get_pass
from grow_ir.spec import load_spec

TARGETS_MS: dict[int, float] = {72: 5.0, 2004: 20.0}
"""Re-lowering targets by graph size: ResNet-20 (72 nodes) and the 2,004-node ResNet."""

CONV3 = {"kernel_size": 3, "padding": 1, "bias": False}

BASIC = {
    "nodes": [
        {"name": "conv1", "op": "conv2d", "inputs": ["input"], "out_channels": "$c", **CONV3},
        {"name": "bn1", "op": "batchnorm"},
        {"name": "act1", "op": "relu"},
        {"name": "conv2", "op": "conv2d", "out_channels": "$c", **CONV3},
        {"name": "bn2", "op": "batchnorm"},
        {"name": "sum", "op": "add", "inputs": ["bn2", "input"]},
        {"name": "out", "op": "relu"},
    ]
}
"""ResNet's basic block: relu(x + bn(conv(relu(bn(conv(x))))))."""

DOWN = {
    "nodes": [
        {"name": "conv1", "op": "conv2d", "inputs": ["input"], "out_channels": "$c",
         **CONV3, "stride": 2},
        {"name": "bn1", "op": "batchnorm"},
        {"name": "act1", "op": "relu"},
        {"name": "conv2", "op": "conv2d", "out_channels": "$c", **CONV3},
        {"name": "bn2", "op": "batchnorm"},
        {"name": "proj", "op": "conv2d", "inputs": ["input"], "out_channels": "$c",
         "kernel_size": 1, "stride": 2, "bias": False},
        {"name": "proj_bn", "op": "batchnorm"},
        {"name": "sum", "op": "add", "inputs": ["bn2", "proj_bn"]},
        {"name": "out", "op": "relu"},
    ]
}  # fmt: skip
"""A downsampling block: stride 2, twice the channels, a 1×1 projection shortcut."""


def resnet_spec(depth: int, stages: int = 3) -> dict[str, Any]:
    """A CIFAR ResNet spec with ``depth`` blocks per stage (ResNet-20: depth 3)."""
    nodes: list[dict[str, Any]] = [
        {"name": "stem", "op": "conv2d", "inputs": ["image"], "out_channels": 16, **CONV3},
        {"name": "stem_bn", "op": "batchnorm"},
        {"name": "stem_act", "op": "relu"},
        {"name": "stage1", "stage": "basic", "depth": depth, "with": {"c": 16}},
    ]
    for s in range(2, stages + 1):
        c = 16 * 2 ** (s - 1)
        nodes.append({"name": f"stage{s}_down", "stage": "down", "depth": 1, "with": {"c": c}})
        if depth > 1:
            nodes.append(
                {"name": f"stage{s}", "stage": "basic", "depth": depth - 1, "with": {"c": c}}
            )
    nodes += [
        {"name": "pool", "op": "global_avgpool"},
        {"name": "head", "op": "linear", "out_features": 10},
    ]
    return {
        "version": 1,
        "name": f"resnet{6 * depth + 2}" if stages == 3 else "resnet_tiny",
        "seed": 0,
        "inputs": {"image": {"shape": ["batch", 3, 32, 32]}},
        "blocks": {"basic": BASIC, "down": DOWN},
        "nodes": nodes,
        "outputs": {"logits": "head"},
    }


SIZES: list[tuple[int, int]] = [(1, 1), (2, 3), (3, 3), (10, 3), (24, 3), (47, 3), (95, 3)]
"""(blocks per stage, stages) of each graph: 12, 51, 72 (ResNet-20), 219, 513, 996 and
2,004 nodes."""

STEP_ARGS: dict[str, tuple[str, dict[str, Any]]] = {
    "widen": ("widen", {"node": "stem", "width": 32}),
    "widen_block": ("widen", {"node": "stage1.block0.conv1", "width": 32}),
    "insert_block": ("insert_block", {"stage": "stage1"}),
    "insert_layer": ("insert_layer", {"after": "stage1.block0.out", "op": "conv2d"}),
}
"""The growth steps timed: the pass and its arguments, by step."""

STEPS: dict[str, Callable[[Graph], Graph]] = {
    name: lambda g, p=p, a=a: get_pass(p).run(g, **a).graph for name, (p, a) in STEP_ARGS.items()
}
"""The growth steps timed, by pass."""


@dataclass
class Cell:
    """Milliseconds of every run of one step: the pass alone, the pass then a full
    ``to_torch``, the pass then ``to_torch`` reusing the input's modules, and that
    re-lowering alone."""

    alone: list[float]
    lowered: list[float]
    reused: list[float]
    relower: list[float]
    cold: list[float]
    """``to_torch(result, reuse=module)`` with the result's indexes cold."""
    verify: list[float]
    """``verify`` of the result with its indexes cold: the part of ``cold`` that checks
    the graph (type inference included)."""


@dataclass
class Row:
    """Everything timed on one graph (ms per run)."""

    graph: Graph
    steps: dict[str, Cell]
    to_torch: list[float]
    gc: list[float]
    gc_frozen: list[float]
    changed: dict[str, tuple[int, int]]
    """What each step changes: (nodes new, replaced or retyped; modules built afresh)."""
    trainer: dict[str, list[float]]
    """The trainer's whole growth step, by step, and ``update_params`` (ms per run)."""


STATS: dict[str, Callable[[list[float]], float]] = {"median": statistics.median, "min": min}
"""How a cell's runs are summarised: the median (the figure to quote) and the minimum (the
least disturbed by other processes on a shared machine)."""


Timed = tuple[Callable[..., object], Callable[[], Any] | None]
"""What one cell times: ``fn``, and ``setup`` (untimed, its result passed to ``fn``) or None."""


def run_rounds(cells: dict[str, Timed], seconds: float) -> dict[str, list[float]]:
    """Wall times in ms of every cell's ``fn()`` (``fn(setup())`` with a ``setup``, run
    untimed before each run), in rounds that run each cell once, in turn: at least 5
    rounds, about ``seconds`` in all, after a warm-up round (first-call imports and
    caches). Taking turns spreads whatever else the machine is doing over every cell
    alike, so the ratios between cells hold even when the absolute figures move.

    The garbage of the previous run is collected before each run, untimed: a lowered
    module is an fx.GraphModule, which its fx.Graph refers back to (``owning_module``),
    so only the cyclic collector frees it, and that collection would otherwise land in a
    random later run (see :func:`collect_ms`).
    """
    for fn, setup in cells.values():
        fn(*(() if setup is None else (setup(),)))
    times: dict[str, list[float]] = {name: [] for name in cells}
    start = time.perf_counter()
    rounds = 0
    while rounds < 5 or (time.perf_counter() - start < seconds and rounds < 200):
        for name, (fn, setup) in cells.items():
            args = () if setup is None else (setup(),)
            gc.collect()
            t0 = time.perf_counter()
            fn(*args)
            times[name].append((time.perf_counter() - t0) * 1e3)
        rounds += 1
    return times


def collect_ms(graph: Graph, frozen: bool) -> list[float]:
    """Time of the full collection that frees a dropped lowering of ``graph`` (what a
    training loop pays, at some later allocation, for dropping the pre-growth module),
    with the rest of the heap as it is or moved out of the collector's way by
    ``gc.freeze()``."""
    times = []
    for _ in range(3):
        gc.collect()
        if frozen:
            gc.freeze()
        module = to_torch(graph)
        del module
        t0 = time.perf_counter()
        gc.collect()
        times.append((time.perf_counter() - t0) * 1e3)
        gc.unfreeze()
    return times


def time_graph(graph: Graph, seconds: float) -> Row:
    """Time every step of :data:`STEPS` on ``graph``, and ``to_torch`` of the graph itself
    (with its derived indexes cold, as right after a pass)."""
    verify(graph)  # warm the input's derived indexes, as after training on it
    module = to_torch(graph)
    cells: dict[str, Timed] = {}
    for name, step in STEPS.items():
        grown = step(graph)
        cells |= {
            f"{name}.alone": (lambda step=step: step(graph), None),
            f"{name}.lowered": (lambda step=step: to_torch(step(graph)), None),
            f"{name}.reused": (lambda step=step: to_torch(step(graph), reuse=module), None),
            f"{name}.relower": (
                lambda result: to_torch(result, reuse=module),
                lambda step=step: step(graph),
            ),
            f"{name}.cold": (
                lambda grown=grown: to_torch(dataclasses.replace(grown), reuse=module),
                None,
            ),
            f"{name}.verify": (lambda grown=grown: verify(dataclasses.replace(grown)), None),
        }
    cells["to_torch"] = (lambda: to_torch(dataclasses.replace(graph)), None)
    times = run_rounds(cells, seconds * (len(STEPS) + 0.5))
    steps = {
        name: Cell(**{f.name: times[f"{name}.{f.name}"] for f in dataclasses.fields(Cell)})
        for name in STEPS
    }
    return Row(
        graph,
        steps,
        to_torch=times["to_torch"],
        gc=collect_ms(graph, frozen=False),
        gc_frozen=collect_ms(graph, frozen=True),
        changed={name: what_changed(graph, module, step) for name, step in STEPS.items()},
        trainer=trainer_ms(graph, seconds),
    )


def trainer_ms(graph: Graph, seconds: float) -> dict[str, list[float]]:
    """Wall times in ms of the trainer's whole growth step (``apply_growth``: the module's
    values taken back by ``update_params``, the pass, re-lowering with reuse, the new
    submodules moved to the device, the optimizer's state carried over) for each step,
    and of ``update_params`` alone, on ``graph`` trained one Adam step (state on every
    parameter), in rounds as :func:`run_rounds` times them."""
    module = to_torch(graph)
    optimizer = torch.optim.Adam(module.parameters(), lr=1e-3)
    x = torch.randn(2, *graph.inputs["image"].shape[1:])
    module(x).sum().backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    state = TrainState(graph, module, optimizer)
    ctx = GrowthContext(GrowthConfig(), None, torch.device("cpu"), epoch=1)  # type: ignore[arg-type]
    cells: dict[str, Timed] = {
        name: (
            lambda n=name, p=p, a=a: apply_growth(state, GrowthRequest(n, p, dict(a), ""), ctx),
            None,
        )
        for name, (p, a) in STEP_ARGS.items()
    }
    cells["update_params"] = (lambda: update_params(graph, module), None)
    return run_rounds(cells, seconds * len(cells) / 2)


def trainer_table(rows: list[Row], stat: str) -> list[str]:
    """The trainer's growth step by graph: each step whole, and ``update_params``."""
    summary = STATS[stat]
    names = [*STEPS, "update_params"]
    lines = [
        f"the trainer's growth step (apply_growth), ms ({stat} of runs)",
        f"{'nodes':>6} {'graph':<12}" + "".join(f" | {n:>13}" for n in names),
    ]
    for row in rows:
        line = f"{len(row.graph.nodes):>6} {row.graph.name:<12}"
        line += "".join(f" | {summary(row.trainer[n]):>13.2f}" for n in names)
        lines.append(line)
    return lines


def what_changed(graph: Graph, module: Any, step: Callable[[Graph], Graph]) -> tuple[int, int]:
    """How many nodes ``step`` changes in ``graph`` (new, replaced, or reading a changed
    type: what its verification re-checked) and how many modules re-lowering with
    ``module`` (``graph``'s lowering) builds afresh."""
    grown = step(graph)
    found = changes(grown)
    assert found is not None and found.parent() is graph, "the pass result is not a delta"
    old = {t: b.module for t, b in module.built.items()}
    new = to_torch(grown, reuse=module)
    built = sum(1 for t, b in new.built.items() if old.get(t) is not b.module)
    return len(found.nodes) + len(found.retyped), built


def changed_table(rows: list[Row]) -> list[str]:
    """Nodes changed and modules built by each step, per graph."""
    names = list(STEPS)
    lines = [
        "what each step changes: nodes new or retyped / modules built afresh",
        f"{'nodes':>6} {'graph':<12}" + "".join(f" | {n:>12}" for n in names),
    ]
    for row in rows:
        line = f"{len(row.graph.nodes):>6} {row.graph.name:<12}"
        for name in names:
            nodes, modules = row.changed[name]
            line += f" | {f'{nodes} / {modules}':>12}"
        lines.append(line)
    return lines


def table(rows: list[Row], stat: str) -> list[str]:
    """The table of one statistic: a row per graph, the target rows followed by a verdict."""
    summary = STATS[stat]
    names = list(STEPS)
    head = f"{'nodes':>6} {'graph':<12}" + "".join(
        f" | {n:>12} {'+full':>7} {'+reuse':>7} {'×':>5} {'relower':>7} {'cold':>7} {'verify':>6}"
        for n in names
    )
    lines = [
        f"growth step, ms ({stat} of runs; torch threads {torch.get_num_threads()})",
        f"{head} | {'to_torch':>8} | {'gc':>6} {'frozen':>6}",
        "-" * len(head) + "-+----------+--------------",
    ]
    for row in rows:
        graph, cells = row.graph, row.steps
        n = len(graph.nodes)
        line = f"{n:>6} {graph.name:<12}"
        for name in names:
            c = cells[name]
            alone, full, reused = summary(c.alone), summary(c.lowered), summary(c.reused)
            line += f" | {alone:>12.2f} {full:>7.2f} {reused:>7.2f} {full / reused:>5.1f}"
            line += f" {summary(c.relower):>7.2f} {summary(c.cold):>7.2f}"
            line += f" {summary(c.verify):>6.2f}"
        line += f" | {summary(row.to_torch):>8.2f}"
        line += f" | {summary(row.gc):>6.1f} {summary(row.gc_frozen):>6.1f}"
        lines.append(line)
        target = TARGETS_MS.get(n)
        if target is not None:
            for what, column in (("re-lowering", "relower"), ("whole step", "reused")):
                ms = {m: summary(getattr(cells[m], column)) for m in names}
                verdicts = ", ".join(
                    f"{m} {v:.1f}{'' if v <= target else ' MISSED'}" for m, v in ms.items()
                )
                lines.append(f"{'':>19} {what}, ms (target {target:g}): {verdicts}")
    return lines


def profile(graph: Graph, top: int, runs: int) -> str:
    """cProfile's top functions (by own time and by cumulative time) of each step and
    ``to_torch(result, reuse=module)`` (the trainer's growth step), over ``runs`` runs."""
    out = io.StringIO()
    verify(graph)
    module = to_torch(graph)
    for name, step in STEPS.items():
        to_torch(step(graph), reuse=module)
        prof = cProfile.Profile()
        for _ in range(runs):
            gc.collect()  # the previous run's garbage, unprofiled (see run_ms)
            prof.enable()
            to_torch(step(graph), reuse=module)
            prof.disable()
        for order in ("tottime", "cumulative"):
            out.write(
                f"\n==== {name} + to_torch(reuse) on {graph.name} ({len(graph.nodes)} nodes), "
                f"{runs} runs, by {order} ====\n"
            )
            pstats.Stats(prof, stream=out).sort_stats(order).print_stats(top)
    return out.getvalue()


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print its tables (median, then minimum)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--seconds", type=float, default=1.5, help="seconds per step and graph (default 1.5)"
    )
    parser.add_argument("--max-nodes", type=int, default=2100, help="skip larger graphs")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--profile", action="store_true", help="cProfile the steps")
    parser.add_argument("--top", type=int, default=25, help="functions per profile listing")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    rows: list[Row] = []
    for depth, stages in SIZES:
        graph = load_spec(resnet_spec(depth, stages))
        if len(graph.nodes) > args.max_nodes:
            continue
        rows.append(time_graph(graph, args.seconds))
        print(f"timed {graph.name} ({len(graph.nodes)} nodes)", file=sys.stderr, flush=True)
    for stat in STATS:
        print("\n".join(table(rows, stat)), end="\n\n")
    print("\n".join(changed_table(rows)), end="\n\n")
    for stat in STATS:
        print("\n".join(trainer_table(rows, stat)), end="\n\n")
    if args.profile:  # ResNet-20 and the largest graph timed
        for graph in {row.graph.name: row.graph for row in rows[-1:] + rows[2:3]}.values():
            print(profile(graph, args.top, runs=20 if len(graph.nodes) < 500 else 3))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
