"""``grow-ir grow SPEC [--plan PLAN] -o DIR [--check]``: apply a growth plan and save."""

from __future__ import annotations

import argparse
import json
from typing import Any

from grow_ir.commands import add_spec_argument, load_graph, plural
from grow_ir.errors import SpecError
from grow_ir.owned import check_replaceable_dir
from grow_ir.passes.manager import PlanResult, run_plan
from grow_ir.spec import save
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


def history(result: PlanResult) -> str:
    """The history file's text: one JSON object per step (pass, arguments, summary,
    preserved, reason, measured max_error or null, parameter count, origins)."""
    return json.dumps([s.to_json() for s in result.steps], indent=2, default=str) + "\n"


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
    save(grown, args.output, extra_files={HISTORY_FILE: history(result)})
    for i, step in enumerate(result.steps):
        status = "preserved" if step.result.preserved else f"not preserved: {step.result.reason}"
        error = "" if step.max_error is None else f", max error {step.max_error:.2g}"
        print(f"{i}. {step.name}: {step.result.summary} ({status}{error})")
    params = f"{plural(graph.num_params(), 'parameter')} -> {grown.num_params():,}"
    print(f"wrote {args.output} ({plural(len(result.steps), 'step')}, {params})")
    return 0
