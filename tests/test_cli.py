"""The grow-ir command: output of each command, exit statuses, no tracebacks."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import torch

from grow_ir import cli
from grow_ir.commands import validate
from grow_ir.errors import CheckFailed
from grow_ir.spec import example_path, load_spec, save, schema_text

ROOT = Path(__file__).resolve().parent.parent


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_every_command_module_has_add_parser_and_run():
    for name in cli.COMMANDS:
        module = importlib.import_module(f"grow_ir.commands.{name}")
        assert callable(module.add_parser) and callable(module.run), name
    assert {"validate", "show", "schema", "demo"} <= set(cli.COMMANDS)


def test_validate_prints_a_summary(capsys):
    path = str(example_path("multitask"))
    code, out, err = run(capsys, "validate", path)
    graph = load_spec(path)
    assert code == 0 and err == ""
    assert out == f"ok: {path} (10 nodes, 2 outputs, {graph.num_params():,} parameters)\n"


def test_validate_a_saved_directory(capsys, mlp_spec, tmp_path):
    save(load_spec(mlp_spec), tmp_path / "m")
    code, out, _ = run(capsys, "validate", str(tmp_path / "m"))
    assert code == 0 and out.startswith("ok: ") and "1 output," in out


def test_bad_spec_exits_2_with_one_paragraph(capsys, mlp_spec, write_spec):
    mlp_spec["nodes"][1]["op"] = "rleu"
    code, out, err = run(capsys, "validate", str(write_spec(mlp_spec)))
    assert code == 2 and out == ""
    assert err.startswith("grow-ir: error: ") and err.count("\n") == 1
    assert "node 'act', field 'op': unknown op (did you mean 'relu'?)" in err


def test_check_failed_exits_1(capsys, monkeypatch, mlp_spec, write_spec):
    def failing(args):
        raise CheckFailed("outputs differ", expected="max error <= 1e-05", found="0.5")

    monkeypatch.setattr(validate, "run", failing)
    code, _, err = run(capsys, "validate", str(write_spec(mlp_spec)))
    assert code == 1 and err.startswith("grow-ir: error: outputs differ")


def test_os_error_exits_2(capsys, monkeypatch, mlp_spec, write_spec):
    def failing(args):
        raise PermissionError(13, "Permission denied", "/root/x")

    monkeypatch.setattr(validate, "run", failing)
    code, _, err = run(capsys, "validate", str(write_spec(mlp_spec)))
    assert code == 2 and err == "grow-ir: error: Permission denied: /root/x.\n"


def test_usage_errors_exit_2(capsys):
    assert run(capsys, "frobnicate")[0] == 2
    assert run(capsys, "validate")[0] == 2
    assert run(capsys)[0] == 2


def test_help_and_version_exit_0(capsys):
    code, out, _ = run(capsys, "--help")
    assert code == 0 and "validate" in out and "demo" in out
    code, out, _ = run(capsys, "--version")
    assert code == 0 and out.startswith("grow-ir ")


def test_show_prints_an_aligned_table(capsys):
    path = str(example_path("mlp"))
    code, out, _ = run(capsys, "show", path)
    lines = out.splitlines()
    assert code == 0
    assert lines[1].split() == ["node", "op", "output", "params", "MACs", "from"]
    fc1 = next(line for line in lines if line.startswith("fc1 "))
    assert fc1.split() == ["fc1", "linear", "[batch,", "32]", "544", "512"]
    ends = {line.index("544") + 3 for line in lines if "544" in line}
    assert len(ends) == 1 and all(len(line) <= 80 for line in lines)
    assert f"parameters: {load_spec(path).num_params():,} · buffers: 0" in out


def test_show_marks_shared_nodes(capsys, mlp_spec, write_spec):
    mlp_spec["inputs"]["x"]["shape"] = ["batch", 8]
    mlp_spec["nodes"].insert(2, {"name": "fc2", "op": "linear", "out_features": 8, "share": "fc"})
    _, out, _ = run(capsys, "show", str(write_spec(mlp_spec)))
    assert "= fc" in next(line for line in out.splitlines() if line.startswith("fc2 "))


def test_schema_prints_the_committed_schema(capsys):
    code, out, _ = run(capsys, "schema")
    assert code == 0 and out == schema_text()
    assert json.loads(out)["title"] == "grow-ir spec"


def test_demo_runs_the_resnet_example(capsys):
    code, out, _ = run(capsys, "demo", "--runs", "1", "--batch", "2")
    assert code == 0
    assert "example resnet: tiny_resnet" in out
    assert "  block1.conv2 " in out  # within its stage
    assert "output logits: [2, 10] float32" in out
    assert "ms per batch of 2 on cpu" in out


def test_demo_of_another_example(capsys):
    threads = torch.get_num_threads()
    try:
        argv = ["demo", "--example", "multitask", "--runs", "1", "--threads", "1"]
        code, out, _ = run(capsys, *argv)
    finally:
        torch.set_num_threads(threads)
    assert code == 0 and "output task_b: [8, 2]" in out and "1 CPU threads" in out


def test_demo_unknown_example_exits_2(capsys):
    code, _, err = run(capsys, "demo", "--example", "resnt")
    assert code == 2 and "did you mean 'resnet'" in err


def test_demo_rejects_a_bad_count(capsys):
    assert run(capsys, "demo", "--runs", "0")[0] == 2


def test_the_real_entry_point_exits_2_without_a_traceback(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: [\n")
    done = subprocess.run(
        [sys.executable, "-m", "grow_ir", "validate", str(bad)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr and "YAML syntax error" in done.stderr
