"""What a growth step changed in a graph's structure: nodes added, nodes resized."""

from __future__ import annotations

from grow_ir.ir.graph import Graph


def grown_nodes(before: Graph, after: Graph) -> dict[str, list[str]]:
    """``{"added": [...], "changed": [...]}``: the nodes of ``after`` that ``before`` lacks,
    and those both hold whose attributes or parameter shapes differ (a widened layer, a
    consumer given more input columns), each in ``after``'s order."""
    old = {n.name: n for n in before.nodes}
    added, changed = [], []
    for n in after.nodes:
        was = old.get(n.name)
        if was is None:
            added.append(n.name)
        elif was.attrs != n.attrs or _shapes(before, n.name) != _shapes(after, n.name):
            changed.append(n.name)
    return {"added": added, "changed": changed}


def _shapes(graph: Graph, node: str) -> dict[str, tuple[int, ...]]:
    return {k: s.shape for k, s in graph.node_params(node).items()}
