"""Weight initialisers for grown parameters.

Tensor-level helpers (Gaussian, uniform) and :func:`init_layer`, which gives a
whole new layer its parameters under one of the named schemes that passes accept.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from grow_ir.errors import PassError, ShapeError
from grow_ir.ir.graph import Node
from grow_ir.ir.ops import OPS
from grow_ir.ir.ops.facts import No
from grow_ir.ir.types import TensorType

LAYER_INITS = ("default", "identity", "zero", "gauss", "uniform")
"""Schemes of :func:`init_layer`: PyTorch's default, the identity function, all zeros, and
Gaussian or uniform random weights of variance ``1 / fan_in``."""


def fan_in(shape: Sequence[int]) -> int:
    """Inputs per output unit of a weight of ``shape`` (1 for a vector)."""
    return max(1, math.prod(shape[1:])) if len(shape) >= 2 else 1


def gauss(like: torch.Tensor, std: float, gen: torch.Generator) -> torch.Tensor:
    """A tensor like ``like`` drawn from N(0, std²) with ``gen``."""
    return torch.nn.init.normal_(torch.empty_like(like), 0.0, std, generator=gen)


def uniform(like: torch.Tensor, bound: float, gen: torch.Generator) -> torch.Tensor:
    """A tensor like ``like`` drawn from U(-bound, bound) with ``gen``."""
    return torch.nn.init.uniform_(torch.empty_like(like), -bound, bound, generator=gen)


def init_layer(
    node: Node, inputs: Sequence[TensorType], how: str, gen: torch.Generator
) -> dict[str, torch.Tensor]:
    """Fresh parameters (keyed by local name) for ``node`` under scheme ``how``.

    Guarantees, for the layer evaluated in eval mode:

    - ``default``: PyTorch's initialisation of the module.
    - ``identity``: the layer computes its input exactly (up to rounding), as the op's
      ``OpFacts.identity`` builds it: eye for a square linear, Dirac for a conv with as many
      outputs as inputs, stride 1, groups 1 and padding ``dilation * (k - 1) / 2``, and for
      batchnorm gamma = sqrt(running_var + eps), beta = running_mean. Other layers
      (layernorm among them) have no identity.
    - ``zero``: the parameters that make the output (``OpFacts.zeroable``: weight and
      bias, attention's ``out_proj``) zero, so the layer outputs zeros; the others (and
      buffers) keep their defaults.
    - ``gauss`` / ``uniform``: those parameters random with variance ``1 / fan_in`` of the
      first, the weight (Gaussian; uniform on ``±sqrt(3 / fan_in)``), except for a norm
      layer's per-channel scale and shift (a weight without fan-in: batchnorm, layernorm),
      where they are AutoGrow's GauInit and UniInit (Wen et al. 2020): gamma and beta from
      N(0, 1), resp. U(0, 1).

    Raises:
        PassError: the scheme is unknown or impossible for this layer, naming the node.
    """
    params = dict(node.opdef.init(node.attrs, inputs, gen))
    if how == "default":
        return params
    if how == "identity":
        return _identity(node, inputs, params)
    if how not in LAYER_INITS:
        raise PassError(
            "unknown initialisation",
            node=node.name,
            field="init",
            expected=f"one of {', '.join(LAYER_INITS)}",
            found=repr(how),
        )
    # The parameters that make the output (OpFacts.zeroable: weight and bias, attention's
    # out_proj); the first is the weight whose fan-in sets the random scale.
    affine = [k for k in node.opdef.facts.zeroable if k in params]
    if not affine or params[affine[0]].dim() < 1:
        raise PassError(
            f"a {node.op} without weights cannot take init '{how}'",
            node=node.name,
            field="init",
            expected="a layer with a weight",
            found=f"{node.op} {node.attr_dict()}",
        )
    per_channel = params[affine[0]].dim() == 1
    std = 1.0 / math.sqrt(fan_in(params[affine[0]].shape))
    for key in affine:
        t = params[key]
        if how == "zero":
            params[key] = torch.zeros_like(t)
        elif how == "gauss":
            params[key] = gauss(t, std, gen)
        elif per_channel:  # UniInit: a positive scale, as the reference code draws it
            params[key] = torch.nn.init.uniform_(torch.empty_like(t), 0.0, 1.0, generator=gen)
        else:
            params[key] = uniform(t, math.sqrt(3.0) * std, gen)
    return params


def _identity(
    node: Node, inputs: Sequence[TensorType], params: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """The op's own identity initialisation (``OpFacts.identity``), as a PassError when the
    op has none or these attributes do not allow one."""
    identity = node.opdef.facts.identity
    if isinstance(identity, No):
        able = [name for name, op in OPS.items() if not isinstance(op.facts.identity, No)]
        raise PassError(
            f"no identity initialisation: {identity.why}",
            node=node.name,
            field="init",
            expected=", ".join(able),
            found=node.op,
        )
    try:
        return identity(node.attrs, inputs, params)
    except ShapeError as exc:
        raise PassError(
            f"no identity initialisation: {exc.reason}",
            node=node.name,
            field="init",
            expected=exc.expected,
            found=exc.found,
        ) from None
