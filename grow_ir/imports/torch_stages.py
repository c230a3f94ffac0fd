"""Stages of an imported graph: the blocks of an ``nn.ModuleList``, when they are one.

A transformer keeps its blocks in an ``nn.ModuleList`` (``transformer.h``,
``model.layers``), so the imported nodes of block ``i`` are the ones named
``{path}.{i}...``. Where every block has the same nodes (local names, ops, attributes and
wiring), reads one value from outside it, the previous block's last node (block 0: any
value), the list becomes a stage (:class:`~grow_ir.ir.stages.Stage` with prefix ``""``,
its blocks keep the module's names) whose template is block 0: what ``insert_block`` and
``stack_blocks`` grow.
"""

from __future__ import annotations

from torch import nn

from grow_ir.imports.builder import clean_name, ident
from grow_ir.ir.graph import Graph, Node
from grow_ir.ir.stages import BLOCK_INPUT, BlockTemplate, Stage, TemplateNode, block_name

LIST_PREFIX = ""
"""Block ``i`` of an imported stage is named ``{path}.{i}``, as the module list numbers it."""


def module_list_stages(graph: Graph, root: nn.Module) -> Graph:
    """``graph`` with a stage (and its template) for every ``nn.ModuleList`` of ``root``
    whose items are chained copies of one block; the nodes are unchanged."""
    blocks, stages = dict(graph.blocks), dict(graph.stages)
    for path, module in root.named_modules():
        if not isinstance(module, nn.ModuleList) or not len(module) or not path:
            continue
        stage = clean_name(path)
        template = _template(graph, stage, len(module))
        if template is None or stage in stages:
            continue
        name = ident(stage)
        blocks[name] = template
        stages[stage] = Stage(name, len(module), {}, LIST_PREFIX)
    if stages == dict(graph.stages):
        return graph
    return graph.replace(blocks=blocks, stages=stages)


def _template(graph: Graph, stage: str, depth: int) -> BlockTemplate | None:
    """Block 0 as a template when every block is that template instantiated after the
    previous block; else None."""
    first: tuple[TemplateNode, ...] | None = None
    block_input = None
    for i in range(depth):
        scope = block_name(stage, i, LIST_PREFIX)
        nodes = [n for n in graph.nodes if n.name.startswith(scope + ".")]
        local = _locals(nodes, scope)
        if local is None:
            return None
        made, outside = local
        if len(outside) != 1 or (block_input is not None and outside != {block_input}):
            return None
        if first is None:
            first = made
        elif made != first:
            return None
        block_input = nodes[-1].name
    assert first is not None
    return BlockTemplate(first, first[-1].name)


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
