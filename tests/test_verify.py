"""The verifier: one test per invariant, each error a VerifyError (a GrowError) naming the
node and field at fault."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from grow_ir.errors import GrowError, ShapeError, VerifyError
from grow_ir.ir import Graph, Node, TensorType, initialize, verify
from grow_ir.ir.verify import is_valid

X = TensorType(("batch", 4))


def fc(name: str, *inputs: str, width: int = 4, **kw: Any) -> Node:
    return Node(name, "linear", {"out_features": width}, inputs, **kw)


def graph(*nodes: Node, outputs: dict[str, str] | None = None, **inputs: TensorType) -> Graph:
    """An initialised graph (parameters from the nodes in order, skipping bad ones)."""
    g = Graph(inputs or {"x": X}, nodes, outputs or {"y": nodes[-1].name})
    try:
        return initialize(g, seed=0)
    except GrowError:
        return g


def fails(g: Graph, reason: str, *, node: str | None, field: str | None) -> VerifyError:
    with pytest.raises(VerifyError) as err:
        verify(g)
    exc = err.value
    assert isinstance(exc, GrowError)
    assert reason in exc.reason, exc.message
    assert (exc.node, exc.field) == (node, field), exc.message
    assert exc.expected and exc.found
    assert not is_valid(g)
    return exc


def test_a_valid_graph_passes_and_is_returned_as_is() -> None:
    g = graph(fc("a", "x"), Node("act", "relu", {}, ("a",)), fc("b", "act"))
    assert verify(g) is g
    assert is_valid(g)


def test_duplicate_node_name() -> None:
    fails(graph(fc("a", "x"), fc("a", "a")), "duplicate name", node="a", field="name")


def test_node_named_like_an_input() -> None:
    fails(graph(fc("x", "x")), "duplicate name", node="x", field="name")


@pytest.mark.parametrize("name", ["a..b", "a-b", "a.", ".a", "", "a b", "a.1-b"])
def test_malformed_node_name(name: str) -> None:
    fails(graph(fc(name, "x")), "malformed node name", node=name or "", field="name")


@pytest.mark.parametrize("name", ["0", "layer1.0.conv1", "features.0_residual", "1a"])
def test_node_names_may_be_pytorch_module_paths(name: str) -> None:
    verify(graph(fc(name, "x")))


@pytest.mark.parametrize("name", ["a.b", "1x"])
def test_malformed_input_name(name: str) -> None:
    g = graph(fc("a", name), **{name: X})
    fails(g, "malformed input name", node=name, field="inputs")


@pytest.mark.parametrize(
    "name", ["forward", "stage.to", "graph", "code", "training", "a.class", "state_dict"]
)
def test_reserved_word_in_node_name(name: str) -> None:
    fails(graph(fc(name, "x")), "reserved word", node=name, field="name")


@pytest.mark.parametrize("name", ["self", "torch", "lambda"])
def test_reserved_word_as_input_name(name: str) -> None:
    g = graph(fc("a", name), **{name: X})
    fails(g, "reserved word", node=name, field="inputs")


def test_reserved_word_as_output_name() -> None:
    fails(
        graph(fc("a", "x"), outputs={"forward": "a"}),
        "reserved word",
        node="forward",
        field="outputs",
    )


def test_node_inside_another_nodes_scope() -> None:
    g = graph(fc("block", "x"), fc("block.conv", "block"))
    exc = fails(g, "scope of another node", node="block.conv", field="name")
    assert "block" in exc.expected


def test_unknown_input() -> None:
    fails(graph(fc("a", "nope")), "unknown input", node="a", field="inputs")


def test_nodes_out_of_order() -> None:
    g = Graph({"x": X}, [fc("b", "a"), fc("a", "x")], {"y": "b"})
    exc = fails(g, "out of topological order", node="b", field="inputs")
    assert "'a'" in exc.expected


def test_cycle() -> None:
    g = Graph(
        {"x": X}, [Node("a", "add", {}, ("x", "b")), Node("b", "relu", {}, ("a",))], {"y": "b"}
    )
    exc = fails(g, "cycle", node="a", field="inputs")
    assert "a -> b -> a" in exc.found


def test_self_loop() -> None:
    g = Graph({"x": X}, [Node("a", "add", {}, ("x", "a"))], {"y": "a"})
    fails(g, "cycle", node="a", field="inputs")


@pytest.mark.parametrize(
    ("op", "count", "want"),
    [("relu", 2, "1"), ("add", 1, "at least 2"), ("linear", 0, "1"), ("concat", 1, "at least 2")],
)
def test_arity(op: str, count: int, want: str) -> None:
    attrs = {"out_features": 2} if op == "linear" else {}
    g = Graph({"x": X}, [Node("n", op, attrs, ("x",) * count)], {"y": "n"})
    exc = fails(g, f"{op} takes", node="n", field="inputs")
    assert exc.expected == f"{want} input(s)" and exc.found == str(count)


def test_type_error_is_a_shape_error_at_the_node() -> None:
    g = Graph(
        {"x": X}, [Node("n", "conv2d", {"out_channels": 2, "kernel_size": 3}, ("x",))], {"y": "n"}
    )
    with pytest.raises(ShapeError) as err:
        verify(g)
    assert err.value.node == "n" and err.value.field == "inputs"


def test_unknown_output() -> None:
    fails(graph(fc("a", "x"), outputs={"y": "b"}), "unknown output", node=None, field="outputs.y")


def test_no_outputs() -> None:
    g = Graph({"x": X}, [], {})
    fails(g, "no outputs", node=None, field="outputs")


def test_dead_node() -> None:
    fails(
        graph(fc("a", "x"), fc("dead", "x"), outputs={"y": "a"}),
        "does not contribute",
        node="dead",
        field=None,
    )


def test_missing_parameter() -> None:
    g = graph(fc("a", "x"))
    g = g.replace(params={k: v for k, v in g.params.items() if k != "a.bias"})
    exc = fails(g, "missing parameter", node="a", field="a.bias")
    assert exc.expected == "a tensor of shape [4]"


def test_missing_buffer() -> None:
    g = graph(Node("bn", "batchnorm", {}, ("x",)))
    g = g.replace(params={k: v for k, v in g.params.items() if "num_batches" not in k})
    fails(g, "missing parameter", node="bn", field="bn.num_batches_tracked")


def test_extra_parameter() -> None:
    g = graph(fc("a", "x"))
    g = g.replace(params={**g.params, "a.scale": torch.ones(4)})
    exc = fails(g, "no node uses", node=None, field="a.scale")
    assert "1 extra" in exc.found


def test_parameter_of_the_wrong_shape() -> None:
    g = graph(fc("a", "x"))
    g = g.replace(params={**g.params, "a.weight": torch.zeros(4, 5)})
    exc = fails(g, "wrong shape or dtype", node="a", field="a.weight")
    assert (exc.expected, exc.found) == ("float32[4, 4]", "float32[4, 5]")


def test_parameter_of_the_wrong_dtype() -> None:
    g = graph(fc("a", "x"))
    g = g.replace(params={**g.params, "a.bias": torch.zeros(4, dtype=torch.float64)})
    exc = fails(g, "wrong shape or dtype", node="a", field="a.bias")
    assert exc.found == "float64[4]"


def test_parameter_that_is_not_a_tensor() -> None:
    g = graph(fc("a", "x"))
    g = g.replace(params={**g.params, "a.bias": [0.0] * 4})
    fails(g, "not a tensor", node="a", field="a.bias")


def test_share_to_an_unknown_node() -> None:
    g = graph(fc("a", "x"), fc("b", "a", share="nope"))
    fails(g, "unknown node", node="b", field="share")


def test_share_to_a_node_that_shares() -> None:
    g = graph(fc("a", "x"), fc("b", "a", share="a"), fc("c", "b", share="b"))
    fails(g, "unknown node", node="c", field="share")


def test_share_with_a_different_layer() -> None:
    g = graph(fc("a", "x"), fc("b", "a", width=4, share="a"))
    g2 = g.replace(
        nodes=(
            g.nodes[0],
            Node("b", "linear", {"out_features": 4, "bias": False}, ("a",), share="a"),
        )
    )
    fails(g2, "different layer", node="b", field="share")


def test_share_with_a_different_input_shape() -> None:
    g = graph(
        fc("a", "x"),
        fc("b", "x2", share="a"),
        outputs={"y": "a", "z": "b"},
        x=X,
        x2=TensorType((2, 6)),
    )
    exc = fails(g, "another shape", node="b", field="share")
    assert "(4, 4)" in exc.expected and "(4, 6)" in exc.found


def test_a_valid_share_passes() -> None:
    g = graph(fc("a", "x"), fc("b", "a", share="a"))
    assert verify(g) is g
    assert set(g.params) == {"a.weight", "a.bias"}


def test_unknown_op_is_refused_when_the_node_is_made() -> None:
    with pytest.raises(VerifyError) as err:
        Node("n", "conv3d", {}, ("x",))
    assert (err.value.node, err.value.field) == ("n", "op")
    assert "conv2d" in err.value.expected
