"""Every op, lowered with to_torch, against torch.nn.functional applied by hand to the same
parameters: bitwise equal (attention: within 1e-6), in eval and in train mode."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from grow_ir.backends.torch import to_torch
from grow_ir.ir import OPS, Graph, Node, TensorType, initialize

Tensors = list[torch.Tensor]
Params = dict[str, torch.Tensor]


def single(op: str, *types: TensorType, **attrs: Any) -> Graph:
    """A graph of one ``op`` node ``n`` reading inputs ``x0, x1...``, with random values
    in every float parameter (so that zero biases or unit scales cannot hide a bug)."""
    inputs = {f"x{i}": t for i, t in enumerate(types)}
    graph = initialize(Graph(inputs, [Node("n", op, attrs, tuple(inputs))], {"y": "n"}), seed=0)
    gen = torch.Generator().manual_seed(1)
    params = {}
    for key, t in graph.params.items():
        if key.endswith("running_var"):
            params[key] = torch.rand(t.shape, generator=gen) + 0.5
        elif t.is_floating_point():
            params[key] = torch.randn(t.shape, generator=gen).to(t.dtype)
        else:
            params[key] = t
    return graph.replace(params=params)


def inputs_for(graph: Graph, seed: int = 0) -> Tensors:
    """Random float inputs; int64 inputs index the node's embedding table."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for t in graph.inputs.values():
        if t.is_float:
            out.append(torch.randn(t.shape, generator=gen).to(t.torch_dtype))
        else:
            out.append(
                torch.randint(0, graph.nodes[0].attrs.num_embeddings, t.shape, generator=gen)
            )
    return out


def p(graph: Graph) -> Params:
    """The node's parameters by local name (``weight``, ``out_proj.bias``...)."""
    return {k.removeprefix("n."): v for k, v in graph.params.items()}


f32 = TensorType


# ---- ops without train/eval difference --------------------------------------------------

Case = tuple[str, tuple[TensorType, ...], dict[str, Any], Callable[[Tensors, Params], torch.Tensor]]

CASES: list[Case] = [
    (
        "linear",
        (f32((3, 5)),),
        {"out_features": 4},
        lambda x, w: F.linear(x[0], w["weight"], w["bias"]),
    ),
    (
        "linear",
        (f32((2, 3, 5)),),
        {"out_features": 4, "bias": False},
        lambda x, w: F.linear(x[0], w["weight"]),
    ),
    (
        "linear",
        (f32((5,)),),
        {"out_features": 2},
        lambda x, w: F.linear(x[0], w["weight"], w["bias"]),
    ),
    (
        "conv1d",
        (f32((2, 4, 11)),),
        {
            "out_channels": 6,
            "kernel_size": 3,
            "stride": 2,
            "padding": 1,
            "dilation": 2,
            "groups": 2,
        },
        lambda x, w: F.conv1d(x[0], w["weight"], w["bias"], 2, 1, 2, 2),
    ),
    (
        "conv1d",
        (f32((2, 3, 9)),),
        {"out_channels": 4, "kernel_size": 5, "padding": "same", "bias": False},
        lambda x, w: F.conv1d(x[0], w["weight"], None, 1, "same"),
    ),
    (
        "conv2d",
        (f32((2, 3, 9, 8)),),
        {"out_channels": 4, "kernel_size": 3, "padding": 1},
        lambda x, w: F.conv2d(x[0], w["weight"], w["bias"], 1, 1),
    ),
    (
        "conv2d",
        (f32((2, 4, 10, 9)),),
        {
            "out_channels": 6,
            "kernel_size": [3, 2],
            "stride": [2, 1],
            "padding": [1, 0],
            "groups": 2,
        },
        lambda x, w: F.conv2d(x[0], w["weight"], w["bias"], (2, 1), (1, 0), 1, 2),
    ),
    (
        "conv2d",
        (f32((1, 2, 9, 9)),),
        {"out_channels": 2, "kernel_size": 3, "padding": "same", "dilation": 2},
        lambda x, w: F.conv2d(x[0], w["weight"], w["bias"], 1, "same", 2),
    ),
    (
        "conv2d",
        (f32((1, 2, 7, 6)),),
        {"out_channels": 3, "kernel_size": 3, "padding": "valid", "bias": False},
        lambda x, w: F.conv2d(x[0], w["weight"], None, 1, "valid"),
    ),
    (
        "conv2d",
        (f32((2, 4, 6, 6)),),
        {"out_channels": 4, "kernel_size": 3, "groups": 4, "padding": 2, "dilation": [1, 2]},
        lambda x, w: F.conv2d(x[0], w["weight"], w["bias"], 1, 2, (1, 2), 4),
    ),
    (
        "layernorm",
        (f32((2, 3, 6)),),
        {"eps": 1e-3},
        lambda x, w: F.layer_norm(x[0], (6,), w["weight"], w["bias"], 1e-3),
    ),
    (
        "layernorm",
        (f32((4, 6)),),
        {"bias": False},
        lambda x, w: F.layer_norm(x[0], (6,), w["weight"], None, 1e-5),
    ),
    (
        "layernorm",
        (f32((4, 6)),),
        {"elementwise_affine": False},
        lambda x, w: F.layer_norm(x[0], (6,), None, None, 1e-5),
    ),
    (
        "rmsnorm",
        (f32((2, 3, 6)),),
        {"eps": 1e-6},
        lambda x, w: F.rms_norm(x[0], (6,), w["weight"], 1e-6),
    ),
    (
        "rmsnorm",
        (f32((4, 6)),),
        {"elementwise_affine": False},
        lambda x, w: F.rms_norm(x[0], (6,), None, None),
    ),
    (
        "embedding",
        (TensorType((3, 4), "int64"),),
        {"num_embeddings": 7, "embedding_dim": 5},
        lambda x, w: F.embedding(x[0], w["weight"]),
    ),
    (
        "embedding",
        (TensorType((3, 4), "int64"),),
        {"num_embeddings": 7, "embedding_dim": 5, "padding_idx": -2},
        lambda x, w: F.embedding(x[0], w["weight"], padding_idx=5),
    ),
    ("relu", (f32((3, 4)),), {}, lambda x, w: F.relu(x[0])),
    ("gelu", (f32((3, 4)),), {}, lambda x, w: F.gelu(x[0])),
    (
        "gelu",
        (f32((3, 4)),),
        {"approximate": "tanh"},
        lambda x, w: F.gelu(x[0], approximate="tanh"),
    ),
    ("silu", (f32((3, 4)),), {}, lambda x, w: F.silu(x[0])),
    ("hardtanh", (f32((3, 4)),), {}, lambda x, w: F.hardtanh(x[0])),
    ("relu6", (f32((3, 4)),), {}, lambda x, w: F.relu6(x[0])),
    (
        "hardtanh",
        (f32((3, 4)),),
        {"min_val": -0.25, "max_val": 0.5},
        lambda x, w: F.hardtanh(x[0], -0.25, 0.5),
    ),
    ("hardswish", (f32((3, 4)),), {}, lambda x, w: F.hardswish(x[0])),
    ("hardsigmoid", (f32((3, 4)),), {}, lambda x, w: F.hardsigmoid(x[0])),
    ("leaky_relu", (f32((3, 4)),), {}, lambda x, w: F.leaky_relu(x[0])),
    (
        "leaky_relu",
        (f32((3, 4)),),
        {"negative_slope": 0.2},
        lambda x, w: F.leaky_relu(x[0], 0.2),
    ),
    ("elu", (f32((3, 4)),), {"alpha": 0.5}, lambda x, w: F.elu(x[0], 0.5)),
    ("tanh", (f32((3, 4)),), {}, lambda x, w: torch.tanh(x[0])),
    ("sigmoid", (f32((3, 4)),), {}, lambda x, w: torch.sigmoid(x[0])),
    ("identity", (f32((3, 4)),), {}, lambda x, w: x[0]),
    ("softmax", (f32((2, 3, 4)),), {}, lambda x, w: F.softmax(x[0], dim=-1)),
    ("softmax", (f32((2, 3, 4)),), {"dim": 1}, lambda x, w: F.softmax(x[0], dim=1)),
    ("log_softmax", (f32((2, 3, 4)),), {}, lambda x, w: F.log_softmax(x[0], dim=-1)),
    ("log_softmax", (f32((2, 3, 4)),), {"dim": 0}, lambda x, w: F.log_softmax(x[0], dim=0)),
    ("maxpool2d", (f32((2, 3, 8, 8)),), {"kernel_size": 2}, lambda x, w: F.max_pool2d(x[0], 2)),
    (
        "maxpool2d",
        (f32((1, 2, 9, 7)),),
        {"kernel_size": 3, "stride": 2, "padding": 1, "dilation": 2, "ceil_mode": True},
        lambda x, w: F.max_pool2d(x[0], 3, 2, 1, 2, ceil_mode=True),
    ),
    (
        "maxpool2d",
        (f32((1, 2, 9, 8)),),
        {"kernel_size": [3, 2], "stride": [2, 3], "padding": [1, 0]},
        lambda x, w: F.max_pool2d(x[0], (3, 2), (2, 3), (1, 0)),
    ),
    ("avgpool2d", (f32((2, 3, 8, 8)),), {"kernel_size": 2}, lambda x, w: F.avg_pool2d(x[0], 2)),
    (
        "avgpool2d",
        (f32((1, 2, 7, 7)),),
        {"kernel_size": 3, "stride": 2, "padding": 1, "ceil_mode": True},
        lambda x, w: F.avg_pool2d(x[0], 3, 2, 1, ceil_mode=True),
    ),
    (
        "avgpool2d",
        (f32((1, 2, 7, 8)),),
        {
            "kernel_size": 3,
            "stride": 2,
            "padding": 1,
            "ceil_mode": True,
            "count_include_pad": False,
        },
        lambda x, w: F.avg_pool2d(x[0], 3, 2, 1, ceil_mode=True, count_include_pad=False),
    ),
    ("global_avgpool", (f32((2, 3, 4, 5)),), {}, lambda x, w: x[0].mean((2, 3))),
    (
        "adaptive_avgpool2d",
        (f32((2, 3, 4, 5)),),
        {"output_size": 1},
        lambda x, w: F.adaptive_avg_pool2d(x[0], 1),
    ),
    (
        "adaptive_avgpool2d",
        (f32((2, 3, 6, 4)),),
        {"output_size": [3, 1]},
        lambda x, w: F.adaptive_avg_pool2d(x[0], (3, 1)),
    ),
    (
        "adaptive_avgpool2d",
        (f32((2, 3, 5, 2)),),
        {"output_size": [3, 7]},
        lambda x, w: F.adaptive_avg_pool2d(x[0], (3, 7)),
    ),
    ("global_avgpool", (f32((2, 3, 5)),), {}, lambda x, w: x[0].mean(2)),
    (
        "conv_transpose2d",
        (f32((2, 3, 5, 4)),),
        {"out_channels": 4, "kernel_size": 2, "stride": 2},
        lambda x, w: F.conv_transpose2d(x[0], w["weight"], w["bias"], 2),
    ),
    (
        "conv_transpose2d",
        (f32((2, 4, 5, 4)),),
        {
            "out_channels": 6,
            "kernel_size": [3, 2],
            "stride": [2, 3],
            "padding": [1, 0],
            "output_padding": [1, 2],
            "groups": 2,
            "bias": False,
            "dilation": [1, 2],
        },
        lambda x, w: F.conv_transpose2d(x[0], w["weight"], None, (2, 3), (1, 0), (1, 2), 2, (1, 2)),
    ),
    (
        "upsample",
        (f32((2, 3, 4, 5)),),
        {"scale_factor": 2},
        lambda x, w: F.interpolate(x[0], scale_factor=2, mode="nearest"),
    ),
    (
        "upsample",
        (f32((2, 3, 4, 5)),),
        {"size": [7, 3]},
        lambda x, w: F.interpolate(x[0], size=(7, 3), mode="nearest"),
    ),
    (
        "upsample",
        (f32((2, 3, 4, 5)),),
        {"scale_factor": [1.5, 2.0], "mode": "bilinear"},
        lambda x, w: F.interpolate(x[0], scale_factor=(1.5, 2.0), mode="bilinear"),
    ),
    (
        "upsample",
        (f32((2, 3, 4, 5)),),
        {"size": 9, "mode": "bilinear", "align_corners": True},
        lambda x, w: F.interpolate(x[0], size=9, mode="bilinear", align_corners=True),
    ),
    ("flatten", (f32((2, 3, 4, 5)),), {}, lambda x, w: torch.flatten(x[0], 1)),
    (
        "flatten",
        (f32((2, 3, 4, 5)),),
        {"start_dim": 0, "end_dim": 2},
        lambda x, w: x[0].reshape(24, 5),
    ),
    ("add", (f32((2, 3)),) * 2, {}, lambda x, w: x[0] + x[1]),
    ("add", (f32((2, 3)),) * 3, {}, lambda x, w: x[0] + x[1] + x[2]),
    ("mul", (f32((2, 3)),) * 2, {}, lambda x, w: x[0] * x[1]),
    ("mul", (f32((2, 3)),) * 3, {}, lambda x, w: x[0] * x[1] * x[2]),
    ("concat", (f32((2, 3, 4)), f32((2, 5, 4))), {}, lambda x, w: torch.cat(x, 1)),
    ("concat", (f32((2, 3)), f32((2, 1)), f32((2, 2))), {"dim": -1}, lambda x, w: torch.cat(x, -1)),
    ("add", (f32((2, 3, 4)), f32((4,))), {}, lambda x, w: x[0] + x[1]),
    ("mul", (f32((2, 3, 4, 4)), f32((2, 3, 1, 1))), {}, lambda x, w: x[0] * x[1]),
    ("sub", (f32((2, 3)), f32((2, 1))), {}, lambda x, w: torch.sub(x[0], x[1])),
    ("div", (f32((2, 3)), f32((3,))), {}, lambda x, w: torch.div(x[0], x[1])),
    ("mean", (f32((2, 3, 4, 5)),), {"dim": [2, 3]}, lambda x, w: torch.mean(x[0], (2, 3))),
    (
        "mean",
        (f32((2, 3, 4)),),
        {"dim": 1, "keepdim": True},
        lambda x, w: x[0].mean(1, keepdim=True),
    ),
    ("sum", (f32((2, 3, 4)),), {"dim": [-1]}, lambda x, w: torch.sum(x[0], -1)),
    ("reshape", (f32((2, 3, 4)),), {"shape": [2, -1]}, lambda x, w: x[0].reshape(2, 12)),
    (
        "unflatten",
        (f32((2, 3, 8)),),
        {"dim": -1, "sizes": [2, 4]},
        lambda x, w: x[0].unflatten(-1, (2, 4)),
    ),
    (
        "transpose",
        (f32((2, 3, 4)),),
        {"dim0": 1, "dim1": -1},
        lambda x, w: x[0].transpose(1, 2),
    ),
    (
        "permute",
        (f32((2, 3, 4, 5)),),
        {"dims": [0, 2, 3, 1]},
        lambda x, w: x[0].permute(0, 2, 3, 1),
    ),
    ("squeeze", (f32((2, 3, 1, 1)),), {"dim": [2, 3]}, lambda x, w: x[0].squeeze((2, 3))),
    ("unsqueeze", (f32((2, 3)),), {"dim": 1}, lambda x, w: x[0].unsqueeze(1)),
    ("select", (f32((2, 5, 4)),), {"dim": 1, "index": 0}, lambda x, w: x[0][:, 0]),
    ("slice", (f32((2, 5, 4)),), {"dim": 1, "start": 1}, lambda x, w: x[0][:, 1:]),
    (
        "slice",
        (f32((2, 5, 7)),),
        {"dim": -1, "start": -5, "end": 6, "step": 2},
        lambda x, w: x[0][..., -5:6:2],
    ),
    ("pad", (f32((2, 3, 4, 4)),), {"pad": [0, 1, 0, 1]}, lambda x, w: F.pad(x[0], (0, 1, 0, 1))),
    (
        "pad",
        (f32((2, 3, 4)),),
        {"pad": [2, 1], "value": 0.5},
        lambda x, w: F.pad(x[0], (2, 1), value=0.5),
    ),
    ("matmul", (f32((2, 3, 5)), f32((5, 4))), {}, lambda x, w: torch.matmul(x[0], x[1])),
    ("matmul", (f32((2, 2, 3, 5)), f32((2, 2, 5, 4))), {}, lambda x, w: x[0] @ x[1]),
    ("positions", (f32((2, 5, 3)),), {}, lambda x, w: torch.arange(5)),
    ("positions", (f32((2, 5, 3)),), {"batch_axis": True}, lambda x, w: torch.arange(5)[None]),
    ("parameter", (), {"shape": [2, 3]}, lambda x, w: w["weight"]),
    (
        "parameter",
        (f32((3, 5, 4)),),
        {"shape": [1, 1, 4]},
        lambda x, w: w["weight"].expand(3, -1, -1),
    ),
]


@pytest.mark.parametrize("mode", ["eval", "train"])
@pytest.mark.parametrize("case", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_op_matches_functional(case: Case, mode: str) -> None:
    op, types, attrs, reference = case
    graph = single(op, *types, **attrs)
    module = to_torch(graph).train(mode == "train")
    x = inputs_for(graph)
    out = module(*x)
    want = reference(x, p(graph))
    assert out.shape == want.shape == graph.types["n"].concrete({})
    assert out.dtype == want.dtype == graph.types["n"].torch_dtype
    assert torch.equal(out, want)


# ---- batchnorm: eval uses running statistics, train uses and updates batch statistics -----

BN_SHAPES = [(4, 3), (4, 3, 5), (2, 3, 4, 5)]


@pytest.mark.parametrize("shape", BN_SHAPES, ids=["1d-rank2", "1d-rank3", "2d"])
@pytest.mark.parametrize("affine", [True, False])
def test_batchnorm_eval(shape: tuple[int, ...], affine: bool) -> None:
    graph = single("batchnorm", f32(shape), eps=1e-3, affine=affine)
    (x,) = inputs_for(graph)
    w = p(graph)
    want = F.batch_norm(
        x, w["running_mean"], w["running_var"], w.get("weight"), w.get("bias"), False, 0.1, 1e-3
    )
    assert torch.equal(to_torch(graph).eval()(x), want)


@pytest.mark.parametrize("shape", BN_SHAPES, ids=["1d-rank2", "1d-rank3", "2d"])
@pytest.mark.parametrize("momentum", [0.3, None])
def test_batchnorm_train_uses_and_updates_batch_statistics(
    shape: tuple[int, ...], momentum: float | None
) -> None:
    graph = single("batchnorm", f32(shape), momentum=momentum)
    module = to_torch(graph).train()
    (x,) = inputs_for(graph)
    w = p(graph)
    mean, var = w["running_mean"].clone(), w["running_var"].clone()
    # nn.BatchNorm with momentum=None averages cumulatively: factor 1/num_batches_tracked.
    factor = 1.0 if momentum is None else momentum
    want = F.batch_norm(x, mean, var, w["weight"], w["bias"], True, factor, 1e-5)
    assert torch.equal(module(x), want)
    state = module.state_dict()
    assert torch.equal(state["n.running_mean"], mean)
    assert torch.equal(state["n.running_var"], var)
    assert state["n.num_batches_tracked"].item() == 1


# ---- attention ----------------------------------------------------------------------------


def attention_by_hand(x: torch.Tensor, w: Params, heads: int, causal: bool) -> torch.Tensor:
    """Multi-head self-attention written out: softmax(q kᵀ / √d + mask) v per head."""
    n, length, e = x.shape
    d = e // heads
    qkv = F.linear(x, w["in_proj_weight"], w.get("in_proj_bias"))
    q, k, v = (t.reshape(n, length, heads, d).transpose(1, 2) for t in qkv.chunk(3, dim=-1))
    scores = q @ k.transpose(-1, -2) / math.sqrt(d)
    if causal:
        future = torch.ones(length, length, dtype=torch.bool).triu(1)
        scores = scores.masked_fill(future, float("-inf"))
    y = (scores.softmax(-1) @ v).transpose(1, 2).reshape(n, length, e)
    return F.linear(y, w["out_proj.weight"], w.get("out_proj.bias"))


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("bias", [True, False])
def test_attention_matches_multihead_attention(causal: bool, bias: bool) -> None:
    graph = single("attention", f32((2, 5, 8)), num_heads=2, causal=causal, bias=bias)
    (x,) = inputs_for(graph)
    ref = nn.MultiheadAttention(8, 2, bias=bias, batch_first=True)
    ref.load_state_dict(p(graph))
    mask = torch.ones(5, 5, dtype=torch.bool).triu(1) if causal else None
    want = ref(x, x, x, need_weights=False, attn_mask=mask, is_causal=causal)[0]
    out = to_torch(graph)(x)
    torch.testing.assert_close(out, want, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(out, attention_by_hand(x, p(graph), 2, causal), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("causal", [False, True])
def test_attention_in_float64_matches_the_written_out_formula(causal: bool) -> None:
    graph = single("attention", f32((2, 6, 12)), num_heads=3, causal=causal)
    module = to_torch(graph).to(torch.float64)
    (x,) = inputs_for(graph)
    w = {k: v.double() for k, v in p(graph).items()}
    want = attention_by_hand(x.double(), w, 3, causal)
    torch.testing.assert_close(module(x.double()), want, rtol=0, atol=1e-12)


def test_attention_dropout_is_random_in_train_mode_only() -> None:
    graph = single("attention", f32((2, 5, 8)), num_heads=2, dropout=0.5)
    plain = to_torch(graph.replace(nodes=[graph.nodes[0].replace(attrs={"num_heads": 2})]))
    module = to_torch(graph)
    (x,) = inputs_for(graph)
    assert torch.equal(module.eval()(x), plain.eval()(x))
    module.train()
    a, b = module(x), module(x)
    assert not torch.equal(a, b)


def test_attention_causal_output_ignores_the_future() -> None:
    graph = single("attention", f32((1, 6, 8)), num_heads=2, causal=True)
    module = to_torch(graph)
    (x,) = inputs_for(graph)
    changed = x.clone()
    changed[:, 4:] += 1.0
    assert torch.equal(module(x)[:, :4], module(changed)[:, :4])
    assert not torch.equal(module(x)[:, 4:], module(changed)[:, 4:])


# ---- dropout and embedding in train mode ---------------------------------------------------


def test_dropout_is_identity_in_eval_and_torch_dropout_in_train() -> None:
    graph = single("dropout", f32((4, 50)), p=0.3)
    module = to_torch(graph)
    (x,) = inputs_for(graph)
    assert torch.equal(module.eval()(x), x)
    module.train()
    torch.manual_seed(5)
    out = module(x)
    torch.manual_seed(5)
    assert torch.equal(out, F.dropout(x, 0.3, training=True))
    assert not torch.equal(out, module(x))
    kept = out != 0
    torch.testing.assert_close(out[kept], x[kept] / 0.7)


@pytest.mark.parametrize(("rate", "keep"), [(0.0, True), (1.0, False)])
def test_dropout_extremes_in_train(rate: float, keep: bool) -> None:
    graph = single("dropout", f32((3, 4)), p=rate)
    (x,) = inputs_for(graph)
    out = to_torch(graph).train()(x)
    assert torch.equal(out, x if keep else torch.zeros_like(x))


def test_embedding_padding_row_gets_no_gradient() -> None:
    graph = single(
        "embedding", TensorType((2, 6), "int64"), num_embeddings=4, embedding_dim=3, padding_idx=1
    )
    module = to_torch(graph)
    idx = torch.tensor([[0, 1, 2, 3, 1, 1], [1, 1, 0, 0, 2, 3]])
    module(idx).sum().backward()
    grad = module.get_submodule("n").weight.grad
    assert torch.equal(grad[1], torch.zeros(3))
    assert torch.equal(grad[0], torch.full((3,), 3.0))


@pytest.mark.parametrize("mode", ["row", "batch"])
def test_stochastic_depth_is_identity_in_eval_and_torchvisions_in_train(mode: str) -> None:
    graph = single("stochastic_depth", f32((64, 3, 2)), p=0.4, mode=mode)
    module = to_torch(graph)
    (x,) = inputs_for(graph)
    assert torch.equal(module.eval()(x), x)
    module.train()
    torch.manual_seed(3)
    out = module(x)
    # torchvision.ops.stochastic_depth, written out: one Bernoulli(1 - p) draw per row
    # (per batch), scaled by 1 / (1 - p)
    torch.manual_seed(3)
    size = [64, 1, 1] if mode == "row" else [1, 1, 1]
    noise = torch.empty(size).bernoulli_(0.6).div_(0.6)
    assert torch.equal(out, x * noise)
    dropped = (out == 0).flatten(1).all(1)
    if mode == "row":
        assert 0 < int(dropped.sum()) < 64  # some rows dropped, not all
    else:
        assert bool(dropped.all()) or not bool(dropped.any())
    assert torch.equal(to_torch(single("stochastic_depth", f32((4, 3)), p=0.0)).train()(x[0]), x[0])


# ---- coverage: every op has a torch reference test ---------------------------------------

DEDICATED = {
    "batchnorm": test_batchnorm_eval,
    "attention": test_attention_matches_multihead_attention,
    "dropout": test_dropout_is_identity_in_eval_and_torch_dropout_in_train,
    "stochastic_depth": test_stochastic_depth_is_identity_in_eval_and_torchvisions_in_train,
}
"""Ops whose reference test is written out above instead of a CASES row (train/eval
differences); ``mix`` is tested against its formula in tests/test_continual_mix.py."""


def test_every_op_has_a_torch_reference_test() -> None:
    from tests import test_continual_mix

    covered = {c[0] for c in CASES} | set(DEDICATED)
    covered |= {"mix"} if test_continual_mix.test_lowering_is_the_softmax_weighted_sum else set()
    assert covered == set(OPS), f"no torch reference test: {sorted(set(OPS) - covered)}"
