"""Attention found at its heads' core and imported as one ``attention`` node.

Two anchors: ``aten.scaled_dot_product_attention`` (what Hugging Face's default
``attn_implementation="sdpa"`` gives under torch.export) and the eager form,
``softmax(q @ k^T * scale + mask) @ v``. From the core the walk goes back from q, k and v
through what rearranges heads (``view``, ``transpose``, ``expand`` and ``reshape`` of
``repeat_kv``…) and what rotates them (rotary embedding: ``mul``, ``add``, ``neg``, ``cat``,
``slice`` with tables that read no input) to the projections (``linear``, or a ``Conv1D``
split into q, k, v), and forward from the heads' output through the head merge to the
output projection. The mask is recognised by its values (:func:`classify_mask`), never by
how it was built. The candidate node (in-projection ``[Wq; Wk; Wv]`` stacked, a copy) must
compute the region's output on both evaluation runs, or the module is refused.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import torch
from torch import fx

from grow_ir.imports.attention_layout import (
    Rows,
    attention_node,
    check_scale,
    check_sides,
    qk_norm,
)
from grow_ir.imports.torch_patterns import (
    ASSERTS,
    Found,
    Program,
    Projection,
    Region,
    linear_projection,
    matches,
    outside_users,
    scope,
    where,
)
from grow_ir.imports.torch_rules import Unsupported, arg
from grow_ir.imports.torch_values import RUNS

aten = torch.ops.aten

SDPA = aten.scaled_dot_product_attention.default

_MOVES = frozenset(
    {
        aten.view.default,
        aten.reshape.default,
        aten._unsafe_view.default,
        aten.transpose.int,
        aten.permute.default,
        aten.contiguous.default,
        aten.clone.default,
        aten.alias.default,
    }
)
"""Head layout ops that only move entries (replayed on indices by :func:`_laid_out_rows`)."""

_HEAD_LAYOUT = _MOVES | {
    aten.to.dtype,
    aten.to.dtype_layout,
    aten._to_copy.default,
    aten.expand.default,
    aten.unsqueeze.default,
}
"""Ops that move head values without computing (and ``repeat_kv``'s expand/reshape)."""

_ROTARY = frozenset(
    {aten.mul.Tensor, aten.add.Tensor, aten.neg.default, aten.cat.default, aten.slice.Tensor}
)
"""What rotary embedding computes with (its tables read no input)."""

_NORM = frozenset(
    {aten.pow.Tensor_Scalar, aten.mean.dim, aten.rsqrt.default, aten.mul.Tensor, aten.add.Tensor}
)
"""What a per-head RMS norm of q and k computes with (Qwen3's ``q_norm``, ``k_norm``)."""

_SPLITS = frozenset({aten.split.Tensor, aten.split_with_sizes.default, aten.chunk.default})


@dataclass(frozen=True)
class _Side:
    """q, k or v traced back: its projection rows, the nodes on the way, rotary tables,
    the parameters it is multiplied by and the scalars added to it (a norm's)."""

    proj: Projection
    rows: Rows
    nodes: frozenset[str]
    tables: tuple[fx.Node, ...]
    norms: tuple[torch.Tensor, ...]
    added: tuple[float, ...]


@dataclass(frozen=True)
class _Core:
    """The heads' part of one attention: q, k, v ``[N, H, L, D]``, the mask value (or
    None), SDPA's ``is_causal``, the score scale (None: ``1/sqrt(D)``), the fx node of the
    heads' output and the fx nodes in between."""

    q: fx.Node
    k: fx.Node
    v: fx.Node
    mask: fx.Node | None
    is_causal: bool
    scale: float | None
    out: fx.Node
    nodes: frozenset[str]


_SOFTMAX = frozenset({aten.softmax.int, aten._softmax.default})
_MATMUL = frozenset({aten.matmul.default})
_KEEP = frozenset(
    {aten.to.dtype, aten.to.dtype_layout, aten._to_copy.default, aten.dropout.default}
    | {aten.clone.default, aten.alias.default, aten.contiguous.default}
)
"""What may stand between the softmax and the product with v (casts, eval-mode dropout)."""


def attention_regions(program: Program, found: Found) -> None:
    """One ``attention`` region per SDPA call and per eager attention (``softmax`` of
    ``q @ k^T`` scaled and masked, times ``v``); a refusal naming the module for each that
    is not grow-ir's attention."""
    for node in program.graph.nodes:
        try:
            if node.target is SDPA:
                core = _sdpa_core(node)
            elif node.target in _SOFTMAX:
                core = _eager_core(program, node)
                if core is None:
                    continue  # a softmax of its own: the rules import it
            else:
                continue
            found.regions.append(_attention(program, core))
        except Unsupported as exc:
            if node.target is SDPA:
                found.refusals.append((where(node), exc.reason, frozenset({node.name})))
            else:  # written out with ops that have rules: they may import one by one
                what = f"eager attention (matmul, softmax, matmul) not recognised: {exc.reason}"
                found.fallbacks.append((where(node), what, frozenset()))


def _sdpa_core(sdpa: fx.Node) -> _Core:
    if float(arg(sdpa, 4, "dropout_p", 0.0) or 0.0) != 0.0:
        raise Unsupported("applies attention dropout in eval mode")
    scale = arg(sdpa, 6, "scale")
    q, k, v = sdpa.args[:3]
    mask, causal = arg(sdpa, 3, "attn_mask"), bool(arg(sdpa, 5, "is_causal", False))
    scale = None if scale is None else float(scale)
    return _Core(q, k, v, mask, causal, scale, sdpa, frozenset({sdpa.name}))


def _eager_core(program: Program, softmax: fx.Node) -> _Core | None:
    """``softmax((q @ k^T) * s [+ mask]) @ v`` on 4-D heads, or None when the softmax is
    not the middle of one."""
    if softmax.meta["val"].dim() != 4 or int(softmax.args[1]) % 4 != 3:
        return None
    nodes = {softmax.name}
    n = softmax
    while True:  # forward to the product with v
        users = [u for u in n.users if u.target not in ASSERTS]
        if len(users) != 1:
            return None
        (n,) = users
        nodes.add(n.name)
        if n.target in _MATMUL:
            break
        if n.target not in _KEEP:
            return None
    out, weights, v = n, n.args[0], n.args[1]
    if weights.name not in nodes:  # the softmax must be the left operand: weights @ v
        return None
    scores, mask = softmax.args[0], None
    if scores.target is aten.add.Tensor and all(isinstance(a, fx.Node) for a in scores.args):
        nodes.add(scores.name)
        scores, mask = scores.args
    scale = None
    if scores.target in (aten.mul.Tensor, aten.div.Tensor) and isinstance(
        scores.args[1], (int, float)
    ):
        factor = float(scores.args[1])
        scale = factor if scores.target is aten.mul.Tensor else 1.0 / factor
        nodes.add(scores.name)
        scores = scores.args[0]
    if scores.target not in _MATMUL:
        return None
    nodes.add(scores.name)
    q, kt = scores.args
    rank = kt.meta["val"].dim()
    dims = (
        {int(kt.args[1]) % rank, int(kt.args[2]) % rank}
        if kt.target is aten.transpose.int
        else set()
    )
    if dims != {rank - 2, rank - 1}:
        raise Unsupported("multiplies q by keys that are not transposed (q @ k^T)")
    nodes.add(kt.name)
    if scale is None:
        raise Unsupported("does not scale its scores (grow-ir: 1/sqrt(head_dim))")
    return _Core(q, kt.args[0], v, mask, False, scale, out, frozenset(nodes))


def _attention(program: Program, core: _Core) -> Region:
    ev = program.evaluation
    q_val = ev.value(core.q)
    _, heads, _, dim = (int(d) for d in q_val.shape)
    check_scale(core.scale, dim)
    sides = {
        role: _trace_back(program, node, role)
        for role, node in (("q", core.q), ("k", core.k), ("v", core.v))
    }
    check_sides(sides, heads, dim)
    x = sides["q"].proj.x
    out_nodes, out_proj, output = _trace_forward(program, core.out)
    causal, pad = classify_mask(program, core)
    width = int(x.meta["val"].shape[-1])
    attrs, params = attention_node(sides, out_proj, heads, dim, width, causal)
    norm_attrs, norm_params = qk_norm(sides, dim)
    attrs, params = {**attrs, **norm_attrs}, {**params, **norm_params}
    if sides["q"].tables:
        theta, rotary = rope_theta(program, sides["q"].tables + sides["k"].tables, dim)
        attrs["rope_theta"] = theta
        if rotary != dim:
            attrs["rotary_dim"] = rotary
    nodes = set(core.nodes) | out_nodes
    for s in sides.values():
        nodes |= s.nodes
    for name in nodes - {output.name}:
        users = outside_users(nodes, program.nodes[name])
        if users:
            raise Unsupported(
                f"gives its intermediate value '{name}' to {users[0].name} outside it "
                "(grow-ir's attention returns only its output)"
            )
    path, _ = scope(core.out)
    inputs = (x,) if pad is None else (x, pad)
    region = Region(path, frozenset(nodes), output, inputs, "attention", attrs, params)
    problem = matches(program, region)
    if problem is not None:
        raise Unsupported(f"is no grow-ir attention ({attrs}): {problem}")
    return region


def _trace_back(program: Program, start: fx.Node, role: str) -> _Side:
    ev = program.evaluation
    stack, seen, nodes, tables = [start], set(), set(), []
    norms: list[torch.Tensor] = []
    added: list[float] = []
    found: list[tuple[Projection, Rows]] = []
    while stack:
        n = stack.pop()
        if n.name in seen:
            continue
        seen.add(n.name)
        hit = _projection_rows(program, n)
        if hit is not None:
            found.append(hit[:2])
            nodes |= hit[0].nodes | hit[2]
            continue
        if ev.constant(n):
            tables.append(n)
            continue
        if n.op != "call_function" or n.target not in _HEAD_LAYOUT | _ROTARY | _NORM:
            raise Unsupported(
                f"computes its {role} with {getattr(n.target, '__name__', n.target)} "
                "(grow-ir: projections, head layout, rotary embedding, a per-head norm)"
            )
        nodes.add(n.name)
        if n.target is aten.add.Tensor:
            added += [float(a) for a in n.args if isinstance(a, float)]
        for a in n.all_input_nodes:
            if not program.is_param(a):
                stack.append(a)
            elif n.target is aten.mul.Tensor and (t := program.tensor(a)) is not None:
                norms.append(t)
    projections = {p.nodes for p, _ in found}  # one projection reached along several paths
    if len(found) == 0 or len(projections) != 1 or len({_key(r) for _, r in found}) != 1:
        raise Unsupported(f"reaches {len(found)} projections from its {role} (grow-ir: one)")
    proj, rows = found[0]
    return _Side(proj, rows, frozenset(nodes), tuple(tables), tuple(norms), tuple(added))


def _key(rows: Rows) -> object:
    return (rows.start, rows.stop) if isinstance(rows, slice) else rows


def _projection_rows(program: Program, n: fx.Node) -> tuple[Projection, Rows, set[str]] | None:
    """A projection, or one part of a projection split or sliced along its last axis
    (GPT-2's ``c_attn`` output split into q, k and v, Phi-3's ``qkv_proj`` sliced), or one
    part split off the heads' layout of a projection (GPT-NeoX's ``[N, H, L, 3·D]``
    chunked into q, k and v): with the rows it reads and the nodes from the projection
    to ``n``."""
    proj = linear_projection(program, n)
    if proj is not None:
        return proj, slice(0, int(proj.weight.shape[0])), {n.name}
    if n.target is aten.slice.Tensor:
        proj = linear_projection(program, n.args[0])
        rank = n.args[0].meta["val"].dim()
        if proj is None or int(arg(n, 1, "dim", 0)) % rank != rank - 1:
            return None
        total = int(proj.weight.shape[0])
        start, end, step = (
            arg(n, i, k, d) for i, k, d in ((2, "start", 0), (3, "end", None), (4, "step", 1))
        )
        rows = range(total)[slice(start, end, step)]
        if step != 1 or not rows:
            return None
        return proj, slice(rows.start, rows.stop), {n.name}
    if n.target is not operator.getitem or n.args[0].target not in _SPLITS:
        return None
    split, index = n.args[0], int(n.args[1])
    source = split.args[0]
    proj = linear_projection(program, source)
    if proj is None:
        return _laid_out_rows(program, n)
    rank = source.meta["val"].dim()
    if int(arg(split, 2, "dim", 0)) % rank != rank - 1:
        return None
    total = int(proj.weight.shape[0])
    size = split.args[1]
    if split.target is aten.chunk.default:  # chunks of ceil(total / count)
        size = -(-total // int(size))
    sizes = [int(s) for s in size] if isinstance(size, (list, tuple)) else None
    if sizes is None:
        sizes = [min(int(size), total - i) for i in range(0, total, int(size))]
    start = sum(sizes[:index])
    return proj, slice(start, start + sizes[index]), {n.name, split.name}


def _laid_out_rows(program: Program, n: fx.Node) -> tuple[Projection, Rows, set[str]] | None:
    """The rows of a part ``n`` ``[N, H, L, D]`` split off a projection's output laid
    out by moves (:data:`_MOVES`), found by running those ops on the rows' indices: the
    projection row at every head and dim must not depend on the batch or position."""
    chain, x = [n, n.args[0]], n.args[0].args[0]
    while (proj := linear_projection(program, x)) is None:
        if not isinstance(x, fx.Node) or x.target not in _MOVES or len(x.users) != 1:
            return None
        chain.append(x)
        x = x.args[0]
    shape = tuple(int(d) for d in x.meta["val"].shape)
    index = torch.arange(shape[-1]).expand(shape).contiguous()
    try:
        for step in reversed(chain):
            index = step.target(index, *step.args[1:], **step.kwargs)
    except (RuntimeError, TypeError, IndexError):  # a symbolic size, an op's other form
        return None
    if not isinstance(index, torch.Tensor) or index.dim() != 4:
        return None
    heads = index[:1, :, :1, :]
    if not bool((index == heads).all()):
        return None
    return proj, tuple(heads.flatten().tolist()), {step.name for step in chain}


def _trace_forward(program: Program, heads: fx.Node) -> tuple[set[str], Projection, fx.Node]:
    """The head merge after the heads' output and the output projection: (nodes,
    projection, output)."""
    nodes: set[str] = set()
    n = heads
    while True:
        users = [u for u in n.users if u.target not in ASSERTS]
        if len(users) != 1:
            raise Unsupported(f"gives its heads to {len(users)} ops (grow-ir: one projection)")
        (u,) = users
        proj = linear_projection(program, u)
        if proj is None and u.target is aten.addmm.default:
            after = [w for w in u.users]
            proj = linear_projection(program, after[0]) if len(after) == 1 else None
            if proj is not None:
                u = after[0]
        if proj is not None:
            return nodes | proj.nodes, proj, u
        if u.target not in _HEAD_LAYOUT:
            raise Unsupported(
                f"merges its heads with {getattr(u.target, '__name__', u.target)} (grow-ir: "
                "a reshape, then the output projection)"
            )
        nodes.add(u.name)
        n = u


# ---- the mask, by value ----------------------------------------------------------------------


def classify_mask(program: Program, core: _Core) -> tuple[bool, fx.Node | None]:
    """``(causal, padding input)`` an attention's mask is, by its values on both runs.

    Accepted: no mask (``is_causal`` says); a mask that reads no input and is all visible
    (``causal=False``) or lower-triangular (``causal=True``); a mask that reads one user
    input ``pad`` of shape ``[N, L]`` and equals ``pad[:, None, None, :] != 0`` and-ed with
    one of those on both runs (the attention's key padding mask input). A boolean mask is
    True where visible; a float mask is 0 there and at most half the dtype's lowest value
    (or -inf) elsewhere. Raises Unsupported for any other mask.
    """
    mask, is_causal = core.mask, core.is_causal
    if mask is None:
        return is_causal, None
    if is_causal:
        raise Unsupported("takes a mask and is_causal together")
    ev = program.evaluation
    deps = ev.depends[mask.name]
    pad = None
    if len(deps) > 1:
        raise Unsupported(f"builds its mask from {len(deps)} inputs (grow-ir: one padding mask)")
    if deps:
        (name,) = deps
        pad = program.nodes[name]
        q = ev.value(core.q)
        if tuple(pad.meta["val"].shape) != (q.shape[0], q.shape[2]):
            raise Unsupported(f"builds its mask from input '{name}', which is not [N, L]")
    masks = [ev.value(mask, run) for run in range(RUNS)]
    queries = [tuple(ev.value(core.q, run).shape) for run in range(RUNS)]
    keys = [int(ev.value(core.k, run).shape[2]) for run in range(RUNS)]
    pads = None if pad is None else [ev.value(pad, run) for run in range(RUNS)]
    return mask_causal(masks, queries, keys, pads), pad


def mask_causal(
    masks: list[torch.Tensor],
    queries: list[tuple[int, ...]],
    keys: list[int],
    pads: list[torch.Tensor] | None,
) -> bool:
    """Whether an attention's mask is causal, by its values on every run: ``masks[run]``
    (bool True where visible, or float 0 there and -inf / half the lowest value elsewhere)
    for queries of shape ``queries[run]`` (``[N, H, Lq, D]``) over ``keys[run]`` keys must
    equal, for every head, all-visible (False) or lower-triangular (True), and-ed with
    ``pads[run][:, None, :] != 0`` when the mask reads a key padding input. Raises
    Unsupported for any other mask, or one that changes kind between runs."""
    verdicts = set()
    for run, mask in enumerate(masks):
        visible = _visible(mask)
        n, lq, lk = int(queries[run][0]), int(queries[run][2]), int(keys[run])
        visible = visible.expand(n, visible.shape[1], lq, lk)
        if not bool((visible == visible[:, :1]).all()):
            raise Unsupported("masks heads differently (grow-ir: one mask for every head)")
        visible = visible[:, 0]
        keep = torch.ones(n, 1, lk, dtype=torch.bool)
        if pads is not None:
            keep = (pads[run] != 0)[:, None, :]
        tril = torch.ones(lq, lk, dtype=torch.bool).tril()
        runs = {c for c, m in ((False, keep), (True, keep & tril)) if bool((visible == m).all())}
        if not runs:
            what = "a key padding mask and-ed with " if pads is not None else ""
            raise Unsupported(f"has a mask that is not {what}all-visible or lower-triangular")
        verdicts.add(frozenset(runs))
    common = frozenset.intersection(*verdicts)
    if not common:
        raise Unsupported("has a mask that changes kind between inputs")
    return False not in common  # causal only where the mask is not all-visible


def _visible(mask: torch.Tensor) -> torch.Tensor:
    if mask.dtype == torch.bool:
        visible = mask
    elif mask.is_floating_point():
        low = torch.finfo(mask.dtype).min / 2
        if not bool(((mask == 0) | (mask <= low)).all()):
            raise Unsupported("adds a float bias to its scores that is no mask (0 or -inf)")
        visible = mask == 0
    else:
        raise Unsupported(f"has a {mask.dtype} mask")
    while visible.dim() < 4:
        visible = visible.unsqueeze(0)
    if visible.dim() != 4:
        raise Unsupported(f"has a mask of rank {visible.dim()}")
    return visible


# ---- rotary tables -----------------------------------------------------------------------------


def rope_theta(program: Program, tables: tuple[fx.Node, ...], dim: int) -> tuple[float, int]:
    """The ``theta`` of the frequencies ``theta^(-2i/r)`` the rotary tables are made from,
    and ``r``, how many entries of a head they rotate (``dim``, or fewer for a partial
    rotary): from the ``inv_freq``-shaped buffer they read (``r / 2`` floats, the first
    1), ``theta`` rounded to an integer when that integer gives the same buffer."""
    stack, seen = list(tables), set()
    while stack:
        n = stack.pop()
        if n.name in seen:
            continue
        seen.add(n.name)
        t = program.tensor(n)
        if t is not None and t.dim() == 1 and 2 <= 2 * t.shape[0] <= dim and t.is_floating_point():
            return fit_theta(t, 2 * int(t.shape[0])), 2 * int(t.shape[0])
        stack.extend(n.all_input_nodes)
    raise Unsupported("has rotary tables made from no inverse-frequency buffer")


def fit_theta(inv_freq: torch.Tensor, dim: int) -> float:
    """The ``theta`` with ``inv_freq == theta^(-2i/dim)`` (rounded to an integer when that
    integer gives the same frequencies within 1e-6); Unsupported when there is none. Two
    rotated dims turn at frequency 1 whatever ``theta`` is: Hugging Face's default, 10000."""
    if float(inv_freq[0]) != 1.0:
        raise Unsupported("has rotary frequencies that do not start at 1")
    if dim == 2:
        return 10000.0
    theta = float(inv_freq[1].double()) ** (-dim / 2)
    for candidate in (float(round(theta)), theta):
        made = 1.0 / (candidate ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
        if torch.allclose(made, inv_freq.float(), rtol=1e-6, atol=0.0):
            return candidate
    raise Unsupported("has rotary frequencies that are no powers of one theta")
