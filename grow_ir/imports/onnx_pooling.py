"""Adaptive average pooling as ONNX files write it, read back as one ``adaptive_avgpool2d``.

Where the output size divides the input, both exporters write an ``AveragePool`` (or a
``GlobalAveragePool``), which the importer's pooling rules read. Where it does not, they
write PyTorch's overlapping bins of unequal sizes as constant arithmetic:

- ``to_onnx``: a ``MatMul`` by a constant averaging matrix per axis that changes
  (``x @ A_w^T``, then ``A_h @ ...``): :func:`averaging_matmul`.
- ``torch.onnx.export`` (its decomposition of ``adaptive_avg_pool2d``): a ``Transpose`` to
  ``[H, W, N, C]``, a ``GatherND`` of constant window indices, a ``Transpose`` back, then a
  mean over the windows, or (bins of unequal sizes) ``Where`` masks, ``Gather``/``Add`` sums
  and a ``Div`` by constant counts: :func:`gathered_pooling`, which recognises the region by
  what it computes, not by its exact nodes (they change with the sizes).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import numpy_helper

from grow_ir.imports.torch_rules import KeptMean, Unsupported
from grow_ir.ir.ops.elementwise import averaging_matrix

if TYPE_CHECKING:
    from grow_ir.imports.onnx_import import _Context

TOLERANCE = 1e-6
"""Largest relative error between a recognised region and PyTorch's pooling."""

_REGION_OPS = frozenset(
    {
        "Transpose",
        "GatherND",
        "Where",
        "Gather",
        "Add",
        "Sub",
        "Mul",
        "Div",
        "ReduceMean",
        "ReduceSum",
        "Squeeze",
        "Unsqueeze",
    }
)
"""ONNX ops that torch.onnx.export's pooling region is made of (constant-coefficient, per
element), so that the region never grows into a layer after it."""


def _bins_of(matrix: np.ndarray | None) -> int | None:
    """The output size when ``matrix`` is an averaging matrix that changes its axis."""
    if matrix is None or matrix.ndim != 2 or matrix.shape[0] == matrix.shape[1]:
        return None
    out, size = matrix.shape
    return out if np.array_equal(matrix, averaging_matrix(size, out).astype(matrix.dtype)) else None


def averaging_matmul(ctx: _Context, node: onnx.NodeProto) -> bool:
    """Bind a ``MatMul`` of a rank-4 value by a constant averaging matrix (and the
    ``MatMul`` of the other axis after it, when there is one) as one adaptive_avgpool2d;
    False, binding nothing, when the node is not one."""
    a, b = node.input[0], node.input[1]
    value = b if a in ctx.consts else a
    if value in ctx.consts or value not in ctx.env or ctx.type(value).rank != 4:
        return False
    x = ctx.type(value)
    height, width = x.shape[2], x.shape[3]
    if value == a:  # x @ A_w^T pools the width
        ow = _bins_of(ctx.consts.get(b, np.empty(0)).T)
        if ow is None or ctx.consts[b].shape[0] != width:
            return False
        size, out = [height, ow], node.output[0]
        rows = ctx.only_consumer(out)
        if rows is not None and rows.op_type == "MatMul" and rows.input[1] == out:
            oh = _bins_of(ctx.consts.get(rows.input[0]))
            if oh is not None and ctx.consts[rows.input[0]].shape[1] == height:
                ctx.done.add(id(rows))
                size, out = [oh, ow], rows.output[0]
    else:  # A_h @ x pools the height
        oh = _bins_of(ctx.consts.get(a))
        if oh is None or ctx.consts[a].shape[1] != height:
            return False
        size, out = [oh, width], node.output[0]
    _bind_pool(ctx, ctx.value(value), size, out)
    return True


def gathered_pooling(ctx: _Context, node: onnx.NodeProto) -> None:
    """Bind torch.onnx.export's region for ``adaptive_avg_pool2d`` (from the ``GatherND``
    that starts it) as one adaptive_avgpool2d, after running the region and PyTorch's
    pooling on one random input and finding them within :data:`TOLERANCE`.

    Raises:
        Unsupported: the gather is not from an image transposed to ``[H, W, N, C]``, the
            region has several results, or it computes something else.
    """
    graph = ctx.model.graph
    source_node = next((n for n in graph.node if node.input[0] in n.output), None)
    perm = _perm(source_node)
    if source_node is None or perm != [2, 3, 0, 1] or node.input[1] not in ctx.consts:
        raise Unsupported(
            "gathers from a computed value (grow-ir: only the constant window indices "
            "torch.onnx.export writes for adaptive average pooling, from [H, W, N, C])"
        )
    source = source_node.input[0]
    region, values = [node], set(node.output)
    for other in list(graph.node)[list(graph.node).index(node) + 1 :]:
        ins = [i for i in other.input if i]
        if (
            other.op_type in _REGION_OPS
            and any(i in values for i in ins)
            and all(i in values or i in ctx.consts for i in ins)
        ):
            region.append(other)
            values.update(other.output)
    outputs = {o.name for o in graph.output}
    inside = {id(n) for n in region}
    exits = [
        v
        for n in region
        for v in n.output
        if v in outputs or any(id(c) not in inside for c in ctx.consumers.get(v, []))
    ]
    if len(exits) != 1:
        raise Unsupported(
            f"starts a region of constant arithmetic with {len(exits)} results (grow-ir: "
            "adaptive average pooling, one result)"
        )
    size = _pooled_size(ctx, source, [source_node, *region], exits[0])
    ctx.done.update(inside)
    _bind_pool(ctx, ctx.value(source), size, exits[0])


def _perm(node: onnx.NodeProto | None) -> list[int] | None:
    if node is None or node.op_type != "Transpose":
        return None
    perm = [a for a in node.attribute if a.name == "perm"]
    return list(perm[0].ints) if perm else None


def _pooled_size(ctx: _Context, source: str, nodes: list[onnx.NodeProto], result: str) -> list[int]:
    """``[oh, ow]`` when ``nodes`` compute ``adaptive_avg_pool2d(source, (oh, ow))`` at
    ``result`` (run with onnxruntime on one random input), else Unsupported."""
    import onnxruntime as ort

    t = ctx.type(source)
    if not all(isinstance(d, int) for d in t.shape[1:]):
        raise Unsupported(f"pools a value of type {t} (grow-ir: sizes known after axis 0)")
    shape = [d if isinstance(d, int) else 2 for d in t.shape]
    used = {i for n in nodes for i in n.input if i in ctx.consts}
    elem = onnx.helper.np_dtype_to_tensor_dtype(np.dtype(t.dtype))
    model = onnx.helper.make_model(
        onnx.helper.make_graph(
            nodes,
            "pooling",
            [onnx.helper.make_tensor_value_info(source, elem, shape)],
            [onnx.helper.make_tensor_value_info(result, elem, None)],
            [numpy_helper.from_array(np.asarray(ctx.consts[i]), i) for i in sorted(used)],
        ),
        opset_imports=list(ctx.model.opset_import),
        ir_version=ctx.model.ir_version,
    )
    x = np.random.default_rng(0).standard_normal(shape).astype(t.dtype)
    try:
        session = ort.InferenceSession(
            model.SerializeToString(), providers=["CPUExecutionProvider"]
        )
        (got,) = session.run(None, {source: x})
    except Exception as exc:  # onnxruntime's own errors: the region is not what we read
        raise Unsupported(f"starts a region onnxruntime cannot run alone ({exc})") from None
    if got.ndim != 4 or list(got.shape[:2]) != shape[:2]:
        raise Unsupported(f"starts a region computing {list(got.shape)} from {shape}")
    size = [int(d) for d in got.shape[2:]]
    want = F.adaptive_avg_pool2d(torch.from_numpy(x).double(), size).numpy()
    err = np.abs(got - want).max() / max(1.0, np.abs(want).max())
    if not err <= TOLERANCE:
        raise Unsupported(
            f"starts a region that is not adaptive average pooling to {size} (relative "
            f"error {err:.3g})"
        )
    return size


def _bind_pool(ctx: _Context, value: str, size: list[int], output: str) -> None:
    """Bind ``output`` to ``value`` pooled to ``size``: the value itself when the size
    is unchanged, a kept mean for 1x1, else an adaptive_avgpool2d node."""
    if size == list(ctx.builder.types[value].shape[2:]):
        ctx.env[output] = value
    elif size == [1, 1]:
        ctx.env[output] = KeptMean(value, ctx.hint(output, "mean"))
    else:
        attrs = {"output_size": size}  # a pair, as from_torch gives it
        hint = ctx.hint(output, "adaptive_avgpool2d")
        ctx.env[output] = ctx.builder.add("adaptive_avgpool2d", [value], hint, attrs)
