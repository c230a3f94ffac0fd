"""``--compile``: compile time per growth step, and the compiled grown model's training
speed against the same architecture compiled from scratch.

    python bench/bench_compile.py [--spec SPEC] [--steps 2] [--iters 200] [--backend inductor]

The spec's seed network (AutoGrow's digits CNN by default) grows by ``--steps``
``insert_block`` steps (alternating its stages), each followed by what the trainer does:
``to_torch(grown, reuse=module)`` and a new ``torch.compile`` wrapper, whose first
training step (forward, backward) compiles; that first step's time, less an eager step,
is the compile time of the growth step. Then the grown module (its submodules taken over
across the steps) and a fresh lowering of the same architecture (re-initialised from the
spec seed), both compiled the same way, train ``--iters`` SGD steps each on the same
batches (batch axis marked dynamic, as the trainer marks it), alternating in rounds (the
order flipping every round); medians of per-round step times. The goal: grown ÷ scratch = 1.00.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from grow_ir.backends.torch import to_torch  # noqa: E402
from grow_ir.growth.compiled import Compiler  # noqa: E402
from grow_ir.ir.graph import Graph  # noqa: E402
from grow_ir.passes import insert_block  # noqa: E402
from grow_ir.probes import random_inputs  # noqa: E402
from grow_ir.spec import dump_spec, load_spec  # noqa: E402


def batch(graph: Graph, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A random input batch and labels for ``graph``'s single input and output."""
    (x,) = random_inputs(graph, batch=size, seed=seed).values()
    classes = graph.types[next(iter(graph.outputs.values()))].shape[-1]
    return x, torch.randint(int(classes), (size,), generator=torch.Generator().manual_seed(seed))


def train_step(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor):
    loss = nn.functional.cross_entropy(model(Compiler.batch(x)), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def first_step_s(module: nn.Module, backend: str, x: torch.Tensor, y: torch.Tensor) -> float:
    """Seconds of the first compiled training step of ``module`` (compilation included)."""
    compiled = torch.compile(module, backend=backend)
    opt = torch.optim.SGD(module.parameters(), lr=0.0)
    start = time.perf_counter()
    train_step(compiled, opt, x, y)
    return time.perf_counter() - start


def eager_step_s(module: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    opt = torch.optim.SGD(module.parameters(), lr=0.0)
    train_step(module, opt, x, y)
    start = time.perf_counter()
    for _ in range(5):
        train_step(module, opt, x, y)
    return (time.perf_counter() - start) / 5


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print compile times and the speed ratio; return 0."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spec", default=str(ROOT / "specs/examples/autogrow_digits.yaml"))
    parser.add_argument("--steps", type=int, default=2, help="growth steps")
    parser.add_argument("--iters", type=int, default=200, help="training steps per model")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--backend", default="inductor")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    graph = load_spec(args.spec)
    stages = list(graph.stages) or ["stage1"]
    x, y = batch(graph, args.batch, 0)

    module = to_torch(graph)
    compile_s = [first_step_s(module, args.backend, x, y) - eager_step_s(module, x, y)]
    for step in range(args.steps):
        graph = insert_block(graph, stage=stages[step % len(stages)])
        module = to_torch(graph, reuse=module)
        compile_s.append(first_step_s(module, args.backend, x, y) - eager_step_s(module, x, y))
    grown = module
    spec = dump_spec(graph)
    spec.pop("weights", None)
    scratch = to_torch(load_spec(spec))

    models = {}
    for name, m in (("grown", grown), ("scratch", scratch)):
        compiled = torch.compile(m.train(), backend=args.backend)
        opt = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9)
        train_step(compiled, opt, x, y)  # compile
        models[name] = (compiled, opt)
    data = [batch(graph, args.batch, 1 + i) for i in range(args.iters)]
    times: dict[str, list[float]] = {name: [] for name in models}
    for r in range(args.rounds):  # the order flips every round (grown first, then last)
        for name in list(models) if r % 2 == 0 else list(models)[::-1]:
            compiled, opt = models[name]
            start = time.perf_counter()
            for xb, yb in data:
                train_step(compiled, opt, xb, yb)
            times[name].append((time.perf_counter() - start) / len(data) * 1e3)
    g, s = statistics.median(times["grown"]), statistics.median(times["scratch"])
    print(f"torch.compile backend {args.backend}, batch {args.batch}, {args.threads} thread(s)")
    print(
        "compile time of the first training step, s: seed "
        + ", ".join(f"{v:.1f}" if i == 0 else f"step {i} {v:.1f}" for i, v in enumerate(compile_s))
        + f" (mean per growth step {statistics.mean(compile_s[1:] or compile_s):.1f})"
    )
    print(
        f"training step, ms (median of {args.rounds} rounds of {args.iters}): grown {g:.3f}, "
        f"from scratch {s:.3f}; grown ÷ scratch {g / s:.3f} (goal 1.00)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
