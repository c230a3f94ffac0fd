"""The ``attention`` node an imported attention becomes, once its q, k and v have been
traced back to their projections: the checks that it is grow-ir's attention and the
node's attributes and tensors. One definition for ``from_torch`` and ``from_onnx``, which
differ only in how they find the projections.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Protocol

import torch

from grow_ir.imports.torch_rules import Unsupported


class Linear(Protocol):
    """A projection: ``weight`` ``[out, in]`` of the value ``x``, ``bias`` or None."""

    @property
    def x(self) -> object: ...
    @property
    def weight(self) -> torch.Tensor: ...
    @property
    def bias(self) -> torch.Tensor | None: ...


Rows = slice | tuple[int, ...]
"""The rows of a projection a side reads, in head-major order (head ``h``'s dim ``j`` at
``h * head_dim + j``): a range of them, or each one (GPT-NeoX's q, k, v interleaved per
head in one projection)."""


class Side(Protocol):
    """q, k or v traced back: its projection, the projection's rows it reads, the rotary
    tables met on the way (empty without rotary), the one-axis weights it is multiplied
    by and the scalars added to it on the way (a per-head RMS norm's weight and eps)."""

    @property
    def proj(self) -> Linear: ...
    @property
    def rows(self) -> Rows: ...
    @property
    def tables(self) -> tuple[Any, ...]: ...
    @property
    def norms(self) -> tuple[torch.Tensor, ...]: ...
    @property
    def added(self) -> tuple[float, ...]: ...


def check_scale(scale: float | None, dim: int) -> None:
    """Refuse a score scale other than grow-ir's ``1/sqrt(head_dim)`` (None: the default)."""
    if scale is not None and not math.isclose(scale, dim**-0.5, rel_tol=1e-6):
        raise Unsupported(f"scales scores by {scale} (grow-ir: 1/sqrt(head_dim))")


def check_sides(sides: Mapping[str, Side], heads: int, dim: int) -> None:
    """Refuse q/k/v (keys ``q``, ``k``, ``v`` of ``sides``) that are not grow-ir's
    attention with ``heads`` query heads of ``dim``: projected from different values, v
    rotated, only one of q and k rotated, or projection sizes that fit no grouping of the
    heads."""
    x = sides["q"].proj.x
    if any(s.proj.x != x for s in sides.values()):
        raise Unsupported("projects q, k and v from different values (grow-ir: self-attention)")
    if sides["v"].tables:
        raise Unsupported("multiplies its values by a table (grow-ir: rotary on q and k only)")
    if bool(sides["q"].tables) != bool(sides["k"].tables):
        raise Unsupported("rotates only one of q and k")
    rows = _rows(sides)
    if rows["q"] != heads * dim or rows["k"] != rows["v"] or rows["k"] % dim:
        raise Unsupported(f"has projections of {rows} rows for {heads} heads of {dim}")


def attention_node(
    sides: Mapping[str, Side], out_proj: Linear, heads: int, dim: int, width: int, causal: bool
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The attributes (without ``rope_theta``) and tensors of the ``attention`` node with
    ``heads`` query heads of ``dim`` on a ``width``-wide input, q/k/v read from ``sides``
    (passed by :func:`check_sides`) and ``out_proj`` after the heads.

    Guarantees: the in-projection is ``[Wq; Wk; Wv]`` (rows of each side's projection,
    copied), biases zero where a side has none; ``head_dim`` and ``num_kv_heads`` are set
    only where they differ from the defaults.
    """
    kv_heads = _rows(sides)["k"] // dim
    has_bias = any(s.proj.bias is not None for s in sides.values()) or out_proj.bias is not None
    attrs: dict[str, Any] = {"num_heads": heads, "bias": has_bias, "causal": causal}
    if heads * dim != width:
        attrs["head_dim"] = dim
    if kv_heads != heads:
        attrs["num_kv_heads"] = kv_heads
    params = {
        "in_proj_weight": torch.cat([s.proj.weight[row_index(s.rows)] for s in sides.values()]),
        "out_proj.weight": out_proj.weight.detach().clone(),
    }
    if has_bias:
        params["in_proj_bias"] = torch.cat([_bias(s.proj, s.rows) for s in sides.values()])
        params["out_proj.bias"] = _bias(out_proj, slice(0, out_proj.weight.shape[0]))
    return attrs, params


def qk_norm(sides: Mapping[str, Side], dim: int) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The attribute and tensors of a per-head RMS norm of q and k (``qk_norm_eps``,
    ``q_norm.weight``, ``k_norm.weight``) where q and k are each multiplied by one weight
    of ``dim`` entries and have one scalar in common added on the way (its eps); nothing
    where neither is. Only a candidate: the region's check by value decides. Raises
    Unsupported for a norm on v, on only one of q and k, or one that fits no such norm."""
    if sides["v"].norms:
        raise Unsupported("multiplies its values by a weight (grow-ir: norms on q and k only)")
    q, k = sides["q"], sides["k"]
    if not q.norms and not k.norms:
        return {}, {}
    if not q.norms or not k.norms:
        raise Unsupported("normalises only one of q and k")
    shapes = [tuple(w.shape) for w in (*q.norms, *k.norms)]
    if len(q.norms) != 1 or len(k.norms) != 1 or set(shapes) != {(dim,)}:
        raise Unsupported(
            f"multiplies q and k by weights of shapes {shapes} (grow-ir: one [head_dim] "
            "weight each, a per-head RMS norm)"
        )
    common = sorted(set(q.added) & set(k.added))
    if len(common) != 1 or not common[0] > 0:
        raise Unsupported(f"adds {common or 'no scalar'} to both q and k (an RMS norm: one eps)")
    params = {f"{r}_norm.weight": sides[r].norms[0].detach().clone() for r in ("q", "k")}
    return {"qk_norm_eps": common[0]}, params


def _rows(sides: Mapping[str, Side]) -> dict[str, int]:
    return {r: count(s.rows) for r, s in sides.items()}


def count(rows: Rows) -> int:
    """How many rows ``rows`` names."""
    return rows.stop - rows.start if isinstance(rows, slice) else len(rows)


def _bias(proj: Linear, rows: Rows) -> torch.Tensor:
    if proj.bias is None:
        return torch.zeros(count(rows), dtype=proj.weight.dtype)
    return proj.bias[row_index(rows)].detach().clone()


def row_index(rows: Rows) -> slice | list[int]:
    """``rows`` as an index of a tensor's or array's first axis."""
    return rows if isinstance(rows, slice) else list(rows)
