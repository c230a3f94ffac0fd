"""The op registry: importing this package defines every op once."""

from grow_ir.ir.ops import (  # noqa: F401
    attention,
    dense,
    elementwise,
    mix,
    norm,
    shape,
    spatial,
    structure,
)
from grow_ir.ir.ops.base import OPS, Attrs, Channels, NoAttrs, OpDef, ParamSpec

__all__ = ["OPS", "Attrs", "Channels", "NoAttrs", "OpDef", "ParamSpec"]
