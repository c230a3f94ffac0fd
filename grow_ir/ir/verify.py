"""The verifier: every invariant of the IR, checked on a whole Graph."""

from __future__ import annotations

import itertools
from types import MappingProxyType

import networkx as nx

from grow_ir.errors import GrowError, VerifyError
from grow_ir.ir.checks import check_name, check_param
from grow_ir.ir.delta import DIFF
from grow_ir.ir.graph import BASE, PRIOR, VERIFIED, Graph, check_arity
from grow_ir.ir.ops import ParamSpec
from grow_ir.ir.verify_delta import verify_changes

__all__ = ["check_name", "is_valid", "verify"]


def verify(graph: Graph, parent: Graph | None = None) -> Graph:
    """Check every invariant of the IR and return ``graph`` unchanged.

    Guarantees, when it returns: names are unique, well formed and no node name is a scope
    of another's; every input is defined before use (so the graph is acyclic and in
    topological order); arities hold; every type is inferred; every output names a node;
    every node contributes to some output; and ``params`` holds exactly the parameters the
    nodes require, each with its required shape and dtype.

    A Graph is immutable, so one that passed is marked and not checked again (a pass
    verifies its result; lowering that result does not repeat the work).

    When ``graph`` shares its nodes and tensors with a verified graph (``parent``, else
    :attr:`Graph.base`: the one it was made from by ``replace``), only what differs from
    it is checked (:func:`grow_ir.ir.verify_delta.verify_changes`: the same guarantees, at
    the cost of what changed); whatever that cannot prove is checked in full here, so the
    graphs accepted, and the errors raised, are exactly those of the full check.

    Raises:
        VerifyError: naming the node or field at fault.
    """
    if graph.__dict__.get(VERIFIED):
        return graph
    base = graph.base if parent is None else parent
    proven = base is not None and base is not graph and base.__dict__.get(VERIFIED)
    if proven and verify_changes(graph, base) is not None:
        return graph
    _verify_all(graph)
    for key in (BASE, PRIOR, DIFF):  # nothing of the graph it came from is needed any more
        graph.__dict__.pop(key, None)
    graph.__dict__[VERIFIED] = True
    return graph


def _verify_all(graph: Graph) -> None:
    seen: set[str] = set()
    for name in graph.inputs:
        check_name(name, what="input", field="inputs")
        seen.add(name)
    for n in graph.nodes:
        check_name(n.name)
        if n.name in seen:
            raise VerifyError(
                "duplicate name",
                node=n.name,
                field="name",
                expected="a name used once",
                found="it used twice",
            )
        seen.add(n.name)
    _check_scopes(graph)
    positions = {name: i for i, name in enumerate(graph.value_names())}
    for n in graph.nodes:
        for i in n.inputs:
            if i not in positions:
                raise VerifyError(
                    "unknown input",
                    node=n.name,
                    field="inputs",
                    expected="a graph input or another node",
                    found=repr(i),
                )
            if positions[i] >= positions[n.name]:
                cycle = _cycle(graph)
                if cycle:
                    raise VerifyError(
                        "the graph has a cycle",
                        node=n.name,
                        field="inputs",
                        expected="an acyclic graph",
                        found=" -> ".join(cycle),
                    )
                raise VerifyError(
                    "nodes out of topological order",
                    node=n.name,
                    field="inputs",
                    expected=f"'{i}' defined before its use",
                    found="it defined later",
                )
        check_arity(n)
    graph.types  # noqa: B018  (type inference raises with the node at fault)
    if not graph.outputs:
        raise VerifyError(
            "the graph has no outputs",
            field="outputs",
            expected="at least one output",
            found="none",
        )
    for out, node in graph.outputs.items():
        check_name(out, what="output", field="outputs")
        if node not in graph.node_map:
            raise VerifyError(
                "unknown output",
                field=f"outputs.{out}",
                expected="the name of a node",
                found=repr(node),
            )
    for n in graph.nodes:
        if not graph.output_deps[n.name]:
            raise VerifyError(
                "node does not contribute to any output",
                node=n.name,
                expected="every node on a path to an output",
                found="a dead end",
            )
    _check_shares(graph)
    _check_params(graph)


def _check_scopes(graph: Graph) -> None:
    names = sorted(n.name for n in graph.nodes)
    for a, b in itertools.pairwise(names):
        if b.startswith(a + "."):
            raise VerifyError(
                "a node name is the scope of another node",
                node=b,
                field="name",
                expected=f"no node inside node '{a}'",
                found=repr(b),
            )


def _cycle(graph: Graph) -> list[str]:
    try:
        edges = nx.find_cycle(graph.nx)
    except nx.NetworkXNoCycle:
        return []
    return [u for u, _ in edges] + [edges[0][0]]


def _check_shares(graph: Graph) -> None:
    for n in graph.nodes:
        if n.share is None:
            continue
        owner = graph.node_map.get(n.share)
        if owner is None or owner.share is not None:
            raise VerifyError(
                "shares the parameters of an unknown node",
                node=n.name,
                field="share",
                expected="a node with parameters of its own",
                found=repr(n.share),
            )
        if owner.op == n.op and owner.attrs != n.attrs:
            raise VerifyError(
                "shares parameters with a different layer",
                node=n.name,
                field="share",
                expected=f"{owner.op} {owner.attr_dict()}",
                found=f"{n.op} {n.attr_dict()}",
            )
        # A node of another op may share them when they are the same tensors (a tie: a
        # linear head without bias reading an embedding's [vocab, width] weight).
        mine = n.opdef.params(n.attrs, graph.input_types(n))
        theirs = owner.opdef.params(owner.attrs, graph.input_types(owner))
        if mine != theirs:
            raise VerifyError(
                "shares parameters of another shape",
                node=n.name,
                field="share",
                expected=str(theirs),
                found=str(mine),
            )


def _check_params(graph: Graph) -> None:
    specs: dict[str, ParamSpec] = {}  # Graph.param_specs, with the node requiring each
    owner: dict[str, str] = {}
    for n in graph.nodes:
        if n.share is None:
            mine = graph.params_of(n)
            specs.update(mine)
            owner.update(dict.fromkeys(mine, n.name))
    graph.__dict__.setdefault("param_specs", MappingProxyType(specs))
    for name, spec in specs.items():
        check_param(owner[name], name, spec, graph.params.get(name))
    extra = sorted(set(graph.params) - set(specs))
    if extra:
        raise VerifyError(
            "parameter that no node uses",
            field=extra[0],
            expected="only the parameters of the graph's nodes",
            found=f"{len(extra)} extra, e.g. {extra[0]!r}",
        )


def is_valid(graph: Graph) -> bool:
    """True when :func:`verify` passes."""
    try:
        verify(graph)
    except GrowError:
        return False
    return True
