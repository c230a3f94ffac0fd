"""Multiply-accumulate (MAC) rules, the ``OpFacts.macs`` fact each op declares.

A rule takes the node's attributes, its input types and its output type, all with concrete
shapes, and returns the MACs of one call. Dense layers count one MAC per weight entry used
per output position (PyTorch's and torchinfo's convention); attention adds its two batched
products (QKᵀ and the weighted sum of V); element-wise ops, normalisations, pooling and
reshapes count none.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from grow_ir.ir.types import TensorType

MacsFn = Callable[[Any, Sequence[TensorType], TensorType], int]
"""``(attrs, input types, output type) -> MACs``, every shape concrete."""


def numel(t: TensorType) -> int:
    """The number of elements of a concrete type."""
    return math.prod(int(d) for d in t.shape)


def no_macs(attrs: Any, inputs: Sequence[TensorType], output: TensorType) -> int:
    """An op that multiplies no weights: element-wise, normalising, pooling, reshaping."""
    return 0


def linear_macs(attrs: Any, inputs: Sequence[TensorType], output: TensorType) -> int:
    """Every output element is a dot product over the input's last axis."""
    return numel(output) * int(inputs[0].shape[-1])


def conv_macs(attrs: Any, inputs: Sequence[TensorType], output: TensorType) -> int:
    """Every output element is a dot product over its group's input channels × kernel."""
    kernel = attrs.kernel_size
    taps = math.prod(kernel) if isinstance(kernel, tuple) else kernel ** (output.rank - 2)
    return numel(output) * (int(inputs[0].shape[1]) // attrs.groups) * taps


def attention_macs(attrs: Any, inputs: Sequence[TensorType], output: TensorType) -> int:
    """Q, K, V projections (N·L·E·(D + 2·Dkv), D = heads × head_dim, Dkv = kv heads ×
    head_dim), QKᵀ and the sum of V (2·N·L²·D: each query head reads its key/value head),
    and the output projection (N·L·D·E); rotary embedding and masks are element-wise."""
    n, length, embed = (int(d) for d in output.shape)
    hd = attrs.head_dim or embed // attrs.num_heads
    inner = attrs.num_heads * hd
    kv = (attrs.num_kv_heads or attrs.num_heads) * hd
    return n * (length * embed * (2 * inner + 2 * kv) + 2 * length * length * inner)
