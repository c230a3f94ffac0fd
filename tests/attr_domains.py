"""Hypothesis strategies for an op's attributes, read from its ``Attrs`` model.

Each field's domain comes from its annotation: ``bool``, ``Literal`` choices, ``None`` of an
optional field, ints and floats within the bounds of ``Field(gt/ge/lt/le)`` (or
``Annotated`` ones), fixed-size tuples entry by entry, unions branch by branch. A field
with a default is sometimes left out. So a new op or attribute is drawn without editing
anything here; an annotation of a kind not listed raises, naming the op and field.

Where an attribute only makes sense for its inputs (an axis, an index, sizes), the domain is
derived from the *reference types* (the node's input types, or the operand a fresh
parameter will join) by small generic helpers: axes and sizes up to the reference's rank and
largest size; for ``tuple[int, ...]`` fields, sets of axes, permutations of the axes, shapes
made from the reference shapes (broadcastable, transposed, split, merged, with ``-1`` for a
symbolic axis) and short lists of small counts. Most draws are then impossible for the op at
hand; the op's own ``infer`` has the last word and the caller draws again.
"""

from __future__ import annotations

import functools
import math
import types
import typing
from collections.abc import Sequence
from typing import Any

from hypothesis import strategies as st

from grow_ir.ir.ops import OPS, OpDef
from grow_ir.ir.types import TensorType

Values = st.SearchStrategy[Any]

SPAN = 4
"""An int bounded on one side only is drawn within this many steps of its bound."""

FLOATS = (-1.0, -0.5, 0.0, 1e-5, 0.01, 0.1, 0.5, 1.0, 2.0)
"""The float values drawn (those within the field's bounds)."""


def attr_strategy(
    op: OpDef, refs: Sequence[TensorType], **fixed: Any
) -> st.SearchStrategy[dict[str, Any]]:
    """Attribute mappings (spec form: lists for tuples) for ``op`` next to values of types
    ``refs``: every required field, and optional ones now and then; ``fixed`` fields take the
    given values (structure a caller needs: a width, a kernel size; tuples for sequences)."""
    return _attr_strategy(op.name, tuple(refs), tuple(sorted(fixed.items())))


@functools.lru_cache(maxsize=4096)
def _attr_strategy(
    name: str, refs: tuple[TensorType, ...], fixed_items: tuple[tuple[str, Any], ...]
) -> st.SearchStrategy[dict[str, Any]]:
    # strategies are values: building (and validating) one per draw would dominate the time
    op, fixed = OPS[name], dict(fixed_items)
    required: dict[str, Values] = {}
    optional: dict[str, Values] = {}
    for name, info in op.attrs.model_fields.items():
        if name in fixed:
            value = fixed[name]
            required[name] = st.just(list(value) if isinstance(value, tuple) else value)
            continue
        try:
            values = domain(info.annotation, list(info.metadata), refs)
        except TypeError as exc:
            raise TypeError(f"{op.name}.{name}: {exc}") from None
        (required if info.is_required() else optional)[name] = values
    unknown = set(fixed) - set(op.attrs.model_fields)
    if unknown:
        raise TypeError(f"{op.name} has no attribute {sorted(unknown)}")
    return st.fixed_dictionaries(required, optional=optional)


def domain(ann: Any, meta: list[Any], refs: Sequence[TensorType]) -> Values:
    """Values of annotation ``ann`` with constraints ``meta`` (annotated-types bounds)."""
    origin = typing.get_origin(ann)
    if origin is typing.Annotated:
        base, *extra = typing.get_args(ann)
        return domain(base, [*meta, *extra], refs)
    if origin in (typing.Union, types.UnionType):
        return st.one_of(*(domain(a, meta, refs) for a in typing.get_args(ann)))
    if origin is typing.Literal:
        return st.sampled_from(typing.get_args(ann))
    if ann is type(None):
        return st.none()
    if ann is bool:
        return st.booleans()
    if ann is int:
        return _ints(meta, refs)
    if ann is float:
        return _floats(meta)
    if origin is tuple:
        args = typing.get_args(ann)
        if len(args) == 2 and args[1] is Ellipsis:
            if args[0] is int:
                return int_sequences(refs)
            return st.lists(domain(args[0], [], refs), max_size=3)
        return st.tuples(*(domain(a, [], refs) for a in args)).map(list)
    raise TypeError(f"no domain for annotation {ann!r}")


def _admits(meta: list[Any], value: float) -> bool:
    """Whether ``value`` is within every bound of ``meta``."""
    tests = {
        "gt": lambda v, b: v > b,
        "ge": lambda v, b: v >= b,
        "lt": lambda v, b: v < b,
        "le": lambda v, b: v <= b,
    }
    return all(
        test(value, bound)
        for m in meta
        for key, test in tests.items()
        if (bound := getattr(m, key, None)) is not None
    )


def _ints(meta: list[Any], refs: Sequence[TensorType]) -> Values:
    """Ints within the bounds; unbounded ones as axes or sizes of the references."""
    low = [int(m.ge) for m in meta if getattr(m, "ge", None) is not None]
    low += [int(m.gt) + 1 for m in meta if getattr(m, "gt", None) is not None]
    high = [int(m.le) for m in meta if getattr(m, "le", None) is not None]
    high += [int(m.lt) - 1 for m in meta if getattr(m, "lt", None) is not None]
    if not low and not high:
        return st.one_of(axes(refs), sizes(refs))
    lo = max(low) if low else min(high) - SPAN
    hi = min(high) if high else lo + SPAN
    return st.integers(lo, hi)


def _floats(meta: list[Any]) -> Values:
    """The values of :data:`FLOATS` within the bounds."""
    ok = [f for f in FLOATS if _admits(meta, f)]
    if not ok:
        raise TypeError(f"no value of {FLOATS} within {meta}")
    return st.sampled_from(ok)


# ---- helpers over the reference types -----------------------------------------------------


def _rank(refs: Sequence[TensorType]) -> int:
    return max((t.rank for t in refs), default=1) or 1


def _largest(refs: Sequence[TensorType]) -> int:
    return max([2, *(d for t in refs for d in t.shape if isinstance(d, int))])


def axes(refs: Sequence[TensorType]) -> st.SearchStrategy[int]:
    """An axis of a reference, counted from either end (one past the end too: unsqueeze)."""
    r = _rank(refs)
    return st.integers(-r, r)


def sizes(refs: Sequence[TensorType]) -> st.SearchStrategy[int]:
    """A size or an index up to the references' largest size, either sign."""
    m = _largest(refs)
    return st.integers(-m, m)


def int_sequences(refs: Sequence[TensorType]) -> st.SearchStrategy[list[int]]:
    """Int sequences that fit some op next to ``refs``: sets of axes, permutations, shapes
    (:func:`shapes_near`) and short lists of small counts."""
    r = _rank(refs)
    ones = sorted({i for t in refs for i, d in enumerate(t.shape) if d == 1})
    choices = [
        st.lists(st.integers(-r, r - 1), min_size=1, max_size=r, unique=True),
        st.permutations(range(r)).map(list),
        st.sampled_from(shapes_near(refs)).map(list),
        st.lists(st.integers(0, 2), max_size=2 * r),
    ]
    if ones:
        choices.append(st.lists(st.sampled_from(ones), min_size=1, unique=True))
    return st.one_of(*choices)


def shapes_near(refs: Sequence[TensorType]) -> list[tuple[int, ...]]:
    """Shapes made from the references' shapes: symbolic sizes as 1 (a broadcastable or
    batch-expanded operand) and its suffixes, one axis set to 1, the last two axes swapped,
    a matrix reading the last axis, and reshapes of the elements (one axis split in two or
    two neighbours merged, a symbolic axis as -1)."""
    out: set[tuple[int, ...]] = {(1,), (2,), (2, 3)}
    for t in refs:
        dims = [d if isinstance(d, int) else 1 for d in t.shape]
        out.update(tuple(dims[k:]) for k in range(len(dims)))
        out.update(tuple(1 if j == i else d for j, d in enumerate(dims)) for i in range(len(dims)))
        if len(dims) >= 2:
            out.add((*dims[:-2], dims[-1], dims[-2]))
        if dims:
            out.update({(dims[-1], k) for k in (1, 3)})
        symbols = [i for i, d in enumerate(t.shape) if not isinstance(d, int)]
        if len(symbols) <= 1:
            out.update(_reshapes(t, symbols))
    return sorted(out)


def _reshapes(t: TensorType, symbols: list[int]) -> set[tuple[int, ...]]:
    base = [-1 if i in symbols else int(d) for i, d in enumerate(t.shape)]
    out = {tuple(base)}
    known = math.prod(d for d in base if d != -1)
    out.add((*([-1] if symbols else []), known))
    for i, d in enumerate(base):
        if d > 1:
            for a in (k for k in range(2, d) if d % k == 0):
                out.add((*base[:i], a, d // a, *base[i + 1 :]))
                out.update({(a, d // a), (a, -1)})
        if i + 1 < len(base) and d != -1 and base[i + 1] != -1:
            out.add((*base[:i], d * base[i + 1], *base[i + 2 :]))
    return out
