"""Widening through the ops that move, cut or broadcast axes (grow_ir/ir/ops/shape.py and
broadcasting arithmetic): the channel walk follows the axis where it stays whole, widening
is exact there (checked numerically, both initialisations), and it refuses with the op's
reason where the channels would be reduced, cut, split or contracted."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from grow_ir.errors import PassError
from grow_ir.ir import Graph, Node, TensorType, initialize, verify
from grow_ir.passes import channel_group, widen, widenable
from grow_ir.passes.channels import Role
from tests.test_widen import widen_checked


def graph_of(inputs: dict[str, tuple], nodes: list[tuple], output: str = "head") -> Graph:
    """A verified, initialised graph from ``(name, op, attrs, inputs)`` tuples."""
    types = {k: TensorType(v) for k, v in inputs.items()}
    ns = [Node(n, op, attrs, tuple(ins)) for n, op, attrs, ins in nodes]
    return verify(initialize(Graph(types, ns, {"y": output}), seed=3))


def conv(name: str, src: str, width: int) -> tuple:
    return (name, "conv2d", {"out_channels": width, "kernel_size": 3, "padding": 1}, [src])


def lin(name: str, src: str, width: int) -> tuple:
    return (name, "linear", {"out_features": width}, [src])


IMG = {"x": ("batch", 3, 6, 6)}
SEQ = {"x": ("batch", 5, 6)}


def squeeze_excitation() -> Graph:
    """``x * sigmoid(fc(relu(fc(mean(x)))))[N, C, 1, 1]``: the gate's channels are x's."""
    return graph_of(
        IMG,
        [
            conv("c1", "x", 4),
            ("se_mean", "mean", {"dim": [2, 3], "keepdim": True}, ["c1"]),
            ("se_fc1", "conv2d", {"out_channels": 2, "kernel_size": 1}, ["se_mean"]),
            ("se_act", "relu", {}, ["se_fc1"]),
            ("se_fc2", "conv2d", {"out_channels": 4, "kernel_size": 1}, ["se_act"]),
            ("se_gate", "sigmoid", {}, ["se_fc2"]),
            ("gated", "mul", {}, ["c1", "se_gate"]),
            conv("c2", "gated", 3),
            ("pool", "mean", {"dim": [2, 3]}, ["c2"]),
            lin("head", "pool", 2),
        ],
    )


def layer_scale() -> Graph:
    """ConvNeXt's block: permute to channels-last, linear, ``* gamma[C]``, permute back."""
    return graph_of(
        IMG,
        [
            conv("c1", "x", 4),
            ("to_last", "permute", {"dims": [0, 2, 3, 1]}, ["c1"]),
            lin("fc", "to_last", 4),
            ("gamma", "parameter", {"shape": [4]}, []),
            ("scaled", "mul", {}, ["fc", "gamma"]),
            ("to_first", "permute", {"dims": [0, 3, 1, 2]}, ["scaled"]),
            ("res", "add", {}, ["to_first", "c1"]),
            ("pool", "mean", {"dim": [-1, -2]}, ["res"]),
            lin("head", "pool", 2),
        ],
    )


def class_token() -> Graph:
    """ViT: a class token concatenated along the sequence, a positional table added, then
    ``x[:, 0]`` read by the head."""
    return graph_of(
        SEQ,
        [
            lin("embed", "x", 4),
            ("cls", "parameter", {"shape": [1, 1, 4]}, ["x"]),
            ("tokens", "concat", {"dim": 1}, ["cls", "embed"]),
            ("table", "parameter", {"shape": [1, 6, 4]}, []),
            ("posed", "add", {}, ["tokens", "table"]),
            ("rest", "slice", {"dim": 1, "start": 1}, ["posed"]),
            ("first", "select", {"dim": 1, "index": 0}, ["posed"]),
            ("rest_mean", "mean", {"dim": [1]}, ["rest"]),
            ("both", "add", {}, ["first", "rest_mean"]),
            lin("head", "both", 2),
        ],
    )


def heads() -> Graph:
    """Channels carried whole through unflatten / transpose / reshape / squeeze /
    unsqueeze / pad on other axes, and matmul's batch and output axes."""
    return graph_of(
        SEQ,
        [
            lin("proj", "x", 4),
            ("split", "unflatten", {"dim": 1, "sizes": [5, 1]}, ["proj"]),
            ("sq", "squeeze", {"dim": 2}, ["split"]),
            ("t", "transpose", {"dim0": 1, "dim1": 2}, ["sq"]),
            ("padded", "pad", {"pad": [1, 1]}, ["t"]),
            ("us", "unsqueeze", {"dim": 1}, ["padded"]),
            ("back", "reshape", {"shape": [-1, 4, 7]}, ["us"]),
            ("w", "parameter", {"shape": [7, 3]}, []),
            ("mm", "matmul", {}, ["back", "w"]),
            ("flat", "flatten", {}, ["mm"]),
            lin("head", "flat", 2),
        ],
    )


def gpt_positions() -> Graph:
    """GPT-2's embeddings: token embedding plus a position embedding of 0..L-1."""
    types = {"ids": TensorType(("batch", "seq"), "int64")}
    nodes = [
        Node("wte", "embedding", {"num_embeddings": 9, "embedding_dim": 4}, ("ids",)),
        Node("pos", "positions", {"batch_axis": True}, ("ids",)),
        Node("wpe", "embedding", {"num_embeddings": 8, "embedding_dim": 4}, ("pos",)),
        Node("h", "add", {}, ("wte", "wpe")),
        Node("ln", "gelu", {}, ("h",)),
        Node("head", "linear", {"out_features": 3}, ("ln",)),
    ]
    return verify(initialize(Graph(types, nodes, {"y": "head"}), seed=3))


CASES: list[tuple[str, Callable[[], Graph], str, int]] = [
    ("squeeze-excitation gate", squeeze_excitation, "c1", 7),
    ("squeeze-excitation inside", squeeze_excitation, "se_fc1", 5),
    ("layer scale through permutes", layer_scale, "c1", 6),
    ("class token and positional table", class_token, "embed", 7),
    ("unflatten transpose pad reshape matmul", heads, "proj", 6),
    ("positions beside embeddings", gpt_positions, "wte", 6),
]


@pytest.mark.parametrize("init", ["net2net", "zero"])
@pytest.mark.parametrize(
    ("make", "node", "width"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_widening_through_shape_ops_is_exact(
    make: Callable[[], Graph], node: str, width: int, init: str
) -> None:
    graph = make()
    result = widen_checked(graph, node=node, width=width, init=init)
    assert result.graph.types[node] != graph.types[node]


def test_the_gate_and_the_scale_join_the_group() -> None:
    group = channel_group(squeeze_excitation(), "c1")
    assert {"se_fc2", "gated", "c2"} <= {m.node for m in group.members}
    assert Role.PRODUCER in group.member("se_fc2").roles
    scale = channel_group(layer_scale(), "c1")
    assert Role.PER_CHANNEL in scale.member("gamma").roles
    assert {"fc", "to_last", "to_first"} <= {m.node for m in scale.members}
    token = channel_group(class_token(), "embed")
    assert dict(token.member("cls").width_attrs) == {"shape[2]": 1}
    assert dict(token.member("table").width_attrs) == {"shape[2]": 1}


def test_widened_shape_attributes_follow() -> None:
    wide = widen(heads(), node="proj", width=6)
    assert wide.node("back").attrs.shape == (-1, 6, 7)
    assert tuple(wide.params["w.weight"].shape) == (7, 3)  # the matmul's K is not the group
    token = widen(class_token(), node="embed", width=7)
    assert token.node("cls").attrs.shape == (1, 1, 7)
    assert tuple(token.params["table.weight"].shape) == (1, 6, 7)


def refused(nodes: list[tuple], inputs: dict[str, tuple] = SEQ) -> Graph:
    return graph_of(inputs, nodes)


REFUSALS: list[tuple[str, Graph, str, str]] = [
    (
        "mean over the channels",
        refused([lin("fc", "x", 4), ("m", "mean", {"dim": [-1]}, ["fc"]), lin("head", "m", 2)]),
        "fc",
        "means over axis 2",
    ),
    (
        "sum over the channels",
        refused([lin("fc", "x", 4), ("s", "sum", {"dim": [2]}, ["fc"]), lin("head", "s", 2)]),
        "fc",
        "sums over axis 2",
    ),
    (
        "reshape merging the channels",
        refused(
            [lin("fc", "x", 4), ("r", "reshape", {"shape": [-1, 20]}, ["fc"]), lin("head", "r", 2)]
        ),
        "fc",
        "splits or merges axis 2",
    ),
    (
        "unflatten splitting the channels",
        refused(
            [
                lin("fc", "x", 4),
                ("u", "unflatten", {"dim": 2, "sizes": [2, 2]}, ["fc"]),
                lin("head", "u", 2),
            ]
        ),
        "fc",
        "splits axis 2",
    ),
    (
        "select on the channels",
        refused(
            [
                lin("fc", "x", 4),
                ("s", "select", {"dim": 2, "index": 1}, ["fc"]),
                lin("head", "s", 2),
            ]
        ),
        "fc",
        "selects one entry of axis 2",
    ),
    (
        "slice of the channels",
        refused(
            [
                lin("fc", "x", 4),
                ("s", "slice", {"dim": -1, "end": 2}, ["fc"]),
                lin("head", "s", 2),
            ]
        ),
        "fc",
        "slices axis 2",
    ),
    (
        "pad of the channels",
        refused([lin("fc", "x", 4), ("p", "pad", {"pad": [0, 1]}, ["fc"]), lin("head", "p", 2)]),
        "fc",
        "pads axis 2",
    ),
    (
        "matmul contracting the channels",
        refused(
            [
                lin("fc", "x", 4),
                ("w", "parameter", {"shape": [4, 3]}, []),
                ("mm", "matmul", {}, ["fc", "w"]),
                lin("head", "mm", 2),
            ]
        ),
        "fc",
        "contracts axis 2",
    ),
    (
        "a one-channel producer broadcast",
        refused(
            [
                lin("fc", "x", 1),
                lin("other", "x", 4),
                ("m", "mul", {}, ["fc", "other"]),
                lin("head", "m", 2),
            ]
        ),
        "fc",
        "broadcasts axis 2 of size 1",
    ),
]


@pytest.mark.parametrize(
    ("graph", "node", "match"), [r[1:] for r in REFUSALS], ids=[r[0] for r in REFUSALS]
)
def test_refusals_name_the_op_and_the_reason(graph: Graph, node: str, match: str) -> None:
    with pytest.raises(PassError, match=match):
        channel_group(graph, node)
    assert node not in widenable(graph)
