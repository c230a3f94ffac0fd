"""``grow-ir export SPEC|DIR -o FILE.onnx [--task T] [--opset N] [--check]``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

from grow_ir.backends import onnx_check
from grow_ir.backends.onnx_check import session
from grow_ir.cli import main
from grow_ir.spec import load_spec, save


@pytest.fixture
def two_heads() -> dict[str, Any]:
    return {
        "version": 1,
        "name": "two_heads",
        "inputs": {"x": {"shape": ["batch", 4]}},
        "nodes": [
            {"name": "trunk", "op": "linear", "out_features": 6},
            {"name": "act", "op": "relu"},
            {"name": "a", "op": "linear", "inputs": ["act"], "out_features": 2},
            {"name": "b", "op": "linear", "inputs": ["act"], "out_features": 3},
        ],
        "outputs": {"task_a": "a", "task_b": "b"},
    }


def test_export_writes_a_model_that_runs(
    write_spec: Any, mlp_spec: dict, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "model.onnx"
    assert main(["export", str(write_spec(mlp_spec)), "-o", str(out)]) == 0
    assert capsys.readouterr().out.startswith(f"wrote {out} (opset 20, ")
    (y,) = session(out).run(None, {"x": np.ones((5, 4), np.float32)})
    assert y.shape == (5, 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "spec.yaml"]


def test_export_check_passes(
    write_spec: Any, mlp_spec: dict, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "model.onnx"
    assert main(["export", str(write_spec(mlp_spec)), "-o", str(out), "--check"]) == 0
    assert "checked: max relative error" in capsys.readouterr().out
    assert out.is_file()


def test_export_of_a_saved_directory(mlp_spec: dict, tmp_path: Path) -> None:
    save(load_spec(mlp_spec), tmp_path / "grown")
    out = tmp_path / "model.onnx"
    assert main(["export", str(tmp_path / "grown"), "-o", str(out), "--check"]) == 0
    assert [o.name for o in onnx.load(out).graph.output] == ["y"]


def test_export_one_task(write_spec: Any, two_heads: dict, tmp_path: Path) -> None:
    out = tmp_path / "b.onnx"
    argv = ["export", str(write_spec(two_heads)), "-o", str(out), "--task", "task_b", "--check"]
    assert main(argv) == 0
    model = onnx.load(out)
    assert [o.name for o in model.graph.output] == ["task_b"]
    assert not any(t.name.startswith("a.") for t in model.graph.initializer)


def test_export_opset(write_spec: Any, mlp_spec: dict, tmp_path: Path) -> None:
    out = tmp_path / "m.onnx"
    assert main(["export", str(write_spec(mlp_spec)), "-o", str(out), "--opset", "17"]) == 0
    assert onnx.load(out).opset_import[0].version == 17


def assert_bad_input(argv: list[str], capsys: pytest.CaptureFixture, *words: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("grow-ir: error: ") and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    for word in words:
        assert word in err


def test_missing_spec_is_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "m.onnx"
    assert_bad_input(["export", str(tmp_path / "nope.yaml"), "-o", str(out)], capsys, "nope.yaml")
    assert not out.exists()


def test_unknown_task_is_bad_input(
    write_spec: Any, two_heads: dict, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "m.onnx"
    argv = ["export", str(write_spec(two_heads)), "-o", str(out), "--task", "task_c"]
    assert_bad_input(argv, capsys, "unknown task", "task_a, task_b", "'task_c'")
    assert not out.exists()


def test_unwritable_output_is_bad_input(
    write_spec: Any, mlp_spec: dict, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "no_dir" / "m.onnx"
    argv = ["export", str(write_spec(mlp_spec)), "-o", str(out)]
    assert_bad_input(argv, capsys, "cannot write the ONNX file", str(out))
    assert not out.parent.exists()


def test_bad_opset_is_bad_input(
    write_spec: Any, mlp_spec: dict, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "m.onnx"
    argv = ["export", str(write_spec(mlp_spec)), "-o", str(out), "--opset", "12"]
    assert_bad_input(argv, capsys, "unsupported ONNX opset", "12")
    assert not out.exists()


def test_failed_parity_exits_1_and_writes_nothing(
    write_spec: Any,
    mlp_spec: dict,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    spec = write_spec(mlp_spec)
    out = tmp_path / "m.onnx"
    assert main(["export", str(spec), "-o", str(out)]) == 0  # an earlier export, replaceable
    previous = out.read_bytes()
    monkeypatch.setitem(onnx_check.TOLERANCE, "float32", -1.0)  # nothing can pass
    assert main(["export", str(spec), "-o", str(out), "--check"]) == 1
    err = capsys.readouterr().err
    assert "onnxruntime differs from the torch backend" in err and "outputs.y" in err
    assert out.read_bytes() == previous
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "spec.yaml"]
