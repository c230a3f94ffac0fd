"""``grow-ir train --resume`` on a damaged run directory: every broken checkpoint file, and
data that moved or changed, is a one-paragraph error naming it (exit 2), and nothing is
written; a finished run says it is finished."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import save_file

from grow_ir.cli import main
from tests.tiny_specs import TINY_SPIRALS

MARKER = "pickle-was-loaded"


class _Exploit:
    """Unpickling this creates a file: the proof that a pickle was loaded."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def write_npz(path: Path, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(60, 2)).astype(np.float32)
    np.savez(path, x_train=x, y_train=np.arange(60) % 2, x_test=x[:20], y_test=np.arange(20) % 2)
    return path


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 2-epoch run on a .npz file."""
    root = tmp_path_factory.mktemp("finished")
    data = write_npz(root / "points.npz")
    spec = {**TINY_SPIRALS, "growth": {"data": str(data), "epochs": 2, "tail_epochs": 1}}
    (root / "tiny.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    out = root / "run"
    assert main(["train", str(root / "tiny.yaml"), "-o", str(out), "--quiet"]) == 0
    return out


@pytest.fixture
def interrupted(finished: Path, tmp_path: Path) -> Path:
    """A copy of the run as if it was killed after its last checkpoint, before its outputs."""
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    for name in ("history.json", "model.onnx", "spec.yaml", "weights.safetensors"):
        (run / name).unlink()
    return run


def resume(run: Path, capsys: pytest.CaptureFixture) -> tuple[int, str]:
    capsys.readouterr()
    code = main(["train", "--resume", str(run), "--quiet"])
    return code, capsys.readouterr().err


def snapshot(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in run.rglob("*") if p.is_file()}


def test_an_interrupted_run_resumes(interrupted: Path, capsys: pytest.CaptureFixture) -> None:
    code, err = resume(interrupted, capsys)
    assert code == 0, err
    assert (interrupted / "history.json").is_file()


def truncate(p: Path) -> None:
    p.write_bytes(p.read_bytes()[: max(1, p.stat().st_size // 2)])


def empty(p: Path) -> None:
    p.write_bytes(b"")


def retype_json(p: Path) -> None:
    p.write_text(json.dumps([1, 2, 3]))


def retype_tensors(p: Path) -> None:
    p.write_text(json.dumps({"not": "tensors"}))


def pickle_file(p: Path) -> None:
    p.write_bytes(pickle.dumps(_Exploit(str(p.parent / MARKER))))


def small_rng(p: Path) -> None:
    save_file({"torch": torch.zeros(10, dtype=torch.uint8), "shuffle": torch.zeros(10)}, str(p))


def wrong_field(p: Path) -> None:
    state = json.loads(p.read_text())
    state["next_epoch"] = "three"
    p.write_text(json.dumps(state))


def bad_policy(p: Path) -> None:
    state = json.loads(p.read_text())
    state["policy"] = {"units": "nonsense"}
    p.write_text(json.dumps(state))


def wrong_moment_shape(p: Path) -> None:
    from safetensors.torch import load_file

    tensors = load_file(str(p))
    key = next(k for k in tensors if tensors[k].dim() > 0)
    tensors[key] = torch.zeros(3, 3, 3)
    save_file(tensors, str(p))


@pytest.mark.parametrize(
    ("name", "damage", "found"),
    [
        ("state.json", truncate, "not JSON"),
        ("state.json", empty, "an empty file"),
        ("state.json", retype_json, "a JSON list, not an object"),
        ("state.json", wrong_field, "field 'next_epoch'"),
        ("state.json", bad_policy, "the policy's state"),
        ("optimizer.json", truncate, "not JSON"),
        ("optimizer.json", empty, "an empty file"),
        ("optimizer.json", retype_json, "a JSON list, not an object"),
        ("optimizer.safetensors", truncate, "not a safetensors file"),
        ("optimizer.safetensors", empty, "an empty file"),
        ("optimizer.safetensors", retype_tensors, "not a safetensors file"),
        ("optimizer.safetensors", wrong_moment_shape, "float32[3, 3, 3]"),
        ("rng.safetensors", truncate, "not a safetensors file"),
        ("rng.safetensors", empty, "an empty file"),
        ("rng.safetensors", pickle_file, "not a safetensors file"),
        ("rng.safetensors", small_rng, "uint8[10]"),
    ],
)
def test_a_broken_checkpoint_file_is_named(
    interrupted: Path, capsys: pytest.CaptureFixture, name: str, damage, found: str
) -> None:
    damage(interrupted / "checkpoint" / name)
    before = snapshot(interrupted)
    code, err = resume(interrupted, capsys)
    assert code == 2 and "Traceback" not in err and err.count("\n") == 1, err
    assert f"{name}: a checkpoint file is broken; cannot resume" in err and found in err, err
    assert snapshot(interrupted) == before  # nothing written
    assert not (interrupted / "checkpoint" / MARKER).exists()  # no pickle was ever loaded


def test_data_that_moved_is_refused(interrupted: Path, capsys: pytest.CaptureFixture) -> None:
    state = json.loads((interrupted / "checkpoint" / "state.json").read_text())
    data = Path(state["data"])
    moved = data.with_name("moved.npz")
    data.rename(moved)
    try:
        code, err = resume(interrupted, capsys)
    finally:
        moved.rename(data)
    assert code == 2 and "the run's data file is gone (moved or deleted)" in err
    assert str(data) in err and not (interrupted / "history.json").exists()


def test_data_that_changed_is_refused(interrupted: Path, capsys: pytest.CaptureFixture) -> None:
    state = json.loads((interrupted / "checkpoint" / "state.json").read_text())
    data = Path(state["data"])
    assert len(state["data_sha256"]) == 64
    original = data.read_bytes()
    write_npz(data, seed=1)  # same shapes and labels, other inputs
    try:
        code, err = resume(interrupted, capsys)
    finally:
        data.write_bytes(original)
    assert code == 2 and "the run's data changed since the run started" in err, err
    assert state["data_sha256"][:16] in err and not (interrupted / "history.json").exists()


def test_a_finished_run_says_it_is_finished(finished: Path, capsys: pytest.CaptureFixture) -> None:
    before = snapshot(finished)
    capsys.readouterr()
    assert main(["train", "--resume", str(finished), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert f"nothing to resume: {finished} is a finished run (2 epochs" in out
    assert snapshot(finished) == before
