"""Connection pruning and growth: masks on the weights of linear and conv layers.

A layer with ``masked: true`` carries a ``weight_mask`` buffer of its weight's shape and
computes with ``weight * weight_mask`` (the op's :class:`~grow_ir.ir.ops.base.ParamSpec`
says which buffer masks which parameter). The mask is part of the IR, so it survives
lowering to torch (masked connections get no gradient), ONNX export (the file holds the
masked weights) and every growth pass (``widen`` grows masks with new entries live,
``prune`` removes their rows and columns with the channels).

- ``prune_connections`` keeps a layer's largest-magnitude connections (NeST's pruning):
  exact only when every removed connection's weight is already zero.
- ``grow_connections`` brings back the masked connections whose loss gradient is largest
  on a probe batch (NeST's connection growth rule); they start at weight 0, so the
  function is unchanged and they learn from the next step.
"""

from __future__ import annotations

from typing import Any

import torch

from grow_ir.errors import PassError
from grow_ir.ir.graph import Graph, Node
from grow_ir.passes.args import NodeName
from grow_ir.passes.base import Origin, PassResult, register_pass
from grow_ir.passes.rewrite import node_of_kind, own_parameters, replace_nodes


def maskable_ops() -> tuple[str, ...]:
    """The ops with a ``masked`` attribute (a mask on their weight), by name."""
    from grow_ir.ir.ops import OPS

    return tuple(name for name, op in OPS.items() if "masked" in op.attrs.model_fields)


def mask_of(graph: Graph, param: str) -> str | None:
    """The name of the buffer that masks ``param`` entry by entry, or None."""
    prefix, _, local = param.rpartition(".")
    for key, spec in graph.param_specs.items():
        if spec.mask_of == local and key.rpartition(".")[0] == prefix:
            return key
    return None


def effective(graph: Graph, param: str) -> torch.Tensor:
    """``param`` as its layer computes with it: times its mask when it has one."""
    mask = mask_of(graph, param)
    t = graph.params[param]
    return t if mask is None else t * graph.params[mask]


def _layer(graph: Graph, node: str, pass_name: str) -> Node:
    n = node_of_kind(graph, node, maskable_ops(), pass_name)
    own_parameters(graph, n, "mask its weights")
    return n


def _fraction(node: str, field: str, value: object) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok or not 0.0 < value <= 1.0:  # type: ignore[operator]
        raise PassError(
            f"bad {field}",
            node=node,
            field=field,
            expected="a fraction in (0, 1]",
            found=repr(value),
        )
    return float(value)  # type: ignore[arg-type]


def _with_mask(
    graph: Graph, n: Node, weight: torch.Tensor, mask: torch.Tensor
) -> tuple[Graph, dict[str, Origin]]:
    """``graph`` with ``n`` masked, its weight and mask replaced (not verified yet)."""
    key_w, key_m = f"{n.name}.weight", f"{n.name}.weight_mask"
    had_mask = key_m in graph.params
    masked = n.replace(attrs=n.attrs.model_copy(update={"masked": True}))
    new = replace_nodes(graph, {n.name: masked}, params={key_w: weight, key_m: mask})
    origins = {key_w: _kept_where_equal(key_w, weight, graph.params[key_w])}
    if had_mask:  # a mask entry that moved is new, like a weight entry that did
        origins[key_m] = _kept_where_equal(key_m, mask, graph.params[key_m])
    else:
        origins[key_m] = Origin(None)
    return new, origins


def _kept_where_equal(key: str, new: torch.Tensor, old: torch.Tensor) -> Origin:
    """``key`` copied from itself, the entries where ``new`` differs from ``old`` fresh."""
    changed = new != old
    return Origin(key, fresh=changed if bool(changed.any()) else None)


def _top(scores: torch.Tensor, k: int) -> torch.Tensor:
    """A boolean tensor of ``scores``' shape, true at its ``k`` largest entries (ties: the
    lower flat index wins)."""
    flat = scores.reshape(-1)
    order = torch.argsort(-flat, stable=True)[:k]
    out = torch.zeros(flat.shape, dtype=torch.bool)
    out[order] = True
    return out.reshape(scores.shape)


@register_pass("prune_connections")
def prune_connections(graph: Graph, node: NodeName, density: float) -> PassResult:
    """Keep the ``density`` fraction of ``node``'s weight entries of largest magnitude.

    ``node`` is a linear or conv layer; it becomes ``masked`` (a ``weight_mask`` buffer),
    the ``round(density * entries)`` live entries of largest ``|weight|`` stay (ties: the
    lower flat index), the others are masked out and their weights set to zero. Each unit
    (output row) keeps its strongest live connection even when it is not among those, so
    that no unit becomes a constant (a batchnorm after a constant divides by a vanishing
    variance); with fewer entries to keep than units, every unit keeps one. A layer
    already sparser than ``density`` is unchanged.

    Guarantees: the input is untouched; the result's layer computes with exactly the kept
    weights; ``preserved`` only when every removed connection's weight was zero;
    ``origins`` maps the weight to itself (same shape: optimizer state carries over), the
    zeroed entries marked ``fresh`` (their state starts at zero).

    Raises:
        PassError: ``node`` is no linear/conv layer, shares its weights, or ``density`` is
            not in (0, 1].
    """
    n = _layer(graph, node, "prune_connections")
    density = _fraction(node, "density", density)
    key = f"{n.name}.weight"
    w = effective(graph, key)
    masked = mask_of(graph, key) is not None
    live = graph.params[f"{key}_mask"] != 0 if masked else torch.ones(w.shape, dtype=torch.bool)
    keep = max(1, round(density * w.numel()))
    if int(live.sum()) <= keep:
        mask = live.to(w.dtype)
    else:
        scores = w.abs().double() * live
        # every unit keeps its strongest live connection: a unit cut off from its input is
        # a constant, which a batchnorm after it divides by a vanishing variance
        rows = scores.reshape(len(scores), -1)
        strongest = torch.zeros_like(rows, dtype=torch.bool)
        strongest[torch.arange(len(rows)), rows.argmax(1)] = rows.max(1).values > 0
        strongest = strongest.reshape(w.shape)
        top = _top(torch.where(strongest, torch.inf, scores), keep)
        mask = (top & live).to(w.dtype)
    removed = (mask == 0) & live
    weight = w * mask
    new, origins = _with_mask(graph, n, weight, mask)
    kept = int((mask != 0).sum())
    lost = w[removed & (w != 0)]
    summary = (
        f"pruned connections of {node}: {kept} of {w.numel()} kept "
        f"(density {kept / w.numel():.3f}, by magnitude)"
    )
    reason = ""
    if lost.numel():
        reason = (
            f"{lost.numel()} removed connections had nonzero weights (largest |w| "
            f"{lost.abs().max().item():.3g})"
        )
    return PassResult(new, preserved=not reason, summary=summary, reason=reason, origins=origins)


@register_pass("grow_connections")
def grow_connections(
    graph: Graph, node: NodeName, fraction: float = 0.1, probe: Any = None
) -> PassResult:
    """NeST's connection growth: bring back the masked-out connections of ``node`` with
    the largest loss gradient ``|∂L/∂w|`` on ``probe`` (a
    :class:`grow_ir.passes.gradmax.Probe`), ``round(fraction * masked)`` of them, at least
    one. They start at weight 0.

    Guarantees: the input is untouched; the function is preserved (new connections are
    zero); masked weights are set to zero (what the layer computed with anyway), so each
    weight is what its layer uses; entries whose value changed are ``fresh`` in the
    weight's Origin (their optimizer state starts at zero).

    Raises:
        PassError: ``node`` is no masked linear/conv layer, has no masked connection, a
            bad ``fraction``, or ``probe`` is missing or does not run.
    """
    from grow_ir.passes.gradmax import as_probe, probe_gradients, probe_output

    n = _layer(graph, node, "grow_connections")
    fraction = _fraction(node, "fraction", fraction)
    key, key_m = f"{n.name}.weight", f"{n.name}.weight_mask"
    if mask_of(graph, key) is None or bool((graph.params[key_m] != 0).all()):
        raise PassError(
            "there are no masked connections to grow back",
            node=node,
            field="node",
            expected="a masked layer with some connections masked out (prune_connections)",
            found="no mask" if mask_of(graph, key) is None else "every connection live",
        )
    if probe is None:
        raise PassError(
            "connection growth reads the loss gradient on a probe batch, which only Python "
            "code or the trainer can give, not a plan file",
            node=node,
            field="probe",
            expected="probe=Probe(inputs=..., targets=..., loss=...)",
            found="none",
        )
    probe = as_probe(probe, node)
    mask = graph.params[key_m]
    w = effective(graph, key)
    # the same function with every connection open: its weight gradient is dL/d(w * mask)
    open_graph = graph.replace(params={**graph.params, key: w, key_m: torch.ones_like(mask)})
    output = probe_output(graph, probe, node)
    (grad,) = probe_gradients(open_graph, probe, output, [key], 0, node)
    dormant = mask == 0
    count = max(1, round(fraction * int(dormant.sum())))
    grown = _top(grad.detach().cpu().abs().double() * dormant, count) & dormant
    new, origins = _with_mask(graph, n, w, torch.where(grown, torch.ones_like(mask), mask))
    summary = (
        f"grew {int(grown.sum())} of {int(dormant.sum())} masked connections of {node} "
        "(largest |dL/dw| on the probe, starting at 0)"
    )
    return PassResult(new, preserved=True, summary=summary, origins=origins)


def live_params(graph: Graph) -> int:
    """Parameter elements the network computes with: ``num_params()`` less the masked-out
    connections."""
    masked = sum(
        int((graph.params[k] == 0).sum()) for k, s in graph.param_specs.items() if s.mask_of
    )
    return graph.num_params() - masked
