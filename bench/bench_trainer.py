"""The trainer's own overhead: samples/s of ``grow-ir train`` ÷ a plain PyTorch loop.

    python bench/bench_trainer.py [--spec SPEC] [--epochs 8] [--repeats 3] [--threads 1]

First the spec's growth run (AutoGrow on digits by default) grows the network, with
checkpoints written, and the trainer prints where its time went (data, step, validation,
checkpoint, growth). Then, on the grown (final) architecture re-initialised from the
spec seed, the same data and batch size, side by side and alternating (``--repeats``
times, which runs first flipping every time; the medians and the fastest runs reported):

- ``grow-ir train``: the :class:`~grow_ir.growth.Trainer` with policy ``none``, writing a
  checkpoint after every epoch into a fresh directory, validating every epoch, scoring
  the test split at the end (``Trainer.run``; the CLI's one-off exports after the run,
  ONNX and plots, are not counted);
- a plain PyTorch loop doing the same work by hand: the lowered module, the same
  optimizer, seeded shuffling, batches by index, forward, cross-entropy, ``zero_grad``,
  ``backward``, ``step``; the validation split scored after every epoch and the test
  split at the end (work the user asked for, not overhead); no checkpoints, no
  bookkeeping.

samples/s = epochs × training samples ÷ wall time (and ÷ the process's CPU time, which
other processes on a shared machine do not inflate). The goal: a ratio ≥ 0.95.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from grow_ir.backends.torch import to_torch  # noqa: E402
from grow_ir.growth import Trainer, growth_config  # noqa: E402
from grow_ir.growth.config import GrowthConfig  # noqa: E402
from grow_ir.growth.data import Dataset, load_data  # noqa: E402
from grow_ir.growth.loop import accuracy  # noqa: E402
from grow_ir.growth.optim_state import make_optimizer  # noqa: E402
from grow_ir.growth.report import describe_architecture  # noqa: E402
from grow_ir.ir.graph import Graph  # noqa: E402
from grow_ir.spec import dump_spec, load_spec  # noqa: E402

GOAL = 0.95


def from_scratch(graph: Graph) -> Graph:
    """``graph``'s architecture with fresh parameters from its spec seed."""
    spec = dump_spec(graph)
    spec.pop("weights", None)
    return load_spec(spec)


def trainer_run(
    graph: Graph, config: GrowthConfig, data: str, log: list[str]
) -> tuple[float, float]:
    """Wall and CPU seconds of one ``Trainer.run`` of ``graph`` (checkpoints into a fresh
    directory)."""
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer.fresh(
            graph, config, data_source=data, out_dir=tmp, progress=False, log=log.append
        )
        trainer.threads = torch.get_num_threads()
        start, cpu = time.perf_counter(), time.process_time()
        trainer.run()
        return time.perf_counter() - start, time.process_time() - cpu


def plain_run(graph: Graph, config: GrowthConfig, data: Dataset) -> tuple[float, float]:
    """Wall and CPU seconds of the plain PyTorch loop over ``config.epochs`` epochs."""
    cpu = time.process_time()
    wall = _plain(graph, config, data)
    return wall, time.process_time() - cpu


def _plain(graph: Graph, config: GrowthConfig, data: Dataset) -> float:
    torch.manual_seed(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    module = to_torch(graph).train()
    optimizer = make_optimizer(config.optimizer, module)
    x, y, bs = data.x_train, data.y_train, config.batch_size
    start = time.perf_counter()
    for _ in range(config.epochs):
        order = torch.randperm(len(y), generator=gen)
        for i in range(0, len(y), bs):
            idx = order[i : i + bs]
            loss = nn.functional.cross_entropy(module(x[idx]), y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        accuracy(module, data.x_val, data.y_val, torch.device("cpu"))
    accuracy(module, data.x_test, data.y_test, torch.device("cpu"))
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the split and the ratio; return 0."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spec", default=str(ROOT / "specs/examples/autogrow_digits.yaml"))
    parser.add_argument("--epochs", type=int, default=8, help="epochs of each timed run")
    parser.add_argument("--grow-epochs", type=int, default=None, help="default: the spec's")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    seed_graph = load_spec(args.spec)
    grow_cfg = growth_config(seed_graph.growth, {"epochs": args.grow_epochs})
    data_name = grow_cfg.data or "digits"

    log: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        grower = Trainer.fresh(
            seed_graph, grow_cfg, data_source=data_name, out_dir=tmp, progress=False,
            log=log.append,
        )  # fmt: skip
        grower.threads = args.threads
        grown = grower.run()
    print(f"growth run ({grow_cfg.epochs} epochs): {describe_architecture(grown.graph)}")
    print(f"  {log[-1]}")

    final = from_scratch(grown.graph)
    fixed = growth_config(
        seed_graph.growth, {"policy": "none", "epochs": args.epochs, "tail_epochs": 0}
    )
    data = load_data(data_name, val_fraction=fixed.val_fraction)
    samples = args.epochs * len(data.y_train)
    ours: list[tuple[float, float]] = []
    plain: list[tuple[float, float]] = []
    split = []
    for r in range(args.repeats):  # which of the two runs first flips every repeat
        for which in ("ours", "plain") if r % 2 == 0 else ("plain", "ours"):
            if which == "plain":
                plain.append(plain_run(final, fixed, data))
                continue
            run_log: list[str] = []
            ours.append(trainer_run(final, fixed, data_name, run_log))
            split.append(run_log[-1])
    print(
        f"final architecture, {args.epochs} epochs of {len(data.y_train)} samples, batch "
        f"{fixed.batch_size}, {args.threads} thread(s), {args.repeats} repeats:"
    )
    # wall time is the figure; CPU time (this process, all threads) shows the same work
    # without the time other processes took from it on a shared machine; the fastest run
    # of each is the one other processes disturbed least
    for summary, pick in (("median", statistics.median), ("fastest", max)):
        for i, clock in enumerate(("wall", "CPU")):
            a = pick(samples / t[i] for t in ours)
            b = pick(samples / t[i] for t in plain)
            verdict = "met" if a / b >= GOAL else "MISSED"
            print(
                f"  {summary}, by {clock} time: grow-ir train {a:>7,.0f} samples/s, plain "
                f"PyTorch loop {b:>7,.0f} samples/s, ratio {a / b:.3f} (goal >= {GOAL}: "
                f"{verdict})"
            )
    print(f"  grow-ir train's split: {split[len(split) // 2]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
