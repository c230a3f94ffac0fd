"""The step hooks policies attach to their requests: a probe batch for inits that read one
(GradMax), and AdamInit's training of a new block."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from grow_ir.backends.torch import update_params
from grow_ir.growth.actions import GrowthContext, TrainState, step_seed
from grow_ir.growth.config import AdamInitConfig
from grow_ir.growth.policy import GrowthRequest, StepHook
from grow_ir.growth.step import train_step
from grow_ir.ir.graph import Graph
from grow_ir.passes.base import PassResult, get_pass
from grow_ir.passes.gradmax import Probe
from grow_ir.passes.inits import WIDTH_INITS

PROBE_SIZE = 256
"""Training samples in a probe batch."""


class ProbeBatch(StepHook):
    """Gives the pass ``probe``: a seeded batch of up to :data:`PROBE_SIZE` training samples
    with a cross-entropy loss on the trained output (CPU tensors, like the graph's), for a
    width init that reads one (``WidthInit.needs_probe``: GradMax)."""

    name = "probe batch"

    def before(
        self, ctx: GrowthContext, state: TrainState, request: GrowthRequest, args: dict[str, Any]
    ) -> dict[str, Any]:
        data = ctx.data
        gen = torch.Generator().manual_seed(step_seed(ctx.config.seed, ctx.epoch, request.unit))
        idx = torch.randperm(len(data.y_train), generator=gen)[:PROBE_SIZE]
        (name,) = state.graph.inputs
        probe = Probe(
            inputs={name: data.x_train[idx].cpu()},
            targets=data.y_train[idx].cpu(),
            loss="cross_entropy",
            output=ctx.task,
        )
        return {**args, "probe": probe}


def probe_hooks(pass_name: str, args: dict[str, Any]) -> tuple[StepHook, ...]:
    """``(ProbeBatch(),)`` when a step of ``pass_name`` with ``args`` reads a probe batch of
    training data, else ``()``: a pass with a ``probe`` argument reads one through its
    ``init`` when it has one (a width init with ``WidthInit.needs_probe``: GradMax), and
    always otherwise (``grow_connections``)."""
    params = get_pass(pass_name).signature.parameters
    if "probe" not in params:
        return ()
    if "init" in params:
        init = args.get("init", params["init"].default)
        if not (isinstance(init, str) and init in WIDTH_INITS and WIDTH_INITS[init].needs_probe):
            return ()
    return (ProbeBatch(),)


class AdamInit(StepHook):
    """AdamInit: train the parameters the step added, alone, with Adam.

    The target is the old module's training loss (eval mode) on a fixed probe batch; the
    new parameters take Adam steps on seeded training batches, in train mode with every
    old batchnorm frozen in eval mode, until the new module's eval loss on the probe is at
    most the target, or ``settings.max_steps`` steps ran. The result is reported as not
    preserving; the notes give the steps taken, the target and the loss reached.
    """

    name = "AdamInit"

    def __init__(self, settings: AdamInitConfig | None = None) -> None:
        self.settings = settings or AdamInitConfig()

    def __repr__(self) -> str:
        return f"AdamInit({self.settings!r})"

    def after(
        self, ctx: GrowthContext, old: TrainState, new: TrainState, result: PassResult, seed: int
    ) -> tuple[PassResult, dict[str, Any]]:
        notes = _adam_init(self.settings, old, new.module, result.graph, old.graph, ctx, seed)
        amended = PassResult(
            graph=update_params(result.graph, new.module),
            preserved=False,
            summary=result.summary + " (AdamInit)",
            reason=result.reason or "AdamInit trains the new block: not exact",
            origins=result.origins,
            same_as=result.same_as,
        )
        return amended, notes


def _adam_init(
    cfg: AdamInitConfig,
    old: TrainState,
    module: nn.Module,
    new_graph: Graph,
    old_graph: Graph,
    ctx: GrowthContext,
    seed: int,
) -> dict[str, Any]:
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
        train_step(module, opt, x[idx].to(ctx.device), y[idx].to(ctx.device))
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
