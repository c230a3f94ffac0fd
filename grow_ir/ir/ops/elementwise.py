"""Parameter-free ops that act on each element or each channel: activations, softmax,
log_softmax, dropout, identity, pooling."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Literal

import numpy as np
from pydantic import Field, field_validator, model_validator

from grow_ir.ir.ops.base import (
    Attrs,
    NoAttrs,
    OpDef,
    fail,
    known,
    normalize_axis,
    register,
    require_float,
    require_rank,
)
from grow_ir.ir.ops.dense import IntOrPair, PadOrPair, spatial
from grow_ir.ir.ops.facts import No, OpFacts, parameter_free
from grow_ir.ir.ops.macs import no_macs
from grow_ir.ir.types import TensorType


def _same_type(what: str):
    def infer(a: object, ins: Sequence[TensorType]) -> TensorType:
        require_float(ins[0], what)
        return ins[0]

    return infer


class ReluAttrs(Attrs):
    """``torch.nn.ReLU``; ``grad_at_zero``: its derivative at exactly 0 when training (0 or 1)."""

    # 0 is PyTorch's choice; 1 (TensorFlow's maximum(x, 0)) lets a unit whose input is exactly
    # 0 learn: a unit grown by GradMax, whose fan-in is zero. The output is the same either way.
    grad_at_zero: Literal[0, 1] = 0


def _activation(name: str, *, zero_to_zero: bool | No, nonnegative: bool) -> OpFacts:
    """The facts of an elementwise activation whose derivative at 0 is nonzero (relu
    replaces the facts where it differs)."""
    return parameter_free(
        name,
        zero_to_zero=zero_to_zero,
        gradient_at_zero=True,
        nonnegative=nonnegative,
        sign_keeping=nonnegative,
        normalises=False,
        eval_identity=False,
        activation=True,
        gradient_fix=None,
        identity_on_nonnegative=False,
        sums=False,
        macs=no_macs,
    )


register(
    OpDef(
        name="relu",
        attrs=ReluAttrs,
        infer=_same_type("relu"),
        doc="torch.nn.ReLU",
        facts=replace(
            _activation("relu", zero_to_zero=True, nonnegative=True),
            gradient_at_zero=No(
                "relu's derivative at 0 is 0, so a unit whose input is 0 never learns"
            ),
            gradient_fix={"grad_at_zero": 1},
            identity_on_nonnegative=True,
        ),
    )
)

for _name, _doc, _facts in [
    ("silu", "torch.nn.SiLU", _activation("silu", zero_to_zero=True, nonnegative=False)),
    ("tanh", "torch.nn.Tanh", _activation("tanh", zero_to_zero=True, nonnegative=False)),
    (
        "sigmoid",
        "torch.nn.Sigmoid",
        _activation(
            "sigmoid",
            zero_to_zero=No(
                "sigmoid(0) = 1/2, so a zero-fan-in unit would change the consumers' input"
            ),
            nonnegative=True,
        ),
    ),
]:
    register(OpDef(name=_name, attrs=NoAttrs, infer=_same_type(_name), doc=_doc, facts=_facts))


class GeluAttrs(Attrs):
    """``torch.nn.GELU``: exact (erf) or tanh approximation."""

    approximate: Literal["none", "tanh"] = "none"


register(
    OpDef(
        name="gelu",
        attrs=GeluAttrs,
        infer=_same_type("gelu"),
        doc="torch.nn.GELU",
        facts=_activation("gelu", zero_to_zero=True, nonnegative=False),
    )
)


class HardtanhAttrs(Attrs):
    """``torch.nn.Hardtanh``: ``clamp(x, min_val, max_val)`` with ``min_val < 0 < max_val``
    (a clamp at 0 is ``relu6`` or ``relu``)."""

    min_val: float = -1.0
    max_val: float = 1.0

    @model_validator(mode="after")
    def _around_zero(self) -> HardtanhAttrs:
        if not self.min_val < 0.0 < self.max_val:
            raise ValueError(
                f"min_val {self.min_val} and max_val {self.max_val} must enclose 0 "
                "(use relu6 for [0, 6])"
            )
        return self


register(
    OpDef(
        name="hardtanh",
        attrs=HardtanhAttrs,
        infer=_same_type("hardtanh"),
        doc="torch.nn.Hardtanh: clamp(x, min_val, max_val) around 0",
        facts=_activation("hardtanh", zero_to_zero=True, nonnegative=False),
    )
)
register(
    OpDef(
        name="relu6",
        attrs=NoAttrs,
        infer=_same_type("relu6"),
        doc="torch.nn.ReLU6: clamp(x, 0, 6)",
        facts=replace(
            _activation("relu6", zero_to_zero=True, nonnegative=True),
            gradient_at_zero=No(
                "relu6's derivative at 0 is 0, so a unit whose input is 0 never learns"
            ),
        ),
    )
)


def _nonzero(name: str):
    def check(cls: type, v: float) -> float:
        if v == 0.0:
            raise ValueError(f"{name} must not be 0 (that is relu)")
        return v

    return field_validator(name)(classmethod(check))


class LeakyReluAttrs(Attrs):
    """``torch.nn.LeakyReLU``: ``x`` for ``x > 0``, ``negative_slope * x`` otherwise
    (``negative_slope`` nonzero: 0 is relu)."""

    negative_slope: float = 0.01
    _check = _nonzero("negative_slope")


class EluAttrs(Attrs):
    """``torch.nn.ELU``: ``x`` for ``x > 0``, ``alpha * (exp(x) - 1)`` otherwise (``alpha``
    nonzero: 0 is relu)."""

    alpha: float = 1.0
    _check = _nonzero("alpha")


for _name, _attrs, _doc, _facts in [
    (
        "hardswish",
        NoAttrs,
        "torch.nn.Hardswish: x * relu6(x + 3) / 6",
        _activation("hardswish", zero_to_zero=True, nonnegative=False),
    ),
    (
        "hardsigmoid",
        NoAttrs,
        "torch.nn.Hardsigmoid: relu6(x + 3) / 6",
        _activation(
            "hardsigmoid",
            zero_to_zero=No(
                "hardsigmoid(0) = 1/2, so a zero-fan-in unit would change the consumers' input"
            ),
            nonnegative=True,
        ),
    ),
    (
        "leaky_relu",
        LeakyReluAttrs,
        "torch.nn.LeakyReLU",
        _activation("leaky_relu", zero_to_zero=True, nonnegative=False),
    ),
    ("elu", EluAttrs, "torch.nn.ELU", _activation("elu", zero_to_zero=True, nonnegative=False)),
]:
    register(OpDef(name=_name, attrs=_attrs, infer=_same_type(_name), doc=_doc, facts=_facts))


def _identity_infer(a: object, ins: Sequence[TensorType]) -> TensorType:
    return ins[0]


def _pass_through(name: str) -> OpFacts:
    """The facts of an op that is the identity in eval mode."""
    return parameter_free(
        name,
        zero_to_zero=True,
        gradient_at_zero=True,
        nonnegative=False,
        sign_keeping=True,
        normalises=False,
        eval_identity=True,
        activation=False,
        gradient_fix=None,
        identity_on_nonnegative=True,
        sums=False,
        macs=no_macs,
    )


register(
    OpDef(
        name="identity",
        attrs=NoAttrs,
        infer=_identity_infer,
        doc="torch.nn.Identity",
        facts=_pass_through("identity"),
    )
)


class DropoutAttrs(Attrs):
    """``torch.nn.Dropout`` (the identity in eval mode)."""

    p: float = Field(default=0.5, ge=0.0, le=1.0)


register(
    OpDef(
        name="dropout",
        attrs=DropoutAttrs,
        infer=_same_type("dropout"),
        doc="torch.nn.Dropout",
        facts=_pass_through("dropout"),
    )
)


class SoftmaxAttrs(Attrs):
    """``torch.nn.Softmax`` over ``dim``."""

    dim: int = -1


class LogSoftmaxAttrs(SoftmaxAttrs):
    """``torch.nn.LogSoftmax`` over ``dim``: ``log(softmax(x))``, computed stably."""


def _normalise_infer(what: str):
    def infer(a: SoftmaxAttrs, ins: Sequence[TensorType]) -> TensorType:
        require_float(ins[0], what)
        normalize_axis(a.dim, ins[0].rank, "dim")
        return ins[0]

    return infer


def _normaliser(name: str, *, nonnegative: bool, zero: str) -> OpFacts:
    """The facts of softmax and log_softmax: normalising over ``dim``."""
    return parameter_free(
        name,
        zero_to_zero=No(zero),
        gradient_at_zero=True,
        nonnegative=nonnegative,
        sign_keeping=nonnegative,
        normalises=True,
        eval_identity=False,
        activation=False,
        gradient_fix=None,
        identity_on_nonnegative=False,
        sums=False,
        macs=no_macs,
    )


register(
    OpDef(
        name="softmax",
        attrs=SoftmaxAttrs,
        infer=_normalise_infer("softmax"),
        doc="torch.nn.Softmax",
        channel_axis=lambda a, ins: normalize_axis(a.dim, ins[0].rank, "dim"),
        facts=_normaliser(
            "softmax",
            nonnegative=True,
            zero="softmax turns a channel that is 0 everywhere into a uniform, nonzero one",
        ),
    )
)
register(
    OpDef(
        name="log_softmax",
        attrs=LogSoftmaxAttrs,
        infer=_normalise_infer("log_softmax"),
        doc="torch.nn.LogSoftmax",
        channel_axis=lambda a, ins: normalize_axis(a.dim, ins[0].rank, "dim"),
        facts=_normaliser(
            "log_softmax",
            nonnegative=False,
            zero="log_softmax turns a channel that is 0 everywhere into a nonzero one (-log n)",
        ),
    )
)


# ---- pooling --------------------------------------------------------------------------


class _Pool2dAttrs(Attrs):
    kernel_size: IntOrPair
    stride: IntOrPair | None = None
    padding: PadOrPair = 0
    ceil_mode: bool = False

    @field_validator("kernel_size", "stride", "padding", mode="before")
    @classmethod
    def _list_to_pair(cls, v: object) -> object:
        return tuple(v) if isinstance(v, list) else v


class MaxPool2dAttrs(_Pool2dAttrs):
    """``torch.nn.MaxPool2d``; ``stride`` defaults to ``kernel_size``."""

    dilation: IntOrPair = 1


class AvgPool2dAttrs(_Pool2dAttrs):
    """``torch.nn.AvgPool2d``; ``stride`` defaults to ``kernel_size``."""

    count_include_pad: bool = True


def pool_out_size(size: int, k: int, s: int, p: int, d: int, ceil: bool, axis: str) -> int:
    """PyTorch's pooling output length (``pooling_output_shape``), ceil_mode included.

    Raises ShapeError exactly where PyTorch refuses the geometry: padding over half the
    kernel, or an output of no element. (PyTorch's kernels disagree on padding with
    dilation: some allow half the dilated span. Half the kernel works in all of them.)
    """
    span = d * (k - 1) + 1
    if p > k // 2:
        raise fail(
            "padding must be at most half the kernel size",
            field="padding",
            expected=f"at most {k // 2} along {axis}",
            found=p,
        )
    out = (size + 2 * p - span + (s - 1 if ceil else 0)) // s + 1
    if ceil and (out - 1) * s >= size + p:  # the last window must start inside the input
        out -= 1
    if out < 1:
        raise fail(
            "the pooling window does not fit the padded input",
            field="kernel_size",
            expected=f"a window spanning at most {size + 2 * p} along {axis}",
            found=f"a window spanning {span}",
        )
    return out


def _make_pool(name: str, attrs: type[_Pool2dAttrs], doc: str) -> OpDef:
    def infer(a: _Pool2dAttrs, ins: Sequence[TensorType]) -> TensorType:
        (x,) = ins
        require_float(x, name)
        require_rank(x, [4], name)
        k, s, p, d = pool_geometry(a)
        dims = []
        for i, axis in enumerate(("height", "width")):
            size = known(x.shape[2 + i], f"{name}'s {axis}")
            dims.append(pool_out_size(size, k[i], s[i], p[i], d[i], a.ceil_mode, axis))
        return TensorType((*x.shape[:2], *dims), x.dtype)

    return register(
        OpDef(
            name=name,
            attrs=attrs,
            infer=infer,
            doc=doc,
            channel_axis=lambda a, ins: 1,
            facts=_pooling(name),
        )
    )


def _pooling(name: str) -> OpFacts:
    """The facts of a pooling op: per channel, keeping zeros and signs."""
    return parameter_free(
        name,
        zero_to_zero=True,
        gradient_at_zero=True,
        nonnegative=False,
        sign_keeping=True,
        normalises=False,
        eval_identity=False,
        activation=False,
        gradient_fix=None,
        identity_on_nonnegative=False,
        sums=False,
        macs=no_macs,
    )


def pool_geometry(a: _Pool2dAttrs) -> tuple[tuple, tuple, tuple, tuple]:
    """Kernel, stride (``kernel_size`` when unset), padding and dilation per spatial axis."""
    k = spatial(a.kernel_size, 2)
    s = spatial(a.stride if a.stride is not None else a.kernel_size, 2)
    return k, s, spatial(a.padding, 2), spatial(getattr(a, "dilation", 1), 2)


_make_pool("maxpool2d", MaxPool2dAttrs, "torch.nn.MaxPool2d")
_make_pool("avgpool2d", AvgPool2dAttrs, "torch.nn.AvgPool2d")


class AdaptiveAvgPool2dAttrs(Attrs):
    """``torch.nn.AdaptiveAvgPool2d(output_size)``: ``[N, C, H, W]`` to ``[N, C, h, w]``
    (an int is a square size; the axes are kept, so ``1`` gives ``[N, C, 1, 1]``)."""

    output_size: IntOrPair

    @field_validator("output_size", mode="before")
    @classmethod
    def _list_to_pair(cls, v: object) -> object:
        return tuple(v) if isinstance(v, list) else v


def adaptive_bins(size: int, out: int) -> list[tuple[int, int]]:
    """PyTorch's adaptive pooling windows along one axis: bin ``i`` of ``out`` over
    ``size`` elements is ``[floor(i * size / out), ceil((i + 1) * size / out))``; bins of
    unequal sizes may overlap, and an output larger than the input repeats elements."""
    return [((i * size) // out, -((-(i + 1) * size) // out)) for i in range(out)]


def averaging_matrix(size: int, out: int) -> np.ndarray:
    """The float64 ``[out, size]`` matrix whose row ``i`` averages adaptive bin ``i``:
    pooling one axis is a product with it (how backends without such pooling write it)."""
    matrix = np.zeros((out, size), dtype=np.float64)
    for i, (start, end) in enumerate(adaptive_bins(size, out)):
        matrix[i, start:end] = 1.0 / (end - start)
    return matrix


def _adaptive_infer(a: AdaptiveAvgPool2dAttrs, ins: Sequence[TensorType]) -> TensorType:
    (x,) = ins
    require_float(x, "adaptive_avgpool2d")
    require_rank(x, [4], "adaptive_avgpool2d")
    for i, axis in enumerate(("height", "width")):
        known(x.shape[2 + i], f"adaptive_avgpool2d's {axis}")  # the bins' bounds need it
    dims = spatial(a.output_size, 2)
    return TensorType((*x.shape[:2], *dims), x.dtype)


register(
    OpDef(
        name="adaptive_avgpool2d",
        attrs=AdaptiveAvgPool2dAttrs,
        infer=_adaptive_infer,
        doc="torch.nn.AdaptiveAvgPool2d to any size, PyTorch's bins (axes kept)",
        channel_axis=lambda a, ins: 1,
        facts=_pooling("adaptive_avgpool2d"),
    )
)


def _gap_infer(a: object, ins: Sequence[TensorType]) -> TensorType:
    (x,) = ins
    require_float(x, "global_avgpool")
    require_rank(x, [3, 4], "global_avgpool")
    return TensorType(x.shape[:2], x.dtype)


register(
    OpDef(
        name="global_avgpool",
        attrs=NoAttrs,
        infer=_gap_infer,
        doc="mean over the spatial axes: [N, C, H, W] -> [N, C]",
        channel_axis=lambda a, ins: 1,
        facts=_pooling("global_avgpool"),
    )
)
