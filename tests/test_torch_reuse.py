"""to_torch(..., reuse=old): unchanged submodules are taken over, everything else rebuilt,
and the result is bitwise the fresh lowering."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import torch
from torch import nn

from grow_ir import passes
from grow_ir.backends.torch import to_device, to_torch, update_params
from grow_ir.errors import GrowError
from grow_ir.ir import Graph
from grow_ir.probes import random_inputs, randomize_norms
from grow_ir.spec import load_spec

CONV = {"op": "conv2d", "out_channels": 4, "kernel_size": 3, "padding": 1}


def cnn() -> Graph:
    """Two residual conv blocks in a stage, pool, two task heads (``a`` and ``b``)."""
    block = {
        "nodes": [
            {"name": "conv1", "inputs": ["input"], **CONV, "out_channels": "$c"},
            {"name": "bn1", "op": "batchnorm"},
            {"name": "act1", "op": "relu"},
            {"name": "conv2", **CONV, "out_channels": "$c"},
            {"name": "bn2", "op": "batchnorm"},
            {"name": "sum", "op": "add", "inputs": ["bn2", "input"]},
            {"name": "out", "op": "relu"},
        ]
    }
    spec = {
        "version": 1,
        "name": "cnn",
        "seed": 0,
        "inputs": {"image": {"shape": ["batch", 3, 6, 6]}},
        "blocks": {"basic": block},
        "nodes": [
            {"name": "stem", "inputs": ["image"], **CONV},
            {"name": "stem_bn", "op": "batchnorm"},
            {"name": "stem_act", "op": "relu"},
            {"name": "stage1", "stage": "basic", "depth": 2, "with": {"c": 4}},
            {"name": "pool", "op": "global_avgpool"},
            {"name": "head", "op": "linear", "out_features": 3},
            {"name": "aux", "op": "linear", "inputs": ["pool"], "out_features": 2},
        ],
        "outputs": {"a": "head", "b": "aux"},
    }
    return randomize_norms(load_spec(spec), seed=1)


STEPS: dict[str, Any] = {
    "widen": lambda g: passes.widen(g, node="stem", width=8),
    "insert_block": lambda g: passes.insert_block(g, stage="stage1"),
    "insert_layer": lambda g: passes.insert_layer(g, after="stage1.block0.out", op="conv2d"),
    "fork_task": lambda g: passes.fork_task(g, task="c", base="a", new=["head"], adapt=["stem"]),
}
"""A growth step per pass kind: channel group, new block, rewired layer, new task."""


def submodules(module: nn.Module) -> dict[str, nn.Module]:
    return dict(module.named_modules())


def assert_same_as_fresh(grown: Graph, module: nn.Module, task: str | None = None) -> None:
    """``module`` computes bitwise what a fresh lowering of ``grown`` computes, in eval
    and train mode, with the same state_dict keys, values and trainable parameters."""
    fresh = to_torch(grown, task=task)
    assert list(module.state_dict()) == list(fresh.state_dict())
    for key, value in fresh.state_dict().items():
        assert torch.equal(module.state_dict()[key], value), key
    flags = {k: p.requires_grad for k, p in fresh.named_parameters()}
    assert {k: p.requires_grad for k, p in module.named_parameters()} == flags
    modes = {k: m.training for k, m in fresh.named_modules()}
    assert {k: m.training for k, m in module.named_modules()} == modes
    x = random_inputs(grown, batch=4, seed=3)
    for mode in (False, True):
        with torch.no_grad():
            want = fresh.train(mode)(**x)
            got = module.train(mode)(**x)
        for out in want if isinstance(want, dict) else [None]:
            a, b = (got, want) if out is None else (got[out], want[out])
            assert torch.equal(a, b), (mode, out)


@pytest.mark.parametrize("step", STEPS)
def test_untouched_submodules_are_the_same_objects(step: str) -> None:
    graph = cnn()
    old = to_torch(graph)
    grown = STEPS[step](graph)
    new = to_torch(grown, reuse=old)
    before, after = submodules(old), submodules(new)
    kept = {name for name, m in after.items() if before.get(name) is m}
    changed = set()
    for node in grown.nodes:
        name = node.param_prefix
        if name not in after or not node.opdef.params(node.attrs, grown.input_types(node)):
            continue
        same = all(grown.params[p] is graph.params.get(p) for p in grown.node_params(node))
        unchanged = name in graph.node_map and same
        assert (name in kept) == unchanged, name
        changed |= {name} - kept
    assert kept and (changed or step == "fork_task")
    assert_same_as_fresh(grown, new)


def test_a_record_has_every_field_of_a_built() -> None:
    """``record`` fills the dataclass's fields directly: all of them, as its __init__."""
    graph = cnn()
    for target, built in to_torch(graph).built.items():
        fields = {f.name: getattr(built, f.name) for f in dataclasses.fields(built)}
        assert vars(built) == fields, target
        assert built.node is graph.node_map[target]


def test_trained_values_are_carried_through_update_params() -> None:
    """The trainer's growth step: train, take the values back, grow, re-lower."""
    graph = cnn()
    module = to_torch(graph)
    opt = torch.optim.SGD(module.parameters(), lr=0.1, momentum=0.9)
    for seed in range(3):
        out = module(**random_inputs(graph, batch=4, seed=seed))
        loss = out["a"].square().mean() + out["b"].square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    trained = update_params(graph, module)
    grown = passes.insert_block(trained, stage="stage1")
    new = to_torch(grown, reuse=module)
    assert new.get_submodule("stage1.block1.conv1") is module.get_submodule("stage1.block1.conv1")
    assert new.get_submodule("stem_bn") is module.get_submodule("stem_bn")
    assert all(p.grad is None for p in new.parameters())
    assert_same_as_fresh(grown, new)


DIRTY = {
    "frozen": lambda m: m.get_submodule("stem").weight.requires_grad_(False),
    "grad": lambda m: setattr(
        m.get_submodule("stem_bn").bias, "grad", torch.ones_like(m.get_submodule("stem_bn").bias)
    ),
    "eval": lambda m: m.get_submodule("stage1.block0.bn2").eval(),
}
"""One way each a reused submodule can differ from a fresh build (besides its values)."""


@pytest.mark.parametrize("dirty", sorted(DIRTY))
def test_reused_submodules_come_back_as_fresh_ones(dirty: str) -> None:
    """A submodule taken over frozen, with a gradient or in eval mode is put back in the
    state a fresh build has (train mode, requiring gradients, none held), whichever one
    thing differs."""
    graph = cnn()
    old = to_torch(graph)
    DIRTY[dirty](old)
    grown = passes.insert_layer(graph, after="stage1.block0.out", op="conv2d")
    new = to_torch(grown, reuse=old)
    assert new.get_submodule("stem") is old.get_submodule("stem")
    assert all(m.training for m in new.modules())
    assert all(p.requires_grad and p.grad is None for p in new.parameters())
    assert_same_as_fresh(grown, new)


def test_a_module_changed_after_lowering_is_rebuilt() -> None:
    """An optimizer step (and a batchnorm forward in train mode) after the lowering breaks
    the link: the re-lowering holds the graph's values, not the trained ones."""
    graph = cnn()
    module = to_torch(graph)
    opt = torch.optim.SGD([module.get_submodule("head").weight], lr=0.5)
    out = module(**random_inputs(graph, batch=4, seed=0))  # moves every batchnorm's stats
    out["a"].sum().backward()
    opt.step()
    grown = passes.insert_layer(graph, after="stage1.block0.out", op="conv2d")
    new = to_torch(grown, reuse=module)
    assert new.get_submodule("head") is not module.get_submodule("head")
    assert new.get_submodule("stem_bn") is not module.get_submodule("stem_bn")
    assert new.get_submodule("aux") is module.get_submodule("aux")  # untouched: kept
    assert_same_as_fresh(grown, new)


def test_a_module_in_another_dtype_is_rebuilt() -> None:
    graph = cnn()
    module = to_torch(graph).double()
    taken = update_params(graph, module)  # rounded to float32: not an exact copy
    new = to_torch(taken, reuse=module)
    assert not set(submodules(new).values()) & set(submodules(module).values()) - {module}
    assert_same_as_fresh(taken, new)


def test_task_lowering_sets_freezing_from_the_new_graph() -> None:
    """Reusing a task-``a`` module for a fork's new task ``c``: shared parameters become
    frozen and shared batchnorms stay in eval mode, as a fresh lowering of ``c`` has."""
    graph = cnn()
    module = to_torch(graph, task="a")
    assert module.get_submodule("head").weight.requires_grad  # a's own; the trunk feeds b too
    grown = STEPS["fork_task"](graph)
    new = to_torch(grown, task="c", reuse=module)
    assert new.get_submodule("stage1.block0.conv1") is module.get_submodule("stage1.block0.conv1")
    assert not new.get_submodule("stage1.block0.conv1").weight.requires_grad
    assert not new.get_submodule("stage1.block0.bn1").training
    assert_same_as_fresh(grown, new, task="c")
    back = to_torch(grown, task="a", reuse=new)
    assert back.get_submodule("stage1.block0.conv1").weight.requires_grad is False
    assert_same_as_fresh(grown, back, task="a")


def test_a_shared_node_reuses_one_module_for_both_uses() -> None:
    """After a fork, task c's path calls task a's stage-1 modules: growing c's path keeps
    them, one object called from both paths."""
    grown = STEPS["fork_task"](cnn())
    module = to_torch(grown)
    again = to_torch(
        passes.insert_layer(grown, after="c.stage1.block0.out", op="conv2d"), reuse=module
    )
    conv = again.get_submodule("stage1.block0.conv1")
    assert conv is module.get_submodule("stage1.block0.conv1")
    assert again.code.count("stage1_block0.conv1(") == 2


def test_reuse_through_a_ddp_like_wrapper_and_bad_reuse() -> None:
    graph = cnn()
    module = to_torch(graph)
    with pytest.raises(GrowError) as err:
        to_torch(graph, reuse=nn.Linear(2, 2))
    assert err.value.field == "reuse"
    module.stem = nn.Conv2d(3, 4, 3, padding=1)  # replaced by hand: not reused
    new = to_torch(graph, reuse=module)
    assert new.get_submodule("stem") is not module.stem
    assert new.get_submodule("stem_bn") is module.get_submodule("stem_bn")
    assert_same_as_fresh(graph, new)


@pytest.mark.parametrize("step", ["widen", "insert_block", "insert_layer"])
def test_to_device_moves_exactly_the_submodules_built_afresh(step: str) -> None:
    """``to_device`` moves the submodules a re-lowering built afresh (to ``meta`` here,
    the one other device this machine has) and leaves those taken over from ``reuse``
    alone, which live on the device already when ``reuse`` does."""
    graph = cnn()
    old = to_torch(graph)
    kept = {id(t) for t in old.state_dict(keep_vars=True).values()}
    grown = STEPS[step](graph)
    new = to_torch(grown, reuse=old)
    before = new.state_dict(keep_vars=True)
    assert any(id(t) in kept for t in before.values())
    assert any(id(t) not in kept for t in before.values())
    moved = to_device(new, old, torch.device("meta"))
    assert moved is new
    after = new.state_dict(keep_vars=True)
    assert list(after) == list(to_torch(grown).state_dict())
    for key, t in after.items():
        reused = id(before[key]) in kept
        assert t.device.type == ("cpu" if reused else "meta"), key
        assert (t is before[key]) or not reused, key
    assert new.training


def test_to_device_sees_through_wrappers_and_moves_all_of_a_module_it_did_not_make() -> None:
    """A compiled (wrapped) re-lowering has its new submodules moved, the wrapper
    returned; a module ``to_torch`` did not make is moved whole, as ``.to`` would."""
    graph = cnn()
    old = to_torch(graph)
    new = to_torch(STEPS["insert_block"](graph), reuse=old)
    kept = {id(t) for t in old.state_dict(keep_vars=True).values()}
    wrapped = torch.compile(new)  # compiles on first call only: nothing runs here
    assert to_device(wrapped, old, torch.device("meta")) is wrapped
    placed = {(id(t) in kept, t.device.type) for t in new.state_dict(keep_vars=True).values()}
    assert placed == {(True, "cpu"), (False, "meta")}  # taken over: kept; built: moved
    plain = nn.Sequential(nn.Linear(2, 2))
    moved = to_device(plain, old, torch.device("meta"))
    assert all(p.device.type == "meta" for p in moved.parameters())
