"""``from_onnx``: an ONNX model (a file or a ModelProto) into a verified Graph.

Each ONNX node maps onto IR ops by one rule of :data:`RULES` (keyed by op type); the
multi-node forms that exporters write for one layer are recognised where they start:
``MatMul`` + ``Add`` of initializers is a biased linear, ``Sigmoid`` then ``Mul`` by the
same value is silu, ``GlobalAveragePool``/``ReduceMean`` (keepdims) then ``Flatten`` is
global_avgpool, a ``Pad`` that only a pool reads is its padding where that is how
``to_onnx`` writes PyTorch's ceil mode (:func:`_padded_pool`). Larger compositions
(attention, a written-out GELU or RMSNorm, a tied head, ``mix``, positions built from the
shapes) are found first by evaluating the file (:mod:`grow_ir.imports.onnx_regions`), and
what only they read is not imported. Layers are named after their weight initializers
(``layer1.0.conv1.weight`` gives node ``layer1.0.conv1``, so files that ``to_onnx`` and
``torch.onnx.export`` write keep the module names); stateless nodes as ``from_torch``
names them where the file records module scopes (``transformer.h.0.add``), after the IR
node in a file grow-ir wrote, else after their output value. Numbered blocks that are
copies of one block become a stage (:func:`~grow_ir.imports.torch_stages.numbered_stages`).
A graph output that the file computes as a graph input (through an ``Identity``: a
dropout, ``nn.Identity``) is an ``identity`` node, since IR outputs name nodes.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from grow_ir.backends.onnx import PRODUCER
from grow_ir.errors import CheckFailed, GrowError, ShapeError
from grow_ir.imports.builder import GraphBuilder, folded_axes, ident
from grow_ir.imports.onnx_patterns import (
    NAME_SCOPES,
    Region,
    float32_decimal,
    scalar_factor,
    scope,
)
from grow_ir.imports.onnx_pooling import averaging_matmul, gathered_pooling
from grow_ir.imports.onnx_regions import find_regions
from grow_ir.imports.onnx_shapes import (
    SIZES_ONLY,
    Dims,
    dims_rule,
    expand_rule,
    range_rule,
    shape,
    sizes,
)
from grow_ir.imports.onnx_values import Evaluation
from grow_ir.imports.torch_rules import KeptMean, Unsupported, split_axis
from grow_ir.imports.torch_stages import numbered_stages
from grow_ir.ir.graph import Graph
from grow_ir.ir.ops.elementwise import pool_out_size
from grow_ir.ir.types import TensorType

TOLERANCE = 1e-5
"""Largest accepted relative error of the import check (graph vs onnxruntime)."""

_DTYPES = {
    onnx.TensorProto.FLOAT: "float32",
    onnx.TensorProto.FLOAT16: "float16",
    onnx.TensorProto.INT64: "int64",
}


def from_onnx(model: str | Path | onnx.ModelProto, *, check: bool = True) -> Graph:
    """Import an ONNX model into a verified Graph computing what it computes.

    Guarantees: layers are named after their weight initializers without the last
    component (``conv.weight`` -> ``conv``), so the parameters keep the file's names;
    parameter values are the initializers' values, bitwise (a ``MatMul`` weight is
    stored transposed, as ``nn.Linear`` holds it); inputs and outputs keep their names,
    dims named in the file stay symbolic; with ``check`` the lowered graph matches
    onnxruntime on random inputs within :data:`TOLERANCE` (relative). ``model`` is unchanged.

    Raises:
        ImportRefused: one line per ONNX node (name and op type) that grow-ir has no op
            for; nothing is imported.
        CheckFailed: the imported graph computes another function than the file.
        GrowError: the file cannot be read or is not a valid ONNX model.
    """
    proto, label = _load(model)
    graph, evaluation = _convert(proto, label)
    if check:
        _check(graph, proto, evaluation)
    return graph


def _load(model: str | Path | onnx.ModelProto) -> tuple[onnx.ModelProto, str]:
    if isinstance(model, onnx.ModelProto):
        return model, model.graph.name or "model"
    path = Path(model)
    try:
        proto = onnx.load(str(path))
    except Exception as exc:  # protobuf decode errors, missing files
        raise GrowError(
            "cannot read the ONNX file",
            file=str(path),
            expected="an ONNX model file",
            found=f"{type(exc).__name__}: {exc}",
        ) from None
    return proto, str(path)


@dataclass
class _Context:
    builder: GraphBuilder
    consts: dict[str, np.ndarray]
    consumers: dict[str, list[onnx.NodeProto]]
    model: onnx.ModelProto
    env: dict[str, str | KeptMean] = field(default_factory=dict)
    done: set[int] = field(default_factory=set)  # ids of nodes a pattern already consumed
    reshaped: dict[str, str] = field(default_factory=dict)  # a reshape node -> its input
    leaves: frozenset[str] = frozenset()  # stateless leaf modules (see _leaf_scopes)
    ours: bool = False  # written by grow-ir's to_onnx

    def value(self, name: str) -> str:
        if name in self.consts:
            raise Unsupported(f"takes the constant '{name}' where grow-ir needs a value")
        bound = self.env.get(name)
        if isinstance(bound, KeptMean):
            return bound.kept(self.builder)
        if isinstance(bound, Dims):
            raise Unsupported(f"takes the shape '{name}' as a value {SIZES_ONLY}")
        if bound is None:
            raise Unsupported(f"reads '{name}', which has no grow-ir value")
        return bound

    def const(self, name: str, what: str) -> np.ndarray:
        if name not in self.consts:
            raise Unsupported(f"takes its {what} from a computed value, not an initializer")
        return self.consts[name]

    def type(self, name: str) -> TensorType:
        bound = self.env[name]
        return (
            bound.type(self.builder) if isinstance(bound, KeptMean) else self.builder.types[bound]
        )

    @functools.cached_property
    def producers(self) -> dict[str, onnx.NodeProto]:
        """Value name -> the node computing it."""
        return {o: n for n in self.model.graph.node for o in n.output if o}

    def hint(self, value: str, op: str) -> str:
        """A name for the stateless ``op`` node computing ONNX value ``value`` (see
        :func:`_hint`)."""
        node = self.producers.get(value)
        return value if node is None else _hint(self, node, op)

    def only_consumer(self, output: str) -> onnx.NodeProto | None:
        users = self.consumers.get(output, [])
        return users[0] if len(users) == 1 else None


def _text(v: str | bytes) -> str:
    return v.decode() if isinstance(v, bytes) else v


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _layer_name(init: str) -> str:
    head = init.split("/")[0]
    base, _, last = head.rpartition(".")
    return base if base and last in ("weight", "running_mean", "scale") else head


def _tensor(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(a, copy=True))


def _convert(proto: onnx.ModelProto, label: str) -> tuple[Graph, Evaluation | None]:
    """The graph, and the evaluation of the file its regions were found by (if any)."""
    g = proto.graph
    consts = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    for node in g.node:
        if node.op_type == "Constant":
            consts[node.output[0]] = numpy_helper.to_array(_attrs(node)["value"])
    builder = GraphBuilder(source=f"{label} (onnx)", tensors={})
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in g.node:
        for i in node.input:
            consumers.setdefault(i, []).append(node)
    ctx = _Context(
        builder=builder,
        consts=consts,
        consumers=consumers,
        model=proto,
        leaves=_leaf_scopes(g),
        ours=proto.producer_name == PRODUCER,
    )
    found, live, evaluation = find_regions(proto, consts, set(RULES))
    regions = {r.output: r for r in found.regions}
    claimed = found.claimed
    for inp in g.input:
        if inp.name in consts:
            continue
        ctx.env[inp.name] = builder.add_input(ident(inp.name), _vtype(inp))
    for index, node in enumerate(g.node):
        if node.op_type == "Constant" or id(node) in ctx.done or index not in live:
            continue
        if node.output[0] in consts:  # folded by the region finders
            continue
        where = f"node '{node.name or node.output[0]}' ({node.op_type})"
        if node.output[0] in found.aliases or index in claimed:
            try:
                _found(ctx, node, found.aliases, regions)
            except Unsupported as exc:
                builder.refuse(where, exc.reason, list(node.output))
            continue
        rule = RULES.get(node.op_type) if node.domain in ("", "ai.onnx") else None
        if rule is None:  # listed even after a refused node: every missing op at once
            missing = f"{node.domain or 'ai.onnx'}.{node.op_type} has no grow-ir op"
            builder.refuse(where, missing, list(node.output))
            continue
        if builder.is_poisoned(list(node.input)):
            builder.poisoned.update(node.output)
            continue
        try:
            if not dims_rule(ctx, node):
                rule(ctx, node)
        except Unsupported as exc:
            builder.refuse(where, f"{node.op_type} {exc.reason}", list(node.output))
        except ShapeError as exc:  # a value the op's type inference refuses
            builder.refuse(where, f"{node.op_type} {exc.message}", list(node.output))
    if builder.refusals:  # why a construct was left to the rules that refused it
        for where, what in found.fallbacks:
            builder.refuse(where, what)
    outputs = {}
    for out in g.output:
        if builder.is_poisoned([out.name]):
            continue
        bound = ctx.env.get(out.name)
        if bound is None:
            builder.refuse(out.name, "the output is not computed by any imported node")
            continue
        if isinstance(bound, KeptMean):
            bound = bound.kept(builder)
        outputs[ident(out.name)] = bound
    # a pass-through output's identity node is named as the file names the node
    hints = {ident(o.name): ctx.hint(o.name, "identity") for o in g.output}
    graph = builder.finish(outputs, Path(label).stem if g.name == "" else g.name, hints)
    return numbered_stages(graph), evaluation


def _found(
    ctx: _Context, node: onnx.NodeProto, aliases: dict[str, str], regions: dict[str, Region]
) -> None:
    """Bind what the region finders made of ``node``: a reshape that is an identity by
    value, or the region whose output it computes (the other nodes of a region add
    nothing)."""
    if node.output[0] in aliases:
        ctx.env[node.output[0]] = ctx.value(aliases[node.output[0]])
        return
    for out in node.output:
        if out in regions:
            _region(ctx, regions[out])


def _region(ctx: _Context, region: Region) -> None:
    """Add a region's one IR node (see :mod:`grow_ir.imports.onnx_patterns`)."""
    if ctx.builder.is_poisoned(list(region.inputs)):
        ctx.builder.poisoned.add(region.output)
        return
    share = None if region.share is None else ctx.value(region.share)
    inputs = [ctx.value(i) for i in region.inputs]
    params = None if share is not None else region.params
    name = ctx.builder.add(
        region.op, inputs, region.name, region.attrs, params=params, share=share, name=region.name
    )
    ctx.env[region.output] = name


def _vtype(info: onnx.ValueInfoProto) -> TensorType:
    t = info.type.tensor_type
    if t.elem_type not in _DTYPES:
        raise GrowError(
            "unsupported input type",
            field=f"inputs.{info.name}",
            expected="float32, float16 or int64",
            found=onnx.TensorProto.DataType.Name(t.elem_type),
        )
    dims: list[int | str] = []
    for i, d in enumerate(t.shape.dim):
        if d.HasField("dim_value"):
            dims.append(int(d.dim_value))
        else:
            dims.append(ident(d.dim_param or f"dim{i}"))
    return TensorType(tuple(dims), _DTYPES[t.elem_type])


Rule = Callable[[_Context, onnx.NodeProto], None]


def _hint(ctx: _Context, node: onnx.NodeProto, op: str) -> str:
    """A stateless node's name, as ``from_torch`` names it (so that the blocks of a
    module list have the same local names): the path of the module the file records for
    ``node`` when that is a leaf module without parameters (``model.layers.0.mlp.act_fn``),
    else ``SCOPE.OP`` inside it (``transformer.h.0.add``); its output value's name in a
    file that records no module; in a file grow-ir wrote, the IR node it lowers."""
    if ctx.ours and node.name:  # the IR node it lowers (a graph output names the value)
        return node.name.split("/")[0]
    path = _scope_of(ctx, node)
    if not path:
        return node.output[0]
    return path if path in ctx.leaves else f"{path}.{op}"


def _scope_of(ctx: _Context, node: onnx.NodeProto) -> str:
    """The module path the file records for ``node`` ('' for the root module); for a node
    without that record in a file that has it for others (one the exporter's optimiser
    made, such as the ``Split`` that fuses Phi-3's two ``chunk`` slices), the innermost
    module holding every node that reads it."""
    if any(p.key == NAME_SCOPES for p in node.metadata_props):
        return scope(node)
    users = [u for o in node.output for u in ctx.consumers.get(o, [])]
    paths = [scope(u).split(".") for u in users]
    if not paths or [""] in paths:  # a file that records no modules, or a root-level user
        return ""
    common = paths[0]
    for p in paths[1:]:  # the modules every user's path starts with
        while p[: len(common)] != common:
            common = common[:-1]
    # a leaf module (an activation) reads it: the module around it holds the node
    while ".".join(common) in ctx.leaves:
        common = common[:-1]
    return ".".join(common)


def _part_hint(ctx: _Context, node: onnx.NodeProto, op: str, i: int, parts: int) -> str:
    """The name of part ``i`` of ``parts`` IR nodes that one ONNX node becomes: the last
    is named as :func:`_hint` says, the others after it with ``_i`` (or, inside a
    recorded module, uniquified alike)."""
    if _scope_of(ctx, node) or i == parts - 1:
        return _hint(ctx, node, op)
    return f"{node.output[0]}_{i}"


def _leaf_scopes(g: onnx.GraphProto) -> frozenset[str]:
    """The module paths the file records that hold no other recorded module and no
    initializer (stateless leaf modules: an activation, a dropout)."""
    paths = {scope(n) for n in g.node} - {""}
    inits = [i.name for i in g.initializer]
    inner = {p for p in paths if any(q.startswith(p + ".") for q in paths)}
    held = {p for p in paths if any(name.startswith(p + ".") for name in inits)}
    return frozenset(paths - inner - held)


def _bind_add(
    ctx: _Context, node: onnx.NodeProto, op: str, inputs: list[str], attrs=None, **layer: Any
) -> str:
    hint = layer.pop("hint", None) or _hint(ctx, node, op)
    name = ctx.builder.add(op, inputs, hint, attrs, **layer)
    ctx.env[node.output[0]] = name
    return name


def _pair(v: list[int]) -> int | tuple[int, int]:
    return v[0] if len(set(v)) == 1 else (v[0], v[1])


def _symmetric(pads: list[int], what: str) -> list[int]:
    n = len(pads) // 2
    if pads[:n] != pads[n:]:
        raise Unsupported(f"pads {what} asymmetrically ({pads})")
    return pads[:n]


def _conv(ctx: _Context, node: onnx.NodeProto) -> None:
    a = _attrs(node)
    if _text(a.get("auto_pad", "NOTSET")) != "NOTSET":
        raise Unsupported(f"uses auto_pad={a['auto_pad']!r}")
    x = ctx.value(node.input[0])
    w = ctx.const(node.input[1], "weight")
    nd = w.ndim - 2
    if nd not in (1, 2):
        raise Unsupported(f"is a {nd}-d convolution (grow-ir: 1-d and 2-d)")
    b = ctx.const(node.input[2], "bias") if len(node.input) > 2 and node.input[2] else None
    pads = _symmetric(list(a.get("pads", [0] * 2 * nd)), "")
    size = _pair if nd == 2 else (lambda v: v[0] if len(set(v)) == 1 else _bad(v))
    attrs = {
        "out_channels": int(w.shape[0]),
        "kernel_size": size(list(w.shape[2:])),
        "stride": size(list(a.get("strides", [1] * nd))),
        "padding": size(pads),
        "dilation": size(list(a.get("dilations", [1] * nd))),
        "groups": int(a.get("group", 1)),
        "bias": b is not None,
    }
    params = {"weight": _tensor(w)}
    if b is not None:
        params["bias"] = _tensor(b)
    _bind_add(ctx, node, f"conv{nd}d", [x], attrs, params=params, hint=_layer_name(node.input[1]))


def _conv_transpose(ctx: _Context, node: onnx.NodeProto) -> None:
    a = _attrs(node)
    if _text(a.get("auto_pad", "NOTSET")) != "NOTSET" or "output_shape" in a:
        raise Unsupported("sizes its output with auto_pad or output_shape")
    x = ctx.value(node.input[0])
    w = ctx.const(node.input[1], "weight")
    if w.ndim != 4:
        raise Unsupported(f"is a {w.ndim - 2}-d transposed convolution (grow-ir: 2-d)")
    b = ctx.const(node.input[2], "bias") if len(node.input) > 2 and node.input[2] else None
    groups = int(a.get("group", 1))
    attrs = {
        "out_channels": int(w.shape[1]) * groups,  # weight [in, out / groups, kh, kw]
        "kernel_size": _pair(list(w.shape[2:])),
        "stride": _pair(list(a.get("strides", [1, 1]))),
        "padding": _pair(_symmetric(list(a.get("pads", [0] * 4)), "")),
        "output_padding": _pair(list(a.get("output_padding", [0, 0]))),
        "groups": groups,
        "bias": b is not None,
        "dilation": _pair(list(a.get("dilations", [1, 1]))),
    }
    params = {"weight": _tensor(w)}
    if b is not None:
        params["bias"] = _tensor(b)
    hint = _layer_name(node.input[1])
    _bind_add(ctx, node, "conv_transpose2d", [x], attrs, params=params, hint=hint)


_RESIZE_MODES = {
    ("nearest", "asymmetric"): {"mode": "nearest"},
    ("linear", "half_pixel"): {"mode": "bilinear"},
    ("linear", "pytorch_half_pixel"): {"mode": "bilinear"},
    ("linear", "align_corners"): {"mode": "bilinear", "align_corners": True},
}
"""Resize's (mode, coordinate_transformation_mode) that are PyTorch's upsampling (for 2-D
bilinear, half_pixel and pytorch_half_pixel agree: PyTorch clamps as onnxruntime does)."""


def _resize(ctx: _Context, node: onnx.NodeProto) -> None:
    a = _attrs(node)
    how = (_text(a.get("mode", "nearest")), _text(a.get("coordinate_transformation_mode", "")))
    attrs = dict(_RESIZE_MODES.get(how, {}))
    if not attrs or (how[0] == "nearest" and _text(a.get("nearest_mode", "")) != "floor"):
        raise Unsupported(
            f"resizes with mode {how[0]!r}, coordinate_transformation_mode {how[1]!r} and "
            f"nearest_mode {_text(a.get('nearest_mode', 'round_prefer_floor'))!r} (grow-ir: "
            "PyTorch's nearest (asymmetric, floor) and bilinear)"
        )
    if a.get("antialias", 0) or a.get("exclude_outside", 0):
        raise Unsupported("resizes with antialias or exclude_outside")
    x = ctx.value(node.input[0])
    t = ctx.builder.types[x]
    axes = [int(v) % t.rank for v in a.get("axes", range(t.rank))]
    scales = node.input[2] if len(node.input) > 2 else ""
    if scales:
        given: list = ctx.const(scales, "scales").reshape(-1).tolist()
    elif (computed := sizes(ctx, node.input[3])) is not None:  # constant or from the shape
        given = computed
    else:
        raise Unsupported("takes its sizes from a computed value that is not a shape")
    by_axis = dict(zip(axes, given))
    unchanged = [1.0, 1.0] if scales else list(t.shape[:2])
    if t.rank != 4 or [by_axis.get(i, unchanged[i]) for i in (0, 1)] != unchanged:
        raise Unsupported(f"resizes {t} by {given} (grow-ir: the height and width of [N, C, H, W])")
    h, w = by_axis[2], by_axis[3]
    if scales:
        attrs["scale_factor"] = float(h) if h == w else (float(h), float(w))
    elif isinstance(h, int) and isinstance(w, int):
        attrs["size"] = _pair([h, w])
    else:
        raise Unsupported(f"resizes to the symbolic size {[h, w]} (grow-ir: a size known)")
    _bind_add(ctx, node, "upsample", [x], attrs)


def _bad(v: list[int]) -> int:
    raise Unsupported(f"has unequal sizes {v}")


def _gemm(ctx: _Context, node: onnx.NodeProto) -> None:
    a = _attrs(node)
    if a.get("alpha", 1.0) != 1.0 or a.get("beta", 1.0) != 1.0 or a.get("transA", 0):
        raise Unsupported("scales or transposes its input (alpha, beta, transA)")
    x = ctx.value(node.input[0])
    w = ctx.const(node.input[1], "weight")
    weight = w if a.get("transB", 0) else w.T
    bias = ctx.const(node.input[2], "bias") if len(node.input) > 2 and node.input[2] else None
    _linear(ctx, node, x, weight, bias, node.input[1])


def _linear(
    ctx: _Context,
    node: onnx.NodeProto,
    x: str,
    weight: np.ndarray,
    bias: np.ndarray | None,
    init: str,
    output: str | None = None,
) -> None:
    if bias is not None and bias.shape != (weight.shape[0],):
        raise Unsupported(f"adds a bias of shape {list(bias.shape)}, not [{weight.shape[0]}]")
    params = {"weight": _tensor(weight)}
    if bias is not None:
        params["bias"] = _tensor(bias)
    attrs = {"out_features": int(weight.shape[0]), "bias": bias is not None}
    name = ctx.builder.add("linear", [x], _layer_name(init), attrs, params=params)
    ctx.env[output or node.output[0]] = name


def _matmul(ctx: _Context, node: onnx.NodeProto) -> None:
    if averaging_matmul(ctx, node):
        return
    if node.input[1] not in ctx.consts or ctx.consts[node.input[1]].ndim != 2:
        a, b = _operand(ctx, node.input[0]), _operand(ctx, node.input[1])
        _bind_add(ctx, node, "matmul", [a, b])
        return
    x = ctx.value(node.input[0])
    w = ctx.const(node.input[1], "weight")
    if w.ndim != 2:
        raise Unsupported(f"multiplies by a rank-{w.ndim} constant (grow-ir: a matrix)")
    add = ctx.only_consumer(node.output[0])
    if add is not None and add.op_type == "Add":
        other = add.input[1] if add.input[0] == node.output[0] else add.input[0]
        b = ctx.consts.get(other)
        if b is not None and b.shape == (w.shape[1],):
            ctx.done.add(id(add))
            _linear(ctx, node, x, w.T, b, node.input[1], output=add.output[0])
            return
    _linear(ctx, node, x, w.T, None, node.input[1])


def _batchnorm(ctx: _Context, node: onnx.NodeProto) -> None:
    a = _attrs(node)
    if a.get("training_mode", 0):
        raise Unsupported("runs in training mode")
    x = ctx.value(node.input[0])
    scale, bias, mean, var = (ctx.const(i, "statistics") for i in node.input[1:5])
    params = {
        "weight": _tensor(scale),
        "bias": _tensor(bias),
        "running_mean": _tensor(mean),
        "running_var": _tensor(var),
        "num_batches_tracked": torch.tensor(0, dtype=torch.int64),
    }
    attrs: dict[str, Any] = {"eps": float32_decimal(a.get("epsilon", 1e-5))}
    if "momentum" in a:  # ONNX's momentum weighs the old statistics, PyTorch's the new
        attrs["momentum"] = float32_decimal(1.0 - a["momentum"])
    _bind_add(ctx, node, "batchnorm", [x], attrs, params=params, hint=_layer_name(node.input[3]))


def _layernorm(ctx: _Context, node: onnx.NodeProto) -> None:
    a = _attrs(node)
    x = ctx.value(node.input[0])
    rank = ctx.type(node.input[0]).rank
    if int(a.get("axis", -1)) % rank != rank - 1:
        raise Unsupported("normalises over more than the last axis")
    scale = ctx.const(node.input[1], "scale")
    bias = ctx.const(node.input[2], "bias") if len(node.input) > 2 and node.input[2] else None
    params = {"weight": _tensor(scale)}
    if bias is not None:
        params["bias"] = _tensor(bias)
    attrs = {"eps": float32_decimal(a.get("epsilon", 1e-5)), "bias": bias is not None}
    _bind_add(ctx, node, "layernorm", [x], attrs, params=params, hint=_layer_name(node.input[1]))


def _gather(ctx: _Context, node: onnx.NodeProto) -> None:
    if node.input[0] not in ctx.consts:
        _gather_value(ctx, node)
        return
    if int(_attrs(node).get("axis", 0)) != 0:
        raise Unsupported("is not a table lookup (rows of an initializer by index)")
    table = node.input[0]
    w = ctx.consts[table]
    ids = ctx.value(node.input[1])
    attrs: dict[str, Any] = {"num_embeddings": int(w.shape[0]), "embedding_dim": int(w.shape[1])}
    scaled = _scaled_by(ctx, node)
    if scaled is not None:  # the looked-up vectors times a constant (Gemma's)
        node, attrs["scale"] = scaled
        ctx.done.add(id(node))
    _bind_add(
        ctx, node, "embedding", [ids], attrs, params={"weight": _tensor(w)}, hint=_layer_name(table)
    )


def _scaled_by(ctx: _Context, node: onnx.NodeProto) -> tuple[onnx.NodeProto, float] | None:
    """The ``Mul`` that alone reads ``node``'s output and multiplies it by a positive
    float constant, and that constant (:func:`scalar_factor`); None otherwise."""
    mul = ctx.only_consumer(node.output[0])
    factor = None if mul is None else scalar_factor(mul, node.output[0], ctx.consts)
    return None if mul is None or factor is None else (mul, factor)


def _unary(op: str, **attrs_of: Callable[[dict], Any]) -> Rule:
    def rule(ctx: _Context, node: onnx.NodeProto) -> None:
        a = _attrs(node)
        attrs = {k: f(a) for k, f in attrs_of.items()}
        _bind_add(ctx, node, op, [ctx.value(node.input[0])], attrs)

    return rule


def _clip(ctx: _Context, node: onnx.NodeProto) -> None:
    def bound(i: int, default: float) -> float:
        if len(node.input) > i and node.input[i]:
            return float(ctx.const(node.input[i], "bound").reshape(()))
        return default

    low, high = bound(1, -np.inf), bound(2, np.inf)
    x = ctx.value(node.input[0])
    if (low, high) == (0.0, 6.0):
        _bind_add(ctx, node, "relu6", [x])
    elif (low, high) == (0.0, np.inf):
        _bind_add(ctx, node, "relu", [x])
    elif low < 0.0 < high and np.isfinite([low, high]).all():
        _bind_add(ctx, node, "hardtanh", [x], {"min_val": low, "max_val": high})
    else:
        raise Unsupported(f"clips to [{low}, {high}] (grow-ir: [0, 6], [0, inf) or around 0)")


def _hard_sigmoid(ctx: _Context, node: onnx.NodeProto) -> None:
    a = _attrs(node)
    alpha, beta = float(a.get("alpha", 0.2)), float(a.get("beta", 0.5))
    if not (np.isclose(alpha, 1 / 6, rtol=1e-6) and beta == 0.5):
        raise Unsupported(f"has alpha {alpha}, beta {beta} (PyTorch's: 1/6 and 0.5)")
    _bind_add(ctx, node, "hardsigmoid", [ctx.value(node.input[0])])


def _alias(ctx: _Context, node: onnx.NodeProto) -> None:
    if node.input[0] in ctx.consts:  # a learned tensor as a value (to_onnx's parameter)
        ctx.env[node.output[0]] = _operand(ctx, node.input[0])
        return
    ctx.env[node.output[0]] = ctx.value(node.input[0])


def _dropout(ctx: _Context, node: onnx.NodeProto) -> None:
    if len(node.output) > 1 and node.output[1]:
        raise Unsupported("returns its mask")
    _alias(ctx, node)


def _sigmoid(ctx: _Context, node: onnx.NodeProto) -> None:
    mul = ctx.only_consumer(node.output[0])
    if (
        mul is not None
        and mul.op_type == "Mul"
        and set(mul.input) == {node.input[0], node.output[0]}
    ):
        ctx.done.add(id(mul))
        name = ctx.builder.add("silu", [ctx.value(node.input[0])], _hint(ctx, mul, "silu"))
        ctx.env[mul.output[0]] = name
        return
    _bind_add(ctx, node, "sigmoid", [ctx.value(node.input[0])])


def _softmax(ctx: _Context, node: onnx.NodeProto) -> None:
    axis = int(_attrs(node).get("axis", -1))
    _bind_add(ctx, node, "softmax", [ctx.value(node.input[0])], {"dim": axis})


def _pool(op: str) -> Rule:
    def rule(ctx: _Context, node: onnx.NodeProto) -> None:
        _add_pool(ctx, node, op, node.input[0])

    return rule


def _add_pool(
    ctx: _Context,
    node: onnx.NodeProto,
    op: str,
    source: str,
    extra: Sequence[int] = (0, 0),
    counted: Sequence[int] = (0, 0),
) -> None:
    """Bind the pool ``node`` as an ``op`` node reading ONNX value ``source``: its end pads
    grown by ``extra``, its pads on both sides by ``counted``, counted in the average (a
    ``Pad`` that only the pool reads: :func:`_padded_pool`)."""
    a = _attrs(node)
    if _text(a.get("auto_pad", "NOTSET")) != "NOTSET":
        raise Unsupported(f"uses auto_pad={a['auto_pad']!r}")
    if len(node.output) > 1 and node.output[1]:
        raise Unsupported("returns indices")
    k = list(a["kernel_shape"])
    if len(k) != 2:
        raise Unsupported(f"pools over {len(k)} axes (grow-ir: 2)")
    strides, dilations = list(a.get("strides", [1, 1])), list(a.get("dilations", [1, 1]))
    pads = list(a.get("pads", [0] * 4))
    pads = [p + c for p, c in zip(pads, [*counted, *counted])]
    pads[2:] = [p + e for p, e in zip(pads[2:], extra)]
    attrs: dict[str, Any] = {
        "kernel_size": _pair(k),
        "stride": _pair(strides),
        "padding": _pair(pads[:2]),
        "ceil_mode": bool(a.get("ceil_mode", 0)),
    }
    counts_end = op == "avgpool2d" and bool(a.get("count_include_pad", 0))
    if op == "maxpool2d":
        attrs["dilation"] = _pair(dilations)
    else:
        attrs["count_include_pad"] = counts_end or any(counted)
    if pads[:2] != pads[2:]:
        _ceil_mode_pads(ctx.type(source), attrs, (k, strides, pads, dilations), counts_end)
    _bind_add(ctx, node, op, [ctx.value(source)], attrs)


def _ceil_mode_pads(
    t: TensorType, attrs: dict[str, Any], geometry: tuple[list[int], ...], counts_end: bool
) -> None:
    """Read a floor-mode pool of a value of type ``t`` with more padding at the end than
    at the start as PyTorch's ceil mode (``to_onnx`` writes PyTorch's ceil mode so, since
    ONNX's own keeps a last window that starts in the right padding, which PyTorch drops):
    ``ceil_mode`` set in ``attrs`` when PyTorch's ceil-mode output has the file's size on
    both axes (then the windows are the same: window ``i`` starts at ``i * stride - pad``).
    An average whose count includes the end padding (``counts_end``) would count the
    extra end padding too, which PyTorch does not.

    Raises:
        Unsupported: the pads are no such ceil mode.
    """
    k, strides, pads, dilations = geometry
    extent = t.shape[2:]
    why = f"pads asymmetrically ({pads}) other than as PyTorch's ceil mode"
    if attrs["ceil_mode"] or counts_end or len(extent) != 2:
        raise Unsupported(why)
    for i, size in enumerate(extent):
        begin, end = pads[i], pads[2 + i]
        if not isinstance(size, int) or end < begin:
            raise Unsupported(why)
        span = dilations[i] * (k[i] - 1) + 1
        want = (size + begin + end - span) // strides[i] + 1
        try:
            got = pool_out_size(size, k[i], strides[i], begin, dilations[i], True, "")
        except ShapeError:
            raise Unsupported(why) from None
        if got != want:
            raise Unsupported(why)
    attrs["ceil_mode"] = True


def _global_avgpool(ctx: _Context, node: onnx.NodeProto) -> None:
    ctx.env[node.output[0]] = KeptMean(ctx.value(node.input[0]), ctx.hint(node.output[0], "mean"))


def _reduce_mean(ctx: _Context, node: onnx.NodeProto) -> None:
    a = _attrs(node)
    rank = ctx.type(node.input[0]).rank
    if len(node.input) > 1 and node.input[1]:
        axes = [int(v) for v in ctx.const(node.input[1], "axes").reshape(-1)]
    else:
        axes = list(a.get("axes", range(rank)))
    axes = sorted(int(v) % rank for v in axes)
    if axes != list(range(2, rank)) or rank < 3 or (a.get("keepdims", 1) and rank != 4):
        attrs = {"dim": axes, "keepdim": bool(a.get("keepdims", 1))}
        _bind_add(ctx, node, "mean", [ctx.value(node.input[0])], attrs)
        return
    if a.get("keepdims", 1):
        ctx.env[node.output[0]] = KeptMean(
            ctx.value(node.input[0]), ctx.hint(node.output[0], "mean")
        )
    elif a.get("keepdims", 1):
        raise Unsupported("keeps the axis of a 1-d mean")
    else:
        _bind_add(ctx, node, "global_avgpool", [ctx.value(node.input[0])])


def _fold(ctx: _Context, node: onnx.NodeProto, after: list, rest: int | None = None) -> None:
    """Bind a reshape of the node's first input to ``after``: a kept mean's flatten, an
    alias (also of the value a reshape came from: Reshape to ``[-1]``, then back), or a
    flatten, unflatten or reshape node. ``rest``: the axis the file sizes with ``-1``,
    kept as ``-1`` in an unflatten's ``sizes`` (as the file says it)."""
    source = node.input[0]
    bound = ctx.env.get(source)
    before = list(ctx.type(source).shape)
    if isinstance(bound, KeptMean) and len(after) == 2:
        ctx.env[node.output[0]] = bound.mean(ctx.builder)
        return
    if after == before:
        _alias(ctx, node)
        return
    origin = ctx.reshaped.get(bound) if isinstance(bound, str) else None
    if origin is not None and list(ctx.builder.types[origin].shape) == after:
        ctx.env[node.output[0]] = origin
        return
    axes = folded_axes(before, after)
    if axes is not None:
        op, attrs = "flatten", {"start_dim": axes[0], "end_dim": axes[1]}
    elif (split := split_axis(tuple(before), tuple(after))) is not None:
        dim, parts = split
        if rest is not None and dim <= rest < dim + len(parts):
            parts[rest - dim] = -1
        op, attrs = "unflatten", {"dim": dim, "sizes": parts}
    elif any(not isinstance(d, int) for d in after[1:]) or "?" in after:
        raise Unsupported(f"reshapes {before} to {after} (grow-ir: sizes known after axis 0)")
    else:
        shape = [-1 if i == 0 and not isinstance(d, int) else d for i, d in enumerate(after)]
        op, attrs = "reshape", {"shape": shape}
    value = ctx.value(source)
    ctx.reshaped[_bind_add(ctx, node, op, [value], attrs)] = value


def _flatten(ctx: _Context, node: onnx.NodeProto) -> None:
    axis = int(_attrs(node).get("axis", 1))
    shape = list(ctx.type(node.input[0]).shape)
    axis %= max(1, len(shape))
    if axis != 1 and not isinstance(ctx.env.get(node.input[0]), KeptMean):
        raise Unsupported(f"flattens at axis {axis} (grow-ir: after the batch axis)")
    folded = shape[1:]
    size: int | str = "?"
    if all(isinstance(d, int) for d in folded):
        size = int(np.prod(folded)) if folded else 1
    _fold(ctx, node, [shape[0], size])


def _reshape(ctx: _Context, node: onnx.NodeProto) -> None:
    """``Reshape`` to a constant shape or to one computed from the shapes (``Shape``
    slices and constants, as ``to_onnx`` writes ``unflatten`` and a flatten of several
    symbolic trailing dims): the sizes it gives, read as a fold (:func:`_fold`)."""
    target = sizes(ctx, node.input[1]) if node.input[1] not in ctx.consts else None
    if target is None:
        target = [int(v) for v in ctx.const(node.input[1], "shape").reshape(-1)]
    before = list(ctx.type(node.input[0]).shape)
    allowzero = int(_attrs(node).get("allowzero", 0))
    after: list = [before[i] if v == 0 and not allowzero else v for i, v in enumerate(target)]
    rest = after.index(-1) if after.count(-1) == 1 else None
    if rest is not None:
        after[rest] = _rest(before, [d for i, d in enumerate(after) if i != rest])
    _fold(ctx, node, after, rest)


def _rest(before: list, known: list) -> int | str:
    """The size a reshape's ``-1`` takes: the element count of ``before`` over that of
    the ``known`` sizes, when the known symbolic dims are among ``before``'s and what is
    left is a number or one symbolic dim; else ``-1`` (unknown)."""
    left = [str(d) for d in before if not isinstance(d, int)]
    for d in known:
        if not isinstance(d, int):
            if str(d) not in left:
                return -1
            left.remove(str(d))
    total = int(np.prod([d for d in before if isinstance(d, int)]))
    part = int(np.prod([d for d in known if isinstance(d, int)]))
    if part <= 0 or total % part:
        return -1
    if not left:
        return total // part
    if len(left) == 1 and total == part:
        return next(d for d in before if str(d) == left[0])
    return -1


def _squeeze(ctx: _Context, node: onnx.NodeProto) -> None:
    bound = ctx.env.get(node.input[0])
    if isinstance(bound, KeptMean):
        ctx.env[node.output[0]] = bound.mean(ctx.builder)
        return
    x = ctx.type(node.input[0])
    axes = _axes_of(ctx, node, x.rank)
    if axes is None:
        axes = [i for i, d in enumerate(x.shape) if d == 1]
    _bind_add(ctx, node, "squeeze", [ctx.value(node.input[0])], {"dim": axes})


def _operand(ctx: _Context, name: str, batch_of: str | None = None) -> str:
    """The value of an operand: an initializer of rank >= 1 is a learned tensor (a
    ``parameter`` node named after it, built once: a layer scale, a class token), with
    ``batch_of`` its first axis expanded to that value's batch."""
    array = ctx.consts.get(name)
    if array is None:
        return ctx.value(name)
    if array.ndim == 0 or array.dtype != np.float32:
        raise Unsupported(f"takes the constant '{name}' where grow-ir needs a value")
    key = ("tensor", name, batch_of or "")
    if key not in ctx.builder.built:
        ctx.builder.built[key] = ctx.builder.add(
            "parameter",
            [batch_of] if batch_of else [],
            _layer_name(name) if name.endswith(".weight") else name,
            {"shape": list(array.shape)},
            params={"weight": _tensor(array)},
        )
    return ctx.builder.built[key]


def _binary(op: str) -> Rule:
    def rule(ctx: _Context, node: onnx.NodeProto) -> None:
        a, b = _operand(ctx, node.input[0]), _operand(ctx, node.input[1])
        _bind_add(ctx, node, op, [a, b])

    return rule


def _axes_of(ctx: _Context, node: onnx.NodeProto, rank: int) -> list[int] | None:
    """The axes of a Reduce*/Squeeze/Unsqueeze node (an input from opset 13/18 on, an
    attribute before), in ``[0, rank)``; None when none are given."""
    if len(node.input) > 1 and node.input[1]:
        axes = [int(v) for v in ctx.const(node.input[1], "axes").reshape(-1)]
    elif "axes" in _attrs(node):
        axes = [int(v) for v in _attrs(node)["axes"]]
    else:
        return None
    return sorted(a % rank for a in axes)


def _reduce_sum(ctx: _Context, node: onnx.NodeProto) -> None:
    rank = ctx.type(node.input[0]).rank
    axes = _axes_of(ctx, node, rank)
    keep = bool(_attrs(node).get("keepdims", 1))
    attrs = {"dim": axes if axes is not None else list(range(rank)), "keepdim": keep}
    _bind_add(ctx, node, "sum", [ctx.value(node.input[0])], attrs)


def _transpose(ctx: _Context, node: onnx.NodeProto) -> None:
    rank = ctx.type(node.input[0]).rank
    perm = [int(v) for v in _attrs(node).get("perm", reversed(range(rank)))]
    if perm == list(range(rank)):
        _alias(ctx, node)
        return
    _bind_add(ctx, node, "permute", [ctx.value(node.input[0])], {"dims": perm})


def _unsqueeze(ctx: _Context, node: onnx.NodeProto) -> None:
    axes = _axes_of(ctx, node, ctx.type(node.input[0]).rank + 1) or []
    value = ctx.value(node.input[0])
    for i, axis in enumerate(axes):
        hint = _part_hint(ctx, node, "unsqueeze", i, len(axes))
        value = ctx.builder.add("unsqueeze", [value], hint, {"dim": axis})
    ctx.env[node.output[0]] = value


def _gather_value(ctx: _Context, node: onnx.NodeProto) -> None:
    """``Gather`` of constant indices from a value: one index is a select; indices that
    run over the whole axis in order only reshape it (``as_strided`` as torch.onnx.export
    writes it for a view: Reshape to ``[-1]``, Gather of ``arange`` laid out in a shape); a
    1-d run with a constant step is a slice."""
    index = ctx.consts.get(node.input[1])
    if index is None:
        raise Unsupported("gathers by computed indices (grow-ir: constant indices)")
    t = ctx.type(node.input[0])
    axis = int(_attrs(node).get("axis", 0)) % t.rank
    if index.ndim == 0:
        attrs = {"dim": axis, "index": int(index)}
        _bind_add(ctx, node, "select", [ctx.value(node.input[0])], attrs)
        return
    size, flat = t.shape[axis], index.reshape(-1).astype(np.int64)
    if isinstance(size, int) and np.array_equal(flat, np.arange(size)):
        _fold(ctx, node, [*t.shape[:axis], *(int(d) for d in index.shape), *t.shape[axis + 1 :]])
        return
    steps = np.diff(flat)
    if index.ndim == 1 and len(flat) > 1 and (steps == steps[0]).all() and steps[0] > 0:
        start, step = int(flat[0]), int(steps[0])
        if start >= 0:
            end = start + step * (len(flat) - 1) + 1
            attrs = {"dim": axis, "start": start, "end": end, "step": step}
            _bind_add(ctx, node, "slice", [ctx.value(node.input[0])], attrs)
            return
    raise Unsupported(
        f"gathers indices {flat[:8].tolist()}{'...' if len(flat) > 8 else ''} along axis "
        f"{axis} (grow-ir: one index, the whole axis in order, or an evenly spaced run)"
    )


def _slice(ctx: _Context, node: onnx.NodeProto) -> None:
    x = ctx.type(node.input[0])
    starts, ends = (ctx.const(node.input[i], "bounds").reshape(-1) for i in (1, 2))
    axes = (
        ctx.const(node.input[3], "axes").reshape(-1)
        if len(node.input) > 3 and node.input[3]
        else np.arange(len(starts))
    )
    steps = (
        ctx.const(node.input[4], "steps").reshape(-1)
        if len(node.input) > 4 and node.input[4]
        else np.ones(len(starts), dtype=np.int64)
    )
    value = ctx.value(node.input[0])
    cuts = list(zip(axes, starts, ends, steps))
    for i, (axis, start, end, step) in enumerate(cuts):
        size = x.shape[int(axis) % x.rank]
        stop = None if isinstance(size, int) and int(end) >= size else int(end)
        attrs = {"dim": int(axis), "start": int(start), "end": stop, "step": int(step)}
        value = ctx.builder.add(
            "slice", [value], _part_hint(ctx, node, "slice", i, len(cuts)), attrs
        )
    ctx.env[node.output[0]] = value


def _split(ctx: _Context, node: onnx.NodeProto) -> None:
    """``Split``: one ``slice`` per output (grow-ir's nodes have one output each), at the
    sizes of its ``split`` input, else in equal pieces (the last one smaller)."""
    x = ctx.type(node.input[0])
    axis = int(_attrs(node).get("axis", 0)) % x.rank
    size = x.shape[axis]
    count = len(node.output)
    if len(node.input) > 1 and node.input[1]:
        sizes = [int(v) for v in ctx.const(node.input[1], "split").reshape(-1)]
    elif isinstance(size, int):
        piece = -(-size // count)
        sizes = [piece] * (count - 1) + [size - piece * (count - 1)]
    else:
        raise Unsupported(f"splits axis {axis}, of unknown size, in equal pieces")
    value, start = ctx.value(node.input[0]), 0
    for i, (out, length) in enumerate(zip(node.output, sizes)):
        end = start + length
        attrs = {"dim": axis, "start": start, "end": None if end == size else end, "step": 1}
        hint = _part_hint(ctx, node, "slice", i, count)
        ctx.env[out] = ctx.builder.add("slice", [value], hint, attrs)
        start = end


def _pad(ctx: _Context, node: onnx.NodeProto) -> None:
    a = _attrs(node)
    if _text(a.get("mode", "constant")) != "constant":
        raise Unsupported(f"pads in mode {_text(a['mode'])!r} (grow-ir: constant)")
    if len(node.input) > 3 and node.input[3]:
        raise Unsupported("pads some axes only (an axes input)")
    pads = [int(v) for v in ctx.const(node.input[1], "pads").reshape(-1)]
    value = 0.0
    if len(node.input) > 2 and node.input[2]:
        value = float(ctx.const(node.input[2], "value").reshape(-1)[0])
    rank = len(pads) // 2
    if _padded_pool(ctx, node, pads, value):
        return
    pairs: list[int] = []
    for axis in reversed(range(rank)):  # PyTorch's order: the last axis first
        pairs += [pads[axis], pads[rank + axis]]
    while pairs[-2:] == [0, 0] and len(pairs) > 2:
        pairs = pairs[:-2]
    _bind_add(ctx, node, "pad", [ctx.value(node.input[0])], {"pad": pairs, "value": value})


def _padded_pool(ctx: _Context, node: onnx.NodeProto, pads: list[int], value: float) -> bool:
    """Bind a ``Pad`` of the height and width of ``[N, C, H, W]`` that only a pool reads,
    and the pool, as one pool as ``to_onnx`` writes PyTorch's ceil mode: a ``MaxPool``
    after a ``Pad`` of ``-inf`` at the end; an ``AveragePool`` not counting its own pads
    (at the end only) after a ``Pad`` of zeros on both sides, which it counts (a
    ``count_include_pad`` average). False, binding nothing, for any other pad or where the
    pool is no PyTorch pool of the unpadded value."""
    pool = ctx.only_consumer(node.output[0])
    if pool is None or len(pads) != 8 or any(pads[:2]) or any(pads[4:6]):
        return False
    if node.output[0] in {o.name for o in ctx.model.graph.output}:
        return False
    begin, end = pads[2:4], pads[6:8]
    counts = _attrs(pool).get("count_include_pad", 0)
    if pool.op_type == "MaxPool" and value == -np.inf and not any(begin):
        op, extra, counted = "maxpool2d", end, [0, 0]
    elif pool.op_type == "AveragePool" and value == 0.0 and begin == end and not counts:
        if any(list(_attrs(pool).get("pads", [0] * 4))[:2]):
            return False
        op, extra, counted = "avgpool2d", [0, 0], begin
    else:
        return False
    try:
        _add_pool(ctx, pool, op, node.input[0], extra, counted)
    except (Unsupported, ShapeError):  # a pad and a pool, as the file has them
        return False
    ctx.done.add(id(pool))
    return True


def _log_softmax(ctx: _Context, node: onnx.NodeProto) -> None:
    axis = int(_attrs(node).get("axis", -1))
    _bind_add(ctx, node, "log_softmax", [ctx.value(node.input[0])], {"dim": axis})


def _concat(ctx: _Context, node: onnx.NodeProto) -> None:
    values = [_operand(ctx, i) for i in node.input]  # a constant: a learned tensor
    axis = int(_attrs(node)["axis"])
    if len(values) == 1:
        ctx.env[node.output[0]] = values[0]
        return
    _bind_add(ctx, node, "concat", values, {"dim": axis})


RULES: dict[str, Rule] = {
    "Conv": _conv,
    "ConvTranspose": _conv_transpose,
    "Resize": _resize,
    "Gemm": _gemm,
    "MatMul": _matmul,
    "BatchNormalization": _batchnorm,
    "LayerNormalization": _layernorm,
    "Gather": _gather,
    "GatherND": gathered_pooling,
    "Relu": _unary("relu"),
    "Tanh": _unary("tanh"),
    "Clip": _clip,
    "HardSwish": _unary("hardswish"),
    "HardSigmoid": _hard_sigmoid,
    "LeakyRelu": _unary(
        "leaky_relu", negative_slope=lambda a: float32_decimal(a.get("alpha", 0.01))
    ),
    "Elu": _unary("elu", alpha=lambda a: float32_decimal(a.get("alpha", 1.0))),
    "Sigmoid": _sigmoid,
    "Gelu": _unary("gelu", approximate=lambda a: _text(a.get("approximate", "none"))),
    "Softmax": _softmax,
    "Identity": _alias,
    "Dropout": _dropout,
    "MaxPool": _pool("maxpool2d"),
    "AveragePool": _pool("avgpool2d"),
    "GlobalAveragePool": _global_avgpool,
    "ReduceMean": _reduce_mean,
    "Flatten": _flatten,
    "Reshape": _reshape,
    "Squeeze": _squeeze,
    "Add": _binary("add"),
    "Mul": _binary("mul"),
    "Sub": _binary("sub"),
    "Div": _binary("div"),
    "ReduceSum": _reduce_sum,
    "Transpose": _transpose,
    "Unsqueeze": _unsqueeze,
    "Slice": _slice,
    "Split": _split,
    "Pad": _pad,
    "LogSoftmax": _log_softmax,
    "Concat": _concat,
    "Shape": shape,
    "Range": range_rule,
    "Expand": expand_rule,
}
"""ONNX op type -> rule."""


def _check(graph: Graph, proto: onnx.ModelProto, evaluation: Evaluation | None) -> None:
    """Raise CheckFailed unless ``graph`` computes the file's outputs on random inputs
    (the file run by the session that evaluated it, else by a new one)."""
    import onnxruntime as ort

    from grow_ir.backends.torch import to_torch
    from grow_ir.probes import random_inputs

    inputs = random_inputs(graph)
    names = [
        i.name for i in proto.graph.input if i.name not in {x.name for x in proto.graph.initializer}
    ]
    feed = {n: inputs[g].numpy() for n, g in zip(names, graph.inputs)}
    if evaluation is not None:
        want = evaluation.run([o.name for o in proto.graph.output], feed)
    else:
        options = ["CPUExecutionProvider"]
        session = ort.InferenceSession(proto.SerializeToString(), providers=options)
        want = session.run(None, feed)
    with torch.no_grad():
        got = to_torch(graph).eval()(**inputs)
    got_list = list(got.values()) if isinstance(got, dict) else [got]
    for (out, _), g, w in zip(graph.outputs.items(), got_list, want):
        w64 = torch.from_numpy(np.asarray(w)).double()
        err = (g.double() - w64).abs().max().item() / max(1.0, w64.abs().max().item())
        if not err <= TOLERANCE:
            raise CheckFailed(
                "the imported graph computes another function than the ONNX file",
                field=f"outputs.{out}",
                expected=f"a relative error of at most {TOLERANCE:g} against onnxruntime",
                found=f"{err:.3g}",
            )
