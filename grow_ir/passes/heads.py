"""Growing an attention layer's inside: more heads (``add_heads``), wider heads
(``grow_head_dim``). Both keep the model width; both are exact.

The in-projection's rows are ``[q; k; v]``, each ``num_heads * head_dim`` long with head
``h``'s dims at ``h * head_dim + j``; the out-projection's columns follow the same layout.
New heads (bert2BERT / staged training): fresh q, k, v rows (the op's initialisation),
out-projection columns zero, so they add nothing yet. Wider heads: the new q dims are
zero, so the scores ``q·k`` keep their value, and the old q rows are scaled by
``sqrt(new / old)`` so that SDPA's ``1 / sqrt(head_dim)`` is unchanged; new k and v dims
are fresh, their out-projection columns zero.
"""

from __future__ import annotations

import math

import torch

from grow_ir.errors import PassError
from grow_ir.ir.graph import Graph
from grow_ir.ir.ops import OPS
from grow_ir.ir.ops.attention import head_dim as current_head_dim
from grow_ir.passes.args import Count, NodeName, Seed
from grow_ir.passes.base import Origin, PassResult, register_pass
from grow_ir.passes.initializers import init_layer
from grow_ir.passes.rewrite import node_of_kind, replace_nodes, seeded

_PARTS = ("q", "k", "v")


def _inner_index(heads: int, hd: int, new_heads: int, new_hd: int) -> list[int]:
    """For every inner position of the new layout, the old position it keeps (-1: new)."""
    return [
        h * hd + j if h < heads and j < hd else -1 for h in range(new_heads) for j in range(new_hd)
    ]


def _grow_inside(graph: Graph, node: str, new_heads: int, new_hd: int, seed: int) -> PassResult:
    """``node`` (an attention) with ``new_heads`` heads of ``new_hd`` dims, exactly."""
    n = graph.node(node)
    ins = graph.input_types(n)
    heads, hd = n.attrs.num_heads, current_head_dim(n.attrs, ins)
    grown = n.replace(attrs=n.attrs.model_copy(update={"num_heads": new_heads, "head_dim": new_hd}))
    fresh = init_layer(grown, ins, "default", seeded(seed))
    inner = _inner_index(heads, hd, new_heads, new_hd)
    keep = torch.tensor([i >= 0 for i in inner])
    src = torch.tensor(inner).clamp(min=0)
    q_scale = math.sqrt(new_hd / hd)
    prefix = n.param_prefix
    params: dict[str, torch.Tensor] = {}
    origins: dict[str, Origin] = {}
    for local in ("in_proj_weight", "in_proj_bias"):
        key = f"{prefix}.{local}"
        if key not in graph.params:
            continue
        old, new = graph.params[key], fresh[local]
        blocks, index, factors = [], [], []
        for p, part in enumerate(_PARTS):
            rows = old[p * heads * hd : (p + 1) * heads * hd].index_select(0, src)
            scale = q_scale if part == "q" else 1.0
            # new q dims of a wider head are zero (scores unchanged); new heads are fresh
            filler = new[p * len(inner) : (p + 1) * len(inner)]
            if part == "q" and new_hd > hd:
                filler = torch.zeros_like(filler)
            mask = keep.reshape(-1, *([1] * (old.dim() - 1)))
            blocks.append(torch.where(mask, (rows.double() * scale).to(old.dtype), filler))
            index += [p * heads * hd + i if i >= 0 else -1 for i in inner]
            factors += [scale if i >= 0 else 1.0 for i in inner]
        params[key] = torch.cat(blocks).contiguous()
        scales = {0: tuple(factors)} if q_scale != 1.0 else {}
        origins[key] = Origin(key, index={0: tuple(index)}, scale=scales)
    key = f"{prefix}.out_proj.weight"
    old = graph.params[key]
    cols = old.index_select(1, src)
    params[key] = torch.where(keep, cols, torch.zeros((), dtype=old.dtype)).contiguous()
    origins[key] = Origin(key, index={1: tuple(inner)})
    new_graph = replace_nodes(graph, {node: grown}, params=params)
    what = []
    if new_heads > heads:
        what.append(f"{heads} -> {new_heads} heads (new heads' output projection zero)")
    if new_hd > hd:
        what.append(f"head_dim {hd} -> {new_hd} (new query dims zero, queries scaled)")
    return PassResult(new_graph, True, f"grew attention '{node}': {', '.join(what)}", "", origins)


def head_ops() -> tuple[str, ...]:
    """Ops laid out as heads of ``head_dim`` (attributes ``num_heads`` and ``head_dim``)."""
    return tuple(
        name for name, op in OPS.items() if {"num_heads", "head_dim"} <= set(op.attrs.model_fields)
    )


def _larger(value: object, old: int, field: str, node: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= old:
        raise PassError(
            f"the new {field} must be larger than the current one",
            node=node,
            field=field,
            expected=f"an integer above {old}",
            found=repr(value),
        )
    return value


@register_pass("add_heads")
def add_heads(graph: Graph, node: NodeName, heads: Count, seed: Seed = 0) -> PassResult:
    """Give attention ``node`` ``heads`` heads (more than now) of the same size.

    The new heads' q, k, v rows get the op's initialisation (from a generator seeded with
    ``seed``), their output-projection columns are zero: the function is preserved exactly
    and the new heads learn from the first step. The model width is unchanged (the heads
    together grow wider than the embedding: ``head_dim`` is set on the node).

    Guarantees: the input graph is untouched; ``origins`` map the old rows and columns.

    Raises:
        PassError: ``node`` is no attention, or ``heads`` is not larger than now.
    """
    n = node_of_kind(graph, node, head_ops(), "add_heads")
    heads = _larger(heads, n.attrs.num_heads, "heads", node)
    hd = current_head_dim(n.attrs, graph.input_types(n))
    return _grow_inside(graph, node, heads, hd, seed)


@register_pass("grow_head_dim")
def grow_head_dim(graph: Graph, node: NodeName, head_dim: Count, seed: Seed = 0) -> PassResult:
    """Make every head of attention ``node`` ``head_dim`` wide (more than now).

    Exact: the new query dims are zero (so ``q·k`` is unchanged), the old query rows are
    scaled by ``sqrt(new / old)`` (so SDPA's ``1 / sqrt(head_dim)`` gives the old scores),
    the new key and value dims are fresh and the value dims' output-projection columns
    zero. The model width is unchanged.

    Raises:
        PassError: ``node`` is no attention, or ``head_dim`` is not larger than now.
    """
    n = node_of_kind(graph, node, head_ops(), "grow_head_dim")
    hd = current_head_dim(n.attrs, graph.input_types(n))
    head_dim = _larger(head_dim, hd, "head_dim", node)
    return _grow_inside(graph, node, n.attrs.num_heads, head_dim, seed)
