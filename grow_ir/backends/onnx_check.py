"""Checks of exported models: the ONNX checker, and onnxruntime against the torch backend.

Used by ``grow-ir export --check`` and by the tests. onnxruntime is imported here only, so
the rest of the ONNX backend works with the onnx package alone.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch

from grow_ir.backends.onnx import to_onnx
from grow_ir.backends.torch import selected_outputs, to_torch
from grow_ir.errors import CheckFailed
from grow_ir.ir.graph import Graph
from grow_ir.probes import as_float64, random_inputs

TOLERANCE: Mapping[str, float] = {"float32": 1e-5, "float16": 1e-2, "int64": 0.0}
"""Largest accepted ``|onnx - torch| / max(1, |torch|)`` by output dtype. float16 keeps
about three decimal digits, and the two runtimes round intermediate results differently."""

ROUNDOFF_FACTOR = 4.0
"""Where the float32 comparison exceeds :data:`TOLERANCE`, onnxruntime is compared with the
torch backend run in float64 instead, and may differ from it by the tolerance plus this
many times the torch backend's own float32 error against float64 on the same probes (a
measured condition estimate: how far float32 arithmetic alone moves these outputs). On a
layernorm over 2 nearly equal channels (400 random graphs) onnxruntime's float32 result
was up to 3.1 times as far from float64 as torch's, beyond the tolerance."""

PROBE_SIZES: tuple[tuple[int, int], ...] = ((2, 5), (3, 7))
"""(batch, seq) of the probe inputs: two of each, so that one file must serve both."""

ModelLike = onnx.ModelProto | str | os.PathLike[str]


def providers() -> list[Any]:
    """onnxruntime execution providers: CUDA (without TF32, so results stay float32
    accurate) when onnxruntime-gpu offers it, and the CPU always."""
    if "CUDAExecutionProvider" in ort.get_available_providers():
        return [("CUDAExecutionProvider", {"use_tf32": "0"}), "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def session(model: ModelLike, **options: Any) -> ort.InferenceSession:
    """An onnxruntime session for a model or a file (with :func:`providers`).

    ``options`` set attributes of ``ort.SessionOptions`` (``intra_op_num_threads=1``).
    """
    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # warnings about removed initializers are not news
    # No busy-waiting between ops: a check shares the machine with the torch reference.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    for key, value in options.items():
        setattr(opts, key, value)
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(source, sess_options=opts, providers=providers())


def check_model(model: ModelLike) -> None:
    """Run ``onnx.checker.check_model(full_check=True)`` (strict shape inference included).

    Raises:
        CheckFailed: with the checker's message.
    """
    source = model if isinstance(model, onnx.ModelProto) else str(model)
    try:
        onnx.checker.check_model(source, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise CheckFailed(
            "the ONNX checker rejects the model",
            file=None if isinstance(model, onnx.ModelProto) else str(model),
            expected="a valid ONNX model",
            found=str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__,
        ) from None


def check_parity(
    graph: Graph,
    model: ModelLike | None = None,
    *,
    task: str | None = None,
    sizes: Sequence[tuple[int, int]] = PROBE_SIZES,
    tol: float | None = None,
    seed: int = 0,
) -> float:
    """Compare onnxruntime on ``model`` with :func:`grow_ir.to_torch` in eval mode.

    Both run on the same random inputs (:func:`grow_ir.probes.random_inputs`) at each
    (batch, seq) of ``sizes``. ``model`` defaults to ``to_onnx(graph, task=task)``; a file
    must have been exported with the same ``task``. Returns the largest error seen.

    Guarantees, when it returns: for every output and size, the shapes and dtypes agree,
    the torch outputs are finite, and ``max |onnx - torch| / max(1, |torch|)`` is at most
    ``tol`` (default: the output dtype's :data:`TOLERANCE`), or, for a float output where
    it is not, ``max |onnx - torch64| / max(1, |torch64|)`` against the torch backend in
    float64 is at most ``tol + ROUNDOFF_FACTOR * r``, ``r`` the same error of the torch
    backend's own float32 result (see :data:`ROUNDOFF_FACTOR`).

    Raises:
        CheckFailed: naming the first output that differs, with its error, or whose torch
            result is not finite (NaN or Inf weights: nothing can be compared).
    """
    outputs = selected_outputs(graph, task)
    sess = session(to_onnx(graph, task=task) if model is None else model)
    module = to_torch(graph, task).eval()
    wanted = [i.name for i in sess.get_inputs()]
    order = [n.target for n in module.graph.nodes if n.op == "placeholder"]
    worst = 0.0
    module64: torch.nn.Module | None = None
    for batch, seq in sizes:
        inputs = random_inputs(graph, batch=batch, seq=seq, seed=seed)
        with torch.no_grad():
            ref = module(*(inputs[name] for name in order))
        refs = _by_output(ref, outputs)
        feed = {name: inputs[name].numpy() for name in wanted}
        got = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feed)))
        refs64: dict[str, torch.Tensor] | None = None
        for out, node in outputs.items():
            limit = TOLERANCE[graph.types[node].dtype] if tol is None else tol
            expected = refs[out].detach().numpy()
            if not np.isfinite(expected).all():
                raise CheckFailed(
                    "the torch backend's output is not finite on random probes, so parity "
                    "cannot be checked (are the weights finite?)",
                    field=f"outputs.{out}",
                    expected="finite outputs",
                    found=f"NaN or Inf at batch {batch}, seq {seq}",
                )
            err = _relative_error(expected, got.get(out), out, batch, seq)
            found = f"{err:.3g} at batch {batch}, seq {seq}"
            if not err <= limit and graph.types[node].is_float:
                if refs64 is None:
                    module64 = module64 or to_torch(graph, task).eval().double()
                    with torch.no_grad():
                        ref64 = module64(*(as_float64(inputs)[name] for name in order))
                    refs64 = _by_output(ref64, outputs)
                exact = refs64[out].detach().numpy()
                roundoff = _relative_error(exact, expected.astype(np.float64), out, batch, seq)
                err64 = _relative_error(exact, got[out].astype(np.float64), out, batch, seq)
                limit = limit + ROUNDOFF_FACTOR * roundoff
                err, found = err64, f"{err64:.3g} against float64 (float32: {found})"
            if not err <= limit:
                raise CheckFailed(
                    "onnxruntime differs from the torch backend",
                    field=f"outputs.{out}",
                    expected=f"a relative error of at most {limit:.3g}",
                    found=found,
                )
            worst = max(worst, err)
    return worst


def _by_output(ref: Any, outputs: Mapping[str, str]) -> dict[str, torch.Tensor]:
    return ref if isinstance(ref, dict) else {next(iter(outputs)): ref}


def _relative_error(
    ref: np.ndarray, got: np.ndarray | None, out: str, batch: int, seq: int
) -> float:
    if got is None or got.shape != ref.shape or got.dtype != ref.dtype:
        found = "no such output" if got is None else f"{got.dtype}{list(got.shape)}"
        raise CheckFailed(
            "onnxruntime's output has another shape or dtype than the torch backend's",
            field=f"outputs.{out}",
            expected=f"{ref.dtype}{list(ref.shape)}",
            found=f"{found} at batch {batch}, seq {seq}",
        )
    a, b = ref.astype(np.float64), got.astype(np.float64)
    both_nan = np.isnan(a) & np.isnan(b)
    with np.errstate(invalid="ignore"):
        diff = np.where(both_nan | (a == b), 0.0, np.abs(a - b) / np.maximum(1.0, np.abs(a)))
    return float(np.nan_to_num(diff, nan=np.inf).max(initial=0.0))
