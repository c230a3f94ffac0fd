"""``grow-ir continual SPEC --tasks NAME|FILE... -o DIR``: learn a task sequence with Learn
to Grow, without forgetting."""

from __future__ import annotations

import argparse
from dataclasses import replace
from typing import TYPE_CHECKING

from grow_ir.commands import add_process_arguments, add_spec_argument, load_graph, plural
from grow_ir.errors import GrowError
from grow_ir.owned import check_replaceable_dir

if TYPE_CHECKING:
    from grow_ir.growth.continual.learn import ContinualConfig
    from grow_ir.growth.continual.tasks import Task
    from grow_ir.growth.distributed import Distributed
    from grow_ir.ir.graph import Graph


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``continual``."""
    from grow_ir.growth.continual.tasks import SEQUENCES

    parser = subparsers.add_parser(
        "continual",
        help="learn a sequence of tasks with Learn to Grow (reuse / adapt / new per layer)",
        description="Learn the tasks in order, starting from SPEC's network (its output layer "
        "becomes the first task's head). For every later task a DARTS-style search chooses, "
        "per layer, to reuse it, adapt it or grow a new copy; only the task's own parameters "
        "then train, so earlier tasks' outputs stay bitwise identical. Prints each task's "
        "choices and the accuracy on every task so far; DIR receives history.json, the "
        "multi-task spec.yaml + weights.safetensors and model.onnx (one output per task, "
        "checked against onnxruntime).",
    )
    add_spec_argument(parser)
    parser.add_argument(
        "--tasks",
        required=True,
        nargs="+",
        metavar="NAME|FILE",
        help=f"{' or '.join(SEQUENCES)}, or one FILE.npz per task "
        "(x_train, y_train, x_test, y_test)",
    )
    parser.add_argument("-o", "--output", required=True, metavar="DIR", help="where to write")
    parser.add_argument(
        "--penalty",
        type=float,
        nargs="+",
        metavar="L",
        help="λ of the size penalty; several are candidates, each task keeping the one "
        "with the best validation accuracy (default 0.1 0.3 1)",
    )
    parser.add_argument(
        "--search-epochs", type=int, metavar="N", help="epochs of each search (default 100)"
    )
    parser.add_argument(
        "--epochs",
        type=int,
        metavar="N",
        help="epochs training each later task's own parameters (default 30)",
    )
    parser.add_argument(
        "--first-epochs", type=int, metavar="N", help="epochs training the first task (default 30)"
    )
    parser.add_argument("--rank", type=int, metavar="R", help="rank of the adapters (default 4)")
    parser.add_argument("--seed", type=int, metavar="S", help="training seed (default 0)")
    parser.add_argument(
        "--device", metavar="D", help="cpu or cuda (default: cuda when there is one)"
    )
    add_process_arguments(
        parser,
        "learn as N processes with DistributedDataParallel on this machine (gloo on the CPU, "
        "NCCL on CUDA; batch sizes are global)",
    )


def run(args: argparse.Namespace) -> int:
    """Learn the tasks, print per-task tables and a summary, write DIR. With ``--nproc N``
    (N > 1), check the inputs, then learn as N ranks of a DDP run (``torchrun ... -m
    grow_ir continual`` starts the ranks itself); rank 0 prints and writes.

    GrowError for bad input (exit 2); CheckFailed when the ONNX model does not match the
    torch backend (exit 1, the other files written) or another rank failed.
    """
    from grow_ir.growth.distributed import Distributed, launch, launched, rank_argv
    from grow_ir.growth.loop import pick_device

    if args.nproc is not None and args.nproc < 1:
        raise GrowError("bad --nproc", field="--nproc", expected="N >= 1", found=str(args.nproc))
    if (args.nproc or 1) > 1 and not launched():
        _inputs(args, lead=True)  # bad input: exit 2 before any rank starts
        return launch(args.nproc, rank_argv(args._argv))
    if not launched():
        return _learn(args, None)
    dist = Distributed.join(pick_device(args.device), args.dist_timeout)
    try:
        return _learn(args, dist)
    finally:
        dist.close()


def _inputs(args: argparse.Namespace, lead: bool) -> tuple[ContinualConfig, Graph, list[Task]]:
    """The run's settings, spec and tasks (the output directory checked by the lead)."""
    from grow_ir.growth.continual import load_tasks

    config = _config(args)
    if lead:
        check_replaceable_dir(args.output, field="--output")
    return config, load_graph(args.spec), load_tasks(args.tasks)


def _learn(args: argparse.Namespace, dist: Distributed | None) -> int:
    from grow_ir.growth.continual import learn_sequence, write_outputs
    from grow_ir.growth.distributed import check_started, lost_rank
    from grow_ir.growth.loop import pick_device

    lead = dist is None or dist.rank == 0
    if dist is None:
        config, spec, tasks = _inputs(args, lead)
    else:  # every rank starts, or none
        error: GrowError | None = None
        try:
            config, spec, tasks = _inputs(args, lead)
        except GrowError as exc:
            error = exc
        check_started(dist, error)
    device = pick_device(args.device) if dist is None else dist.device
    say = print if lead else _silent
    names = ", ".join(f"{t.name} ({t.source})" for t in tasks)
    ranks = "" if dist is None else f" x {dist.world} processes"
    say(f"learning {plural(len(tasks), 'task')} on {device}{ranks}: {names}")
    try:
        result = learn_sequence(
            spec, tasks, config, device=device, log=say, progress=lead and not args.quiet
        )
    except RuntimeError as exc:  # a collective under DDP failed
        if dist is None:
            raise
        raise lost_rank(dist, exc) from None
    if not lead:
        return 0
    print(result.history.summary())
    files = write_outputs(result, args.output)
    print(
        f"wrote {files.directory} (spec.yaml, weights.safetensors, history.json, model.onnx: "
        f"{plural(len(tasks), 'output')}, max relative error {files.onnx_error:.2g})"
    )
    return 0


def _silent(line: str) -> None:
    pass


def _config(args: argparse.Namespace) -> ContinualConfig:
    """The run's settings: the defaults, with the flags given."""
    from grow_ir.growth.continual import ContinualConfig

    for flag, value, low in (
        ("--search-epochs", args.search_epochs, 1),
        ("--epochs", args.epochs, 0),
        ("--first-epochs", args.first_epochs, 1),
        ("--rank", args.rank, 1),
    ):
        if value is not None and value < low:
            raise GrowError(
                "out of range", field=flag, expected=f"an integer >= {low}", found=str(value)
            )
    bad = [p for p in args.penalty or () if not p >= 0]
    if bad:
        raise GrowError(
            "out of range", field="--penalty", expected="numbers >= 0", found=f"{bad[0]:g}"
        )
    config = ContinualConfig()
    search = config.search
    penalties = config.penalties if args.penalty is None else tuple(args.penalty)
    if args.search_epochs is not None:
        search = replace(
            search, epochs=args.search_epochs, warmup=min(search.warmup, args.search_epochs // 2)
        )
    first, train = config.first, config.train
    if args.first_epochs is not None:
        first = replace(first, epochs=args.first_epochs)
    if args.epochs is not None:
        train = replace(train, epochs=args.epochs)
    return replace(
        config,
        search=search,
        penalties=penalties,
        first=first,
        train=train,
        rank=config.rank if args.rank is None else args.rank,
        seed=config.seed if args.seed is None else args.seed,
    )
