"""The training loop on a tiny staged MLP: determinism, growth steps, AdamInit, checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tqdm import tqdm

from grow_ir.backends.torch import update_params
from grow_ir.errors import GrowError
from grow_ir.growth import Trainer, apply_growth, growth_config
from grow_ir.growth.actions import GrowthContext
from grow_ir.growth.checkpoint import (
    CheckpointWriter,
    find_checkpoint,
    load_checkpoint,
    load_optimizer_state,
    optimizer_to_files,
    rng_state,
    snapshot,
)
from grow_ir.growth.device import pick_device
from grow_ir.growth.hooks import AdamInit
from grow_ir.growth.optim_state import make_optimizer, trainable
from grow_ir.growth.policy import GrowthRequest
from grow_ir.spec import load_spec
from grow_ir.spec.store import spec_text
from tests.tiny_specs import TINY_SPIRALS


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models train fastest on one thread (and the machine is shared)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


SPEC = TINY_SPIRALS
BASE = {"epochs": 3, "tail_epochs": 1, "interval": 1, "patience": 1, "batch_size": 64}


def run(tmp: Path | None = None, **settings):
    graph = load_spec(SPEC)
    cfg = growth_config(BASE, settings)  # an override of policy keeps the shared settings
    trainer = Trainer.fresh(
        graph, cfg, data_source="spirals", out_dir=tmp, device="cpu", progress=False, log=LOG.append
    )
    return trainer.run()


LOG: list[str] = []


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_two_runs_with_one_seed_give_bitwise_equal_weights(optimizer: str) -> None:
    LOG.clear()
    a = run(optimizer={"name": optimizer, "lr": 0.05})
    b = run(optimizer={"name": optimizer, "lr": 0.05})
    assert [e["pass"] for e in a.history.events] == ["insert_block"]  # grew in between
    assert a.graph.params.keys() == b.graph.params.keys()
    for k, v in a.graph.params.items():
        assert torch.equal(v, b.graph.params[k]), k
    strip = [{k: v for k, v in e.items() if k != "seconds"} for e in a.history.epochs]
    assert strip == [{k: v for k, v in e.items() if k != "seconds"} for e in b.history.epochs]
    line = next(x for x in LOG if "grew" in x)
    assert line.startswith("epoch 1: grew stage1 (insert_block, init=zero, preserved) -> ")
    assert "2 blocks" in line and "params; reason: periodic, every epoch" in line
    other = run(seed=1, optimizer={"name": optimizer, "lr": 0.05})
    assert not torch.equal(other.graph.params["head.weight"], a.graph.params["head.weight"])


def test_history_records_epochs_events_and_the_final_result() -> None:
    result = run(epochs=5, tail_epochs=1, max_depth=3)
    h = result.history.to_json()
    assert [e["epoch"] for e in h["epochs"]] == [1, 2, 3, 4, 5]
    assert all({"train_loss", "val_accuracy", "params", "lr"} <= set(e) for e in h["epochs"])
    events = h["events"]
    assert events[0]["epoch"] == 1 and all(e["pass"] == "insert_block" for e in events)
    assert all(e["preserved"] and e["args"]["stage"] == "stage1" for e in events)
    for e in events:  # an event's parameter count is the next epoch's
        assert h["epochs"][e["epoch"]]["params"] == e["params"]
    final = h["final"]
    assert final["architecture"]["stages"] == {"stage1": 1 + len(events)}
    assert final["params"] == result.graph.num_params() and 0 <= final["test_accuracy"] <= 1
    (stop,) = h["stops"]  # the stage stopped once: tau, max depth or the budget
    assert stop["unit"] == "stage1" and final["tail_start"] == stop["epoch"] + 1
    assert h["epochs"][-1]["lr"] < h["epochs"][0]["lr"]


def test_random_block_inits_are_not_preserving() -> None:
    for init in ("gauss", "uniform"):
        result = run(init=init)
        (event,) = result.history.events
        assert event["args"]["init"] == init and event["preserved"] is False


def test_adam_init_trains_the_new_block_alone_until_it_recovers() -> None:
    graph = load_spec(SPEC)
    cfg = growth_config({**BASE, "init": "adam", "adam_init": {"max_steps": 40}})
    trainer = Trainer.fresh(
        graph,
        cfg.model_copy(update={"policy": "none"}),
        data_source="spirals",
        out_dir=None,
        device="cpu",
        progress=False,
    )
    trainer.run()  # a trained network, so that a random block hurts it
    state = trainer.state
    before = update_params(state.graph, state.module)
    args = {"stage": "stage1", "init": "gauss"}
    request = GrowthRequest("stage1", "insert_block", args, "t", (AdamInit(),))
    ctx = GrowthContext(cfg, trainer.data, torch.device("cpu"), 3)
    grown, outcome = apply_growth(state, request, ctx)
    assert 0 < outcome.notes["adam_steps"] <= 40
    assert (
        outcome.notes["adam_loss"] <= outcome.notes["adam_target_loss"]
        or outcome.notes["adam_steps"] == 40
    )
    assert outcome.result.preserved is False and "AdamInit" in outcome.result.summary
    after = update_params(grown.graph, grown.module)
    for k, v in before.params.items():  # the old layers are untouched
        assert torch.equal(after.params[k], v), k
    fresh = [k for k in after.params if k.startswith("stage1.block1.")]
    assert fresh
    for k in fresh:  # the result's graph holds the trained values of the new block
        assert torch.equal(after.params[k], outcome.result.graph.params[k]), k
    assert all(p.requires_grad for p in grown.module.parameters())


def test_width_policy_in_the_loop() -> None:
    result = run(
        epochs=4,
        tail_epochs=1,
        stages=[],
        patience=1,
        tau=1.0,  # every epoch is a plateau
        widen={"nodes": ["stem"], "factor": 1.5, "max_width": 16},
    )
    (event,) = result.history.events  # the first plateau is after epoch 2
    assert (event["epoch"], event["pass"], event["args"]["width"]) == (2, "widen", 12)
    assert event["preserved"] and result.graph.node("stem").attrs.out_features == 12
    assert "gained" in result.history.stops[0]["reason"]  # then it gained less than tau


def test_gradmax_width_policy_grows_units_that_learn() -> None:
    """``widen: {init: gradmax}`` in the loop: the trainer hands GradMax a probe batch, the
    step is exact (zero fan-in), and the grown units' fan-in then leaves zero."""
    result = run(
        epochs=4,
        tail_epochs=1,
        stages=[],
        patience=1,
        tau=1.0,
        widen={"nodes": ["stem"], "factor": 1.5, "max_width": 16, "init": "gradmax"},
    )
    (event,) = result.history.events
    assert (event["pass"], event["args"]["init"], event["args"]["width"]) == (
        "widen",
        "gradmax",
        12,
    )
    assert event["preserved"] and "probe" not in event["args"]
    grown_rows = result.graph.params["stem.weight"][8:]
    assert grown_rows.shape == (4, 2) and grown_rows.abs().min() > 0


def test_a_step_the_pass_refuses_stops_that_unit_and_training_goes_on() -> None:
    LOG.clear()
    result = run(
        epochs=4,
        stages=[],
        tau=1.0,
        widen={"nodes": ["stem", "stage1.block0.fc2"], "factor": 1.5, "max_width": 16},
    )
    # stem and the block's last layer are one channel group: widening stem widened both,
    # so the second request (to 12 again) is refused and that unit stops.
    assert [(e["unit"], e["args"]["width"]) for e in result.history.events] == [("stem", 12)]
    stop = result.history.stops[0]
    assert stop["unit"] == "stage1.block0.fc2" and "the pass refused" in stop["reason"]
    assert result.graph.node("stage1.block0.fc2").attrs.out_features == 12
    assert any("stage1.block0.fc2 stops growing: the pass refused" in line for line in LOG)


def test_no_growth_policy_trains_as_is_with_the_staircase_tail() -> None:
    result = run(policy="none", epochs=4, tail_epochs=2)
    assert result.history.events == [] and result.stop_epoch == 2
    assert [e["lr"] for e in result.history.epochs] == pytest.approx([0.05, 0.05, 0.05, 0.005])


def test_checkpoint_holds_graph_optimizer_policy_and_rng(tmp_path: Path) -> None:
    result = run(tmp_path, optimizer={"name": "adam", "lr": 0.01})
    ckpt = load_checkpoint(tmp_path)
    assert find_checkpoint(tmp_path) == tmp_path / "checkpoint"
    assert ckpt.state["next_epoch"] == 3 and ckpt.state["data"] == "spirals"
    for k, v in result.graph.params.items():
        assert torch.equal(ckpt.graph.params[k], v), k
    assert set(ckpt.rng) == {"torch", "shuffle"} and ckpt.rng["torch"].dtype == torch.uint8
    json.dumps(ckpt.state)  # plain JSON
    assert not list(tmp_path.glob(".checkpoint*"))  # no temporary left behind
    # the optimizer state round-trips exactly through its files
    trainer = Trainer.resume(tmp_path, progress=False)
    module = trainer.state.module
    names = list(trainable(module))
    tensors, meta = optimizer_to_files(trainer.state.optimizer, names)
    assert tensors.keys() == ckpt.optimizer_tensors.keys() and len(tensors) == 3 * len(names)
    for k, v in tensors.items():
        assert torch.equal(v, ckpt.optimizer_tensors[k]), k
    fresh = make_optimizer(trainer.config.optimizer, module)
    load_optimizer_state(fresh, names, tensors, meta)
    assert (
        fresh.state_dict()["param_groups"] == trainer.state.optimizer.state_dict()["param_groups"]
    )
    with pytest.raises(GrowError, match="optimizer does not match"):
        load_optimizer_state(fresh, names[:-1], tensors, meta)


def test_a_checkpoint_holds_its_epoch_while_the_next_one_trains(tmp_path: Path) -> None:
    """The snapshot is the state at the epoch's end: training on during the write (the
    optimizer stepping, the weights moving) changes nothing in it; a write's error
    reaches the training thread."""
    graph = load_spec(SPEC)
    cfg = growth_config(BASE, {"optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9}})
    trainer = Trainer.fresh(
        graph, cfg, data_source="spirals", out_dir=tmp_path, progress=False, log=LOG.append
    )
    trainer._train_epoch()  # momentum buffers exist
    st = trainer.state
    names = list(trainable(st.module))
    before_params = {k: v.clone() for k, v in update_params(st.graph, st.module).params.items()}
    before_momentum = optimizer_to_files(st.optimizer, names)[0]
    snap = snapshot(
        graph=update_params(st.graph, st.module),
        optimizer=st.optimizer,
        names=names,
        rng=rng_state(trainer.generator, trainer.device),
        state=trainer.state_json(),
    )
    writer = CheckpointWriter()
    writer.write(tmp_path, snap)
    trainer._train_epoch()  # the weights and momentum move on while (or after) it writes
    writer.wait()
    ckpt = load_checkpoint(tmp_path)
    for k, v in before_params.items():
        assert torch.equal(ckpt.graph.params[k], v), k
    for k, v in before_momentum.items():
        assert torch.equal(ckpt.optimizer_tensors[k], v), k
    assert any(not torch.equal(p, before_params[k]) for k, p in st.module.state_dict().items())
    (tmp_path / "blocker").write_text("a file, not a directory")
    writer.write(tmp_path / "blocker", snap)
    with pytest.raises(OSError):
        writer.wait()
    writer.wait()  # the error is raised once


def test_a_checkpoint_moved_aside_is_still_found(tmp_path: Path) -> None:
    run(tmp_path)
    (tmp_path / "checkpoint").rename(tmp_path / ".checkpoint.old")  # killed between renames
    assert find_checkpoint(tmp_path) == tmp_path / ".checkpoint.old"
    assert Trainer.resume(tmp_path, progress=False).next_epoch == 3
    with pytest.raises(GrowError, match="nothing to resume"):
        Trainer.resume(tmp_path / "absent", progress=False)


def test_devices() -> None:
    assert pick_device("cpu") == torch.device("cpu")
    with pytest.raises(GrowError, match=r"unsupported device|unknown device"):
        pick_device("tpu")
    if torch.cuda.is_available():
        assert pick_device(None).type == "cuda"
    else:
        assert pick_device(None).type == "cpu"
        with pytest.raises(GrowError, match="CUDA is not available"):
            pick_device("cuda")


def test_each_checkpoint_holds_the_spec_of_its_own_architecture(tmp_path: Path) -> None:
    """The spec text is reused while only the weights change, and made anew after a
    growth step: every epoch's checkpoint spec is that epoch's graph's."""
    graph = load_spec(SPEC)
    cfg = growth_config(BASE, {"epochs": 4, "max_depth": 4, "tau": 0.0})
    trainer = Trainer.fresh(
        graph, cfg, data_source="spirals", out_dir=tmp_path, progress=False, log=LOG.append
    )
    texts, bar = [], tqdm(disable=True)
    for epoch in range(cfg.epochs):
        trainer._epoch(epoch, bar)
        trainer.writer.wait()
        texts.append((tmp_path / "checkpoint" / "spec.yaml").read_text())
        assert texts[-1] == spec_text(trainer.state.graph), epoch
    assert len(set(texts)) > 1  # the run grew, so the cached text had to be replaced
