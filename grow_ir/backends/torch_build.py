"""Building the nn.Module of a node fast: a copy of a prototype, filled with graph tensors.

Constructing a torch.nn module runs its ``__init__`` (argument checks, some twenty
attribute sets through ``nn.Module.__setattr__``, a parameter init on the meta device),
then ``load_state_dict`` (a recursive walk with hooks): tens of microseconds a module, most
of re-lowering the third of a graph that widening changes. A module's structure is a
function of its op, attributes and input types alone (the factory reads nothing else), so
the factory runs once per such signature, on the meta device, for a *prototype*; each
node's module is then a copy of the prototype's attributes (every dict, list and set
copied, submodules copied likewise: a :class:`Shape`) whose parameter and buffer slots
are filled with clones of the graph's tensors, as ``load_state_dict(..., assign=True)``
fills them (a parameter slot gets ``nn.Parameter(clone, requires_grad=<the
prototype's>)``, a buffer slot the clone).
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
    """The index of the slot's owner among the module's submodules (:class:`Shape`'s order)."""
    attr: str
    buffer: bool
    local: str
    """The state_dict key within the module (``out_proj.weight``)."""
    requires_grad: bool


@dataclass(frozen=True)
class Shape:
    """How to copy a module and its submodules: for each (depth first, in registration
    order), the module, its attributes to copy, and where it goes in its parent."""

    parts: tuple[tuple[nn.Module, tuple[str, ...], int, str], ...]
    """``(submodule, names of its dict, list and set attributes, index of its parent
    (-1 for the module itself), its name in the parent)``."""

    @staticmethod
    def of(module: nn.Module) -> Shape:
        """The shape of ``module``."""
        parts: list[tuple[nn.Module, tuple[str, ...], int, str]] = []

        def walk(sub: nn.Module, parent: int, name: str) -> None:
            mutable = tuple(k for k, v in sub.__dict__.items() if isinstance(v, MUTABLE))
            parts.append((sub, mutable, parent, name))
            here = len(parts) - 1
            for child_name, child in sub._modules.items():
                if child is not None:
                    walk(child, here, child_name)

        walk(module, -1, "")
        return Shape(tuple(parts))

    def copy(self) -> list[nn.Module]:
        """A copy of the module sharing no mutable attribute with it (its submodules
        copied likewise, tensors kept as they are), then its submodules, in order."""
        out: list[nn.Module] = []
        for sub, mutable, parent, name in self.parts:
            new = object.__new__(type(sub))
            state = sub.__dict__.copy()
            for k in mutable:
                state[k] = state[k].copy()
            object.__setattr__(new, "__dict__", state)
            if parent >= 0:
                out[parent]._modules[name] = new
            out.append(new)
        return out


@dataclass(frozen=True)
class Prototype:
    """A module built by its factory on the meta device, and where its tensors go."""

    shape: Shape
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
    shape = Shape.of(module)
    index = {id(part[0]): i for i, part in enumerate(shape.parts)}
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
    found = Prototype(shape, tuple(specs))
    if key is not None:
        if len(_PROTOTYPES) >= PROTOTYPES_MAX:
            _PROTOTYPES.clear()
        _PROTOTYPES[key] = found
    return found


_EMPTY = Shape.of(nn.Module())


def container() -> nn.Module:
    """A new empty ``nn.Module`` (a scope holding submodules), as ``nn.Module()`` makes
    it, without its ``__init__``."""
    return _EMPTY.copy()[0]


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
    owners = proto.shape.copy()
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
