"""GradMax in the trainer: the width policy's ``init: gradmax`` (and NeST's connection
growth, ``grow_connections``) gets a probe batch.

GradMax (:mod:`grow_ir.passes.gradmax`) sets new units' fan-out from the gradient of the
loss on a batch of training data; this module draws that batch at the growth step and
registers the init with the width policy.
"""

from __future__ import annotations

from typing import Any

import torch

from grow_ir.growth.actions import PASS_ARGS, WIDEN_ARGS, GrowthContext, TrainState, step_seed
from grow_ir.growth.autogrow import GrowthRequest
from grow_ir.growth.config import WIDEN_INITS
from grow_ir.passes.gradmax import Probe

PROBE_SIZE = 256
"""Training samples in GradMax's probe batch."""


def gradmax_args(ctx: GrowthContext, state: TrainState, request: GrowthRequest) -> dict[str, Any]:
    """``widen``'s ``probe``: a seeded batch of up to PROBE_SIZE training samples with a
    cross-entropy loss on the trained output (CPU tensors, like the graph's)."""
    data = ctx.data
    gen = torch.Generator().manual_seed(step_seed(ctx.config.seed, ctx.epoch, request.unit))
    idx = torch.randperm(len(data.y_train), generator=gen)[:PROBE_SIZE]
    (name,) = state.graph.inputs
    return {
        "probe": Probe(
            inputs={name: data.x_train[idx].cpu()},
            targets=data.y_train[idx].cpu(),
            loss="cross_entropy",
            output=ctx.task,
        )
    }


WIDEN_INITS["gradmax"] = "zero fan-in, fan-out from the loss gradient's top singular vectors"
WIDEN_ARGS["gradmax"] = gradmax_args
PASS_ARGS["grow_connections"] = gradmax_args  # NeST's connection growth reads a probe too
