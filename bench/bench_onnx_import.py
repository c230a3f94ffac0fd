"""Importing Hugging Face ONNX files: ``from_onnx`` versus onnxruntime loading the file.

Usage: ``.venv/bin/python bench/bench_onnx_import.py [--rounds 5] [--models NAME,...]
[--threads 1]``

Models (random init, nothing downloaded): GPT-2 (2 layers, 128 wide, tied head) and Llama
(2 layers, 128 wide, 4 query / 2 key-value heads), exported once with
``torch.onnx.export(..., dynamo=True)`` on ``[1, 32]`` tokens, static and with dynamic
batch and length. Timed in interleaved rounds after one warm-up: onnxruntime building a
session for the file and running it once (what any consumer of the file pays),
``from_onnx(check=False)`` (evaluating every value in onnxruntime on two draws, finding
and verifying the regions, building the graph) and ``from_onnx()`` (which also lowers the
graph and compares it with onnxruntime). Printed: medians and ratios to onnxruntime's.
torch runs on ``--threads`` threads (1 by default, as the other benchmarks: the import's
checks run small tensors, where a second thread on a shared machine only waits);
onnxruntime with its default options, as a consumer of the file would.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
import transformers

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from grow_ir.imports import from_onnx  # noqa: E402


def gpt2() -> torch.nn.Module:
    config = transformers.GPT2Config(
        n_layer=2, n_head=4, n_embd=128, vocab_size=1000, n_positions=64, use_cache=False
    )
    return transformers.GPT2LMHeadModel(config).eval()


def llama() -> torch.nn.Module:
    config = transformers.LlamaConfig(
        vocab_size=1000,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        use_cache=False,
    )
    return transformers.LlamaForCausalLM(config).eval()


MODELS: dict[str, Callable[[], torch.nn.Module]] = {"gpt2": gpt2, "llama": llama}


def export(make: Callable[[], torch.nn.Module], path: Path, dynamic: bool) -> None:
    ids = torch.randint(0, 1000, (1, 32), generator=torch.Generator().manual_seed(0))
    shapes = None
    if dynamic:
        shapes = ({0: torch.export.Dim("batch"), 1: torch.export.Dim("seq", max=64)},)
    with contextlib.redirect_stdout(io.StringIO()):
        torch.onnx.export(make(), (ids,), str(path), dynamic_shapes=shapes, dynamo=True)


def session_and_run(path: Path) -> None:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    session.run(None, {"input_ids": np.zeros((1, 32), dtype=np.int64)})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    folder = Path(tempfile.mkdtemp(prefix="bench_onnx_import_"))
    for name in args.models.split(","):
        for dynamic in (False, True):
            path = folder / f"{name}{'_dynamic' if dynamic else ''}.onnx"
            export(MODELS[name], path, dynamic)
            steps = {
                "onnxruntime session + run": lambda p=path: session_and_run(p),
                "from_onnx(check=False)": lambda p=path: from_onnx(p, check=False),
                "from_onnx()": lambda p=path: from_onnx(p),
            }
            times: dict[str, list[float]] = {k: [] for k in steps}
            for step in steps.values():  # warm-up
                step()
            for _ in range(args.rounds):
                for key, step in steps.items():
                    start = time.perf_counter()
                    step()
                    times[key].append(time.perf_counter() - start)
            t = {k: statistics.median(v) for k, v in times.items()}
            base = t["onnxruntime session + run"]
            nodes = len(from_onnx(path, check=False).nodes)
            label = f"{name} {'dynamic' if dynamic else 'static'} ({nodes} nodes)"
            print(
                f"{label}: onnxruntime {base * 1e3:.0f} ms, "
                f"from_onnx(check=False) {t['from_onnx(check=False)'] * 1e3:.0f} ms "
                f"(x{t['from_onnx(check=False)'] / base:.2f}), "
                f"from_onnx() {t['from_onnx()'] * 1e3:.0f} ms (x{t['from_onnx()'] / base:.2f})"
            )


if __name__ == "__main__":
    main()
