"""Verification of what changed: a graph checked against a verified graph it shares its
unchanged nodes and tensors with (the graph a pass made it from).

A pass builds its result with ``Graph.replace`` from a verified graph, keeping every node
object and tensor it does not change. :func:`verify_changes` proves the result valid from
the parent's validity and the difference alone, found by object identity: nodes that are
not the parent's objects (``new``), the parent's nodes that are gone, tensors that are not
the parent's. What it cannot prove it leaves to the full verifier, which then decides
(and words the error): :func:`grow_ir.ir.verify.verify` accepts exactly the graphs it
accepted before. The difference is looked for only between the first and the last node
that differ (:class:`grow_ir.ir.delta.Diff`: outside that window the nodes are the
parent's, at the same places), so a check costs what changed. Why each invariant of the
full check follows:

- **names**: a kept node's name was checked in the parent; new names are checked, and the
  names are unique when the window's are distinct and none is a parent's name outside it;
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

import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from itertools import compress
from operator import is_not
from types import MappingProxyType

from grow_ir.errors import GrowError
from grow_ir.ir.checks import check_arity, check_name, check_param
from grow_ir.ir.delta import DIFF, NAME, Diff, infer_changed, output_deps_changed
from grow_ir.ir.graph import (
    BASE,
    PRIOR,
    VERIFIED,
    Graph,
    Node,
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
    _new: frozenset[str] = field(default=frozenset(), repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_new", frozenset(self.nodes))

    def same(self, node: str) -> bool:
        """True when ``node`` is the parent's node object reading the parent's input types
        (so its type and parameter specs are the parent's); its tensors may still differ
        (see ``params``)."""
        return node not in self.retyped and node not in self._new


def changes(graph: Graph) -> Changes | None:
    """What ``graph`` changed from the verified graph it was verified against, when it was
    verified by :func:`verify_changes`; ``None`` otherwise (verified in full, or not yet)."""
    return graph.__dict__.get(CHANGES)


def verify_changes(graph: Graph, parent: Graph) -> Changes | None:
    """Prove ``graph`` valid from ``parent``'s validity, checking only what differs.

    ``parent`` must be verified. When this returns the changes, ``graph`` satisfies every
    invariant :func:`grow_ir.ir.verify.verify` guarantees and is marked verified, with
    its types and parameter-spec memo set. ``None`` means not proven:
    ``graph`` may be invalid, or differ in a way this check does not follow (other graph
    inputs, kept nodes reordered, a kept node reading a removed value); ``graph`` is not
    marked then (its types may be set: inference of what changed gives the very types a
    full inference gives).
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
    diff: Diff
    types: Mapping[str, TensorType]
    specs: dict[str, Mapping[str, ParamSpec]] = field(default_factory=dict)
    params: list[str] = field(default_factory=list)  # keys whose tensor is not the parent's
    dropped: set[str] = field(default_factory=set)
    totals: tuple[int, int] | None = None

    @classmethod
    def of(cls, graph: Graph, parent: Graph) -> _Proof | None:
        diff = graph.__dict__.get(DIFF)
        if diff is None or diff.old() is not parent:
            if "types" in graph.__dict__:  # inferred already, from another graph
                diff = _retyped(graph, parent, Diff.of(graph, parent))
            else:
                types = infer_changed(graph, parent)
                if types is None:
                    return None
                graph.__dict__.setdefault("types", types)
                diff = graph.__dict__[DIFF]
        if diff is None:
            return None
        for n in diff.new:
            check_name(n.name)
            check_arity(n)
        if not _scopes_hold(diff, parent):
            return None
        proof = cls(graph, parent, diff, graph.types)
        ok = proof._outputs_hold() and proof._shares_hold() and proof._params_hold()
        return proof if ok else None

    def _outputs_hold(self) -> bool:
        """Every output names a node, and every node feeds an output (every sink is one)."""
        graph, parent, diff = self.graph, self.parent, self.diff
        if not graph.outputs:
            return False
        for out, node in graph.outputs.items():
            check_name(out, what="output", field="outputs")
            if diff.node(node) is None:
                return False
        targets = set(graph.outputs.values())
        read = {i for n in diff.new for i in n.inputs}
        old_map, readers = parent.node_map, parent.users
        candidates = [n.name for n in diff.new]
        for gone in (*diff.replaced, *diff.removed):
            candidates.extend(old_map[gone].inputs)
        candidates.extend(t for t in parent.outputs.values() if t not in targets)
        for v in candidates:
            if diff.node(v) is None or v in targets or v in read:
                continue  # a graph input, an output, or read by a new node
            if not any(diff.kept(u) for u in readers.get(v, ())):
                return False
        return True

    def _shares_hold(self) -> bool:
        """Every sharer that changed, or whose owner or input types did, shares a node with
        parameters of its own, the same layer or the same tensors."""
        graph, diff = self.graph, self.diff
        dirty = {n.name for n in (*self.diff.new, *self.diff.reinferred)}
        for n in sharers(graph.nodes):
            if n.name not in dirty and diff.node(n.share) is not None and n.share not in dirty:
                continue
            owner = diff.node(n.share)
            if owner is None or owner.share is not None:
                return False
            if owner.op == n.op and owner.attrs != n.attrs:
                return False
            if n.opdef.params(n.attrs, self._types_in(n)) != owner.opdef.params(
                owner.attrs, self._types_in(owner)
            ):
                return False
        return True

    def _types_in(self, n: Node) -> list[TensorType]:
        return [self.types[i] for i in n.inputs]

    def _params_hold(self) -> bool:
        """``params`` holds exactly the keys the nodes require, each of its spec."""
        graph, parent, diff = self.graph, self.parent, self.diff
        have, had = graph.params, parent.params
        keys = list(have)
        changed = list(compress(keys, map(is_not, have.values(), map(had.get, keys))))
        added = sum(1 for k in changed if k not in had)
        if len(had) + added != len(have):
            self.dropped = set(had.keys() - have.keys())
        required: dict[str, tuple[str, ParamSpec]] = {}  # of new and re-inferred nodes
        memo = graph.__dict__.get("_node_params", {})  # of this graph's types (see delta)
        for n in (*diff.new, *diff.reinferred):
            named = memo.get(n.name)
            if named is None:
                specs = n.opdef.params(n.attrs, self._types_in(n))
                named = MappingProxyType({f"{n.param_prefix}.{k}": v for k, v in specs.items()})
            self.specs[n.name] = named
            if n.share is None:
                required.update((k, (n.name, v)) for k, v in named.items())
        gone: dict[str, ParamSpec] = {}  # what the parent's nodes gone or re-inferred required
        old_map = parent.node_map
        for old in (*(old_map[r] for r in (*diff.replaced, *diff.removed)), *diff.reinferred):
            if old.share is None:
                gone.update(parent.params_of(old))
        for key, (node, spec) in required.items():
            check_param(node, key, spec, have.get(key))
        # A kept node's tensor changed (trained values taken back): its spec is the
        # parent's, read from the parent's spec map when it has one (a check that fails
        # is worded by the full verifier, which names the node).
        parent_specs = parent.__dict__.get("param_specs", {})
        for key in changed:
            if key in required:
                continue
            if key not in had or key in gone:
                return False  # a parameter no node uses
            owner, spec = "", parent_specs.get(key)
            if spec is None:
                owner, spec = _owner_spec(parent, key)
            check_param(owner, key, spec, have[key])
        if any(key in have for key in gone if key not in required):
            return False  # a parameter no node uses any more
        if any(key not in gone or key in required for key in self.dropped):
            return False  # a missing parameter
        self.params = changed
        totals = parent.__dict__.get("param_totals")
        if totals is not None and "param_totals" not in graph.__dict__:
            minus, plus = spec_totals(gone.values()), spec_totals(s for _, s in required.values())
            self.totals = (totals[0] - minus[0] + plus[0], totals[1] - minus[1] + plus[1])
        return True

    def install(self) -> Changes:
        """Mark the graph verified, with the indexes the proof computed."""
        graph, parent, diff = self.graph, self.parent, self.diff
        cache = graph.__dict__
        memo = cache.get("_node_params")
        if memo is not None:
            memo.update(self.specs)
        old_scopes = parent.__dict__.get("scope_counts")
        if old_scopes is not None and "scope_counts" not in cache:
            counts = dict(old_scopes)
            added = [n.name for n in diff.new if n.name not in parent.node_map]
            for name, step in (*((a, 1) for a in added), *((r, -1) for r in diff.removed)):
                for scope in scopes_of(name):
                    counts[scope] = counts.get(scope, 0) + step
                    if not counts[scope]:
                        del counts[scope]
            cache["scope_counts"] = MappingProxyType(counts)
        if self.totals is not None:
            cache.setdefault("param_totals", self.totals)
        if "output_deps" in parent.__dict__ and "output_deps" not in cache:
            cache["output_deps"] = output_deps_changed(graph, parent, diff)
        found = Changes(
            parent=weakref.ref(parent),
            nodes=tuple(n.name for n in diff.new),
            retyped=frozenset(n.name for n in diff.reinferred),
            removed=frozenset(diff.removed),
            params=frozenset(self.params),
            dropped=frozenset(self.dropped),
        )
        for key in (BASE, PRIOR, DIFF):
            cache.pop(key, None)
        cache[CHANGES] = found
        cache[VERIFIED] = True
        return found


def _retyped(graph: Graph, parent: Graph, diff: Diff | None) -> Diff | None:
    """``diff`` with the names whose type is not the parent's object, and the kept nodes
    reading them, found from ``graph``'s types (inferred already)."""
    if diff is None:
        return None
    names, types, old_types = list(map(NAME, graph.nodes)), graph.types, parent.types
    differ = map(is_not, map(types.__getitem__, names), map(old_types.get, names))
    diff.retyped = set(compress(names, differ))
    readers = parent.users
    kept = dict.fromkeys(u for t in diff.retyped for u in readers.get(t, ()) if diff.kept(u))
    diff.reinferred = [diff.node(u) for u in kept]  # type: ignore[misc]
    return diff


def _scopes_hold(diff: Diff, parent: Graph) -> bool:
    """No name the parent lacks is inside a node, or holds a node inside it."""
    old_map, counts = parent.node_map, parent.scope_counts
    for n in diff.new:
        name = n.name
        if name in old_map:
            continue
        if any(diff.node(scope) is not None for scope in scopes_of(name)):
            return False
        inside = counts.get(name, 0)
        if inside and inside > sum(1 for r in diff.removed if r.startswith(name + ".")):
            return False
    return True


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
