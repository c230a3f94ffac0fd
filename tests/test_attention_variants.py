"""Attention's grouped-query, rotary (whole and partial), query/key-norm and
key-padding-mask variants against Hugging Face's own attention code (transformers' Llama
and GPT-NeoX functions and Qwen3's RMSNorm, written by nobody here) and onnxruntime."""

from __future__ import annotations

import pytest
import torch
from transformers.models.gpt_neox import modeling_gpt_neox as neox
from transformers.models.llama import modeling_llama as hf
from transformers.models.qwen3 import modeling_qwen3 as qwen3

from grow_ir.backends.onnx import to_onnx
from grow_ir.backends.onnx_check import check_model, check_parity
from grow_ir.backends.torch import to_torch
from grow_ir.errors import ShapeError, VerifyError
from grow_ir.ir import Graph, Node, TensorType, initialize, verify


def attention_graph(embed: int, mask: bool, dtype: str = "int64", **attrs: object) -> Graph:
    """``x [N, L, embed]`` (and ``mask [N, L]``) -> attention -> y, random biases."""
    inputs = {"x": TensorType(("batch", "seq", embed))}
    if mask:
        inputs["mask"] = TensorType(("batch", "seq"), dtype)
    node = Node("attn", "attention", attrs, tuple(inputs))
    graph = initialize(Graph(inputs, [node], {"y": "attn"}), seed=0)
    gen = torch.Generator().manual_seed(1)
    params = {k: torch.randn(v.shape, generator=gen) * 0.5 for k, v in graph.params.items()}
    return verify(graph.replace(params=params))


def hf_reference(
    graph: Graph, x: torch.Tensor, mask: torch.Tensor | None, causal: bool
) -> torch.Tensor:
    """The same layer computed with transformers' Llama rotary embedding, ``repeat_kv`` and
    eager attention (1 = attend in ``mask``)."""
    a = graph.node("attn").attrs
    heads, kv = a.num_heads, a.num_kv_heads or a.num_heads
    hd = a.head_dim or x.shape[-1] // heads
    w = graph.params["attn.in_proj_weight"]
    b = graph.params.get("attn.in_proj_bias")
    qkv = torch.nn.functional.linear(x, w, b)
    q, k, v = qkv.split([heads * hd, kv * hd, kv * hd], dim=-1)
    n, length = x.shape[:2]
    q, k, v = (t.view(n, length, -1, hd).transpose(1, 2) for t in (q, k, v))
    if a.qk_norm_eps is not None:  # Qwen3Attention: q_norm, k_norm over head_dim
        for which in ("q", "k"):
            norm = qwen3.Qwen3RMSNorm(hd, eps=a.qk_norm_eps)
            norm.weight.data = graph.params[f"attn.{which}_norm.weight"]
            q, k = (norm(q), k) if which == "q" else (q, norm(k))
    if a.rope_theta is not None and a.rotary_dim is None:
        config = hf.LlamaConfig(
            hidden_size=heads * hd, num_attention_heads=heads, rope_theta=a.rope_theta
        )
        rope = hf.LlamaRotaryEmbedding(config)
        cos, sin = rope(x, torch.arange(length)[None].expand(n, -1))
        q, k = hf.apply_rotary_pos_emb(q, k, cos, sin)
    elif a.rope_theta is not None:  # partial: GPT-NeoX's rotary_pct
        config = neox.GPTNeoXConfig(
            hidden_size=heads * hd,
            num_attention_heads=heads,
            rotary_pct=a.rotary_dim / hd,
            rotary_emb_base=a.rope_theta,
        )
        rope = neox.GPTNeoXRotaryEmbedding(config)
        cos, sin = rope(x, torch.arange(length)[None].expand(n, -1))
        assert cos.shape[-1] == a.rotary_dim
        q, k = neox.apply_rotary_pos_emb(q, k, cos, sin)
    k, v = hf.repeat_kv(k, heads // kv), hf.repeat_kv(v, heads // kv)
    scores = q @ k.transpose(2, 3) / hd**0.5
    if causal:
        scores = scores.masked_fill(torch.ones(length, length).triu(1).bool(), float("-inf"))
    if mask is not None:
        low = torch.finfo(scores.dtype).min  # Hugging Face's additive mask value
        scores = scores + torch.where(mask == 0, low, 0.0)[:, None, None, :]
    y = (scores.softmax(-1) @ v).transpose(1, 2).reshape(n, length, heads * hd)
    return torch.nn.functional.linear(
        y, graph.params["attn.out_proj.weight"], graph.params.get("attn.out_proj.bias")
    )


VARIANTS = [
    dict(num_heads=4, num_kv_heads=2),
    dict(num_heads=4, num_kv_heads=1, causal=True, bias=False),
    dict(num_heads=2, rope_theta=10000.0),
    dict(num_heads=4, num_kv_heads=2, rope_theta=500.0, causal=True, bias=False),
    dict(num_heads=2, head_dim=6, num_kv_heads=1, rope_theta=100.0),
    dict(num_heads=2, qk_norm_eps=1e-6),
    dict(num_heads=2, rope_theta=10000.0, rotary_dim=4),
    dict(num_heads=4, num_kv_heads=2, rope_theta=100.0, rotary_dim=2, qk_norm_eps=1e-5),
    dict(num_heads=4, num_kv_heads=2, rope_theta=1e6, qk_norm_eps=1e-6, causal=True, bias=False),
]


def padding(n: int, length: int, dtype: torch.dtype = torch.int64) -> torch.Tensor:
    """A BERT-style attention mask: sequence ``i`` has its last ``i`` positions padded
    (every row keeps its first key, so no softmax is over -inf alone)."""
    mask = torch.ones(n, length, dtype=dtype)
    for i in range(n):
        if i:
            mask[i, -i:] = 0
    return mask


@pytest.mark.parametrize("mask", [False, True])
@pytest.mark.parametrize("attrs", VARIANTS, ids=str)
def test_attention_matches_hugging_face_and_onnxruntime(attrs: dict, mask: bool) -> None:
    graph = attention_graph(16 if "head_dim" not in attrs else 8, mask, **attrs)
    x = torch.randn(3, 5, graph.inputs["x"].shape[2], generator=torch.Generator().manual_seed(2))
    m = padding(3, 5) if mask else None
    with torch.no_grad():
        ours = to_torch(graph).eval()(x, m) if mask else to_torch(graph).eval()(x)
        want = hf_reference(graph, x, m, bool(attrs.get("causal")))
    assert (ours - want).abs().max() <= 1e-5 * max(1.0, want.abs().max().item())
    model = to_onnx(graph)
    check_model(model)
    assert check_parity(graph, model) <= 1e-5


def test_a_float_mask_and_a_causal_mask_combine() -> None:
    graph = attention_graph(8, True, "float32", num_heads=2, causal=True)
    x = torch.randn(3, 5, 8, generator=torch.Generator().manual_seed(3))
    m = padding(3, 5, torch.float32)
    with torch.no_grad():
        ours = to_torch(graph).eval()(x, m)
    want = hf_reference(graph, x, m, True)
    assert (ours - want).abs().max() <= 1e-5 * max(1.0, want.abs().max().item())
    # padded keys change nothing of the rows that never read them: the first row is unmasked
    with torch.no_grad():
        plain = to_torch(graph).eval()(x, torch.ones(3, 5))
    assert torch.equal(ours[0], plain[0]) and not torch.allclose(ours[1], plain[1])
    assert check_parity(graph, to_onnx(graph)) <= 1e-5


@pytest.mark.parametrize(
    ("attrs", "inputs", "field"),
    [
        (dict(num_heads=4, num_kv_heads=3), {}, "num_kv_heads"),
        (dict(num_heads=2, head_dim=3, rope_theta=10.0), {}, "rope_theta"),
        (dict(num_heads=2, rope_theta=10.0, rotary_dim=3), {}, "rotary_dim"),
        (dict(num_heads=2, rope_theta=10.0, rotary_dim=6), {}, "rotary_dim"),
        (dict(num_heads=2, rotary_dim=2), {}, "rotary_dim"),
        (dict(num_heads=2), {"mask": TensorType(("batch", 7), "int64")}, "inputs"),
    ],
)
def test_bad_variants_are_refused_naming_the_field(attrs: dict, inputs: dict, field: str) -> None:
    graph = Graph(
        {"x": TensorType(("batch", "seq", 8)), **inputs},
        [Node("attn", "attention", attrs, ("x", *inputs))],
        {"y": "attn"},
    )
    with pytest.raises((ShapeError, VerifyError)) as err:
        verify(initialize(graph, seed=0))
    assert err.value.field == field and err.value.node == "attn"
