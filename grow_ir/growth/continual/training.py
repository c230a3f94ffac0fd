"""Training one task of a multi-task graph without touching any other task.

The guarantee rests on three things: the optimizer holds only the parameters the task owns
(``to_torch(graph, task=T)`` sets ``requires_grad`` on exactly those), layers whose running
statistics other tasks share stay in eval mode (the lowered module's ``train()`` keeps them
there), and only the task's own tensors are taken back into the graph.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from grow_ir.backends.torch import to_torch, update_params
from grow_ir.growth.distributed import current, shard_of
from grow_ir.growth.loop import accuracy
from grow_ir.growth.optim_state import trainable
from grow_ir.growth.step import train_step
from grow_ir.ir.graph import Graph
from grow_ir.ir.verify import verify


@dataclass(frozen=True)
class TrainSettings:
    """SGD with momentum and a cosine learning-rate decay over ``epochs``."""

    epochs: int
    lr: float = 0.025
    momentum: float = 0.9
    weight_decay: float = 0.0
    batch_size: int = 32


def owned(graph: Graph, task: str) -> set[str]:
    """Names of the parameters and buffers only output ``task`` depends on."""
    mine = frozenset({task})
    return {k for k, v in graph.param_owners.items() if v == mine}


@contextlib.contextmanager
def deterministic_kernels() -> Iterator[None]:
    """Deterministic torch kernels (warn-only where none exists) for the duration, the
    previous settings restored afterwards."""
    was_det = torch.are_deterministic_algorithms_enabled()
    was_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    was_bench = torch.backends.cudnn.benchmark
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(was_det, warn_only=was_warn)
        torch.backends.cudnn.benchmark = was_bench


def batches(
    n: int, batch_size: int, gen: torch.Generator, ranks: int = 1
) -> Iterator[torch.Tensor]:
    """Index batches of a fresh random order of ``range(n)``; a last batch that would give
    a rank fewer than two samples (which batchnorm cannot train on) is dropped unless it
    is the only one. Under DDP these are global batches, ``ranks`` shards each."""
    order = torch.randperm(n, generator=gen)
    for i in range(0, n, batch_size):
        idx = order[i : i + batch_size]
        if len(idx) // ranks < 2 and i > 0:
            return
        yield idx


def take_back(graph: Graph, module: nn.Module, task: str | None) -> Graph:
    """``graph`` with the trained values of ``module`` taken back.

    Guarantees: with ``task``, only the tensors ``task`` owns change; every other
    parameter and buffer of ``graph`` is the very same tensor as before (so other outputs
    are bitwise unchanged). With ``task=None``, every tensor of ``module`` is taken back.
    """
    if task is None:
        return update_params(graph, module)
    mine = owned(graph, task)
    state = module.state_dict()
    params = dict(graph.params)
    for key in mine & set(state):
        params[key] = state[key].detach().to("cpu", graph.params[key].dtype, copy=True)
    return verify(graph.replace(params=params))


def train_task(
    graph: Graph,
    task: str,
    x: torch.Tensor,
    y: torch.Tensor,
    settings: TrainSettings,
    *,
    gen: torch.Generator,
    device: torch.device,
    everything: bool = False,
) -> Graph:
    """Train output ``task`` of ``graph`` on ``(x, y)`` with cross-entropy; return the graph
    with the trained values.

    Guarantees: without ``everything``, only the tensors ``task`` owns change, so every
    other output of the graph computes bitwise what it computed before. With
    ``everything`` (fine-tuning), every parameter on the task's path trains and shared
    batchnorm statistics move too, so other outputs change.
    """
    module = to_torch(graph, task=task).to(device)
    if everything:
        for p in module.parameters():
            p.requires_grad_(True)
        module.frozen_stats = ()  # shared batchnorm statistics train too
    params = list(trainable(module).values())
    if not params or settings.epochs <= 0:
        return graph
    opt = torch.optim.SGD(
        params, lr=settings.lr, momentum=settings.momentum, weight_decay=settings.weight_decay
    )
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=settings.epochs)
    x, y = x.to(device), y.to(device)
    dp = current()  # one rank of a DDP run (grow-ir continual --nproc N), or None
    model = module if dp is None else dp.wrap(module)
    for _ in range(settings.epochs):
        module.train()
        for batch in batches(len(y), settings.batch_size, gen, 1 if dp is None else dp.world):
            idx = shard_of(dp, batch).to(device)
            train_step(model, opt, x[idx], y[idx], dist=dp, global_size=len(batch))
        sched.step()
    return take_back(graph, module, None if everything else task)


def evaluate(
    graph: Graph, task: str, x: torch.Tensor, y: torch.Tensor, device: torch.device
) -> float:
    """Top-1 accuracy of output ``task`` on ``(x, y)`` in eval mode.

    Guarantees: a function of the task's own path and tensors alone, computed the same way
    every time, so an output whose tensors did not change scores bitwise the same.
    """
    module = to_torch(graph, task=task).to(device)
    return accuracy(module, x, y, device)
