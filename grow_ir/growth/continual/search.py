"""DARTS-style first-order search over a supernet's reuse / adapt / new choices.

The task's training data is cut in two fixed halves. Each step updates the architecture
logits (``alpha``, Adam) on a batch of the first half with the loss plus Learn to Grow's
size penalty, then the task's network weights (SGD with momentum) on a batch of the other
half with the loss alone; first order: the architecture gradient is taken at the current
weights, without DARTS's unrolled second-order term.

The size penalty is ``λ · Σ_layers Σ_choices softmax(alpha)_c · cost_c / P`` where
``cost_c`` is the parameters choice ``c`` adds for the task (reuse 0, adapt the adapter's,
new the layer's) and ``P`` the parameters of all choosable layers together: the expected
fraction of the base network the task adds, in [0, 1] whatever the network's size, so one
``λ`` suits every network (``λ = 1`` makes a copy of the whole network cost as much as one
nat of cross-entropy).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from grow_ir.backends.torch import to_torch, update_params
from grow_ir.errors import GrowError
from grow_ir.growth.continual.supernet import Supernet
from grow_ir.growth.continual.training import batches
from grow_ir.growth.distributed import batch_loss, current, shard_of
from grow_ir.growth.optim_state import trainable
from grow_ir.ir.graph import Graph

MIN_SAMPLES = 4
"""The fewest training samples a search accepts: two per half (batchnorm needs two)."""


@dataclass(frozen=True)
class SearchSettings:
    """Hyper-parameters of the search.

    ``epochs`` passes over the weights' half of the data; the first ``warmup`` train the
    network weights alone (at the start every candidate computes the same thing, so the
    architecture gradient carries no signal yet). Each weight batch (``batch_size``) is
    paired with an architecture batch (``arch_batch_size``, larger: the logits' gradient
    is a small difference between candidates, and a larger batch lifts it above the
    noise). ``penalty`` is λ of the size penalty. The optimizers are Learn to Grow's: Adam
    (lr 0.01, betas 0.5/0.999) on ``alpha``, SGD (lr 0.025, momentum 0.9) on weights, with
    ``weight_decay`` on the weights: a new copy mixed with a small weight can otherwise
    grow its weights to make up for it, so that the mix hides how poor reuse alone is and
    the penalty drifts the choice to reuse.
    """

    epochs: int = 100
    warmup: int = 20
    penalty: float = 0.3
    arch_lr: float = 0.01
    arch_betas: tuple[float, float] = (0.5, 0.999)
    weight_lr: float = 0.025
    momentum: float = 0.9
    weight_decay: float = 3e-3
    batch_size: int = 32
    arch_batch_size: int = 128


@dataclass(frozen=True)
class SearchResult:
    """The trained supernet and the choices it makes.

    Attributes:
        graph: the supernet's graph with the trained weights and logits.
        choices: per layer, the argmax choice.
        probabilities: per layer, the softmax weight of every choice.
    """

    graph: Graph
    choices: dict[str, str]
    probabilities: dict[str, dict[str, float]]


def size_penalty(supernet: Supernet, alphas: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """The expected fraction of the choosable layers' parameters the task adds.

    Guarantees: ``Σ_layers Σ_c softmax(alpha)_c · cost_c / layer_params``, differentiable
    in every ``alpha``; 0 when every layer reuses, 1 when every layer is new; a 0-d
    tensor (0.0 when there is nothing to choose).
    """
    total = max(1, supernet.layer_params)
    terms = []
    for lc in supernet.layers:
        a = alphas[lc.alpha]
        costs = torch.tensor(lc.costs, dtype=a.dtype, device=a.device)
        terms.append((torch.softmax(a, dim=0) * costs).sum())
    if not terms:
        return torch.zeros(())
    return torch.stack(terms).sum() / total


def halves(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Two disjoint random halves of ``range(n)``: (architecture, weights)."""
    order = torch.randperm(n, generator=gen)
    return order[: n // 2], order[n // 2 :]


def search(
    supernet: Supernet,
    x: torch.Tensor,
    y: torch.Tensor,
    settings: SearchSettings,
    *,
    gen: torch.Generator,
    device: torch.device,
) -> SearchResult:
    """Train ``supernet`` on the task's data ``(x, y)`` and read its choices.

    Guarantees: only tensors the task owns change (its copies, adapters, head, logits,
    and the running statistics of its own batchnorm copies), so every other output of
    the graph is bitwise unchanged; the choices are the argmax of each layer's logits.

    Raises:
        GrowError: fewer than 4 samples (each half needs a batch of at least 2).
    """
    if len(y) < MIN_SAMPLES:
        raise GrowError(
            "too few training samples to search: the data is cut in two halves",
            field="y_train",
            expected=f"at least {MIN_SAMPLES} samples",
            found=str(len(y)),
        )
    task = supernet.task
    module = to_torch(supernet.graph, task=task).to(device)
    named = trainable(module)
    arch = [named[k] for k in supernet.alpha_names]
    weights = [p for k, p in named.items() if k not in set(supernet.alpha_names)]
    arch_opt = torch.optim.Adam(arch, lr=settings.arch_lr, betas=settings.arch_betas)
    weight_opt = torch.optim.SGD(
        weights,
        lr=settings.weight_lr,
        momentum=settings.momentum,
        weight_decay=settings.weight_decay,
    )
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(weight_opt, T_max=max(1, settings.epochs))
    alphas = {k: named[k] for k in supernet.alpha_names}
    x, y = x.to(device), y.to(device)
    arch_idx, weight_idx = halves(len(y), gen)
    ax, ay = x[arch_idx.to(device)], y[arch_idx.to(device)]
    wx, wy = x[weight_idx.to(device)], y[weight_idx.to(device)]
    dp = current()  # one rank of a DDP run (grow-ir continual --nproc N), or None
    model, ranks = (module, 1) if dp is None else (dp.wrap(module), dp.world)
    for epoch in range(settings.epochs):
        module.train()  # shared batchnorm statistics stay frozen
        update_arch = bool(arch) and epoch >= settings.warmup
        arch_batches = batches(len(ay), settings.arch_batch_size, gen, ranks)
        for w_batch in batches(len(wy), settings.batch_size, gen, ranks):
            a_batch = next(arch_batches, None)
            if a_batch is None:
                arch_batches = batches(len(ay), settings.arch_batch_size, gen, ranks)
                a_batch = next(arch_batches)
            a_idx, idx = shard_of(dp, a_batch).to(device), shard_of(dp, w_batch).to(device)
            if update_arch:
                loss = batch_loss(dp, model(ax[a_idx]), ay[a_idx], len(a_batch))
                loss = loss + settings.penalty * size_penalty(supernet, alphas)
                arch_opt.zero_grad(set_to_none=True)
                weight_opt.zero_grad(set_to_none=True)
                loss.backward()
                arch_opt.step()
            loss = batch_loss(dp, model(wx[idx]), wy[idx], len(w_batch))
            arch_opt.zero_grad(set_to_none=True)
            weight_opt.zero_grad(set_to_none=True)
            loss.backward()
            weight_opt.step()
        sched.step()
    trained = update_params(supernet.graph, module)
    values = {k: trained.params[k] for k in supernet.alpha_names}
    return SearchResult(trained, supernet.argmax(values), supernet.probabilities(values))
