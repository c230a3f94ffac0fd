"""Carrying out one growth step while training: run the pass, rebuild the module, move the
optimizer's state, and (for AdamInit) train the new block alone until it recovers."""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from grow_ir.backends.torch import to_torch, update_params
from grow_ir.growth.autogrow import GrowthRequest
from grow_ir.growth.config import GrowthConfig
from grow_ir.growth.data import Dataset
from grow_ir.growth.optim_state import transfer_optimizer
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


WidenArgs = Callable[[GrowthContext, TrainState, GrowthRequest], dict[str, Any]]
WIDEN_ARGS: dict[str, WidenArgs] = {}
"""Extra ``widen`` arguments by init name, computed from the run (data, module) at the
step. An init that needs training data (GradMax: a probe batch for the gradient) registers
a function here and its name in :data:`grow_ir.growth.config.WIDEN_INITS`."""


PassArgs = Callable[[GrowthContext, TrainState, GrowthRequest], dict[str, Any]]
PASS_ARGS: dict[str, PassArgs] = {}
"""Extra arguments by pass name, computed from the run at the step (a pass that reads a
probe batch of training data, such as ``grow_connections``, registers a function here)."""


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

    Guarantees: the pass sees the module's current values; the new module lives on
    ``ctx.device`` in train mode; the new optimizer carries the old state by the pass's
    provenance (:func:`transfer_optimizer`); with AdamInit the new block has been trained
    alone with Adam (old parameters and statistics untouched) until its training loss on a
    probe batch is back to the loss before the step, or ``adam_init.max_steps`` ran out.

    Raises:
        GrowError: the pass cannot apply (its error, naming the pass and node).
    """
    graph = update_params(state.graph, state.module)
    args = dict(request.args)
    if "seed" in get_pass(request.pass_name).signature.parameters:
        args["seed"] = step_seed(ctx.config.seed, ctx.epoch, request.unit)
    if request.pass_name == "widen":
        extra = WIDEN_ARGS.get(str(args.get("init")))
    else:
        extra = PASS_ARGS.get(request.pass_name)
    if extra is not None:
        args.update(extra(ctx, state, request))
    result = get_pass(request.pass_name).run(graph, **args)
    module = to_torch(result.graph, task=ctx.task, reuse=state.module).to(ctx.device).train()
    notes: dict[str, Any] = {}
    if request.pass_name == "insert_block" and ctx.config.init == "adam":
        notes = adam_init(state, module, result.graph, graph, ctx, args["seed"])
        result = PassResult(
            graph=update_params(result.graph, module),
            preserved=False,
            summary=result.summary + " (AdamInit)",
            reason=result.reason or "AdamInit trains the new block: not exact",
            origins=result.origins,
            same_as=result.same_as,
        )
    optimizer = transfer_optimizer(state.optimizer, state.module, module, result.origins)
    public_args = {k: v for k, v in args.items() if _plain(v)}
    outcome = StepOutcome(request, result, public_args, notes)
    return TrainState(result.graph, module, optimizer), outcome


def _plain(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool, list, tuple, dict))


def adam_init(
    old: TrainState,
    module: nn.Module,
    new_graph: Graph,
    old_graph: Graph,
    ctx: GrowthContext,
    seed: int,
) -> dict[str, Any]:
    """AdamInit: train the parameters ``new_graph`` adds, alone, with Adam.

    The target is the old module's training loss (eval mode) on a fixed probe batch; the
    new parameters take Adam steps on seeded training batches, in train mode with every
    old batchnorm frozen in eval mode, until the new module's eval loss on the probe is at
    most the target, or ``adam_init.max_steps`` steps ran. Returns the steps taken, the
    target and the loss reached.
    """
    cfg = ctx.config.adam_init
    fresh = set(new_graph.params) - set(old_graph.params)
    params = {k: p for k, p in module.named_parameters() if k in fresh}
    if not params:
        return {"adam_steps": 0}
    gen = torch.Generator().manual_seed(seed)
    x, y = ctx.data.x_train, ctx.data.y_train
    probe = torch.randperm(len(y), generator=gen)[: min(len(y), 512)]
    xp, yp = x[probe].to(ctx.device), y[probe].to(ctx.device)
    target = _loss(old.module, xp, yp)
    frozen = {k: p.requires_grad for k, p in module.named_parameters()}
    for k, p in module.named_parameters():
        p.requires_grad_(k in params)
    old_nodes = {n.param_prefix for n in old_graph.nodes}
    opt = torch.optim.Adam(list(params.values()), lr=cfg.lr)
    loss = _loss(module, xp, yp)
    steps = 0
    while steps < cfg.max_steps and loss > target:
        module.train()
        for name, sub in module.named_modules():
            if name in old_nodes:
                sub.eval()
        idx = torch.randint(len(y), (ctx.config.batch_size,), generator=gen)
        out = module(x[idx].to(ctx.device))
        batch_loss = nn.functional.cross_entropy(out, y[idx].to(ctx.device))
        opt.zero_grad(set_to_none=True)
        batch_loss.backward()
        opt.step()
        steps += 1
        if steps % cfg.check_every == 0 or steps == cfg.max_steps:
            loss = _loss(module, xp, yp)
    for k, p in module.named_parameters():
        p.requires_grad_(frozen[k])
        p.grad = None
    module.train()
    return {"adam_steps": steps, "adam_target_loss": target, "adam_loss": loss}


def _loss(module: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    was = module.training
    module.eval()
    with torch.no_grad():
        value = float(nn.functional.cross_entropy(module(x), y))
    module.train(was)
    return value
