"""LEMON's lossless expansion for ``widen(init="lemon")``: any width, through layernorm.

Each new channel carries the mean of the old channels (a producer's new rows and bias are
the means of its old rows and bias), and every consumer's new columns are zero. A sum of
such values carries the mean again, so at each layernorm that normalises across the group
the input is ``x' = [x, mean(x), ..., mean(x)]``: its mean is ``mean(x)`` and its variance
``var(x) · d / D`` (the new entries sit at the mean). Scaling the norm's ``weight`` by
``sqrt(d / D)`` and its ``eps`` by ``d / D`` gives back the old outputs exactly:
``(x - μ) / sqrt(var·d/D + eps·d/D) · γ·sqrt(d/D) = (x - μ) / sqrt(var + eps) · γ``
(Wang et al., "LEMON: Lossless model expansion", 2023, section 4; checked numerically by
the tests). Unlike k-fold duplication (``net2net`` through a layernorm) the new width need
not be a multiple of the old one.

It is exact only where every norm of the group reads a value that carries the mean: made
by producers and residual sums of such values, never after an activation, another norm
(post-norm blocks) or a product; those are refused with the reason.
"""

from __future__ import annotations

import math

from grow_ir.errors import PassError
from grow_ir.ir.graph import Graph
from grow_ir.ir.ops import Channels
from grow_ir.passes.channels import ChannelGroup, Role
from grow_ir.passes.inits import InitContext, NewUnits, register_width_init


def _carries_mean(graph: Graph, group: ChannelGroup, value: str, memo: dict[str, str]) -> str:
    """Why ``value``'s new channels may differ from the mean of its old ones ("" when they
    cannot: it is made by producers of the group and sums of such values)."""
    if value in memo:
        return memo[value]
    node = graph.node_map.get(value)
    why = ""
    if node is None:
        why = f"'{value}' is a graph input"
    elif value in group.producers:
        why = ""
    else:
        facts = node.opdef.facts
        passes = facts.sums or facts.eval_identity
        passes = passes or node.opdef.channels in (Channels.CONCAT, Channels.FLATTEN)
        if not passes:
            why = f"{node.op} '{value}' does not keep the mean of its input channels"
        else:
            slotted = {s.value for s in group.slots}
            for i in node.inputs:
                if i in slotted:
                    why = why or _carries_mean(graph, group, i, memo)
    memo[value] = why
    return why


@register_width_init(
    "lemon",
    needs_probe=False,
    doc="new units carry the mean, norms rescaled (LEMON; any width, exact)",
)
def lemon_units(ctx: InitContext) -> NewUnits:
    """The new units of LEMON's expansion of ``ctx.group`` to ``ctx.width`` channels.

    Raises:
        PassError: a norm of the group has no weight to rescale, or reads a value whose
            new channels would not carry the mean (named, with the op that breaks it).
    """
    graph, group, old, new = ctx.graph, ctx.group, ctx.old, ctx.width
    memo: dict[str, str] = {}
    attrs: dict[str, dict[str, float]] = {}
    rescale: dict[str, float] = {}
    for name in group.norms:
        norm = graph.node(name)
        weight = f"{norm.param_prefix}.weight"
        if weight not in graph.params:
            raise PassError(
                f"init 'lemon' rescales the weight of layernorm '{name}', which has none",
                node=ctx.node,
                field="init",
                expected="a layernorm with elementwise_affine, or init 'net2net' with a "
                "multiple of the width",
                found="'lemon'",
            )
        why = _carries_mean(graph, group, norm.inputs[0], memo)
        if why:
            raise PassError(
                f"init 'lemon' keeps layernorm '{name}' exact only when its input's new "
                f"channels carry the mean of the old ones, and here {why}",
                node=ctx.node,
                field="init",
                expected="a pre-norm residual stream (producers and sums before each norm)",
                found="'lemon'",
            )
        attrs[name] = {"eps": norm.attrs.eps * old / new}
        rescale[weight] = math.sqrt(old / new)
    consumers = [m for m in group.members if Role.CONSUMER in m.roles]
    note = f"; new units are the mean of the old, {len(consumers)} consumers read them with 0"
    if group.norms:
        note += f", {', '.join(group.norms)} rescaled by sqrt({old}/{new})"
    return NewUnits(
        (-1,) * (new - old),
        fan_in="mean",
        fan_out="zero",
        note=note,
        attrs=attrs,
        rescale=rescale,
    )
