"""torchvision's VisionTransformer (small config, random init, loaded without torchvision's
C extension: tests/torchvision_models.py) imported with ``from_torch``: outputs equal the
module's, ONNX full check and parity, and the transformer growth passes exact on it
(class token and positional table grow with the model width)."""

from __future__ import annotations

import pytest
import torch

import grow_ir as gi
from grow_ir.backends.onnx import to_onnx
from grow_ir.backends.onnx_check import check_model, check_parity
from grow_ir.backends.torch import to_torch
from grow_ir.ir.graph import Graph
from tests.test_transformer_growth import run
from tests.torchvision_models import models

TOL = 1e-5


def vit() -> torch.nn.Module:
    """A 2-layer ViT on 32×32 images, every norm, bias and the class token random."""
    model = models().VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64
    )
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "ln" in name or "class_token" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3 + name.endswith("weight"))
    return model.eval()


MODEL = vit()
X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
GRAPH = gi.from_torch(MODEL, X)


def test_vit_imports_and_computes_what_it_computes() -> None:
    ops = [n.op for n in GRAPH.nodes]
    assert ops.count("attention") == 2 and "parameter" in ops and "select" in ops
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = MODEL(x)
        got = to_torch(GRAPH).eval()(x)
    assert (got - want).abs().max() <= TOL * max(1.0, want.abs().max().item())
    assert GRAPH.params["class_token.weight"].abs().sum() > 0  # randomised, not zeros


def test_vit_imports_from_a_batch_of_one() -> None:
    """With one example image the class token's expand to the batch changes no size: it
    must still follow the graph's symbolic batch (and a parameter read unchanged is a
    value)."""
    graph = gi.from_torch(MODEL, X[:1])
    assert [(n.name, n.op) for n in graph.nodes] == [(n.name, n.op) for n in GRAPH.nodes]
    assert graph.inputs == GRAPH.inputs
    for batch in (1, 3):
        x = torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(batch))
        with torch.no_grad():
            want = MODEL(x)
            got = to_torch(graph).eval()(x)
        assert (got - want).abs().max() <= TOL * max(1.0, want.abs().max().item())
    assert check_parity(graph, to_onnx(graph)) <= TOL


def test_vit_exports_to_onnx_with_parity() -> None:
    model = to_onnx(GRAPH)
    check_model(model)
    assert check_parity(GRAPH, model) <= TOL


def _node(op: str, i: int = 0) -> str:
    return [n.name for n in GRAPH.nodes if n.op == op][i]


GROWTH = [
    ("widen", lambda: {"node": _node("conv2d"), "width": 64, "init": "net2net"}),
    ("widen", lambda: {"node": _node("conv2d"), "width": 45, "init": "lemon"}),
    ("widen", lambda: {"node": _node("linear", 0), "width": 100, "init": "lemon"}),
    ("add_heads", lambda: {"node": _node("attention", 1), "heads": 4}),
    ("grow_head_dim", lambda: {"node": _node("attention", 0), "head_dim": 24}),
]


@pytest.mark.parametrize(
    ("name", "kwargs"), GROWTH, ids=[f"{n}-{i}" for i, (n, _) in enumerate(GROWTH)]
)
def test_growth_on_the_imported_vit_is_exact(name: str, kwargs: object) -> None:
    result = run(name, GRAPH, **kwargs())  # type: ignore[operator]
    assert result.preserved
    grown: Graph = result.graph
    model = to_onnx(grown)
    check_model(model)
    assert check_parity(grown, model) <= TOL
