"""Ops that join or reshape values: add, mul, concat, flatten."""

from __future__ import annotations

import math
from collections.abc import Sequence

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


def _same_shapes(what: str):
    def infer(a: object, ins: Sequence[TensorType]) -> TensorType:
        first = ins[0]
        for i, t in enumerate(ins[1:], start=1):
            if t != first:
                raise fail(
                    f"{what} needs inputs of one type",
                    field=f"inputs[{i}]",
                    expected=str(first),
                    found=t,
                )
        return first

    return infer


register(
    OpDef(
        name="add",
        attrs=NoAttrs,
        infer=_same_shapes("add"),
        min_inputs=2,
        max_inputs=None,
        channels=Channels.JOIN,
        doc="elementwise sum of its inputs",
        facts=_join("add", gradient_at_zero=True, sums=True),
    )
)
register(
    OpDef(
        name="mul",
        attrs=NoAttrs,
        infer=_same_shapes("mul"),
        min_inputs=2,
        max_inputs=None,
        channels=Channels.JOIN,
        doc="elementwise product of its inputs",
        facts=_join(
            "mul",
            gradient_at_zero=No(
                "a product of channels that are 0 has zero gradient, so the new units could "
                "never learn"
            ),
            sums=False,
        ),
    )
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
