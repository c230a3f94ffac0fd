"""Connection masks: lowering, ONNX export, prune_connections, grow_connections, and
widening and pruning channels through masked layers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import grow_ir as gi
from grow_ir.backends.onnx_check import check_parity
from grow_ir.errors import PassError
from grow_ir.growth.optim_state import transfer_optimizer
from grow_ir.ir import Graph
from grow_ir.passes import (
    Probe,
    grow_connections,
    output_error,
    prune,
    prune_connections,
    run_plan,
    widen,
)
from grow_ir.passes.connections import effective
from grow_ir.probes import randomize_norms
from tests.channel_graphs import build, conv_bn_conv, flatten, mlp, residual

TOL = 1e-5


def random_mask(graph: Graph, node: str, density: float = 0.5, seed: int = 0) -> Graph:
    """``graph`` with ``node`` masked by a random 0/1 mask (weights left as they are)."""
    n = graph.node(node)
    w = graph.params[f"{node}.weight"]
    gen = torch.Generator().manual_seed(seed)
    mask = (torch.rand(w.shape, generator=gen) < density).to(w.dtype)
    masked = n.replace(attrs=n.attrs.model_copy(update={"masked": True}))
    nodes = tuple(masked if m.name == node else m for m in graph.nodes)
    return gi.ir.verify(
        graph.replace(nodes=nodes, params={**graph.params, f"{node}.weight_mask": mask})
    )


def probe_for(graph: Graph, classes: int, seed: int = 0) -> Probe:
    gen = torch.Generator().manual_seed(seed)
    (name, t) = next(iter(graph.inputs.items()))
    shape = [8 if not isinstance(d, int) else d for d in t.shape]
    return Probe(
        inputs={name: torch.randn(shape, generator=gen)},
        targets=torch.randint(0, classes, (8,), generator=gen),
        loss="cross_entropy",
    )


# ---- the mask in the IR, torch and ONNX ------------------------------------------------------


def test_masked_layers_compute_with_the_masked_weights() -> None:
    graph = random_mask(random_mask(conv_bn_conv(), "c1"), "c2", 0.3, seed=1)
    module = gi.to_torch(graph).eval()
    x = torch.randn(2, 3, 6, 6)
    p = graph.params
    h = F.conv2d(x, p["c1.weight"] * p["c1.weight_mask"], p["c1.bias"], padding=1)
    h = F.batch_norm(h, p["bn.running_mean"], p["bn.running_var"], p["bn.weight"], p["bn.bias"])
    want = F.conv2d(torch.relu(h), p["c2.weight"] * p["c2.weight_mask"], p["c2.bias"])
    assert torch.allclose(module(x), want, atol=1e-6)
    module.train()(x).sum().backward()
    grad = module.c1.weight.grad
    assert torch.all(grad[p["c1.weight_mask"] == 0] == 0)  # masked connections do not learn
    assert set(module.state_dict()) == set(graph.params)


def test_onnx_holds_the_masked_weights_and_matches() -> None:
    graph = random_mask(mlp(), "fc1", 0.4)
    model = gi.to_onnx(graph)
    names = {t.name for t in model.graph.initializer}
    assert "fc1.weight_mask" not in names
    assert check_parity(graph, model) <= TOL
    assert check_parity(random_mask(flatten(), "c1", 0.5)) <= TOL


def test_save_load_keeps_the_mask(tmp_path: Path) -> None:
    graph = random_mask(residual(), "b1_conv")
    back = gi.load(gi.save(graph, tmp_path / "m"))
    assert back.node("b1_conv").attrs.masked
    assert torch.equal(back.params["b1_conv.weight_mask"], graph.params["b1_conv.weight_mask"])
    assert gi.dump_spec(back)["nodes"][3]["masked"] is True


def test_a_fresh_masked_layer_has_pytorchs_weights_and_every_connection() -> None:
    plain = build({"x": ("batch", 5)}, [("fc", "linear", {"out_features": 3}, ["x"])], {"y": "fc"})
    masked = build(
        {"x": ("batch", 5)},
        [("fc", "linear", {"out_features": 3, "masked": True}, ["x"])],
        {"y": "fc"},
    )
    assert torch.equal(masked.params["fc.weight"], plain.params["fc.weight"])
    assert torch.equal(masked.params["fc.weight_mask"], torch.ones(3, 5))


# ---- prune_connections ----------------------------------------------------------------------


def test_prune_connections_keeps_the_largest_weights() -> None:
    graph = mlp()
    w = graph.params["fc1.weight"]
    result = prune_connections.run(graph, node="fc1", density=0.25)
    keep = round(0.25 * w.numel())
    mask = result.graph.params["fc1.weight_mask"]
    assert int(mask.sum()) == keep
    # each unit keeps its strongest connection; the others go by magnitude
    forced = torch.zeros_like(mask, dtype=torch.bool)
    forced[torch.arange(len(w)), w.abs().argmax(1)] = True
    assert torch.all(mask[forced] == 1)
    assert w.abs()[(mask == 1) & ~forced].min() >= w.abs()[mask == 0].max()
    assert torch.equal(result.graph.params["fc1.weight"], w * mask)
    assert not result.preserved and "nonzero weights" in result.reason
    assert (
        output_error(
            result.graph, graph.replace(params={**graph.params, "fc1.weight": w * mask}), {}
        )
        == 0
    )
    # the weight keeps its shape: optimizer state follows, zeroed where connections were cut
    origin = result.origins["fc1.weight"]
    assert origin.source == "fc1.weight" and torch.equal(origin.fresh, (mask == 0) & (w != 0))
    # pruning again to the same density changes nothing and is exact
    again = prune_connections.run(result.graph, node="fc1", density=0.25)
    assert again.preserved and torch.equal(again.graph.params["fc1.weight_mask"], mask)


def test_every_unit_keeps_a_connection() -> None:
    graph = mlp()
    w = graph.params["fc1.weight"].clone()
    w[2] *= 1e-3  # unit 2's connections are the weakest of all
    graph = graph.replace(params={**graph.params, "fc1.weight": w})
    mask = prune_connections(graph, node="fc1", density=0.3).params["fc1.weight_mask"]
    assert torch.all(mask.sum(1) >= 1) and int(mask.sum()) == round(0.3 * w.numel())
    assert int(mask[2].sum()) == 1 and mask[2, w[2].abs().argmax()] == 1


def test_pruning_zero_weights_is_exact() -> None:
    graph = mlp()
    w = graph.params["fc1.weight"].clone()
    w[w.abs() <= w.abs().median()] = 0  # 15 of 30 zero: density 0.5 keeps the rest
    graph = graph.replace(params={**graph.params, "fc1.weight": w})
    result = prune_connections.run(graph, node="fc1", density=0.5)
    assert result.preserved and output_error(graph, result.graph, {}) == 0


def test_optimizer_state_of_cut_connections_is_zero() -> None:
    graph = mlp()
    module = gi.to_torch(graph).train()
    opt = torch.optim.SGD(module.parameters(), lr=0.1, momentum=0.9)
    module(torch.randn(4, 5)).sum().backward()
    opt.step()
    result = prune_connections.run(graph, node="fc1", density=0.5)
    new_module = gi.to_torch(result.graph).train()
    new_opt = transfer_optimizer(opt, module, new_module, result.origins)
    buf = new_opt.state[new_module.fc1.weight]["momentum_buffer"]
    mask = result.graph.params["fc1.weight_mask"]
    assert torch.all(buf[mask == 0] == 0)
    assert torch.equal(buf[mask == 1], opt.state[module.fc1.weight]["momentum_buffer"][mask == 1])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"node": "act", "density": 0.5}, "cannot apply to a relu node"),
        ({"node": "fc1", "density": 0.0}, "bad density"),
        ({"node": "fc1", "density": 1.5}, "bad density"),
        ({"node": "fc1", "density": "half"}, "bad argument; expected a number"),
    ],
)
def test_prune_connections_refusals(kwargs: dict, match: str) -> None:
    with pytest.raises(PassError, match=match):
        prune_connections.run(mlp(), **kwargs)


def test_shared_weights_are_not_masked() -> None:
    graph = build(
        {"x": ("batch", 4)},
        [
            ("a", "linear", {"out_features": 4}, ["x"]),
            ("b", "linear", {"out_features": 4}, ["a"], "a"),
        ],
        {"y": "b"},
    )
    with pytest.raises(PassError, match="shares its parameters with 'b'"):
        prune_connections.run(graph, node="a", density=0.5)


# ---- grow_connections (NeST's rule) ---------------------------------------------------------


def test_grow_connections_brings_back_the_largest_gradients() -> None:
    graph = prune_connections(mlp(), node="fc2", density=0.3)
    probe = probe_for(graph, classes=3)
    result = grow_connections.run(graph, node="fc2", fraction=0.5, probe=probe)
    assert result.preserved and output_error(graph, result.graph, {}) == 0
    old_mask = graph.params["fc2.weight_mask"]
    new_mask = result.graph.params["fc2.weight_mask"]
    grown = (new_mask == 1) & (old_mask == 0)
    assert int(grown.sum()) == round(0.5 * int((old_mask == 0).sum()))
    assert torch.all(result.graph.params["fc2.weight"][grown] == 0)
    # NeST's rule: the dormant connections of largest |dL/dw| (w = the effective weight)
    module = gi.to_torch(
        graph.replace(params={**graph.params, "fc2.weight_mask": torch.ones_like(old_mask)})
    )
    loss = F.cross_entropy(module.train()(probe.inputs["x"]), probe.targets)
    loss.backward()
    g = module.fc2.weight.grad.abs()
    assert g[grown].min() >= g[(old_mask == 0) & ~grown].max()


def test_grow_connections_needs_masked_connections_and_a_probe() -> None:
    with pytest.raises(PassError, match="no masked connections"):
        grow_connections.run(mlp(), node="fc2", probe=probe_for(mlp(), 3))
    with pytest.raises(PassError, match="probe batch"):
        grow_connections.run(prune_connections(mlp(), node="fc2", density=0.5), node="fc2")


# ---- channels through masked layers ---------------------------------------------------------


@pytest.mark.parametrize("init", ["net2net", "zero"])
def test_widening_through_masked_layers_is_exact(init: str) -> None:
    graph = randomize_norms(random_mask(random_mask(residual(), "b1_conv"), "head", 0.6), seed=2)
    result = widen.run(graph, node="stem", width=7, init=init)
    assert result.preserved and output_error(graph, result.graph, {}) <= TOL
    mask = result.graph.params["b1_conv.weight_mask"]
    old = graph.params["b1_conv.weight_mask"]
    assert mask.shape == (7, 7, 3, 3) and set(mask.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(mask[:4, :4], old)  # the old connections keep their mask
    if init == "zero":  # fresh units' connections are live
        assert torch.all(mask[4:] == 1) and torch.all(mask[:, 4:] == 1)
    assert check_parity(result.graph) <= TOL


def test_pruning_channels_of_masked_layers_uses_the_effective_weights() -> None:
    graph = mlp()
    w = graph.params["fc1.weight"].clone()
    w[0] *= 100  # heavy, but fully masked: dead weight
    mask = torch.ones_like(w)
    mask[0] = 0
    graph = random_mask(graph, "fc1", 1.0)
    graph = graph.replace(params={**graph.params, "fc1.weight": w, "fc1.weight_mask": mask})
    result = prune.run(graph, node="fc1", keep=5)
    assert "dropped 0" in result.summary
    assert result.graph.params["fc1.weight_mask"].shape == (5, 5)
    assert torch.equal(effective(result.graph, "fc1.weight"), (w * mask)[1:])


def test_plan_entries(tmp_path: Path) -> None:
    plan = [
        {"pass": "prune_connections", "node": "fc1", "density": 0.5},
        {"pass": "widen", "node": "fc1", "width": 8, "init": "zero"},
        {"pass": "prune", "node": "fc1", "drop": [6, 7]},
    ]
    result = run_plan(mlp(), plan, check=True)
    assert [s.result.preserved for s in result.steps] == [False, True, True]
