"""Multiply-accumulates (MACs) of a graph's nodes, from each op's declared rule
(``OpFacts.macs``, see :mod:`grow_ir.ir.ops.macs`) and the nodes' concrete shapes."""

from __future__ import annotations

from collections.abc import Mapping

from grow_ir.ir.graph import Graph, Node
from grow_ir.ir.types import TensorType


def concrete(t: TensorType, dims: Mapping[str, int]) -> TensorType:
    """``t`` with its symbolic dims sized by ``dims`` (1 for a dim not given)."""
    return TensorType(tuple(d if isinstance(d, int) else dims.get(d, 1) for d in t.shape), t.dtype)


def node_macs(graph: Graph, node: Node, dims: Mapping[str, int]) -> int:
    """The MACs of one call of ``node`` with symbolic dims sized by ``dims``."""
    inputs = [concrete(t, dims) for t in graph.input_types(node)]
    return node.opdef.facts.macs(node.attrs, inputs, concrete(graph.types[node.name], dims))


def graph_macs(graph: Graph, dims: Mapping[str, int]) -> dict[str, int]:
    """The MACs of every node (by name) of one forward pass."""
    return {n.name: node_macs(graph, n, dims) for n in graph.nodes}
