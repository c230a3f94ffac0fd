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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import compress, count, islice
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

    A pass splices: the nodes before the first node that differs, and after the last one,
    are ``old``'s very objects at the same places (shifted by the count of nodes added).
    Only the *window* between them is looked at, node by node; every question about a
    node outside it is answered from ``old``'s indexes.

    Attributes:
        old: a weak reference to the old graph.
        start: where the window starts (the same index in both graphs).
        stop, old_stop: where it ends in ``graph`` and in ``old``.
        window, window_at: ``graph``'s nodes in the window and their indexes, by name.
        old_window: the names of ``old``'s nodes in the window.
        new: ``graph``'s nodes that are not ``old``'s node objects, in order.
        replaced: the names of the new nodes that ``old`` has (under the same name).
        removed: the names of ``old``'s nodes that ``graph`` lacks.
        retyped: the names whose type is not ``old``'s object (the new nodes', and the
            kept nodes' whose type changed); set by :func:`infer_changed`.
        reinferred: the kept nodes reading a changed type (their types and parameter
            specs inferred again); set by :func:`infer_changed`.
    """

    old: weakref.ref[Graph]
    start: int
    stop: int
    old_stop: int
    window: dict[str, Node]
    window_at: dict[str, int]
    old_window: frozenset[str]
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
        nodes, old_nodes = graph.nodes, old.nodes
        common = min(len(nodes), len(old_nodes))
        start = next(compress(count(), map(operator.is_not, nodes, old_nodes)), common)
        after = next(
            compress(count(), map(operator.is_not, reversed(nodes), reversed(old_nodes))),
            common,
        )
        after = min(after, common - start)
        stop, old_stop = len(nodes) - after, len(old_nodes) - after
        inside = nodes[start:stop]
        names = list(map(NAME, inside))
        window = dict(zip(names, inside))
        old_window = frozenset(map(NAME, old_nodes[start:old_stop]))
        old_map = old.node_map
        inputs = graph.inputs
        if (
            len(window) != len(inside)
            or not window.keys().isdisjoint(inputs)
            or not (window.keys() & old_map.keys()) <= old_window
        ):
            return None  # duplicate names
        olds = list(map(old_map.get, names))
        new = list(compress(inside, map(operator.is_not, inside, olds)))
        kept = compress(names, map(operator.is_, inside, olds))
        kept_at = list(map(old.positions.__getitem__, kept))
        if not all(map(operator.lt, kept_at, islice(kept_at, 1, None))):
            return None  # kept nodes reordered
        replaced = [n.name for n in new if n.name in old_window]
        removed = sorted(old_window - window.keys())
        at = dict(zip(names, range(start, stop)))
        diff = cls(
            weakref.ref(old), start, stop, old_stop, window, at, old_window, new, replaced, removed
        )
        for n in new:
            at = diff.position(n.name)
            if any(i not in inputs and diff.position(i, at) >= at for i in n.inputs):
                return None
        readers = old.users
        for r in replaced:
            at = diff.position(r)
            if any(diff.kept(u) and diff.position(u) <= at for u in readers[r]):
                return None
        if any(diff.kept(u) for r in removed for u in readers[r]):
            return None
        return diff

    def node(self, name: str) -> Node | None:
        """``graph``'s node called ``name``, or ``None``."""
        if name in self.window:
            return self.window[name]
        if name in self.old_window:
            return None
        return self._old().node_map.get(name)

    def position(self, name: str, default: int = -1) -> int:
        """The index in ``graph.nodes`` of the node ``name`` (``default`` if none)."""
        if name in self.window_at:
            return self.window_at[name]
        if name in self.old_window:
            return default
        at = self._old().positions.get(name)
        if at is None:
            return default
        return at if at < self.start else at + self.stop - self.old_stop

    def kept(self, name: str) -> bool:
        """True when ``name`` is a node of both graphs, the very same object."""
        old = self._old().node_map.get(name)
        return old is not None and self.node(name) is old

    def _old(self) -> Graph:
        old = self.old()
        assert old is not None, "the old graph is gone"
        return old


def infer_changed(graph: Graph, old: Graph) -> Mapping[str, TensorType] | None:
    """``graph``'s types, inferred again only for the new nodes and the nodes reading a
    changed type (in graph order), the rest taken from ``old`` (a verified graph, which
    has its types and has checked its nodes' arity; the mapping lists ``old``'s values
    first, then the names ``old`` lacks);
    the parameter-spec memo of the nodes not inferred again carried over. ``None`` when
    the difference does not keep the order or a node's inference fails (the caller infers
    every node then, and raises the error at the first node at fault)."""
    diff = Diff.of(graph, old)
    if diff is None:
        return None
    old_types, readers, old_map = old.types, old.users, old.node_map
    nodes = graph.nodes
    types: dict[str, TensorType] = dict(old_types)
    for name in diff.removed:
        del types[name]
    todo = [diff.position(n.name) for n in diff.new]
    heapq.heapify(todo)
    queued = set(todo)
    position = diff.position
    # Inference is a function of the op, its attributes and its input types: alike nodes
    # (a stage's convs reading the widened channels) are inferred once.
    inferred: dict[tuple, TensorType] = {}
    try:
        while todo:
            n = nodes[heapq.heappop(todo)]
            kept = old_map.get(n.name) is n
            if not kept:  # a kept node's arity was checked in ``old``
                check_arity(n)
            t = _infer(n, [types[i] for i in n.inputs], inferred)
            prev = old_types.get(n.name)
            if prev is not None and prev == t:
                t = prev  # the old object, so that the nodes reading it are not inferred again
            types[n.name] = t
            if kept:
                diff.reinferred.append(n)
            if t is prev:
                continue
            diff.retyped.add(n.name)
            for u in readers.get(n.name, ()):
                k = position(u)
                if k >= 0 and k not in queued and nodes[k] is old_map[u]:  # kept
                    queued.add(k)
                    heapq.heappush(todo, k)
    except GrowError:
        return None
    memo = dict(old._node_params)
    for name in (*diff.removed, *(n.name for n in diff.new), *(n.name for n in diff.reinferred)):
        memo.pop(name, None)
    memo.update(graph.__dict__.get("_node_params", {}))
    graph.__dict__["_node_params"] = memo
    graph.__dict__[DIFF] = diff
    return MappingProxyType(types)


def kind_of(node: Node, ins: Sequence[TensorType]) -> tuple:
    """What an op's answers about ``node`` (its type, its parameter specs, its channel
    rules) depend on: its op, attribute values and input types ``ins``, as a key that is
    hashed and compared at C speed, unlike the attribute model (an op's model has its
    fields in one order). Hashing it raises TypeError for an unhashable attribute value."""
    return (node.op, tuple(vars(node.attrs).values()), *ins)


def _infer(node: Node, ins: list[TensorType], inferred: dict[tuple, TensorType]) -> TensorType:
    """``node``'s type from its input types ``ins``, inferred once per kind (see
    :func:`kind_of`) in ``inferred``."""
    kind = kind_of(node, ins)
    try:
        t = inferred.get(kind)
    except TypeError:  # an attribute value that cannot be hashed: inferred every time
        return node.opdef.infer(node.attrs, ins)
    if t is None:
        t = inferred[kind] = node.opdef.infer(node.attrs, ins)
    return t


def output_deps_changed(graph: Graph, old: Graph, diff: Diff) -> Mapping[str, frozenset[str]]:
    """``graph.output_deps`` from ``old``'s (computed already) and ``diff``: the outputs
    that depend on a node are found again only for the new nodes, the nodes whose readers
    or output names changed, and, while the answer changes, the nodes they read (latest
    first, so that every reader is settled before the node it reads)."""
    old_deps, readers, old_map = old.output_deps, old.users, old.node_map
    deps = dict(old_deps)
    for name in diff.removed:
        del deps[name]
    names: dict[str, set[str]] = {}
    for out, node in graph.outputs.items():
        names.setdefault(node, set()).add(out)
    seeds = {n.name for n in diff.new}
    for gone in (*diff.replaced, *diff.removed):  # their inputs lost a reader
        seeds.update(old_map[gone].inputs)
    for node in {*graph.outputs.values(), *old.outputs.values()}:
        if names.get(node, set()) != {o for o, v in old.outputs.items() if v == node}:
            seeds.add(node)
    new_readers: dict[str, list[str]] = {}
    for n in diff.new:
        for i in dict.fromkeys(n.inputs):
            new_readers.setdefault(i, []).append(n.name)
    todo = [-at for at in map(diff.position, seeds) if at >= 0]
    heapq.heapify(todo)
    queued = set(todo)
    nodes = graph.nodes
    while todo:
        node = nodes[-heapq.heappop(todo)]
        mine = frozenset(names.get(node.name, ()))
        for u in readers.get(node.name, ()):
            if diff.kept(u):
                mine |= deps[u]
        for u in new_readers.get(node.name, ()):
            mine |= deps[u]
        if deps.get(node.name) == mine:
            continue
        deps[node.name] = mine
        for i in node.inputs:
            at = -diff.position(i)
            if at <= 0 and at not in queued:
                queued.add(at)
                heapq.heappush(todo, at)
    return MappingProxyType(deps)
