"""Parameter shapes and default initialisation against the PyTorch modules: the same
names, shapes and dtypes as their state_dict, and (seed for seed) the same values."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

from grow_ir.backends.torch_modules import SelfAttention
from grow_ir.errors import GrowError
from grow_ir.ir import OPS, Graph, Node, TensorType, initialize
from grow_ir.ir.init import param_bytes

Case = tuple[str, TensorType, dict[str, Any], Callable[[], nn.Module]]

CASES: list[Case] = [
    ("linear", TensorType((2, 5)), {"out_features": 3}, lambda: nn.Linear(5, 3)),
    (
        "linear",
        TensorType((2, 4, 5)),
        {"out_features": 3, "bias": False},
        lambda: nn.Linear(5, 3, bias=False),
    ),
    (
        "conv1d",
        TensorType((2, 4, 9)),
        {"out_channels": 6, "kernel_size": 3, "groups": 2},
        lambda: nn.Conv1d(4, 6, 3, groups=2),
    ),
    (
        "conv2d",
        TensorType((2, 3, 8, 8)),
        {"out_channels": 5, "kernel_size": [3, 2]},
        lambda: nn.Conv2d(3, 5, (3, 2)),
    ),
    (
        "conv2d",
        TensorType((2, 4, 8, 8)),
        {"out_channels": 8, "kernel_size": 3, "groups": 4, "bias": False, "padding": "same"},
        lambda: nn.Conv2d(4, 8, 3, groups=4, bias=False, padding="same"),
    ),
    ("batchnorm", TensorType((4, 3)), {}, lambda: nn.BatchNorm1d(3)),
    (
        "batchnorm",
        TensorType((4, 3, 7)),
        {"affine": False},
        lambda: nn.BatchNorm1d(3, affine=False),
    ),
    (
        "batchnorm",
        TensorType((4, 3, 5, 5)),
        {"momentum": None},
        lambda: nn.BatchNorm2d(3, momentum=None),
    ),
    ("layernorm", TensorType((2, 6)), {}, lambda: nn.LayerNorm(6)),
    ("layernorm", TensorType((2, 6)), {"bias": False}, lambda: nn.LayerNorm(6, bias=False)),
    (
        "layernorm",
        TensorType((2, 6)),
        {"elementwise_affine": False},
        lambda: nn.LayerNorm(6, elementwise_affine=False),
    ),
    (
        "embedding",
        TensorType((2, 3), "int64"),
        {"num_embeddings": 9, "embedding_dim": 4},
        lambda: nn.Embedding(9, 4),
    ),
    (
        "embedding",
        TensorType((2, 3), "int64"),
        {"num_embeddings": 9, "embedding_dim": 4, "padding_idx": 2},
        lambda: nn.Embedding(9, 4, padding_idx=2),
    ),
    (
        "attention",
        TensorType((2, 5, 8)),
        {"num_heads": 2},
        lambda: nn.MultiheadAttention(8, 2, batch_first=True),
    ),
    (
        "attention",
        TensorType((2, 5, 12)),
        {"num_heads": 3, "bias": False, "causal": True},
        lambda: nn.MultiheadAttention(12, 3, bias=False, batch_first=True),
    ),
    (
        "attention",
        TensorType((2, 5, 8)),
        {"num_heads": 3, "head_dim": 5},
        lambda: SelfAttention(8, 3, head_dim=5),
    ),
]
IDS = [f"{c[0]}-{i}" for i, c in enumerate(CASES)]


def single(op: str, t: TensorType, attrs: dict[str, Any], seed: int = 0) -> Graph:
    graph = Graph({"x": t}, [Node("n", op, attrs, ("x",))], {"y": "n"})
    return initialize(graph, seed=seed)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_param_specs_match_the_torch_module_state_dict(case: Case) -> None:
    op, t, attrs, make = case
    node = Node("n", op, attrs, ("x",))
    specs = OPS[op].params(node.attrs, [t])
    state = make().state_dict()
    assert list(specs) == list(state)
    for key, spec in specs.items():
        assert spec.shape == tuple(state[key].shape), key
        assert (
            torch.empty(0, dtype=state[key].dtype).dtype == TensorType((), spec.dtype).torch_dtype
        )
        assert spec.buffer == (key not in dict(make().named_parameters())), key


@pytest.mark.parametrize("case", CASES, ids=IDS)
@pytest.mark.parametrize("seed", [0, 7])
def test_default_init_is_torchs_draw_for_draw(case: Case, seed: int) -> None:
    op, t, attrs, make = case
    graph = single(op, t, attrs, seed)
    torch.manual_seed(seed)
    state = make().state_dict()
    assert set(graph.params) == {f"n.{k}" for k in state}
    for key, want in state.items():
        assert torch.equal(graph.params[f"n.{key}"], want), key


def test_a_graph_initialises_like_its_modules_built_in_order() -> None:
    nodes = [
        Node("conv", "conv2d", {"out_channels": 4, "kernel_size": 3}, ("x",)),
        Node("bn", "batchnorm", {}, ("conv",)),
        Node("pool", "global_avgpool", {}, ("bn",)),
        Node("fc", "linear", {"out_features": 5}, ("pool",)),
        Node("head", "linear", {"out_features": 2}, ("fc",)),
    ]
    graph = initialize(Graph({"x": TensorType(("batch", 3, 6, 6))}, nodes, {"y": "head"}), seed=3)
    torch.manual_seed(3)
    modules = {
        "conv": nn.Conv2d(3, 4, 3),
        "bn": nn.BatchNorm2d(4),
        "fc": nn.Linear(4, 5),
        "head": nn.Linear(5, 2),
    }
    for name, module in modules.items():
        for key, value in module.state_dict().items():
            assert torch.equal(graph.params[f"{name}.{key}"], value), f"{name}.{key}"


def test_init_distributions_have_torchs_bounds() -> None:
    fan_in = 64
    lin = single("linear", TensorType((1, fan_in)), {"out_features": 256})
    w = lin.params["n.weight"]
    bound = 1 / math.sqrt(fan_in)
    assert w.abs().max() <= bound and w.abs().max() > 0.99 * bound
    assert abs(w.mean().item()) < 0.1 * bound
    conv = single("conv2d", TensorType((1, 4, 8, 8)), {"out_channels": 64, "kernel_size": 3})
    cb = 1 / math.sqrt(4 * 9)
    assert conv.params["n.weight"].abs().max() <= cb
    assert conv.params["n.bias"].abs().max() <= cb
    e = 32
    attn = single("attention", TensorType((1, 2, e)), {"num_heads": 4})
    xavier = math.sqrt(6 / (e + 3 * e))
    w_in = attn.params["n.in_proj_weight"]
    assert w_in.abs().max() <= xavier and w_in.abs().max() > 0.99 * xavier
    assert torch.equal(attn.params["n.in_proj_bias"], torch.zeros(3 * e))
    assert torch.equal(attn.params["n.out_proj.bias"], torch.zeros(e))
    emb = single(
        "embedding", TensorType((2,), "int64"), {"num_embeddings": 500, "embedding_dim": 40}
    )
    table = emb.params["n.weight"]
    assert abs(table.mean().item()) < 0.02 and abs(table.std().item() - 1) < 0.02


def test_initialize_is_deterministic_per_seed_and_keeps_present_params() -> None:
    t = TensorType((2, 8))
    a, b = single("linear", t, {"out_features": 4}, 5), single("linear", t, {"out_features": 4}, 5)
    other = single("linear", t, {"out_features": 4}, 6)
    for key in a.params:
        assert torch.equal(a.params[key], b.params[key])
        assert not torch.equal(a.params[key], other.params[key])
    again = initialize(a, seed=99)
    assert all(again.params[k] is a.params[k] for k in a.params)


def test_initialize_fills_only_the_missing_node() -> None:
    nodes = [
        Node("a", "linear", {"out_features": 3}, ("x",)),
        Node("b", "linear", {"out_features": 2}, ("a",)),
    ]
    full = initialize(Graph({"x": TensorType((1, 4))}, nodes, {"y": "b"}), seed=1)
    partial = full.replace(params={k: v for k, v in full.params.items() if k.startswith("a.")})
    refilled = initialize(partial, seed=1)
    assert refilled.params["a.weight"] is full.params["a.weight"]
    assert set(refilled.params) == set(full.params)


def test_initialize_refuses_absurd_sizes_without_allocating() -> None:
    graph = Graph(
        {"x": TensorType((1, 200_000))},
        [Node("n", "linear", {"out_features": 200_000}, ("x",))],
        {"y": "n"},
    )
    assert param_bytes(graph) > 8 * 2**30
    with pytest.raises(GrowError) as err:
        initialize(graph)
    assert err.value.node == "n"
