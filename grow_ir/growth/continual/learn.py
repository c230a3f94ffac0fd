"""Learn to Grow, task by task: search, discretise into a fork, train the task's own part.

The first task trains the spec's network (its output renamed after the task, its output
layer resized to the task's classes). Every later task ``T``:

1. :func:`~grow_ir.growth.continual.supernet.build_supernet` from the first task's path;
2. :func:`~grow_ir.growth.continual.search.search` (first-order DARTS with the size
   penalty) gives one choice per layer, by argmax;
3. :func:`~grow_ir.growth.continual.discretise.discretise`: the ``fork_task`` plan entry
   of the choices (``new=[...], adapt=[...], head=classes``), warm-started with the
   weights the search trained;
4. :func:`~grow_ir.growth.continual.training.train_task` trains the tensors ``T`` owns.

Steps 2-4 run once per candidate λ of the size penalty (``ContinualConfig.penalties``);
the task keeps the candidate with the best accuracy on its validation split (carved from
its training data, never trained on), the smaller network on a tie. Candidates whose
search made the same choices as an earlier one are not trained again.

No step changes a tensor another output depends on, so every earlier task's output stays
bitwise identical and forgetting is exactly zero.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from tqdm import tqdm

from grow_ir.errors import GrowError
from grow_ir.growth.continual.discretise import discretise, fork_plan
from grow_ir.growth.continual.history import ContinualHistory, TaskRecord
from grow_ir.growth.continual.search import SearchSettings, search
from grow_ir.growth.continual.supernet import build_supernet
from grow_ir.growth.continual.tasks import Task
from grow_ir.growth.continual.training import (
    TrainSettings,
    deterministic_kernels,
    evaluate,
    train_task,
)
from grow_ir.growth.data import check_fits
from grow_ir.ir.graph import Graph, Node
from grow_ir.ir.verify import verify
from grow_ir.passes.channels import width_of
from grow_ir.passes.fork import head_ops, with_width
from grow_ir.passes.initializers import init_layer
from grow_ir.passes.rewrite import replace_nodes, seeded

Log = Callable[[str], None]


@dataclass(frozen=True)
class ContinualConfig:
    """Settings of a Learn to Grow run.

    Attributes:
        first: training of the first task (the whole network, from its initialisation).
        search: the architecture search of every later task (its ``penalty`` is replaced
            by each of ``penalties``).
        train: training of a later task's own tensors after discretisation.
        penalties: the candidate λ of the size penalty; each later task searches, trains
            and scores on its validation split with each, and keeps the best.
        rank: rank of the adapters (lora, serial).
        seed: seed of shuffling and of fresh tensors (heads, adapters).
    """

    first: TrainSettings = field(default_factory=lambda: TrainSettings(epochs=30, lr=0.05))
    search: SearchSettings = field(default_factory=SearchSettings)
    train: TrainSettings = field(default_factory=lambda: TrainSettings(epochs=30, lr=0.05))
    penalties: tuple[float, ...] = (0.1, 0.3, 1.0)
    rank: int = 4
    seed: int = 0


@dataclass(frozen=True)
class TaskOutcome:
    """One learned task: the grown graph, the choice per layer, the softmax weights
    behind the choices, the ``fork_task`` plan entry that realised them, the λ chosen
    and every candidate λ's record (``penalty``, ``choices``, ``val_accuracy``,
    ``params``, ``same_as``: the earlier λ with the same choices, not trained again)."""

    graph: Graph
    choices: dict[str, str]
    probabilities: dict[str, dict[str, float]]
    plan: dict[str, Any] | None  # the fork_task plan entry; None when no search ran
    penalty: float | None = None
    candidates: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class ContinualResult:
    """The multi-task graph (one output per task) and the record of the run."""

    graph: Graph
    history: ContinualHistory
    tasks: list[Task]


def first_task(graph: Graph, task: str, classes: int, *, seed: int = 0) -> Graph:
    """The spec's network as the first task's: its output named ``task``, its output
    layer ``classes`` wide.

    Guarantees: a verified graph with the single output ``task``; every tensor but the
    output layer's is the spec's; the output layer keeps its tensors when it already has
    ``classes`` outputs, else gets PyTorch's default init (seeded by ``seed``).

    Raises:
        GrowError: the spec has more than one output, or its output is not a linear or
            conv layer.
    """
    if len(graph.outputs) != 1:
        raise GrowError(
            "continual learning starts from a network with one output",
            field="outputs",
            expected="one output (the first task's head)",
            found=f"{len(graph.outputs)} ({', '.join(graph.outputs)})",
        )
    node = graph.node(next(iter(graph.outputs.values())))
    if not node.opdef.facts.head:
        raise GrowError(
            "the output must be a linear or conv layer: each task gets its own",
            node=node.name,
            field="outputs",
            expected=f"a {' / '.join(head_ops())} layer",
            found=node.op,
        )
    out = graph.replace(outputs={task: node.name})
    if width_of(node) == classes:
        return verify(out)
    head = node.replace(attrs=with_width(node, classes))
    fresh = init_layer(head, graph.input_types(node), "default", seeded(seed))
    params = {f"{node.param_prefix}.{k}": v for k, v in fresh.items()}
    return verify(replace_nodes(out, {node.name: head}, params))


def learn_task(
    graph: Graph,
    task: Task,
    base: str,
    config: ContinualConfig,
    *,
    gen: torch.Generator,
    device: torch.device,
) -> TaskOutcome:
    """Learn ``task`` on top of ``graph`` (forking output ``base``): for each candidate λ
    search, discretise, train; keep the best on the task's validation split.

    Guarantees: every output of ``graph`` computes bitwise what it did (its tensors are
    the same objects); the new output is ``task.name``; the kept candidate has the
    highest validation accuracy, and the fewest parameters among those tied.

    Raises:
        GrowError: no candidate λ, one below 0, or several and no validation samples.
    """
    penalties = list(config.penalties)
    if not penalties or any(not p >= 0 for p in penalties):
        raise GrowError(
            "bad size penalties",
            field="penalties",
            expected="one or more numbers >= 0",
            found=repr(config.penalties),
        )
    d = task.data
    if len(penalties) > 1 and len(d.y_val) == 0:
        raise GrowError(
            "choosing the size penalty needs a validation split",
            file=task.source,
            field="x_val",
            expected=f"validation samples to choose among λ {', '.join(map(str, penalties))}",
            found="none (give one penalty, or data with a validation split)",
        )
    supernet = build_supernet(
        graph, task.name, base, task.classes, rank=config.rank, seed=config.seed
    )
    tried: list[tuple[TaskOutcome, float]] = []
    records: list[dict[str, Any]] = []
    for penalty in penalties:
        settings = replace(config.search, penalty=penalty)
        found = search(supernet, d.x_train, d.y_train, settings, gen=gen, device=device)
        twin = next((i for i, (o, _) in enumerate(tried) if o.choices == found.choices), None)
        if twin is not None:
            records.append({**records[twin], "penalty": penalty, "same_as": penalties[twin]})
            tried.append(tried[twin])
            continue
        grown = discretise(graph, supernet, found.graph, found.choices)
        grown = train_task(
            grown, task.name, d.x_train, d.y_train, config.train, gen=gen, device=device
        )
        val = evaluate(grown, task.name, d.x_val, d.y_val, device)
        outcome = TaskOutcome(
            grown, found.choices, found.probabilities, fork_plan(supernet, found.choices)
        )
        tried.append((outcome, val))
        records.append(
            {
                "penalty": penalty,
                "choices": found.choices,
                "val_accuracy": val,
                "params": grown.num_params(),
                "same_as": None,
            }
        )
    best = max(range(len(tried)), key=lambda i: (tried[i][1], -tried[i][0].graph.num_params(), -i))
    return replace(tried[best][0], penalty=penalties[best], candidates=records)


LaterTask = Callable[..., TaskOutcome]
"""How a task after the first is learned: ``(graph, task, base, config, *, gen, device)``
to a :class:`TaskOutcome` (:func:`learn_task` for Learn to Grow)."""


def learn_sequence(
    spec: Graph,
    tasks: Sequence[Task],
    config: ContinualConfig | None = None,
    *,
    device: torch.device | str = "cpu",
    log: Log | None = None,
    later_task: LaterTask = learn_task,
    progress: bool = False,
) -> ContinualResult:
    """Learn ``tasks`` in order with Learn to Grow, starting from the network ``spec``.

    Guarantees: the result has one output per task (``task0``...); after each task every
    task so far is scored on its test split and recorded; with the default ``later_task``
    (:func:`learn_task`) each earlier task's output is bitwise unchanged by every later
    task, so its accuracy never moves and the recorded forgetting is exactly 0.0. On the
    CPU, the same inputs (and thread count) give bitwise the same run. ``later_task``
    swaps how tasks after the first are learned (the fine-tuning baseline uses it).
    ``progress`` shows a bar of tasks on a terminal (``log`` lines print above it).

    Raises:
        GrowError: no task, a spec that does not fit the tasks' data, or a spec whose
            output is not a single linear or conv layer.
    """
    config = config or ContinualConfig()
    dev = torch.device(device)
    if not tasks:
        raise GrowError("no tasks to learn", field="tasks", expected="at least one task")
    singles = [first_task(spec, t.name, t.classes, seed=config.seed) for t in tasks]
    for task, single in zip(tasks, singles):
        check_fits(task.data, single, task.name, source=task.source)
    history = ContinualHistory()
    gen = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)
    graph = singles[0]
    bar = tqdm(
        total=len(tasks),
        desc="tasks",
        unit="task",
        disable=None if progress else True,
        dynamic_ncols=True,
    )
    with deterministic_kernels(), bar:
        for i, task in enumerate(tasks):
            phase = "training" if i == 0 else "searching, then training"
            bar.set_postfix_str(f"{task.name} ({task.classes} classes): {phase}")
            start = time.perf_counter()
            d = task.data
            if i == 0:
                graph = train_task(
                    graph, task.name, d.x_train, d.y_train, config.first, gen=gen, device=dev
                )
                done = TaskOutcome(
                    graph, {n.name: "new" for n in trunk_layers(graph, task.name)}, {}, None
                )
            else:
                done = later_task(graph, task, tasks[0].name, config, gen=gen, device=dev)
                graph = done.graph
            accuracies = {
                t.name: evaluate(graph, t.name, t.data.x_test, t.data.y_test, dev)
                for t in tasks[: i + 1]
            }
            record = TaskRecord(
                task=task.name,
                source=task.source,
                classes=task.classes,
                choices=done.choices,
                probabilities=done.probabilities,
                plan=done.plan,
                accuracies=accuracies,
                params=graph.num_params(),
                seconds=time.perf_counter() - start,
                penalty=done.penalty,
                candidates=done.candidates,
            )
            history.add(record)
            if log is not None:
                with bar.external_write_mode():
                    log(record.table())
            bar.update(1)
    history.finish(graph.num_params(), sum(g.num_params() for g in singles))
    return ContinualResult(graph, history, list(tasks))


def trunk_layers(graph: Graph, task: str) -> list[Node]:
    """The layers with parameters on output ``task``'s path, its output layer excepted."""
    last = graph.outputs[task]
    path = {n for n, deps in graph.output_deps.items() if task in deps}
    return [n for n in graph.nodes if n.name in path and n.name != last and graph.node_params(n)]
