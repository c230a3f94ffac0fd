"""Stages and block templates as IR values: AutoGrow's unit of growth.

A :class:`BlockTemplate` is a list of template nodes whose input is called ``input``;
attribute values ``"$param"`` are filled in from a stage's ``with``. A :class:`Stage` says
which template it repeats, how many times (``depth``) and with which parameters; block
``i`` of stage ``S`` is the template's nodes named ``S.block{i}.{local}`` (``S.{i}.{local}``
in a stage imported from an ``nn.ModuleList``), chained (each
block reads the previous block's output). ``Graph.blocks`` and ``Graph.stages`` hold these
values, so passes read typed fields instead of re-parsing spec dicts; the spec front end
checks templates and stages against the file and builds them.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

BLOCK_INPUT = "input"
"""The name of a block's input inside its template."""

HEAD_KEYS = ("name", "op", "inputs", "share")
"""The keys of a template node entry that are not attributes."""


BLOCK_PREFIX = "block"
"""What a block's index follows in its scope (``stage1.block0``), unless the stage says."""


def block_name(stage: str, index: int, prefix: str = BLOCK_PREFIX) -> str:
    """The scope of block ``index`` of ``stage``: ``stage1.block0``, or with ``prefix``
    ``""`` the numbering of an ``nn.ModuleList`` (``transformer.h.0``, an imported stage)."""
    return f"{stage}.{prefix}{index}"


def param_name(value: Any) -> str:
    """``"channels"`` for the template value ``"$channels"``; ``""`` for any other value."""
    return value[1:] if isinstance(value, str) and value.startswith("$") else ""


@dataclass(frozen=True)
class TemplateNode:
    """One node of a block template.

    Attributes:
        name: its local name (no dots; never ``input``).
        op: the op name.
        attrs: attribute values as written, ``"$param"`` strings included.
        inputs: local names it reads (``input``: the block's input); None: the previous
            template node (the block's input for the first).
        share: the local node whose parameters it reuses, or None.
    """

    name: str
    op: str
    attrs: Mapping[str, Any] = field(default_factory=dict)
    inputs: tuple[str, ...] | None = None
    share: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "attrs", MappingProxyType(copy.deepcopy(dict(self.attrs))))
        if self.inputs is not None:
            object.__setattr__(self, "inputs", tuple(self.inputs))

    def __deepcopy__(self, memo: dict[int, Any]) -> TemplateNode:
        return self  # immutable: its mappings are read-only copies

    @classmethod
    def from_entry(cls, entry: Mapping[str, Any]) -> TemplateNode:
        """The template node a spec entry (``{name, op, inputs?, share?, ...attrs}``) gives."""
        inputs = entry.get("inputs")
        return cls(
            name=str(entry["name"]),
            op=str(entry["op"]),
            attrs={k: v for k, v in entry.items() if k not in HEAD_KEYS},
            inputs=None if inputs is None else tuple(str(i) for i in inputs),
            share=None if entry.get("share") is None else str(entry["share"]),
        )

    def entry(self) -> dict[str, Any]:
        """The spec entry of this node (the inverse of :meth:`from_entry`)."""
        out: dict[str, Any] = {"name": self.name, "op": self.op}
        if self.inputs is not None:
            out["inputs"] = list(self.inputs)
        if self.share is not None:
            out["share"] = self.share
        out.update(copy.deepcopy(dict(self.attrs)))
        return out


@dataclass(frozen=True)
class BlockTemplate:
    """A block template: its nodes and the local node that gives the block's output."""

    nodes: tuple[TemplateNode, ...]
    output: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "nodes", tuple(self.nodes))

    def __deepcopy__(self, memo: dict[int, Any]) -> BlockTemplate:
        return self  # immutable: its mappings are read-only copies

    @classmethod
    def of(cls, value: BlockTemplate | Mapping[str, Any]) -> BlockTemplate:
        """``value`` itself, or the template a mapping ``{nodes: [...], output?}`` gives
        (``output`` defaults to the last node)."""
        if isinstance(value, BlockTemplate):
            return value
        nodes = tuple(
            n if isinstance(n, TemplateNode) else TemplateNode.from_entry(n) for n in value["nodes"]
        )
        return cls(nodes, str(value.get("output") or nodes[-1].name))

    def node(self, local: str) -> TemplateNode | None:
        """The template node called ``local``, if any."""
        return next((n for n in self.nodes if n.name == local), None)

    def params(self) -> set[str]:
        """The ``$param`` names the template's attributes use."""
        found: set[str] = set()

        def walk(value: Any) -> None:
            if param_name(value):
                found.add(param_name(value))
            elif isinstance(value, (list, tuple)):
                for v in value:
                    walk(v)
            elif isinstance(value, Mapping):
                for v in value.values():
                    walk(v)

        for n in self.nodes:
            walk(dict(n.attrs))
        return found

    def entry(self) -> dict[str, Any]:
        """The spec form: ``{nodes: [...], output: LOCAL}``."""
        return {"nodes": [n.entry() for n in self.nodes], "output": self.output}


@dataclass(frozen=True)
class Stage:
    """A stage: ``depth`` chained copies of template ``block`` with parameters ``with_``,
    block ``i`` named ``{stage}.{prefix}{first + i}`` (``first`` > 0: an imported list
    whose first items are other blocks, as a ResNet layer's downsampling block 0)."""

    block: str
    depth: int
    with_: Mapping[str, Any] = field(default_factory=dict)
    prefix: str = BLOCK_PREFIX
    first: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "with_", MappingProxyType(copy.deepcopy(dict(self.with_))))

    def __deepcopy__(self, memo: dict[int, Any]) -> Stage:
        return self  # immutable: its mappings are read-only copies

    @classmethod
    def of(cls, value: Stage | Mapping[str, Any]) -> Stage:
        """``value`` itself, or the stage a record ``{block, depth, with?}`` gives."""
        if isinstance(value, Stage):
            return value
        prefix = value.get("prefix")
        return cls(
            value["block"],
            value["depth"],
            value.get("with") or {},
            BLOCK_PREFIX if prefix is None else str(prefix),
            int(value.get("first") or 0),
        )

    def replace(self, **changes: Any) -> Stage:
        """This stage with some fields changed."""
        fields = {
            "block": self.block,
            "depth": self.depth,
            "with_": self.with_,
            "prefix": self.prefix,
            "first": self.first,
            **changes,
        }
        return Stage(**fields)

    def scope(self, stage: str, index: int) -> str:
        """The scope of block ``index`` (0 .. depth-1) of this stage, called ``stage``."""
        return block_name(stage, self.first + index, self.prefix)

    def entry(self) -> dict[str, Any]:
        """The spec record: ``{block, depth, with}`` (and ``prefix`` when not ``block``,
        ``first`` when not 0)."""
        out = {"block": self.block, "depth": self.depth, "with": copy.deepcopy(dict(self.with_))}
        if self.prefix != BLOCK_PREFIX:
            out["prefix"] = self.prefix
        if self.first:
            out["first"] = self.first
        return out


@dataclass(frozen=True)
class BlockNode:
    """A node of one instantiated block, attributes substituted, before validation."""

    name: str
    op: str
    attrs: dict[str, Any]
    inputs: tuple[str, ...]
    share: str | None


def block_nodes(
    template: BlockTemplate, scope: str, with_: Mapping[str, Any], block_input: str
) -> list[BlockNode]:
    """The nodes of a block of ``template`` in ``scope`` (a stage's :meth:`Stage.scope`
    or :func:`block_name`) reading ``block_input``.

    Guarantees: names are ``{scope}.{local}``; implicit inputs are the previous
    template node (``block_input`` for the first); ``input`` reads ``block_input``; every
    ``"$param"`` is replaced by a copy of ``with_[param]`` (KeyError when ``with_`` lacks
    it: callers check :meth:`BlockTemplate.params` first).
    """

    def full(local: str) -> str:
        return block_input if local == BLOCK_INPUT else f"{scope}.{local}"

    out = []
    previous = BLOCK_INPUT
    for n in template.nodes:
        inputs = n.inputs if n.inputs is not None else (previous,)
        out.append(
            BlockNode(
                name=full(n.name),
                op=n.op,
                attrs={k: _substitute(v, with_) for k, v in n.attrs.items()},
                inputs=tuple(full(x) for x in inputs),
                share=full(n.share) if n.share else None,
            )
        )
        previous = n.name
    return out


def _substitute(value: Any, params: Mapping[str, Any]) -> Any:
    if param_name(value):
        return copy.deepcopy(params[param_name(value)])
    if isinstance(value, (list, tuple)):
        return [_substitute(v, params) for v in value]
    if isinstance(value, Mapping):
        return {k: _substitute(v, params) for k, v in value.items()}
    return value
