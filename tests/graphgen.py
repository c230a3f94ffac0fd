"""Hypothesis strategies for random valid networks and random growth-pass arguments: the
one generator of the property tests (passes, pruning, ONNX parity).

Networks are drawn as spec data (the mapping ``load_spec`` reads), in five families:

- ``mlp``: linear layers of random widths with batchnorm/layernorm, every activation,
  dropout, residual adds, concat branches, multiplicative gates and ``mix`` choices;
- ``cnn``: conv2d (or conv1d) layers (some grouped or depthwise) with batchnorm, residual
  blocks, concat branches, gates, max/avg pooling, and a global_avgpool or flatten
  boundary to linear layers;
- ``seq``: embedding (or a float sequence), layernorm, self-attention and GELU MLP blocks
  with residual adds;
- ``staged``: networks whose middle is one or two stages of a ``blocks:`` template
  (ResNet basic blocks, residual MLPs, pre-norm MLPs, transformer blocks), so that
  ``insert_block`` has something to grow;
- ``net``: chains with branches and joins of *any* op of the registry, so that a new op is
  drawn without editing anything here (the coverage guards check every op is).

Attributes come from each op's ``Attrs`` model (:mod:`tests.attr_domains`): the families
fix only their structure (widths, kernels, heads) and draw the rest; ``net`` draws all of
them, with the op's own ``infer`` rejecting what does not fit its inputs. The structured
families end in one to three heads (several outputs), some after a softmax; ``net`` gives
each dead end a hidden linear layer and a head. Widths are small so that a whole network
runs in a millisecond or two.

:func:`pass_arguments` draws plausible arguments of a growth pass for a given graph; the
pass may still refuse them (with a PassError saying why), which callers should allow.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from hypothesis import HealthCheck, Phase, assume, given, settings
from hypothesis import strategies as st

from grow_ir.backends.torch import to_torch
from grow_ir.errors import GrowError
from grow_ir.ir import OPS, OpDef, TensorType
from grow_ir.ir.graph import Graph, Node, check_arity
from grow_ir.ir.ops.base import validate_attrs
from grow_ir.passes.channels import channel_group, widenable
from grow_ir.passes.heads import head_ops
from grow_ir.passes.prune import prunable
from grow_ir.probes import random_inputs, randomize_norms
from grow_ir.spec import load_spec
from tests.attr_domains import attr_strategy, shapes_near

ACTIVATIONS = (*(name for name, op in OPS.items() if op.facts.activation is True), "identity")
"""Activations drawn between layers: every op whose facts call it one (and identity);
dropout is drawn on its own."""

FAMILIES = ("mlp", "cnn", "seq", "staged", "net")
"""The network families :func:`specs` draws from."""

Spec = dict[str, Any]

WIDTHS = st.integers(2, 6)


# ---- building spec data -----------------------------------------------------------------


@dataclass
class SpecBuilder:
    """Spec node entries with fresh names, and the heads collected on the way.

    Every entry names its inputs explicitly, so the order of entries is the only order.
    """

    nodes: list[dict[str, Any]] = field(default_factory=list)
    outputs: dict[str, str] = field(default_factory=dict)

    def add(self, op: str, inputs: str | list[str], **attrs: Any) -> str:
        """Append a node of ``op`` reading ``inputs``; returns its (fresh) name."""
        name = f"{op}{len(self.nodes)}"
        ins = [inputs] if isinstance(inputs, str) else list(inputs)
        self.nodes.append({"name": name, "op": op, "inputs": ins, **attrs})
        return name

    def output(self, node: str) -> None:
        """Make ``node`` the next output (``y0``, ``y1``...)."""
        self.outputs[f"y{len(self.outputs)}"] = node

    def spec(self, draw: st.DrawFn, name: str, inputs: Mapping[str, Any], **extra: Any) -> Spec:
        """The finished spec, with a drawn seed."""
        return {
            "version": 1,
            "name": name,
            "seed": draw(st.integers(0, 3)),
            "inputs": dict(inputs),
            **extra,
            "nodes": self.nodes,
            "outputs": self.outputs,
        }


def model_attrs(draw: st.DrawFn, op: str, **fixed: Any) -> dict[str, Any]:
    """Attributes of ``op`` drawn from its Attrs model (``fixed`` ones as given) that the
    model accepts (its validators too: hardtanh's bounds enclose 0), for an op whose output
    type does not depend on them; just ``fixed`` where every draw is refused."""
    for _ in range(ATTR_ATTEMPTS):
        attrs = draw(attr_strategy(OPS[op], [], **fixed))
        try:
            validate_attrs(OPS[op], attrs)
        except GrowError:
            continue
        return attrs
    return dict(fixed)


def _set(attrs: dict[str, Any]) -> dict[str, Any]:
    """``attrs`` without the entries left unset (None: the op's default)."""
    return {k: v for k, v in attrs.items() if v is not None}


def activation(draw: st.DrawFn, b: SpecBuilder, x: str) -> str:
    """One activation of any kind after ``x``, with attributes from its Attrs model,
    sometimes followed by dropout."""
    act = draw(st.sampled_from(ACTIVATIONS))
    y = b.add(act, x, **model_attrs(draw, act))
    if draw(st.integers(0, 4)) == 0:
        y = b.add("dropout", y, **model_attrs(draw, "dropout"))
    return y


def heads(draw: st.DrawFn, b: SpecBuilder, features: list[str]) -> None:
    """One to three linear heads (the first on the last feature, so none is a dead end,
    the others on any of ``features``); some end in a softmax or log_softmax over their
    classes."""
    for i in range(draw(st.integers(1, 3))):
        src = features[-1] if i == 0 else draw(st.sampled_from(features))
        y = b.add("linear", src, out_features=draw(st.integers(1, 4)))
        if draw(st.integers(0, 3)) == 0:
            y = b.add(draw(st.sampled_from(["softmax", "log_softmax"])), y, dim=-1)
        if y not in b.outputs.values():
            b.output(y)


# ---- mlp --------------------------------------------------------------------------------


def _mlp_layer(draw: st.DrawFn, b: SpecBuilder, x: str, width: int) -> tuple[str, int]:
    """One MLP unit after ``x`` (``width`` features): returns the new value and width."""
    kind = draw(st.sampled_from(["dense", "dense", "residual", "concat", "gate", "mix"]))
    if kind == "dense":
        w = draw(WIDTHS)
        y = b.add("linear", x, **model_attrs(draw, "linear", out_features=w))
        norm = draw(st.sampled_from([None, "batchnorm", "layernorm"]))
        if norm:
            y = b.add(norm, y, **model_attrs(draw, norm))
        return activation(draw, b, y), w
    if kind == "residual":
        h = b.add("linear", x, out_features=draw(WIDTHS))
        h = activation(draw, b, h)
        h = b.add("linear", h, out_features=width)
        if draw(st.booleans()):
            h = b.add("batchnorm", h)
        return b.add("add", [x, h]), width
    if kind == "concat":
        parts, total = [], 0
        for _ in range(draw(st.integers(2, 3))):
            w = draw(WIDTHS)
            parts.append(activation(draw, b, b.add("linear", x, out_features=w)))
            total += w
        return b.add("concat", parts, dim=-1), total
    if kind == "gate":
        gate = b.add("sigmoid", b.add("linear", x, out_features=width))
        return b.add("mul", [x, gate]), width
    w = draw(WIDTHS)
    branches = [
        activation(draw, b, b.add("linear", x, out_features=w))
        for _ in range(draw(st.integers(2, 3)))
    ]
    return b.add("mix", branches), w


@st.composite
def mlp_specs(draw: st.DrawFn) -> Spec:
    """A random MLP spec on ``x: [batch, d]``."""
    b = SpecBuilder()
    width = draw(WIDTHS)
    x = activation(draw, b, b.add("linear", "x", out_features=width))
    features = [x]
    for _ in range(draw(st.integers(1, 4))):
        x, width = _mlp_layer(draw, b, x, width)
        features.append(x)
    heads(draw, b, features[-2:])
    return b.spec(draw, "mlp", {"x": {"shape": ["batch", draw(WIDTHS)]}})


# ---- cnn --------------------------------------------------------------------------------


@dataclass
class Image:
    """A conv feature map being built: its value, channels and spatial sizes."""

    value: str
    channels: int
    size: tuple[int, ...]


def _conv(
    b: SpecBuilder, x: str, dims: int, out: int, k: int = 3, stride: int = 1, **attrs: Any
) -> str:
    return b.add(
        f"conv{dims}d", x, out_channels=out, kernel_size=k, padding=k // 2, stride=stride, **attrs
    )


def _free_conv_attrs(draw: st.DrawFn, dims: int) -> dict[str, Any]:
    """The attributes of a conv that leave its output's shape as the family plans it (the
    model's others: bias, masked...), drawn from its Attrs model."""
    shaped = ("out_channels", "kernel_size", "padding", "stride", "dilation", "groups")
    fixed = {"out_channels": 1, "kernel_size": 1, "dilation": 1, "groups": 1}
    attrs = model_attrs(draw, f"conv{dims}d", **fixed)
    return {k: v for k, v in attrs.items() if k not in shaped}


def _cnn_layer(draw: st.DrawFn, b: SpecBuilder, x: Image) -> Image:
    """One conv unit after ``x``."""
    dims = len(x.size)
    kinds = ["conv", "conv", "residual", "concat", "gate"]
    if dims == 2 and min(x.size) >= 2:
        kinds.append("pool")
    divisors = [g for g in range(2, x.channels + 1) if x.channels % g == 0]
    if divisors:
        kinds.append("grouped")
    kind = draw(st.sampled_from(kinds))
    if kind == "grouped":  # ResNeXt's grouped conv (or a depthwise one, groups = channels)
        groups = draw(st.sampled_from(divisors))
        c = groups * draw(st.integers(1, 3))
        k = draw(st.sampled_from([1, 3]))
        y = _conv(b, x.value, dims, c, k, groups=groups, **_free_conv_attrs(draw, dims))
        if draw(st.booleans()):
            y = b.add("batchnorm", y)
        return Image(activation(draw, b, y), c, x.size)
    if kind == "conv":
        c, k = draw(WIDTHS), draw(st.sampled_from([1, 3]))
        stride = draw(st.sampled_from([1, 2])) if min(x.size) >= 4 else 1
        y = _conv(b, x.value, dims, c, k, stride, **_free_conv_attrs(draw, dims))
        if draw(st.booleans()):
            y = b.add("batchnorm", y, **model_attrs(draw, "batchnorm"))
        size = tuple((s - 1) // stride + 1 for s in x.size)
        return Image(activation(draw, b, y), c, size)
    if kind == "residual":
        h = b.add("batchnorm", _conv(b, x.value, dims, draw(WIDTHS)))
        h = activation(draw, b, h)
        h = _conv(b, h, dims, x.channels)
        if draw(st.booleans()):
            h = b.add("batchnorm", h)
        y = b.add("add", [h, x.value])
        if draw(st.booleans()):
            y = b.add("relu", y)
        return Image(y, x.channels, x.size)
    if kind == "concat":
        parts, total = [], 0
        for k in draw(st.lists(st.sampled_from([1, 3]), min_size=2, max_size=3)):
            c = draw(WIDTHS)
            parts.append(activation(draw, b, _conv(b, x.value, dims, c, k)))
            total += c
        return Image(b.add("concat", parts, dim=1), total, x.size)
    if kind == "gate":
        gate = b.add("sigmoid", _conv(b, x.value, dims, x.channels, 1))
        return Image(b.add("mul", [x.value, gate]), x.channels, x.size)
    return _pool(draw, b, x)


def _pool(draw: st.DrawFn, b: SpecBuilder, x: Image) -> Image:
    """A 2x2 max pool (halving the size) or a 3x3 average pool keeping it."""
    if draw(st.booleans()):
        halved = tuple(s // 2 for s in x.size)
        return Image(b.add("maxpool2d", x.value, kernel_size=2), x.channels, halved)
    same = {"kernel_size": 3, "stride": 1, "padding": 1}
    return Image(b.add("avgpool2d", x.value, **same), x.channels, x.size)


@st.composite
def cnn_specs(draw: st.DrawFn) -> Spec:
    """A random conv net on an image ``[batch, C, H, W]`` (or a signal ``[batch, C, L]``)
    with a global_avgpool or flatten boundary to linear layers."""
    b = SpecBuilder()
    dims = draw(st.sampled_from([2, 2, 1]))
    size = tuple(draw(st.integers(4, 7)) for _ in range(dims))
    c_in, width = draw(st.integers(1, 3)), draw(WIDTHS)
    stem = _conv(b, "x", dims, width)
    if draw(st.booleans()):
        stem = b.add("batchnorm", stem)
    x = Image(activation(draw, b, stem), width, size)
    for _ in range(draw(st.integers(1, 3))):
        x = _cnn_layer(draw, b, x)
    if dims == 2 and min(x.size) >= 2 and draw(st.booleans()):
        x = _pool(draw, b, x)
    features = []
    value = x.value
    if dims == 2 and draw(st.booleans()):  # a squeeze-excitation-style kept 1x1 mean
        value = b.add("adaptive_avgpool2d", value, output_size=1)
    if draw(st.booleans()):
        features.append(b.add("global_avgpool", value))
    else:
        features.append(b.add("flatten", value))
    if draw(st.booleans()):
        hidden = b.add("linear", features[0], out_features=draw(WIDTHS))
        features.append(activation(draw, b, hidden))
    heads(draw, b, features)
    return b.spec(draw, "cnn", {"x": {"shape": ["batch", c_in, *size]}})


# ---- sequences --------------------------------------------------------------------------


def _divisor_heads(width: int) -> st.SearchStrategy[int]:
    return st.sampled_from([h for h in (1, 2, 4) if width % h == 0])


def _seq_layer(draw: st.DrawFn, b: SpecBuilder, x: str, width: int) -> tuple[str, int]:
    """One transformer-style unit after ``x`` (``[batch, seq, width]``)."""
    kind = draw(st.sampled_from(["attention", "mlp", "dense", "concat"]))
    if kind == "attention":
        norm = draw(st.sampled_from([None, "layernorm", "rmsnorm"]))
        h = b.add(norm, x) if norm else x
        heads = draw(_divisor_heads(width))
        extra = {}
        kv = draw(st.sampled_from([k for k in (1, 2, 4) if heads % k == 0]))
        if kv != heads:
            extra["num_kv_heads"] = kv  # grouped-query
        if (width // heads) % 2 == 0 and draw(st.booleans()):
            extra["rope_theta"] = draw(st.sampled_from([100.0, 10000.0]))
            partial = list(range(2, width // heads, 2))  # rotate only some entries
            if partial and draw(st.booleans()):
                extra["rotary_dim"] = draw(st.sampled_from(partial))
        h = b.add(
            "attention",
            h,
            **_set(
                model_attrs(
                    draw,
                    "attention",
                    num_heads=heads,
                    head_dim=None,  # the shape-bearing ones are planned above
                    num_kv_heads=extra.get("num_kv_heads"),
                    rope_theta=extra.get("rope_theta"),
                    rotary_dim=extra.get("rotary_dim"),
                )
            ),
        )
        return b.add("add", [x, h]), width
    if kind == "mlp":
        norm = draw(st.sampled_from(["layernorm", "rmsnorm"]))
        h = b.add(norm, x, **model_attrs(draw, norm))
        h = b.add("gelu", b.add("linear", h, out_features=draw(WIDTHS)))
        if draw(st.booleans()):
            h = b.add("dropout", h, p=0.1)
        return b.add("add", [x, b.add("linear", h, out_features=width)]), width
    if kind == "dense":
        w = draw(st.sampled_from([2, 4, 6]))
        return activation(draw, b, b.add("linear", x, out_features=w)), w
    w1, w2 = draw(st.sampled_from([1, 2, 3])), draw(st.sampled_from([1, 3, 5]))
    parts = [activation(draw, b, b.add("linear", x, out_features=w)) for w in (w1, w2)]
    return b.add("concat", parts, dim=-1), w1 + w2


@st.composite
def seq_specs(draw: st.DrawFn) -> Spec:
    """A random transformer-style net on tokens ``[batch, seq]`` (an embedding first) or a
    float sequence ``[batch, seq, E]``."""
    b = SpecBuilder()
    width = draw(st.sampled_from([2, 4, 6]))
    if draw(st.booleans()):
        inputs = {"x": {"shape": ["batch", "seq"], "dtype": "int64"}}
        x = b.add("embedding", "x", num_embeddings=draw(st.integers(5, 9)), embedding_dim=width)
    else:
        inputs = {"x": {"shape": ["batch", "seq", draw(WIDTHS)]}}
        x = activation(draw, b, b.add("linear", "x", out_features=width))
    features = [x]
    for _ in range(draw(st.integers(1, 3))):
        x, width = _seq_layer(draw, b, x, width)
        features.append(x)
    if draw(st.booleans()):
        features.append(b.add("layernorm", x))
    heads(draw, b, features[-2:])
    return b.spec(draw, "seq", inputs)


# ---- stages of block templates ----------------------------------------------------------


def _t(name: str, op: str, inputs: list[str] | None = None, **attrs: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": name, "op": op, **attrs}
    if inputs is not None:
        entry["inputs"] = inputs
    return entry


CONV3 = {"kernel_size": 3, "padding": 1}

TEMPLATES: dict[str, tuple[str, dict[str, Any], bool]] = {
    "basic": (
        "conv",
        {
            "nodes": [
                _t("conv1", "conv2d", ["input"], out_channels="$width", **CONV3),
                _t("bn1", "batchnorm"),
                _t("act1", "relu"),
                _t("conv2", "conv2d", out_channels="$width", **CONV3),
                _t("bn2", "batchnorm"),
                _t("sum", "add", ["bn2", "input"]),
                _t("out", "relu"),
            ],
            "output": "out",
        },
        True,
    ),
    "gelu_block": (
        "conv",
        {
            "nodes": [
                _t("conv1", "conv2d", ["input"], out_channels="$hidden", kernel_size=1),
                _t("act1", "silu"),
                _t("conv2", "conv2d", out_channels="$width", **CONV3),
                _t("sum", "add", ["input", "conv2"]),
                _t("out", "gelu"),
            ]
        },
        False,
    ),
    "mlp_res": (
        "vector",
        {
            "nodes": [
                _t("fc1", "linear", ["input"], out_features="$hidden"),
                _t("act", "tanh"),
                _t("fc2", "linear", out_features="$width"),
                _t("sum", "add", ["fc2", "input"]),
            ]
        },
        True,
    ),
    "prenorm_mlp": (
        "seq",
        {
            "nodes": [
                _t("ln", "layernorm", ["input"]),
                _t("fc1", "linear", out_features="$hidden"),
                _t("act", "gelu"),
                _t("drop", "dropout", p=0.1),
                _t("fc2", "linear", out_features="$width"),
                _t("sum", "add", ["input", "fc2"]),
            ]
        },
        True,
    ),
    "transformer": (
        "seq",
        {
            "nodes": [
                _t("ln1", "layernorm", ["input"]),
                _t("attn", "attention", num_heads="$heads"),
                _t("res1", "add", ["input", "attn"]),
                _t("ln2", "layernorm"),
                _t("fc1", "linear", out_features="$hidden"),
                _t("act", "gelu"),
                _t("fc2", "linear", out_features="$width"),
                _t("res2", "add", ["res1", "fc2"]),
            ]
        },
        True,
    ),
}
"""Block templates by name: the kind of value they take, the template, and whether
``insert_block`` with zero init keeps the function (a chain of residual adds back to the
input whose branches end in zeroable layers, and after it nothing or a relu on a
non-negative input)."""


def _params(template: Mapping[str, Any]) -> set[str]:
    """The ``$name`` parameters a template uses."""
    return {
        v[1:]
        for node in template["nodes"]
        for v in node.values()
        if isinstance(v, str) and v.startswith("$")
    }


BLOCK_EXACT: Mapping[str, bool] = {name: exact for name, (_, _, exact) in TEMPLATES.items()}
"""Whether ``insert_block(init="zero")`` preserves the function, by template name."""


@st.composite
def staged_specs(draw: st.DrawFn) -> Spec:
    """A spec whose middle is one or two stages of a block template."""
    kind = draw(st.sampled_from(["conv", "vector", "seq"]))
    names = [n for n, (k, _, _) in TEMPLATES.items() if k == kind]
    b = SpecBuilder()
    width = draw(st.sampled_from([2, 4]))
    if kind == "conv":
        inputs = {"x": {"shape": ["batch", draw(st.integers(1, 3)), 5, 5]}}
        x = b.add("relu", b.add("batchnorm", _conv(b, "x", 2, width)))
    elif kind == "vector":
        inputs = {"x": {"shape": ["batch", draw(WIDTHS)]}}
        x = b.add("relu", b.add("linear", "x", out_features=width))
    else:
        inputs = {"x": {"shape": ["batch", "seq"], "dtype": "int64"}}
        x = b.add("embedding", "x", num_embeddings=7, embedding_dim=width)
    blocks: dict[str, Any] = {}
    for s in range(draw(st.integers(1, 2))):
        template = draw(st.sampled_from(names))
        blocks[template] = TEMPLATES[template][1]
        stage = f"stage{s}"
        values = {"width": width, "hidden": draw(WIDTHS), "heads": draw(_divisor_heads(width))}
        with_ = {k: v for k, v in values.items() if k in _params(blocks[template])}
        b.nodes.append(
            {
                "name": stage,
                "stage": template,
                "depth": draw(st.integers(1, 2)),
                "inputs": [x],
                "with": with_,
            }
        )
        x = stage
    if kind == "conv":
        x = b.add(draw(st.sampled_from(["global_avgpool", "flatten"])), x)
    heads(draw, b, [x])
    return b.spec(draw, "staged", inputs, blocks=blocks)


# ---- any op: networks drawn from the op registry -----------------------------------------

NET_INPUTS: dict[str, Callable[[st.DrawFn], dict[str, Any]]] = {
    "image": lambda d: {
        "shape": ["batch", d(st.integers(1, 4)), d(st.integers(3, 7)), d(st.integers(3, 7))]
    },
    "signal": lambda d: {"shape": ["batch", d(st.integers(1, 4)), d(st.integers(3, 7))]},
    "vector": lambda d: {"shape": ["batch", d(st.integers(2, 5))]},
    "seq": lambda d: {"shape": ["batch", "seq", d(st.sampled_from([4, 6, 8]))]},
    "tokens": lambda d: {"shape": ["batch", "seq"], "dtype": "int64"},
}
"""The input a ``net`` starts from (tokens go through an embedding first)."""

NET_ATTEMPTS = 4
"""Draws of an op (and of its inputs) per node before the step is given up."""

ATTR_ATTEMPTS = 6
"""Draws of a node's attributes while the op refuses an attribute (not its inputs)."""


@dataclass
class Net:
    """A network being drawn op by op: its spec entries and every value's type."""

    b: SpecBuilder
    types: dict[str, TensorType]

    def try_add(
        self, op: str, inputs: list[str], attrs: dict[str, Any], name: str
    ) -> GrowError | None:
        """Add the node if the op's own checks (attributes, arity, ``infer``) accept it;
        else the op's error, which names the field at fault."""
        try:
            node = Node(name, op, attrs, tuple(inputs))
            check_arity(node)
            out = node.opdef.infer(node.attrs, [self.types[i] for i in inputs])
        except GrowError as exc:
            return exc
        self.b.nodes.append({"name": name, "op": op, "inputs": list(inputs), **attrs})
        self.types[name] = out
        return None

    def add_drawn(self, draw: st.DrawFn, op: str, inputs: list[str], **fixed: Any) -> str | None:
        """Add an ``op`` node reading ``inputs`` with attributes drawn for the inputs'
        types (``fixed`` ones as given), drawing them again while the op refuses an
        attribute; its name, or None where it refuses the inputs (or every draw)."""
        name = self.fresh(op)
        refs = [self.types[i] for i in inputs]
        bound = OPS[op].facts.index_bound
        if bound is not None and bound not in fixed and inputs[0] in self.made:
            # Indices made inside the network are ``positions``' 0..L-1 (moved by shape
            # ops), L the size of an axis of a value; random_inputs bounds only the graph
            # inputs' (and gives a symbolic axis 5 entries)
            dims = (d if isinstance(d, int) else 5 for t in self.types.values() for d in t.shape)
            fixed[bound] = max(2, *dims)
        for _ in range(ATTR_ATTEMPTS):
            err = self.try_add(op, inputs, draw(attr_strategy(OPS[op], refs, **fixed)), name)
            if err is None:
                return name
            if err.field is None or err.field.startswith("inputs"):
                return None
        return None

    @property
    def made(self) -> set[str]:
        """The values the network's nodes make (not its inputs)."""
        return {e["name"] for e in self.b.nodes}

    def fresh(self, op: str) -> str:
        """A name for the next node of ``op``."""
        return f"{op}{len(self.b.nodes)}"

    def draw_node(self, draw: st.DrawFn, op: OpDef) -> bool:
        """Draw inputs and attributes for one ``op`` node and add it, drawing the inputs
        again (up to :data:`NET_ATTEMPTS` times) where the op refuses them; False if it
        never accepted any (nothing added). The first input is a recent value or any;
        further ones a value of the same type, any value, or a fresh ``parameter`` of a
        shape made from the first's (:func:`~tests.attr_domains.shapes_near`)."""
        pool = list(self.types)
        most = op.max_inputs if op.max_inputs is not None else op.min_inputs + 1
        count = st.integers(max(op.min_inputs, 1), max(most, 1))
        for _ in range(NET_ATTEMPTS):
            mark = len(self.b.nodes)
            first = draw(st.sampled_from(pool[-3:] if draw(st.booleans()) else pool))
            inputs = self._operands(draw, pool, first, draw(count))
            if inputs is not None and self.add_drawn(draw, op.name, inputs) is not None:
                return True
            self.rollback(mark)
        return False

    def _operands(
        self, draw: st.DrawFn, pool: list[str], first: str, count: int
    ) -> list[str] | None:
        inputs = [first]
        for _ in range(count - 1):
            kind = draw(st.sampled_from(["parameter", "same", "any"]))
            if kind == "parameter":
                shape = draw(st.sampled_from(shapes_near([self.types[first]])))
                name = self.add_drawn(draw, "parameter", [], shape=shape)
                if name is None:
                    return None
                inputs.append(name)
                continue
            same = [v for v in pool if self.types[v] == self.types[first]]
            inputs.append(draw(st.sampled_from(same if kind == "same" else pool)))
        return inputs

    def rollback(self, mark: int) -> None:
        """Drop the nodes added since there were ``mark``."""
        for entry in self.b.nodes[mark:]:
            del self.types[entry["name"]]
        del self.b.nodes[mark:]


@st.composite
def net_specs(draw: st.DrawFn) -> Spec:
    """A random network of any ops: one input (an image, a signal, a vector, a float
    sequence, or tokens read by an embedding), then one to seven nodes, each an op of the
    registry with inputs and attributes the op accepts (branches, joins of several values,
    learned tensors as operands). Every dead end is an output, after a hidden linear layer
    and a linear head where it has an axis to read, so that growth passes find inner
    layers to grow."""
    kind = draw(st.sampled_from(sorted(NET_INPUTS)))
    spec_input = NET_INPUTS[kind](draw)
    net = Net(
        SpecBuilder(),
        {"x": TensorType(tuple(spec_input["shape"]), spec_input.get("dtype", "float32"))},
    )
    if kind == "tokens":
        net.add_drawn(draw, "embedding", ["x"], embedding_dim=draw(WIDTHS), padding_idx=None)
    ops = sorted(OPS, key=lambda op: (op != "linear", op))  # shrinks towards linear layers
    for _ in range(draw(st.integers(1, 7))):
        for _ in range(NET_ATTEMPTS):
            if net.draw_node(draw, OPS[draw(st.sampled_from(ops))]):
                break
    if not net.b.nodes:
        assert net.try_add("relu", ["x"], {}, "relu0") is None
    used = {i for entry in net.b.nodes for i in entry["inputs"]}
    for leaf in [e["name"] for e in net.b.nodes if e["name"] not in used]:
        out = leaf
        for width in (4, 3):
            out = net.add_drawn(draw, "linear", [out], out_features=width) or out
        net.b.output(out)
    return net.b.spec(draw, "net", {"x": spec_input})


# ---- graphs -----------------------------------------------------------------------------

SPEC_STRATEGIES: dict[str, Callable[[], st.SearchStrategy[Spec]]] = {
    "mlp": mlp_specs,
    "cnn": cnn_specs,
    "seq": seq_specs,
    "staged": staged_specs,
    "net": net_specs,
}


def specs(families: tuple[str, ...] = FAMILIES) -> st.SearchStrategy[Spec]:
    """Spec data of a random network of one of ``families``."""
    return st.one_of(*(SPEC_STRATEGIES[f]() for f in families))


@st.composite
def graphs(draw: st.DrawFn, families: tuple[str, ...] = FAMILIES) -> Graph:
    """A verified random network (see :func:`specs`) with random batchnorm statistics,
    norm affine parameters and parameters that start constant, so that no identity holds
    by accident; its outputs are finite on random inputs (a ``div`` by a value that may be
    0 gives Inf or NaN there, and a network computing NaN has no function to preserve)."""
    graph = load_spec(draw(specs(families)))
    seed = draw(st.integers(0, 9))
    graph = unequal_params(randomize_norms(graph, seed=seed), seed=seed)
    assume(finite_outputs(graph))
    return graph


def finite_outputs(graph: Graph) -> bool:
    """Whether every output of ``graph`` (eval mode) is finite on two random probes."""
    module = to_torch(graph).eval()
    for batch, seed in ((2, 0), (3, 1)):
        inputs = random_inputs(graph, batch=batch, seed=seed)
        with torch.no_grad():
            out = module(**inputs)
        outs = out.values() if isinstance(out, dict) else [out]
        if not all(torch.isfinite(o).all() for o in outs if o.is_floating_point()):
            return False
    return True


def unequal_params(graph: Graph, seed: int = 0) -> Graph:
    """``graph`` with every float parameter whose entries all start equal (``mix`` weights,
    attention's zero projection biases) drawn from N(0, 1), so that no symmetry or zero
    holds by accident; buffers (statistics, masks) are left as they are."""
    gen = torch.Generator().manual_seed(seed)
    params = dict(graph.params)
    for n in graph.nodes:
        if n.share is not None:
            continue
        for key, spec in graph.node_params(n).items():
            t = graph.params[key]
            if spec.buffer or not t.is_floating_point() or t.numel() < 2:
                continue
            if torch.all(t == t.flatten()[0]):
                params[key] = torch.randn(t.shape, generator=gen).to(t.dtype)
    return graph.replace(params=params)


class _Covered(Exception):
    """Raised inside a search to stop it once every op has been drawn."""


@functools.cache
def ops_drawn(families: tuple[str, ...], max_examples: int) -> frozenset[str]:
    """The ops of the spec nodes drawn from :func:`specs` of ``families`` (derandomized,
    so the same every run), drawing until every op of the registry has appeared or
    ``max_examples`` specs were drawn: the coverage guards' search, which costs only what
    coverage needs (and, being deterministic, is searched once per session)."""
    seen: set[str] = set()

    @settings(
        max_examples=max_examples,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(spec=specs(families))
    def collect(spec: Spec) -> None:
        seen.update(entry["op"] for entry in spec["nodes"] if "op" in entry)
        if seen >= set(OPS):
            raise _Covered

    with contextlib.suppress(_Covered):
        collect()
    return frozenset(seen)


# ---- pass arguments ---------------------------------------------------------------------


DENSE_OPS = ("linear", "conv1d", "conv2d")


def layer_ops(graph: Graph, value: str) -> list[str]:
    """Ops ``insert_layer`` can put after ``value``, by its rank: linear and layernorm act
    on the last axis, conv and batchnorm on axis 1 of ``[N, C, ...]``."""
    t = graph.types[value]
    if t.rank == 4:
        return ["conv2d", "batchnorm"]
    if t.rank == 3 and isinstance(t.shape[1], int):
        return ["conv1d", "batchnorm", "linear", "layernorm"]
    if t.rank == 3:
        return ["linear", "layernorm"]
    return ["linear", "batchnorm", "layernorm"]


def _widen(graph: Graph) -> st.SearchStrategy[dict[str, Any]] | None:
    candidates = widenable(graph)
    if not candidates:
        return None

    def args(node: str) -> st.SearchStrategy[dict[str, Any]]:
        group = channel_group(graph, node)
        old = group.channels
        # grouped convs make a group of parts, each grown alike: old + parts is the least
        widths = sorted({old + 1, old + 2, old + group.parts, 2 * old, 3 * old})

        def with_init(init: str) -> st.SearchStrategy[dict[str, Any]]:
            # noise breaks the symmetry of copies: only net2net makes any
            noise = [0.0, 0.0, 0.0, 0.1] if init == "net2net" else [0.0]
            return st.fixed_dictionaries(
                {
                    "node": st.just(node),
                    "width": st.sampled_from(widths),
                    "init": st.just(init),
                    "seed": st.integers(0, 9),
                    "noise": st.sampled_from(noise),
                }
            )

        return st.sampled_from(["net2net", "net2net", "zero", "lemon"]).flatmap(with_init)

    return st.sampled_from(candidates).flatmap(args)


def _prune(graph: Graph) -> st.SearchStrategy[dict[str, Any]] | None:
    candidates = prunable(graph)
    if not candidates:
        return None

    def args(node: str) -> st.SearchStrategy[dict[str, Any]]:
        n = channel_group(graph, node).channels
        channels = st.lists(st.integers(0, n - 1), min_size=1, max_size=n - 1, unique=True)
        choice = st.one_of(
            st.fixed_dictionaries(
                {"keep": st.integers(1, n - 1), "importance": st.sampled_from(["l1", "l2"])}
            ),
            st.fixed_dictionaries({"keep": st.sampled_from([0.25, 0.5, 0.75])}),
            st.fixed_dictionaries({"drop": channels}),
        )
        return choice.map(lambda a: {"node": node, **a})

    return st.sampled_from(candidates).flatmap(args)


def _prune_connections(graph: Graph) -> st.SearchStrategy[dict[str, Any]] | None:
    layers = [n.name for n in graph.nodes if n.op in DENSE_OPS and not n.share]
    layers = [n for n in layers if not any(m.share == n for m in graph.nodes)]
    if not layers:
        return None
    return st.fixed_dictionaries(
        {"node": st.sampled_from(layers), "density": st.sampled_from([0.2, 0.5, 0.9, 1.0])}
    )


def _needs_a_probe(graph: Graph) -> None:
    """Passes that read a probe batch (tensors, from Python or the trainer) get no
    arguments from a strategy."""
    return None


def _insert_layer(graph: Graph) -> st.SearchStrategy[dict[str, Any]] | None:
    values = [v for v in graph.value_names() if graph.types[v].is_float]

    def args(after: str) -> st.SearchStrategy[dict[str, Any]]:
        def for_op(op: str) -> st.SearchStrategy[dict[str, Any]]:
            conv = op.startswith("conv")
            dense = op in ("linear", *DENSE_OPS)
            return st.fixed_dictionaries(
                {
                    "after": st.just(after),
                    "op": st.just(op),
                    "init": st.sampled_from(["identity", "identity", "zero", "gauss", "uniform"]),
                    # layernorm has no identity: it goes in as a residual branch
                    "residual": st.just(True) if op == "layernorm" else st.booleans(),
                    "activation": st.sampled_from([None, None, "relu", *ACTIVATIONS[1:5]])
                    if dense
                    else st.just(None),
                    "kernel_size": st.sampled_from([1, 3]) if conv else st.just(None),
                    "seed": st.integers(0, 9),
                }
            )

        return st.sampled_from(layer_ops(graph, after)).flatmap(for_op)

    return st.sampled_from(values).flatmap(args) if values else None


def _insert_block(graph: Graph) -> st.SearchStrategy[dict[str, Any]] | None:
    if not graph.stages:
        return None
    return st.fixed_dictionaries(
        {
            "stage": st.sampled_from(sorted(graph.stages)),
            "init": st.sampled_from(["zero", "zero", "gauss", "uniform"]),
            "seed": st.integers(0, 9),
        }
    )


def _add_adapter(graph: Graph) -> st.SearchStrategy[dict[str, Any]] | None:
    layers = [n.name for n in graph.nodes if n.op in DENSE_OPS]

    def args(node: str) -> st.SearchStrategy[dict[str, Any]]:
        kinds = ["lora", "serial"] if graph.node(node).op == "linear" else ["parallel", "serial"]
        deps = sorted(graph.output_deps[node])
        return st.fixed_dictionaries(
            {
                "node": st.just(node),
                "kind": st.sampled_from(kinds),
                "rank": st.integers(1, 4),
                "task": st.sampled_from([None, deps[0]]) if len(deps) == 1 else st.just(None),
                "seed": st.integers(0, 9),
            }
        )

    return st.sampled_from(layers).flatmap(args) if layers else None


def _fork_task(graph: Graph) -> st.SearchStrategy[dict[str, Any]]:
    task = next(
        f"task{i}" for i in range(len(graph.outputs) + 1) if f"task{i}" not in graph.outputs
    )

    def args(base: str) -> st.SearchStrategy[dict[str, Any]]:
        path = [n.name for n in graph.nodes if base in graph.output_deps[n.name]]
        owning = [n for n in path if graph.node_params(n)]
        dense = [n for n in owning if graph.node(n).op in DENSE_OPS]
        new = st.lists(st.sampled_from(owning), max_size=2, unique=True) if owning else st.just([])

        def with_new(chosen: list[str]) -> st.SearchStrategy[dict[str, Any]]:
            free = [n for n in dense if n not in chosen]
            adapt = (
                st.lists(st.sampled_from(free), max_size=2, unique=True) if free else st.just([])
            )
            last = graph.outputs[base]
            # a new head replaces a linear or conv output layer that is not itself copied
            heads = [None, 2] if graph.node(last).op in DENSE_OPS else [None]
            return adapt.flatmap(lambda adapted: fork(chosen, adapted, heads))

        def fork(
            chosen: list[str], adapted: list[str], heads: list[int | None]
        ) -> st.SearchStrategy[dict[str, Any]]:
            ops = {graph.node(n).op for n in adapted}
            if graph.outputs[base] in (*chosen, *adapted):  # the head replaces the output layer
                heads = [None]
            kinds = ["auto", "auto", "serial"]
            kinds += ["lora"] if ops <= {"linear"} else ["parallel"] if "linear" not in ops else []
            return st.fixed_dictionaries(
                {
                    "task": st.just(task),
                    "base": st.just(base),
                    "new": st.just(chosen),
                    "adapt": st.just(adapted),
                    "head": st.sampled_from(heads),
                    "adapter": st.sampled_from(kinds),
                    "rank": st.integers(1, 3),
                    "seed": st.integers(0, 9),
                }
            )

        return new.flatmap(with_new)

    return st.sampled_from(sorted(graph.outputs)).flatmap(args)


def _attention_nodes(graph: Graph) -> list[str]:
    return [n.name for n in graph.nodes if n.op in head_ops()]


def _add_heads(graph: Graph) -> st.SearchStrategy[dict[str, Any]] | None:
    nodes = _attention_nodes(graph)
    if not nodes:
        return None
    return st.sampled_from(nodes).flatmap(
        lambda n: st.fixed_dictionaries(
            {
                "node": st.just(n),
                "heads": st.integers(1, 3).map(
                    lambda k: (
                        graph.node(n).attrs.num_heads + k * (graph.node(n).attrs.num_kv_heads or 1)
                    )
                ),
                "seed": st.integers(0, 9),
            }
        )
    )


def _prune_heads(graph: Graph) -> st.SearchStrategy[dict[str, Any]] | None:
    nodes = [n for n in _attention_nodes(graph) if graph.node(n).attrs.num_heads > 1]
    if not nodes:
        return None
    return st.sampled_from(nodes).flatmap(
        lambda n: st.fixed_dictionaries(
            {"node": st.just(n), "keep": st.integers(1, graph.node(n).attrs.num_heads - 1)}
        )
    )


def _grow_head_dim(graph: Graph) -> st.SearchStrategy[dict[str, Any]] | None:
    # a per-head query/key norm refuses wider heads (tests/test_attention_variants.py)
    nodes = [n for n in _attention_nodes(graph) if graph.node(n).attrs.qk_norm_eps is None]
    if not nodes:
        return None

    def args(n: str) -> st.SearchStrategy[dict[str, Any]]:
        node = graph.node(n)
        hd = node.attrs.head_dim or graph.types[n].shape[-1] // node.attrs.num_heads
        if node.attrs.rope_theta is not None and node.attrs.rotary_dim is None:
            # rotary over the whole head: multiples keep every pair
            sizes = st.integers(2, 3).map(lambda k: k * hd)
        else:
            sizes = st.integers(hd + 1, 2 * hd + 1)
        return st.fixed_dictionaries({"node": st.just(n), "head_dim": sizes})

    return st.sampled_from(nodes).flatmap(args)


def _grow_kv_heads(graph: Graph) -> st.SearchStrategy[dict[str, Any]] | None:
    """A grouped-query attention and a larger multiple of its key/value heads that divides
    its query heads."""
    options = [
        (n.name, k)
        for n in graph.nodes
        if n.op in head_ops() and n.attrs.num_kv_heads is not None
        for k in range(n.attrs.num_kv_heads + 1, n.attrs.num_heads + 1)
        if k % n.attrs.num_kv_heads == 0 and n.attrs.num_heads % k == 0
    ]
    if not options:
        return None
    return st.sampled_from(options).map(lambda o: {"node": o[0], "kv_heads": o[1]})


def _grow_vocab(graph: Graph) -> st.SearchStrategy[dict[str, Any]] | None:
    tables = [n.name for n in graph.nodes if n.opdef.facts.index_bound is not None]
    if not tables:
        return None

    def args(n: str) -> st.SearchStrategy[dict[str, Any]]:
        old = graph.node(n).attrs.num_embeddings
        return st.fixed_dictionaries({"node": st.just(n), "size": st.integers(old + 1, 2 * old)})

    return st.sampled_from(tables).flatmap(args)


def _stack_blocks(graph: Graph) -> st.SearchStrategy[dict[str, Any]] | None:
    if not graph.stages:
        return None

    def args(stage: str) -> st.SearchStrategy[dict[str, Any]]:
        depth = graph.stages[stage].depth
        return st.integers(0, depth - 1).flatmap(
            lambda start: st.fixed_dictionaries(
                {
                    "stage": st.just(stage),
                    "start": st.just(start),
                    "stop": st.integers(start + 1, depth),
                    "mode": st.sampled_from(["stack", "interpolate"]),
                }
            )
        )

    return st.sampled_from(sorted(graph.stages)).flatmap(args)


Args = Mapping[str, Any]


def _widen_preserved(graph: Graph, args: Args) -> bool:
    return not args.get("noise")


def _insert_layer_preserved(graph: Graph, args: Args) -> bool:
    ok = ("identity", "zero") if args.get("residual") else ("identity",)
    return args.get("init", "identity") in ok


def _insert_block_preserved(graph: Graph, args: Args) -> bool:
    block = graph.stages[args["stage"]].block
    return args.get("init", "zero") == "zero" and BLOCK_EXACT[block]


def _init_reason(default: str) -> Callable[[Graph, Args], str]:
    def reason(graph: Graph, args: Args) -> str:
        init = args.get("init", default)
        if default == "zero" and init == "zero":
            return "block"  # the block's shape: no plain skip, or an activation after the add
        return f"init '{init}'"

    return reason


@dataclass(frozen=True)
class PassRecord:
    """What the property tests know about one registered pass.

    Attributes:
        arguments: a strategy for plausible arguments on a graph (None: nothing to apply to).
        preserved: whether the pass documents its result as preserving for these arguments;
            None where the pass proves it case by case (the claim is then checked
            numerically, like every other).
        reason: a phrase the reason of a non-preserving result must contain.
        both_claims: random sequences must see it both preserve and not.
        sequences: drawn by the shared random sequences of tests/test_pass_properties.py
            (False: a pass whose own property test draws it, with these arguments).
    """

    arguments: Callable[[Graph], st.SearchStrategy[dict[str, Any]] | None]
    preserved: Callable[[Graph, Args], bool | None]
    reason: Callable[[Graph, Args], str]
    both_claims: bool = True
    sequences: bool = True


PASS_RECORDS: dict[str, PassRecord] = {
    "widen": PassRecord(_widen, _widen_preserved, lambda g, a: "noise"),
    "insert_layer": PassRecord(_insert_layer, _insert_layer_preserved, _init_reason("identity")),
    "insert_block": PassRecord(_insert_block, _insert_block_preserved, _init_reason("zero")),
    "add_adapter": PassRecord(_add_adapter, lambda g, a: True, lambda g, a: "", both_claims=False),
    "fork_task": PassRecord(
        _fork_task, lambda g, a: a.get("head") is None, lambda g, a: "new head"
    ),
    # prune proves preservation per case (dead channels); tests/test_prune_properties.py
    # draws it in its own sequences (with widen) and checks the same invariants there
    "prune": PassRecord(
        _prune, lambda g, a: None, lambda g, a: "chang", both_claims=False, sequences=False
    ),
    "prune_connections": PassRecord(
        _prune_connections,
        lambda g, a: None,
        lambda g, a: "chang",
        both_claims=False,
        sequences=False,
    ),
    # the remaining passes apply to few random graphs (attention, an embedding table, a
    # probe batch): tests/test_onnx_random.py and their own tests draw them
    "grow_connections": PassRecord(
        _needs_a_probe, lambda g, a: True, lambda g, a: "", both_claims=False, sequences=False
    ),
    "add_heads": PassRecord(
        _add_heads, lambda g, a: True, lambda g, a: "", both_claims=False, sequences=False
    ),
    "prune_heads": PassRecord(
        _prune_heads, lambda g, a: None, lambda g, a: "live", both_claims=False, sequences=False
    ),
    "grow_head_dim": PassRecord(
        _grow_head_dim, lambda g, a: True, lambda g, a: "", both_claims=False, sequences=False
    ),
    "grow_kv_heads": PassRecord(
        _grow_kv_heads, lambda g, a: True, lambda g, a: "", both_claims=False, sequences=False
    ),
    "grow_vocab": PassRecord(
        _grow_vocab, lambda g, a: True, lambda g, a: "", both_claims=False, sequences=False
    ),
    "stack_blocks": PassRecord(
        _stack_blocks,
        lambda g, a: False if a.get("mode", "stack") == "stack" else None,
        lambda g, a: "",
        both_claims=False,
        sequences=False,
    ),
}
"""One record per registered pass: a test fails when a pass has none (tests cover every
pass in ``PASSES``)."""

PASS_NAMES = tuple(name for name, record in PASS_RECORDS.items() if record.sequences)
"""The passes the shared random sequences draw."""


def pass_arguments(graph: Graph, name: str) -> st.SearchStrategy[dict[str, Any]] | None:
    """A strategy for plausible arguments of pass ``name`` on ``graph`` (it may still
    refuse them), or None when the graph has nothing the pass could apply to.

    widen picks a node :func:`~grow_ir.passes.channels.widenable` lists and a larger width
    (sometimes a multiple, as layernorm in the group requires); insert_layer a float value
    and an op of its rank; insert_block a stage; add_adapter a linear or conv layer (with
    ``task`` when it feeds a single output); fork_task a base output and subsets of the
    layers on its path to copy (``new``) or adapt.
    """
    return PASS_RECORDS[name].arguments(graph)
