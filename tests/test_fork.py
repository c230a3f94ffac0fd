"""fork_task: reuse / adapt / new per layer, ownership, and training isolation."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

from grow_ir import passes, to_torch, update_params
from grow_ir.errors import PassError
from grow_ir.ir.graph import Graph
from grow_ir.passes.manager import output_error
from grow_ir.probes import random_inputs, randomize_norms
from grow_ir.spec import load_spec

TOL = 1e-5


@pytest.fixture(scope="module")
def net() -> Graph:
    """conv-bn-relu ×2 -> pool -> fc -> relu -> head (output t1), plus outputs feat and aux."""
    conv = {"op": "conv2d", "out_channels": 4, "kernel_size": 3, "padding": 1}
    nodes = [
        {"name": "c1", "inputs": ["image"], **conv},
        {"name": "bn1", "op": "batchnorm"},
        {"name": "r1", "op": "relu"},
        {"name": "c2", **conv},
        {"name": "bn2", "op": "batchnorm"},
        {"name": "r2", "op": "relu"},
        {"name": "pool", "op": "global_avgpool"},
        {"name": "fc", "op": "linear", "out_features": 6},
        {"name": "r3", "op": "relu"},
        {"name": "head", "op": "linear", "out_features": 3},
        {"name": "aux", "op": "linear", "inputs": ["pool"], "out_features": 2},
    ]
    spec = {
        "version": 1,
        "inputs": {"image": {"shape": ["batch", 3, 6, 6]}},
        "nodes": nodes,
        "outputs": {"t1": "head", "feat": "r3", "aux": "aux"},
    }
    return randomize_norms(load_spec(spec), seed=1)


def error(old: Graph, result: passes.PassResult) -> float:
    return max(output_error(old, result.graph, result.same_as, batch=b, seed=b) for b in (1, 4))


def test_structure(net: Graph) -> None:
    result = passes.fork_task.run(net, task="t2", base="t1", new=["bn2"], adapt=["c2", "fc"])
    new = [
        (n.name, n.op, n.inputs, n.share) for n in result.graph.nodes if n.name not in net.node_map
    ]
    assert new == [
        ("t2.c2", "conv2d", ("r1",), "c2"),
        ("t2.c2_parallel", "conv2d", ("r1",), None),
        ("t2.c2_adapted", "add", ("t2.c2", "t2.c2_parallel"), None),
        ("t2.bn2", "batchnorm", ("t2.c2_adapted",), None),
        ("t2.r2", "relu", ("t2.bn2",), None),
        ("t2.pool", "global_avgpool", ("t2.r2",), None),
        ("t2.fc", "linear", ("t2.pool",), "fc"),
        ("t2.fc_lora_a", "linear", ("t2.pool",), None),
        ("t2.fc_lora_b", "linear", ("t2.fc_lora_a",), None),
        ("t2.fc_adapted", "add", ("t2.fc", "t2.fc_lora_b"), None),
        ("t2.r3", "relu", ("t2.fc_adapted",), None),
        ("t2.head", "linear", ("t2.r3",), "head"),
    ]
    names = [n.name for n in result.graph.nodes]
    assert names.index("t2.c2") == names.index("c2") + 1  # copies sit beside their originals
    assert result.graph.outputs == {**net.outputs, "t2": "t2.head"}
    assert result.same_as == {"t2": "t1"} and result.preserved
    assert "1 new, 2 adapted (lora, parallel), 3 reused layers" in result.summary
    for key in ("weight", "bias", "running_mean", "running_var"):
        origin = result.origins[f"t2.bn2.{key}"]
        assert origin.source == f"bn2.{key}"
        assert torch.equal(result.graph.params[f"t2.bn2.{key}"], net.params[f"bn2.{key}"])
    assert result.origins["t2.fc_lora_b.weight"].source is None


def test_ownership(net: Graph) -> None:
    g = passes.fork_task(net, task="t2", base="t1", new=["bn2"], adapt=["c2", "fc"])
    owners = g.param_owners
    assert owners["c1.weight"] == {"t1", "t2", "feat", "aux"}
    assert owners["c2.weight"] == {"t1", "t2", "feat", "aux"}
    assert owners["head.weight"] == {"t1", "t2"}
    assert owners["bn2.weight"] == {"t1", "feat", "aux"}
    mine = {k for k, v in owners.items() if v == {"t2"}}
    assert mine == {
        "t2.c2_parallel.weight",
        *(f"t2.bn2.{k}" for k in ("weight", "bias", "running_mean", "running_var")),
        "t2.bn2.num_batches_tracked",
        "t2.fc_lora_a.weight",
        "t2.fc_lora_b.weight",
    }
    module = to_torch(g, task="t2")
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    assert trainable == {k for k in mine if k in dict(module.named_parameters())}


@pytest.mark.parametrize(
    ("new", "adapt", "adapter"),
    [
        ([], [], "auto"),
        (["c1"], [], "auto"),
        ([], ["c1", "c2", "fc", "head"], "auto"),
        (["bn1", "head"], ["c2"], "serial"),
        ([], ["fc"], "serial"),
    ],
)
def test_fork_is_exact(net: Graph, new: list, adapt: list, adapter: str) -> None:
    result = passes.fork_task.run(net, task="t2", base="t1", new=new, adapt=adapt, adapter=adapter)
    assert result.preserved
    assert error(net, result) <= TOL


def test_fork_of_a_fork(net: Graph) -> None:
    g = passes.fork_task(net, task="t2", base="t1", new=["c2"])
    result = passes.fork_task.run(g, task="t3", base="t2", new=["t2.fc"], adapt=["t2.c2"])
    assert result.graph.node("t3.t2.head").share == "head"  # shares the owner, not the copy
    assert result.graph.node("t3.t2.c2").share == "t2.c2"
    assert error(g, result) <= TOL


def test_fork_reusing_everything(net: Graph) -> None:
    result = passes.fork_task.run(net, task="t2", base="t1")
    assert result.graph.outputs["t2"] == "head"
    assert len(result.graph.nodes) == len(net.nodes)
    assert not any(p.requires_grad for p in to_torch(result.graph, task="t2").parameters())


def test_new_head(net: Graph) -> None:
    result = passes.fork_task.run(net, task="t2", base="t1", adapt=["fc"], head=7)
    assert not result.preserved
    assert result.reason.startswith("new head: 't2.head' has 7")
    assert result.same_as == {}
    assert result.graph.node("t2.head").attrs.out_features == 7
    assert result.graph.node("t2.head").share is None
    assert result.graph.types["t2.head"].shape == ("batch", 7)
    assert error(net, result) <= TOL  # the old outputs are untouched


# ---- training one task cannot change another ----------------------------------------------


def optimizers() -> list[Callable[[list[torch.nn.Parameter]], torch.optim.Optimizer]]:
    return [
        lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=1e-3),
        lambda ps: torch.optim.Adam(ps, lr=0.05),
    ]


def outputs(graph: Graph, task: str, x: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return to_torch(graph, task=task).eval()(**x)


def train(
    graph: Graph, task: str, make_opt: Callable, *, everything: bool, mode: str = "train"
) -> Graph:
    """A few real optimizer steps on ``task`` alone; the weights taken back."""
    module = to_torch(graph, task=task).train(mode == "train")
    params = list(module.parameters())
    opt = make_opt(params if everything else [p for p in params if p.requires_grad])
    gen = torch.Generator().manual_seed(0)
    for step in range(4):
        x = random_inputs(graph, batch=4, seed=step)
        target = torch.randn(4, graph.types[graph.outputs[task]].shape[1], generator=gen)
        loss = torch.nn.functional.mse_loss(module(**x), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return update_params(graph, module)


@pytest.mark.parametrize("make_opt", optimizers(), ids=["sgd_momentum", "adam"])
@pytest.mark.parametrize("everything", [False, True], ids=["trainable", "all_params"])
def test_training_a_task_cannot_change_another(net: Graph, make_opt: Any, everything: bool) -> None:
    g = passes.fork_task(net, task="t2", base="t1", new=["bn1", "bn2"], adapt=["c2", "fc"], head=5)
    x = random_inputs(g, batch=3, seed=9)
    before = {t: outputs(g, t, x) for t in g.outputs}
    trained = train(g, "t2", make_opt, everything=everything)
    for t in ("t1", "feat", "aux"):
        assert torch.equal(outputs(trained, t, x), before[t]), t
    assert not torch.allclose(outputs(trained, "t2", x), before["t2"])
    changed = {k for k in g.params if not torch.equal(g.params[k], trained.params[k])}
    assert changed and all(trained.param_owners[k] == {"t2"} for k in changed)


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_training_with_shared_batchnorm_statistics(net: Graph, mode: str) -> None:
    """Every layer reused or adapted, so batchnorm statistics are shared: training t2 in
    train mode must not move them (shared batchnorms stay in eval mode for t2)."""
    g = passes.fork_task(net, task="t2", base="t1", adapt=["c1", "c2", "fc", "head"])
    module = to_torch(g, task="t2").train()
    shared_bns = [m for m in module.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert shared_bns and not any(m.training for m in shared_bns)
    x = random_inputs(g, batch=3, seed=9)
    before = outputs(g, "t1", x)
    trained = train(g, "t2", optimizers()[1], everything=True, mode=mode)
    assert torch.equal(outputs(trained, "t1", x), before)
    assert not torch.allclose(outputs(trained, "t2", x), before)
    for key in g.params:
        if "running" in key or "num_batches" in key:
            assert torch.equal(trained.params[key], g.params[key]), key


# ---- one test per refusal ----------------------------------------------------------------


def refuse(graph: Graph, match: str, **kwargs: Any) -> PassError:
    with pytest.raises(PassError, match=match) as info:
        passes.fork_task(graph, **kwargs)
    assert info.value.reason.startswith("fork_task: ")
    return info.value


def test_refuses_an_existing_task(net: Graph) -> None:
    refuse(net, "the task already exists", task="aux", base="t1")


@pytest.mark.parametrize(("task", "why"), [("2nd", "malformed"), ("train", "reserved word")])
def test_refuses_a_bad_task_name(net: Graph, task: str, why: str) -> None:
    err = refuse(net, why, task=task, base="t1")
    assert err.field == "task"


def test_refuses_an_unknown_base(net: Graph) -> None:
    refuse(net, "unknown base task", task="t2", base="t9")


def test_refuses_a_layer_off_the_path(net: Graph) -> None:
    err = refuse(net, "not a node on the path of output 't1'", task="t2", base="t1", new=["aux"])
    assert err.found == "a node off the path" and err.field == "new"
    err = refuse(net, "not a node on the path", task="t2", base="t1", adapt=["nope"])
    assert err.found == "no such node" and err.field == "adapt"


def test_refuses_a_layer_without_parameters(net: Graph) -> None:
    refuse(net, "a relu has no parameters to copy", task="t2", base="t1", new=["r1"])


def test_refuses_an_adapter_that_does_not_apply(net: Graph) -> None:
    refuse(net, "adapter 'auto' does not apply to a batchnorm", task="t2", base="t1",
           adapt=["bn1"])  # fmt: skip
    refuse(net, "adapter 'lora' does not apply to a conv2d", task="t2", base="t1",
           adapt=["c1"], adapter="lora")  # fmt: skip


def test_refuses_new_and_adapted(net: Graph) -> None:
    refuse(net, "either new or adapted", task="t2", base="t1", new=["fc"], adapt=["fc"])


def test_refuses_a_head_on_a_layer_that_is_not_linear_or_conv(net: Graph) -> None:
    err = refuse(net, "only a linear or conv output layer", task="t2", base="feat", head=4)
    assert err.node == "r3"


def test_refuses_a_head_that_is_also_new(net: Graph) -> None:
    refuse(net, "cannot also be new or adapted", task="t2", base="t1", new=["head"], head=4)


def test_refuses_a_bad_head_size(net: Graph) -> None:
    refuse(net, "head must be a positive integer", task="t2", base="t1", head=0)


def test_refuses_an_unknown_adapter(net: Graph) -> None:
    refuse(net, r"unknown adapter \(did you mean 'serial'\?\)", task="t2", base="t1",
           adapter="serail")  # fmt: skip


def test_refuses_a_bad_rank(net: Graph) -> None:
    refuse(net, "rank must be a positive integer", task="t2", base="t1", rank=-1)


def test_refuses_names_that_are_not_a_list(net: Graph) -> None:
    refuse(net, "expected a node name or a list of node names", task="t2", base="t1", new=3)


@pytest.mark.parametrize(
    ("pass_name", "kwargs"),
    [
        ("add_heads", {"heads": 4}),
        ("grow_head_dim", {"head_dim": 6}),
        ("prune_heads", {"keep": 1}),
    ],
)
def test_the_head_passes_refuse_an_attention_another_task_shares(
    pass_name: str, kwargs: dict
) -> None:
    """After ``fork_task`` the new task's copy of an attention reads the old one's
    parameters: changing its heads would change the other task, and would leave the
    copy's attributes unlike its owner's (an invalid graph). Both are refused, naming the
    other node; the graph is unchanged."""
    spec = {
        "version": 1,
        "inputs": {"x": {"shape": ["batch", "seq", 8]}},
        "nodes": [
            {"name": "inp", "op": "linear", "inputs": ["x"], "out_features": 8},
            {"name": "attn", "op": "attention", "num_heads": 2},
            {"name": "head", "op": "linear", "out_features": 3},
        ],
        "outputs": {"y": "head"},
    }
    forked = passes.fork_task(load_spec(spec), task="t2", base="y", adapt=["inp"])
    assert forked.node("t2.attn").share == "attn"
    for node, other in (("attn", "t2.attn"), ("t2.attn", "attn")):
        with pytest.raises(PassError, match=f"shares its parameters with '{other}'") as err:
            passes.get_pass(pass_name).run(forked, node=node, **kwargs)
        assert err.value.node == node and err.value.field == "node"
