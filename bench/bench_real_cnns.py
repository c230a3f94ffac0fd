"""Where the time of tests/test_real_cnns.py's five checks goes, per model, in one run.

Usage: ``PYTHONPATH=. .venv/bin/python bench/bench_real_cnns.py [--models densenet121 vgg11_bn]``

For each model of tests/test_real_cnns.py's ``MODELS`` asked for, the steps its five tests
run, each timed once (wall clock), in the order the tests run them: building and
randomising the module, ``from_torch`` (its ``torch.export`` and check included), the
module's ``torch.onnx.export`` (the default, dynamo exporter) and ``from_onnx`` of it,
``to_onnx`` with the full checker and onnxruntime parity, Torch-Pruning's groups, and
widening every group (``widen_every_group``, its four measurements included). Each step's
share of the model's total is printed beside it, so the figures compare within one run
whatever the machine's load.
"""

from __future__ import annotations

import argparse
import time
import warnings
from collections.abc import Callable

import onnx
import torch

import grow_ir as gi
from grow_ir.backends.onnx_check import check_model, check_parity
from tests.import_models import randomized, relative_error, torch_onnx
from tests.test_real_cnns import MODELS, run, torch_pruning_groups, widen_every_group


def _timed(steps: dict[str, float], name: str, work: Callable[[], object]) -> object:
    start = time.perf_counter()
    out = work()
    steps[name] = time.perf_counter() - start
    return out


def measure(name: str) -> dict[str, float]:
    """Seconds per step of the five checks on model ``name``."""
    spec, steps = MODELS[name], {}
    torch.manual_seed(0)
    module = _timed(steps, "build", lambda: randomized(spec.make()))
    x = torch.randn(2, 3, spec.size, spec.size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = module(x)
    graph = _timed(steps, "from_torch", lambda: gi.from_torch(module, x))
    proto = _timed(steps, "torch.onnx.export", lambda: torch_onnx(module, x))
    _timed(steps, "from_onnx", lambda: gi.from_onnx(proto))

    def checked() -> None:
        model = gi.to_onnx(graph)
        onnx.checker.check_model(model, full_check=True)
        check_model(model)
        assert check_parity(graph, model) <= 1e-5

    _timed(steps, "to_onnx+checks", checked)
    _timed(steps, "torch-pruning", lambda: torch_pruning_groups(module, x, [spec.output]))
    error = lambda g: relative_error(run(g, x), y)
    _timed(steps, "widen every group", lambda: widen_every_group(graph, error))
    return steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["densenet121", "vgg11_bn"])
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    for name in args.models:
        steps = measure(name)
        total = sum(steps.values())
        print(f"{name}: {total:.1f} s")
        for step, seconds in steps.items():
            print(f"  {step:<18} {seconds:6.1f} s  {seconds / total:6.1%}")


if __name__ == "__main__":
    main()
