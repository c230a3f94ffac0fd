"""Lowered (``to_torch``) versus hand-written nn.Modules: forward+backward time, side by side.

Usage: ``.venv/bin/python bench/bench_torch.py [--threads 1] [--seconds 6] [--only ARCH]``

For each architecture of ``handwritten.py`` (MLP, CIFAR ResNet, pre-LN causal transformer)
it builds the IR graph, lowers it, loads the same state_dict into the hand-written twin,
checks that both give bitwise-equal outputs, then times the two alternately (A/B, then B/A,
...) and prints the median of each and their ratio, lowered ÷ hand-written (1.000 = no
overhead; lower is better). A third module, timed in the same rotation, is the lowered one
recompiled to fx's code of the whole graph as one function (``1-fn``: what every lowering
ran before the forward was generated in chunks). Train-mode forward+backward is the main
figure; eval-mode forward under ``no_grad`` is the most sensitive to per-call overhead. The
first table uses benchmark sizes (compute-bound on a CPU), the second toy sizes, where
Python overhead is most of the time.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from handwritten import ARCHS, TINY, Arch, twin

from grow_ir.backends.torch import to_torch

Step = Callable[[nn.Module], None]


def train_step(inputs: dict[str, torch.Tensor]) -> Step:
    """One training-mode forward and backward (gradients cleared before, not timed)."""

    def step(m: nn.Module) -> None:
        m(**inputs).sum().backward()

    return step


def eval_step(inputs: dict[str, torch.Tensor]) -> Step:
    """One eval-mode forward without autograd."""

    def step(m: nn.Module) -> None:
        with torch.no_grad():
            m(**inputs)

    return step


def interleaved(modules: list[nn.Module], step: Step, seconds: float) -> list[list[float]]:
    """Seconds per call of ``step`` on each of ``modules``, timed alternately (the order
    reverses every repetition) after a warm-up, for about ``seconds`` in all."""
    for _ in range(5):
        for m in modules:
            step(m)
    start = time.perf_counter()
    for m in modules:
        step(m)
    reps = max(30, min(2000, int(seconds / max(time.perf_counter() - start, 1e-9))))
    times: list[list[float]] = [[] for _ in modules]
    order = list(range(len(modules)))
    for r in range(reps):
        for which in order if r % 2 == 0 else order[::-1]:
            module = modules[which]
            module.zero_grad(set_to_none=True)
            t0 = time.perf_counter()
            step(module)
            times[which].append(time.perf_counter() - t0)
    return times


def check_equal(lowered: nn.Module, hand: nn.Module, inputs: dict[str, torch.Tensor]) -> None:
    """Raise unless both modules give bitwise-equal outputs, in train and in eval mode."""
    for mode in (True, False):
        lowered.train(mode)
        hand.train(mode)
        with torch.no_grad():
            ya, yb = lowered(**inputs), hand(**inputs)
        if not torch.equal(ya, yb):
            err = (ya - yb).abs().max().item()
            raise SystemExit(f"lowered and hand-written differ (train={mode}): max |diff| {err}")


@dataclass(frozen=True)
class Row:
    """Timings of one architecture in one mode, in milliseconds."""

    hand: float
    lowered: float
    ratio: float
    one_function: float
    """The lowered module running fx's code of the whole graph as one function (its
    ``recompile()``), the code every lowering ran before chunked code generation."""
    one_ratio: float


def bench(arch: Arch, seconds: float) -> dict[str, Row]:
    """Time one architecture in train (forward+backward) and eval (forward) mode."""
    graph = arch.graph()
    inputs = arch.inputs()
    lowered, hand = to_torch(graph), twin(graph, arch.module())
    check_equal(lowered, hand, inputs)
    one = to_torch(graph)
    one.load_state_dict(lowered.state_dict())
    one.recompile()
    check_equal(one, lowered, inputs)
    rows = {}
    for label, make, mode in (("fwd+bwd", train_step, True), ("fwd eval", eval_step, False)):
        for m in (lowered, hand, one):
            m.train(mode)
        tl, th, t1 = interleaved([lowered, hand, one], make(inputs), seconds / 2)
        rows[label] = Row(
            hand=statistics.median(th) * 1e3,
            lowered=statistics.median(tl) * 1e3,
            # The median of per-repetition ratios: each pair ran back to back, under the
            # same machine load, so slow drift in the load cancels out.
            ratio=statistics.median(a / b for a, b in zip(tl, th)),
            one_function=statistics.median(t1) * 1e3,
            one_ratio=statistics.median(a / b for a, b in zip(t1, th)),
        )
    return rows


def table(title: str, archs: tuple[Arch, ...], seconds: float) -> None:
    """Print one table: a row per architecture and mode."""
    header = (
        f"{'arch':<12} {'params':>8} {'batch':>5} {'mode':<8} | {'hand ms':>9} {'lowered ms':>10} "
        f"{'ratio':>6} | {'1-fn ms':>9} {'ratio':>6}"
    )
    print(f"\n{title}\n{header}\n{'-' * len(header)}")
    for arch in archs:
        params = arch.graph().num_params() / 1e3
        for mode, r in bench(arch, seconds).items():
            print(
                f"{arch.name:<12} {params:>7.1f}k {arch.batch:>5} {mode:<8} | "
                f"{r.hand:>9.3f} {r.lowered:>10.3f} {r.ratio:>6.3f} | "
                f"{r.one_function:>9.3f} {r.one_ratio:>6.3f}"
            )


def main(argv: list[str] | None = None) -> None:
    """Run every architecture at both sizes and print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--seconds", type=float, default=6.0, help="time per architecture")
    parser.add_argument("--only", choices=[a.name for a in ARCHS], help="one architecture")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {args.threads} thread(s), CPU; medians of interleaved runs")
    print("ratio: median over back-to-back pairs of lowered / hand-written (1.000 = parity)")
    print("1-fn: the lowered module recompiled to fx's one function (the code before chunks)")
    pick = lambda archs: tuple(a for a in archs if args.only in (None, a.name))
    table("benchmark sizes (compute-bound)", pick(ARCHS), args.seconds)
    table("toy sizes (per-call overhead dominates)", pick(TINY), args.seconds)


if __name__ == "__main__":
    main()
