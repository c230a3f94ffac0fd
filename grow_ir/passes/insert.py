"""Deepening passes: ``insert_layer`` (one square layer after a value) and ``insert_block``
(one more block in a stage, from the stage's template: AutoGrow's unit of growth)."""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

from grow_ir.errors import PassError
from grow_ir.ir.graph import Graph, Node
from grow_ir.ir.ops import OPS
from grow_ir.ir.ops.facts import No
from grow_ir.ir.stages import BlockTemplate, Stage, block_nodes
from grow_ir.ir.types import TensorType
from grow_ir.passes.args import Choice, Count, Seed, StageName, ValueName
from grow_ir.passes.base import PassResult, register_pass
from grow_ir.passes.rewrite import (
    Additions,
    check_choice,
    check_positive_int,
    insert_after,
    is_nonnegative,
    seeded,
)

LAYER_INITS = ("identity", "zero", "gauss", "uniform")
BLOCK_INITS = ("zero", "gauss", "uniform")


def layer_ops() -> tuple[str, ...]:
    """Ops ``insert_layer`` can insert: those with a square instance (``OpFacts.square``)."""
    return tuple(name for name, op in OPS.items() if op.facts.square is not None)


def activation_ops() -> tuple[str, ...]:
    """Ops ``insert_layer`` can put after its layer (``OpFacts.activation``)."""
    return tuple(name for name, op in OPS.items() if op.facts.activation)


def _has_kernel(op: str) -> bool:
    return "kernel_size" in OPS[op].attrs.model_fields


RESIDUAL_SUM = "add"
"""The op a residual branch ``x + f(x)`` is joined with (``insert_layer(residual=True)``)."""


# ---- insert_layer ----------------------------------------------------------------------


def _square_attrs(op: str, t: TensorType, kernel_size: int | None) -> dict[str, Any]:
    """Attributes of a layer of ``op`` whose output has the type ``t`` of its input."""
    square = OPS[op].facts.square
    assert square is not None  # check_choice(op, layer_ops()) ran first
    if not _has_kernel(op):
        if kernel_size is not None:
            raise PassError(
                f"kernel_size applies to conv layers, not {op}",
                field="kernel_size",
                expected="no kernel_size",
                found=repr(kernel_size),
            )
        return square(t, 0)
    k = check_positive_int(3 if kernel_size is None else kernel_size, "kernel_size")
    if k % 2 == 0:
        raise PassError(
            "an even kernel cannot keep the spatial size with symmetric padding",
            field="kernel_size",
            expected="an odd kernel_size",
            found=str(k),
        )
    return square(t, k)


def _activation_refusal(graph: Graph, after: str, activation: str) -> PassError:
    proven = ", ".join(n for n, op in OPS.items() if op.facts.nonnegative)
    why = (
        f"'{after}' is not proven non-negative (it is not the output of {proven}, or of "
        "pooling/add/concat of such values)"
        if OPS[activation].facts.identity_on_nonnegative
        else f"{activation} is not the identity on any open range of inputs"
    )
    return PassError(
        f"a {activation} after the new layer changes the function: {why}",
        node=after,
        field="activation",
        expected="relu after a non-negative value, or residual=True (x + f(x))",
        found=activation,
    )


@register_pass("insert_layer")
def insert_layer(
    graph: Graph,
    after: ValueName,
    op: Choice,
    init: Choice = "identity",
    activation: Choice | None = None,
    residual: bool = False,
    kernel_size: Count | None = None,
    seed: Seed = 0,
) -> PassResult:
    """Insert a square ``op`` layer (and an optional activation) after the value ``after``.

    Every user of ``after`` (and every output naming it) reads the new layer instead. The
    layer has as many outputs as ``after`` has channels (the last axis for linear and
    layernorm, axis 1 for conv and batchnorm); a conv has an odd ``kernel_size`` (default 3),
    stride 1 and padding ``kernel_size // 2``.

    Guarantees, in eval mode:

    - ``init="identity"`` without ``residual`` preserves the function (eye, Dirac, batchnorm
      with gamma = sqrt(running_var + eps) and beta = running_mean). An activation is
      accepted only where it is the identity: relu after a value the graph proves
      non-negative. LayerNorm has no identity and is refused.
    - ``residual=True`` builds ``x + f(x)`` with ``f = layer`` or, with an activation,
      ``f = layer -> activation -> layer``; the last layer of ``f`` is zero for ``init``
      identity or zero (exact), random for gauss or uniform (reported as not preserved).
      Earlier layers of ``f`` get PyTorch's default initialisation.
    - ``init`` zero, gauss or uniform without ``residual`` is reported as not preserving.

    Raises:
        PassError: an unknown op, init or activation, a value the layer cannot follow (rank,
            dtype, symbolic width), an even kernel, layernorm with identity init, or an
            activation that would change the function.
    """
    check_choice(op, layer_ops(), "op")
    check_choice(init, LAYER_INITS, "init")
    if activation is not None:
        check_choice(activation, activation_ops(), "activation")
    if not isinstance(after, str) or after not in graph.types:
        raise PassError(
            "no such value",
            node=after,
            field="after",
            expected="the name of a node or graph input",
            found=repr(after),
        )
    t = graph.types[after]
    attrs = _square_attrs(op, t, kernel_size)
    if not residual and init == "identity":
        identity = OPS[op].facts.identity
        if isinstance(identity, No):
            raise PassError(
                f"{op} has no identity initialisation: {identity.why}",
                node=after,
                field="op",
                expected=f"residual=True (x + f(x) with the {op} zeroed) or another op",
                found=f"{op} with init identity",
            )
        kept = activation is None or (
            OPS[activation].facts.identity_on_nonnegative and is_nonnegative(graph, after)
        )
        if not kept:
            raise _activation_refusal(graph, after, activation)

    gen = seeded(seed)
    adds = Additions(graph)
    sized_by = "kernel_size" if _has_kernel(op) else None
    first = adds.add(adds.name(f"{after}_{op}"), op, [after], attrs, sized_by=sized_by)
    if residual:
        exact = init in ("identity", "zero")
        last_init = "zero" if exact else init
        last = first
        if activation is not None:
            adds.init(first, "default", gen)
            act = adds.add(adds.name(f"{after}_{activation}"), activation, [first.name])
            last = adds.add(adds.name(f"{after}_{op}"), op, [act.name], attrs, sized_by=sized_by)
        adds.init(last, last_init, gen)
        end = adds.add(adds.name(f"{after}_residual"), RESIDUAL_SUM, [after, last.name])
        reason = "" if exact else f"init '{init}': the residual branch's last layer is random"
    else:
        adds.init(first, init, gen)
        end = first
        if activation is not None:
            end = adds.add(adds.name(f"{after}_{activation}"), activation, [first.name])
        exact = init == "identity"
        reason = (
            ""
            if exact
            else "init 'zero': the new layer outputs zeros"
            if init == "zero"
            else f"init '{init}': the new layer's weights are random"
        )
    new = insert_after(graph, after, adds.nodes, params=adds.params)
    what = f"{op} '{first.name}'" + (f" with {activation}" if activation else "")
    summary = f"inserted {what} after '{after}'" + (
        f" as a residual branch ('{end.name}')" if residual else ""
    )
    return PassResult(new, exact, f"{summary}, init {init}", reason, adds.origins)


# ---- insert_block ----------------------------------------------------------------------


def stage_of(graph: Graph, stage: str) -> tuple[Stage, BlockTemplate, int]:
    """The stage, its block template and its depth, checked; PassError naming the field
    otherwise."""
    if stage not in graph.stages:
        near = difflib.get_close_matches(str(stage), list(graph.stages), n=1)
        hint = f" (did you mean '{near[0]}'?)" if near else ""
        raise PassError(
            f"unknown stage{hint}",
            field="stage",
            expected=f"one of {', '.join(graph.stages) or '(the graph has no stages)'}",
            found=repr(stage),
        )
    entry = graph.stages[stage]
    template = graph.blocks.get(entry.block)
    if template is None:
        raise PassError(
            "the stage's block template is missing",
            field=f"stages.{stage}.block",
            expected=f"one of the graph's blocks ({', '.join(graph.blocks) or 'none'})",
            found=repr(entry.block),
        )
    if isinstance(entry.depth, bool) or not isinstance(entry.depth, int) or entry.depth < 1:
        raise PassError(
            "a stage grows from its last block, so it needs one",
            field=f"stages.{stage}.depth",
            expected="a depth of at least 1",
            found=repr(entry.depth),
        )
    wanted = sorted(template.params())
    missing = [p for p in wanted if p not in entry.with_]
    if missing:
        raise PassError(
            f"block '{entry.block}' uses ${missing[0]}, which stage '{stage}' does not set",
            field=f"stages.{stage}.with.{missing[0]}",
            expected=f"a value for every parameter of the block ({', '.join(wanted)})",
            found="none",
        )
    return entry, template, entry.depth


def _instantiate(
    graph: Graph, stage: str, entry: Stage, template: BlockTemplate, depth: int
) -> tuple[Additions, str, str]:
    """Build block ``depth`` of the stage after block ``depth - 1``'s output.

    Returns the additions, the previous block's output and the new block's output.
    """
    prev, scope = entry.scope(stage, depth - 1), entry.scope(stage, depth)
    prev_out = f"{prev}.{template.output}"
    if prev_out not in graph.node_map:
        raise PassError(
            "the stage's last block is not in the graph",
            node=prev_out,
            field=f"stages.{stage}.depth",
            expected=f"node '{prev_out}' (block {depth - 1} of {depth})",
            found="no such node",
        )
    if scope in graph.node_map or scope in graph.scope_counts:
        taken = [n.name for n in graph.nodes if n.name == scope or n.name.startswith(scope + ".")]
        raise PassError(
            "the new block's names are taken",
            node=taken[0],
            field=f"stages.{stage}.depth",
            expected=f"no node under '{scope}'",
            found=repr(taken[0]),
        )
    adds = Additions(graph)
    for draft in block_nodes(template, scope, entry.with_, prev_out):
        old = graph.node_map.get(prev + draft.name.removeprefix(scope))
        # the previous block's attributes carry any growth (widening) since the spec
        attrs = old.attrs if old is not None and old.op == draft.op else draft.attrs
        adds.add(draft.name, draft.op, draft.inputs, attrs, share=draft.share)
    new_out = f"{scope}.{template.output}"
    if adds.nodes[-1].name != new_out:
        raise PassError(
            "a block's output must be its last node",
            field=f"blocks.{entry.block}.output",
            expected=repr(adds.nodes[-1].name.removeprefix(scope + ".")),
            found=repr(template.output),
        )
    if adds.type(new_out) != graph.types[prev_out]:
        raise PassError(
            "a new block must keep the type of the stage's output",
            node=new_out,
            field=f"stages.{stage}",
            expected=str(graph.types[prev_out]),
            found=str(adds.type(new_out)),
        )
    return adds, prev_out, new_out


def _keeps_zero(node: Node) -> bool:
    """A single-input op mapping an all-zero input to an all-zero output, whatever its
    parameters (``OpFacts.zero_to_zero``)."""
    return bool(node.opdef.facts.zero_to_zero) and len(node.inputs) == 1


def _last_layer(nodes: Mapping[str, Node], start: str) -> Node | None:
    """The layer a zero-keeping chain ending at ``start`` begins with, if it can be zeroed."""
    name = start
    while name in nodes and _keeps_zero(nodes[name]):
        name = nodes[name].inputs[0]
    node = nodes.get(name)
    return node if node is not None and node.opdef.facts.zeroable else None


def _through_identities(nodes: Mapping[str, Node], value: str) -> str:
    """``value`` seen through nodes of the block that are the identity in eval mode
    (``OpFacts.eval_identity``: dropout, identity)."""
    while value in nodes and nodes[value].opdef.facts.eval_identity:
        value = nodes[value].inputs[0]
    return value


def _residual_chain(nodes: Mapping[str, Node], value: str, block_in: str) -> tuple[list[Node], str]:
    """The layers whose zeroing makes ``value`` equal ``block_in``, and why there are none
    (empty when there are).

    ``value`` must be ``block_in`` (through eval-mode identities) or a sum with exactly one
    input that is such a value in turn (the trunk) and every other input a residual branch
    ending in a zeroable layer followed only by zero-keeping ops (or a sum of such
    branches): a chain of residual joins ``x + f1(x) + f2(x + f1(x)) ...`` as in a
    transformer block (attention and MLP halves), ``x + (f1(x) + f2(x))`` as in GPT-NeoX's
    parallel block, or a ResNet block.
    """
    value = _through_identities(nodes, value)
    if value == block_in:
        return [], ""
    node = nodes.get(value)
    if node is None or not node.opdef.facts.sums:
        return [], f"'{value}' is neither the block's input nor a residual add"
    trunks = []
    for i in node.inputs:
        layers, why = _residual_chain(nodes, i, block_in)
        if not why:
            trunks.append((i, layers))
    if len(trunks) != 1:
        return [], (
            f"the residual add '{value}' has no single plain skip (a path of residual adds "
            "back to the block's input)"
        )
    trunk, layers = trunks[0]
    ends = [_branch_ends(nodes, i) for i in node.inputs if i != trunk]
    if any(e is None for e in ends):
        return [], (f"a residual branch into '{value}' does not end in a layer that can be zeroed")
    return layers + [layer for e in ends if e is not None for layer in e], ""


def _branch_ends(nodes: Mapping[str, Node], value: str) -> list[Node] | None:
    """The layers whose zeroing makes the branch ``value`` zero: its last layer (see
    :func:`_last_layer`), or the ends of every input of a sum of branches (GPT-NeoX's
    parallel ``attn(ln1(x)) + mlp(ln2(x))``); None where some branch has none."""
    last = _last_layer(nodes, value)
    if last is not None:
        return [last]
    node = nodes.get(value)
    if node is None or not node.opdef.facts.sums:
        return None
    ends = [_branch_ends(nodes, i) for i in node.inputs]
    if any(e is None for e in ends):
        return None
    return [layer for e in ends if e is not None for layer in e]


def branch_ends(
    graph: Graph,
    nodes: Mapping[str, Node],
    block_in: str,
    block_out: str,
    *,
    proven: str | None = None,
) -> tuple[list[Node], str]:
    """The layers whose zeroing makes the block compute its input, and why that would not be
    exact (empty when it would be).

    The block must end ``[act](r)`` where ``r`` is a chain of residual adds back to the
    block's input (see :func:`_residual_chain`), each branch ending in a layer that can be
    zeroed (``OpFacts.zeroable``: linear, conv, norms, attention's output projection)
    followed only by zero-keeping ops; ``act`` must be absent, identity, dropout, or relu on
    a value proven non-negative (``proven``: the name of the block's input in ``graph``,
    when the block reads it under another name).
    """
    out = nodes[block_out]
    act = None
    inner = _through_identities(nodes, block_out)
    if inner in nodes and not nodes[inner].opdef.facts.sums:
        node = nodes[inner]
        if len(node.inputs) == 1 and nodes.get(node.inputs[0], node).opdef.facts.sums:
            act, inner = node, node.inputs[0]
    fallback = [n for n in reversed(nodes.values()) if n.opdef.facts.zeroable][:1]
    layers, why = _residual_chain(nodes, inner, block_in)
    if why:
        if not nodes.get(inner, out).opdef.facts.sums:
            why = "the block has no residual add at its output"
        return fallback, why
    if not layers:
        return fallback, "the block has no residual branch to zero"
    if act is None or act.opdef.facts.eval_identity:
        return layers, ""
    if act.opdef.facts.identity_on_nonnegative and is_nonnegative(graph, proven or block_in):
        return layers, ""
    return layers, (
        f"the block ends in {act.op}, which is not the identity on its input '{block_in}'"
    )


@register_pass("insert_block")
def insert_block(
    graph: Graph, stage: StageName, init: Choice = "zero", seed: Seed = 0
) -> PassResult:
    """Append one block to ``stage``, instantiated from the stage's template.

    The new block ``{stage}.block{N}`` (``{stage}.{N}`` in a stage imported from an
    ``nn.ModuleList``) reads block ``N-1``'s output and takes over all its
    users; the stage's depth becomes ``N+1``. Attributes come from block ``N-1``'s nodes
    (so a widened stage grows blocks of its current width), else from the template with
    ``$name`` values from the stage's ``with``. The last layer of each residual branch gets
    ``init`` (zero: weight and bias, or batchnorm gamma and beta, zeroed, AutoGrow's
    ZeroInit; gauss/uniform: random); every other parameter gets PyTorch's default init.

    Guarantees: with ``init="zero"`` the function is preserved whenever the block is
    ``act(r)`` with ``r`` a chain of residual adds back to the block's input whose every
    branch ends in a zeroable layer (linear, conv, norm, attention: a ResNet block, a
    transformer block's attention and MLP halves) and ``act`` the identity on the input
    (none, or relu after a value proven non-negative); otherwise the result says it is not
    preserved and why. gauss and uniform never preserve it.

    Raises:
        PassError: an unknown stage or init, a missing template, depth 0, a missing last
            block, an unset template parameter, or a block that would change the type.
    """
    check_choice(init, BLOCK_INITS, "init")
    entry, template, depth = stage_of(graph, stage)
    adds, prev_out, new_out = _instantiate(graph, stage, entry, template, depth)
    nodes = {n.name: n for n in adds.nodes}
    ends, why = branch_ends(graph, nodes, prev_out, new_out)
    gen = seeded(seed)
    last_layers = {e.name for e in ends}
    for node in adds.nodes:
        adds.init(node, init if node.name in last_layers else "default", gen)
    new = insert_after(graph, prev_out, adds.nodes, params=adds.params)
    stages = {**graph.stages, stage: entry.replace(depth=depth + 1)}
    preserved = init == "zero" and not why and bool(ends)
    reason = (
        ""
        if preserved
        else why
        if init == "zero"
        else f"init '{init}': the block's last layer is random"
    )
    zeroed = ", ".join(f"'{e.name}'" for e in ends) or "none"
    summary = (
        f"added block {depth} to stage '{stage}' ({len(adds.nodes)} nodes after "
        f"'{prev_out}'; {init} init on {zeroed})"
    )
    return PassResult(new.replace(stages=stages), preserved, summary, reason, adds.origins)
