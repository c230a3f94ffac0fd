"""Multi-head self-attention (``torch.nn.MultiheadAttention``, batch first), with the
variants real transformers use: grouped-query attention (``num_kv_heads``), rotary position
embedding (``rope_theta``), per-head RMS normalisation of the queries and keys
(``qk_norm_eps``, Qwen3's ``q_norm``/``k_norm``) and a key padding mask (a second input).

Rotary embedding is an attribute rather than an op of its own: it rotates the queries and
keys, which exist only inside this op (its in-projection makes them), so an op of its own
would need q and k as values of the graph and the projections as separate nodes, and
widening, ``add_heads`` and ``grow_head_dim`` could no longer treat one attention as one
node whose inside they know.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from pydantic import Field, PositiveFloat, PositiveInt

from grow_ir.ir.ops.base import (
    Attrs,
    Channels,
    OpDef,
    ParamSpec,
    ThroughRule,
    empty,
    fail,
    known,
    param_dtype,
    register,
    require_float,
    require_rank,
)
from grow_ir.ir.ops.dense import kaiming_init
from grow_ir.ir.ops.facts import No, OpFacts
from grow_ir.ir.ops.macs import attention_macs
from grow_ir.ir.types import TensorType


class AttentionAttrs(Attrs):
    """Self-attention on ``[N, L, E]``; ``causal`` masks future positions; ``head_dim``
    sets each head's size (default ``E / num_heads``), so the heads (``num_heads *
    head_dim`` wide) and the model width ``E`` can grow apart.

    ``num_kv_heads`` (default ``num_heads``) is grouped-query attention: the keys and
    values have that many heads, query head ``h`` reading key/value head
    ``h // (num_heads / num_kv_heads)`` (Hugging Face's ``repeat_kv``, SDPA's
    ``enable_gqa``). ``rope_theta`` turns on rotary position embedding of the queries and
    keys at positions ``0..L-1`` in Llama's rotate-half convention (``x·cos + rotate_half(x)
    ·sin`` with frequencies ``theta^(-2i/head_dim)``, as Hugging Face implements it). A
    second input ``[N, L]`` (int64 or float) is a key padding mask: keys where it is 0 get
    the dtype's lowest finite value added before the softmax (Hugging Face's
    ``attention_mask``: 1 = attend; a kept key's weight is then exactly 0, as with -inf,
    and a query whose keys are all padded averages them instead of giving NaN).

    ``rotary_dim`` (with ``rope_theta``; default ``head_dim``) rotates only the first
    ``rotary_dim`` entries of each head, at frequencies ``theta^(-2i/rotary_dim)``, and
    passes the rest unchanged (GPT-NeoX's ``rotary_pct``, Phi's
    ``partial_rotary_factor``).

    ``qk_norm_eps`` RMS-normalises every head's query and every head's key over its
    ``head_dim`` entries with this ``eps``, each scaled by a learned ``[head_dim]`` weight
    shared by all heads (``q_norm.weight``, ``k_norm.weight``: torch.nn.RMSNorm, as
    Qwen3's ``q_norm`` and ``k_norm``), after the in-projection and before the rotary
    embedding."""

    num_heads: PositiveInt
    head_dim: PositiveInt | None = None
    num_kv_heads: PositiveInt | None = None
    rope_theta: PositiveFloat | None = None
    rotary_dim: PositiveInt | None = None
    qk_norm_eps: PositiveFloat | None = None
    bias: bool = True
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    causal: bool = False


def kv_heads(a: AttentionAttrs) -> int:
    """The number of key/value heads (``num_heads`` unless grouped-query)."""
    return a.num_kv_heads if a.num_kv_heads is not None else a.num_heads


def projection_rows(a: AttentionAttrs, ins: Sequence[TensorType]) -> tuple[int, int, int]:
    """The in-projection's rows of q, k and v (``[q; k; v]``, each heads × head_dim)."""
    hd = head_dim(a, ins)
    return a.num_heads * hd, kv_heads(a) * hd, kv_heads(a) * hd


def rotary_dim(a: AttentionAttrs, ins: Sequence[TensorType]) -> int:
    """How many leading entries of each head the rotary embedding rotates: ``rotary_dim``
    when set, else the whole head."""
    return a.rotary_dim if a.rotary_dim is not None else head_dim(a, ins)


def head_dim(a: AttentionAttrs, ins: Sequence[TensorType]) -> int:
    """The size of each head: ``head_dim`` when set, else ``E / num_heads``."""
    if a.head_dim is not None:
        return a.head_dim
    return known(ins[0].shape[2], "attention's embedding size") // a.num_heads


def _attention_infer(a: AttentionAttrs, ins: Sequence[TensorType]) -> TensorType:
    x = ins[0]
    require_float(x, "attention")
    require_rank(x, [3], "attention")
    e = known(x.shape[2], "attention's embedding size")
    if a.head_dim is None and e % a.num_heads:
        raise fail(
            "the embedding size must be divisible by num_heads",
            field="num_heads",
            expected=f"a divisor of {e}, or head_dim set",
            found=a.num_heads,
        )
    if a.num_heads % kv_heads(a):
        raise fail(
            "num_heads must be a multiple of num_kv_heads (each key/value head serves a "
            "group of query heads)",
            field="num_kv_heads",
            expected=f"a divisor of {a.num_heads}",
            found=a.num_kv_heads,
        )
    if a.rotary_dim is not None and (a.rope_theta is None or a.rotary_dim > head_dim(a, ins)):
        raise fail(
            "rotary_dim is how many entries of each head the rotary embedding rotates",
            field="rotary_dim",
            expected=f"rope_theta set and at most head_dim ({head_dim(a, ins)}), or none",
            found=f"rotary_dim {a.rotary_dim} with rope_theta {a.rope_theta}",
        )
    if a.rope_theta is not None and rotary_dim(a, ins) % 2:
        raise fail(
            "rotary embedding rotates pairs of dims, so it needs an even number of them",
            field="rope_theta" if a.rotary_dim is None else "rotary_dim",
            expected="an even head_dim (or rotary_dim), or rope_theta none",
            found=f"head_dim {head_dim(a, ins)}, rotary_dim {rotary_dim(a, ins)}",
        )
    if len(ins) == 2:
        mask = ins[1]
        if mask.rank != 2 or mask.shape != x.shape[:2]:
            raise fail(
                "the key padding mask must be [N, L], as the input's first two axes",
                field="inputs",
                expected=f"a mask of shape {list(x.shape[:2])}",
                found=mask,
            )
    return x


def _attention_params(a: AttentionAttrs, ins: Sequence[TensorType]) -> dict[str, ParamSpec]:
    e = known(ins[0].shape[2], "attention's embedding size")
    inner = a.num_heads * head_dim(a, ins)
    rows = sum(projection_rows(a, ins))
    dt = param_dtype(ins)
    specs = {"in_proj_weight": ParamSpec((rows, e), dt)}
    if a.bias:
        specs["in_proj_bias"] = ParamSpec((rows,), dt)
    specs["out_proj.weight"] = ParamSpec((e, inner), dt)
    if a.bias:
        specs["out_proj.bias"] = ParamSpec((e,), dt)
    if a.qk_norm_eps is not None:
        hd = head_dim(a, ins)
        specs["q_norm.weight"] = ParamSpec((hd,), dt)
        specs["k_norm.weight"] = ParamSpec((hd,), dt)
    return specs


def _attention_init(a: AttentionAttrs, ins: Sequence[TensorType], gen: torch.Generator) -> dict:
    # Draw for draw as nn.MultiheadAttention.__init__: its out_proj Linear initialises
    # first (kaiming weight, then a bias that is drawn and later zeroed), then
    # _reset_parameters gives the in-projection xavier_uniform and zeroes both biases.
    specs = _attention_params(a, ins)
    inner = specs["out_proj.weight"].shape[1]
    out_proj = kaiming_init(
        {k.removeprefix("out_proj."): v for k, v in specs.items() if k.startswith("out_proj.")},
        inner,
        gen,
    )
    out = {
        "in_proj_weight": torch.nn.init.xavier_uniform_(
            empty(specs["in_proj_weight"]), generator=gen
        )
    }
    if a.bias:
        out["in_proj_bias"] = torch.zeros_like(empty(specs["in_proj_bias"]))
    out["out_proj.weight"] = out_proj["weight"]
    if a.bias:
        out["out_proj.bias"] = torch.zeros_like(out_proj["bias"])
    for norm in ("q_norm.weight", "k_norm.weight"):  # nn.RMSNorm: ones, nothing drawn
        if norm in specs:
            out[norm] = torch.ones_like(empty(specs[norm]))
    return out


ATTENTION = register(
    OpDef(
        name="attention",
        attrs=AttentionAttrs,
        infer=_attention_infer,
        params=_attention_params,
        init=_attention_init,
        max_inputs=2,
        channels=Channels.THROUGH,
        channel_axis=lambda a, ins: 2,
        through=ThroughRule(
            reads=("in_proj_weight",),
            writes=("out_proj.weight", "out_proj.bias"),
            pin=lambda a, ins: {"head_dim": head_dim(a, ins)},
        ),
        doc="torch.nn.MultiheadAttention self-attention, batch first; causal, grouped-query, "
        "rotary, per-head query/key RMS norm, key padding mask",
        facts=OpFacts(
            width_attr=None,
            zero_to_zero=No("its projection biases make a zero input nonzero"),
            fresh_zero_to_zero=No("it mixes its embedding channels across heads"),
            gradient_at_zero=True,
            gradient_fix=None,
            nonnegative=False,
            sign_keeping=False,
            identity_on_nonnegative=False,
            normalises=False,
            eval_identity=False,
            sums=False,
            activation=False,
            square=None,
            identity=No("no projection weights make self-attention the identity"),
            zeroable=("out_proj.weight", "out_proj.bias"),
            head=False,
            adapters=(),
            randomised=False,
            index_bound=None,
            macs=attention_macs,
        ),
    )
)
