"""Growth of the transformer variants real models use: grouped-query attention
(``grow_kv_heads``, ``add_heads``), rotary embedding (``grow_head_dim`` by multiples),
RMSNorm (LEMON with zeros) and heads tied to their embedding (``widen`` and
``grow_vocab`` keep the tie), each exact where it says so and refused with the reason
otherwise; ONNX parity after growth."""

from __future__ import annotations

import math

import pytest
import torch

from grow_ir import passes
from grow_ir.backends.onnx import to_onnx
from grow_ir.backends.onnx_check import check_model, check_parity
from grow_ir.backends.torch import to_torch
from grow_ir.errors import GrowError, PassError
from grow_ir.spec import load_spec
from tests.test_transformer_growth import MODELS, randomized, run
from tests.transformer_specs import gpt2_like, llama_like

LLAMA = MODELS["llama"]
GPT2 = MODELS["gpt2"]
ATTN = "layers.block0.attn"


def exported_with_parity(graph: object) -> None:
    model = to_onnx(graph)  # type: ignore[arg-type]
    check_model(model)
    assert check_parity(graph, model) <= 1e-5  # type: ignore[arg-type]


def test_the_llama_spec_uses_every_variant() -> None:
    attn = LLAMA.node(ATTN).attrs
    assert (attn.num_heads, attn.num_kv_heads, attn.rope_theta) == (4, 2, 10000.0)
    assert {n.op for n in LLAMA.nodes} >= {"rmsnorm", "silu", "mul"}
    assert LLAMA.node("lm_head").share == "embed_tokens"
    assert "lm_head.weight" not in LLAMA.param_specs  # one tensor, the embedding's
    exported_with_parity(LLAMA)


@pytest.mark.parametrize("kv", [4])
def test_grow_kv_heads_copies_each_key_value_head(kv: int) -> None:
    result = run("grow_kv_heads", LLAMA, node=ATTN, kv_heads=kv)
    assert result.graph.node(ATTN).attrs.num_kv_heads == kv
    w = result.graph.params[f"{ATTN}.in_proj_weight"]
    hd = 4
    k = w[16 : 16 + kv * hd].unflatten(0, (kv, hd))
    assert torch.equal(k[0], k[1]) and torch.equal(k[2], k[3]) and not torch.equal(k[0], k[2])
    exported_with_parity(result.graph)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"kv_heads": 3}, "a multiple of 2 that divides 4"),
        ({"kv_heads": 2}, "must be larger"),
    ],
)
def test_grow_kv_heads_refusals(kwargs: dict, match: str) -> None:
    with pytest.raises(PassError, match=match):
        passes.grow_kv_heads(LLAMA, node=ATTN, **kwargs)


def test_add_heads_on_grouped_query_attention_needs_a_multiple_of_the_kv_heads() -> None:
    with pytest.raises(PassError, match="multiple of 2 above 4"):
        passes.add_heads(LLAMA, node=ATTN, heads=5)
    g = run("add_heads", LLAMA, node=ATTN, heads=8).graph
    assert g.node(ATTN).attrs.num_kv_heads == 2
    g = run("grow_kv_heads", g, node=ATTN, kv_heads=8).graph  # up to multi-head
    exported_with_parity(g)


def test_grow_head_dim_with_rotary_needs_a_multiple() -> None:
    with pytest.raises(PassError, match="only a multiple of the head size"):
        passes.grow_head_dim(LLAMA, node=ATTN, head_dim=6)
    g = run("grow_head_dim", LLAMA, node=ATTN, head_dim=12).graph
    exported_with_parity(g)


def test_rotary_head_growth_is_not_exact_without_moving_the_pairs() -> None:
    """The pair move is what keeps it exact: the same growth with the old dims first (the
    layout without rotary) changes the output, so the test above can fail."""
    from grow_ir.passes import heads

    layout = heads._Layout((0, 1, 2, 3), (0, 1), heads._same_dims(4, 8))
    wrong = heads._grow_inside(LLAMA, ATTN, layout, seed=0).graph
    assert passes.output_error(LLAMA, wrong, {}) > 1e-3
    right = passes.PASSES["grow_head_dim"].run(LLAMA, node=ATTN, head_dim=8).graph
    assert passes.output_error(LLAMA, right, {}) <= 1e-5


@pytest.mark.parametrize("width", [20, 37])
def test_lemon_through_rmsnorm_fills_zeros_and_rescales(width: int) -> None:
    result = run("widen", LLAMA, node="embed_tokens", width=width, init="lemon")
    g = result.graph
    new = g.params["embed_tokens.weight"][:, 16:]
    assert torch.equal(new, torch.zeros_like(new))  # zeros, not means: RMSNorm does not centre
    for n in g.nodes:
        if n.op == "rmsnorm":
            assert math.isclose(n.attrs.eps, 1e-6 * 16 / width)
    assert g.node("lm_head").share == "embed_tokens"
    exported_with_parity(g)


def test_lemon_refuses_a_group_with_both_kinds_of_norm() -> None:
    spec = llama_like()
    spec["nodes"][2] = {"name": "norm", "op": "layernorm"}
    g = randomized(load_spec(spec))
    with pytest.raises(PassError, match="has both"):
        passes.widen(g, node="embed_tokens", width=20, init="lemon")


def test_net2net_through_rmsnorm_needs_a_multiple() -> None:
    with pytest.raises(PassError, match="a multiple of the current width 16"):
        passes.widen(LLAMA, node="embed_tokens", width=20)
    run("widen", LLAMA, node="embed_tokens", width=48)


@pytest.mark.parametrize("model", ["gpt2", "llama"])
@pytest.mark.parametrize(("init", "factor"), [("net2net", 2), ("lemon", 1.5), ("zero", 2)])
def test_widening_keeps_the_tie(model: str, init: str, factor: float) -> None:
    g = MODELS[model]
    table = "wte" if model == "gpt2" else "embed_tokens"
    old = g.types[table].shape[-1]
    if init == "zero":  # zero fan-in is refused through the norms of the stream
        with pytest.raises(PassError, match="init 'zero'"):
            passes.widen(g, node=table, width=int(old * factor), init=init)
        return
    result = run("widen", g, node=table, width=int(old * factor), init=init)
    grown = result.graph
    assert grown.node("lm_head").share == table
    assert f"{table}.weight" in grown.params and "lm_head.weight" not in grown.params
    module = to_torch(grown)
    assert "lm_head.weight" not in module.state_dict()


def test_a_tie_whose_input_others_read_is_refused() -> None:
    spec = gpt2_like()
    spec["nodes"].append({"name": "aux", "op": "linear", "inputs": ["ln_f"], "out_features": 3})
    spec["outputs"]["aux"] = "aux"
    g = randomized(load_spec(spec))
    with pytest.raises(PassError, match="read by the head alone"):
        passes.widen(g, node="wte", width=32)


def test_the_tied_fan_out_on_ln_f_is_what_keeps_it_exact() -> None:
    """2-fold duplication of a tied model: the head reads each embedding column twice, so
    ln_f's scale and shift are halved; without that the logits double (the check can
    fail)."""
    g = passes.PASSES["widen"].run(GPT2, node="wte", width=32).graph
    for key in ("ln_f.weight", "ln_f.bias"):
        assert torch.allclose(g.params[key][:16] * 2, GPT2.params[key])
    undone = {k: v * 2 if k.startswith("ln_f.") else v for k, v in g.params.items()}
    assert passes.output_error(GPT2, g.replace(params=undone), {}) > 1e-3
    assert passes.output_error(GPT2, g, {}) <= 1e-5


def test_grow_vocab_keeps_the_tie() -> None:
    result = run("grow_vocab", LLAMA, node="embed_tokens", size=30)
    g = result.graph
    assert g.node("lm_head").attrs.out_features == 30 and g.node("lm_head").share
    assert g.params["embed_tokens.weight"].shape == (30, 16)
    exported_with_parity(g)


def test_a_tie_needs_the_same_tensors() -> None:
    spec = gpt2_like()
    spec["nodes"][-1]["bias"] = True
    with pytest.raises(GrowError, match="shares parameters of another shape"):
        load_spec(spec)
