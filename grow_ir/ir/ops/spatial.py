"""Ops that change spatial resolution or skip a residual branch: upsample,
conv_transpose2d (U-Net decoders) and stochastic_depth (torchvision's StochasticDepth)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import torch
from pydantic import Field, PositiveFloat, PositiveInt, model_validator

from grow_ir.ir.ops.base import (
    Attrs,
    Channels,
    OpDef,
    ParamSpec,
    fail,
    known,
    param_dtype,
    register,
    require_float,
    require_rank,
)
from grow_ir.ir.ops.dense import (
    IntOrPair,
    PadOrPair,
    check_groups,
    kaiming_init,
    layer_facts,
    spatial,
)
from grow_ir.ir.ops.elementwise import _pass_through, _pooling
from grow_ir.ir.ops.facts import No
from grow_ir.ir.ops.macs import numel
from grow_ir.ir.types import TensorType

FloatOrPair = PositiveFloat | tuple[PositiveFloat, PositiveFloat]

# ---- upsample ---------------------------------------------------------------------------


class _PairAttrs(Attrs):
    """Attributes whose pairs may be written as lists (YAML and JSON have no tuples)."""

    @model_validator(mode="before")
    @classmethod
    def _pairs(cls, raw: Any) -> Any:
        if isinstance(raw, dict):
            return {k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()}
        return raw


class UpsampleAttrs(_PairAttrs):
    """``torch.nn.Upsample`` on ``[N, C, H, W]``: ``mode`` nearest or bilinear, to a
    ``size`` or by a ``scale_factor`` (exactly one; an int or float, or a pair ``[h, w]``).
    The output is ``size``, or ``floor(H * scale_factor)``; with a scale factor, source
    positions are computed from the factor itself, as PyTorch does. ``align_corners`` is
    for bilinear only (PyTorch's default: false)."""

    mode: Literal["nearest", "bilinear"] = "nearest"
    size: IntOrPair | None = None
    scale_factor: FloatOrPair | None = None
    align_corners: bool | None = None

    @model_validator(mode="after")
    def _one_of(self) -> UpsampleAttrs:
        if (self.size is None) == (self.scale_factor is None):
            raise ValueError("give exactly one of size and scale_factor")
        if self.align_corners is not None and self.mode != "bilinear":
            raise ValueError("align_corners is for mode bilinear only")
        return self


def upsample_sizes(a: UpsampleAttrs, x: TensorType) -> tuple[int, int]:
    """The output height and width (``size``, or ``floor(H * scale_factor)``)."""
    if a.size is not None:
        return spatial(a.size, 2)
    scales = spatial(a.scale_factor, 2)
    sizes = [known(x.shape[2 + i], f"upsample's {ax}") for i, ax in enumerate(("height", "width"))]
    return tuple(math.floor(s * f) for s, f in zip(sizes, scales))  # type: ignore[return-value]


def _upsample_infer(a: UpsampleAttrs, ins: Sequence[TensorType]) -> TensorType:
    (x,) = ins
    require_float(x, "upsample")
    require_rank(x, [4], "upsample")
    h, w = upsample_sizes(a, x)
    if h < 1 or w < 1:
        raise fail(
            "upsample to an empty output",
            field="scale_factor",
            expected="a factor giving at least one row and column",
            found=a.scale_factor,
        )
    return TensorType((*x.shape[:2], h, w), x.dtype)


UPSAMPLE = register(
    OpDef(
        name="upsample",
        attrs=UpsampleAttrs,
        infer=_upsample_infer,
        doc="torch.nn.Upsample (nearest or bilinear, to a size or by a scale factor)",
        channel_axis=lambda a, ins: 1,
        # each output is a convex combination of its channel's inputs, as a pool's is
        facts=_pooling("upsample"),
    )
)

# ---- conv_transpose2d ---------------------------------------------------------------------


class ConvTranspose2dAttrs(_PairAttrs):
    """``torch.nn.ConvTranspose2d`` on ``[N, C, H, W]`` (weight ``[C, out_channels / groups,
    kh, kw]``); sizes are an int or ``[h, w]``. The output is ``(H - 1) * stride - 2 *
    padding + dilation * (kernel_size - 1) + output_padding + 1``."""

    out_channels: PositiveInt
    kernel_size: IntOrPair
    stride: IntOrPair = 1
    padding: PadOrPair = 0
    output_padding: PadOrPair = 0
    groups: PositiveInt = 1
    bias: bool = True
    dilation: IntOrPair = 1


def conv_transpose_geometry(a: ConvTranspose2dAttrs) -> tuple[tuple, ...]:
    """Kernel, stride, padding, output padding and dilation per spatial axis."""
    return tuple(
        spatial(v, 2) for v in (a.kernel_size, a.stride, a.padding, a.output_padding, a.dilation)
    )


def _ct_infer(a: ConvTranspose2dAttrs, ins: Sequence[TensorType]) -> TensorType:
    (x,) = ins
    require_float(x, "conv_transpose2d")
    require_rank(x, [4], "conv_transpose2d")
    c = known(x.shape[1], "conv_transpose2d's input channels")
    check_groups(c, a.out_channels, a.groups)
    k, s, p, op, d = conv_transpose_geometry(a)
    dims = []
    for i, axis in enumerate(("height", "width")):
        if op[i] >= max(s[i], d[i]):
            raise fail(
                "output_padding must be smaller than stride or dilation",
                field="output_padding",
                expected=f"less than {max(s[i], d[i])} along {axis}",
                found=a.output_padding,
            )
        size = known(x.shape[2 + i], f"conv_transpose2d's {axis}")
        out = (size - 1) * s[i] - 2 * p[i] + d[i] * (k[i] - 1) + op[i] + 1
        if out < 1:
            raise fail(
                "padding larger than the output",
                field="padding",
                expected=f"an output of at least one entry along {axis}",
                found=f"padding {a.padding} (output {out})",
            )
        dims.append(out)
    return TensorType((x.shape[0], a.out_channels, *dims), x.dtype)


def _ct_params(a: ConvTranspose2dAttrs, ins: Sequence[TensorType]) -> dict[str, ParamSpec]:
    c = known(ins[0].shape[1], "conv_transpose2d's input channels")
    dt = param_dtype(ins)
    specs = {"weight": ParamSpec((c, a.out_channels // a.groups, *spatial(a.kernel_size, 2)), dt)}
    if a.bias:
        specs["bias"] = ParamSpec((a.out_channels,), dt)
    return specs


def _ct_init(a: ConvTranspose2dAttrs, ins: Sequence[TensorType], gen: torch.Generator) -> dict:
    # PyTorch's fan-in of a transposed conv weight [in, out/groups, kh, kw] is its
    # dimension 1 times the kernel, for the weight and for the bias bound alike.
    specs = _ct_params(a, ins)
    return kaiming_init(specs, math.prod(specs["weight"].shape[1:]), gen)


def conv_transpose_macs(attrs: Any, inputs: Sequence[TensorType], output: TensorType) -> int:
    """Every input element is scattered through its group's ``out_channels / groups``
    filters of the kernel's size (PyTorch's FlopCounter counts the same)."""
    return (
        numel(inputs[0])
        * (attrs.out_channels // attrs.groups)
        * math.prod(spatial(attrs.kernel_size, 2))
    )


CONV_TRANSPOSE2D = register(
    OpDef(
        name="conv_transpose2d",
        attrs=ConvTranspose2dAttrs,
        infer=_ct_infer,
        params=_ct_params,
        init=_ct_init,
        channels=Channels.PRODUCE,
        channel_axis=lambda a, ins: 1,
        doc="torch.nn.ConvTranspose2d (stride, padding, output_padding, dilation, groups)",
        facts=layer_facts(
            "out_channels",
            square=None,
            identity=No("a transposed convolution is not inserted as a new layer"),
            adapters=(),
            macs=conv_transpose_macs,
        ),
    )
)

# ---- stochastic_depth -------------------------------------------------------------------


class StochasticDepthAttrs(Attrs):
    """torchvision's ``StochasticDepth(p, mode)``: in training, zeroes a residual branch
    with probability ``p`` per sample (``row``) or for the whole batch (``batch``) and
    scales the rest by ``1 / (1 - p)``; the identity in eval mode."""

    p: float = Field(ge=0.0, le=1.0)
    mode: Literal["row", "batch"] = "row"


def _sd_infer(a: StochasticDepthAttrs, ins: Sequence[TensorType]) -> TensorType:
    require_float(ins[0], "stochastic_depth")
    require_rank(ins[0], range(1, 9), "stochastic_depth")
    return ins[0]


STOCHASTIC_DEPTH = register(
    OpDef(
        name="stochastic_depth",
        attrs=StochasticDepthAttrs,
        infer=_sd_infer,
        doc="torchvision.ops.StochasticDepth (the identity in eval mode)",
        facts=_pass_through("stochastic_depth"),
    )
)

__all__ = [
    "CONV_TRANSPOSE2D",
    "STOCHASTIC_DEPTH",
    "UPSAMPLE",
    "conv_transpose_geometry",
    "upsample_sizes",
]
