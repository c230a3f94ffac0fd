"""The ONNX emitter: the state of one export (nodes, initializers, value names).

Per-op rules (:mod:`grow_ir.backends.onnx_ops`) call :meth:`Emitter.add` to append nodes
and :meth:`Emitter.param` / :meth:`Emitter.const` for tensors. Names follow one scheme so
that a viewer shows the network the user wrote:

- a value computed by IR node ``n`` is named ``n``; a graph input keeps its name;
- a node producing the value of IR node ``n`` is named ``n``; the helper nodes of a
  multi-node lowering are named ``n/<what>`` (``attn/qkv``), and so are their values;
- a parameter's initializer is named exactly as the parameter (``stem.weight``); a value
  derived from a parameter alone is named ``<param>/<what>`` (``head.weight/T``) and is
  emitted once, however many nodes share the parameter.

IR names never contain ``/``, so helper names cannot collide with IR names.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from grow_ir.errors import GrowError
from grow_ir.ir.graph import Graph, Node
from grow_ir.ir.types import TensorType

ONNX_DTYPES: dict[str, int] = {
    "float32": TensorProto.FLOAT,
    "float16": TensorProto.FLOAT16,
    "int64": TensorProto.INT64,
}
"""IR dtypes that export, and their ONNX element types."""

NUMPY_DTYPES: dict[str, type[np.generic]] = {
    "float32": np.float32,
    "float16": np.float16,
    "int64": np.int64,
}


TORCH_TO_ONNX: dict[torch.dtype, int] = {
    torch.float32: TensorProto.FLOAT,
    torch.float16: TensorProto.FLOAT16,
    torch.int64: TensorProto.INT64,
}
"""Tensor dtypes that export, and their ONNX element types."""


def value_info(name: str, t: TensorType) -> onnx.ValueInfoProto:
    """The ONNX type of a value: symbolic dims become named dynamic dims."""
    return helper.make_tensor_value_info(name, ONNX_DTYPES[t.dtype], list(t.shape))


def tensor_proto(name: str, tensor: torch.Tensor) -> TensorProto:
    """An ONNX initializer holding a copy of ``tensor``'s values under ``name``
    (raw little-endian bytes, as ``numpy_helper.from_array`` writes them)."""
    proto = TensorProto(name=name, data_type=TORCH_TO_ONNX[tensor.dtype])
    proto.dims.extend(tensor.shape)
    array = tensor.detach().cpu().numpy()
    proto.raw_data = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
    return proto


class Emitter:
    """Collects the nodes and initializers of one exported graph.

    Attributes:
        graph: the IR graph being exported.
        opset: the default-domain opset the nodes must conform to.
        nodes: ONNX nodes in topological order.
        initializers: initializers by name (parameters and derived constants).
        value_info: declared types of inner values.
    """

    def __init__(self, graph: Graph, opset: int) -> None:
        self.graph = graph
        self.opset = opset
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: dict[str, TensorProto] = {}
        self.value_info: list[onnx.ValueInfoProto] = []
        self._cache: dict[tuple[str, ...], str] = {}

    def add(
        self,
        op_type: str,
        inputs: Sequence[str],
        output: str,
        *,
        name: str | None = None,
        **attrs: Any,
    ) -> str:
        """Append one node with a single output; return the output's name.

        The node is named ``name`` (default: the output's name). Optional inputs left out
        in the middle are passed as ``""``.
        """
        self.add_multi(op_type, inputs, [output], name=name or output, **attrs)
        return output

    def add_multi(
        self,
        op_type: str,
        inputs: Sequence[str],
        outputs: Sequence[str],
        *,
        name: str,
        **attrs: Any,
    ) -> list[str]:
        """Append one node with several outputs (Split); return their names."""
        self.nodes.append(
            helper.make_node(op_type, list(inputs), list(outputs), name=name, **attrs)
        )
        return list(outputs)

    def param(self, node: Node, local: str) -> str:
        """The initializer of ``node``'s parameter ``local`` (``weight``, ``out_proj.bias``).

        A node that shares another node's parameters gets that node's initializer: the
        tensor is stored once. A masked parameter (a buffer of the node says it masks
        ``local``: connection pruning) is stored with its mask applied, so the file holds
        the weights the layer computes with and no mask.
        """
        full = f"{node.param_prefix}.{local}"
        if full not in self.initializers:
            tensor = self.graph.params.get(full)
            for key, spec in self.graph.node_params(node).items():
                if spec.mask_of == local and tensor is not None:
                    tensor = tensor * self.graph.params[key]
            if tensor is None:
                raise GrowError(
                    "missing parameter",
                    node=node.name,
                    field=full,
                    expected="the graph's tensor for every parameter (initialise the graph)",
                    found="none",
                )
            self.initializers[full] = tensor_proto(full, tensor)
        return full

    def has_param(self, node: Node, local: str) -> bool:
        """True when ``node`` has the parameter ``local`` (e.g. a bias that may be off)."""
        return f"{node.param_prefix}.{local}" in self.graph.params

    def const(self, name: str, value: np.ndarray | Sequence[Any], dtype: str = "int64") -> str:
        """A constant initializer called ``name`` (shapes, axes, scales); return its name."""
        array = np.asarray(value, dtype=NUMPY_DTYPES[dtype])
        if name in self.initializers:
            raise GrowError(
                "two ONNX constants with one name (an emitter bug)",
                field=name,
                expected="unique constant names",
                found=repr(name),
            )
        self.initializers[name] = numpy_helper.from_array(array, name)
        return name

    def once(self, key: tuple[str, ...], build: Callable[[], str]) -> str:
        """Build a value derived from parameters once and reuse it (shared layers)."""
        if key not in self._cache:
            self._cache[key] = build()
        return self._cache[key]

    def transposed(self, weight: str) -> str:
        """``weight`` transposed (``[out, in]`` to ``[in, out]``), emitted once.

        onnxruntime folds it into a constant when the session is created, so the file keeps
        the parameter under its own name at no cost per inference.
        """
        return self.once(
            ("T", weight),
            lambda: self.add("Transpose", [weight], f"{weight}/T", perm=[1, 0]),
        )

    def declare(self, value: str, t: TensorType) -> None:
        """Record the type of an inner value (``value_info``): viewers show it, and
        onnxruntime's fusions need shapes it cannot infer (past a dynamic mask)."""
        self.value_info.append(value_info(value, t))

    def dtype(self, value: str) -> str:
        """The IR dtype of an IR value (graph input or node)."""
        return self.graph.types[value].dtype
