"""The op definition: one `OpDef` per op, held in one registry.

An OpDef says everything the IR knows about an op: its attributes (a frozen pydantic model
with PyTorch's names and defaults), how many inputs it takes, its type inference, the
shapes of its parameters and their default initialisation (PyTorch's), how its output
channels relate to its inputs' (the data the channel-dependency analysis reads), and every
other fact a pass or policy reads (:class:`~grow_ir.ir.ops.facts.OpFacts`). Backends keep
their own lowering tables keyed by op name.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict

from grow_ir.errors import ShapeError
from grow_ir.ir.ops.facts import No, OpFacts
from grow_ir.ir.types import DTYPES, Dim, TensorType


class Attrs(BaseModel):
    """Base of every op's attribute model: frozen, no unknown fields."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


class NoAttrs(Attrs):
    """Attributes of an op that has none."""


class Channels(str, Enum):
    """How an op's output channels relate to its inputs' (see passes/channels)."""

    PRODUCE = "produce"  # weights map input channels to new output channels (linear, conv)
    SOURCE = "source"  # creates channels from non-channel input (embedding)
    MAP = "map"  # output channel i depends on input channel i only (activations, pools)
    NORM = "norm"  # per-channel parameters, statistics across channels (layernorm)
    JOIN = "join"  # all inputs and the output share one channel set (add, mul)
    CONCAT = "concat"  # output channels are the inputs' channels side by side
    FLATTEN = "flatten"  # channel axis folded with trailing axes into blocks
    THROUGH = "through"  # reads and writes the same channels through weights (attention)
    MOVE = "move"  # each input axis lands whole on one output axis, or not at all (axis_map)
    TENSOR = "tensor"  # the output is the node's parameter: channels index its axes
    OPAQUE = "opaque"  # channels cannot be widened through this op


@dataclass(frozen=True)
class ParamSpec:
    """Shape, dtype and role of one parameter or buffer of a node.

    ``mask_of`` names the parameter (local name) that this buffer masks entry by entry:
    the op computes with ``weight * weight_mask`` (connection pruning), a mask holds 0 or
    1, new entries of a grown mask start at 1 and a mask is never rescaled.
    """

    shape: tuple[int, ...]
    dtype: str = "float32"
    buffer: bool = False
    mask_of: str | None = None

    numel: int = field(init=False, repr=False, compare=False)
    """Number of elements."""
    nbytes: int = field(init=False, repr=False, compare=False)
    """Bytes the tensor takes."""

    def __post_init__(self) -> None:
        # computed once, as the spec is made: alike nodes share their specs, and the size
        # totals read them for every node a pass changes
        numel = math.prod(self.shape)
        object.__setattr__(self, "numel", numel)
        object.__setattr__(self, "nbytes", numel * DTYPES[self.dtype].itemsize)


@dataclass(frozen=True)
class ThroughRule:
    """How a ``Channels.THROUGH`` op reads and writes its input's channels.

    Attributes:
        reads: parameters (local names) whose columns read the channels (fan-out).
        writes: parameters whose rows or entries write them (units).
        pin: attribute values that keep the op's inside fixed while the channels change
            (attention's ``head_dim``, which otherwise follows the embedding).
    """

    reads: tuple[str, ...]
    writes: tuple[str, ...]
    pin: Callable[[Any, Sequence[TensorType]], dict[str, Any]]


@dataclass(frozen=True)
class NormRule:
    """What a ``Channels.NORM`` op computes across the channels it normalises.

    Attributes:
        centres: it subtracts the mean before dividing by the spread (layernorm); an RMS
            norm does not. LEMON's expansion fills new channels with the mean of the old
            ones for a centring norm and with zeros for an RMS norm, the filling for which
            each norm's statistics scale by exactly ``old / new``.
    """

    centres: bool


InferFn = Callable[[Any, Sequence[TensorType]], TensorType]
AxisMapFn = Callable[[Any, Sequence[TensorType]], tuple[tuple["int | No", ...], ...]]
"""``(attrs, input types) -> maps``: for each input, for each of its axes, the output axis
that holds that axis whole (same size, same positions), or ``No(reason)`` when the axis is
reduced, sliced, split or merged; the reason completes ``<op> '<node>' ...``. An output
axis that no input axis maps to holds no input's channels (a broadcast)."""
SizeAttrFn = Callable[[Any, Sequence[TensorType], int], "str | None"]
"""``(attrs, input types, output axis) -> key``: the attribute that writes the size of that
output axis (``shape[2]``: entry 2 of a tuple attribute), None when the size is inferred."""
ParamsFn = Callable[[Any, Sequence[TensorType]], dict[str, ParamSpec]]
InitFn = Callable[[Any, Sequence[TensorType], torch.Generator], dict[str, torch.Tensor]]


def validate_attrs(op: OpDef, raw: Any) -> Attrs:
    """Validate a mapping of attributes against ``op``'s model.

    Raises:
        VerifyError: for the first bad field: an unknown (misspelt) attribute first, with
            the nearest attribute name suggested, then missing or ill-typed values.
    """
    import difflib

    from pydantic import ValidationError

    from grow_ir.errors import VerifyError

    try:
        return op.attrs.model_validate(raw)
    except ValidationError as exc:
        errors = sorted(exc.errors(), key=lambda e: e["type"] != "extra_forbidden")
        err = errors[0]
        # Attributes are flat: the first location item is the field (later items name a
        # branch of a union, ``padding.constrained-int``, or an index in a pair).
        loc = str(err["loc"][0]) if err["loc"] else None
        fields = list(op.attrs.model_fields)
        if err["type"] == "extra_forbidden":
            near = difflib.get_close_matches(str(loc), fields, n=1)
            hint = f" (did you mean '{near[0]}'?)" if near else ""
            expected = f"one of {', '.join(fields)}" if fields else "no attributes"
            raise VerifyError(
                f"unknown attribute of {op.name}{hint}",
                field=loc,
                expected=expected,
                found=repr(loc),
            ) from None
        if err["type"] == "missing":
            raise VerifyError(
                f"{op.name} needs attribute '{loc}'",
                field=loc,
                expected=_describe(op, str(loc)),
                found="none",
            ) from None
        # A union (``padding: int | [int, int] | 'same' | 'valid'``) fails once per branch.
        wanted = [
            e["msg"].removeprefix("Input should be ").rstrip(".")
            for e in errors
            if e["loc"] and str(e["loc"][0]) == loc
        ]
        raise VerifyError(
            f"bad value for {op.name}",
            field=loc,
            expected=" or ".join(dict.fromkeys(wanted)),
            found=repr(raw.get(loc) if isinstance(raw, dict) and loc else err.get("input")),
        ) from None


def _describe(op: OpDef, name: str) -> str:
    info = op.attrs.model_fields.get(name)
    if info is None or info.annotation is None:
        return "a value"
    ann = info.annotation
    return f"a value of type {getattr(ann, '__name__', str(ann))}".replace("typing.", "")


def same_axes(attrs: Any, inputs: Sequence[TensorType]) -> tuple[tuple[int, ...], ...]:
    """The axis map of inputs and an output of one shape: every axis stays where it is."""
    return tuple(tuple(range(t.rank)) for t in inputs)


def no_params(attrs: Any, inputs: Sequence[TensorType]) -> dict[str, ParamSpec]:
    """Parameter specs of an op without parameters."""
    return {}


def no_init(attrs: Any, inputs: Sequence[TensorType], gen: torch.Generator) -> dict:
    """Initialisation of an op without parameters."""
    return {}


@dataclass(frozen=True)
class OpDef:
    """Everything the IR knows about one op.

    Attributes:
        name: the op's name in specs (``conv2d``).
        attrs: the pydantic model of its attributes.
        infer: output type from attributes and input types; raises ShapeError.
        params: parameter specs keyed by local name (``weight``, ``out_proj.bias``).
        init: default initialisation, matching the PyTorch module's.
        min_inputs / max_inputs: arity (max None = any number).
        channels: channel rule for widening.
        through: for ``Channels.THROUGH``, which parameters read and write the channels.
        norm: for ``Channels.NORM``, what the op computes across its channels.
        channel_axis: the input axis this op's channels live on (per-channel params,
            weight columns, concat axis); ``None`` when channels pass through unchanged.
        axis_map: for ``Channels.MOVE`` and ``Channels.JOIN``, where each input axis lands
            in the output (see :data:`AxisMapFn`); None for the other rules.
        size_attr: the attribute entry sizing an output axis (reshape's ``shape[i]``), which
            changes with the channels there.
        doc: one line for ``grow-ir show`` and the schema.
        facts: everything passes and policies rely on (see OpFacts; no default).
    """

    name: str
    attrs: type[Attrs]
    infer: InferFn
    doc: str
    facts: OpFacts
    params: ParamsFn = no_params
    init: InitFn = no_init
    min_inputs: int = 1
    max_inputs: int | None = 1
    channels: Channels = Channels.MAP
    through: ThroughRule | None = None
    norm: NormRule | None = None
    channel_axis: Callable[[Any, Sequence[TensorType]], int | None] = field(
        default=lambda attrs, inputs: None
    )
    axis_map: AxisMapFn | None = None
    size_attr: SizeAttrFn = field(default=lambda attrs, inputs, axis: None)


OPS: dict[str, OpDef] = {}


def register(op: OpDef) -> OpDef:
    """Add an op to the registry (each name once)."""
    if op.name in OPS:
        raise ValueError(f"op {op.name!r} is defined twice")
    if not isinstance(op.facts, OpFacts):
        raise TypeError(f"op {op.name!r} must declare its OpFacts")
    if (op.channels is Channels.NORM) != (op.norm is not None):
        raise TypeError(f"op {op.name!r}: a NormRule goes with Channels.NORM, and only there")
    if (op.channels in (Channels.MOVE, Channels.JOIN)) != (op.axis_map is not None):
        raise TypeError(f"op {op.name!r}: an axis_map goes with Channels.MOVE and JOIN only")
    OPS[op.name] = op
    return op


# ---- small shared helpers for op definitions -------------------------------------------


def fail(reason: str, *, field: str | None = None, expected: str, found: object) -> ShapeError:
    """A ShapeError for a node (the caller fills in the node name)."""
    return ShapeError(reason, field=field, expected=expected, found=str(found))


def require_rank(t: TensorType, ranks: Sequence[int], what: str) -> None:
    """Raise unless ``t`` has one of ``ranks``."""
    if t.rank not in ranks:
        want = " or ".join(str(r) for r in ranks)
        raise fail(
            f"{what} needs an input of rank {want}",
            field="inputs",
            expected=f"rank {want}",
            found=f"{t} (rank {t.rank})",
        )


def require_float(t: TensorType, what: str) -> None:
    """Raise unless ``t`` is a float tensor."""
    if not t.is_float:
        raise fail(
            f"{what} needs a float input",
            field="inputs",
            expected="float32, float16 or bfloat16",
            found=t,
        )


def known(d: Dim, what: str) -> int:
    """Return a dim that must be known, else raise."""
    if not isinstance(d, int):
        raise fail(
            f"{what} must be a known size",
            field="inputs",
            expected="an integer size",
            found=repr(d),
        )
    return d


def param_dtype(inputs: Sequence[TensorType]) -> str:
    """Parameters take the dtype of the first float input (float32 if none)."""
    for t in inputs:
        if t.is_float:
            return t.dtype
    return "float32"


def normalize_axis(axis: int, rank: int, field: str) -> int:
    """An axis in ``[0, rank)``; raise for one out of range."""
    if not -rank <= axis < rank:
        raise fail("axis out of range", field=field, expected=f"in [{-rank}, {rank})", found=axis)
    return axis % rank


def uniform_(t: torch.Tensor, bound: float, gen: torch.Generator) -> torch.Tensor:
    """Fill ``t`` from U(-bound, bound) with ``gen``."""
    return torch.nn.init.uniform_(t, -bound, bound, generator=gen)


def empty(spec: ParamSpec) -> torch.Tensor:
    """An uninitialised tensor for ``spec``."""
    from grow_ir.ir.types import DTYPES

    return torch.empty(spec.shape, dtype=DTYPES[spec.dtype])


def attr_entry(attrs: Any, key: str) -> Any:
    """The value of an attribute key: ``name`` or ``name[i]`` (entry i of a tuple)."""
    name, _, index = key.partition("[")
    value = getattr(attrs, name)
    return value[int(index.rstrip("]"))] if index else value


def bump_attr(attrs: Any, key: str, by: int) -> Any:
    """``attrs`` with the integer at ``key`` (``name`` or ``name[i]``) increased by ``by``."""
    name, _, index = key.partition("[")
    value = getattr(attrs, name)
    if index:
        i = int(index.rstrip("]"))
        value = (*value[:i], value[i] + by, *value[i + 1 :])
    else:
        value = value + by
    return attrs.model_copy(update={name: value})
