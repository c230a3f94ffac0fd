"""One optimisation step on a batch, shared by every trainer (``train``, ``continual``,
AdamInit), so that they all compute the loss and update the weights the same way."""

from __future__ import annotations

import torch
from torch import nn

from grow_ir.growth.distributed import Distributed, batch_loss


def train_step(
    module: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    dist: Distributed | None = None,
    global_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One step of ``optimizer`` on the cross-entropy of ``module(x)`` against ``y`` (one
    label per sample, or per position for a language model).

    Under DDP (``dist``), ``x`` and ``y`` are this process's shard of a global batch of
    ``global_size`` samples and the loss is scaled so that the averaged gradient is the
    global batch's mean (:func:`batch_loss`). Returns the (detached) outputs and loss.
    Guarantees: gradients are reset (to None) before the backward pass, so nothing
    accumulates across steps.
    """
    out = module(x)
    loss = batch_loss(dist, out, y, len(y) if global_size is None else global_size)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return out.detach(), loss.detach()
