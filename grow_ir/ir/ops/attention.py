"""Multi-head self-attention (``torch.nn.MultiheadAttention``, batch first)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from pydantic import Field, PositiveInt

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
    head_dim`` wide) and the model width ``E`` can grow apart."""

    num_heads: PositiveInt
    head_dim: PositiveInt | None = None
    bias: bool = True
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    causal: bool = False


def head_dim(a: AttentionAttrs, ins: Sequence[TensorType]) -> int:
    """The size of each head: ``head_dim`` when set, else ``E / num_heads``."""
    if a.head_dim is not None:
        return a.head_dim
    return known(ins[0].shape[2], "attention's embedding size") // a.num_heads


def _attention_infer(a: AttentionAttrs, ins: Sequence[TensorType]) -> TensorType:
    (x,) = ins
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
    return x


def _attention_params(a: AttentionAttrs, ins: Sequence[TensorType]) -> dict[str, ParamSpec]:
    e = known(ins[0].shape[2], "attention's embedding size")
    inner = a.num_heads * head_dim(a, ins)
    dt = param_dtype(ins)
    specs = {"in_proj_weight": ParamSpec((3 * inner, e), dt)}
    if a.bias:
        specs["in_proj_bias"] = ParamSpec((3 * inner,), dt)
    specs["out_proj.weight"] = ParamSpec((e, inner), dt)
    if a.bias:
        specs["out_proj.bias"] = ParamSpec((e,), dt)
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
    return out


ATTENTION = register(
    OpDef(
        name="attention",
        attrs=AttentionAttrs,
        infer=_attention_infer,
        params=_attention_params,
        init=_attention_init,
        channels=Channels.THROUGH,
        channel_axis=lambda a, ins: 2,
        through=ThroughRule(
            reads=("in_proj_weight",),
            writes=("out_proj.weight", "out_proj.bias"),
            pin=lambda a, ins: {"head_dim": head_dim(a, ins)},
        ),
        doc="torch.nn.MultiheadAttention self-attention, batch first, optional causal mask",
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
