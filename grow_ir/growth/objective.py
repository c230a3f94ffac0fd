"""The training objective: cross-entropy over classes, or over next tokens.

Classification outputs are ``[N, classes]`` with labels ``[N]``; a language model's are
``[N, L, vocabulary]`` with one next-token label per position ``[N, L]``. Both use one
loss (the mean cross-entropy over every label) and one accuracy (top-1 over every label),
so the trainer and its policies need not know which they train.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def cross_entropy(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The mean cross-entropy of logits ``out`` (classes on the last axis) against ``y``."""
    return nn.functional.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))


def evaluate(
    module: nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device, batch: int = 1024
) -> tuple[float, float]:
    """``(mean cross-entropy, top-1 accuracy)`` of ``module`` in eval mode over every label
    of ``x, y`` (the module's mode is restored afterwards)."""
    was = module.training
    module.eval()
    loss = torch.zeros((), dtype=torch.float64)
    correct, count = 0, 0
    with torch.no_grad():
        for i in range(0, len(y), batch):
            out = module(x[i : i + batch].to(device))
            target = y[i : i + batch].to(device)
            loss += cross_entropy(out, target).double().cpu() * target.numel()
            correct += int((out.argmax(-1) == target).sum())
            count += target.numel()
    module.train(was)
    return float(loss) / max(1, count), correct / max(1, count)


def perplexity(loss: float) -> float:
    """``exp(loss)``: the perplexity of a mean next-token cross-entropy (inf past overflow)."""
    return math.exp(loss) if loss < 700 else math.inf
