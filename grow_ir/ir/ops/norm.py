"""Normalisation ops: batchnorm (1d or 2d by rank), layernorm and rmsnorm (over the last
axis)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from pydantic import Field, PositiveFloat

from grow_ir.ir.ops.base import (
    Attrs,
    Channels,
    NormRule,
    OpDef,
    ParamSpec,
    fail,
    known,
    param_dtype,
    register,
    require_float,
    require_rank,
)
from grow_ir.ir.ops.facts import Fact, IdentityFn, No, OpFacts
from grow_ir.ir.ops.macs import no_macs
from grow_ir.ir.types import TensorType


class BatchNormAttrs(Attrs):
    """``torch.nn.BatchNorm1d`` on ``[N, C(, L)]``, ``BatchNorm2d`` on ``[N, C, H, W]``."""

    eps: PositiveFloat = 1e-5
    momentum: float | None = Field(default=0.1, ge=0.0, le=1.0)
    affine: bool = True


def _bn_infer(a: BatchNormAttrs, ins: Sequence[TensorType]) -> TensorType:
    (x,) = ins
    require_float(x, "batchnorm")
    require_rank(x, [2, 3, 4], "batchnorm")
    known(x.shape[1], "batchnorm's channels")
    return x


def _bn_params(a: BatchNormAttrs, ins: Sequence[TensorType]) -> dict[str, ParamSpec]:
    c = known(ins[0].shape[1], "batchnorm's channels")
    dt = param_dtype(ins)
    specs = {}
    if a.affine:
        specs["weight"] = ParamSpec((c,), dt)
        specs["bias"] = ParamSpec((c,), dt)
    specs["running_mean"] = ParamSpec((c,), dt, buffer=True)
    specs["running_var"] = ParamSpec((c,), dt, buffer=True)
    specs["num_batches_tracked"] = ParamSpec((), "int64", buffer=True)
    return specs


def _bn_init(a: BatchNormAttrs, ins: Sequence[TensorType], gen: torch.Generator) -> dict:
    specs = _bn_params(a, ins)
    c, dt = specs["running_mean"].shape, ins[0].torch_dtype
    out = {}
    if a.affine:
        out["weight"] = torch.ones(c, dtype=dt)
        out["bias"] = torch.zeros(c, dtype=dt)
    out["running_mean"] = torch.zeros(c, dtype=dt)
    out["running_var"] = torch.ones(c, dtype=dt)
    out["num_batches_tracked"] = torch.tensor(0, dtype=torch.int64)
    return out


def _bn_identity(a: BatchNormAttrs, ins: Sequence[TensorType], params: dict) -> dict:
    if not a.affine:
        raise fail(
            "batchnorm without affine parameters",
            field="init",
            expected="affine: true",
            found="affine: false",
        )
    w = params["weight"]
    gamma = torch.sqrt(params["running_var"].double() + a.eps).to(w.dtype)
    return {**params, "weight": gamma, "bias": params["running_mean"].clone()}


def _norm_facts(
    *,
    fresh_zero_to_zero: Fact,
    normalises: bool,
    identity: IdentityFn | No,
    zero_to_zero: Fact = No("its bias and statistics shift a zero input"),
    zeroable: tuple[str, ...] = ("weight", "bias"),
) -> OpFacts:
    """The facts the norms share (each states the ones that differ; the defaults are
    batchnorm's and layernorm's, which have a shift)."""
    return OpFacts(
        width_attr=None,
        zero_to_zero=zero_to_zero,
        fresh_zero_to_zero=fresh_zero_to_zero,
        gradient_at_zero=True,
        gradient_fix=None,
        nonnegative=False,
        sign_keeping=False,
        identity_on_nonnegative=False,
        normalises=normalises,
        eval_identity=False,
        sums=False,
        activation=False,
        square=lambda t, kernel_size: {},
        identity=identity,
        zeroable=zeroable,
        head=False,
        adapters=(),
        randomised=True,
        index_bound=None,
        macs=no_macs,
    )


BATCHNORM = register(
    OpDef(
        name="batchnorm",
        attrs=BatchNormAttrs,
        infer=_bn_infer,
        params=_bn_params,
        init=_bn_init,
        channels=Channels.MAP,
        channel_axis=lambda a, ins: 1,
        doc="torch.nn.BatchNorm1d/2d by rank (channels on axis 1)",
        facts=_norm_facts(fresh_zero_to_zero=True, normalises=False, identity=_bn_identity),
    )
)


class LayerNormAttrs(Attrs):
    """``torch.nn.LayerNorm`` over the last axis."""

    eps: PositiveFloat = 1e-5
    elementwise_affine: bool = True
    bias: bool = True


def _ln_infer(a: LayerNormAttrs, ins: Sequence[TensorType]) -> TensorType:
    (x,) = ins
    require_float(x, "layernorm")
    require_rank(x, range(1, 9), "layernorm")
    known(x.shape[-1], "layernorm's normalised size")
    return x


def _ln_params(a: LayerNormAttrs, ins: Sequence[TensorType]) -> dict[str, ParamSpec]:
    c = known(ins[0].shape[-1], "layernorm's normalised size")
    dt = param_dtype(ins)
    specs = {}
    if a.elementwise_affine:
        specs["weight"] = ParamSpec((c,), dt)
        if a.bias:
            specs["bias"] = ParamSpec((c,), dt)
    return specs


def _ln_init(a: LayerNormAttrs, ins: Sequence[TensorType], gen: torch.Generator) -> dict:
    specs = _ln_params(a, ins)
    dt = ins[0].torch_dtype
    out = {}
    if "weight" in specs:
        out["weight"] = torch.ones(specs["weight"].shape, dtype=dt)
    if "bias" in specs:
        out["bias"] = torch.zeros(specs["bias"].shape, dtype=dt)
    return out


LAYERNORM = register(
    OpDef(
        name="layernorm",
        attrs=LayerNormAttrs,
        infer=_ln_infer,
        params=_ln_params,
        init=_ln_init,
        channels=Channels.NORM,
        norm=NormRule(centres=True),
        channel_axis=lambda a, ins: ins[0].rank - 1,
        doc="torch.nn.LayerNorm over the last axis",
        facts=_norm_facts(
            fresh_zero_to_zero=No(
                "it normalises across channels: a zero channel becomes -mean/std"
            ),
            normalises=True,
            identity=No(
                "it normalises every vector, so LN(x) = x holds only for inputs that are "
                "already normalised"
            ),
        ),
    )
)


class RMSNormAttrs(Attrs):
    """``torch.nn.RMSNorm`` over the last axis: ``x / sqrt(mean(x²) + eps) * weight``;
    ``eps`` None is ``torch.finfo(dtype).eps``, as in PyTorch."""

    eps: PositiveFloat | None = None
    elementwise_affine: bool = True


def rms_eps(a: RMSNormAttrs, dtype: torch.dtype) -> float:
    """The ``eps`` an rmsnorm adds: its own, else the machine epsilon of ``dtype``."""
    return a.eps if a.eps is not None else torch.finfo(dtype).eps


def _rms_infer(a: RMSNormAttrs, ins: Sequence[TensorType]) -> TensorType:
    (x,) = ins
    require_float(x, "rmsnorm")
    require_rank(x, range(1, 9), "rmsnorm")
    known(x.shape[-1], "rmsnorm's normalised size")
    return x


def _rms_params(a: RMSNormAttrs, ins: Sequence[TensorType]) -> dict[str, ParamSpec]:
    if not a.elementwise_affine:
        return {}
    c = known(ins[0].shape[-1], "rmsnorm's normalised size")
    return {"weight": ParamSpec((c,), param_dtype(ins))}


def _rms_init(a: RMSNormAttrs, ins: Sequence[TensorType], gen: torch.Generator) -> dict:
    specs = _rms_params(a, ins)
    return {k: torch.ones(v.shape, dtype=ins[0].torch_dtype) for k, v in specs.items()}


RMSNORM = register(
    OpDef(
        name="rmsnorm",
        attrs=RMSNormAttrs,
        infer=_rms_infer,
        params=_rms_params,
        init=_rms_init,
        channels=Channels.NORM,
        norm=NormRule(centres=False),
        channel_axis=lambda a, ins: ins[0].rank - 1,
        doc="torch.nn.RMSNorm over the last axis (Llama's norm)",
        facts=_norm_facts(
            # no shift: a zero channel stays zero (x_c / rms · weight_c)
            zero_to_zero=True,
            fresh_zero_to_zero=True,
            normalises=True,
            identity=No(
                "it divides every vector by its root mean square, so RMSNorm(x) = x holds "
                "only for inputs whose root mean square is already 1"
            ),
            zeroable=("weight",),
        ),
    )
)
