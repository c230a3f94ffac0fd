"""The ONNX lowering table: one emission rule per IR op, keyed by op name.

A rule ``rule(e, node, xs, out)`` appends the ONNX nodes computing IR node ``node`` from
the ONNX values ``xs`` (its inputs, in order) into the value ``out``. Rules emit the
graphs onnxruntime runs fastest: Gemm for a linear layer on 2-D inputs (and, with a bias,
on the rows of a higher-rank input of up to :data:`GEMM_MAX_OUT_FEATURES` outputs), Conv
with its bias, BatchNormalization in inference mode, LayerNormalization, Gelu where the
opset has it, and attention as MatMul/Softmax with the query scale folded into the
projection weights and a head layout whose transposes onnxruntime does fast.
Values derived from parameters alone (transposes, scaled weights) are ONNX nodes on the
initializers, which onnxruntime folds into constants when it loads the model, so the file
keeps every parameter under its own name, stored once.

Timings quoted below are onnxruntime 1.32 on one CPU thread (float32).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from onnx import TensorProto, numpy_helper

from grow_ir.backends.onnx_emit import ONNX_DTYPES, Emitter
from grow_ir.backends.torch_modules import rotary_tables
from grow_ir.ir.graph import Node
from grow_ir.ir.ops.attention import head_dim as attention_head_dim
from grow_ir.ir.ops.attention import kv_heads as attention_kv_heads
from grow_ir.ir.ops.attention import rotary_dim as attention_rotary_dim
from grow_ir.ir.ops.dense import conv_geometry, spatial
from grow_ir.ir.ops.elementwise import averaging_matrix, pool_geometry
from grow_ir.ir.ops.shape import pad_pairs, permutation
from grow_ir.ir.ops.spatial import conv_transpose_geometry, upsample_sizes
from grow_ir.ir.types import DTYPES

Rule = Callable[[Emitter, Node, list[str], str], None]

GELU_OPSET = 20
"""The first opset with a Gelu op (exact and tanh forms); earlier opsets get the formula."""

REDUCE_AXES_INPUT_OPSET = 18
"""From this opset on, ReduceMean takes its axes as an input instead of an attribute."""

GEMM_MAX_OUT_FEATURES = 256
"""A biased product on a rank >= 3 input with at most this many outputs is one Gemm on the
input's rows ``[prod(leading dims), in]``, reshaped back; wider ones are MatMul + Add.

onnxruntime adds a bias with one short broadcast call per row, slow for narrow rows (a
16 -> 48 projection of 1,024 rows: 18 µs as reshapes + Gemm, 24 µs as MatMul + Add, run
overhead included), and a MatMul + Add followed by Gelu becomes its BiasGelu, slower
still (16 -> 32 and Gelu: 26 µs against 50 µs). Its Gemm instead writes the bias into
the output and accumulates into it, a second pass that costs more than the Add once the
output outgrows the cache (256 -> 768 on 1,024 rows: +7%; 64 -> 512 on 4,096 rows: +29%).
With up to 256 outputs the Gemm was never the slower in our measurements (1,024 and 4,096
rows, 64 to 1,024 inputs). onnxruntime does this rewrite itself only for static shapes."""

TRANSPOSED_HEADS_MAX_DIM = 8
"""Attention heads of at most this size are laid out ``[N, heads, head_dim, L]``.

The usual ``[N, L, heads, head_dim] -> [N, heads, L, head_dim]`` transposes copy blocks of
head_dim elements one by one, slow for small heads (about 13 µs for [32, 32, 2, 8]
float32, where a transpose that moves single elements, which onnxruntime does with a 2-D
transpose kernel, takes well under 1 µs). In the transposed layout every transpose moves
single elements, and the transposed operands of the two products become MatMul flags
(FusedMatMul); a whole attention layer with heads of 8 ran 6-37% faster (E=16 to 256,
L=32), though 3% slower at E=256, L=128. With heads of 16 the two layouts trade places
with the sequence length (6% either way at E=256), and with heads of 64 the usual layout
is as fast or faster (by up to 4%)."""


def _sub(node: Node, what: str) -> str:
    """The name of a helper node/value of a multi-node lowering: ``node/what``."""
    return f"{node.name}/{what}"


def _scalar(e: Emitter, value: float, dtype: str) -> str:
    """A scalar constant of ``dtype``, shared by the whole graph (``const/float32/0.5``:
    two slashes, so no helper name ``node/what`` can take it)."""
    return e.once(
        ("scalar", dtype, repr(value)), lambda: e.const(f"const/{dtype}/{value!r}", value, dtype)
    )


# ---- dense ----------------------------------------------------------------------------


def _linear(e: Emitter, n: Node, xs: list[str], out: str) -> None:
    x = e.graph.types[n.inputs[0]]
    in_features = x.shape[-1]
    assert isinstance(in_features, int)
    weight = e.param(n, "weight")
    bias = e.param(n, "bias") if n.attrs.bias else None
    features = (in_features, n.attrs.out_features)
    _dense(e, n, xs[0], x.rank, features, weight, bias, out, name=n.name)


def _dense(
    e: Emitter,
    n: Node,
    x: str,
    rank: int,
    features: tuple[int, int],
    weight: str,
    bias: str | None,
    out: str,
    *,
    name: str | None = None,
    what: str = "",
) -> str:
    """``x @ weight.T + bias`` over the last axis of ``x``, for ``features = (in, out)``
    and ``weight`` of shape ``[out, in]``; helper values are named ``n/<what>_<part>``
    (``n/<part>`` without ``what``)."""

    def sub(part: str) -> str:
        return _sub(n, f"{what}_{part}" if what else part)

    in_features, out_features = features
    b = [bias] if bias is not None else []
    if rank == 2:
        return e.add("Gemm", [x, weight, *b], out, name=name, transB=1)
    if bias is None:
        return e.add("MatMul", [x, e.transposed(weight)], out, name=name)
    if rank == 1 or out_features > GEMM_MAX_OUT_FEATURES:
        product = e.add("MatMul", [x, e.transposed(weight)], sub("matmul"))
        return e.add("Add", [product, bias], out, name=name)
    rows_shape = e.const(sub("rows_shape"), [-1, in_features])
    rows = e.add("Reshape", [x, rows_shape], sub("rows"))
    product = e.add("Gemm", [rows, weight, bias], sub("gemm"), transB=1)
    lead = e.add("Shape", [x], sub("lead"), end=-1)
    shape = e.add("Concat", [lead, e.const(sub("dims"), [out_features])], sub("shape"), axis=0)
    # allowzero: an empty batch or sequence is a 0 to keep, not a dim to copy
    return e.add("Reshape", [product, shape], out, name=name, allowzero=1)


def _conv(nd: int) -> Rule:
    def rule(e: Emitter, n: Node, xs: list[str], out: str) -> None:
        k, s, p, d = conv_geometry(n.attrs, nd)
        bias = [e.param(n, "bias")] if n.attrs.bias else []
        e.add(
            "Conv",
            [xs[0], e.param(n, "weight"), *bias],
            out,
            name=n.name,
            kernel_shape=list(k),
            strides=list(s),
            pads=[*p, *p],
            dilations=list(d),
            group=n.attrs.groups,
        )

    return rule


def _conv_transpose(e: Emitter, n: Node, xs: list[str], out: str) -> None:
    k, s, p, op, d = conv_transpose_geometry(n.attrs)
    bias = [e.param(n, "bias")] if n.attrs.bias else []
    e.add(
        "ConvTranspose",
        [xs[0], e.param(n, "weight"), *bias],
        out,
        name=n.name,
        kernel_shape=list(k),
        strides=list(s),
        pads=[*p, *p],
        output_padding=list(op),
        dilations=list(d),
        group=n.attrs.groups,
    )


def _embedding(e: Emitter, n: Node, xs: list[str], out: str) -> None:
    if n.attrs.scale is None:
        e.add("Gather", [e.param(n, "weight"), xs[0]], out, name=n.name, axis=0)
        return
    vectors = e.add("Gather", [e.param(n, "weight"), xs[0]], _sub(n, "vectors"), axis=0)
    e.add("Mul", [vectors, _scalar(e, n.attrs.scale, "float32")], out, name=n.name)


# ---- normalisation --------------------------------------------------------------------


def _filled(e: Emitter, n: Node, what: str, value: float, size: int, dtype: str) -> str:
    """A per-channel constant (the scale or shift of a norm without affine parameters)."""
    return e.once(
        ("filled", n.param_prefix, what),
        lambda: e.const(f"{n.param_prefix}/{what}", np.full(size, value), dtype),
    )


def _batchnorm(e: Emitter, n: Node, xs: list[str], out: str) -> None:
    x = e.graph.types[n.inputs[0]]
    channels = x.shape[1]
    assert isinstance(channels, int)
    if n.attrs.affine:
        scale, shift = e.param(n, "weight"), e.param(n, "bias")
    else:
        scale = _filled(e, n, "scale", 1.0, channels, x.dtype)
        shift = _filled(e, n, "shift", 0.0, channels, x.dtype)
    mean, var = e.param(n, "running_mean"), e.param(n, "running_var")
    e.add(
        "BatchNormalization",
        [xs[0], scale, shift, mean, var],
        out,
        name=n.name,
        epsilon=n.attrs.eps,
    )


def _layernorm(e: Emitter, n: Node, xs: list[str], out: str) -> None:
    x = e.graph.types[n.inputs[0]]
    size = x.shape[-1]
    assert isinstance(size, int)
    if n.attrs.elementwise_affine:
        inputs = [xs[0], e.param(n, "weight")]
        if n.attrs.bias:
            inputs.append(e.param(n, "bias"))
    else:
        inputs = [xs[0], _filled(e, n, "scale", 1.0, size, x.dtype)]
    e.add("LayerNormalization", inputs, out, name=n.name, axis=-1, epsilon=n.attrs.eps)


def _rmsnorm(e: Emitter, n: Node, xs: list[str], out: str) -> None:
    """``x * 1/sqrt(mean(x²) + eps) * weight`` over the last axis, as torch.nn.RMSNorm
    computes it (for every opset: RMSNormalization only exists from opset 23)."""
    from grow_ir.ir.ops.norm import rms_eps

    x = e.graph.types[n.inputs[0]]
    weight = e.param(n, "weight") if n.attrs.elementwise_affine else None
    _rms(e, n, xs[0], weight, rms_eps(n.attrs, x.torch_dtype), x.dtype, "", out, name=n.name)


def _rms(
    e: Emitter,
    n: Node,
    x: str,
    weight: str | None,
    eps: float,
    dtype: str,
    what: str,
    out: str | None = None,
    name: str | None = None,
) -> str:
    """``x * 1/sqrt(mean(x²) + eps) [* weight]`` over the last axis of ``x`` (helper values
    named ``node/{what}square``...); its last product is named ``out`` (else a helper's)
    and, with ``name``, that node too."""
    square = e.add("Mul", [x, x], _sub(n, f"{what}square"))
    if e.opset >= REDUCE_AXES_INPUT_OPSET:
        last = e.once(("axes", "last"), lambda: e.const("const/int64/last_axis", [-1]))
        mean = e.add("ReduceMean", [square, last], _sub(n, f"{what}mean_square"), keepdims=1)
    else:
        mean = e.add("ReduceMean", [square], _sub(n, f"{what}mean_square"), axes=[-1], keepdims=1)
    shifted = e.add("Add", [mean, _scalar(e, eps, dtype)], _sub(n, f"{what}shifted"))
    root = e.add("Sqrt", [shifted], _sub(n, f"{what}rms"))
    inverse = e.add("Reciprocal", [root], _sub(n, f"{what}inverse_rms"))
    last = {"name": name} if name is not None else {}
    if weight is None:
        return e.add("Mul", [x, inverse], out or _sub(n, f"{what}normalised"), **last)
    scaled = e.add("Mul", [x, inverse], _sub(n, f"{what}normalised"))
    return e.add("Mul", [scaled, weight], out or _sub(n, f"{what}scaled"), **last)


# ---- attention ------------------------------------------------------------------------


def _attention(e: Emitter, n: Node, xs: list[str], out: str) -> None:
    """nn.MultiheadAttention self-attention, batch first: q, k, v from one projection,
    heads laid out as :data:`TRANSPOSED_HEADS_MAX_DIM` says (grouped-query, rotary or
    masked attention as :func:`_heads_grouped`), merged heads projected out."""
    x = e.graph.types[n.inputs[0]]
    embed, heads, dt = x.shape[2], n.attrs.num_heads, x.dtype
    assert isinstance(embed, int)
    head_dim = attention_head_dim(n.attrs, [x])
    inner = heads * head_dim
    kv = attention_kv_heads(n.attrs)
    rows = inner + 2 * kv * head_dim
    qk_norm = n.attrs.qk_norm_eps is not None
    if qk_norm:  # a per-head norm of q would undo a scale folded into its rows
        w_qkv = e.param(n, "in_proj_weight")
        b_qkv = e.param(n, "in_proj_bias") if n.attrs.bias else None
    else:
        w_qkv, b_qkv = _in_projection(e, n, inner, rows, head_dim, dt)
    qkv = _dense(e, n, xs[0], 3, (embed, rows), w_qkv, b_qkv, _sub(n, "qkv"), what="qkv")
    grouped = kv != heads or n.attrs.rope_theta is not None or len(xs) == 2 or qk_norm
    transposed = head_dim <= TRANSPOSED_HEADS_MAX_DIM and not grouped
    length = ""  # [L], when the layout needs it, or the mask or rotary tables of a length
    dynamic = not isinstance(x.shape[1], int)  # not known: they are made from it
    if transposed or (dynamic and (n.attrs.causal or n.attrs.rope_theta is not None)):
        length = e.add("Shape", [xs[0]], _sub(n, "length"), start=1, end=2)
    mask = _causal_mask(e, n, length, dt) if n.attrs.causal else None
    if grouped:
        context = _heads_grouped(e, n, qkv, xs[1:], length, mask, heads, kv, head_dim)
    elif transposed:
        context = _heads_transposed(e, n, xs[0], qkv, length, mask, heads, head_dim)
    else:
        context = _heads(e, n, qkv, mask, heads, head_dim)
    merged_shape = e.const(_sub(n, "merged_shape"), [0, 0, inner])
    merged = e.add("Reshape", [context, merged_shape], _sub(n, "merged"))
    w_out = e.param(n, "out_proj.weight")
    b_out = e.param(n, "out_proj.bias") if n.attrs.bias else None
    features = (inner, embed)
    _dense(e, n, merged, 3, features, w_out, b_out, out, name=n.name, what="out_proj")


def _heads_grouped(
    e: Emitter,
    n: Node,
    qkv: str,
    key_mask: list[str],
    length: str,
    mask: str | None,
    heads: int,
    kv: int,
    head_dim: int,
) -> str:
    """The context ``[N, L, kv, group, head_dim]`` (= ``[N, L, heads, head_dim]``) from
    ``qkv``, with q as ``[N, kv, group, L, head_dim]`` and k, v as ``[N, kv, 1, L,
    head_dim]``: MatMul broadcasts each key/value head over its group of query heads, so
    grouped-query attention needs no copy of k or v. Rotary embedding and the key padding
    mask (``key_mask``: the node's second input, if any) are applied here."""
    group = heads // kv
    sizes = e.const(_sub(n, "split"), [heads * head_dim, kv * head_dim, kv * head_dim])
    parts = [_sub(n, "q_flat"), _sub(n, "k_flat"), _sub(n, "v_flat")]
    e.add_multi("Split", [qkv, sizes], parts, name=_sub(n, "split"), axis=-1)
    q_shape = e.const(_sub(n, "q_heads_shape"), [0, 0, kv, group, head_dim])
    kv_shape = e.const(_sub(n, "kv_heads_shape"), [0, 0, kv, 1, head_dim])
    q, k, v = (
        e.add(
            "Transpose",
            [e.add("Reshape", [flat, shape], _sub(n, f"{what}_heads"))],
            _sub(n, what),
            perm=[0, 2, 3, 1, 4],
        )
        for flat, shape, what in zip(parts, (q_shape, kv_shape, kv_shape), ("q", "k", "v"))
    )
    eps = n.attrs.qk_norm_eps
    if eps is not None:  # Qwen3's q_norm and k_norm, over each head
        dt = e.graph.types[n.inputs[0]].dtype
        q = _rms(e, n, q, e.param(n, "q_norm.weight"), eps, dt, "q_")
        k = _rms(e, n, k, e.param(n, "k_norm.weight"), eps, dt, "k_")
    if n.attrs.rope_theta is not None:
        rotary = attention_rotary_dim(n.attrs, [e.graph.types[n.inputs[0]]])
        cos, sin = _rotary_tables(e, n, length, rotary, n.attrs.rope_theta)
        q, k = (_partial(e, n, t, cos, sin, w, rotary, head_dim) for t, w in ((q, "q"), (k, "k")))
    k_t = e.add("Transpose", [k], _sub(n, "k_t"), perm=[0, 1, 2, 4, 3])
    masks = [mask] if mask is not None else []
    if key_mask:
        masks.append(_key_padding_mask(e, n, key_mask[0]))
    scores = e.add("MatMul", [q, k_t], _sub(n, "scores"))
    if eps is not None:  # not folded into the query rows (see _attention)
        scale = _scalar(e, 1 / math.sqrt(head_dim), e.graph.types[n.inputs[0]].dtype)
        scores = e.add("Mul", [scores, scale], _sub(n, "scaled_scores"))
    for i, m in enumerate(masks):
        scores = e.add("Add", [scores, m], _sub(n, f"masked{i}"))
    probs = e.add("Softmax", [scores], _sub(n, "softmax"), axis=-1)
    context = e.add("MatMul", [probs, v], _sub(n, "context"))
    return e.add("Transpose", [context], _sub(n, "context_t"), perm=[0, 3, 1, 2, 4])


def _rotary_tables(
    e: Emitter, n: Node, length: str, head_dim: int, theta: float
) -> tuple[str, str]:
    """``cos`` and ``sin`` ``[L, head_dim]`` at positions ``0..L-1`` (float32, the
    frequencies computed as torch computes them; see ``torch_modules.rotary_tables``):
    constants shared by every attention alike where the graph's length is known, else
    computed from the input's length ``[L]``."""
    dtype = e.graph.types[n.inputs[0]].dtype
    static = e.graph.types[n.inputs[0]].shape[1]
    if isinstance(static, int):

        def table(which: int) -> str:
            made = rotary_tables(static, head_dim, theta, torch.device("cpu"), DTYPES[dtype])
            name = f"const/{dtype}/rotary_{('cos', 'sin')[which]}_{static}x{head_dim}_{theta!r}"
            return e.const(name, made[which].numpy(), dtype)

        key = ("rotary", str(static), str(head_dim), repr(theta), dtype)
        return e.once((*key, "cos"), lambda: table(0)), e.once((*key, "sin"), lambda: table(1))
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim
    inv_freq = (1.0 / (theta**exponents)).numpy()
    limit = e.add("Squeeze", [length], _sub(n, "length_scalar"))
    zero, one = _scalar(e, 0, "int64"), _scalar(e, 1, "int64")
    positions = e.add("Range", [zero, limit, one], _sub(n, "positions"))
    as_float = e.add("Cast", [positions], _sub(n, "positions_f"), to=TensorProto.FLOAT)
    axis = e.once(("axes", "column"), lambda: e.const("const/int64/column_axis", [1]))
    column = e.add("Unsqueeze", [as_float, axis], _sub(n, "positions_col"))
    freqs = e.add(
        "Mul", [column, e.const(_sub(n, "inv_freq"), inv_freq, "float32")], _sub(n, "freqs")
    )
    emb = e.add("Concat", [freqs, freqs], _sub(n, "rotary_angles"), axis=-1)
    tables = []
    for op in ("Cos", "Sin"):
        t = e.add(op, [emb], _sub(n, op.lower()))
        if dtype != "float32":
            t = e.add("Cast", [t], _sub(n, f"{op.lower()}_cast"), to=ONNX_DTYPES[dtype])
        tables.append(t)
    return tables[0], tables[1]


def _rotate(e: Emitter, n: Node, t: str, cos: str, sin: str, what: str, head_dim: int) -> str:
    """``t·cos + rotate_half(t)·sin`` over the last axis of ``t`` (Llama's rotary)."""
    halves = e.once(
        ("rotary_halves", n.name),
        lambda: e.const(_sub(n, "rotary_halves"), [head_dim // 2, head_dim // 2]),
    )
    x1, x2 = e.add_multi(
        "Split",
        [t, halves],
        [_sub(n, f"{what}_x1"), _sub(n, f"{what}_x2")],
        name=_sub(n, f"{what}_halves"),
        axis=-1,
    )
    neg = e.add("Neg", [x2], _sub(n, f"{what}_neg_x2"))
    rotated = e.add("Concat", [neg, x1], _sub(n, f"{what}_rotated"), axis=-1)
    a = e.add("Mul", [t, cos], _sub(n, f"{what}_cos"))
    b = e.add("Mul", [rotated, sin], _sub(n, f"{what}_sin"))
    return e.add("Add", [a, b], _sub(n, f"{what}_rope"))


def _partial(
    e: Emitter, n: Node, t: str, cos: str, sin: str, what: str, rotary: int, head_dim: int
) -> str:
    """:func:`_rotate` of the first ``rotary`` entries of the last axis of ``t`` (of
    ``head_dim``), the others passed unchanged."""
    if rotary == head_dim:
        return _rotate(e, n, t, cos, sin, what, rotary)
    sizes = e.once(
        ("rotary_parts", n.name),
        lambda: e.const(_sub(n, "rotary_parts"), [rotary, head_dim - rotary]),
    )
    head, rest = e.add_multi(
        "Split",
        [t, sizes],
        [_sub(n, f"{what}_rotary"), _sub(n, f"{what}_pass")],
        name=_sub(n, f"{what}_parts"),
        axis=-1,
    )
    rotated = _rotate(e, n, head, cos, sin, what, rotary)
    return e.add("Concat", [rotated, rest], _sub(n, f"{what}_partial_rope"), axis=-1)


def _key_padding_mask(e: Emitter, n: Node, mask: str) -> str:
    """``[N, 1, 1, 1, L]``: 0 where the mask is nonzero, the dtype's lowest finite value
    where it is 0 (``torch_modules.key_padding_bias`` says why not -inf)."""
    mask_t = e.graph.types[n.inputs[1]]
    dtype = e.graph.types[n.inputs[0]].dtype
    off = e.add("Equal", [mask, _scalar(e, 0, mask_t.dtype)], _sub(n, "key_off"))
    lowest = _scalar(e, float(np.finfo(np.dtype(dtype)).min), dtype)
    additive = e.add("Where", [off, lowest, _scalar(e, 0.0, dtype)], _sub(n, "key_bias"))
    axes = e.once(("axes", "key_mask"), lambda: e.const("const/int64/key_mask_axes", [1, 2, 3]))
    return e.add("Unsqueeze", [additive, axes], _sub(n, "key_mask"))


def _heads(e: Emitter, n: Node, qkv: str, mask: str | None, heads: int, head_dim: int) -> str:
    """The context ``[N, L, heads, head_dim]`` from ``qkv`` ``[N, L, 3E]``, with the heads
    as ``[N, heads, L, head_dim]`` (``k`` as ``[N, heads, head_dim, L]``)."""
    sizes = e.const(_sub(n, "split"), [heads * head_dim] * 3)
    parts = [_sub(n, "q_flat"), _sub(n, "k_flat"), _sub(n, "v_flat")]
    e.add_multi("Split", [qkv, sizes], parts, name=_sub(n, "split"), axis=-1)
    heads_shape = e.const(_sub(n, "heads_shape"), [0, 0, heads, head_dim])
    q, k_t, v = (
        e.add(
            "Transpose",
            [e.add("Reshape", [flat, heads_shape], _sub(n, f"{what}_heads"))],
            _sub(n, what),
            perm=perm,
        )
        for flat, what, perm in zip(
            parts, ("q", "k_t", "v"), ([0, 2, 1, 3], [0, 2, 3, 1], [0, 2, 1, 3])
        )
    )
    probs = _attend(e, n, q, k_t, mask)
    context = e.add("MatMul", [probs, v], _sub(n, "context"))
    return e.add("Transpose", [context], _sub(n, "context_t"), perm=[0, 2, 1, 3])


def _heads_transposed(
    e: Emitter,
    n: Node,
    x: str,
    qkv: str,
    length: str,
    mask: str | None,
    heads: int,
    head_dim: int,
) -> str:
    """The context ``[N, L, heads, head_dim]`` from ``qkv`` ``[N, L, 3E]``, with the heads
    as ``[N, heads, head_dim, L]``.

    ``qkv`` is transposed to ``[N, 3E, L]`` before it is reshaped into heads: the Reshape
    keeps onnxruntime's transpose optimizer from moving the transpose past the Split and
    merging it with ``q``'s into one block-copying transpose.
    """
    qkv_t = e.add("Transpose", [qkv], _sub(n, "qkv_t"), perm=[0, 2, 1])
    batch = e.add("Shape", [x], _sub(n, "batch"), end=1)
    dims = e.const(_sub(n, "heads_dims"), [3 * heads, head_dim])
    heads_shape = e.add("Concat", [batch, dims, length], _sub(n, "heads_shape"), axis=0)
    # allowzero: an empty batch or sequence is a 0 to keep, not a dim to copy
    heads_t = e.add("Reshape", [qkv_t, heads_shape], _sub(n, "heads_t"), allowzero=1)
    q_t, k_t, v_t = e.add_multi(
        "Split",
        [heads_t, e.const(_sub(n, "split"), [heads] * 3)],
        [_sub(n, "q_t"), _sub(n, "k_t"), _sub(n, "v_t")],
        name=_sub(n, "split"),
        axis=1,
    )
    q = e.add("Transpose", [q_t], _sub(n, "q"), perm=[0, 1, 3, 2])
    probs = _attend(e, n, q, k_t, mask)
    probs_t = e.add("Transpose", [probs], _sub(n, "softmax_t"), perm=[0, 1, 3, 2])
    context_t = e.add("MatMul", [v_t, probs_t], _sub(n, "context_t"))
    return e.add("Transpose", [context_t], _sub(n, "context"), perm=[0, 3, 1, 2])


def _attend(e: Emitter, n: Node, q: str, k_t: str, mask: str | None) -> str:
    """The attention weights ``softmax(q @ k_t + mask)`` (the scale is in ``q``)."""
    scores = e.add("MatMul", [q, k_t], _sub(n, "scores"))
    if mask is not None:
        scores = e.add("Add", [scores, mask], _sub(n, "masked"))
    return e.add("Softmax", [scores], _sub(n, "softmax"), axis=-1)


def _in_projection(
    e: Emitter, n: Node, inner: int, rows: int, head_dim: int, dtype: str
) -> tuple[str, str | None]:
    """The in-projection's weight (and bias) with the query's 1/sqrt(head_dim) folded into
    its ``inner`` query rows (of ``rows``): constants after onnxruntime's folding, so no Mul
    runs per call (rotary embedding is linear in q, so the scale may come first)."""
    scale = np.concatenate([np.full(inner, 1 / math.sqrt(head_dim)), np.ones(rows - inner)])
    w_in = e.param(n, "in_proj_weight")
    w_qkv = e.once(
        ("scaled", w_in),
        lambda: e.add(
            "Mul",
            [w_in, e.const(f"{n.param_prefix}/qscale_rows", scale[:, None], dtype)],
            f"{w_in}/scaled",
        ),
    )
    if not n.attrs.bias:
        return w_qkv, None
    b_in = e.param(n, "in_proj_bias")
    b_qkv = e.once(
        ("scaled", b_in),
        lambda: e.add(
            "Mul", [b_in, e.const(f"{n.param_prefix}/qscale", scale, dtype)], f"{b_in}/scaled"
        ),
    )
    return w_qkv, b_qkv


def _causal_mask(e: Emitter, n: Node, length: str, dtype: str) -> str:
    """``[L, L]`` with -inf above the diagonal: a constant shared by every attention where
    the graph's length is known, else made from the input's length ``[L]``."""
    static = e.graph.types[n.inputs[0]].shape[1]
    if isinstance(static, int):
        mask = np.triu(np.full((static, static), -np.inf, dtype=np.dtype(dtype)), 1)
        name = f"const/{dtype}/causal_mask_{static}"
        return e.once(("causal", str(static), dtype), lambda: e.const(name, mask, dtype))
    square = e.add("Concat", [length, length], _sub(n, "mask_shape"), axis=0)
    fill = numpy_helper.from_array(np.array([-np.inf], dtype=np.dtype(dtype)), "value")
    full = e.add("ConstantOfShape", [square], _sub(n, "mask_full"), value=fill)
    return e.add("Trilu", [full, _scalar(e, 1, "int64")], _sub(n, "mask"), upper=1)


# ---- elementwise ----------------------------------------------------------------------


def _unary(op_type: str) -> Rule:
    def rule(e: Emitter, n: Node, xs: list[str], out: str) -> None:
        e.add(op_type, [xs[0]], out, name=n.name)

    return rule


def _clip(low: Callable[[Node], float], high: Callable[[Node], float]) -> Rule:
    """``Clip`` between two of the graph's shared scalars."""

    def rule(e: Emitter, n: Node, xs: list[str], out: str) -> None:
        dt = e.dtype(n.inputs[0])
        bounds = [_scalar(e, low(n), dt), _scalar(e, high(n), dt)]
        e.add("Clip", [xs[0], *bounds], out, name=n.name)

    return rule


def _with_alpha(op_type: str, attr: str) -> Rule:
    """An activation whose one float attribute is ONNX's ``alpha``."""

    def rule(e: Emitter, n: Node, xs: list[str], out: str) -> None:
        e.add(op_type, [xs[0]], out, name=n.name, alpha=float(getattr(n.attrs, attr)))

    return rule


def _hardsigmoid(e: Emitter, n: Node, xs: list[str], out: str) -> None:
    e.add("HardSigmoid", [xs[0]], out, name=n.name, alpha=1.0 / 6.0, beta=0.5)


def _silu(e: Emitter, n: Node, xs: list[str], out: str) -> None:
    gate = e.add("Sigmoid", [xs[0]], _sub(n, "sigmoid"))
    e.add("Mul", [xs[0], gate], out, name=n.name)


def _gelu(e: Emitter, n: Node, xs: list[str], out: str) -> None:
    x, dt = xs[0], e.dtype(n.inputs[0])
    if e.opset >= GELU_OPSET:
        e.add("Gelu", [x], out, name=n.name, approximate=n.attrs.approximate)
        return
    if n.attrs.approximate == "none":
        # x * 0.5 * (1 + erf(x / sqrt 2)): the pattern onnxruntime fuses into one Gelu.
        scaled = e.add("Div", [x, _scalar(e, math.sqrt(2.0), dt)], _sub(n, "div"))
        inner = e.add("Erf", [scaled], _sub(n, "erf"))
    else:
        # tanh(sqrt(2/pi) * (x + 0.044715 x^3))
        cube = e.add("Mul", [e.add("Mul", [x, x], _sub(n, "square")), x], _sub(n, "cube"))
        cubic = e.add("Mul", [cube, _scalar(e, 0.044715, dt)], _sub(n, "cubic"))
        poly = e.add("Add", [x, cubic], _sub(n, "poly"))
        arg = e.add("Mul", [poly, _scalar(e, math.sqrt(2.0 / math.pi), dt)], _sub(n, "arg"))
        inner = e.add("Tanh", [arg], _sub(n, "tanh"))
    shifted = e.add("Add", [inner, _scalar(e, 1.0, dt)], _sub(n, "one_plus"))
    product = e.add("Mul", [x, shifted], _sub(n, "mul"))
    e.add("Mul", [product, _scalar(e, 0.5, dt)], out, name=n.name)


def _softmax(e: Emitter, n: Node, xs: list[str], out: str) -> None:
    e.add("Softmax", [xs[0]], out, name=n.name, axis=n.attrs.dim)


def _log_softmax(e: Emitter, n: Node, xs: list[str], out: str) -> None:
    e.add("LogSoftmax", [xs[0]], out, name=n.name, axis=n.attrs.dim)


# ---- resizing -------------------------------------------------------------------------


def _upsample(e: Emitter, n: Node, xs: list[str], out: str) -> None:
    """Resize with PyTorch's source positions: ``asymmetric`` and ``floor`` for nearest,
    ``pytorch_half_pixel`` (or ``align_corners``) for bilinear. A scale factor is passed
    as Resize's scales, so positions come from the factor as in PyTorch; a size as
    Resize's sizes (the batch and channel sizes read from the input's shape)."""
    a = n.attrs
    if a.mode == "nearest":
        how = {"mode": "nearest", "coordinate_transformation_mode": "asymmetric"}
        how["nearest_mode"] = "floor"
    else:
        corners = "align_corners" if a.align_corners else "pytorch_half_pixel"
        how = {"mode": "linear", "coordinate_transformation_mode": corners}
    if a.scale_factor is not None:
        scales = [1.0, 1.0, *(float(f) for f in spatial(a.scale_factor, 2))]
        e.add(
            "Resize",
            [xs[0], "", e.const(_sub(n, "scales"), scales, "float32")],
            out,
            name=n.name,
            **how,
        )
        return
    lead = e.add("Shape", [xs[0]], _sub(n, "lead"), end=2)
    hw = e.const(_sub(n, "hw"), list(upsample_sizes(a, e.graph.types[n.inputs[0]])))
    sizes = e.add("Concat", [lead, hw], _sub(n, "sizes"), axis=0)
    e.add("Resize", [xs[0], "", "", sizes], out, name=n.name, **how)


# ---- pooling --------------------------------------------------------------------------


def _pool_windows(e: Emitter, n: Node) -> tuple[list[int], list[int], list[int], list[int]]:
    """Kernel, stride and padding per spatial axis, and the end padding to add so that a
    floor-mode pool gives PyTorch's ceil-mode output size.

    PyTorch's ceil mode drops a last window that would start in the right padding; ONNX
    shape inference does not, so ceil mode is lowered to floor mode on a padded input.
    """
    k, s, p, d = (list(v) for v in pool_geometry(n.attrs))
    x, y = e.graph.types[n.inputs[0]], e.graph.types[n.name]
    extra = []
    for i in range(2):
        size, out = x.shape[2 + i], y.shape[2 + i]
        assert isinstance(size, int) and isinstance(out, int)
        span = d[i] * (k[i] - 1) + 1
        extra.append(max(0, (out - 1) * s[i] + span - (size + 2 * p[i])))
    return k, s, p, extra


def _pad(e: Emitter, n: Node, x: str, begin: list[int], end: list[int], fill: float) -> str:
    """``x`` padded on its spatial axes with the constant ``fill``."""
    dt = e.dtype(n.inputs[0])
    pads = e.const(_sub(n, "pads"), [0, 0, *begin, 0, 0, *end])
    return e.add("Pad", [x, pads, _scalar(e, fill, dt)], _sub(n, "pad"), mode="constant")


def _maxpool(e: Emitter, n: Node, xs: list[str], out: str) -> None:
    k, s, p, extra = _pool_windows(e, n)
    x = _pad(e, n, xs[0], [0, 0], extra, -math.inf) if any(extra) else xs[0]
    e.add(
        "MaxPool",
        [x],
        out,
        name=n.name,
        kernel_shape=k,
        strides=s,
        pads=[*p, *p],
        dilations=list(pool_geometry(n.attrs)[3]),
    )


def _avgpool(e: Emitter, n: Node, xs: list[str], out: str) -> None:
    k, s, p, extra = _pool_windows(e, n)
    x, include_pad = xs[0], n.attrs.count_include_pad
    begin, end = p, [pi + ei for pi, ei in zip(p, extra)]
    if any(extra) and include_pad:
        # PyTorch counts the declared padding but not the part of a ceil-mode window past
        # it: pad with zeros explicitly and let the pool count real elements only.
        x = _pad(e, n, x, p, p, 0.0)
        begin, end, include_pad = [0, 0], extra, False
    e.add(
        "AveragePool",
        [x],
        out,
        name=n.name,
        kernel_shape=k,
        strides=s,
        pads=[*begin, *end],
        count_include_pad=int(include_pad),
    )


def _adaptive_avgpool(e: Emitter, n: Node, xs: list[str], out: str) -> None:
    """GlobalAveragePool for 1x1; AveragePool with windows of ``size / output`` where the
    output divides the input; else PyTorch's overlapping bins of unequal sizes as constant
    averaging matrices, ``A_h @ x @ A_w^T`` (one MatMul per axis that changes)."""
    x, y = e.graph.types[n.inputs[0]], e.graph.types[n.name]
    sizes, outs = [int(d) for d in x.shape[2:]], [int(d) for d in y.shape[2:]]
    if outs == [1, 1]:
        e.add("GlobalAveragePool", [xs[0]], out, name=n.name)
        return
    if all(i % o == 0 for i, o in zip(sizes, outs)):
        kernel = [i // o for i, o in zip(sizes, outs)]
        e.add("AveragePool", [xs[0]], out, name=n.name, kernel_shape=kernel, strides=kernel)
        return
    dt = e.dtype(n.inputs[0])
    height, width = (averaging_matrix(i, o) for i, o in zip(sizes, outs))
    value = xs[0]
    if sizes[1] != outs[1]:
        cols = e.const(_sub(n, "width_bins"), width.T, dt)
        last = sizes[0] == outs[0]
        value = e.add(
            "MatMul",
            [value, cols],
            out if last else _sub(n, "width"),
            name=n.name if last else _sub(n, "width"),
        )
    if sizes[0] != outs[0]:
        rows = e.const(_sub(n, "height_bins"), height, dt)
        e.add("MatMul", [rows, value], out, name=n.name)


def _global_avgpool(e: Emitter, n: Node, xs: list[str], out: str) -> None:
    rank = e.graph.types[n.inputs[0]].rank
    _reduce(e, n, "ReduceMean", xs[0], list(range(2, rank)), False, out)


def _axes_const(e: Emitter, axes: list[int]) -> str:
    """A shared int64 constant listing ``axes`` (``const/int64/axes_2_3``)."""
    key = "_".join(str(a) for a in axes)
    return e.once(("axes", key), lambda: e.const(f"const/int64/axes_{key}", axes))


def _reduce(
    e: Emitter, n: Node, op_type: str, x: str, axes: list[int], keep: bool, out: str
) -> None:
    """``ReduceMean`` or ``ReduceSum`` over ``axes`` (an input from the opset that takes
    it as one: 18 for ReduceMean, 13 for ReduceSum)."""
    as_input = op_type == "ReduceSum" or e.opset >= REDUCE_AXES_INPUT_OPSET
    if as_input:
        e.add(op_type, [x, _axes_const(e, axes)], out, name=n.name, keepdims=int(keep))
    else:
        e.add(op_type, [x], out, name=n.name, axes=axes, keepdims=int(keep))


def _reduction(op_type: str) -> Rule:
    def rule(e: Emitter, n: Node, xs: list[str], out: str) -> None:
        rank = e.graph.types[n.inputs[0]].rank
        axes = sorted(d % rank for d in n.attrs.dim)
        _reduce(e, n, op_type, xs[0], axes, n.attrs.keepdim, out)

    return rule


# ---- structure ------------------------------------------------------------------------


def _chain(op_type: str) -> Rule:
    """A variadic join as a left-to-right chain of binary ops, as torch evaluates it."""

    def rule(e: Emitter, n: Node, xs: list[str], out: str) -> None:
        acc = xs[0]
        for i, x in enumerate(xs[1:], start=1):
            last = i == len(xs) - 1
            acc = e.add(
                op_type, [acc, x], out if last else _sub(n, str(i)), name=n.name if last else None
            )

    return rule


def _mix(e: Emitter, n: Node, xs: list[str], out: str) -> None:
    """``Σ softmax(alpha)_i · x_i``, summed in input order as torch does; the weights are
    constants once onnxruntime folds the Softmax and Gathers on the initializer."""
    alpha = e.param(n, "alpha")
    weights = e.once(
        ("softmax", alpha), lambda: e.add("Softmax", [alpha], f"{alpha}/softmax", axis=0)
    )
    acc = ""
    for i, x in enumerate(xs):
        w = e.add("Gather", [weights, _scalar(e, i, "int64")], _sub(n, f"w{i}"), axis=0)
        term = e.add("Mul", [w, x], _sub(n, f"term{i}"))
        last = i == len(xs) - 1
        if i > 0:
            target, name = (out, n.name) if last else (_sub(n, f"sum{i}"), None)
            term = e.add("Add", [acc, term], target, name=name)
        acc = term


def _concat(e: Emitter, n: Node, xs: list[str], out: str) -> None:
    e.add("Concat", xs, out, name=n.name, axis=n.attrs.dim)


def _flatten(e: Emitter, n: Node, xs: list[str], out: str) -> None:
    x = e.graph.types[n.inputs[0]]
    start = n.attrs.start_dim % x.rank
    end = n.attrs.end_dim % x.rank
    folded = math.prod(d for d in x.shape[start : end + 1] if isinstance(d, int))
    tail = x.shape[end + 1 :]
    symbolic_tail = [d for d in tail if not isinstance(d, int)]
    if len(symbolic_tail) <= 1:
        # 0 copies a leading dim (batch) and -1 absorbs at most one symbolic trailing dim.
        shape = [0] * start + [folded] + [d if isinstance(d, int) else -1 for d in tail]
        target = e.const(_sub(n, "shape"), shape)
    else:
        head = e.add("Shape", [xs[0]], _sub(n, "head"), end=start)
        rest = e.add("Shape", [xs[0]], _sub(n, "tail"), start=end + 1)
        middle = e.const(_sub(n, "folded"), [folded])
        target = e.add("Concat", [head, middle, rest], _sub(n, "shape"), axis=0)
    e.add("Reshape", [xs[0], target], out, name=n.name)


def _reshape(e: Emitter, n: Node, xs: list[str], out: str) -> None:
    e.add("Reshape", [xs[0], e.const(_sub(n, "shape"), list(n.attrs.shape))], out, name=n.name)


def _unflatten(e: Emitter, n: Node, xs: list[str], out: str) -> None:
    """Reshape to the input's own sizes around ``sizes`` (read at run time, so any of
    them may be symbolic)."""
    rank = e.graph.types[n.inputs[0]].rank
    axis = n.attrs.dim % rank
    parts = [e.const(_sub(n, "sizes"), list(n.attrs.sizes))]
    if axis > 0:
        parts.insert(0, e.add("Shape", [xs[0]], _sub(n, "head"), end=axis))
    if axis < rank - 1:
        parts.append(e.add("Shape", [xs[0]], _sub(n, "tail"), start=axis + 1))
    target = e.add("Concat", parts, _sub(n, "shape"), axis=0) if len(parts) > 1 else parts[0]
    e.add("Reshape", [xs[0], target], out, name=n.name)


def _transpose(e: Emitter, n: Node, xs: list[str], out: str) -> None:
    perm = permutation(n.op, n.attrs, e.graph.types[n.inputs[0]].rank)
    e.add("Transpose", [xs[0]], out, name=n.name, perm=perm)


def _squeeze(op_type: str) -> Rule:
    def rule(e: Emitter, n: Node, xs: list[str], out: str) -> None:
        # unsqueeze's axes index its output, squeeze's its input
        rank = e.graph.types[n.name if op_type == "Unsqueeze" else n.inputs[0]].rank
        dims = n.attrs.dim if isinstance(n.attrs.dim, tuple) else (n.attrs.dim,)
        e.add(op_type, [xs[0], _axes_const(e, sorted(d % rank for d in dims))], out, name=n.name)

    return rule


def _select(e: Emitter, n: Node, xs: list[str], out: str) -> None:
    index = e.const(_sub(n, "index"), np.array(n.attrs.index))
    e.add("Gather", [xs[0], index], out, name=n.name, axis=n.attrs.dim)


def _slice(e: Emitter, n: Node, xs: list[str], out: str) -> None:
    a = n.attrs
    end = np.iinfo(np.int64).max if a.end is None else a.end
    bounds = [e.const(_sub(n, k), [v]) for k, v in (("starts", a.start), ("ends", end))]
    axes = e.const(_sub(n, "axes"), [a.dim])
    steps = e.const(_sub(n, "steps"), [a.step])
    e.add("Slice", [xs[0], *bounds, axes, steps], out, name=n.name)


def _pad_op(e: Emitter, n: Node, xs: list[str], out: str) -> None:
    rank = e.graph.types[n.inputs[0]].rank
    pairs = pad_pairs(n.attrs, rank)
    if not pairs:  # nothing to pad (onnxruntime's Pad refuses a rank-0 input even then)
        e.add("Identity", [xs[0]], out, name=n.name)
        return
    begin = [pairs.get(i, (0, 0))[0] for i in range(rank)]
    end = [pairs.get(i, (0, 0))[1] for i in range(rank)]
    fill = _scalar(e, n.attrs.value, e.dtype(n.inputs[0]))
    pads = e.const(_sub(n, "pads"), begin + end)
    e.add("Pad", [xs[0], pads, fill], out, name=n.name, mode="constant")


def _positions(e: Emitter, n: Node, xs: list[str], out: str) -> None:
    rank = e.graph.types[n.inputs[0]].rank
    axis = n.attrs.dim % rank
    pad = n.attrs.padding_idx
    if pad is not None:  # cumsum(ids != pad) * (ids != pad) + pad, along the axis
        ids_t = e.graph.types[n.inputs[0]].dtype
        is_pad = e.add("Equal", [xs[0], _scalar(e, pad, ids_t)], _sub(n, "is_pad"))
        kept = e.add("Not", [is_pad], _sub(n, "kept"))
        kept = e.add("Cast", [kept], _sub(n, "kept_int"), to=TensorProto.INT64)
        along = e.const(_sub(n, "axis"), axis)
        counted = e.add("CumSum", [kept, along], _sub(n, "counted"))
        numbered = e.add("Mul", [counted, kept], _sub(n, "numbered"))
        e.add("Add", [numbered, _scalar(e, pad, "int64")], out, name=n.name)
        return
    length = e.add("Shape", [xs[0]], _sub(n, "length"), start=axis, end=axis + 1)
    limit = e.add("Squeeze", [length], _sub(n, "limit"))
    zero, one = _scalar(e, 0, "int64"), _scalar(e, 1, "int64")
    if not n.attrs.batch_axis:
        e.add("Range", [zero, limit, one], out, name=n.name)
        return
    row = e.add("Range", [zero, limit, one], _sub(n, "range"))
    e.add("Unsqueeze", [row, _axes_const(e, [0])], out, name=n.name)


def _parameter(e: Emitter, n: Node, xs: list[str], out: str) -> None:
    weight = e.param(n, "weight")
    if not xs:
        e.add("Identity", [weight], out, name=n.name)
        return
    batch = e.add("Shape", [xs[0]], _sub(n, "batch"), end=1)
    rest = e.const(_sub(n, "rest"), list(n.attrs.shape[1:]))
    shape = e.add("Concat", [batch, rest], _sub(n, "shape"), axis=0)
    e.add("Expand", [weight, shape], out, name=n.name)


EMIT: dict[str, Rule] = {
    "linear": _linear,
    "conv1d": _conv(1),
    "conv2d": _conv(2),
    "conv_transpose2d": _conv_transpose,
    "embedding": _embedding,
    "batchnorm": _batchnorm,
    "layernorm": _layernorm,
    "rmsnorm": _rmsnorm,
    "attention": _attention,
    "relu": _unary("Relu"),
    "tanh": _unary("Tanh"),
    "sigmoid": _unary("Sigmoid"),
    "silu": _silu,
    "hardtanh": _clip(lambda n: n.attrs.min_val, lambda n: n.attrs.max_val),
    "relu6": _clip(lambda n: 0.0, lambda n: 6.0),
    "hardswish": _unary("HardSwish"),
    "hardsigmoid": _hardsigmoid,
    "leaky_relu": _with_alpha("LeakyRelu", "negative_slope"),
    "elu": _with_alpha("Elu", "alpha"),
    "gelu": _gelu,
    "identity": _unary("Identity"),
    "dropout": _unary("Identity"),  # eval semantics
    "stochastic_depth": _unary("Identity"),  # eval semantics
    "softmax": _softmax,
    "log_softmax": _log_softmax,
    "maxpool2d": _maxpool,
    "avgpool2d": _avgpool,
    "global_avgpool": _global_avgpool,
    "adaptive_avgpool2d": _adaptive_avgpool,
    "upsample": _upsample,
    "flatten": _flatten,
    "add": _chain("Add"),
    "mul": _chain("Mul"),
    "sub": _chain("Sub"),
    "div": _chain("Div"),
    "mean": _reduction("ReduceMean"),
    "sum": _reduction("ReduceSum"),
    "reshape": _reshape,
    "unflatten": _unflatten,
    "transpose": _transpose,
    "permute": _transpose,
    "squeeze": _squeeze("Squeeze"),
    "unsqueeze": _squeeze("Unsqueeze"),
    "select": _select,
    "slice": _slice,
    "pad": _pad_op,
    "matmul": _chain("MatMul"),
    "positions": _positions,
    "parameter": _parameter,
    "concat": _concat,
    "mix": _mix,
}
"""Emission rule of every IR op (a test asserts it covers ``grow_ir.ir.ops.OPS`` exactly)."""
