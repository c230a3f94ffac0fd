"""What a finished run leaves in its directory: the grown spec and weights, history.json,
model.onnx (checked against onnxruntime) and curves.png."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from grow_ir.atomic import clean_leftovers, temp_dir
from grow_ir.growth.checkpoint import CHECKPOINT, CHECKPOINT_OLD, CHECKPOINT_TMP, write_json_atomic
from grow_ir.growth.loop import RunResult
from grow_ir.growth.plots import plot_curves

HISTORY_FILE = "history.json"
ONNX_FILE = "model.onnx"
CURVES_FILE = "curves.png"


def run_files() -> tuple[str, ...]:
    """Every name a training run writes in its directory (listed in its manifest)."""
    from grow_ir.spec import SPEC_FILE, WEIGHTS_FILE

    return (
        CHECKPOINT,
        CHECKPOINT_TMP,
        CHECKPOINT_OLD,
        SPEC_FILE,
        WEIGHTS_FILE,
        HISTORY_FILE,
        f"{HISTORY_FILE}.tmp",
        ONNX_FILE,
        f"{ONNX_FILE}.data",
        CURVES_FILE,
        f"{CURVES_FILE}.tmp",
    )


def finished_run(run_dir: str | Path) -> dict[str, Any] | None:
    """The ``final`` record of the run in ``run_dir`` when the run finished (its outputs,
    ONNX file included, are written), else None."""
    try:
        history = json.loads((Path(run_dir) / HISTORY_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    final = history.get("final") if isinstance(history, dict) else None
    return final if isinstance(final, dict) and "onnx" in final else None


@dataclass(frozen=True)
class RunFiles:
    """Paths of a finished run's files, and the ONNX parity error measured."""

    directory: Path
    spec: Path
    weights: Path
    history: Path
    onnx: Path
    curves: Path
    onnx_error: float


def write_outputs(result: RunResult, out_dir: str | Path) -> RunFiles:
    """Write every output of a finished run into ``out_dir`` (next to its checkpoint).

    Guarantees: ``spec.yaml`` + ``weights.safetensors`` load back (:func:`grow_ir.load`)
    as the grown graph with bitwise-equal parameters; ``model.onnx`` passes the ONNX
    checker and matches the torch backend under onnxruntime (relative error at most 1e-5,
    recorded in ``history.json`` under ``final.onnx``); each file is replaced atomically.

    Raises:
        CheckFailed: the ONNX model does not match the torch backend (the other files are
            written first, so the run is not lost).
    """
    from grow_ir.backends.onnx import to_onnx
    from grow_ir.backends.onnx_check import check_model, check_parity

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    spec, weights = save_model_files(result, out)
    history = out / HISTORY_FILE
    write_json_atomic(history, result.history.to_json())
    curves = plot_curves(result.history.to_json(), out / CURVES_FILE, title=result.graph.name)
    onnx_path = out / ONNX_FILE
    to_onnx(result.graph, onnx_path, task=result.task)
    check_model(onnx_path)
    error = check_parity(result.graph, onnx_path, task=result.task)
    result.history.final["onnx"] = {
        "file": ONNX_FILE,
        "checker": "passed",
        "max_relative_error": error,
    }
    write_json_atomic(history, result.history.to_json())
    return RunFiles(out, spec, weights, history, onnx_path, curves, error)


def save_model_files(result: RunResult, out: Path) -> tuple[Path, Path]:
    """Write spec.yaml and weights.safetensors of the grown graph into ``out`` (each file
    replaced atomically, the rest of ``out`` untouched)."""
    from grow_ir.spec import SPEC_FILE, WEIGHTS_FILE
    from grow_ir.spec.store import write_model_files

    staging = out / "model"  # names the temporary directory: .model.grow-ir-*.tmp
    clean_leftovers(staging)
    with temp_dir(staging, [SPEC_FILE, WEIGHTS_FILE], "train") as tmp:
        for path in write_model_files(result.graph, tmp)[::-1]:  # weights first
            os.replace(path, out / path.name)
    return out / SPEC_FILE, out / WEIGHTS_FILE
