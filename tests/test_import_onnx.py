"""from_onnx: files that to_onnx and torch.onnx.export write, back into verified graphs."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import grow_ir as gi
from grow_ir import passes
from grow_ir.imports import ImportRefused
from grow_ir.probes import randomize_norms
from grow_ir.spec import example_path
from tests.import_models import (
    SmallCNN,
    hf_resnet,
    outputs_of,
    randomized,
    relative_error,
    torch_onnx,
)


@pytest.mark.parametrize("example", ["mlp", "resnet", "concat", "multitask", "autogrow_digits"])
def test_our_own_export_comes_back_as_the_same_graph(example):
    graph = randomize_norms(gi.load_spec(example_path(example)))
    back = gi.from_onnx(gi.to_onnx(graph))
    assert [(n.name, n.op, n.inputs) for n in back.nodes] == [
        (n.name, n.op, n.inputs) for n in graph.nodes
    ]
    assert dict(back.inputs) == dict(graph.inputs)
    assert set(back.params) == set(graph.params)
    for key, value in graph.params.items():
        if not key.endswith("num_batches_tracked"):  # ONNX has no counter; import gives 0
            assert torch.equal(back.params[key], value), key
    assert back.outputs.keys() == graph.outputs.keys()


@pytest.mark.parametrize(
    "make", [SmallCNN, hf_resnet, lambda: hf_resnet("bottleneck")], ids=["cnn", "resnet", "bneck"]
)
def test_torch_onnx_export_files_import_and_match_the_module(make):
    module = randomized(make())
    x = torch.randn(2, 3, 32, 32) if make is not SmallCNN else torch.randn(2, 3, 8, 8)
    proto = torch_onnx(module, x)
    graph = gi.from_onnx(proto)  # checked against onnxruntime on random inputs
    with torch.no_grad():
        got = gi.to_torch(graph).eval()(x)
    got = next(iter(got.values())) if isinstance(got, dict) else got
    assert relative_error(got, outputs_of(module, x)[0]) <= 1e-5
    layers = {n.name for n in graph.nodes if n.op in ("conv2d", "linear")}
    expected = {n for n, m in module.named_modules() if isinstance(m, torch.nn.Linear)}
    assert expected <= layers  # names come from the file's initializers: the module's


def test_a_file_on_disk_and_its_errors(tmp_path):
    graph = gi.load_spec(example_path("mlp"))
    path = tmp_path / "mlp.onnx"
    gi.to_onnx(graph, path)
    assert [n.name for n in gi.from_onnx(path).nodes] == [n.name for n in graph.nodes]
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a protobuf")
    with pytest.raises(gi.GrowError, match=r"bad\.onnx: cannot read the ONNX file"):
        gi.from_onnx(bad)


def test_unsupported_nodes_are_refused_one_line_each():
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["batch", 4])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["batch", 4])
    nodes = [
        onnx.helper.make_node("Relu", ["x"], ["r"], name="act"),
        onnx.helper.make_node("Cos", ["r"], ["c"], name="wave"),
        onnx.helper.make_node("Neg", ["c"], ["n"], name="flip"),
        onnx.helper.make_node("Add", ["n", "r"], ["y"], name="sum"),
    ]
    model = onnx.helper.make_model(onnx.helper.make_graph(nodes, "odd", [x], [y]))
    with pytest.raises(ImportRefused) as info:
        gi.from_onnx(model)
    assert info.value.constructs == [
        "node 'wave' (Cos): ai.onnx.Cos has no grow-ir op",
        "node 'flip' (Neg): ai.onnx.Neg has no grow-ir op",
    ]


def test_the_import_check_compares_with_onnxruntime():
    graph = gi.load_spec(example_path("resnet"))
    proto = gi.to_onnx(graph)
    back = gi.from_onnx(proto)
    inputs = {k: v.numpy() for k, v in gi.probes.random_inputs(back).items()}
    want = ort.InferenceSession(proto.SerializeToString()).run(None, inputs)[0]
    with torch.no_grad():
        got = gi.to_torch(back).eval()(**{k: torch.from_numpy(v) for k, v in inputs.items()})
    assert np.abs(got.numpy() - want).max() <= 1e-5 * max(1.0, np.abs(want).max())


def test_squeeze_excitation_pad_and_log_softmax_import_from_our_file():
    # torch.onnx.export folds the pad into the Conv's asymmetric pads: not imported yet
    from tests.import_models import SqueezeExcite, randomized

    module = randomized(SqueezeExcite())
    x = torch.randn(2, 3, 8, 8)
    graph = gi.from_torch(module, x)
    ops = {"pad", "mul", "log_softmax"}
    for model in (gi.to_onnx(graph),):
        back = gi.from_onnx(model)  # checked against onnxruntime
        assert ops <= {n.op for n in back.nodes}
        assert "conv" in passes.widenable(back)


def test_shape_ops_of_our_own_files_come_back():
    from tests.test_onnx_ops import single_op_graph

    cases = [
        ("permute", {"dims": [0, 2, 1]}),
        ("sum", {"dim": [1], "keepdim": True}),
        ("mean", {"dim": [1]}),
        ("unsqueeze", {"dim": 1}),
        ("slice", {"dim": 2, "start": 1, "end": 7, "step": 2}),
        ("sub", {}),
        ("div", {}),
        ("log_softmax", {"dim": 1}),
    ]
    for op, attrs in cases:
        arity = 2 if op in ("sub", "div") else 1
        graph = single_op_graph({"x": gi.TensorType(("batch", 4, 8))}, op, attrs, arity)
        back = gi.from_onnx(gi.to_onnx(graph))
        assert op in {n.op for n in back.nodes}, op


class AdaptivePool(torch.nn.Module):
    """A conv, adaptive average pooling to ``size`` and a linear head on the flat map."""

    def __init__(self, size: int | tuple[int, int]) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.pool = torch.nn.AdaptiveAvgPool2d(size)
        self.fc = torch.nn.LazyLinear(5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.conv(x)), 1))


@pytest.mark.parametrize(
    ("side", "size"),
    [(1, 7), (2, 7), (10, 7), (8, (3, 4)), (5, (5, 2))],
    ids=["1to7", "2to7", "10to7", "8to3x4", "5to5x2"],
)
def test_torch_onnx_export_of_adaptive_pooling_imports_as_one_pool(side, size):
    """torch.onnx.export writes pooling that does not divide as Transpose/GatherND and a
    mean, or masked sums and a Div (bins of unequal sizes): one adaptive_avgpool2d."""
    module = AdaptivePool(size)
    x = torch.randn(2, 3, side, side)
    module(x)  # sizes the lazy head
    module = randomized(module)
    graph = gi.from_onnx(torch_onnx(module, x))  # checked against onnxruntime
    assert [n.op for n in graph.nodes] == ["conv2d", "adaptive_avgpool2d", "flatten", "linear"]
    want = (size, size) if isinstance(size, int) else size
    assert graph.nodes[1].attrs.output_size == want
    assert graph.types[graph.nodes[1].name].shape[2:] == want
    with torch.no_grad():
        got = gi.to_torch(graph).eval()(x)
    assert relative_error(got, outputs_of(module, x)[0]) <= 1e-5
    assert "conv" in passes.widenable(graph)


def _gather_model(transposed: bool) -> onnx.ModelProto:
    """``x[N, 3, 4, 4]`` gathered at spatial (0, 0) twice by GatherND, from ``x``
    transposed to ``[H, W, N, C]`` (and back) or from ``x`` itself."""
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 3, 4, 4])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)
    index = onnx.numpy_helper.from_array(np.zeros((2, 2, 2), dtype=np.int64), "index")
    nodes = [onnx.helper.make_node("Relu", ["x"], ["r"], name="act")]
    if transposed:
        nodes.append(onnx.helper.make_node("Transpose", ["r"], ["t"], perm=[2, 3, 0, 1]))
    nodes += [
        onnx.helper.make_node(
            "GatherND", ["t" if transposed else "r", "index"], ["g"], name="pick"
        ),
        onnx.helper.make_node("Transpose", ["g"], ["y"], perm=[2, 3, 0, 1]),
    ]
    graph = onnx.helper.make_graph(nodes, "gather", [x], [y], [index])
    return onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 18)])


def test_a_gather_nd_that_is_not_adaptive_pooling_is_refused():
    with pytest.raises(ImportRefused) as info:
        gi.from_onnx(_gather_model(transposed=False))
    (line,) = info.value.constructs
    assert line.startswith("node 'pick' (GatherND): GatherND gathers from a computed value")
    with pytest.raises(ImportRefused) as info:
        gi.from_onnx(_gather_model(transposed=True))
    (line,) = info.value.constructs
    assert line.startswith(
        "node 'pick' (GatherND): GatherND starts a region that is not adaptive average "
        "pooling to [2, 2] (relative error"
    )
