"""Parameter initialisation of whole graphs, with a size guard."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from grow_ir.errors import GrowError
from grow_ir.ir.graph import Graph
from grow_ir.ir.ops import ParamSpec

MAX_PARAM_BYTES = 8 * 2**30
"""Refuse to allocate more than this many bytes of parameters (8 GiB)."""


def spec_bytes(specs: Iterable[ParamSpec]) -> int:
    """Bytes the parameters and buffers of ``specs`` take, computed from shapes alone."""
    return sum(s.nbytes for s in specs)


def param_bytes(graph: Graph) -> int:
    """Bytes the graph's parameters and buffers take, computed from shapes alone."""
    return graph.param_totals[0]


def check_bytes(
    total: int, params: int, node: str, node_params: int, *, file: str | None = None
) -> None:
    """The size guard: raise GrowError, stating the size, when ``total`` bytes of
    parameters (``params`` of them; ``node`` the largest, with ``node_params``) would exceed
    :data:`MAX_PARAM_BYTES`. Called before anything is allocated."""
    if total > MAX_PARAM_BYTES:
        raise GrowError(
            "the parameters are too large to allocate",
            file=file,
            node=node,
            expected=f"at most {MAX_PARAM_BYTES / 2**30:.0f} GiB of parameters",
            found=f"{total / 2**30:,.1f} GiB ({params:,} parameters; the largest node has "
            f"{node_params:,})",
        )


def check_size(graph: Graph, *, file: str | None = None) -> None:
    """Raise GrowError, without allocating anything, when the parameters are absurdly large."""
    total = param_bytes(graph)
    if total > MAX_PARAM_BYTES:
        biggest = max(graph.nodes, key=lambda n: graph.num_params(n))
        check_bytes(total, graph.num_params(), biggest.name, graph.num_params(biggest), file=file)


def initialize(graph: Graph, seed: int = 0) -> Graph:
    """Return ``graph`` with every missing parameter initialised as PyTorch would.

    Nodes are initialised in graph order from one ``torch.Generator`` seeded with ``seed``,
    so the same spec and seed always give bitwise-equal parameters; each op draws exactly
    what its torch.nn module's constructor draws, in the same order, so the values equal
    those of the modules built in graph order after ``torch.manual_seed(seed)``. Nodes
    whose parameters are all present are kept as they are and draw nothing.

    Raises:
        GrowError: the parameters would take more than 8 GiB (nothing is allocated).
    """
    check_size(graph)
    gen = torch.Generator().manual_seed(seed)
    params = dict(graph.params)
    for n in graph.nodes:
        if n.share is not None:
            continue
        wanted = graph.node_params(n)
        if all(p in params for p in wanted):
            continue
        fresh = n.opdef.init(n.attrs, graph.input_types(n), gen)
        for local, tensor in fresh.items():
            params.setdefault(f"{n.param_prefix}.{local}", tensor)
    return graph.replace(params=params)
