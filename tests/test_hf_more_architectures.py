"""Hugging Face architectures beyond the three of issue 11's acceptance, imported with
``from_torch`` from tiny configs (random init, random norms and biases, nothing
downloaded, each config's defaults otherwise: the key/value cache on, SDPA attention):
Qwen2 (q/k/v biases, grouped-query rotary attention), Phi-2 (``PhiForCausalLM``: partial
rotary, attention and MLP in parallel from one layernorm), StableLM (partial rotary,
layernorms), StarCoder2 (biases, layernorms, a GELU MLP), Gemma (word vectors scaled by a
buffer, RMSNorms by ``1 + weight``), Qwen3 (Qwen2 without the biases,
with per-head RMS norms of q and k, and heads wider together than the model), Phi-3
(q, k and v sliced from one fused ``qkv_proj``, the MLP's ``gate_up_proj`` chunked in
two), GPT-NeoX (Pythia's layout: q, k and v interleaved per head in one projection,
rotary on part of each head, parallel attention and MLP), Mistral
(Llama's layout under another name) and DistilBERT (post-norm, learned positions, no
token types). Each
computes what Hugging Face computes on other tokens and batch sizes, and grows exactly
(widened net2net, a head added, a block inserted into a decoder's layer list); a block
inserted into DistilBERT's post-norm layers is reported as not preserving, and is not.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import transformers
from torch import nn

import grow_ir as gi
from grow_ir.backends.torch import to_torch
from grow_ir.errors import PassError
from grow_ir.ir.graph import Graph
from grow_ir.passes import get_pass
from tests.hf_models import randomized_hf
from tests.test_hf_transformers import grows_exactly, relative, tokens

TOL = 1e-5
DECODER = {
    "vocab_size": 100,
    "hidden_size": 32,
    "intermediate_size": 48,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 64,
}

MAKERS: dict[str, Callable[[], nn.Module]] = {
    "qwen2": lambda: transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**DECODER)),
    "qwen3": lambda: transformers.Qwen3ForCausalLM(
        transformers.Qwen3Config(**DECODER, head_dim=16)
    ),
    "phi3": lambda: transformers.Phi3ForCausalLM(
        transformers.Phi3Config(**DECODER, pad_token_id=0, eos_token_id=1, bos_token_id=1)
    ),
    "gpt_neox": lambda: transformers.GPTNeoXForCausalLM(
        transformers.GPTNeoXConfig(
            **{k: v for k, v in DECODER.items() if k != "num_key_value_heads"}, rotary_pct=0.5
        )
    ),
    "gemma": lambda: transformers.GemmaForCausalLM(transformers.GemmaConfig(**DECODER, head_dim=8)),
    "phi": lambda: transformers.PhiForCausalLM(transformers.PhiConfig(**DECODER)),
    "stablelm": lambda: transformers.StableLmForCausalLM(transformers.StableLmConfig(**DECODER)),
    "starcoder2": lambda: transformers.Starcoder2ForCausalLM(
        transformers.Starcoder2Config(**DECODER)
    ),
    "mistral": lambda: transformers.MistralForCausalLM(
        transformers.MistralConfig(**DECODER, sliding_window=None)
    ),
    "distilbert": lambda: transformers.DistilBertModel(
        transformers.DistilBertConfig(vocab_size=100, dim=32, hidden_dim=64, n_layers=2, n_heads=4)
    ),
}
MODELS = {name: randomized_hf(make()) for name, make in MAKERS.items()}
GRAPHS: dict[str, Graph] = {name: gi.from_torch(m, tokens(0)) for name, m in MODELS.items()}


def output_of(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The model's first output: logits of a language model, an encoder's hidden states."""
    with torch.no_grad():
        out = model(x)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


@pytest.mark.parametrize("name", list(MAKERS))
def test_the_imported_graph_computes_what_hugging_face_computes(name: str) -> None:
    graph = GRAPHS[name]
    for seed, n in ((1, 3), (2, 5)):
        x = tokens(seed, n=n)
        with torch.no_grad():
            got = to_torch(graph).eval()(x)
        got = got if isinstance(got, torch.Tensor) else next(iter(got.values()))
        assert relative(got, output_of(MODELS[name], x)) <= TOL
    assert [n.op for n in graph.nodes].count("attention") == 2


GROWTH = [
    ("qwen2", "widen", {"node": "model.embed_tokens", "width": 64, "init": "net2net"}),
    ("qwen2", "add_heads", {"node": "model.layers.0.self_attn", "heads": 8}),
    ("qwen2", "insert_block", {"stage": "model.layers"}),
    ("qwen3", "widen", {"node": "model.embed_tokens", "width": 64, "init": "net2net"}),
    ("qwen3", "add_heads", {"node": "model.layers.0.self_attn", "heads": 6}),
    ("qwen3", "grow_kv_heads", {"node": "model.layers.1.self_attn", "kv_heads": 4}),
    ("qwen3", "insert_block", {"stage": "model.layers"}),
    ("phi3", "widen", {"node": "model.embed_tokens", "width": 64, "init": "net2net"}),
    ("phi3", "add_heads", {"node": "model.layers.1.self_attn", "heads": 6}),
    ("phi3", "insert_block", {"stage": "model.layers"}),
    ("gpt_neox", "widen", {"node": "gpt_neox.embed_in", "width": 64, "init": "net2net"}),
    ("gpt_neox", "add_heads", {"node": "gpt_neox.layers.0.attention", "heads": 6}),
    ("gpt_neox", "grow_head_dim", {"node": "gpt_neox.layers.1.attention", "head_dim": 11}),
    ("gpt_neox", "insert_block", {"stage": "gpt_neox.layers"}),
    ("gemma", "widen", {"node": "model.embed_tokens", "width": 64, "init": "net2net"}),
    ("gemma", "add_heads", {"node": "model.layers.0.self_attn", "heads": 6}),
    ("gemma", "insert_block", {"stage": "model.layers"}),
    ("phi", "widen", {"node": "model.embed_tokens", "width": 64, "init": "net2net"}),
    ("phi", "grow_head_dim", {"node": "model.layers.0.self_attn", "head_dim": 11}),
    ("stablelm", "add_heads", {"node": "model.layers.0.self_attn", "heads": 6}),
    ("stablelm", "insert_block", {"stage": "model.layers"}),
    ("starcoder2", "widen", {"node": "model.embed_tokens", "width": 64, "init": "net2net"}),
    ("starcoder2", "insert_block", {"stage": "model.layers"}),
    ("mistral", "grow_kv_heads", {"node": "model.layers.1.self_attn", "kv_heads": 4}),
    ("mistral", "insert_block", {"stage": "model.layers"}),
    ("distilbert", "widen", {"node": "transformer.layer.0.ffn.lin1", "width": 80}),
]


@pytest.mark.parametrize(
    ("name", "pass_name", "kwargs"),
    GROWTH,
    ids=[f"{m}-{p}-{i}" for i, (m, p, _) in enumerate(GROWTH)],
)
def test_growth_on_the_imported_graphs_is_exact(name: str, pass_name: str, kwargs: dict) -> None:
    grows_exactly(GRAPHS[name], pass_name, kwargs)


def test_qwen3s_query_and_key_norms_are_one_attention_node_and_refuse_wider_heads() -> None:
    """Qwen3's ``q_norm``/``k_norm`` are the node's ``qk_norm_eps`` and its two weights
    (the module's, bitwise); wider heads would change the key norms, and are refused."""
    graph, model = GRAPHS["qwen3"], MODELS["qwen3"]
    attn = graph.node("model.layers.0.self_attn")
    assert attn.attrs.qk_norm_eps == model.config.rms_norm_eps and attn.attrs.head_dim == 16
    mine = model.model.layers[0].self_attn
    for which in ("q", "k"):
        got = graph.params[f"model.layers.0.self_attn.{which}_norm.weight"]
        assert torch.equal(got, getattr(mine, f"{which}_norm").weight.detach())
    with pytest.raises(PassError) as err:
        get_pass("grow_head_dim").run(graph, node=attn.name, head_dim=32)
    assert err.value.field == "head_dim" and "qk_norm_eps" in str(err.value)


def test_gpt_neox_rotates_part_of_each_head_and_its_interleaved_rows_are_reordered() -> None:
    """Its rotary tables cover half of each head (``rotary_dim``), and the in-projection
    is ``query_key_value``'s rows reordered from per-head ``[q_h; k_h; v_h]`` to ``[q; k;
    v]`` (a copy, bitwise)."""
    graph, model = GRAPHS["gpt_neox"], MODELS["gpt_neox"]
    attn = graph.node("gpt_neox.layers.0.attention")
    assert attn.attrs.rotary_dim == 4 and attn.attrs.rope_theta == 10000.0
    fused = model.gpt_neox.layers[0].attention.query_key_value.weight.detach()
    per_head = fused.reshape(4, 3, 8, 32)  # [head, q/k/v, dim, in]
    want = per_head.permute(1, 0, 2, 3).reshape(96, 32)
    assert torch.equal(graph.params["gpt_neox.layers.0.attention.in_proj_weight"], want)


def test_gemmas_scaled_embedding_and_one_plus_weight_norms() -> None:
    """Gemma multiplies its word vectors by ``sqrt(hidden_size)`` (a buffer): one
    ``embedding`` with that ``scale``, the tied head reading its table unscaled; its
    RMSNorms scale by ``1 + weight``: ``rmsnorm`` nodes holding ``1 + weight`` (the same
    function, the same gradients)."""
    graph, model = GRAPHS["gemma"], MODELS["gemma"]
    emb = graph.node("model.embed_tokens")
    assert emb.attrs.scale == pytest.approx(32**0.5, rel=1e-6)
    assert graph.node("lm_head").share == "model.embed_tokens"
    norm = model.model.layers[0].input_layernorm.weight.detach()
    stored = graph.params["model.layers.0.input_layernorm.weight"]
    assert torch.equal(stored, 1.0 + norm)


def test_a_block_inserted_into_a_post_norm_encoder_is_reported_as_not_preserving() -> None:
    """A post-norm block ends in a layernorm of ``x + f(x)``, which no zero init makes the
    identity: the pass says so, and the outputs do change."""
    from tests.test_transformer_growth import run

    graph = GRAPHS["distilbert"]
    result = run("insert_block", graph, stage="transformer.layer")
    assert not result.preserved and result.reason
    x = tokens(1)
    with torch.no_grad():
        before = to_torch(graph).eval()(x)
        after = to_torch(result.graph).eval()(x)
    assert relative(after, before) > 1e-3


def padded_tokens(seed: int, n: int = 3, length: int = 9) -> torch.Tensor:
    """Token ids with RoBERTa's padding id (1) at the end of rows 1 and on, and inside
    row 0 (a padding id anywhere is skipped by the count)."""
    x = tokens(seed, n=n, length=length).clamp(min=2)
    x[0, length // 2] = 1
    for row in range(1, n):
        x[row, length - row :] = 1
    return x


ROBERTA = randomized_hf(
    transformers.RobertaModel(
        transformers.RobertaConfig(
            vocab_size=100,
            hidden_size=32,
            intermediate_size=48,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=64,
        ),
        add_pooling_layer=False,
    )
)


def roberta_inputs(x: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"input_ids": x, "token_type_ids": torch.zeros_like(x)}


def test_roberta_counts_its_positions_past_the_padding_tokens() -> None:
    """RoBERTa numbers the tokens that are not padding from ``padding_idx + 1`` (its
    ``create_position_ids_from_input_ids``: ``cumsum`` of ``ids != 1``): imported from an
    example without padding, the ``positions`` node with ``padding_idx`` 1 counts as
    Hugging Face does on ids with padding (at the end and inside a row), and widening
    its feed-forward layer is exact."""
    example = tokens(0).clamp(min=2)  # no padding in the example
    graph = gi.from_torch(ROBERTA, roberta_inputs(example))
    (pos,) = [n for n in graph.nodes if n.op == "positions"]
    assert pos.attrs.padding_idx == 1 and pos.inputs == ("input_ids",)
    for seed in (1, 2):
        x = padded_tokens(seed)
        with torch.no_grad():
            want = ROBERTA(**roberta_inputs(x)).last_hidden_state
            got = to_torch(graph).eval()(**roberta_inputs(x))
        got = got if isinstance(got, torch.Tensor) else next(iter(got.values()))
        assert relative(got, want) <= TOL
    grows_exactly(graph, "widen", {"node": "encoder.layer.0.intermediate.dense", "width": 96})


def test_roberta_exported_to_onnx_counts_its_positions_too(tmp_path: Path) -> None:
    """The same RoBERTa through ``torch.onnx.export(..., dynamic_shapes=...)`` and
    ``from_onnx``: the file's ``Not``/``CumSum``/``Mul``/``Add`` of the ids is one
    ``positions`` node with ``padding_idx`` 1, and the graph computes what Hugging Face
    computes on padded ids of other batch sizes and lengths."""
    path = tmp_path / "roberta.onnx"
    dims = {0: torch.export.Dim("batch"), 1: torch.export.Dim("seq", max=60)}
    example = roberta_inputs(tokens(0).clamp(min=2))
    dynamic = {k: dims for k in example}
    torch.onnx.export(ROBERTA, (), str(path), kwargs=example, dynamic_shapes=dynamic, dynamo=True)
    graph = gi.from_onnx(path)
    assert [n.attr_dict() for n in graph.nodes if n.op == "positions"] == [{"padding_idx": 1}]
    for seed in (1, 2):
        x = padded_tokens(seed, n=2 + seed, length=7 + seed)
        with torch.no_grad():
            want = ROBERTA(**roberta_inputs(x)).last_hidden_state
            got = to_torch(graph).eval()(**roberta_inputs(x))
        got = got if isinstance(got, torch.Tensor) else next(iter(got.values()))
        assert relative(got, want) <= TOL
