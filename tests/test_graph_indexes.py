"""Graph's derived indexes: computed once, handed on by ``replace`` only while the structure
(inputs, nodes, outputs) is kept, and never stale."""

from __future__ import annotations

import dataclasses

import torch
from hypothesis import HealthCheck, given, settings

from grow_ir.ir import Graph, Node, TensorType, initialize, verify
from grow_ir.ir.graph import STRUCTURAL_INDEXES
from grow_ir.passes import channel_group, widen, widenable
from tests.graphgen import graphs


def mlp() -> Graph:
    graph = Graph(
        inputs={"x": TensorType(("batch", 4))},
        nodes=[
            Node("fc", "linear", {"out_features": 5}, ("x",)),
            Node("act", "relu", {}, ("fc",)),
            Node("head", "linear", {"out_features": 2}, ("act",)),
        ],
        outputs={"y": "head"},
    )
    return verify(initialize(graph, seed=0))


def test_replacing_params_hands_on_the_indexes() -> None:
    g = mlp()
    keys = ("types", "users", "nx", "param_specs", "output_deps", "param_owners")
    computed = {key: getattr(g, key) for key in keys}
    params = {k: torch.zeros_like(v) for k, v in g.params.items()}
    h = g.replace(params=params, name="zeroed")
    for key in keys:
        assert getattr(h, key) is computed[key], key
    assert verify(h) is h and torch.equal(h.params["fc.weight"], params["fc.weight"])


def test_replacing_the_structure_recomputes_them() -> None:
    g = mlp()
    g.types, g.param_specs  # noqa: B018  (computed before the replace)
    wide = g.replace(nodes=(g.nodes[0].replace(attrs={"out_features": 7}), *g.nodes[1:]))
    assert wide.types["fc"].shape == ("batch", 7)
    assert wide.param_specs["head.weight"].shape == (2, 7)
    assert g.types["fc"].shape == ("batch", 5)
    renamed = g.replace(outputs={"z": "head"})
    assert renamed.output_deps["fc"] == frozenset({"z"})


def test_only_structural_indexes_are_handed_on() -> None:
    cached = {
        name for name, value in vars(Graph).items() if type(value).__name__ == "cached_property"
    }
    assert set(STRUCTURAL_INDEXES) == cached


def test_node_params_is_memoised_but_never_shared_or_stale() -> None:
    g = mlp()
    first = g.node_params("fc")
    first["fc.extra"] = first["fc.weight"]  # the caller's copy, not the memo
    assert set(g.node_params("fc")) == {"fc.weight", "fc.bias"}
    foreign = g.node("fc").replace(attrs={"out_features": 9})  # same name, not g's node
    assert g.node_params(foreign)["fc.weight"].shape == (9, 4)
    assert g.node_params("fc")["fc.weight"].shape == (5, 4)


def test_a_new_structure_infers_again_only_what_changed() -> None:
    """After ``replace(nodes=...)``, a node of the old graph reading the very same types
    keeps its type and parameter specs (the same objects); a changed node and every node
    whose input type changed are inferred again, as a fresh graph infers them."""
    g = mlp()
    g.types, g.param_specs  # noqa: B018
    wide = g.replace(nodes=(g.nodes[0].replace(attrs={"out_features": 7}), *g.nodes[1:]))
    fresh = dataclasses.replace(wide)  # the same graph, nothing handed on
    assert dict(wide.types) == dict(fresh.types)
    assert dict(wide.param_specs) == dict(fresh.param_specs)
    assert wide.types["x"] is g.types["x"]
    assert wide.types["fc"] is not g.types["fc"]  # changed node
    assert wide.types["act"].shape == ("batch", 7)  # its input type changed
    assert wide.param_specs["head.weight"].shape == (2, 7)
    extended = g.replace(nodes=(*g.nodes, Node("out", "relu", {}, ("head",))))
    extended = extended.replace(outputs={"y": "out"})
    for name in ("fc", "act", "head"):
        assert extended.types[name] is g.types[name]
    assert extended.params_of(extended.node("fc")) is g.params_of(g.node("fc"))
    assert "_prior" not in extended.__dict__  # no chain of old graphs kept alive


@settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(graph=graphs())
def test_alike_nodes_share_their_ops_answer_and_get_their_own_specs(graph: Graph) -> None:
    """``params_of`` asks an op once per kind of node (attributes, input types) in a graph:
    every node still gets exactly the specs its op gives it, under its own names, in a
    fresh graph and in a pass's result (made from the graph, its specs known)."""
    grown = graph
    for node in widenable(graph)[:1]:  # twice the width: exact through layernorms too
        grown = widen(graph, node=node, width=2 * channel_group(graph, node).channels)
    for g in (dataclasses.replace(graph), grown):
        for n in g.nodes:
            ins = [g.types[i] for i in n.inputs]
            want = {f"{n.param_prefix}.{k}": v for k, v in n.opdef.params(n.attrs, ins).items()}
            assert dict(g.params_of(n)) == want, n.name
