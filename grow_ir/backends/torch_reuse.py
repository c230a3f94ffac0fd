"""Which submodules of an earlier lowering a new lowering may take over unchanged.

A growth step changes a few nodes of a large graph; re-lowering the result should cost
what changed, not the whole graph. Every submodule that :func:`grow_ir.backends.torch.to_torch`
builds is recorded with what it was built from (a :class:`Built`): the node (op and
attributes), its input types, and for each of its tensors a *link* saying "this module
tensor, at this version and storage, holds exactly the values of this graph tensor".
A link is made when the module is built (its tensors are copies of the graph's) and again
by ``update_params`` (the graph's new tensors are exact copies of the module's).

A later lowering of a graph reuses a recorded submodule only when it would build the
same module: same op, equal attributes and input types, the same parameter names, and
every graph tensor is the linked one (the very object, as a pass shares the tensors it
does not touch) while every module tensor is still the linked object in its slot, at the
linked version counter and storage, and every submodule still in its place. Any in-place
change through torch (an optimizer step, a batchnorm forward in train mode, which bumps
``num_batches_tracked``, ``load_state_dict``, a device or dtype move) breaks the link, and
that submodule is rebuilt from the graph. Changes made through ``tensor.data``, which
bypasses the version counter, are not seen.

The links of all the submodules of a lowering are checked together (:class:`Records`),
as a few passes of C-level ``map`` over flat tuples: a fraction of a microsecond a tensor,
where a Python loop over every module costs a few.
"""

from __future__ import annotations

import operator
from bisect import bisect_right
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import cached_property
from itertools import accumulate, chain, compress
from typing import Any

import torch
from torch import nn

from grow_ir.backends.torch_build import Filled
from grow_ir.ir.graph import Graph, Node
from grow_ir.ir.types import TensorType

_VERSION = operator.attrgetter("_version")
_REQUIRES_GRAD = operator.attrgetter("requires_grad")
_GRAD = operator.attrgetter("grad")
_TRAINING = operator.attrgetter("training")


@dataclass(frozen=True, eq=False)
class Built:
    """What one submodule was built from, and the links of its tensors (aligned tuples,
    one entry a tensor, in the module's state_dict order)."""

    module: nn.Module
    node: Node
    """The node it was built for (or one of equal op and attributes)."""
    input_types: tuple[TensorType, ...]
    names: tuple[str, ...]
    """The graph parameter names of its tensors."""
    graph_tensors: tuple[torch.Tensor, ...]
    tables: tuple[dict[str, Any], ...]
    """Each tensor's slot: the owner's ``_parameters`` or ``_buffers``..."""
    attrs: tuple[str, ...]
    """... and the key in it."""
    buffers: tuple[bool, ...]
    module_tensors: tuple[torch.Tensor, ...]
    versions: tuple[int, ...]
    data_ptrs: tuple[int, ...]
    parts: tuple[tuple[dict[str, Any], str, nn.Module], ...]
    """Every submodule below ``module``, as ``(parent._modules, name, submodule)``."""

    @property
    def op(self) -> str:
        """The op it was built for."""
        return self.node.op

    @cached_property
    def parameters(self) -> tuple[torch.Tensor, ...]:
        """Its module tensors that are parameters (not buffers)."""
        return tuple(t for t, b in zip(self.module_tensors, self.buffers, strict=True) if not b)

    @cached_property
    def submodules(self) -> tuple[nn.Module, ...]:
        """``module`` and every submodule below it."""
        return (self.module, *(m for _, _, m in self.parts))

    def matches(self, graph: Graph, node: Node) -> bool:
        """True when lowering ``node`` of ``graph`` would build this same module with the
        same values (checked one by one: the slow path of :meth:`Records.stale`)."""
        attrs = self.node.attrs
        if node.op != self.op or not (node.attrs is attrs or node.attrs == attrs):
            return False
        if tuple(graph.input_types(node)) != self.input_types:
            return False
        if set(graph.params_of(node)) != set(self.names):
            return False
        return not Records({node.param_prefix: self}).stale(graph.params)

    def for_node(self, node: Node) -> Built:
        """This record, for ``node`` (of equal op, attributes and input types)."""
        return self if node is self.node else replace(self, node=node)


def record(graph: Graph, node: Node, module: nn.Module, filled: Sequence[Filled]) -> Built:
    """The record of ``module``, just built for ``node`` from ``graph``'s tensors (its
    slots ``filled``)."""
    tensors = tuple(f.tensor for f in filled)
    return Built(
        module,
        node,
        tuple(graph.input_types(node)),
        tuple(f.name for f in filled),
        tuple(graph.params[f.name] for f in filled),
        tuple(f.table for f in filled),
        tuple(f.attr for f in filled),
        tuple(f.buffer for f in filled),
        tensors,
        tuple(map(_VERSION, tensors)),
        tuple(t.data_ptr() for t in tensors),
        tuple(_parts(module)),
    )


def _parts(module: nn.Module) -> Iterable[tuple[dict[str, Any], str, nn.Module]]:
    for name, child in module._modules.items():
        if child is not None:
            yield module._modules, name, child
            yield from _parts(child)


def relink(built: Built, params: Mapping[str, torch.Tensor], exact: set[str]) -> Built | None:
    """``built`` linked to new graph tensors ``params`` (exact copies of the module's
    tensors for the names in ``exact``); None when some tensor was not copied exactly or
    a slot is empty."""
    if not exact.issuperset(built.names):
        return None
    now = tuple(map(dict.get, built.tables, built.attrs))
    if None in now:
        return None
    return replace(
        built,
        graph_tensors=tuple(params[n] for n in built.names),
        module_tensors=now,
        versions=tuple(map(_VERSION, now)),
        data_ptrs=tuple(t.data_ptr() for t in now),
    )


class Records:
    """The build records of one lowering's submodules, by target, checked together."""

    def __init__(self, built: Mapping[str, Built]) -> None:
        self.built = built
        self._targets = list(built)
        records = list(built.values())

        def flat(field: str) -> list[Any]:
            return list(chain.from_iterable(map(operator.attrgetter(field), records)))

        self._ends = list(accumulate(map(len, map(operator.attrgetter("names"), records))))
        self._names = flat("names")
        self._graph_tensors = flat("graph_tensors")
        self._tables = flat("tables")
        self._attrs = flat("attrs")
        self._tensors = flat("module_tensors")
        self._versions = flat("versions")
        self._data_ptrs = flat("data_ptrs")
        self._part_ends = list(accumulate(map(len, map(operator.attrgetter("parts"), records))))
        parts = flat("parts")
        self._part_tables = [p[0] for p in parts]
        self._part_names = [p[1] for p in parts]
        self._part_modules = [p[2] for p in parts]

    def stale(self, params: Mapping[str, torch.Tensor]) -> set[str]:
        """The targets some link of which no longer holds for a graph of these ``params``:
        a graph tensor that is not the linked object, a slot that no longer holds the
        linked tensor, a tensor changed since (version or storage), a submodule replaced."""
        is_ = operator.is_
        graph_ok = list(map(is_, map(params.get, self._names), self._graph_tensors))
        slot_ok = list(map(is_, map(dict.get, self._tables, self._attrs), self._tensors))
        versions = list(map(_VERSION, self._tensors))
        ptrs = list(map(torch.Tensor.data_ptr, self._tensors))
        bad: list[int] = []
        if False in graph_ok or False in slot_ok or versions != self._versions:
            checks = zip(graph_ok, slot_ok, versions, self._versions, strict=True)
            bad += [i for i, (a, b, v, w) in enumerate(checks) if not (a and b and v == w)]
        if ptrs != self._data_ptrs:
            bad += [i for i, (p, q) in enumerate(zip(ptrs, self._data_ptrs)) if p != q]
        out = {self._targets[bisect_right(self._ends, i)] for i in bad}
        now = map(dict.get, self._part_tables, self._part_names)
        placed = list(map(is_, now, self._part_modules))
        if False in placed:
            out.update(
                self._targets[bisect_right(self._part_ends, i)]
                for i, ok in enumerate(placed)
                if not ok
            )
        return out


def reset_reused(reused: Sequence[Built]) -> None:
    """Put the reused modules in the state a fresh build has: train mode, parameters that
    require gradients and have none (only the ones that differ are touched)."""
    params = list(chain.from_iterable(b.parameters for b in reused))
    for p in compress(params, map(operator.not_, map(_REQUIRES_GRAD, params))):
        p.requires_grad_(True)
    grads = list(map(_GRAD, params))
    if grads.count(None) != len(grads):
        for p in compress(params, [g is not None for g in grads]):
            p.grad = None
    modules = list(chain.from_iterable(b.submodules for b in reused))
    for m in compress(modules, map(operator.not_, map(_TRAINING, modules))):
        m.training = True
