"""``grow-ir grow SPEC [--plan PLAN] -o DIR [--check]``: apply a growth plan and save."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from grow_ir.commands import add_spec_argument, load_graph, plural, spec_path
from grow_ir.errors import SpecError
from grow_ir.ir.diff import grown_nodes
from grow_ir.ir.graph import Graph
from grow_ir.owned import check_replaceable_dir, owned_names
from grow_ir.passes.manager import PlanResult, run_plan
from grow_ir.spec import SPEC_FILE, save
from grow_ir.spec.errors import kind_of
from grow_ir.spec.text import read_data_file

HISTORY_FILE = "history.json"
"""The growth history's file name inside the output directory."""

PLAN_SHAPE = "a list of {pass: NAME, ...} or a mapping with a 'grow' list"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``grow``."""
    parser = subparsers.add_parser(
        "grow",
        help="apply a growth plan to a spec and save the grown model",
        description="Apply the passes of PLAN (default: the spec's 'grow' section) to SPEC, "
        "all or nothing, and write DIR atomically: spec.yaml, weights.safetensors and "
        f"{HISTORY_FILE} (what each pass did and whether it preserved the function). A plan "
        "that cannot apply exits with status 2, a failed --check with status 1; either way "
        "nothing is written.",
    )
    add_spec_argument(parser)
    parser.add_argument("--plan", metavar="PLAN", help=f"a YAML/JSON plan file: {PLAN_SHAPE}")
    parser.add_argument(
        "-o", "--output", required=True, metavar="DIR", help="the model directory to write"
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="measure every step's output error on random probes and fail when a step that "
        "claims to preserve the function does not",
    )


def read_plan(path: str) -> list[Any]:
    """The plan entries of a YAML or JSON plan file.

    Raises:
        SpecError: the file is missing or unreadable, malformed, or not a plan.
    """
    data = read_data_file(path, "plan")
    if isinstance(data, dict) and "grow" in data:
        data = data["grow"]
    if not isinstance(data, list):
        raise SpecError("not a growth plan", file=path, expected=PLAN_SHAPE, found=kind_of(data))
    return data


def history(result: PlanResult, initial: Graph, earlier: Sequence[Any] = ()) -> str:
    """The history file's text: the ``earlier`` steps, then one JSON object per step of
    this plan (pass, arguments, summary, preserved, reason, measured max_error or null,
    parameter count, origins, the nodes it added and changed)."""
    steps = list(earlier)
    before = initial
    for step in result.steps:
        steps.append({**step.to_json(), **grown_nodes(before, step.result.graph)})
        before = step.result.graph
    return json.dumps(steps, indent=2, default=str) + "\n"


def earlier_history(spec: Path) -> list[Any]:
    """The growth steps already recorded beside ``spec`` (a directory that ``grow`` or
    ``train`` wrote, or its ``spec.yaml``): a grow history's steps, or a training run's
    growth events; ``[]`` when there is none.

    Raises:
        SpecError: the history file grow-ir wrote there is unreadable (it would be lost).
    """
    directory = spec if spec.is_dir() else spec.parent
    if spec.is_file() and spec.name != SPEC_FILE:
        return []
    file = directory / HISTORY_FILE
    if HISTORY_FILE not in (owned_names(directory) or ()) or not file.is_file():
        return []
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise SpecError(
            "cannot carry the earlier growth history on",
            file=str(file),
            expected="the history.json grow-ir wrote",
            found=str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
        ) from None
    if isinstance(data, dict) and isinstance(data.get("events"), list):
        return [{"command": "train", **e} for e in data["events"]]
    if isinstance(data, list):
        return data
    raise SpecError(
        "cannot carry the earlier growth history on",
        file=str(file),
        expected="a list of growth steps, or a training run's history",
        found=kind_of(data),
    )


def run(args: argparse.Namespace) -> int:
    """Grow and save; print one line per step and ``wrote DIR``.

    Raises:
        GrowError: a bad spec, plan or pass argument, or a pass that cannot apply (nothing
            is written).
        CheckFailed: with ``--check``, a step claimed preservation but changed an output
            (nothing is written).
    """
    check_replaceable_dir(args.output, field="-o")
    graph = load_graph(args.spec)
    if args.plan is not None:
        plan, file = read_plan(args.plan), args.plan
    else:
        plan, file = list(graph.grow), args.spec
    if not plan:
        raise SpecError(
            "no growth plan",
            file=file,
            field="grow",
            expected="--plan PLAN, or a non-empty 'grow' section in the spec",
            found="an empty plan",
        )
    result = run_plan(graph, plan, check=args.check, file=file)
    # The spec's own plan, once applied, must not be carried on to be applied again; a plan
    # given with --plan leaves the spec's (unapplied) section as it was.
    grown = result.graph if args.plan is not None else result.graph.replace(grow=())
    earlier = earlier_history(spec_path(args.spec))
    save(grown, args.output, extra_files={HISTORY_FILE: history(result, graph, earlier)})
    for i, step in enumerate(result.steps):
        status = "preserved" if step.result.preserved else f"not preserved: {step.result.reason}"
        error = "" if step.max_error is None else f", max error {step.max_error:.2g}"
        print(f"{i}. {step.name}: {step.result.summary} ({status}{error})")
    params = f"{plural(graph.num_params(), 'parameter')} -> {grown.num_params():,}"
    print(f"wrote {args.output} ({plural(len(result.steps), 'step')}, {params})")
    return 0
