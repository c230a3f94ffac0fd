"""Channel-dependency analysis: the tensors whose channel axes must grow (or shrink) together.

Widening one layer's output channels forces every tensor that shares those channels to
change with it: the other producers summed into the same value, the per-channel parameters
of norms on the way, the input columns of every consumer, offsets into concatenations and
the blocks of columns a flatten makes. This module finds that *channel group* once, as one
traversal over each op's channel rule (:class:`~grow_ir.ir.ops.base.Channels` and
``channel_axis`` on its OpDef), so that widening and pruning share it.

Which parameter axes a node's channels index is not tabulated either: it is read off the
op's own parameter-shape function by asking which axes grow when the channels grow by one.
"""

from __future__ import annotations

import math
from collections import Counter, deque
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any, NamedTuple, TypeVar

from grow_ir.errors import GrowError, PassError
from grow_ir.ir.delta import kind_of
from grow_ir.ir.graph import Graph, Node, shared_with, sharers
from grow_ir.ir.ops import OPS
from grow_ir.ir.ops.base import Channels, OpDef, bump_attr
from grow_ir.ir.ops.facts import why_not
from grow_ir.ir.types import TensorType

T = TypeVar("T")

_MISSING = object()
_new_tuple = tuple.__new__  # a named tuple from a plain one, at C speed


def width_ops() -> tuple[str, ...]:
    """The ops with a width ``widen`` can grow (``OpFacts.width_attr``), by name."""
    return tuple(name for name, op in OPS.items() if op.facts.width_attr is not None)


def width_of(node: Node) -> int:
    """The output width of a node whose op has a ``width_attr`` (KeyError otherwise)."""
    attr = node.opdef.facts.width_attr
    if attr is None:
        raise KeyError(f"{node.op} has no width attribute")
    return int(getattr(node.attrs, attr))


class Role(str, Enum):
    """How a node of a group touches the group's channels."""

    PRODUCER = "producer"  # its output channels are the group's: weight rows, bias
    CONSUMER = "consumer"  # reads the group's channels: weight columns (fan-out)
    PER_CHANNEL = "per-channel"  # one parameter entry per channel (norms, depthwise conv)
    PASS = "pass"  # channels flow through without parameters (activations, add, concat...)


class Slot(NamedTuple):
    """Where the group's channels sit in one value.

    Channel ``c`` occupies positions ``offset + c * block`` up to ``offset + (c + 1) * block``
    (exclusive) along ``axis``: ``offset`` comes from concatenation, ``block`` from a flatten
    that folds trailing axes into the channel axis. (A named tuple: the walk hashes and
    compares slots thousands of times, at C speed.)
    """

    value: str
    axis: int
    offset: int = 0
    block: int = 1


class ParamAxis(NamedTuple):
    """One axis of one parameter indexed by the group's channels (a named tuple, ordered
    by its fields).

    Attributes:
        param: the full parameter name (``fc2.weight``).
        axis: the axis of that tensor.
        offset, block: where the channels sit along the axis, as in :class:`Slot`.
        kind: ``"units"`` where each entry belongs to one channel itself (weight rows and
            bias of a producer, per-channel parameters); ``"fan_out"`` where the entries are
            a consumer's weights reading the channel (input columns).
        fold: 1, or the ``groups`` of a grouped convolution whose weight holds the axis one
            group's channels at a time (a conv's input columns, ``[out, in / groups, ...]``):
            the axis indexes the first ``channels / fold`` channels, and each block of rows
            reads its own group's (see ``ChannelGroup.parts``).
    """

    param: str
    axis: int
    offset: int
    block: int
    kind: str
    fold: int = 1


class Member(NamedTuple):
    """A node of the group: its roles, its parameter axes and its width attributes (a
    named tuple: a group of a large network has hundreds).

    ``width_attrs`` maps an attribute that counts the group's channels to the number of its
    units per channel (it grows by ``block`` times the number of new channels); ``pins``
    are attribute values to set so that the node's inside stays as it is (attention's
    ``head_dim``).
    """

    node: str
    roles: tuple[Role, ...]
    axes: tuple[ParamAxis, ...] = ()
    width_attrs: tuple[tuple[str, int], ...] = ()
    pins: tuple[tuple[str, object], ...] = ()

    def describe(self) -> str:
        """``name (role, role)``, for summaries."""
        return f"{self.node} ({', '.join(self.roles)})"  # a Role is the str of its value


_ROLE_RANK = {role: k for k, role in enumerate(Role)}


@dataclass(frozen=True)
class ChannelGroup:
    """The channels of ``start`` and everything that must change with them.

    Attributes:
        start: the producer the analysis started from.
        channels: the number of channels (the same in every slot).
        slots: every value the channels flow through, and where they sit in it.
        members: every node that touches the channels, in graph order.
        norms: layernorm nodes that normalise across the group's channels.
        ties: ``(head, scaler)`` for every member tied to another member's parameters (a
            linear head reading its embedding's weight, ``Node.share``): the shared tensor
            follows the owner's units, and the head's fan-out is realised on ``scaler``,
            the per-channel node (a final norm) that only the head reads.
        parts: 1, or the least common multiple of the ``groups`` of the grouped
            convolutions that make or read the channels (ResNeXt, RegNet). The channels are
            then ``parts`` equal runs, and a change keeps the runs: each run grows or
            shrinks alike, its new channels at its own end, and what a new channel copies
            lies in its own run at the same place in every run (so that a grouped conv's
            columns, which hold one group's channels for each block of rows, are laid out
            alike in every block).
    """

    start: str
    channels: int
    slots: tuple[Slot, ...]
    members: tuple[Member, ...]
    norms: tuple[str, ...] = ()
    ties: tuple[tuple[str, str], ...] = ()
    parts: int = 1

    def member(self, node: str) -> Member:
        """The member called ``node`` (KeyError if it is not in the group)."""
        for m in self.members:
            if m.node == node:
                return m
        raise KeyError(node)

    def with_role(self, role: Role) -> tuple[str, ...]:
        """Names of the members with ``role``, in graph order."""
        return tuple(m.node for m in self.members if role in m.roles)

    @property
    def producers(self) -> tuple[str, ...]:
        """Nodes whose output channels are the group's."""
        return self.with_role(Role.PRODUCER)

    @property
    def consumers(self) -> tuple[str, ...]:
        """Nodes that read the group's channels through weight columns."""
        return self.with_role(Role.CONSUMER)

    def describe(self, most: int = 8) -> str:
        """The members that hold parameters of the channels, for summaries: ``name (role,
        ...)`` for the first ``most`` (in graph order), then how many more, by role (a
        residual stream's group has hundreds)."""
        touched = [m for m in self.members if m.roles != (Role.PASS,)]
        shown = ", ".join(m.describe() for m in touched[:most])
        rest = touched[most:]
        if not rest:
            return shown
        counts = Counter(r for m in rest for r in m.roles if r is not Role.PASS)
        by_role = ", ".join(f"{counts[r]} {r.value}" for r in Role if counts[r])
        return f"{shown} and {len(rest)} more ({by_role})"

    def param_axes(self) -> dict[str, tuple[ParamAxis, ...]]:
        """Every parameter indexed by the channels, with its indexed axes."""
        out: dict[str, list[ParamAxis]] = {}
        for m in self.members:
            for a in m.axes:
                out.setdefault(a.param, []).append(a)
        return {k: tuple(v) for k, v in out.items()}


def channel_group(graph: Graph, node: str) -> ChannelGroup:
    """The channel group of the output channels of ``node`` (a linear, conv or embedding).

    For a depthwise conv (groups = in_channels = out_channels), whose channels are its
    input's, it is the group flowing through it.

    Guarantees, when it returns: growing the channels of every slot together, with the
    parameter axes of every member changed to match, gives a graph that verifies; every
    member is listed once with all its roles; and the group can be widened exactly by
    replicating units (the only caveat, ``norms``, is reported for the caller to decide).

    A grouped convolution (groups > 1, not depthwise) may make the channels or read all
    of them; the group then has ``parts`` (see :class:`ChannelGroup`).

    Raises:
        PassError: naming ``node``, with the reason the channels cannot be changed exactly:
            they reach a graph input or output, an attention block, softmax or pooling
            over the channel axis, a grouped convolution reading only some of them, a
            layer that reads another axis, a concatenation or flatten that splits them, or
            parameters shared between tasks.
    """
    start = graph.node(node)
    opdef = start.opdef
    if _is_depthwise(graph, start):
        # Its channels are its input's: the group is the one flowing through it.
        channels = int(graph.types[node].shape[1])
        return _Walk(graph, node, channels).run(Slot(node, 1))
    if opdef.channels not in (Channels.PRODUCE, Channels.SOURCE):
        raise PassError(
            f"{start.op} '{node}' does not make channels of its own",
            node=node,
            field="node",
            expected=f"a node of op {' / '.join(width_ops())}",
            found=f"{start.op} {start.attr_dict()}",
        )
    axis = _output_axis(graph, start)
    channels = graph.types[node].shape[axis]
    assert isinstance(channels, int)  # producers' widths are attributes, always known
    return _Walk(graph, node, channels).run(Slot(node, axis))


def widenable(graph: Graph) -> list[str]:
    """The nodes whose output channels :func:`channel_group` accepts, in graph order."""
    out = []
    for n in graph.nodes:
        if n.opdef.facts.width_attr is None:
            continue
        try:
            channel_group(graph, n.name)
        except PassError:
            continue
        out.append(n.name)
    return out


# ---- the traversal ---------------------------------------------------------------------


class _Walk:
    """One breadth-first traversal over slots; each slot is visited once, both ways."""

    def __init__(self, graph: Graph, start: str, channels: int) -> None:
        self.graph = graph
        self.start = start
        self.channels = channels
        self.slots: set[Slot] = set()
        self.queue: deque[Slot] = deque()
        self.roles: dict[str, list[Role]] = {}
        # (param, axis, offset, block, kind) per node: ParamAxis's fields, as plain tuples
        # (hashed at C speed) until the members are made
        self.axes: dict[str, set[tuple[str, int, int, int, str]]] = {}
        self.width: dict[str, dict[str, int]] = {}
        self.pins: dict[str, dict[str, object]] = {}
        self.norms: set[str] = set()
        self.parts = 1
        self.outputs = {v: k for k, v in graph.outputs.items()}
        # What an op's rules say of a node depends on its op, attributes and input types
        # alone: in a group most nodes are alike (a stage's batchnorms), so each is asked
        # once. A node's op, attributes and input types are looked up (hashed, compared)
        # once, as its *kind*; the memo is keyed by kind.
        self.memos: dict[tuple, Any] = {}
        self.kinds: dict[tuple, int] = {}
        self.node_kind: dict[str, int] = {}
        self.types_in: dict[str, list[TensorType]] = {}
        # ``follow`` is a function of the node, the input and the slot, and only adds to
        # the walk's sets: reached again (backward from its output after forward from its
        # input) it would add nothing, so ``through`` follows each (node, input, slot) once.
        self.edges: set[tuple[str, int, Slot]] = set()

    def ins(self, node: Node) -> list[TensorType]:
        """The types of ``node``'s inputs (read from the graph once per node)."""
        got = self.types_in.get(node.name)
        if got is None:
            got = self.types_in[node.name] = self.graph.input_types(node)
        return got

    def memo(self, what: str, node: Node, compute: Callable[[], T], *extra: Hashable) -> T:
        """``compute()``, once per ``what``, op, attributes, input types and ``extra``."""
        kind = self.node_kind.get(node.name)
        if kind is None:
            key = kind_of(node, self.ins(node))
            kind = self.node_kind[node.name] = self.kinds.setdefault(key, len(self.kinds))
        key = (what, kind, *extra)
        got = self.memos.get(key, _MISSING)
        if got is _MISSING:
            got = self.memos[key] = compute()
        return got

    def grown_by_input(self, node: Node, axis: int, pins: dict[str, object] | None = None) -> Grown:
        """:func:`_grown_by_input`, memoised."""
        pinned = tuple(sorted(pins.items())) if pins else ()
        return self.memo(
            "input", node, lambda: _grown_by_input(self.graph, node, axis, pins), axis, pinned
        )

    def axis_map(self, node: Node, ins: list[TensorType]) -> Any:
        """The op's ``axis_map`` of ``node``, memoised."""
        axis_map = node.opdef.axis_map
        assert axis_map is not None
        return self.memo("axes", node, lambda: axis_map(node.attrs, ins))

    @staticmethod
    def refusal(start: str, reason: str) -> PassError:
        return PassError(f"its channels cannot change exactly: {reason}", node=start)

    def refuse(self, reason: str) -> PassError:
        return self.refusal(self.start, reason)

    def run(self, first: Slot) -> ChannelGroup:
        self.add(first)
        queue, users, node_map = self.queue, self.graph.users, self.graph.node_map
        while queue:
            slot = queue.popleft()
            self.backward(slot)
            for user in users[slot.value]:
                self.forward(node_map[user], slot)
        order = self.graph.positions
        names = sorted(self.roles, key=order.__getitem__)
        axes, width, pins = self.axes, self.width, self.pins
        rank = _ROLE_RANK.__getitem__
        members = tuple(
            Member(
                node=n,
                roles=tuple(sorted(self.roles[n], key=rank)),
                axes=tuple([_new_tuple(ParamAxis, a) for a in sorted(axes[n])])
                if n in axes
                else (),
                width_attrs=tuple(sorted(width[n].items())) if n in width else (),
                pins=tuple(sorted(pins[n].items())) if n in pins else (),
            )
            for n in names
        )
        ties = self._check_shares(members)
        return ChannelGroup(
            start=self.start,
            channels=self.channels,
            slots=tuple(sorted(self.slots)),
            members=members,
            norms=tuple(sorted(self.norms, key=order.__getitem__)),
            ties=ties,
            parts=self.parts,
        )

    def add(self, slot: Slot) -> None:
        if slot in self.slots:
            return
        if slot.value in self.outputs:
            raise self.refuse(
                f"they reach graph output '{self.outputs[slot.value]}' (node '{slot.value}'), "
                "and widening would change the output's shape"
            )
        if slot.value in self.graph.inputs:
            raise self.refuse(
                f"they reach graph input '{slot.value}', whose shape is fixed by the caller"
            )
        size = self.graph.types[slot.value].shape[slot.axis]
        # Every slot lies inside its axis by construction; a failure here is a bug.
        assert isinstance(size, int) and slot.offset + self.channels * slot.block <= size
        self.slots.add(slot)
        self.queue.append(slot)

    def role(self, node: Node, role: Role) -> None:
        roles = self.roles.get(node.name)
        if roles is None:
            self.roles[node.name] = [role]
        elif role not in roles:
            roles.append(role)

    def param_axes(self, node: Node, grown: Grown, slot: Slot, kind: str) -> None:
        if not grown:
            return
        prefix = node.param_prefix
        found = self.axes.setdefault(node.name, set())
        for local, (axis, fold) in grown.items():
            found.add((f"{prefix}.{local}", axis, slot.offset, slot.block, kind, fold))

    def grouped(self, node: Node, slot: Slot, size: object) -> None:
        """Record a grouped conv's ``groups`` (a producer's or consumer's, not depthwise) in
        the group's ``parts``; it must make or read the channels whole (``size`` of them)."""
        groups = groups_of(node)
        if groups > 1:
            if slot.offset or slot.block != 1 or self.channels != size:
                raise self.refuse(
                    f"{node.op} '{node.name}' has groups={groups} and reads {size} channels, "
                    "only some of them the group's, so its groups would not grow alike"
                )
            self.parts = math.lcm(self.parts, groups)

    # ---- backward: from a value to the node that defines it -------------------------

    def backward(self, slot: Slot) -> None:
        node = self.graph.node_map[slot.value]  # a slot's value is a node (add checks)
        rule = node.opdef.channels
        if rule in (Channels.PRODUCE, Channels.SOURCE) and not _is_depthwise(self.graph, node):
            self.producer(node, slot)
            return
        for k, in_slot in self.tie_output(node, slot):
            self.through(node, k, in_slot)

    def producer(self, node: Node, slot: Slot) -> None:
        axis = self.memo("out", node, lambda: _output_axis(self.graph, node))
        if slot.axis != axis:
            raise self.refuse(
                f"{node.op} '{node.name}' makes channels on axis {axis}, but the group's "
                f"channels are on axis {slot.axis} of its output"
            )
        # A producer's output axis holds exactly the group (offset 0, block 1): a slot lies
        # inside its axis and the axis has ``channels`` entries.
        self.grouped(node, slot, self.channels)
        self.role(node, Role.PRODUCER)
        grown = self.memo("width", node, lambda: _grown_by_width(self.graph, node))
        self.param_axes(node, grown, slot, "units")
        self.width.setdefault(node.name, {})[_width_attr(node)] = 1

    def tie_output(self, node: Node, out: Slot) -> list[tuple[int, Slot]]:
        """The input slots tied to a slot of ``node``'s output."""
        rule = node.opdef.channels
        ins = self.ins(node)
        if rule is Channels.OPAQUE:
            raise self.refuse(_opaque_reason(node))
        if rule is Channels.CONCAT:
            cat = node.opdef.channel_axis(node.attrs, ins)
            if out.axis != cat:
                return [(k, Slot(v, out.axis, out.offset, out.block)) for k, v in _inputs(node)]
            start = 0
            for k, (v, t) in enumerate(zip(node.inputs, ins)):
                size = t.shape[cat]
                assert isinstance(size, int)
                end = out.offset + self.channels * out.block
                if start <= out.offset and end <= start + size:
                    return [(k, Slot(v, cat, out.offset - start, out.block))]
                if out.offset < start + size:
                    raise self.refuse(
                        f"they fill positions {out.offset}..{end - 1} of concat "
                        f"'{node.name}', which straddle more than one of its inputs"
                    )
                start += size
            raise AssertionError("a slot outside its concat")  # slots lie inside their axis
        if rule is Channels.FLATTEN:
            return [(0, self.unflatten(node, ins[0], out))]
        if rule in (Channels.JOIN, Channels.MOVE):
            return self.moved_inputs(node, ins, out)
        if rule is Channels.TENSOR:
            self.tensor(node, ins, out)
            return []
        # MAP and NORM (and a depthwise conv): one input, channels on the same axis.
        return [(0, Slot(node.inputs[0], out.axis, out.offset, out.block))]

    # ---- forward: from a value to a node that reads it ------------------------------

    def forward(self, node: Node, slot: Slot) -> None:
        for k, v in enumerate(node.inputs):
            if v == slot.value:
                self.through(node, k, slot)

    def through(self, node: Node, k: int, slot: Slot) -> None:
        """Handle ``node`` reading the group at input ``k`` in ``slot`` (once: see ``edges``)."""
        edge = (node.name, k, slot)
        if edge not in self.edges:
            self.edges.add(edge)
            self.follow(node, k, slot)

    def follow(self, node: Node, k: int, slot: Slot) -> None:
        """What ``node`` reading the group at input ``k`` in ``slot`` adds to the walk."""
        graph = self.graph
        opdef = node.opdef
        ins = self.ins(node)
        rule = opdef.channels
        self.add(slot)  # reached backward, the input slot is new
        if rule is Channels.OPAQUE:
            raise self.refuse(_opaque_reason(node))
        if rule is Channels.SOURCE:
            raise self.refuse(f"{node.op} '{node.name}' reads them as indices")
        if rule is Channels.PRODUCE and not _is_depthwise(graph, node):
            self.consumer(node, slot, ins)
            return
        if rule in (Channels.JOIN, Channels.MOVE):
            self.move(node, k, slot, ins)
            return
        if rule is Channels.TENSOR:  # reads its input's batch size only
            return
        if rule is Channels.CONCAT:
            self.role(node, Role.PASS)
            cat = opdef.channel_axis(node.attrs, ins)
            if slot.axis != cat:  # joined along another axis: all inputs share the channels
                for v in node.inputs:
                    self.add(Slot(v, slot.axis, slot.offset, slot.block))
                self.add(Slot(node.name, slot.axis, slot.offset, slot.block))
                return
            start = sum(int(t.shape[cat]) for t in ins[:k])  # type: ignore[arg-type]
            self.add(Slot(node.name, cat, start + slot.offset, slot.block))
            return
        if rule is Channels.FLATTEN:
            self.role(node, Role.PASS)
            self.add(self.flatten(node, ins[0], slot))
            return
        if rule is Channels.THROUGH:
            self.through_weights(node, slot, ins)
            return
        self.per_channel(node, slot, ins)

    def move(self, node: Node, k: int, slot: Slot, ins: list[TensorType]) -> None:
        """A JOIN or MOVE node reading the group at input ``k``: the axis lands whole on
        one output axis (its size attribute, if any, follows), or the walk refuses."""
        opdef = node.opdef
        assert opdef.axis_map is not None, f"{node.op} moves axes but declares no axis_map"
        target = self.axis_map(node, ins)[k][slot.axis]
        if target is None:  # the op does not read these values (only their count)
            return
        if not isinstance(target, int):
            raise self.refuse(
                f"{node.op} '{node.name}' "
                + why_not(target, f"does not keep axis {slot.axis} of its input whole")
            )
        self.role(node, Role.PASS)
        key = opdef.size_attr(node.attrs, ins, target)
        if key is not None:
            self.width.setdefault(node.name, {})[key] = slot.block
        self.add(Slot(node.name, target, slot.offset, slot.block))

    def moved_inputs(self, node: Node, ins: list[TensorType], out: Slot) -> list[tuple[int, Slot]]:
        """The input slots of a JOIN or MOVE node whose axes land on ``out``'s axis."""
        assert node.opdef.axis_map is not None
        tied = []
        for k, axes in enumerate(self.axis_map(node, ins)):
            for i, target in enumerate(axes):
                if isinstance(target, int) and target == out.axis:
                    tied.append((k, Slot(node.inputs[k], i, out.offset, out.block)))
        return tied

    def tensor(self, node: Node, ins: list[TensorType], out: Slot) -> None:
        """A TENSOR node (a learned tensor as a value): its parameter's entries along the
        output axis are the channels' own, and its shape attribute follows them."""
        key = node.opdef.size_attr(node.attrs, ins, out.axis)
        if key is None:
            raise self.refuse(
                f"{node.op} '{node.name}' repeats one tensor along axis {out.axis}, where "
                "the group's channels are"
            )
        self.role(node, Role.PER_CHANNEL)
        self.param_axes(node, _grown_by_attr(node, ins, key), out, "units")
        self.width.setdefault(node.name, {})[key] = out.block

    def through_weights(self, node: Node, slot: Slot, ins: list[TensorType]) -> None:
        """A THROUGH node (attention): its weights read the channels (fan-out columns) and
        write them back (rows), so it is a consumer and a producer of the group at once."""
        rule = node.opdef.through
        assert rule is not None, f"{node.op} is THROUGH but declares no ThroughRule"
        axis = node.opdef.channel_axis(node.attrs, ins)
        size = ins[0].shape[slot.axis]
        if slot.axis != axis or slot.offset != 0 or self.channels * slot.block != size:
            raise self.refuse(
                f"{node.op} '{node.name}' reads and writes all {size} entries of axis {axis} "
                "through its weights, and the group's channels are not exactly those"
            )
        pins = rule.pin(node.attrs, ins)
        self.pins.setdefault(node.name, {}).update(pins)
        self.role(node, Role.CONSUMER)
        self.role(node, Role.PRODUCER)
        grown = self.grown_by_input(node, axis, pins)
        for names, kind in ((rule.reads, "fan_out"), (rule.writes, "units")):
            self.param_axes(node, {k: v for k, v in grown.items() if k in names}, slot, kind)
        self.add(Slot(node.name, slot.axis, slot.offset, slot.block))

    def consumer(self, node: Node, slot: Slot, ins: list[TensorType]) -> None:
        axis = node.opdef.channel_axis(node.attrs, ins)
        if slot.axis != axis:
            raise self.refuse(
                f"{node.op} '{node.name}' reads axis {axis} of '{slot.value}', but the group's "
                f"channels are on axis {slot.axis}, so its weights do not follow the channels"
            )
        self.grouped(node, slot, ins[0].shape[axis])
        self.role(node, Role.CONSUMER)
        self.param_axes(node, self.grown_by_input(node, slot.axis), slot, "fan_out")

    def per_channel(self, node: Node, slot: Slot, ins: list[TensorType]) -> None:
        """A MAP or NORM node (or depthwise conv): channels pass through on the same axis."""
        opdef = node.opdef
        axis = opdef.channel_axis(node.attrs, ins)
        along = opdef.facts.normalises
        out = Slot(node.name, slot.axis, slot.offset, slot.block)
        if axis is None or (along and slot.axis != axis):
            # Elementwise, or normalising over another axis: each channel maps to itself.
            self.role(node, Role.PASS)
            self.add(out)
            return
        if slot.axis != axis:
            raise self.refuse(
                f"{node.op} '{node.name}' keeps channels on axis {axis} and mixes values "
                f"across axis {slot.axis}, where the group's channels are"
            )
        if along and opdef.channels is not Channels.NORM:
            raise self.refuse(
                f"{node.op} '{node.name}' normalises over the channel axis ({axis}): every "
                "output depends on every channel, and no replication keeps it exact"
            )
        if along:
            size = ins[0].shape[axis]
            if slot.offset != 0 or self.channels * slot.block != size:
                raise self.refuse(
                    f"{node.op} '{node.name}' normalises over axis {axis} of size {size}, "
                    f"which holds other channels besides the group's"
                )
            self.norms.add(node.name)
        grown = self.grown_by_input(node, axis)
        depthwise = _is_depthwise(self.graph, node)
        if depthwise:
            self.width.setdefault(node.name, {}).update(
                {"out_channels": slot.block, "groups": slot.block}
            )
        self.role(node, Role.PER_CHANNEL if grown else Role.PASS)
        self.param_axes(node, grown, slot, "units")
        self.add(out)

    # ---- flatten ----------------------------------------------------------------------

    def flatten(self, node: Node, x: TensorType, slot: Slot) -> Slot:
        """The output slot of a flatten reading the group in ``slot``."""
        start, end = _flatten_range(node, x)
        if slot.axis < start:
            return Slot(node.name, slot.axis, slot.offset, slot.block)
        if slot.axis > end:
            return Slot(node.name, slot.axis - (end - start), slot.offset, slot.block)
        if slot.axis != start:
            raise self.refuse(
                f"flatten '{node.name}' folds axis {slot.axis}, which holds the channels, "
                f"behind axis {start}: each channel would be scattered, not one block"
            )
        inner = math.prod(int(d) for d in x.shape[start + 1 : end + 1])  # type: ignore[arg-type]
        return Slot(node.name, start, slot.offset * inner, slot.block * inner)

    def unflatten(self, node: Node, x: TensorType, out: Slot) -> Slot:
        """The input slot of a flatten whose output holds the group in ``out``."""
        start, end = _flatten_range(node, x)
        if out.axis < start:
            return Slot(node.inputs[0], out.axis, out.offset, out.block)
        if out.axis > start:
            return Slot(node.inputs[0], out.axis + (end - start), out.offset, out.block)
        inner = math.prod(int(d) for d in x.shape[start + 1 : end + 1])  # type: ignore[arg-type]
        if out.offset % inner or out.block % inner:
            raise self.refuse(
                f"flatten '{node.name}' makes blocks of {inner} columns per input channel, "
                f"which do not line up with the group's blocks of {out.block}"
            )
        return Slot(node.inputs[0], start, out.offset // inner, out.block // inner)

    # ---- sharing -----------------------------------------------------------------------

    def _check_shares(self, members: tuple[Member, ...]) -> tuple[tuple[str, str], ...]:
        """Refuse members sharing parameters across tasks; return the ties (``(head,
        scaler)``) that can follow the channels exactly, refusing the others."""
        graph = self.graph
        sharing = sharers(graph.nodes)
        if not sharing:  # no node shares parameters: nothing to refuse, no ties
            return ()
        by_name = {m.node: m for m in members}
        ties = []
        shared = {n.share for n in sharing if not n.tied(graph)}
        for m in members:
            node = graph.node(m.node)
            if node.tied(graph) and m.axes:
                ties.append((node.name, self._tie_scaler(node, m, by_name)))
                continue
            if m.axes and ((node.share is not None) or node.name in shared):
                other = shared_with(graph, node)
                raise self.refuse(
                    f"{node.op} '{node.name}' shares its parameters with '{other}' (another "
                    "task's path), and changing them would change that task"
                )
        return tuple(ties)

    def _tie_scaler(self, node: Node, member: Member, by_name: dict[str, Member]) -> str:
        """The per-channel node that carries tied ``node``'s fan-out (see ``ties``)."""
        owner = by_name.get(node.share or "")
        mine = {(a.param, a.axis) for a in member.axes if a.kind == "fan_out"}
        theirs = {(a.param, a.axis) for a in owner.axes if a.kind == "units"} if owner else set()
        if not mine or mine != {(a.param, a.axis) for a in member.axes} or not mine <= theirs:
            raise self.refuse(
                f"{node.op} '{node.name}' is tied to the parameters of '{node.share}', and "
                "only a tie that reads the channels its owner makes (a head reading its "
                "embedding's columns) can follow them"
            )
        source = self.graph.node_map.get(node.inputs[0])
        scaler = by_name.get(node.inputs[0])
        if (
            source is None
            or scaler is None
            or Role.PER_CHANNEL not in scaler.roles
            or self.graph.users[source.name] != (node.name,)
            or source.share is not None
            or any(a.offset or a.block != 1 for a in scaler.axes)
        ):
            raise self.refuse(
                f"{node.op} '{node.name}' is tied to '{node.share}': the shared weight's new "
                "columns follow the embedding, so the head's fan-out is carried by the "
                f"per-channel parameters of the node it reads ('{node.inputs[0]}'), which "
                "must be a norm or per-channel layer read by the head alone"
            )
        return source.name


# ---- rules read off each op's definition ------------------------------------------------


def _inputs(node: Node) -> list[tuple[int, str]]:
    return list(enumerate(node.inputs))


def _is_depthwise(graph: Graph, node: Node) -> bool:
    """A conv with one filter per input channel: a per-channel map in channel terms."""
    if node.opdef.channels is not Channels.PRODUCE:
        return False
    groups = groups_of(node)
    if groups == 1:
        return False
    c_in = graph.input_types(node)[0].shape[1]
    return groups == c_in == node.attrs.out_channels


def is_grouped(graph: Graph, node: Node) -> bool:
    """Whether ``node`` is a grouped convolution that splits a channel group into parts
    (``groups`` > 1 and not depthwise: see ``ChannelGroup.parts``)."""
    return groups_of(node) > 1 and not _is_depthwise(graph, node)


def groups_of(node: Node) -> int:
    """The node's ``groups`` attribute, 1 for an op without one (read from the attribute
    model's fields: ``getattr`` with a default raises and catches inside pydantic)."""
    return vars(node.attrs).get("groups", 1)


def _opaque_reason(node: Node) -> str:
    return (
        f"{node.op} '{node.name}' mixes its channels in a way no widening can follow "
        "(its op declares Channels.OPAQUE)"
    )


def _flatten_range(node: Node, x: TensorType) -> tuple[int, int]:
    return node.attrs.start_dim % x.rank, node.attrs.end_dim % x.rank


def _width_attr(node: Node) -> str:
    attr = node.opdef.facts.width_attr
    assert attr is not None, f"{node.op} makes channels but declares no width_attr"
    return attr


def _bump_width(node: Node, by: int) -> Node:
    attr = _width_attr(node)
    return node.replace(attrs=node.attrs.model_copy(update={attr: getattr(node.attrs, attr) + by}))


def _output_axis(graph: Graph, node: Node) -> int:
    """The axis of ``node``'s output that its width attribute sizes."""
    ins = graph.input_types(node)
    by = groups_of(node)  # a grouped conv's width grows a group at a time
    before = node.opdef.infer(node.attrs, ins).shape
    after = node.opdef.infer(_bump_width(node, by).attrs, ins).shape
    axis, fold = _grown_axis(before, after, f"the output of {node.op}", by)
    assert fold == 1, f"{node.op}'s output does not grow by its width"
    return axis


Grown = Mapping[str, tuple[int, int]]
"""Parameter axes that grow with a node's channels: ``(axis, fold)`` by local name."""


def _grown_by_width(graph: Graph, node: Node) -> Grown:
    """Parameter axes (by local name) that grow with the node's output width."""
    ins = graph.input_types(node)
    by = groups_of(node)  # a grouped conv's width grows a group at a time
    bumped = _bump_width(node, by)
    return _diff_params(node.opdef, node.attrs, ins, bumped.attrs, ins, by)


def _grown_by_attr(node: Node, ins: list[TensorType], key: str) -> Grown:
    """Parameter axes (by local name) that grow with the attribute entry ``key``."""
    bigger = bump_attr(node.attrs, key, 1)
    return _diff_params(node.opdef, node.attrs, ins, bigger, ins)


def _grown_by_input(
    graph: Graph, node: Node, axis: int, pins: dict[str, object] | None = None
) -> Grown:
    """Parameter axes (by local name) that grow with ``axis`` of the node's first input,
    with the attributes ``pins`` set on both sides.

    A depthwise conv grows its channel-counting attributes with its input; a grouped conv
    takes a channel more in every group.
    """
    ins = graph.input_types(node)
    size = ins[0].shape[axis]
    assert isinstance(size, int)
    depthwise = _is_depthwise(graph, node)
    by = 1 if depthwise else groups_of(node)
    bigger = [ins[0].with_dim(axis, size + by), *ins[1:]]
    base = node.attrs.model_copy(update=pins) if pins else node.attrs
    attrs = base
    if depthwise:
        attrs = attrs.model_copy(update={"out_channels": size + 1, "groups": size + 1})
    return _diff_params(node.opdef, base, ins, attrs, bigger, by)


def _diff_params(
    opdef: OpDef,
    attrs: object,
    ins: list[TensorType],
    attrs2: object,
    ins2: list[TensorType],
    by: int = 1,
) -> Grown:
    """The axes that grow from the first parameters to the second, where the channels grew
    by ``by``: by ``by`` entries (fold 1), or, ``by`` being a conv's groups, by one (fold
    ``by``: the axis holds one group's channels)."""
    try:
        before = opdef.params(attrs, ins)
        after = opdef.params(attrs2, ins2)
    except GrowError as exc:  # the op's shape rules reject one more channel: a bug here
        raise AssertionError(f"{opdef.name} cannot take {by} more channel(s): {exc}") from exc
    return {
        k: _grown_axis(before[k].shape, after[k].shape, f"{opdef.name}.{k}", by)
        for k in before
        if before[k].shape != after[k].shape
    }


def _grown_axis(before: tuple, after: tuple, what: str, by: int = 1) -> tuple[int, int]:
    """``(axis, fold)`` of the one axis that grew from ``before`` to ``after``."""
    grown = [i for i, (a, b) in enumerate(zip(before, after)) if a != b]
    step = after[grown[0]] - before[grown[0]] if len(grown) == 1 else 0
    if len(before) != len(after) or len(grown) != 1 or step not in (by, 1):
        raise AssertionError(f"{what} does not grow by one entry per channel")
    return grown[0], by // step
