"""Importing transposed convolutions and upsampling: every attribute variant from torch
and from torch.onnx.export files, and the Resize/ConvTranspose forms that are refused."""

from __future__ import annotations

import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

import grow_ir as gi
from grow_ir.imports.builder import ImportRefused
from tests.import_models import randomized, relative_error, torch_onnx


class Decoder(nn.Module):
    """Every conv_transpose2d and upsample attribute a decoder uses, in one chain."""

    def __init__(self) -> None:
        super().__init__()
        self.up0 = nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1)
        self.up1 = nn.ConvTranspose2d(6, 4, (3, 2), stride=(1, 2), groups=2, bias=False)
        self.near = nn.Upsample(scale_factor=2)
        self.near_size = nn.Upsample(size=(20, 30))
        self.bilinear = nn.Upsample(scale_factor=(1.5, 0.5), mode="bilinear")
        self.corners = nn.Upsample(size=9, mode="bilinear", align_corners=True)
        self.up2 = nn.ConvTranspose2d(4, 3, 2, dilation=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.near(self.up1(self.up0(x)))
        y = self.corners(self.bilinear(self.near_size(y)))
        return self.up2(y)


def test_transposed_convs_and_upsampling_import_from_torch_and_onnx() -> None:
    module = randomized(Decoder())
    x = torch.randn(2, 4, 5, 6)
    with torch.no_grad():
        want = module(x)
    graph = gi.from_torch(module, x)
    ops = [n.op for n in graph.nodes]
    assert ops.count("conv_transpose2d") == 3 and ops.count("upsample") == 4
    assert graph.node("up1").attrs.groups == 2
    assert graph.node("up0").attrs.output_padding == 1
    assert graph.node("corners").attrs.align_corners is True
    for key, value in module.state_dict().items():
        assert torch.equal(graph.params[key], value), key
    back = gi.from_onnx(torch_onnx(module, x))  # checked against onnxruntime too
    assert [n.op for n in back.nodes] == ops
    with torch.no_grad():
        got = gi.to_torch(back).eval()(x)
    assert relative_error(got, want) <= 1e-5
    # a grouped transposed conv reads and makes its channels in groups (its weight is
    # [in, out / groups, ...]): they grow exactly, by a multiple of the groups
    for node, width in (("up0", 8), ("up1", 6)):
        wider = gi.passes.widen.run(graph, node=node, width=width)
        assert wider.preserved and wider.graph.node(node).attrs.out_channels == width
        with torch.no_grad():
            got = gi.to_torch(wider.graph).eval()(x)
        assert relative_error(got, want) <= 1e-5, node
    with pytest.raises(gi.GrowError, match="6 plus a multiple of 2"):
        gi.passes.widen(graph, node="up0", width=7)


def _resize_model(**attrs: object) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 3, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    scales = attrs.pop("scales", [1.0, 1.0, 2.0, 2.0])
    init = numpy_helper.from_array(torch.tensor(scales).numpy(), "scales")
    node = helper.make_node("Resize", ["x", "", "scales"], ["y"], name="grow", **attrs)
    graph = helper.make_graph([node], "resize", [x], [y], [init])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize(
    ("attrs", "match"),
    [
        ({"mode": "cubic"}, r"node 'grow' \(Resize\): Resize resizes with mode 'cubic'"),
        (
            {"mode": "nearest", "coordinate_transformation_mode": "asymmetric"},
            r"nearest_mode 'round_prefer_floor' \(grow-ir: PyTorch's nearest",
        ),
        (
            {"mode": "linear", "coordinate_transformation_mode": "half_pixel", "antialias": 1},
            "resizes with antialias or exclude_outside",
        ),
        (
            {
                "mode": "nearest",
                "coordinate_transformation_mode": "asymmetric",
                "nearest_mode": "floor",
                "scales": [1.0, 2.0, 2.0, 2.0],
            },
            r"resizes float32\[1, 2, 3, 3\] by \[1.0, 2.0, 2.0, 2.0\] \(grow-ir: the height",
        ),
    ],
    ids=["cubic", "round", "antialias", "channels"],
)
def test_resize_forms_without_a_pytorch_upsample_are_refused(attrs: dict, match: str) -> None:
    with pytest.raises(ImportRefused, match=match):
        gi.from_onnx(_resize_model(**attrs))


def test_conv_transpose_sized_by_output_shape_is_refused() -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 3, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    w = numpy_helper.from_array(torch.randn(2, 3, 2, 2).numpy(), "up.weight")
    node = helper.make_node(
        "ConvTranspose", ["x", "up.weight"], ["y"], name="up", strides=[2, 2], output_shape=[7, 7]
    )
    model = helper.make_model(
        helper.make_graph([node], "ct", [x], [y], [w]),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    with pytest.raises(ImportRefused, match="sizes its output with auto_pad or output_shape"):
        gi.from_onnx(model)
