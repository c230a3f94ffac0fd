"""Block templates and stages: expansion, naming, $params, records and their errors."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from grow_ir.errors import SpecError
from grow_ir.ir.stages import BlockTemplate, Stage
from grow_ir.spec import dump_spec, load_spec

BLOCK = {
    "nodes": [
        {"name": "fc", "op": "linear", "inputs": ["input"], "out_features": "$width"},
        {"name": "act", "op": "relu"},
        {"name": "sum", "op": "add", "inputs": ["act", "input"]},
    ],
    "output": "sum",
}


def staged(**stage: Any) -> dict[str, Any]:
    """x[batch, 4] -> stem 6 -> stage s (template 'res') -> head 2."""
    entry = {"name": "s", "stage": "res", "depth": 2, "with": {"width": 6}, **stage}
    return {
        "version": 1,
        "inputs": {"x": {"shape": ["batch", 4]}},
        "blocks": {"res": copy.deepcopy(BLOCK)},
        "nodes": [
            {"name": "stem", "op": "linear", "out_features": 6},
            entry,
            {"name": "head", "op": "linear", "out_features": 2},
        ],
        "outputs": {"y": "head"},
    }


def test_stage_expands_into_chained_scoped_blocks():
    g = load_spec(staged())
    names = [n.name for n in g.nodes]
    assert names == [
        "stem",
        "s.block0.fc",
        "s.block0.act",
        "s.block0.sum",
        "s.block1.fc",
        "s.block1.act",
        "s.block1.sum",
        "head",
    ]
    assert g.node("s.block0.fc").inputs == ("stem",)
    assert g.node("s.block0.sum").inputs == ("s.block0.act", "stem")
    assert g.node("s.block1.fc").inputs == ("s.block0.sum",)
    assert g.node("s.block1.fc").attrs.out_features == 6
    assert g.node("head").inputs == ("s.block1.sum",)  # previous node = last block output


def test_graph_keeps_templates_and_stages_as_typed_values():
    g = load_spec(staged())
    assert dict(g.stages) == {"s": Stage("res", 2, {"width": 6})}
    assert g.blocks["res"] == BlockTemplate.of(BLOCK)
    assert g.blocks["res"].params() == {"width"} and g.blocks["res"].node("fc").op == "linear"
    assert g.blocks["res"].entry() == BLOCK and g.stages["s"].entry()["with"] == {"width": 6}


def test_template_output_defaults_to_its_last_node():
    spec = staged()
    del spec["blocks"]["res"]["output"]
    assert load_spec(spec).blocks["res"].output == "sum"


def test_stage_name_stands_for_its_output_in_inputs_and_outputs():
    spec = staged()
    spec["nodes"][2]["inputs"] = ["s"]
    spec["outputs"] = {"y": "head", "features": "s"}
    g = load_spec(spec)
    assert g.node("head").inputs == ("s.block1.sum",)
    assert g.outputs["features"] == "s.block1.sum"


def test_stage_with_explicit_input():
    spec = staged(inputs=["stem"], depth=1)
    assert load_spec(spec).node("s.block0.fc").inputs == ("stem",)


def test_dumped_stages_load_back_from_the_top_level_section():
    g = load_spec(staged())
    spec = dump_spec(g)
    assert "stage" not in str([n.keys() for n in spec["nodes"]])
    h = load_spec(spec)
    assert dict(h.stages) == dict(g.stages) and dict(h.blocks) == dict(g.blocks)
    assert h.nodes == g.nodes


def test_recorded_stage_needs_each_block_output():
    spec = dump_spec(load_spec(staged()))
    spec["stages"]["s"]["depth"] = 3
    with pytest.raises(SpecError, match="no output node for block 2") as info:
        load_spec(spec)
    assert info.value.field == "stages.s.depth" and "s.block2.sum" in info.value.expected


def test_a_recorded_stage_may_start_after_the_lists_first_blocks():
    """``first: 1`` (an imported list whose block 0 is another block): the stage is blocks
    1.. (``s.block1``, ``s.block2``), its records say so, and a block it lacks is named."""
    spec = dump_spec(load_spec(staged(depth=3)))
    spec["stages"]["s"].update(depth=2, first=1)
    g = load_spec(spec)
    assert g.stages["s"].first == 1 and g.stages["s"].scope("s", 0) == "s.block1"
    assert dump_spec(g)["stages"]["s"]["first"] == 1
    spec["stages"]["s"]["first"] = 2
    with pytest.raises(SpecError, match="no output node for block 1") as info:
        load_spec(spec)
    assert "s.block3.sum" in info.value.expected
    spec["stages"]["s"]["first"] = -1
    with pytest.raises(SpecError) as info:
        load_spec(spec)
    assert info.value.field == "stages.s.first"


def test_stage_defined_twice():
    g = load_spec(staged())
    spec = staged()
    spec["stages"] = {k: s.entry() for k, s in g.stages.items()}
    with pytest.raises(SpecError, match="defined twice"):
        load_spec(spec)


def test_unknown_template_suggests():
    with pytest.raises(SpecError, match="did you mean 'res'") as info:
        load_spec(staged(stage="ress"))
    assert info.value.node == "s" and info.value.field == "stage"


def test_param_not_set_by_the_stage():
    with pytest.raises(SpecError, match=r"uses \$width") as info:
        load_spec(staged(**{"with": {}}))
    assert info.value.field == "with.width"


def test_unused_param_suggests():
    with pytest.raises(SpecError, match="did you mean 'width'") as info:
        load_spec(staged(**{"with": {"width": 6, "widht": 6}}))
    assert info.value.field == "with.widht"


def test_unknown_stage_key_suggests():
    with pytest.raises(SpecError, match="did you mean 'depth'"):
        load_spec(staged(dept=2))


def test_zero_depth():
    with pytest.raises(SpecError) as info:
        load_spec(staged(depth=0))
    assert info.value.node == "s" and info.value.field == "depth"


def test_template_input_must_be_local():
    spec = staged()
    spec["blocks"]["res"]["nodes"][1]["inputs"] = ["stem"]
    with pytest.raises(SpecError, match="unknown name in block template") as info:
        load_spec(spec)
    assert info.value.field == "blocks.res.nodes[1].inputs"


def test_template_output_must_exist():
    spec = staged()
    spec["blocks"]["res"]["output"] = "summ"
    with pytest.raises(SpecError, match="did you mean 'sum'"):
        load_spec(spec)


@pytest.mark.parametrize("bad", ["a..b", ".a", "a.", "a-b", "input"])
def test_template_local_names_are_node_name_scopes(bad):
    spec = staged()
    spec["blocks"]["res"]["nodes"][1]["name"] = bad
    with pytest.raises(SpecError, match="malformed template node name"):
        load_spec(spec)


def test_a_template_local_name_may_have_scopes():
    """An imported block's nodes sit in the modules of the block (``mlp.c_fc``)."""
    spec = staged()
    nodes = spec["blocks"]["res"]["nodes"]
    old = nodes[1]["name"]
    nodes[1]["name"] = "inner.x"
    for n in nodes:
        if "inputs" in n:
            n["inputs"] = ["inner.x" if i == old else i for i in n["inputs"]]
    graph = load_spec(spec)
    assert "s.block0.inner.x" in graph.node_map
    # an nn.Sequential's items are numbered: a scope may start with a digit (RegNet f.a.0)
    for n in nodes:
        if "inputs" in n:
            n["inputs"] = ["f.a.0" if i == "inner.x" else i for i in n["inputs"]]
    nodes[1]["name"] = "f.a.0"
    assert "s.block0.f.a.0" in load_spec(spec).node_map


def test_error_in_an_expanded_node_names_block_and_stage():
    with pytest.raises(SpecError) as info:
        load_spec(staged(**{"with": {"width": -1}}))
    err = info.value
    assert err.node == "s.block0.fc" and err.field == "out_features"
    assert "block 'res' of stage 's'" in err.reason
