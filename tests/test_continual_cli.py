"""``grow-ir continual SPEC --tasks NAME|FILE... -o DIR`` end to end, and its errors."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from grow_ir import load, load_spec, to_torch
from grow_ir.backends.onnx_check import session
from grow_ir.cli import main
from grow_ir.growth.continual import first_task
from grow_ir.spec import example_path

FAST = ["--search-epochs", "2", "--epochs", "1", "--first-epochs", "2", "--device", "cpu"]


def write_npz(path: Path, seed: int, classes: int) -> str:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(60, 1, 8, 8)).astype(np.float32)
    y = (x.reshape(60, -1) @ rng.normal(size=(64, classes))).argmax(1)
    np.savez(path, x_train=x[:40], y_train=y[:40], x_test=x[40:], y_test=y[40:])
    return str(path)


@pytest.fixture
def spec() -> str:
    return str(example_path("continual_digits"))


@pytest.fixture(scope="module")
def split_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[int, str, Path]:
    out = tmp_path_factory.mktemp("continual") / "run"
    spec = str(example_path("continual_digits"))
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = main(["continual", spec, "--tasks", "split-digits", "-o", str(out), *FAST])
    return code, buf.getvalue(), out


def test_prints_choices_and_accuracies_per_task(split_run: tuple[int, str, Path]) -> None:
    code, text, out = split_run
    assert code == 0
    assert text.startswith("learning 5 tasks on cpu: task0 (digits 0/1), task1 (digits 2/3)")
    assert text.count("  layer  choice  reuse  adapt  new") == 5
    for layer in ("fc1", "fc2", "fc3"):
        assert text.count(f"  {layer} ") == 5
    assert "  accuracy: task0 " in text
    assert "| task4 " in text.splitlines()[-3]
    assert "forgetting 0.0 points" in text
    assert f"wrote {out} (spec.yaml, weights.safetensors, history.json, model.onnx: 5 " in text


def test_history_json(split_run: tuple[int, str, Path]) -> None:
    _, _, out = split_run
    history = json.loads((out / "history.json").read_text())
    tasks = history["tasks"]
    assert [t["task"] for t in tasks] == [f"task{i}" for i in range(5)]
    for i, t in enumerate(tasks):
        assert set(t["choices"]) == {"fc1", "fc2", "fc3"}
        assert set(t["choices"].values()) <= {"reuse", "adapt", "new"}
        assert list(t["accuracies"]) == [f"task{j}" for j in range(i + 1)]
    final = history["final"]
    assert final["forgetting"] == 0.0
    single = first_task(load_spec(example_path("continual_digits")), "t", 2).num_params()
    assert final["params"] <= final["separate_params"] == 5 * single
    assert 0.0 <= final["average_accuracy"] <= 1.0
    assert final["onnx"]["outputs"] == [f"task{i}" for i in range(5)]
    assert final["onnx"]["max_relative_error"] <= 1e-5


def test_saved_graph_and_onnx_model_agree(split_run: tuple[int, str, Path]) -> None:
    _, _, out = split_run
    graph = load(out)
    assert list(graph.outputs) == [f"task{i}" for i in range(5)]
    assert not any(n.op == "mix" for n in graph.nodes)
    assert graph.num_params() == json.loads((out / "history.json").read_text())["final"]["params"]
    x = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = to_torch(graph).eval()(x)
    sess = session(out / "model.onnx")
    names = [o.name for o in sess.get_outputs()]
    assert names == [f"task{i}" for i in range(5)]
    for name, got in zip(names, sess.run(None, {"image": x.numpy()})):
        np.testing.assert_allclose(got, want[name].numpy(), rtol=1e-5, atol=1e-5)


def test_user_tasks_from_npz_files(
    spec: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    files = [write_npz(tmp_path / f"t{i}.npz", i, c) for i, c in enumerate((3, 2))]
    out = tmp_path / "npz_run"
    assert main(["continual", spec, "--tasks", *files, "-o", str(out), *FAST]) == 0
    text = capsys.readouterr().out
    assert f"task1 ({files[1]}, 2 classes)" in text
    graph = load(out)
    assert graph.types[graph.outputs["task0"]].shape == ("batch", 3)
    assert graph.types[graph.outputs["task1"]].shape == ("batch", 2)


# ---- bad input: exit status 2, one paragraph, no traceback --------------------------------


def fails(args: list[str], capsys: pytest.CaptureFixture, match: str) -> str:
    assert main(["continual", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("grow-ir: error: ") and match in err and "Traceback" not in err
    return err


def test_unknown_sequence(spec: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    fails(
        [spec, "--tasks", "split-mnist", "-o", str(tmp_path / "o")],
        capsys,
        "field '--tasks': unknown task sequence",
    )


def test_bad_flag_values(spec: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    base = [spec, "--tasks", "split-digits", "-o", str(tmp_path / "o")]
    fails([*base, "--search-epochs", "0"], capsys, "field '--search-epochs': out of range")
    fails([*base, "--penalty", "-1"], capsys, "field '--penalty': out of range")
    fails([*base, "--rank", "0"], capsys, "field '--rank': out of range")


def test_spec_with_two_outputs(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    raw = yaml.safe_load(example_path("continual_digits").read_text())
    raw["outputs"] = {"a": "head", "b": "fc3"}
    path = tmp_path / "two.yaml"
    path.write_text(yaml.safe_dump(raw))
    fails(
        [str(path), "--tasks", "split-digits", "-o", str(tmp_path / "o"), *FAST],
        capsys,
        "continual learning starts from a network with one output",
    )


def test_data_that_does_not_fit(spec: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "flat.npz"
    np.savez(
        bad,
        x_train=np.zeros((8, 5), np.float32),
        y_train=np.arange(8) % 2,
        x_test=np.zeros((4, 5), np.float32),
        y_test=np.arange(4) % 2,
    )
    fails(
        [spec, "--tasks", str(bad), "-o", str(tmp_path / "o"), *FAST],
        capsys,
        "the data does not fit the graph's input 'image'",
    )


def test_refuses_an_output_it_would_not_replace(
    spec: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")
    fails(
        [spec, "--tasks", "split-digits", "-o", str(taken)],
        capsys,
        "refusing to write over a directory that holds files grow-ir did not write",
    )
    assert (taken / "notes.txt").read_text() == "mine"
    fails(
        [spec, "--tasks", "split-digits", "-o", str(taken / "notes.txt")],
        capsys,
        "cannot write a model directory over a file",
    )


def test_a_second_run_replaces_the_first(spec: str, tmp_path: Path) -> None:
    files = [write_npz(tmp_path / f"t{i}.npz", i, 3) for i in range(2)]
    out = tmp_path / "run"
    assert main(["continual", spec, "--tasks", *files, "-o", str(out), *FAST]) == 0
    assert main(["continual", spec, "--tasks", files[0], "-o", str(out), *FAST]) == 0
    assert list(load(out).outputs) == ["task0"]
    assert len(json.loads((out / "history.json").read_text())["tasks"]) == 1
