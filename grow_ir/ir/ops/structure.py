"""Ops that join or reshape values: add, sub, mul, div (broadcasting), concat, flatten."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace

from grow_ir.ir.ops.base import (
    Attrs,
    Channels,
    NoAttrs,
    OpDef,
    fail,
    normalize_axis,
    register,
)
from grow_ir.ir.ops.facts import Fact, No, OpFacts, parameter_free
from grow_ir.ir.ops.macs import no_macs
from grow_ir.ir.types import TensorType


def _join(name: str, *, gradient_at_zero: Fact, sums: bool) -> OpFacts:
    """The facts of an op that joins or reshapes values without changing them."""
    return parameter_free(
        name,
        zero_to_zero=True,
        gradient_at_zero=gradient_at_zero,
        nonnegative=False,
        sign_keeping=True,
        normalises=False,
        eval_identity=False,
        activation=False,
        gradient_fix=None,
        identity_on_nonnegative=False,
        sums=sums,
        macs=no_macs,
    )


def broadcast_shape(what: str, ins: Sequence[TensorType]) -> tuple:
    """The shape of ``ins`` broadcast together (PyTorch's rule: axes aligned from the
    right, a size-1 axis stretches). Symbolic dims broadcast only with themselves or 1."""
    rank = max(t.rank for t in ins)
    shape: list = [1] * rank
    for i, t in enumerate(ins):
        if t.dtype != ins[0].dtype:
            raise fail(
                f"{what} needs inputs of one dtype",
                field=f"inputs[{i}]",
                expected=ins[0].dtype,
                found=t,
            )
        for k, d in enumerate(t.shape, start=rank - t.rank):
            if d == 1 or d == shape[k]:
                continue
            if shape[k] != 1:
                raise fail(
                    f"{what} needs inputs that broadcast together",
                    field=f"inputs[{i}]",
                    expected=f"size {shape[k]!r} or 1 on axis {k - (rank - t.rank)} of {t}",
                    found=repr(d),
                )
            shape[k] = d
    return tuple(shape)


def broadcast_map(ins: Sequence[TensorType], out: tuple) -> tuple[tuple[int | No, ...], ...]:
    """Each input axis lands on the output axis it is aligned with; a size-1 axis that is
    stretched holds one value for all the output's entries, so it cannot carry channels."""
    maps = []
    for t in ins:
        lead = len(out) - t.rank
        maps.append(
            tuple(
                No(f"broadcasts axis {k} of size 1 to {out[lead + k]!r}")
                if d == 1 and out[lead + k] != 1
                else lead + k
                for k, d in enumerate(t.shape)
            )
        )
    return tuple(maps)


def _elementwise(name: str, doc: str, facts: OpFacts, max_inputs: int | None) -> OpDef:
    def infer(a: object, ins: Sequence[TensorType]) -> TensorType:
        return TensorType(broadcast_shape(name, ins), ins[0].dtype)

    return register(
        OpDef(
            name=name,
            attrs=NoAttrs,
            infer=infer,
            min_inputs=2,
            max_inputs=max_inputs,
            channels=Channels.JOIN,
            axis_map=lambda a, ins: broadcast_map(ins, broadcast_shape(name, ins)),
            doc=doc,
            facts=facts,
        )
    )


_elementwise(
    "add",
    "elementwise sum of its inputs (broadcasting)",
    _join("add", gradient_at_zero=True, sums=True),
    None,
)
_elementwise(
    "mul",
    "elementwise product of its inputs (broadcasting: a gate [N, C, 1, 1], a scale [C])",
    _join(
        "mul",
        gradient_at_zero=No(
            "a product of channels that are 0 has zero gradient, so the new units could never learn"
        ),
        sums=False,
    ),
    None,
)
_elementwise(
    "sub",
    "torch.sub: the first input minus the second (broadcasting)",
    replace(_join("sub", gradient_at_zero=True, sums=False), sign_keeping=False),
    2,
)
_elementwise(
    "div",
    "torch.div: the first input divided by the second (broadcasting)",
    replace(
        _join(
            "div",
            gradient_at_zero=No("0 / 0 is undefined, and so is its gradient"),
            sums=False,
        ),
        zero_to_zero=No("0 / 0 is undefined"),
        fresh_zero_to_zero=No("0 / 0 is undefined"),
    ),
    2,
)


class ConcatAttrs(Attrs):
    """``torch.cat`` along ``dim``."""

    dim: int = 1


def _concat_infer(a: ConcatAttrs, ins: Sequence[TensorType]) -> TensorType:
    first = ins[0]
    axis = normalize_axis(a.dim, first.rank, "dim")
    total = 0
    for i, t in enumerate(ins):
        rest = [d for j, d in enumerate(t.shape) if j != axis]
        want = [d for j, d in enumerate(first.shape) if j != axis]
        if t.rank != first.rank or rest != want or t.dtype != first.dtype:
            raise fail(
                "concat needs inputs that agree except along dim",
                field=f"inputs[{i}]",
                expected=f"{first} (any size on axis {axis})",
                found=t,
            )
        d = t.shape[axis]
        if not isinstance(d, int):
            raise fail(
                "concat along a symbolic axis",
                field="dim",
                expected="an axis of known size",
                found=repr(d),
            )
        total += d
    return first.with_dim(axis, total)


register(
    OpDef(
        name="concat",
        attrs=ConcatAttrs,
        infer=_concat_infer,
        min_inputs=2,
        max_inputs=None,
        channels=Channels.CONCAT,
        doc="torch.cat along dim",
        facts=_join("concat", gradient_at_zero=True, sums=False),
        channel_axis=lambda a, ins: normalize_axis(a.dim, ins[0].rank, "dim"),
    )
)


class FlattenAttrs(Attrs):
    """``torch.nn.Flatten(start_dim, end_dim)``."""

    start_dim: int = 1
    end_dim: int = -1


def _flatten_infer(a: FlattenAttrs, ins: Sequence[TensorType]) -> TensorType:
    (x,) = ins
    start = normalize_axis(a.start_dim, x.rank, "start_dim")
    end = normalize_axis(a.end_dim, x.rank, "end_dim")
    if start > end:
        raise fail(
            "start_dim after end_dim",
            field="end_dim",
            expected=f"an axis at or after {start}",
            found=a.end_dim,
        )
    folded = x.shape[start : end + 1]
    if any(not isinstance(d, int) for d in folded):
        raise fail(
            "flatten folds a symbolic axis",
            field="start_dim",
            expected="axes of known size",
            found=x,
        )
    size = math.prod(folded)  # type: ignore[arg-type]
    return TensorType((*x.shape[:start], size, *x.shape[end + 1 :]), x.dtype)


register(
    OpDef(
        name="flatten",
        attrs=FlattenAttrs,
        infer=_flatten_infer,
        channels=Channels.FLATTEN,
        doc="torch.nn.Flatten",
        facts=_join("flatten", gradient_at_zero=True, sums=False),
        channel_axis=lambda a, ins: normalize_axis(a.start_dim, ins[0].rank, "start_dim"),
    )
)
