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

An RMS norm (``rmsnorm``, which does not centre: ``NormRule.centres`` false) takes zeros
instead: new producer rows and biases are zero, so its input is ``x' = [x, 0, ..., 0]``,
whose mean square is ``mean(x²) · d / D``, and the same rescaling of ``weight`` and ``eps``
gives back the old outputs exactly, at any width. Zeros pass through more ops than means
do (any op with ``fresh_zero_to_zero``: activations with f(0) = 0, products, other RMS
norms), so post-norm RMS blocks are exact too. A group that mixes centring and RMS norms
is refused: no one filling keeps both exact.
"""

from __future__ import annotations

import math

from grow_ir.errors import PassError
from grow_ir.ir.graph import Graph
from grow_ir.ir.ops import Channels
from grow_ir.ir.ops.norm import rms_eps
from grow_ir.passes.channels import ChannelGroup, Role, groups_of
from grow_ir.passes.inits import InitContext, NewUnits, register_width_init


def _carries_fill(
    graph: Graph, group: ChannelGroup, value: str, memo: dict[str, str], zeros: bool
) -> str:
    """Why ``value``'s new channels may differ from the filling ("" when they cannot): the
    mean of the old ones (``zeros`` false), made by producers of the group and sums of
    such values; or zero, made by producers and ops that keep a fresh zero channel zero."""
    if value in memo:
        return memo[value]
    node = graph.node_map.get(value)
    why = ""
    if node is None:
        why = f"'{value}' is a graph input"
    elif value in group.producers and groups_of(node) > 1 and not zeros:
        # its new rows are the mean of all rows, each read by one group's inputs only
        why = (
            f"{node.op} '{value}' (groups={groups_of(node)}) makes each new channel from "
            "one group's inputs"
        )
    elif value in group.producers or node.opdef.channels is Channels.TENSOR:
        why = ""  # a producer's, or a learned tensor's, new entries are the filling
    else:
        facts = node.opdef.facts
        passes = facts.sums or facts.eval_identity or (zeros and bool(facts.fresh_zero_to_zero))
        moves = (Channels.CONCAT, Channels.FLATTEN, Channels.MOVE)  # channels moved whole
        passes = passes or node.opdef.channels in moves
        if not passes:
            kept = "a zero channel zero" if zeros else "the mean of its input channels"
            why = f"{node.op} '{value}' does not keep {kept}"
        else:
            slotted = {s.value for s in group.slots}
            for i in node.inputs:
                if i in slotted:
                    why = why or _carries_fill(graph, group, i, memo, zeros)
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
    rules = {name: graph.node(name).opdef.norm for name in group.norms}
    centring = {name for name, rule in rules.items() if rule is not None and rule.centres}
    if centring and len(centring) < len(rules):
        raise PassError(
            f"init 'lemon' keeps a centring norm ({sorted(centring)[0]}) exact with new "
            "channels at the mean and an RMS norm "
            f"({sorted(set(rules) - centring)[0]}) with new channels at zero; this group "
            "has both",
            node=ctx.node,
            field="init",
            expected="a group whose norms are all layernorms or all rmsnorms, or init "
            "'net2net' with a multiple of the width",
            found="'lemon'",
        )
    zeros = bool(rules) and not centring
    memo: dict[str, str] = {}
    attrs: dict[str, dict[str, float]] = {}
    rescale: dict[str, float] = {}
    for name in group.norms:
        norm = graph.node(name)
        weight = f"{norm.param_prefix}.weight"
        if weight not in graph.params:
            raise PassError(
                f"init 'lemon' rescales the weight of {norm.op} '{name}', which has none",
                node=ctx.node,
                field="init",
                expected="a norm with elementwise_affine, or init 'net2net' with a "
                "multiple of the width",
                found="'lemon'",
            )
        why = _carries_fill(graph, group, norm.inputs[0], memo, zeros)
        if why:
            fill = "are zero" if zeros else "carry the mean of the old ones"
            raise PassError(
                f"init 'lemon' keeps {norm.op} '{name}' exact only when its input's new "
                f"channels {fill}, and here {why}",
                node=ctx.node,
                field="init",
                expected="a pre-norm residual stream (producers and sums before each norm)",
                found="'lemon'",
            )
        eps = rms_eps(norm.attrs, graph.types[name].torch_dtype) if zeros else norm.attrs.eps
        attrs[name] = {"eps": eps * old / new}
        rescale[weight] = math.sqrt(old / new)
    consumers = [m for m in group.members if Role.CONSUMER in m.roles]
    filled = "zero" if zeros else "the mean of the old"
    note = f"; new units are {filled}, {len(consumers)} consumers read them with 0"
    if group.norms:
        note += f", {', '.join(group.norms)} rescaled by sqrt({old}/{new})"
    return NewUnits(
        (-1,) * (new - old),
        fan_in="zero" if zeros else "mean",
        fan_out="zero",
        note=note,
        attrs=attrs,
        rescale=rescale,
    )
