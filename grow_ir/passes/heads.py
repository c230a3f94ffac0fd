"""Growing an attention layer's inside: more heads (``add_heads``), wider heads
(``grow_head_dim``), more key/value heads of grouped-query attention (``grow_kv_heads``).
All keep the model width; all are exact.

The in-projection's rows are ``[q; k; v]``: q ``num_heads * head_dim`` long, k and v
``num_kv_heads * head_dim`` each, with head ``h``'s dims at ``h * head_dim + j``; query
head ``h`` reads key/value head ``h // group`` (``group = num_heads / num_kv_heads``), and
the out-projection's columns follow the query heads. New heads (bert2BERT / staged
training): fresh q rows (the op's initialisation) and out-projection columns zero, so they
add nothing yet; with grouped-query attention each key/value head's group grows by the
same number of new query heads, placed after the group's old ones, so every old query head
keeps its key/value head. Wider heads: the new q dims are zero, so the scores ``q·k`` keep
their value, and the old q rows are scaled by ``sqrt(new / old)`` so that SDPA's
``1 / sqrt(head_dim)`` is unchanged; new k and v dims are fresh, their out-projection
columns zero. More key/value heads (a multiple ``m`` of the current number, dividing the
query heads): each old key/value head is copied ``m`` times, and query head ``h``'s new
key/value head ``h // (group / m)`` is a copy of its old one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from grow_ir.errors import PassError
from grow_ir.ir.graph import Graph
from grow_ir.ir.ops import OPS
from grow_ir.ir.ops.attention import head_dim as current_head_dim
from grow_ir.ir.ops.attention import kv_heads as count_kv_heads
from grow_ir.passes.args import Count, NodeName, Seed
from grow_ir.passes.base import Origin, PassResult, register_pass
from grow_ir.passes.initializers import init_layer
from grow_ir.passes.rewrite import node_of_kind, own_parameters, replace_nodes, seeded


@dataclass(frozen=True)
class _Layout:
    """The new inside of an attention: for every new query head and every new key/value
    head, the old head it keeps (-1: fresh), and for every dim of a new head, the old dim
    it keeps (-1: new)."""

    q: tuple[int, ...]
    kv: tuple[int, ...]
    dims: tuple[int, ...]

    @property
    def head_dim(self) -> int:
        return len(self.dims)


def _same_dims(hd: int, new_hd: int) -> tuple[int, ...]:
    """Old dims first, new ones after them."""
    return tuple(j if j < hd else -1 for j in range(new_hd))


def _rotary_dims(hd: int, new_hd: int) -> tuple[int, ...]:
    """Rotary pairs ``(i, i + hd/2)`` at frequency ``theta^(-2i/hd)`` moved to the pair
    of the same frequency in a head ``new_hd = k · hd`` wide: ``(k·i, k·i + new_hd/2)``."""
    k, half, new_half = new_hd // hd, hd // 2, new_hd // 2
    out = []
    for j in range(new_hd):
        pair, second = j % new_half, j >= new_half
        out.append(pair // k + (half if second else 0) if pair % k == 0 else -1)
    return tuple(out)


def _rows(heads: tuple[int, ...], hd: int, dims: tuple[int, ...]) -> list[int]:
    """For every row of one part in the new layout, the old row of that part it keeps
    (-1: new)."""
    return [h * hd + d if h >= 0 and d >= 0 else -1 for h in heads for d in dims]


def _grow_inside(
    graph: Graph, node: str, layout: _Layout, seed: int, dropped: str = ""
) -> PassResult:
    """``node`` (an attention) with the inside ``layout``: exact when it only adds heads
    or dims; when heads are left out, ``dropped`` (their description) and the caller's
    proof decide preservation (the result claims it; :func:`prune_heads` amends it)."""
    n = graph.node(node)
    own_parameters(graph, n, "change its heads")
    ins = graph.input_types(n)
    heads, kv, hd = n.attrs.num_heads, count_kv_heads(n.attrs), current_head_dim(n.attrs, ins)
    new_heads, new_kv, new_hd = len(layout.q), len(layout.kv), layout.head_dim
    width = ins[0].shape[-1]
    default = width // new_heads if isinstance(width, int) and width % new_heads == 0 else None
    # head_dim is written only where E / num_heads does not give it (a canonical graph)
    update = {"num_heads": new_heads, "head_dim": None if new_hd == default else new_hd}
    if n.attrs.num_kv_heads is not None:
        update["num_kv_heads"] = new_kv
    grown = n.replace(attrs=n.attrs.model_copy(update=update))
    fresh = init_layer(grown, ins, "default", seeded(seed))
    q_scale = math.sqrt(new_hd / hd)
    old_offsets = (0, heads * hd, (heads + kv) * hd)
    new_offsets = (0, new_heads * new_hd, (new_heads + new_kv) * new_hd)
    prefix = n.param_prefix
    params: dict[str, torch.Tensor] = {}
    origins: dict[str, Origin] = {}
    for local in ("in_proj_weight", "in_proj_bias"):
        key = f"{prefix}.{local}"
        if key not in graph.params:
            continue
        old, new = graph.params[key], fresh[local]
        blocks, index, factors = [], [], []
        for p, part in enumerate(("q", "k", "v")):
            rows = _rows(layout.q if part == "q" else layout.kv, hd, layout.dims)
            keep = torch.tensor([r >= 0 for r in rows]).reshape(-1, *([1] * (old.dim() - 1)))
            src = torch.tensor(rows).clamp(min=0) + old_offsets[p]
            scale = q_scale if part == "q" else 1.0
            filler = new[new_offsets[p] : new_offsets[p] + len(rows)]
            if part == "q" and new_hd > hd:  # new q dims of a wider head: zero, scores kept
                kept_head = [h >= 0 for h in layout.q for _ in range(new_hd)]
                zero = torch.tensor(kept_head).reshape(keep.shape)
                filler = torch.where(zero, torch.zeros((), dtype=filler.dtype), filler)
            picked = (old.index_select(0, src).double() * scale).to(old.dtype)
            blocks.append(torch.where(keep, picked, filler))
            index += [r + old_offsets[p] if r >= 0 else -1 for r in rows]
            factors += [scale if r >= 0 else 1.0 for r in rows]
        params[key] = torch.cat(blocks).contiguous()
        scales = {0: tuple(factors)} if q_scale != 1.0 else {}
        origins[key] = Origin(key, index={0: tuple(index)}, scale=scales)
    key = f"{prefix}.out_proj.weight"
    old = graph.params[key]
    columns = _rows(layout.q, hd, layout.dims)
    cols = old.index_select(1, torch.tensor(columns).clamp(min=0))
    keep = torch.tensor([c >= 0 for c in columns])
    params[key] = torch.where(keep, cols, torch.zeros((), dtype=old.dtype)).contiguous()
    origins[key] = Origin(key, index={1: tuple(columns)})
    new_graph = replace_nodes(graph, {node: grown}, params=params)
    what = []
    if new_heads < heads:
        what.append(f"{heads} -> {new_heads} heads ({dropped})")
    if new_heads > heads:
        what.append(f"{heads} -> {new_heads} heads (new heads' output projection zero)")
    if new_kv > kv and new_heads == heads:
        what.append(f"{kv} -> {new_kv} key/value heads (each old one copied)")
    if new_hd > hd:
        what.append(f"head_dim {hd} -> {new_hd} (new query dims zero, queries scaled)")
    verb = "pruned" if new_heads < heads else "grew"
    return PassResult(new_graph, True, f"{verb} attention '{node}': {', '.join(what)}", "", origins)


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
    together grow wider than the embedding: ``head_dim`` is set on the node). With
    grouped-query attention (``num_kv_heads`` set) the key/value heads stay: ``heads``
    must be a multiple of them, and each group gets the same number of new query heads
    after its old ones (fresh q rows), so every old query head keeps its key/value head.

    Guarantees: the input graph is untouched; ``origins`` map the old rows and columns.

    Raises:
        PassError: ``node`` is no attention, ``heads`` is not larger than now, or (grouped
            query) not a multiple of the key/value heads.
    """
    n = node_of_kind(graph, node, head_ops(), "add_heads")
    old = n.attrs.num_heads
    heads = _larger(heads, old, "heads", node)
    hd = current_head_dim(n.attrs, graph.input_types(n))
    if n.attrs.num_kv_heads is None:  # multi-head: every new head has its own k and v
        fresh = tuple(range(old)) + (-1,) * (heads - old)
        return _grow_inside(graph, node, _Layout(fresh, fresh, _same_dims(hd, hd)), seed)
    kv = count_kv_heads(n.attrs)
    if heads % kv:
        raise PassError(
            f"attention '{node}' has {kv} key/value heads, and every one serves a group of "
            "query heads of the same size",
            node=node,
            field="heads",
            expected=f"a multiple of {kv} above {old}",
            found=repr(heads),
        )
    group, new_group = old // kv, heads // kv
    q = tuple(g * group + j if j < group else -1 for g in range(kv) for j in range(new_group))
    return _grow_inside(graph, node, _Layout(q, tuple(range(kv)), _same_dims(hd, hd)), seed)


@register_pass("grow_head_dim")
def grow_head_dim(graph: Graph, node: NodeName, head_dim: Count, seed: Seed = 0) -> PassResult:
    """Make every head of attention ``node`` ``head_dim`` wide (more than now).

    Exact: the new query dims are zero (so ``q·k`` is unchanged), the old query rows are
    scaled by ``sqrt(new / old)`` (so SDPA's ``1 / sqrt(head_dim)`` gives the old scores),
    the new key and value dims are fresh and the value dims' output-projection columns
    zero. The model width is unchanged. With rotary embedding of the whole head the new
    size must be a multiple ``k`` of the old: old pair ``(i, i + d/2)`` moves to ``(k·i,
    k·i + kd/2)``, the pair that rotates at the same frequency, so every old score is
    kept. With ``rotary_dim`` set (partial rotary) the new dims come after the old ones,
    where they are not rotated: any larger size is exact.

    Raises:
        PassError: ``node`` is no attention, ``head_dim`` is not larger than now,
            (rotary) not a multiple of it, or the attention normalises its queries and
            keys per head (``qk_norm_eps``).
    """
    n = node_of_kind(graph, node, head_ops(), "grow_head_dim")
    hd = current_head_dim(n.attrs, graph.input_types(n))
    head_dim = _larger(head_dim, hd, "head_dim", node)
    if getattr(n.attrs, "qk_norm_eps", None) is not None:
        raise PassError(
            f"attention '{node}' RMS-normalises every head's keys over its head_dim entries: "
            "a new key dim enters that norm and changes the old keys unless it is zero, and "
            "new query and key dims that are both zero never get a gradient",
            node=node,
            field="head_dim",
            expected="an attention without qk_norm_eps (add_heads grows this one exactly)",
            found=f"qk_norm_eps {n.attrs.qk_norm_eps}",
        )
    dims = _same_dims(hd, head_dim)
    whole_head = getattr(n.attrs, "rotary_dim", None) is None
    if getattr(n.attrs, "rope_theta", None) is not None and whole_head:
        if head_dim % hd:
            raise PassError(
                f"attention '{node}' rotates its queries and keys over pairs (i, i + "
                "head_dim/2) at frequencies theta^(-2i/head_dim): only a multiple of the "
                "head size has a pair of the same frequency for every old pair",
                node=node,
                field="head_dim",
                expected=f"a multiple of {hd}",
                found=repr(head_dim),
            )
        dims = _rotary_dims(hd, head_dim)
    heads, kv = tuple(range(n.attrs.num_heads)), tuple(range(count_kv_heads(n.attrs)))
    return _grow_inside(graph, node, _Layout(heads, kv, dims), seed)


@register_pass("grow_kv_heads")
def grow_kv_heads(graph: Graph, node: NodeName, kv_heads: Count, seed: Seed = 0) -> PassResult:
    """Give grouped-query attention ``node`` ``kv_heads`` key/value heads (more than now).

    Exact: ``kv_heads`` must be a multiple ``m`` of the current number and divide
    ``num_heads``; each old key/value head is copied ``m`` times, so every query head reads
    a copy of the key/value head it read before (up to ``kv_heads = num_heads``, plain
    multi-head attention). Other counts are refused: a query head would have to read a
    key/value head that is neither its own nor a copy of it.

    Raises:
        PassError: ``node`` is no attention, or ``kv_heads`` is not larger, not a multiple
            of the current number or not a divisor of ``num_heads``.
    """
    n = node_of_kind(graph, node, head_ops(), "grow_kv_heads")
    old = count_kv_heads(n.attrs)
    new = _larger(kv_heads, old, "kv_heads", node)
    heads = n.attrs.num_heads
    if new % old or heads % new:
        raise PassError(
            f"attention '{node}' keeps every query head on a copy of its key/value head only "
            f"when each of the {old} key/value heads is copied the same number of times and "
            f"the {heads} query heads split evenly among the copies",
            node=node,
            field="kv_heads",
            expected=f"a multiple of {old} that divides {heads}",
            found=repr(kv_heads),
        )
    m = new // old
    hd = current_head_dim(n.attrs, graph.input_types(n))
    layout = _Layout(tuple(range(heads)), tuple(g // m for g in range(new)), _same_dims(hd, hd))
    return _grow_inside(graph, node, layout, seed)


def head_scores(graph: Graph, node: str, p: int = 1) -> list[float]:
    """Each head's importance: the ``p``-norm of its query, key and value rows and of its
    output-projection columns (biases included), as Torch-Pruning scores a head."""
    n = graph.node(node)
    heads, hd = n.attrs.num_heads, current_head_dim(n.attrs, graph.input_types(n))
    prefix, out = n.param_prefix, []
    for h in range(heads):
        rows = [part * heads * hd + h * hd + j for part in range(3) for j in range(hd)]
        cols = [h * hd + j for j in range(hd)]
        parts = [graph.params[f"{prefix}.out_proj.weight"][:, cols]]
        for local in ("in_proj_weight", "in_proj_bias"):
            if f"{prefix}.{local}" in graph.params:
                parts.append(graph.params[f"{prefix}.{local}"][rows])
        out.append(float(sum(t.double().abs().pow(p).sum() for t in parts) ** (1.0 / p)))
    return out


def dead_heads(graph: Graph, node: str) -> list[int]:
    """The heads whose output provably adds nothing: their output-projection columns are
    zero, or their value rows and value biases are."""
    n = graph.node(node)
    heads, hd = n.attrs.num_heads, current_head_dim(n.attrs, graph.input_types(n))
    prefix, dead = n.param_prefix, []
    for h in range(heads):
        cols = slice(h * hd, (h + 1) * hd)
        v_rows = slice(2 * heads * hd + h * hd, 2 * heads * hd + (h + 1) * hd)
        out_zero = not graph.params[f"{prefix}.out_proj.weight"][:, cols].any()
        v_zero = not graph.params[f"{prefix}.in_proj_weight"][v_rows].any()
        bias = graph.params.get(f"{prefix}.in_proj_bias")
        v_zero = v_zero and (bias is None or not bias[v_rows].any())
        if out_zero or v_zero:
            dead.append(h)
    return dead


@register_pass("prune_heads")
def prune_heads(
    graph: Graph,
    node: NodeName,
    keep: int | list[int] | None = None,
    drop: list[int] | str | None = None,
    importance: str = "l1",
) -> PassResult:
    """Remove heads of attention ``node``, each head a unit (its q, k, v rows and its
    output-projection columns): the counterpart of :func:`add_heads` for pruning.

    Say which with ``drop=[...]`` or ``keep=[...]`` (head indices), ``drop="dead"`` (every
    head :func:`dead_heads` finds), or how many with ``keep=N``; then the heads of highest
    ``importance`` (``"l1"``/``"l2"``, :func:`head_scores`) stay. The kept heads keep
    their order and their values bitwise; ``head_dim`` and the model width do not change.

    Guarantees: the input graph is untouched; ``origins`` map the kept rows and columns;
    ``preserved`` is True only when every removed head is dead, and otherwise the reason
    names the live ones.

    Raises:
        PassError: ``node`` is no multi-head attention (grouped-query attention, whose
            query heads share key/value heads by groups, is refused), the choice keeps no
            head or all of them, or an unknown importance.
    """
    n = node_of_kind(graph, node, head_ops(), "prune_heads")
    if n.attrs.num_kv_heads is not None:
        raise PassError(
            f"attention '{node}' is grouped-query: its query heads share key/value heads in "
            "groups of one size, so single heads cannot go",
            node=node,
            field="num_kv_heads",
            expected="multi-head attention (num_kv_heads unset)",
            found=str(n.attrs.num_kv_heads),
        )
    heads = n.attrs.num_heads

    def bad(field: str, expected: str, found: object) -> PassError:
        return PassError(
            "bad choice of heads", node=node, field=field, expected=expected, found=repr(found)
        )

    if (keep is None) == (drop is None):
        raise bad("keep", "exactly one of keep and drop", f"keep={keep!r}, drop={drop!r}")
    dead = dead_heads(graph, node)
    if drop == "dead":
        drop = dead
    if isinstance(drop, list):
        if any(isinstance(h, bool) or not isinstance(h, int) or not 0 <= h < heads for h in drop):
            raise bad("drop", f"head indices in [0, {heads})", drop)
        kept = [h for h in range(heads) if h not in set(drop)]
    elif isinstance(keep, list):
        if any(isinstance(h, bool) or not isinstance(h, int) or not 0 <= h < heads for h in keep):
            raise bad("keep", f"head indices in [0, {heads})", keep)
        kept = sorted(set(keep))
    elif isinstance(keep, int) and not isinstance(keep, bool):
        if importance not in ("l1", "l2"):
            raise bad("importance", "l1 or l2", importance)
        scores = head_scores(graph, node, 1 if importance == "l1" else 2)
        ranked = sorted(range(heads), key=lambda h: (-scores[h], h))
        kept = sorted(ranked[: max(0, keep)])
    else:
        raise bad(
            "drop" if drop is not None else "keep", "indices, 'dead' or a count", drop or keep
        )
    if not 0 < len(kept) < heads:
        raise bad(
            "keep" if keep is not None else "drop",
            f"a choice that keeps between 1 and {heads - 1} of the {heads} heads",
            f"{len(kept)} kept",
        )
    removed = [h for h in range(heads) if h not in kept]
    hd = current_head_dim(n.attrs, graph.input_types(n))
    layout = _Layout(tuple(kept), tuple(kept), _same_dims(hd, hd))
    result = _grow_inside(graph, node, layout, 0, dropped=f"dropped {removed}")
    live = [h for h in removed if h not in dead]
    if not live:
        return result
    reason = f"heads {live} of '{node}' are live: removing them changes the function"
    return PassResult(result.graph, False, result.summary, reason, result.origins)
