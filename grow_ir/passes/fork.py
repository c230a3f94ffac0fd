"""``fork_task``: a new task output that computes what an existing output computes.

Every layer on the base output's path is, for the new task, either *reused* (the same node,
or a copy that shares its parameters), *adapted* (a parameter-sharing copy plus a
task-owned, zero-initialised adapter) or *new* (a copy with its own copied parameters).
Ownership follows from reachability (``Graph.param_owners``): parameters the new task
shares with other outputs are frozen for all of them, and the task's own ones affect no
other output, so training the task (``to_torch(graph, task=...)``) cannot change another.
"""

from __future__ import annotations

from collections.abc import Sequence

import networkx as nx

from grow_ir.errors import PassError, VerifyError
from grow_ir.ir.graph import Graph, Node
from grow_ir.ir.ops import OPS
from grow_ir.ir.verify import check_name
from grow_ir.passes.adapter import KINDS, auto_kind, build_adapter, kind_ops
from grow_ir.passes.args import Choice, Count, NodeNames, OutputName, Seed
from grow_ir.passes.base import Origin, PassResult, register_pass
from grow_ir.passes.rewrite import (
    Additions,
    check_choice,
    check_positive_int,
    fresh_name,
    seeded,
)

ADAPTERS = ("auto", *KINDS)


def head_ops() -> tuple[str, ...]:
    """Ops whose output layer a fresh head can replace (``OpFacts.head``)."""
    return tuple(name for name, op in OPS.items() if op.facts.head)


def with_width(node: Node, width: int) -> dict:
    """``node``'s attributes (spec form) with its ``OpFacts.width_attr`` set to ``width``."""
    attr = node.opdef.facts.width_attr
    assert attr is not None, f"{node.op} has no width attribute"
    return {**node.attrs.model_dump(), attr: width}


def _names(value: str | Sequence[str]) -> tuple[str, ...]:
    """A list of node names, without repeats (a single name is a list of one)."""
    return (value,) if isinstance(value, str) else tuple(dict.fromkeys(value))


def _check_task(graph: Graph, task: str, base: str) -> None:
    try:
        check_name(task, what="output", field="task")
    except VerifyError as exc:
        raise PassError(exc.reason, field="task", expected=exc.expected, found=exc.found) from None
    if task in graph.outputs:
        raise PassError(
            "the task already exists",
            field="task",
            expected="a name no output of the graph uses",
            found=repr(task),
        )
    if base not in graph.outputs:
        raise PassError(
            "unknown base task",
            field="base",
            expected=f"one of the graph's outputs ({', '.join(graph.outputs)})",
            found=repr(base),
        )


def _check_layers(
    graph: Graph, path: set[str], base: str, new: tuple[str, ...], adapt: tuple[str, ...], kind: str
) -> None:
    for field, names in (("new", new), ("adapt", adapt)):
        for name in names:
            if name not in path:
                raise PassError(
                    f"not a node on the path of output '{base}'",
                    node=name,
                    field=field,
                    expected=f"a node output '{base}' depends on",
                    found="no such node" if name not in graph.node_map else "a node off the path",
                )
            if not graph.node_params(name):
                raise PassError(
                    f"a {graph.node(name).op} has no parameters to "
                    + ("copy" if field == "new" else "adapt"),
                    node=name,
                    field=field,
                    expected="a layer with parameters",
                    found=graph.node(name).op,
                )
    ops = sorted(kind_ops(kind))
    for name in adapt:
        if graph.node(name).op not in ops:
            raise PassError(
                f"adapter '{kind}' does not apply to a {graph.node(name).op}",
                node=name,
                field="adapt",
                expected=f"a {' / '.join(ops)} layer",
                found=graph.node(name).op,
            )
    both = sorted(set(new) & set(adapt))
    if both:
        raise PassError(
            "a layer is either new or adapted, not both",
            node=both[0],
            field="adapt",
            expected="new and adapt without common names",
            found=f"'{both[0]}' in both",
        )


def _check_head(graph: Graph, last: str, head: object, new: tuple, adapt: tuple) -> int:
    size = check_positive_int(head, "head")
    node = graph.node(last)
    if not node.opdef.facts.head:
        raise PassError(
            "only a linear or conv output layer can be replaced by a new head",
            node=last,
            field="head",
            expected=f"a {' / '.join(head_ops())} output layer",
            found=node.op,
        )
    if last in new or last in adapt:
        raise PassError(
            "the head replaces the output layer, so it cannot also be new or adapted",
            node=last,
            field="new" if last in new else "adapt",
            expected=f"no '{last}' in new or adapt",
            found=f"'{last}' listed",
        )
    return size


def _mode(n: Node, mapped: dict[str, str], new: tuple, adapt: tuple, head_of: str | None) -> str:
    """How the task's path treats ``n``: ``head``, ``new``, ``share`` (a copy sharing its
    parameters) or ``reuse`` (the node itself, when nothing upstream is task-specific)."""
    if n.name == head_of:
        return "head"
    if n.name in new:
        return "new"
    if n.name in adapt or any(i in mapped for i in n.inputs):
        return "share"
    return "reuse"


def _copy(
    graph: Graph, adds: Additions, n: Node, name: str, inputs: list[str], mode: str, head: int
) -> Node:
    """Add the task's copy of ``n``: ``new`` (own copied parameters), ``head`` (``head``
    outputs; parameters given by the caller) or ``share`` (``n``'s parameters)."""
    if mode == "head":
        return adds.add(name, n.op, inputs, with_width(n, head), sized_by="head")
    own = mode == "new" or not graph.node_params(n)
    copy = adds.add(name, n.op, inputs, n.attrs, share=None if own else n.param_prefix)
    if mode == "new":
        for key in graph.node_params(n):
            local = key[len(n.param_prefix) + 1 :]
            adds.set_param(f"{copy.name}.{local}", graph.params[key].clone(), source=key)
    return copy


@register_pass("fork_task")
def fork_task(
    graph: Graph,
    task: OutputName,
    base: OutputName,
    new: NodeNames = (),
    adapt: NodeNames = (),
    head: Count | None = None,
    adapter: Choice = "auto",
    rank: Count = 4,
    seed: Seed = 0,
) -> PassResult:
    """Add output ``task`` computing what output ``base`` computes, layer by layer.

    Walking the base path in order, each layer is: in ``new``, a task-owned copy
    ``{task}.{layer}`` with copied parameters; in ``adapt``, a copy sharing the layer's
    parameters plus a zero-initialised task-owned adapter (``adapter``: lora on a linear,
    parallel 1×1 conv on a conv, or serial; ``auto`` picks lora/parallel, serial where a
    parallel conv cannot match); otherwise reused: the node itself while none of its inputs
    is task-specific, else a copy sharing its parameters. ``head`` replaces the base output
    layer (a linear or conv) on the task's path by a fresh one with ``head`` outputs
    (PyTorch default init, seeded by ``seed``).

    Guarantees: no existing output changes; without ``head`` the new output equals ``base``
    (reported as ``same_as``); with it the result is reported as not preserving. The task
    owns exactly its copies', adapters' and head's parameters; shared parameters are owned
    by several outputs and so frozen for all of them.

    Raises:
        PassError: a used or malformed task name, an unknown base, a name in ``new`` or
            ``adapt`` off the base path or without parameters, a layer in both, an adapter
            that does not apply, or a head on a layer that is not linear/conv.
    """
    _check_task(graph, task, base)
    new_names, adapt_names = _names(new), _names(adapt)
    check_choice(adapter, ADAPTERS, "adapter")
    check_positive_int(rank, "rank")
    last = graph.outputs[base]
    path_names = (nx.ancestors(graph.nx, last) | {last}) - set(graph.inputs)
    _check_layers(graph, path_names, base, new_names, adapt_names, adapter)
    width = None if head is None else _check_head(graph, last, head, new_names, adapt_names)

    scope = fresh_name(graph, task)
    adds = Additions(graph)
    mapped: dict[str, str] = {}
    copy_of: dict[str, Node] = {}
    gen = seeded(seed)
    head_of = None if width is None else last
    for n in graph.nodes:
        mode = _mode(n, mapped, new_names, adapt_names, head_of) if n.name in path_names else ""
        if mode in ("", "reuse"):
            continue
        inputs = [mapped.get(i, i) for i in n.inputs]
        copy = _copy(graph, adds, n, f"{scope}.{n.name}", inputs, mode, width or 0)
        if mode == "head":
            adds.init(copy, "default", gen)
        mapped[n.name] = copy.name
        copy_of[n.name] = copy

    nodes = [m for n in graph.nodes for m in (n, copy_of.get(n.name)) if m is not None]
    forked = graph.replace(
        nodes=tuple(nodes),
        outputs={**graph.outputs, task: mapped.get(last, last)},
        params={**graph.params, **adds.params},
    )
    origins: dict[str, Origin] = dict(adds.origins)
    kinds = []
    for name in (n.name for n in graph.nodes if n.name in adapt_names):
        kind = auto_kind(forked, mapped[name]) if adapter == "auto" else adapter
        done = build_adapter(forked, mapped[name], kind, rank, gen, "fork_task")
        forked, kinds = done.graph, [*kinds, kind]
        origins.update(done.origins)

    changed = {*new_names, *adapt_names, head_of}
    reused = sum(1 for name in path_names if graph.node_params(name) and name not in changed)
    summary = (
        f"forked task '{task}' from '{base}': {len(new_names)} new, "
        f"{len(adapt_names)} adapted ({', '.join(sorted(set(kinds))) or 'none'}), "
        f"{reused} reused layers" + (f", new head of {width}" if width is not None else "")
    )
    if width is None:
        return PassResult(forked, True, summary, origins=origins, same_as={task: base})
    reason = f"new head: '{mapped[last]}' has {width} freshly initialised outputs"
    return PassResult(forked, False, summary, reason, origins)
