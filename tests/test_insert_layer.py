"""insert_layer: structure, exactness on random probes, honest reports, one test per refusal."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from grow_ir import passes
from grow_ir.errors import PassError
from grow_ir.ir.graph import Graph
from grow_ir.passes.manager import output_error
from grow_ir.passes.rewrite import is_nonnegative
from grow_ir.probes import randomize_norms
from grow_ir.spec import load_spec

TOL = 1e-5


def build(nodes: list[dict[str, Any]], inputs: dict[str, Any], outputs: dict[str, str]) -> Graph:
    """A spec-built graph with random norm statistics (so that no identity is free)."""
    spec = {"version": 1, "seed": 0, "inputs": inputs, "nodes": nodes, "outputs": outputs}
    return randomize_norms(load_spec(spec), seed=1)


CNN_NODES = [
    {"name": "stem", "op": "conv2d", "inputs": ["image"], "out_channels": 4, "kernel_size": 3},
    {"name": "bn", "op": "batchnorm"},
    {"name": "act", "op": "relu"},
    {"name": "pool", "op": "global_avgpool"},
    {"name": "fc", "op": "linear", "out_features": 6},
    {"name": "fc_act", "op": "relu"},
    {"name": "head", "op": "linear", "out_features": 5},
]


@pytest.fixture(scope="module")
def cnn() -> Graph:
    """image -> conv -> bn -> relu -> pool -> fc -> relu -> head."""
    return build(CNN_NODES, {"image": {"shape": ["batch", 3, 9, 9]}}, {"logits": "head"})


@pytest.fixture(scope="module")
def seq() -> Graph:
    """A conv1d net and a token net with layernorm, as two outputs of one graph."""
    nodes = [
        {"name": "c1", "op": "conv1d", "inputs": ["wave"], "out_channels": 4, "kernel_size": 3},
        {"name": "c1_act", "op": "sigmoid"},
        {"name": "flat", "op": "flatten"},
        {"name": "out1", "op": "linear", "out_features": 2},
        {"name": "proj", "op": "linear", "inputs": ["tokens"], "out_features": 6},
        {"name": "ln", "op": "layernorm"},
        {"name": "out2", "op": "linear", "out_features": 3},
    ]
    inputs = {"wave": {"shape": ["batch", 4, 10]}, "tokens": {"shape": ["batch", 5, 6]}}
    return build(nodes, inputs, {"a": "out1", "b": "out2"})


def error(old: Graph, result: passes.PassResult) -> float:
    """The worst relative output error over two probe batches."""
    return max(output_error(old, result.graph, result.same_as, batch=b, seed=b) for b in (1, 4))


def assert_exact(old: Graph, result: passes.PassResult) -> None:
    assert result.preserved, result.reason
    assert result.reason == ""
    assert error(old, result) <= TOL


def assert_changed(old: Graph, result: passes.PassResult, why: str) -> None:
    """A result reported as not preserving, and which really is not (the report is honest)."""
    assert not result.preserved
    assert why in result.reason
    assert error(old, result) > 1e-3


# ---- structure ---------------------------------------------------------------------------


def test_conv_identity_structure(cnn: Graph) -> None:
    result = passes.insert_layer.run(cnn, after="act", op="conv2d", activation="relu")
    conv = {"name": "act_conv2d", "op": "conv2d", "out_channels": 4, "kernel_size": 3}
    nodes = [*CNN_NODES[:3], {**conv, "padding": 1}, {"name": "act_relu", "op": "relu"}]
    nodes += CNN_NODES[3:]
    expected = build(nodes, {"image": {"shape": ["batch", 3, 9, 9]}}, {"logits": "head"})
    assert result.graph.nodes == expected.nodes
    w = result.graph.params["act_conv2d.weight"]
    assert torch.equal(w, torch.nn.init.dirac_(torch.empty(4, 4, 3, 3)))
    assert torch.equal(result.graph.params["act_conv2d.bias"], torch.zeros(4))
    assert set(result.origins) == {"act_conv2d.weight", "act_conv2d.bias"}
    assert all(o.source is None for o in result.origins.values())


@pytest.mark.parametrize(
    ("after", "op", "residual", "attrs"),
    [
        ("proj", "linear", False, {"out_features": 6}),
        ("c1", "conv1d", False, {"out_channels": 4, "kernel_size": 3, "padding": 1}),
        ("c1", "batchnorm", False, {}),
        ("proj", "layernorm", True, {}),
    ],
)
def test_each_op_is_a_square_layer_after_the_value(
    seq: Graph, after: str, op: str, residual: bool, attrs: dict
) -> None:
    result = passes.insert_layer.run(seq, after=after, op=op, residual=residual)
    node = result.graph.node(f"{after}_{op}")
    assert (node.op, node.inputs, node.attr_dict()) == (op, (after,), attrs)
    (user,) = seq.users[after]
    reads = f"{after}_residual" if residual else node.name
    assert result.graph.node(user).inputs == (reads,)
    assert result.graph.types[node.name] == seq.types[after]


def test_residual_structure(cnn: Graph) -> None:
    result = passes.insert_layer.run(cnn, after="fc", op="linear", activation="gelu", residual=True)
    new = [n for n in result.graph.nodes if n.name not in cnn.node_map]
    assert [(n.name, n.op, n.inputs) for n in new] == [
        ("fc_linear", "linear", ("fc",)),
        ("fc_gelu", "gelu", ("fc_linear",)),
        ("fc_linear_1", "linear", ("fc_gelu",)),
        ("fc_residual", "add", ("fc", "fc_linear_1")),
    ]
    assert result.graph.node("fc_act").inputs == ("fc_residual",)
    assert not torch.equal(result.graph.params["fc_linear.weight"], torch.zeros(6, 6))
    assert torch.equal(result.graph.params["fc_linear_1.weight"], torch.zeros(6, 6))
    assert_exact(cnn, result)


def test_after_an_output_moves_the_output(cnn: Graph) -> None:
    result = passes.insert_layer.run(cnn, after="head", op="linear")
    assert result.graph.outputs == {"logits": "head_linear"}
    assert_exact(cnn, result)


def test_input_graph_and_tensors_unchanged(cnn: Graph) -> None:
    before = {k: v.clone() for k, v in cnn.params.items()}
    nodes = cnn.nodes
    passes.insert_layer(cnn, after="bn", op="batchnorm", residual=True, activation="tanh")
    assert cnn.nodes is nodes and "bn_batchnorm" not in cnn.node_map
    assert all(torch.equal(cnn.params[k], v) for k, v in before.items())


# ---- exact inserts -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("after", "op", "kwargs"),
    [
        ("act", "conv2d", {}),
        ("act", "conv2d", {"kernel_size": 1}),
        ("stem", "conv2d", {"kernel_size": 5}),
        ("act", "conv2d", {"kernel_size": 5, "activation": "relu"}),
        ("bn", "batchnorm", {}),
        ("image", "batchnorm", {}),
        ("act", "batchnorm", {"activation": "relu"}),
        ("pool", "linear", {"activation": "relu"}),
        ("fc", "linear", {}),
        ("fc", "batchnorm", {}),
        ("fc_act", "linear", {"activation": "relu"}),
    ],
)
def test_identity_is_exact(cnn: Graph, after: str, op: str, kwargs: dict) -> None:
    assert_exact(cnn, passes.insert_layer.run(cnn, after=after, op=op, **kwargs))


@pytest.mark.parametrize(
    ("after", "op", "kwargs"),
    [
        ("c1", "conv1d", {"kernel_size": 3}),
        ("c1_act", "conv1d", {"kernel_size": 7, "activation": "relu"}),
        ("c1", "batchnorm", {}),
        ("proj", "linear", {}),
        ("ln", "batchnorm", {}),
    ],
)
def test_identity_is_exact_on_sequences(seq: Graph, after: str, op: str, kwargs: dict) -> None:
    assert_exact(seq, passes.insert_layer.run(seq, after=after, op=op, **kwargs))


def test_batchnorm_identity_inverts_its_statistics(cnn: Graph) -> None:
    g = passes.insert_layer(cnn, after="bn", op="batchnorm")
    p = g.params
    assert torch.allclose(
        p["bn_batchnorm.weight"], torch.sqrt(p["bn_batchnorm.running_var"] + 1e-5)
    )
    assert torch.equal(p["bn_batchnorm.bias"], p["bn_batchnorm.running_mean"])


@pytest.mark.parametrize(
    ("graph_name", "after", "op", "activation"),
    [
        ("cnn", "bn", "conv2d", "gelu"),
        ("cnn", "stem", "batchnorm", "silu"),
        ("cnn", "fc", "linear", None),
        ("cnn", "fc", "linear", "sigmoid"),
        ("seq", "c1", "conv1d", "tanh"),
        ("seq", "proj", "layernorm", None),
        ("seq", "ln", "layernorm", "relu"),
    ],
)
def test_residual_is_exact(
    request: pytest.FixtureRequest, graph_name: str, after: str, op: str, activation: str | None
) -> None:
    g = request.getfixturevalue(graph_name)
    for init in ("identity", "zero"):
        result = passes.insert_layer.run(
            g, after=after, op=op, init=init, activation=activation, residual=True
        )
        assert_exact(g, result)


# ---- inits that change the function are reported as such ---------------------------------


@pytest.mark.parametrize("init", ["gauss", "uniform"])
def test_random_init_is_reported(cnn: Graph, init: str) -> None:
    result = passes.insert_layer.run(cnn, after="fc", op="linear", init=init, activation="gelu")
    assert_changed(cnn, result, f"init '{init}'")
    w = result.graph.params["fc_linear.weight"]
    bound = (3 / 6) ** 0.5
    assert w.abs().max() <= bound if init == "uniform" else w.std() > 0.1


def test_random_residual_is_reported(cnn: Graph) -> None:
    result = passes.insert_layer.run(cnn, after="act", op="conv2d", init="gauss", residual=True)
    assert_changed(cnn, result, "residual branch's last layer is random")


def test_zero_init_is_reported(cnn: Graph) -> None:
    result = passes.insert_layer.run(cnn, after="fc", op="linear", init="zero")
    assert_changed(cnn, result, "outputs zeros")


def test_seed_decides_random_weights(cnn: Graph) -> None:
    def weight(seed: int) -> torch.Tensor:
        g = passes.insert_layer(cnn, after="fc", op="linear", init="gauss", seed=seed)
        return g.params["fc_linear.weight"]

    assert torch.equal(weight(3), weight(3))
    assert not torch.equal(weight(3), weight(4))


# ---- the non-negativity proof --------------------------------------------------------------


def test_nonnegative_proof(cnn: Graph) -> None:
    assert [is_nonnegative(cnn, v) for v in ("image", "stem", "bn", "act", "pool", "fc")] == [
        False,
        False,
        False,
        True,
        True,
        False,
    ]
    nodes = [
        {"name": "r", "op": "relu", "inputs": ["x"]},
        {"name": "s", "op": "sigmoid", "inputs": ["x"]},
        {"name": "t", "op": "tanh", "inputs": ["x"]},
        {"name": "rs", "op": "add", "inputs": ["r", "s"]},
        {"name": "rt", "op": "add", "inputs": ["r", "t"]},
        {"name": "cat", "op": "concat", "inputs": ["rs", "s"]},
        {"name": "prod", "op": "mul", "inputs": ["cat", "cat"]},
        {"name": "mix", "op": "concat", "inputs": ["prod", "rt"]},
    ]
    g = build(nodes, {"x": {"shape": ["batch", 3]}}, {"y": "mix"})
    proven = {n.name for n in g.nodes if is_nonnegative(g, n.name)}
    assert proven == {"r", "s", "rs", "cat", "prod"}


# ---- one test per refusal ----------------------------------------------------------------


def refuse(graph: Graph, match: str, **kwargs: Any) -> PassError:
    with pytest.raises(PassError, match=match) as info:
        passes.insert_layer(graph, **kwargs)
    assert info.value.reason.startswith("insert_layer: ")
    return info.value


def test_refuses_unknown_op(cnn: Graph) -> None:
    err = refuse(cnn, r"unknown op \(did you mean 'conv2d'\?\)", after="act", op="conv2")
    assert err.field == "op"


def test_refuses_unknown_init(cnn: Graph) -> None:
    refuse(cnn, "unknown init", after="act", op="conv2d", init="net2net")


def test_refuses_unknown_activation(cnn: Graph) -> None:
    refuse(cnn, r"unknown activation \(did you mean 'relu'\?\)", after="act", op="conv2d",
           activation="rleu")  # fmt: skip


def test_refuses_unknown_value(cnn: Graph) -> None:
    err = refuse(cnn, "no such value", after="nowhere", op="linear")
    assert err.node == "nowhere" and err.field == "after"


def test_refuses_an_op_of_the_wrong_rank(cnn: Graph) -> None:
    err = refuse(cnn, "conv2d needs an input of rank 4", after="fc", op="conv2d")
    assert err.node == "fc_conv2d"


def test_refuses_a_non_float_value() -> None:
    nodes = [
        {"name": "emb", "op": "embedding", "inputs": ["ids"], "num_embeddings": 9,
         "embedding_dim": 4},
    ]  # fmt: skip
    g = build(nodes, {"ids": {"shape": ["batch", 5], "dtype": "int64"}}, {"y": "emb"})
    refuse(g, "needs a float input", after="ids", op="layernorm", residual=True)


def test_refuses_a_symbolic_width() -> None:
    g = build(
        [{"name": "r", "op": "relu", "inputs": ["x"]}], {"x": {"shape": [2, "n"]}}, {"y": "r"}
    )
    refuse(g, "cannot build the linear layer", after="r", op="linear")


def test_refuses_an_even_kernel(cnn: Graph) -> None:
    err = refuse(cnn, "even kernel", after="act", op="conv2d", kernel_size=4, residual=True)
    assert err.field == "kernel_size"


def test_refuses_kernel_size_for_a_linear(cnn: Graph) -> None:
    refuse(cnn, "kernel_size applies to conv layers", after="fc", op="linear", kernel_size=3)


def test_refuses_layernorm_identity(seq: Graph) -> None:
    err = refuse(seq, "layernorm has no identity", after="proj", op="layernorm")
    assert "residual=True" in err.expected


def test_refuses_relu_after_an_unproven_value(cnn: Graph) -> None:
    err = refuse(cnn, "not proven non-negative", after="bn", op="conv2d", activation="relu")
    assert err.field == "activation"


def test_refuses_an_activation_that_is_never_the_identity(cnn: Graph) -> None:
    refuse(cnn, "gelu is not the identity", after="act", op="conv2d", activation="gelu")
