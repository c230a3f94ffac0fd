"""Verification of what changed: a graph checked against a verified graph it shares its
unchanged nodes and tensors with (the graph a pass made it from).

A pass builds its result with ``Graph.replace`` from a verified graph, keeping every node
object and tensor it does not change. :func:`verify_changes` proves the result valid from
the parent's validity and the difference alone, found by object identity: nodes that are
not the parent's objects (``new``), the parent's nodes that are gone, tensors that are not
the parent's. What it cannot prove it leaves to the full verifier, which then decides
(and words the error): :func:`grow_ir.ir.verify.verify` accepts exactly the graphs it
accepted before. Why each invariant of the full check follows:

- **names**: a kept node's name was checked in the parent; new names are checked, and the
  names are unique when the name → node map has one entry per node;
- **scopes**: a violation involves a name the parent lacks (the parent had none): such a
  name must have no scope that is a node, and must not be the scope of a kept name (the
  parent's scope counts, less the removed names inside it);
- **order**: the kept nodes keep the parent's relative order, so a kept node's kept inputs
  still come first; new nodes' inputs, and kept readers of a replaced node, are checked by
  position; a kept node reading a removed value is left to the full check;
- **types**: inference is a function of a node and its input types, so only new nodes and
  nodes reading a changed type are inferred again, in graph order;
- **outputs reach every node**: in a DAG every node reaches some node nobody reads, so
  every node feeds an output exactly when every such sink is an output; a kept node can
  only become a sink if a reader of it was replaced or removed, or it stopped being an
  output: those, and the new nodes, are checked;
- **shares**: a sharer is checked again when it, its owner or their input types changed;
- **parameters**: the keys required are the parent's, less those of the nodes gone or
  re-inferred, plus those of the new and re-inferred nodes (disjoint, since no node name
  is the scope of another); only those keys and the tensors that are not the parent's are
  checked.
"""

from __future__ import annotations

import heapq
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from itertools import compress, islice
from operator import is_not, lt, not_
from types import MappingProxyType

from grow_ir.errors import GrowError
from grow_ir.ir.checks import check_name, check_param
from grow_ir.ir.graph import (
    BASE,
    NAME,
    PRIOR,
    VERIFIED,
    Graph,
    Node,
    check_arity,
    scopes_of,
    sharers,
    spec_totals,
)
from grow_ir.ir.ops import ParamSpec
from grow_ir.ir.types import TensorType

CHANGES = "_changes"
"""The key, in a verified Graph's ``__dict__``, of the :class:`Changes` its verification
found (when it was verified against a parent)."""


@dataclass(frozen=True)
class Changes:
    """What a graph changed from the verified graph it was checked against, by identity.

    Attributes:
        parent: a weak reference to that graph.
        nodes: names of the nodes that are not the parent's node objects (added, or
            replaced under the same name), in graph order.
        retyped: names of the parent's node objects that read a changed type (their type
            and parameter specs were inferred again).
        removed: names of the parent's nodes the graph no longer has.
        params: parameter keys whose tensor is not the parent's (new or changed).
        dropped: the parent's parameter keys the graph no longer has.
    """

    parent: weakref.ref[Graph]
    nodes: tuple[str, ...]
    retyped: frozenset[str]
    removed: frozenset[str]
    params: frozenset[str]
    dropped: frozenset[str]

    def same(self, node: str) -> bool:
        """True when ``node`` is the parent's node object reading the parent's input types
        (so its type and parameter specs are the parent's); its tensors may still differ
        (see ``params``)."""
        return node not in self.retyped and node not in self._nodes

    @property
    def _nodes(self) -> frozenset[str]:
        return frozenset(self.nodes)


def changes(graph: Graph) -> Changes | None:
    """What ``graph`` changed from the verified graph it was verified against, when it was
    verified by :func:`verify_changes`; ``None`` otherwise (verified in full, or not yet)."""
    return graph.__dict__.get(CHANGES)


def verify_changes(graph: Graph, parent: Graph) -> Changes | None:
    """Prove ``graph`` valid from ``parent``'s validity, checking only what differs.

    ``parent`` must be verified. When this returns the changes, ``graph`` satisfies every
    invariant :func:`grow_ir.ir.verify.verify` guarantees and is marked verified, with
    its types, node map, positions and parameter-spec memo set. ``None`` means not proven:
    ``graph`` may be invalid, or differ in a way this check does not follow (other graph
    inputs, kept nodes reordered, a kept node reading a removed value); nothing of
    ``graph`` is changed then.
    """
    assert parent.__dict__.get(VERIFIED), "the parent must be verified"
    try:
        proof = _Proof.of(graph, parent)
    except GrowError:  # a check failed: the full verifier words the error
        return None
    if proof is None:
        return None
    return proof.install()


@dataclass
class _Proof:
    graph: Graph
    parent: Graph
    node_map: dict[str, Node]
    positions: dict[str, int]
    new: list[Node]
    removed: list[str]
    types: dict[str, TensorType]
    retyped: set[str]  # names whose type is not the parent's object (new ones included)
    reinferred: list[Node]  # kept nodes reading a changed type
    specs: dict[str, Mapping[str, ParamSpec]]  # of the new and re-inferred nodes
    params: list[str]
    dropped: set[str]
    totals: tuple[int, int] | None

    @classmethod
    def of(cls, graph: Graph, parent: Graph) -> _Proof | None:
        if graph.inputs != parent.inputs:
            return None
        nodes = graph.nodes
        names = list(map(NAME, nodes))
        node_map = dict(zip(names, nodes))
        if len(node_map) != len(nodes) or any(i in node_map for i in graph.inputs):
            return None  # duplicate names
        old_map = parent.node_map
        fresh = list(map(is_not, nodes, map(old_map.get, names)))
        new = list(compress(nodes, fresh))
        is_new = {n.name for n in new}
        kept_at = list(map(parent.positions.__getitem__, compress(names, map(not_, fresh))))
        if not all(map(lt, kept_at, islice(kept_at, 1, None))):
            return None  # kept nodes reordered
        positions = dict(zip(names, range(len(names))))
        replaced = [n.name for n in new if n.name in old_map]
        removed: list[str] = []
        if len(old_map) != len(kept_at) + len(replaced):
            removed = sorted(old_map.keys() - node_map.keys())
        readers = parent.users

        def kept(name: str) -> bool:
            return node_map.get(name) is old_map[name]

        inputs = graph.inputs
        for n in new:
            check_name(n.name)
            check_arity(n)
            at = positions[n.name]
            if any(i not in inputs and positions.get(i, at) >= at for i in n.inputs):
                return None
        for r in replaced:
            if any(kept(u) and positions[u] <= positions[r] for u in readers[r]):
                return None
        if any(kept(u) for r in removed for u in readers[r]):
            return None
        if not _scopes_hold(new, node_map, parent, removed):
            return None
        typed = _infer(graph, parent, new, node_map, positions, readers)
        if typed is None:
            return None
        types, retyped = typed
        reinferred = [
            node_map[u]
            for u in dict.fromkeys(u for t in retyped if t in readers for u in readers[t])
            if u not in is_new and u in node_map
        ]
        proof = cls(
            graph, parent, node_map, positions, new, removed, types, retyped, reinferred,
            {}, [], set(), None,
        )  # fmt: skip
        if not (proof._outputs_hold(replaced) and proof._shares_hold(is_new)):
            return None
        return proof if proof._params_hold(replaced) else None

    def _outputs_hold(self, replaced: list[str]) -> bool:
        """Every output names a node, and every node feeds an output (every sink is one)."""
        graph, parent, node_map = self.graph, self.parent, self.node_map
        if not graph.outputs:
            return False
        for out, node in graph.outputs.items():
            check_name(out, what="output", field="outputs")
            if node not in node_map:
                return False
        targets = set(graph.outputs.values())
        read = {i for n in self.new for i in n.inputs}
        old_map, readers = parent.node_map, parent.users
        candidates = [n.name for n in self.new]
        for gone in (*replaced, *self.removed):
            candidates.extend(old_map[gone].inputs)
        candidates.extend(t for t in parent.outputs.values() if t not in targets)
        for v in candidates:
            if v not in node_map or v in targets or v in read:
                continue  # a graph input, an output, or read by a new node
            if not any(node_map.get(u) is old_map[u] for u in readers.get(v, ())):
                return False
        return True

    def _shares_hold(self, is_new: set[str]) -> bool:
        """Every sharer that changed, or whose owner or input types did, shares a node with
        parameters of its own, the same layer or the same tensors."""
        graph, node_map = self.graph, self.node_map
        dirty = is_new | {n.name for n in self.reinferred}
        for n in sharers(graph.nodes):
            if n.name not in dirty and n.share in node_map and n.share not in dirty:
                continue
            owner = node_map.get(n.share)
            if owner is None or owner.share is not None:
                return False
            if owner.op == n.op and owner.attrs != n.attrs:
                return False
            if n.opdef.params(n.attrs, self._in(n)) != owner.opdef.params(
                owner.attrs, self._in(owner)
            ):
                return False
        return True

    def _in(self, n: Node) -> list[TensorType]:
        return [self.types[i] for i in n.inputs]

    def _params_hold(self, replaced: list[str]) -> bool:
        """``params`` holds exactly the keys the nodes require, each of its spec."""
        graph, parent = self.graph, self.parent
        have, had = graph.params, parent.params
        keys = list(have)
        changed = list(compress(keys, map(is_not, have.values(), map(had.get, keys))))
        added = sum(1 for k in changed if k not in had)
        if len(had) + added != len(have):
            self.dropped = set(had.keys() - have.keys())
        required: dict[str, tuple[str, ParamSpec]] = {}  # of new and re-inferred nodes
        for n in (*self.new, *self.reinferred):
            specs = n.opdef.params(n.attrs, self._in(n))
            named = {f"{n.param_prefix}.{k}": v for k, v in specs.items()}
            self.specs[n.name] = MappingProxyType(named)
            if n.share is None:
                required.update((k, (n.name, v)) for k, v in named.items())
        gone: dict[str, ParamSpec] = {}  # what the parent's nodes gone or re-inferred required
        old_map = parent.node_map
        for old in (*(old_map[r] for r in (*replaced, *self.removed)), *self.reinferred):
            if old.share is None:
                gone.update(parent.params_of(old))
        for key, (node, spec) in required.items():
            check_param(node, key, spec, have.get(key))
        for key in changed:
            if key in required:
                continue
            if key not in had or key in gone:
                return False  # a parameter no node uses
            owner, spec = _owner_spec(parent, key)
            check_param(owner, key, spec, have[key])
        if any(key in have for key in gone if key not in required):
            return False  # a parameter no node uses any more
        if any(key not in gone or key in required for key in self.dropped):
            return False  # a missing parameter
        self.params = changed
        totals = parent.__dict__.get("param_totals")
        if totals is not None:
            minus, plus = spec_totals(gone.values()), spec_totals(s for _, s in required.values())
            self.totals = (totals[0] - minus[0] + plus[0], totals[1] - minus[1] + plus[1])
        return True

    def install(self) -> Changes:
        """Mark the graph verified, with the indexes the proof computed."""
        graph, parent = self.graph, self.parent
        cache = graph.__dict__
        names = self.positions
        if "types" not in cache:
            types = dict(graph.inputs)
            types.update(zip(names, map(self.types.__getitem__, names)))
            cache["types"] = MappingProxyType(types)
        cache.setdefault("node_map", MappingProxyType(self.node_map))
        cache.setdefault("positions", MappingProxyType(self.positions))
        memo = dict(parent._node_params)
        for name in self.removed:
            memo.pop(name, None)
        memo.update(self.specs)  # the new and re-inferred nodes
        memo.update(cache.get("_node_params", {}))
        cache["_node_params"] = memo
        old_scopes = parent.__dict__.get("scope_counts")
        if old_scopes is not None and "scope_counts" not in cache:
            counts = dict(old_scopes)
            added = [n.name for n in self.new if n.name not in parent.node_map]
            for name, step in (*((a, 1) for a in added), *((r, -1) for r in self.removed)):
                for scope in scopes_of(name):
                    counts[scope] = counts.get(scope, 0) + step
                    if not counts[scope]:
                        del counts[scope]
            cache["scope_counts"] = MappingProxyType(counts)
        if self.totals is not None:
            cache.setdefault("param_totals", self.totals)
        found = Changes(
            parent=weakref.ref(parent),
            nodes=tuple(n.name for n in self.new),
            retyped=frozenset(n.name for n in self.reinferred),
            removed=frozenset(self.removed),
            params=frozenset(self.params),
            dropped=frozenset(self.dropped),
        )
        for key in (BASE, PRIOR):
            cache.pop(key, None)
        cache[CHANGES] = found
        cache[VERIFIED] = True
        return found


def _scopes_hold(
    new: list[Node], node_map: dict[str, Node], parent: Graph, removed: list[str]
) -> bool:
    """No name the parent lacks is inside a node, or holds a node inside it."""
    old_map, counts = parent.node_map, parent.scope_counts
    for n in new:
        name = n.name
        if name in old_map:
            continue
        if any(scope in node_map for scope in scopes_of(name)):
            return False
        inside = counts.get(name, 0)
        if inside and inside > sum(1 for r in removed if r.startswith(name + ".")):
            return False
    return True


def _infer(
    graph: Graph,
    parent: Graph,
    new: list[Node],
    node_map: dict[str, Node],
    positions: dict[str, int],
    readers: Mapping[str, tuple[str, ...]],
) -> tuple[dict[str, TensorType], set[str]] | None:
    """The types of ``graph`` (inferred again for the new nodes and every node reading a
    changed type, in graph order) and the names whose type is not the parent's object;
    ``None`` when inference fails (the full verifier words the error)."""
    old_types = parent.types
    cached = graph.__dict__.get("types")
    if cached is not None:  # inferred already (the pass read them)
        names = list(positions)
        differ = map(is_not, map(cached.get, names), map(old_types.get, names))
        retyped = set(compress(names, differ))
        return dict(cached), retyped
    old_map, nodes = parent.node_map, graph.nodes
    types = dict(old_types)
    todo = [positions[n.name] for n in new]
    heapq.heapify(todo)
    queued = set(todo)
    retyped: set[str] = set()
    while todo:
        n = nodes[heapq.heappop(todo)]
        t = n.opdef.infer(n.attrs, [types[i] for i in n.inputs])
        prev = old_types.get(n.name)
        if prev is not None and prev == t:
            t = prev  # the old object, so that the nodes reading it are not inferred again
        types[n.name] = t
        if t is prev:
            continue
        retyped.add(n.name)
        for u in readers.get(n.name, ()):
            at = positions.get(u)
            if at is not None and at not in queued and node_map[u] is old_map[u]:
                queued.add(at)
                heapq.heappush(todo, at)
    return types, retyped


def _owner_spec(parent: Graph, key: str) -> tuple[str, ParamSpec]:
    """The parent's node that requires parameter ``key``, and its spec."""
    specs = parent.__dict__.get("param_specs")
    parts = key.split(".")
    for k in range(len(parts) - 1, 0, -1):
        node = parent.node_map.get(".".join(parts[:k]))
        if node is not None and node.share is None:
            spec = parent.params_of(node).get(key) if specs is None else specs.get(key)
            if spec is not None:
                return node.name, spec
    raise AssertionError(f"no node of a verified graph requires its parameter {key!r}")
