"""Building the nn.Module of a node fast: a copy of a prototype, filled with graph tensors.

Constructing a torch.nn module runs its ``__init__`` (argument checks, some twenty
attribute sets through ``nn.Module.__setattr__``, a parameter init on the meta device),
then ``load_state_dict`` (a recursive walk with hooks): tens of microseconds a module, most
of re-lowering the third of a graph that widening changes. A module's structure is a
function of its op, attributes and input types alone (the factory reads nothing else), so
the factory runs once per such signature, on the meta device, for a *prototype*; each
node's module is then a copy of the prototype's attributes (every dict, list and set
copied, submodules copied likewise) whose parameter and buffer slots are filled with
clones of the graph's tensors, as ``load_state_dict(..., assign=True)`` fills them (a
parameter slot gets ``nn.Parameter(clone, requires_grad=<the prototype's>)``, a buffer
slot the clone).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from grow_ir.ir.graph import Graph, Node
from grow_ir.ir.types import TensorType

MUTABLE = (dict, list, set)
"""Attribute types copied (shallowly) into every copy of a module (``OrderedDict`` hook
tables are dicts): everything else a torch.nn module holds in ``__dict__`` is immutable
(ints, floats, strings, tuples, dtypes)."""

PROTOTYPES_MAX = 1024
"""Prototypes kept (one per op, attributes and input types); the cache starts over when
full."""


@dataclass(frozen=True)
class SlotSpec:
    """One persistent tensor slot of a prototype."""

    owner: int
    """The index of the slot's owner among the module's submodules (``copy_tree``'s order)."""
    attr: str
    buffer: bool
    local: str
    """The state_dict key within the module (``out_proj.weight``)."""
    requires_grad: bool


@dataclass(frozen=True)
class Prototype:
    """A module built by its factory on the meta device, and where its tensors go."""

    module: nn.Module
    slots: tuple[SlotSpec, ...]


@dataclass(frozen=True, slots=True)
class Filled:
    """One tensor slot of a built module, filled: what :mod:`torch_reuse` links."""

    name: str
    """The graph parameter name."""
    table: dict[str, Any]
    """The owner's ``_parameters`` or ``_buffers``."""
    attr: str
    buffer: bool
    tensor: torch.Tensor


_PROTOTYPES: dict[Any, Prototype] = {}


def prototype(
    factory: Callable[[Any, Sequence[TensorType]], nn.Module],
    op: str,
    attrs: Any,
    input_types: tuple[TensorType, ...],
) -> Prototype:
    """The prototype of modules built by ``factory`` for these attributes and input types
    (cached by op, attributes and types)."""
    key = (op, attrs, input_types)
    try:
        found = _PROTOTYPES.get(key)
    except TypeError:  # an attribute value that cannot be hashed: no caching
        key, found = None, None
    if found is not None:
        return found
    module = factory(attrs, input_types)
    owners = _tree(module)
    index = {id(m): i for i, m in enumerate(owners)}
    specs = []
    for path, sub in module.named_modules():
        base = f"{path}." if path else ""
        for attr, value in sub._parameters.items():
            if value is not None:
                specs.append(
                    SlotSpec(index[id(sub)], attr, False, base + attr, value.requires_grad)
                )
        for attr, value in sub._buffers.items():
            if value is not None and attr not in sub._non_persistent_buffers_set:
                specs.append(SlotSpec(index[id(sub)], attr, True, base + attr, False))
    found = Prototype(module, tuple(specs))
    if key is not None:
        if len(_PROTOTYPES) >= PROTOTYPES_MAX:
            _PROTOTYPES.clear()
        _PROTOTYPES[key] = found
    return found


def _tree(module: nn.Module) -> list[nn.Module]:
    """``module`` and its submodules, depth first in registration order."""
    out = [module]
    for child in module._modules.values():
        if child is not None:
            out.extend(_tree(child))
    return out


def copy_tree(module: nn.Module) -> list[nn.Module]:
    """A copy of ``module`` sharing no mutable attribute with it (its submodules copied
    likewise, tensors kept as they are), then its submodules, in :func:`_tree`'s order."""
    new = object.__new__(type(module))
    state = {k: v.copy() if isinstance(v, MUTABLE) else v for k, v in module.__dict__.items()}
    object.__setattr__(new, "__dict__", state)
    out = [new]
    children = state["_modules"]
    for name, child in children.items():
        if child is not None:
            copied = copy_tree(child)
            children[name] = copied[0]
            out.extend(copied)
    return out


_EMPTY = nn.Module()


def container() -> nn.Module:
    """A new empty ``nn.Module`` (a scope holding submodules), as ``nn.Module()`` makes
    it, without its ``__init__``."""
    return copy_tree(_EMPTY)[0]


def build(
    graph: Graph, node: Node, factory: Callable[[Any, Sequence[TensorType]], nn.Module]
) -> tuple[nn.Module, list[Filled]]:
    """The module of ``node`` (``factory``'s, for the node's attributes and input types)
    holding clones of the graph's tensors for it, and its filled slots.

    Guarantees: the module is what ``factory`` builds, with ``load_state_dict(...,
    assign=True)`` of those clones; its ``state_dict()`` keys, prefixed with
    ``node.param_prefix``, are exactly the node's parameter names; its tensors share no
    storage with ``graph.params``.
    """
    proto = prototype(factory, node.op, node.attrs, tuple(graph.input_types(node)))
    owners = copy_tree(proto.module)
    prefix = node.param_prefix + "."
    params = graph.params
    filled = []
    for spec in proto.slots:
        owner = owners[spec.owner]
        name = prefix + spec.local
        value = params[name].detach().clone()
        if spec.buffer:
            table = owner._buffers
        else:
            table = owner._parameters
            value = nn.Parameter(value, requires_grad=spec.requires_grad)
        table[spec.attr] = value
        filled.append(Filled(name, table, spec.attr, spec.buffer, value))
    return owners[0], filled
