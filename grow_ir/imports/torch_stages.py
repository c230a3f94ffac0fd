"""Stages of an imported graph: the numbered blocks of a list, when they are one.

A transformer keeps its blocks in an ``nn.ModuleList`` (``transformer.h``,
``model.layers``), a CNN often in an ``nn.Sequential`` (torchvision ResNet's ``layer1``),
so the imported nodes of block ``i`` are the ones named ``{path}.{i}...``. Where every
block has the same nodes (local names, ops, attributes and wiring), reads one value from
outside it, the previous block's last node (block 0: any value), the list becomes a stage
(:class:`~grow_ir.ir.stages.Stage` with prefix ``""``, its blocks keep the module's names)
whose template is block 0: what ``insert_block`` and ``stack_blocks`` grow. ``from_torch``
reads the lists from the module (:func:`module_list_stages`); ``from_onnx``, which has no
modules, from the node names
(:func:`numbered_stages`: a file that records module paths names its nodes after them).
"""

from __future__ import annotations

import re

from torch import nn

from grow_ir.imports.builder import clean_name, ident
from grow_ir.ir.graph import Graph, Node
from grow_ir.ir.stages import BLOCK_INPUT, BlockTemplate, Stage, TemplateNode, block_name
from grow_ir.passes.insert import branch_ends

LIST_PREFIX = ""
"""Block ``i`` of an imported stage is named ``{path}.{i}``, as the module list numbers it."""


def module_list_stages(graph: Graph, root: nn.Module) -> Graph:
    """``graph`` with a stage (and its template) for every ``nn.ModuleList`` or
    ``nn.Sequential`` of ``root`` whose items are chained copies of one block; the nodes
    are unchanged. Items are numbered by their names: ``0``, ``1``... as a list names them,
    or one word and the number (RegNet's ``block2-0``, ``block2-1``: the prefix
    ``block2_`` once cleaned)."""
    lists = []
    for path, module in root.named_modules():
        if isinstance(module, (nn.ModuleList, nn.Sequential)) and len(module) and path:
            prefix = _numbering([clean_name(name) for name, _ in module.named_children()])
            if prefix is not None:
                lists.append((clean_name(path), len(module), prefix))
    return list_stages(graph, lists)


def _numbering(names: list[str]) -> str | None:
    """The prefix ``p`` of names ``p0``, ``p1``... ``p{k-1}`` (in order), None otherwise."""
    prefix = names[0].removesuffix("0")
    numbered = names == [f"{prefix}{i}" for i in range(len(names))]
    return prefix if numbered and (prefix == "" or prefix.isidentifier()) else None


def numbered_stages(graph: Graph) -> Graph:
    """``graph`` with a stage for every path ``P`` whose nodes are numbered ``P.0...``
    to ``P.{k-1}...`` (every number from 0 on) when those are chained copies of one
    block (or ``P.{prefix}0``...: the numbering :func:`module_list_stages` reads); the
    nodes are unchanged."""
    numbers: dict[tuple[str, str], set[int]] = {}
    for n in graph.nodes:
        parts = n.name.split(".")
        for i in range(1, len(parts) - 1):
            numbered = _NUMBERED.fullmatch(parts[i])
            if numbered:
                key = (".".join(parts[:i]), numbered[1])
                numbers.setdefault(key, set()).add(int(numbered[2]))
    lists = [
        (path, len(got), prefix)
        for (path, prefix), got in numbers.items()
        if got == set(range(len(got)))
    ]
    return list_stages(graph, lists)


_NUMBERED = re.compile(r"(.*?)([0-9]+)")
"""A scope that numbers a block: a prefix (none, or RegNet's ``block2_``) and a number."""


def list_stages(graph: Graph, lists: list[tuple[str, int, str]]) -> Graph:
    """``graph`` with a stage (and its template) for every ``(path, depth, prefix)`` of
    ``lists`` whose blocks ``path.{prefix}0`` .. ``path.{prefix}{depth-1}`` are chained
    copies of one block, or, where
    the first blocks differ (a ResNet layer's downsampling block 0), whose last two or more
    blocks are, or whose last block alone is a residual block that ``insert_block`` can copy
    exactly (ResNet-18's ``layer2``: one block after the downsampling one): the stage is
    then those (``Stage.first`` the index of the first)."""
    blocks, stages = dict(graph.blocks), dict(graph.stages)
    for stage, depth, prefix in lists:
        if stage in stages:
            continue
        found = _copies(graph, stage, depth, prefix)
        if found is None:
            continue
        first, template = found
        last = block_name(stage, depth - 1, prefix)
        if not _keeps_type(graph, last):  # a lone downsampling block: no copy can follow it
            continue
        if 0 < first == depth - 1 and not _insertable(graph, last):
            continue
        name = ident(stage)
        blocks[name] = template
        stages[stage] = Stage(name, depth - first, {}, prefix, first)
    if stages == dict(graph.stages):
        return graph
    return graph.replace(blocks=blocks, stages=stages)


def _block(graph: Graph, scope: str) -> tuple[dict[str, Node], str]:
    """The nodes of the block in ``scope`` (by name, in order) and the one value it reads
    from outside."""
    nodes = {n.name: n for n in graph.nodes if n.name.startswith(scope + ".")}
    (block_in,) = {v for n in nodes.values() for v in n.inputs if v not in nodes}
    return nodes, block_in


def _keeps_type(graph: Graph, scope: str) -> bool:
    """Whether the block in ``scope`` outputs the type of the value it reads (so that a
    copy of it can follow it)."""
    nodes, block_in = _block(graph, scope)
    return graph.types[next(reversed(nodes))] == graph.types[block_in]


def _insertable(graph: Graph, scope: str) -> bool:
    """Whether a copy of the block in ``scope`` can be inserted after it exactly (a chain of
    residual joins whose branches end in layers that can be zeroed: what ``insert_block``
    checks)."""
    nodes, block_in = _block(graph, scope)
    return not branch_ends(graph, nodes, block_in, next(reversed(nodes)))[1]


def _copies(graph: Graph, stage: str, depth: int, prefix: str) -> tuple[int, BlockTemplate] | None:
    """``(first, template)``: the longest run of the list's last blocks, from block
    ``first`` on, that are ``template`` (block ``first``) each instantiated after the
    previous block; None when the last block is no block (each read once)."""
    read = []
    for i in range(depth):
        scope = block_name(stage, i, prefix)
        nodes = [n for n in graph.nodes if n.name.startswith(scope + ".")]
        local = _locals(nodes, scope)
        read.append(None if local is None or len(local[1]) != 1 else (nodes[-1].name, *local))
    if read[-1] is None:
        return None
    first = depth - 1
    while first > 0:
        before, this = read[first - 1], read[first]
        assert this is not None
        if before is None or before[1] != this[1] or this[2] != {before[0]}:
            break
        first -= 1
    made = read[first][1]  # type: ignore[index]
    return first, BlockTemplate(made, made[-1].name)


def _locals(nodes: list[Node], scope: str) -> tuple[tuple[TemplateNode, ...], set[str]] | None:
    """The block's nodes with local names, and the values it reads from outside it."""
    if not nodes:
        return None
    names = {n.name for n in nodes}
    outside: set[str] = set()
    made = []
    for n in nodes:
        if n.share is not None:
            return None
        inputs = []
        for v in n.inputs:
            if v in names:
                inputs.append(v.removeprefix(scope + "."))
            else:
                outside.add(v)
                inputs.append(BLOCK_INPUT)
        made.append(
            TemplateNode(n.name.removeprefix(scope + "."), n.op, n.attr_dict(), tuple(inputs))
        )
    return tuple(made), outside
