"""No output command deletes or replaces a file that grow-ir did not write.

Each output command (``save``, ``grow``, ``export``, ``train``, ``continual``) is pointed at
a folder or file holding a user's data: it must exit 2 with a message naming what is
there, and leave every byte as it was. Its own earlier output it may replace, and ``-o``
through a symlink writes into the folder the link points to and keeps the link.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from tiny_specs import TINY_SPIRALS

from grow_ir.cli import main
from grow_ir.errors import SpecError
from grow_ir.owned import MANIFEST
from grow_ir.spec import load, load_spec, save

EXAMPLES = Path(__file__).resolve().parent.parent / "grow_ir" / "examples"


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (relative name -> bytes), symlinks shown as their target."""
    out: dict[str, bytes] = {}
    for p in sorted(folder.rglob("*")):
        rel = str(p.relative_to(folder))
        if p.is_symlink():
            out[rel] = f"-> {p.readlink()}".encode()
        elif p.is_file():
            out[rel] = p.read_bytes()
    return out


def refused(args: list[str], capsys: pytest.CaptureFixture, *names: str) -> str:
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("grow-ir: error: ") and "Traceback" not in err
    for name in names:
        assert name in err
    return err


@pytest.fixture
def user_folder(tmp_path: Path) -> Path:
    """The issue's case: a folder holding the user's spec.yaml and notes."""
    m = tmp_path / "m"
    m.mkdir()
    shutil.copy(EXAMPLES / "mlp.yaml", m / "spec.yaml")
    (m / "NOTES.md").write_text("x\n")
    return m


def test_grow_refuses_the_folder_holding_its_own_spec(
    user_folder: Path, capsys: pytest.CaptureFixture
) -> None:
    before = snapshot(user_folder.parent)
    spec = str(user_folder / "spec.yaml")
    err = refused(["grow", spec, "-o", str(user_folder)], capsys, "NOTES.md", "spec.yaml")
    assert "did not write" in err
    assert snapshot(user_folder.parent) == before


def test_save_refuses_a_user_folder_and_keeps_every_byte(user_folder: Path) -> None:
    before = snapshot(user_folder.parent)
    with pytest.raises(SpecError, match=r"NOTES\.md"):
        save(load_spec(EXAMPLES / "mlp.yaml"), user_folder)
    assert snapshot(user_folder.parent) == before


def test_own_output_is_replaced_but_not_with_a_users_file_added(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "out"
    spec = str(EXAMPLES / "mlp.yaml")
    plan = tmp_path / "plan.yaml"
    plan.write_text(yaml.safe_dump([{"pass": "widen", "node": "fc1", "width": 64}]))
    assert main(["grow", spec, "--plan", str(plan), "-o", str(out)]) == 0
    listed = json.loads((out / MANIFEST).read_text())["files"]
    assert {p.name for p in out.iterdir()} <= set(listed)
    assert main(["grow", spec, "--plan", str(plan), "-o", str(out)]) == 0  # its own: replaced
    (out / "mine.txt").write_text("keep")
    before = snapshot(tmp_path)
    refused(["grow", spec, "--plan", str(plan), "-o", str(out)], capsys, "mine.txt")
    assert snapshot(tmp_path) == before


def test_a_save_without_a_manifest_is_not_taken_for_grow_irs(tmp_path: Path) -> None:
    graph = load_spec(EXAMPLES / "mlp.yaml")
    out = save(graph, tmp_path / "out")
    (out / MANIFEST).unlink()  # e.g. the files copied in by hand
    before = snapshot(tmp_path)
    with pytest.raises(SpecError, match=r"has no \.grow-ir\.json"):
        save(graph, out)
    assert snapshot(tmp_path) == before


def test_output_through_a_symlink_keeps_the_link(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    real = tmp_path / "real"
    save(load_spec(EXAMPLES / "mlp.yaml"), real)
    link = tmp_path / "link"
    link.symlink_to(real, target_is_directory=True)
    plan = tmp_path / "plan.yaml"
    plan.write_text(yaml.safe_dump([{"pass": "widen", "node": "fc1", "width": 64}]))
    assert main(["grow", str(EXAMPLES / "mlp.yaml"), "--plan", str(plan), "-o", str(link)]) == 0
    assert link.is_symlink() and link.resolve() == real.resolve()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "plan.yaml", "real"]
    assert load(link).nodes[0].attrs.out_features == 64


def test_export_replaces_only_its_own_onnx_file(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    spec = str(EXAMPLES / "mlp.yaml")
    mine = tmp_path / "model.onnx"
    mine.write_bytes(b"a model from another tool")
    before = snapshot(tmp_path)
    refused(["export", spec, "-o", str(mine)], capsys, "did not write")
    assert snapshot(tmp_path) == before
    ours = tmp_path / "ours.onnx"
    assert main(["export", spec, "-o", str(ours)]) == 0
    assert main(["export", spec, "-o", str(ours)]) == 0  # grow-ir's own file: replaced
    capsys.readouterr()
    folder = tmp_path / "folder.onnx"
    folder.mkdir()
    refused(["export", spec, "-o", str(folder)], capsys, "over a directory")


@pytest.fixture
def train_spec(tmp_path: Path) -> Path:
    spec: dict[str, Any] = {
        **TINY_SPIRALS,
        "growth": {"data": "spirals", "epochs": 2, "tail_epochs": 1, "interval": 1},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def test_train_refuses_a_user_folder_before_training(
    train_spec: Path, user_folder: Path, capsys: pytest.CaptureFixture
) -> None:
    before = snapshot(user_folder.parent)
    refused(["train", str(train_spec), "-o", str(user_folder), "--quiet"], capsys, "NOTES.md")
    assert snapshot(user_folder.parent) == before


def test_a_training_run_lists_everything_it_wrote(train_spec: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert main(["train", str(train_spec), "-o", str(out), "--quiet"]) == 0
    listed = set(json.loads((out / MANIFEST).read_text())["files"])
    assert {p.name for p in out.iterdir()} <= listed


def test_continual_refuses_a_user_folder(user_folder: Path, capsys: pytest.CaptureFixture) -> None:
    before = snapshot(user_folder.parent)
    spec = str(EXAMPLES / "continual_digits.yaml")
    args = ["continual", spec, "--tasks", "split-digits", "-o", str(user_folder)]
    refused(args, capsys, "NOTES.md")
    assert snapshot(user_folder.parent) == before
