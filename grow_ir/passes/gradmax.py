"""GradMax (Evci et al. 2022): new units whose fan-out maximises the gradient of their fan-in.

A new unit with zero fan-in outputs exactly 0, so the network's function does not change
whatever its fan-out ``w``. The gradient its fan-in then receives on a batch is linear in
``w``: ``dL/dW_in = Mᵀ w``, where ``M`` is the gradient of the loss with respect to a
zero-initialised bypass from the producers' inputs to the consumers' pre-activations. Over
fan-outs of a fixed norm, the gradient norm of ``k`` new units is largest for the top ``k``
left singular vectors of ``M`` (the paper's closed form), scaled here to the mean norm of
the old units' fan-out (the reference's ``mean_norm``).

``M`` is measured with autograd on the lowered graph itself, which makes it exact for any
group ``widen`` accepts (linear or conv producers and consumers of any kernel, stride and
padding, flatten, concat, batchnorm and depthwise convs on the way): grow one probe unit
per coordinate of a unit's fan-out vector, each with zero fan-in and a unit basis vector
as fan-out; row ``d`` of ``M`` is then the gradient of probe unit ``d``'s fan-in (weight
row and bias of every producer). Its cost is one forward and backward pass of the graph
widened by that many units.

The relu trap: PyTorch's relu has derivative 0 at 0, so a zero-fan-in unit behind a relu
would get no gradient, ever. GradMax sets ``grad_at_zero=1`` on the group's relus (the
output is unchanged; the reference code's ``relu1`` does the same), so the new units learn.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F

from grow_ir.errors import GrowError, PassError
from grow_ir.ir.graph import Graph
from grow_ir.ir.init import check_size
from grow_ir.ir.ops.facts import why_not
from grow_ir.passes.channels import ChannelGroup, Role, channel_group
from grow_ir.passes.inits import InitContext, NewUnits, register_width_init
from grow_ir.passes.widen import grow_group

LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "mse": F.mse_loss,
    "cross_entropy": F.cross_entropy,
}
"""Losses a probe can name (PyTorch's functions, mean reduction)."""


@dataclass(frozen=True)
class Probe:
    """A batch on which GradMax measures the gradient of the loss.

    Attributes:
        inputs: one tensor per graph input that ``output`` reads, by input name.
        targets: what the loss compares the output with.
        loss: ``"mse"``, ``"cross_entropy"`` or a function ``(output, targets) -> scalar``.
        output: the graph output the loss reads; None for a graph's only output.
        train: run the probe in train mode (batch statistics, seeded dropout), as the
            gradient steps that follow will; False: eval mode.
    """

    inputs: Mapping[str, torch.Tensor]
    targets: torch.Tensor
    loss: str | Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = "mse"
    output: str | None = None
    train: bool = True

    @property
    def loss_fn(self) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """The loss as a function."""
        return LOSSES[self.loss] if isinstance(self.loss, str) else self.loss


def as_probe(value: Any, node: str) -> Probe:
    """``value`` (a Probe or a mapping of its fields) as a checked Probe.

    Raises:
        PassError: naming ``node`` and the field ``probe``, when a field is missing,
            unknown or of the wrong kind.
    """
    names = [f.name for f in fields(Probe)]

    def bad(reason: str, expected: str, found: object) -> PassError:
        return PassError(reason, node=node, field="probe", expected=expected, found=str(found))

    if isinstance(value, Mapping):
        unknown = sorted(set(value) - set(names))
        missing = [k for k in ("inputs", "targets") if k not in value]
        if unknown or missing:
            raise bad(
                "a probe batch has fields " + ", ".join(names),
                "inputs and targets, and optionally loss, output, train",
                f"unknown {unknown}" if unknown else f"missing {missing}",
            )
        value = Probe(**value)
    if not isinstance(value, Probe):
        raise bad("bad probe batch", "a Probe or a mapping of its fields", type(value).__name__)
    tensors = isinstance(value.inputs, Mapping) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.inputs.items()
    )
    if not tensors or not value.inputs or not isinstance(value.targets, torch.Tensor):
        raise bad(
            "a probe batch holds tensors (it can come from Python or the trainer, not a plan)",
            "inputs: {name: tensor}, targets: tensor",
            f"inputs {type(value.inputs).__name__}, targets {type(value.targets).__name__}",
        )
    if not (callable(value.loss) or value.loss in LOSSES):
        raise bad("unknown loss", f"one of {', '.join(LOSSES)} or a function", repr(value.loss))
    if not isinstance(value.train, bool):
        raise bad("bad probe mode", "train: true or false", repr(value.train))
    return value


@register_width_init(
    "gradmax",
    needs_probe=True,
    doc="zero fan-in, fan-out from the loss gradient's top singular vectors",
)
def gradmax_units(ctx: InitContext) -> NewUnits:
    """The GradMax init of ``widen``: zero fan-in, fan-out from the probe's gradient.

    Guarantees: the new units are exactly 0 up to the consumers, so the function is
    preserved; their fan-out vectors are orthogonal, each of norm equal to the mean norm of
    the old units' fan-out, and span the top singular directions of the bypass gradient
    ``M`` on ``ctx.probe`` (ties broken by ``torch.linalg.eigh``, signs fixed so that each
    vector's largest entry is positive); every relu of the group gets ``grad_at_zero=1``.

    Raises:
        PassError: no probe, a bad probe, a group GradMax cannot grow exactly (an op that
            does not keep zero channels zero, a layer that both reads and writes the
            channels, a norm across them, no consumer), more new units than a fan-out has
            entries, or old units whose fan-out is all zero.
    """
    probe = as_probe(ctx.probe, ctx.node)
    output = probe_output(ctx.graph, probe, ctx.node)
    _check_reaches(ctx, output)
    attrs = _check_group(ctx)
    layout = fan_out_layout(ctx.graph, ctx.group)
    k = ctx.width - ctx.old
    if k > layout.dim:
        raise PassError(
            f"GradMax grows at most {layout.dim} units at once here: its new units' fan-outs "
            f"are orthogonal vectors of {layout.dim} entries",
            node=ctx.node,
            field="width",
            expected=f"at most {ctx.old + layout.dim}",
            found=str(ctx.width),
        )
    norms = layout.vectors(ctx.graph.params, ctx.old).double().norm(dim=1)
    scale = norms.mean().item()
    if not scale > 0:
        raise PassError(
            "the old units' fan-out is all zero, so there is no norm for the new units' fan-out",
            node=ctx.node,
            field="init",
            expected="consumers with nonzero weights on the old units",
            found="all zero",
        )
    directions, sigma = top_directions(bypass_gradient(ctx, probe, output, layout, attrs), k)
    columns = layout.columns(directions * scale)
    note = (
        f"; fan-out along the top {k} singular direction(s) of the probe gradient "
        f"(σ {', '.join(f'{s:.3g}' for s in sigma.tolist())}), norm {scale:.3g}"
    )
    fixes: dict[str, list[str]] = {}
    for name, fix in attrs.items():
        fixes.setdefault(", ".join(f"{k}={v}" for k, v in fix.items()), []).append(name)
    for fix, names in fixes.items():
        note += f"; {fix} on {', '.join(names)}"
    return NewUnits(
        (-1,) * k, fan_in="zero", fan_out="given", note=note, columns=columns, attrs=attrs
    )


# ---- what GradMax can grow ----------------------------------------------------------------


def _refuse(ctx: InitContext, reason: str, found: str) -> PassError:
    return PassError(
        f"GradMax cannot grow this group exactly: {reason}",
        node=ctx.node,
        field="init",
        expected="producers and consumers joined by ops that keep a zero channel zero",
        found=found,
    )


def _check_group(ctx: InitContext) -> dict[str, Mapping[str, Any]]:
    """Refuse groups where zero-fan-in units would change the function or never learn;
    return the attribute changes that let gradients reach them (``OpFacts.gradient_fix``:
    relu's ``grad_at_zero=1``), by node."""
    group = ctx.group
    if group.parts > 1:
        raise _refuse(
            ctx,
            f"its channels are {group.parts} parts read by grouped convolutions, and the "
            "fan-out GradMax gives each new unit is not laid out alike in every part",
            f"{group.parts} parts",
        )
    if group.norms:
        norm = ctx.graph.node(group.norms[0])
        raise _refuse(
            ctx,
            f"new units enter the mean and variance of {norm.op} '{norm.name}'",
            norm.op,
        )
    fixes: dict[str, Mapping[str, Any]] = {}
    for m in group.members:
        node = ctx.graph.node(m.node)
        if Role.PRODUCER in m.roles and Role.CONSUMER in m.roles:
            raise _refuse(
                ctx,
                f"{node.op} '{m.node}' both reads and writes the channels (a residual "
                "stream), so a new unit's fan-in and fan-out are in one layer",
                f"{node.op} '{m.node}'",
            )
        if Role.PRODUCER in m.roles or Role.CONSUMER in m.roles:
            continue
        facts = node.opdef.facts
        where = f"{node.op} '{m.node}'"
        if not facts.fresh_zero_to_zero:
            why = why_not(facts.fresh_zero_to_zero, f"{node.op} does not keep a zero channel zero")
            raise _refuse(ctx, f"{why} ({where})", where)
        if not facts.gradient_at_zero:
            if facts.gradient_fix is None:
                why = why_not(facts.gradient_at_zero, f"{node.op} passes no gradient to 0")
                raise _refuse(ctx, f"{why} ({where})", where)
            fixes[m.node] = facts.gradient_fix
    if not group.consumers:
        raise _refuse(ctx, "no layer reads the channels: there is no fan-out", "no consumer")
    return fixes


def _check_reaches(ctx: InitContext, output: str) -> None:
    """Refuse a probe whose output does not depend on every producer of the group: the
    gradient GradMax maximises is that output's loss's, and it would not reach them."""
    deps = ctx.graph.output_deps
    off = [p for p in ctx.group.producers if output not in deps[p]]
    if off:
        reads = ", ".join(sorted(deps[off[0]])) or "no output"
        raise PassError(
            f"the probe's loss reads output '{output}', which does not depend on "
            f"'{off[0]}' (it feeds {reads}), so the new units' gradient would not reach it",
            node=ctx.node,
            field="probe.output",
            expected=f"an output that depends on {', '.join(ctx.group.producers)}",
            found=repr(output),
        )


def probe_output(graph: Graph, probe: Probe, node: str) -> str:
    """The output the probe's loss reads."""
    if probe.output is None and len(graph.outputs) == 1:
        return next(iter(graph.outputs))
    if probe.output not in graph.outputs:
        raise PassError(
            "name the graph output the probe's loss reads",
            node=node,
            field="probe.output",
            expected=f"one of {', '.join(graph.outputs)}",
            found=repr(probe.output),
        )
    return probe.output


# ---- the coordinates of a unit's fan-out ----------------------------------------------


@dataclass(frozen=True)
class _Part:
    """One consumer parameter's share of a unit's fan-out."""

    param: str
    axis: int  # the fan-out axis
    spans: tuple[tuple[int, int], ...]  # (offset, block) of the channels, in axis order
    rest: tuple[int, ...]  # the shape of one position's slice (the other axes)

    @property
    def positions(self) -> int:
        return sum(block for _, block in self.spans)

    @property
    def size(self) -> int:
        return self.positions * math.prod(self.rest)


@dataclass(frozen=True)
class FanOutLayout:
    """The coordinates of one unit's fan-out vector: for each consumer parameter (in name
    order), the unit's positions along its fan-out axis (span by span, block by block),
    each followed by the slice of the parameter's other axes there, flattened."""

    parts: tuple[_Part, ...]

    @property
    def dim(self) -> int:
        """The number of entries of a fan-out vector."""
        return sum(p.size for p in self.parts)

    def vectors(self, params: Mapping[str, torch.Tensor], units: int) -> torch.Tensor:
        """The fan-out vectors ``[units, dim]`` of the first ``units`` channels in ``params``
        (parameters of the graph the layout was read from)."""
        out = []
        for p in self.parts:
            t = params[p.param].movedim(p.axis, 0)
            at = [[o + u * b + r for o, b in p.spans for r in range(b)] for u in range(units)]
            out.append(t[torch.tensor(at, dtype=torch.long)].reshape(units, -1))
        return torch.cat(out, dim=1)

    def columns(self, vectors: torch.Tensor) -> dict[str, torch.Tensor]:
        """``widen``'s given fan-out for new units with fan-out ``vectors`` ``[k, dim]``: per
        parameter, its entries at the new positions of the fan-out axis, in axis order
        (after each span's old channels, unit by unit, block by block)."""
        k, start, out = vectors.shape[0], 0, {}
        for p in self.parts:
            v = vectors[:, start : start + p.size].reshape(k, p.positions, *p.rest)
            start += p.size
            pieces, first = [], 0
            for _, block in p.spans:
                pieces.append(v[:, first : first + block].reshape(k * block, *p.rest))
                first += block
            out[p.param] = torch.cat(pieces).movedim(0, p.axis)
        return out


def capacity(graph: Graph, node: str) -> int:
    """The most units one GradMax step can add to ``node``'s channel group: new units'
    fan-outs are orthogonal, so at most as many as a fan-out has entries."""
    return fan_out_layout(graph, channel_group(graph, node)).dim


def fan_out_layout(graph: Graph, group: ChannelGroup) -> FanOutLayout:
    """The layout of a unit's fan-out over every consumer parameter of ``group``."""
    parts = []
    for param, axes in sorted(group.param_axes().items()):
        fan = [a for a in axes if a.kind == "fan_out"]
        if not fan:
            continue
        axis = fan[0].axis
        # A consumer reads the group along one axis of each weight; _check_group refused
        # layers that also produce it.
        assert all(a.axis == axis for a in axes), f"{param} grows along several axes"
        shape = list(graph.params[param].shape)
        del shape[axis]
        spans = tuple(sorted((a.offset, a.block) for a in fan))
        parts.append(_Part(param, axis, spans, tuple(shape)))
    return FanOutLayout(tuple(parts))


# ---- the gradient with respect to the bypass ----------------------------------------------


def bypass_gradient(
    ctx: InitContext,
    probe: Probe,
    output: str,
    layout: FanOutLayout,
    attrs: Mapping[str, Mapping[str, Any]],
) -> torch.Tensor:
    """``M``, ``[layout.dim, F]`` in float64: row ``d`` is the gradient of the loss on the
    probe with respect to the fan-in (every producer's weight row and bias, flattened, in
    graph order) of a zero-fan-in unit whose fan-out is the ``d``-th basis vector."""
    dim = layout.dim
    basis = NewUnits(
        (-1,) * dim,
        fan_in="zero",
        fan_out="given",
        columns=layout.columns(torch.eye(dim)),
        attrs=attrs,
    )
    seed = int(torch.randint(2**31 - 1, (), generator=ctx.gen))
    wide, _ = grow_group(ctx.graph, ctx.group, ctx.old + dim, basis, torch.Generator())
    try:
        check_size(wide)
    except GrowError as exc:
        raise PassError(
            f"GradMax's probe needs {dim} extra units here, and {exc.reason}",
            node=ctx.node,
            field="width",
            expected=exc.expected,
            found=exc.found,
        ) from None
    fan_in = [
        (a.param, a.axis)
        for m in ctx.group.members
        if Role.PRODUCER in m.roles
        for a in m.axes
        if a.kind == "units" and not wide.param_specs[a.param].buffer  # masks do not learn
    ]
    grads = probe_gradients(wide, probe, output, [p for p, _ in fan_in], seed, ctx.node)
    rows = [
        g.narrow(axis, ctx.old, dim).movedim(axis, 0).reshape(dim, -1)
        for g, (_, axis) in zip(grads, fan_in)
    ]
    return torch.cat(rows, dim=1).detach().to("cpu", torch.float64)


def probe_gradients(
    graph: Graph, probe: Probe, output: str, names: list[str], seed: int, node: str
) -> tuple[torch.Tensor, ...]:
    """Gradients of the probe's loss on ``graph`` with respect to parameters ``names``."""
    from grow_ir.backends.torch import to_torch  # the backends import the passes

    module = to_torch(graph, task=output)
    device = next(iter(probe.inputs.values())).device
    module.to(device).train(probe.train)
    params = dict(module.named_parameters())
    for p in params.values():
        p.requires_grad_(False)
    wanted = [params[n].requires_grad_(True) for n in names]
    needed = [n.target for n in module.graph.nodes if n.op == "placeholder"]
    missing = [n for n in needed if n not in probe.inputs]
    if missing:
        raise PassError(
            f"the probe batch lacks graph input '{missing[0]}', which output '{output}' reads",
            node=node,
            field="probe.inputs",
            expected=", ".join(needed),
            found=", ".join(probe.inputs),
        )
    cuda = [device.index or 0] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=cuda):
            torch.manual_seed(seed)  # dropout in train mode, reproducibly
            out = module(**{n: probe.inputs[n] for n in needed})
        if probe.loss == "mse" and out.shape != probe.targets.shape:
            # F.mse_loss would broadcast [N, 1] against [N] without an error.
            raise ValueError(f"mse needs targets of the output's shape {list(out.shape)}")
        loss = probe.loss_fn(out, probe.targets)
        return torch.autograd.grad(loss, wanted)
    except (RuntimeError, ValueError, IndexError) as exc:
        raise PassError(
            f"the probe batch does not run: {exc}",
            node=node,
            field="probe",
            expected=f"inputs and targets that output '{output}' and the loss accept",
            found=", ".join(f"{k} {list(v.shape)}" for k, v in probe.inputs.items())
            + f", targets {list(probe.targets.shape)}",
        ) from None


def top_directions(m: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The top ``k`` left singular vectors of ``m`` (rows of a ``[k, m.shape[0]]`` tensor,
    orthonormal, each with its largest-magnitude entry positive) and their singular values,
    largest first. Computed from the eigenvectors of ``m mᵀ`` in float64, so ``k`` may
    exceed ``m``'s rank (the extra directions span the rest of the space)."""
    m = m.double()
    values, vectors = torch.linalg.eigh(m @ m.T)
    order = torch.argsort(values, descending=True, stable=True)[:k]
    top = vectors[:, order].T
    lead = top.gather(1, top.abs().argmax(dim=1, keepdim=True)).squeeze(1)
    top = top * torch.where(lead < 0, -1.0, 1.0).to(top.dtype)[:, None]
    return top, values[order].clamp(min=0).sqrt()
