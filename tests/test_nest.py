"""The NeST policy in the trainer: its schedule of growth and pruning steps, what each step
preserves, resuming to the same weights, ONNX export of the pruned network, bad settings."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tqdm import tqdm

from grow_ir.backends.onnx_check import check_parity
from grow_ir.errors import GrowError
from grow_ir.growth import Trainer, growth_config
from grow_ir.growth.device import deterministic
from grow_ir.passes.connections import live_params
from grow_ir.spec import load_spec

SPEC = {
    "version": 1,
    "name": "nest_spirals",
    "seed": 0,
    "inputs": {"x": {"shape": ["batch", 2]}},
    "nodes": [
        {"name": "fc1", "op": "linear", "out_features": 8},
        {"name": "act1", "op": "relu"},
        {"name": "fc2", "op": "linear", "out_features": 8},
        {"name": "act2", "op": "relu"},
        {"name": "head", "op": "linear", "out_features": 2},
    ],
    "outputs": {"y": "head"},
}
NEST = {
    "nodes": ["fc1", "fc2"],
    "grow_steps": 2,
    "seed_density": 0.5,
    "connection_growth": 0.5,
    "prune_steps": 2,
    "density": 0.4,
    "channels": 0.75,
    "factor": 1.25,
}
BASE = {"policy": "nest", "epochs": 6, "tail_epochs": 1, "interval": 1, "batch_size": 64}


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def trainer(out: Path | None = None, **nest: object) -> Trainer:
    cfg = growth_config({**BASE, "nest": {**NEST, **nest}})
    return Trainer.fresh(
        load_spec(SPEC), cfg, data_source="spirals", out_dir=out, device="cpu", progress=False
    )


def test_the_schedule_grows_then_prunes() -> None:
    result = trainer().run()
    events = [
        (e["epoch"], e["pass"], e["args"]["node"], e["preserved"]) for e in result.history.events
    ]
    refused = result.history.final["units"]["nest"]["refused"]
    # epoch 1: the sparse seed, then GradMax units (fc2 feeds 2 outputs: at most 2 new units
    # per step, so its second widening, 10 -> 13, is refused and recorded)
    assert events[:4] == [
        (1, "prune_connections", "fc1", False),
        (1, "prune_connections", "fc2", False),
        (1, "widen", "fc1", True),
        (1, "widen", "fc2", True),
    ]
    assert events[4:7] == [
        (2, "grow_connections", "fc1", True),
        (2, "grow_connections", "fc2", True),
        (2, "widen", "fc1", True),
    ]
    assert (refused[0]["epoch"], refused[0]["unit"], refused[0]["pass"]) == (2, "fc2", "widen")
    assert "GradMax grows at most 2 units" in refused[0]["reason"]
    # epoch 3: channels by l1 (75%), connections to 1 - 0.6 / 2; epoch 4: to 0.4, dead channels
    assert [e[:3] for e in events[7:11]] == [
        (3, "prune", "fc1"),
        (3, "prune", "fc2"),
        (3, "prune_connections", "fc1"),
        (3, "prune_connections", "fc2"),
    ]
    assert [e[:3] for e in events[11:13]] == [
        (4, "prune_connections", "fc1"),
        (4, "prune_connections", "fc2"),
    ]
    dead = [e for e in events[13:] if e[1] == "prune"]
    assert all(e[0] == 4 and e[3] for e in dead)  # removing dead channels is exact
    assert len(events) == 13 + len(dead)
    assert len(dead) + sum(r["pass"] == "prune" for r in refused) == 2
    assert result.stop_epoch == 4  # the learning-rate tail starts after the last step
    g = result.graph
    widths = {n: g.node(n).attrs.out_features for n in ("fc1", "fc2")}
    assert widths["fc1"] <= int(13 * 0.75) and widths["fc2"] <= int(10 * 0.75)
    for layer in ("fc1", "fc2"):
        assert g.params[f"{layer}.weight_mask"].mean().item() <= 0.45
    units = result.history.final["units"]
    assert units["nest"]["live_params"] == live_params(g) < g.num_params()
    assert check_parity(g) <= 1e-5


def test_a_resumed_run_ends_with_the_uninterrupted_weights(tmp_path: Path) -> None:
    whole = trainer(tmp_path / "a").run()
    first = trainer(tmp_path / "b")
    with deterministic(first.threads):
        for epoch in range(3):  # killed after epoch 3, mid-schedule
            first._epoch(epoch, tqdm(disable=True))
        first.writer.wait()  # its checkpoint of epoch 3 is on disk (written in the background)
    resumed = Trainer.resume(tmp_path / "b", progress=False)
    assert resumed.next_epoch == 3 and resumed.policy.state_dict() == first.policy.state_dict()
    result = resumed.run()
    assert result.graph.params.keys() == whole.graph.params.keys()
    for k, v in whole.graph.params.items():
        assert torch.equal(result.graph.params[k], v), k
    assert [e["pass"] for e in result.history.events] == [e["pass"] for e in whole.history.events]


def test_bad_settings_name_the_field() -> None:
    with pytest.raises(GrowError, match="missing growth setting of policy nest") as info:
        growth_config({"policy": "nest"})
    assert info.value.field == "growth.nest"
    with pytest.raises(GrowError, match="NeST grows and prunes linear and conv layers") as info:
        trainer(nodes=["act1"])
    assert info.value.field == "growth.nest.nodes"
    with pytest.raises(GrowError) as info:
        growth_config({**BASE, "nest": {**NEST, "density": 1.5}})
    assert info.value.field == "growth.nest.density"
    with pytest.raises(GrowError, match="at least one growth or pruning step"):
        growth_config({**BASE, "nest": {**NEST, "grow_steps": 0, "prune_steps": 0}})
