"""Hugging Face GPT-2, Llama and BERT from tiny configs (random init, nothing downloaded),
and the same networks as grow-ir graphs holding the Hugging Face modules' own tensors.

The graphs are written from the configs and filled from ``state_dict()`` by a key map (a
weight converter, as people write to move checkpoints between codebases): how each
Hugging Face layer maps to grow-ir ops is spelled out once here, and the tests check the
graphs against the Hugging Face forward, so every op they use (RMSNorm, grouped-query
rotary attention, the key padding mask, tied heads, positions, broadcasting add) is tested
against code nobody here wrote. ``from_torch`` imports the same models
(tests/test_hf_import.py); these hand-written maps stay as the reference of how each layer
maps onto grow-ir ops, and for the stage-based passes (``insert_block``, ``stack_blocks``)
that need the block templates a spec declares.
"""

from __future__ import annotations

from typing import Any

import torch
import transformers
from torch import nn

from grow_ir.ir.graph import Graph
from grow_ir.spec import load_spec


def randomized_hf(model: nn.Module, seed: int = 0) -> nn.Module:
    """``model`` in eval mode with every norm weight and bias and every linear bias drawn
    at random (Hugging Face initialises them to 1 and 0, which would hide a wrong map)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            last = name.rsplit(".", 1)[-1]
            if last == "bias" or "norm" in name.lower() or "ln" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3 + (last == "weight"))
    return model.eval()


def gpt2(tied: bool = True, layers: int = 2) -> transformers.GPT2LMHeadModel:
    """A tiny GPT-2 language model (eager attention: the reference computation)."""
    config = transformers.GPT2Config(
        n_layer=layers,
        n_head=2,
        n_embd=32,
        vocab_size=100,
        n_positions=64,
        bos_token_id=0,
        eos_token_id=0,
        tie_word_embeddings=tied,
        use_cache=False,
        attn_implementation="eager",
    )
    return randomized_hf(transformers.GPT2LMHeadModel(config))


def decoder(layers: int) -> dict[str, Any]:
    """The config fields the tiny decoders share: 100 tokens, 32 wide, a 48-wide MLP,
    4 query heads and 2 key/value heads."""
    return {
        "vocab_size": 100,
        "hidden_size": 32,
        "intermediate_size": 48,
        "num_hidden_layers": layers,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
    }


def llama(tied: bool, layers: int = 2) -> transformers.LlamaForCausalLM:
    """A tiny Llama with grouped-query attention (4 query heads, 2 key/value heads)."""
    config = transformers.LlamaConfig(
        **decoder(layers),
        max_position_embeddings=64,
        tie_word_embeddings=tied,
        use_cache=False,
        attn_implementation="eager",
    )
    return randomized_hf(transformers.LlamaForCausalLM(config))


def qwen3(tied: bool = True, layers: int = 2) -> transformers.Qwen3ForCausalLM:
    """A tiny Qwen3: grouped-query rotary attention with per-head RMS norms of q and k,
    its heads (4 of 16) wider together than the model (32)."""
    config = transformers.Qwen3Config(
        **decoder(layers),
        head_dim=16,
        max_position_embeddings=64,
        tie_word_embeddings=tied,
        use_cache=False,
        attn_implementation="eager",
    )
    return randomized_hf(transformers.Qwen3ForCausalLM(config))


def phi3(tied: bool = False, layers: int = 2) -> transformers.Phi3ForCausalLM:
    """A tiny Phi-3: q, k and v sliced from one fused ``qkv_proj``, the MLP's
    ``gate_up_proj`` chunked into gate and up, grouped-query rotary attention."""
    config = transformers.Phi3Config(
        **decoder(layers),
        max_position_embeddings=64,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=1,
        tie_word_embeddings=tied,
        use_cache=False,
        attn_implementation="eager",
    )
    return randomized_hf(transformers.Phi3ForCausalLM(config))


def gpt_neox(layers: int = 2) -> transformers.GPTNeoXForCausalLM:
    """A tiny GPT-NeoX (Pythia's layout): q, k and v interleaved per head in one
    ``query_key_value``, rotary on half of each head, attention and MLP in parallel."""
    config = transformers.GPTNeoXConfig(
        vocab_size=100,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=layers,
        num_attention_heads=4,
        max_position_embeddings=64,
        rotary_pct=0.5,
        use_cache=False,
        attn_implementation="eager",
    )
    return randomized_hf(transformers.GPTNeoXForCausalLM(config))


def gemma(tied: bool = True, layers: int = 2) -> transformers.GemmaForCausalLM:
    """A tiny Gemma: word vectors scaled by ``sqrt(hidden_size)`` (a buffer), RMSNorms
    that scale by ``1 + weight``, the tanh GELU, grouped-query rotary attention."""
    config = transformers.GemmaConfig(
        **decoder(layers),
        head_dim=8,
        max_position_embeddings=64,
        tie_word_embeddings=tied,
        use_cache=False,
        attn_implementation="eager",
    )
    return randomized_hf(transformers.GemmaForCausalLM(config))


def bert(layers: int = 2) -> transformers.BertModel:
    """A tiny BERT encoder (post-norm blocks, exact GELU, an attention mask input)."""
    config = transformers.BertConfig(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        type_vocab_size=2,
        attn_implementation="eager",
    )
    return randomized_hf(transformers.BertModel(config, add_pooling_layer=False))


def _tokens() -> dict[str, Any]:
    return {"shape": ["batch", "seq"], "dtype": "int64"}


def _stage(name: str, block: str, layers: int, inputs: list[str], **with_: Any) -> dict:
    return {"name": name, "stage": block, "depth": layers, "inputs": inputs, "with": with_}


def _graph(spec: dict, params: dict[str, torch.Tensor]) -> Graph:
    graph = load_spec(spec)
    assert set(params) == set(graph.param_specs), set(params) ^ set(graph.param_specs)
    return graph.replace(params={k: v.detach().clone().contiguous() for k, v in params.items()})


def gpt2_graph(model: transformers.GPT2LMHeadModel) -> Graph:
    """``model`` as a graph over ``tokens``: positions 0..L-1 (``positions``), token and
    position tables summed (broadcasting add), pre-LN blocks, the head tied to ``wte``
    when the model ties them. GPT-2's Conv1D weights are ``[in, out]``: transposed."""
    c, sd = model.config, model.state_dict()
    eps = c.layer_norm_epsilon
    block = {
        "nodes": [
            {"name": "ln_1", "op": "layernorm", "inputs": ["input"], "eps": eps},
            {"name": "attn", "op": "attention", "num_heads": c.n_head, "causal": True},
            {"name": "res1", "op": "add", "inputs": ["input", "attn"]},
            {"name": "ln_2", "op": "layernorm", "eps": eps},
            {"name": "c_fc", "op": "linear", "out_features": 4 * c.n_embd},
            {"name": "act", "op": "gelu", "approximate": "tanh"},  # gelu_new
            {"name": "c_proj", "op": "linear", "out_features": c.n_embd},
            {"name": "res2", "op": "add", "inputs": ["res1", "c_proj"]},
        ]
    }
    head: dict[str, Any] = {"name": "lm_head", "op": "linear", "out_features": c.vocab_size}
    head["bias"] = False
    tied = c.tie_word_embeddings
    if tied:
        head["share"] = "wte"
    spec = {
        "version": 1,
        "name": "hf_gpt2",
        "inputs": {"tokens": _tokens()},
        "blocks": {"gpt2_block": block},
        "nodes": [
            {"name": "wte", "op": "embedding", "inputs": ["tokens"]}
            | {"num_embeddings": c.vocab_size, "embedding_dim": c.n_embd},
            {"name": "position_ids", "op": "positions", "inputs": ["tokens"]},
            {"name": "wpe", "op": "embedding", "inputs": ["position_ids"]}
            | {"num_embeddings": c.n_positions, "embedding_dim": c.n_embd},
            {"name": "embed", "op": "add", "inputs": ["wte", "wpe"]},
            _stage("h", "gpt2_block", c.n_layer, ["embed"]),
            {"name": "ln_f", "op": "layernorm", "eps": eps},
            head,
        ],
        "outputs": {"logits": "lm_head"},
    }
    p = {
        "wte.weight": sd["transformer.wte.weight"],
        "wpe.weight": sd["transformer.wpe.weight"],
        "ln_f.weight": sd["transformer.ln_f.weight"],
        "ln_f.bias": sd["transformer.ln_f.bias"],
    }
    if not tied:
        p["lm_head.weight"] = sd["lm_head.weight"]
    for i in range(c.n_layer):
        hf, ours = f"transformer.h.{i}", f"h.block{i}"
        for ln in ("ln_1", "ln_2"):
            p[f"{ours}.{ln}.weight"] = sd[f"{hf}.{ln}.weight"]
            p[f"{ours}.{ln}.bias"] = sd[f"{hf}.{ln}.bias"]
        p[f"{ours}.attn.in_proj_weight"] = sd[f"{hf}.attn.c_attn.weight"].T
        p[f"{ours}.attn.in_proj_bias"] = sd[f"{hf}.attn.c_attn.bias"]
        p[f"{ours}.attn.out_proj.weight"] = sd[f"{hf}.attn.c_proj.weight"].T
        p[f"{ours}.attn.out_proj.bias"] = sd[f"{hf}.attn.c_proj.bias"]
        for mlp in ("c_fc", "c_proj"):
            p[f"{ours}.{mlp}.weight"] = sd[f"{hf}.mlp.{mlp}.weight"].T
            p[f"{ours}.{mlp}.bias"] = sd[f"{hf}.mlp.{mlp}.bias"]
    return _graph(spec, p)


def llama_graph(model: transformers.LlamaForCausalLM) -> Graph:
    """``model`` as a graph over ``tokens``: RMSNorm, grouped-query attention with rotary
    embedding (q, k, v projections stacked into the in-projection), SwiGLU as
    ``silu(gate) * up``, the head tied to ``embed_tokens`` when the model ties them."""
    c, sd = model.config, model.state_dict()
    eps, theta = c.rms_norm_eps, float(c.rope_parameters["rope_theta"])
    block = {
        "nodes": [
            {"name": "input_layernorm", "op": "rmsnorm", "inputs": ["input"], "eps": eps},
            {
                "name": "self_attn",
                "op": "attention",
                "num_heads": c.num_attention_heads,
                "num_kv_heads": c.num_key_value_heads,
                "rope_theta": theta,
                "causal": True,
                "bias": False,
            },
            {"name": "res1", "op": "add", "inputs": ["input", "self_attn"]},
            {"name": "post_attention_layernorm", "op": "rmsnorm", "eps": eps},
            {"name": "gate_proj", "op": "linear", "out_features": c.intermediate_size}
            | {"bias": False},
            {"name": "act", "op": "silu"},
            {"name": "up_proj", "op": "linear", "inputs": ["post_attention_layernorm"]}
            | {"out_features": c.intermediate_size, "bias": False},
            {"name": "gated", "op": "mul", "inputs": ["act", "up_proj"]},
            {"name": "down_proj", "op": "linear", "out_features": c.hidden_size} | {"bias": False},
            {"name": "res2", "op": "add", "inputs": ["res1", "down_proj"]},
        ]
    }
    head: dict[str, Any] = {"name": "lm_head", "op": "linear", "out_features": c.vocab_size}
    head["bias"] = False
    tied = c.tie_word_embeddings
    if tied:
        head["share"] = "embed_tokens"
    spec = {
        "version": 1,
        "name": "hf_llama",
        "inputs": {"tokens": _tokens()},
        "blocks": {"llama_block": block},
        "nodes": [
            {"name": "embed_tokens", "op": "embedding", "inputs": ["tokens"]}
            | {"num_embeddings": c.vocab_size, "embedding_dim": c.hidden_size},
            _stage("layers", "llama_block", c.num_hidden_layers, ["embed_tokens"]),
            {"name": "norm", "op": "rmsnorm", "eps": eps},
            head,
        ],
        "outputs": {"logits": "lm_head"},
    }
    p = {
        "embed_tokens.weight": sd["model.embed_tokens.weight"],
        "norm.weight": sd["model.norm.weight"],
    }
    if not tied:
        p["lm_head.weight"] = sd["lm_head.weight"]
    for i in range(c.num_hidden_layers):
        hf, ours = f"model.layers.{i}", f"layers.block{i}"
        for norm in ("input_layernorm", "post_attention_layernorm"):
            p[f"{ours}.{norm}.weight"] = sd[f"{hf}.{norm}.weight"]
        qkv = [sd[f"{hf}.self_attn.{x}_proj.weight"] for x in "qkv"]
        p[f"{ours}.self_attn.in_proj_weight"] = torch.cat(qkv)
        p[f"{ours}.self_attn.out_proj.weight"] = sd[f"{hf}.self_attn.o_proj.weight"]
        for mlp in ("gate_proj", "up_proj", "down_proj"):
            p[f"{ours}.{mlp}.weight"] = sd[f"{hf}.mlp.{mlp}.weight"]
    return _graph(spec, p)


def bert_graph(model: transformers.BertModel) -> Graph:
    """``model`` as a graph over ``tokens``, ``token_types`` and ``attention_mask`` (1 =
    attend): word, position and token-type tables summed and normalised, post-norm
    blocks whose attention reads the mask, exact GELU; the output is the last hidden
    state."""
    c, sd = model.config, model.state_dict()
    eps = c.layer_norm_eps
    nodes: list[dict[str, Any]] = [
        {"name": "word", "op": "embedding", "inputs": ["tokens"]}
        | {"num_embeddings": c.vocab_size, "embedding_dim": c.hidden_size},
        {"name": "position_ids", "op": "positions", "inputs": ["tokens"]},
        {"name": "position", "op": "embedding", "inputs": ["position_ids"]}
        | {"num_embeddings": c.max_position_embeddings, "embedding_dim": c.hidden_size},
        {"name": "token_type", "op": "embedding", "inputs": ["token_types"]}
        | {"num_embeddings": c.type_vocab_size, "embedding_dim": c.hidden_size},
        {"name": "embed", "op": "add", "inputs": ["word", "token_type", "position"]},
        {"name": "embed_norm", "op": "layernorm", "eps": eps},
    ]
    x = "embed_norm"
    for i in range(c.num_hidden_layers):  # written out: a block template has one input
        b = f"layer.{i}"
        nodes += [
            {"name": f"{b}.attention", "op": "attention", "inputs": [x, "attention_mask"]}
            | {"num_heads": c.num_attention_heads},
            {"name": f"{b}.res1", "op": "add", "inputs": [x, f"{b}.attention"]},
            {"name": f"{b}.attention_norm", "op": "layernorm", "eps": eps},
            {"name": f"{b}.intermediate", "op": "linear", "out_features": c.intermediate_size},
            {"name": f"{b}.act", "op": "gelu"},
            {"name": f"{b}.output", "op": "linear", "out_features": c.hidden_size},
            {"name": f"{b}.res2", "op": "add", "inputs": [f"{b}.attention_norm", f"{b}.output"]},
            {"name": f"{b}.output_norm", "op": "layernorm", "eps": eps},
        ]
        x = f"{b}.output_norm"
    spec = {
        "version": 1,
        "name": "hf_bert",
        "inputs": {"tokens": _tokens(), "token_types": _tokens(), "attention_mask": _tokens()},
        "nodes": nodes,
        "outputs": {"last_hidden_state": x},
    }
    e = "embeddings"
    p = {
        "word.weight": sd[f"{e}.word_embeddings.weight"],
        "position.weight": sd[f"{e}.position_embeddings.weight"],
        "token_type.weight": sd[f"{e}.token_type_embeddings.weight"],
        "embed_norm.weight": sd[f"{e}.LayerNorm.weight"],
        "embed_norm.bias": sd[f"{e}.LayerNorm.bias"],
    }
    for i in range(c.num_hidden_layers):
        hf, ours = f"encoder.layer.{i}", f"layer.{i}"
        att = f"{hf}.attention"
        for part in ("weight", "bias"):
            qkv = [sd[f"{att}.self.{x}.{part}"] for x in ("query", "key", "value")]
            p[f"{ours}.attention.in_proj_{part}"] = torch.cat(qkv)
            p[f"{ours}.attention.out_proj.{part}"] = sd[f"{att}.output.dense.{part}"]
            p[f"{ours}.attention_norm.{part}"] = sd[f"{att}.output.LayerNorm.{part}"]
            p[f"{ours}.intermediate.{part}"] = sd[f"{hf}.intermediate.dense.{part}"]
            p[f"{ours}.output.{part}"] = sd[f"{hf}.output.dense.{part}"]
            p[f"{ours}.output_norm.{part}"] = sd[f"{hf}.output.LayerNorm.{part}"]
    return _graph(spec, p)
