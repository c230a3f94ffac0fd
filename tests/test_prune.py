"""The prune pass: every channel rule, the proof of preservation, importances, origins,
optimizer state, refusals, plans and the command line."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml

from grow_ir.cli import main
from grow_ir.errors import PassError
from grow_ir.growth.optim_state import transfer_optimizer
from grow_ir.ir import Graph
from grow_ir.passes import (
    Probe,
    channel_group,
    output_error,
    prunable,
    prune,
    run_plan,
    widen,
    widenable,
)
from grow_ir.passes.channels import ChannelGroup
from grow_ir.passes.prune import dead_channels
from grow_ir.passes.regroup import axis_plan, spans_by_axis
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


def silenced(graph: Graph, group: ChannelGroup, channels: list[int]) -> Graph:
    """``graph`` with every weight that reads ``channels`` zeroed (their fan-out): the
    function a pruned graph must compute when those channels are removed."""
    params = dict(graph.params)
    gone = set(channels)
    for param, axes in group.param_axes().items():
        fan_out = [a for a in axes if a.kind == "fan_out"]
        if not fan_out:
            continue
        t = params[param].clone()
        for axis, on_axis in spans_by_axis(fan_out).items():
            spans = [(a.offset, a.block) for a in on_axis]
            plan = axis_plan(t.shape[axis], spans, group.channels, range(group.channels))
            mask = torch.tensor([u in gone for u in plan.unit])
            shape = [1] * t.dim()
            shape[axis] = len(mask)
            t = torch.where(mask.view(shape), torch.zeros((), dtype=t.dtype), t)
        params[param] = t
    return graph.replace(params=params)


# ---- every channel rule ---------------------------------------------------------------------

CASES: list[tuple[str, Callable[[], Graph], str]] = [
    ("linear", mlp, "fc1"),
    ("batchnorm1d", lambda: mlp(bn=True), "fc1"),
    ("conv-batchnorm-conv", conv_bn_conv, "c1"),
    ("residual add, from the stem", residual, "stem"),
    ("residual add, from the block", residual, "b1_conv"),
    ("concat, first input", concat, "a"),
    ("concat, second input", concat, "b"),
    ("flatten blocks", flatten, "c1"),
    ("global_avgpool", gap, "c1"),
    ("pools, dropout, gating mul", pools_gate, "c1"),
    ("embedding", embedding_relu, "emb"),
    ("conv1d", conv1d, "c1"),
    ("depthwise conv", depthwise, "c1"),
]


@pytest.mark.parametrize(("make", "node"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
@pytest.mark.parametrize("how", ["keep", "drop"])
def test_channel_rule(make: Callable[[], Graph], node: str, how: str) -> None:
    graph = randomize_norms(make(), seed=7)
    before = {k: v.clone() for k, v in graph.params.items()}
    group = channel_group(graph, node)
    n = group.channels
    dropped = [0, n - 1] if how == "drop" else []
    args = {"drop": dropped} if how == "drop" else {"keep": n // 2}
    result = prune.run(graph, node=node, **args)
    new = result.graph
    if how == "keep":
        dropped = [c for c in range(n) if c not in _kept_by_l1(graph, group, n // 2)]
    kept = n - len(dropped)
    # every member's width and parameter axes shrank together
    assert channel_group(new, node).channels == kept
    for param, axes in group.param_axes().items():
        for axis, on_axis in spans_by_axis(axes).items():
            removed = len(dropped) * sum(a.block for a in on_axis)
            assert new.params[param].shape[axis] == graph.params[param].shape[axis] - removed
    # the pruned graph computes the original with the dropped channels silenced
    err = output_error(silenced(graph, group, dropped), new, {})
    assert err <= TOL, f"{node}: pruned graph differs from the silenced one by {err:.3g}"
    assert not result.preserved and "not provably zero" in result.reason
    assert f"from {n} to {kept} units" in result.summary
    # origins select the kept entries bitwise
    for param, origin in result.origins.items():
        t = graph.params[origin.source]
        for axis, index in origin.index.items():
            t = t.index_select(axis, torch.tensor(index))
        assert torch.equal(t, new.params[param]), param
    for k, v in before.items():
        assert torch.equal(graph.params[k], v), f"the pass changed input tensor {k}"


def _kept_by_l1(graph: Graph, group: ChannelGroup, n: int) -> list[int]:
    """The ``n`` channels of the largest summed |weight| over the group, computed
    independently of the pass: each weight tensor, channel by channel, via axis plans."""
    scores = []
    for c in range(group.channels):
        total = 0.0
        for param, axes in group.param_axes().items():
            if param.endswith(".bias") or graph.param_specs[param].buffer:
                continue
            t = graph.params[param].double()
            for kind in ("units", "fan_out"):
                mine = [a for a in axes if a.kind == kind]
                if not mine:
                    continue
                mask = torch.ones(t.shape, dtype=torch.bool)
                for axis, on_axis in spans_by_axis(mine).items():
                    spans = [(a.offset, a.block) for a in on_axis]
                    plan = axis_plan(t.shape[axis], spans, group.channels, range(group.channels))
                    shape = [1] * t.dim()
                    shape[axis] = len(plan.unit)
                    mask = mask & torch.tensor([u == c for u in plan.unit]).view(shape)
                total += t[mask].abs().sum().item()
        scores.append(total)
    order = sorted(range(group.channels), key=lambda c: (-scores[c], c))
    return sorted(order[:n])


def test_layernorm_group_is_pruned_but_never_preserved() -> None:
    graph = randomize_norms(embedding_ln(), seed=1)
    result = prune.run(graph, node="emb", drop=[1])
    assert result.graph.params["ln.weight"].shape == (3,)
    assert not result.preserved and "layernorm 'ln'" in result.reason


def test_depthwise_conv_follows_the_group() -> None:
    result = prune.run(depthwise(), node="c1", keep=[0, 2])
    dw = result.graph.node("dw")
    assert (dw.attrs.out_channels, dw.attrs.groups) == (2, 2)
    assert result.graph.params["dw.weight"].shape == (2, 1, 3, 3)


# ---- preservation: exact only for dead channels -------------------------------------------


def test_pruning_what_a_zero_widen_added_gives_back_the_original_bitwise() -> None:
    makes = [mlp, lambda: mlp(bn=True), conv_bn_conv, residual, concat, flatten, gap]
    makes += [pools_gate, embedding_relu, conv1d, depthwise]
    for make in makes:
        graph = randomize_norms(make(), seed=3)
        for node in widenable(graph):
            old = channel_group(graph, node).channels
            wide = widen(graph, node=node, width=old + 3, init="zero")
            result = prune.run(wide, node=node, drop=[old, old + 1, old + 2])
            assert result.preserved, f"{node}: {result.reason}"
            back = result.graph
            assert dump_spec(back) == dump_spec(graph)
            assert set(back.params) == set(graph.params)
            for k, v in graph.params.items():
                assert back.params[k].dtype == v.dtype and torch.equal(back.params[k], v), k


def test_zero_fan_out_is_dead() -> None:
    graph = randomize_norms(conv_bn_conv(), seed=2)
    w = graph.params["c2.weight"].clone()
    w[:, 1] = 0
    graph = graph.replace(params={**graph.params, "c2.weight": w})
    result = prune.run(graph, node="c1", drop=[1])
    assert result.preserved, result.reason
    assert output_error(graph, result.graph, {}) <= TOL
    assert not prune.run(graph, node="c1", drop=[1, 2]).preserved


def test_zero_fan_in_is_dead_through_ops_that_keep_zero() -> None:
    graph = mlp()
    params = dict(graph.params)
    params["fc1.weight"] = params["fc1.weight"].clone()
    params["fc1.weight"][3] = 0
    params["fc1.bias"] = params["fc1.bias"].clone()
    params["fc1.bias"][3] = 0
    graph = graph.replace(params=params)
    result = prune.run(graph, node="fc1", drop=[3])
    assert result.preserved and output_error(graph, result.graph, {}) <= TOL
    assert dead_channels(graph, channel_group(graph, "fc1"), [0, 3]) == [3]


def test_zero_fan_in_before_batchnorm_is_not_claimed() -> None:
    """batchnorm maps a zero channel to beta - gamma * mean / std: not proven zero."""
    graph = randomize_norms(mlp(bn=True), seed=4)
    params = dict(graph.params)
    params["fc1.weight"] = params["fc1.weight"].clone()
    params["fc1.weight"][2] = 0
    params["fc1.bias"] = params["fc1.bias"].clone()
    params["fc1.bias"][2] = 0
    params["bn1.bias"] = params["bn1.bias"].clone()
    params["bn1.bias"][2] = 1.0  # the constant the channel becomes passes the relu
    graph = graph.replace(params=params)
    result = prune.run(graph, node="fc1", drop=[2])
    assert not result.preserved
    assert output_error(graph, result.graph, {}) > TOL  # and indeed it changes


def test_plan_check_measures_a_dead_prune(tmp_path: Path) -> None:
    graph = mlp()
    plan = [
        {"pass": "widen", "node": "fc1", "width": 9, "init": "zero"},
        {"pass": "prune", "node": "fc1", "drop": [6, 7, 8]},
        {"pass": "prune", "node": "fc1", "keep": 0.5, "importance": "l2"},
    ]
    result = run_plan(graph, plan, check=True)
    assert [s.result.preserved for s in result.steps] == [True, True, False]
    assert result.steps[1].max_error <= TOL
    assert result.graph.node("fc1").attrs.out_features == 3


# ---- importances ----------------------------------------------------------------------------


def test_l1_keeps_the_heaviest_channels() -> None:
    graph = mlp()
    params = dict(graph.params)
    w = params["fc1.weight"].clone()
    w[[1, 4]] *= 100
    params["fc1.weight"] = w
    graph = graph.replace(params=params)
    result = prune.run(graph, node="fc1", keep=2)
    assert torch.equal(result.graph.params["fc1.weight"], w[[1, 4]])
    assert "l1; dropped 0, 2-3, 5" in result.summary


def test_given_scores_and_ties_keep_the_lower_index() -> None:
    graph = mlp()
    kept = prune(graph, node="fc1", keep=3, importance=[1, 5, 5, 5, 0, 9])
    assert torch.equal(kept.params["fc1.bias"], graph.params["fc1.bias"][[1, 2, 5]])


def test_taylor_importance_reads_the_probe() -> None:
    graph = mlp()
    gen = torch.Generator().manual_seed(0)
    probe = Probe(
        inputs={"x": torch.randn(16, 5, generator=gen)},
        targets=torch.randint(0, 3, (16,), generator=gen),
        loss="cross_entropy",
    )
    result = prune.run(graph, node="fc1", keep=3, importance="taylor", probe=probe)
    assert "taylor" in result.summary
    # the Taylor score is |sum w * dL/dw| over the channel's entries: recompute it
    module = __import__("grow_ir").to_torch(graph).train()
    loss = torch.nn.functional.cross_entropy(module(probe.inputs["x"]), probe.targets)
    loss.backward()
    fc1, fc2 = module.fc1, module.fc2
    score = (
        (fc1.weight * fc1.weight.grad).sum(1)
        + fc1.bias * fc1.bias.grad
        + (fc2.weight * fc2.weight.grad).sum(0)
    ).abs()
    want = sorted(torch.argsort(-score.detach(), stable=True)[:3].tolist())
    assert torch.equal(result.graph.params["fc1.bias"], graph.params["fc1.bias"][want])


# ---- refusals: one per reason --------------------------------------------------------------


def _output_graph() -> Graph:
    return build(
        {"x": ("batch", 5)},
        [
            ("fc1", "linear", {"out_features": 4}, ["x"]),
            ("fc2", "linear", {"out_features": 3}, ["fc1"]),
        ],
        {"y": "fc2", "h": "fc1"},
    )


def _softmax_graph() -> Graph:
    return build(
        {"x": ("batch", 5)},
        [
            ("fc1", "linear", {"out_features": 4}, ["x"]),
            ("sm", "softmax", {"dim": 1}, ["fc1"]),
            ("fc2", "linear", {"out_features": 2}, ["sm"]),
        ],
        {"y": "fc2"},
    )


def _attention_graph() -> Graph:
    return build(
        {"x": ("batch", 3, 4)},
        [
            ("fc", "linear", {"out_features": 4}, ["x"]),
            ("attn", "attention", {"num_heads": 2}, ["fc"]),
            ("head", "linear", {"out_features": 2}, ["attn"]),
        ],
        {"y": "head"},
    )


def test_pruning_the_stream_through_attention_keeps_its_heads() -> None:
    # attention reads and writes the stream through its weights (Channels.THROUGH): the
    # group shrinks through it and its heads keep their size (head_dim pinned)
    g = _attention_graph()
    result = prune.run(g, node="fc", keep=2)
    attn = result.graph.node("attn")
    assert attn.attrs.head_dim == 2 and attn.attrs.num_heads == 2
    assert result.graph.params["attn.in_proj_weight"].shape == (12, 2)
    assert result.graph.params["attn.out_proj.weight"].shape == (2, 4)
    assert not result.preserved and "not provably zero" in result.reason


REFUSALS = [
    (mlp, {"node": "act", "keep": 1}, "cannot apply to a relu node"),
    (mlp, {"node": "nope", "keep": 1}, "no such node"),
    (_output_graph, {"node": "fc1", "keep": 2}, "graph output 'h'"),
    (_softmax_graph, {"node": "fc1", "keep": 2}, "softmax 'sm' normalises over the channel axis"),
    (mlp, {"node": "fc1"}, "exactly one of keep and drop"),
    (mlp, {"node": "fc1", "keep": 2, "drop": [1]}, "exactly one of keep and drop"),
    (mlp, {"node": "fc1", "keep": 6}, "removes at least one"),
    (mlp, {"node": "fc1", "keep": 0}, "removes at least one"),
    (mlp, {"node": "fc1", "keep": 1.5}, "fraction"),
    (mlp, {"node": "fc1", "keep": "half"}, "an integer or a number or a list of integers"),
    (mlp, {"node": "fc1", "drop": [0, 1, 2, 3, 4, 5]}, "removes at least one"),
    (mlp, {"node": "fc1", "drop": [6]}, "distinct channel indices"),
    (mlp, {"node": "fc1", "drop": [1, 1]}, "distinct channel indices"),
    (mlp, {"node": "fc1", "keep": 2, "importance": "l3"}, "unknown importance"),
    (mlp, {"node": "fc1", "keep": 2, "importance": [1.0, 2.0]}, "bad importance"),
    (mlp, {"node": "fc1", "keep": 2, "importance": "taylor"}, "needs a probe batch"),
    (mlp, {"node": "fc1", "keep": 2, "probe": {"inputs": {}}}, "read only by importance"),
    (grouped, {"node": "c1", "keep": 6}, "6 parts read by grouped convolutions"),
]


@pytest.mark.parametrize(("make", "kwargs", "match"), REFUSALS, ids=[r[2] for r in REFUSALS])
def test_refusal(make: Callable[[], Graph], kwargs: dict, match: str) -> None:
    graph = make()
    snapshot = {k: v.clone() for k, v in graph.params.items()}
    with pytest.raises(PassError, match=match) as info:
        prune.run(graph, **kwargs)
    assert info.value.reason.startswith("prune:") and info.value.node == kwargs["node"]
    assert all(torch.equal(graph.params[k], v) for k, v in snapshot.items())


def test_prunable_is_widenable_with_two_channels() -> None:
    assert prunable(residual()) == widenable(residual()) == ["stem", "b1_conv"]
    assert prunable(_output_graph()) == []
    nodes = [("fc1", "linear", {"out_features": 1}, ["x"])]
    nodes.append(("fc2", "linear", {"out_features": 2}, ["fc1"]))
    one = build({"x": ("batch", 3)}, nodes, {"y": "fc2"})
    assert widenable(one) == ["fc1"] and prunable(one) == []
    # grouped convs split a group into parts, which widen grows alike and prune refuses
    assert widenable(grouped()) == ["c1", "g3", "g2", "c3"] and prunable(grouped()) == []


# ---- optimizer state follows ----------------------------------------------------------------


def test_optimizer_state_follows_the_kept_channels() -> None:
    from grow_ir import to_torch

    graph = randomize_norms(residual(), seed=0)
    module = to_torch(graph).train()
    opt = torch.optim.Adam(module.parameters(), lr=0.01)
    module(torch.randn(4, 3, 6, 6)).sum().backward()
    opt.step()
    result = prune.run(graph, node="stem", keep=[1, 3])
    new_module = to_torch(result.graph).train()
    new_opt = transfer_optimizer(opt, module, new_module, result.origins)
    old_state = {n: opt.state[p] for n, p in module.named_parameters()}
    for name, p in new_module.named_parameters():
        state = new_opt.state[p]
        origin = result.origins.get(name)
        want = old_state[name]["exp_avg"]
        if origin is not None:
            for axis, index in origin.index.items():
                want = want.index_select(axis, torch.tensor(index))
        assert torch.equal(state["exp_avg"], want), name
        assert state["exp_avg"].shape == p.shape


# ---- the command line -----------------------------------------------------------------------


def test_grow_cli_runs_a_prune_plan(
    tmp_path: Path, write_spec: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    spec = write_spec(
        {
            "version": 1,
            "name": "tiny",
            "inputs": {"x": {"shape": ["batch", 4]}},
            "nodes": [
                {"name": "fc", "op": "linear", "out_features": 8},
                {"name": "act", "op": "relu"},
                {"name": "head", "op": "linear", "out_features": 3},
            ],
            "outputs": {"y": "head"},
        }
    )
    plan = tmp_path / "plan.yaml"
    plan.write_text(
        yaml.safe_dump(
            [
                {"pass": "widen", "node": "fc", "width": 10, "init": "zero"},
                {"pass": "prune", "node": "fc", "drop": [8, 9]},
                {"pass": "prune", "node": "fc", "keep": 4},
            ]
        )
    )
    out = tmp_path / "out"
    assert main(["grow", str(spec), "--plan", str(plan), "-o", str(out), "--check"]) == 0
    history = json.loads((out / "history.json").read_text())
    steps = history["steps"] if isinstance(history, dict) else history
    assert [s["pass"] for s in steps][-3:] == ["widen", "prune", "prune"]
    assert [s["preserved"] for s in steps][-3:] == [True, True, False]
    grown = yaml.safe_load((out / "spec.yaml").read_text())
    assert next(n for n in grown["nodes"] if n["name"] == "fc")["out_features"] == 4
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump([{"pass": "prune", "node": "fc", "keep": 8}]))
    assert main(["grow", str(spec), "--plan", str(bad), "-o", str(tmp_path / "o2")]) == 2
    err = capsys.readouterr().err
    assert "removes at least one" in err and "Traceback" not in err
    assert not (tmp_path / "o2").exists()


def test_a_zero_widen_into_a_masked_layer_is_pruned_back_exactly() -> None:
    """A consumer's connection mask is 1 on the new columns (a grown mask starts open), yet
    the columns are zero: the channel is dead through the weight the mask multiplies (the
    random-graph generator found the mask counted as a live fan-out)."""
    spec = {
        "version": 1,
        "name": "m",
        "seed": 0,
        "inputs": {"x": {"shape": ["batch", 2]}},
        "nodes": [
            {"name": "l0", "op": "linear", "out_features": 2},
            {"name": "a", "op": "silu"},
            {"name": "l2", "op": "linear", "out_features": 2, "bias": False, "masked": True},
            {"name": "l5", "op": "linear", "out_features": 1},
        ],
        "outputs": {"y": "l5"},
    }
    g = load_spec(spec)
    wide = widen(g, node="l0", width=3, init="zero", seed=1)
    assert wide.params["l2.weight_mask"][:, 2].eq(1).all()
    result = prune.run(wide, node="l0", drop=[2])
    assert result.preserved, result.reason
    for k, v in g.params.items():
        assert torch.equal(result.graph.params[k], v), k
