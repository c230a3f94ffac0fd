"""Training under torch.compile: exactly one compilation per growth step, none between."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from torch._dynamo.utils import counters

from grow_ir.cli import main
from grow_ir.growth import Trainer, growth_config
from grow_ir.growth.compiled import Compiler
from grow_ir.growth.loop import RunResult
from grow_ir.spec import load_spec
from tests.tiny_specs import TINY_SPIRALS

# 5 epochs, growth steps while it pays (interval 1, max depth 3), batches of 64 with a
# smaller last batch every epoch, validation in eval mode after every epoch.
BASE = {"epochs": 5, "tail_epochs": 1, "interval": 1, "patience": 1, "max_depth": 3}


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def run(compiler: Compiler | None, tmp: Path | None = None, **settings) -> RunResult:
    cfg = growth_config({**BASE, "batch_size": 64}, settings)
    trainer = Trainer.fresh(
        load_spec(TINY_SPIRALS), cfg, data_source="spirals", out_dir=tmp, progress=False,
        log=lambda line: None,
    )  # fmt: skip
    trainer.compiler = compiler
    return trainer.run()


def frames() -> int:
    return counters["frames"]["total"]


def test_one_compilation_per_growth_step_and_none_in_between() -> None:
    torch._dynamo.reset()
    counters.clear()
    compiler = Compiler("eager")
    result = run(compiler)
    steps = len(result.history.events)
    assert 1 <= steps < len(result.history.epochs) - 1  # epochs with no growth step, too
    assert compiler.compilations == steps + 1
    assert frames() == steps + 1, dict(counters["frames"])
    assert counters["stats"]["unique_graphs"] == steps + 1  # no graph breaks either
    # dynamo's eager backend runs the captured graph as it is: the weights are the
    # uncompiled run's, bit for bit
    plain = run(None)
    for key, value in plain.graph.params.items():
        assert torch.equal(result.graph.params[key], value), key


def test_inductor_trains_to_the_eager_result(tmp_path: Path) -> None:
    """The real backend, on one architecture (no growth): one compilation, and weights
    within float32 reassociation error of the eager run's."""
    torch._dynamo.reset()
    counters.clear()
    compiler = Compiler("inductor")
    settings = {"policy": "none", "epochs": 2, "tail_epochs": 0, "batch_size": 100}
    result = run(compiler, **settings)
    assert compiler.compilations == 1 and frames() == 1
    plain = run(None, **settings)
    for key, value in plain.graph.params.items():
        torch.testing.assert_close(result.graph.params[key], value, rtol=1e-4, atol=1e-5)


def test_cli_compile_flag_is_kept_on_resume_and_checked(tmp_path: Path, capsys) -> None:
    spec = tmp_path / "tiny.yaml"
    spec.write_text(yaml.safe_dump({**TINY_SPIRALS, "growth": {"data": "spirals", **BASE}}))
    out = tmp_path / "run"
    args = ["train", str(spec), "-o", str(out), "--epochs", "2", "--tail-epochs", "1"]
    assert main([*args, "--compile", "nope", "--quiet"]) == 2
    assert "unknown compile backend" in capsys.readouterr().err
    assert not out.exists()
    torch._dynamo.reset()
    counters.clear()
    assert main([*args, "--compile", "eager", "--quiet"]) == 0
    history = json.loads((out / "history.json").read_text())
    assert frames() == 1 + len(history["events"])
    state = (out / "checkpoint" / "state.json").read_text()
    assert '"compile": "eager"' in state
