"""The difference between a graph and a graph it was made from, by object identity, and
type inference of what changed.

A pass keeps every node object it does not change, so the nodes of its result that are
not the old graph's objects (``new``: added, or replaced under the same name) and the old
nodes that are gone say what changed, found with C-speed scans. Inference is a function
of a node and its input types, so only the new nodes and the nodes reading a changed type
need inferring again; the rest keep their old types (the same objects).
"""

from __future__ import annotations

import heapq
import operator
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from itertools import compress, islice
from types import MappingProxyType
from typing import TYPE_CHECKING

from grow_ir.errors import GrowError
from grow_ir.ir.checks import check_arity

if TYPE_CHECKING:
    from grow_ir.ir.graph import Graph, Node
    from grow_ir.ir.types import TensorType

NAME = operator.attrgetter("name")
"""A node's name (for ``map`` over many nodes at C speed)."""

DIFF = "_diff"
"""The key, in a Graph's ``__dict__``, of the :class:`Diff` its types were inferred from,
until it is verified."""


@dataclass
class Diff:
    """How ``graph`` differs from ``old``, when the difference keeps the old order.

    Attributes:
        old: a weak reference to the old graph.
        node_map, positions: ``graph``'s nodes and their indexes, by name.
        new: ``graph``'s nodes that are not ``old``'s node objects, in order.
        replaced: the names of the new nodes that ``old`` has (under the same name).
        removed: the names of ``old``'s nodes that ``graph`` lacks.
        retyped: the names whose type is not ``old``'s object (the new nodes', and the
            kept nodes' whose type changed); set by :func:`infer_changed`.
        reinferred: the kept nodes reading a changed type (their types and parameter
            specs inferred again); set by :func:`infer_changed`.
    """

    old: weakref.ref[Graph]
    node_map: dict[str, Node]
    positions: dict[str, int]
    new: list[Node]
    replaced: list[str]
    removed: list[str]
    retyped: set[str] = field(default_factory=set)
    reinferred: list[Node] = field(default_factory=list)

    @classmethod
    def of(cls, graph: Graph, old: Graph) -> Diff | None:
        """The difference, or ``None`` when it is not one that keeps the order: other graph
        inputs, duplicate names, kept nodes reordered, a new node reading a value not
        defined before it, a kept node reading a replaced node defined after it or a
        removed value. Then every value is still defined before its use, in the order of
        ``nodes``."""
        if graph.inputs != old.inputs:
            return None
        nodes = graph.nodes
        names = list(map(NAME, nodes))
        node_map = dict(zip(names, nodes))
        inputs = graph.inputs
        if len(node_map) != len(nodes) or any(i in node_map for i in inputs):
            return None
        old_map = old.node_map
        fresh = list(map(operator.is_not, nodes, map(old_map.get, names)))
        kept_at = list(map(old.positions.__getitem__, compress(names, map(operator.not_, fresh))))
        if not all(map(operator.lt, kept_at, islice(kept_at, 1, None))):
            return None
        positions = dict(zip(names, range(len(names))))
        new = list(compress(nodes, fresh))
        replaced = [n.name for n in new if n.name in old_map]
        removed: list[str] = []
        if len(old_map) != len(kept_at) + len(replaced):
            removed = sorted(old_map.keys() - node_map.keys())
        diff = cls(weakref.ref(old), node_map, positions, new, replaced, removed)
        for n in new:
            at = positions[n.name]
            if any(i not in inputs and positions.get(i, at) >= at for i in n.inputs):
                return None
        readers = old.users
        for r in replaced:
            if any(diff.kept(u) and positions[u] <= positions[r] for u in readers[r]):
                return None
        if any(diff.kept(u) for r in removed for u in readers[r]):
            return None
        return diff

    def kept(self, name: str) -> bool:
        """True when ``name`` is a node of both graphs, the very same object."""
        old = self.old()
        assert old is not None, "the old graph is gone"
        return self.node_map.get(name) is old.node_map.get(name, self)


def infer_changed(graph: Graph, old: Graph) -> Mapping[str, TensorType] | None:
    """``graph``'s types, inferred again only for the new nodes and the nodes reading a
    changed type (in graph order), the rest taken from ``old`` (which has its types);
    the parameter-spec memo of the nodes not inferred again carried over. ``None`` when
    the difference does not keep the order or a node's inference fails (the caller infers
    every node then, and raises the error at the first node at fault)."""
    diff = Diff.of(graph, old)
    if diff is None:
        return None
    old_types, old_map, readers = old.types, old.node_map, old.users
    nodes, positions, node_map = graph.nodes, diff.positions, diff.node_map
    types: dict[str, TensorType] = dict(old_types)
    todo = [positions[n.name] for n in diff.new]
    heapq.heapify(todo)
    queued = set(todo)
    try:
        while todo:
            n = nodes[heapq.heappop(todo)]
            check_arity(n)
            t = n.opdef.infer(n.attrs, [types[i] for i in n.inputs])
            prev = old_types.get(n.name)
            if prev is not None and prev == t:
                t = prev  # the old object, so that the nodes reading it are not inferred again
            types[n.name] = t
            if n.name in old_map and node_map[n.name] is old_map[n.name]:
                diff.reinferred.append(n)
            if t is prev:
                continue
            diff.retyped.add(n.name)
            for u in readers.get(n.name, ()):
                k = positions.get(u)
                if k is not None and k not in queued and node_map[u] is old_map[u]:
                    queued.add(k)
                    heapq.heappush(todo, k)
    except GrowError:
        return None
    ordered: dict[str, TensorType] = dict(graph.inputs)
    ordered.update(zip(positions, map(types.__getitem__, positions)))
    memo = dict(old._node_params)
    for name in (*diff.removed, *(n.name for n in diff.new), *(n.name for n in diff.reinferred)):
        memo.pop(name, None)
    memo.update(graph.__dict__.get("_node_params", {}))
    graph.__dict__["_node_params"] = memo
    graph.__dict__.setdefault("node_map", MappingProxyType(node_map))
    graph.__dict__.setdefault("positions", MappingProxyType(positions))
    graph.__dict__[DIFF] = diff
    return MappingProxyType(ordered)
