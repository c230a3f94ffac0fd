"""The lowered forward in content-defined chunks: a lowering that takes chunks over from an
earlier one computes bitwise what fx's one-function code of a full rebuild computes, and
a growth step regenerates only the chunks it touched."""

from __future__ import annotations

import copy
import pickle
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from grow_ir import passes
from grow_ir.backends import torch_chunks
from grow_ir.backends.torch import to_torch
from grow_ir.errors import PassError
from grow_ir.ir import Graph
from grow_ir.passes import PASSES
from grow_ir.probes import random_inputs, randomize_norms
from grow_ir.spec import load_spec
from tests.graphgen import PASS_NAMES, graphs, pass_arguments

CONV = {"op": "conv2d", "kernel_size": 3, "padding": 1}


def resnet(depth: int = 6, neck: int | None = None) -> Graph:
    """A stem, one stage of ``depth`` residual blocks, (with ``neck``, a 1×1 conv to that
    many channels,) pooling and a linear head."""
    block = {
        "nodes": [
            {"name": "conv1", "inputs": ["input"], **CONV, "out_channels": "$c"},
            {"name": "bn1", "op": "batchnorm"},
            {"name": "act1", "op": "relu"},
            {"name": "conv2", **CONV, "out_channels": "$c"},
            {"name": "bn2", "op": "batchnorm"},
            {"name": "sum", "op": "add", "inputs": ["bn2", "input"]},
            {"name": "out", "op": "relu"},
        ]
    }
    spec = {
        "version": 1,
        "name": "resnet",
        "seed": 0,
        "inputs": {"image": {"shape": ["batch", 3, 6, 6]}},
        "blocks": {"basic": block},
        "nodes": [
            {"name": "stem", "inputs": ["image"], **CONV, "out_channels": 4},
            {"name": "stem_bn", "op": "batchnorm"},
            {"name": "stem_act", "op": "relu"},
            {"name": "stage1", "stage": "basic", "depth": depth, "with": {"c": 4}},
            *(
                [{"name": "neck", **CONV, "kernel_size": 1, "padding": 0, "out_channels": neck}]
                if neck
                else []
            ),
            {"name": "pool", "op": "global_avgpool"},
            {"name": "head", "op": "linear", "out_features": 3},
        ],
        "outputs": {"logits": "head"},
    }
    return randomize_norms(load_spec(spec), seed=1)


def one_function(graph: Graph) -> nn.Module:
    """A full rebuild of ``graph`` running fx's code of the whole graph as one function
    (what every lowering ran before chunks)."""
    module = to_torch(graph)
    module.recompile()
    assert "chunk_" not in module.code
    return module


def outputs(module: nn.Module, x: dict[str, torch.Tensor], train: bool) -> list[torch.Tensor]:
    torch.manual_seed(0)  # the same dropout masks in both modules
    with torch.no_grad():
        y = module.train(train)(**x)
    return list(y.values()) if isinstance(y, dict) else [y]


def assert_bitwise_equal(module: nn.Module, reference: nn.Module, graph: Graph) -> None:
    """Same state_dict keys in the same order, bitwise-equal outputs in eval and train
    mode."""
    assert list(module.state_dict()) == list(reference.state_dict())
    x = random_inputs(graph, batch=4, seed=3)
    for train in (False, True):
        got, want = outputs(module, x, train), outputs(reference, x, train)
        assert len(got) == len(want)
        for a, b in zip(got, want, strict=True):
            assert torch.equal(a, b), train


def sources(module: nn.Module) -> list[str]:
    return [c.source for c in module.chunks.values()]


@pytest.mark.parametrize("average", [2, torch_chunks.AVERAGE])
def test_reused_chunks_compute_what_a_full_rebuild_computes(
    average: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After every step of random pass sequences on random networks, the lowering that
    took chunks (and modules) over from the previous step's equals a full rebuild run as
    fx's one function, bit for bit, and has the very code of a fresh chunked lowering."""
    monkeypatch.setattr(torch_chunks, "AVERAGE", average)  # 2: a boundary every 2 nodes

    @settings(
        max_examples=40,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(graph=graphs(), data=st.data())
    def run(graph: Graph, data: st.DataObject) -> None:
        module = to_torch(graph)
        assert_bitwise_equal(module, one_function(graph), graph)
        for _ in range(data.draw(st.integers(1, 3), label="steps")):
            options = {name: pass_arguments(graph, name) for name in PASS_NAMES}
            name = data.draw(st.sampled_from([n for n, o in options.items() if o is not None]))
            args: dict[str, Any] = data.draw(options[name], label=name)  # type: ignore[arg-type]
            try:
                graph = PASSES[name].run(graph, **args).graph
            except PassError:
                continue
            module = to_torch(graph, reuse=module)
            assert sources(module) == sources(to_torch(graph))
            assert_bitwise_equal(module, one_function(graph), graph)

    run()


def regenerated(old: nn.Module, new: nn.Module) -> list[str]:
    """The chunks of ``new`` whose code was not taken over from ``old``, by first node."""
    return [
        first
        for first, c in new.chunks.items()
        if first not in old.chunks or old.chunks[first].fn is not c.fn
    ]


def test_a_growth_step_regenerates_only_the_chunks_it_touched() -> None:
    graph = resnet()
    old = to_torch(graph)
    assert len(old.chunks) >= 4  # boundaries are content-defined: this graph has several
    same = to_torch(graph, reuse=old)
    assert regenerated(old, same) == []

    grown = passes.insert_layer(graph, after="stage1.block2.out", op="conv2d")
    new = to_torch(grown, reuse=old)
    touched = regenerated(old, new)
    assert 1 <= len(touched) <= 2, touched
    firsts = list(new.chunks)
    new_layers = [n.name for n in grown.nodes if n.name not in graph.node_map]
    assert new_layers and all(firsts[_position(new, n)] in touched for n in new_layers)
    assert_bitwise_equal(new, one_function(grown), grown)


def _position(module: nn.Module, node: str) -> int:
    """The index of the chunk of ``module`` holding ``node``."""
    for i, c in enumerate(module.chunks.values()):
        if any(key[0] == node for key in c.keys):
            return i
    raise AssertionError(node)


def test_widening_regenerates_only_the_chunks_whose_code_reads_a_changed_type() -> None:
    """Widening changes the type every relu and add of the stage sees, but their code does
    not read types: only a chunk holding a node whose emitter reads its input types
    (the pooling's) and sees a new one is regenerated."""
    graph = resnet()
    old = to_torch(graph)
    grown = passes.widen(graph, node="stem", width=8)  # the whole stage's channel group
    new = to_torch(grown, reuse=old)
    touched = regenerated(old, new)
    for first, chunk in new.chunks.items():
        reads_changed = any(
            s.input_types and s.input_types != tuple(graph.input_types(s.node)) for s in chunk.steps
        )
        assert (first in touched) == reads_changed, first
    assert touched == [list(new.chunks)[_position(new, "pool")]]
    kept = [c for first, c in new.chunks.items() if first not in touched]
    assert any(  # a stateless node whose input type changed, in a chunk taken over
        s.kind == "function" and graph.input_types(s.node) != grown.input_types(s.node)
        for c in kept
        for s in c.steps
    )
    assert sources(new) == sources(to_torch(grown))
    assert_bitwise_equal(new, one_function(grown), grown)


def test_forward_is_taken_over_when_it_would_call_the_very_same_sections() -> None:
    """Widening the stem regenerates no section here (the pooling reads the neck's
    unchanged output): ``forward`` is the earlier lowering's function, not compiled again;
    a step that changes a section gets a new one. Either way the module computes bitwise
    what a full rebuild computes."""
    graph = resnet(neck=5)
    old = to_torch(graph)
    grown = passes.widen(graph, node="stem", width=8)
    new = to_torch(grown, reuse=old)
    assert new.lowering.plan.fns == old.lowering.plan.fns
    assert type(new).forward is type(old).forward
    assert_bitwise_equal(new, one_function(grown), grown)
    deeper = passes.insert_block(grown, stage="stage1")
    newer = to_torch(deeper, reuse=new)
    assert newer.lowering.plan.fns != new.lowering.plan.fns
    assert type(newer).forward is not type(new).forward
    assert newer.lowering.plan.source == to_torch(deeper).lowering.plan.source
    assert_bitwise_equal(newer, one_function(deeper), deeper)


def test_a_section_or_forward_of_unchanged_code_is_bound_to_the_new_chunks_not_compiled() -> None:
    """A section (or ``forward``) whose source is the earlier lowering's but which calls
    a regenerated chunk (section) keeps the earlier function's compiled code, bound to the
    new callees: every function whose source is unchanged shares its code object, and
    those calling other functions are new function objects computing what a full rebuild
    computes."""
    graph = resnet()
    old = to_torch(graph)
    rebound = 0
    for k in range(6):
        grown = passes.insert_layer(graph, after=f"stage1.block{k}.out", op="conv2d")
        new = to_torch(grown, reuse=old)
        before, after = old.lowering.plan, new.lowering.plan
        pairs = [((before.forward, before.source), (after.forward, after.source))]
        pairs += [
            ((s.fn, s.source), (after.section_at[first].fn, after.section_at[first].source))
            for first, s in before.section_at.items()
            if first in after.section_at
        ]
        for (old_fn, old_source), (fn, source) in pairs:
            if source == old_source:
                assert fn.__code__ is old_fn.__code__
                rebound += fn is not old_fn
            else:
                assert fn.__code__ is not old_fn.__code__
        assert after.source == to_torch(grown).lowering.plan.source
        assert_bitwise_equal(new, one_function(grown), grown)
    assert rebound  # some step kept a function's code and gave it new callees


def test_the_whole_fx_graph_is_built_on_first_use() -> None:
    graph = resnet(depth=2)
    module = to_torch(graph)
    assert module.__dict__["_pending"] is not None
    names = [n.name for n in module.graph.nodes]  # built now
    assert module.__dict__["_pending"] is None
    assert names[0] == "image" and "stage1_block1_out" in names
    module.graph.lint()
    # deepcopy, pickling and recompiling go through fx's one-function code
    for other in (copy.deepcopy(module), pickle.loads(pickle.dumps(to_torch(graph)))):
        assert_bitwise_equal(other, one_function(graph), graph)


def test_a_chunk_whose_values_gain_a_reader_elsewhere_is_regenerated(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A new task head reading ``pool`` from another chunk: the chunk defining ``pool``
    has the same nodes but must now return ``pool`` too."""
    monkeypatch.setattr(torch_chunks, "AVERAGE", 4)  # puts pool and head in one chunk
    graph = resnet()
    old = to_torch(graph)
    grown = passes.fork_task(graph, task="c", base="logits", new=["head"])
    new = to_torch(grown, reuse=old)
    first = list(new.chunks)[_position(new, "pool")]
    before, after = old.chunks[first], new.chunks[first]
    assert before.keys == after.keys and before.live_out == ("head",)
    assert after.live_out == ("pool", "head") and after is not before
    assert_bitwise_equal(new, one_function(grown), grown)
