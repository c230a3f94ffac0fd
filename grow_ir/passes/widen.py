"""The ``widen`` pass: more output channels for a linear, conv or embedding node.

The whole channel group grows (see :mod:`grow_ir.passes.channels`): every producer joined
through ``add``, the per-channel parameters on the way, concat offsets, flatten blocks, and
every consumer's input columns. How new units are filled is one small function per init,
registered in :data:`grow_ir.passes.inits.WIDTH_INITS` (``net2net`` and ``zero`` here,
``lemon`` and ``gradmax`` in their own modules); the tensor surgery that follows is shared
by all of them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import torch

from grow_ir.errors import GrowError, PassError
from grow_ir.ir.graph import Graph, Node
from grow_ir.ir.init import check_size
from grow_ir.ir.ops import Channels
from grow_ir.passes.args import Choice, Count, NodeName, Seed
from grow_ir.passes.base import Origin, PassResult, register_pass
from grow_ir.passes.channels import (
    ChannelGroup,
    Member,
    ParamAxis,
    Role,
    channel_group,
    width_ops,
)
from grow_ir.passes.initializers import gauss, init_layer
from grow_ir.passes.inits import (
    WIDTH_INITS,
    InitContext,
    NewUnits,
    register_width_init,
    width_init,
)
from grow_ir.passes.regroup import (
    AxisPlan,
    axes_by_param,
    axis_plan,
    grown_layout,
    resize_nodes,
    spans_by_axis,
)
from grow_ir.passes.rewrite import node_of_kind, replace_nodes
from grow_ir.passes.stages import refresh_stage_params

# ---- how new units are filled: one registered function per init ------------------------


def _refuse(ctx: InitContext, reason: str, expected: str, found: str) -> PassError:
    return PassError(reason, node=ctx.node, field="init", expected=expected, found=found)


@register_width_init(
    "net2net",
    needs_probe=False,
    doc="replicate units, divide their outgoing weights by the copy count (exact)",
)
def _net2net(ctx: InitContext) -> NewUnits:
    """Replicate old units chosen by a seeded, balanced mapping (Net2WiderNet).

    Each round draws a random permutation of the old units, so every unit is copied either
    ``floor`` or ``ceil`` of ``new / old`` times: no unit's fan-out is split much more
    finely than another's. With a layernorm across the channels, every unit must appear
    the same number of times (then the mean and variance of the replicated vector are the
    old ones, the duplication argument of LEMON): the width must be a multiple.
    """
    old, new, parts = ctx.old, ctx.width, ctx.group.parts
    if ctx.group.norms and new % old:
        norm = ctx.group.norms[0]
        raise PassError(
            f"net2net through layernorm '{norm}' is exact only when every unit is copied "
            "the same number of times, so that its mean and variance stay the same",
            node=ctx.node,
            field="width",
            expected=f"a multiple of the current width {old}, or init 'lemon' (any width)",
            found=str(new),
        )
    # A group in parts (grouped convs) copies within each part, the same units in every
    # part (see ChannelGroup.parts): the draw is made for one part and repeated.
    run, grown = old // parts, (new - old) // parts
    rounds = -(-grown // run)
    drawn = [torch.randperm(run, generator=ctx.gen).tolist() for _ in range(rounds)]
    local = tuple(u for r in drawn for u in r)[:grown]
    copies = tuple(p * run + u for p in range(parts) for u in local)
    note = f"; the same units copied in each of {parts} parts" if parts > 1 else ""
    if ctx.group.norms:
        note += f"; every unit {new // old}-fold, which keeps {', '.join(ctx.group.norms)} exact"
    return NewUnits(copies, fan_in="copy", fan_out="split", note=note)


@register_width_init("zero", needs_probe=False, doc="random fan-in, zero fan-out (exact)")
def _zero(ctx: InitContext) -> NewUnits:
    """New units with PyTorch's default fan-in and zero fan-out (batchnorm as identity)."""
    if ctx.group.norms:
        norm = ctx.group.norms[0]
        raise _refuse(
            ctx,
            f"init 'zero' adds units whose nonzero activations enter the mean and variance "
            f"of layernorm '{norm}', which would change the old units' outputs",
            "init 'lemon' (any width), or 'net2net' with a multiple of the width",
            "'zero'",
        )
    return NewUnits((-1,) * (ctx.width - ctx.old), fan_in="default", fan_out="zero")


# ---- the pass ---------------------------------------------------------------------------


@register_pass("widen")
def widen(
    graph: Graph,
    node: NodeName,
    width: Count,
    init: Choice = "net2net",
    seed: Seed = 0,
    noise: float = 0.0,
    probe: Any = None,
) -> PassResult:
    """Grow the output channels of ``node`` (linear, conv1d/2d, embedding) to ``width``.

    The whole channel group grows with it. ``init="net2net"`` replicates old units chosen
    by a generator seeded with ``seed`` and divides each consumer column among the copies;
    ``init="zero"`` gives new units PyTorch's default fan-in and zero fan-out, and new
    batchnorm channels the identity. ``init="lemon"`` (LEMON) makes each new unit the mean
    of the old ones with zero fan-out and rescales the layernorms across the group (weight
    by ``sqrt(old/new)``, eps by ``old/new``): exact at any width through a pre-norm
    transformer's residual stream (see :mod:`grow_ir.passes.lemon`), where net2net needs
    a multiple of the width. ``noise > 0`` (net2net only) adds N(0, (noise·std)²),
    std that of the producer's weight, to the copies' fan-in to break their symmetry.
    ``init="gradmax"`` (GradMax) gives new units zero fan-in and the fan-out that maximises
    the gradient their fan-in gets on ``probe`` (a :class:`grow_ir.passes.gradmax.Probe`
    or a mapping of its fields, given from Python or by the trainer), and sets
    ``grad_at_zero=1`` on the group's relus so that they learn.

    Guarantees: the input graph and its tensors are untouched; the result is preserved
    (same outputs in eval mode, up to rounding) unless ``noise > 0``; ``origins`` maps every
    changed parameter to its old tensor with an index map per grown axis (-1 for a fresh
    entry) and the factors of split columns.

    Raises:
        PassError: ``node`` is no linear/conv/embedding, ``init`` is unknown, ``width`` is
            not larger, the group cannot be widened exactly (see ``channel_group``), or
            ``probe`` is missing for gradmax or given to another init.
    """
    node_of_kind(graph, node, width_ops(), "widen")
    spec = width_init(init, node)
    if (probe is not None) != spec.needs_probe:
        probing = [name for name, i in WIDTH_INITS.items() if i.needs_probe]
        raise PassError(
            f"init '{init}' needs a probe batch (inputs, targets, loss), which only Python "
            "code or the trainer can give, not a plan file"
            if probe is None
            else f"a probe batch is read only by init {' / '.join(sorted(probing))}",
            node=node,
            field="probe",
            expected="probe=Probe(inputs=..., targets=..., loss=...)" if probe is None else "none",
            found="none" if probe is None else type(probe).__name__,
        )
    if isinstance(noise, bool) or not isinstance(noise, (int, float)) or not noise >= 0:
        raise PassError(
            "bad noise", node=node, field="noise", expected="a number >= 0", found=repr(noise)
        )
    group = channel_group(graph, node)
    old = group.channels
    if isinstance(width, bool) or not isinstance(width, int) or width <= old:
        raise PassError(
            "the new width must be larger than the current one",
            node=node,
            field="width",
            expected=f"an integer above {old}",
            found=repr(width),
        )
    if (width - old) % group.parts:
        raise PassError(
            f"the group's channels are {group.parts} equal parts (the groups of its grouped "
            "convolutions), and every part grows alike",
            node=node,
            field="width",
            expected=f"{old} plus a multiple of {group.parts}",
            found=repr(width),
        )
    shaped = resize_nodes(graph, group, width - old)
    try:
        check_size(shaped)
    except GrowError as exc:
        raise PassError(
            exc.reason, node=node, field="width", expected=exc.expected, found=exc.found
        ) from None
    gen = torch.Generator().manual_seed(seed)
    units = spec.fill(InitContext(graph, node, group, old, width, gen, probe))
    if noise and units.fan_in != "copy":
        raise PassError(
            f"noise breaks the symmetry of copied units, and init '{init}' copies none",
            node=node,
            field="noise",
            expected="0",
            found=repr(noise),
        )
    _check_parts(group, units, init)
    new_graph, origins = grow_group(graph, group, width, units, gen, noise, shaped=shaped)
    new_graph = refresh_stage_params(new_graph)
    summary = (
        f"widened {node} from {old} to {width} units ({init}{units.note}), "
        f"group: {group.describe()}"
    )
    reason = ""
    if noise:
        reason = (
            f"noise (std {noise:g} of each producer weight's std) was added to the copies' "
            "fan-in, so they no longer equal the units they copy"
        )
    return PassResult(
        new_graph, preserved=not noise, summary=summary, reason=reason, origins=origins
    )


def grow_group(
    graph: Graph,
    group: ChannelGroup,
    width: int,
    units: NewUnits,
    gen: torch.Generator,
    noise: float = 0.0,
    *,
    shaped: Graph | None = None,
) -> tuple[Graph, dict[str, Origin]]:
    """``graph`` with ``group`` grown to ``width`` channels filled as ``units`` says.

    ``shaped``, when given, is ``graph`` with the group's width attributes already grown
    to ``width`` (``widen`` builds it for its size check), so it is not built again.

    Guarantees: ``graph`` is untouched; every width attribute of the group and every
    parameter indexed by its channels is grown, with ``units.attrs`` applied; the origins
    map each changed parameter to its old tensor. The result is not verified yet.
    """
    if shaped is None:
        shaped = resize_nodes(graph, group, width - group.channels)
    if units.attrs:
        shaped = _set_attrs(shaped, units.attrs)
    params, origins = {}, {}
    tied = {head for head, _ in group.ties}
    axes_of = _Axes(group.channels, units, group.parts)
    for m in group.members:
        if m.node in tied:  # its tensors are its owner's, grown as the owner's units
            continue
        params_m, origins_m = _grow_member(graph, shaped, m, axes_of, noise, gen)
        params.update(params_m)
        origins.update(origins_m)
    for head, scaler in group.ties:
        _carry_tied_fan_out(group, scaler, width, units, params, origins, head)
    return shaped.replace(params={**shaped.params, **params}), origins


def _check_parts(group: ChannelGroup, units: NewUnits, init: str) -> None:
    """Refuse new units that copy across a group's parts, or not alike in every part."""
    if group.parts == 1:
        return
    run, grown = group.channels // group.parts, len(units.copies) // group.parts
    first = units.copies[:grown]
    for p in range(group.parts):
        mine = units.copies[p * grown : (p + 1) * grown]
        if any((c - p * run if c >= 0 else -1) != f for c, f in zip(mine, first)):
            raise PassError(
                f"init '{init}' copies units across the {group.parts} parts of a group that "
                "grouped convolutions read, or unlike in each part",
                node=group.start,
                field="init",
                expected="net2net, zero or lemon",
                found=repr(init),
            )


def _carry_tied_fan_out(
    group: ChannelGroup,
    scaler: str,
    width: int,
    units: NewUnits,
    params: dict[str, torch.Tensor],
    origins: dict[str, Origin],
    head: str,
) -> None:
    """Give tied ``head``'s fan-out to ``scaler``: its weight reads the grown channels with
    the owner's new columns (copies, means or zeros), so the scaler's per-channel
    parameters are scaled channel by channel by the factors a consumer's columns would
    have got: ``1 / copies`` of a split unit, 0 for a unit read with zero (a scaled
    channel of a per-channel map scales its output, which the head reads linearly)."""
    old = group.channels
    layout = grown_layout(old, units.copies, group.parts)
    if units.fan_out == "split":
        counts = units.counts(old)
        factors = [1.0 / counts[u] for u in layout]
    elif units.fan_out == "zero":
        factors = [1.0] * old + [0.0] * (width - old)
    else:
        raise PassError(
            f"'{head}' is tied to its embedding's weight, whose new columns follow the "
            "embedding; the given fan-out of this init cannot be placed on it",
            node=group.start,
            field="init",
            expected="init net2net, lemon or zero",
            found=f"fan-out '{units.fan_out}'",
        )
    if all(f == 1.0 for f in factors):
        return
    for axis in group.member(scaler).axes:
        t = params[axis.param]
        f = torch.tensor(factors, dtype=torch.float64)
        params[axis.param] = (t.double() * f).to(t.dtype).contiguous()
        origin = origins[axis.param]
        before = origin.scale.get(0, (1.0,) * width)
        scale = {**origin.scale, 0: tuple(a * b for a, b in zip(before, factors))}
        origins[axis.param] = Origin(origin.source, origin.index, scale, origin.fresh)


# ---- structure --------------------------------------------------------------------------


def _set_attrs(graph: Graph, attrs: Mapping[str, Mapping[str, Any]]) -> Graph:
    """The graph with attribute values set on some nodes (``{node: {attr: value}}``)."""
    changed = {}
    for name, values in attrs.items():
        n = graph.node(name)
        changed[name] = n.replace(attrs=n.attrs.model_copy(update=dict(values)))
    return replace_nodes(graph, changed)


# ---- tensors ----------------------------------------------------------------------------


def _zero_fan_in(member: Member, node: Node, local: str, value: torch.Tensor) -> torch.Tensor:
    """Parameter ``local`` of the new channels (``value``: the op's default) under zero fan-in.

    Producers' rows are zero, and so are a learned tensor's new entries (``parameter``: a
    class token, a positional table); per-channel layers keep the channel and treat every new unit
    alike (batchnorm's identity statistics, a Dirac depthwise kernel, no bias), so a new
    unit is exactly 0 and the same per-channel maps lie between any new unit's fan-in and
    fan-out (which GradMax's gradient formula needs).
    """
    if Role.PRODUCER in member.roles or local == "bias":
        return torch.zeros_like(value)
    if node.opdef.channels is Channels.TENSOR:  # a learned tensor's new entries make channels
        return torch.zeros_like(value)
    if node.opdef.channels is Channels.PRODUCE and local == "weight":  # a depthwise conv
        return torch.nn.init.dirac_(torch.zeros_like(value), groups=value.shape[0])
    return value


def _along(values: Sequence, axis: int, like: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A tensor of ``values`` shaped to broadcast along ``axis`` of ``like``."""
    shape = [1] * like.dim()
    shape[axis] = len(values)
    return torch.tensor(values, dtype=dtype).reshape(shape)


def _grow_mask(
    t: torch.Tensor, param: str, axes: Sequence[ParamAxis], old: int, layout: Sequence[int]
) -> tuple[torch.Tensor, Origin]:
    """A connection mask grown with its weight: copied units copy their entries, every
    fresh entry is 1 (a new connection is live, whatever its weight), nothing is scaled."""
    index: dict[int, tuple[int, ...]] = {}
    for axis, on_axis in spans_by_axis(axes).items():
        spans = [(a.offset, a.block) for a in on_axis]
        plan = axis_plan(t.shape[axis], spans, old, layout, on_axis[0].fold)
        t = t.index_select(axis, torch.tensor(plan.index).clamp(min=0))
        fresh = _along([i < 0 for i in plan.index], axis, t, torch.bool)
        t = torch.where(fresh, torch.ones((), dtype=t.dtype), t)
        index[axis] = plan.index
    return t.contiguous(), Origin(source=param, index=index)


@dataclass(frozen=True)
class _Axis:
    """One re-laid-out axis of one size and set of spans, and the tensors widen applies
    along it (shaped to broadcast over a tensor of ``ndim`` dims)."""

    axis: int  # the tensor axis it lays out
    old: int  # the channels it holds (fewer than the group's on a grouped conv's columns)
    plan: AxisPlan
    gather: torch.Tensor  # the source position of every new position (0 for a fresh one)
    dropped: torch.Tensor | None  # where the gathered entry is zeroed (None: nowhere)
    index: tuple[int, ...]  # the Origin index: the source position, -1 for a new entry
    factors: tuple[float, ...] | None  # split fan-out's scale per position (None: all 1)
    scaled_at: torch.Tensor | None  # the positions whose factor is not 1
    scale: torch.Tensor | None  # their factors, float64: only they are computed (bitwise
    # the same as scaling every slice, and a split unit's few columns of a wide layer)
    scaled_all: bool  # every position is scaled (``scaled_at`` lists them all, in order)
    fill: torch.Tensor | None  # positions with no source (None: none)
    copied: torch.Tensor | None  # new positions copying a unit (None: none)
    exact: dict[torch.dtype, torch.Tensor | None] = field(
        default_factory=dict, repr=False, compare=False
    )  # ``scale`` by dtype, where every factor is exact in it (see ``split``)

    @cached_property
    def new_at(self) -> torch.Tensor:
        """The new positions, in order (made when an init gives their entries)."""
        return torch.tensor([p for p, n in enumerate(self.plan.new) if n], dtype=torch.long)

    def gathered(self, t: torch.Tensor) -> torch.Tensor:
        """A new tensor: ``t`` laid out along the axis, zero where the entry is dropped."""
        out = t.index_select(self.axis, self.gather)
        if self.dropped is not None:
            out.masked_fill_(self.dropped, 0)
        return out

    def split(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` (a tensor of the caller's own, changed in place where it can be) with the
        positions of ``scaled_at`` multiplied by their factors in float64 and rounded to
        ``t``'s dtype.

        Where every factor is exact in that dtype (``1 / copies`` with a power-of-two
        count, as any widening to at most twice the width has) the product is taken in
        the dtype itself, bitwise the same: float64 holds the exact product of two
        numbers of at most 24 bits (53 >= 2 * 24 + 2), so rounding it once to the dtype
        is the correctly rounded product the dtype's own multiplication gives.
        """
        assert self.scaled_at is not None and self.scale is not None
        dtype = t.dtype
        if dtype not in self.exact:
            exact = self.scale.to(dtype) if dtype.is_floating_point else None
            ok = exact is not None and torch.equal(exact.double(), self.scale)
            self.exact[dtype] = exact if ok else None
        exact = self.exact[dtype]
        if self.scaled_all:
            return t.mul_(exact) if exact is not None else (t.double() * self.scale).to(dtype)
        part = t.index_select(self.axis, self.scaled_at)
        part = part.mul_(exact) if exact is not None else (part.double() * self.scale).to(dtype)
        return t.index_copy_(self.axis, self.scaled_at, part)


_AxisKey = tuple[int, tuple[tuple[int, int], ...], str, int, int, int]
"""What makes an axis plan: size, spans, kind, tensor axis, tensor rank and fold."""

_Step = tuple[str, tuple[tuple[int, int], ...], _Axis]
"""One grown axis of a parameter: its kind, its spans and its plan."""


@dataclass(frozen=True)
class _Recipe:
    """How a parameter of one shape, indexed at one set of axes, grows: its steps in axis
    order, and what follows from them alone (the same for every parameter alike: a
    stage's batchnorm statistics, its convs' columns).

    ``index`` and ``scale`` become the parameters' ``Origin`` maps: shared by all the
    origins made from the recipe, never changed.
    """

    steps: tuple[_Step, ...]
    index: dict[int, tuple[int, ...]]  # the Origin index, by grown axis
    scale: dict[int, tuple[float, ...]]  # the Origin scale of split fan-out, by axis
    fill: torch.Tensor | None  # where the new units' entries come from the op's own init
    copied: torch.Tensor | None  # where the new units copy an old one (for noise)


class _Axes:
    """Every axis plan of one widening, made once per (size, spans, kind, ndim): in a
    residual group most members' axes are alike, and a plan is a loop over positions."""

    def __init__(self, old: int, units: NewUnits, parts: int = 1) -> None:
        self.old, self.units = old, units
        self.layout = grown_layout(old, units.copies, parts)
        self.counts = units.counts(old)
        self._made: dict[tuple, _Axis] = {}
        self._recipes: dict[tuple, _Recipe] = {}

    def recipe(self, axes: Sequence[ParamAxis], shape: tuple[int, ...]) -> _Recipe:
        """How one parameter of ``shape`` indexed at ``axes`` grows (made once per set of
        axes and shape)."""
        if len(axes) == 1:  # most parameters grow along one axis
            a = axes[0]
            key: tuple = (shape, a.axis, a.offset, a.block, a.kind, a.fold)
        else:
            key = (shape, *((a.axis, a.offset, a.block, a.kind, a.fold) for a in axes))
        made = self._recipes.get(key)
        if made is None:
            made = self._recipes[key] = self._make_recipe(axes, shape)
        return made

    def _make_recipe(self, axes: Sequence[ParamAxis], shape: tuple[int, ...]) -> _Recipe:
        steps = tuple(
            (
                on[0].kind,
                spans,
                self.get(shape[axis], spans, on[0].kind, axis, len(shape), on[0].fold),
            )
            for axis, on in spans_by_axis(axes).items()
            for spans in [tuple((a.offset, a.block) for a in on)]
        )
        fill: torch.Tensor | None = None
        copied: torch.Tensor | None = None
        if self.units.fan_in != "mean":  # means are computed from the old units instead
            for kind, _, plan in steps:
                if kind == "units":
                    fill, copied = _either(fill, plan.fill), _either(copied, plan.copied)
        return _Recipe(
            steps=steps,
            index={plan.axis: plan.index for _, _, plan in steps},
            scale={plan.axis: plan.factors for _, _, plan in steps if plan.factors is not None},
            fill=fill,
            copied=copied,
        )

    def get(
        self,
        size: int,
        spans: tuple[tuple[int, int], ...],
        kind: str,
        axis: int,
        ndim: int,
        fold: int = 1,
    ) -> _Axis:
        key = (size, spans, kind, axis, ndim, fold)
        made = self._made.get(key)
        if made is None:
            made = self._made[key] = self._make(key)
        return made

    def _make(self, key: _AxisKey) -> _Axis:
        size, spans, kind, axis, ndim, fold = key
        units = self.units
        plan = axis_plan(size, spans, self.old, self.layout, fold)

        def along(values: Sequence, dtype: torch.dtype) -> torch.Tensor:
            shape = [1] * ndim
            shape[axis] = len(values)
            return torch.tensor(values, dtype=dtype).reshape(shape)

        # Entries with no source start at zero; so do new fan-out columns not split.
        zero_new = kind == "fan_out" and units.fan_out != "split"
        kept = [i >= 0 and not (zero_new and n) for i, n in zip(plan.index, plan.new)]
        factors = None
        if kind == "fan_out" and units.fan_out == "split":
            factors = tuple(1.0 / self.counts[u] if u >= 0 else 1.0 for u in plan.unit)
            if all(f == 1.0 for f in factors):
                factors = None
        scaled = [] if factors is None else [p for p, f in enumerate(factors) if f != 1.0]
        fill = [i < 0 for i in plan.index]
        copied = [n and i >= 0 for n, i in zip(plan.new, plan.index)]
        return _Axis(
            axis=axis,
            old=self.old // fold,
            plan=plan,
            gather=torch.tensor([max(i, 0) for i in plan.index]),
            dropped=None if all(kept) else along([not k for k in kept], torch.bool),
            index=tuple(i if k else -1 for i, k in zip(plan.index, kept)),
            factors=factors,
            scaled_at=None if factors is None else torch.tensor(scaled, dtype=torch.long),
            scale=None if factors is None else along([factors[p] for p in scaled], torch.float64),
            scaled_all=factors is not None and len(scaled) == len(factors),
            fill=along(fill, torch.bool) if any(fill) else None,
            copied=along(copied, torch.bool) if any(copied) else None,
        )


def _grow_member(
    old_graph: Graph,
    graph: Graph,
    member: Member,
    axes_of: _Axes,
    noise: float,
    gen: torch.Generator,
) -> tuple[dict[str, torch.Tensor], dict[str, Origin]]:
    """New tensors and origins for every parameter of ``member`` indexed by the channels."""
    if not member.axes:  # it passes the channels on, with no parameters they index
        return {}, {}
    units, old = axes_of.units, axes_of.old
    old_node = old_graph.node(member.node)  # the same op and parameter names as the new one
    fresh: dict[str, torch.Tensor] = {}
    if units.fan_in in ("default", "zero") and any(a.kind == "units" for a in member.axes):
        # The op's own initialisation at the new shape supplies the new units' entries.
        node = graph.node(member.node)
        fresh = init_layer(node, graph.input_types(node), "default", gen)
        if units.fan_in == "zero":
            fresh = {k: _zero_fan_in(member, node, k, v) for k, v in fresh.items()}
    old_specs = old_graph.params_of(old_node)
    old_params = old_graph.params
    skip = len(old_node.param_prefix) + 1
    given, mean = units.fan_out == "given", units.fan_in == "mean"
    params, origins = {}, {}
    for param, axes in axes_by_param(member).items():
        spec = old_specs.get(param) or old_graph.param_specs[param]
        if spec.mask_of is not None:
            mask = old_params[param]
            params[param], origins[param] = _grow_mask(mask, param, axes, old, axes_of.layout)
            continue
        t = source = old_params[param]
        recipe = axes_of.recipe(axes, t.shape)
        scale = recipe.scale
        rescale = units.rescale.get(param)
        if rescale is not None:
            t = (t.double() * rescale).to(t.dtype)
            # recorded once, on the first grown axis, in place of its split factors
            first, index = next(iter(recipe.index.items()))
            scale = {first: tuple(rescale if i >= 0 else 1.0 for i in index)}
            scale.update((k, v) for k, v in recipe.scale.items() if k != first)
        for kind, spans, plan in recipe.steps:
            before = t
            t = plan.gathered(t)  # a new tensor: the steps below may change it in place
            if given and kind == "fan_out":
                t = t.index_copy_(plan.axis, plan.new_at, units.columns[param].to(t.dtype))
            if plan.factors is not None:
                t = plan.split(t)
            if mean and kind == "units":
                t = _fill_means(t, before, plan.axis, spans, plan.old, plan.plan)
        local = param[skip:]
        if recipe.fill is not None:
            t = torch.where(recipe.fill, fresh[local], t)
        copied = recipe.copied
        if noise and Role.PRODUCER in member.roles and local == "weight" and copied is not None:
            std = noise * source.double().std(unbiased=False).item()
            t = t + gauss(t, std, gen) * copied
        params[param] = t.contiguous()
        origins[param] = Origin(source=param, index=recipe.index, scale=scale)
    return params, origins


def _either(a: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor | None:
    """The union of two broadcastable masks, ``None`` standing for an empty one."""
    return b if a is None else a if b is None else a | b


def _fill_means(
    t: torch.Tensor,
    before: torch.Tensor,
    axis: int,
    spans: Sequence[tuple[int, int]],
    old: int,
    plan: AxisPlan,
) -> torch.Tensor:
    """``t`` with the new positions of every span set to the mean of that span's old units
    in ``before`` (block by block; computed in float64)."""
    new_at = [p for p, n in enumerate(plan.new) if n]
    per_span = len(new_at) // len(spans)
    for k, (off, blk) in enumerate(sorted(spans)):
        units = before.narrow(axis, off, old * blk).double()
        mean = units.unflatten(axis, (old, blk)).mean(axis)  # the span's mean unit
        values = mean.tile([per_span // blk if d == axis else 1 for d in range(mean.dim())])
        at = torch.tensor(new_at[k * per_span : (k + 1) * per_span], dtype=torch.long)
        t = t.index_copy(axis, at, values.to(t.dtype))
    return t
