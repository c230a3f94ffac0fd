"""Transformer specs for the growth tests: GPT-2-like and Llama-like language models.

GPT-2-like: token and position tables summed, pre-LN blocks (attention half, GELU MLP
half), a final layernorm and a linear head. Llama-like: no positional table, no biases,
a gated SiLU MLP (``silu(gate(x)) * up(x)``). Both use the ops that exist today
(layernorm stands in for RMSNorm, which the import issue adds, and there is no rotary
embedding yet).
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
        {"name": "norm1", "op": "layernorm", "inputs": ["input"], "bias": False},
        {"name": "attn", "op": "attention", "num_heads": "$heads", "causal": True, "bias": False},
        {"name": "res1", "op": "add", "inputs": ["input", "attn"]},
        {"name": "norm2", "op": "layernorm", "bias": False},
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


def gpt2_like(width: int = 16, depth: int = 2, heads: int = 2, vocab: int = 24) -> dict:
    """A GPT-2-like spec over ``tokens`` and ``positions`` (both int64 ``[batch, seq]``)."""
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
            {"name": "lm_head", "op": "linear", "out_features": vocab, "bias": False},
        ],
        "outputs": {"logits": "lm_head"},
    }


def llama_like(width: int = 16, depth: int = 2, heads: int = 4, vocab: int = 24) -> dict:
    """A Llama-like spec over ``tokens`` (int64 ``[batch, seq]``)."""
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
                "with": {"width": width, "hidden": 3 * width, "heads": heads},
            },
            {"name": "norm", "op": "layernorm", "bias": False},
            {"name": "lm_head", "op": "linear", "out_features": vocab, "bias": False},
        ],
        "outputs": {"logits": "lm_head"},
    }
