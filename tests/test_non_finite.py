"""NaN and Inf are reported, never trained on, exported or "verified": a non-finite weight
is refused by validate, export and train; non-finite data by train; a loss that becomes
non-finite stops the run with a clear error (exit 2) and no outputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from grow_ir.cli import main
from grow_ir.spec import load_spec, save
from tests.tiny_specs import TINY_SPIRALS

GROWTH = {"epochs": 2, "tail_epochs": 1, "policy": "none", "optimizer": {"name": "sgd"}}


@pytest.fixture
def nan_model(tmp_path: Path) -> Path:
    graph = load_spec(TINY_SPIRALS)
    params = dict(graph.params)
    params["stem.weight"] = params["stem.weight"].clone()
    params["stem.weight"][0, :] = torch.tensor([float("nan"), float("inf")])
    return save(graph.replace(params=params), tmp_path / "nan_model")


@pytest.mark.parametrize(
    "command",
    [["validate"], ["export", "-o", "{tmp}/m.onnx", "--check"], ["grow", "-o", "{tmp}/g"]],
)
def test_a_non_finite_weight_is_refused(nan_model, tmp_path, capsys, command):
    args = [a.format(tmp=tmp_path) for a in command]
    assert main([args[0], str(nan_model), *args[1:]]) == 2
    err = capsys.readouterr().err
    assert "node 'stem', field 'stem.weight'" in err and "2 NaN or Inf of 16" in err
    assert not (tmp_path / "m.onnx").exists() and not (tmp_path / "g").exists()


def test_train_refuses_a_non_finite_weight(nan_model, tmp_path, capsys):
    spec = yaml.safe_load((nan_model / "spec.yaml").read_text())
    spec["growth"] = {**GROWTH, "data": "spirals"}
    (nan_model / "spec.yaml").write_text(yaml.safe_dump(spec))
    out = tmp_path / "run"
    assert main(["train", str(nan_model / "spec.yaml"), "-o", str(out), "--quiet"]) == 2
    assert "not finite" in capsys.readouterr().err and not out.exists()


def _npz(path: Path, x_train: np.ndarray) -> Path:
    rng = np.random.default_rng(0)
    y = np.arange(len(x_train)) % 2
    np.savez(
        path,
        x_train=x_train,
        y_train=y,
        x_test=rng.normal(size=(8, 2)).astype(np.float32),
        y_test=np.arange(8) % 2,
    )
    return path


def _spec(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump({**TINY_SPIRALS, "growth": GROWTH}))
    return path


def test_train_refuses_nan_inputs_before_training(tmp_path, capsys):
    x = np.random.default_rng(0).normal(size=(40, 2)).astype(np.float32)
    x[3, 1] = np.nan
    x[5, 0] = np.inf
    data = _npz(tmp_path / "nan.npz", x)
    out = tmp_path / "run"
    assert main(["train", str(_spec(tmp_path)), "--data", str(data), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "field 'x_train': inputs must be finite" in err and "2 NaN or Inf values of 80" in err
    assert not out.exists()


def test_a_loss_that_becomes_non_finite_stops_the_run(tmp_path, capsys):
    # Finite but huge inputs: the logits overflow float32, the loss is Inf or NaN.
    x = np.random.default_rng(0).normal(size=(40, 2)).astype(np.float32) * 1e37
    data = _npz(tmp_path / "huge.npz", x)
    out = tmp_path / "run"
    args = ["train", str(_spec(tmp_path)), "--data", str(data), "-o", str(out), "--quiet"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "training stopped: the loss is not finite in epoch " in err
    assert not (out / "model.onnx").exists() and not (out / "history.json").exists()
