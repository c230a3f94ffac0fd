"""Transformer growth: the model width through attention (k-fold duplication and LEMON),
heads, head size, vocabulary and whole blocks, each exact where it says so.

Every graph has random values in every parameter (norm scales and shifts, attention
biases included), so that no default (a unit scale, a zero bias) can hide an error.
Preservation is measured on random probes in eval mode (``output_error``: max abs error
over max(1, |y|)); every result's origins are checked against the tensors they describe.
"""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch

from grow_ir import passes
from grow_ir.backends.onnx import to_onnx
from grow_ir.backends.torch import to_torch
from grow_ir.errors import PassError
from grow_ir.growth.optim_state import transfer_optimizer
from grow_ir.ir.graph import Graph
from grow_ir.passes import PassResult, output_error
from grow_ir.probes import random_inputs
from grow_ir.spec import load_spec
from tests.test_pass_properties import check_origin
from tests.transformer_specs import gpt2_like, llama_like

TOL = 1e-5
EXAMPLE = "specs/examples/transformer.yaml"


def randomized(graph: Graph, seed: int = 1) -> Graph:
    """``graph`` with every float parameter drawn from N(0, 0.5²) (running variances kept
    positive)."""
    gen = torch.Generator().manual_seed(seed)
    params = {}
    for key, t in graph.params.items():
        params[key] = (torch.randn(t.shape, generator=gen) * 0.5).to(t.dtype)
    return graph.replace(params=params)


def models() -> dict[str, Graph]:
    return {
        "example": randomized(load_spec(EXAMPLE)),
        "gpt2": randomized(load_spec(gpt2_like())),
        "llama": randomized(load_spec(llama_like())),
    }


MODELS = models()
STREAM = {"example": "embed", "gpt2": "wte", "llama": "embed_tokens"}


def run(name: str, graph: Graph, **kwargs: Any) -> PassResult:
    """Run pass ``name``, check its origins and that its claim matches the measurement."""
    before = {k: v.clone() for k, v in graph.params.items()}
    result = passes.PASSES[name].run(graph, **kwargs)
    for key, origin in result.origins.items():
        check_origin(key, result.graph.params[key], graph, origin)
    assert all(torch.equal(before[k], graph.params[k]) for k in before), "input changed"
    err = max(
        output_error(graph, result.graph, {}, batch=b, seed=s, grown=result.grown)
        for b, s in ((1, 0), (4, 1))
    )
    if result.preserved:
        assert err <= TOL, f"{name} claims to preserve the function; error {err:.3g}"
    else:
        assert result.reason
        assert err > TOL, f"{name} reports a change, but the error is only {err:.3g}"
    return result


# ---- the model width ---------------------------------------------------------------------


@pytest.mark.parametrize("model", list(MODELS))
@pytest.mark.parametrize(
    ("init", "factor"), [("net2net", 2), ("net2net", 3), ("lemon", 1.25), ("lemon", 2.5)]
)
def test_widen_the_residual_stream_exactly(model: str, init: str, factor: float) -> None:
    g = MODELS[model]
    old = g.types[STREAM[model]].shape[-1]
    width = int(old * factor)
    result = run("widen", g, node=STREAM[model], width=width, init=init)
    assert result.preserved
    new = result.graph
    for n in new.nodes:
        if n.op == "attention":  # the heads keep their size; only the stream grew
            assert new.types[n.name].shape[-1] == width
            assert n.attrs.head_dim == old // g.node(n.name).attrs.num_heads
        if n.op == "layernorm" and init == "lemon":
            assert math.isclose(n.attrs.eps, g.node(n.name).attrs.eps * old / width)


def test_widen_through_attention_lists_it_as_consumer_and_producer() -> None:
    group = passes.channel_group(MODELS["gpt2"], "wte")
    attn = group.member("h.block0.attn")
    assert {r.value for r in attn.roles} == {"producer", "consumer"}
    kinds = {(a.param, a.axis, a.kind) for a in attn.axes}
    assert kinds == {
        ("h.block0.attn.in_proj_weight", 1, "fan_out"),
        ("h.block0.attn.out_proj.weight", 0, "units"),
        ("h.block0.attn.out_proj.bias", 0, "units"),
    }
    assert "wpe" in group.producers  # the positional table grows with the tokens'


def test_lemon_on_the_mlp_hidden_width_is_exact_at_any_width() -> None:
    run("widen", MODELS["gpt2"], node="h.block0.fc", width=70, init="lemon")
    run("widen", MODELS["llama"], node="layers.block1.gate", width=53, init="lemon")


def test_widened_transformer_exports_to_onnx_with_parity() -> None:
    g = run("widen", MODELS["gpt2"], node="wte", width=20, init="lemon").graph
    g = run("add_heads", g, node="h.block1.attn", heads=3).graph
    inputs = random_inputs(g, batch=2, seq=6, seed=3)
    with torch.no_grad():
        want = to_torch(g).eval()(**inputs).numpy()
    session = ort.InferenceSession(to_onnx(g).SerializeToString())
    got = session.run(None, {k: v.numpy() for k, v in inputs.items()})[0]
    assert np.abs(got - want).max() <= TOL * max(1.0, float(np.abs(want).max()))


def _post_norm() -> Graph:
    spec = {
        "version": 1,
        "seed": 0,
        "inputs": {"tokens": {"shape": ["batch", "seq"], "dtype": "int64"}},
        "nodes": [
            {"name": "embed", "op": "embedding", "num_embeddings": 9, "embedding_dim": 8},
            {"name": "attn", "op": "attention", "num_heads": 2},
            {"name": "res", "op": "add", "inputs": ["embed", "attn"]},
            {"name": "ln", "op": "layernorm"},
            {"name": "fc", "op": "linear", "out_features": 8},
            {"name": "res2", "op": "add", "inputs": ["ln", "fc"]},
            {"name": "ln2", "op": "layernorm"},
            {"name": "head", "op": "linear", "out_features": 9},
        ],
        "outputs": {"logits": "head"},
    }
    return randomized(load_spec(spec))


@pytest.mark.parametrize(
    ("graph", "kwargs", "match"),
    [
        (
            "example",
            {"node": "embed", "width": 24, "init": "net2net"},
            "a multiple of the current width 16, or init 'lemon'",
        ),
        ("example", {"node": "embed", "width": 24, "init": "zero"}, "init 'lemon' (any width)"),
        (
            "post_norm",
            {"node": "embed", "width": 12, "init": "lemon"},
            "layernorm 'ln2' exact only when its input's new channels carry the mean",
        ),
    ],
)
def test_width_refusals_name_the_reason(graph: str, kwargs: dict, match: str) -> None:
    g = _post_norm() if graph == "post_norm" else MODELS[graph]
    with pytest.raises(PassError, match=re.escape(match)):
        passes.widen(g, **kwargs)


def test_lemon_refuses_a_layernorm_without_weights() -> None:
    spec = gpt2_like(tied=False)
    spec["nodes"][4] = {"name": "ln_f", "op": "layernorm", "elementwise_affine": False}
    with pytest.raises(PassError, match="rescales the weight of layernorm 'ln_f'"):
        passes.widen(load_spec(spec), node="wte", width=20, init="lemon")


def test_net2net_still_widens_a_post_norm_stream_exactly_by_multiples() -> None:
    run("widen", _post_norm(), node="embed", width=16, init="net2net")


# ---- heads, head size, vocabulary --------------------------------------------------------


@pytest.mark.parametrize("model", list(MODELS))
def test_add_heads_is_exact_and_the_new_heads_are_live(model: str) -> None:
    g = MODELS[model]
    attn = next(n for n in g.nodes if n.op == "attention")
    heads = attn.attrs.num_heads
    result = run("add_heads", g, node=attn.name, heads=heads + 2)
    node = result.graph.node(attn.name)
    assert node.attrs.num_heads == heads + 2
    # the new heads' output columns are zero; making them nonzero changes the output
    key = f"{attn.name}.out_proj.weight"
    w = result.graph.params[key]
    hd = node.attrs.head_dim
    # grouped-query: each key/value head's group gets its new query heads after its old ones
    kv = attn.attrs.num_kv_heads or heads + 2
    group, new_group = (heads // kv, (heads + 2) // kv) if attn.attrs.num_kv_heads else (1, 1)
    new_heads = [h for h in range(heads + 2) if (h % new_group >= group or h >= heads)]
    if attn.attrs.num_kv_heads:
        new_heads = [h for h in range(heads + 2) if h % new_group >= group]
    cols = torch.tensor([h * hd + j for h in new_heads for j in range(hd)])
    assert len(cols) == 2 * hd
    assert torch.equal(w[:, cols], torch.zeros_like(w[:, cols]))
    poked = w.clone()
    # random, not constant: a constant added to every channel vanishes in the next layernorm
    poked[:, cols] = torch.randn(w.shape[0], len(cols))
    changed = result.graph.replace(params={**result.graph.params, key: poked})
    assert output_error(g, changed, {}) > 1e-3


@pytest.mark.parametrize("model", list(MODELS))
def test_grow_head_dim_is_exact(model: str) -> None:
    g = MODELS[model]
    attn = next(n for n in g.nodes if n.op == "attention")
    hd = g.types[attn.inputs[0]].shape[-1] // attn.attrs.num_heads
    new = 2 * hd if attn.attrs.rope_theta else hd + 3  # rotary: a multiple keeps every pair
    result = run("grow_head_dim", g, node=attn.name, head_dim=new)
    assert result.graph.node(attn.name).attrs.head_dim == new


def test_heads_refusals() -> None:
    g = MODELS["example"]
    with pytest.raises(PassError, match="must be larger"):
        passes.add_heads(g, node="attn", heads=2)
    with pytest.raises(PassError, match="cannot apply to a linear node"):
        passes.grow_head_dim(g, node="fc1", head_dim=9)


@pytest.mark.parametrize("model", list(MODELS))
def test_grow_vocab_keeps_the_old_tokens_logits(model: str) -> None:
    g = MODELS[model]
    node = STREAM[model]
    old = g.node(node).attrs.num_embeddings
    result = run("grow_vocab", g, node=node, size=old + 7)
    assert result.grown == {"logits": (2, old)}
    assert result.graph.types[result.graph.outputs["logits"]].shape[-1] == old + 7
    assert output_error(g, result.graph, {}) == math.inf  # compared whole, the shape differs


def test_grow_vocab_refusals() -> None:
    g = MODELS["example"]
    with pytest.raises(PassError, match="must be larger"):
        passes.grow_vocab(g, node="embed", size=32)
    with pytest.raises(PassError, match="cannot apply to a linear node"):
        passes.grow_vocab(g, node="head", size=40)


# ---- whole blocks ------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["gpt2", "llama"])
def test_insert_a_whole_transformer_block_exactly(model: str) -> None:
    g = MODELS[model]
    stage = next(iter(g.stages))
    result = run("insert_block", g, stage=stage)
    assert result.preserved
    zeroed = result.summary
    assert "attn'" in zeroed and ("proj'" in zeroed or "down'" in zeroed)


def test_attention_half_block_is_reported_exact_and_measured_exact() -> None:
    block = {
        "nodes": [
            {"name": "ln", "op": "layernorm", "inputs": ["input"]},
            {"name": "attn", "op": "attention", "num_heads": 2},
            {"name": "sum", "op": "add", "inputs": ["attn", "input"]},
        ]
    }
    spec = gpt2_like()
    spec["blocks"] = {"half": block}
    spec["nodes"][3] = {"name": "h", "stage": "half", "depth": 1}
    g = randomized(load_spec(spec))
    result = run("insert_block", g, stage="h")
    assert result.preserved and "'h.block1.attn'" in result.summary


def test_post_norm_block_is_reported_and_measured_not_exact() -> None:
    block = {
        "nodes": [
            {"name": "attn", "op": "attention", "inputs": ["input"], "num_heads": 2},
            {"name": "res", "op": "add", "inputs": ["input", "attn"]},
            {"name": "ln", "op": "layernorm"},
        ]
    }
    spec = gpt2_like()
    spec["blocks"] = {"post": block}
    spec["nodes"][3] = {"name": "h", "stage": "post", "depth": 1}
    # no final layernorm: LN(LN(x)) is LN(x) up to eps, which would hide the change
    del spec["nodes"][4]
    result = run("insert_block", randomized(load_spec(spec)), stage="h")
    assert not result.preserved
    assert "ends in layernorm, which is not the identity" in result.reason


# ---- optimizer state ---------------------------------------------------------------------


def test_optimizer_state_follows_a_lemon_widening() -> None:
    g = MODELS["gpt2"]
    module = to_torch(g).train()
    opt = torch.optim.Adam(module.parameters(), lr=1e-3)
    inputs = random_inputs(g, batch=2, seq=5)
    module(**inputs).square().mean().backward()
    opt.step()
    result = passes.widen.run(g, node="wte", width=20, init="lemon")
    new_module = to_torch(result.graph).train()
    new_opt = transfer_optimizer(opt, module, new_module, result.origins)
    old_p = dict(module.named_parameters())
    for name, p in new_module.named_parameters():
        state = new_opt.state[p]
        old = opt.state[old_p[name]]
        if name == "wte.weight":
            assert torch.equal(state["exp_avg"][:, :16], old["exp_avg"])
            assert torch.equal(state["exp_avg"][:, 16:], torch.zeros(24, 4))
        if name == "ln_f.weight":  # rescaled by sqrt(16/20): the moments follow
            f = math.sqrt(16 / 20)
            torch.testing.assert_close(state["exp_avg"][:16], old["exp_avg"] * f)
            torch.testing.assert_close(state["exp_avg_sq"][:16], old["exp_avg_sq"] * f * f)


# ---- depth: stacking and interpolation ---------------------------------------------------


@pytest.mark.parametrize("model", ["gpt2", "llama"])
def test_stacking_copies_blocks_on_top_and_says_it_changes_the_function(model: str) -> None:
    g = MODELS[model]
    stage = next(iter(g.stages))
    result = run("stack_blocks", g, stage=stage, mode="stack")
    assert not result.preserved and "warm start" in result.reason
    new = result.graph
    assert new.stages[stage].depth == 4
    for local in ("attn.in_proj_weight", "ln1.weight" if model == "gpt2" else "norm1.weight"):
        for i in (0, 1):
            assert torch.equal(
                new.params[f"{stage}.block{i + 2}.{local}"], g.params[f"{stage}.block{i}.{local}"]
            )
    run("insert_block", new, stage=stage)  # the grown stage keeps growing


@pytest.mark.parametrize("model", ["gpt2", "llama"])
@pytest.mark.parametrize(("start", "stop"), [(0, 2), (1, 2), (0, 1)])
def test_interpolation_is_exact(model: str, start: int, stop: int) -> None:
    g = MODELS[model]
    stage = next(iter(g.stages))
    result = run("stack_blocks", g, stage=stage, start=start, stop=stop, mode="interpolate")
    assert result.preserved
    # block 1 moved to index 2 when block 0 was copied: its parameters say where from
    if start == 0:
        moved = next(k for k in result.graph.params if k.startswith(f"{stage}.block2.attn."))
        assert result.origins[moved].source == moved.replace("block2", "block1")


def test_interpolating_a_post_norm_stage_is_reported_not_exact() -> None:
    block = {
        "nodes": [
            {"name": "fc", "op": "linear", "inputs": ["input"], "out_features": 16},
            {"name": "res", "op": "add", "inputs": ["input", "fc"]},
            {"name": "ln", "op": "layernorm"},
        ]
    }
    spec = gpt2_like()
    spec["blocks"] = {"post": block}
    spec["nodes"][3] = {"name": "h", "stage": "post", "depth": 2}
    del spec["nodes"][4]
    result = run("stack_blocks", randomized(load_spec(spec)), stage="h", mode="interpolate")
    assert not result.preserved and "layernorm" in result.reason


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"stage": "h", "start": 1, "stop": 1}, "bad range of blocks"),
        ({"stage": "h", "stop": 3}, "bad range of blocks"),
        ({"stage": "h", "mode": "interleave"}, "unknown mode"),
        ({"stage": "x"}, "unknown stage"),
    ],
)
def test_stack_refusals(kwargs: dict, match: str) -> None:
    with pytest.raises(PassError, match=match):
        passes.stack_blocks(MODELS["gpt2"], **kwargs)


def test_a_grown_transformer_imports_back_from_its_torch_module() -> None:
    import grow_ir as gi

    g = run("widen", MODELS["gpt2"], node="wte", width=20, init="lemon").graph
    g = run("add_heads", g, node="h.block0.attn", heads=3).graph
    module = to_torch(g).eval()
    inputs = random_inputs(g, batch=2, seq=5, seed=4)
    back = gi.from_torch(module, [inputs[k] for k in g.inputs], names=list(g.inputs))
    attn = next(n for n in back.nodes if n.op == "attention" and n.attrs.num_heads == 3)
    assert attn.attrs.head_dim == 8
    with torch.no_grad():
        got = to_torch(back).eval()(**inputs)
        assert torch.allclose(got, module(**inputs), atol=1e-5)


def test_interpolating_relu_blocks_is_exact_where_their_input_is_non_negative() -> None:
    from tests.tiny_specs import TINY_SPIRALS

    spec = {**TINY_SPIRALS, "nodes": [dict(n) for n in TINY_SPIRALS["nodes"]]}
    spec["nodes"][2]["depth"] = 2
    g = randomized(load_spec(spec))
    result = run("stack_blocks", g, stage="stage1", mode="interpolate")
    assert result.preserved  # relu(x + 0) = x: every block's input is a relu output


# ---- a transformer nobody here wrote: PyTorch's own encoder layers, imported -------------


class _TorchLM(torch.nn.Module):
    """A pre-norm language model of ``nn.TransformerEncoderLayer`` s (PyTorch's code)."""

    def __init__(self) -> None:
        super().__init__()
        self.wte = torch.nn.Embedding(64, 32)
        layer = torch.nn.TransformerEncoderLayer(
            32, 4, 64, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
        )
        self.blocks = torch.nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.ln = torch.nn.LayerNorm(32)
        self.head = torch.nn.Linear(32, 64)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.ln(self.blocks(self.wte(tokens))))


@pytest.fixture(scope="module")
def imported() -> Graph:
    import grow_ir as gi

    torch.manual_seed(0)
    module = _TorchLM().eval()
    return randomized(gi.from_torch(module, [torch.randint(0, 64, (2, 8))]), seed=2)


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("widen", {"node": "wte", "width": 64, "init": "net2net"}),
        ("widen", {"node": "wte", "width": 45, "init": "lemon"}),
        ("widen", {"node": "blocks.layers.1.linear1", "width": 80, "init": "lemon"}),
        ("add_heads", {"node": "blocks.layers.0.self_attn", "heads": 6}),
        ("grow_head_dim", {"node": "blocks.layers.1.self_attn", "head_dim": 12}),
        ("grow_vocab", {"node": "wte", "size": 80}),
    ],
)
def test_passes_on_an_imported_pytorch_transformer(
    imported: Graph, name: str, kwargs: dict
) -> None:
    result = run(name, imported, **kwargs)
    assert result.preserved
    g = result.graph
    inputs = random_inputs(g, batch=2, seq=6, seed=3)
    with torch.no_grad():
        want = to_torch(g).eval()(**inputs).numpy()
    session = ort.InferenceSession(to_onnx(g).SerializeToString())
    got = session.run(None, {k: v.numpy() for k, v in inputs.items()})[0]
    assert np.abs(got - want).max() <= TOL * max(1.0, float(np.abs(want).max()))
