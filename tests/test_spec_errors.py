"""One test per spec error: each is a one-paragraph SpecError naming file, node or field,
what was expected and what was found; pydantic's own text never leaks."""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any

import pytest
import safetensors.torch
import torch
import yaml

from grow_ir.errors import GrowError, SpecError
from grow_ir.spec import load, load_spec, save


def error_of(source: dict[str, Any] | Path) -> SpecError:
    """The SpecError that loading ``source`` raises, checked to be one clean paragraph."""
    with pytest.raises(SpecError) as info:
        load_spec(source)
    err = info.value
    text = str(err)
    assert isinstance(err, GrowError)
    assert "\n" not in text
    for leak in ("pydantic", "Input should", "validation error", "For further information"):
        assert leak not in text, text
    assert err.expected and err.found, text
    return err


def with_node(spec: dict[str, Any], index: int, **changes: Any) -> dict[str, Any]:
    out = copy.deepcopy(spec)
    out["nodes"][index].update(changes)
    return out


def image_spec(node: dict[str, Any], shape: list[Any] | None = None) -> dict[str, Any]:
    return {
        "version": 1,
        "inputs": {"x": {"shape": shape or ["batch", 3, 4, 4]}},
        "nodes": [node],
        "outputs": {"y": node["name"]},
    }


# ---- file level -------------------------------------------------------------------------


def test_yaml_syntax_error_gives_line_and_column(write_spec):
    path = write_spec("version: 1\nnodes: [\n  {name: a\n")
    err = error_of(path)
    assert err.file == str(path)
    assert "YAML syntax error at line 4, column 1" in str(err)


def test_json_syntax_error_gives_line_and_column(write_spec):
    err = error_of(write_spec('{"version": 1,\n "x": }', "net.json"))
    assert "JSON syntax error at line 2, column 7" in str(err)


def _laughs(levels: int = 9) -> str:
    """A YAML "billion laughs": each anchor lists the previous one 9 times (9**levels)."""
    lines = ["version: 1", 'l0: &l0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for k in range(1, levels):
        lines.append(f"l{k}: &l{k} [" + ",".join([f"*l{k - 1}"] * 9) + "]")
    return "\n".join(lines) + "\n"


def test_yaml_billion_laughs_is_refused_at_once(write_spec):
    path = write_spec(_laughs())
    assert path.stat().st_size < 600
    start = time.perf_counter()
    err = error_of(path)
    assert time.perf_counter() - start < 2.0
    assert "aliases expand the document too far" in err.reason
    assert "1,000,000 values" in err.expected


def test_yaml_aliases_that_repeat_a_little_are_fine(write_spec, mlp_spec):
    text = (
        "version: 1\ninputs: {x: {shape: [batch, 4]}}\n"
        "nodes:\n"
        "  - &fc {name: fc, op: linear, out_features: 8}\n"
        "  - {<<: *fc, name: fc2}\n"
        "outputs: {y: fc2}\n"
    )
    graph = load_spec(write_spec(text))
    assert graph.node("fc2").attrs.out_features == 8


def test_yaml_alias_inside_its_own_anchor(write_spec):
    err = error_of(write_spec("version: 1\nnodes: &n [*n]\n"))
    assert "contains it" in err.reason


@pytest.mark.parametrize("name", ["deep.yaml", "deep.json"])
@pytest.mark.parametrize("depth", [65, 5000])
def test_deeply_nested_lists_and_maps(write_spec, name, depth):
    body = "[" * depth + "]" * depth if depth % 2 else '{"a": ' * depth + "1" + "}" * depth
    err = error_of(write_spec('{"version": 1, "nodes": ' + body + "}", name))
    assert "nested too deeply" in err.reason and "64 levels" in err.expected


def test_a_plan_nested_too_deeply_is_refused(tmp_path):
    from grow_ir.commands.grow import read_plan

    path = tmp_path / "plan.yaml"
    path.write_text("[" * 3000 + "]" * 3000)
    with pytest.raises(SpecError, match="nested too deeply"):
        read_plan(str(path))


def test_yaml_duplicate_key_is_refused_with_both_places(write_spec, mlp_spec):
    text = yaml.safe_dump(mlp_spec, sort_keys=False) + "nodes: []\n"
    err = error_of(write_spec(text))
    assert "duplicate key 'nodes'" in err.reason
    assert "first at line" in err.reason and "silently replace" in err.found


def test_yaml_duplicate_attribute_inside_a_node(write_spec):
    text = (
        "version: 1\ninputs: {x: {shape: [batch, 4]}}\n"
        "nodes:\n  - {name: fc, op: linear, out_features: 8, out_features: 9}\n"
        "outputs: {y: fc}\n"
    )
    err = error_of(write_spec(text))
    assert "duplicate key 'out_features' at line 4" in err.reason


def test_json_duplicate_key_is_refused(write_spec, mlp_spec):
    text = json.dumps(mlp_spec)[:-1] + ', "nodes": []}'
    err = error_of(write_spec(text, "net.json"))
    assert "duplicate key 'nodes'" in err.reason


def test_empty_file(write_spec):
    err = error_of(write_spec(""))
    assert "empty" in err.reason and err.found == "nothing"


def test_not_a_mapping(write_spec):
    err = error_of(write_spec("- a\n- b\n"))
    assert "not a mapping" in err.reason and err.found == "a list"


def test_missing_spec_file(tmp_path):
    err = error_of(tmp_path / "nope.yaml")
    assert "no such spec file" in err.reason and err.file.endswith("nope.yaml")


def test_wrong_version(mlp_spec):
    err = error_of({**mlp_spec, "version": 2})
    assert err.field == "version" and err.expected == "1" and err.found == "2"


def test_missing_version(mlp_spec):
    del mlp_spec["version"]
    err = error_of(mlp_spec)
    assert err.field == "version" and "missing" in err.reason


def test_unknown_top_level_key_suggests(mlp_spec):
    mlp_spec["ouputs"] = mlp_spec.pop("outputs")
    err = error_of(mlp_spec)
    assert err.field == "ouputs" and "did you mean 'outputs'" in err.reason


def test_seed_and_weights_together(mlp_spec):
    err = error_of({**mlp_spec, "seed": 1, "weights": "w.safetensors"})
    assert err.field == "weights" and "not both" in err.expected


def test_growth_must_be_a_mapping(mlp_spec):
    err = error_of({**mlp_spec, "growth": [1, 2]})
    assert err.field == "growth" and err.expected == "a mapping"


def test_grow_entry_needs_a_pass(mlp_spec):
    err = error_of({**mlp_spec, "grow": [{"node": "fc"}]})
    assert err.field == "grow[0].pass" and "missing" in err.reason


def test_no_outputs(mlp_spec):
    err = error_of({**mlp_spec, "outputs": {}})
    assert err.field == "outputs" and err.expected == "at least 1 entry"


# ---- inputs -----------------------------------------------------------------------------


def test_zero_input_dim(mlp_spec):
    mlp_spec["inputs"]["x"]["shape"] = ["batch", 0]
    err = error_of(mlp_spec)
    assert err.field == "inputs.x.shape[1]" and "positive integer" in err.expected


def test_negative_input_dim(mlp_spec):
    mlp_spec["inputs"]["x"]["shape"] = ["batch", -4]
    assert error_of(mlp_spec).found == "-4"


def test_unknown_dtype(mlp_spec):
    mlp_spec["inputs"]["x"]["dtype"] = "float64"
    err = error_of(mlp_spec)
    assert err.field == "inputs.x.dtype" and "'int64'" in err.expected


# ---- nodes ------------------------------------------------------------------------------


def test_unknown_op_suggests(mlp_spec):
    err = error_of(with_node(mlp_spec, 1, op="rleu"))
    assert err.node == "act" and err.field == "op" and "did you mean 'relu'" in err.reason


def test_misspelt_attribute_suggests(mlp_spec):
    spec = with_node(mlp_spec, 0, out_feature=8)
    del spec["nodes"][0]["out_features"]
    err = error_of(spec)
    assert err.node == "fc" and err.field == "out_feature"
    assert "did you mean 'out_features'" in err.reason


def test_misspelt_node_key_suggests(mlp_spec):
    err = error_of(with_node(mlp_spec, 1, input=["fc"]))
    assert err.field == "input" and "did you mean 'inputs'" in err.reason


def test_missing_required_attribute(mlp_spec):
    del mlp_spec["nodes"][0]["out_features"]
    err = error_of(mlp_spec)
    assert err.field == "out_features" and err.found == "none"


def test_missing_op(mlp_spec):
    del mlp_spec["nodes"][1]["op"]
    err = error_of(mlp_spec)
    assert err.node == "act" and "needs an 'op'" in err.reason


def test_wrong_attribute_type(mlp_spec):
    err = error_of(with_node(mlp_spec, 0, out_features="ten"))
    assert err.field == "out_features"
    assert err.expected == "a positive integer" and err.found == "'ten'"


def test_bool_is_not_an_integer(mlp_spec):
    assert error_of(with_node(mlp_spec, 0, out_features=True)).found == "true"


def test_wrong_node_key_type(mlp_spec):
    err = error_of(with_node(mlp_spec, 1, inputs="fc"))
    assert err.node == "act" and err.field == "inputs" and err.expected == "a list"


def test_negative_size(mlp_spec):
    err = error_of(with_node(mlp_spec, 0, out_features=-3))
    assert err.expected == "a positive integer" and err.found == "-3"


def test_zero_size():
    err = error_of(image_spec({"name": "c", "op": "conv2d", "out_channels": 0, "kernel_size": 3}))
    assert err.node == "c" and err.field == "out_channels"


def test_union_attribute_is_described_plainly():
    node = {"name": "c", "op": "conv2d", "out_channels": 2, "kernel_size": 3, "padding": "sam"}
    err = error_of(image_spec(node))
    assert err.field == "padding" and "'same' or 'valid'" in err.expected


def test_input_width_is_inferred_not_written(mlp_spec):
    err = error_of(with_node(mlp_spec, 0, in_features=4))
    assert err.field == "in_features" and "inferred" in err.reason


def test_unknown_input_reference_suggests(mlp_spec):
    err = error_of(with_node(mlp_spec, 1, inputs=["fcc"]))
    assert err.node == "act" and err.field == "inputs" and "did you mean 'fc'" in err.reason


def test_duplicate_name(mlp_spec):
    err = error_of(with_node(mlp_spec, 1, name="fc"))
    assert err.node == "fc" and "duplicate" in err.reason


def test_malformed_name(mlp_spec):
    err = error_of(with_node(mlp_spec, 0, name="bad-name"))
    assert err.field == "name" and err.found == "'bad-name'"


def test_name_must_be_a_string(mlp_spec):
    err = error_of(with_node(mlp_spec, 0, name=3))
    assert err.field == "nodes[0].name" and err.expected == "a string"


def test_cycle_names_its_nodes(mlp_spec):
    mlp_spec["nodes"] = [
        {"name": "a", "op": "relu", "inputs": ["c"]},
        {"name": "b", "op": "relu"},
        {"name": "c", "op": "add", "inputs": ["b", "x"]},
    ]
    mlp_spec["outputs"] = {"y": "c"}
    err = error_of(mlp_spec)
    assert "cycle" in err.reason and err.found == "a -> b -> c -> a"


def test_add_of_different_widths(mlp_spec):
    mlp_spec["nodes"].append({"name": "sum", "op": "add", "inputs": ["fc", "head"]})
    mlp_spec["outputs"] = {"y": "sum"}
    err = error_of(mlp_spec)
    assert err.node == "sum" and "[batch, 8]" in err.expected and "[batch, 3]" in err.found


def test_conv_on_a_2d_input():
    node = {"name": "c", "op": "conv2d", "out_channels": 2, "kernel_size": 3}
    err = error_of(image_spec(node, shape=["batch", 4]))
    assert err.node == "c" and "rank 4" in err.expected


def test_kernel_larger_than_padded_input():
    node = {"name": "c", "op": "conv2d", "out_channels": 2, "kernel_size": 7, "padding": 1}
    err = error_of(image_spec(node))
    assert err.field == "kernel_size" and "at most 6" in err.expected


def test_unknown_output_suggests(mlp_spec):
    err = error_of({**mlp_spec, "outputs": {"y": "haed"}})
    assert err.field == "outputs.y" and "did you mean 'head'" in err.reason


def test_dead_end_node(mlp_spec):
    mlp_spec["nodes"].append({"name": "extra", "op": "relu", "inputs": ["x"]})
    assert error_of(mlp_spec).node == "extra"


def test_share_of_unknown_node(mlp_spec):
    err = error_of(with_node(mlp_spec, 2, share="fcc"))
    assert err.field == "share" and "did you mean 'fc'" in err.reason


def test_share_with_a_different_layer(mlp_spec):
    err = error_of(with_node(mlp_spec, 2, share="fc"))
    assert err.node == "head" and err.field == "share"


def test_absurd_size_says_gib_without_allocating(mlp_spec):
    mlp_spec["inputs"]["x"]["shape"] = ["batch", 10**5]
    mlp_spec["nodes"][0]["out_features"] = 10**9
    start = time.perf_counter()
    err = error_of(mlp_spec)
    assert time.perf_counter() - start < 2.0
    assert err.node == "fc" and "GiB" in err.found and "372,5" in err.found


# ---- weights ----------------------------------------------------------------------------


@pytest.fixture
def saved(mlp_spec, tmp_path) -> Path:
    return save(load_spec(mlp_spec), tmp_path / "model")


def test_missing_weights_file(saved):
    (saved / "weights.safetensors").unlink()
    err = error_of(saved / "spec.yaml")
    assert err.field == "weights" and "does not exist" in err.reason


def test_corrupt_weights_file(saved):
    (saved / "weights.safetensors").write_bytes(b"not a safetensors file")
    err = error_of(saved)
    assert err.field == "weights" and "cannot read" in err.reason


def _rewrite(saved: Path, change) -> None:
    path = saved / "weights.safetensors"
    tensors = safetensors.torch.load_file(str(path))
    change(tensors)
    safetensors.torch.save_file(tensors, str(path))


def test_weights_file_lacks_a_key(saved):
    _rewrite(saved, lambda t: t.pop("head.bias"))
    err = error_of(saved)
    assert err.node == "head" and err.field == "head.bias" and err.found == "none"


def test_weights_file_has_an_extra_key(saved):
    _rewrite(saved, lambda t: t.update({"ghost.weight": torch.zeros(2)}))
    err = error_of(saved)
    assert err.field == "ghost.weight" and "no node uses" in err.reason


def test_weights_of_the_wrong_shape(saved):
    _rewrite(saved, lambda t: t.update({"fc.weight": torch.zeros(8, 5)}))
    err = error_of(saved)
    assert err.node == "fc" and err.expected == "float32[8, 4]" and err.found == "float32[8, 5]"


def test_load_of_a_missing_directory(tmp_path):
    with pytest.raises(SpecError, match="no such model directory"):
        load(tmp_path / "nowhere")
