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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from itertools import chain, compress, count, repeat
from typing import Any

import torch
from torch import nn

from grow_ir.backends.torch_build import Link, Made, new_link
from grow_ir.ir.graph import Graph, Node
from grow_ir.ir.types import TensorType

_VERSION = operator.attrgetter("_version")
_REQUIRES_GRAD = operator.attrgetter("requires_grad")
_GRAD = operator.attrgetter("grad")
_TRAINING = operator.attrgetter("training")


@dataclass(frozen=True, eq=False)
class Built:
    """What one submodule was built from, and the links of its tensors (in the module's
    state_dict order)."""

    module: nn.Module
    node: Node
    """The node it was built for (or one of equal op and attributes)."""
    input_types: tuple[TensorType, ...]
    """The input types its factory read (none for one that reads none)."""
    links: tuple[Link, ...]
    parts: tuple[tuple[dict[str, Any], str, nn.Module], ...]
    """Every submodule below ``module``, as ``(parent._modules, name, submodule)``."""

    @property
    def op(self) -> str:
        """The op it was built for."""
        return self.node.op

    @property
    def names(self) -> tuple[str, ...]:
        """The graph parameter names of its tensors."""
        return tuple(lk.name for lk in self.links)

    def matches(self, graph: Graph, node: Node, typed: bool = True) -> bool:
        """True when lowering ``node`` of ``graph`` would build this same module with the
        same values (checked one by one: the slow path of :meth:`Records.stale`);
        ``typed``: the module's factory reads its input types (else they are not
        compared)."""
        attrs = self.node.attrs
        if node.op != self.op or not (node.attrs is attrs or node.attrs == attrs):
            return False
        if typed and tuple(graph.input_types(node)) != self.input_types:
            return False
        if set(graph.params_of(node)) != set(self.names):
            return False
        return not Records({node.param_prefix: self}).stale(graph.params)

    def for_node(self, node: Node) -> Built:
        """This record, for ``node`` (of equal op, attributes and input types)."""
        return self if node is self.node else replace(self, node=node)


def record(node: Node, made: Made) -> Built:
    """The record of a module just built for ``node`` (see
    :func:`grow_ir.backends.torch_build.build`)."""
    return _new_built(
        {
            "module": made.module,
            "node": node,
            "input_types": made.input_types,
            "links": made.links,
            "parts": made.parts,
        }
    )


def relink(built: Built, params: Mapping[str, torch.Tensor], exact: set[str]) -> Built | None:
    """``built`` linked to new graph tensors ``params`` (exact copies of the module's
    tensors for the names in ``exact``); None when some tensor was not copied exactly or
    a slot is empty."""
    links = []
    for old in built.links:
        t = old.table.get(old.attr)
        if old.name not in exact or t is None:
            return None
        links.append(new_link(old.name, params[old.name], old.table, old.attr, old.buffer, t))
    return _new_built({**built.__dict__, "links": tuple(links)})


def _new_built(fields: dict[str, Any]) -> Built:
    """A Built of these fields, set at C speed, not one by one through its __init__."""
    built = object.__new__(Built)
    object.__setattr__(built, "__dict__", fields)
    return built


class Records:
    """The build records of one lowering's submodules, by target, as flat lists (one
    entry a tensor, or a submodule), to be checked together."""

    def __init__(self, built: Mapping[str, Built]) -> None:
        self.built = built
        self._targets = list(built)
        records = list(built.values())
        per_record = list(map(_LINKS, records))
        # the target of each tensor (and of each submodule): what a failed check names
        self._tensor_targets = _repeated(self._targets, per_record)
        rows = list(chain.from_iterable(per_record))
        columns = list(map(list, zip(*rows, strict=True))) if rows else [[] for _ in Link._fields]
        (
            self._names,
            self._graph_tensors,
            self._tables,
            self._attrs,
            buffers,
            self._tensors,
            self._versions,
            self._data_ptrs,
        ) = columns
        self.parameters = list(compress(self._tensors, map(operator.not_, buffers)))
        """Every parameter (not buffer) of the modules."""
        parts_per_record = list(map(_PARTS, records))
        self._part_targets = _repeated(self._targets, parts_per_record)
        parts = list(chain.from_iterable(parts_per_record))
        self._part_tables = [p[0] for p in parts]
        self._part_names = [p[1] for p in parts]
        self._part_modules = [p[2] for p in parts]
        self.modules = [*map(_MODULE, records), *self._part_modules]
        """Every module and submodule of the records."""

    def stale(self, params: Mapping[str, torch.Tensor]) -> set[str]:
        """The targets some link of which no longer holds for a graph of these ``params``:
        a graph tensor that is not the linked object, a slot that no longer holds the
        linked tensor, a tensor changed since (version or storage), a submodule replaced."""
        # Each check yields the indices where it fails and each index its target, all
        # at C level: no Python code runs per tensor, not even per failing one.
        is_not, ne = operator.is_not, operator.ne
        tensors = self._tensors
        failed = chain(
            compress(count(), map(is_not, map(params.get, self._names), self._graph_tensors)),
            compress(count(), map(is_not, map(dict.get, self._tables, self._attrs), tensors)),
            compress(count(), map(ne, map(_VERSION, tensors), self._versions)),
            compress(count(), map(ne, map(torch.Tensor.data_ptr, tensors), self._data_ptrs)),
        )
        out = set(map(self._tensor_targets.__getitem__, failed))
        now = map(dict.get, self._part_tables, self._part_names)
        moved = compress(count(), map(is_not, now, self._part_modules))
        out.update(map(self._part_targets.__getitem__, moved))
        return out

    def fresh(self) -> bool:
        """Whether every module is in the state a fresh build has (train mode, parameters
        that require gradients and have none): then :meth:`reset` would change nothing of
        them, nor of any subset of them. Reads, never writes."""
        params = self.parameters
        return (
            all(map(_REQUIRES_GRAD, params))
            and list(map(_GRAD, params)).count(None) == len(params)
            and all(map(_TRAINING, self.modules))
        )

    def reset(self, containers: Sequence[nn.Module] = ()) -> None:
        """Put every module (and ``containers``) in the state a fresh build has: train
        mode, parameters that require gradients and have none (only the ones that differ
        are touched)."""
        params = self.parameters
        for p in compress(params, map(operator.not_, map(_REQUIRES_GRAD, params))):
            p.requires_grad_(True)
        grads = list(map(_GRAD, params))
        if grads.count(None) != len(grads):
            for p in compress(params, [g is not None for g in grads]):
                p.grad = None
        train_mode(self.modules)
        train_mode(containers)


def train_mode(modules: Sequence[nn.Module]) -> None:
    """Put ``modules`` (each one alone, not its children) in train mode, touching only
    those in eval mode."""
    for m in compress(modules, list(map(operator.not_, map(_TRAINING, modules)))):
        m.training = True


def _repeated(targets: list[str], per_record: list[Any]) -> list[str]:
    """Each target repeated once per item of its record's entry of ``per_record``."""
    return list(chain.from_iterable(map(repeat, targets, map(len, per_record))))


_LINKS = operator.attrgetter("links")
_PARTS = operator.attrgetter("parts")
_MODULE = operator.attrgetter("module")
