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
from typing import Any, NamedTuple

import torch
from torch import nn

from grow_ir.ir.graph import Graph, Node
from grow_ir.ir.types import TensorType

MUTABLE = (dict, list, set)
"""Attribute types copied (shallowly) into every copy of a module (``OrderedDict`` hook
tables are dicts): everything else a torch.nn module holds in ``__dict__`` is immutable
(ints, floats, strings, tuples, dtypes)."""

Factory = Callable[[Any, Sequence[TensorType]], nn.Module]
"""Builds a node's module (on the meta device) from its attributes and input types."""


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
        new_object = object.__new__
        set_dict = object.__setattr__
        for sub, mutable, parent, name in self.parts:
            new = new_object(type(sub))
            state = sub.__dict__.copy()
            for k in mutable:
                state[k] = state[k].copy()
            set_dict(new, "__dict__", state)
            if parent >= 0:
                out[parent]._modules[name] = new
            out.append(new)
        return out

    def placed(
        self, copies: Sequence[nn.Module]
    ) -> tuple[tuple[dict[str, Any], str, nn.Module], ...]:
        """Where each submodule of a :meth:`copy` sits: ``(parent._modules, name,
        submodule)`` for every one below the module itself."""
        parts = self.parts
        return tuple(
            (copies[parts[i][2]]._modules, parts[i][3], copies[i]) for i in range(1, len(parts))
        )


@dataclass(frozen=True)
class Prototype:
    """A module built by its factory on the meta device, and where its tensors go."""

    shape: Shape
    slots: tuple[SlotSpec, ...]


class Link(NamedTuple):
    """A module tensor known to hold exactly a graph tensor's values (see
    :mod:`grow_ir.backends.torch_reuse`)."""

    name: str
    """The graph parameter name."""
    graph_tensor: torch.Tensor
    table: dict[str, Any]
    """The slot: the owner's ``_parameters`` or ``_buffers``..."""
    attr: str
    """... and the key in it."""
    buffer: bool
    module_tensor: torch.Tensor
    version: int
    data_ptr: int


_new_tuple = tuple.__new__  # a NamedTuple's own __new__ is Python code: a tuple's is C


def new_link(
    name: str,
    graph_tensor: torch.Tensor,
    table: dict[str, Any],
    attr: str,
    buffer: bool,
    tensor: torch.Tensor,
) -> Link:
    """The link of ``tensor`` (in slot ``table[attr]``) to ``graph_tensor`` at its version
    and storage now (the caller guarantees they hold equal values), made at C speed."""
    return _new_tuple(
        Link, (name, graph_tensor, table, attr, buffer, tensor, tensor._version, tensor.data_ptr())
    )


class Made(NamedTuple):
    """A module just built for a node, and what it was built from."""

    module: nn.Module
    input_types: tuple[TensorType, ...]
    """The node's input types (what the factory read)."""
    links: tuple[Link, ...]
    """Its filled tensor slots, in state_dict order, each linked to its graph tensor."""
    parts: tuple[tuple[dict[str, Any], str, nn.Module], ...]
    """Every submodule below ``module``, as ``(parent._modules, name, submodule)``."""


_PROTOTYPES: dict[Any, Prototype] = {}


def untyped(factory: Factory) -> Factory:
    """Declares that the module ``factory`` builds reads nothing of its input types (a
    dropout, an embedding): a node keeps its module when a pass changes only the types it
    reads (a dropout after a widened layer), and the factory is called with none."""
    factory.reads_types = False  # type: ignore[attr-defined]
    return factory


def reads_types(factory: Factory) -> bool:
    """Whether the modules ``factory`` builds depend on their input types (unless
    declared :func:`untyped`)."""
    return getattr(factory, "reads_types", True)


def prototype(
    factory: Factory,
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


def build(graph: Graph, node: Node, factory: Factory) -> Made:
    """The module of ``node`` (``factory``'s, for the node's attributes and input types,
    or none if it is :func:`untyped`) holding clones of the graph's tensors for it, with
    its links and parts.

    Guarantees: the module is what ``factory`` builds, with ``load_state_dict(...,
    assign=True)`` of those clones; its ``state_dict()`` keys, prefixed with
    ``node.param_prefix``, are exactly the node's parameter names, and ``links`` name them
    in that order; its tensors share no storage with ``graph.params``.
    """
    types = graph.types
    input_types = tuple([types[i] for i in node.inputs]) if reads_types(factory) else ()
    proto = prototype(factory, node.op, node.attrs, input_types)
    owners = proto.shape.copy()
    prefix = node.param_prefix + "."
    params = graph.params
    links = []
    tensor_type, parameter = torch.Tensor, nn.Parameter
    make_parameter = tensor_type._make_subclass
    for spec in proto.slots:
        owner = owners[spec.owner]
        name = prefix + spec.local
        source = params[name]
        # one copy, and no autograd record of it (a graph tensor that requires grad is
        # detached first)
        value = (source.detach() if source.requires_grad else source).clone()
        if spec.buffer:
            table = owner._buffers
        else:
            table = owner._parameters
            # what nn.Parameter(value, requires_grad) does with a plain tensor, without
            # its Python-level __new__
            if type(value) is tensor_type:
                value = make_parameter(parameter, value, spec.requires_grad)
            else:
                value = parameter(value, requires_grad=spec.requires_grad)
        table[spec.attr] = value
        links.append(new_link(name, source, table, spec.attr, spec.buffer, value))
    parts = proto.shape.placed(owners) if len(owners) > 1 else ()
    return _new_tuple(Made, (owners[0], input_types, tuple(links), parts))
