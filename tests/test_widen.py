"""The widen pass: structure, function preservation on randomised norms, origins, refusals."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from grow_ir.errors import GrowError, PassError
from grow_ir.ir import Graph, Node
from grow_ir.passes import (
    PassResult,
    channel_group,
    insert_block,
    output_error,
    run_plan,
    widen,
    widenable,
)
from grow_ir.passes.regroup import axis_plan
from grow_ir.probes import randomize_norms
from grow_ir.spec import dump_spec, load_spec
from tests.channel_graphs import (
    build,
    concat,
    conv1d,
    conv_bn_conv,
    depthwise,
    embedding_ln,
    embedding_relu,
    flatten,
    gap,
    grouped,
    mlp,
    pools_gate,
    residual,
)

TOL = 1e-5


def widen_checked(graph: Graph, **kwargs) -> PassResult:
    """Widen a graph with randomised norms; check preservation and that the input is intact."""
    graph = randomize_norms(graph, seed=7)
    before = {k: v.clone() for k, v in graph.params.items()}
    result = widen.run(graph, **kwargs)
    assert result.preserved, result.reason
    err = max(output_error(graph, result.graph, {}, batch=b, seed=s) for b, s in ((3, 0), (1, 5)))
    assert err <= TOL, f"{kwargs}: max relative error {err:.3g}"
    for k, v in before.items():
        assert torch.equal(graph.params[k], v), f"the pass changed input tensor {k}"
    return result


def shape(graph: Graph, param: str) -> tuple[int, ...]:
    return tuple(graph.params[param].shape)


INITS = ["net2net", "zero"]


# ---- structure and preservation, per op ---------------------------------------------------


@pytest.mark.parametrize("init", INITS)
@pytest.mark.parametrize("width", [9, 18])
def test_mlp(init: str, width: int) -> None:
    before = mlp()
    after = widen_checked(before, node="fc1", width=width, init=init).graph
    expected = [
        Node("fc1", "linear", {"out_features": width}, ("x",)),
        Node("act", "relu", {}, ("fc1",)),
        Node("fc2", "linear", {"out_features": 3}, ("act",)),
    ]
    assert list(after.nodes) == expected
    assert shape(after, "fc1.weight") == (width, 5)
    assert shape(after, "fc1.bias") == (width,)
    assert shape(after, "fc2.weight") == (3, width)
    assert after.params["fc2.bias"] is before.params["fc2.bias"]  # unchanged tensors shared


def test_net2net_values_and_origins() -> None:
    g = mlp()
    res = widen.run(g, node="fc1", width=10, seed=3)
    w1, b1, w2 = (res.graph.params[k] for k in ("fc1.weight", "fc1.bias", "fc2.weight"))
    src = res.origins["fc1.weight"].index[0]
    assert src[:6] == tuple(range(6)) and all(0 <= s < 6 for s in src[6:])
    assert torch.equal(w1, g.params["fc1.weight"][list(src)])
    assert torch.equal(b1, g.params["fc1.bias"][list(src)])
    counts = [src.count(u) for u in range(6)]
    assert sorted(counts) == [1, 1, 2, 2, 2, 2]  # balanced: 4 new units over 6 old ones
    scale = res.origins["fc2.weight"].scale[1]
    assert scale == tuple(1 / counts[s] for s in src)
    expected = g.params["fc2.weight"][:, list(src)] * torch.tensor(scale, dtype=torch.float64)
    assert torch.allclose(w2.double(), expected, atol=0, rtol=1e-7)
    assert set(res.origins) == {"fc1.weight", "fc1.bias", "fc2.weight"}
    assert res.origins["fc1.weight"].source == "fc1.weight"
    assert res.summary == (
        "widened fc1 from 6 to 10 units (net2net), group: fc1 (producer), fc2 (consumer)"
    )


def test_zero_values_and_origins() -> None:
    g = mlp(bn=True)
    res = widen.run(g, node="fc1", width=8, init="zero")
    assert res.origins["fc2.weight"].index == {1: (0, 1, 2, 3, 4, 5, -1, -1)}
    assert res.origins["fc2.weight"].scale == {}
    assert torch.equal(res.graph.params["fc2.weight"][:, 6:], torch.zeros(3, 2))
    assert torch.equal(res.graph.params["fc2.weight"][:, :6], g.params["fc2.weight"])
    new_rows = res.graph.params["fc1.weight"][6:]
    assert new_rows.abs().max() > 0 and new_rows.abs().max() <= 1 / 5**0.5  # kaiming bound
    p = res.graph.params
    assert torch.equal(p["bn1.weight"][6:], torch.ones(2))
    assert torch.equal(p["bn1.bias"][6:], torch.zeros(2))
    assert torch.equal(p["bn1.running_mean"][6:], torch.zeros(2))
    assert torch.equal(p["bn1.running_var"][6:], torch.ones(2))
    assert "bn1.num_batches_tracked" not in res.origins


@pytest.mark.parametrize("init", INITS)
@pytest.mark.parametrize("width", [9, 18])
def test_mlp_batchnorm(init: str, width: int) -> None:
    res = widen_checked(mlp(bn=True), node="fc1", width=width, init=init)
    for p in ("weight", "bias", "running_mean", "running_var"):
        assert shape(res.graph, f"bn1.{p}") == (width,)
    assert "bn1 (per-channel)" in res.summary


@pytest.mark.parametrize("init", INITS)
@pytest.mark.parametrize("width", [6, 12])
def test_conv_bn_conv(init: str, width: int) -> None:
    g = widen_checked(conv_bn_conv(), node="c1", width=width, init=init).graph
    assert g.node("c1").attrs.out_channels == width
    assert shape(g, "c1.weight") == (width, 3, 3, 3)
    assert shape(g, "bn.running_var") == (width,)
    assert shape(g, "c2.weight") == (5, width, 3, 3)


@pytest.mark.parametrize("init", INITS)
@pytest.mark.parametrize("width", [6, 12])
@pytest.mark.parametrize("start", ["stem", "b1_conv"])
def test_residual_add(init: str, width: int, start: str) -> None:
    res = widen_checked(residual(), node=start, width=width, init=init)
    g = res.graph
    for conv in ("stem", "b1_conv"):
        assert g.node(conv).attrs.out_channels == width
    assert shape(g, "b1_conv.weight") == (width, width, 3, 3)
    assert shape(g, "head.weight") == (3, width)
    assert set(res.origins["b1_conv.weight"].index) == {0, 1}  # rows and columns


@pytest.mark.parametrize("init", INITS)
@pytest.mark.parametrize(("start", "width", "cols"), [("a", 6, 12), ("a", 12, 18), ("b", 9, 13)])
def test_concat_offsets(init: str, start: str, width: int, cols: int) -> None:
    before = concat()
    res = widen_checked(before, node=start, width=width, init=init)
    assert shape(res.graph, "head.weight") == (3, cols)
    index = res.origins["head.weight"].index[1]
    if start == "b":  # b's channels sit at offset 4: new columns after position 9
        assert index[:10] == tuple(range(10)) and len(index) == 13
        assert all(i in range(4, 10) or i == -1 for i in index[10:])
    else:  # a's new columns come right after a's, b's columns shift
        assert index[-6:] == tuple(range(4, 10))


def test_concat_of_the_same_value_twice() -> None:
    g = build(
        {"x": ("batch", 5)},
        [
            ("a", "linear", {"out_features": 3}, ["x"]),
            ("cat", "concat", {"dim": 1}, ["a", "a"]),
            ("head", "linear", {"out_features": 2}, ["cat"]),
        ],
        {"y": "head"},
    )
    for init in INITS:
        res = widen_checked(g, node="a", width=5, init=init)
        assert shape(res.graph, "head.weight") == (2, 10)


@pytest.mark.parametrize("init", INITS)
@pytest.mark.parametrize("width", [6, 12])
def test_flatten_blocks(init: str, width: int) -> None:
    res = widen_checked(flatten(), node="c1", width=width, init=init)
    assert shape(res.graph, "head.weight") == (3, 16 * width)
    index = res.origins["head.weight"].index[1]
    assert index[:64] == tuple(range(64))
    for j in range(4, width):  # every new channel is a block of 16 columns
        block = index[16 * j : 16 * (j + 1)]
        assert block == (-1,) * 16 or (
            block[0] % 16 == 0 and block == tuple(range(block[0], block[0] + 16))
        )


@pytest.mark.parametrize("init", INITS)
@pytest.mark.parametrize("width", [6, 12])
def test_global_avgpool(init: str, width: int) -> None:
    res = widen_checked(gap(), node="c1", width=width, init=init)
    assert shape(res.graph, "head.weight") == (3, width)


@pytest.mark.parametrize("init", INITS)
@pytest.mark.parametrize("width", [6, 12])
def test_pools_dropout_mul(init: str, width: int) -> None:
    res = widen_checked(pools_gate(), node="c1", width=width, init=init)
    g = res.graph
    assert g.node("c2").attrs.out_channels == width  # joined through the gating mul
    assert shape(g, "head.weight") == (3, 4 * width)


@pytest.mark.parametrize("width", [8, 12])
def test_embedding_layernorm_k_fold(width: int) -> None:
    res = widen_checked(embedding_ln(), node="emb", width=width)
    g = res.graph
    assert shape(g, "emb.weight") == (11, width)
    assert shape(g, "ln.weight") == (width,)
    assert shape(g, "head.weight") == (3, width)
    src = res.origins["emb.weight"].index[1]
    assert all(src.count(u) == width // 4 for u in range(4))
    assert f"every unit {width // 4}-fold" in res.summary


@pytest.mark.parametrize("init", INITS)
@pytest.mark.parametrize("width", [6, 12])
def test_embedding(init: str, width: int) -> None:
    g = widen_checked(embedding_relu(), node="emb", width=width, init=init).graph
    assert g.node("emb").attrs.embedding_dim == width
    assert torch.equal(g.params["emb.weight"][0], torch.zeros(width))  # padding row stays 0


@pytest.mark.parametrize("init", INITS)
@pytest.mark.parametrize("width", [6, 12])
def test_conv1d(init: str, width: int) -> None:
    g = widen_checked(conv1d(), node="c1", width=width, init=init).graph
    assert shape(g, "c1.weight") == (width, 3, 3)
    assert shape(g, "c2.weight") == (2, width, 3)


@pytest.mark.parametrize("init", INITS)
@pytest.mark.parametrize("width", [6, 12])
def test_depthwise(init: str, width: int) -> None:
    g = widen_checked(depthwise(), node="c1", width=width, init=init).graph
    dw = g.node("dw").attrs
    assert (dw.out_channels, dw.groups) == (width, width)
    assert shape(g, "dw.weight") == (width, 1, 3, 3)
    assert shape(g, "bn2.weight") == (width,)
    assert shape(g, "pw.weight") == (3, width, 1, 1)


@pytest.mark.parametrize("init", [*INITS, "lemon"])
@pytest.mark.parametrize("width", [18, 24])
@pytest.mark.parametrize("start", ["c1", "g3"])
def test_grouped_convs(init: str, width: int, start: str) -> None:
    # both groups hold 12 channels in lcm(3, 2) = 6 parts of 2; a grouped conv's weight
    # is [out, in / groups, ...]: the parts it reads grow alike in every block of rows
    res = widen_checked(grouped(), node=start, width=width, init=init)
    g, grown = res.graph, width - 12
    if start == "c1":
        assert shape(g, "g3.weight") == (12, width // 3, 3, 3)
        assert shape(g, "g2.weight") == (12, width // 2, 3, 3)
        assert shape(g, "bn1.weight") == (width,)
        assert g.node("g3").attrs.groups == 3  # a group's width grows, not the groups
    else:
        assert g.node("g3").attrs.out_channels == g.node("g2").attrs.out_channels == width
        assert shape(g, "c3.weight") == (4, width // 2, 1, 1)
    rows = res.origins[f"{start}.weight"].index[0]  # the group's layout, position by position
    per_part = 2 + grown // 6
    for p in range(6):  # every part: its two old channels, then its new ones
        mine = rows[p * per_part : (p + 1) * per_part]
        assert mine[:2] == (2 * p, 2 * p + 1)
        if init == "net2net":  # copies of its own channels, the same ones in every part
            assert [c - 2 * p for c in mine[2:]] == list(rows[2:per_part])
        else:
            assert set(mine[2:]) == {-1}
    # a grouped reader's columns hold one group's channels: the first 1/groups of the layout
    reader, fold = ("g3", 3) if start == "c1" else ("c3", 2)
    assert res.origins[f"{reader}.weight"].index[1] == rows[: width // fold]


def test_grouped_convs_grow_by_whole_parts_and_are_refused_where_they_read_a_part() -> None:
    with pytest.raises(PassError, match="12 plus a multiple of 6"):
        widen(grouped(), node="c1", width=16)
    part = build(
        {"img": ("batch", 2, 5, 5)},
        [
            ("a", "conv2d", {"out_channels": 2, "kernel_size": 1}, ["img"]),
            ("b", "conv2d", {"out_channels": 2, "kernel_size": 1}, ["img"]),
            ("cat", "concat", {"dim": 1}, ["a", "b"]),
            ("g", "conv2d", {"out_channels": 4, "kernel_size": 1, "groups": 2}, ["cat"]),
            ("head", "conv2d", {"out_channels": 1, "kernel_size": 1}, ["g"]),
        ],
        {"y": "head"},
    )
    with pytest.raises(PassError, match="conv2d 'g' has groups=2 and reads 4 channels"):
        widen(part, node="a", width=4)
    widen_checked(part, node="g", width=6)  # its own output grows


def test_widening_a_depthwise_conv_widens_its_input_group() -> None:
    res = widen_checked(depthwise(), node="dw", width=6)
    assert res.graph.node("c1").attrs.out_channels == 6


def test_softmax_and_layernorm_over_another_axis_are_per_channel() -> None:
    g = build(
        {"seq": ("batch", 3, 6)},
        [
            ("c1", "conv1d", {"out_channels": 4, "kernel_size": 1}, ["seq"]),
            ("sm", "softmax", {"dim": 2}, ["c1"]),
            ("ln", "layernorm", {}, ["sm"]),
            ("c2", "conv1d", {"out_channels": 2, "kernel_size": 1}, ["ln"]),
        ],
        {"y": "c2"},
    )
    for init in INITS:
        res = widen_checked(g, node="c1", width=7, init=init)
        assert "ln.weight" not in res.origins and shape(res.graph, "ln.weight") == (6,)


def test_linear_producer_and_consumer_in_a_residual_mlp() -> None:
    g = build(
        {"x": ("batch", 5)},
        [
            ("fc0", "linear", {"out_features": 4}, ["x"]),
            ("a", "relu", {}, ["fc0"]),
            ("fc1", "linear", {"out_features": 4}, ["a"]),
            ("sum", "add", {}, ["a", "fc1"]),
            ("head", "linear", {"out_features": 2}, ["sum"]),
        ],
        {"y": "head"},
    )
    for init in INITS:
        res = widen_checked(g, node="fc0", width=7, init=init)
        assert shape(res.graph, "fc1.weight") == (7, 7)


# ---- noise, seeds, plans ------------------------------------------------------------------


def test_noise_is_reported_and_changes_the_function() -> None:
    g = randomize_norms(mlp(bn=True))
    res = widen.run(g, node="fc1", width=12, noise=0.1)
    assert not res.preserved and "noise" in res.reason
    assert output_error(g, res.graph, {}) > TOL  # the check detects a changed function
    w, old = res.graph.params["fc1.weight"], g.params["fc1.weight"]
    assert torch.equal(w[:6], old)  # the originals keep their fan-in
    src = res.origins["fc1.weight"].index[0]
    assert not torch.equal(w[6:], old[list(src[6:])])


def test_seed_decides_the_mapping() -> None:
    g = mlp()
    a = widen.run(g, node="fc1", width=9, seed=1)
    b = widen.run(g, node="fc1", width=9, seed=1)
    maps = {
        widen.run(g, node="fc1", width=9, seed=s).origins["fc1.weight"].index[0] for s in range(6)
    }
    assert a.origins == b.origins
    assert all(torch.equal(a.graph.params[k], b.graph.params[k]) for k in a.graph.params)
    assert len(maps) > 1


def test_plan_entry_with_check() -> None:
    g = randomize_norms(residual())
    plan = [
        {"pass": "widen", "node": "stem", "width": 6},
        {"pass": "widen", "node": "head", "width": 5, "init": "zero"},
    ]
    with pytest.raises(PassError, match="graph output 'logits'"):
        run_plan(g, plan, check=True)
    result = run_plan(g, plan[:1], check=True)
    assert result.preserved and result.steps[0].max_error <= TOL


def test_axis_plan_places_new_units_after_each_span() -> None:
    plan = axis_plan(7, [(1, 1), (4, 1)], 2, (0, 1, 1, -1))
    assert plan.index == (0, 1, 2, 2, -1, 3, 4, 5, 5, -1, 6)
    assert plan.unit == (-1, 0, 1, 1, -1, -1, 0, 1, 1, -1, -1)
    assert plan.new == (False, False, False, True, True, False, False, False, True, True, False)


BITS = {
    torch.float64: torch.int64,
    torch.float32: torch.int32,
    torch.float16: torch.int16,
    torch.bfloat16: torch.int16,
}


def extreme_values(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """Random values of every magnitude ``dtype`` holds, subnormals, zeros of both signs and
    the largest finite values included."""
    gen = torch.Generator().manual_seed(0)
    info = torch.finfo(dtype)
    exponents = torch.randint(-160, 128, shape, generator=gen).double()
    t = (torch.randn(shape, generator=gen, dtype=torch.float64) * 2.0**exponents).to(dtype)
    flat = t.view(-1)
    specials = [0.0, -0.0, info.tiny, -info.tiny, info.tiny / 4, info.max, -info.max]
    flat[: len(specials)] = torch.tensor(specials, dtype=torch.float64).to(dtype)
    return t


@pytest.mark.parametrize("dtype", list(BITS), ids=str)
@pytest.mark.parametrize(
    ("copies", "exact"),
    [
        ((0, 1, 2, 3), True),  # every unit copied once: every column halved in place
        ((2,), True),  # one unit copied: its two columns halved
        ((1, 1, 1), True),  # four copies of one unit: quartered
        ((0, 0), False),  # three copies: thirds, computed in float64
        ((3, 3, 0, 1, 2, 3), True),  # halves and quarters
        ((3, 3, 0, 1), False),  # halves and a third
    ],
)
def test_split_columns_are_bitwise_the_float64_product(
    dtype: torch.dtype, copies: tuple[int, ...], exact: bool
) -> None:
    """Split fan-out multiplied in the tensor's own dtype (where every factor is exact in
    it) is bitwise the product taken in float64 and rounded, extreme values included."""
    from grow_ir.passes.inits import NewUnits
    from grow_ir.passes.widen import _Axes

    axes = _Axes(4, NewUnits(copies, fan_in="copy", fan_out="split"))
    plan = axes.get(6, ((1, 1),), "fan_out", 1, 2)  # 4 channels at offset 1 of 6 columns
    t = extreme_values((9, 6), dtype)
    gathered = plan.gathered(t)
    assert plan.scaled_at is not None and plan.scale is not None
    part = gathered.index_select(1, plan.scaled_at).double() * plan.scale
    want = gathered.index_copy(1, plan.scaled_at, part.to(dtype))
    got = plan.split(gathered.clone())
    assert torch.equal(got.view(BITS[dtype]), want.view(BITS[dtype]))
    assert (plan.exact[dtype] is not None) == (exact or dtype == torch.float64)


# ---- refusals: one per reason -------------------------------------------------------------


def _lin(name: str, width: int, src: str) -> tuple:
    return (name, "linear", {"out_features": width}, [src])


def g_output() -> Graph:
    return build(
        {"x": ("batch", 5)},
        [_lin("fc1", 4, "x"), ("act", "relu", {}, ["fc1"]), _lin("fc2", 3, "act")],
        {"y": "fc2", "hidden": "act"},
    )


def g_softmax() -> Graph:
    return build(
        {"x": ("batch", 5)},
        [_lin("fc1", 4, "x"), ("sm", "softmax", {}, ["fc1"]), _lin("fc2", 3, "sm")],
        {"y": "fc2"},
    )


def g_attention() -> Graph:
    return build(
        {"tok": (("batch", "seq"), "int64")},
        [
            ("emb", "embedding", {"num_embeddings": 7, "embedding_dim": 4}, ["tok"]),
            ("emb2", "embedding", {"num_embeddings": 7, "embedding_dim": 4}, ["tok"]),
            ("cat", "concat", {"dim": 2}, ["emb", "emb2"]),
            ("attn", "attention", {"num_heads": 2}, ["cat"]),
            _lin("head", 3, "attn"),
        ],
        {"y": "head"},
    )


def g_grouped() -> Graph:
    return build(
        {"img": ("batch", 2, 5, 5)},
        [
            ("c1", "conv2d", {"out_channels": 4, "kernel_size": 1}, ["img"]),
            ("c2", "conv2d", {"out_channels": 6, "kernel_size": 1, "groups": 2}, ["c1"]),
            ("c3", "conv2d", {"out_channels": 2, "kernel_size": 1}, ["c2"]),
        ],
        {"y": "c3"},
    )


def g_non_channel_axis() -> Graph:
    return build(
        {"img": ("batch", 2, 5, 5)},
        [
            ("c1", "conv2d", {"out_channels": 4, "kernel_size": 3}, ["img"]),
            _lin("fc", 3, "c1"),
            ("flat", "flatten", {}, ["fc"]),
            _lin("head", 2, "flat"),
        ],
        {"y": "head"},
    )


def g_input() -> Graph:
    return build(
        {"x": ("batch", 4)},
        [_lin("fc1", 4, "x"), ("sum", "add", {}, ["x", "fc1"]), _lin("head", 2, "sum")],
        {"y": "head"},
    )


def g_straddle() -> Graph:
    return build(
        {"x": ("batch", 5)},
        [
            _lin("a", 2, "x"),
            _lin("b", 3, "x"),
            ("cat", "concat", {}, ["a", "b"]),
            _lin("c", 5, "x"),
            ("sum", "add", {}, ["cat", "c"]),
            _lin("head", 2, "sum"),
        ],
        {"y": "head"},
    )


def g_bn_other_axis() -> Graph:
    return build(
        {"x": ("batch", 3, 6)},
        [
            _lin("fc", 5, "x"),
            ("bn", "batchnorm", {}, ["fc"]),
            ("flat", "flatten", {}, ["bn"]),
            _lin("head", 2, "flat"),
        ],
        {"y": "head"},
    )


def g_flatten_scatter() -> Graph:
    return build(
        {"x": ("batch", 3, 6)},
        [_lin("fc", 5, "x"), ("flat", "flatten", {}, ["fc"]), _lin("head", 2, "flat")],
        {"y": "head"},
    )


def g_flatten_misaligned() -> Graph:
    return build(
        {"img": ("batch", 2, 2, 2), "x": ("batch", 3)},
        [
            ("c1", "conv2d", {"out_channels": 2, "kernel_size": 1}, ["img"]),
            ("flat", "flatten", {}, ["c1"]),
            _lin("fc", 8, "x"),
            ("sum", "add", {}, ["flat", "fc"]),
            _lin("head", 2, "sum"),
        ],
        {"y": "head"},
    )


def g_shared() -> Graph:
    return build(
        {"x": ("batch", 5)},
        [
            _lin("fc1", 4, "x"),
            ("act", "relu", {}, ["fc1"]),
            _lin("fc2", 3, "act"),
            ("fc2b", "linear", {"out_features": 3}, ["act"], "fc2"),
        ],
        {"y": "fc2", "z": "fc2b"},
    )


REFUSALS = [
    ("graph output", g_output, {"node": "fc1", "width": 8}, "graph output 'hidden'"),
    (
        "softmax over channels",
        g_softmax,
        {"node": "fc1", "width": 8},
        "softmax 'sm' normalises over the channel axis",
    ),
    (
        "attention over part of the channels",
        g_attention,
        {"node": "emb", "width": 8},
        "reads and writes all 8 entries of axis 2 through its weights",
    ),
    ("grouped consumer, odd width", g_grouped, {"node": "c1", "width": 7}, "4 plus a multiple"),
    ("grouped producer, odd width", g_grouped, {"node": "c2", "width": 9}, "6 plus a multiple"),
    (
        "layernorm, not a multiple",
        embedding_ln,
        {"node": "emb", "width": 6},
        "net2net through layernorm 'ln' is exact only when every unit is copied",
    ),
    (
        "layernorm, zero init",
        embedding_ln,
        {"node": "emb", "width": 8, "init": "zero"},
        "enter the mean and variance of layernorm 'ln'",
    ),
    ("width not larger", mlp, {"node": "fc1", "width": 6}, "must be larger"),
    ("width smaller", mlp, {"node": "fc1", "width": 3}, "must be larger"),
    ("unknown node", mlp, {"node": "fc9", "width": 8}, "no such node"),
    (
        "not a widenable op",
        lambda: mlp(bn=True),
        {"node": "bn1", "width": 8},
        "cannot apply to a batchnorm node",
    ),
    ("unknown init", mlp, {"node": "fc1", "width": 8, "init": "firefly"}, "unknown init"),
    (
        "consumer reads another axis",
        g_non_channel_axis,
        {"node": "c1", "width": 8},
        "linear 'fc' reads axis 3",
    ),
    ("graph input", g_input, {"node": "fc1", "width": 8}, "graph input 'x'"),
    ("concat straddle", g_straddle, {"node": "c", "width": 8}, "straddle more than one"),
    (
        "mixes across the channel axis",
        g_bn_other_axis,
        {"node": "fc", "width": 8},
        "batchnorm 'bn' keeps channels on axis 1 and mixes values across axis 2",
    ),
    (
        "flatten scatters channels",
        g_flatten_scatter,
        {"node": "fc", "width": 8},
        "flatten 'flat' folds axis 2",
    ),
    (
        "flatten blocks misaligned",
        g_flatten_misaligned,
        {"node": "fc", "width": 9},
        "do not line up",
    ),
    ("shared parameters", g_shared, {"node": "fc1", "width": 8}, "shares its parameters"),
    (
        "noise without copies",
        mlp,
        {"node": "fc1", "width": 8, "init": "zero", "noise": 0.1},
        "copies none",
    ),
    ("negative noise", mlp, {"node": "fc1", "width": 8, "noise": -1.0}, "bad noise"),
    ("absurd width", mlp, {"node": "fc1", "width": 10**9}, "too large"),
]


@pytest.mark.parametrize(
    ("make", "kwargs", "match"), [r[1:] for r in REFUSALS], ids=[r[0] for r in REFUSALS]
)
def test_refusal(make, kwargs: dict, match: str) -> None:
    g = make()
    before = {k: v.clone() for k, v in g.params.items()}
    with pytest.raises(PassError) as info:
        widen(g, **kwargs)
    err = info.value
    assert isinstance(err, GrowError)
    assert err.message.startswith(f"node '{kwargs['node']}'")
    assert "widen:" in err.message and match in err.message, err.message
    assert all(torch.equal(g.params[k], v) for k, v in before.items())


def test_refused_nodes_are_not_widenable() -> None:
    assert widenable(g_output()) == []
    assert widenable(mlp()) == ["fc1"]
    assert widenable(residual()) == ["stem", "b1_conv"]
    with pytest.raises(PassError, match="does not make channels"):
        channel_group(mlp(bn=True), "bn1")


# ---- property: random graphs x random widen calls -----------------------------------------


@st.composite
def random_graph(draw: st.DrawFn) -> Graph:
    conv = draw(st.booleans())
    widths = st.integers(2, 5)
    nodes: list[tuple] = []
    cur, cur_w = "x", draw(widths)
    inputs = {"x": ("batch", 2, 5, 5) if conv else ("batch", draw(widths))}

    def layer(name: str, src: str, w: int) -> str:
        if conv:
            nodes.append(
                (name, "conv2d", {"out_channels": w, "kernel_size": 3, "padding": 1}, [src])
            )
        else:
            nodes.append((name, "linear", {"out_features": w}, [src]))
        out = name
        if draw(st.booleans()):
            nodes.append((f"{name}_bn", "batchnorm", {}, [out]))
            out = f"{name}_bn"
        return out

    for i in range(draw(st.integers(1, 3))):
        cur_w = draw(widths)
        out = layer(f"l{i}", cur, cur_w)
        act = draw(st.sampled_from(["relu", "tanh", "gelu", "identity"]))
        nodes.append((f"l{i}_act", act, {}, [out]))
        cur = f"l{i}_act"
        if draw(st.booleans()):  # a residual block over the current channels
            body = layer(f"r{i}", cur, cur_w)
            nodes.append((f"r{i}_sum", "add", {}, [cur, body]))
            cur = f"r{i}_sum"
    if conv:
        tail = draw(st.sampled_from(["global_avgpool", "flatten"]))
        nodes.append(("tail", tail, {}, [cur]))
        cur = "tail"
    nodes.append(("head", "linear", {"out_features": 2}, [cur]))
    return build(inputs, nodes, {"y": "head"}, seed=draw(st.integers(0, 3)))


@settings(max_examples=30, deadline=None)
@given(graph=random_graph(), data=st.data())
def test_random_graphs_random_widen(graph: Graph, data: st.DataObject) -> None:
    candidates = widenable(graph)
    assert candidates and "head" not in candidates
    node = data.draw(st.sampled_from(candidates))
    old = channel_group(graph, node).channels
    width = data.draw(st.integers(old + 1, 3 * old))
    init = data.draw(st.sampled_from(INITS))
    widen_checked(graph, node=node, width=width, init=init, seed=data.draw(st.integers(0, 9)))


@pytest.mark.parametrize("op", ["softmax", "log_softmax"])
@pytest.mark.parametrize("init", ["net2net", "zero"])
def test_widening_through_a_normalisation_over_the_channels_is_refused(op: str, init: str) -> None:
    """log_softmax, registered with its own facts, is refused for the same reason as
    softmax: every output depends on every channel (the bug of a name table that listed
    softmax alone: log_softmax was widened, claimed preserved, and moved by 0.5)."""
    graph = build(
        {"x": ("batch", 5)},
        [
            ("fc1", "linear", {"out_features": 4}, ["x"]),
            ("norm", op, {"dim": 1}, ["fc1"]),
            ("fc2", "linear", {"out_features": 2}, ["norm"]),
        ],
        {"y": "fc2"},
    )
    with pytest.raises(PassError) as info:
        widen.run(graph, node="fc1", width=8, init=init)
    assert info.value.node == "fc1"
    assert f"{op} 'norm' normalises over the channel axis (1)" in info.value.message
    assert "fc1" not in widenable(graph)


def test_widening_beside_a_log_softmax_over_another_axis_is_exact() -> None:
    graph = build(
        {"x": ("batch", 5)},
        [
            ("fc1", "linear", {"out_features": 4}, ["x"]),
            ("norm", "log_softmax", {"dim": 0}, ["fc1"]),
            ("fc2", "linear", {"out_features": 2}, ["norm"]),
        ],
        {"y": "fc2"},
    )
    result = widen.run(graph, node="fc1", width=7)
    assert result.preserved
    assert output_error(graph, result.graph, {}) <= 1e-5


def test_a_widened_stage_dumps_its_new_width() -> None:
    graph = load_spec(
        Path(__file__).resolve().parent.parent / "specs/examples/autogrow_digits.yaml"
    )
    wide = widen(graph, node="stem", width=24)
    assert graph.stages["stage1"].with_ == {"channels": 16}  # the input is unchanged
    assert wide.stages["stage1"].with_ == {"channels": 24}
    assert wide.stages["stage2"] == graph.stages["stage2"]
    spec = dump_spec(wide)
    assert spec["stages"]["stage1"]["with"] == {"channels": 24}
    assert load_spec(spec).stages == wide.stages
    grown = insert_block(wide, stage="stage1")  # grows from the widened block
    assert grown.node("stage1.block1.conv2").attrs.out_channels == 24
