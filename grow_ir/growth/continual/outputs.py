"""What a continual-learning run leaves in its directory: the multi-task spec and weights,
``history.json`` and ``model.onnx`` (one output per task, checked against onnxruntime)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from grow_ir.growth.checkpoint import write_json_atomic
from grow_ir.growth.continual.learn import ContinualResult
from grow_ir.owned import claim
from grow_ir.spec import SPEC_FILE, WEIGHTS_FILE, save

HISTORY_FILE = "history.json"
ONNX_FILE = "model.onnx"


@dataclass(frozen=True)
class ContinualFiles:
    """Paths of a finished run's files, and the ONNX parity error measured."""

    directory: Path
    spec: Path
    weights: Path
    history: Path
    onnx: Path
    onnx_error: float


def write_outputs(result: ContinualResult, out_dir: str | Path) -> ContinualFiles:
    """Write the run into ``out_dir``: spec.yaml, weights.safetensors, history.json and
    model.onnx.

    Guarantees: the directory is written by :func:`grow_ir.save` in one atomic step with
    ``history.json``, so ``grow_ir.load(out_dir)`` gives the multi-task graph with
    bitwise-equal parameters; ``model.onnx`` has one output per task, passes the ONNX
    checker and matches the torch backend under onnxruntime (relative error at most
    1e-5, recorded in ``history.json`` under ``final.onnx``); it is written (atomically)
    only once it has passed.

    Raises:
        SpecError: ``out_dir`` is a file or holds anything grow-ir did not write.
        CheckFailed: the ONNX model fails the checker or the parity check (the other files
            are written first, so the run is not lost).
    """
    from grow_ir.backends.onnx import save as save_onnx
    from grow_ir.backends.onnx import to_onnx
    from grow_ir.backends.onnx_check import check_model, check_parity

    history = result.history.to_json()
    out = save(result.graph, out_dir, extra_files={HISTORY_FILE: json.dumps(history, indent=1)})
    model = to_onnx(result.graph)
    check_model(model)
    error = check_parity(result.graph, model)
    claim(out, [ONNX_FILE, f"{ONNX_FILE}.data", f"{HISTORY_FILE}.tmp"], "continual")
    save_onnx(model, out / ONNX_FILE)
    result.history.final["onnx"] = {
        "file": ONNX_FILE,
        "outputs": [o.name for o in model.graph.output],
        "checker": "passed",
        "max_relative_error": error,
    }
    write_json_atomic(out / HISTORY_FILE, result.history.to_json())
    return ContinualFiles(
        out, out / SPEC_FILE, out / WEIGHTS_FILE, out / HISTORY_FILE, out / ONNX_FILE, error
    )
