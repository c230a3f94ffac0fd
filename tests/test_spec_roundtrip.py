"""dump_spec, save and load: exact round trips and all-or-nothing saves."""

from __future__ import annotations

import pytest
import torch
import yaml

from grow_ir.errors import SpecError
from grow_ir.spec import (
    dump_spec,
    example_names,
    example_path,
    load,
    load_spec,
    save,
    store,
    to_yaml,
)


def trained(graph):
    """``graph`` with every float parameter perturbed, as if trained."""
    gen = torch.Generator().manual_seed(1)
    params = {
        k: v + torch.randn(v.shape, generator=gen).to(v.dtype) if v.is_floating_point() else v + 3
        for k, v in graph.params.items()
    }
    return graph.replace(params=params)


@pytest.mark.parametrize("name", example_names())
def test_dump_then_load_gives_equal_structure(name, same_graph):
    g = load_spec(example_path(name))
    spec = dump_spec(g)
    assert "seed" not in spec and "weights" not in spec
    assert yaml.safe_load(to_yaml(spec)) == spec
    same_graph(load_spec(spec), g)  # seed 0 again: same parameters too


@pytest.mark.parametrize("name", example_names())
def test_save_then_load_is_exact(name, tmp_path, same_graph):
    g = trained(load_spec(example_path(name)))
    path = save(g, tmp_path / name)
    names = sorted(p.name for p in path.iterdir())
    assert names == [".grow-ir.json", "spec.yaml", "weights.safetensors"]
    assert yaml.safe_load((path / "spec.yaml").read_text())["weights"] == "weights.safetensors"
    same_graph(load(path), g)
    same_graph(load_spec(path), g)  # a saved directory is a spec too


def test_dump_writes_only_non_default_attributes(mlp_spec):
    mlp_spec["nodes"][0]["bias"] = True  # the default
    mlp_spec["nodes"][2]["bias"] = False
    nodes = dump_spec(load_spec(mlp_spec))["nodes"]
    assert nodes[0] == {"name": "fc", "op": "linear", "out_features": 8}
    assert nodes[2] == {"name": "head", "op": "linear", "out_features": 3, "bias": False}


def test_dump_keeps_share_grow_and_growth(mlp_spec, same_graph):
    mlp_spec["nodes"].insert(2, {"name": "fc2", "op": "linear", "out_features": 8, "share": "fc"})
    mlp_spec["inputs"]["x"]["shape"] = ["batch", 8]
    mlp_spec["grow"] = [{"pass": "widen", "node": "fc", "width": 12}]
    mlp_spec["growth"] = {"policy": "autogrow", "tau": 0.01}
    g = load_spec(mlp_spec)
    spec = dump_spec(g)
    assert spec["nodes"][2]["share"] == "fc"
    same_graph(load_spec(yaml.safe_load(to_yaml(spec))), g)


def test_save_replaces_a_previous_save(mlp_spec, tmp_path, same_graph):
    g = load_spec(mlp_spec)
    save(g, tmp_path / "m", extra_files={"history.json": "[]"})
    h = trained(g)
    save(h, tmp_path / "m")
    same_graph(load(tmp_path / "m"), h)
    assert not (tmp_path / "m" / "history.json").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["m"]  # no temporary left behind


def test_save_writes_extra_files(mlp_spec, tmp_path):
    path = save(load_spec(mlp_spec), tmp_path / "m", extra_files={"history.json": '{"a": 1}'})
    assert (path / "history.json").read_text() == '{"a": 1}'


def test_failed_save_leaves_the_old_directory_intact(mlp_spec, tmp_path, monkeypatch, same_graph):
    g = load_spec(mlp_spec)
    save(g, tmp_path / "m")

    def broken(params, path):
        path.write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(store, "write_weights", broken)
    with pytest.raises(OSError, match="disk full"):
        save(trained(g), tmp_path / "m")
    same_graph(load(tmp_path / "m"), g)
    assert [p.name for p in tmp_path.iterdir()] == ["m"]


def test_save_refuses_a_foreign_directory(mlp_spec, tmp_path):
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(SpecError, match="files grow-ir did not write"):
        save(load_spec(mlp_spec), tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "keep me"


def test_save_refuses_a_file(mlp_spec, tmp_path):
    (tmp_path / "m").write_text("x")
    with pytest.raises(SpecError, match="cannot write a model directory over a file"):
        save(load_spec(mlp_spec), tmp_path / "m")


def test_save_verifies_the_graph(mlp_spec, tmp_path):
    g = load_spec(mlp_spec)
    broken = g.replace(params={k: v for k, v in g.params.items() if k != "fc.bias"})
    with pytest.raises(SpecError, match="missing parameter"):
        save(broken, tmp_path / "m")
    assert not (tmp_path / "m").exists()
