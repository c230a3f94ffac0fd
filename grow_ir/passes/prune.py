"""The ``prune`` pass: fewer output channels for a linear, conv or embedding node.

The whole channel group shrinks (see :mod:`grow_ir.passes.channels`, the analysis ``widen``
uses): every producer joined through ``add``, the per-channel parameters on the way, concat
offsets, flatten blocks, and every consumer's input columns. Which channels go is given
(``keep``/``drop`` indices) or chosen by an importance (:data:`IMPORTANCES`); the tensor
surgery is :mod:`grow_ir.passes.regroup`'s layout, shared with ``widen``.

Preservation is claimed only when it is proven: every removed channel is *dead*, either
because every weight that reads it is zero (zero fan-out), or because it is exactly 0 up
to its readers (zero fan-in: every producer's weight row and bias are zero, and every op it
passes through maps 0 to 0, ``OpFacts.zero_to_zero``). A group normalised across its
channels (layernorm) is never preserved: the mean and variance count every channel.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from grow_ir.errors import PassError
from grow_ir.ir.graph import Graph
from grow_ir.passes.args import NodeName
from grow_ir.passes.base import Origin, PassResult, register_pass
from grow_ir.passes.channels import ChannelGroup, Role, channel_group, width_ops
from grow_ir.passes.connections import effective
from grow_ir.passes.regroup import axes_by_param, axis_plan, resize_nodes, spans_by_axis
from grow_ir.passes.rewrite import node_of_kind
from grow_ir.passes.stages import refresh_stage_params

# ---- importance: one score per channel, the lowest go first -------------------------------


@dataclass(frozen=True)
class Scoring:
    """What an importance may read: the graph, the group and the probe batch (or None)."""

    graph: Graph
    node: str
    group: ChannelGroup
    probe: Any = None


ImportanceFn = Callable[[Scoring], torch.Tensor]


def channel_entries(t: torch.Tensor, group: ChannelGroup, param: str, kind: str) -> torch.Tensor:
    """``[channels, k]`` in float64: the entries of ``t`` (parameter ``param``, or a tensor
    of its shape) on its axes of ``kind`` that belong to each channel of ``group``:
    ``"units"`` a producer's weight row or a per-channel entry, ``"fan_out"`` a consumer's
    input columns (all of a flatten block), one row per channel."""
    axes = [a for a in group.param_axes()[param] if a.kind == kind]
    t = t.double()
    by_axis = spans_by_axis(axes)
    if len(by_axis) == 1:  # the usual case, in one gather: channel-major positions
        ((axis, on_axis),) = by_axis.items()
        idx = torch.tensor(
            [
                [a.offset + c * a.block + r for a in on_axis for r in range(a.block)]
                for c in range(group.channels)
            ]
        )
        part = t.index_select(axis, idx.reshape(-1)).movedim(axis, 0)
        return part.reshape(group.channels, -1)
    rows = []
    for c in range(group.channels):
        part = t
        for axis, on_axis in spans_by_axis(axes).items():
            idx = [a.offset + c * a.block + r for a in on_axis for r in range(a.block)]
            part = part.index_select(axis, torch.tensor(idx))
        rows.append(part.reshape(-1))
    return torch.stack(rows)


def entries_of(group: ChannelGroup, params: Sequence[str]) -> list[tuple[str, str]]:
    """``(param, kind)`` for every kind of axis each of ``params`` has in the group."""
    axes = group.param_axes()
    return [(p, k) for p in params for k in dict.fromkeys(a.kind for a in axes[p])]


def weights_of(graph: Graph, group: ChannelGroup) -> list[str]:
    """The group's weights: its trainable parameters (no buffer: statistics, masks) that
    are not biases, in member order."""
    specs = graph.param_specs
    return [p for p in group.param_axes() if not specs[p].buffer and not p.endswith(".bias")]


def _norm(p: int) -> ImportanceFn:
    def score(s: Scoring) -> torch.Tensor:
        total = torch.zeros(s.group.channels, dtype=torch.float64)
        for param, kind in entries_of(s.group, weights_of(s.graph, s.group)):
            t = effective(s.graph, param)
            total += channel_entries(t, s.group, param, kind).abs().pow(p).sum(1)
        return total if p == 1 else total.sqrt()

    return score


def _taylor(s: Scoring) -> torch.Tensor:
    """First-order Taylor (Molchanov et al. 2017): ``|Σ w · ∂L/∂w|`` over every trainable
    entry of the channel, the loss change to first order when the channel is removed."""
    from grow_ir.passes.gradmax import as_probe, probe_gradients, probe_output

    probe = as_probe(s.probe, s.node)
    output = probe_output(s.graph, probe, s.node)
    specs = s.graph.param_specs
    names = [p for p in s.group.param_axes() if not specs[p].buffer]
    grads = dict(zip(names, probe_gradients(s.graph, probe, output, names, 0, s.node)))
    total = torch.zeros(s.group.channels, dtype=torch.float64)
    for name, kind in entries_of(s.group, names):
        w = channel_entries(effective(s.graph, name), s.group, name, kind)
        g = channel_entries(grads[name].cpu(), s.group, name, kind)
        total += (w * g).sum(1)
    return total.abs()


IMPORTANCES: dict[str, ImportanceFn] = {"l1": _norm(1), "l2": _norm(2), "taylor": _taylor}
"""Channel importances by name. ``l1``/``l2``: the norm of every weight entry of the
channel across the group (producers' rows, norms' scales, consumers' columns; biases and
buffers excluded), so a residual group is ranked as a whole (Torch-Pruning's group
magnitude ranks the same); ``taylor``: needs a probe batch."""

PROBE_IMPORTANCES = frozenset({"taylor"})
"""Importances that read a probe batch (``prune(..., probe=...)``)."""


# ---- choosing the channels --------------------------------------------------------------


def _bad(node: str, field: str, reason: str, expected: str, found: object) -> PassError:
    return PassError(reason, node=node, field=field, expected=expected, found=repr(found))


def _indices(node: str, field: str, value: object, channels: int) -> list[int]:
    ok = isinstance(value, (list, tuple)) and all(
        isinstance(i, int) and not isinstance(i, bool) for i in value
    )
    if not ok or not all(0 <= i < channels for i in value) or len(set(value)) != len(value):  # type: ignore[arg-type]
        raise _bad(
            node,
            field,
            f"{field} must list distinct channel indices",
            f"distinct integers in [0, {channels})",
            value,
        )
    return sorted(value)  # type: ignore[arg-type]


def _count(node: str, keep: object, channels: int) -> int:
    if isinstance(keep, bool) or not isinstance(keep, (int, float)):
        raise _bad(
            node,
            "keep",
            "bad keep",
            "a channel count, a fraction in (0, 1) or a list of channel indices",
            keep,
        )
    if isinstance(keep, float):
        if not 0.0 < keep < 1.0:
            raise _bad(node, "keep", "a fraction to keep must lie in (0, 1)", "(0, 1)", keep)
        return max(1, int(channels * keep))
    if not 1 <= keep < channels:
        raise _bad(
            node,
            "keep",
            "prune keeps at least one channel and removes at least one",
            f"an integer in [1, {channels - 1}]",
            keep,
        )
    return keep


def _scores(s: Scoring, importance: object) -> torch.Tensor:
    node, channels = s.node, s.group.channels
    if isinstance(importance, str):
        if importance not in IMPORTANCES:
            raise _bad(
                node,
                "importance",
                "unknown importance",
                f"one of {', '.join(IMPORTANCES)}",
                importance,
            )
        return IMPORTANCES[importance](s)
    ok = isinstance(importance, (list, tuple)) and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in importance
    )
    if not ok or len(importance) != channels:  # type: ignore[arg-type]
        raise _bad(
            node,
            "importance",
            "bad importance",
            f"one of {', '.join(IMPORTANCES)}, or {channels} scores (one per channel)",
            importance,
        )
    return torch.tensor(importance, dtype=torch.float64)


def choose_kept(
    s: Scoring, keep: object, drop: object, importance: object
) -> tuple[list[int], str]:
    """The channels to keep (sorted) and how they were chosen, for the summary.

    ``drop`` or ``keep`` as a list names channels; ``keep`` as a count or fraction keeps
    that many channels of the highest importance (ties: the lower index stays).
    """
    node, channels = s.node, s.group.channels
    if (keep is None) == (drop is None):
        raise _bad(
            node,
            "keep",
            "give exactly one of keep and drop",
            "keep=... or drop=[...]",
            (keep, drop),
        )
    if drop == "dead":
        kept = [c for c in range(channels) if c not in set(all_dead(s.graph, s.group))]
        if len(kept) == channels:
            raise _bad(
                node,
                "drop",
                "no channel of the group is provably dead",
                "a channel with zero fan-out, or zero fan-in through ops that keep 0",
                "none",
            )
        how = "dead"
    elif drop is not None:
        dropped = set(_indices(node, "drop", drop, channels))
        kept = [c for c in range(channels) if c not in dropped]
        how = "given"
    elif isinstance(keep, (list, tuple)):
        kept = _indices(node, "keep", keep, channels)
        how = "given"
    else:
        n = _count(node, keep, channels)
        scores = _scores(s, importance)
        # stable sort, highest first: among equal scores the lower index is kept
        order = torch.argsort(-scores, stable=True)[:n]
        kept = sorted(order.tolist())
        how = importance if isinstance(importance, str) else "given scores"
    if not kept or len(kept) == channels:
        raise _bad(
            node,
            "drop" if drop is not None else "keep",
            "prune keeps at least one channel and removes at least one",
            f"between 1 and {channels - 1} channels kept",
            f"{len(kept)} of {channels}",
        )
    return kept, how


# ---- dead channels: the proof of preservation ---------------------------------------------


def dead_channels(graph: Graph, group: ChannelGroup, dropped: Sequence[int]) -> list[int]:
    """The channels of ``dropped`` that are provably zero for the function once all of
    ``dropped`` is removed (removing only dead channels changes no output), in order.

    A channel is dead when it is exactly 0 up to its readers (every producer's entries for
    it, weight row and bias, are zero, and every other member maps 0 to 0 whatever its
    parameters: ``OpFacts.zero_to_zero``), or when every weight that reads it and
    survives is zero (its fan-out columns, except the rows of dropped channels of a
    consumer that is also one of the group's producers: units that only feed each other,
    as ``widen``'s zero init makes them, are dead together). No channel is dead in a
    group normalised across its channels (a layernorm counts every channel).
    """
    if group.norms:
        return []
    specs = graph.param_specs
    producers = set(group.producers)
    through = all(
        graph.node(m.node).opdef.facts.zero_to_zero
        for m in group.members
        if m.node not in producers and Role.CONSUMER not in m.roles
    )
    zero_in: list[bool] = [False] * group.channels
    if through:
        fan_in = [
            channel_entries(effective(graph, p), group, p, "units")
            for p in dict.fromkeys(
                a.param
                for m in group.members
                if m.node in producers
                for a in m.axes
                if a.kind == "units" and not specs[a.param].buffer
            )
        ]
        zero_in = _all_zero(fan_in, group.channels)
    gone = torch.zeros(group.channels, dtype=torch.bool)
    gone[list(dropped)] = True
    fan_out = []
    for p, axes in group.param_axes().items():
        if not any(a.kind == "fan_out" for a in axes) or specs[p].mask_of is not None:
            continue  # a mask counts through the weight it masks (``effective``)
        t = effective(graph, p)
        for axis, on_axis in spans_by_axis([a for a in axes if a.kind == "units"]).items():
            spans = [(a.offset, a.block) for a in on_axis]
            plan = axis_plan(t.shape[axis], spans, group.channels, range(group.channels))
            removed = [u >= 0 and bool(gone[u]) for u in plan.unit]
            shape = [1] * t.dim()
            shape[axis] = len(removed)
            t = torch.where(torch.tensor(removed).view(shape), torch.zeros((), dtype=t.dtype), t)
        fan_out.append(channel_entries(t, group, p, "fan_out"))
    zero_out = _all_zero(fan_out, group.channels)
    return [c for c in dropped if zero_in[c] or zero_out[c]]


def all_dead(graph: Graph, group: ChannelGroup) -> list[int]:
    """The largest set of the group's channels that are dead together (see
    :func:`dead_channels`), keeping at least one channel: the fixed point of removing the
    channels that are not dead once the others are gone."""
    candidates = list(range(group.channels))
    for keep_first in (False, True):
        dead = candidates[1:] if keep_first else candidates
        while True:
            again = dead_channels(graph, group, dead)
            if again == dead:
                break
            dead = again
        if len(dead) < group.channels:
            return dead
    raise AssertionError("one channel kept, yet every channel dead")


def _all_zero(parts: Sequence[torch.Tensor], channels: int) -> list[bool]:
    if not parts:
        return [False] * channels
    return [bool(all((p[c] == 0).all() for p in parts)) for c in range(channels)]


# ---- the pass ---------------------------------------------------------------------------


@register_pass("prune")
def prune(
    graph: Graph,
    node: NodeName,
    keep: int | float | list[int] | None = None,
    drop: list[int] | str | None = None,
    importance: str | list[float] = "l1",
    probe: Any = None,
) -> PassResult:
    """Remove output channels of ``node`` (linear, conv1d/2d, embedding) and of its group.

    Say which channels with ``drop=[...]`` or ``keep=[...]`` (indices), ``drop="dead"``
    (every channel provably dead, :func:`all_dead`: exact), or how many with
    ``keep=N`` (a count) or ``keep=f`` (a fraction in (0, 1): ``int(f * channels)``, at
    least 1, what Torch-Pruning keeps at ratio ``1 - f``); then the channels of highest
    ``importance`` stay: ``"l1"``/``"l2"`` (the norm of the channel's weights across the
    whole group), ``"taylor"`` (``|Σ w·∂L/∂w|`` on ``probe``, a
    :class:`grow_ir.passes.gradmax.Probe`) or one score per channel.

    Guarantees: the input graph is untouched; every width attribute and every parameter
    the group's channels index shrinks together, the kept entries bitwise the old ones in
    their old order; ``origins`` maps every changed parameter to its old tensor with the
    kept index per axis; ``preserved`` is True only when every removed channel is dead
    (:func:`dead_channels`), and otherwise the reason names the live ones.

    Raises:
        PassError: ``node`` is no linear/conv/embedding; the group cannot change (the same
            refusals as ``widen``: a graph output, attention, softmax over the channels,
            grouped convs, shared parameters); the choice keeps no channel or all of them;
            an unknown importance; ``probe`` missing for taylor or given to another.
    """
    node_of_kind(graph, node, width_ops(), "prune")
    if isinstance(importance, str) and (probe is not None) != (importance in PROBE_IMPORTANCES):
        raise PassError(
            f"importance '{importance}' needs a probe batch (inputs, targets, loss), which "
            "only Python code or the trainer can give, not a plan file"
            if probe is None
            else "a probe batch is read only by importance "
            + " / ".join(sorted(PROBE_IMPORTANCES)),
            node=node,
            field="probe",
            expected="probe=Probe(inputs=..., targets=..., loss=...)" if probe is None else "none",
            found="none" if probe is None else type(probe).__name__,
        )
    group = prunable_group(graph, node)
    kept, how = choose_kept(Scoring(graph, node, group, probe), keep, drop, importance)
    dropped = [c for c in range(group.channels) if c not in set(kept)]
    new_graph, origins = select_channels(graph, group, kept)
    new_graph = refresh_stage_params(new_graph)
    dead = set(dead_channels(graph, group, dropped))
    live = [c for c in dropped if c not in dead]
    summary = (
        f"pruned {node} from {group.channels} to {len(kept)} units ({how}; dropped "
        f"{_ranges(dropped)}), group: {group.describe()}"
    )
    reason = ""
    if group.norms and dropped:
        reason = (
            f"layernorm '{group.norms[0]}' normalises across the group's channels, so its "
            "mean and variance change with any channel removed"
        )
    elif live:
        reason = (
            f"channels {_ranges(live)} of the group are not provably zero (nonzero fan-in "
            "and fan-out), so removing them changes the function"
        )
    return PassResult(
        new_graph, preserved=not reason, summary=summary, reason=reason, origins=origins
    )


def select_channels(
    graph: Graph, group: ChannelGroup, kept: Sequence[int]
) -> tuple[Graph, dict[str, Origin]]:
    """``graph`` with ``group`` reduced to the channels ``kept`` (in that order), and the
    origins of every changed parameter (the kept old index per axis). Not verified yet."""
    shaped = resize_nodes(graph, group, len(kept) - group.channels)
    params, origins = {}, {}
    for m in group.members:
        for param, axes in axes_by_param(m).items():
            t = graph.params[param]
            index: dict[int, tuple[int, ...]] = {}
            for axis, on_axis in spans_by_axis(axes).items():
                spans = [(a.offset, a.block) for a in on_axis]
                plan = axis_plan(t.shape[axis], spans, group.channels, kept)
                t = t.index_select(axis, torch.tensor(plan.index, dtype=torch.long))
                index[axis] = plan.index
            params[param] = t.contiguous()
            origins[param] = Origin(source=param, index=index)
    return shaped.replace(params={**shaped.params, **params}), origins


def prunable_group(graph: Graph, node: str) -> ChannelGroup:
    """The channel group ``prune`` can shrink from ``node``: :func:`channel_group`'s, unless
    grouped convolutions split it into parts (a PassError: pruning would have to drop the
    same channels from every part, where importance ranks each channel alone)."""
    group = channel_group(graph, node)
    if group.parts > 1:
        raise PassError(
            f"its channels are {group.parts} parts read by grouped convolutions, which "
            "prune cannot shrink alike",
            node=node,
            field="node",
            expected="a group with no grouped convolution (widen grows these)",
            found=f"{group.parts} parts",
        )
    return group


def prunable(graph: Graph) -> list[str]:
    """The nodes ``prune`` accepts (``widenable``'s counterpart): a linear/conv/embedding
    whose group :func:`channel_group` accepts and has at least two channels, in order."""
    out = []
    for n in graph.nodes:
        if n.opdef.facts.width_attr is None:
            continue
        try:
            group = prunable_group(graph, n.name)
        except PassError:
            continue
        if group.channels >= 2:
            out.append(n.name)
    return out


def _ranges(channels: Sequence[int]) -> str:
    """``0-3, 7, 9-10``: sorted channel indices as ranges."""
    runs: list[list[int]] = []
    for c in channels:
        if runs and c == runs[-1][-1] + 1:
            runs[-1].append(c)
        else:
            runs.append([c])
    return ", ".join(f"{r[0]}-{r[-1]}" if len(r) > 1 else str(r[0]) for r in runs) or "none"
