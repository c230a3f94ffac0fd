"""Keeping a graph's stage records true to its nodes after a pass changes widths.

A stage record (``Graph.stages[S] = {block, depth, with}``) says which values its block
template's ``$param`` s take. When a pass changes an attribute that a ``$param`` sets
(``widen`` grows ``stage1.block0.conv1.out_channels``, which the template wrote as
``$channels``), the record is brought up to date from the stage's last block, so that a
dumped spec's ``with:`` shows the width the stage has now.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from grow_ir.ir.graph import Graph


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
    for name, record in graph.stages.items():
        template = graph.blocks.get(record.get("block"))
        depth = record.get("depth")
        new_with = dict(record.get("with") or {})
        if isinstance(template, Mapping) and isinstance(depth, int) and depth >= 1:
            for entry in template.get("nodes") or ():
                node = graph.node_map.get(f"{name}.block{depth - 1}.{entry.get('name')}")
                if node is None:
                    continue
                for key, value in entry.items():
                    if _param(value) and key in type(node.attrs).model_fields:
                        current = getattr(node.attrs, key)
                        if new_with.get(_param(value)) != current:
                            new_with[_param(value)] = current
        changed |= new_with != dict(record.get("with") or {})
        stages[name] = {**record, "with": new_with} if new_with or "with" in record else record
    return graph.replace(stages=stages) if changed else graph


def _param(value: Any) -> str:
    return value[1:] if isinstance(value, str) and value.startswith("$") else ""
