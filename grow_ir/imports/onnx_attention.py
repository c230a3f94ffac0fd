"""Attention in an ONNX model found at its heads' core and imported as one ``attention``.

The anchor is a ``Softmax`` over the last axis of 4-D (or, grouped-query, 5-D) scores
between two ``MatMul``\\ s: ``Softmax(MatMul(q, k^T) * scale [+ masks]) @ v`` (what
``torch.onnx.export`` writes for Hugging Face's eager and SDPA attention alike, and
``to_onnx`` for grow-ir's, its scale folded into the in-projection's stored weights, small
heads multiplied as ``v^T @ p^T``). From the core the walk goes back from q,
k^T and v through what rearranges heads (``Reshape``, ``Transpose``, ``Split``,
``Unsqueeze``/``Expand`` of grouped keys…) and what rotates them (rotary embedding:
``Mul``, ``Add``, ``Neg``, ``Concat``, ``Slice`` with constant tables) to the projections
(:func:`~grow_ir.imports.onnx_patterns.projection`, or one split along its last axis),
and forward from the heads' output through the head merge to the output projection. The
mask is classified by its values (:func:`~grow_ir.imports.torch_attention.mask_causal`,
shared with ``from_torch``); the scale must be ``1/sqrt(head_dim)``; rotary ``theta`` is
fitted to the sine table. The candidate node must compute the region's output on every
evaluation run, else the construct is left to the per-op rules with its reason.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import torch

from grow_ir.imports.attention_layout import (
    Rows,
    attention_node,
    check_scale,
    check_sides,
    qk_norm,
    row_index,
)
from grow_ir.imports.onnx_patterns import (
    Found,
    Model,
    Projection,
    Region,
    core,
    float32_decimal,
    projection_ending_at,
    region_name,
    stored_rows,
    tensor,
    where,
)
from grow_ir.imports.torch_attention import mask_causal
from grow_ir.imports.torch_patterns import first_fits
from grow_ir.imports.torch_rules import Unsupported
from grow_ir.imports.torch_values import RUNS

_LAYOUT = frozenset({"Reshape", "Transpose", "Unsqueeze", "Squeeze", "Expand", "Identity"})
"""Ops that move head values without computing."""

_ROTARY = frozenset({"Mul", "Add", "Neg", "Concat", "Slice", "Split"})
"""What rotary embedding computes with (its tables are constants)."""

_NORM = frozenset({"Pow", "ReduceMean", "Sqrt", "Reciprocal", "Div", "Cast"})
"""What a per-head RMS norm of q and k computes with, beside ``Mul`` and ``Add``."""

_ELEMENTWISE = frozenset({"Mul", "Add", "Neg", "Concat", "Div"})
"""The ops above every input of which is data; the others read data from input 0 only."""


@dataclass(frozen=True)
class _Side:
    proj: Projection
    rows: Rows
    nodes: frozenset[int]
    tables: tuple[str, ...]
    norms: tuple[torch.Tensor, ...]
    """The one-axis constants it is multiplied by (a norm's weight)."""
    added: tuple[float, ...]
    """The scalars added to it (a norm's eps)."""


def attention_regions(model: Model, found: Found) -> None:
    """One ``attention`` region per Softmax between two MatMuls that is grow-ir's
    attention; a fallback line naming the node for each that is not. Every candidate
    node is checked by value, all in one lowering (:func:`first_fits`)."""
    pending: list[tuple[onnx.NodeProto, Region, list[dict[str, Any]]]] = []
    for i, n in enumerate(model.graph.node):
        if n.op_type != "Softmax":
            continue
        try:
            shell = _attention(model, i)
        except Unsupported as exc:
            found.fallbacks.append((where(n), f"{_NOT_ATTENTION}: {exc.reason}"))
            continue
        if shell is not None:
            pending.append((n, *shell))
    checks = [
        (
            [("attention", attrs, region.params) for attrs in tried],
            model.runs(region.inputs, region.output),
        )
        for _, region, tried in pending
    ]
    for (n, region, tried), (k, problem) in zip(pending, first_fits(checks)):
        if k is None:
            why = f"is no grow-ir attention ({tried[0]}): {problem}"
            found.fallbacks.append((where(n), f"{_NOT_ATTENTION}: {why}"))
        else:
            found.regions.append(dataclasses.replace(region, attrs=tried[k]))


_NOT_ATTENTION = "attention (MatMul, Softmax, MatMul) not recognised"


@dataclass(frozen=True)
class _Core:
    """The heads' part of one attention: q ``[N, H..., L, D]`` and k^T ``[N, H..., D, L]``
    values (``H...``: the heads, or key-value heads and their groups), v (or v^T where the
    weights are transposed before the product), the mask values added to the scores, the
    score scale (None where the scores are not scaled), the heads' output value and the
    nodes between."""

    q: str
    kt: str
    v: str
    masks: tuple[str, ...]
    scale: float | None
    out: str
    nodes: frozenset[int]


def _core(model: Model, si: int) -> _Core | None:
    """``Softmax(MatMul(q, k^T) * scale [+ masks]) @ v`` around the Softmax at node
    ``si`` (the scale perhaps split as ``sqrt(scale)`` on q and on k^T, or folded into the
    projections, a NaN guard after the Softmax, or the weights transposed and multiplied
    from the left: ``v^T @ p^T``, as ``to_onnx`` lays out small heads), or None when the
    Softmax is not the middle of one."""
    softmax = model.node(si)
    scores = softmax.input[0]
    rank = len(model.shape(scores))
    axis = next((a.i for a in softmax.attribute if a.name == "axis"), -1)
    if rank < 4 or axis % rank != rank - 1:
        return None
    weights, guard = softmax.output[0], _nan_guard(model, softmax.output[0])
    if guard is not None:
        weights = model.node(guard[-1]).output[0]
    nodes = {si, *(guard or ())}
    mi = model.only_user(weights)
    left = mi is not None and model.node(mi).op_type == "MatMul"
    if left and model.node(mi).input[0] == weights:
        v = model.node(mi).input[1]
    elif mi is not None and _swaps_last(model.node(mi), rank):
        nodes.add(mi)
        swapped = model.node(mi).output[0]
        mi = model.only_user(swapped)
        if mi is None or model.node(mi).op_type != "MatMul" or model.node(mi).input[1] != swapped:
            return None
        v = model.node(mi).input[0]
    else:
        return None
    nodes.add(mi)
    masks = []
    while (add := model.made_by(scores, "Add")) is not None:
        a, b = add.input
        product = [v for v in (a, b) if model.made_by(v, "Mul", "Div", "MatMul")]
        if product:  # the scores themselves, else the next mask added (a mask may be a sum)
            scores = product[0]
        else:
            scores = a if model.made_by(a, "Add") else b
        masks.append(b if scores == a else a)
        nodes.add(model.producer[add.output[0]])
    scale = None
    mul = model.made_by(scores, "Mul", "Div")
    if mul is not None:
        factor = model.const(mul.input[1])
        if factor is None or factor.size != 1:
            return None
        f = float(factor.reshape(()))
        scale = f if mul.op_type == "Mul" else 1.0 / f
        nodes.add(model.producer[scores])
        scores = mul.input[0]
    mm = model.made_by(scores, "MatMul")
    if mm is None:
        return None
    nodes.add(model.producer[scores])
    q, kt = mm.input
    if scale is None:  # SDPA's export scales q and k^T by sqrt(scale) each
        halves = [model.made_by(t, "Mul") for t in (q, kt)]
        factors = [None if h is None else model.const(h.input[1]) for h in halves]
        if all(f is not None and f.size == 1 for f in factors):
            scale = float(factors[0].reshape(())) * float(factors[1].reshape(()))
            nodes |= {model.producer[q], model.producer[kt]}
            q, kt = halves[0].input[0], halves[1].input[0]
    out = model.node(mi).output[0]
    return _Core(q, kt, v, tuple(masks), scale, out, frozenset(nodes))


def _swaps_last(node: onnx.NodeProto, rank: int) -> bool:
    """Whether ``node`` is a ``Transpose`` of a rank-``rank`` value that swaps its last
    two axes."""
    perm = [list(a.ints) for a in node.attribute if a.name == "perm"]
    swapped = [*range(rank - 2), rank - 1, rank - 2]
    return node.op_type == "Transpose" and perm == [swapped]


def _attention(model: Model, si: int) -> tuple[Region, list[dict[str, Any]]] | None:
    """The attention region around the Softmax at node ``si`` and the attributes its
    node might have (rotary: each candidate ``rope_theta``), to be checked by value;
    None when the Softmax is no attention's core; raises Unsupported saying why one is
    not grow-ir's attention."""
    found = _core(model, si)
    if found is None:
        return None
    q, kt, v, nodes = found.q, found.kt, found.v, set(found.nodes)
    shape = model.shape(q)
    heads, dim = math.prod(shape[1:-2]), shape[-1]
    sides = {
        role: _trace_back(model, value, role) for role, value in (("q", q), ("k", kt), ("v", v))
    }
    scale, sides = _scale(model, found.scale, sides)
    check_scale(scale, dim)
    check_sides(sides, heads, dim)
    x = sides["q"].proj.x
    out_nodes, out_proj = _trace_forward(model, found.out)
    x, out, swaps = _batch_first(model, x, out_proj.out)
    causal, pad = _mask(model, found.masks, q, kt)
    width = model.shape(x)[-1]
    attrs, params = attention_node(sides, out_proj, heads, dim, width, causal)
    norm_attrs, norm_params = qk_norm(sides, dim)
    attrs, params = {**attrs, **norm_attrs}, {**params, **norm_params}
    nodes |= out_nodes | swaps
    for s in sides.values():
        nodes |= s.nodes
    made = {o for i in nodes for o in model.node(i).output}
    for value in made - {out}:
        # a Shape reads no value (what only the region needs it for is not imported)
        users = [
            u
            for u in model.consumers.get(value, [])
            if u not in nodes and (u < 0 or model.node(u).op_type != "Shape")
        ]
        if users:
            who = "the graph's outputs" if users[0] < 0 else where(model.node(users[0]))
            raise Unsupported(
                f"gives its intermediate value '{value}' to {who} outside it "
                "(grow-ir's attention returns only its output)"
            )
    inputs = (x,) if pad is None else (x, pad)
    tried = [attrs]
    if sides["q"].tables:
        thetas, rotary = _thetas(model, sides["q"].tables + sides["k"].tables, dim)
        partial = {"rotary_dim": rotary} if rotary != dim else {}
        tried = [{**attrs, "rope_theta": theta, **partial} for theta in thetas]
    name = region_name(model, {model.producer[found.out]}, out_proj.weight_init)
    return Region(name, frozenset(nodes), out, inputs, "attention", attrs, params), tried


def _scale(
    model: Model, scale: float | None, sides: dict[str, _Side]
) -> tuple[float | None, dict[str, _Side]]:
    """The score scale and the sides to build the node from: where the file multiplies
    the projections' stored weights (and biases) by a constant per row (``to_onnx``
    folds the query scale into the in-projection), the scale is the product of the q
    and k rows' factors (each one number) and the sides hold the stored values; v's rows
    must be unscaled. Otherwise ``scale`` and ``sides`` as they are; refused when there
    is no scale at all."""
    stored = {role: stored_rows(model, s.proj) for role, s in sides.items()}
    factors = {}
    for role, hit in stored.items():
        if hit is not None:
            rows = hit[1][row_index(sides[role].rows)]
            factors[role] = float(rows[0]) if bool((rows == rows[0]).all()) else None
    if stored["q"] is not None and None not in factors.values() and factors.get("v", 1.0) == 1.0:
        folded = factors.get("q", 1.0) * factors.get("k", 1.0)
        scale = folded if scale is None else scale * folded
        sides = {
            role: s if stored[role] is None else dataclasses.replace(s, proj=stored[role][0])
            for role, s in sides.items()
        }
    if scale is None:
        raise Unsupported("does not scale its scores (grow-ir: 1/sqrt(head_dim))")
    return scale, sides


def _batch_first(model: Model, x: str, out: str) -> tuple[str, str, set[int]]:
    """The region's input and output, and the nodes they add: ``nn.MultiheadAttention``
    with ``batch_first`` computes sequence-first, between a ``Transpose`` of ``[N, L, E]``
    to ``[L, N, E]`` before the projections and one back after; the region then reads and
    gives the batch-first values. Otherwise ``x`` and ``out`` themselves."""
    before, j = model.made_by(x, "Transpose"), model.only_user(out)
    after = None if j is None else model.made_by(model.node(j).output[0], "Transpose")
    if before is None or after is None or not _swaps_batch(before) or not _swaps_batch(after):
        return x, out, set()
    return before.input[0], after.output[0], {model.producer[x], model.producer[after.output[0]]}


def _swaps_batch(transpose: onnx.NodeProto) -> bool:
    """Whether the ``Transpose`` swaps the first two axes of a 3-D value."""
    return [list(a.ints) for a in transpose.attribute if a.name == "perm"] == [[1, 0, 2]]


def _nan_guard(model: Model, weights: str) -> tuple[int, int] | None:
    """``Where(IsNaN(p), 0, p)`` after the softmax ``p`` (the exporter's guard for rows
    that see no key): the two nodes, else None. Eval-mode attention never has such a
    row; the region's check by value decides."""
    users = model.consumers.get(weights, [])
    if len(users) != 2 or min(users) < 0:
        return None
    by_op = {model.node(u).op_type: u for u in users}
    if set(by_op) != {"IsNaN", "Where"}:
        return None
    isnan, pick = by_op["IsNaN"], model.node(by_op["Where"])
    zero = model.const(pick.input[1])
    if list(pick.input[::2]) != [model.node(isnan).output[0], weights] or zero is None:
        return None
    if zero.size != 1 or float(zero.reshape(())) != 0.0:
        return None
    return isnan, by_op["Where"]


def _rows(model: Model, value: str) -> tuple[Projection, Rows, set[int]] | None:
    """A projection ending at ``value``, or one part of one split along its last axis,
    or one part split off (or picked by :func:`_picked_rows`) along another axis of a
    value the projection's output is laid out into."""
    p = projection_ending_at(model, value)
    if p is not None:
        return p, slice(0, int(p.weight.shape[0])), set()
    sliced = _sliced_rows(model, value)
    if sliced is not None:
        return sliced
    split = model.made_by(value, "Split")
    if split is None:
        return _picked_rows(model, value)
    axis = next((a.i for a in split.attribute if a.name == "axis"), 0)
    rank = len(model.shape(split.input[0]))
    sizes = [model.shape(o)[axis] for o in split.output]
    index = list(split.output).index(value)
    start = sum(sizes[:index])
    p = projection_ending_at(model, split.input[0])
    if p is not None:
        if axis % rank != len(model.shape(p.out)) - 1:
            return None
        return p, slice(start, start + sizes[index]), {model.producer[value]}
    if axis % rank == rank - 1:  # a head's halves (rotary), or parts of heads laid out
        return _laid_out_rows(model, value)
    return _part_rows(
        model, split.input[0], start, sizes[index], sum(sizes), {model.producer[value]}
    )


def _sliced_rows(model: Model, value: str) -> tuple[Projection, slice, set[int]] | None:
    """A range of a projection's output along its last axis, taken by a ``Slice`` of
    constant bounds and step 1 (Phi-3's q, k and v from one ``qkv_proj``)."""
    node = model.made_by(value, "Slice")
    if node is None:
        return None
    p = projection_ending_at(model, node.input[0])
    bounds = [model.const(v) if v else None for v in node.input[1:]]
    if p is None or len(bounds) < 2 or any(b is None or b.size != 1 for b in bounds):
        return None
    start, end, *rest = (int(b.reshape(())) for b in bounds)
    axis = rest[0] if rest else 0  # ONNX's defaults: axes 0.., steps 1
    step = rest[1] if len(rest) > 1 else 1
    rank = len(model.shape(node.input[0]))
    rows = range(int(p.weight.shape[0]))[start:end]
    if axis % rank != rank - 1 or step != 1 or not rows:
        return None
    return p, slice(rows.start, rows.stop), {model.producer[value]}


_MOVES = frozenset({"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Identity"})
"""Layout ops that only move entries (replayed on indices by :func:`_laid_out_rows`)."""


def _laid_out_rows(model: Model, value: str) -> tuple[Projection, Rows, set[int]] | None:
    """The rows of a part ``value`` ``[N, H, L, D]`` that a ``Split`` takes off a
    projection's output laid out by moves (:data:`_MOVES`; GPT-NeoX's per-head ``[q_h;
    k_h; v_h]`` reshaped to ``[N, L, H, 3·D]``, moved and split), found by running those
    moves on the rows' indices (at the sizes of the evaluation's first run): the row at
    every head and dim must not depend on the batch or position."""
    split = model.made_by(value, "Split")
    assert split is not None
    chain, source = [split], split.input[0]
    while (p := projection_ending_at(model, source)) is None:
        n = model.made_by(source, *_MOVES)
        if n is None or model.only_user(source) is None:
            return None
        chain.append(n)
        source = n.input[0]
    index = np.broadcast_to(np.arange(int(p.weight.shape[0])), model.shape(source))
    for n in reversed(chain):
        if n.op_type == "Transpose":
            perm = next((list(a.ints) for a in n.attribute if a.name == "perm"), None)
            index = index.transpose(perm)
        elif n.op_type == "Split":
            axis = next((a.i for a in n.attribute if a.name == "axis"), 0)
            ends = np.cumsum([model.shape(o)[axis] for o in n.output])
            index = np.split(index, ends[:-1], axis=axis)[list(n.output).index(value)]
        else:  # moves nothing: the value's shape
            index = index.reshape(model.shape(n.output[0]))
    if index.ndim != 4 or not (index == index[:1, :, :1, :]).all():
        return None
    nodes = {model.producer[n.output[0]] for n in chain}
    return p, tuple(int(r) for r in index[0, :, 0, :].reshape(-1)), nodes


def _picked_rows(model: Model, value: str) -> tuple[Projection, slice, set[int]] | None:
    """One part picked by a constant index (``Gather`` on axis 0) from a projection whose
    last axis is reshaped into parts and moved first (``nn.MultiheadAttention``'s packed
    q, k, v)."""
    gather = model.made_by(value, "Gather")
    if gather is None or next((a.i for a in gather.attribute if a.name == "axis"), 0) != 0:
        return None
    index = model.const(gather.input[1])
    if index is None or index.size != 1:
        return None
    parts = model.shape(gather.input[0])[0]
    k = int(index.reshape(())) % parts
    return _part_rows(model, gather.input[0], k, 1, parts, {model.producer[value]})


def _part_rows(
    model: Model, source: str, start: int, size: int, total: int, nodes: set[int]
) -> tuple[Projection, slice, set[int]] | None:
    """Parts ``start .. start + size`` of ``total`` along an axis of ``source``, which
    layout ops (:data:`_LAYOUT`) make of a projection's output: the same fraction of the
    projection's rows (part ``k`` of ``P`` holds rows ``k*R/P .. (k+1)*R/P``); the
    region's check by value decides whether the layout ops in between really do that."""
    nodes = set(nodes)
    while (p := projection_ending_at(model, source)) is None:
        n = model.made_by(source, *_LAYOUT)
        if n is None:
            return None
        nodes.add(model.producer[source])
        source = n.input[0]
    rows = int(p.weight.shape[0])
    if (rows * start) % total or (rows * size) % total:
        return None
    first = rows * start // total
    return p, slice(first, first + rows * size // total), nodes


def _trace_back(model: Model, start: str, role: str) -> _Side:
    stack, seen, nodes, tables = [start], set(), set(), []
    norms: list[torch.Tensor] = []
    added: list[float] = []
    found: dict[frozenset[int], tuple[Projection, Rows]] = {}
    while stack:
        value = stack.pop()
        if value in seen:
            continue
        seen.add(value)
        hit = _rows(model, value)
        if hit is not None:
            p, rows, extra = hit
            found[p.nodes] = (p, rows)
            nodes |= set(p.nodes) | extra
            continue
        i = model.producer.get(value)
        if i is None:
            raise Unsupported(f"reads '{value}' for its {role} where a projection was expected")
        n = model.node(i)
        if n.op_type not in _LAYOUT | _ROTARY | _NORM:
            raise Unsupported(f"computes its {role} with {n.op_type} (node '{n.name}')")
        nodes.add(i)
        data = n.input if n.op_type in _ELEMENTWISE else n.input[:1]
        for v in data:  # a shape, an axis or a bound is no value the heads come from
            if n.op_type == "Mul" and _table(model, v):
                tables.append(v)
            elif (c := model.const(v)) is None:
                stack.append(v)
            elif n.op_type == "Mul" and c.ndim == 1 and c.size > 1:
                norms.append(tensor(c))
            elif n.op_type == "Add" and c.size == 1:
                scalar = float(c.reshape(()))
                added.append(float32_decimal(scalar) if c.dtype == np.float32 else scalar)
    if len(found) != 1:
        raise Unsupported(f"computes its {role} from {len(found)} projections (grow-ir: one)")
    ((p, rows),) = found.values()
    return _Side(p, rows, frozenset(nodes), tuple(tables), tuple(norms), tuple(added))


def _trace_forward(model: Model, heads: str) -> tuple[set[int], Projection]:
    nodes: set[int] = set()
    value = heads
    while True:
        users = [
            u
            for u in model.consumers.get(value, [])
            if u < 0 or model.node(u).op_type != "Shape"  # a Shape reads no value
        ]
        i = users[0] if len(users) == 1 and users[0] >= 0 else None
        if i is None:
            raise Unsupported("gives its heads to several ops (grow-ir: one projection)")
        n = model.node(i)
        if n.op_type in ("Gemm", "MatMul"):
            p = _merged_projection(model, i)
            if p is None:
                raise Unsupported(f"projects its heads with {n.op_type} '{n.name}' by no constant")
            return nodes | set(p.nodes), p
        if n.op_type not in ("Transpose", "Reshape", "Identity"):
            raise Unsupported(
                f"merges its heads with {n.op_type} (grow-ir: a reshape, then "
                "the output projection)"
            )
        nodes.add(i)
        value = n.output[0]


def _merged_projection(model: Model, i: int) -> Projection | None:
    """The output projection at node ``i``, whose input is the heads merged (and perhaps
    flattened to a matrix), with the reshape after it that restores ``[N, L, E]`` when it
    gives a matrix."""
    try:
        x, w, b, nodes, out, init, b_value = core(model, i)
    except LookupError:
        return None
    j = model.only_user(out)
    if len(model.shape(out)) == 2 and j is not None and model.node(j).op_type == "Reshape":
        nodes, out = nodes | {j}, model.node(j).output[0]
    bias = None if b is None else tensor(b)
    return Projection(x, tensor(w), bias, frozenset(nodes), out, init, b_value)


def _mask(model: Model, masks: tuple[str, ...], q: str, kt: str) -> tuple[bool, str | None]:
    """``(causal, key padding input)`` of the masks added to the scores (their sum, by
    value on every run; several heads' axes, as in grouped-query scores, are one)."""
    if not masks:
        return False, None
    ev = model.evaluation
    deps = frozenset().union(*(ev.depends.get(m, frozenset()) for m in masks))
    pad = None
    if len(deps) > 1:
        raise Unsupported(f"builds its mask from {len(deps)} inputs (grow-ir: one padding mask)")
    shape = model.shape(q)
    if deps:
        (pad,) = deps
        if model.shape(pad) != (shape[0], shape[-2]):
            raise Unsupported(f"builds its mask from input '{pad}', which is not [N, L]")
    values, queries, keys = [], [], []
    for r in range(RUNS):
        qs, lk = tuple(ev.value(q, r).shape), int(ev.value(kt, r).shape[-1])
        value = ev.value(masks[0], r)
        if len(masks) > 1 or len(qs) > 4:
            for m in masks[1:]:
                value = value + ev.value(m, r)
            full = torch.broadcast_shapes(value.shape, (*qs[:-1], lk))
            value = value.expand(full).reshape(full[0], -1, full[-2], full[-1])
        values.append(value)
        queries.append((qs[0], math.prod(qs[1:-2]), qs[-2], qs[-1]))
        keys.append(lk)
    pads = None if pad is None else [ev.value(pad, r) for r in range(RUNS)]
    return mask_causal(values, queries, keys, pads), pad


def _table(model: Model, value: str) -> bool:
    """A rotary table: a float tensor of rank >= 2 that reads no input (a folded constant,
    or built from the shapes in a dynamic-shape export)."""
    if not model.evaluation.constant(value):
        return False
    t = model.evaluation.value(value)
    return t.dim() >= 2 and t.is_floating_point()


def _thetas(model: Model, tables: tuple[str, ...], dim: int) -> tuple[list[float], int]:
    """Candidate rotary ``theta`` from the sine table (0 at position 0), and how many
    entries of a head it rotates (the table's width ``r``, ``dim`` or fewer): at position
    1 it holds ``sin(theta^(-2i/r))``; the attention's check decides. Two rotated dims
    turn at frequency 1 whatever ``theta`` is (Hugging Face's default then, 10000)."""
    for name in tables:
        t = model.evaluation.value(name).double()
        t = t.reshape(-1, t.shape[-2], t.shape[-1])[0]
        rotary = int(t.shape[-1])
        if t.shape[0] > 1 and bool((t[0] == 0).all()) and 2 <= rotary <= dim and rotary % 2 == 0:
            if rotary == 2:
                return [10000.0], rotary
            freq = float(torch.asin(t[1, 1]))
            theta = freq ** (-rotary / 2)
            return [float(round(theta)), theta], rotary
    raise Unsupported("rotates q and k with tables that have no sine table")
