"""Editing a channel group's layout: the part of the tensor surgery widen and prune share.

A pass that changes a group's channels (``widen`` adds units, ``prune`` removes them)
describes the new group as a *layout*: for each new channel, the old channel it takes its
entries from, or -1 for a fresh one. Everything else follows from the group
(:class:`~grow_ir.passes.channels.ChannelGroup`): every width attribute changes by the
difference times its block, and every parameter axis the channels index is re-laid out
span by span (entries outside the group's spans stay where they are, in order).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from grow_ir.errors import ShapeError
from grow_ir.ir.graph import Graph, Node
from grow_ir.ir.ops.base import bump_attr
from grow_ir.passes.channels import ChannelGroup, Member, ParamAxis
from grow_ir.passes.rewrite import replace_nodes


def resize_nodes(graph: Graph, group: ChannelGroup, delta: int) -> Graph:
    """The graph with every width attribute of the group changed by ``delta`` channels
    (negative to shrink) and every member's ``pins`` set (attention's ``head_dim``, so its
    heads keep their size); parameters are still the old ones (not verified)."""
    changed: dict[str, Node] = {}
    # Alike members (a stage's convs) have equal attributes, resized alike: made once.
    resized: dict[tuple, Any] = {}
    for m in group.members:
        if m.width_attrs or m.pins:
            n = graph.node(m.node)
            key = (n.op, n.attrs, m.width_attrs, m.pins)
            attrs = resized.get(key)
            if attrs is None:
                attrs = n.attrs
                for name, block in m.width_attrs:  # ``out_features`` or an entry ``shape[1]``
                    attrs = bump_attr(attrs, name, delta * block)
                if m.pins:
                    attrs = attrs.model_copy(update=dict(m.pins))
                resized[key] = attrs
            changed[m.node] = n.replace(attrs=attrs)
    return _unpin_defaults(replace_nodes(graph, changed), group)


def _unpin_defaults(graph: Graph, group: ChannelGroup) -> Graph:
    """``graph`` with every pin that its attribute's default now gives removed (attention
    back at a width where ``head_dim`` is again ``E / num_heads``), so that widening and
    then pruning back gives the graph that was there, attribute for attribute."""
    plain: dict[str, Node] = {}
    for m in group.members:
        if not m.pins:
            continue
        n = graph.node(m.node)
        rule = n.opdef.through
        if rule is None:
            continue
        fields, pins = type(n.attrs).model_fields, dict(m.pins)
        unpinned = n.attrs.model_copy(update={k: fields[k].default for k in pins})
        ins = graph.input_types(n)
        try:
            n.opdef.infer(unpinned, ins)
        except ShapeError:
            continue  # the default is not valid here: the pin stays
        if rule.pin(unpinned, ins) == pins:
            plain[m.node] = n.replace(attrs=unpinned)
    return replace_nodes(graph, plain) if plain else graph


@dataclass(frozen=True)
class AxisPlan:
    """For each position of a re-laid-out axis: the old position it takes its value from
    (-1: none), the group unit it belongs to (-1: outside the group) and whether it is new
    (a fresh entry, or a copy of a unit that appears earlier in the layout)."""

    index: tuple[int, ...]
    unit: tuple[int, ...]
    new: tuple[bool, ...]


def grown_layout(old: int, copies: Sequence[int], parts: int = 1) -> tuple[int, ...]:
    """The layout of a group of ``old`` channels widened by ``copies`` (the old channel each
    new one copies, -1 for a fresh one): each of the group's ``parts`` runs of old channels
    followed by its share of the new ones, in order (``range(old)`` then ``copies`` for a
    group of one part). New units so go right after their run's last old channel, where a
    widened producer puts them, and so where a concat or flatten of its output does too."""
    run, new = old // parts, len(copies) // parts
    return tuple(
        c
        for p in range(parts)
        for c in (*range(p * run, (p + 1) * run), *copies[p * new : (p + 1) * new])
    )


def axis_plan(
    size: int,
    spans: Sequence[tuple[int, int]],
    old: int,
    layout: Sequence[int],
    fold: int = 1,
) -> AxisPlan:
    """Plan one axis of ``size`` positions where the group's ``old`` channels sit at
    ``spans`` (offset, block): each span is replaced by the channels of ``layout`` (old
    channel per new channel, -1 for a fresh one), in order, block by block.

    ``widen`` lays out :func:`grown_layout`; ``prune`` lays out the kept channels. An axis
    with ``fold`` > 1 (``ParamAxis.fold``: a grouped conv's columns) holds the first
    ``old / fold`` channels, laid out as the first ``1 / fold`` of ``layout``.
    """
    if fold > 1:
        old, layout = old // fold, layout[: len(layout) // fold]
    ordered = sorted(spans)
    ends = [off + old * blk for off, blk in ordered]
    overlap = any(e > nxt for e, (nxt, _) in zip(ends, ordered[1:]))
    if overlap or (ordered and ends[-1] > size):
        raise AssertionError(f"overlapping channel spans {spans}")
    seen: set[int] = set()
    first = []
    for u in layout:
        first.append(u >= 0 and u not in seen)
        seen.add(u)
    index: list[int] = []
    unit: list[int] = []
    new: list[bool] = []
    done = 0  # positions before ``done`` are laid out
    for (off, blk), end in zip(ordered, ends):
        index.extend(range(done, off))  # outside the group: kept in place
        unit.extend([-1] * (off - done))
        new.extend([False] * (off - done))
        for src, is_first in zip(layout, first):
            index.extend(range(off + src * blk, off + src * blk + blk) if src >= 0 else [-1] * blk)
            unit.extend([src] * blk)
            new.extend([not is_first] * blk)
        done = end
    index.extend(range(done, size))
    unit.extend([-1] * (size - done))
    new.extend([False] * (size - done))
    return AxisPlan(tuple(index), tuple(unit), tuple(new))


def axes_by_param(member: Member) -> dict[str, list[ParamAxis]]:
    """The member's parameter axes indexed by the group's channels, by parameter."""
    out: dict[str, list[ParamAxis]] = {}
    for a in member.axes:
        out.setdefault(a.param, []).append(a)
    return out


def spans_by_axis(axes: Sequence[ParamAxis]) -> dict[int, list[ParamAxis]]:
    """One parameter's indexed axes grouped by tensor axis (a concat of the same value
    twice indexes one axis at two spans), in axis order."""
    out: dict[int, list[ParamAxis]] = {}
    for a in sorted(axes):
        out.setdefault(a.axis, []).append(a)
    return dict(sorted(out.items()))
