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
