"""Which submodules of an earlier lowering a new lowering may take over unchanged.

A growth step changes a few nodes of a large graph; re-lowering the result should cost
what changed, not the whole graph. Every submodule that :func:`grow_ir.backends.torch.to_torch`
builds is recorded with what it was built from (a :class:`Built`): the op, attributes and
input types its factory read, and for each of its tensors a *link* saying "this module
tensor, at this version and storage, holds exactly the values of this graph tensor".
A link is made when the module is built (its tensors are copies of the graph's) and again
by ``update_params`` (the graph's new tensors are exact copies of the module's).

A later lowering of a graph reuses a recorded submodule only when it would build the
same module: same op, equal attributes and input types, the same parameter names, and
every graph tensor is the linked one (the very object, as a pass shares the tensors it
does not touch) while every module tensor is still the linked object, at the linked
version counter and storage. Any in-place change through torch (an optimizer step, a
batchnorm forward in train mode, which bumps ``num_batches_tracked``, ``load_state_dict``,
a device or dtype move) breaks the link, and that submodule is rebuilt from the graph.
Changes made through ``tensor.data``, which bypasses the version counter, are not seen.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from grow_ir.ir.graph import Graph, Node
from grow_ir.ir.types import TensorType


@dataclass(frozen=True)
class Slot:
    """Where one tensor of a submodule lives: ``owner._parameters[attr]`` or ``_buffers``."""

    owner: nn.Module
    attr: str
    buffer: bool

    def get(self) -> torch.Tensor | None:
        """The tensor in the slot now."""
        table = self.owner._buffers if self.buffer else self.owner._parameters
        return table.get(self.attr)


@dataclass(frozen=True)
class Link:
    """A module tensor known to hold exactly a graph tensor's values."""

    name: str
    """The graph parameter name."""
    graph_tensor: torch.Tensor
    slot: Slot
    module_tensor: torch.Tensor
    version: int
    data_ptr: int

    def holds(self, graph_tensor: torch.Tensor | None) -> bool:
        """True when the slot still holds the linked tensor, unchanged since linking,
        and ``graph_tensor`` is the linked graph tensor."""
        t = self.slot.get()
        return (
            graph_tensor is self.graph_tensor
            and t is self.module_tensor
            and t._version == self.version
            and t.data_ptr() == self.data_ptr
        )


@dataclass(frozen=True)
class Built:
    """What one submodule was built from, and the links of its tensors."""

    module: nn.Module
    op: str
    attrs: Any
    input_types: tuple[TensorType, ...]
    links: tuple[Link, ...]

    def matches(self, graph: Graph, node: Node) -> bool:
        """True when lowering ``node`` of ``graph`` would build this same module with the
        same values."""
        if node.op != self.op or not (node.attrs is self.attrs or node.attrs == self.attrs):
            return False
        if tuple(graph.input_types(node)) != self.input_types:
            return False
        if len(graph.params_of(node)) != len(self.links):
            return False
        params = graph.params
        return all(link.holds(params.get(link.name)) for link in self.links)


def slots(module: nn.Module, prefix: str) -> dict[str, Slot]:
    """Every tensor slot of ``module`` by its full name (``prefix`` + state_dict key)."""
    out: dict[str, Slot] = {}
    for path, sub in module.named_modules():
        base = f"{prefix}.{path}" if path else prefix
        for attr, value in sub._parameters.items():
            if value is not None:
                out[f"{base}.{attr}"] = Slot(sub, attr, buffer=False)
        for attr, value in sub._buffers.items():
            if value is not None and attr not in sub._non_persistent_buffers_set:
                out[f"{base}.{attr}"] = Slot(sub, attr, buffer=True)
    return out


def link(name: str, graph_tensor: torch.Tensor, slot: Slot) -> Link | None:
    """A link from the slot's current tensor to ``graph_tensor`` (the caller guarantees
    they hold equal values); None for an empty slot."""
    t = slot.get()
    if t is None:
        return None
    return Link(name, graph_tensor, slot, t, t._version, t.data_ptr())


def record(graph: Graph, node: Node, module: nn.Module) -> Built:
    """The record of ``module``, just built for ``node`` from ``graph``'s tensors."""
    found = slots(module, node.param_prefix)
    links = tuple(
        lk
        for name, slot in found.items()
        if (lk := link(name, graph.params[name], slot)) is not None
    )
    return Built(module, node.op, node.attrs, tuple(graph.input_types(node)), links)


def relink(built: Built, params: dict[str, torch.Tensor], exact: set[str]) -> Built | None:
    """``built`` linked to new graph tensors ``params`` (exact copies of the module's
    tensors for the names in ``exact``); None when some tensor was not copied exactly."""
    links = []
    for old in built.links:
        if old.name not in exact:
            return None
        new = link(old.name, params[old.name], old.slot)
        if new is None:
            return None
        links.append(new)
    return Built(built.module, built.op, built.attrs, built.input_types, tuple(links))
