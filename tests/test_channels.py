"""Channel-dependency analysis: the group of tensors that grow together, read off op rules."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

from grow_ir.errors import PassError
from grow_ir.ir import Graph, Node, TensorType, initialize, verify
from grow_ir.passes import channel_group, channels, widenable
from grow_ir.passes.channels import ChannelGroup, ParamAxis, Role, Slot
from grow_ir.spec import load_spec
from tests.channel_graphs import residual
from tests.graphgen import graphs


def build(inputs: dict, nodes: list[tuple], outputs: dict) -> Graph:
    """A verified graph from ``{input: shape or (shape, dtype)}`` and ``(name, op, attrs,
    inputs)`` tuples."""
    types = {k: TensorType(*v) if v[-1] == "int64" else TensorType(v) for k, v in inputs.items()}
    nodes = [Node(n, op, attrs, inputs=tuple(i)) for n, op, attrs, i in nodes]
    return verify(initialize(Graph(types, nodes, outputs)))


def conv(name: str, src: str, width: int, **extra: object) -> tuple:
    return (name, "conv2d", {"out_channels": width, "kernel_size": 3, "padding": 1, **extra}, [src])


def lin(name: str, src: str, width: int) -> tuple:
    return (name, "linear", {"out_features": width}, [src])


def roles(graph: Graph, node: str) -> dict[str, tuple[str, ...]]:
    return {m.node: tuple(r.value for r in m.roles) for m in channel_group(graph, node).members}


RESIDUAL = build(
    {"img": ("batch", 3, 6, 6)},
    [
        conv("stem", "img", 4),
        ("stem_bn", "batchnorm", {}, ["stem"]),
        ("stem_act", "relu", {}, ["stem_bn"]),
        conv("b1_conv", "stem_act", 4),
        ("b1_bn", "batchnorm", {}, ["b1_conv"]),
        ("b1_sum", "add", {}, ["b1_bn", "stem_act"]),
        ("b1_act", "relu", {}, ["b1_sum"]),
        ("pool", "global_avgpool", {}, ["b1_act"]),
        lin("head", "pool", 3),
    ],
    {"logits": "head"},
)


def test_mlp_group() -> None:
    g = build(
        {"x": ("batch", 5)},
        [
            lin("fc1", "x", 6),
            ("bn", "batchnorm", {}, ["fc1"]),
            ("act", "relu", {}, ["bn"]),
            lin("fc2", "act", 3),
        ],
        {"y": "fc2"},
    )
    group = channel_group(g, "fc1")
    assert group.channels == 6
    assert group.slots == (Slot("act", 1), Slot("bn", 1), Slot("fc1", 1))
    assert roles(g, "fc1") == {
        "fc1": ("producer",),
        "bn": ("per-channel",),
        "act": ("pass",),
        "fc2": ("consumer",),
    }
    assert group.member("fc1").width_attrs == (("out_features", 1),)
    assert group.param_axes() == {
        "fc1.bias": (ParamAxis("fc1.bias", 0, 0, 1, "units"),),
        "fc1.weight": (ParamAxis("fc1.weight", 0, 0, 1, "units"),),
        "bn.bias": (ParamAxis("bn.bias", 0, 0, 1, "units"),),
        "bn.running_mean": (ParamAxis("bn.running_mean", 0, 0, 1, "units"),),
        "bn.running_var": (ParamAxis("bn.running_var", 0, 0, 1, "units"),),
        "bn.weight": (ParamAxis("bn.weight", 0, 0, 1, "units"),),
        "fc2.weight": (ParamAxis("fc2.weight", 1, 0, 1, "fan_out"),),
    }
    assert group.norms == ()


def test_residual_group_is_the_same_from_every_producer() -> None:
    a, b = channel_group(RESIDUAL, "stem"), channel_group(RESIDUAL, "b1_conv")
    assert (a.slots, a.members) == (b.slots, b.members)
    assert a.producers == ("stem", "b1_conv")
    assert a.consumers == ("b1_conv", "head")
    assert a.with_role(Role.PER_CHANNEL) == ("stem_bn", "b1_bn")
    axes = a.member("b1_conv").axes
    assert ParamAxis("b1_conv.weight", 0, 0, 1, "units") in axes
    assert ParamAxis("b1_conv.weight", 1, 0, 1, "fan_out") in axes
    assert Slot("pool", 1) in a.slots  # global_avgpool keeps the channels on axis 1


def test_concat_offsets() -> None:
    g = build(
        {"x": ("batch", 5)},
        [
            lin("a", "x", 4),
            lin("b", "x", 6),
            ("cat", "concat", {"dim": 1}, ["a", "b"]),
            lin("head", "cat", 3),
        ],
        {"y": "head"},
    )
    assert Slot("cat", 1, 4, 1) in channel_group(g, "b").slots
    assert channel_group(g, "b").member("head").axes == (
        ParamAxis("head.weight", 1, 4, 1, "fan_out"),
    )
    assert channel_group(g, "a").member("head").axes == (
        ParamAxis("head.weight", 1, 0, 1, "fan_out"),
    )


def test_concat_along_another_axis_joins_its_inputs() -> None:
    g = build(
        {"x": ("batch", 3, 5)},
        [
            lin("a", "x", 4),
            lin("b", "x", 4),
            ("cat", "concat", {"dim": 1}, ["a", "b"]),
            lin("head", "cat", 2),
        ],
        {"y": "head"},
    )
    group = channel_group(g, "a")
    assert group.producers == ("a", "b")
    assert Slot("cat", 2) in group.slots


def test_flatten_makes_blocks() -> None:
    g = build(
        {"img": ("batch", 2, 4, 5)},
        [conv("c1", "img", 3), ("flat", "flatten", {}, ["c1"]), lin("head", "flat", 2)],
        {"y": "head"},
    )
    group = channel_group(g, "c1")
    assert Slot("flat", 1, 0, 20) in group.slots
    assert group.member("head").axes == (ParamAxis("head.weight", 1, 0, 20, "fan_out"),)


def test_flatten_after_the_channel_axis_keeps_it() -> None:
    g = build(
        {"img": ("batch", 2, 4, 5)},
        [
            conv("c1", "img", 3),
            ("flat", "flatten", {"start_dim": 2}, ["c1"]),
            ("c2", "conv1d", {"out_channels": 2, "kernel_size": 1}, ["flat"]),
        ],
        {"y": "c2"},
    )
    group = channel_group(g, "c1")
    assert Slot("flat", 1) in group.slots and group.consumers == ("c2",)


def test_layernorm_is_a_norm_of_the_group() -> None:
    g = build(
        {"tok": (("batch", "seq"), "int64")},
        [
            ("emb", "embedding", {"num_embeddings": 9, "embedding_dim": 4}, ["tok"]),
            ("ln", "layernorm", {}, ["emb"]),
            lin("head", "ln", 2),
        ],
        {"y": "head"},
    )
    group = channel_group(g, "emb")
    assert group.norms == ("ln",)
    assert group.member("emb").axes == (ParamAxis("emb.weight", 1, 0, 1, "units"),)
    assert group.member("emb").width_attrs == (("embedding_dim", 1),)
    assert group.with_role(Role.PER_CHANNEL) == ("ln",)


def test_layernorm_over_part_of_an_axis_is_refused() -> None:
    g = build(
        {"x": ("batch", 5)},
        [
            lin("a", "x", 4),
            lin("b", "x", 3),
            ("cat", "concat", {"dim": 1}, ["a", "b"]),
            ("ln", "layernorm", {}, ["cat"]),
            lin("head", "ln", 2),
        ],
        {"y": "head"},
    )
    with pytest.raises(PassError, match="which holds other channels besides the group's"):
        channel_group(g, "a")


def test_depthwise_conv_is_per_channel() -> None:
    g = build(
        {"img": ("batch", 2, 5, 5)},
        [conv("c1", "img", 4), conv("dw", "c1", 4, groups=4), conv("pw", "dw", 3)],
        {"y": "pw"},
    )
    group = channel_group(g, "c1")
    dw = group.member("dw")
    assert dw.roles == (Role.PER_CHANNEL,)
    assert dw.width_attrs == (("groups", 1), ("out_channels", 1))
    assert dw.axes == (
        ParamAxis("dw.bias", 0, 0, 1, "units"),
        ParamAxis("dw.weight", 0, 0, 1, "units"),
    )
    assert channel_group(g, "dw").members == group.members


def test_refusal_names_the_start_node_and_the_blocker() -> None:
    g = build(
        {"x": ("batch", 5)},
        [lin("fc1", "x", 4), ("sm", "softmax", {"dim": 1}, ["fc1"]), lin("fc2", "sm", 2)],
        {"y": "fc2"},
    )
    with pytest.raises(PassError) as info:
        channel_group(g, "fc1")
    assert info.value.node == "fc1"
    assert "softmax 'sm' normalises over the channel axis (1)" in info.value.message


def test_widenable() -> None:
    assert widenable(RESIDUAL) == ["stem", "b1_conv"]


# ---- the walk's memo --------------------------------------------------------------------


class _EveryTime(channels._Walk):
    """The walk asking every op rule every time it reaches a node, and following every
    node again from every slot it is reached from: what the memo (by node kind) and the
    skipped repeats must not change."""

    def memo(self, what, node, compute, *extra):  # type: ignore[no-untyped-def]
        return compute()

    def through(self, node: Node, k: int, slot: Slot) -> None:
        self.follow(node, k, slot)


def groups_of(graph: Graph) -> dict[str, ChannelGroup | str]:
    """Every width node's channel group, or the refusal's message."""
    out: dict[str, ChannelGroup | str] = {}
    for n in graph.nodes:
        if n.opdef.facts.width_attr is not None:
            try:
                out[n.name] = channel_group(graph, n.name)
            except PassError as exc:
                out[n.name] = exc.message
    return out


def same_groups_every_time(graph: Graph, monkeypatch: pytest.MonkeyPatch) -> None:
    memoised = groups_of(graph)
    with monkeypatch.context() as m:
        m.setattr(channels, "_Walk", _EveryTime)
        assert groups_of(graph) == memoised


EXAMPLES = Path(__file__).resolve().parent.parent / "grow_ir" / "examples"


@pytest.mark.parametrize("example", ["resnet", "transformer", "concat", "multitask"])
def test_the_walks_memo_changes_no_group(example: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Groups of alike nodes (a stage's blocks, a transformer's layers), found with each
    op rule asked once per node kind, are those found asking every time."""
    graph = load_spec(EXAMPLES / f"{example}.yaml")
    same_groups_every_time(graph, monkeypatch)


@settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(graph=graphs())
def test_the_walks_memo_changes_no_group_of_random_graphs(
    graph: Graph, monkeypatch: pytest.MonkeyPatch
) -> None:
    same_groups_every_time(graph, monkeypatch)


def test_a_groups_description_names_its_first_members_and_counts_the_rest() -> None:
    group = channel_group(residual(), "stem")  # stem, stem_bn, b1_conv, b1_bn, head
    assert group.describe() == (
        "stem (producer), stem_bn (per-channel), b1_conv (producer, consumer), "
        "b1_bn (per-channel), head (consumer)"
    )
    assert group.describe(most=2) == (
        "stem (producer), stem_bn (per-channel) and 3 more (1 producer, 2 consumer, 1 per-channel)"
    )
