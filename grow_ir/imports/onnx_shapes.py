"""Shapes an ONNX file computes, read as what they size: positions, expands to the batch,
reshapes and resizes.

Exporters with dynamic dims write ``arange(L)`` as ``Shape`` → ``Squeeze`` → ``Range``,
``cls_token.expand(N, -1, -1)`` as ``Shape`` → ``Concat`` → ``Expand``, and a reshape or a
resize that keeps some axes (``unflatten``, a flatten of symbolic trailing dims,
``interpolate(size=...)``) as ``Shape`` slices concatenated with constants. grow-ir has no
shape values: its ``positions`` and batch-expanded ``parameter`` ops take the sizes from an
input, and ``flatten``, ``unflatten`` and ``upsample`` have them as attributes. So a computed
shape is bound to :class:`Dims` (which axis of which value each entry is) until a
``Range``, ``Expand``, ``Reshape`` or ``Resize`` reads it (:data:`SIZED`), and is refused
where anything else reads it. Constant sizes (files with static shapes) are matched against
the first input's axes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

from grow_ir.imports.torch_rules import Unsupported

if TYPE_CHECKING:
    from grow_ir.imports.onnx_import import _Context

Entry = int | tuple[str, int]
"""A size: a constant, or ``(value, axis)``: the size of an IR value's axis."""


@dataclass(frozen=True)
class Dims:
    """A shape computed in the file: its entries, and whether it is a 0-d scalar (one
    entry) rather than a 1-d shape."""

    entries: tuple[Entry, ...]
    scalar: bool = False


def _attr(node: onnx.NodeProto, name: str, default: Any) -> Any:
    found = [a for a in node.attribute if a.name == name]
    return onnx.helper.get_attribute_value(found[0]) if found else default


def shape(ctx: _Context, node: onnx.NodeProto) -> None:
    """``Shape`` (with ``start``/``end``): the axes of a value, as :class:`Dims`."""
    value = ctx.value(node.input[0])
    rank = ctx.builder.types[value].rank
    start = int(_attr(node, "start", 0))
    end = int(_attr(node, "end", rank))
    start, end = (max(0, min(rank, i + rank if i < 0 else i)) for i in (start, end))
    ctx.env[node.output[0]] = Dims(tuple((value, i) for i in range(start, end)))


def _entries(ctx: _Context, name: str) -> Dims | None:
    """What ``name`` holds as sizes: computed :class:`Dims`, or a constant int tensor of
    rank <= 1; None when it is neither."""
    bound = ctx.env.get(name)
    if isinstance(bound, Dims):
        return bound
    array = ctx.consts.get(name)
    if array is None or array.ndim > 1 or array.dtype.kind not in "iu":
        return None
    return Dims(tuple(int(v) for v in array.reshape(-1)), scalar=array.ndim == 0)


SIZED = frozenset({"Range", "Expand", "Reshape", "Resize"})
"""The ONNX ops whose rules read :class:`Dims` themselves."""

SIZES_ONLY = f"(grow-ir: shapes only size {', '.join(sorted(SIZED))})"
"""What a refusal of any other use of a computed shape says."""


def dims_rule(ctx: _Context, node: onnx.NodeProto) -> bool:
    """Carry :class:`Dims` through ``Squeeze``, ``Unsqueeze``, ``Gather`` (constant
    indices) and ``Concat`` of sizes; False, binding nothing, when the node reads no
    computed shape or is one of :data:`SIZED`.

    Raises:
        Unsupported: any other use of a computed shape.
    """
    if node.op_type in SIZED or not any(isinstance(ctx.env.get(i), Dims) for i in node.input):
        return False
    dims = _entries(ctx, node.input[0])
    if node.op_type == "Squeeze" and dims is not None and len(dims.entries) == 1:
        out = Dims(dims.entries, scalar=True)
    elif node.op_type == "Unsqueeze" and dims is not None and dims.scalar:
        out = Dims(dims.entries)
    elif node.op_type == "Gather" and dims is not None and not dims.scalar:
        index = ctx.consts.get(node.input[1])
        if index is None or index.ndim > 1:
            raise Unsupported("picks sizes by computed indices")
        picked = tuple(dims.entries[int(i)] for i in index.reshape(-1))
        out = Dims(picked, scalar=index.ndim == 0)
    elif node.op_type == "Concat":
        parts = [_entries(ctx, i) for i in node.input]
        if any(p is None or p.scalar for p in parts):
            raise Unsupported("joins a shape with values that are not sizes")
        out = Dims(tuple(e for p in parts for e in p.entries))  # type: ignore[union-attr]
    else:
        raise Unsupported(f"computes with a shape {SIZES_ONLY}")
    ctx.env[node.output[0]] = out
    return True


def sizes(ctx: _Context, name: str) -> list[int | str] | None:
    """The sizes a shape input ``name`` holds, an int or a symbolic dim each: a constant
    (its values as written: ``0`` and ``-1`` for ``Reshape`` to read), or a shape computed
    in the file (``Concat`` of ``Shape`` slices and constants: the sizes of those axes);
    None when ``name`` is neither."""
    dims = _entries(ctx, name)
    if dims is None or dims.scalar:
        return None
    return [_size(ctx, e) for e in dims.entries]


def _size(ctx: _Context, entry: Entry) -> int | str:
    """The size an entry stands for (an int, or a symbolic dim)."""
    if isinstance(entry, int):
        return entry
    value, axis = entry
    return ctx.builder.types[value].shape[axis]


def _axis_of(ctx: _Context, entry: Entry, what: str) -> tuple[str, int]:
    """``(value, axis)`` whose size ``entry`` is: itself when computed, else the first
    input's first axis of that constant size (after the batch for a length)."""
    if not isinstance(entry, int):
        return entry
    x = next(iter(ctx.builder.inputs), None)
    if x is None:
        raise Unsupported(f"has a constant {what} and the graph no input to take it from")
    shape = ctx.builder.types[x].shape
    axes = [0] if what == "batch" else range(1, len(shape))
    axis = next((i for i in axes if shape[i] == entry), None)
    if axis is None:
        raise Unsupported(f"counts to {entry}, which is no axis of input '{x}'")
    return x, axis


def range_rule(ctx: _Context, node: onnx.NodeProto) -> None:
    """``Range(0, L, 1)`` with ``L`` an axis of a value: ``positions`` along it (then
    ``Unsqueeze`` at 0, when that is its one use: positions with a batch axis)."""
    start, limit, delta = (_entries(ctx, i) for i in node.input[:3])
    if start is None or delta is None or isinstance(ctx.env.get(node.input[0]), Dims):
        raise Unsupported("counts from or by a computed value (grow-ir: 0..L-1)")
    if start.entries != (0,) or delta.entries != (1,):
        raise Unsupported(
            f"counts from {start.entries[0]} by {delta.entries[0]} (grow-ir: positions 0..L-1)"
        )
    if limit is None or not limit.scalar:
        raise Unsupported("counts to a value that is not a size")
    value, axis = _axis_of(ctx, limit.entries[0], "length")
    attrs: dict[str, Any] = {"dim": axis}
    out = node.output[0]
    after = ctx.only_consumer(out)
    outputs = {o.name for o in ctx.model.graph.output}
    if after is not None and after.op_type == "Unsqueeze" and out not in outputs:
        axes = ctx.consts.get(after.input[1]) if len(after.input) > 1 else None
        if axes is None:
            axes = np.array(_attr(after, "axes", []))
        if axes.reshape(-1).tolist() == [0]:
            ctx.done.add(id(after))
            attrs["batch_axis"] = True
            out = after.output[0]
    ctx.env[out] = ctx.builder.add("positions", [value], ctx.hint(out, "positions"), attrs)


def expand_rule(ctx: _Context, node: onnx.NodeProto) -> None:
    """``Expand``: a learned tensor ``[1, ...]`` expanded to the batch of a value (a
    ``parameter`` that takes it), or an expand that changes no size (an alias)."""
    from grow_ir.imports.onnx_import import _operand  # that module imports this one

    data, target = node.input[0], _entries(ctx, node.input[1])
    if target is None or target.scalar:
        raise Unsupported("expands to a computed shape that is not a list of sizes")
    array = ctx.consts.get(data)
    if array is None:
        ctx.value(data)  # a clear refusal where it has no grow-ir value
    have = list((array if array is not None else ctx.type(data)).shape)
    sizes = [_size(ctx, e) for e in target.entries]
    rank = max(len(have), len(sizes))
    padded = [1] * (rank - len(have)) + have
    want = [1] * (rank - len(sizes)) + sizes
    result = [h if w == 1 else w for h, w in zip(padded, want)]
    if result == have:
        ctx.env[node.output[0]] = _operand(ctx, data)
        return
    if array is not None and have[:1] == [1] and result[1:] == have[1:]:
        value, _ = _axis_of(ctx, target.entries[len(sizes) - len(have)], "batch")
        if ctx.builder.types[value].shape[0] == result[0]:
            ctx.env[node.output[0]] = _operand(ctx, data, batch_of=value)
            return
    raise Unsupported(
        f"expands {have} to {sizes} (grow-ir: a learned tensor [1, ...] expanded to the "
        "batch, or an expand that changes no size)"
    )
