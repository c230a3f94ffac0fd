"""The importer's table: which ATen op (of a ``torch.export`` program) becomes which IR op.

One rule per ATen overload, like a backend's lowering table in reverse. A rule reads the
fx node's arguments, adds IR nodes through :class:`Context` and binds the fx value to an IR
value, or raises :class:`Unsupported` with the reason (the message names the module).
Ops that only rename a value (``clone``, ``alias``, a ``view`` to the same shape) bind to
their input and add nothing.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx, nn

from grow_ir.errors import GrowError
from grow_ir.imports.builder import GraphBuilder, clean_name, folded_axes
from grow_ir.ir.types import DTYPES, TensorType

aten = torch.ops.aten


class Unsupported(Exception):
    """A construct has no grow-ir op; ``reason`` completes ``<op> ...``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class KeptMean:
    """A spatial mean of the IR value ``source`` kept as ``[N, C, 1, 1]``, not yet built.

    ``adaptive_avg_pool2d(x, 1)`` and ``mean(x, [2, 3], keepdim=True)`` are what models
    compute before ``flatten``: that pair becomes one ``global_avgpool`` (:meth:`mean`).
    Any other use reads the kept axes, an ``adaptive_avgpool2d`` node (:meth:`kept`;
    squeeze-excitation gates). Each is built once, on first use.
    """

    source: str
    hint: str

    def mean(self, builder: GraphBuilder) -> str:
        """The ``[N, C]`` value: a global_avgpool node."""
        return self._once(builder, "global_avgpool", {})

    def kept(self, builder: GraphBuilder) -> str:
        """The ``[N, C, 1, 1]`` value: an adaptive_avgpool2d node of output size 1."""
        return self._once(builder, "adaptive_avgpool2d", {"output_size": 1})

    def type(self, builder: GraphBuilder) -> TensorType:
        """The type of the kept value, ``[N, C, 1, 1]``."""
        t = builder.types[self.source]
        return TensorType((*t.shape[:2], 1, 1), t.dtype)

    def _once(self, builder: GraphBuilder, op: str, attrs: dict) -> str:
        key = (self.source, self.hint, op)
        if key not in builder.built:
            builder.built[key] = builder.add(op, [self.source], self.hint, attrs)
        return builder.built[key]


@dataclass
class Context:
    """What a rule may read and do while one program is converted."""

    builder: GraphBuilder
    root: nn.Module
    fqns: Mapping[str, str]  # placeholder name -> state_dict key
    env: dict[str, str | KeptMean] = field(default_factory=dict)
    constants: set[str] = field(default_factory=set)
    batch: int | None = None
    layers: dict[str, tuple[str, str, dict, dict]] = field(default_factory=dict)
    aliases: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # tied tensors' names
    owners: dict[str, str] = field(default_factory=dict)  # state_dict key -> node holding it
    evaluation: Any = None  # torch_values.Evaluation of the program

    # ---- reading the fx node ------------------------------------------------------------

    def where(self, node: fx.Node) -> str:
        """``path (Class)`` of the innermost module that ran ``node``."""
        path, cls = self._scope(node)
        return f"{path or '<root>'} ({cls.rsplit('.', 1)[-1]})"

    def _scope(self, node: fx.Node) -> tuple[str, str]:
        stack = node.meta.get("nn_module_stack") or {}
        if not stack:
            return "", type(self.root).__name__
        path, cls = list(stack.values())[-1]
        cls = cls if isinstance(cls, str) else f"{cls.__module__}.{cls.__qualname__}"
        return path, cls

    def value(self, arg: Any) -> str:
        """The IR value of a tensor argument."""
        if not isinstance(arg, fx.Node):
            raise Unsupported(f"takes a constant operand ({arg!r}) where grow-ir needs a value")
        if arg.name in self.fqns:
            return self.tensor_value(self.fqns[arg.name])
        bound = self.env.get(arg.name)
        if isinstance(bound, KeptMean):
            return bound.kept(self.builder)
        if bound is None:
            raise Unsupported(f"reads '{arg.name}', which has no grow-ir value")
        return bound

    def tensor_value(self, key: str, batch_of: str | None = None) -> str:
        """A ``parameter`` node whose value is the module's parameter ``key`` (a class
        token, a positional table, a layer scale), built once; with ``batch_of`` its first
        axis is expanded to that value's batch. Buffers are refused: a ``parameter`` learns.
        """
        if key not in dict(self.root.named_parameters()):
            raise Unsupported(
                f"reads buffer '{key}' as a value (grow-ir: parameters only; if forward "
                "reads it in place of an argument left out, pass that argument)"
            )
        cache = ("tensor", key, batch_of or "")
        if cache not in self.builder.built:
            t = self.builder.tensors[key]
            name = self.builder.add(
                "parameter",
                [batch_of] if batch_of else [],
                key,
                {"shape": list(t.shape)},
                params={"weight": t},
                name=key if batch_of is None else None,
            )
            self.builder.built[cache] = name
        return self.builder.built[cache]

    def first_input(self) -> str:
        """The first graph input (what positions and expanded tensors take the batch or
        the length from)."""
        if not self.builder.inputs:
            raise Unsupported("needs a graph input to take its size from")
        return next(iter(self.builder.inputs))

    def positions(self, node: fx.Node, length: int, batch_axis: bool) -> str:
        """A ``positions`` node counting ``0..length-1`` along the first input's axis of
        that length (after the batch axis), ``[1, L]`` with ``batch_axis``; built once."""
        x = self.first_input()
        shape = self.builder.types[x].shape
        axis = next((i for i, d in enumerate(shape) if i > 0 and d == length), None)
        if axis is None:
            raise Unsupported(f"counts to {length}, which is no axis of input '{x}'")
        key = ("positions", x, axis, batch_axis)
        if key not in self.builder.built:
            attrs = {"dim": axis, "batch_axis": batch_axis}
            hint = self.hint(node, "positions")
            self.builder.built[key] = self.builder.add("positions", [x], hint, attrs)
        return self.builder.built[key]

    def resolve(self, node: fx.Node, label: str) -> str:
        """The IR value an output names; a kept mean is refused there."""
        bound = self.env[node.name]
        return bound.kept(self.builder) if isinstance(bound, KeptMean) else bound

    def param(self, arg: Any) -> str | None:
        """The state_dict key of a parameter argument, None for None; else Unsupported."""
        if arg is None:
            return None
        if isinstance(arg, fx.Node) and arg.name in self.fqns:
            return self.fqns[arg.name]
        raise Unsupported("takes its weight from a computed value, not from a parameter")

    def shape(self, arg: fx.Node) -> tuple[int, ...]:
        """The concrete shape torch.export recorded for a value."""
        return tuple(int(d) for d in arg.meta["val"].shape)

    def hint(self, node: fx.Node, short: str) -> str:
        """A name for a stateless node: a stateless leaf module's own path (``layer1.relu``),
        else ``SCOPE.OP`` inside the module that ran it (``layer1.0.add``), or ``SCOPE_OP``
        beside it when that module holds parameters itself (``features.0.1_permute``)."""
        path, _ = self._scope(node)
        if path:
            try:
                mod = self.root.get_submodule(path)
            except AttributeError:
                mod = None
            leaf = mod is not None and not list(mod.children()) and not mod.state_dict()
            if leaf:
                return path
            # a module with parameters of its own is itself a layer node named ``path``
            # (torchvision's LayerNorm2d): its other steps cannot live inside that name
            own = mod is not None and next(mod.parameters(recurse=False), None) is not None
            return f"{path}_{short}" if own else f"{path}.{short}"
        return short

    # ---- building ---------------------------------------------------------------------

    def bind(self, node: fx.Node, value: str | KeptMean) -> None:
        """Make ``node`` stand for an IR value."""
        self.env[node.name] = value

    def add(
        self, node: fx.Node, op: str, inputs: list[str], attrs: dict | None = None, short: str = ""
    ) -> str:
        """Add a stateless IR node for ``node`` and bind it."""
        # export names a value after the call that made it (max_pool2d_3): keep the call
        name = self.builder.add(op, inputs, self.hint(node, short or _call_name(node)), attrs)
        self.bind(node, name)
        return name

    def add_layer(
        self, node: fx.Node, op: str, inputs: list[str], attrs: dict, params: dict[str, str | None]
    ) -> str:
        """Add a node with parameters, named by the module they belong to.

        ``params`` maps the op's local names to state_dict keys (the others are looked up
        under the same module). A module called again becomes a node that shares the
        first call's parameters.
        """
        own, _ = self._scope(node)
        keys = {k: self._own_key(v, own, k) for k, v in params.items() if v is not None}
        first = next(iter(keys.values()))
        path = first.rpartition(".")[0] or clean_name(first)
        previous = self.layers.get(path)
        tie = self._tie(op, attrs, inputs, keys)
        if previous is not None and previous[1:] == (op, attrs, keys):
            name = self.builder.add(op, inputs, path, attrs, share=previous[0])
        elif tie is not None:
            name = self.builder.add(op, inputs, path, attrs, share=tie, name=path)
        else:
            tensors = self.builder.tensors
            from grow_ir.ir.ops import OPS

            opdef = OPS[op]
            typed = opdef.attrs.model_validate(attrs)
            specs = opdef.params(typed, [self.builder.types[i] for i in inputs])
            values = {}
            for local in specs:
                key = keys.get(local, f"{path}.{local}")
                if key not in tensors:
                    raise Unsupported(f"needs '{key}', which the module's state_dict lacks")
                values[local] = tensors[key]
            name = self.builder.add(op, inputs, path, attrs, params=values, name=path)
            self.layers[path] = (name, op, attrs, keys)
            for key in keys.values():
                for alias in self.aliases.get(key, (key,)):
                    self.owners.setdefault(alias, name)
        self.bind(node, name)
        return name

    def _own_key(self, key: str, own: str, local: str) -> str:
        """The name a tied tensor has in the module that reads it: torch.export names a
        tensor tied to another by one of its names (GPT-2's embedding reads
        ``lm_head.weight``); the node is named after its own module's one."""
        mine = f"{own}.{local}"
        return mine if own and mine in self.aliases.get(key, ()) else key

    def _tie(self, op: str, attrs: dict, inputs: list[str], keys: dict[str, str]) -> str | None:
        """The node that already holds these tensors under another name (a head tied to the
        embedding), when this node's parameters have the same shapes: it shares them."""
        owners = {self.owners.get(k) for k in keys.values()}
        if len(owners) != 1 or None in owners:
            return None
        (owner,) = owners
        from grow_ir.ir.ops import OPS

        node = next(n for n in self.builder.nodes if n.name == owner)
        mine = OPS[op].params(
            OPS[op].attrs.model_validate(attrs), [self.builder.types[i] for i in inputs]
        )
        theirs = node.opdef.params(node.attrs, [self.builder.types[i] for i in node.inputs])
        return owner if mine == theirs and set(mine) == set(keys) else None

    def check_shape(self, node: fx.Node) -> None:
        """Refuse a conversion whose inferred type differs from what torch recorded."""
        bound = self.env.get(node.name)
        if (
            bound is None
            or "val" not in node.meta
            or not isinstance(node.meta["val"], torch.Tensor)
        ):
            return
        if isinstance(bound, KeptMean):
            return
        t = self.builder.types[bound]
        shape = tuple(self.batch if d == "batch" else d for d in t.shape)
        want = node.meta["val"]
        if shape != tuple(want.shape) or DTYPES[t.dtype] != want.dtype:
            self.builder.refuse(
                self.where(node),
                f"{node.target} was imported as {t} but torch computes "
                f"{list(want.shape)} {want.dtype}",
                [node.name],
            )


def _call_name(node: fx.Node) -> str:
    return re.sub(r"_[0-9]+$", "", node.name)


def arg(node: fx.Node, i: int, name: str, default: Any = None) -> Any:
    """Argument ``i`` (keyword ``name``) of an fx call, or ``default``."""
    if len(node.args) > i:
        return node.args[i]
    return node.kwargs.get(name, default)


Rule = Callable[[Context, fx.Node], None]


def _single(values: Any, what: str) -> int:
    """One int for a size given as an int or equal entries ([3, 3] -> 3)."""
    if isinstance(values, int):
        return values
    vals = list(values)
    if len(set(vals)) != 1:
        raise Unsupported(f"has a non-square {what} {vals}")
    return int(vals[0])


def _pair(values: Any) -> int | tuple[int, int]:
    """An int for equal pairs, else the pair (conv2d and pooling attributes)."""
    if isinstance(values, int):
        return values
    vals = [int(v) for v in values]
    if len(vals) == 1:
        return vals[0]
    return vals[0] if vals[0] == vals[1] else (vals[0], vals[1])


# ---- layers with parameters -------------------------------------------------------------


def _conv(nd: int) -> Rule:
    op = f"conv{nd}d"

    def rule(ctx: Context, node: fx.Node) -> None:
        x = ctx.value(node.args[0])
        weight, bias = ctx.param(node.args[1]), ctx.param(arg(node, 2, "bias"))
        w = ctx.builder.tensors[weight]
        size = _pair if nd == 2 else (lambda v: _single(v, "size"))
        padding = arg(node, 4, "padding", 0)
        attrs: dict[str, Any] = {
            "out_channels": int(w.shape[0]),
            "kernel_size": size(w.shape[2:]),
            "stride": size(arg(node, 3, "stride", 1)),
            "padding": padding if isinstance(padding, str) else size(padding),
            "dilation": size(arg(node, 5, "dilation", 1)),
            "groups": int(arg(node, 6, "groups", 1)),
            "bias": bias is not None,
        }
        ctx.add_layer(node, op, [x], attrs, {"weight": weight, "bias": bias})

    return rule


def _conv_transpose(ctx: Context, node: fx.Node) -> None:
    x = ctx.value(node.args[0])
    weight, bias = ctx.param(node.args[1]), ctx.param(arg(node, 2, "bias"))
    w = ctx.builder.tensors[weight]
    groups = int(arg(node, 6, "groups", 1))
    attrs: dict[str, Any] = {
        "out_channels": int(w.shape[1]) * groups,  # weight [in, out / groups, kh, kw]
        "kernel_size": _pair(w.shape[2:]),
        "stride": _pair(arg(node, 3, "stride", 1)),
        "padding": _pair(arg(node, 4, "padding", 0)),
        "output_padding": _pair(arg(node, 5, "output_padding", 0)),
        "groups": groups,
        "bias": bias is not None,
        "dilation": _pair(arg(node, 7, "dilation", 1)),
    }
    ctx.add_layer(node, "conv_transpose2d", [x], attrs, {"weight": weight, "bias": bias})


def _linear(ctx: Context, node: fx.Node) -> None:
    x = ctx.value(node.args[0])
    weight, bias = ctx.param(node.args[1]), ctx.param(arg(node, 2, "bias"))
    w = ctx.builder.tensors[weight]
    attrs = {"out_features": int(w.shape[0]), "bias": bias is not None}
    ctx.add_layer(node, "linear", [x], attrs, {"weight": weight, "bias": bias})


def _batch_norm(ctx: Context, node: fx.Node) -> None:
    x = ctx.value(node.args[0])
    weight, bias = ctx.param(node.args[1]), ctx.param(node.args[2])
    mean, var = ctx.param(node.args[3]), ctx.param(node.args[4])
    if mean is None or var is None:
        raise Unsupported("normalises with batch statistics (track_running_stats=False)")
    if arg(node, 5, "training", False):
        raise Unsupported("runs in training mode")
    path = mean.rpartition(".")[0]
    momentum = getattr(_module(ctx, path), "momentum", 0.1)
    attrs = {"eps": float(arg(node, 7, "eps", 1e-5)), "momentum": momentum}
    if weight is None:
        attrs["affine"] = False
    params = {"weight": weight, "bias": bias, "running_mean": mean, "running_var": var}
    ctx.add_layer(node, "batchnorm", [x], attrs, params)


def _module(ctx: Context, path: str) -> nn.Module | None:
    try:
        return ctx.root.get_submodule(path)
    except AttributeError:
        return None


def _layer_norm(ctx: Context, node: fx.Node) -> None:
    x = ctx.value(node.args[0])
    shape = list(node.args[1])
    if len(shape) != 1:
        raise Unsupported(f"normalises over {len(shape)} axes (grow-ir: the last one)")
    weight, bias = ctx.param(arg(node, 2, "weight")), ctx.param(arg(node, 3, "bias"))
    attrs: dict[str, Any] = {"eps": float(arg(node, 4, "eps", 1e-5))}
    if weight is None:
        if bias is not None:
            raise Unsupported("has a bias without a weight")
        attrs["elementwise_affine"] = False
        ctx.add(node, "layernorm", [x], attrs, short="layer_norm")
        return
    if bias is None:
        attrs["bias"] = False
    ctx.add_layer(node, "layernorm", [x], attrs, {"weight": weight, "bias": bias})


def _embedding(ctx: Context, node: fx.Node) -> None:
    weight = ctx.param(node.args[0])
    ids = ctx.value(node.args[1])
    w = ctx.builder.tensors[weight]
    padding_idx = int(arg(node, 2, "padding_idx", -1))
    attrs: dict[str, Any] = {"num_embeddings": int(w.shape[0]), "embedding_dim": int(w.shape[1])}
    mod = _module(ctx, weight.rpartition(".")[0])
    if isinstance(mod, nn.Embedding) and mod.padding_idx is not None:
        attrs["padding_idx"] = mod.padding_idx
    elif padding_idx != -1:
        attrs["padding_idx"] = padding_idx
    ctx.add_layer(node, "embedding", [ids], attrs, {"weight": weight})


# ---- stateless ops ----------------------------------------------------------------------


def _unary(op: str, **attrs_of: Callable[[fx.Node], Any]) -> Rule:
    def rule(ctx: Context, node: fx.Node) -> None:
        attrs = {k: f(node) for k, f in attrs_of.items()}
        ctx.add(node, op, [ctx.value(node.args[0])], attrs)

    return rule


def _hardtanh(ctx: Context, node: fx.Node) -> None:
    low, high = float(arg(node, 1, "min_val", -1.0)), float(arg(node, 2, "max_val", 1.0))
    x = ctx.value(node.args[0])
    if (low, high) == (0.0, 6.0):
        ctx.add(node, "relu6", [x])
    elif low < 0.0 < high:
        ctx.add(node, "hardtanh", [x], {"min_val": low, "max_val": high})
    else:
        raise Unsupported(f"clamps to [{low}, {high}] (grow-ir: [0, 6] or around 0)")


def _leaky_relu(ctx: Context, node: fx.Node) -> None:
    slope = float(arg(node, 1, "negative_slope", 0.01))
    x = ctx.value(node.args[0])
    if slope == 0.0:
        ctx.add(node, "relu", [x])
    else:
        ctx.add(node, "leaky_relu", [x], {"negative_slope": slope})


def _elu(ctx: Context, node: fx.Node) -> None:
    alpha = float(arg(node, 1, "alpha", 1.0))
    if float(arg(node, 2, "scale", 1.0)) != 1.0 or float(arg(node, 3, "input_scale", 1.0)) != 1.0:
        raise Unsupported("scales its input or output (that is SELU or CELU)")
    if alpha == 0.0:
        raise Unsupported("has alpha 0")
    ctx.add(node, "elu", [ctx.value(node.args[0])], {"alpha": alpha})


def _alias(ctx: Context, node: fx.Node) -> None:
    _alias_of(ctx, node, node.args[0])


def _alias_of(ctx: Context, node: fx.Node, source: Any) -> None:
    """Bind ``node`` to the IR value of ``source`` (a value unchanged)."""
    if isinstance(source, fx.Node) and source.name in ctx.env:
        ctx.bind(node, ctx.env[source.name])
        return
    ctx.bind(node, ctx.value(source))  # a parameter read as a value; else raises the reason


def _to(ctx: Context, node: fx.Node) -> None:
    source = node.args[0]
    want = node.meta["val"].dtype
    if isinstance(source, fx.Node) and source.meta["val"].dtype == want:
        _alias(ctx, node)
        return
    raise Unsupported(f"casts to {want} (grow-ir has no cast op)")


def _softmax(ctx: Context, node: fx.Node) -> None:
    ctx.add(node, "softmax", [ctx.value(node.args[0])], {"dim": int(node.args[1])})


def _log_softmax(ctx: Context, node: fx.Node) -> None:
    if node.target is aten.log_softmax.int and arg(node, 2, "dtype") is not None:
        raise Unsupported("casts while it normalises (grow-ir has no cast op)")
    ctx.add(node, "log_softmax", [ctx.value(node.args[0])], {"dim": int(node.args[1])})


def _dropout(ctx: Context, node: fx.Node) -> None:
    x = ctx.value(node.args[0])
    ctx.add(node, "dropout", [x], {"p": float(arg(node, 1, "p", 0.5))})


def _pool_attrs(node: fx.Node, with_dilation: bool) -> dict[str, Any]:
    kernel = arg(node, 1, "kernel_size")
    stride = arg(node, 2, "stride", []) or kernel
    attrs = {
        "kernel_size": _pair(kernel),
        "stride": _pair(stride),
        "padding": _pair(arg(node, 3, "padding", 0)),
    }
    if with_dilation:
        attrs["dilation"] = _pair(arg(node, 4, "dilation", 1))
        attrs["ceil_mode"] = bool(arg(node, 5, "ceil_mode", False))
    else:
        attrs["ceil_mode"] = bool(arg(node, 4, "ceil_mode", False))
    return attrs


def _max_pool(ctx: Context, node: fx.Node) -> None:
    ctx.add(node, "maxpool2d", [ctx.value(node.args[0])], _pool_attrs(node, True))


def _avg_pool(ctx: Context, node: fx.Node) -> None:
    if arg(node, 6, "divisor_override") is not None:
        raise Unsupported("has a divisor_override")
    attrs = _pool_attrs(node, False)
    attrs["count_include_pad"] = bool(arg(node, 5, "count_include_pad", True))
    ctx.add(node, "avgpool2d", [ctx.value(node.args[0])], attrs)


def _adaptive_avg_pool(ctx: Context, node: fx.Node) -> None:
    x = node.args[0]
    size = [int(s) for s in node.args[1]]
    spatial = list(ctx.shape(x)[2:])
    if size == spatial:
        _alias(ctx, node)
    elif all(s == 1 for s in size):
        ctx.bind(node, KeptMean(ctx.value(x), ctx.hint(node, "pool")))
    else:
        ctx.add(node, "adaptive_avgpool2d", [ctx.value(x)], {"output_size": size}, "pool")


def _upsample(mode: str) -> Rule:
    """``upsample_{nearest,bilinear}2d.vec``: an output size or scale factors (one of them
    None); bilinear's third argument is ``align_corners``."""

    def rule(ctx: Context, node: fx.Node) -> None:
        size = node.args[1]
        corners = bool(node.args[2]) if mode == "bilinear" else None
        scales = node.args[3 if mode == "bilinear" else 2]
        attrs: dict[str, Any] = {"mode": mode}
        if corners:
            attrs["align_corners"] = True
        if size is not None:
            attrs["size"] = _pair(size)
        else:
            h, w = (float(f) for f in scales)
            attrs["scale_factor"] = h if h == w else (h, w)
        ctx.add(node, "upsample", [ctx.value(node.args[0])], attrs, "upsample")

    return rule


def _reduce(op: str) -> Rule:
    """``mean`` or ``sum`` over axes; a spatial mean of an image stays a ``KeptMean`` (a
    global_avgpool when flatten reads it, an adaptive_avgpool2d otherwise)."""

    def rule(ctx: Context, node: fx.Node) -> None:
        x = node.args[0]
        rank = len(ctx.shape(x))
        dims = sorted(int(d) % rank for d in arg(node, 1, "dim", []) or range(rank))
        keep = bool(arg(node, 2, "keepdim", False))
        if arg(node, 3, "dtype") is not None:
            raise Unsupported("casts while it reduces (grow-ir has no cast op)")
        spatial = rank >= 3 and dims == list(range(2, rank))
        if op == "mean" and spatial and keep and rank == 4:
            ctx.bind(node, KeptMean(ctx.value(x), ctx.hint(node, "mean")))
        elif op == "mean" and spatial and not keep:
            ctx.add(node, "global_avgpool", [ctx.value(x)], short="mean")
        else:
            ctx.add(node, op, [ctx.value(x)], {"dim": dims, "keepdim": keep}, short=op)

    return rule


def _fold_to(ctx: Context, node: fx.Node, source: fx.Node, out_shape: tuple[int, ...]) -> None:
    """Bind a reshape of ``source`` to ``out_shape``: a kept mean's squeeze, an alias, or a
    flatten of consecutive axes after the batch axis."""
    bound = ctx.env.get(source.name)
    in_shape = ctx.shape(source)
    if isinstance(bound, KeptMean) and out_shape == in_shape[:2]:
        ctx.bind(node, bound.mean(ctx.builder))
        return
    if out_shape == in_shape:
        _alias(ctx, node)
        return
    axes = folded_axes(in_shape, out_shape)
    if axes is not None:
        start, end = axes
        attrs = {"start_dim": start, "end_dim": end}
        ctx.add(node, "flatten", [ctx.value(source)], attrs, "flatten")
        return
    split = split_axis(in_shape, out_shape)
    if split is not None:
        dim, sizes = split
        ctx.add(node, "unflatten", [ctx.value(source)], {"dim": dim, "sizes": sizes}, "unflatten")
        return
    x = ctx.value(source)
    shape = list(out_shape)
    if ctx.builder.types[x].shape[:1] == ("batch",) and shape[:1] == [ctx.batch]:
        shape[0] = -1  # the symbolic batch: what is left
    ctx.add(node, "reshape", [x], {"shape": shape}, "reshape")


def split_axis(
    before: tuple[int | str, ...], after: tuple[int | str, ...]
) -> tuple[int, list[int]] | None:
    """``(dim, sizes)`` when reshaping ``before`` to ``after`` is ``unflatten(dim, sizes)``
    of one axis after the batch axis, of a known size into known sizes (other axes may be
    symbolic), else None."""
    extra = len(after) - len(before)
    if extra < 1:
        return None
    for dim in range(1, len(before)):
        sizes = list(after[dim : dim + extra + 1])
        if (
            before[:dim] == after[:dim]
            and before[dim + 1 :] == after[dim + extra + 1 :]
            and all(isinstance(d, int) for d in (before[dim], *sizes))
            and math.prod(sizes) == before[dim]  # type: ignore[arg-type]
        ):
            return dim, sizes
    return None


def _view(ctx: Context, node: fx.Node) -> None:
    _fold_to(ctx, node, node.args[0], ctx.shape(node))


def _flatten(ctx: Context, node: fx.Node) -> None:
    source = node.args[0]
    bound = ctx.env.get(source.name)
    if isinstance(bound, KeptMean) or ctx.shape(node) == ctx.shape(source):
        _fold_to(ctx, node, source, ctx.shape(node))
        return
    rank = len(ctx.shape(source))
    start, end = int(arg(node, 1, "start_dim", 0)) % rank, int(arg(node, 2, "end_dim", -1)) % rank
    if start == 0:
        raise Unsupported("folds the batch axis")
    ctx.add(node, "flatten", [ctx.value(source)], {"start_dim": start, "end_dim": end})


def _squeeze(ctx: Context, node: fx.Node) -> None:
    source = node.args[0]
    if isinstance(ctx.env.get(source.name), KeptMean) or ctx.shape(node) == ctx.shape(source):
        _fold_to(ctx, node, source, ctx.shape(node))
        return
    shape = ctx.shape(source)
    dims = arg(node, 1, "dim", None)
    dims = [dims] if isinstance(dims, int) else list(dims or range(len(shape)))
    axes = [d % len(shape) for d in dims if shape[d % len(shape)] == 1]
    ctx.add(node, "squeeze", [ctx.value(source)], {"dim": axes})


def _unsqueeze(ctx: Context, node: fx.Node) -> None:
    ctx.add(node, "unsqueeze", [ctx.value(node.args[0])], {"dim": int(node.args[1])})


def _permute(ctx: Context, node: fx.Node) -> None:
    dims = [int(d) for d in node.args[1]]
    if dims == sorted(d % len(dims) for d in dims):
        _alias(ctx, node)
        return
    ctx.add(node, "permute", [ctx.value(node.args[0])], {"dims": dims})


def _transpose(ctx: Context, node: fx.Node) -> None:
    rank = len(ctx.shape(node.args[0]))
    dim0, dim1 = int(node.args[1]) % rank, int(node.args[2]) % rank
    if dim0 == dim1:
        _alias(ctx, node)
        return
    ctx.add(node, "transpose", [ctx.value(node.args[0])], {"dim0": dim0, "dim1": dim1})


def _select(ctx: Context, node: fx.Node) -> None:
    attrs = {"dim": int(node.args[1]), "index": int(node.args[2])}
    ctx.add(node, "select", [ctx.value(node.args[0])], attrs)


def _slice(ctx: Context, node: fx.Node) -> None:
    source = node.args[0]
    dim = int(arg(node, 1, "dim", 0))
    start, end = arg(node, 2, "start", None), arg(node, 3, "end", None)
    step = int(arg(node, 4, "step", 1))
    _add_slice(ctx, node, source, dim, 0 if start is None else int(start), end, step)


def _add_slice(
    ctx: Context,
    node: fx.Node,
    source: fx.Node,
    dim: int,
    start: int,
    end: Any,
    step: int,
    short: str = "",
) -> None:
    """Bind ``node`` to ``source[..., start:end:step]`` along ``dim`` (itself if whole);
    ``short`` names the IR node (else the call's own name)."""
    shape = ctx.shape(source)
    dim %= len(shape)
    end = None if end is None or int(end) >= shape[dim] else int(end)
    if (start, end, step) == (0, None, 1):
        _alias(ctx, node)
        return
    if dim == 0:
        raise Unsupported("slices the batch axis")
    attrs = {"dim": dim, "start": start, "end": end, "step": step}
    ctx.add(node, "slice", [ctx.value(source)], attrs, short)


def _pieces(ctx: Context, node: fx.Node) -> None:
    """``chunk`` / ``split``: no value of its own (grow-ir's nodes have one output); each
    element taken of it (``getitem``) becomes a ``slice`` of the input."""
    if int(arg(node, 2, "dim", 0)) % len(ctx.shape(node.args[0])) == 0:
        raise Unsupported("splits the batch axis")


def _getitem(ctx: Context, node: fx.Node) -> None:
    """Element ``i`` of a ``chunk`` / ``split``: the slice of its input that torch made
    (the pieces' sizes as export recorded them)."""
    source, i = node.args
    if not isinstance(source, fx.Node) or RULES.get(source.target) is not _pieces:
        raise Unsupported("takes an element of a result grow-ir has no op for")
    dim = int(arg(source, 2, "dim", 0))
    sizes = [int(piece.shape[dim]) for piece in source.meta["val"]]
    start = sum(sizes[: int(i)])
    end = start + sizes[int(i)]
    _add_slice(ctx, node, source.args[0], dim, start, end, 1, _call_name(source))  # chunk_1


def _expand(ctx: Context, node: fx.Node) -> None:
    """A learned tensor expanded to the batch (``cls_token.expand(N, -1, -1)``), or an
    expand that changes nothing."""
    source = node.args[0]
    in_shape, out_shape = ctx.shape(source), ctx.shape(node)
    is_param = isinstance(source, fx.Node) and source.name in ctx.fqns
    # before the no-op test: with an example batch of 1, expanding to the batch changes
    # no size, yet the graph's batch is symbolic and the tensor must follow it
    to_batch = bool(ctx.batch) and out_shape[0] == ctx.batch
    if is_param and in_shape[0] == 1 and out_shape[1:] == in_shape[1:] and to_batch:
        x = ctx.first_input()
        ctx.bind(node, ctx.tensor_value(ctx.fqns[source.name], batch_of=x))
        return
    if out_shape == in_shape:
        _alias(ctx, node)
        return
    raise Unsupported(
        f"expands {list(in_shape)} to {list(out_shape)} (grow-ir: a parameter "
        "expanded to the batch)"
    )


def _matmul(ctx: Context, node: fx.Node) -> None:
    a, b = node.args[0], node.args[1]
    if len(ctx.shape(a)) < 2 or len(ctx.shape(b)) < 2:
        raise Unsupported("multiplies a vector (grow-ir: operands of rank 2 or more)")
    ctx.add(node, "matmul", [ctx.value(a), ctx.value(b)])


def _arange(ctx: Context, node: fx.Node) -> None:
    """``arange(L)`` (or ``arange(0, L)``) where ``L`` is an axis of the first input: its
    positions."""
    if node.target is aten.arange.start:
        start, end = node.args[0], node.args[1]
        if start != 0:
            raise Unsupported(f"starts at {start} (grow-ir: positions from 0)")
    else:
        end = node.args[0]
    if arg(node, 2 if node.target is aten.arange.start else 1, "dtype") not in (None, torch.int64):
        raise Unsupported("makes a float range")
    if node.meta["val"].dtype != torch.int64:
        raise Unsupported("makes a float range")
    ctx.bind(node, ctx.positions(node, int(end), batch_axis=False))


def _pad(ctx: Context, node: fx.Node) -> None:
    if node.target is aten.pad.default and arg(node, 2, "mode", "constant") != "constant":
        raise Unsupported(f"pads in mode {arg(node, 2, 'mode')!r} (grow-ir: constant)")
    index = 3 if node.target is aten.pad.default else 2
    value = arg(node, index, "value", 0.0)
    pad = [int(p) for p in node.args[1]]
    if any(p < 0 for p in pad):
        raise Unsupported("crops (a negative pad)")
    attrs = {"pad": pad, "value": float(value or 0.0)}
    ctx.add(node, "pad", [ctx.value(node.args[0])], attrs)


def _binary(op: str) -> Rule:
    def rule(ctx: Context, node: fx.Node) -> None:
        a, b = node.args[0], node.args[1]
        if arg(node, 2, "alpha", 1) != 1:
            raise Unsupported("has alpha != 1")
        if not isinstance(b, fx.Node) or not isinstance(a, fx.Node):
            scalar, tensor = (b, a) if isinstance(a, fx.Node) else (a, b)
            if isinstance(tensor, fx.Node) and _identity_scalar(node, scalar, tensor is a):
                _alias_of(ctx, node, tensor)
                return
            raise Unsupported(f"with a scalar operand ({scalar!r})")
        if node.target is aten.div.Tensor and arg(node, 2, "rounding_mode") is not None:
            raise Unsupported("rounds its quotient")
        ctx.add(node, op, [ctx.value(a), ctx.value(b)])

    return rule


_NEUTRAL = {
    aten.add.Tensor: (0, True),
    aten.add_.Tensor: (0, True),
    aten.sub.Tensor: (0, False),
    aten.mul.Tensor: (1, True),
    aten.mul_.Tensor: (1, True),
    aten.div.Tensor: (1, False),
}
"""The scalar that leaves the other operand unchanged, and whether it may come first."""


def _identity_scalar(node: fx.Node, scalar: Any, tensor_first: bool) -> bool:
    """True for ``x + 0``, ``x - 0``, ``x * 1``, ``x / 1`` (``0 + x``, ``1 * x``) that keep
    ``x``'s dtype: Hugging Face's ``arange(L) + past_length`` with nothing cached."""
    neutral = _NEUTRAL.get(node.target)
    if neutral is None or isinstance(scalar, bool) or not isinstance(scalar, (int, float)):
        return False
    value, commutes = neutral
    same_dtype = node.args[0 if tensor_first else 1].meta["val"].dtype == node.meta["val"].dtype
    return scalar == value and (tensor_first or commutes) and same_dtype


def _cat(ctx: Context, node: fx.Node) -> None:
    values = [ctx.value(v) for v in node.args[0]]
    dim = int(arg(node, 1, "dim", 0))
    if len(values) == 1:
        ctx.bind(node, values[0])
        return
    ctx.add(node, "concat", values, {"dim": dim}, short="cat")


def _skip(ctx: Context, node: fx.Node) -> None:
    """A runtime assertion with no value: nothing to import."""


def _gelu_approx(node: fx.Node) -> str:
    return str(node.kwargs.get("approximate", node.args[1] if len(node.args) > 1 else "none"))


RULES: dict[Any, Rule] = {
    aten.conv1d.default: _conv(1),
    aten.conv2d.default: _conv(2),
    aten.conv1d.padding: _conv(1),
    aten.conv2d.padding: _conv(2),
    aten.conv_transpose2d.input: _conv_transpose,
    aten.linear.default: _linear,
    aten.batch_norm.default: _batch_norm,
    aten.layer_norm.default: _layer_norm,
    aten.embedding.default: _embedding,
    aten.relu.default: _unary("relu"),
    aten.relu_.default: _unary("relu"),
    aten.gelu.default: _unary("gelu", approximate=_gelu_approx),
    aten.silu.default: _unary("silu"),
    aten.silu_.default: _unary("silu"),
    aten.tanh.default: _unary("tanh"),
    aten.hardtanh.default: _hardtanh,
    aten.hardtanh_.default: _hardtanh,
    aten.hardswish.default: _unary("hardswish"),
    aten.hardswish_.default: _unary("hardswish"),
    aten.hardsigmoid.default: _unary("hardsigmoid"),
    aten.hardsigmoid_.default: _unary("hardsigmoid"),
    aten.leaky_relu.default: _leaky_relu,
    aten.leaky_relu_.default: _leaky_relu,
    aten.elu.default: _elu,
    aten.elu_.default: _elu,
    aten.sigmoid.default: _unary("sigmoid"),
    aten.softmax.int: _softmax,
    aten._softmax.default: _softmax,
    aten.dropout.default: _dropout,
    aten.dropout_.default: _dropout,
    aten.max_pool2d.default: _max_pool,
    aten.avg_pool2d.default: _avg_pool,
    aten.adaptive_avg_pool2d.default: _adaptive_avg_pool,
    aten.upsample_nearest2d.vec: _upsample("nearest"),
    aten.upsample_bilinear2d.vec: _upsample("bilinear"),
    aten.mean.dim: _reduce("mean"),
    aten.sum.dim_IntList: _reduce("sum"),
    aten.log_softmax.int: _log_softmax,
    aten._log_softmax.default: _log_softmax,
    aten.unsqueeze.default: _unsqueeze,
    aten.permute.default: _permute,
    aten.transpose.int: _transpose,
    aten.select.int: _select,
    aten.slice.Tensor: _slice,
    aten.chunk.default: _pieces,
    aten.split.Tensor: _pieces,
    aten.split_with_sizes.default: _pieces,
    operator.getitem: _getitem,
    aten.expand.default: _expand,
    aten.matmul.default: _matmul,
    aten.bmm.default: _matmul,
    aten.mm.default: _matmul,
    aten.arange.default: _arange,
    aten.arange.start: _arange,
    aten.pad.default: _pad,
    aten.constant_pad_nd.default: _pad,
    aten.flatten.using_ints: _flatten,
    aten.view.default: _view,
    aten.reshape.default: _view,
    aten._unsafe_view.default: _view,
    aten.squeeze.dims: _squeeze,
    aten.squeeze.dim: _squeeze,
    aten.add.Tensor: _binary("add"),
    aten.add_.Tensor: _binary("add"),
    aten.mul.Tensor: _binary("mul"),
    aten.mul_.Tensor: _binary("mul"),
    aten.sub.Tensor: _binary("sub"),
    aten.div.Tensor: _binary("div"),
    aten.cat.default: _cat,
    aten.clone.default: _alias,
    aten.alias.default: _alias,
    aten.detach.default: _alias,
    aten.contiguous.default: _alias,
    aten.to.dtype: _to,
    aten.to.dtype_layout: _to,
    aten._to_copy.default: _to,
    aten._assert_tensor_metadata.default: _skip,
}
"""ATen overload -> rule."""

IGNORED = frozenset({operator.getitem})
"""Targets that are never a construct of their own (a tuple's element)."""

__all__ = ["RULES", "Context", "GrowError", "KeptMean", "Unsupported"]
