"""Writes that survive a kill: what a killed run leaves is grow-ir's own, recognisable, and
cleaned by the next run of the same command (which says so); a reader of a replaced output
always finds the old or the new one; never is a user's file touched."""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
import yaml

from grow_ir import atomic
from grow_ir.cli import main
from grow_ir.growth.plots import plot_curves
from grow_ir.owned import MANIFEST
from grow_ir.spec import load, load_spec, save
from tests.tiny_specs import TINY_SPIRALS


def killed_writer(target: Path, *files: str) -> Path:
    """Fork a process that writes ``files`` into a temporary directory for ``target`` and is
    SIGKILLed there (its lock released by the kernel); return the directory it left."""
    pid = os.fork()
    if pid == 0:  # the child: never returns
        with atomic.temp_dir(target, files, "test") as tmp:
            for name in files:
                (tmp / name).write_text("half")
            os.kill(os.getpid(), signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    (left,) = target.parent.glob(atomic.temp_name_pattern(target))
    return left


def graph(seed: int = 0):
    return load_spec({**TINY_SPIRALS, "seed": seed})


# ---- leftovers: cleaned when grow-ir's, kept otherwise ----------------------------------


def test_save_cleans_what_a_killed_save_left_and_says_so(tmp_path, caplog):
    out = tmp_path / "out"
    left = killed_writer(out, "spec.yaml", "weights.safetensors")
    assert left.name.startswith(".out.grow-ir-") and left.name.endswith(".tmp")
    with caplog.at_level(logging.WARNING, logger="grow_ir"):
        save(graph(), out)
    assert not left.exists()
    assert f"removed {left}, left by an interrupted grow-ir run" in caplog.text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_grow_command_says_what_it_removed(tmp_path, capsys):
    spec = tmp_path / "net.yaml"
    plan = [{"pass": "widen", "node": "stem", "width": 12}]
    spec.write_text(yaml.safe_dump({**TINY_SPIRALS, "grow": plan}))
    out = tmp_path / "out"
    left = killed_writer(out, "spec.yaml", "weights.safetensors", "history.json")
    assert main(["grow", str(spec), "-o", str(out)]) == 0
    assert f"removed {left}" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["net.yaml", "out"]


def test_export_cleans_a_killed_exports_leftover(tmp_path, capsys):
    model = tmp_path / "m.onnx"
    left = killed_writer(model, "m.onnx")
    assert left.name.startswith(".m.onnx.grow-ir-")
    spec = tmp_path / "net.yaml"
    spec.write_text(yaml.safe_dump(TINY_SPIRALS))
    assert main(["export", str(spec), "-o", str(model)]) == 0
    assert f"removed {left}" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "net.yaml"]


def test_a_live_writers_directory_is_left_alone(tmp_path):
    out = tmp_path / "out"
    with atomic.temp_dir(out, ["spec.yaml"], "test") as tmp:
        assert atomic.clean_leftovers(out) == []
        assert tmp.is_dir()


@pytest.mark.parametrize("manifest", [b"", b'{"written_by": "gro'])
def test_a_writer_killed_while_writing_its_manifest_is_cleaned(tmp_path, manifest):
    out = tmp_path / "out"
    left = killed_writer(out, "spec.yaml")
    for entry in left.iterdir():
        entry.unlink()
    (left / MANIFEST).write_bytes(manifest)  # the kill came mid-write
    assert atomic.clean_leftovers(out) == [left]
    assert not left.exists()


@pytest.mark.parametrize("case", ["no manifest", "a foreign file", "not ours", "a symlink"])
def test_look_alikes_that_grow_ir_did_not_write_are_kept(tmp_path, case):
    out = tmp_path / "out"
    if case == "a symlink":
        real = killed_writer(tmp_path / "elsewhere", "spec.yaml")
        look_alike = tmp_path / ".out.grow-ir-link.tmp"
        look_alike.symlink_to(real)
    else:
        look_alike = killed_writer(out, "spec.yaml")
    if case == "no manifest":
        (look_alike / MANIFEST).unlink()
    elif case == "a foreign file":
        (look_alike / "NOTES.md").write_text("mine")
    elif case == "not ours":
        (look_alike / MANIFEST).write_text(json.dumps({"files": ["spec.yaml"]}))
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    assert atomic.clean_leftovers(out) == []
    save(graph(), out)
    after = sorted(str(p) for p in tmp_path.rglob("*") if not str(p).startswith(str(out)))
    assert after == [p for p in before if not p.startswith(str(out))]


def test_a_resumed_training_run_cleans_its_model_staging_leftover(tmp_path):
    from grow_ir.growth.outputs import save_model_files

    class Result:  # what save_model_files reads of a finished run
        graph = load_spec(TINY_SPIRALS)

    run = tmp_path / "run"
    run.mkdir()
    left = killed_writer(run / "model", "spec.yaml", "weights.safetensors")
    assert left.parent == run and left.name.startswith(".model.grow-ir-")
    save_model_files(Result(), run)
    assert sorted(p.name for p in run.iterdir()) == ["spec.yaml", "weights.safetensors"]


# ---- a reader sees the old or the new output, always ------------------------------------


def test_a_reader_always_finds_the_old_or_the_new_save(tmp_path, monkeypatch):
    out = save(graph(0), tmp_path / "out")
    old_w, new_w = graph(0).params["stem.weight"], graph(1).params["stem.weight"]
    real_exchange = atomic._exchange

    def slow_exchange(a: Path, b: Path) -> bool:  # widen every moment around the swap
        time.sleep(0.2)
        done = real_exchange(a, b)
        time.sleep(0.2)
        return done

    monkeypatch.setattr(atomic, "_exchange", slow_exchange)
    seen, failures, stop = [], [], threading.Event()

    def reader() -> None:
        while not stop.is_set():
            try:
                w = load(out).params["stem.weight"]
            except Exception as exc:  # any failure to read is the bug this test is for
                failures.append(repr(exc))
                continue
            seen.append("old" if torch.equal(w, old_w) else "new" if torch.equal(w, new_w) else "?")

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        time.sleep(0.1)
        save(graph(1), out)
        time.sleep(0.1)
    finally:
        stop.set()
        thread.join()
    assert failures == []
    assert "old" in seen and "new" in seen and "?" not in seen
    assert seen.index("new") > seen.index("old") and "old" not in seen[seen.index("new") :]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_without_renameat2_the_fallback_still_replaces_the_save(tmp_path, monkeypatch):
    monkeypatch.setattr(atomic, "_RENAMEAT2", None)
    out = save(graph(0), tmp_path / "out")
    save(graph(1), out)
    assert torch.equal(load(out).params["stem.weight"], graph(1).params["stem.weight"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


# ---- curves.png -------------------------------------------------------------------------


HISTORY = {
    "epochs": [
        {
            "epoch": e,
            "train_accuracy": 0.5,
            "val_accuracy": 0.4,
            "train_loss": 1.0 / e,
            "params": 100 + 10 * (e > 2),
        }
        for e in range(1, 6)
    ],
    "events": [{"epoch": 2}],
    "final": {"test_accuracy": 0.5, "tail_start": 4},
}


def test_curves_are_replaced_whole_or_not_at_all(tmp_path, monkeypatch):
    import matplotlib.figure

    path = plot_curves(HISTORY, tmp_path / "curves.png")
    before = path.read_bytes()

    def killed_halfway(self, fname, **kwargs):
        Path(fname).write_bytes(b"\x89PNG half")
        raise KeyboardInterrupt

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", killed_halfway)
    with pytest.raises(KeyboardInterrupt):
        plot_curves(HISTORY, path)
    assert path.read_bytes() == before


def test_curves_show_the_loss_and_label_every_mark(tmp_path, monkeypatch):
    import matplotlib.figure

    figures = []
    real = matplotlib.figure.Figure.savefig

    def keep(self, *args, **kwargs):
        figures.append(self)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", keep)
    plot_curves(HISTORY, tmp_path / "curves.png")
    top, middle, _ = figures[0].axes
    labels = [t.get_text() for t in top.get_legend().get_texts()]
    assert sorted(labels) == [
        "growth step",
        "learning-rate tail",
        "test 50.00%",
        "train",
        "validation",
    ]
    (loss,) = middle.get_lines()[:1]
    assert list(loss.get_ydata()) == [1.0 / e for e in range(1, 6)]


# ---- SIGKILL at random moments ----------------------------------------------------------


def _run_and_kill(command: list[str], folder: Path, pattern: str, rng: random.Random) -> None:
    """Start ``command``; as soon as a new temporary directory matching ``pattern`` appears
    in ``folder`` (or the command ends), wait a random few milliseconds and SIGKILL it."""
    before = set(folder.glob(pattern))
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline:
        if set(folder.glob(pattern)) - before:
            time.sleep(rng.uniform(0, 0.15))
            break
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


@pytest.mark.parametrize("command", ["grow", "export"])
def test_sigkill_at_random_moments_leaves_nothing_partial(tmp_path, command):
    rng = random.Random(17)
    spec = tmp_path / "net.yaml"
    # Big enough weights (8 MB) that writing them takes a while.
    wide = {**TINY_SPIRALS, "nodes": [dict(n) for n in TINY_SPIRALS["nodes"]]}
    wide["nodes"][0]["out_features"] = 1000
    wide["nodes"][2] = {**wide["nodes"][2], "with": {"width": 1000}}
    wide["grow"] = [{"pass": "widen", "node": "stem", "width": 1001}]
    spec.write_text(yaml.safe_dump(wide))
    out = tmp_path / ("out" if command == "grow" else "m.onnx")
    args = [sys.executable, "-m", "grow_ir", command, str(spec), "-o", str(out)]
    for _ in range(4):
        _run_and_kill(args, tmp_path, f".{out.name}.grow-ir-*", rng)
        names = {p.name for p in tmp_path.iterdir()} - {"net.yaml", out.name}
        assert all(n.startswith(f".{out.name}.grow-ir-") for n in names), names
        if out.exists():  # complete, never partial
            if command == "grow":
                load(out)
            else:
                import onnx

                onnx.checker.check_model(str(out), full_check=True)
    done = subprocess.run(args, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["net.yaml", out.name])
