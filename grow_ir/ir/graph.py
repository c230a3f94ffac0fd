"""The IR's values: `Node` and `Graph`, both immutable.

Derived indexes (types, users, the networkx view, parameter owners) are computed once per
Graph on first use and never maintained by hand: a rewrite builds a new Graph.
"""

from __future__ import annotations

import dataclasses
import operator
import weakref
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from itertools import compress, repeat
from types import MappingProxyType
from typing import Any

import networkx as nx
import torch

from grow_ir.errors import GrowError, ShapeError, VerifyError
from grow_ir.ir.checks import check_arity
from grow_ir.ir.delta import DIFF, NAME, infer_changed, kind_of
from grow_ir.ir.ops import OPS, Attrs, OpDef, ParamSpec
from grow_ir.ir.ops.base import validate_attrs
from grow_ir.ir.stages import BlockTemplate, Stage
from grow_ir.ir.types import TensorType


def _frozen(mapping: Mapping | None) -> Mapping:
    return MappingProxyType(dict(mapping or {}))


SHARE = operator.attrgetter("share")


def sharers(nodes: Iterable[Node]) -> list[Node]:
    """The nodes that share another node's parameters (``share`` set), in order."""
    nodes = tuple(nodes)
    return list(compress(nodes, map(operator.is_not, map(SHARE, nodes), repeat(None))))


def shared_with(graph: Graph, node: Node) -> str | None:
    """The node ``node`` shares its parameters with: the one it reads them from, else the
    first that reads them from it (a task's path and another's); None for its own."""
    return node.share or next((m.name for m in graph.nodes if m.share == node.name), None)


def scopes_of(name: str) -> list[str]:
    """The scopes of a dotted name, outermost first (``a``, ``a.b`` of ``a.b.c``)."""
    parts = name.split(".")
    return [".".join(parts[:k]) for k in range(1, len(parts))]


def count_scopes(names: Iterable[str]) -> dict[str, int]:
    """For every scope of the ``names``, how many of them lie inside it."""
    counts: dict[str, int] = {}
    for name in names:
        if "." in name:
            for scope in scopes_of(name):
                counts[scope] = counts.get(scope, 0) + 1
    return counts


def spec_totals(specs: Iterable[ParamSpec]) -> tuple[int, int]:
    """Bytes the parameters and buffers of ``specs`` take, and their parameter elements
    (buffers excluded), from the shapes alone."""
    nbytes = numel = 0
    for s in specs:
        nbytes += s.nbytes
        if not s.buffer:
            numel += s.numel
    return nbytes, numel


@dataclass(frozen=True)
class Node:
    """One operation with exactly one output value, named as the node.

    Attributes:
        name: unique, dotted scopes (``stage1.block0.conv1``).
        op: a registered op name.
        attrs: the op's attribute model (a dict is validated into it).
        inputs: names of graph inputs or earlier nodes.
        share: name of another node whose parameters this node uses (a layer reused on
            another task's path, or a *tie*: a node of another op whose parameters are the
            same tensors, such as a language model's linear head reading its embedding's
            ``[vocab, width]`` weight); ``None`` for a node with parameters of its own.
    """

    name: str
    op: str
    attrs: Attrs = field(default=None)  # type: ignore[assignment]
    inputs: tuple[str, ...] = ()
    share: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "inputs", tuple(self.inputs))
        opdef = OPS.get(self.op)
        if opdef is None:
            raise VerifyError(
                "unknown op",
                node=self.name,
                field="op",
                expected=f"one of {', '.join(sorted(OPS))}",
                found=repr(self.op),
            )
        if not isinstance(self.attrs, opdef.attrs):
            raw = {} if self.attrs is None else self.attrs
            if isinstance(raw, Attrs):
                raw = raw.model_dump()
            try:
                object.__setattr__(self, "attrs", validate_attrs(opdef, raw))
            except VerifyError as exc:
                raise exc.at(node=self.name) from None

    @property
    def opdef(self) -> OpDef:
        """The op's definition."""
        return OPS[self.op]

    def tied(self, graph: Graph) -> bool:
        """It shares the parameters of a node of another op (a tie, see ``share``)."""
        return self.share is not None and graph.node(self.share).op != self.op

    @property
    def param_prefix(self) -> str:
        """The module path its parameters live under (its own name, or the shared node's)."""
        return self.share or self.name

    def replace(self, **changes: Any) -> Node:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    def attr_dict(self) -> dict[str, Any]:
        """Attributes that differ from the op's defaults, in spec form."""
        return self.attrs.model_dump(exclude_defaults=True, mode="json")


VERIFIED = "_verified"
"""The key, in a Graph's ``__dict__`` beside its cached indexes, marking it verified."""

BASE = "_base"
"""The key, in the ``__dict__`` of a Graph made by :meth:`Graph.replace` (directly or
through unverified graphs) from a verified one, of a weak reference to that verified graph
(see :attr:`Graph.base`), until it is verified itself."""

PRIOR = "_prior"
"""The key, in the ``__dict__`` of a Graph made by :meth:`Graph.replace` with a new
structure, of the node map, types and parameter-spec memo of the graph it was made from,
until its own types are inferred."""

STRUCTURE = frozenset({"inputs", "nodes", "outputs"})
"""The fields of a Graph that its derived indexes depend on."""

STRUCTURAL_INDEXES = (
    "node_map",
    "types",
    "users",
    "nx",
    "_node_params",
    "_specs_by_kind",
    "param_specs",
    "output_deps",
    "param_owners",
    "positions",
    "scope_counts",
    "param_totals",
)
"""Graph's cached derived indexes: functions of ``inputs``, ``nodes`` and ``outputs`` only."""


@dataclass(frozen=True, eq=False)
class Graph:
    """A network: named inputs, nodes in topological order, named outputs and parameters.

    ``params`` are keyed exactly like the lowered module's ``state_dict()``
    (``stem.weight``, ``stem_bn.running_mean``, ``attn.out_proj.bias``). ``blocks`` holds
    the block templates and ``stages`` the stages (AutoGrow's unit of growth) as typed
    values (:mod:`grow_ir.ir.stages`; mappings given in their spec form are converted);
    ``grow`` is the spec's growth plan and ``growth`` its growth-policy section, as data.
    A Graph is never mutated: use :meth:`replace` and friends, which return new Graphs.
    """

    inputs: Mapping[str, TensorType]
    nodes: tuple[Node, ...]
    outputs: Mapping[str, str]
    params: Mapping[str, torch.Tensor] = field(default_factory=dict)
    name: str = "graph"
    blocks: Mapping[str, BlockTemplate] = field(default_factory=dict)
    stages: Mapping[str, Stage] = field(default_factory=dict)
    grow: tuple[Mapping[str, Any], ...] = ()
    growth: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "inputs", _frozen(self.inputs))
        object.__setattr__(self, "nodes", tuple(self.nodes))
        object.__setattr__(self, "outputs", _frozen(self.outputs))
        object.__setattr__(self, "params", _frozen(self.params))
        blocks = {k: BlockTemplate.of(v) for k, v in (self.blocks or {}).items()}
        object.__setattr__(self, "blocks", _frozen(blocks))
        stages = {k: Stage.of(v) for k, v in (self.stages or {}).items()}
        object.__setattr__(self, "stages", _frozen(stages))
        object.__setattr__(self, "grow", tuple(self.grow))

    def replace(self, **changes: Any) -> Graph:
        """A new Graph with some fields changed (unchanged nodes and tensors are shared).

        When ``inputs``, ``nodes`` and ``outputs`` are kept, the derived indexes already
        computed (which depend on nothing else) are handed on instead of recomputed: a
        pass that only changes parameters does not pay for type inference twice.
        """
        new = dataclasses.replace(self, **changes)
        if not changes.keys() & STRUCTURE:
            for key in (*STRUCTURAL_INDEXES, PRIOR, DIFF):
                if key in self.__dict__:
                    new.__dict__[key] = self.__dict__[key]
        elif "types" in self.__dict__:
            # A pass changes a few nodes: the new graph infers again only those whose node
            # or input types differ (see ``types``), and drops this hint when it has.
            new.__dict__[PRIOR] = (self.node_map, self.types, self._node_params)
        elif PRIOR in self.__dict__:  # made by replace and not inferred yet
            new.__dict__[PRIOR] = self.__dict__[PRIOR]
        base = weakref.ref(self) if self.__dict__.get(VERIFIED) else self.__dict__.get(BASE)
        if base is not None:
            new.__dict__[BASE] = base
        return new

    @property
    def base(self) -> Graph | None:
        """The verified graph this one was made from by :meth:`replace` (directly or
        through graphs not verified), while it is alive and this one is not verified yet;
        ``None`` otherwise. Verification checks only what differs from it
        (:mod:`grow_ir.ir.verify_delta`)."""
        ref = self.__dict__.get(BASE)
        return None if ref is None else ref()

    # ---- derived indexes ---------------------------------------------------------------

    @cached_property
    def node_map(self) -> Mapping[str, Node]:
        """Nodes by name."""
        return MappingProxyType({n.name: n for n in self.nodes})

    @cached_property
    def positions(self) -> Mapping[str, int]:
        """Every node's index in ``nodes``, by name."""
        return MappingProxyType(dict(zip(map(NAME, self.nodes), range(len(self.nodes)))))

    @cached_property
    def scope_counts(self) -> Mapping[str, int]:
        """For every scope of a node name (``stage1`` and ``stage1.block0`` of
        ``stage1.block0.conv1``), how many node names lie inside it."""
        return MappingProxyType(count_scopes(self.node_map))

    def node(self, name: str) -> Node:
        """The node called ``name``; GrowError if there is none."""
        try:
            return self.node_map[name]
        except KeyError:
            raise GrowError(
                "no such node",
                node=name,
                expected="the name of a node of the graph",
                found=repr(name),
            ) from None

    @cached_property
    def types(self) -> Mapping[str, TensorType]:
        """The type of every value (graph inputs and nodes), inferred in order.

        A graph made by :meth:`replace` infers again only the nodes that are new or read a
        changed type (from its verified :attr:`base` when it has one, see
        :func:`grow_ir.ir.delta.infer_changed`; else from the graph it was made from).
        """
        old_nodes, old_types, old_params = self.__dict__.pop(PRIOR, ({}, {}, {}))
        base = self.base
        if base is not None and "types" in base.__dict__:
            changed = infer_changed(self, base)  # only what differs from the verified graph
            if changed is not None:
                return changed
        types: dict[str, TensorType] = dict(self.inputs)
        memo = self._node_params
        for n in self.nodes:
            missing = [i for i in n.inputs if i not in types]
            if missing:
                raise VerifyError(
                    "input used before it is defined",
                    node=n.name,
                    field="inputs",
                    expected="a graph input or an earlier node",
                    found=repr(missing[0]),
                )
            # Inference is a function of the node and its input types: the very node of
            # the graph this one was made from, reading the very same types, has its type
            # (and parameter specs) again.
            if old_nodes.get(n.name) is n and all(types[i] is old_types.get(i) for i in n.inputs):
                types[n.name] = old_types[n.name]
                if (specs := old_params.get(n.name)) is not None:
                    memo[n.name] = specs
                continue
            check_arity(n)
            try:
                t = n.opdef.infer(n.attrs, [types[i] for i in n.inputs])
            except ShapeError as exc:
                raise exc.at(node=n.name) from None
            # an equal type is the old object, so that the nodes reading it are reused
            types[n.name] = t if (prev := old_types.get(n.name)) is None or prev != t else prev
        return MappingProxyType(types)

    def input_types(self, node: Node | str) -> list[TensorType]:
        """The types of a node's inputs."""
        n = self.node(node) if isinstance(node, str) else node
        return [self.types[i] for i in n.inputs]

    @cached_property
    def users(self) -> Mapping[str, tuple[str, ...]]:
        """For every value, the nodes that read it (in graph order)."""
        users: dict[str, list[str]] = {name: [] for name in self.inputs}
        for n in self.nodes:
            users[n.name] = []
        for n in self.nodes:
            for i in dict.fromkeys(n.inputs):
                users.setdefault(i, []).append(n.name)
        return MappingProxyType({k: tuple(v) for k, v in users.items()})

    @cached_property
    def nx(self) -> nx.DiGraph:
        """The dataflow graph as a networkx DiGraph (values as vertices)."""
        g = nx.DiGraph()
        g.add_nodes_from(self.inputs)
        for n in self.nodes:
            g.add_node(n.name)
            g.add_edges_from((i, n.name) for i in n.inputs)
        return g

    @cached_property
    def _node_params(self) -> dict[str, dict[str, ParamSpec]]:
        # Memo of node_params for this graph's own nodes, filled on first use of each node
        # (the verifier, param_specs, param_owners and the backends all ask for them).
        return {}

    def node_params(self, node: Node | str) -> dict[str, ParamSpec]:
        """Full parameter names of a node (under its param prefix) and their specs."""
        n = self.node(node) if isinstance(node, str) else node
        return dict(self.params_of(n))

    @cached_property
    def _specs_by_kind(self) -> dict[tuple, dict[str, ParamSpec]]:
        # An op's parameter specs are a function of its attributes and input types: alike
        # nodes (a stage's batchnorms) ask the op once per graph.
        return {}

    def params_of(self, n: Node) -> Mapping[str, ParamSpec]:
        """:meth:`node_params` of a Node, read-only and not copied (for loops over every
        node: the verifier, the backends)."""
        memo = self._node_params
        named = memo.get(n.name)
        if named is not None and self.node_map.get(n.name) is n:
            return named
        ins = self.input_types(n)
        kind = kind_of(n, ins)
        try:
            specs = self._specs_by_kind.get(kind)
        except TypeError:  # an unhashable attribute value: asked every time
            specs = kind = None
        if specs is None:
            specs = n.opdef.params(n.attrs, ins)
            if kind is not None:
                self._specs_by_kind[kind] = specs
        named = MappingProxyType({f"{n.param_prefix}.{k}": v for k, v in specs.items()})
        if self.node_map.get(n.name) is n:
            memo[n.name] = named
        return named

    @cached_property
    def param_specs(self) -> Mapping[str, ParamSpec]:
        """Every parameter the graph's nodes require, with its spec."""
        specs: dict[str, ParamSpec] = {}
        for n in self.nodes:
            if n.share is None:
                specs.update(self.params_of(n))
        return MappingProxyType(specs)

    @cached_property
    def output_deps(self) -> Mapping[str, frozenset[str]]:
        """For every node, the outputs that depend on it."""
        # Backwards through the (topologically ordered) nodes: a node feeds every output
        # that one of its users or itself feeds. Linear in the edges, no networkx graph.
        deps: dict[str, frozenset[str]] = {n.name: frozenset() for n in self.nodes}
        for out, node in self.outputs.items():
            if node in deps:
                deps[node] = deps[node] | {out}
        for n in reversed(self.nodes):
            mine = deps[n.name]
            if not mine:
                continue
            for i in n.inputs:
                theirs = deps.get(i)
                if theirs is not None and not mine <= theirs:
                    deps[i] = theirs | mine
        return MappingProxyType(deps)

    @cached_property
    def param_owners(self) -> Mapping[str, frozenset[str]]:
        """For every parameter, the outputs whose value it affects.

        A parameter is trainable for task ``T`` exactly when its owners are ``{T}``: then
        training ``T`` cannot change any other output.
        """
        owners: dict[str, set[str]] = {}
        for n in self.nodes:
            for p in self.params_of(n):
                owners.setdefault(p, set()).update(self.output_deps[n.name])
        return MappingProxyType({k: frozenset(v) for k, v in owners.items()})

    @cached_property
    def param_totals(self) -> tuple[int, int]:
        """Bytes of every parameter and buffer the nodes require, and the number of
        parameter elements (buffers excluded), from the shapes alone.

        A graph made from a verified one whose totals are known (:attr:`base`) adds and
        takes away only the specs of the nodes that differ from it.
        """
        base = self.base
        if base is None or "param_totals" not in base.__dict__:
            return spec_totals(self.param_specs.values())
        nbytes, numel = base.param_totals
        new, gone = self._differences(base)
        for nodes, graph, sign in ((new, self, 1), (gone, base, -1)):
            b, n = spec_totals(
                s for node in nodes if node.share is None for s in graph.params_of(node).values()
            )
            nbytes, numel = nbytes + sign * b, numel + sign * n
        return nbytes, numel

    def _differences(self, base: Graph) -> tuple[list[Node], list[Node]]:
        """The nodes of this graph whose parameter specs may differ from ``base``'s (not
        its node objects, or reading a type that is not ``base``'s), and the nodes of
        ``base`` they stand for or that are gone."""
        old_map, old_types, types = base.node_map, base.types, self.types
        diff = self.__dict__.get(DIFF)
        if diff is not None and diff.old() is base:  # the types were inferred from it
            gone = [old_map[n] for n in (*diff.replaced, *diff.removed)]
            return [*diff.new, *diff.reinferred], [*gone, *diff.reinferred]
        nodes, names = self.nodes, list(map(NAME, self.nodes))
        olds = list(map(old_map.get, names))
        fresh = set(compress(names, map(operator.is_not, nodes, olds)))
        differ = map(operator.is_not, map(types.__getitem__, names), map(old_types.get, names))
        readers = base.users
        for t in compress(names, differ):
            fresh.update(u for u in readers.get(t, ()) if u in self.node_map)
        new = [self.node_map[n] for n in fresh]
        gone = [old_map[n] for n in fresh if n in old_map]
        gone += [old_map[n] for n in old_map.keys() - self.node_map.keys()]
        return new, gone

    def num_params(self, node: Node | str | None = None) -> int:
        """Parameter elements (buffers excluded) of one node, or of the whole graph."""
        if node is None:
            return self.param_totals[1]
        n = self.node(node) if isinstance(node, str) else node
        return 0 if n.share else spec_totals(self.params_of(n).values())[1]

    def value_names(self) -> list[str]:
        """Graph inputs then nodes, in order."""
        return [*self.inputs, *(n.name for n in self.nodes)]

    def __repr__(self) -> str:
        return (
            f"Graph({self.name!r}, inputs={list(self.inputs)}, nodes={len(self.nodes)}, "
            f"outputs={dict(self.outputs)}, params={len(self.params)})"
        )
