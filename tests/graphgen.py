"""Hypothesis strategies for random valid networks and random growth-pass arguments.

Networks are drawn as spec data (the mapping ``load_spec`` reads), in four families that
together use every op:

- ``mlp``: linear layers of random widths with batchnorm/layernorm, every activation,
  dropout, residual adds, concat branches, multiplicative gates and ``mix`` choices;
- ``cnn``: conv2d (or conv1d) layers with batchnorm, residual blocks, concat branches,
  gates, max/avg pooling, and a global_avgpool or flatten boundary to linear layers;
- ``seq``: embedding (or a float sequence), layernorm, self-attention and GELU MLP blocks
  with residual adds;
- ``staged``: networks whose middle is one or two stages of a ``blocks:`` template
  (ResNet basic blocks, residual MLPs, pre-norm MLPs, transformer blocks), so that
  ``insert_block`` has something to grow.

Every family ends in one to three heads (several outputs), some after a softmax. Widths
are small so that a whole network runs in a millisecond or two.

:func:`pass_arguments` draws plausible arguments of a growth pass for a given graph; the
pass may still refuse them (with a PassError saying why), which callers should allow.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from hypothesis import strategies as st

from grow_ir.ir.graph import Graph
from grow_ir.passes.channels import channel_group, widenable
from grow_ir.passes.heads import head_ops
from grow_ir.passes.prune import prunable
from grow_ir.probes import randomize_norms
from grow_ir.spec import load_spec

ACTIVATIONS = (
    "relu",
    "gelu",
    "silu",
    "tanh",
    "sigmoid",
    "identity",
    "hardtanh",
    "relu6",
    "hardswish",
    "hardsigmoid",
    "leaky_relu",
    "elu",
)
"""Activations drawn between layers (dropout is drawn on its own)."""

FAMILIES = ("mlp", "cnn", "seq", "staged")
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


def activation(draw: st.DrawFn, b: SpecBuilder, x: str) -> str:
    """One activation of any kind after ``x``, sometimes followed by dropout."""
    act = draw(st.sampled_from(ACTIVATIONS))
    attrs = {"approximate": draw(st.sampled_from(["none", "tanh"]))} if act == "gelu" else {}
    y = b.add(act, x, **attrs)
    if draw(st.integers(0, 4)) == 0:
        y = b.add("dropout", y, p=draw(st.sampled_from([0.0, 0.1, 0.5])))
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
        y = b.add("linear", x, out_features=w, bias=draw(st.booleans()))
        norm = draw(st.sampled_from([None, "batchnorm", "layernorm"]))
        if norm:
            y = b.add(norm, y)
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


def _cnn_layer(draw: st.DrawFn, b: SpecBuilder, x: Image) -> Image:
    """One conv unit after ``x``."""
    dims = len(x.size)
    kinds = ["conv", "conv", "residual", "concat", "gate"]
    if dims == 2 and min(x.size) >= 2:
        kinds.append("pool")
    kind = draw(st.sampled_from(kinds))
    if kind == "conv":
        c, k = draw(WIDTHS), draw(st.sampled_from([1, 3]))
        stride = draw(st.sampled_from([1, 2])) if min(x.size) >= 4 else 1
        y = _conv(b, x.value, dims, c, k, stride, bias=draw(st.booleans()))
        if draw(st.booleans()):
            y = b.add("batchnorm", y)
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
        h = b.add(
            "attention",
            h,
            num_heads=heads,
            causal=draw(st.booleans()),
            bias=draw(st.booleans()),
            **extra,
        )
        return b.add("add", [x, h]), width
    if kind == "mlp":
        norm = draw(st.sampled_from(["layernorm", "rmsnorm"]))
        h = b.add(norm, x, elementwise_affine=draw(st.booleans()))
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


# ---- graphs -----------------------------------------------------------------------------

SPEC_STRATEGIES: dict[str, Callable[[], st.SearchStrategy[Spec]]] = {
    "mlp": mlp_specs,
    "cnn": cnn_specs,
    "seq": seq_specs,
    "staged": staged_specs,
}


def specs(families: tuple[str, ...] = FAMILIES) -> st.SearchStrategy[Spec]:
    """Spec data of a random network of one of ``families``."""
    return st.one_of(*(SPEC_STRATEGIES[f]() for f in families))


@st.composite
def graphs(draw: st.DrawFn, families: tuple[str, ...] = FAMILIES) -> Graph:
    """A verified random network (see :func:`specs`) with random batchnorm statistics and
    norm affine parameters, so that no identity holds by accident."""
    graph = load_spec(draw(specs(families)))
    return randomize_norms(graph, seed=draw(st.integers(0, 9)))


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
        old = channel_group(graph, node).channels

        def with_init(init: str) -> st.SearchStrategy[dict[str, Any]]:
            # noise breaks the symmetry of copies: only net2net makes any
            noise = [0.0, 0.0, 0.0, 0.1] if init == "net2net" else [0.0]
            return st.fixed_dictionaries(
                {
                    "node": st.just(node),
                    "width": st.sampled_from([old + 1, old + 2, 2 * old, 3 * old]),
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
    nodes = _attention_nodes(graph)
    if not nodes:
        return None

    def args(n: str) -> st.SearchStrategy[dict[str, Any]]:
        node = graph.node(n)
        hd = node.attrs.head_dim or graph.types[n].shape[-1] // node.attrs.num_heads
        if node.attrs.rope_theta is not None:  # rotary: multiples keep every pair
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
