"""Graph-editing helpers shared by every pass (write each edit once, here)."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping, Sequence

import torch

from grow_ir.errors import GrowError, PassError, ShapeError, VerifyError
from grow_ir.ir.delta import NAME
from grow_ir.ir.graph import Graph, Node, count_scopes, shared_with
from grow_ir.ir.init import check_bytes, spec_bytes
from grow_ir.ir.ops import Attrs
from grow_ir.ir.types import TensorType
from grow_ir.passes.base import Origin
from grow_ir.passes.initializers import init_layer


def fresh_name(graph: Graph, base: str, taken: Iterable[str] = ()) -> str:
    """``base`` if unused, else ``base_1``, ``base_2``...: a name no value or scope uses."""
    taken = set(taken)
    scopes = count_scopes([*graph.inputs, *taken])
    used, inside = graph.node_map, graph.scope_counts

    def free(name: str) -> bool:
        return not (
            name in used
            or name in inside
            or name in graph.inputs
            or name in taken
            or name in scopes
        )

    if free(base):
        return base
    i = 1
    while not free(f"{base}_{i}"):
        i += 1
    return f"{base}_{i}"


def rename_input(node: Node, old: str, new: str) -> Node:
    """``node`` reading ``new`` wherever it read ``old``."""
    return node.replace(inputs=tuple(new if i == old else i for i in node.inputs))


def insert_after(
    graph: Graph,
    after: str,
    new_nodes: Sequence[Node],
    *,
    params: Mapping[str, torch.Tensor] | None = None,
    rewire: bool = True,
    only_users: Iterable[str] | None = None,
) -> Graph:
    """Insert ``new_nodes`` right after value ``after`` and (with ``rewire``) make every user
    of ``after`` (or only ``only_users``), and every output naming it, read the last new
    node instead. The new nodes themselves keep reading ``after``.

    Returns a new Graph (not yet verified) with ``params`` added.
    """
    if after not in graph.types:
        raise PassError(
            "no such value", node=after, expected="a node or graph input", found=repr(after)
        )
    last = new_nodes[-1].name
    new_names = {n.name for n in new_nodes}
    targets = set(graph.users.get(after, ())) if only_users is None else set(only_users)
    nodes = list(graph.nodes)
    at = graph.positions
    if len(at) != len(nodes):  # duplicate names (not a verified graph): go through them all
        raise PassError(
            "the graph has duplicate node names",
            field="nodes",
            expected="a verified graph",
            found=f"{len(nodes) - len(at)} duplicate(s)",
        )
    if rewire:
        for name in targets - new_names:
            if name in at:
                nodes[at[name]] = rename_input(nodes[at[name]], after, last)
    where = 0 if after in graph.inputs else at[after] + 1
    nodes[where:where] = new_nodes
    outputs = dict(graph.outputs)
    if rewire and only_users is None:
        outputs = {k: (last if v == after else v) for k, v in outputs.items()}
    merged = dict(graph.params)
    merged.update(params or {})
    return graph.replace(nodes=tuple(nodes), outputs=outputs, params=merged)


def replace_nodes(
    graph: Graph,
    changed: Mapping[str, Node],
    params: Mapping[str, torch.Tensor] | None = None,
    drop_params: Iterable[str] = (),
) -> Graph:
    """Swap nodes by name (same position) and update parameters; returns an unverified Graph."""
    nodes = tuple(map(changed.get, map(NAME, graph.nodes), graph.nodes))
    drop = set(drop_params)
    merged = dict(graph.params)
    for key in drop & merged.keys():
        del merged[key]
    merged.update(params or {})
    return graph.replace(nodes=nodes, params=merged)


def node_of_kind(
    graph: Graph, name: str, ops: Sequence[str], pass_name: str, field: str = "node"
) -> Node:
    """The node ``name``, which must have one of ``ops``; PassError otherwise."""
    if name not in graph.node_map:
        raise PassError(
            f"{pass_name}: no such node",
            node=name,
            field=field,
            expected="the name of a node of the graph",
            found=repr(name),
        )
    node = graph.node_map[name]
    if node.op not in ops:
        raise PassError(
            f"{pass_name}: cannot apply to a {node.op} node",
            node=name,
            field=field,
            expected=f"a node of op {' / '.join(ops)}",
            found=node.op,
        )
    return node


def own_parameters(graph: Graph, node: Node, change: str) -> None:
    """Refuse, with a PassError naming both nodes, to ``change`` (what the pass would do,
    as a phrase: "mask them") the parameters of ``node`` when it shares them with another
    node (another task's path, which the change would change too)."""
    shared = shared_with(graph, node)
    if shared is not None:
        raise PassError(
            f"{node.op} '{node.name}' shares its parameters with '{shared}' (another task's "
            f"path), and to {change} would change that task",
            node=node.name,
            field="node",
            expected="a layer with parameters of its own",
            found=f"shared with '{shared}'",
        )


def is_nonnegative(graph: Graph, value: str) -> bool:
    """True when the graph itself proves ``value >= 0`` for every input.

    The proof: ``value`` is the output of an op whose output is never negative
    (``OpFacts.nonnegative``: relu, sigmoid, softmax), or of a sign-keeping op
    (``OpFacts.sign_keeping``: pooling, dropout, identity, flatten, concat, add, mul...)
    whose inputs are all proven non-negative. Graph inputs and every other op are unproven
    (False), so True is sound; False only means "not proven".
    """
    proven: dict[str, bool] = {}

    def proof(name: str) -> bool:
        if name not in proven:
            node = graph.node_map.get(name)
            if node is None:
                proven[name] = False
            elif node.opdef.facts.nonnegative:
                proven[name] = True
            else:
                facts = node.opdef.facts
                proven[name] = facts.sign_keeping and all(map(proof, node.inputs))
        return proven[name]

    return proof(value)


class Additions:
    """New nodes and parameters that a pass builds on top of ``graph``.

    Each node's type is inferred as it is added, so an impossible layer (wrong rank, a
    symbolic width, a bad attribute) is refused with a PassError before anything is built,
    and so is one whose parameters would not fit in memory (the size guard of
    ``ir.init.check_bytes``, stating the size). Every parameter added gets an
    :class:`Origin`. Nothing here changes ``graph``.
    """

    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        self.nodes: list[Node] = []
        self.params: dict[str, torch.Tensor] = {}
        self.origins: dict[str, Origin] = {}
        self._types: dict[str, TensorType] = {}
        self._bytes: int | None = None  # of the graph and the nodes added so far
        self._count = 0

    def name(self, base: str) -> str:
        """A fresh name from ``base``, unused by the graph and by the nodes added so far."""
        return fresh_name(self.graph, base, taken=[n.name for n in self.nodes])

    def type(self, value: str) -> TensorType:
        """The type of a value of the graph or of an added node; PassError if there is none."""
        if value in self._types:
            return self._types[value]
        if value not in self.graph.types:
            raise PassError(
                "no such value", node=value, expected="a node or graph input", found=repr(value)
            )
        return self.graph.types[value]

    def add(
        self,
        name: str,
        op: str,
        inputs: Sequence[str],
        attrs: Attrs | Mapping[str, object] | None = None,
        *,
        share: str | None = None,
        sized_by: str | None = None,
    ) -> Node:
        """Add the node ``name`` (taken as given: make it with :meth:`name`) and infer its
        type. Raises PassError naming the node when its attributes or inputs do not fit, or
        its parameters would be too large (naming the field ``sized_by``, the pass argument
        its size comes from)."""
        raw = attrs if isinstance(attrs, Attrs) else dict(attrs or {})
        try:
            node = Node(name, op, raw, tuple(inputs), share)
            ins = [self.type(i) for i in node.inputs]
            out = node.opdef.infer(node.attrs, ins)
        except (ShapeError, VerifyError) as exc:
            raise PassError(
                f"cannot build the {op} layer: {exc.reason}",
                node=name,
                field=exc.field,
                expected=exc.expected,
                found=exc.found,
            ) from None
        if share is None:
            try:
                self._check_size(node, ins)
            except GrowError as exc:
                raise PassError(
                    f"cannot build the {op} layer: {exc.reason}",
                    node=name,
                    field=sized_by,
                    expected=exc.expected,
                    found=exc.found,
                ) from None
        self._types[name] = out
        self.nodes.append(node)
        return node

    def _check_size(self, node: Node, ins: list[TensorType]) -> None:
        """Refuse a node whose parameters would take the graph over the size limit."""
        specs = node.opdef.params(node.attrs, ins).values()
        if self._bytes is None:
            self._bytes, self._count = self.graph.param_totals
        self._bytes += spec_bytes(specs)
        numel = sum(s.numel for s in specs if not s.buffer)
        self._count += numel
        check_bytes(self._bytes, self._count, node.name, numel)

    def init(self, node: Node, how: str, gen: torch.Generator) -> None:
        """Give an added node fresh parameters under scheme ``how`` (see init_layer)."""
        tensors = init_layer(node, [self.type(i) for i in node.inputs], how, gen)
        for local, tensor in tensors.items():
            self.params[f"{node.name}.{local}"] = tensor
            self.origins[f"{node.name}.{local}"] = Origin(None)

    def set_param(self, key: str, tensor: torch.Tensor, source: str | None = None) -> None:
        """Set one parameter of an added node, recording where its values came from."""
        self.params[key] = tensor
        self.origins[key] = Origin(source)


def check_choice(value: object, choices: Sequence[str], field: str) -> str:
    """``value`` when it is one of ``choices``; a PassError suggesting the nearest otherwise."""
    if isinstance(value, str) and value in choices:
        return value
    near = difflib.get_close_matches(str(value), choices, n=1)
    hint = f" (did you mean '{near[0]}'?)" if near else ""
    raise PassError(
        f"unknown {field}{hint}",
        field=field,
        expected=f"one of {', '.join(choices)}",
        found=repr(value),
    )


def check_positive_int(value: object, field: str) -> int:
    """``value`` when it is an int >= 1 (not a bool); a PassError otherwise."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise PassError(
            f"{field} must be a positive integer",
            field=field,
            expected="an integer >= 1",
            found=repr(value),
        )
    return value


def seeded(seed: int) -> torch.Generator:
    """A ``torch.Generator`` seeded with ``seed`` (an ``args.Seed``, checked by the pass's
    argument model: an integer in the range torch takes)."""
    return torch.Generator().manual_seed(seed)
