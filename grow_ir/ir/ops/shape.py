"""Ops that reduce, move, cut or make values without weights: mean and sum over axes,
reshape, unflatten, transpose, permute, squeeze, unsqueeze, select, slice, pad, matmul,
positions (0..L-1) and a learned tensor as a value (``parameter``).

Each declares ``Channels.MOVE`` with an ``axis_map``: where each input axis lands whole in
the output, or why it does not (reduced, cut, split, merged, contracted). The one channel
walk (``passes/channels.py``) reads that map, so widening follows a channel axis through a
permute or a reshape that keeps it whole, and refuses with the op's reason otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch
from pydantic import NonNegativeInt, field_validator

from grow_ir.ir.ops.base import (
    Attrs,
    Channels,
    NoAttrs,
    OpDef,
    ParamSpec,
    fail,
    known,
    normalize_axis,
    register,
    require_float,
)
from grow_ir.ir.ops.facts import Fact, No, OpFacts, parameter_free
from grow_ir.ir.ops.macs import MacsFn, no_macs, numel
from grow_ir.ir.ops.structure import broadcast_map, broadcast_shape
from grow_ir.ir.types import DTYPES, Dim, TensorType

AxisMap = tuple[int | No | None, ...]


def _facts(
    name: str,
    *,
    zero_to_zero: Fact = True,
    gradient_at_zero: Fact = True,
    sign_keeping: bool = True,
    nonnegative: bool = False,
    macs: MacsFn = no_macs,
) -> OpFacts:
    """The facts of a weightless op that moves values without changing them (the
    arguments name the facts where an op differs)."""
    return parameter_free(
        name,
        zero_to_zero=zero_to_zero,
        gradient_at_zero=gradient_at_zero,
        nonnegative=nonnegative,
        sign_keeping=sign_keeping,
        normalises=False,
        eval_identity=False,
        activation=False,
        gradient_fix=None,
        identity_on_nonnegative=False,
        sums=False,
        macs=macs,
    )


def _tuple(v: object) -> object:
    return tuple(v) if isinstance(v, list) else v


def _axes(dims: Sequence[int], rank: int, field: str) -> list[int]:
    """Distinct axes in ``[0, rank)``, sorted; raise for a repeated one."""
    axes = sorted(normalize_axis(d, rank, field) for d in dims)
    if len(set(axes)) != len(axes):
        raise fail("an axis is named twice", field=field, expected="distinct axes", found=dims)
    return axes


# ---- mean and sum over axes ---------------------------------------------------------------


class ReduceAttrs(Attrs):
    """``torch.mean`` / ``torch.sum`` over ``dim`` (one axis or several), ``keepdim``
    keeping them as size 1."""

    dim: tuple[int, ...]
    keepdim: bool = False

    @field_validator("dim", mode="before")
    @classmethod
    def _one(cls, v: object) -> object:
        return (v,) if isinstance(v, int) else _tuple(v)


def _reduce_infer(name: str):
    def infer(a: ReduceAttrs, ins: Sequence[TensorType]) -> TensorType:
        (x,) = ins
        require_float(x, name)
        if not a.dim:
            raise fail(f"{name} needs an axis", field="dim", expected="one axis or more", found=[])
        axes = _axes(a.dim, x.rank, "dim")
        if a.keepdim:
            return TensorType(tuple(1 if i in axes else d for i, d in enumerate(x.shape)), x.dtype)
        return TensorType(tuple(d for i, d in enumerate(x.shape) if i not in axes), x.dtype)

    return infer


def _reduce_map(name: str):
    def axis_map(a: ReduceAttrs, ins: Sequence[TensorType]) -> tuple[AxisMap]:
        rank = ins[0].rank
        axes = _axes(a.dim, rank, "dim")
        out: list[int | No | None] = []
        kept = 0
        for i in range(rank):
            if i in axes:
                out.append(No(f"{name}s over axis {i}, mixing every entry along it"))
                kept += a.keepdim
            else:
                out.append(kept)
                kept += 1
        return (tuple(out),)

    return axis_map


for _name, _doc in [("mean", "torch.mean over dim"), ("sum", "torch.sum over dim")]:
    register(
        OpDef(
            name=_name,
            attrs=ReduceAttrs,
            infer=_reduce_infer(_name),
            doc=_doc,
            channels=Channels.MOVE,
            axis_map=_reduce_map(_name),
            facts=_facts(_name),
        )
    )


# ---- reshapes -----------------------------------------------------------------------------


def _product(dims: Sequence[Dim]) -> tuple[int, tuple[str, ...]]:
    """The known part of a product of dims and its symbolic factors (sorted)."""
    size = math.prod(d for d in dims if isinstance(d, int))
    return size, tuple(sorted(str(d) for d in dims if not isinstance(d, int)))


def _fill(x: TensorType, sizes: Sequence[int], what: str, field: str) -> tuple[Dim, ...]:
    """``sizes`` (positive, or one -1) as the shape of ``x``'s elements: the -1 becomes
    what is left, a symbol when the only unknown factor left is one symbol."""
    if any(s == 0 or s < -1 for s in sizes) or list(sizes).count(-1) > 1:
        raise fail(
            f"{what} sizes must be positive, with at most one -1",
            field=field,
            expected="positive sizes and at most one -1",
            found=list(sizes),
        )
    have, symbols = _product(x.shape)
    want = math.prod(s for s in sizes if s != -1)
    if -1 not in sizes:
        if symbols or have != want:
            raise fail(
                f"{what} must keep the number of elements",
                field=field,
                expected=f"sizes whose product is {_describe(have, symbols)}",
                found=list(sizes),
            )
        return tuple(sizes)
    if have % want:
        raise fail(
            f"{what} sizes do not divide the number of elements",
            field=field,
            expected=f"sizes dividing {_describe(have, symbols)}",
            found=list(sizes),
        )
    rest = have // want
    if len(symbols) > 1 or (symbols and rest != 1):
        raise fail(
            f"{what}'s -1 would stand for a product of symbolic sizes",
            field=field,
            expected="-1 standing for one known size or one symbolic axis",
            found=f"{_describe(rest, symbols)} left for the -1",
        )
    inferred: Dim = symbols[0] if symbols else rest
    return tuple(inferred if s == -1 else s for s in sizes)


def _describe(size: int, symbols: tuple[str, ...]) -> str:
    return " * ".join([str(size), *symbols]) if symbols else str(size)


def _whole_axes(before: Sequence[Dim], after: Sequence[Dim]) -> AxisMap:
    """For a reshape of ``before`` into ``after``: the output axis holding each input axis
    whole (same size, the same number of elements before it), else No."""
    out: list[int | No | None] = []
    for i, d in enumerate(before):
        prefix = _product(before[:i])
        target = next(
            (j for j, e in enumerate(after) if e == d and _product(after[:j]) == prefix), None
        )
        out.append(
            target
            if target is not None
            else No(f"splits or merges axis {i} (size {d!r}) with other axes")
        )
    return tuple(out)


class ReshapeAttrs(Attrs):
    """``torch.reshape(input, shape)``: positive sizes and at most one -1 (what is left:
    a known size, or one symbolic axis such as the batch)."""

    shape: tuple[int, ...]

    _shape = field_validator("shape", mode="before")(classmethod(lambda cls, v: _tuple(v)))


def _reshape_infer(a: ReshapeAttrs, ins: Sequence[TensorType]) -> TensorType:
    (x,) = ins
    return TensorType(_fill(x, a.shape, "reshape", "shape"), x.dtype)


def _shape_entry(a: Any, ins: Sequence[TensorType], axis: int) -> str | None:
    return f"shape[{axis}]" if a.shape[axis] != -1 else None


register(
    OpDef(
        name="reshape",
        attrs=ReshapeAttrs,
        infer=_reshape_infer,
        doc="torch.reshape (one -1 allowed)",
        channels=Channels.MOVE,
        axis_map=lambda a, ins: (_whole_axes(ins[0].shape, _reshape_infer(a, ins).shape),),
        size_attr=_shape_entry,
        facts=_facts("reshape"),
    )
)


class UnflattenAttrs(Attrs):
    """``torch.unflatten(input, dim, sizes)``: axis ``dim`` split into ``sizes`` (at most
    one -1)."""

    dim: int
    sizes: tuple[int, ...]

    _sizes = field_validator("sizes", mode="before")(classmethod(lambda cls, v: _tuple(v)))


def _unflatten_infer(a: UnflattenAttrs, ins: Sequence[TensorType]) -> TensorType:
    (x,) = ins
    axis = normalize_axis(a.dim, x.rank, "dim")
    if not a.sizes:
        raise fail("unflatten needs sizes", field="sizes", expected="one size or more", found=[])
    part = TensorType((x.shape[axis],), x.dtype)
    sizes = _fill(part, a.sizes, "unflatten", "sizes")
    return TensorType((*x.shape[:axis], *sizes, *x.shape[axis + 1 :]), x.dtype)


def _unflatten_map(a: UnflattenAttrs, ins: Sequence[TensorType]) -> tuple[AxisMap]:
    x = ins[0]
    axis = normalize_axis(a.dim, x.rank, "dim")
    more = len(a.sizes) - 1
    if more == 0:
        return (tuple(range(x.rank)),)
    return (
        tuple(
            i
            if i < axis
            else i + more
            if i > axis
            else No(f"splits axis {axis} into {list(a.sizes)}")
            for i in range(x.rank)
        ),
    )


register(
    OpDef(
        name="unflatten",
        attrs=UnflattenAttrs,
        infer=_unflatten_infer,
        doc="torch.unflatten: one axis split into several",
        channels=Channels.MOVE,
        axis_map=_unflatten_map,
        facts=_facts("unflatten"),
    )
)


class TransposeAttrs(Attrs):
    """``torch.transpose(input, dim0, dim1)``."""

    dim0: int
    dim1: int


class PermuteAttrs(Attrs):
    """``torch.permute(input, dims)``: output axis i is input axis ``dims[i]``."""

    dims: tuple[int, ...]

    _dims = field_validator("dims", mode="before")(classmethod(lambda cls, v: _tuple(v)))


def permutation(op: str, a: Any, rank: int) -> list[int]:
    """The input axis of each output axis of a transpose or permute."""
    if op == "transpose":
        perm = list(range(rank))
        i, j = normalize_axis(a.dim0, rank, "dim0"), normalize_axis(a.dim1, rank, "dim1")
        perm[i], perm[j] = perm[j], perm[i]
        return perm
    if len(a.dims) != rank:
        raise fail(
            "permute needs one entry per axis",
            field="dims",
            expected=f"{rank} axes",
            found=list(a.dims),
        )
    perm = [normalize_axis(d, rank, "dims") for d in a.dims]
    if sorted(perm) != list(range(rank)):
        raise fail(
            "permute needs each axis once", field="dims", expected="a permutation", found=a.dims
        )
    return perm


for _name, _attrs, _doc in [
    ("transpose", TransposeAttrs, "torch.transpose: two axes swapped"),
    ("permute", PermuteAttrs, "torch.permute: the axes reordered"),
]:

    def _perm_infer(a: Any, ins: Sequence[TensorType], _op: str = _name) -> TensorType:
        x = ins[0]
        return TensorType(tuple(x.shape[i] for i in permutation(_op, a, x.rank)), x.dtype)

    def _perm_map(a: Any, ins: Sequence[TensorType], _op: str = _name) -> tuple[AxisMap]:
        perm = permutation(_op, a, ins[0].rank)
        return (tuple(perm.index(i) for i in range(len(perm))),)

    register(
        OpDef(
            name=_name,
            attrs=_attrs,
            infer=_perm_infer,
            doc=_doc,
            channels=Channels.MOVE,
            axis_map=_perm_map,
            facts=_facts(_name),
        )
    )


class SqueezeAttrs(Attrs):
    """``torch.squeeze(input, dim)``: the size-1 axes ``dim`` removed."""

    dim: tuple[int, ...]

    @field_validator("dim", mode="before")
    @classmethod
    def _one(cls, v: object) -> object:
        return (v,) if isinstance(v, int) else _tuple(v)


def _squeeze_axes(a: SqueezeAttrs, x: TensorType) -> list[int]:
    axes = _axes(a.dim, x.rank, "dim")
    for i in axes:
        if x.shape[i] != 1:
            raise fail(
                "squeeze removes axes of size 1 only",
                field="dim",
                expected=f"axes of size 1 of {x}",
                found=f"axis {i} of size {x.shape[i]!r}",
            )
    return axes


def _squeeze_infer(a: SqueezeAttrs, ins: Sequence[TensorType]) -> TensorType:
    x = ins[0]
    axes = _squeeze_axes(a, x)
    return TensorType(tuple(d for i, d in enumerate(x.shape) if i not in axes), x.dtype)


def _squeeze_map(a: SqueezeAttrs, ins: Sequence[TensorType]) -> tuple[AxisMap]:
    axes = _squeeze_axes(a, ins[0])
    out: list[int | No | None] = []
    for i in range(ins[0].rank):
        out.append(No(f"removes axis {i}") if i in axes else i - sum(j < i for j in axes))
    return (tuple(out),)


register(
    OpDef(
        name="squeeze",
        attrs=SqueezeAttrs,
        infer=_squeeze_infer,
        doc="torch.squeeze of given size-1 axes",
        channels=Channels.MOVE,
        axis_map=_squeeze_map,
        facts=_facts("squeeze"),
    )
)


class UnsqueezeAttrs(Attrs):
    """``torch.unsqueeze(input, dim)``: a size-1 axis inserted at ``dim``."""

    dim: int


def _unsqueeze_at(a: UnsqueezeAttrs, x: TensorType) -> int:
    return normalize_axis(a.dim, x.rank + 1, "dim")


def _unsqueeze_infer(a: UnsqueezeAttrs, ins: Sequence[TensorType]) -> TensorType:
    x = ins[0]
    at = _unsqueeze_at(a, x)
    return TensorType((*x.shape[:at], 1, *x.shape[at:]), x.dtype)


register(
    OpDef(
        name="unsqueeze",
        attrs=UnsqueezeAttrs,
        infer=_unsqueeze_infer,
        doc="torch.unsqueeze",
        channels=Channels.MOVE,
        axis_map=lambda a, ins: (
            tuple(i + (i >= _unsqueeze_at(a, ins[0])) for i in range(ins[0].rank)),
        ),
        facts=_facts("unsqueeze"),
    )
)


# ---- select and slice -------------------------------------------------------------------


class SelectAttrs(Attrs):
    """``torch.select(input, dim, index)``: entry ``index`` of axis ``dim``, the axis
    removed (ViT's class token ``x[:, 0]``)."""

    dim: int
    index: int


def _select_infer(a: SelectAttrs, ins: Sequence[TensorType]) -> TensorType:
    x = ins[0]
    axis = normalize_axis(a.dim, x.rank, "dim")
    size = x.shape[axis]
    if isinstance(size, int) and not -size <= a.index < size:
        raise fail(
            "index out of range", field="index", expected=f"in [{-size}, {size})", found=a.index
        )
    if not isinstance(size, int) and a.index != 0:
        # a symbolic axis may hold a single entry at run time (a batch of one)
        raise fail(
            "an index other than 0 into a symbolic axis, which may have a single entry",
            field="index",
            expected="index 0",
            found=a.index,
        )
    return TensorType(tuple(d for i, d in enumerate(x.shape) if i != axis), x.dtype)


def _cut_map(axis: int, rank: int, what: str, removed: bool) -> tuple[AxisMap]:
    return (
        tuple(
            No(f"{what} axis {i}, so each channel there is not kept whole")
            if i == axis
            else i - (removed and i > axis)
            for i in range(rank)
        ),
    )


register(
    OpDef(
        name="select",
        attrs=SelectAttrs,
        infer=_select_infer,
        doc="torch.select: one entry of an axis (the axis removed)",
        channels=Channels.MOVE,
        axis_map=lambda a, ins: _cut_map(
            normalize_axis(a.dim, ins[0].rank, "dim"), ins[0].rank, "selects one entry of", True
        ),
        facts=_facts("select"),
    )
)


class SliceAttrs(Attrs):
    """``x[..., start:end:step, ...]`` on axis ``dim`` (ATen's ``slice``; ``end`` None is
    the end of the axis; positive ``step``)."""

    dim: int
    start: int = 0
    end: int | None = None
    step: int = 1


def _slice_infer(a: SliceAttrs, ins: Sequence[TensorType]) -> TensorType:
    x = ins[0]
    axis = normalize_axis(a.dim, x.rank, "dim")
    if a.step < 1:
        raise fail("slice needs a positive step", field="step", expected="1 or more", found=a.step)
    size = known(x.shape[axis], "the sliced axis")
    length = len(range(*slice(a.start, a.end, a.step).indices(size)))
    if length == 0:
        raise fail(
            "the slice is empty",
            field="start",
            expected=f"a range with entries in axis {axis} of size {size}",
            found=f"{a.start}:{a.end}:{a.step}",
        )
    return x.with_dim(axis, length)


register(
    OpDef(
        name="slice",
        attrs=SliceAttrs,
        infer=_slice_infer,
        doc="x[start:end:step] along dim",
        channels=Channels.MOVE,
        axis_map=lambda a, ins: _cut_map(
            normalize_axis(a.dim, ins[0].rank, "dim"), ins[0].rank, "slices", False
        ),
        facts=_facts("slice"),
    )
)


# ---- pad ------------------------------------------------------------------------------------


class PadAttrs(Attrs):
    """``torch.nn.functional.pad(input, pad, value=value)``, constant mode: ``pad`` holds
    (before, after) pairs from the last axis backwards, as PyTorch's; sizes >= 0."""

    pad: tuple[int, ...]
    value: float = 0.0

    _pad = field_validator("pad", mode="before")(classmethod(lambda cls, v: _tuple(v)))


def pad_pairs(a: PadAttrs, rank: int) -> dict[int, tuple[int, int]]:
    """``{axis: (before, after)}`` of every padded axis."""
    if len(a.pad) % 2 or len(a.pad) > 2 * rank or any(p < 0 for p in a.pad):
        raise fail(
            "pad needs (before, after) pairs of sizes >= 0, at most one per axis",
            field="pad",
            expected=f"an even number (at most {2 * rank}) of sizes >= 0",
            found=list(a.pad),
        )
    pairs = {rank - 1 - k: (a.pad[2 * k], a.pad[2 * k + 1]) for k in range(len(a.pad) // 2)}
    return {k: v for k, v in pairs.items() if v != (0, 0)}


def _pad_infer(a: PadAttrs, ins: Sequence[TensorType]) -> TensorType:
    x = ins[0]
    require_float(x, "pad")
    shape = list(x.shape)
    for axis, (before, after) in pad_pairs(a, x.rank).items():
        shape[axis] = known(x.shape[axis], "a padded axis") + before + after
    return TensorType(tuple(shape), x.dtype)


register(
    OpDef(
        name="pad",
        attrs=PadAttrs,
        infer=_pad_infer,
        doc="torch.nn.functional.pad with a constant",
        channels=Channels.MOVE,
        axis_map=lambda a, ins: (
            tuple(
                No(f"pads axis {i}, adding entries that belong to no channel")
                if i in pad_pairs(a, ins[0].rank)
                else i
                for i in range(ins[0].rank)
            ),
        ),
        facts=_facts(
            "pad",
            zero_to_zero=No("pad fills with its value, which need not be 0"),
            sign_keeping=False,
        ),
    )
)


# ---- matmul ---------------------------------------------------------------------------------


def _matmul_shapes(ins: Sequence[TensorType]) -> tuple[tuple, Dim]:
    """The broadcast batch shape and the contracted size of ``a @ b`` (ranks >= 2)."""
    a, b = ins
    for i, t in enumerate(ins):
        require_float(t, "matmul")
        if t.rank < 2:
            raise fail(
                "matmul needs inputs of rank 2 or more",
                field=f"inputs[{i}]",
                expected="rank >= 2",
                found=t,
            )
    if a.shape[-1] != b.shape[-2]:
        raise fail(
            "matmul's inner sizes differ",
            field="inputs[1]",
            expected=f"size {a.shape[-1]!r} on axis -2",
            found=b,
        )
    batch = broadcast_shape(
        "matmul", [TensorType(a.shape[:-2], a.dtype), TensorType(b.shape[:-2], b.dtype)]
    )
    return batch, a.shape[-1]


def _matmul_infer(a: NoAttrs, ins: Sequence[TensorType]) -> TensorType:
    batch, _ = _matmul_shapes(ins)
    return TensorType((*batch, ins[0].shape[-2], ins[1].shape[-1]), ins[0].dtype)


def _matmul_map(a: NoAttrs, ins: Sequence[TensorType]) -> tuple[AxisMap, AxisMap]:
    batch, _ = _matmul_shapes(ins)
    x, y = ins
    heads = broadcast_map(
        [TensorType(x.shape[:-2], x.dtype), TensorType(y.shape[:-2], y.dtype)], batch
    )
    n = len(batch)
    left = (*heads[0], n, No(f"contracts axis {x.rank - 1} with the other operand's"))
    right = (*heads[1], No(f"contracts axis {y.rank - 2} with the other operand's"), n + 1)
    return left, right


def matmul_macs(attrs: Any, inputs: Sequence[TensorType], output: TensorType) -> int:
    """Every output element is a dot product over the contracted axis."""
    return numel(output) * int(inputs[0].shape[-1])


register(
    OpDef(
        name="matmul",
        attrs=NoAttrs,
        infer=_matmul_infer,
        doc="torch.matmul of inputs of rank >= 2 (batched, broadcasting)",
        min_inputs=2,
        max_inputs=2,
        channels=Channels.MOVE,
        axis_map=_matmul_map,
        facts=_facts(
            "matmul",
            gradient_at_zero=No("a product of zeros has zero gradient"),
            macs=matmul_macs,
        ),
    )
)


# ---- values made from nothing but a shape --------------------------------------------------


class PositionsAttrs(Attrs):
    """``torch.arange(L)`` for ``L = input.shape[dim]`` (int64), as ``[L]``, or as
    ``[1, L]`` with ``batch_axis`` (GPT-2's position ids).

    With ``padding_idx`` the input is token ids and the positions are counted from them,
    as RoBERTa's ``create_position_ids_from_input_ids`` counts them: along ``dim``, the
    tokens that are not ``padding_idx`` are numbered ``padding_idx + 1, padding_idx + 2,
    ...`` and every padding token gets ``padding_idx``; the output has the input's shape."""

    dim: int = 1
    batch_axis: bool = False
    padding_idx: NonNegativeInt | None = None


def _positions_infer(a: PositionsAttrs, ins: Sequence[TensorType]) -> TensorType:
    x = ins[0]
    axis = normalize_axis(a.dim, x.rank, "dim")
    if a.padding_idx is None:
        return TensorType((1, x.shape[axis]) if a.batch_axis else (x.shape[axis],), "int64")
    if x.is_float or a.batch_axis:
        raise fail(
            "positions counted past padding read token ids and have their shape",
            field="padding_idx",
            expected="an integer input and batch_axis false",
            found=f"{x} with batch_axis {a.batch_axis}",
        )
    return TensorType(x.shape, "int64")


def _positions_map(a: PositionsAttrs, ins: Sequence[TensorType]) -> tuple[AxisMap]:
    axis = normalize_axis(a.dim, ins[0].rank, "dim")
    # counted past padding, every other axis of the ids is the output's own
    kept = a.padding_idx is not None
    return (
        tuple(
            No(f"counts the entries of axis {i}") if i == axis else (i if kept else None)
            for i in range(ins[0].rank)
        ),
    )


register(
    OpDef(
        name="positions",
        attrs=PositionsAttrs,
        infer=_positions_infer,
        doc="0..L-1 (int64) for the length L of an input's axis, or counted past padding "
        "tokens (RoBERTa)",
        channels=Channels.MOVE,
        axis_map=_positions_map,
        facts=_facts(
            "positions",
            zero_to_zero=No("positions count 0..L-1 whatever the input"),
            gradient_at_zero=No("positions are integers: no gradient"),
            nonnegative=True,
        ),
    )
)


class ParameterAttrs(Attrs):
    """A learned tensor of ``shape`` as a value (a class token ``[1, 1, D]``, a positional
    table ``[1, L, D]``); with an input, axis 0 (of size 1) is expanded to the input's
    batch (``cls_token.expand(N, -1, -1)``)."""

    shape: tuple[int, ...]
    std: float = 0.02

    _shape = field_validator("shape", mode="before")(classmethod(lambda cls, v: _tuple(v)))


def _parameter_infer(a: ParameterAttrs, ins: Sequence[TensorType]) -> TensorType:
    if not a.shape or any(s < 1 for s in a.shape):
        raise fail(
            "a parameter needs positive sizes", field="shape", expected="sizes >= 1", found=a.shape
        )
    dtype = ins[0].dtype if ins and ins[0].is_float else "float32"
    if not ins:
        return TensorType(a.shape, dtype)
    if ins[0].rank == 0:
        raise fail(
            "a parameter expanded to the batch needs an input with a batch axis",
            field="inputs",
            expected="an input of rank 1 or more",
            found=ins[0],
        )
    if a.shape[0] != 1:
        raise fail(
            "a parameter expanded to the batch needs a first axis of size 1",
            field="shape",
            expected="[1, ...]",
            found=list(a.shape),
        )
    return TensorType((ins[0].shape[0], *a.shape[1:]), dtype)


def _parameter_params(a: ParameterAttrs, ins: Sequence[TensorType]) -> dict[str, ParamSpec]:
    return {"weight": ParamSpec(a.shape, _parameter_infer(a, ins).dtype)}


def _parameter_init(a: ParameterAttrs, ins: Sequence[TensorType], gen: torch.Generator) -> dict:
    dtype = DTYPES[_parameter_infer(a, ins).dtype]
    return {"weight": (torch.randn(a.shape, generator=gen) * a.std).to(dtype)}


def _parameter_size(a: ParameterAttrs, ins: Sequence[TensorType], axis: int) -> str | None:
    return None if ins and axis == 0 else f"shape[{axis}]"


register(
    OpDef(
        name="parameter",
        attrs=ParameterAttrs,
        infer=_parameter_infer,
        params=_parameter_params,
        init=_parameter_init,
        doc="a learned tensor as a value (class token, positional table), N(0, std) init",
        min_inputs=0,
        max_inputs=1,
        channels=Channels.TENSOR,
        size_attr=_parameter_size,
        facts=replace(
            _facts(
                "parameter",
                zero_to_zero=No("a parameter's value does not depend on the input"),
                gradient_at_zero=No("a parameter does not read its input's values"),
                sign_keeping=False,
            ),
            fresh_zero_to_zero=No("a parameter's value does not depend on the input"),
            zeroable=("weight",),
        ),
    )
)
