"""A picture of a graph's architecture (SVG or PNG), drawn with matplotlib.

Nodes are boxes (name, op, output shape) laid out top to bottom in layers (a node sits one
layer below its deepest input); edges are arrows, skip connections curve round the layers
they jump. Every stage and every block of a stage is a labelled frame round its nodes.
Nodes a growth step added, and those it resized, are filled in their own colours (with a
legend), as the directory's ``history.json`` records them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from grow_ir.ir.graph import Graph

ADDED, CHANGED, PLAIN, INPUT = "#b7e4c7", "#ffd6a5", "#eef2f7", "#dde3ea"
"""Fill colours: added by growth, resized by growth, other nodes, graph inputs."""

CREATOR = "grow-ir draw"
"""Written into every picture's metadata: how ``draw`` knows a file is its own."""

BOX_W, BOX_H, GAP_X, GAP_Y = 2.6, 0.62, 0.5, 0.42


def grown_from_history(directory: Path) -> dict[str, set[str]]:
    """The nodes growth ``added`` and ``changed``, from ``directory/history.json`` (a
    ``grow`` history, or a training run's events); empty sets when there is none."""
    out: dict[str, set[str]] = {"added": set(), "changed": set()}
    try:
        data = json.loads((directory / "history.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return out
    steps = data.get("events", []) if isinstance(data, dict) else data
    for step in steps if isinstance(steps, list) else []:
        if isinstance(step, dict):
            for key in out:
                names = step.get(key)
                if isinstance(names, list):
                    out[key].update(n for n in names if isinstance(n, str))
    out["changed"] -= out["added"]
    return out


def layout(graph: Graph) -> dict[str, tuple[float, float]]:
    """Centre ``(x, y)`` of every input and node: one layer per longest-path depth, each
    layer ordered by its inputs' positions and centred."""
    depth: dict[str, int] = {name: 0 for name in graph.inputs}
    for n in graph.nodes:
        depth[n.name] = 1 + max((depth[i] for i in n.inputs), default=-1)
    layers: dict[int, list[str]] = {}
    for name in [*graph.inputs, *(n.name for n in graph.nodes)]:
        layers.setdefault(depth[name], []).append(name)
    pos: dict[str, tuple[float, float]] = {}
    for level in sorted(layers):
        names = layers[level]

        def parent_x(name: str) -> float:
            ins = [] if name in graph.inputs else graph.node(name).inputs
            xs = [pos[i][0] for i in ins if i in pos]
            return sum(xs) / len(xs) if xs else 0.0

        names.sort(key=parent_x)
        width = len(names) * BOX_W + (len(names) - 1) * GAP_X
        for k, name in enumerate(names):
            x = -width / 2 + BOX_W / 2 + k * (BOX_W + GAP_X)
            pos[name] = (x, -level * (BOX_H + GAP_Y))
    return pos


def _groups(graph: Graph) -> list[tuple[str, list[str], int]]:
    """(label, member nodes, nesting level) of every stage (level 0) and block (level 1)."""
    out: list[tuple[str, list[str], int]] = []
    for stage in graph.stages:
        members = [n.name for n in graph.nodes if n.name.startswith(f"{stage}.")]
        if not members:
            continue
        out.append((stage, members, 0))
        blocks: dict[str, list[str]] = {}
        for name in members:
            block, dot, _ = name[len(stage) + 1 :].partition(".")
            if dot:  # the stage's name may have dots itself (``transformer.h``, imported)
                blocks.setdefault(block, []).append(name)
        out.extend((block, names, 1) for block, names in blocks.items())
    return out


def _label(graph: Graph, name: str) -> str:
    t = graph.inputs[name] if name in graph.inputs else graph.types[name]
    shape = "×".join(str(d) for d in t.shape[1:]) or "scalar"
    op = "input" if name in graph.inputs else graph.node(name).op
    short = name.split(".", 2)[-1] if name.count(".") >= 2 else name
    return f"{short}\n{op} [{shape}]"


def draw(
    graph: Graph,
    path: str | Path,
    *,
    grown: Mapping[str, Iterable[str]] | None = None,
    title: str | None = None,
) -> Path:
    """Draw ``graph`` to ``path`` (``.svg`` or ``.png``, chosen by the suffix) and return it.

    Guarantees: every input and node is a box; every stage and block a labelled frame;
    nodes in ``grown["added"]`` / ``grown["changed"]`` are filled in their colours, with a
    legend saying which is which; the file's metadata names :data:`CREATOR`.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch, Patch

    path = Path(path)
    added = set((grown or {}).get("added", ()))
    changed = set((grown or {}).get("changed", ()))
    pos = layout(graph)
    xs = [x for x, _ in pos.values()]
    ys = [y for _, y in pos.values()]
    span_x = max(xs) - min(xs) + BOX_W + 3.0
    span_y = max(ys) - min(ys) + BOX_H + 2.0
    fig, ax = plt.subplots(figsize=(max(4.0, span_x * 0.9), max(3.0, span_y * 0.9)))
    ax.set_xlim(min(xs) - BOX_W / 2 - 1.5, max(xs) + BOX_W / 2 + 1.5)
    ax.set_ylim(min(ys) - BOX_H / 2 - 0.6, max(ys) + BOX_H / 2 + 1.2)
    ax.set_aspect("equal")
    ax.axis("off")

    for label, members, level in _groups(graph):
        pad = 0.32 - 0.12 * level
        left = min(pos[m][0] for m in members) - BOX_W / 2 - pad
        right = max(pos[m][0] for m in members) + BOX_W / 2 + pad
        bottom = min(pos[m][1] for m in members) - BOX_H / 2 - pad
        top = max(pos[m][1] for m in members) + BOX_H / 2 + pad
        frame = FancyBboxPatch(
            (left, bottom),
            right - left,
            top - bottom,
            boxstyle="round,pad=0,rounding_size=0.15",
            facecolor="#f6f8ff" if level == 0 else "none",
            edgecolor="#5c6bc0" if level == 0 else "#9fa8da",
            linestyle="-" if level == 0 else "--",
            linewidth=1.2,
            zorder=0 + level,
        )
        ax.add_patch(frame)
        if level == 0:
            info = graph.stages[label]
            text = f"{label} ({info.block} × {info.depth})"
            ax.text(
                right + 0.08,
                top - 0.05,
                text,
                ha="left",
                va="top",
                fontsize=8,
                color="#3949ab",
                fontweight="bold",
            )
        else:
            ax.text(
                left - 0.06, top - 0.02, label, ha="right", va="top", fontsize=6.5, color="#5c6bc0"
            )

    for n in graph.nodes:
        x1, y1 = pos[n.name]
        for src in n.inputs:
            x0, y0 = pos[src]
            jump = round((y0 - y1) / (BOX_H + GAP_Y))
            if jump > 1 and abs(x1 - x0) < 1e-6:
                # a skip connection: out of the source's right side, down beside the
                # column, into the target's right side
                arm = 26 + 3 * min(jump, 8)
                start, end = (x0 + BOX_W / 2, y0), (x1 + BOX_W / 2, y1)
                style = f"arc,angleA=0,armA={arm},angleB=0,armB={arm},rad=6"
            else:
                start, end = (x0, y0 - BOX_H / 2), (x1, y1 + BOX_H / 2)
                style = "arc3,rad=0"
            ax.add_patch(
                FancyArrowPatch(
                    start,
                    end,
                    connectionstyle=style,
                    arrowstyle="-|>",
                    mutation_scale=8,
                    linewidth=0.8,
                    color="#546e7a",
                    zorder=5,
                )
            )

    for name, (x, y) in pos.items():
        fill = INPUT if name in graph.inputs else PLAIN
        if name in added:
            fill = ADDED
        elif name in changed:
            fill = CHANGED
        ax.add_patch(
            FancyBboxPatch(
                (x - BOX_W / 2, y - BOX_H / 2),
                BOX_W,
                BOX_H,
                boxstyle="round,pad=0,rounding_size=0.08",
                facecolor=fill,
                edgecolor="#37474f",
                linewidth=0.8,
                zorder=3,
            )
        )
        ax.text(x, y, _label(graph, name), ha="center", va="center", fontsize=6.5, zorder=4)

    for out, node in graph.outputs.items():
        x, y = pos[node]
        ax.annotate(
            f"output {out}",
            (x, y - BOX_H / 2),
            (x, y - BOX_H / 2 - 0.35),
            ha="center",
            va="top",
            fontsize=7,
            arrowprops={"arrowstyle": "<|-", "color": "#546e7a", "lw": 0.8},
        )

    handles = [Patch(facecolor=PLAIN, edgecolor="#37474f", label="node")]
    if added:
        handles.append(Patch(facecolor=ADDED, edgecolor="#37474f", label="added by growth"))
    if changed:
        handles.append(Patch(facecolor=CHANGED, edgecolor="#37474f", label="widened by growth"))
    ax.legend(handles=handles, loc="upper left", fontsize=7, frameon=False)
    ax.set_title(title or graph.name, fontsize=10)
    fig.tight_layout()
    metadata: dict[str, Any] = (
        {"Creator": CREATOR} if path.suffix.lower() == ".svg" else {"Software": CREATOR}
    )
    with matplotlib.rc_context({"svg.fonttype": "none"}):  # SVG text stays text
        fig.savefig(path, format=path.suffix[1:].lower(), metadata=metadata, dpi=110)
    plt.close(fig)
    return path


def written_by_draw(path: Path) -> bool:
    """True when ``path`` is a picture :func:`draw` wrote (its metadata names CREATOR)."""
    try:
        with open(path, "rb") as f:
            head = f.read(1 << 16)
    except OSError:
        return False
    return CREATOR.encode() in head
