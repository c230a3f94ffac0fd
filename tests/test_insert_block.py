"""insert_block: AutoGrow's block growth from a stage's template."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch

from grow_ir import passes
from grow_ir.errors import PassError
from grow_ir.ir.graph import Graph
from grow_ir.ir.stages import Stage
from grow_ir.passes.manager import output_error
from grow_ir.probes import randomize_norms
from grow_ir.spec import load_spec

TOL = 1e-5

BASIC = {
    "nodes": [
        {"name": "conv1", "op": "conv2d", "out_channels": "$c", "kernel_size": 3, "padding": 1},
        {"name": "bn1", "op": "batchnorm"},
        {"name": "act1", "op": "relu"},
        {"name": "conv2", "op": "conv2d", "out_channels": "$c", "kernel_size": 3, "padding": 1},
        {"name": "bn2", "op": "batchnorm"},
        {"name": "sum", "op": "add", "inputs": ["bn2", "input"]},
        {"name": "act", "op": "relu"},
    ]
}
MLP = {
    "nodes": [
        {"name": "fc1", "op": "linear", "out_features": "$hidden"},
        {"name": "act", "op": "gelu"},
        {"name": "fc2", "op": "linear", "out_features": "$width"},
        {"name": "drop", "op": "dropout", "p": 0.1},
        {"name": "sum", "op": "add", "inputs": ["input", "drop"]},
    ]
}
PLAIN = {
    "nodes": [
        {"name": "conv", "op": "conv2d", "out_channels": "$c", "kernel_size": 3, "padding": 1},
        {"name": "bn", "op": "batchnorm"},
        {"name": "act", "op": "relu"},
    ]
}


def resnet(
    block: dict[str, Any] = BASIC, depth: int = 2, stem_act: bool = True, **with_: Any
) -> dict[str, Any]:
    """A spec: stem conv (+ relu), one stage of ``block``, pool, head."""
    with_ = with_ or {"c": 4}
    nodes = [
        {"name": "stem", "op": "conv2d", "inputs": ["image"], "out_channels": with_["c"],
         "kernel_size": 3, "padding": 1},
        *([{"name": "stem_act", "op": "relu"}] if stem_act else []),
        {"name": "s1", "stage": "b", "depth": depth, "with": with_},
        {"name": "pool", "op": "global_avgpool"},
        {"name": "head", "op": "linear", "out_features": 3},
    ]  # fmt: skip
    return {
        "version": 1,
        "inputs": {"image": {"shape": ["batch", 3, 6, 6]}},
        "blocks": {"b": copy.deepcopy(block)},
        "nodes": nodes,
        "outputs": {"logits": "head"},
    }


def load(spec: dict[str, Any]) -> Graph:
    return randomize_norms(load_spec(spec), seed=1)


def mlp() -> Graph:
    nodes = [
        {"name": "embed", "op": "linear", "inputs": ["x"], "out_features": 6},
        {"name": "s1", "stage": "b", "depth": 1, "with": {"hidden": 8, "width": 6}},
        {"name": "ln", "op": "layernorm"},
        {"name": "head", "op": "linear", "out_features": 2},
    ]
    spec = {"version": 1, "inputs": {"x": {"shape": ["batch", 5, 4]}}, "blocks": {"b": MLP},
            "nodes": nodes, "outputs": {"y": "head"}}  # fmt: skip
    return load(spec)


def error(old: Graph, result: passes.PassResult) -> float:
    return max(output_error(old, result.graph, result.same_as, batch=b, seed=b) for b in (1, 4))


@pytest.fixture(scope="module")
def net() -> Graph:
    return load(resnet())


def test_structure_matches_a_deeper_spec(net: Graph) -> None:
    result = passes.insert_block.run(net, stage="s1")
    expected = load_spec(resnet(depth=3))
    assert result.graph.nodes == expected.nodes
    assert dict(result.graph.stages) == {"s1": Stage("b", 3, {"c": 4})}
    assert dict(result.graph.blocks) == dict(net.blocks)
    assert net.stages["s1"].depth == 2  # the input graph is unchanged
    assert result.graph.node("pool").inputs == ("s1.block2.act",)
    new = {k for k in result.graph.params if k.startswith("s1.block2.")}
    assert set(result.origins) == new
    assert all(o.source is None for o in result.origins.values())


def test_zero_init_is_exact(net: Graph) -> None:
    result = passes.insert_block.run(net, stage="s1", init="zero")
    assert result.preserved, result.reason
    assert "'s1.block2.bn2'" in result.summary
    p = result.graph.params
    assert torch.equal(p["s1.block2.bn2.weight"], torch.zeros(4))
    assert torch.equal(p["s1.block2.bn2.bias"], torch.zeros(4))
    assert p["s1.block2.conv1.weight"].abs().sum() > 0  # the rest keeps the default init
    assert error(net, result) <= TOL


def test_twice_and_seeded(net: Graph) -> None:
    once = passes.insert_block(net, stage="s1", seed=5)
    twice = passes.insert_block.run(once, stage="s1", seed=5)
    assert twice.preserved and twice.graph.stages["s1"].depth == 4
    assert output_error(net, twice.graph, {}, batch=2) <= TOL
    again = passes.insert_block(net, stage="s1", seed=5)
    key = "s1.block2.conv1.weight"
    assert torch.equal(once.params[key], again.params[key])


def test_residual_mlp_block_without_final_activation() -> None:
    g = mlp()
    result = passes.insert_block.run(g, stage="s1")
    assert result.preserved, result.reason
    assert "'s1.block1.fc2'" in result.summary
    assert torch.equal(result.graph.params["s1.block1.fc2.weight"], torch.zeros(6, 8))
    assert error(g, result) <= TOL


def test_widened_stage_grows_blocks_of_its_current_width() -> None:
    g = load(resnet(c=6))
    narrow = g.replace(stages={"s1": {"block": "b", "depth": 2, "with": {"c": 4}}})
    result = passes.insert_block.run(narrow, stage="s1")
    assert result.graph.node("s1.block2.conv1").attrs.out_channels == 6
    assert result.preserved and error(narrow, result) <= TOL


@pytest.mark.parametrize("init", ["gauss", "uniform"])
def test_random_init_is_reported(net: Graph, init: str) -> None:
    result = passes.insert_block.run(net, stage="s1", init=init)
    assert not result.preserved
    assert f"init '{init}'" in result.reason
    assert error(net, result) > 1e-3


def test_uniinit_and_gauinit_draw_the_last_norm_as_the_paper_does() -> None:
    # AutoGrow's UniInit: gamma, beta ~ U(0, 1); GauInit: N(0, 1) (Wen et al. 2020).
    g = load(resnet(c=64))
    drawn = {}
    for init in ("uniform", "gauss"):
        new = passes.insert_block.run(g, stage="s1", init=init).graph
        drawn[init] = torch.cat([new.params[f"s1.block2.bn2.{k}"] for k in ("weight", "bias")])
    u, n = drawn["uniform"], drawn["gauss"]
    assert float(u.min()) >= 0.0 and float(u.max()) <= 1.0
    assert 0.4 < float(u.mean()) < 0.6 and float(u.max()) > 0.9
    assert float(n.min()) < -1.0 and float(n.max()) > 1.0 and 0.8 < float(n.std()) < 1.2


def test_final_activation_that_is_not_the_identity_is_reported() -> None:
    block = copy.deepcopy(BASIC)
    block["nodes"][-1] = {"name": "act", "op": "silu"}
    g = load(resnet(block=block))
    result = passes.insert_block.run(g, stage="s1")
    assert not result.preserved
    assert "ends in silu, which is not the identity on its input 's1.block1.act'" in result.reason
    assert error(g, result) > 1e-3


def test_plain_block_is_reported() -> None:
    g = load(resnet(block=PLAIN))
    result = passes.insert_block.run(g, stage="s1")
    assert not result.preserved
    assert "no residual add" in result.reason
    assert error(g, result) > 1e-3


def test_projection_skip_is_reported() -> None:
    block = copy.deepcopy(BASIC)
    block["nodes"].insert(5, {"name": "proj", "op": "conv2d", "inputs": ["input"],
                              "out_channels": "$c", "kernel_size": 1})  # fmt: skip
    block["nodes"][6] = {"name": "sum", "op": "add", "inputs": ["bn2", "proj"]}
    g = load(resnet(block=block))
    result = passes.insert_block.run(g, stage="s1")
    assert not result.preserved
    assert "no single plain skip" in result.reason


# ---- one test per refusal ----------------------------------------------------------------


def refuse(graph: Graph, match: str, **kwargs: Any) -> PassError:
    with pytest.raises(PassError, match=match) as info:
        passes.insert_block(graph, **kwargs)
    assert info.value.reason.startswith("insert_block: ")
    return info.value


def test_refuses_unknown_stage(net: Graph) -> None:
    err = refuse(net, r"unknown stage \(did you mean 's1'\?\)", stage="s1x")
    assert err.field == "stage"


def test_refuses_unknown_init(net: Graph) -> None:
    refuse(net, r"unknown init \(did you mean 'zero'\?\)", stage="s1", init="zeros")


def test_refuses_missing_template(net: Graph) -> None:
    g = net.replace(stages={"s1": {"block": "nope", "depth": 2, "with": {"c": 4}}})
    refuse(g, "block template is missing", stage="s1")


def test_refuses_depth_zero(net: Graph) -> None:
    g = net.replace(stages={"s1": {"block": "b", "depth": 0, "with": {"c": 4}}})
    err = refuse(g, "needs one", stage="s1")
    assert err.field == "stages.s1.depth"


def test_refuses_a_missing_last_block(net: Graph) -> None:
    g = net.replace(stages={"s1": {"block": "b", "depth": 3, "with": {"c": 4}}})
    err = refuse(g, "last block is not in the graph", stage="s1")
    assert err.node == "s1.block2.act"


def test_refuses_taken_names(net: Graph) -> None:
    g = net.replace(stages={"s1": {"block": "b", "depth": 1, "with": {"c": 4}}})
    err = refuse(g, "names are taken", stage="s1")
    assert err.node.startswith("s1.block1.")


def test_refuses_an_unset_template_parameter(net: Graph) -> None:
    g = net.replace(stages={"s1": {"block": "b", "depth": 2, "with": {}}})
    err = refuse(g, r"uses \$c", stage="s1")
    assert err.field == "stages.s1.with.c"


def test_refuses_a_block_that_changes_the_type() -> None:
    block = copy.deepcopy(PLAIN)
    block["nodes"][0]["stride"] = 2
    g = load(resnet(block=block))
    err = refuse(g, "must keep the type", stage="s1")
    assert err.node == "s1.block2.act"


def test_refuses_an_output_that_is_not_last(net: Graph) -> None:
    g = net.replace(blocks={"b": {**BASIC, "output": "sum"}})
    g = g.replace(stages={"s1": {"block": "b", "depth": 2, "with": {"c": 4}}})
    refuse(g, "output must be its last node", stage="s1")


def test_refuses_a_template_that_names_an_unknown_value(net: Graph) -> None:
    block = copy.deepcopy(BASIC)
    block["nodes"][5] = {"name": "sum", "op": "add", "inputs": ["bn2", "ghost"]}
    err = refuse(net.replace(blocks={"b": block}), "no such value", stage="s1")
    assert err.node == "s1.block2.ghost"
