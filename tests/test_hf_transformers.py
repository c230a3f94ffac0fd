"""Hugging Face GPT-2, Llama (grouped-query, rotary, RMSNorm, tied and untied heads) and
BERT (post-norm, key padding mask) from tiny configs, as graphs holding their tensors
(tests/hf_models.py): they compute what Hugging Face computes, export to ONNX with
parity, and the transformer growth passes run on them, exact where they say so (the
claim checked against the measurement, as in tests/test_transformer_growth.py)."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from grow_ir.backends.onnx import to_onnx
from grow_ir.backends.onnx_check import check_model, check_parity
from grow_ir.backends.torch import to_torch
from grow_ir.ir.graph import Graph
from tests import hf_models as hf
from tests.test_transformer_growth import run

TOL = 1e-5


def relative(got: torch.Tensor, want: torch.Tensor) -> float:
    return (got - want).abs().max().item() / max(1.0, want.abs().max().item())


def tokens(seed: int = 0, n: int = 3, length: int = 9) -> torch.Tensor:
    return torch.randint(0, 100, (n, length), generator=torch.Generator().manual_seed(seed))


MODELS: dict[str, tuple[Any, Any]] = {
    "gpt2-tied": (lambda: hf.gpt2(True), hf.gpt2_graph),
    "gpt2-untied": (lambda: hf.gpt2(False), hf.gpt2_graph),
    "llama-tied": (lambda: hf.llama(True), hf.llama_graph),
    "llama-untied": (lambda: hf.llama(False), hf.llama_graph),
}
BUILT = {name: (make(), convert) for name, (make, convert) in MODELS.items()}
GRAPHS: dict[str, Graph] = {name: convert(m) for name, (m, convert) in BUILT.items()}
BERT = hf.bert()
BERT_GRAPH = hf.bert_graph(BERT)


def bert_inputs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    x = tokens(seed)
    types = torch.zeros_like(x)
    types[:, 5:] = 1
    mask = torch.ones_like(x)
    mask[1, -3:] = 0
    mask[2, -6:] = 0
    return x, types, mask


@pytest.mark.parametrize("name", list(MODELS))
def test_the_graph_computes_what_hugging_face_computes(name: str) -> None:
    model, _ = BUILT[name]
    graph = GRAPHS[name]
    for seed in range(2):
        x = tokens(seed)
        with torch.no_grad():
            want = model(x).logits
            got = to_torch(graph).eval()(x)
        assert relative(got, want) <= TOL
    tied = model.config.tie_word_embeddings
    assert (graph.node("lm_head").share is not None) == tied
    assert ("lm_head.weight" in graph.params) != tied


def test_bert_with_a_padding_mask_computes_what_hugging_face_computes() -> None:
    x, types, mask = bert_inputs()
    with torch.no_grad():
        want = BERT(input_ids=x, token_type_ids=types, attention_mask=mask).last_hidden_state
        got = to_torch(BERT_GRAPH).eval()(x, types, mask)
        unmasked = to_torch(BERT_GRAPH).eval()(x, types, torch.ones_like(mask))
    assert relative(got, want) <= TOL
    # the mask matters (so the check can fail): the padded rows' outputs move without it
    assert relative(unmasked[1:], want[1:]) > 1e-3 and relative(unmasked[0], want[0]) <= TOL


@pytest.mark.parametrize("name", [*MODELS, "bert"])
def test_exports_to_onnx_with_parity(name: str) -> None:
    graph = BERT_GRAPH if name == "bert" else GRAPHS[name]
    model = to_onnx(graph)
    check_model(model)
    assert check_parity(graph, model) <= TOL


GROWTH = [
    ("gpt2-tied", "widen", {"node": "wte", "width": 64, "init": "net2net"}),
    ("gpt2-tied", "widen", {"node": "wte", "width": 44, "init": "lemon"}),
    ("gpt2-untied", "widen", {"node": "wte", "width": 44, "init": "lemon"}),
    ("gpt2-tied", "widen", {"node": "h.block0.c_fc", "width": 150, "init": "lemon"}),
    ("gpt2-tied", "add_heads", {"node": "h.block1.attn", "heads": 5}),
    ("gpt2-tied", "grow_head_dim", {"node": "h.block0.attn", "head_dim": 21}),
    ("gpt2-tied", "grow_vocab", {"node": "wte", "size": 120}),
    ("gpt2-tied", "insert_block", {"stage": "h"}),
    ("gpt2-tied", "stack_blocks", {"stage": "h", "mode": "interpolate"}),
    ("llama-tied", "widen", {"node": "embed_tokens", "width": 64, "init": "net2net"}),
    ("llama-tied", "widen", {"node": "embed_tokens", "width": 41, "init": "lemon"}),
    ("llama-untied", "widen", {"node": "embed_tokens", "width": 41, "init": "lemon"}),
    ("llama-tied", "widen", {"node": "layers.block1.gate_proj", "width": 70, "init": "lemon"}),
    ("llama-tied", "add_heads", {"node": "layers.block0.self_attn", "heads": 8}),
    ("llama-tied", "grow_kv_heads", {"node": "layers.block1.self_attn", "kv_heads": 4}),
    ("llama-tied", "grow_head_dim", {"node": "layers.block0.self_attn", "head_dim": 16}),
    ("llama-tied", "grow_vocab", {"node": "embed_tokens", "size": 128}),
    ("llama-untied", "grow_vocab", {"node": "embed_tokens", "size": 128}),
    ("llama-tied", "insert_block", {"stage": "layers"}),
    ("llama-tied", "stack_blocks", {"stage": "layers", "mode": "interpolate"}),
    ("bert", "widen", {"node": "layer.1.intermediate", "width": 80, "init": "net2net"}),
    ("bert", "add_heads", {"node": "layer.0.attention", "heads": 3}),
    ("bert", "grow_head_dim", {"node": "layer.1.attention", "head_dim": 20}),
]


@pytest.mark.parametrize(
    ("name", "pass_name", "kwargs"),
    GROWTH,
    ids=[f"{m}-{p}-{i}" for i, (m, p, _) in enumerate(GROWTH)],
)
def test_growth_on_hugging_face_models_is_exact(name: str, pass_name: str, kwargs: dict) -> None:
    grows_exactly(BERT_GRAPH if name == "bert" else GRAPHS[name], pass_name, kwargs)


def grows_exactly(graph: Graph, pass_name: str, kwargs: dict) -> Graph:
    """Assert that the pass keeps ``graph``'s function (measured), keeps a tied head tied,
    and that the grown graph exports to ONNX with parity; return the grown graph."""
    result = run(pass_name, graph, **kwargs)
    assert result.preserved, result.summary
    grown = result.graph
    if "lm_head" in grown.node_map:
        assert grown.node("lm_head").share == graph.node("lm_head").share  # the tie is kept
    model = to_onnx(grown)
    check_model(model)
    assert check_parity(grown, model) <= TOL
    return grown


def test_bert_refuses_to_widen_the_hidden_state_it_returns() -> None:
    from grow_ir import passes
    from grow_ir.errors import PassError

    with pytest.raises(PassError, match="reach graph output 'last_hidden_state'"):
        passes.widen(BERT_GRAPH, node="word", width=64)


def test_a_grown_llama_still_matches_a_hugging_face_llama_of_the_grown_shape() -> None:
    """Widened 2-fold with net2net, the graph's tensors loaded into a Hugging Face Llama of
    the new width (untied, so the head is its own tensor) compute what the graph computes:
    the grown graph is a real Llama, not only a function-preserving one."""
    graph = GRAPHS["llama-untied"]
    grown = run("widen", graph, node="embed_tokens", width=64, init="net2net").graph
    import transformers

    # the heads keep their size (head_dim 8) while the model width doubles
    wider = {**BUILT["llama-untied"][0].config.to_dict(), "hidden_size": 64, "head_dim": 8}
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**wider)).eval()
    sd = model.state_dict()
    sd["model.embed_tokens.weight"] = grown.params["embed_tokens.weight"]
    sd["model.norm.weight"] = grown.params["norm.weight"]
    sd["lm_head.weight"] = grown.params["lm_head.weight"]
    for i in range(2):
        ours, theirs = f"layers.block{i}", f"model.layers.{i}"
        w = grown.params[f"{ours}.self_attn.in_proj_weight"]
        q, k, v = w.split([32, 16, 16])
        sd[f"{theirs}.self_attn.q_proj.weight"] = q
        sd[f"{theirs}.self_attn.k_proj.weight"] = k
        sd[f"{theirs}.self_attn.v_proj.weight"] = v
        sd[f"{theirs}.self_attn.o_proj.weight"] = grown.params[f"{ours}.self_attn.out_proj.weight"]
        for part in ("input_layernorm", "post_attention_layernorm"):
            sd[f"{theirs}.{part}.weight"] = grown.params[f"{ours}.{part}.weight"]
        for mlp in ("gate_proj", "up_proj", "down_proj"):
            sd[f"{theirs}.mlp.{mlp}.weight"] = grown.params[f"{ours}.{mlp}.weight"]
    model.load_state_dict(sd)
    x = tokens(3)
    with torch.no_grad():
        want = model(x).logits
        got = to_torch(grown).eval()(x)
        old = BUILT["llama-untied"][0](x).logits
    assert relative(got, want) <= TOL and relative(got, old) <= TOL
