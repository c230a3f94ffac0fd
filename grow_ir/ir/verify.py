"""The verifier: every invariant of the IR, checked on a whole Graph."""

from __future__ import annotations

import itertools
import keyword
import re

import networkx as nx
import torch
from torch.fx.graph import _custom_builtins

from grow_ir.errors import GrowError, VerifyError
from grow_ir.ir.graph import Graph, check_arity
from grow_ir.ir.types import DTYPES

IDENT_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
# Node names are PyTorch module paths: a scope may start with a digit, as the children of
# an nn.Sequential do (``layer1.0.conv1``, ``0``, and ``features.0_residual`` after a pass).
NODE_RE = re.compile(r"[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*")


def _module_attributes() -> frozenset[str]:
    # Every node becomes a submodule at its scoped name of a torch.fx.GraphModule, so no
    # scope segment may shadow an attribute of one (``forward``, ``to``, ``graph``, ``code``,
    # ``training``...): the instance's dir() covers class and instance attributes.
    return frozenset(dir(torch.fx.GraphModule(torch.nn.Module(), torch.fx.Graph())))


VERIFIED = "_verified"
"""The key, in a Graph's ``__dict__`` beside its cached indexes, marking it verified."""

RESERVED = _module_attributes() | frozenset(keyword.kwlist)
"""Words no scope segment of a node (or graph input) name may be."""

RESERVED_INPUTS = RESERVED | {"self"} | frozenset(_custom_builtins)
"""Words no graph input may be called: the lowered ``forward`` takes each input as an
argument of that name, and these would shadow ``self`` or the globals its code uses
(``torch``, ``device``...)."""


def check_name(name: str, *, what: str = "node", field: str = "name") -> None:
    """Raise VerifyError unless ``name`` is a well-formed scoped name of no reserved word.

    Graph inputs (``what="input"``) must be one plain identifier, since each becomes an
    argument of the lowered module's ``forward``.
    """
    pattern = {"input": IDENT_RE, "node": NODE_RE}.get(what, NAME_RE)
    if not isinstance(name, str) or not pattern.fullmatch(name):
        raise VerifyError(
            f"malformed {what} name",
            node=name if isinstance(name, str) else None,
            field=field,
            expected="a Python identifier, e.g. 'image'"
            if what == "input"
            else "letters, digits and _ joined by dots, e.g. 'stage1.block0.conv1'"
            if what == "node"
            else "identifiers joined by dots, e.g. 'stage1.block0.conv1'",
            found=repr(name),
        )
    reserved = RESERVED_INPUTS if what == "input" else RESERVED
    bad = [s for s in name.split(".") if s in reserved]
    if bad:
        raise VerifyError(
            f"{what} name uses a reserved word",
            node=name,
            field=field,
            expected="no Python keyword or torch.nn.Module / fx.GraphModule attribute as a scope",
            found=repr(bad[0]),
        )


def verify(graph: Graph) -> Graph:
    """Check every invariant of the IR and return ``graph`` unchanged.

    Guarantees, when it returns: names are unique, well formed and no node name is a scope
    of another's; every input is defined before use (so the graph is acyclic and in
    topological order); arities hold; every type is inferred; every output names a node;
    every node contributes to some output; and ``params`` holds exactly the parameters the
    nodes require, each with its required shape and dtype.

    A Graph is immutable, so one that passed is marked and not checked again (a pass
    verifies its result; lowering that result does not repeat the work).

    Raises:
        VerifyError: naming the node or field at fault.
    """
    if graph.__dict__.get(VERIFIED):
        return graph
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
    graph.__dict__[VERIFIED] = True
    return graph


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
    specs = graph.param_specs
    owner = {p: n.name for n in graph.nodes if n.share is None for p in graph.params_of(n)}
    for name, spec in specs.items():
        node = owner[name]
        t = graph.params.get(name)
        if t is None:
            raise VerifyError(
                "missing parameter",
                node=node,
                field=name,
                expected=f"a tensor of shape {list(spec.shape)}",
                found="none",
            )
        if not isinstance(t, torch.Tensor):
            raise VerifyError(
                "parameter is not a tensor",
                node=node,
                field=name,
                expected=f"a torch.Tensor of shape {list(spec.shape)}",
                found=type(t).__name__,
            )
        if tuple(t.shape) != spec.shape or t.dtype != DTYPES[spec.dtype]:
            raise VerifyError(
                "parameter of the wrong shape or dtype",
                node=node,
                field=name,
                expected=f"{spec.dtype}{list(spec.shape)}",
                found=f"{str(t.dtype).removeprefix('torch.')}{list(t.shape)}",
            )
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
