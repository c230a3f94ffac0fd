"""What a new user meets first: packaged examples by name, a short --epochs, help that says
what is required, growth history kept across calls, file permissions, logging, typing."""

from __future__ import annotations

import fcntl
import inspect
import json
import logging
import os
import pty
import struct
import subprocess
import sys
import termios
import typing
from pathlib import Path

import pytest
import yaml

import grow_ir
from grow_ir.cli import main
from grow_ir.ir.graph import Graph
from tests.tiny_specs import TINY_SPIRALS

ROOT = Path(__file__).resolve().parent.parent


def test_train_a_packaged_example_by_name_with_a_short_budget(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "run"
    args = ["train", "autogrow_digits", "--epochs", "2", "--batch-size", "128", "-o", str(out)]
    assert main([*args, "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "--epochs 2 leaves no room for the spec's 8-epoch tail; tail shortened to 1" in printed
    history = json.loads((out / "history.json").read_text())
    assert len(history["epochs"]) == 2 and history["final"]["tail_start"] == 2


def test_a_tail_longer_than_the_budget_says_how_to_shorten_it(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    args = ["train", "mlp", "--data", "spirals", "--epochs", "3", "--tail-epochs", "3"]
    assert main([*args, "-o", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "tail_epochs (3) must be smaller than epochs (3)" in err and "--tail-epochs N" in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "argv",
    [
        ["validate", "mlp"],
        ["show", "resnet"],
        ["export", "transformer", "-o", "{tmp}/t.onnx"],
        ["grow", "mlp", "-o", "{tmp}/grown"],
        ["draw", "resnet", "-o", "{tmp}/resnet.svg"],
    ],
)
def test_every_command_takes_a_packaged_example_by_name(
    argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert main([a.replace("{tmp}", str(tmp_path)) for a in argv]) == 0, capsys.readouterr().err


def test_an_unknown_name_suggests_the_nearest_example(capsys: pytest.CaptureFixture) -> None:
    assert main(["show", "resnt"]) == 2
    err = capsys.readouterr().err
    assert "resnt: no such spec file, directory or example (did you mean 'resnet'?)" in err


def test_a_local_file_wins_over_an_example_of_the_same_name(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    Path("mlp").write_text(yaml.safe_dump(TINY_SPIRALS))
    assert main(["validate", "mlp"]) == 0
    assert "ok: mlp (" in capsys.readouterr().out
    assert main(["show", "mlp"]) == 0
    assert "tiny_spirals" in capsys.readouterr().out


def test_train_help_shows_that_an_output_directory_is_required(
    capsys: pytest.CaptureFixture,
) -> None:
    assert main(["train", "--help"]) == 0
    usage = capsys.readouterr().out.split("\n\n")[0]
    assert "train SPEC -o DIR [options]" in usage and "train --resume DIR" in usage
    for command in ("grow", "export", "continual"):
        assert main([command, "--help"]) == 0
        usage = capsys.readouterr().out.split("\n\n")[0]
        assert " -o " in usage and "[-o" not in usage, usage


def test_growing_a_grown_directory_keeps_the_earlier_steps(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    plan = tmp_path / "plan.yaml"
    plan.write_text(yaml.safe_dump([{"pass": "widen", "node": "fc2", "width": 40}]))
    assert main(["grow", "mlp", "-o", str(tmp_path / "one")]) == 0
    assert (
        main(["grow", str(tmp_path / "one"), "--plan", str(plan), "-o", str(tmp_path / "two")]) == 0
    )
    assert (
        main(
            [
                "grow",
                str(tmp_path / "one/spec.yaml"),
                "--plan",
                str(plan),
                "-o",
                str(tmp_path / "one"),
            ]
        )
        == 0
    )
    for out in ("two", "one"):
        history = json.loads((tmp_path / out / "history.json").read_text())
        assert [(h["pass"], h["args"]["node"]) for h in history] == [
            ("widen", "fc1"),
            ("widen", "fc2"),
        ]


def test_growing_a_training_run_keeps_its_growth_events(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    spec = tmp_path / "tiny.yaml"
    growth = {"data": "spirals", "epochs": 3, "tail_epochs": 1, "interval": 1, "patience": 1}
    spec.write_text(yaml.safe_dump({**TINY_SPIRALS, "growth": growth}))
    assert main(["train", str(spec), "-o", str(tmp_path / "run"), "--quiet"]) == 0
    plan = tmp_path / "plan.yaml"
    plan.write_text(yaml.safe_dump([{"pass": "widen", "node": "stem", "width": 12}]))
    assert (
        main(["grow", str(tmp_path / "run"), "--plan", str(plan), "-o", str(tmp_path / "g")]) == 0
    )
    history = json.loads((tmp_path / "g" / "history.json").read_text())
    assert [h["pass"] for h in history] == ["insert_block", "widen"]
    assert history[0]["command"] == "train" and history[0]["epoch"] == 1


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_weights_files_get_the_permissions_of_the_other_files(
    tmp_path: Path, umask: int, capsys: pytest.CaptureFixture
) -> None:
    spec = tmp_path / "tiny.yaml"
    spec.write_text(yaml.safe_dump(TINY_SPIRALS))
    old = os.umask(umask)
    try:
        out = grow_ir.save(grow_ir.load_spec(spec), tmp_path / "saved")
        args = ["--data", "spirals", "--epochs", "2", "--tail-epochs", "1", "--quiet"]
        assert main(["train", str(spec), *args, "-o", str(tmp_path / "run")]) == 0
    finally:
        os.umask(old)
    want = 0o666 & ~umask
    run = tmp_path / "run"
    files = [out / "weights.safetensors", out / "spec.yaml", run / "weights.safetensors"]
    files += [run / "checkpoint" / n for n in ("weights.safetensors", "optimizer.safetensors")]
    files += [run / "checkpoint" / "rng.safetensors", run / "model.onnx", run / "history.json"]
    assert {f.name: oct(f.stat().st_mode & 0o777) for f in files} == {
        f.name: oct(want) for f in files
    }


def test_the_trainer_logs_through_logging_and_prints_nothing(
    caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture
) -> None:
    from grow_ir.growth import Trainer, growth_config

    graph = grow_ir.load_spec(TINY_SPIRALS)
    config = growth_config({"epochs": 3, "tail_epochs": 1, "interval": 1, "patience": 1})
    with caplog.at_level(logging.INFO, logger="grow_ir.train"):
        Trainer.fresh(graph, config, data_source="spirals", out_dir=None, progress=False).run()
    assert capsys.readouterr().out == ""
    lines = [r.getMessage() for r in caplog.records if r.name == "grow_ir.train"]
    assert any(line.startswith("epoch 1: grew stage1 (insert_block") for line in lines)


def test_the_package_is_typed_and_passes_say_they_return_a_graph() -> None:
    assert (Path(grow_ir.__file__).parent / "py.typed").is_file()
    pyproject = (ROOT / "pyproject.toml").read_text()
    package_data = pyproject.split("[tool.setuptools.package-data]")[1].split("\n[")[0]
    assert '"py.typed"' in package_data
    from grow_ir import passes

    for fn in (passes.widen, passes.insert_layer, passes.insert_block, passes.fork_task):
        assert inspect.signature(fn).return_annotation is Graph
        assert typing.get_type_hints(fn)["return"] is Graph


def test_show_into_a_closed_pipe_is_not_an_error() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        f"{sys.executable} -m grow_ir show resnet | head -1",
        shell=True,
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.stdout.startswith("tiny_resnet") and done.stderr == ""


def test_continual_shows_a_progress_bar_on_a_terminal(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "100"}
    argv = [sys.executable, "-m", "grow_ir", "continual", "continual_digits"]
    argv += ["--tasks", "split-digits", "-o", str(tmp_path / "out"), "--search-epochs", "2"]
    argv += ["--epochs", "1", "--first-epochs", "1"]
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
    try:
        done = subprocess.run(
            argv, env=env, stdout=subprocess.PIPE, stderr=follower, text=True, timeout=300
        )
        os.close(follower)
        follower = -1
        screen = b""
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:
                break
            if not chunk:
                break
            screen += chunk
    finally:
        if follower >= 0:
            os.close(follower)
        os.close(leader)
    assert done.returncode == 0
    text = screen.decode(errors="replace")
    assert "tasks: 100%" in text and "5/5" in text, text[-2000:]
    assert "task4 (2 classes)" in text
    assert "accuracy: task0" in done.stdout  # the per-task tables still print
