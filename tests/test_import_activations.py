"""Importing the activations MobileNets and friends use: relu6, hardtanh, hardswish,
hardsigmoid, leaky_relu, elu, from torch and from torch.onnx.export files."""

from __future__ import annotations

import pytest
import torch
import transformers
from torch import nn

import grow_ir as gi
from grow_ir import passes
from grow_ir.backends.onnx_check import check_model, check_parity
from grow_ir.imports import ImportRefused
from tests.import_models import outputs_of, randomized, relative_error, torch_onnx


class Activations(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 6)
        self.six = nn.ReLU6()
        self.clamp = nn.Hardtanh(-2.0, 2.0)
        self.swish = nn.Hardswish()
        self.gate = nn.Hardsigmoid()
        self.leaky = nn.LeakyReLU(0.2)
        self.elu = nn.ELU(0.5)

    def forward(self, x):
        y = self.six(self.fc(x))
        return self.elu(self.leaky(self.gate(self.swish(self.clamp(y)))) + self.fc(y))


def test_every_activation_imports_under_its_module_name():
    module = randomized(Activations())
    x = torch.randn(3, 6) * 4
    graph = gi.from_torch(module, x)
    assert [(n.name, n.op) for n in graph.nodes] == [
        ("fc", "linear"),
        ("six", "relu6"),
        ("clamp", "hardtanh"),
        ("swish", "hardswish"),
        ("gate", "hardsigmoid"),
        ("leaky", "leaky_relu"),
        ("fc_1", "linear"),
        ("add", "add"),
        ("elu", "elu"),
    ]
    assert graph.node("clamp").attr_dict() == {"min_val": -2.0, "max_val": 2.0}
    assert graph.node("leaky").attr_dict() == {"negative_slope": 0.2}
    with torch.no_grad():
        got = gi.to_torch(graph).eval()(x)
    assert relative_error(got, outputs_of(module, x)[0]) <= 1e-5
    back = gi.from_onnx(torch_onnx(module, x))  # checked against onnxruntime
    assert {n.op for n in back.nodes} >= {"relu6", "hardtanh", "hardswish", "hardsigmoid"}


def test_a_clamp_grow_ir_has_no_op_for_is_refused():
    class Clamp(nn.Module):
        def forward(self, x):
            return nn.functional.hardtanh(x, 0.5, 2.0)

    with pytest.raises(ImportRefused, match=r"clamps to \[0.5, 2.0\]"):
        gi.from_torch(Clamp(), torch.randn(2, 3))


def hf_mobilenet_v2() -> nn.Module:
    config = transformers.MobileNetV2Config(
        depth_multiplier=0.35, image_size=32, num_labels=5, tf_padding=False
    )
    return transformers.MobileNetV2ForImageClassification(config)


def test_hugging_face_mobilenet_v2_imports_grows_and_exports():
    module = randomized(hf_mobilenet_v2())
    x = torch.randn(2, 3, 32, 32)
    graph = gi.from_torch(module, x)
    assert sum(n.op == "relu6" for n in graph.nodes) >= 10
    with torch.no_grad():
        got = gi.to_torch(graph).eval()(x)
    assert relative_error(got, outputs_of(module, x)[0]) <= 1e-5
    nodes = passes.widenable(graph)
    assert nodes
    wider = graph
    for n in nodes[:2]:
        step = {"pass": "widen", "node": n, "width": wider.types[n].shape[1] + 2}
        wider = gi.apply_plan(wider, [step], check=True)
    check_model(gi.to_onnx(wider))
    assert check_parity(wider) <= 1e-5
