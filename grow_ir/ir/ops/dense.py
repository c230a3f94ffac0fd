"""Ops with weight matrices: linear, conv1d, conv2d, embedding."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import torch
from pydantic import NonNegativeInt, PositiveFloat, PositiveInt, field_validator

from grow_ir.ir.ops.base import (
    Attrs,
    Channels,
    OpDef,
    ParamSpec,
    empty,
    fail,
    known,
    param_dtype,
    register,
    require_float,
    require_rank,
    uniform_,
)
from grow_ir.ir.ops.facts import No, OpFacts
from grow_ir.ir.ops.macs import conv_macs, linear_macs, no_macs
from grow_ir.ir.types import Dim, TensorType

# ---- linear ---------------------------------------------------------------------------


class LinearAttrs(Attrs):
    """``torch.nn.Linear``: ``y = x Wᵀ + b`` over the last axis."""

    out_features: PositiveInt
    bias: bool = True
    masked: bool = False


def _linear_infer(a: LinearAttrs, ins: Sequence[TensorType]) -> TensorType:
    (x,) = ins
    require_float(x, "linear")
    require_rank(x, range(1, 9), "linear")
    known(x.shape[-1], "linear's input features")
    return x.with_dim(-1, a.out_features)


def _linear_params(a: LinearAttrs, ins: Sequence[TensorType]) -> dict[str, ParamSpec]:
    fan_in = known(ins[0].shape[-1], "linear's input features")
    dt = param_dtype(ins)
    specs = {"weight": ParamSpec((a.out_features, fan_in), dt)}
    if a.bias:
        specs["bias"] = ParamSpec((a.out_features,), dt)
    return with_mask(a, specs)


def with_mask(a: LinearAttrs | _ConvAttrs, specs: dict[str, ParamSpec]) -> dict[str, ParamSpec]:
    """``specs`` plus the ``weight_mask`` buffer of a ``masked`` layer (connection
    pruning: the layer computes with ``weight * weight_mask``)."""
    if a.masked:
        w = specs["weight"]
        specs["weight_mask"] = ParamSpec(w.shape, w.dtype, buffer=True, mask_of="weight")
    return specs


def kaiming_init(specs: dict[str, ParamSpec], fan_in: int, gen: torch.Generator) -> dict:
    """PyTorch's default init of Linear and Conv, draw for draw.

    The weight comes from ``kaiming_uniform_(a=√5)`` (U(±1/√fan_in)) and then the bias from
    U(±1/√fan_in), in that order and with torch's own functions, so that one generator
    seeded with ``s`` gives bitwise the tensors of ``torch.manual_seed(s); nn.Linear(...)``.
    """
    weight = torch.nn.init.kaiming_uniform_(empty(specs["weight"]), a=math.sqrt(5), generator=gen)
    out = {"weight": weight}
    if "bias" in specs:
        bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
        out["bias"] = uniform_(empty(specs["bias"]), bound, gen)
    if "weight_mask" in specs:  # every connection on: no draw, so the weights are PyTorch's
        out["weight_mask"] = torch.ones_like(weight)
    return out


def _linear_init(a: LinearAttrs, ins: Sequence[TensorType], gen: torch.Generator) -> dict:
    specs = _linear_params(a, ins)
    return kaiming_init(specs, specs["weight"].shape[1], gen)


def _linear_square(t: TensorType, kernel_size: int) -> dict[str, Any]:
    return {"out_features": t.shape[-1] if t.rank else 1}


def _linear_identity(a: LinearAttrs, ins: Sequence[TensorType], params: dict) -> dict:
    w = params["weight"]
    if w.shape[0] != w.shape[1]:
        raise fail(
            "the layer is not square",
            field="init",
            expected="as many outputs as inputs",
            found=a.model_dump(exclude_defaults=True),
        )
    out = {**params, "weight": torch.eye(w.shape[0], dtype=w.dtype)}
    if "bias" in out:
        out["bias"] = torch.zeros_like(out["bias"])
    return out


def layer_facts(width_attr: str, **facts: Any) -> OpFacts:
    """The facts linear and conv share: weight layers that make channels (each call site
    still names the facts that differ: ``square``, ``identity``, ``adapters``)."""
    return OpFacts(
        width_attr=width_attr,
        zero_to_zero=No("its bias makes a zero input nonzero"),
        fresh_zero_to_zero=True,
        gradient_at_zero=True,
        gradient_fix=None,
        nonnegative=False,
        sign_keeping=False,
        identity_on_nonnegative=False,
        normalises=False,
        eval_identity=False,
        sums=False,
        activation=False,
        zeroable=("weight", "bias"),
        head=True,
        randomised=False,
        index_bound=None,
        **facts,
    )


LINEAR = register(
    OpDef(
        name="linear",
        attrs=LinearAttrs,
        infer=_linear_infer,
        params=_linear_params,
        init=_linear_init,
        channels=Channels.PRODUCE,
        channel_axis=lambda a, ins: ins[0].rank - 1,
        doc="torch.nn.Linear over the last axis",
        facts=layer_facts(
            "out_features",
            square=_linear_square,
            identity=_linear_identity,
            adapters=("lora", "serial"),
            macs=linear_macs,
        ),
    )
)


def check_groups(in_channels: int, out_channels: int, groups: int) -> None:
    """Raise the ShapeError of a grouped convolution whose channels ``groups`` does not
    divide (PyTorch's rule for Conv and ConvTranspose)."""
    for field_name, value in (("in_channels", in_channels), ("out_channels", out_channels)):
        if value % groups:
            raise fail(
                f"{field_name} must be divisible by groups",
                field="groups",
                expected=f"a divisor of {value}",
                found=groups,
            )


# ---- conv1d / conv2d ------------------------------------------------------------------

IntOrPair = PositiveInt | tuple[PositiveInt, PositiveInt]
PadOrPair = NonNegativeInt | tuple[NonNegativeInt, NonNegativeInt]


class _ConvAttrs(Attrs):
    out_channels: PositiveInt
    kernel_size: PositiveInt
    stride: PositiveInt = 1
    padding: NonNegativeInt | Literal["same", "valid"] = 0
    dilation: PositiveInt = 1
    groups: PositiveInt = 1
    bias: bool = True
    masked: bool = False


class Conv1dAttrs(_ConvAttrs):
    """``torch.nn.Conv1d`` on ``[N, C, L]``."""


class Conv2dAttrs(_ConvAttrs):
    """``torch.nn.Conv2d`` on ``[N, C, H, W]``; sizes are an int or ``[h, w]``."""

    kernel_size: IntOrPair  # type: ignore[assignment]
    stride: IntOrPair = 1  # type: ignore[assignment]
    padding: PadOrPair | Literal["same", "valid"] = 0  # type: ignore[assignment]
    dilation: IntOrPair = 1  # type: ignore[assignment]

    @field_validator("kernel_size", "stride", "padding", "dilation", mode="before")
    @classmethod
    def _list_to_pair(cls, v: object) -> object:
        return tuple(v) if isinstance(v, list) else v


def spatial(v: object, n: int) -> tuple:
    """Expand an int (or keep a tuple) to ``n`` spatial sizes."""
    return tuple(v) if isinstance(v, tuple) else (v,) * n


def conv_out_size(size: Dim, k: int, s: int, p: int, d: int, axis_name: str) -> Dim:
    """Output length of a convolution/pool along one axis (PyTorch's floor formula)."""
    if not isinstance(size, int):
        if (k == 1 and s == 1 and p == 0) or (s == 1 and 2 * p == d * (k - 1)):
            return size
        raise fail(
            f"a {axis_name} of symbolic size needs a size-preserving window",
            field="inputs",
            expected="an integer size",
            found=repr(size),
        )
    span = d * (k - 1) + 1
    if size + 2 * p < span:
        raise fail(
            "kernel larger than the padded input",
            field="kernel_size",
            expected=f"a window of at most {size + 2 * p} along {axis_name}",
            found=f"a window spanning {span}",
        )
    return (size + 2 * p - span) // s + 1


def _conv_geometry(a: _ConvAttrs, n: int) -> tuple[tuple, tuple, tuple, tuple]:
    k, s, d = spatial(a.kernel_size, n), spatial(a.stride, n), spatial(a.dilation, n)
    if a.padding == "valid":
        p = (0,) * n
    elif a.padding == "same":
        p = tuple(di * (ki - 1) // 2 for ki, di in zip(k, d))
    else:
        p = spatial(a.padding, n)
    return k, s, p, d


def _make_conv(n: int) -> OpDef:
    name = f"conv{n}d"
    axes = ("length",) if n == 1 else ("height", "width")

    def infer(a: _ConvAttrs, ins: Sequence[TensorType]) -> TensorType:
        (x,) = ins
        require_float(x, name)
        require_rank(x, [n + 2], name)
        check_groups(known(x.shape[1], f"{name}'s input channels"), a.out_channels, a.groups)
        k, s, p, d = _conv_geometry(a, n)
        if a.padding == "same":
            if any(si != 1 for si in s):
                raise fail(
                    "padding 'same' needs stride 1", field="stride", expected="1", found=a.stride
                )
            if any(di * (ki - 1) % 2 for ki, di in zip(k, d)):
                raise fail(
                    "padding 'same' needs an odd effective kernel",
                    field="kernel_size",
                    expected="an odd kernel (or an even dilation)",
                    found=a.kernel_size,
                )
        dims = [conv_out_size(x.shape[2 + i], k[i], s[i], p[i], d[i], axes[i]) for i in range(n)]
        return TensorType((x.shape[0], a.out_channels, *dims), x.dtype)

    def params(a: _ConvAttrs, ins: Sequence[TensorType]) -> dict[str, ParamSpec]:
        c = known(ins[0].shape[1], f"{name}'s input channels")
        dt = param_dtype(ins)
        specs = {
            "weight": ParamSpec((a.out_channels, c // a.groups, *spatial(a.kernel_size, n)), dt)
        }
        if a.bias:
            specs["bias"] = ParamSpec((a.out_channels,), dt)
        return with_mask(a, specs)

    def init(a: _ConvAttrs, ins: Sequence[TensorType], gen: torch.Generator) -> dict:
        specs = params(a, ins)
        w = specs["weight"].shape
        return kaiming_init(specs, math.prod(w[1:]), gen)

    def identity(a: _ConvAttrs, ins: Sequence[TensorType], ps: dict) -> dict:
        _check_dirac(a, ins, n)
        out = {**ps, "weight": torch.nn.init.dirac_(torch.empty_like(ps["weight"]))}
        if "bias" in out:
            out["bias"] = torch.zeros_like(out["bias"])
        return out

    return register(
        OpDef(
            name=name,
            attrs=Conv1dAttrs if n == 1 else Conv2dAttrs,
            infer=infer,
            params=params,
            init=init,
            channels=Channels.PRODUCE,
            channel_axis=lambda a, ins: 1,
            doc=f"torch.nn.Conv{n}d (stride, padding incl. 'same', dilation, groups)",
            facts=layer_facts(
                "out_channels",
                square=_conv_square,
                identity=identity,
                adapters=("parallel", "serial"),
                macs=conv_macs,
            ),
        )
    )


def _conv_square(t: TensorType, kernel_size: int) -> dict[str, Any]:
    width = t.shape[1] if t.rank >= 2 else 1
    return {"out_channels": width, "kernel_size": kernel_size, "padding": kernel_size // 2}


def _check_dirac(a: _ConvAttrs, ins: Sequence[TensorType], n: int) -> None:
    """Raise (ShapeError) unless a Dirac kernel makes this conv the identity."""
    k, s, p, d = _conv_geometry(a, n)
    if ins[0].shape[1] != a.out_channels or a.groups != 1:
        raise fail(
            "the conv is not square",
            field="init",
            expected=f"out_channels {ins[0].shape[1]} and groups 1",
            found=f"out_channels {a.out_channels}, groups {a.groups}",
        )
    if any(ki % 2 == 0 for ki in k):
        raise fail(
            "an even kernel has no centre",
            field="init",
            expected="an odd kernel_size",
            found=a.kernel_size,
        )
    if any(si != 1 for si in s) or any(pi * 2 != di * (ki - 1) for ki, pi, di in zip(k, p, d)):
        raise fail(
            "the conv does not keep the spatial size",
            field="init",
            expected="stride 1 and padding dilation*(kernel_size-1)/2",
            found=f"stride {a.stride}, padding {a.padding}",
        )


CONV1D = _make_conv(1)
CONV2D = _make_conv(2)


def conv_geometry(attrs: _ConvAttrs, n: int) -> tuple[tuple, tuple, tuple, tuple]:
    """Kernel, stride, explicit padding and dilation per spatial axis."""
    return _conv_geometry(attrs, n)


# ---- embedding ------------------------------------------------------------------------


class EmbeddingAttrs(Attrs):
    """``torch.nn.Embedding``: int64 indices ``[...]`` to vectors ``[..., embedding_dim]``;
    with ``scale`` every vector is multiplied by it (Gemma's scaled word embedding, by
    ``sqrt(hidden_size)``)."""

    num_embeddings: PositiveInt
    embedding_dim: PositiveInt
    padding_idx: int | None = None
    scale: PositiveFloat | None = None


def _embedding_infer(a: EmbeddingAttrs, ins: Sequence[TensorType]) -> TensorType:
    (x,) = ins
    if x.dtype != "int64":
        raise fail("embedding needs int64 indices", field="inputs", expected="int64", found=x)
    if a.padding_idx is not None and not -a.num_embeddings <= a.padding_idx < a.num_embeddings:
        raise fail(
            "padding_idx out of range",
            field="padding_idx",
            expected=f"in [-{a.num_embeddings}, {a.num_embeddings})",
            found=a.padding_idx,
        )
    return TensorType((*x.shape, a.embedding_dim), "float32")


def _embedding_params(a: EmbeddingAttrs, ins: Sequence[TensorType]) -> dict[str, ParamSpec]:
    return {"weight": ParamSpec((a.num_embeddings, a.embedding_dim), "float32")}


def _embedding_init(a: EmbeddingAttrs, ins: Sequence[TensorType], gen: torch.Generator) -> dict:
    w = torch.nn.init.normal_(empty(_embedding_params(a, ins)["weight"]), generator=gen)
    if a.padding_idx is not None:
        w[a.padding_idx].zero_()
    return {"weight": w}


EMBEDDING = register(
    OpDef(
        name="embedding",
        attrs=EmbeddingAttrs,
        infer=_embedding_infer,
        params=_embedding_params,
        init=_embedding_init,
        channels=Channels.SOURCE,
        doc="torch.nn.Embedding: int64 indices to vectors",
        facts=OpFacts(
            width_attr="embedding_dim",
            zero_to_zero=No("it reads indices, and index 0 has a nonzero vector"),
            fresh_zero_to_zero=No("it reads indices, not channels"),
            gradient_at_zero=No("it reads indices, which have no gradient"),
            gradient_fix=None,
            nonnegative=False,
            sign_keeping=False,
            identity_on_nonnegative=False,
            normalises=False,
            eval_identity=False,
            sums=False,
            activation=False,
            square=None,
            identity=No("it maps indices to vectors"),
            zeroable=(),
            head=False,
            adapters=(),
            randomised=False,
            index_bound="num_embeddings",
            macs=no_macs,
        ),
    )
)
