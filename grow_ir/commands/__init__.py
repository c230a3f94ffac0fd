"""Subcommands of ``grow-ir``, one module each.

A command module provides:

- ``add_parser(subparsers)``: add its subparser(s) to the ``argparse`` subparsers action;
- ``run(args) -> int``: do the work and return the exit status (0 done, 1 a check failed).

It raises :class:`~grow_ir.errors.GrowError` for bad input; the command line prints the
message and exits with status 2 (1 for ``CheckFailed``). List a new module in
``grow_ir.cli.COMMANDS``. The helpers below are shared by commands that read a spec.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from grow_ir.errors import SpecError
from grow_ir.ir.graph import Graph
from grow_ir.spec import load_spec
from grow_ir.spec.errors import suggest
from grow_ir.spec.examples import example_names, example_path
from grow_ir.spec.weights import check_finite

SPEC_HELP = "a YAML/JSON spec file, a directory written by save(), or a packaged example's name"


def add_spec_argument(parser: argparse.ArgumentParser) -> None:
    """Add the positional ``SPEC`` argument: a spec file, a saved directory or an example."""
    parser.add_argument("spec", metavar="SPEC", help=SPEC_HELP)


def add_process_arguments(parser: argparse.ArgumentParser, nproc_help: str) -> None:
    """The flags of a command that may run as several DDP processes: ``--nproc N``
    (described by ``nproc_help``), ``--dist-timeout S`` and ``--quiet``."""
    parser.add_argument("--nproc", type=int, metavar="N", help=nproc_help)
    parser.add_argument(
        "--dist-timeout",
        type=float,
        default=120.0,
        metavar="S",
        help="seconds a rank waits for the others before the run fails (default 120)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def spec_path(spec: str | Path) -> Path:
    """The path ``SPEC`` names: itself when it exists (or looks like a path), else the
    packaged example of that name (``mlp``, ``autogrow_digits``).

    Raises:
        SpecError: ``SPEC`` names neither an existing path nor an example (the nearest
            example name suggested when it is a bare name).
    """
    path = Path(spec)
    text = str(spec)
    if path.exists() or "/" in text or path.suffix in (".yaml", ".yml", ".json"):
        return path
    if text in example_names():
        return example_path(text)
    names = example_names()
    raise SpecError(
        f"no such spec file, directory or example{suggest(text, names)}",
        file=text,
        expected=f"an existing YAML/JSON file or directory, or one of {', '.join(names)}",
        found="nothing at that path",
    )


def load_graph(spec: str) -> Graph:
    """The verified Graph of ``SPEC`` (a spec file, a saved directory or an example), its
    parameters finite (a SpecError names a NaN or Inf one)."""
    graph = load_spec(spec_path(spec))
    check_finite(graph, file=spec)
    return graph


def plural(count: int, word: str) -> str:
    """``1 node``, ``12 nodes``, ``12,345 parameters``."""
    return f"{count:,} {word}{'' if count == 1 else 's'}"
