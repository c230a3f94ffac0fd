"""``grow-ir train`` end to end: outputs, errors and exit codes, and resuming a killed run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from grow_ir.cli import main
from grow_ir.spec import load
from tests.tiny_specs import TINY_SPIRALS

SPEC = {
    **TINY_SPIRALS,
    "growth": {
        "data": "spirals",
        "epochs": 3,
        "tail_epochs": 1,
        "interval": 1,
        "patience": 1,
        "optimizer": {"name": "adam", "lr": 0.01},
    },
}
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def spec_file(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(SPEC, sort_keys=False))
    return path


def test_train_writes_every_output(spec_file: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    assert main(["train", str(spec_file), "-o", str(out), "--threads", "1", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "epoch 1: grew stage1 (insert_block, init=zero, preserved) -> 2 blocks" in printed
    assert "architecture: stage1: 2 blocks; stem=8 head=2" in printed
    assert "test accuracy: " in printed and f"onnx: {out / 'model.onnx'} (verified" in printed
    history = json.loads((out / "history.json").read_text())
    assert [e["epoch"] for e in history["epochs"]] == [1, 2, 3]
    (event,) = history["events"]
    assert {"epoch", "pass", "args", "params", "preserved"} <= set(event)
    final = history["final"]
    assert final["architecture"]["stages"] == {"stage1": 2}
    assert final["onnx"]["checker"] == "passed" and final["onnx"]["max_relative_error"] <= 1e-5
    assert final["threads"] == 1 and final["device"] == "cpu"
    grown = load(out)
    assert grown.stages["stage1"].depth == 2 and grown.num_params() == final["params"]
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "model.onnx").stat().st_size > 0


def test_flags_override_the_growth_section(spec_file: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    args = ["train", str(spec_file), "-o", str(out), "--quiet", "--epochs", "2"]
    args += ["--policy", "none", "--set", "optimizer.name=sgd", "--set", "tail_epochs=1"]
    assert main(args) == 0
    history = json.loads((out / "history.json").read_text())
    assert len(history["epochs"]) == 2 and history["events"] == []
    ckpt = json.loads((out / "checkpoint" / "state.json").read_text())
    assert ckpt["config"]["optimizer"]["name"] == "sgd" and ckpt["config"]["policy"] == "none"


def bad_npz(tmp_path: Path) -> Path:
    path = tmp_path / "bad.npz"
    x = np.zeros((20, 2), np.float32)
    np.savez(path, x_train=x, y_train=np.zeros(20, np.int64), x_test=x)
    return path


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--data", "{npz}"], "bad.npz: field 'y_test': missing array"),
        (["--set", "intervall=2"], "unknown growth setting (did you mean 'interval'?)"),
        (["--data", "cifar10"], "unknown data set"),
        (["--device", "tpu"], "device"),
        (["--set", "nonsense"], "a --set needs KEY=VALUE"),
        (["--set", f"seed={10**24}"], "field 'growth.seed'"),
        (["--set", f"batch_size={10**20}"], "field 'growth.batch_size'"),
        (["--set", f"epochs={10**20}"], "field 'growth.epochs'"),
        (["--set", f"max_depth={10**20}"], "field 'growth.max_depth'"),
        (["--set", f"adam_init.max_steps={10**20}"], "field 'growth.adam_init.max_steps'"),
    ],
)
def test_bad_input_exits_2_with_one_paragraph(
    spec_file: Path, tmp_path: Path, capsys, extra: list[str], message: str
) -> None:
    extra = [a.replace("{npz}", str(bad_npz(tmp_path))) for a in extra]
    code = main(["train", str(spec_file), "-o", str(tmp_path / "run"), "--quiet", *extra])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err
    assert err.startswith("grow-ir: error: ") and err.count("\n") == 1
    assert not (tmp_path / "run").exists()


def test_run_directory_rules(spec_file: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    assert main(["train", str(spec_file), "-o", str(out), "--quiet", "--epochs", "2"]) == 0
    assert main(["train", str(spec_file), "-o", str(out), "--quiet"]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert main(["train", "-o", str(out), "--resume", "--epochs", "5"]) == 2
    assert "keeps the spec and settings it started with" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path / "nothing")]) == 2
    assert "nothing to resume" in capsys.readouterr().err
    assert main(["train", str(spec_file), "--quiet"]) == 2
    assert "needs an output directory" in capsys.readouterr().err


def checkpointed_epochs(run_dir: Path) -> int:
    """The epochs a run's checkpoint holds (0 while there is none)."""
    try:
        return json.loads((run_dir / "checkpoint" / "state.json").read_text())["next_epoch"]
    except (OSError, ValueError):  # not written yet, or being replaced
        return 0


def test_resume_after_sigkill_reaches_the_uninterrupted_weights(
    spec_file: Path, tmp_path: Path, capsys
) -> None:
    flags = ["--epochs", "16", "--batch-size", "16", "--threads", "1", "--quiet"]
    flags += ["--interval", "2", "--patience", "2", "--tail-epochs", "4"]
    reference = tmp_path / "reference"
    assert main(["train", str(spec_file), "-o", str(reference), *flags]) == 0
    killed = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "grow_ir", "train", str(spec_file), "-o", str(killed)]
    proc = subprocess.Popen(
        [*command, *flags], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 120
        while checkpointed_epochs(killed) < 3:  # a checkpoint after the first growth step
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            assert time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
        if proc.stderr:
            proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    assert not (killed / "history.json").exists()  # it died mid-run
    state = json.loads((killed / "checkpoint" / "state.json").read_text())
    assert 3 <= state["next_epoch"] < 16
    capsys.readouterr()
    threads = torch.get_num_threads()
    assert main(["train", "--resume", str(killed), "--quiet"]) == 0  # keeps its 1 thread
    assert torch.get_num_threads() == threads  # the run's setting does not leak
    assert f"resuming {killed} at epoch {state['next_epoch'] + 1} of 16" in capsys.readouterr().out
    want = load_file(str(reference / "weights.safetensors"))
    got = load_file(str(killed / "weights.safetensors"))
    assert want.keys() == got.keys()
    for k, v in want.items():
        assert torch.equal(v, got[k]), k
    h_ref = json.loads((reference / "history.json").read_text())
    h_got = json.loads((killed / "history.json").read_text())
    assert h_got["events"] == h_ref["events"] and h_ref["events"][0]["epoch"] == 2
    drop = ("seconds",)
    assert [{k: v for k, v in e.items() if k not in drop} for e in h_got["epochs"]] == [
        {k: v for k, v in e.items() if k not in drop} for e in h_ref["epochs"]
    ]
