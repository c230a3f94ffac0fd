"""``add_adapter``: Learn to Grow's adaptation, a zero-initialised additive branch on a layer.

- ``lora`` (linear): ``y + B(A(x))`` with A ``in -> rank`` (default init) and B
  ``rank -> out`` zero, both without bias.
- ``parallel`` (conv): ``y + P(x)`` with P a 1×1 conv of the layer's stride, zero.
- ``serial`` (linear or conv): ``y + U(relu(D(y)))`` after the layer, a bottleneck of width
  ``rank`` with the up-projection U zero (1×1 convs on the channel axis for a conv).

The branch's parameters are used on the adapted layer's paths only, so they belong to the
tasks that layer serves (one task for a layer ``fork_task`` copied).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from grow_ir.errors import PassError, ShapeError
from grow_ir.ir.graph import Graph, Node
from grow_ir.ir.ops import OPS
from grow_ir.passes.args import Choice, Count, NodeName, OutputName, Seed
from grow_ir.passes.base import Origin, PassResult, register_pass
from grow_ir.passes.rewrite import (
    Additions,
    check_choice,
    check_positive_int,
    insert_after,
    node_of_kind,
    seeded,
)

KINDS = ("lora", "parallel", "serial")
"""The kinds of adapter; which fit a layer is the layer's op's fact (``OpFacts.adapters``)."""


def kind_ops(kind: str) -> tuple[str, ...]:
    """The ops an adapter of ``kind`` fits (``kind="auto"``: the ops any kind fits)."""
    return tuple(
        name
        for name, op in OPS.items()
        if (kind in op.facts.adapters if kind != "auto" else op.facts.adapters)
    )


@dataclass(frozen=True)
class Adapted:
    """A graph with an adapter added (not yet verified) and what was added."""

    graph: Graph
    output: str
    nodes: tuple[str, ...]
    origins: dict[str, Origin]


def auto_kind(graph: Graph, node: str) -> str:
    """The default adapter for a layer: the first kind its op prefers
    (``OpFacts.adapters``: lora on a linear, parallel on a conv) that fits, where parallel
    fits a conv whose output a 1×1 conv of the same stride matches; else the next."""
    n = graph.node(node)
    kinds = n.opdef.facts.adapters
    for kind in kinds:
        if kind != "parallel":
            return kind
        conv = _parallel_conv(n)
        try:
            out = conv.opdef.infer(conv.attrs, graph.input_types(n))
        except ShapeError:
            continue
        if out == graph.types[node]:
            return kind
    return kinds[-1]


def _parallel_conv(n: Node) -> Node:
    attrs = {"out_channels": n.attrs.out_channels, "kernel_size": 1, "stride": n.attrs.stride}
    return Node(f"{n.name}_parallel", n.op, {**attrs, "bias": False}, n.inputs)


def build_adapter(
    graph: Graph, node: str, kind: str, rank: int, gen: torch.Generator, pass_name: str
) -> Adapted:
    """Add an adapter of ``kind`` to layer ``node``; every user of ``node`` (and every output
    naming it) reads the sum instead. The branch is zero, so the function is unchanged.

    Raises:
        PassError: ``node`` is not a layer this kind applies to, ``rank`` is not a positive
            integer, or a parallel 1×1 conv would not match the layer's output size.
    """
    check_choice(kind, KINDS, "kind")
    n = node_of_kind(graph, node, kind_ops(kind), pass_name)
    check_positive_int(rank, "rank")
    out_type = graph.types[node]
    adds = Additions(graph)
    if kind == "lora":
        a = adds.add(
            adds.name(f"{node}_lora_a"),
            "linear",
            n.inputs,
            {"out_features": rank, "bias": False},
            sized_by="rank",
        )
        adds.init(a, "default", gen)
        attrs = {"out_features": n.attrs.out_features, "bias": False}
        last = adds.add(adds.name(f"{node}_lora_b"), "linear", [a.name], attrs, sized_by="rank")
    elif kind == "parallel":
        proto = _parallel_conv(n)
        last = adds.add(adds.name(proto.name), n.op, n.inputs, proto.attrs)
        if adds.type(last.name) != out_type:
            raise PassError(
                "a 1×1 conv beside this conv gives another output size (its padding does not "
                "keep the size); use kind 'serial'",
                node=node,
                field="kind",
                expected=str(out_type),
                found=str(adds.type(last.name)),
            )
    else:
        width_attr = n.opdef.facts.width_attr
        assert width_attr is not None  # every op an adapter fits has a width
        width = getattr(n.attrs, width_attr)
        pointwise = {"kernel_size": 1} if "kernel_size" in n.opdef.attrs.model_fields else {}

        def layer(name: str, src: str, size: int) -> Node:
            attrs = {width_attr: size, **pointwise}
            return adds.add(adds.name(name), n.op, [src], attrs, sized_by="rank")

        down = layer(f"{node}_adapter_down", node, rank)
        adds.init(down, "default", gen)
        act = adds.add(adds.name(f"{node}_adapter_relu"), "relu", [down.name])
        last = layer(f"{node}_adapter_up", act.name, width)
    adds.init(last, "zero", gen)
    total = adds.add(adds.name(f"{node}_adapted"), "add", [node, last.name])
    new = insert_after(graph, node, adds.nodes, params=adds.params)
    return Adapted(new, total.name, tuple(x.name for x in adds.nodes), adds.origins)


@register_pass("add_adapter")
def add_adapter(
    graph: Graph,
    node: NodeName,
    kind: Choice = "lora",
    rank: Count = 4,
    task: OutputName | None = None,
    seed: Seed = 0,
) -> PassResult:
    """Add a zero-initialised adapter of ``kind`` and width ``rank`` to layer ``node``.

    Guarantees: the function of every output is preserved exactly (the branch adds zeros);
    the adapter's parameters are new (default init for the down/A projection, zero for
    the last one) and affect only the outputs ``node`` already affects. With ``task``,
    ``node`` must affect that output alone, so the adapter is trainable for ``task`` and
    training it cannot change any other output.

    Raises:
        PassError: an unknown kind, a layer the kind does not apply to, a bad rank, a
            parallel adapter whose output size would differ, or (with ``task``) a layer
            that other outputs also depend on.
    """
    check_choice(kind, KINDS, "kind")
    node_of_kind(graph, node, kind_ops(kind), "add_adapter")
    if task is not None:
        if task not in graph.outputs:
            raise PassError(
                "unknown task",
                field="task",
                expected=f"one of the graph's outputs ({', '.join(graph.outputs)})",
                found=repr(task),
            )
        deps = graph.output_deps[node]
        if deps != {task}:
            others = ", ".join(sorted(deps - {task})) or "none"
            raise PassError(
                f"an adapter here would not belong to task '{task}' alone: the layer also "
                f"feeds {others}; fork_task with adapt=[{node!r}] gives the task its own path",
                node=node,
                field="task",
                expected=f"a layer only output '{task}' depends on",
                found=f"a layer that outputs {', '.join(sorted(deps))} depend on",
            )
    gen = seeded(seed)
    done = build_adapter(graph, node, kind, rank, gen, "add_adapter")
    size = "" if kind == "parallel" else f" of rank {rank}"
    summary = f"added a {kind} adapter{size} to '{node}' ('{done.output}')"
    return PassResult(done.graph, True, summary, origins=done.origins)
