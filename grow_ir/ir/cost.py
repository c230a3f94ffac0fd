"""Multiply-accumulates (MACs) of a graph's nodes, from their attributes and shapes.

One rule per op, like the backends' lowering tables (a test checks that every op has one):
a rule takes the node's attributes, its input types and its output type, all with concrete
shapes, and returns the MACs of one call. Dense layers count one MAC per weight entry used
per output position (PyTorch's and torchinfo's convention); attention adds its two batched
products (QKᵀ and the weighted sum of V); element-wise ops, normalisations, pooling and
reshapes count none.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from grow_ir.ir.graph import Graph, Node
from grow_ir.ir.types import TensorType

MacsFn = Callable[[Any, Sequence[TensorType], TensorType], int]
"""``(attrs, input types, output type) -> MACs``, every shape concrete."""


def no_macs(attrs: Any, inputs: Sequence[TensorType], output: TensorType) -> int:
    """An op that multiplies no weights: element-wise, normalising, pooling, reshaping."""
    return 0


def _numel(t: TensorType) -> int:
    return math.prod(int(d) for d in t.shape)


def linear_macs(attrs: Any, inputs: Sequence[TensorType], output: TensorType) -> int:
    """Every output element is a dot product over the input's last axis."""
    return _numel(output) * int(inputs[0].shape[-1])


def conv_macs(attrs: Any, inputs: Sequence[TensorType], output: TensorType) -> int:
    """Every output element is a dot product over its group's input channels × kernel."""
    kernel = attrs.kernel_size
    taps = math.prod(kernel) if isinstance(kernel, tuple) else kernel ** (output.rank - 2)
    return _numel(output) * (int(inputs[0].shape[1]) // attrs.groups) * taps


def attention_macs(attrs: Any, inputs: Sequence[TensorType], output: TensorType) -> int:
    """Q, K, V and output projections (4·N·L·E²), then QKᵀ and the sum of V (2·N·L²·E)."""
    n, length, embed = (int(d) for d in output.shape)
    return n * (4 * length * embed * embed + 2 * length * length * embed)


MACS: dict[str, MacsFn] = {
    "linear": linear_macs,
    "conv1d": conv_macs,
    "conv2d": conv_macs,
    "attention": attention_macs,
    "embedding": no_macs,  # a table lookup
    "relu": no_macs,
    "silu": no_macs,
    "tanh": no_macs,
    "sigmoid": no_macs,
    "gelu": no_macs,
    "hardtanh": no_macs,
    "relu6": no_macs,
    "hardswish": no_macs,
    "hardsigmoid": no_macs,
    "leaky_relu": no_macs,
    "elu": no_macs,
    "identity": no_macs,
    "dropout": no_macs,
    "softmax": no_macs,
    "log_softmax": no_macs,
    "maxpool2d": no_macs,
    "avgpool2d": no_macs,
    "global_avgpool": no_macs,
    "adaptive_avgpool2d": no_macs,
    "mix": no_macs,
    "batchnorm": no_macs,
    "layernorm": no_macs,
    "add": no_macs,
    "mul": no_macs,
    "concat": no_macs,
    "flatten": no_macs,
}
"""The MAC rule of every op (a fact each op could carry on its OpDef)."""


def concrete(t: TensorType, dims: Mapping[str, int]) -> TensorType:
    """``t`` with its symbolic dims sized by ``dims`` (1 for a dim not given)."""
    return TensorType(tuple(d if isinstance(d, int) else dims.get(d, 1) for d in t.shape), t.dtype)


def node_macs(graph: Graph, node: Node, dims: Mapping[str, int]) -> int:
    """The MACs of one call of ``node`` with symbolic dims sized by ``dims``."""
    inputs = [concrete(t, dims) for t in graph.input_types(node)]
    return MACS[node.op](node.attrs, inputs, concrete(graph.types[node.name], dims))


def graph_macs(graph: Graph, dims: Mapping[str, int]) -> dict[str, int]:
    """The MACs of every node (by name) of one forward pass."""
    return {n.name: node_macs(graph, n, dims) for n in graph.nodes}
