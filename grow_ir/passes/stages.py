"""Keeping a graph's stage records true to its nodes after a pass changes widths.

A stage (``Graph.stages[S]``, a :class:`~grow_ir.ir.stages.Stage`) says which values its
block template's ``$param`` s take. When a pass changes an attribute that a ``$param`` sets
(``widen`` grows ``stage1.block0.conv1.out_channels``, which the template wrote as
``$channels``), the record is brought up to date from the stage's last block, so that a
dumped spec's ``with:`` shows the width the stage has now.
"""

from __future__ import annotations

from grow_ir.ir.graph import Graph
from grow_ir.ir.stages import param_name


def refresh_stage_params(graph: Graph) -> Graph:
    """``graph`` with every stage's ``with`` read back from its last block's nodes.

    Guarantees: a ``$param`` used directly as an attribute value of a template node takes
    that attribute's current value in the stage's last block (where several attributes use
    one ``$param`` and now differ, the one nearest the block's output wins: the width the
    stage passes on); every other entry of ``with`` is kept; a graph whose records already
    agree is returned as it is.
    """
    stages = {}
    changed = False
    for name, stage in graph.stages.items():
        template = graph.blocks.get(stage.block)
        new_with = dict(stage.with_)
        if template is not None and stage.depth >= 1:
            for entry in template.nodes:
                node = graph.node_map.get(f"{stage.scope(name, stage.depth - 1)}.{entry.name}")
                if node is None:
                    continue
                for key, value in entry.attrs.items():
                    if param_name(value) and key in type(node.attrs).model_fields:
                        current = getattr(node.attrs, key)
                        if new_with.get(param_name(value)) != current:
                            new_with[param_name(value)] = current
        changed |= new_with != dict(stage.with_)
        stages[name] = stage.replace(with_=new_with)
    return graph.replace(stages=stages) if changed else graph
