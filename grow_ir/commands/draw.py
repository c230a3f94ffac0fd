"""``grow-ir draw SPEC|DIR -o FILE.svg|png``: a picture of the architecture."""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from grow_ir.commands import add_spec_argument, load_graph, spec_path
from grow_ir.errors import GrowError
from grow_ir.owned import check_replaceable_file, new_file_mode

FORMATS = (".svg", ".png")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``draw``."""
    parser = subparsers.add_parser(
        "draw",
        help="draw a spec's architecture (stages and blocks grouped) as SVG or PNG",
        description="Draw SPEC (a spec, a directory that save, grow or train wrote, or an "
        "example's name) to FILE: one box per node with its op and output shape, arrows for "
        "the data flow, a frame round every stage and block. For a directory that grow or "
        "train wrote, the nodes growth added and those it widened are coloured (from its "
        "history.json). The file is written atomically and replaces only a picture that "
        "grow-ir drew.",
    )
    add_spec_argument(parser)
    parser.add_argument(
        "-o", "--output", required=True, metavar="FILE.svg|png", help="the picture to write"
    )


def run(args: argparse.Namespace) -> int:
    """Draw; print ``wrote FILE (N nodes, A added, W widened by growth)``."""
    from grow_ir.drawing import draw, grown_from_history, written_by_draw

    out = Path(args.output)
    if out.suffix.lower() not in FORMATS:
        raise GrowError(
            "unknown picture format",
            file=str(out),
            field="-o",
            expected=f"a file name ending in {' or '.join(FORMATS)}",
            found=repr(out.suffix or "no suffix"),
        )
    check_replaceable_file(out, ours=written_by_draw(out), what="a picture")
    graph = load_graph(args.spec)
    source = spec_path(args.spec)
    grown = grown_from_history(source if source.is_dir() else source.parent)
    grown = {k: v & {n.name for n in graph.nodes} for k, v in grown.items()}
    target = out.resolve() if out.is_symlink() else out
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.stem}.", suffix=target.suffix, dir=target.parent)
    os.close(fd)
    try:
        draw(graph, tmp, grown=grown)
        os.chmod(tmp, new_file_mode())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    marks = f", {len(grown['added'])} added, {len(grown['changed'])} widened by growth"
    any_grown = grown["added"] or grown["changed"]
    print(f"wrote {out} ({len(graph.nodes)} nodes{marks if any_grown else ''})")
    return 0
