"""Random probe inputs and randomised statistics for numerical checks."""

from __future__ import annotations

import torch

from grow_ir.ir.graph import Graph


def random_inputs(
    graph: Graph, *, batch: int = 3, seq: int = 5, seed: int = 0, device: str | torch.device = "cpu"
) -> dict[str, torch.Tensor]:
    """One random tensor per graph input: ``batch`` for the dim named ``batch``, ``seq`` for
    any other symbolic dim; floats from N(0, 1), int64 indices valid for every embedding
    that reads the input."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, t in graph.inputs.items():
        shape = tuple(
            d if isinstance(d, int) else (batch if d == "batch" else seq) for d in t.shape
        )
        if t.is_float:
            out[name] = torch.randn(shape, generator=gen).to(t.torch_dtype)
        else:
            high = min(
                (
                    getattr(graph.node(u).attrs, bound)
                    for u in graph.users[name]
                    if (bound := graph.node(u).opdef.facts.index_bound) is not None
                ),
                default=10,
            )
            out[name] = torch.randint(0, high, shape, generator=gen)
    return {k: v.to(device) for k, v in out.items()}


def as_float64(inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``inputs`` with every float tensor in float64 (indices unchanged), for a reference
    run of a module converted with ``.double()``."""
    return {k: v.double() if v.is_floating_point() else v for k, v in inputs.items()}


def randomize_norms(graph: Graph, seed: int = 0) -> Graph:
    """Return ``graph`` with random BatchNorm statistics and norm affine parameters, so that
    a check of function preservation cannot pass because an identity happens to be free."""
    gen = torch.Generator().manual_seed(seed)
    params = dict(graph.params)
    for n in graph.nodes:
        if not n.opdef.facts.randomised or n.share is not None:
            continue
        for key, spec in graph.node_params(n).items():
            local = key.rsplit(".", 1)[1]
            shape, dtype = spec.shape, graph.params[key].dtype
            if local == "running_var" or local == "weight":
                params[key] = (torch.rand(shape, generator=gen) * 1.5 + 0.5).to(dtype)
            elif local in ("running_mean", "bias"):
                params[key] = (torch.randn(shape, generator=gen) * 0.5).to(dtype)
    return graph.replace(params=params)
