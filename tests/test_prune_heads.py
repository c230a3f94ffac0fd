"""prune_heads: heads as pruning units of attention (issue 14), exact only for dead heads."""

from __future__ import annotations

import pytest
import torch

from grow_ir.errors import PassError
from grow_ir.ir.graph import Graph
from grow_ir.passes import PASSES, add_heads, output_error, prune_heads
from grow_ir.passes.heads import dead_heads, head_scores
from grow_ir.probes import randomize_norms
from grow_ir.spec import dump_spec, load_spec

SPEC = {
    "version": 1,
    "name": "attn",
    "seed": 3,
    "inputs": {"x": {"shape": ["batch", "seq", 8]}},
    "nodes": [
        {"name": "norm", "op": "layernorm"},
        {"name": "attn", "op": "attention", "num_heads": 4},
        {"name": "sum", "op": "add", "inputs": ["attn", "x"]},
        {"name": "head", "op": "linear", "out_features": 3},
    ],
    "outputs": {"y": "head"},
}


@pytest.fixture
def graph() -> Graph:
    g = randomize_norms(load_spec(SPEC), seed=1)
    params = dict(g.params)
    gen = torch.Generator().manual_seed(0)
    params["attn.in_proj_bias"] = torch.randn(params["attn.in_proj_bias"].shape, generator=gen)
    params["attn.out_proj.bias"] = torch.randn(params["attn.out_proj.bias"].shape, generator=gen)
    return g.replace(params=params)


def test_pruning_the_heads_add_heads_added_gives_back_the_graph(graph: Graph) -> None:
    grown = add_heads(graph, node="attn", heads=6, seed=2)
    assert grown.node("attn").attrs.head_dim == 2  # 8 / 6 is no head size: it is written
    assert dead_heads(grown, "attn") == [4, 5]  # their output columns are zero
    back = prune_heads.run(grown, node="attn", drop="dead")
    assert back.preserved and not back.reason
    assert dump_spec(back.graph) == dump_spec(graph)  # head_dim unset again
    for k, v in graph.params.items():
        assert torch.equal(back.graph.params[k], v), k


def test_live_heads_are_pruned_but_reported_as_changing(graph: Graph) -> None:
    result = prune_heads.run(graph, node="attn", keep=2)
    assert not result.preserved and "are live" in result.reason
    assert result.graph.node("attn").attrs.num_heads == 2
    assert output_error(graph, result.graph, {}) > 1e-3  # it did change: the claim is honest
    scores = head_scores(graph, "attn")
    kept = sorted(sorted(range(4), key=lambda h: -scores[h])[:2])
    hd = 2
    old = graph.params["attn.out_proj.weight"]
    new = result.graph.params["attn.out_proj.weight"]
    want = torch.cat([old[:, h * hd : (h + 1) * hd] for h in kept], dim=1)
    assert torch.equal(new, want)  # the kept heads' columns, bitwise, in order
    origin = result.origins["attn.out_proj.weight"]
    assert origin.index[1] == tuple(h * hd + j for h in kept for j in range(hd))


def test_a_dead_head_by_its_values_is_removed_exactly(graph: Graph) -> None:
    params = dict(graph.params)
    w, b = params["attn.in_proj_weight"].clone(), params["attn.in_proj_bias"].clone()
    w[16 + 2 : 16 + 4] = 0  # head 1's value rows (v starts at 2 * 4 heads * 2)
    b[16 + 2 : 16 + 4] = 0
    params["attn.in_proj_weight"], params["attn.in_proj_bias"] = w, b
    g = graph.replace(params=params)
    assert dead_heads(g, "attn") == [1]
    result = prune_heads.run(g, node="attn", drop=[1])
    assert result.preserved
    assert output_error(g, result.graph, {}) <= 1e-5


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"drop": [0, 1, 2, 3]}, "keeps between 1 and 3"),
        ({"keep": [9]}, r"head indices in \[0, 4\)"),
        ({"keep": 2, "drop": [1]}, "exactly one of keep and drop"),
        ({"keep": 2, "importance": "taylor"}, "l1 or l2"),
        ({"drop": "dead"}, "keeps between 1 and 3"),  # no head is dead
    ],
)
def test_bad_choices_are_refused(graph: Graph, kwargs: dict, match: str) -> None:
    with pytest.raises(PassError, match=match):
        prune_heads(graph, node="attn", **kwargs)


def test_grouped_query_attention_is_refused() -> None:
    spec = {**SPEC, "nodes": [dict(n) for n in SPEC["nodes"]]}
    spec["nodes"][1] = {**spec["nodes"][1], "num_kv_heads": 2}
    with pytest.raises(PassError, match="grouped-query"):
        prune_heads(load_spec(spec), node="attn", keep=2)


def test_it_is_a_registered_pass() -> None:
    assert "prune_heads" in PASSES
