"""``grow-ir show SPEC``: a summary that fits 80 columns: one row per node (stages and
blocks grouped), its output shape, parameters and MACs, then totals per task."""

from __future__ import annotations

import argparse
from collections.abc import Mapping

from grow_ir.commands import add_spec_argument, load_graph, plural
from grow_ir.errors import GrowError
from grow_ir.ir.cost import graph_macs
from grow_ir.ir.graph import Graph

WIDTH = 80
"""The widest line ``show`` prints."""

HEADER = ("node", "op", "output", "params", "MACs", "from")


def shape_text(graph: Graph, value: str) -> str:
    """``[batch, 8, 16, 16]``; the dtype is named only when it is not float32."""
    t = graph.inputs[value] if value in graph.inputs else graph.types[value]
    dims = f"[{', '.join(str(d) for d in t.shape)}]"
    return dims if t.dtype == "float32" else f"{t.dtype}{dims}"


def compact(count: int) -> str:
    """``950``, ``12.3K``, ``4.56M``, ``1.20G``: a count in at most 6 characters."""
    for unit, size in (("G", 10**9), ("M", 10**6), ("K", 10**3)):
        if count >= size:
            value = count / size
            return f"{value:.3g}{unit}" if value < 1000 else f"{value:.0f}{unit}"
    return str(count)


def _local(name: str, scope: str) -> str:
    return name[len(scope) + 1 :] if scope and name.startswith(scope + ".") else name


def _stage_of(graph: Graph, name: str) -> str | None:
    # a stage's name may have dots itself (``transformer.h``, imported)
    return next((s for s in graph.stages if name.startswith(f"{s}.")), None)


def table_rows(graph: Graph, dims: Mapping[str, int]) -> list[tuple[str, ...]]:
    """Rows (node, op, output, params, MACs, from): the graph inputs, then every node in
    order; a stage's nodes follow one row for the stage (its template, depth and totals)
    and are named within it. ``from`` lists a node's inputs unless it reads only the row
    above it."""
    macs = graph_macs(graph, dims)
    rows: list[tuple[str, ...]] = [
        (n, "input", shape_text(graph, n), "-", "-", "") for n in graph.inputs
    ]
    previous: str | None = next(reversed(graph.inputs), None)  # the row above the first node
    stage: str | None = None
    for node in graph.nodes:
        here = _stage_of(graph, node.name)
        if here is not None and here != stage:
            members = [n for n in graph.nodes if _stage_of(graph, n.name) == here]
            info = graph.stages[here]
            rows.append(
                (
                    here,
                    f"stage ×{info.depth}",
                    f"{info.block} blocks",
                    f"{sum(graph.num_params(n) for n in members):,}",
                    compact(sum(macs[n.name] for n in members)),
                    "",
                )
            )
        stage = here
        scope = here or ""
        params = f"= {node.share}" if node.share else f"{graph.num_params(node):,}"
        block = node.name.rpartition(".")[0]
        sources = (
            ""
            if list(node.inputs) == [previous]
            else ", ".join(_local(_local(i, block), scope) for i in node.inputs)
        )
        name = f"  {_local(node.name, scope)}" if here else node.name
        rows.append(
            (name, node.op, shape_text(graph, node.name), params, compact(macs[node.name]), sources)
        )
        previous = node.name
    return rows


def _fit(text: str, width: int) -> str:
    if len(text) <= width:
        return text
    keep = width - 1
    return text[: (keep + 1) // 2] + "…" + text[len(text) - keep // 2 :]


def format_table(graph: Graph, dims: Mapping[str, int] | None = None) -> str:
    """The summary of ``graph``: the node table (no line wider than :data:`WIDTH`), the
    totals (parameters, buffers, their size, MACs of one sample) and, per output, the
    parameters it trains and those it shares frozen with other outputs."""
    dims = {"batch": 1, **(dims or {})}
    rows = [HEADER, *table_rows(graph, dims)]
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    # the node and output columns give way (middle ellipsis) so that the table fits
    fixed = widths[1] + widths[3] + widths[4] + 2 * 4
    widths[0] = min(widths[0], max(12, (WIDTH - fixed) // 2))
    widths[2] = min(widths[2], WIDTH - fixed - widths[0])
    lines = []
    for r in rows:
        cells = [
            _fit(r[0], widths[0]).ljust(widths[0]),
            r[1].ljust(widths[1]),
            _fit(r[2], widths[2]).ljust(widths[2]),
            r[3].rjust(widths[3]),
            r[4].rjust(widths[4]),
        ]
        line = "  ".join(cells)
        room = WIDTH - len(line) - 2
        if r[5] and room >= 6:
            line += "  " + _fit(r[5], room)
        lines.append(line.rstrip())
    rule = "-" * max(len(line) for line in lines)
    return "\n".join([lines[0], rule, *lines[1:], rule, *summary_lines(graph, dims)])


def summary_lines(graph: Graph, dims: Mapping[str, int]) -> list[str]:
    """Totals: parameters and buffers (elements and bytes), MACs, and per output the
    parameters it trains (owned by it alone) and those it reads but shares (frozen)."""
    specs = graph.param_specs
    params = sum(s.numel for s in specs.values() if not s.buffer)
    buffers = sum(s.numel for s in specs.values() if s.buffer)
    size = sum(s.numel * graph.params[k].element_size() for k, s in specs.items())
    macs = sum(graph_macs(graph, dims).values())
    symbols = sorted({d for t in graph.inputs.values() for d in t.shape if isinstance(d, str)})
    sized = ", ".join(f"{s}={dims.get(s, 1)}" for s in symbols)
    lines = [
        f"parameters: {params:,} · buffers: {buffers:,} · size: {_bytes(size)}",
        f"MACs per forward pass: {compact(macs)} ({macs:,}{', ' + sized if sized else ''})",
    ]
    owners = graph.param_owners
    for out in graph.outputs:
        used = [k for k, o in owners.items() if out in o and not specs[k].buffer]
        own = sum(specs[k].numel for k in used if owners[k] == {out})
        shared = sum(specs[k].numel for k in used) - own
        lines.append(
            f"output {out} = {graph.outputs[out]}: {own:,} trainable, {shared:,} frozen "
            "(shared with other outputs)"
            if len(graph.outputs) > 1
            else f"output {out} = {graph.outputs[out]}: {own:,} trainable, {shared:,} frozen"
        )
    return lines


def _bytes(n: int) -> str:
    for unit, size in (("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} bytes"


def parse_dims(items: list[str]) -> dict[str, int]:
    """``["seq=128"]`` -> ``{"seq": 128}``.

    Raises:
        GrowError: an item that is not NAME=N with N >= 1.
    """
    out: dict[str, int] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip() or not value.strip().isdigit() or int(value) < 1:
            raise GrowError(
                "bad --dim",
                field="--dim",
                expected="NAME=N, a symbolic dim and a size >= 1 (e.g. seq=128)",
                found=repr(item),
            )
        out[name.strip()] = int(value)
    return out


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``show``."""
    parser = subparsers.add_parser(
        "show",
        help="summarise a spec: nodes, shapes, parameters, MACs, per-task totals",
        description="Load SPEC and print one line per node (stages grouped): op, output "
        "shape, parameters, MACs and inputs, then the totals: parameters, buffers, size, "
        "MACs of one forward pass of one sample, and per output the parameters it trains "
        "and those it shares frozen. Fits 80 columns.",
    )
    add_spec_argument(parser)
    parser.add_argument(
        "--dim",
        action="append",
        default=[],
        metavar="NAME=N",
        help="size a symbolic dim for the MAC count (default: every one 1, e.g. batch=1)",
    )


def run(args: argparse.Namespace) -> int:
    """Print the summary of the spec's graph."""
    dims = parse_dims(args.dim)
    graph = load_graph(args.spec)
    counts = ", ".join(
        [
            plural(len(graph.inputs), "input"),
            plural(len(graph.nodes), "node"),
            plural(len(graph.outputs), "output"),
        ]
    )
    print(_fit(f"{graph.name} ({args.spec}): {counts}", WIDTH))
    print(format_table(graph, dims))
    return 0
