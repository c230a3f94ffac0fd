"""Transformer specs for the growth tests: GPT-2-like and Llama-like language models.

GPT-2-like: token and position tables summed, pre-LN blocks (attention half, GELU MLP
half), a final layernorm and a linear head tied to the token table (GPT-2 ties them).
Llama-like: no positional table, no biases, RMSNorm, grouped-query attention with rotary
position embedding, a gated SiLU MLP (SwiGLU, ``silu(gate(x)) * up(x)``: a composition of
``silu`` and ``mul``, not an op) and a head tied to the token table or not
(``tie_word_embeddings``).
"""

from __future__ import annotations

from typing import Any

GPT2_BLOCK: dict[str, Any] = {
    "nodes": [
        {"name": "ln1", "op": "layernorm", "inputs": ["input"]},
        {"name": "attn", "op": "attention", "num_heads": "$heads", "causal": True},
        {"name": "res1", "op": "add", "inputs": ["input", "attn"]},
        {"name": "ln2", "op": "layernorm"},
        {"name": "fc", "op": "linear", "out_features": "$hidden"},
        {"name": "act", "op": "gelu"},
        {"name": "proj", "op": "linear", "out_features": "$width"},
        {"name": "res2", "op": "add", "inputs": ["res1", "proj"]},
    ]
}

LLAMA_BLOCK: dict[str, Any] = {
    "nodes": [
        {"name": "norm1", "op": "rmsnorm", "inputs": ["input"], "eps": 1e-6},
        {
            "name": "attn",
            "op": "attention",
            "num_heads": "$heads",
            "num_kv_heads": "$kv_heads",
            "rope_theta": 10000.0,
            "causal": True,
            "bias": False,
        },
        {"name": "res1", "op": "add", "inputs": ["input", "attn"]},
        {"name": "norm2", "op": "rmsnorm", "eps": 1e-6},
        {"name": "gate", "op": "linear", "out_features": "$hidden", "bias": False},
        {"name": "act", "op": "silu"},
        {
            "name": "up",
            "op": "linear",
            "inputs": ["norm2"],
            "out_features": "$hidden",
            "bias": False,
        },
        {"name": "gated", "op": "mul", "inputs": ["act", "up"]},
        {"name": "down", "op": "linear", "out_features": "$width", "bias": False},
        {"name": "res2", "op": "add", "inputs": ["res1", "down"]},
    ]
}


def gpt2_like(
    width: int = 16, depth: int = 2, heads: int = 2, vocab: int = 24, tied: bool = True
) -> dict:
    """A GPT-2-like spec over ``tokens`` and ``positions`` (both int64 ``[batch, seq]``),
    its head tied to the token table ``wte`` unless ``tied`` is false."""
    return {
        "version": 1,
        "name": "gpt2_like",
        "seed": 0,
        "inputs": {
            "tokens": {"shape": ["batch", "seq"], "dtype": "int64"},
            "positions": {"shape": ["batch", "seq"], "dtype": "int64"},
        },
        "blocks": {"gpt2_block": GPT2_BLOCK},
        "nodes": [
            {
                "name": "wte",
                "op": "embedding",
                "inputs": ["tokens"],
                "num_embeddings": vocab,
                "embedding_dim": width,
            },
            {
                "name": "wpe",
                "op": "embedding",
                "inputs": ["positions"],
                "num_embeddings": 16,
                "embedding_dim": width,
            },
            {"name": "embed", "op": "add", "inputs": ["wte", "wpe"]},
            {
                "name": "h",
                "stage": "gpt2_block",
                "depth": depth,
                "with": {"width": width, "hidden": 4 * width, "heads": heads},
            },
            {"name": "ln_f", "op": "layernorm"},
            head("wte", vocab, tied),
        ],
        "outputs": {"logits": "lm_head"},
    }


def head(table: str, vocab: int, tied: bool) -> dict[str, Any]:
    """The language-model head: a linear without bias, sharing ``table``'s weight if
    ``tied`` (the ``[vocab, width]`` weight is the same tensor)."""
    node: dict[str, Any] = {"name": "lm_head", "op": "linear", "out_features": vocab}
    node["bias"] = False
    if tied:
        node["share"] = table
    return node


def llama_like(
    width: int = 16,
    depth: int = 2,
    heads: int = 4,
    vocab: int = 24,
    kv_heads: int = 2,
    tied: bool = True,
) -> dict:
    """A Llama-like spec over ``tokens`` (int64 ``[batch, seq]``): ``kv_heads`` key/value
    heads, its head tied to ``embed_tokens`` if ``tied``."""
    return {
        "version": 1,
        "name": "llama_like",
        "seed": 0,
        "inputs": {"tokens": {"shape": ["batch", "seq"], "dtype": "int64"}},
        "blocks": {"llama_block": LLAMA_BLOCK},
        "nodes": [
            {
                "name": "embed_tokens",
                "op": "embedding",
                "inputs": ["tokens"],
                "num_embeddings": vocab,
                "embedding_dim": width,
            },
            {
                "name": "layers",
                "stage": "llama_block",
                "depth": depth,
                "with": {
                    "width": width,
                    "hidden": 3 * width,
                    "heads": heads,
                    "kv_heads": kv_heads,
                },
            },
            {"name": "norm", "op": "rmsnorm", "eps": 1e-6},
            head("embed_tokens", vocab, tied),
        ],
        "outputs": {"logits": "lm_head"},
    }
