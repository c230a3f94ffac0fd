"""The op registry: importing this package defines every op once."""

from grow_ir.ir.ops import attention, dense, elementwise, mix, norm, spatial, structure  # noqa: F401
from grow_ir.ir.ops.base import OPS, Attrs, Channels, NoAttrs, OpDef, ParamSpec

__all__ = ["OPS", "Attrs", "Channels", "NoAttrs", "OpDef", "ParamSpec"]
