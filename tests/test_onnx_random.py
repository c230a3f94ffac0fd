"""Parity on whole networks: random graphs of every op, graphs grown by every registered
pass (fixed cases and random pass sequences), and every example spec."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from grow_ir.backends.onnx import to_onnx
from grow_ir.backends.onnx_check import check_model, check_parity
from grow_ir.errors import GrowError
from grow_ir.ir import OPS, Graph, Node, TensorType, initialize, verify
from grow_ir.passes import PASSES, Probe, apply_plan
from grow_ir.probes import randomize_norms
from grow_ir.spec import load_spec
from tests import graphgen

EXAMPLES = Path(__file__).resolve().parent.parent / "specs" / "examples"
SETTINGS = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    derandomize=True,
)


def assert_exports(graph: Graph, task: str | None = None) -> None:
    """The checker passes and onnxruntime matches torch within 1e-5 at two sizes."""
    model = to_onnx(graph, task=task)
    check_model(model)
    assert check_parity(graph, model, task=task) <= 1e-5


# ---- random graphs ----------------------------------------------------------------------
#
# Networks come from the shared generator (tests/graphgen.py): the ``net`` family draws any
# op of the registry, with attributes from its Attrs model; the other families are
# structured (MLPs, conv nets, transformer-style nets, stages of block templates).


def grow_randomly(graph: Graph, data: st.DataObject) -> Graph:
    """``graph`` after one to three random passes of every registered pass with the shared
    argument strategies (a refusal leaves the graph as it was)."""
    for _ in range(data.draw(st.integers(1, 3))):
        options = {name: graphgen.pass_arguments(graph, name) for name in sorted(PASSES)}
        usable = sorted(name for name, args in options.items() if args is not None)
        if not usable:
            break
        name = data.draw(st.sampled_from(usable))
        try:
            graph = PASSES[name].run(graph, **data.draw(options[name])).graph  # type: ignore[arg-type]
        except GrowError:  # a refusal, with its reason: the graph is unchanged
            continue
    return graph


@SETTINGS
@given(graph=graphgen.graphs(("net",)), data=st.data())
def test_random_graphs_match_torch(graph: Graph, data: st.DataObject) -> None:
    assert_exports(graph)
    assert_exports(graph, task=data.draw(st.sampled_from(list(graph.outputs))))


def test_random_graphs_reach_every_op() -> None:
    """The networks of any op draw every op of the registry within 1500 examples."""
    seen = graphgen.ops_drawn(("net",), max_examples=1500)
    assert seen == set(OPS), f"never drawn: {sorted(set(OPS) - seen)}"


# ---- graphs grown by passes -----------------------------------------------------------


def small_mlp() -> Graph:
    x = TensorType(("batch", 6))
    graph = Graph(
        inputs={"x": x},
        nodes=[
            Node("fc1", "linear", {"out_features": 8}, ("x",)),
            Node("act1", "relu", {}, ("fc1",)),
            Node("fc2", "linear", {"out_features": 8}, ("act1",)),
            Node("act2", "relu", {}, ("fc2",)),
            Node("head", "linear", {"out_features": 3}, ("act2",)),
        ],
        outputs={"y": "head"},
        name="mlp",
    )
    return verify(initialize(graph, seed=0))


def small_cnn() -> Graph:
    """stem conv -> bn -> relu -> one residual block of stage ``stage1`` -> pool -> head."""
    block = [
        {"name": "conv1", "op": "conv2d", "inputs": ["input"], "out_channels": "$channels",
         "kernel_size": 3, "padding": 1},
        {"name": "bn1", "op": "batchnorm"},
        {"name": "act1", "op": "relu"},
        {"name": "conv2", "op": "conv2d", "out_channels": "$channels", "kernel_size": 3,
         "padding": 1},
        {"name": "sum", "op": "add", "inputs": ["conv2", "input"]},
        {"name": "out", "op": "relu"},
    ]  # fmt: skip
    spec = {
        "version": 1,
        "name": "small_cnn",
        "inputs": {"image": {"shape": ["batch", 2, 5, 5]}},
        "blocks": {"basic": {"nodes": block, "output": "out"}},
        "nodes": [
            {"name": "stem", "op": "conv2d", "out_channels": 4, "kernel_size": 3, "padding": 1},
            {"name": "stem_bn", "op": "batchnorm"},
            {"name": "stem_act", "op": "relu"},
            {"name": "stage1", "stage": "basic", "depth": 1, "with": {"channels": 4}},
            {
                "name": "down",
                "op": "conv2d",
                "out_channels": 6,
                "kernel_size": 3,
                "stride": 2,
                "padding": 1,
            },
            {"name": "pool", "op": "global_avgpool"},
            {"name": "head", "op": "linear", "out_features": 3},
        ],
        "outputs": {"logits": "head"},
    }
    return verify(randomize_norms(load_spec(spec), seed=5))


def small_llama() -> Graph:
    """The Llama-like spec (RMSNorm, grouped-query rotary attention, tied head)."""
    from tests.transformer_specs import llama_like

    return verify(randomize_norms(load_spec(llama_like()), seed=5))


def _mlp_probe() -> Probe:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(8, 6, generator=gen)
    return Probe(
        inputs={"x": x}, targets=torch.randint(0, 3, (8,), generator=gen), loss="cross_entropy"
    )


def small_gpt() -> Graph:
    """The GPT-2-like spec of the transformer growth tests, with random norms."""
    from tests.transformer_specs import gpt2_like

    return verify(randomize_norms(load_spec(gpt2_like()), seed=5))


PASS_CASES: dict[str, list[tuple[Callable[[], Graph], dict[str, Any]]]] = {
    "widen": [
        (small_mlp, {"node": "fc1", "width": 12, "init": "net2net"}),
        (small_gpt, {"node": "wte", "width": 32, "init": "net2net"}),
        (small_gpt, {"node": "wte", "width": 21, "init": "lemon"}),
        (small_mlp, {"node": "fc2", "width": 11, "init": "zero"}),
        (small_cnn, {"node": "stem", "width": 12, "init": "net2net"}),
    ],
    "insert_layer": [
        (small_mlp, {"after": "act1", "op": "linear"}),
        (small_mlp, {"after": "act1", "op": "linear", "activation": "relu"}),
        (small_cnn, {"after": "stem_act", "op": "conv2d"}),
    ],
    "insert_block": [
        (small_cnn, {"stage": "stage1", "init": "zero"}),
        (small_gpt, {"stage": "h", "init": "zero"}),
    ],
    "prune_connections": [
        (small_mlp, {"node": "fc2", "density": 0.4}),
        (small_cnn, {"node": "stem", "density": 0.5}),
    ],
    "grow_connections": [
        (
            lambda: PASSES["prune_connections"].run(small_mlp(), node="fc2", density=0.3).graph,
            {"node": "fc2", "fraction": 0.5, "probe": _mlp_probe()},
        )
    ],
    "prune": [
        (small_mlp, {"node": "fc1", "keep": 5}),
        (small_cnn, {"node": "stem", "keep": 0.5, "importance": "l2"}),
        (small_cnn, {"node": "down", "drop": [0, 4]}),
    ],
    "add_adapter": [
        (small_mlp, {"node": "fc2", "kind": "lora", "rank": 2}),
        (small_cnn, {"node": "down", "kind": "parallel", "rank": 2}),
    ],
    "fork_task": [
        (small_mlp, {"task": "t2", "base": "y", "new": ["head"], "adapt": ["fc2"]}),
        (small_cnn, {"task": "t2", "base": "logits", "adapt": ["down"], "head": 4}),
    ],
    "add_heads": [(small_gpt, {"node": "h.block0.attn", "heads": 3})],
    "prune_heads": [(small_gpt, {"node": "h.block0.attn", "keep": 1})],
    "grow_head_dim": [
        (small_gpt, {"node": "h.block1.attn", "head_dim": 11}),
        (small_llama, {"node": "layers.block0.attn", "head_dim": 8}),
    ],
    "grow_kv_heads": [(small_llama, {"node": "layers.block1.attn", "kv_heads": 4})],
    "grow_vocab": [(small_gpt, {"node": "wte", "size": 30})],
    "stack_blocks": [
        (small_gpt, {"stage": "h", "mode": "stack"}),
        (small_gpt, {"stage": "h", "start": 1, "mode": "interpolate"}),
    ],
}
"""Sensible arguments for every registered pass (extend when a pass is registered)."""


def test_every_registered_pass_has_cases() -> None:
    assert set(PASSES) <= set(PASS_CASES)


@pytest.mark.parametrize(
    ("name", "make", "kwargs"),
    [(name, make, kwargs) for name, cases in PASS_CASES.items() for make, kwargs in cases],
    ids=[f"{name}-{i}" for name, cases in PASS_CASES.items() for i in range(len(cases))],
)
def test_grown_graph_matches_torch(name: str, make: Callable[[], Graph], kwargs: dict) -> None:
    assert name in PASSES, f"pass {name!r} is not registered"
    graph = PASSES[name].run(make(), **kwargs).graph
    assert_exports(graph)
    for task in graph.outputs if len(graph.outputs) > 1 else ():
        assert_exports(graph, task=task)


@SETTINGS
@given(graph=graphgen.graphs(("net",)), data=st.data())
def test_random_pass_sequences_match_torch(graph: Graph, data: st.DataObject) -> None:
    """Networks of any op, grown by a random sequence of passes."""
    graph = grow_randomly(graph, data)
    assert_exports(graph)
    assert_exports(graph, task=data.draw(st.sampled_from(list(graph.outputs))))


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    derandomize=True,
)
@given(graph=graphgen.graphs(), data=st.data())
def test_shared_generator_grown_networks_match_torch(graph: Graph, data: st.DataObject) -> None:
    """Networks of every family (staged networks included, so insert_block runs too),
    grown by a random sequence of passes."""
    graph = grow_randomly(graph, data)
    assert_exports(graph)
    assert_exports(graph, task=data.draw(st.sampled_from(list(graph.outputs))))


# ---- example specs --------------------------------------------------------------------


def example_specs() -> list[Path]:
    return sorted(EXAMPLES.glob("*.yaml"))


def test_examples_exist() -> None:
    assert example_specs(), f"no example specs in {EXAMPLES}"


@pytest.mark.parametrize("path", example_specs(), ids=lambda p: p.stem)
def test_example_matches_torch(path: Path) -> None:
    graph = randomize_norms(load_spec(path), seed=7)
    assert_exports(graph)
    for task in graph.outputs if len(graph.outputs) > 1 else ():
        assert_exports(graph, task=task)
    if graph.grow:
        assert_exports(apply_plan(graph, list(graph.grow)))
