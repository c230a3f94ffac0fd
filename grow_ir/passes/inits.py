"""The registry of width inits: how ``widen`` fills new units, one entry per scheme.

An init is a function ``InitContext -> NewUnits`` registered with
:func:`register_width_init` under its name, with whether it reads a probe batch and one
line of documentation. ``widen`` looks inits up here (``net2net`` and ``zero`` live in
``passes/widen.py``, ``lemon`` in ``passes/lemon.py``, ``gradmax`` in
``passes/gradmax.py``), the growth settings validate ``widen: {init: ...}`` against it,
and the trainer draws a probe batch for every init that
needs one. A new init is one new module that registers itself, imported by
``grow_ir/passes/__init__.py``.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from grow_ir.errors import PassError
from grow_ir.ir.graph import Graph
from grow_ir.passes.channels import ChannelGroup


@dataclass(frozen=True)
class NewUnits:
    """How an init fills the new units of a group.

    Attributes:
        copies: for each new unit, the old unit it replicates, or -1 for none.
        fan_in: ``"copy"``: a new unit takes the weight rows, bias and per-channel
            parameters of the unit it copies; ``"mean"``: the mean of the old units' (so a
            new channel carries the mean of the old channels, LEMON's expansion);
            ``"default"``: the op's default (PyTorch's)
            initialisation, with identity batchnorm statistics; ``"zero"``: producers'
            weight rows and bias zero, and per-channel layers that pass a new channel
            through unchanged (see ``_zero_fan_in``), so a new unit is exactly 0 up to its
            consumers.
        fan_out: ``"split"``: each consumer column of an old unit is divided equally among
            the unit and its copies; ``"zero"``: the new units' columns are zero;
            ``"given"``: the values in ``columns``.
        note: how the units were chosen, for the summary.
        columns: for ``fan_out="given"``, per consumer parameter (which must grow along its
            fan-out axis only), the entries at the new positions of that axis, in order:
            the old tensor's shape with that axis as long as the new positions.
        attrs: attribute changes the init needs on nodes of the group, by node name.
        rescale: factors for whole parameters (old entries included), applied before new
            entries are filled (LEMON's norm scales).
    """

    copies: tuple[int, ...]
    fan_in: str
    fan_out: str
    note: str = ""
    columns: Mapping[str, torch.Tensor] = field(default_factory=dict)
    attrs: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    rescale: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        copying = self.fan_in == "copy"
        if (
            copying != all(c >= 0 for c in self.copies)
            or self.fan_in not in ("copy", "mean", "default", "zero")
            or self.fan_out not in ("split", "zero", "given")
            or (self.fan_out == "given") != bool(self.columns)
        ):
            raise ValueError(f"inconsistent new units: {self}")

    def counts(self, old: int) -> list[int]:
        """How many times each old unit appears in the widened group (itself included)."""
        counts = [1] * old
        for c in self.copies:
            if c >= 0:
                counts[c] += 1
        return counts


@dataclass(frozen=True)
class InitContext:
    """What an init may look at to choose the new units (``probe``: data for inits that
    need some, such as GradMax's probe batch; None when not given)."""

    graph: Graph
    node: str
    group: ChannelGroup
    old: int
    width: int
    gen: torch.Generator
    probe: Any = None


InitFn = Callable[[InitContext], NewUnits]


@dataclass(frozen=True)
class WidthInit:
    """A registered width init: its function, whether it needs a probe batch, its doc."""

    name: str
    fill: InitFn
    needs_probe: bool
    doc: str


WIDTH_INITS: dict[str, WidthInit] = {}
"""Every width init, by name (in registration order)."""


def register_width_init(name: str, *, needs_probe: bool, doc: str) -> Callable[[InitFn], InitFn]:
    """Register the decorated ``InitContext -> NewUnits`` function as width init ``name``."""

    def wrap(fn: InitFn) -> InitFn:
        if name in WIDTH_INITS:
            raise ValueError(f"width init {name!r} is registered twice")
        WIDTH_INITS[name] = WidthInit(name, fn, needs_probe, doc)
        return fn

    return wrap


def width_init(name: str, node: str | None = None) -> WidthInit:
    """The width init ``name``; a PassError suggesting the nearest otherwise."""
    if name not in WIDTH_INITS:
        near = difflib.get_close_matches(str(name), WIDTH_INITS, n=1)
        hint = f" (did you mean '{near[0]}'?)" if near else ""
        raise PassError(
            f"unknown init{hint}",
            node=node,
            field="init",
            expected=f"one of {', '.join(WIDTH_INITS)}",
            found=repr(name),
        )
    return WIDTH_INITS[name]
