"""``grow_vocab``: more tokens for a language model's embedding and its output head.

New tokens get new embedding rows and new head rows (the ops' own initialisation); the old
tokens' embedding rows and head rows are untouched, so on old tokens every logit of an old
token is unchanged (reported through ``PassResult.grown``: the output grew along its last
axis). The softmax over the larger vocabulary does change: the new tokens take some
probability mass, which the report says.
"""

from __future__ import annotations

import torch

from grow_ir.errors import PassError
from grow_ir.ir.graph import Graph, Node
from grow_ir.ir.ops import OPS
from grow_ir.passes.args import Count, NodeName, Seed
from grow_ir.passes.base import Origin, PassResult, register_pass
from grow_ir.passes.initializers import init_layer
from grow_ir.passes.rewrite import node_of_kind, replace_nodes, seeded


def index_ops() -> tuple[str, ...]:
    """Ops that read int64 indices bounded by an attribute (``OpFacts.index_bound``)."""
    return tuple(name for name, op in OPS.items() if op.facts.index_bound is not None)


def _vocab_heads(graph: Graph, size: int) -> list[tuple[str, Node]]:
    """``(output, node)`` for every graph output made by a head layer (``OpFacts.head``)
    whose width is the vocabulary size."""
    out = []
    for output, name in graph.outputs.items():
        node = graph.node_map.get(name)
        if node is None or not node.opdef.facts.head:
            continue
        attr = node.opdef.facts.width_attr
        if attr is not None and getattr(node.attrs, attr) == size:
            out.append((output, node))
    return out


def _grow_rows(
    graph: Graph, node: Node, attr: str, size: int, gen: torch.Generator
) -> tuple[Node, dict[str, torch.Tensor], dict[str, Origin]]:
    """``node`` with ``attr`` set to ``size``; every parameter whose axis 0 counts it keeps
    its old rows and gets fresh ones (the op's initialisation) after them."""
    old = getattr(node.attrs, attr)
    grown = node.replace(attrs=node.attrs.model_copy(update={attr: size}))
    if node.tied(graph):  # a tied head's rows are its embedding's, grown with it
        return grown, {}, {}
    ins = graph.input_types(node)
    fresh = init_layer(grown, ins, "default", gen)
    params, origins = {}, {}
    for local, new in fresh.items():
        key = f"{node.param_prefix}.{local}"
        t = graph.params[key]
        if t.shape == new.shape:
            continue
        params[key] = torch.cat([t, new[old:]]).contiguous()
        origins[key] = Origin(key, index={0: tuple(range(old)) + (-1,) * (size - old)})
    return grown, params, origins


@register_pass("grow_vocab")
def grow_vocab(graph: Graph, node: NodeName, size: Count, seed: Seed = 0) -> PassResult:
    """Grow the vocabulary of embedding ``node`` to ``size`` tokens, and with it every output
    head whose width is the old vocabulary (a linear making a graph output).

    A head tied to the embedding (``share``) keeps the tie: its rows are the embedding's,
    so the new tokens' head rows are their new embedding rows.

    Guarantees: old tokens' embedding rows and head rows (and biases) are unchanged, so for
    inputs of old tokens the first ``old size`` logits of each grown output are unchanged
    (``PassResult.grown``); the new rows get the ops' initialisation from a generator
    seeded with ``seed``. ``preserved`` is True in that sense (a softmax over the larger
    vocabulary does give the new tokens some probability).

    Raises:
        PassError: ``node`` is not an embedding, ``size`` is not larger, or a head of the
            old vocabulary size feeds another node (its users could not follow).
    """
    n = node_of_kind(graph, node, index_ops(), "grow_vocab")
    attr = n.opdef.facts.index_bound
    assert attr is not None
    old = getattr(n.attrs, attr)
    if isinstance(size, bool) or not isinstance(size, int) or size <= old:
        raise PassError(
            "the new vocabulary must be larger than the current one",
            node=node,
            field="size",
            expected=f"an integer above {old}",
            found=repr(size),
        )
    gen = seeded(seed)
    grown_node, params, origins = _grow_rows(graph, n, attr, size, gen)
    changed = {node: grown_node}
    grown: dict[str, tuple[int, int]] = {}
    for output, head in _vocab_heads(graph, old):
        if graph.users.get(head.name):
            raise PassError(
                f"head '{head.name}' of the vocabulary feeds {', '.join(graph.users[head.name])}"
                ", which cannot follow a larger vocabulary",
                node=head.name,
                field="node",
                expected="a head whose output is only a graph output",
                found=f"users {', '.join(graph.users[head.name])}",
            )
        if head.tied(graph) and head.share != node:
            raise PassError(
                f"head '{head.name}' is tied to '{head.share}', not to the embedding '{node}' "
                "being grown, so its rows could not follow",
                node=head.name,
                field="share",
                expected=f"a head tied to '{node}' or to nothing",
                found=repr(head.share),
            )
        width_attr = head.opdef.facts.width_attr
        assert width_attr is not None
        grown_head, p, o = _grow_rows(graph, head, width_attr, size, gen)
        changed[head.name] = grown_head
        params.update(p)
        origins.update(o)
        grown[output] = (graph.types[head.name].rank - 1, old)
    new = replace_nodes(graph, changed, params=params)
    heads = ", ".join(f"'{graph.outputs[o]}'" for o in grown) or "no output head"
    summary = f"grew the vocabulary of '{node}' from {old} to {size} tokens (heads: {heads})"
    return PassResult(new, True, summary, "", origins, grown=grown)
