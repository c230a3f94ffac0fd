"""``mix``: a softmax-weighted sum of candidate values, the choice node of a search supernet.

``mix(x_1, ..., x_k) = Σ_i softmax(alpha)_i · x_i`` with one parameter ``alpha`` of shape
``[k]``, the architecture weights of a DARTS-style search (Learn to Grow). ``alpha`` is a
real graph parameter (``NODE.alpha``), so it sits in ``state_dict()`` and an optimizer can
pick it out by name. A Learn to Grow run discretises its supernet (argmax over ``alpha``)
before it exports anything, so its models hold no ``mix``.

The torch backend lowers it to :class:`grow_ir.backends.torch_modules.Mix`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from grow_ir.ir.ops.base import (
    Channels,
    NoAttrs,
    OpDef,
    ParamSpec,
    fail,
    param_dtype,
    register,
    require_float,
    same_axes,
)
from grow_ir.ir.ops.facts import No, OpFacts
from grow_ir.ir.ops.macs import no_macs
from grow_ir.ir.types import DTYPES, TensorType


def _mix_infer(a: NoAttrs, ins: Sequence[TensorType]) -> TensorType:
    first = ins[0]
    require_float(first, "mix")
    for i, t in enumerate(ins[1:], start=1):
        if t != first:
            raise fail(
                "mix needs candidates of one type",
                field=f"inputs[{i}]",
                expected=str(first),
                found=t,
            )
    return first


def _mix_params(a: NoAttrs, ins: Sequence[TensorType]) -> dict[str, ParamSpec]:
    return {"alpha": ParamSpec((len(ins),), param_dtype(ins))}


def _mix_init(a: NoAttrs, ins: Sequence[TensorType], gen: torch.Generator) -> dict:
    # Zero logits: every candidate starts with the same weight 1/k.
    return {"alpha": torch.zeros(len(ins), dtype=DTYPES[param_dtype(ins)])}


MIX = register(
    OpDef(
        name="mix",
        attrs=NoAttrs,
        infer=_mix_infer,
        doc="softmax(alpha)-weighted sum of its inputs (a search supernet's choice)",
        params=_mix_params,
        init=_mix_init,
        min_inputs=2,
        max_inputs=None,
        channels=Channels.JOIN,
        axis_map=same_axes,
        facts=OpFacts(
            width_attr=None,
            zero_to_zero=True,
            fresh_zero_to_zero=True,
            gradient_at_zero=True,
            gradient_fix=None,
            nonnegative=False,
            sign_keeping=True,  # a convex combination (softmax weights)
            identity_on_nonnegative=False,
            normalises=False,
            eval_identity=False,
            sums=False,
            activation=False,
            square=None,
            identity=No("mix chooses among its inputs; it is no layer"),
            zeroable=(),
            head=False,
            adapters=(),
            randomised=False,
            index_bound=None,
            macs=no_macs,
        ),
    )
)
