"""grow-ir import: ONNX files and module:callable sources into spec directories."""

from __future__ import annotations

from pathlib import Path

import torch

import grow_ir as gi
from grow_ir import cli
from grow_ir.spec import example_path

MODULE_FILE = """
import torch
from torch import nn


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))


def odd():
    return nn.Sequential(nn.Linear(4, 8), nn.Softplus())


def not_a_module():
    return 3
"""


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_import_an_onnx_file(tmp_path, capsys):
    graph = gi.load_spec(example_path("resnet"))
    gi.to_onnx(graph, tmp_path / "resnet.onnx")
    code, out, err = run(capsys, "import", str(tmp_path / "resnet.onnx"), "-o", str(tmp_path / "d"))
    assert (code, err) == (0, "")
    assert out.startswith(f"imported {tmp_path / 'resnet.onnx'}: {len(graph.nodes)} nodes")
    back = gi.load(tmp_path / "d")
    assert [n.name for n in back.nodes] == [n.name for n in graph.nodes]
    assert torch.equal(back.params["stem.weight"], graph.params["stem.weight"])


def test_import_a_module_callable(tmp_path, capsys, monkeypatch):
    (tmp_path / "mymodels.py").write_text(MODULE_FILE)
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, "import", "mymodels:mlp", "--input-shape", "2,4", "-o", "out")
    assert (code, err) == (0, "") and out.startswith("imported mymodels:mlp: 3 nodes")
    graph = gi.load(tmp_path / "out")
    assert [n.name for n in graph.nodes] == ["0", "1", "2"]  # nn.Sequential's own names
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    assert set(graph.params) == set(module.state_dict())
    assert torch.equal(graph.params["2.weight"], module.state_dict()["2.weight"])


def test_import_refusals_exit_2_and_write_nothing(tmp_path, capsys, monkeypatch):
    (tmp_path / "mymodels.py").write_text(MODULE_FILE)
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, "import", "mymodels:odd", "--input-shape", "2,4", "-o", "o1")
    assert code == 2 and "1 (Softplus): softplus.default has no grow-ir op" in err
    assert "Traceback" not in err and not Path("o1").exists()
    code, _, err = run(capsys, "import", "mymodels:mlp", "-o", "o2")
    assert code == 2 and "--input-shape" in err
    code, _, err = run(
        capsys, "import", "mymodels:not_a_module", "--input-shape", "2,4", "-o", "o3"
    )
    assert code == 2 and "did not return an nn.Module" in err
    code, _, err = run(capsys, "import", "nosuchmodule:f", "--input-shape", "2,4", "-o", "o4")
    assert code == 2 and "cannot import the Python module" in err
    code, _, err = run(capsys, "import", "model", "-o", "o5")
    assert code == 2 and "MODULE:CALLABLE" in err
    assert not any(Path(d).exists() for d in ("o2", "o3", "o4", "o5"))


def test_import_never_replaces_a_folder_with_user_files(tmp_path, capsys, monkeypatch):
    (tmp_path / "mymodels.py").write_text(MODULE_FILE)
    monkeypatch.chdir(tmp_path)
    mine = tmp_path / "out"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    code, _, err = run(capsys, "import", "mymodels:mlp", "--input-shape", "2,4", "-o", "out")
    assert code == 2 and "notes.txt" in err
    assert (mine / "notes.txt").read_text() == "mine" and sorted(mine.iterdir()) == [
        mine / "notes.txt"
    ]


def test_length_dim_is_for_modules_and_refuses_a_fixed_length(tmp_path, capsys, monkeypatch):
    """``--length-dim`` with an ONNX file (which declares its own inputs) exits 2; on a
    module that reads its tokens at one length only (flattened into one layer) it exits 2
    naming the node and the flag, and writes nothing."""
    (tmp_path / "fixedmodels.py").write_text(  # a name no other test has imported
        "from torch import nn\n\n\ndef fixed():\n    return nn.Sequential(nn.Embedding(9, 2), "
        "nn.Flatten(), nn.Linear(8, 3))\n"
    )
    monkeypatch.chdir(tmp_path)
    onnx_file = str(tmp_path / "mlp.onnx")
    gi.to_onnx(gi.load_spec(example_path("mlp")), onnx_file)
    code, _, err = run(capsys, "import", onnx_file, "--length-dim", "-o", "o1")
    assert code == 2 and "--length-dim is for modules" in err
    argv = ["import", "fixedmodels:fixed", "--input-shape", "2,4", "--input-dtype", "int64"]
    code, _, err = run(capsys, *argv, "--length-dim", "-o", "o2")
    assert code == 2 and "only at the example's length" in err
    assert "field '--length-dim'" in err and "node '1'" in err and "Traceback" not in err
    assert not Path("o1").exists() and not Path("o2").exists()
    assert run(capsys, *argv, "-o", "o3")[0] == 0
