"""AutoGrow's policy driven by scripted validation accuracies on a real staged graph."""

from __future__ import annotations

import json

import pytest

from grow_ir.errors import GrowError
from grow_ir.growth.autogrow import AutoGrow, NoGrowth
from grow_ir.growth.config import growth_config
from grow_ir.growth.policy import Observation, make_policy
from grow_ir.ir.graph import Graph
from grow_ir.passes import get_pass
from grow_ir.spec import load_spec
from tests.channel_graphs import grouped
from tests.tiny_specs import RES_BLOCK, TINY_SPIRALS


def staged_spec() -> dict:
    return {
        "version": 1,
        "name": "staged",
        "inputs": {"x": {"shape": ["batch", 2]}},
        "blocks": {"res": RES_BLOCK},
        "nodes": [
            {"name": "stem", "op": "linear", "inputs": ["x"], "out_features": 4},
            {"name": "stem_act", "op": "relu"},
            {"name": "stage1", "stage": "res", "depth": 1, "with": {"width": 4}},
            {"name": "mid", "op": "linear", "out_features": 6},
            {"name": "mid_act", "op": "relu"},
            {"name": "stage2", "stage": "res", "depth": 1, "with": {"width": 6}},
            {"name": "head", "op": "linear", "out_features": 2},
        ],
        "outputs": {"y": "head"},
    }


GRAPH = load_spec(staged_spec())


def drive(policy: AutoGrow, graph: Graph, accs: list[float], start: int = 0):
    """Feed ``accs`` from epoch ``start``; run each request; return (graph, [(epoch, unit)])."""
    steps = []
    for e, acc in enumerate(accs, start=start):
        for req in policy.observe(Observation(e, 0.0, acc, graph)):
            graph = get_pass(req.pass_name).run(graph, **req.args).graph
            policy.grown(req, e, graph)
            steps.append((e, req.unit))
    return graph, steps


def config(**kw):
    base = {"epochs": 40, "tail_epochs": 4, "interval": 2, "patience": 2, "tau": 0.01}
    return growth_config({**base, **kw})


def test_periodic_growth_is_round_robin_up_to_the_max_depth() -> None:
    policy = AutoGrow(config(max_depth=3), GRAPH)
    rising = [0.5 + 0.02 * e for e in range(14)]
    graph, steps = drive(policy, GRAPH, rising)
    assert steps == [(1, "stage1"), (3, "stage2"), (5, "stage1"), (7, "stage2")]
    assert {s: r.depth for s, r in graph.stages.items()} == {"stage1": 3, "stage2": 3}
    assert not policy.growing
    assert [s.reason for s in policy.drain_stops()] == [
        "its depth 3 reached max_depth 3 (growth.max_depth)"
    ] * 2


def test_a_stage_stops_when_its_growth_gains_less_than_tau() -> None:
    policy = AutoGrow(config(max_depth=9), GRAPH)
    accs = [0.5, 0.6, 0.61, 0.612, 0.7, 0.8, 0.9, 0.91, 0.92, 0.93]
    _, steps = drive(policy, GRAPH, accs)
    # stage1 grew after epoch 1 (acc 0.6); by epoch 3 the best since is 0.612: +1.2% >= 1%.
    # stage2 grew after epoch 3 (0.612) and gained plenty; stage1 grew again after epoch 5
    # (0.8), and by epoch 7 had gained 0.91 - 0.8 >= tau.
    assert steps[:3] == [(1, "stage1"), (3, "stage2"), (5, "stage1")]
    flat = AutoGrow(config(max_depth=9), GRAPH)
    _, steps = drive(flat, GRAPH, [0.5, 0.6, 0.605, 0.604, 0.603, 0.602])
    assert steps == [(1, "stage1"), (3, "stage2")]
    stops = flat.drain_stops()
    assert [(s.epoch, s.unit) for s in stops] == [(3, "stage1"), (5, "stage2")]
    assert "gained +0.50% < tau 1.00% in 2 epochs" in stops[0].reason
    assert not flat.growing


def test_the_stopping_rule_compares_running_maxima() -> None:
    # stage1 grows after epoch 1, a dip (0.70) below the best so far (0.90). Climbing back
    # to 0.78 is no gain over the running maximum, so it stops; a single-epoch baseline
    # would have counted +8%.
    policy = AutoGrow(config(max_depth=9), GRAPH)
    _, steps = drive(policy, GRAPH, [0.9, 0.7, 0.75, 0.78])
    assert steps == [(1, "stage1"), (3, "stage2")]
    stops = policy.drain_stops()
    assert [(s.epoch, s.unit) for s in stops] == [(3, "stage1")]
    assert "best val accuracy so far gained +0.00% < tau 1.00%" in stops[0].reason
    # a peak just before growing is no loss either: the gain is never negative
    peak = AutoGrow(config(max_depth=9), GRAPH)
    drive(peak, GRAPH, [0.5, 0.9, 0.85, 0.86])
    assert "gained +0.00%" in peak.drain_stops()[0].reason
    # a new best beyond tau within J epochs keeps the stage growing
    rising = AutoGrow(config(max_depth=9), GRAPH)
    _, steps = drive(rising, GRAPH, [0.9, 0.7, 0.75, 0.92, 0.93, 0.95])
    assert steps == [(1, "stage1"), (3, "stage2"), (5, "stage1")]
    assert rising.drain_stops() == []


def test_growing_all_grows_every_stage_at_each_step_and_they_stop_together() -> None:
    policy = AutoGrow(config(max_depth=3, growing="all"), GRAPH)
    rising = [0.5 + 0.02 * e for e in range(8)]
    graph, steps = drive(policy, GRAPH, rising)
    assert steps == [(1, "stage1"), (1, "stage2"), (3, "stage1"), (3, "stage2")]
    assert {s: r.depth for s, r in graph.stages.items()} == {"stage1": 3, "stage2": 3}
    flat = AutoGrow(config(max_depth=9, growing="all"), GRAPH)
    _, steps = drive(flat, GRAPH, [0.5, 0.6, 0.605, 0.604, 0.603])
    assert steps == [(1, "stage1"), (1, "stage2")]
    assert [(s.epoch, s.unit) for s in flat.drain_stops()] == [(3, "stage1"), (3, "stage2")]
    assert not flat.growing


def test_convergent_growth_waits_for_a_plateau() -> None:
    policy = AutoGrow(config(mode="convergent", max_depth=9, tau=0.01), GRAPH)
    accs = [0.5, 0.6, 0.7, 0.8, 0.801, 0.802, 0.803]
    _, steps = drive(policy, GRAPH, accs)
    # epochs 4-5 gain 0.2% over the best before them (0.8): converged at epoch 5.
    assert steps == [(5, "stage1")]


def test_width_policy_widens_on_a_plateau_up_to_the_max_width() -> None:
    cfg = config(stages=[], widen={"nodes": ["mid"], "factor": 1.5, "max_width": 10})
    policy = AutoGrow(cfg, GRAPH)
    graph, steps = drive(policy, GRAPH, [0.5, 0.7, 0.7, 0.7])
    assert steps == [(3, "mid")]
    assert graph.node("mid").attrs.out_features == 9
    graph, steps = drive(policy, graph, [0.8, 0.9, 0.9, 0.9, 0.9], start=4)
    assert steps == [(7, "mid")] and graph.node("mid").attrs.out_features == 10
    assert not policy.growing
    (stop,) = policy.drain_stops()
    assert (stop.epoch, stop.unit) == (7, "mid")
    assert stop.reason == "its width 10 reached max_width 10 (growth.widen.max_width)"


def test_width_policy_grows_a_grouped_convs_group_by_whole_parts() -> None:
    # c1's 12 channels are 6 parts (grouped convs of 3 and 2 groups read them)
    for factor, cap, want in ((1.25, 30, 18), (2.0, 22, 18)):
        # x1.25 asks for 15: up to 18; x2 asks for 24, over the cap 22: down to 18
        cfg = config(stages=[], widen={"nodes": ["c1"], "factor": factor, "max_width": cap})
        graph, steps = drive(AutoGrow(cfg, grouped()), grouped(), [0.5, 0.7, 0.7, 0.7])
        assert steps == [(3, "c1")] and graph.node("c1").attrs.out_channels == want


def test_a_layer_already_at_its_max_width_is_said_to_stop_before_training(
    capsys: pytest.CaptureFixture,
) -> None:
    from grow_ir.growth import Trainer

    graph = load_spec(TINY_SPIRALS)
    cfg = growth_config(
        {"epochs": 3, "tail_epochs": 1, "widen": {"nodes": ["stem"], "max_width": 8}}
    )
    trainer = Trainer.fresh(
        graph, cfg, data_source="spirals", out_dir=None, progress=False, log=print
    )
    trainer.run()
    out = capsys.readouterr().out
    assert out.startswith(
        "before training: stem stops growing: its width 8 reached max_width 8 "
        "(growth.widen.max_width)\n"
    )
    assert trainer.history.stops[0] == {
        "epoch": 0,
        "unit": "stem",
        "reason": "its width 8 reached max_width 8 (growth.widen.max_width)",
    }


def test_growth_closes_at_the_deadline() -> None:
    policy = AutoGrow(config(epochs=6, tail_epochs=3, interval=1, max_depth=9), GRAPH)
    _, steps = drive(policy, GRAPH, [0.1, 0.3, 0.5, 0.7, 0.8, 0.9])
    assert steps == [(0, "stage1"), (1, "stage2")]
    assert not policy.growing
    assert {s.reason for s in policy.drain_stops()} == {
        "growth budget reached (the last 3 epochs are the tail)"
    }


def test_state_round_trips_through_json_and_decides_the_same() -> None:
    accs = [0.5 + 0.03 * e for e in range(6)] + [0.7, 0.71, 0.75, 0.8, 0.8, 0.8]
    whole = AutoGrow(config(max_depth=4), GRAPH)
    _, all_steps = drive(whole, GRAPH, accs)
    first = AutoGrow(config(max_depth=4), GRAPH)
    graph, steps = drive(first, GRAPH, accs[:6])
    state = json.loads(json.dumps(first.state_dict()))
    second = AutoGrow(config(max_depth=4), graph)
    second.load_state_dict(state)
    _, rest = drive(second, graph, accs[6:], start=6)
    assert steps + rest == all_steps and len(all_steps) >= 4
    assert second.summary() == whole.summary()


def test_bad_policy_targets_are_refused() -> None:
    with pytest.raises(GrowError, match=r"unknown stage.*'stage9'"):
        AutoGrow(config(stages=["stage9"]), GRAPH)
    with pytest.raises(GrowError, match=r"unknown node.*'nope'"):
        AutoGrow(config(widen={"nodes": ["nope"]}), GRAPH)
    with pytest.raises(GrowError, match="only widen linear, conv and embedding"):
        AutoGrow(config(widen={"nodes": ["mid_act"]}), GRAPH)
    with pytest.raises(GrowError, match="nothing to grow"):
        AutoGrow(config(stages=[]), GRAPH)
    assert isinstance(make_policy(growth_config({"policy": "none"}), GRAPH), NoGrowth)


def test_gradmax_grows_the_requested_factor_past_its_per_step_capacity(
    capsys: pytest.CaptureFixture,
) -> None:
    from grow_ir.growth import Trainer
    from grow_ir.passes.gradmax import capacity

    spec = {
        "version": 1,
        "name": "narrow_head",
        "inputs": {"x": {"shape": ["batch", 2]}},
        "nodes": [
            {"name": "fc1", "op": "linear", "out_features": 8},
            {"name": "act", "op": "relu"},
            {"name": "head", "op": "linear", "out_features": 2},
        ],
        "outputs": {"y": "head"},
    }
    graph = load_spec(spec)
    assert capacity(graph, "fc1") == 2  # a fan-out of fc1 is one column of head: 2 entries
    widen = {"nodes": ["fc1"], "factor": 1.5, "max_width": 64, "init": "gradmax"}
    cfg = growth_config({"epochs": 4, "tail_epochs": 1, "patience": 1, "tau": 1.0, "widen": widen})
    trainer = Trainer.fresh(
        graph, cfg, data_source="spirals", out_dir=None, progress=False, log=print
    )
    result = trainer.run()
    events = result.history.events
    assert [(e["args"]["width"], e["args"]["init"]) for e in events[:2]] == [
        (10, "gradmax"),
        (12, "zero"),
    ]
    assert all(e["preserved"] for e in events)
    assert "GradMax fills 2 units at once, zero init the other 2" in events[0]["reason"]
    assert result.history.stops == [] or all(
        "refused" not in s["reason"] for s in result.history.stops
    )
    assert result.graph.node("fc1").attrs.out_features >= 12
