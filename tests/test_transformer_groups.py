"""Issue 11's acceptance on the transformers: torchvision's ViT (tests/test_import_vit.py's
small one) from its ``torch.onnx.export`` file, with its ``nn.MultiheadAttention`` found
as grow-ir's ``attention``."""

from __future__ import annotations

import torch

import grow_ir as gi
from tests.import_models import relative_error, torch_onnx
from tests.test_import_vit import MODEL, X
from tests.test_real_cnns import run

TOL = 1e-5


def test_vit_from_its_onnx_export_matches_the_module() -> None:
    graph = gi.from_onnx(torch_onnx(MODEL, X))  # checked against onnxruntime too
    ops = [n.op for n in graph.nodes]
    assert ops.count("attention") == 2 and "matmul" not in ops and "softmax" not in ops
    assert "encoder.layers.encoder_layer_0.self_attention" in graph.node_map
    # the export fixes the batch (the class token is expanded to 2 rows)
    other = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    for x in (X, other):
        with torch.no_grad():
            want = MODEL(x)
        assert relative_error(run(graph, x), want) <= TOL
