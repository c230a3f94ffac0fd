"""Carrying out one growth step while training: run the request's hooks and its pass,
rebuild the module, move the optimizer's state."""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from grow_ir.backends.torch import to_device, to_torch, update_params
from grow_ir.growth.config import GrowthConfig
from grow_ir.growth.data import Dataset
from grow_ir.growth.optim_state import transfer_optimizer
from grow_ir.growth.policy import GrowthRequest
from grow_ir.ir.graph import Graph
from grow_ir.passes.base import PassResult, get_pass


@dataclass
class TrainState:
    """What a growth step changes: the graph, its lowered module and the optimizer."""

    graph: Graph
    module: nn.Module
    optimizer: torch.optim.Optimizer


@dataclass(frozen=True)
class GrowthContext:
    """What a growth step may read besides the state: settings, data, device, epoch."""

    config: GrowthConfig
    data: Dataset
    device: torch.device
    epoch: int
    task: str | None = None


@dataclass
class StepOutcome:
    """The result of one growth step, for the log and the history."""

    request: GrowthRequest
    result: PassResult
    args: dict[str, Any]
    notes: dict[str, Any] = field(default_factory=dict)


def step_seed(seed: int, epoch: int, unit: str) -> int:
    """A seed for the random parts of a step, fixed by the run seed, the epoch and the unit."""
    return zlib.crc32(f"{seed}:{epoch}:{unit}".encode()) & 0x7FFFFFFF


def apply_growth(
    state: TrainState, request: GrowthRequest, ctx: GrowthContext
) -> tuple[TrainState, StepOutcome]:
    """Run ``request`` on the trained state and return the grown state.

    Guarantees: the pass sees the module's current values (and whatever the request's
    hooks add to its arguments, such as a probe batch); the new module lives on
    ``ctx.device`` in train mode; the request's hooks ran after the pass on the new module
    (AdamInit trains the new block there); the new optimizer carries the old state by the
    pass's provenance (:func:`transfer_optimizer`).

    Raises:
        GrowError: the pass cannot apply (its error, naming the pass and node).
    """
    graph = update_params(state.graph, state.module)
    args = dict(request.args)
    seed = step_seed(ctx.config.seed, ctx.epoch, request.unit)
    if "seed" in get_pass(request.pass_name).signature.parameters:
        args["seed"] = seed
    for hook in request.hooks:
        args = hook.before(ctx, state, request, args)
    result = get_pass(request.pass_name).run(graph, **args)
    # in train mode, as to_torch makes it; only the new submodules need moving
    module = to_torch(result.graph, task=ctx.task, reuse=state.module)
    module = to_device(module, state.module, ctx.device)
    notes: dict[str, Any] = {}
    for hook in request.hooks:
        result, more = hook.after(
            ctx, state, TrainState(result.graph, module, state.optimizer), result, seed
        )
        notes.update(more)
    optimizer = transfer_optimizer(state.optimizer, state.module, module, result.origins)
    public_args = {k: v for k, v in args.items() if _plain(v)}
    outcome = StepOutcome(request, result, public_args, notes)
    return TrainState(result.graph, module, optimizer), outcome


def _plain(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool, list, tuple, dict))
