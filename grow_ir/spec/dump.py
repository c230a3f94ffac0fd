"""dump_spec: a Graph back to spec data (flat nodes, blocks and stages as plain data)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from grow_ir.ir.graph import Graph
from grow_ir.spec.models import SPEC_VERSION


def dump_spec(graph: Graph) -> dict[str, Any]:
    """The spec of ``graph`` as plain data (dicts, lists, str, int, float, bool, None).

    Guarantees: nodes are written flat in graph order with only the attributes that differ
    from the op's defaults (``inputs`` is left out where it is the previous node, as the
    loader reads it); ``blocks``, ``stages``, ``grow`` and ``growth`` are written when
    present. No ``seed`` and no ``weights`` key is written: a dumped graph's parameters are
    its own (``save`` writes them beside the spec). ``load_spec`` of the result with the
    same parameters gives a graph with equal nodes, attributes, outputs, blocks, stages,
    grow and growth.
    """
    spec: dict[str, Any] = {"version": SPEC_VERSION, "name": graph.name}
    spec["inputs"] = {name: _input(t.shape, t.dtype) for name, t in graph.inputs.items()}
    spec["nodes"] = _nodes(graph)
    spec["outputs"] = dict(graph.outputs)
    if graph.blocks:
        spec["blocks"] = {k: plain(b.entry()) for k, b in graph.blocks.items()}
    if graph.stages:
        spec["stages"] = {k: plain(s.entry()) for k, s in graph.stages.items()}
    if graph.grow:
        spec["grow"] = plain(list(graph.grow))
    if graph.growth is not None:
        spec["growth"] = plain(graph.growth)
    return spec


def _input(shape: tuple[int | str, ...], dtype: str) -> dict[str, Any]:
    entry: dict[str, Any] = {"shape": list(shape)}
    if dtype != "float32":
        entry["dtype"] = dtype
    return entry


def _nodes(graph: Graph) -> list[dict[str, Any]]:
    entries = []
    previous = next(iter(graph.inputs)) if len(graph.inputs) == 1 else None
    for n in graph.nodes:
        entry: dict[str, Any] = {"name": n.name, "op": n.op}
        if n.inputs != (previous,):
            entry["inputs"] = list(n.inputs)
        entry.update(n.attr_dict())
        if n.share is not None:
            entry["share"] = n.share
        entries.append(entry)
        previous = n.name
    return entries


def plain(value: Any) -> Any:
    """A deep copy of ``value`` with mappings as dicts and tuples as lists."""
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value
