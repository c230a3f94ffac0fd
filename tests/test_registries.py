"""Width inits and growth policies are registries: a new one is one function or class plus
its registration, and everything that names inits or policies (``widen``, the growth
settings, the trainer) reaches it."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import pytest
import torch

from grow_ir.errors import GrowError, PassError
from grow_ir.growth import GrowthConfig, Trainer, growth_config
from grow_ir.growth.hooks import ProbeBatch
from grow_ir.growth.policy import POLICIES, GrowthRequest, Observation, Stop, register_policy
from grow_ir.ir.graph import Graph
from grow_ir.passes import widen
from grow_ir.passes.inits import WIDTH_INITS, InitContext, NewUnits, register_width_init
from grow_ir.spec import load_spec
from tests.tiny_specs import TINY_SPIRALS

ROOT = Path(__file__).resolve().parent.parent


def test_the_inits_of_widen_are_registered_with_their_needs() -> None:
    assert {name: i.needs_probe for name, i in WIDTH_INITS.items()} == {
        "net2net": False,
        "zero": False,
        "gradmax": True,
        "lemon": False,
    }
    assert all(i.doc for i in WIDTH_INITS.values())


def test_widen_does_not_import_gradmax() -> None:
    """The widen <-> gradmax import cycle is gone: gradmax registers itself."""
    tree = ast.parse((ROOT / "grow_ir/passes/widen.py").read_text())
    imported = {
        n.module if isinstance(n, ast.ImportFrom) else a.name
        for n in ast.walk(tree)
        if isinstance(n, (ast.Import, ast.ImportFrom))
        for a in n.names
    }
    assert "grow_ir.passes.gradmax" not in imported


def test_the_policies_are_registered() -> None:
    """Every policy a spec may name is a registry entry (no name branches in the trainer)."""
    from grow_ir.growth import POLICIES

    assert {name: e.grows for name, e in POLICIES.items()} == {
        "autogrow": True,
        "none": False,
        "nest": True,
        "schedule": True,
    }
    assert all(e.doc for e in POLICIES.values())


@pytest.fixture
def half_init() -> Iterator[str]:
    """A width init registered by a test: copies of unit 0, fan-out split (exact)."""

    @register_width_init("test_first", needs_probe=False, doc="copy unit 0")
    def first(ctx: InitContext) -> NewUnits:
        return NewUnits((0,) * (ctx.width - ctx.old), fan_in="copy", fan_out="split")

    yield "test_first"
    del WIDTH_INITS["test_first"]


def test_a_registered_init_reaches_widen_and_the_settings(half_init: str) -> None:
    graph = load_spec(TINY_SPIRALS)
    node = next(n.name for n in graph.nodes if n.op == "linear")
    result = widen.run(graph, node=node, width=12, init=half_init)
    assert result.preserved and f"({half_init}" in result.summary
    cfg = growth_config({"widen": {"nodes": [node], "init": half_init}})
    assert cfg.widen is not None and cfg.widen.init == half_init
    with pytest.raises(GrowError, match="one of net2net, zero, gradmax, lemon, test_first"):
        growth_config({"widen": {"nodes": [node], "init": "nope"}})
    with pytest.raises(PassError, match="unknown init"):
        widen(graph, node=node, width=12, init="nope")


@pytest.fixture
def widen_once() -> Iterator[str]:
    """A growth policy registered by a test: widens one layer once, after epoch 0, with an
    init that reads a probe batch (so the trainer's ProbeBatch hook runs)."""

    class WidenOnceConfig(GrowthConfig):
        policy: Literal["test_widen_once"] = "test_widen_once"
        width: int = 12

    @register_policy(
        "test_widen_once", doc="widen the first linear layer once", settings=WidenOnceConfig
    )
    class WidenOnce:
        def __init__(self, config: WidenOnceConfig, graph: Graph) -> None:
            self.node = next(n.name for n in graph.nodes if n.op == "linear")
            self.width = config.width
            self.done = False
            self.seen: list[Observation] = []

        def observe(self, obs: Observation) -> list[GrowthRequest]:
            self.seen.append(obs)
            if self.done:
                return []
            args = {"node": self.node, "width": self.width, "init": "gradmax"}
            return [GrowthRequest(self.node, "widen", args, "test", (ProbeBatch(),))]

        def grown(self, request: GrowthRequest, epoch: int, graph: Graph) -> None:
            self.done = True

        def refused(self, request: GrowthRequest, epoch: int, reason: str) -> None:
            raise AssertionError(reason)

        @property
        def growing(self) -> bool:
            return not self.done

        def drain_stops(self) -> list[Stop]:
            return []

        def summary(self) -> dict[str, Any]:
            return {"seen": [o.epoch for o in self.seen]}

        def state_dict(self) -> dict[str, Any]:
            return {"done": self.done}

        def load_state_dict(self, state: dict[str, Any]) -> None:
            self.done = state["done"]

    yield "test_widen_once"
    del POLICIES["test_widen_once"]


def test_a_registered_policy_runs_in_the_trainer(widen_once: str) -> None:
    torch.set_num_threads(1)
    graph = load_spec(TINY_SPIRALS)
    cfg = growth_config(
        {"policy": widen_once, "epochs": 3, "tail_epochs": 1, "batch_size": 64, "width": 11}
    )
    trainer = Trainer.fresh(
        graph, cfg, data_source="spirals", out_dir=None, device="cpu", progress=False
    )
    result = trainer.run()
    (event,) = result.history.events
    assert event["pass"] == "widen" and event["preserved"] is True
    assert result.graph.node(trainer.policy.node).attrs.out_features == 11  # its own setting
    assert result.history.final["units"] == {"seen": [0]}
    obs = trainer.policy.seen[0]
    assert obs.data is trainer.data and obs.metrics["val_accuracy"] == obs.val_accuracy
    with pytest.raises(GrowError, match="one of autogrow, none, nest, schedule, test_widen_once"):
        growth_config({"policy": "nope"})
    with pytest.raises(GrowError, match="a setting of policy test_widen_once, not of policy none"):
        growth_config({"policy": "none", "width": 11})
