"""Small hand-built graphs, one per channel rule (MLPs, batchnorm, residual adds, concat,
flatten, pooling and gates, embedding and layernorm, conv1d, depthwise and grouped convs),
shared by the widen and prune tests."""

from __future__ import annotations

from grow_ir.ir import Graph, Node, TensorType, initialize, verify


def build(inputs: dict, nodes: list[tuple], outputs: dict, seed: int = 0) -> Graph:
    """A verified, initialised graph from ``{input: shape or (shape, dtype)}`` and node
    tuples ``(name, op, attrs, inputs[, share])``."""
    types = {
        k: TensorType(*v) if isinstance(v[-1], str) and v[-1] == "int64" else TensorType(v)
        for k, v in inputs.items()
    }
    ns = [
        Node(n[0], n[1], n[2], inputs=tuple(n[3]), share=n[4] if len(n) > 4 else None)
        for n in nodes
    ]
    return verify(initialize(Graph(types, ns, outputs), seed))


# ---- graphs -------------------------------------------------------------------------------


def mlp(bn: bool = False) -> Graph:
    nodes = [("fc1", "linear", {"out_features": 6}, ["x"])]
    if bn:
        nodes.append(("bn1", "batchnorm", {}, ["fc1"]))
    nodes += [
        ("act", "relu", {}, [nodes[-1][0]]),
        ("fc2", "linear", {"out_features": 3}, ["act"]),
    ]
    return build({"x": ("batch", 5)}, nodes, {"y": "fc2"})


def conv_bn_conv() -> Graph:
    return build(
        {"img": ("batch", 3, 6, 6)},
        [
            ("c1", "conv2d", {"out_channels": 4, "kernel_size": 3, "padding": 1}, ["img"]),
            ("bn", "batchnorm", {}, ["c1"]),
            ("act", "relu", {}, ["bn"]),
            ("c2", "conv2d", {"out_channels": 5, "kernel_size": 3}, ["act"]),
        ],
        {"y": "c2"},
    )


def residual() -> Graph:
    conv = {"out_channels": 4, "kernel_size": 3, "padding": 1}
    return build(
        {"img": ("batch", 3, 6, 6)},
        [
            ("stem", "conv2d", conv, ["img"]),
            ("stem_bn", "batchnorm", {}, ["stem"]),
            ("stem_act", "relu", {}, ["stem_bn"]),
            ("b1_conv", "conv2d", conv, ["stem_act"]),
            ("b1_bn", "batchnorm", {}, ["b1_conv"]),
            ("b1_sum", "add", {}, ["b1_bn", "stem_act"]),
            ("b1_act", "relu", {}, ["b1_sum"]),
            ("pool", "global_avgpool", {}, ["b1_act"]),
            ("head", "linear", {"out_features": 3}, ["pool"]),
        ],
        {"logits": "head"},
    )


def concat() -> Graph:
    return build(
        {"x": ("batch", 5)},
        [
            ("a", "linear", {"out_features": 4}, ["x"]),
            ("a_act", "relu", {}, ["a"]),
            ("b", "linear", {"out_features": 6}, ["x"]),
            ("b_act", "tanh", {}, ["b"]),
            ("cat", "concat", {"dim": 1}, ["a_act", "b_act"]),
            ("head", "linear", {"out_features": 3}, ["cat"]),
        ],
        {"y": "head"},
    )


def flatten() -> Graph:
    return build(
        {"img": ("batch", 2, 4, 4)},
        [
            ("c1", "conv2d", {"out_channels": 4, "kernel_size": 3, "padding": 1}, ["img"]),
            ("act", "relu", {}, ["c1"]),
            ("flat", "flatten", {}, ["act"]),
            ("head", "linear", {"out_features": 3}, ["flat"]),
        ],
        {"y": "head"},
    )


def gap() -> Graph:
    return build(
        {"img": ("batch", 2, 5, 5)},
        [
            ("c1", "conv2d", {"out_channels": 4, "kernel_size": 3}, ["img"]),
            ("act", "silu", {}, ["c1"]),
            ("pool", "global_avgpool", {}, ["act"]),
            ("head", "linear", {"out_features": 3}, ["pool"]),
        ],
        {"y": "head"},
    )


def pools_gate() -> Graph:
    """maxpool, avgpool, dropout and a gating mul (two producers joined by mul)."""
    conv = {"out_channels": 4, "kernel_size": 3, "padding": 1}
    return build(
        {"img": ("batch", 2, 8, 8)},
        [
            ("c1", "conv2d", conv, ["img"]),
            ("mp", "maxpool2d", {"kernel_size": 2}, ["c1"]),
            ("ap", "avgpool2d", {"kernel_size": 2}, ["mp"]),
            ("drop", "dropout", {"p": 0.3}, ["ap"]),
            ("c2", "conv2d", conv, ["img"]),
            ("c2_ap", "avgpool2d", {"kernel_size": 4}, ["c2"]),
            ("gate", "sigmoid", {}, ["c2_ap"]),
            ("gated", "mul", {}, ["drop", "gate"]),
            ("flat", "flatten", {}, ["gated"]),
            ("head", "linear", {"out_features": 3}, ["flat"]),
        ],
        {"y": "head"},
    )


def embedding_ln() -> Graph:
    return build(
        {"tok": (("batch", "seq"), "int64")},
        [
            ("emb", "embedding", {"num_embeddings": 11, "embedding_dim": 4}, ["tok"]),
            ("ln", "layernorm", {}, ["emb"]),
            ("head", "linear", {"out_features": 3}, ["ln"]),
        ],
        {"y": "head"},
    )


def embedding_relu() -> Graph:
    return build(
        {"tok": (("batch", "seq"), "int64")},
        [
            (
                "emb",
                "embedding",
                {"num_embeddings": 11, "embedding_dim": 4, "padding_idx": 0},
                ["tok"],
            ),
            ("act", "gelu", {}, ["emb"]),
            ("head", "linear", {"out_features": 3}, ["act"]),
        ],
        {"y": "head"},
    )


def conv1d() -> Graph:
    return build(
        {"seq": ("batch", 3, 10)},
        [
            ("c1", "conv1d", {"out_channels": 4, "kernel_size": 3}, ["seq"]),
            ("bn", "batchnorm", {}, ["c1"]),
            ("act", "relu", {}, ["bn"]),
            ("c2", "conv1d", {"out_channels": 2, "kernel_size": 3, "padding": "same"}, ["act"]),
        ],
        {"y": "c2"},
    )


def grouped() -> Graph:
    """ResNeXt-like: a 1x1 conv read by two grouped 3x3 convs (groups 3 and 2) whose
    outputs are summed, then a grouped 1x1 conv (groups 2) and a plain head."""
    three = {"kernel_size": 3, "padding": 1}
    return build(
        {"img": ("batch", 2, 5, 5)},
        [
            ("c1", "conv2d", {"out_channels": 12, "kernel_size": 1}, ["img"]),
            ("bn1", "batchnorm", {}, ["c1"]),
            ("act1", "relu", {}, ["bn1"]),
            ("g3", "conv2d", {"out_channels": 12, "groups": 3, **three}, ["act1"]),
            ("g2", "conv2d", {"out_channels": 12, "groups": 2, **three}, ["act1"]),
            ("sum", "add", {}, ["g3", "g2"]),
            ("bn2", "batchnorm", {}, ["sum"]),
            ("act2", "relu", {}, ["bn2"]),
            ("c3", "conv2d", {"out_channels": 4, "kernel_size": 1, "groups": 2}, ["act2"]),
            ("head", "conv2d", {"out_channels": 3, "kernel_size": 1}, ["c3"]),
        ],
        {"y": "head"},
    )


def depthwise() -> Graph:
    return build(
        {"img": ("batch", 2, 6, 6)},
        [
            ("c1", "conv2d", {"out_channels": 4, "kernel_size": 1}, ["img"]),
            ("bn1", "batchnorm", {}, ["c1"]),
            ("act1", "relu", {}, ["bn1"]),
            (
                "dw",
                "conv2d",
                {"out_channels": 4, "kernel_size": 3, "padding": 1, "groups": 4},
                ["act1"],
            ),
            ("bn2", "batchnorm", {}, ["dw"]),
            ("act2", "relu", {}, ["bn2"]),
            ("pw", "conv2d", {"out_channels": 3, "kernel_size": 1}, ["act2"]),
        ],
        {"y": "pw"},
    )
