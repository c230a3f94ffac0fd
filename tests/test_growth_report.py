"""The line a growth step prints says what AdamInit did: recovered, or stopped at its cap."""

from __future__ import annotations

import pytest
import torch

from grow_ir.growth import Trainer, apply_growth, growth_config
from grow_ir.growth.actions import GrowthContext
from grow_ir.growth.hooks import AdamInit
from grow_ir.growth.policy import GrowthRequest
from grow_ir.growth.report import growth_line
from grow_ir.spec import load_spec
from tests.tiny_specs import TINY_SPIRALS

BASE = {"epochs": 3, "tail_epochs": 1, "interval": 1, "patience": 1, "batch_size": 64}


@pytest.fixture(scope="module")
def trained():
    torch.set_num_threads(1)
    cfg = growth_config(BASE, {"policy": "none"})
    graph = load_spec(TINY_SPIRALS)
    trainer = Trainer.fresh(
        graph, cfg, data_source="spirals", out_dir=None, device="cpu", progress=False
    )
    trainer.run()  # a trained network, so that a Gaussian block hurts it
    return trainer


def grow(trainer, **adam):
    cfg = growth_config({**BASE, "init": "adam", "adam_init": adam})
    args = {"stage": "stage1", "init": "gauss"}
    request = GrowthRequest("stage1", "insert_block", args, "t", (AdamInit(cfg.adam_init),))
    ctx = GrowthContext(cfg, trainer.data, torch.device("cpu"), 3)
    return apply_growth(trainer.state, request, ctx)[1]


def test_adam_init_that_hits_its_cap_says_so(trained) -> None:
    outcome = grow(trained, lr=1e-9, max_steps=2, check_every=1)
    n = outcome.notes
    assert n["adam_steps"] == 2 and n["adam_loss"] > n["adam_target_loss"]
    line = growth_line(4, outcome)
    want = (
        f"stopped at its cap of 2 Adam steps with the probe loss {n['adam_loss']:.3f} still "
        f"above {n['adam_target_loss']:.3f} before the step; training goes on from there"
    )
    assert want in line


def test_adam_init_with_its_defaults_recovers_and_says_so(trained) -> None:
    outcome = grow(trained)
    n = outcome.notes
    assert n["adam_loss"] <= n["adam_target_loss"] and 0 < n["adam_steps"] < 300
    line = growth_line(4, outcome)
    steps = n["adam_steps"]
    assert f"init=adam ({steps} Adam steps: probe loss {n['adam_loss']:.3f} <= " in line
