"""Type inference against PyTorch itself: for random geometries the inferred type equals the
real output's shape and dtype, and a geometry PyTorch refuses is a ShapeError here (never a
torch error at lowering or run time)."""

from __future__ import annotations

import warnings
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from grow_ir.backends.torch import to_torch
from grow_ir.errors import GrowError, ShapeError
from grow_ir.ir import Graph, Node, TensorType, initialize

SETTINGS = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def infer(op: str, *types: TensorType, **attrs: Any) -> TensorType:
    """The inferred type of one ``op`` node reading ``types``; raises ShapeError."""
    inputs = {f"x{i}": t for i, t in enumerate(types)}
    return Graph(inputs, [Node("n", op, attrs, tuple(inputs))], {"y": "n"}).types["n"]


def torch_result(fn: Any, *args: Any, **kwargs: Any) -> torch.Tensor | None:
    """``fn(*args)``, or None where PyTorch refuses the arguments."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # 'same' padding of an even kernel copies
            return fn(*args, **kwargs)
    except (RuntimeError, ValueError, IndexError):
        return None


def ours(op: str, *types: TensorType, **attrs: Any) -> TensorType | None:
    """The inferred type, or None for a ShapeError (any other error fails the test)."""
    try:
        return infer(op, *types, **attrs)
    except ShapeError as exc:
        assert exc.node == "n" and exc.reason
        return None


def lowered(op: str, x: torch.Tensor, **attrs: Any) -> torch.Tensor:
    """The lowered module of one node applied to ``x``."""
    t = TensorType(tuple(x.shape))
    graph = initialize(Graph({"x": t}, [Node("n", op, attrs, ("x",))], {"y": "n"}), seed=0)
    return to_torch(graph)(x)


def same_or_symmetric_pair(draw: Any, values: st.SearchStrategy[int]) -> int | tuple[int, int]:
    return draw(st.one_of(values, st.tuples(values, values)))


# ---- convolutions -----------------------------------------------------------------------


@st.composite
def conv_cases(draw: Any, n: int) -> tuple[tuple[int, ...], dict[str, Any]]:
    groups = draw(st.sampled_from([1, 1, 2, 3]))
    cin = draw(st.integers(1, 3)) * groups + draw(st.sampled_from([0, 0, 0, 1]))
    cout = draw(st.integers(1, 3)) * groups + draw(st.sampled_from([0, 0, 0, 1]))
    sizes = tuple(draw(st.integers(1, 9)) for _ in range(n))
    pick = (lambda v: draw(v)) if n == 1 else (lambda v: same_or_symmetric_pair(draw, v))
    padding = draw(
        st.one_of(st.sampled_from(["same", "valid"]), st.integers(0, 3))
        if n == 1
        else st.one_of(
            st.sampled_from(["same", "valid"]),
            st.integers(0, 3),
            st.tuples(st.integers(0, 3), st.integers(0, 3)),
        )
    )
    attrs = {
        "out_channels": cout,
        "kernel_size": pick(st.integers(1, 5)),
        "stride": pick(st.integers(1, 3)),
        "padding": padding,
        "dilation": pick(st.integers(1, 3)),
        "groups": groups,
    }
    return (draw(st.integers(1, 2)), cin, *sizes), attrs


def even_same(attrs: dict[str, Any], n: int) -> bool:
    """'same' padding with an even effective kernel: PyTorch pads it asymmetrically, and
    the IR refuses it on purpose (one explicit padding per axis, as ONNX export needs)."""
    if attrs["padding"] != "same":
        return False
    k, d = attrs["kernel_size"], attrs["dilation"]
    ks = k if isinstance(k, tuple) else (k,) * n
    ds = d if isinstance(d, tuple) else (d,) * n
    return any(di * (ki - 1) % 2 for ki, di in zip(ks, ds))


@pytest.mark.parametrize("n", [1, 2])
@SETTINGS
@given(data=st.data())
def test_conv_type_inference_matches_torch(n: int, data: st.DataObject) -> None:
    shape, attrs = data.draw(conv_cases(n))
    x = torch.randn(shape)
    kernel = attrs["kernel_size"]
    kernel = kernel if isinstance(kernel, tuple) else (kernel,) * n
    cin, groups = shape[1], attrs["groups"]
    weight = torch.randn(attrs["out_channels"], max(cin // groups, 1), *kernel)
    fn = F.conv1d if n == 1 else F.conv2d
    real = torch_result(
        fn, x, weight, None, attrs["stride"], attrs["padding"], attrs["dilation"], groups
    )
    got = ours(f"conv{n}d", TensorType(shape), **attrs)
    if even_same(attrs, n) and real is not None:
        assert got is None
        return
    if real is None:
        assert got is None, f"PyTorch refuses {attrs} on {shape}, the IR infers {got}"
        return
    assert got == TensorType(tuple(real.shape)), attrs
    out = lowered(f"conv{n}d", x, **attrs)
    assert out.shape == real.shape


# ---- pooling ----------------------------------------------------------------------------


@st.composite
def pool_cases(draw: Any, maxpool: bool) -> tuple[tuple[int, ...], dict[str, Any]]:
    pair = lambda v: same_or_symmetric_pair(draw, v)
    attrs: dict[str, Any] = {
        "kernel_size": pair(st.integers(1, 5)),
        "stride": draw(
            st.one_of(st.none(), st.integers(1, 3), st.tuples(st.integers(1, 3), st.integers(1, 3)))
        ),
        "padding": pair(st.integers(0, 3)),
        "ceil_mode": draw(st.booleans()),
    }
    if maxpool:
        attrs["dilation"] = pair(st.integers(1, 3))
    else:
        attrs["count_include_pad"] = draw(st.booleans())
    return (1, 2, draw(st.integers(1, 10)), draw(st.integers(1, 10))), attrs


@pytest.mark.parametrize("op", ["maxpool2d", "avgpool2d"])
@SETTINGS
@given(data=st.data())
def test_pool_type_inference_matches_torch(op: str, data: st.DataObject) -> None:
    shape, attrs = data.draw(pool_cases(op == "maxpool2d"))
    x = torch.randn(shape)
    a = dict(attrs)
    if op == "maxpool2d":
        real = torch_result(
            F.max_pool2d,
            x,
            a["kernel_size"],
            a["stride"],
            a["padding"],
            a["dilation"],
            a["ceil_mode"],
        )
    else:
        real = torch_result(
            F.avg_pool2d,
            x,
            a["kernel_size"],
            a["stride"],
            a["padding"],
            a["ceil_mode"],
            a["count_include_pad"],
        )
    got = ours(op, TensorType(shape), **attrs)
    if real is None:
        assert got is None, f"PyTorch refuses {attrs} on {shape}, the IR infers {got}"
        return
    assert got == TensorType(tuple(real.shape)), attrs
    assert torch.equal(lowered(op, x, **attrs), real)


# ---- shape-only ops ---------------------------------------------------------------------


@SETTINGS
@given(
    shape=st.lists(st.integers(1, 4), min_size=1, max_size=5),
    start=st.integers(-6, 5),
    end=st.integers(-6, 5),
)
def test_flatten_type_inference_matches_torch(shape: list[int], start: int, end: int) -> None:
    real = torch_result(torch.flatten, torch.zeros(shape), start, end)
    got = ours("flatten", TensorType(tuple(shape)), start_dim=start, end_dim=end)
    if real is None:
        assert got is None
    else:
        assert got == TensorType(tuple(real.shape))


@SETTINGS
@given(
    shapes=st.lists(st.lists(st.integers(1, 3), min_size=2, max_size=3), min_size=2, max_size=3),
    dim=st.integers(-3, 2),
)
def test_concat_type_inference_matches_torch(shapes: list[list[int]], dim: int) -> None:
    real = torch_result(torch.cat, [torch.zeros(s) for s in shapes], dim=dim)
    got = ours("concat", *(TensorType(tuple(s)) for s in shapes), dim=dim)
    if real is None:
        assert got is None
    else:
        assert got == TensorType(tuple(real.shape))


@SETTINGS
@given(shape=st.lists(st.integers(1, 3), min_size=1, max_size=4), dim=st.integers(-5, 4))
def test_softmax_axis_checked_like_torch(shape: list[int], dim: int) -> None:
    real = torch_result(torch.softmax, torch.zeros(shape), dim)
    got = ours("softmax", TensorType(tuple(shape)), dim=dim)
    assert (got is None) == (real is None)


@pytest.mark.parametrize("rank", [1, 2, 3, 4])
def test_linear_keeps_leading_axes(rank: int) -> None:
    shape = (2, 3, 4, 5)[-rank:]
    got = infer("linear", TensorType(shape), out_features=7)
    real = F.linear(torch.zeros(shape), torch.zeros(7, shape[-1]))
    assert got == TensorType(tuple(real.shape))


def test_global_avgpool_keeps_batch_and_channels() -> None:
    assert infer("global_avgpool", TensorType(("batch", 3, "h", "w"))) == TensorType(("batch", 3))


# ---- symbolic dims and dtypes ------------------------------------------------------------


def test_symbolic_dims_flow_through_size_preserving_ops() -> None:
    x = TensorType(("batch", 3, "h", "w"))
    same = infer("conv2d", x, out_channels=4, kernel_size=3, padding=1)
    assert same == TensorType(("batch", 4, "h", "w"))
    assert infer("conv2d", x, out_channels=4, kernel_size=5, padding="same", dilation=2) == same
    assert infer(
        "conv1d", TensorType(("batch", 2, "len")), out_channels=3, kernel_size=1
    ).shape == (
        "batch",
        3,
        "len",
    )


@pytest.mark.parametrize(
    ("op", "attrs", "field"),
    [
        ("conv2d", {"out_channels": 4, "kernel_size": 3, "stride": 2, "padding": 1}, "inputs"),
        ("maxpool2d", {"kernel_size": 2}, "inputs"),
        ("flatten", {}, "start_dim"),
    ],
)
def test_symbolic_dims_that_would_change_are_shape_errors(op: str, attrs: dict, field: str) -> None:
    with pytest.raises(ShapeError) as err:
        infer(op, TensorType(("batch", 3, "h", "w")), **attrs)
    assert err.value.node == "n" and err.value.field == field


@pytest.mark.parametrize(
    ("op", "x", "attrs", "field"),
    [
        # entry 1 of the batch axis does not exist for a batch of one
        ("select", TensorType(("batch", 3)), {"dim": 0, "index": 1}, "index"),
        # torch.unflatten refuses empty sizes, even for an axis of size 1
        ("unflatten", TensorType(("batch", 1)), {"dim": 1, "sizes": []}, "sizes"),
        # a scalar has no batch axis to expand a parameter along
        ("parameter", TensorType(()), {"shape": [1, 2]}, "inputs"),
    ],
)
def test_shape_ops_refuse_what_torch_cannot_run(
    op: str, x: TensorType, attrs: dict, field: str
) -> None:
    """Cases the random-network generator found accepted by ``infer`` and refused by torch
    at run time."""
    with pytest.raises(ShapeError) as err:
        infer(op, x, **attrs)
    assert err.value.node == "n" and err.value.field == field
    assert infer("select", TensorType(("batch", 3)), dim=0, index=0) == TensorType((3,))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_float_dtypes_are_kept_and_match_the_lowered_module(dtype: str) -> None:
    t = TensorType((2, 6), dtype)
    nodes = [
        Node("fc", "linear", {"out_features": 4}, ("x",)),
        Node("ln", "layernorm", {}, ("fc",)),
        Node("act", "gelu", {}, ("ln",)),
    ]
    graph = initialize(Graph({"x": t}, nodes, {"y": "act"}), seed=0)
    assert graph.types["act"].dtype == dtype
    assert all(v.dtype == t.torch_dtype for v in graph.params.values())
    out = to_torch(graph)(torch.randn(2, 6).to(t.torch_dtype))
    assert out.dtype == t.torch_dtype


def test_embedding_gives_float32_from_int64() -> None:
    got = infer(
        "embedding", TensorType(("batch", "seq"), "int64"), num_embeddings=5, embedding_dim=3
    )
    assert got == TensorType(("batch", "seq", 3), "float32")


# ---- errors name the node and field ------------------------------------------------------


@pytest.mark.parametrize(
    ("op", "types", "attrs", "field"),
    [
        ("linear", [TensorType((2, 3), "int64")], {"out_features": 2}, "inputs"),
        ("conv2d", [TensorType((2, 3, 5))], {"out_channels": 2, "kernel_size": 3}, "inputs"),
        (
            "conv2d",
            [TensorType((1, 3, 5, 5))],
            {"out_channels": 2, "kernel_size": 3, "groups": 2},
            "groups",
        ),
        (
            "conv2d",
            [TensorType((1, 3, 5, 5))],
            {"out_channels": 2, "kernel_size": 7},
            "kernel_size",
        ),
        (
            "conv2d",
            [TensorType((1, 3, 5, 5))],
            {"out_channels": 2, "kernel_size": 3, "padding": "same", "stride": 2},
            "stride",
        ),
        (
            "conv2d",
            [TensorType((1, 3, 5, 5))],
            {"out_channels": 2, "kernel_size": 2, "padding": "same"},
            "kernel_size",
        ),
        ("conv1d", [TensorType((1, "c", 5))], {"out_channels": 2, "kernel_size": 3}, "inputs"),
        ("maxpool2d", [TensorType((1, 3, 5, 5))], {"kernel_size": 2, "padding": 2}, "padding"),
        ("avgpool2d", [TensorType((1, 3, 2, 2))], {"kernel_size": 3}, "kernel_size"),
        ("batchnorm", [TensorType((2, 3, 4, 5, 6))], {}, "inputs"),
        ("attention", [TensorType((2, 3, 5))], {"num_heads": 2}, "num_heads"),
        ("attention", [TensorType((2, 5))], {"num_heads": 1}, "inputs"),
        ("embedding", [TensorType((2, 3))], {"num_embeddings": 4, "embedding_dim": 2}, "inputs"),
        (
            "embedding",
            [TensorType((2,), "int64")],
            {"num_embeddings": 4, "embedding_dim": 2, "padding_idx": 4},
            "padding_idx",
        ),
        ("softmax", [TensorType((2, 3))], {"dim": 2}, "dim"),
        ("add", [TensorType((2, 3)), TensorType((2, 4))], {}, "inputs[1]"),
        ("mul", [TensorType((2, 3)), TensorType((2, 3), "float16")], {}, "inputs[1]"),
        ("concat", [TensorType((2, 3)), TensorType((3, 3))], {"dim": 1}, "inputs[1]"),
        ("concat", [TensorType((2, "n")), TensorType((2, "n"))], {"dim": 1}, "dim"),
        ("flatten", [TensorType((2, 3, 4))], {"start_dim": 2, "end_dim": 1}, "end_dim"),
        ("global_avgpool", [TensorType((2, 3))], {}, "inputs"),
        ("relu", [TensorType((2, 3), "int64")], {}, "inputs"),
    ],
)
def test_invalid_types_raise_shape_errors_at_the_node(
    op: str, types: list[TensorType], attrs: dict, field: str
) -> None:
    with pytest.raises(ShapeError) as err:
        infer(op, *types, **attrs)
    assert isinstance(err.value, GrowError)
    assert err.value.node == "n"
    assert err.value.field == field
    assert "node 'n'" in str(err.value)
