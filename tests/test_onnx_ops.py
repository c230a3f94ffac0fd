"""Every op exported alone (several attribute variants each): checker and onnxruntime parity."""

from __future__ import annotations

from typing import Any

import onnx
import pytest
import torch

from grow_ir.backends.onnx import DEFAULT_OPSET, MAX_OPSET, MIN_OPSET, to_onnx
from grow_ir.backends.onnx_check import check_model, check_parity
from grow_ir.backends.onnx_ops import EMIT
from grow_ir.ir import OPS, Graph, Node, TensorType, initialize, verify
from grow_ir.probes import randomize_norms

IMG = {"x": TensorType(("batch", 4, 7, 6))}
SIG = {"x": TensorType(("batch", 4, 9))}
SEQ = {"x": TensorType(("batch", "seq", 8))}
VEC = {"x": TensorType(("batch", 6))}
TOK = {"x": TensorType(("batch", "seq"), "int64")}

Case = tuple[str, dict[str, TensorType], str, dict[str, Any], int]


def case(name: str, inputs: dict[str, TensorType], op: str, arity: int = 1, **attrs: Any) -> Case:
    """A test case: ``op`` with ``attrs`` reading ``arity`` values derived from ``x``
    (or, when ``inputs`` holds more than ``x``, reading ``x`` and those inputs: operands
    of other shapes, for broadcasting)."""
    return (name, inputs, op, attrs, arity)


def operands(*shapes: tuple) -> dict[str, TensorType]:
    """Inputs ``x, x1, x2...`` of the given shapes (float32)."""
    return {("x" if i == 0 else f"x{i}"): TensorType(s) for i, s in enumerate(shapes)}


SE = operands(("batch", 4, 7, 6), ("batch", 4, 1, 1))  # a squeeze-excitation gate
SCALE = operands(("batch", "seq", 8), (8,))  # layer scale


CASES: list[Case] = [
    case("linear-2d", VEC, "linear", out_features=5),
    case("linear-3d", SEQ, "linear", out_features=5),
    case("linear-nobias-2d", VEC, "linear", out_features=3, bias=False),
    case("linear-nobias-3d", SEQ, "linear", out_features=3, bias=False),
    case("linear-1d", {"x": TensorType((6,))}, "linear", out_features=2),
    case("linear-3d-wide", SEQ, "linear", out_features=300),  # MatMul + Add, not a Gemm
    case("conv1d", SIG, "conv1d", out_channels=5, kernel_size=3),
    case("conv1d-stride-pad", SIG, "conv1d", out_channels=2, kernel_size=3, stride=2, padding=1),
    case(
        "conv1d-same-dil", SIG, "conv1d", out_channels=4, kernel_size=3, padding="same", dilation=2
    ),
    case(
        "conv1d-groups-nobias", SIG, "conv1d", out_channels=6, kernel_size=1, groups=2, bias=False
    ),
    case("conv2d", IMG, "conv2d", out_channels=3, kernel_size=3),
    case(
        "conv2d-rect",
        IMG,
        "conv2d",
        out_channels=3,
        kernel_size=[3, 1],
        stride=[2, 1],
        padding=[1, 0],
    ),
    case("conv2d-same", IMG, "conv2d", out_channels=5, kernel_size=3, padding="same", dilation=2),
    case(
        "conv2d-valid-groups",
        IMG,
        "conv2d",
        out_channels=4,
        kernel_size=2,
        padding="valid",
        groups=4,
    ),
    case("conv2d-nobias", IMG, "conv2d", out_channels=2, kernel_size=1, bias=False),
    case("batchnorm-2d", VEC, "batchnorm"),
    case("batchnorm-3d", SIG, "batchnorm", eps=0.001),
    case("batchnorm-4d", IMG, "batchnorm", momentum=None),
    case("batchnorm-noaffine", IMG, "batchnorm", affine=False),
    case("layernorm", SEQ, "layernorm"),
    case("layernorm-2d-eps", VEC, "layernorm", eps=0.01),
    case("layernorm-nobias", SEQ, "layernorm", bias=False),
    case("layernorm-noaffine", SEQ, "layernorm", elementwise_affine=False),
    case("rmsnorm", SEQ, "rmsnorm"),
    case("rmsnorm-2d-eps", VEC, "rmsnorm", eps=1e-6),
    case("rmsnorm-noaffine", SEQ, "rmsnorm", elementwise_affine=False),
    case("embedding", TOK, "embedding", num_embeddings=11, embedding_dim=4),
    case("embedding-scaled", TOK, "embedding", num_embeddings=11, embedding_dim=4, scale=2.5),
    case(
        "embedding-1d-pad",
        {"x": TensorType(("batch",), "int64")},
        "embedding",
        num_embeddings=7,
        embedding_dim=3,
        padding_idx=0,
    ),
    case("attention", SEQ, "attention", num_heads=2),
    case("attention-causal", SEQ, "attention", num_heads=4, causal=True),
    case("attention-1head-nobias", SEQ, "attention", num_heads=1, bias=False),
    case(
        "attention-dropout-causal-nobias",
        SEQ,
        "attention",
        num_heads=2,
        dropout=0.3,
        causal=True,
        bias=False,
    ),
    case("attention-wide-heads", {"x": TensorType(("batch", "seq", 32))}, "attention", num_heads=2),
    case(
        "attention-wide-causal-static-seq",
        {"x": TensorType(("batch", 5, 96))},
        "attention",
        num_heads=4,
        causal=True,
    ),
    case("attention-static-seq", {"x": TensorType((2, 5, 8))}, "attention", num_heads=2),
    case("attention-head-dim", SEQ, "attention", num_heads=3, head_dim=5, causal=True),
    case(
        "attention-wide-head-dim",
        {"x": TensorType(("batch", "seq", 8))},
        "attention",
        num_heads=2,
        head_dim=24,
    ),
    case("attention-gqa", SEQ, "attention", num_heads=4, num_kv_heads=2, causal=True),
    case("attention-mqa-nobias", SEQ, "attention", num_heads=4, num_kv_heads=1, bias=False),
    case("attention-qk-norm", SEQ, "attention", num_heads=2, qk_norm_eps=1e-6),
    case(
        "attention-partial-rotary",
        SEQ,
        "attention",
        num_heads=2,
        head_dim=8,
        rope_theta=10000.0,
        rotary_dim=4,
        causal=True,
    ),
    case(
        "attention-qwen3",
        SEQ,
        "attention",
        num_heads=4,
        num_kv_heads=2,
        head_dim=6,
        rope_theta=1000000.0,
        qk_norm_eps=1e-6,
        causal=True,
        bias=False,
    ),
    case("attention-rotary", SEQ, "attention", num_heads=2, rope_theta=10000.0),
    case(
        "attention-llama",
        {"x": TensorType(("batch", "seq", 16))},
        "attention",
        num_heads=4,
        num_kv_heads=2,
        rope_theta=500.0,
        causal=True,
        bias=False,
    ),
    case("relu", IMG, "relu"),
    case("gelu", SEQ, "gelu"),
    case("gelu-tanh", SEQ, "gelu", approximate="tanh"),
    case("silu", VEC, "silu"),
    case("hardtanh", IMG, "hardtanh"),
    case("relu6", IMG, "relu6"),
    case("hardswish", IMG, "hardswish"),
    case("hardsigmoid", SEQ, "hardsigmoid"),
    case("leaky_relu", VEC, "leaky_relu", negative_slope=0.2),
    case("elu", SEQ, "elu", alpha=0.5),
    case("tanh", SEQ, "tanh"),
    case("sigmoid", IMG, "sigmoid"),
    case("identity", VEC, "identity"),
    case("dropout", SEQ, "dropout", p=0.5),
    case("softmax-last", SEQ, "softmax"),
    case("softmax-channels", IMG, "softmax", dim=1),
    case("softmax-batch", VEC, "softmax", dim=0),
    case("log_softmax-last", SEQ, "log_softmax"),
    case("log_softmax-channels", IMG, "log_softmax", dim=1),
    case("log_softmax-batch", VEC, "log_softmax", dim=0),
    case("maxpool2d", IMG, "maxpool2d", kernel_size=2),
    case(
        "maxpool2d-ceil-pad", IMG, "maxpool2d", kernel_size=3, stride=2, padding=1, ceil_mode=True
    ),
    case(
        "maxpool2d-ceil-dil",
        IMG,
        "maxpool2d",
        kernel_size=2,
        stride=3,
        padding=1,
        dilation=2,
        ceil_mode=True,
    ),
    case("maxpool2d-rect", IMG, "maxpool2d", kernel_size=[3, 2], stride=[1, 2]),
    case("avgpool2d", IMG, "avgpool2d", kernel_size=2),
    case("avgpool2d-pad", IMG, "avgpool2d", kernel_size=3, stride=1, padding=1),
    case(
        "avgpool2d-ceil-incl", IMG, "avgpool2d", kernel_size=2, stride=3, padding=1, ceil_mode=True
    ),
    case(  # ceil mode adds a window on the width: to_onnx pads explicitly, counted
        "avgpool2d-ceil-incl-extra",
        IMG,
        "avgpool2d",
        kernel_size=3,
        stride=2,
        padding=1,
        ceil_mode=True,
    ),
    case(
        "avgpool2d-ceil-excl",
        IMG,
        "avgpool2d",
        kernel_size=3,
        stride=2,
        padding=1,
        ceil_mode=True,
        count_include_pad=False,
    ),
    case("global_avgpool-4d", IMG, "global_avgpool"),
    case("adaptive_avgpool2d-1", IMG, "adaptive_avgpool2d", output_size=1),
    case("adaptive_avgpool2d-7x2", IMG, "adaptive_avgpool2d", output_size=[7, 2]),
    case("adaptive_avgpool2d-bins", IMG, "adaptive_avgpool2d", output_size=[4, 4]),
    case("adaptive_avgpool2d-bins-width", IMG, "adaptive_avgpool2d", output_size=[7, 5]),
    case("adaptive_avgpool2d-bins-height", IMG, "adaptive_avgpool2d", output_size=[3, 6]),
    case("adaptive_avgpool2d-enlarge", IMG, "adaptive_avgpool2d", output_size=[9, 13]),
    case("global_avgpool-3d", SIG, "global_avgpool"),
    case("conv_transpose2d", IMG, "conv_transpose2d", out_channels=3, kernel_size=2, stride=2),
    case(
        "conv_transpose2d-pad-groups-nobias",
        IMG,
        "conv_transpose2d",
        out_channels=6,
        kernel_size=[3, 2],
        stride=[2, 3],
        padding=[1, 0],
        output_padding=[1, 2],
        groups=2,
        bias=False,
        dilation=[1, 2],
    ),
    case("upsample-nearest-2", IMG, "upsample", scale_factor=2),
    case("upsample-nearest-size", IMG, "upsample", size=[9, 13]),
    case("upsample-bilinear", IMG, "upsample", mode="bilinear", scale_factor=[1.5, 2.0]),
    case("upsample-bilinear-size", IMG, "upsample", mode="bilinear", size=[14, 5]),
    case(
        "upsample-bilinear-corners",
        IMG,
        "upsample",
        mode="bilinear",
        scale_factor=2,
        align_corners=True,
    ),
    case("stochastic_depth", IMG, "stochastic_depth", p=0.2),
    case("stochastic_depth-batch", SEQ, "stochastic_depth", p=0.5, mode="batch"),
    case("flatten", IMG, "flatten"),
    case("flatten-middle", IMG, "flatten", start_dim=1, end_dim=2),
    case("flatten-tail", IMG, "flatten", start_dim=2),
    case("flatten-all-known", {"x": TensorType((3, 2, 4))}, "flatten", start_dim=0),
    case(
        "flatten-symbolic-tail",
        {"x": TensorType(("batch", 2, 3, "seq"))},
        "flatten",
        start_dim=1,
        end_dim=2,
    ),
    case(
        "flatten-two-symbolic-tail",
        {"x": TensorType(("batch", 2, 3, "seq", "seq"))},
        "flatten",
        start_dim=1,
        end_dim=2,
    ),
    case("add", IMG, "add", arity=2),
    case("add-3", SEQ, "add", arity=3),
    case("mul", VEC, "mul", arity=2),
    case("mul-3", IMG, "mul", arity=3),
    case("concat", IMG, "concat", arity=2),
    case("mix", VEC, "mix", arity=2),
    case("mix-3", IMG, "mix", arity=3),
    case("concat-last-3", SEQ, "concat", arity=3, dim=-1),
    case("add-broadcast", SCALE, "add", arity=2),
    case("add-broadcast-3", operands(("batch", 4, 7, 6), (4, 1, 1), (6,)), "add", arity=3),
    case("mul-gate", SE, "mul", arity=2),
    case("mul-scale", SCALE, "mul", arity=2),
    case("mul-gate-first", operands(("batch", 4, 1, 1), ("batch", 4, 7, 6)), "mul", arity=2),
    case("sub", SEQ, "sub", arity=2),
    case("sub-broadcast", SE, "sub", arity=2),
    case("div", VEC, "div", arity=2),
    case("div-broadcast", SCALE, "div", arity=2),
    case("mean-spatial", IMG, "mean", dim=[2, 3]),
    case("mean-keep", IMG, "mean", dim=[-1, -2], keepdim=True),
    case("mean-seq", SEQ, "mean", dim=1),
    case("sum-last", SEQ, "sum", dim=-1),
    case("sum-keep", IMG, "sum", dim=[1], keepdim=True),
    case("reshape", {"x": TensorType(("batch", 4, 6))}, "reshape", shape=[-1, 2, 12]),
    case("reshape-known", {"x": TensorType((3, 4, 6))}, "reshape", shape=[6, 12]),
    case("unflatten", SEQ, "unflatten", dim=-1, sizes=[2, 4]),
    case("unflatten-minus1", IMG, "unflatten", dim=1, sizes=[2, -1]),
    case("transpose", SEQ, "transpose", dim0=1, dim1=2),
    case("permute", IMG, "permute", dims=[0, 2, 3, 1]),
    case("squeeze", {"x": TensorType(("batch", 4, 1, 1))}, "squeeze", dim=[2, 3]),
    case("squeeze-one", {"x": TensorType(("batch", 1, 6))}, "squeeze", dim=1),
    case("unsqueeze", SEQ, "unsqueeze", dim=1),
    case("unsqueeze-last", VEC, "unsqueeze", dim=-1),
    case("select", {"x": TensorType(("batch", 5, 8))}, "select", dim=1, index=0),
    case("select-last", IMG, "select", dim=-1, index=-1),
    case("slice", {"x": TensorType(("batch", 5, 8))}, "slice", dim=1, start=1),
    case("slice-step", IMG, "slice", dim=3, start=1, end=5, step=2),
    case("slice-negative", IMG, "slice", dim=2, start=-3, end=-1),
    case("pad", IMG, "pad", pad=[1, 0, 0, 1]),
    case("pad-value", SIG, "pad", pad=[2, 3], value=-1.5),
    case("pad-nothing-scalar", {"x": TensorType(())}, "pad", pad=[]),  # a rank-0 input
    case("matmul", {"x": TensorType(("batch", 3, 5, 5))}, "matmul", arity=2),
    case("matmul-heads", operands(("batch", 2, 5, 4), ("batch", 2, 4, 3)), "matmul", arity=2),
    case("matmul-broadcast", operands(("batch", 2, 5, 4), (4, 6)), "matmul", arity=2),
    case("positions", TOK, "positions"),
    case("positions-row", SEQ, "positions", batch_axis=True),
    case("positions-padded", TOK, "positions", padding_idx=1),
    case("parameter", VEC, "parameter", arity=0, shape=[2, 3]),
    case("parameter-batch", SEQ, "parameter", shape=[1, 1, 8]),
]


def single_op_graph(inputs: dict[str, TensorType], op: str, attrs: dict, arity: int) -> Graph:
    """``x -> op -> y``; a join reads ``x`` and ``arity - 1`` transformed copies of it
    (tanh, sigmoid, ...) so that its inputs differ."""
    nodes = []
    args = list(inputs) if len(inputs) > 1 else ["x"][:arity]
    for i, act in enumerate(["tanh", "sigmoid", "relu"][: arity - len(args)]):
        nodes.append(Node(f"pre{i}", act, {}, ("x",)))
        args.append(f"pre{i}")
    nodes.append(Node("op", op, attrs, tuple(args)))
    graph = Graph(inputs=inputs, nodes=nodes, outputs={"y": "op"}, name=f"single_{op}")
    return verify(randomize_mix(randomize_norms(initialize(graph, seed=3), seed=4)))


def randomize_mix(graph: Graph) -> Graph:
    """Unequal weights for every ``mix`` node (they start equal)."""
    gen = torch.Generator().manual_seed(5)
    params = {
        k: torch.randn(v.shape, generator=gen).to(v.dtype) if k.endswith(".alpha") else v
        for k, v in graph.params.items()
    }
    return graph.replace(params=params)


def test_emission_table_covers_every_op_exactly() -> None:
    assert set(EMIT) == set(OPS)


def test_cases_cover_every_op() -> None:
    assert {case[2] for case in CASES} == set(OPS)


@pytest.mark.parametrize(
    ("inputs", "op", "attrs", "arity"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_op_matches_torch(inputs: dict, op: str, attrs: dict, arity: int) -> None:
    graph = single_op_graph(inputs, op, attrs, arity)
    model = to_onnx(graph)
    check_model(model)
    assert check_parity(graph, model) <= 1e-5
    names = {n.name for n in model.graph.node}
    assert "op" in names
    # every ONNX node is an IR node, a part of one (op/qkv) or derived from a parameter
    assert {name.split("/")[0] for name in names} <= {"y", *graph.node_map, *graph.params}


@pytest.mark.parametrize(
    ("embed", "heads", "transposed"), [(8, 2, True), (32, 2, False), (96, 4, False)]
)
@pytest.mark.parametrize("causal", [False, True])
def test_attention_with_biases_matches(
    embed: int, heads: int, transposed: bool, causal: bool
) -> None:
    # nn.MultiheadAttention starts with zero biases: draw them, so that the scaled
    # in-projection bias and the out-projection bias are checked too
    seq = {"x": TensorType(("batch", "seq", embed))}
    graph = single_op_graph(seq, "attention", {"num_heads": heads, "causal": causal}, 1)
    gen = torch.Generator().manual_seed(6)
    params = {
        k: torch.randn(v.shape, generator=gen) if k.endswith("bias") else v
        for k, v in graph.params.items()
    }
    graph = graph.replace(params=params)
    model = to_onnx(graph)
    names = {n.name for n in model.graph.node}
    assert ("op/heads_t" in names) == transposed  # heads of up to 8: transposed layout
    assert ("op/qkv_gemm" in names) == (3 * embed <= 256)  # narrow projections: Gemm
    check_model(model)
    assert check_parity(graph, model) <= 1e-5


@pytest.mark.parametrize("opset", [17, 18, 19])
@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_before_opset_20_is_the_formula(opset: int, approximate: str) -> None:
    graph = single_op_graph(SEQ, "gelu", {"approximate": approximate}, 1)
    model = to_onnx(graph, opset=opset)
    ops = {n.op_type for n in model.graph.node}
    assert "Gelu" not in ops and ("Erf" in ops) == (approximate == "none")
    check_model(model)
    assert check_parity(graph, model) <= 1e-5


def test_gelu_from_opset_20_is_one_op() -> None:
    graph = single_op_graph(SEQ, "gelu", {"approximate": "tanh"}, 1)
    model = to_onnx(graph, opset=DEFAULT_OPSET)
    gelu = [n for n in model.graph.node if n.op_type == "Gelu"]
    assert [onnx.helper.get_attribute_value(a) for a in gelu[0].attribute] == [b"tanh"]


def all_ops_graph() -> Graph:
    """One graph that uses every op: image, token and vector branches joined at the end."""
    t = TensorType
    nodes = [
        Node("conv", "conv2d", {"out_channels": 4, "kernel_size": 3, "padding": 1}, ("image",)),
        Node("bn", "batchnorm", {}, ("conv",)),
        Node("act", "relu", {}, ("bn",)),
        Node("mp", "maxpool2d", {"kernel_size": 2, "ceil_mode": True}, ("act",)),
        Node("ap", "avgpool2d", {"kernel_size": 3, "stride": 1, "padding": 1}, ("mp",)),
        Node("sm", "softmax", {"dim": 1}, ("ap",)),
        Node("cat", "concat", {}, ("ap", "sm")),
        Node("up", "upsample", {"scale_factor": 2, "mode": "bilinear"}, ("cat",)),
        Node(
            "deconv",
            "conv_transpose2d",
            {"out_channels": 4, "kernel_size": 2, "stride": 2},
            ("up",),
        ),
        Node("skip", "stochastic_depth", {"p": 0.2}, ("deconv",)),
        Node("squeeze", "adaptive_avgpool2d", {"output_size": 1}, ("skip",)),
        Node("gap", "global_avgpool", {}, ("squeeze",)),
        Node("flat", "flatten", {}, ("mp",)),
        Node("fc_img", "linear", {"out_features": 8}, ("flat",)),
        Node("emb", "embedding", {"num_embeddings": 9, "embedding_dim": 8}, ("tokens",)),
        Node("ln", "layernorm", {}, ("emb",)),
        Node("attn", "attention", {"num_heads": 2, "causal": True}, ("ln",)),
        Node("drop", "dropout", {"p": 0.1}, ("attn",)),
        Node("res", "add", {}, ("drop", "emb")),
        Node("rms", "rmsnorm", {"eps": 1e-6}, ("res",)),
        Node("gelu", "gelu", {"approximate": "tanh"}, ("rms",)),
        Node("sig", "conv1d", {"out_channels": 3, "kernel_size": 3, "padding": 1}, ("signal",)),
        Node("sig_pool", "global_avgpool", {}, ("sig",)),
        Node("gate", "sigmoid", {}, ("sig_pool",)),
        Node("hid", "linear", {"out_features": 8}, ("gap",)),
        Node("hid_act", "silu", {}, ("hid",)),
        Node("clamp", "relu6", {}, ("fc_img",)),
        Node("clamp2", "hardtanh", {"min_val": -0.5, "max_val": 2.0}, ("clamp",)),
        Node("hswish", "hardswish", {}, ("clamp2",)),
        Node("hsig", "hardsigmoid", {}, ("hswish",)),
        Node("leaky", "leaky_relu", {"negative_slope": 0.2}, ("hsig",)),
        Node("elu", "elu", {"alpha": 0.5}, ("leaky",)),
        Node("hid_t", "tanh", {}, ("elu",)),
        Node("joined", "mul", {}, ("hid_act", "hid_t")),
        Node("mixed", "mix", {}, ("joined", "hid_t", "hid_act")),
        Node("same", "identity", {}, ("mixed",)),
        Node("head", "linear", {"out_features": 3}, ("same",)),
        Node("gated", "mul", {}, ("head", "gate")),
        # shape ops: a chain from the image branch, positions and learned tensors
        Node("padded", "pad", {"pad": [1, 0, 0, 1]}, ("ap",)),
        Node("perm", "permute", {"dims": [0, 2, 3, 1]}, ("padded",)),
        Node("tr", "transpose", {"dim0": 1, "dim1": 3}, ("perm",)),
        Node("cut", "slice", {"dim": 2, "start": 1}, ("tr",)),
        Node("first", "select", {"dim": 2, "index": 0}, ("cut",)),
        Node("avg", "mean", {"dim": [2]}, ("first",)),
        Node("square", "reshape", {"shape": [-1, 2, 2]}, ("avg",)),
        Node("mm", "matmul", {}, ("square", "square")),
        Node("unsq", "unsqueeze", {"dim": 1}, ("mm",)),
        Node("sq", "squeeze", {"dim": 1}, ("unsq",)),
        Node("total", "sum", {"dim": [2]}, ("sq",)),
        Node("split", "unflatten", {"dim": 1, "sizes": [2, 1]}, ("total",)),
        Node("split_sig", "sigmoid", {}, ("split",)),
        Node("ratio", "div", {}, ("split", "split_sig")),
        Node("diff", "sub", {}, ("ratio", "split")),
        Node("pos", "positions", {"batch_axis": True}, ("tokens",)),
        Node("pos_emb", "embedding", {"num_embeddings": 16, "embedding_dim": 8}, ("pos",)),
        Node("with_pos", "add", {}, ("gelu", "pos_emb")),
        Node("gamma", "parameter", {"shape": [8]}, ()),
        Node("scaled", "mul", {}, ("with_pos", "gamma")),
        Node("sig_tok", "parameter", {"shape": [1, 2, 1]}, ("signal",)),
        Node("sig_cat", "concat", {"dim": 2}, ("signal", "sig_tok")),
        Node("sig2", "conv1d", {"out_channels": 2, "kernel_size": 3}, ("sig_cat",)),
        Node("seq_head", "linear", {"out_features": 2}, ("scaled",)),
        Node("seq_logp", "log_softmax", {}, ("seq_head",)),
    ]
    graph = Graph(
        inputs={
            "image": t(("batch", 3, 6, 6)),
            "tokens": t(("batch", "seq"), "int64"),
            "signal": t(("batch", 2, 5)),
        },
        nodes=nodes,
        outputs={
            "logits": "gated",
            "lm": "seq_logp",
            "moved": "diff",
            "sig2": "sig2",
        },
        name="all_ops",
    )
    return verify(randomize_mix(randomize_norms(initialize(graph, seed=1), seed=2)))


def test_all_ops_graph_uses_every_op() -> None:
    assert {n.op for n in all_ops_graph().nodes} == set(OPS)


@pytest.mark.parametrize("opset", range(MIN_OPSET, MAX_OPSET + 1))
def test_every_opset_in_range_runs(opset: int) -> None:
    graph = all_ops_graph()
    model = to_onnx(graph, opset=opset)
    assert [(o.domain, o.version) for o in model.opset_import] == [("", opset)]
    check_model(model)
    assert check_parity(graph, model) <= 1e-5
