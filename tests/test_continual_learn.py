"""Learn to Grow task by task: old tasks stay bitwise identical, forgetting is exactly 0.0,
discretisation carries the searched weights, and the first task's network."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from grow_ir import apply_plan, load_spec, to_torch
from grow_ir.errors import GrowError
from grow_ir.growth.continual import (
    ContinualConfig,
    SearchSettings,
    Task,
    TrainSettings,
    build_supernet,
    discretise,
    first_task,
    fork_plan,
    learn_sequence,
    learn_task,
    search,
    train_task,
)
from grow_ir.growth.continual.training import owned
from grow_ir.growth.data import Dataset
from grow_ir.ir.graph import Graph

CPU = torch.device("cpu")
CONFIG = ContinualConfig(
    first=TrainSettings(epochs=3, lr=0.05, batch_size=16),
    search=SearchSettings(epochs=3, warmup=1, batch_size=16, arch_batch_size=32),
    train=TrainSettings(epochs=2, batch_size=16),
    penalties=(0.3,),
    rank=2,
)
SPEC = {
    "version": 1,
    "name": "tiny_continual",
    "inputs": {"image": {"shape": ["batch", 1, 4, 4]}},
    "nodes": [
        {"name": "conv", "op": "conv2d", "out_channels": 3, "kernel_size": 3, "padding": 1},
        {"name": "bn", "op": "batchnorm"},
        {"name": "act", "op": "relu"},
        {"name": "flat", "op": "flatten"},
        {"name": "fc", "op": "linear", "out_features": 8},
        {"name": "fc_act", "op": "relu"},
        {"name": "head", "op": "linear", "out_features": 5},
    ],
    "outputs": {"logits": "head"},
}


def synthetic(index: int, classes: int) -> Task:
    """A learnable task: labels from a random linear map of random 4x4 images."""
    gen = torch.Generator().manual_seed(100 + index)
    x = torch.randn(184, 1, 4, 4, generator=gen)
    y = (x.reshape(184, -1) @ torch.randn(16, classes, generator=gen)).argmax(1)
    train, test, val = slice(0, 96), slice(96, 144), slice(144, 184)
    data = Dataset(
        f"synthetic{index}", x[train], y[train], x[val], y[val], x[test], y[test], classes
    )
    return Task(f"task{index}", f"synthetic {index}", data)


@pytest.fixture(scope="module")
def spec() -> Graph:
    return load_spec(SPEC)


@pytest.fixture(scope="module")
def tasks() -> list[Task]:
    return [synthetic(0, 3), synthetic(1, 2), synthetic(2, 4)]


@pytest.fixture(scope="module")
def trained0(spec: Graph, tasks: list[Task]) -> Graph:
    g = first_task(spec, "task0", 3)
    d = tasks[0].data
    return train_task(g, "task0", d.x_train, d.y_train, CONFIG.first, gen=gen(), device=CPU)


def gen() -> torch.Generator:
    return torch.Generator().manual_seed(0)


def outputs(graph: Graph, task: str) -> torch.Tensor:
    x = torch.randn(7, 1, 4, 4, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        return to_torch(graph, task=task).eval()(x)


def assert_unchanged(before: Graph, after: Graph, tasks: list[str]) -> None:
    """Every tensor of ``before`` is bitwise in ``after``; each task computes the same."""
    for key, value in before.params.items():
        assert after.params[key].dtype == value.dtype and torch.equal(after.params[key], value)
    for task in tasks:
        assert torch.equal(outputs(after, task), outputs(before, task)), task


# ---- old tasks never change -----------------------------------------------------------------


def test_search_and_training_leave_old_tasks_bitwise_identical(
    trained0: Graph, tasks: list[Task]
) -> None:
    done = learn_task(trained0, tasks[1], "task0", CONFIG, gen=gen(), device=CPU)
    g1 = done.graph
    assert set(done.choices) == set(done.probabilities) == {"conv", "bn", "fc"}
    assert done.plan["pass"] == "fork_task" and done.plan["task"] == "task1"
    assert_unchanged(trained0, g1, ["task0"])
    g2 = learn_task(g1, tasks[2], "task0", CONFIG, gen=gen(), device=CPU).graph
    assert_unchanged(g1, g2, ["task0", "task1"])
    assert list(g2.outputs) == ["task0", "task1", "task2"]
    assert g2.types[g2.outputs["task2"]].shape == ("batch", 4)


@pytest.mark.parametrize(
    "choices",
    [
        {"conv": "adapt", "bn": "reuse", "fc": "new"},  # shared batchnorm statistics
        {"conv": "new", "bn": "new", "fc": "adapt"},
        {"conv": "reuse", "bn": "reuse", "fc": "reuse"},
    ],
)
def test_training_a_discretised_task_changes_only_its_own_tensors(
    trained0: Graph, tasks: list[Task], choices: dict[str, str]
) -> None:
    sn = build_supernet(trained0, "task1", "task0", 2, rank=2)
    g = discretise(trained0, sn, sn.graph, choices)
    d = tasks[1].data
    trained = train_task(g, "task1", d.x_train, d.y_train, CONFIG.train, gen=gen(), device=CPU)
    assert_unchanged(trained0, trained, ["task0"])
    changed = {k for k in g.params if not torch.equal(g.params[k], trained.params[k])}
    assert changed and changed <= owned(g, "task1")


def test_fine_tuning_everything_does_change_old_tasks(trained0: Graph, tasks: list[Task]) -> None:
    """The check above can fail: training the shared path moves task0."""
    sn = build_supernet(trained0, "task1", "task0", 2, rank=2)
    g = discretise(trained0, sn, sn.graph, {"conv": "reuse", "bn": "reuse", "fc": "reuse"})
    d = tasks[1].data
    trained = train_task(
        g, "task1", d.x_train, d.y_train, CONFIG.train, gen=gen(), device=CPU, everything=True
    )
    assert not torch.equal(outputs(trained, "task0"), outputs(trained0, "task0"))


def test_shared_batchnorm_runs_in_eval_mode(trained0: Graph) -> None:
    sn = build_supernet(trained0, "task1", "task0", 2, rank=2)
    module = to_torch(sn.graph, task="task1").train()
    modes = {name: m.training for name, m in module.named_modules()}
    assert modes["bn"] is False  # shared statistics: frozen
    assert modes["task1.bn_new"] is True  # the task's own copy trains its statistics
    assert modes["task1.fc_new"] is True


# ---- the whole sequence -------------------------------------------------------------------


@pytest.fixture(scope="module")
def run(spec: Graph, tasks: list[Task]):
    return learn_sequence(spec, tasks, CONFIG)


def test_forgetting_is_exactly_zero(run) -> None:
    h = run.history
    assert h.final["forgetting"] == 0.0
    for j, task in enumerate(["task0", "task1", "task2"]):
        seen = [r.accuracies[task] for r in h.tasks[j:]]
        assert len(set(seen)) == 1, (task, seen)


def test_history_records_choices_accuracies_and_parameters(run, spec: Graph) -> None:
    h = run.history
    assert [r.task for r in h.tasks] == ["task0", "task1", "task2"]
    assert h.tasks[0].choices == {"conv": "new", "bn": "new", "fc": "new"}
    assert h.tasks[0].plan is None and h.tasks[2].plan["task"] == "task2"
    for r in h.tasks[1:]:
        assert set(r.choices) == {"conv", "bn", "fc"}
        assert set(r.choices.values()) <= {"reuse", "adapt", "new"}
        assert all(sum(p.values()) == pytest.approx(1.0) for p in r.probabilities.values())
    assert [list(r.accuracies) for r in h.tasks] == [
        ["task0"],
        ["task0", "task1"],
        ["task0", "task1", "task2"],
    ]
    f = h.final
    assert f["params"] == run.graph.num_params() == h.tasks[-1].params
    singles = [first_task(spec, f"task{i}", c).num_params() for i, c in enumerate((3, 2, 4))]
    assert f["separate_params"] == sum(singles)
    assert f["average_accuracy"] == pytest.approx(sum(h.tasks[-1].accuracies.values()) / 3)
    assert list(run.graph.outputs) == ["task0", "task1", "task2"]
    assert "task2 (synthetic 2, 4 classes)" in h.tasks[-1].table()


def test_a_run_is_reproducible(run, spec: Graph, tasks: list[Task]) -> None:
    again = learn_sequence(spec, tasks[:2], CONFIG)
    for key, value in again.graph.params.items():
        assert torch.equal(value, run.graph.params[key]), key


def test_the_size_penalty_is_chosen_on_the_validation_split(trained0: Graph, tasks) -> None:
    config = replace(CONFIG, penalties=(0.0, 50.0, 0.0))
    task = tasks[1]
    done = learn_task(trained0, task, "task0", config, gen=gen(), device=CPU)
    c = done.candidates
    assert [r["penalty"] for r in c] == [0.0, 50.0, 0.0]
    # a huge penalty reuses every layer; none is trained twice for the same choices
    assert set(c[1]["choices"].values()) == {"reuse"}
    assert c[1]["params"] < c[0]["params"] or c[1]["same_as"] is not None
    trained = [r for r in c if r["same_as"] is None]
    best = max(r["val_accuracy"] for r in trained)
    kept = [r for r in trained if r["val_accuracy"] == best]
    want = min(kept, key=lambda r: r["params"])
    assert done.penalty == want["penalty"] and done.choices == want["choices"]
    assert done.graph.num_params() == want["params"]
    from grow_ir.growth.continual import evaluate

    d = task.data
    assert evaluate(done.graph, task.name, d.x_val, d.y_val, CPU) == want["val_accuracy"]


def test_choosing_a_penalty_needs_validation_samples(trained0: Graph, tasks) -> None:
    d = tasks[1].data
    bare = Task("task1", "bare", replace(d, x_val=d.x_val[:0], y_val=d.y_val[:0]))
    with pytest.raises(GrowError, match="needs a validation split"):
        learn_task(
            trained0, bare, "task0", replace(CONFIG, penalties=(0.1, 1.0)), gen=gen(), device=CPU
        )


def test_forgetting_measures_drops(run) -> None:
    from grow_ir.growth.continual import ContinualHistory

    h = ContinualHistory.from_json(run.history.to_json())
    assert h.forgetting() == 0.0
    dropped = replace(h.tasks[-1], accuracies={**h.tasks[-1].accuracies, "task0": 0.0})
    h.tasks[-1] = dropped
    best = max(r.accuracies["task0"] for r in h.tasks[:-1])
    assert h.forgetting() == pytest.approx(best / 2)


# ---- discretisation -----------------------------------------------------------------------


def test_discretise_takes_the_searched_weights(trained0: Graph, tasks: list[Task]) -> None:
    sn = build_supernet(trained0, "task1", "task0", 2, rank=2)
    d = tasks[1].data
    found = search(sn, d.x_train, d.y_train, CONFIG.search, gen=gen(), device=CPU)
    choices = {"conv": "adapt", "bn": "new", "fc": "new"}
    g = discretise(trained0, sn, found.graph, choices)
    mine = owned(g, "task1")
    assert mine == {k for k in g.params if k.startswith("task1.")}
    for key in mine:
        source = key.replace("task1.bn.", "task1.bn_new.").replace("task1.fc.", "task1.fc_new.")
        assert torch.equal(g.params[key], found.graph.params[source]), key
    assert not torch.equal(g.params["task1.fc.weight"], trained0.params["fc.weight"])
    assert_unchanged(trained0, g, ["task0"])


def test_the_fork_plan_builds_the_discretised_graph(trained0: Graph) -> None:
    sn = build_supernet(trained0, "task1", "task0", 2, rank=2, seed=7)
    choices = {"conv": "adapt", "bn": "new", "fc": "reuse"}
    plan = fork_plan(sn, choices)
    assert plan == {
        "pass": "fork_task",
        "task": "task1",
        "base": "task0",
        "new": ["bn"],
        "adapt": ["conv"],
        "head": 2,
        "rank": 2,
        "seed": 7,
    }
    planned = apply_plan(trained0, [plan])
    assert planned.nodes == discretise(trained0, sn, sn.graph, choices).nodes


def test_search_refuses_too_few_samples(trained0: Graph) -> None:
    sn = build_supernet(trained0, "task1", "task0", 2)
    x, y = torch.zeros(3, 1, 4, 4), torch.zeros(3, dtype=torch.long)
    with pytest.raises(GrowError, match="too few training samples to search"):
        search(sn, x, y, CONFIG.search, gen=gen(), device=CPU)


def test_discretise_refuses_an_unknown_layer(trained0: Graph) -> None:
    sn = build_supernet(trained0, "task1", "task0", 2)
    with pytest.raises(GrowError, match="a layer the supernet does not choose"):
        discretise(trained0, sn, sn.graph, {"act": "new"})


@pytest.mark.parametrize(("layer", "choice"), [("bn", "adapt"), ("fc", "copy")])
def test_discretise_refuses_a_choice_the_layer_does_not_offer(
    trained0: Graph, layer: str, choice: str
) -> None:
    sn = build_supernet(trained0, "task1", "task0", 2)
    with pytest.raises(GrowError, match="not a choice of this layer") as info:
        discretise(trained0, sn, sn.graph, {layer: choice})
    assert info.value.node == layer


# ---- the first task -----------------------------------------------------------------------


def test_first_task_renames_the_output_and_resizes_the_head(spec: Graph) -> None:
    g = first_task(spec, "task0", 3)
    assert dict(g.outputs) == {"task0": "head"}
    assert g.params["head.weight"].shape == (3, 8)
    assert torch.equal(g.params["fc.weight"], spec.params["fc.weight"])
    same = first_task(spec, "task0", 5)
    assert same.params["head.weight"] is spec.params["head.weight"]


def test_first_task_refuses_several_outputs(spec: Graph) -> None:
    two = spec.replace(outputs={"a": "head", "b": "fc"})
    with pytest.raises(GrowError, match="starts from a network with one output"):
        first_task(two, "task0", 3)


def test_first_task_refuses_an_output_that_is_not_a_layer(spec: Graph) -> None:
    with pytest.raises(GrowError, match="must be a linear or conv layer") as info:
        first_task(spec.replace(outputs={"y": "fc_act"}), "task0", 3)
    assert info.value.node == "fc_act"


def test_learn_sequence_refuses_data_that_does_not_fit(spec: Graph) -> None:
    task = synthetic(0, 3)
    wide = replace(task, data=replace(task.data, x_train=torch.zeros(4, 1, 5, 5)))
    with pytest.raises(GrowError, match="does not fit"):
        learn_sequence(spec, [wide], CONFIG)


def test_learn_sequence_refuses_no_tasks(spec: Graph) -> None:
    with pytest.raises(GrowError, match="no tasks"):
        learn_sequence(spec, [], CONFIG)
