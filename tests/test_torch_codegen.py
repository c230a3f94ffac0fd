"""The chunk code writer writes fx's own code: for every chunk of a lowering, the source
and globals of ``torch_codegen.Writer`` equal those of fx's code generator for the same
nodes (examples, random graphs of every op, imported torchvision and Hugging Face
models), and a node the writer does not follow is left to fx."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings

import grow_ir as gi
from grow_ir.backends import torch_chunks
from grow_ir.backends.torch import _emit, to_torch
from grow_ir.backends.torch_chunks import Step
from grow_ir.backends.torch_codegen import Writer
from grow_ir.ir import Graph
from grow_ir.ir.graph import Node
from grow_ir.ir.types import TensorType
from grow_ir.spec import load_spec
from tests.graphgen import graphs
from tests.hf_models import gpt2, gpt2_graph, llama, llama_graph
from tests.torchvision_models import models

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "grow_ir" / "examples").glob("*.yaml"))


def assert_written_as_fx(graph: Graph) -> None:
    """Every chunk of ``graph``'s lowering: the writer's source and globals are fx's."""
    module = to_torch(graph)
    assert module.chunks
    for chunk in module.chunks.values():
        args = (chunk.steps, chunk.live_in, chunk.live_out, _emit, chunk.name)
        written = torch_chunks.chunk_source(*args)
        by_fx = torch_chunks.chunk_source(*args, by_fx=True)
        assert written[0] == by_fx[0], chunk.name
        assert written[1] == by_fx[1], chunk.name
        assert chunk.source == by_fx[0]


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_examples_are_written_as_fx_writes_them(path: Path) -> None:
    assert_written_as_fx(load_spec(path))


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(graphs())
def test_random_graphs_are_written_as_fx_writes_them(graph: Graph) -> None:
    assert_written_as_fx(graph)


@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v3_small", "efficientnet_b0"])
def test_torchvision_models_are_written_as_fx_writes_them(arch: str) -> None:
    model = getattr(models(), arch)(num_classes=10).eval()
    assert_written_as_fx(gi.from_torch(model, torch.randn(1, 3, 32, 32)))


@pytest.mark.parametrize("tied", [True, False])
def test_language_models_are_written_as_fx_writes_them(tied: bool) -> None:
    assert_written_as_fx(gpt2_graph(gpt2(tied=tied)))
    assert_written_as_fx(llama_graph(llama(tied=tied)))


def test_names_that_collide_are_renamed_as_fx_renames_them() -> None:
    """Values whose identifiers collide (``a.b`` and ``a_b``), or shadow a builtin or a
    global fx names (``input``, ``torch``, ``inf``)."""
    t = TensorType((2, 3))
    nodes = [
        Node("a.b", "relu", {}, ("x",)),
        Node("a_b", "relu", {}, ("a.b",)),
        Node("torch", "tanh", {}, ("a_b",)),
        Node("inf", "add", {}, ("torch", "a.b")),
        Node("input", "sigmoid", {}, ("inf",)),
    ]
    assert_written_as_fx(Graph({"x": t}, nodes, {"out": "input"}))


def test_an_argument_the_writer_does_not_follow_is_left_to_fx() -> None:
    """A constant fx writes in its own way (a device) makes the writer refuse, and the
    chunk gets fx's code."""

    def emit(graph: Any, env: dict[str, Any], scopes: dict[str, Any], step: Step) -> Any:
        x = env[step.node.inputs[0]]
        return graph.create_node(
            "call_function", torch.zeros_like, (x,), {"device": torch.device("cpu")}
        )

    node = Node("zeros", "relu", {}, ("x",))
    steps = (torch_chunks.step(node, "function"),)
    writer = Writer()
    x = writer.placeholder("x")
    writer.output(writer.create_node("call_function", torch.zeros_like, (x,), {"device": 0j}))
    with pytest.raises(NotImplementedError):
        writer.source("f")
    source, globals_ = torch_chunks.chunk_source(steps, ("x",), ("zeros",), emit, "f")
    assert (source, globals_) == torch_chunks.chunk_source(
        steps, ("x",), ("zeros",), emit, "f", by_fx=True
    )
    assert "device = device(type='cpu')" in source
