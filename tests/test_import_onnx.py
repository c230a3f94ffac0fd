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


def _gather_from_value(index: np.ndarray, axis: int) -> onnx.ModelProto:
    """``relu(x)`` for ``x[2, 6, 4]``, flattened to ``[48]`` when ``axis`` is None, then
    gathered at the constant ``index`` along ``axis``."""
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 6, 4])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)
    inits = [onnx.numpy_helper.from_array(index.astype(np.int64), "index")]
    nodes = [onnx.helper.make_node("Relu", ["x"], ["r"], name="act")]
    source = "r"
    if axis is None:
        inits.append(onnx.numpy_helper.from_array(np.array([-1], dtype=np.int64), "flat"))
        nodes.append(onnx.helper.make_node("Reshape", ["r", "flat"], ["f"], name="flatten"))
        source, axis = "f", 0
    nodes.append(onnx.helper.make_node("Gather", [source, "index"], ["y"], axis=axis, name="pick"))
    graph = onnx.helper.make_graph(nodes, "gather", [x], [y], inits)
    return onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 18)])


def test_gathers_of_several_constant_indices():
    """The whole axis in order is a reshape (torch.onnx.export's ``as_strided`` for a view:
    flatten to [-1], gather ``arange`` laid out in a shape: here back to the input, so no
    node at all); an evenly spaced run is a slice; the graphs match onnxruntime."""
    back = gi.from_onnx(_gather_from_value(np.arange(48).reshape(2, 6, 4), None))
    assert [n.op for n in back.nodes] == ["relu"]
    back = gi.from_onnx(_gather_from_value(np.arange(6).reshape(2, 3), 1))
    assert [n.op for n in back.nodes] == ["relu", "unflatten"]
    assert back.types[back.nodes[-1].name].shape == (2, 2, 3, 4)
    back = gi.from_onnx(_gather_from_value(np.array([1, 3, 5]), 1))
    assert [(n.op, n.attrs.model_dump()) for n in back.nodes][1:] == [
        ("slice", {"dim": 1, "start": 1, "end": 6, "step": 2})
    ]


def test_a_gather_of_scattered_indices_from_a_value_is_refused():
    with pytest.raises(ImportRefused) as info:
        gi.from_onnx(_gather_from_value(np.array([2, 0, 1]), 1))
    assert info.value.constructs == [
        "node 'pick' (Gather): Gather gathers indices [2, 0, 1] along axis 1 (grow-ir: one "
        "index, the whole axis in order, or an evenly spaced run)"
    ]


class PositionIds(torch.nn.Module):
    """Token plus learned position embeddings of ``arange(L)`` (GPT-2's position ids), a
    mean over the sequence, a head."""

    def __init__(self) -> None:
        super().__init__()
        self.tok = torch.nn.Embedding(50, 8)
        self.pos = torch.nn.Embedding(16, 8)
        self.fc = torch.nn.Linear(8, 3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(ids.shape[1], device=ids.device).unsqueeze(0)
        return self.fc((self.tok(ids) + self.pos(positions)).mean(1))


class ClassToken(torch.nn.Module):
    """A class token expanded to the batch before the token embeddings; a head on it."""

    def __init__(self) -> None:
        super().__init__()
        self.tok = torch.nn.Embedding(50, 8)
        self.cls = torch.nn.Parameter(torch.randn(1, 1, 8))
        self.fc = torch.nn.Linear(8, 3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = torch.cat([self.cls.expand(ids.shape[0], -1, -1), self.tok(ids)], 1)
        return self.fc(h[:, 0] + h[:, -1])


def _dynamic_onnx(module: torch.nn.Module, x: torch.Tensor, axis: int) -> onnx.ModelProto:
    """What ``torch.onnx.export`` writes for ``module`` with axis ``axis`` of its one
    input dynamic (``batch`` for axis 0, else ``seq``)."""
    import warnings

    dim = torch.export.Dim("batch" if axis == 0 else "seq", max=16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export = torch.onnx.export(
            module, (x,), dynamo=True, verbose=False, dynamic_shapes=({axis: dim},)
        )
    return export.model_proto


@pytest.mark.parametrize(
    ("make", "axis", "op", "other"),
    [(PositionIds, 1, "positions", (2, 11)), (ClassToken, 0, "parameter", (5, 6))],
    ids=["range", "expand"],
)
def test_range_and_expand_of_computed_shapes_import(make, axis, op, other):
    """torch.onnx.export with a dynamic axis writes ``arange(L)`` as Shape/Squeeze/Range
    (and Unsqueeze) and an expand to the batch as Shape/Concat/Expand: positions along
    that axis, a parameter taking the batch; right at another size; our own file of the
    graph comes back as the same graph."""
    module = make().eval()
    ids = torch.randint(0, 50, (2, 6))
    proto = _dynamic_onnx(module, ids, axis)
    assert {"Shape", "Range" if op == "positions" else "Expand"} <= {
        n.op_type for n in proto.graph.node
    }
    graph = gi.from_onnx(proto)  # checked against onnxruntime
    (node,) = [n for n in graph.nodes if n.op == op and (op != "parameter" or n.inputs)]
    assert node.inputs == ("ids",)
    if op == "positions":
        assert (node.attrs.dim, node.attrs.batch_axis) == (1, True)
    more = torch.randint(0, 50, other)
    for x in (ids, more):
        with torch.no_grad():
            got = gi.to_torch(graph).eval()(x)
        assert relative_error(got, outputs_of(module, x)[0]) <= 1e-5
    back = gi.from_onnx(gi.to_onnx(graph))
    assert [(n.op, n.attrs, n.inputs) for n in back.nodes] == [
        (n.op, n.attrs, n.inputs) for n in graph.nodes
    ]


def _shape_model(*nodes: onnx.NodeProto, inits: dict[str, np.ndarray]) -> onnx.ModelProto:
    """A model of ``nodes`` from ``x[batch, 4, 3]`` (a Relu gives ``r``) to ``y``."""
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["batch", 4, 3])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)
    tensors = [onnx.numpy_helper.from_array(v, k) for k, v in inits.items()]
    relu = onnx.helper.make_node("Relu", ["x"], ["r"], name="act")
    graph = onnx.helper.make_graph([relu, *nodes], "shapes", [x], [y], tensors)
    return onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 18)])


def _refusal(model: onnx.ModelProto) -> str:
    with pytest.raises(ImportRefused) as info:
        gi.from_onnx(model)
    (line,) = info.value.constructs
    return line


def test_range_and_expand_that_grow_ir_cannot_express_are_refused():
    make = onnx.helper.make_node
    one, two = np.array(1, dtype=np.int64), np.array(2, dtype=np.int64)
    length = [make("Shape", ["r"], ["s"], start=1, end=2), make("Squeeze", ["s"], ["L"])]
    counted = _shape_model(
        *length,
        make("Range", ["two", "L", "one"], ["y"], name="count"),
        inits={"two": two, "one": one},
    )
    assert _refusal(counted) == (
        "node 'count' (Range): Range counts from 2 by 1 (grow-ir: positions 0..L-1)"
    )
    grown = _shape_model(
        make("Expand", ["r", "size"], ["y"], name="grow"),
        inits={"size": np.array([2, 4, 3, 3], dtype=np.int64)},
    )
    assert _refusal(grown) == (
        "node 'grow' (Expand): Expand expands ['batch', 4, 3] to [2, 4, 3, 3] (grow-ir: a "
        "learned tensor [1, ...] expanded to the batch, or an expand that changes no size)"
    )
    summed = _shape_model(
        *length,
        make("Add", ["L", "one"], ["n"], name="more"),
        make("Unsqueeze", ["n", "zero"], ["n1"]),
        make("Expand", ["r", "n1"], ["y"]),
        inits={"one": one, "zero": np.array([0], dtype=np.int64)},
    )
    assert _refusal(summed) == (
        "node 'more' (Add): Add computes with a shape (grow-ir: shapes only size Expand, Range, "
        "Reshape, Resize)"
    )


class Resized(torch.nn.Module):
    """A conv, then ``F.interpolate`` to the size ``9 x 13``."""

    def __init__(self, mode: str) -> None:
        super().__init__()
        self.mode = mode
        self.conv = torch.nn.Conv2d(3, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.interpolate(self.conv(x), size=(9, 13), mode=self.mode)


class Unflattened(torch.nn.Module):
    """A linear, then ``nn.Unflatten`` of its features into ``2 x 4``."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(8, 8)
        self.split = torch.nn.Unflatten(-1, (2, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.split(self.fc(x))


class CeilPool(torch.nn.Module):
    """A conv, then ``AvgPool2d(3, 2, 1, ceil_mode=True, count_include_pad=False)``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 1)
        self.pool = torch.nn.AvgPool2d(3, 2, 1, ceil_mode=True, count_include_pad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.conv(x))


class Flattened(torch.nn.Module):
    """A conv, then ``torch.flatten(x, 1, 2)`` (channels with rows)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.conv(x), 1, 2)


@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic-batch"])
@pytest.mark.parametrize(
    ("make", "shape", "op", "attrs"),
    [
        (lambda: Resized("nearest"), (2, 3, 7, 6), "upsample", {"size": [9, 13]}),
        (
            lambda: Resized("bilinear"),
            (2, 3, 7, 6),
            "upsample",
            {"mode": "bilinear", "size": [9, 13]},
        ),
        (Unflattened, (2, 5, 8), "unflatten", {"dim": 2, "sizes": [2, 4]}),
        (
            CeilPool,
            (2, 3, 7, 6),
            "avgpool2d",
            {
                "kernel_size": 3,
                "stride": 2,
                "padding": 1,
                "ceil_mode": True,
                "count_include_pad": False,
            },
        ),
        (Flattened, (2, 3, 5, 6), "flatten", {"end_dim": 2}),
    ],
    ids=["interpolate-nearest", "interpolate-bilinear", "unflatten", "avgpool-ceil", "flatten"],
)
def test_torch_onnx_export_of_sizes_and_ceil_pools_imports_as_the_op(
    make, shape, op, attrs, dynamic
):
    """``F.interpolate(size=...)``, ``nn.Unflatten``, a ceil-mode average pool that does
    not count the padding and ``flatten(1, 2)``, exported with static shapes and with a
    dynamic batch (the resize's sizes then a ``Shape`` of the batch and channels
    concatenated with the size, the reshapes' a ``-1`` for the batch): each is one node
    of its op with the module's attributes, and the graph gives the module's outputs, at
    another batch size too when the batch is dynamic."""
    module = randomized(make())
    x = torch.randn(shape)
    proto = _dynamic_onnx(module, x, 0) if dynamic else torch_onnx(module, x)
    graph = gi.from_onnx(proto)  # checked against onnxruntime
    (node,) = [n for n in graph.nodes if n.op == op]
    assert node.attr_dict() == attrs
    assert len(graph.nodes) == 2  # the layer before it, and it
    for batch in (2, 5) if dynamic else (2,):
        x = torch.randn(batch, *shape[1:])
        with torch.no_grad():
            got = gi.to_torch(graph).eval()(x)
        assert relative_error(got, outputs_of(module, x)[0]) <= 1e-5


@pytest.mark.parametrize("make", [torch.nn.Identity, lambda: torch.nn.Dropout(0.3)])
def test_a_torch_onnx_export_whose_output_is_its_input_imports_as_identity(make):
    """``nn.Identity`` and ``nn.Dropout`` (eval) alone: the file's output is its input
    (through an ``Identity``); IR outputs name nodes, so it comes back as one
    ``identity`` node."""
    module = make().eval()
    x = torch.randn(2, 4)
    graph = gi.from_onnx(torch_onnx(module, x))
    assert [(n.op, n.inputs) for n in graph.nodes] == [("identity", tuple(graph.inputs))]
    assert list(graph.outputs.values()) == [graph.nodes[0].name]
    with torch.no_grad():
        assert torch.equal(gi.to_torch(graph)(x), x)


def _pool_model(
    pads: list[int],
    count_include_pad: int = 0,
    op: str = "AveragePool",
    padded: list[int] | None = None,
    fill: float = -np.inf,
) -> onnx.ModelProto:
    """``x[N, 2, 7, 6]`` pooled by 3 with stride 2 and ``pads``; with ``padded``, after a
    ``Pad`` of ``fill`` by those (begin, end) pads of the height and width."""
    make = onnx.helper.make_node
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["batch", 2, 7, 6])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)
    counted = {"count_include_pad": count_include_pad} if op == "AveragePool" else {}
    source = "p" if padded else "x"
    window = {"kernel_shape": [3, 3], "strides": [2, 2], "pads": pads, **counted}
    nodes = [make(op, [source], ["y"], name="pool", **window)]
    inits = []
    if padded:
        ends = np.array([0, 0, *padded[:2], 0, 0, *padded[2:]], dtype=np.int64)
        inits = [
            onnx.numpy_helper.from_array(ends, "ends"),
            onnx.numpy_helper.from_array(np.array(fill, dtype=np.float32), "fill"),
        ]
        nodes.insert(0, make("Pad", ["x", "ends", "fill"], ["p"], name="pad", mode="constant"))
    graph = onnx.helper.make_graph(nodes, "pool", [x], [y], inits)
    return onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 19)])


def test_asymmetric_pool_pads_are_ceil_mode_or_refused():
    """More padding at the end, not counted, giving PyTorch's ceil-mode size: ceil mode.
    Counted, more than ceil mode adds, or more at the start: refused, naming the node."""
    (node,) = gi.from_onnx(_pool_model([1, 1, 1, 2])).nodes
    assert (node.op, node.attrs.padding, node.attrs.ceil_mode) == ("avgpool2d", 1, True)
    assert not node.attrs.count_include_pad
    for pads, counted in (([1, 1, 1, 2], 1), ([0, 0, 2, 2], 0), ([1, 1, 0, 1], 0)):
        assert _refusal(_pool_model(pads, counted)) == (
            f"node 'pool' (AveragePool): AveragePool pads asymmetrically ({pads}) other than "
            "as PyTorch's ceil mode"
        )


@pytest.mark.parametrize(
    ("op", "pads", "padded", "fill", "want"),
    [
        ("MaxPool", [1, 1, 1, 1], [0, 0, 1, 1], -np.inf, {"padding": 1, "ceil_mode": True}),
        (
            "AveragePool",
            [0, 0, 0, 1],
            [1, 1, 1, 1],
            0.0,
            {"padding": 1, "ceil_mode": True},  # count_include_pad: its default, True
        ),
        ("AveragePool", [0, 0, 0, 0], [1, 1, 1, 1], 0.0, {"padding": 1}),
        ("MaxPool", [0, 0, 0, 0], [0, 0, 2, 2], -np.inf, None),  # more than ceil mode adds
        ("MaxPool", [0, 0, 0, 0], [1, 1, 1, 1], -np.inf, None),  # padded at the start
        ("AveragePool", [0, 0, 0, 0], [2, 2, 2, 2], 0.0, None),  # over half the kernel
        ("AveragePool", [0, 0, 0, 0], [0, 0, 1, 1], 0.0, None),  # at the end, counted
    ],
    ids=[
        "max-ceil",
        "avg-ceil-counted",
        "avg-counted",
        "max-more",
        "max-start",
        "avg-wide",
        "avg-end",
    ],
)
def test_a_pad_only_a_pool_reads_is_its_padding_where_pytorch_pools_so(
    op, pads, padded, fill, want
):
    """``to_onnx``'s ceil-mode pools: a max pool after a ``Pad`` of ``-inf`` at the end,
    an average counting the padding after a ``Pad`` of zeros on both sides (its own pads
    at the end, not counted): one pool node with PyTorch's attributes. Any other pad
    stays a ``pad`` node before the pool. Both compute the file (the import's check)."""
    graph = gi.from_onnx(_pool_model(pads, 0, op, padded, fill))
    pool = "maxpool2d" if op == "MaxPool" else "avgpool2d"
    if want is None:
        assert [n.op for n in graph.nodes] == ["pad", pool]
        return
    (node,) = graph.nodes
    assert node.op == pool
    assert node.attr_dict() == {"kernel_size": 3, "stride": 2, **want}


def test_a_reshape_to_a_computed_shape_that_moves_symbolic_axes_is_refused():
    make = onnx.helper.make_node
    moved = _shape_model(
        make("Shape", ["r"], ["tail"], start=2),
        make("Shape", ["r"], ["head"], end=2),
        make("Concat", ["tail", "head"], ["shape"], axis=0),
        make("Reshape", ["r", "shape"], ["y"], name="move"),
        inits={},
    )
    assert _refusal(moved) == (
        "node 'move' (Reshape): Reshape reshapes ['batch', 4, 3] to [3, 'batch', 4] (grow-ir: "
        "sizes known after axis 0)"
    )
