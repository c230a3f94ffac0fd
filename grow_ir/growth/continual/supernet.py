"""The search supernet of Learn to Grow: every layer of a task's path a choice of three.

For a new task ``T`` forked from output ``base``, each layer with parameters on the base
path (the output layer excepted) becomes a ``mix`` of candidates:

- ``reuse``: ``T.L``, a node sharing ``L``'s parameters (frozen for ``T``);
- ``adapt``: ``T.L`` plus a task-owned, zero-initialised adapter (``lora`` beside a
  linear, a parallel 1×1 conv beside a conv, ``serial`` where a 1×1 conv cannot match);
  offered for linear and conv layers only;
- ``new``: ``T.L_new``, a task-owned copy of ``L`` with copied parameters.

``mix`` weighs the candidates by ``softmax(alpha)``; ``alpha`` (``T.L_mix.alpha``) is
owned by ``T`` alone. Reuse and adapt share the computation of ``T.L``. The output layer
is always new: ``T.L`` with the task's number of classes (PyTorch's default init).

The names match what :func:`grow_ir.passes.fork_task` builds for the same task (its copy
``T.L``, its adapter nodes), so the weights trained during the search carry over to the
discretised graph (see :mod:`grow_ir.growth.continual.discretise`). The supernet is built from
the passes' own helpers (``Additions``, ``build_adapter``, ``insert_after``), never by
hand-copying their logic.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import networkx as nx
import torch

from grow_ir.errors import PassError, VerifyError
from grow_ir.ir.graph import Graph, Node
from grow_ir.ir.verify import check_name, verify
from grow_ir.passes.adapter import auto_kind, build_adapter
from grow_ir.passes.fork import head_ops, with_width
from grow_ir.passes.initializers import init_layer
from grow_ir.passes.rewrite import (
    Additions,
    check_positive_int,
    fresh_name,
    insert_after,
    seeded,
)

"""Layers that get the ``adapt`` choice (the others choose between reuse and new)."""

PASS_NAME = "supernet"


@dataclass(frozen=True)
class LayerChoice:
    """One layer's candidates in the supernet.

    Attributes:
        layer: the base layer (a node on the base output's path).
        choices: ``("reuse", "adapt", "new")``, or ``("reuse", "new")`` for a layer no
            adapter applies to; the order of the mix node's inputs and of ``alpha``.
        costs: parameters each choice adds for the task (reuse 0, adapt the adapter's,
            new the layer's).
        mix: the mix node; its parameter ``{mix}.alpha`` holds the choice's logits.
        shared: the copy sharing the layer's parameters (reuse, and adapt's trunk).
        new: the task-owned copy.
        adapter: the adapter kind when ``adapt`` is a choice, else None.
    """

    layer: str
    choices: tuple[str, ...]
    costs: tuple[int, ...]
    mix: str
    shared: str
    new: str
    adapter: str | None

    @property
    def alpha(self) -> str:
        """The name of the layer's architecture parameter."""
        return f"{self.mix}.alpha"


@dataclass(frozen=True)
class Supernet:
    """A verified search graph for task ``task`` and how its choices are laid out.

    Attributes:
        graph: the multi-task graph plus output ``task`` through the mix nodes.
        task: the new task's output.
        base: the output whose path was forked.
        scope: the scope of the task's nodes (``task``, unless that name was taken).
        head: the task's output layer.
        classes: the head's width.
        rank: the adapters' rank.
        seed: the seed of the fresh tensors (head, adapters).
        layers: one entry per choosable layer, in graph order.
    """

    graph: Graph
    task: str
    base: str
    scope: str
    head: str
    classes: int
    rank: int
    seed: int
    layers: tuple[LayerChoice, ...]

    @property
    def alpha_names(self) -> tuple[str, ...]:
        """The architecture parameters, one per layer."""
        return tuple(lc.alpha for lc in self.layers)

    @property
    def layer_params(self) -> int:
        """Parameters of the choosable layers together (what choosing all new costs)."""
        return sum(lc.costs[-1] for lc in self.layers)

    def probabilities(self, alphas: Mapping[str, torch.Tensor]) -> dict[str, dict[str, float]]:
        """Per layer, the softmax weight of every choice."""
        out = {}
        for lc in self.layers:
            weights = torch.softmax(alphas[lc.alpha].detach().double().cpu(), dim=0).tolist()
            out[lc.layer] = dict(zip(lc.choices, weights))
        return out

    def argmax(self, alphas: Mapping[str, torch.Tensor]) -> dict[str, str]:
        """Per layer, the choice of largest weight (the cheaper one on a tie)."""
        out = {}
        for lc in self.layers:
            a = alphas[lc.alpha].detach().cpu()
            out[lc.layer] = lc.choices[int(torch.argmax(a))]  # first maximum: cheapest
        return out


def build_supernet(
    graph: Graph, task: str, base: str, head: int, *, rank: int = 4, seed: int = 0
) -> Supernet:
    """The search supernet for new output ``task`` forked from output ``base``.

    Guarantees: the returned graph is verified; every output of ``graph`` is unchanged (the
    same nodes and tensors); the new output ``task`` reads the base path through one mix
    node per choosable layer (all layers with parameters on the path except the output
    layer) and ends in a fresh head of ``head`` outputs; the tensors ``task`` owns are
    exactly the new copies, adapters, head and ``alpha`` logits (all zero: equal weights).

    Raises:
        PassError: a used or malformed task name, an unknown base, a bad head size or
            rank, or a base output layer that is not a linear or conv.
    """
    _check(graph, task, base, head, rank)
    gen = seeded(seed)
    last = graph.outputs[base]
    path = (nx.ancestors(graph.nx, last) | {last}) - set(graph.inputs)
    scope = fresh_name(graph, task)
    planned = {f"{scope}.{n.name}" for n in graph.nodes if n.name in path}
    adds = Additions(graph)
    mapped: dict[str, str] = {}
    placed: dict[str, list[Node]] = {}
    raw: list[tuple[Node, str, str]] = []

    def name(base_name: str) -> str:
        return fresh_name(graph, base_name, taken=planned | {n.name for n in adds.nodes})

    for n in graph.nodes:
        if n.name not in path:
            continue
        inputs = [mapped.get(i, i) for i in n.inputs]
        if n.name == last:
            copy = adds.add(f"{scope}.{n.name}", n.op, inputs, with_width(n, head), sized_by="head")
            adds.init(copy, "default", gen)
            placed[n.name] = [copy]
        elif graph.node_params(n):
            new = adds.add(name(f"{scope}.{n.name}_new"), n.op, inputs, n.attrs)
            for key in graph.node_params(n):
                local = key[len(n.param_prefix) + 1 :]
                adds.set_param(f"{new.name}.{local}", graph.params[key].clone(), source=key)
            copy = adds.add(f"{scope}.{n.name}", n.op, inputs, n.attrs, share=n.param_prefix)
            placed[n.name] = [new, copy]  # the new branch first: the mix reads both
            raw.append((n, copy.name, new.name))
        elif any(i in mapped for i in n.inputs):
            copy = adds.add(f"{scope}.{n.name}", n.op, inputs, n.attrs)
            placed[n.name] = [copy]
        else:
            continue
        mapped[n.name] = copy.name

    nodes = [m for n in graph.nodes for m in (n, *placed.get(n.name, ()))]
    g = graph.replace(
        nodes=tuple(nodes),
        outputs={**graph.outputs, task: mapped[last]},
        params={**graph.params, **adds.params},
    )
    layers = []
    for n, shared, new in raw:
        g, choice = _add_choice(g, n, shared, new, rank, gen)
        layers.append(choice)
    return Supernet(verify(g), task, base, scope, mapped[last], head, rank, seed, tuple(layers))


def _add_choice(
    g: Graph, layer: Node, shared: str, new: str, rank: int, gen: torch.Generator
) -> tuple[Graph, LayerChoice]:
    """Add the adapter (where one applies) and the mix node of one layer."""
    new_cost = sum(s.numel for s in g.node_params(new).values() if not s.buffer)
    candidates, choices, costs = [shared], ["reuse"], [0]
    kind = None
    current = shared
    if layer.opdef.facts.adapters:
        kind = auto_kind(g, shared)
        done = build_adapter(g, shared, kind, rank, gen, PASS_NAME)
        g, current = done.graph, done.output
        adapter_cost = sum(
            s.numel for x in done.nodes for s in g.node_params(x).values() if not s.buffer
        )
        candidates.append(current)
        choices.append("adapt")
        costs.append(adapter_cost)
    candidates.append(new)
    choices.append("new")
    costs.append(new_cost)
    mix_name = fresh_name(g, f"{shared}_mix")
    mix = Node(mix_name, "mix", {}, tuple(candidates))
    alpha = init_layer(mix, [g.types[c] for c in candidates], "default", gen)
    g = insert_after(g, current, [mix], params={f"{mix_name}.{k}": v for k, v in alpha.items()})
    return g, LayerChoice(layer.name, tuple(choices), tuple(costs), mix_name, shared, new, kind)


def _check(graph: Graph, task: str, base: str, head: object, rank: object) -> None:
    try:
        check_name(task, what="output", field="task")
    except VerifyError as exc:
        raise PassError(
            f"{PASS_NAME}: {exc.reason}", field="task", expected=exc.expected, found=exc.found
        ) from None
    if task in graph.outputs:
        raise PassError(
            f"{PASS_NAME}: the task already exists",
            field="task",
            expected="a name no output of the graph uses",
            found=repr(task),
        )
    if base not in graph.outputs:
        raise PassError(
            f"{PASS_NAME}: unknown base task",
            field="base",
            expected=f"one of the graph's outputs ({', '.join(graph.outputs)})",
            found=repr(base),
        )
    check_positive_int(head, "head")
    check_positive_int(rank, "rank")
    last = graph.node(graph.outputs[base])
    if not last.opdef.facts.head:
        raise PassError(
            f"{PASS_NAME}: the base output must end in a linear or conv layer (the head "
            "each task replaces)",
            node=last.name,
            field="base",
            expected=f"a {' / '.join(head_ops())} output layer",
            found=last.op,
        )
