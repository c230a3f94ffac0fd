"""``stack_blocks``: depth growth by copying a range of a stage's blocks.

``mode="stack"`` puts copies of blocks ``start .. stop - 1`` (weights included) on top of
the stage, as the stacking papers do (Gong et al. 2019, progressive stacking of BERT; the
MSG and LiGO depth operators start from it): a warm start that changes the function, and is
reported so. ``mode="interpolate"`` puts each copy right after the block it copies
(Chang et al. 2018, interpolation in depth) with the last layer of each of the copy's
residual branches zeroed, so the copy computes its input: exact whenever ``insert_block``
would be for that block (see :func:`grow_ir.passes.insert.branch_ends`).

Later blocks are renumbered; every renamed parameter records its old name as its origin,
a copied one the block it copies, so optimizer state follows both.
"""

from __future__ import annotations

import torch

from grow_ir.errors import PassError
from grow_ir.ir.graph import Graph, Node
from grow_ir.passes.args import Choice, Seed, StageName
from grow_ir.passes.base import Origin, PassResult, register_pass
from grow_ir.passes.insert import branch_ends, stage_of
from grow_ir.passes.rewrite import check_choice

MODES = ("stack", "interpolate")


def _block_nodes(graph: Graph, scope: str) -> list[Node]:
    scope += "."
    return [n for n in graph.nodes if n.name.startswith(scope)]


def _check_range(start: object, stop: object, depth: int) -> tuple[int, int]:
    ok = all(isinstance(v, int) and not isinstance(v, bool) for v in (start, stop))
    if not ok or not 0 <= start < stop <= depth:  # type: ignore[operator]
        raise PassError(
            "bad range of blocks",
            field="start",
            expected=f"0 <= start < stop <= {depth} (the stage's depth)",
            found=f"start={start!r}, stop={stop!r}",
        )
    return start, stop  # type: ignore[return-value]


@register_pass("stack_blocks")
def stack_blocks(
    graph: Graph,
    stage: StageName,
    start: int = 0,
    stop: int | None = None,
    mode: Choice = "stack",
    seed: Seed = 0,
) -> PassResult:
    """Copy blocks ``start`` to ``stop - 1`` (default: all) of ``stage``.

    ``mode="stack"``: the copies go on top of the stage, in order (reported as not
    preserving: the stage then computes its blocks twice). ``mode="interpolate"``: each
    copy goes right after its block, with the last layer of every residual branch zeroed;
    preserved exactly when every block of the range is a chain of residual adds whose
    branches end in zeroable layers (a pre-norm transformer block, a ResNet block without a
    final non-identity activation), otherwise reported as not preserving with the reason.

    ``seed`` is accepted like every growth pass's and unused: nothing here is random.

    Guarantees: the input graph is untouched; the stage's depth grows by ``stop - start``;
    every parameter of a renumbered block records its old name, every copied one its source.

    Raises:
        PassError: an unknown stage or mode, a bad range, or blocks whose nodes share
            parameters with another task.
    """
    check_choice(mode, MODES, "mode")
    entry, template, depth = stage_of(graph, stage)
    start, stop = _check_range(start, depth if stop is None else stop, depth)
    out_local = template.output
    blocks = [_block_nodes(graph, entry.scope(stage, i)) for i in range(depth)]
    shared = [n.name for b in blocks for n in b if n.share is not None]
    if shared:
        raise PassError(
            "blocks that share parameters with another task cannot be copied",
            node=shared[0],
            field="stage",
            expected="a stage whose nodes own their parameters",
            found=f"share={graph.node(shared[0]).share!r}",
        )
    # (old index, copy?) in the new order
    order = [(i, False) for i in range(depth)]
    if mode == "stack":
        order += [(i, True) for i in range(start, stop)]
    else:
        order = [
            (i, c) for i in range(depth) for c in ((False, True) if start <= i < stop else (False,))
        ]
    first_in = _stage_input(graph, stage, blocks[0])
    old_out = f"{entry.scope(stage, depth - 1)}.{out_local}"
    prev = first_in
    nodes: list[Node] = []
    params: dict[str, torch.Tensor] = {}
    origins: dict[str, Origin] = {}
    why_not = ""
    zeroed: list[str] = []
    for j, (i, copy) in enumerate(order):
        old_scope, new_scope = f"{entry.scope(stage, i)}.", f"{entry.scope(stage, j)}."
        old_in = first_in if i == 0 else f"{entry.scope(stage, i - 1)}.{out_local}"
        made: list[Node] = []
        for n in blocks[i]:
            inputs = tuple(
                prev
                if v == old_in
                else new_scope + v[len(old_scope) :]
                if v.startswith(old_scope)
                else v
                for v in n.inputs
            )
            made.append(Node(new_scope + n.name[len(old_scope) :], n.op, n.attrs, inputs, n.share))
        zero: set[str] = set()
        if copy and mode == "interpolate":
            by_name = {n.name: n for n in made}
            old_out_i = f"{entry.scope(stage, i)}.{out_local}"  # what the copy reads, in graph
            ends, why = branch_ends(graph, by_name, prev, new_scope + out_local, proven=old_out_i)
            why_not = why_not or why
            zero = {e.name for e in ends}
            zeroed += sorted(zero)
        for old_node, n in zip(blocks[i], made):
            for key, t in graph.params.items():
                if not key.startswith(old_node.param_prefix + "."):
                    continue
                local = key[len(old_node.param_prefix) + 1 :]
                new_key = f"{n.param_prefix}.{local}"
                if n.name in zero and local in n.opdef.facts.zeroable:
                    params[new_key] = torch.zeros_like(t)
                    origins[new_key] = Origin(None)
                    continue
                params[new_key] = t.clone() if copy else t
                if copy or new_key != key:
                    origins[new_key] = Origin(key)
        nodes += made
        prev = new_scope + out_local
    new_graph = _splice(graph, blocks, nodes, old_out, prev, params)
    new_graph = new_graph.replace(stages={**graph.stages, stage: entry.replace(depth=len(order))})
    copies = stop - start
    if mode == "stack":
        preserved, reason = (
            False,
            (
                f"the {copies} stacked block(s) are copies with their weights: the stage now "
                "computes them again on top (a warm start, not an identity)"
            ),
        )
    else:
        preserved, reason = not why_not, why_not
    summary = (
        f"{mode}: copied blocks {start}..{stop - 1} of stage '{stage}' (depth {depth} -> "
        f"{len(order)})" + (f"; zeroed {', '.join(repr(z) for z in zeroed)}" if zeroed else "")
    )
    return PassResult(new_graph, preserved, summary, reason, origins)


def _stage_input(graph: Graph, stage: str, block0: list[Node]) -> str:
    """The one value from outside the stage that block 0 reads."""
    inside = {n.name for n in block0}
    outside = {v for n in block0 for v in n.inputs if v not in inside}
    if len(outside) != 1:
        raise PassError(
            "the stage's first block must read exactly one value from outside it",
            field=f"stages.{stage}",
            expected="one input",
            found=", ".join(sorted(outside)) or "none",
        )
    return outside.pop()


def _splice(
    graph: Graph,
    blocks: list[list[Node]],
    stage_nodes: list[Node],
    old_out: str,
    new_out: str,
    params: dict[str, torch.Tensor],
) -> Graph:
    """``graph`` with the stage's nodes replaced by ``stage_nodes`` (at the first one's
    place), readers of ``old_out`` outside the stage reading ``new_out``, and the stage's
    parameters replaced by ``params``."""
    in_stage = {n.name for b in blocks for n in b}
    nodes: list[Node] = []
    placed = False
    for n in graph.nodes:
        if n.name in in_stage:
            if not placed:
                nodes += stage_nodes
                placed = True
            continue
        nodes.append(n.replace(inputs=tuple(new_out if v == old_out else v for v in n.inputs)))
    outputs = {k: (new_out if v == old_out else v) for k, v in graph.outputs.items()}
    stage_params = {
        k
        for n in graph.nodes
        if n.name in in_stage
        for k in graph.params
        if k.startswith(n.param_prefix + ".")
    }
    kept = {k: v for k, v in graph.params.items() if k not in stage_params}
    return graph.replace(nodes=tuple(nodes), outputs=outputs, params={**kept, **params})
