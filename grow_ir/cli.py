"""The ``grow-ir`` command: one subcommand per module in :mod:`grow_ir.commands`.

Exit status: 0 done; 1 a check failed (:class:`~grow_ir.errors.CheckFailed`); 2 bad input
(any other :class:`~grow_ir.errors.GrowError`, an unreadable file, or a usage error), with
a one-paragraph message ``grow-ir: error: ...`` on stderr and no traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence

from grow_ir import __version__
from grow_ir.errors import CheckFailed, GrowError

COMMANDS: tuple[str, ...] = (
    "validate",
    "show",
    "grow",
    "train",
    "continual",
    "export",
    "import_",
    "draw",
    "schema",
    "demo",
)
"""Subcommand modules under grow_ir.commands, in help order: adding one is one line here."""

EXIT_OK, EXIT_CHECK_FAILED, EXIT_BAD_INPUT = 0, 1, 2


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every command of :data:`COMMANDS` registered.

    Each module provides ``add_parser(subparsers)`` (adding one or more subparsers) and
    ``run(args) -> int``; every subparser it adds runs that module's ``run``.
    """
    parser = argparse.ArgumentParser(
        prog="grow-ir",
        description="Grow neural networks as a compiler problem: specs, growth passes, "
        "PyTorch and ONNX backends.",
    )
    parser.add_argument("--version", action="version", version=f"grow-ir {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f"grow_ir.commands.{name}")
        before = set(subparsers.choices)
        module.add_parser(subparsers)
        for added in set(subparsers.choices) - before:
            subparsers.choices[added].set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``grow-ir`` with ``argv`` (default: the process arguments); return the exit status.

    Guarantees: a GrowError never escapes as a traceback; it is printed as one paragraph on
    stderr and gives status 2 (1 for CheckFailed).
    """
    _log_to_stderr()
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # usage errors (2), --help and --version (0)
        return exc.code if isinstance(exc.code, int) else EXIT_BAD_INPUT
    args._argv = list(sys.argv[1:] if argv is None else argv)  # a launcher re-runs them
    run = getattr(args, "_run", None)
    if run is None:
        parser.print_help(sys.stderr)
        return EXIT_BAD_INPUT
    try:
        return int(run(args))
    except CheckFailed as exc:
        _error(exc.message)
        return EXIT_CHECK_FAILED
    except GrowError as exc:
        _error(exc.message)
        return EXIT_BAD_INPUT
    except BrokenPipeError:  # the reader went away (`grow-ir show SPEC | head`): not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except OSError as exc:
        where = f": {exc.filename}" if exc.filename else ""
        _error(f"{exc.strerror or exc}{where}.")
        return EXIT_BAD_INPUT


class _Stderr(logging.Handler):
    """Writes grow-ir's log records (warnings such as a removed leftover) as lines on the
    stderr of the moment."""

    def emit(self, record: logging.LogRecord) -> None:
        print(self.format(record), file=sys.stderr)


def _log_to_stderr() -> None:
    logger = logging.getLogger("grow_ir")
    if not any(isinstance(h, _Stderr) for h in logger.handlers):
        logger.addHandler(_Stderr())


def _error(message: str) -> None:
    print(f"grow-ir: error: {message}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
