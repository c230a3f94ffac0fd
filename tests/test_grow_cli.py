"""``grow-ir grow``: plans from the spec or a file, atomic output, exit statuses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from grow_ir.cli import main
from grow_ir.ir.graph import Graph
from grow_ir.passes import PASSES, PassResult, output_error, register_pass
from grow_ir.spec import load, load_spec

ROOT = Path(__file__).resolve().parent.parent
PLAN = [
    {"pass": "insert_layer", "after": "act", "op": "linear", "activation": "relu"},
    {"pass": "fork_task", "task": "t2", "base": "y", "adapt": ["head"]},
]


@pytest.fixture
def spec(mlp_spec: dict[str, Any]) -> dict[str, Any]:
    """The shared tiny MLP spec with a batchnorm (so that preservation is not trivial)."""
    mlp_spec["nodes"].insert(1, {"name": "bn", "op": "batchnorm"})
    return mlp_spec


@pytest.fixture
def lying_pass() -> Iterator[str]:
    """A registered pass that claims to preserve the function but negates the head."""

    def negate_head(graph: Graph) -> PassResult:
        params = {**graph.params, "head.weight": -graph.params["head.weight"]}
        return PassResult(graph.replace(params=params), True, "negated the head")

    register_pass("test_negate_head")(negate_head)
    yield "test_negate_head"
    del PASSES["test_negate_head"]


def grow(*args: str | Path) -> int:
    return main(["grow", *map(str, args)])


def test_grows_with_the_spec_plan(
    spec: dict, write_spec: Callable[..., Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    path = write_spec({**spec, "grow": PLAN})
    out = tmp_path / "grown"
    assert grow(path, "-o", out) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        ".grow-ir.json",
        "history.json",
        "spec.yaml",
        "weights.safetensors",
    ]
    grown, old = load(out), load_spec(path)
    assert "act_linear" in grown.node_map and grown.outputs["t2"] == "t2.head_adapted"
    assert grown.grow == ()  # the plan is applied: the saved spec must not apply it again
    assert output_error(old, grown, {"t2": "y"}) <= 1e-5
    history = json.loads((out / "history.json").read_text())
    assert [h["pass"] for h in history] == ["insert_layer", "fork_task"]
    assert all(h["preserved"] and h["max_error"] is None for h in history)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("0. insert_layer: inserted linear 'act_linear'")
    assert lines[-1].startswith(f"wrote {out} (2 steps, ")


def test_plan_file_overrides_the_spec_and_check_measures(
    spec: dict, write_spec: Callable[..., Path], tmp_path: Path
) -> None:
    path = write_spec({**spec, "grow": [{"pass": "no_such_pass"}]})
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"grow": PLAN[:1]}))
    out = tmp_path / "grown"
    assert grow(path, "--plan", plan, "-o", out, "--check") == 0
    (step,) = json.loads((out / "history.json").read_text())
    assert step["pass"] == "insert_layer" and 0 <= step["max_error"] <= 1e-5
    assert load(out).grow == ({"pass": "no_such_pass"},)  # not applied, so kept


def test_yaml_plan_list(spec: dict, write_spec: Callable[..., Path], tmp_path: Path) -> None:
    path = write_spec(spec)
    plan = write_spec(yaml.safe_dump(PLAN[1:]), name="plan.yaml")
    assert grow(path, "--plan", plan, "-o", tmp_path / "out") == 0
    assert "t2" in load(tmp_path / "out").outputs


def listing(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_a_failing_plan_exits_2_and_writes_nothing(
    spec: dict, write_spec: Callable[..., Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    bad = [PLAN[0], {"pass": "add_adapter", "node": "nope"}]
    path = write_spec({**spec, "grow": bad})
    before = listing(tmp_path)
    assert grow(path, "-o", tmp_path / "grown") == 2
    assert listing(tmp_path) == before  # no output, no temporary directory left behind
    err = capsys.readouterr().err
    assert err.startswith("grow-ir: error: ") and "add_adapter: no such node" in err
    assert "Traceback" not in err and err.count("\n") == 1


def test_a_failing_plan_keeps_a_previous_output(
    spec: dict, write_spec: Callable[..., Path], tmp_path: Path
) -> None:
    out = tmp_path / "grown"
    assert grow(write_spec({**spec, "grow": PLAN[:1]}), "-o", out) == 0
    saved = {p.name: p.read_bytes() for p in out.iterdir()}
    bad = write_spec({**spec, "grow": [{"pass": "insert_layer", "after": "x", "op": "conv2d"}]})
    assert grow(bad, "-o", out) == 2
    assert {p.name: p.read_bytes() for p in out.iterdir()} == saved


def test_a_failed_check_exits_1_and_writes_nothing(
    spec: dict,
    write_spec: Callable[..., Path],
    tmp_path: Path,
    lying_pass: str,
    capsys: pytest.CaptureFixture,
) -> None:
    path = write_spec({**spec, "grow": [PLAN[0], {"pass": lying_pass}]})
    out = tmp_path / "grown"
    assert grow(path, "-o", out, "--check") == 1
    assert not out.exists()
    assert "plan step 1 (test_negate_head) claims to preserve" in capsys.readouterr().err
    assert grow(path, "-o", out) == 0  # unchecked, the same plan is written


@pytest.mark.parametrize(
    ("plan_text", "message"),
    [
        (None, "no growth plan"),
        ("[]", "no growth plan"),
        ("{pass: insert_layer}", "not a growth plan"),
        ("- {pass: insert_layer, after: act, op: linear,", "YAML syntax error"),
        ("- {pass: insert_layr}", "did you mean 'insert_layer'"),
    ],
)
def test_bad_plans_exit_2(
    spec: dict,
    write_spec: Callable[..., Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    plan_text: str | None,
    message: str,
) -> None:
    args = [write_spec(spec), "-o", tmp_path / "out"]
    if plan_text is not None:
        args += ["--plan", write_spec(plan_text, name="plan.yaml")]
    assert grow(*args) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_missing_plan_file(
    spec: dict, write_spec: Callable[..., Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert grow(write_spec(spec), "--plan", tmp_path / "nope.yaml", "-o", tmp_path / "o") == 2
    assert "nope.yaml: no such plan file" in capsys.readouterr().err


def test_the_installed_command(spec: dict, write_spec: Callable[..., Path], tmp_path: Path) -> None:
    """One real process: exit statuses and a one-paragraph error without a traceback."""
    path = write_spec({**spec, "grow": [{"pass": "insert_layer", "after": "zzz", "op": "linear"}]})
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "grow_ir", "grow", str(path), "-o", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("grow-ir: error: ") and "Traceback" not in proc.stderr
    assert "insert_layer: no such value" in proc.stderr
    assert not (tmp_path / "out").exists()


CNN = {
    "version": 1,
    "inputs": {"x": {"shape": ["batch", 2, 6, 6]}},
    "nodes": [
        {"name": "conv", "op": "conv2d", "out_channels": 3, "kernel_size": 3, "padding": 1},
        {"name": "act", "op": "relu"},
        {"name": "pool", "op": "global_avgpool"},
        {"name": "head", "op": "linear", "out_features": 2},
    ],
    "outputs": {"y": "head"},
}


@pytest.mark.parametrize(
    ("net", "entry", "message"),
    [
        ("mlp", "{pass: widen, node: [fc], width: 9}", "field 'grow[0].node': widen: bad arg"),
        ("mlp", "{pass: [widen], node: fc}", "field 'grow[0].pass': a pass is named by a string"),
        ("mlp", "{pass: widen, node: fc, width: 9, seed: '1'}", "found '1' (a string)"),
        ("mlp", "{pass: widen, node: fc, width: 9, seed: 1e30}", "field 'grow[0].seed'"),
        ("mlp", "{pass: widen, node: fc, width: 9, seed: 100000000000000000000000}", "at most"),
        ("mlp", "{pass: insert_layer, after: fc, op: linear, residual: 'yes'}", "true or false"),
        ("mlp", "{pass: widen, node: fc, width: 100000000000000000000}", "too large to alloc"),
        ("mlp", "{pass: add_adapter, node: fc, rank: 1e9}", "field 'grow[0].rank'"),
        ("mlp", "{pass: add_adapter, node: fc, rank: 1000000000}", "found 14.9 GiB"),
        ("mlp", "{pass: fork_task, task: t2, base: y, head: 1000000000000}", "'grow[0].head'"),
        ("cnn", "{pass: insert_layer, after: conv, op: conv2d, kernel_size: 1000000001}", "GiB"),
        ("cnn", "{pass: add_adapter, node: conv, kind: serial, rank: 1000000000}", "GiB"),
    ],
)
def test_bad_arguments_exit_2_with_one_paragraph_and_write_nothing(
    spec: dict,
    write_spec: Callable[..., Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    net: str,
    entry: str,
    message: str,
) -> None:
    """Wrong types, huge integers and sizes that would not fit in memory are refused
    before anything is allocated or written."""
    path = write_spec(spec if net == "mlp" else CNN)
    plan = write_spec(f"- {entry}\n", name="plan.yaml")
    before = listing(tmp_path)
    assert grow(path, "--plan", plan, "-o", tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert err.startswith("grow-ir: error: ") and message in err, err
    assert "Traceback" not in err and err.count("\n") == 1
    assert listing(tmp_path) == before
