"""Verification of what changed (:mod:`grow_ir.ir.verify_delta`) accepts and rejects exactly
what the full verifier does.

Random networks (:mod:`tests.graphgen`) go through random pass sequences; each pass's
result, and that result broken by hand in random ways (a tensor of the wrong shape or
dtype, a parameter dropped or added, a node renamed onto another, into a reserved word or
into a scope, a node removed, nodes swapped, an input rewired, an output dropped or moved,
a share pointed elsewhere, a dead end added...), is checked three ways: by
``verify_changes`` against the verified graph it was made from, by ``verify`` (which tries
that first), and by the full verifier on a copy with nothing handed on. A proof must
never accept what the full check rejects, ``verify`` must raise the full check's very
error, and the pass results (valid, sharing the parent's objects) must be proven.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import weakref
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import grow_ir
from grow_ir.errors import GrowError, PassError
from grow_ir.ir.graph import Graph, Node
from grow_ir.ir.verify import verify
from grow_ir.ir.verify_delta import changes, verify_changes
from grow_ir.passes import PASSES, insert_layer
from grow_ir.spec import load_spec
from tests.graphgen import PASS_RECORDS, graphs, pass_arguments
from tests.test_pass_properties import SETTINGS


def full_check(graph: Graph) -> str:
    """The full verifier's verdict on a copy of ``graph`` with nothing handed on: ``""``
    when it accepts, else its error's text."""
    try:
        verify(dataclasses.replace(graph))
    except GrowError as exc:
        return str(exc)
    return ""


def verdict(graph: Graph) -> str:
    """``verify(graph)``'s verdict (it may prove the graph from its base)."""
    try:
        verify(graph)
    except GrowError as exc:
        return str(exc)
    return ""


# ---- hand-made breakages -----------------------------------------------------------------

Mutation = Callable[[Graph, st.DataObject], Graph]


def _node_index(graph: Graph, data: st.DataObject) -> int:
    return data.draw(st.integers(0, len(graph.nodes) - 1), label="node")


def _with_node(graph: Graph, at: int, node: Node | None) -> Graph:
    nodes = list(graph.nodes)
    if node is None:
        del nodes[at]
    else:
        nodes[at] = node
    return graph.replace(nodes=tuple(nodes))


def reshape_param(graph: Graph, data: st.DataObject) -> Graph:
    key = data.draw(st.sampled_from(sorted(graph.params)), label="param")
    t = graph.params[key]
    how = data.draw(st.sampled_from(["same", "longer", "dtype", "not a tensor"]), label="how")
    if how == "same":
        new: object = t.clone()
    elif how == "longer":
        new = torch.zeros((t.shape[0] + 1, *t.shape[1:]) if t.dim() else (1,), dtype=t.dtype)
    elif how == "dtype":
        new = t.to(torch.float64 if t.dtype != torch.float64 else torch.float32)
    else:
        new = t.tolist()
    return graph.replace(params={**graph.params, key: new})


def drop_param(graph: Graph, data: st.DataObject) -> Graph:
    key = data.draw(st.sampled_from(sorted(graph.params)), label="param")
    return graph.replace(params={k: v for k, v in graph.params.items() if k != key})


def extra_param(graph: Graph, data: st.DataObject) -> Graph:
    node = graph.nodes[_node_index(graph, data)].name
    key = data.draw(st.sampled_from([f"{node}.extra", "extra", f"{node}.weight"]), label="key")
    return graph.replace(params={**graph.params, key: torch.zeros(2)})


def rename(graph: Graph, data: st.DataObject) -> Graph:
    at = _node_index(graph, data)
    other = graph.nodes[_node_index(graph, data)].name
    name = data.draw(
        st.sampled_from([other, f"{other}.inner", other.rsplit(".", 1)[0], "forward", "a-b"]),
        label="name",
    )
    return _with_node(graph, at, graph.nodes[at].replace(name=name))


def remove(graph: Graph, data: st.DataObject) -> Graph:
    return _with_node(graph, _node_index(graph, data), None)


def swap(graph: Graph, data: st.DataObject) -> Graph:
    at = data.draw(st.integers(0, max(0, len(graph.nodes) - 2)), label="at")
    nodes = list(graph.nodes)
    nodes[at : at + 2] = nodes[at : at + 2][::-1]
    return graph.replace(nodes=tuple(nodes))


def rewire(graph: Graph, data: st.DataObject) -> Graph:
    at = _node_index(graph, data)
    node = graph.nodes[at]
    if not node.inputs:
        return graph
    values = [*graph.inputs, *(n.name for n in graph.nodes), "nowhere"]
    value = data.draw(st.sampled_from(values), label="value")
    k = data.draw(st.integers(0, len(node.inputs) - 1), label="input")
    inputs = (*node.inputs[:k], value, *node.inputs[k + 1 :])
    return _with_node(graph, at, node.replace(inputs=inputs))


def move_output(graph: Graph, data: st.DataObject) -> Graph:
    outputs = dict(graph.outputs)
    if not outputs:
        return graph
    out = data.draw(st.sampled_from(sorted(outputs)), label="output")
    how = data.draw(st.sampled_from(["drop", "move", "rename"]), label="how")
    if how == "drop":
        del outputs[out]
    elif how == "move":
        outputs[out] = graph.nodes[_node_index(graph, data)].name
    else:
        outputs["class"] = outputs.pop(out)
    return graph.replace(outputs=outputs)


def reshare(graph: Graph, data: st.DataObject) -> Graph:
    at = _node_index(graph, data)
    owner = data.draw(st.sampled_from([None, *(n.name for n in graph.nodes)]), label="owner")
    return _with_node(graph, at, graph.nodes[at].replace(share=owner))


def dead_end(graph: Graph, data: st.DataObject) -> Graph:
    at = _node_index(graph, data)
    name = data.draw(st.sampled_from(["spare", f"{graph.nodes[at].name}_spare"]), label="name")
    nodes = list(graph.nodes)
    nodes.insert(at + 1, Node(name, "identity", {}, (graph.nodes[at].name,)))
    outputs = dict(graph.outputs)
    if data.draw(st.booleans(), label="as an output"):
        outputs["spare"] = name
    return graph.replace(nodes=tuple(nodes), outputs=outputs)


def new_node(graph: Graph, data: st.DataObject) -> Graph:
    """An equal copy of a node (a new object): valid, and to be proven."""
    at = _node_index(graph, data)
    node = graph.nodes[at]
    return _with_node(graph, at, Node(node.name, node.op, node.attrs, node.inputs, node.share))


MUTATIONS: dict[str, Mutation] = {
    f.__name__: f
    for f in (
        reshape_param,
        drop_param,
        extra_param,
        rename,
        remove,
        swap,
        rewire,
        move_output,
        reshare,
        dead_end,
        new_node,
    )
}


# ---- the properties ----------------------------------------------------------------------


def check_same_verdict(graph: Graph, parent: Graph, proofs: Counter[str], label: str) -> None:
    """``graph`` (made by ``replace`` from the verified ``parent``) gets the full check's
    verdict from ``verify``; a proof by ``verify_changes`` only for a valid graph, with the
    indexes a fresh inference gives."""
    full = full_check(graph)
    if not full:  # the size from the parent's, less what changed, is the size
        assert graph.replace().param_totals == dataclasses.replace(graph).param_totals, label
    proved = graph.replace()  # the same graph, its base and hints handed on
    proof = verify_changes(proved, parent)
    assert proof is None or not full, f"{label}: proven, but the full check says: {full}"
    assert verdict(graph.replace()) == full, label
    proofs[f"{label}: {'proven' if proof else 'rejected' if full else 'full check'}"] += 1
    if proof is not None:
        assert changes(proved) is proof
        # handed on from the parent's, less and plus what changed
        assert "output_deps" in vars(proved) or "output_deps" not in vars(parent)
        same_indexes(proved, dataclasses.replace(graph))


def same_indexes(proved: Graph, fresh: Graph) -> None:
    """The indexes a proof set equal those of a fresh inference."""
    verify(fresh)
    assert dict(proved.types) == dict(fresh.types)
    assert dict(proved.param_specs) == dict(fresh.param_specs)
    assert proved.param_totals == fresh.param_totals
    assert dict(proved.scope_counts) == dict(fresh.scope_counts)
    assert dict(proved.positions) == dict(fresh.positions)
    assert dict(proved.output_deps) == dict(fresh.output_deps)


def draw_step(graph: Graph, data: st.DataObject) -> tuple[str, dict] | None:
    options = {name: pass_arguments(graph, name) for name in PASS_RECORDS}
    names = [n for n, o in options.items() if o is not None]
    if not names:
        return None
    name = data.draw(st.sampled_from(names), label="pass")
    return name, data.draw(options[name], label=name)  # type: ignore[arg-type]


FAMILIES = [("mlp", "cnn", "net"), ("seq", "staged")]


@pytest.mark.parametrize("families", FAMILIES, ids="-".join)
def test_pass_results_are_proven_from_their_input(families: tuple[str, ...]) -> None:
    """Every result of a random pass sequence is verified from what changed, with the
    indexes and verdict of a full check."""
    proofs: Counter[str] = Counter()

    @settings(SETTINGS, max_examples=60)
    @given(graph=graphs(families), data=st.data())
    def run(graph: Graph, data: st.DataObject) -> None:
        verify(graph).param_totals  # noqa: B018  (known, so that results add to it)
        for _ in range(data.draw(st.integers(1, 4), label="steps")):
            step = draw_step(graph, data)
            if step is None:
                return
            name, args = step
            try:
                result = PASSES[name].impl(graph, **PASSES[name].check(args))
            except PassError:
                continue
            check_same_verdict(result.graph, graph, proofs, name)
            graph = verify(result.graph)
            graph.param_totals  # noqa: B018

    run()
    print(f"\n{'-'.join(families)}: {dict(proofs)}")
    assert proofs and not [k for k in proofs if not k.endswith("proven")], proofs


@pytest.mark.parametrize("families", FAMILIES, ids="-".join)
def test_broken_results_get_the_full_verdict(families: tuple[str, ...]) -> None:
    """Pass results (and verified graphs) broken by hand: ``verify`` raises the full
    check's error, and a proof is found only for a valid graph."""
    proofs: Counter[str] = Counter()

    @settings(SETTINGS, max_examples=250)
    @given(graph=graphs(families), data=st.data())
    def run(graph: Graph, data: st.DataObject) -> None:
        verify(graph).param_totals  # noqa: B018  (known, so that results add to it)
        start = graph
        step = draw_step(graph, data) if data.draw(st.booleans(), label="pass first") else None
        if step is not None:
            name, args = step
            with contextlib.suppress(PassError):
                start = PASSES[name].impl(graph, **PASSES[name].check(args)).graph
        broken, applied = start, []
        for _ in range(data.draw(st.integers(1, 2), label="mutations")):
            name = data.draw(st.sampled_from(sorted(MUTATIONS)), label="mutation")
            if broken.nodes and (broken.params or "param" not in name):
                broken = MUTATIONS[name](broken, data)
                applied.append(name)
        check_same_verdict(broken, graph, proofs, "+".join(applied))

    run()
    print(f"\n{'-'.join(families)}: {dict(sorted(proofs.items()))}")
    for name in MUTATIONS:
        assert any(name in k for k in proofs), f"{name} never drawn: {proofs}"
    # Only a reordering (kept nodes swapped) is left to the full check when valid.
    unproven = [k for k in proofs if k.endswith("full check") and "swap" not in k]
    assert not unproven, proofs
    # both verdicts are exercised, not one alone
    assert sum(v for k, v in proofs.items() if k.endswith("rejected")) >= 50, proofs
    assert sum(v for k, v in proofs.items() if k.endswith("proven")) >= 10, proofs


def resnet() -> Graph:
    return verify(load_spec(Path(grow_ir.__file__).parent / "examples" / "resnet.yaml"))


def test_a_copy_is_proven_against_a_parent_given_and_keeps_nothing_of_it() -> None:
    """A graph that shares the parent's objects but was not made by ``replace`` (a copy,
    as a backend holding the parent's lowering sees a new graph) is proven against the
    parent passed in; once verified it keeps no reference to the parent or its hints."""
    parent = resnet()
    grown = insert_layer(parent, after="stem_act", op="conv2d")
    copy = dataclasses.replace(grown)
    verify(copy, parent=parent)
    found = changes(copy)
    assert found is not None and found.parent() is parent
    # the new layer, and the two readers of stem_act rewired to read it
    old_ids = {id(n) for n in parent.nodes}
    assert found.nodes == tuple(n.name for n in copy.nodes if id(n) not in old_ids)
    assert set(found.nodes) == {"stem_act_conv2d", "stage1.block0.conv1", "stage1.block0.sum"}
    assert not found.same(found.nodes[0]) and found.same(parent.nodes[0].name)
    assert not {"_base", "_prior", "_diff"} & set(vars(copy)) & set(vars(grown))
    gone = weakref.ref(parent)
    del parent, grown, found
    gc.collect()
    assert gone() is None, "a verified graph keeps its parent alive"
