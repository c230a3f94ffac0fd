"""Importing models: ``from_torch`` versus ``torch.export`` alone, and onnxruntime latency of
``to_onnx`` of the imported graph versus ``torch.onnx.export`` of the original module.

Usage: ``.venv/bin/python bench/bench_import.py [--rounds 3] [--runs 20] [--threads 1]
[--models NAME,...]``

Models (random init, nothing downloaded): Hugging Face's ResNet-50 (``ResNetConfig()``'s
defaults) and ResNet-18 (basic blocks, 2-2-2-2), torchvision's own ResNet-50,
MobileNetV2, MobileNetV3-Small and EfficientNet-B0 (their default constructors, loaded by
tests/torchvision_models.py without torchvision's C extension), all on ``[1, 3, 112,
112]`` images, torchvision's VisionTransformer (4 layers × 128 wide, 16×16 patches of
the same images), GPT-2 (2 layers, 128 wide), Qwen3 (2 layers, 128 wide, 4 heads of 64
with per-head q/k norms), Phi-3 (2 layers, 128 wide, fused q/k/v and gate/up
projections), GPT-NeoX and Gemma (2 layers, 128 wide each). A model grow-ir refuses is reported with
the number of constructs it lacks. Import is timed in interleaved rounds after one
warm-up: ``torch.export.export`` alone, ``from_torch(check=False)`` and ``from_torch()``
(which also lowers the graph and compares it with the module). Inference: both ONNX files
run in onnxruntime (CPU, one session each, ``--threads`` intra-op threads) on the same
input, interleaved (which runs first alternates), after checking they agree. Printed:
medians and ratios (import ÷ export: the cost of mapping ATen onto grow-ir's ops;
inference ours ÷ theirs, the median of the run-by-run ratios: goal ≤ 1.0).

BatchNorm statistics and biases are randomised (``tests/import_models.randomized``), as a
trained model's are.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import statistics
import sys
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

from grow_ir.backends.onnx import to_onnx  # noqa: E402
from grow_ir.imports import ImportRefused, from_torch  # noqa: E402
from tests.import_models import randomized  # noqa: E402
from tests.torchvision_models import models as torchvision_models  # noqa: E402


def resnet50() -> torch.nn.Module:
    return transformers.ResNetForImageClassification(transformers.ResNetConfig())


def resnet18() -> torch.nn.Module:
    config = transformers.ResNetConfig(
        layer_type="basic", hidden_sizes=[64, 128, 256, 512], depths=[2, 2, 2, 2]
    )
    return transformers.ResNetForImageClassification(config)


def torchvision(name: str) -> Callable[[], torch.nn.Module]:
    return lambda: getattr(torchvision_models(), name)()


def gpt2() -> torch.nn.Module:
    config = transformers.GPT2Config(n_layer=2, n_embd=128, n_head=4, use_cache=False)
    return transformers.GPT2LMHeadModel(config)


def qwen3() -> torch.nn.Module:
    """Qwen3, small: 2 layers × 128 wide, 4 query heads of 64 (256 wide together, as
    Qwen3's heads are wider than its model), 2 key/value heads, per-head q/k norms."""
    config = transformers.Qwen3Config(
        vocab_size=1000,
        hidden_size=128,
        intermediate_size=384,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=64,
        use_cache=False,
    )
    return transformers.Qwen3ForCausalLM(config)


def phi3() -> torch.nn.Module:
    """Phi-3, small: 2 layers × 128 wide, 4 query heads of 32, 2 key/value heads, q, k
    and v sliced from one fused projection, the MLP's gate and up from another."""
    config = transformers.Phi3Config(
        vocab_size=1000,
        hidden_size=128,
        intermediate_size=384,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=1,
        use_cache=False,
    )
    return transformers.Phi3ForCausalLM(config)


def gpt_neox() -> torch.nn.Module:
    """GPT-NeoX (Pythia's layout), small: 2 layers × 128 wide, 4 heads of 32, q/k/v
    interleaved per head, rotary on a quarter of each head, parallel blocks."""
    config = transformers.GPTNeoXConfig(
        vocab_size=1000,
        hidden_size=128,
        intermediate_size=512,
        num_hidden_layers=2,
        num_attention_heads=4,
        use_cache=False,
    )
    return transformers.GPTNeoXForCausalLM(config)


def gemma() -> torch.nn.Module:
    """Gemma, small: 2 layers × 128 wide, 4 query heads of 32, 2 key/value heads, word
    vectors scaled by sqrt(128), ``1 + weight`` RMSNorms."""
    config = transformers.GemmaConfig(
        vocab_size=1000,
        hidden_size=128,
        intermediate_size=384,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        use_cache=False,
    )
    return transformers.GemmaForCausalLM(config)


def vit() -> torch.nn.Module:
    """torchvision's VisionTransformer, small: 112×112 images, 16×16 patches, 4 layers ×
    128 wide, 4 heads (vit_b_16's structure at a benchmark's size)."""
    return torchvision_models().VisionTransformer(
        image_size=112, patch_size=16, num_layers=4, num_heads=4, hidden_dim=128, mlp_dim=512
    )


MODELS: dict[str, tuple[Callable[[], torch.nn.Module], Callable[[], torch.Tensor]]] = {
    "resnet50": (resnet50, lambda: torch.randn(1, 3, 112, 112)),
    "resnet18": (resnet18, lambda: torch.randn(1, 3, 112, 112)),
    **{
        f"torchvision {name}": (torchvision(name), lambda: torch.randn(1, 3, 112, 112))
        for name in ("resnet50", "mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0")
    },
    # batch 2, as measured before batch 1 imported (tests/test_import_vit.py)
    "torchvision vit": (vit, lambda: torch.randn(2, 3, 112, 112)),
    "gpt2": (gpt2, lambda: torch.randint(0, 100, (1, 32))),
    "qwen3": (qwen3, lambda: torch.randint(0, 1000, (1, 32))),
    "phi3": (phi3, lambda: torch.randint(0, 1000, (1, 32))),
    "gpt_neox": (gpt_neox, lambda: torch.randint(0, 1000, (1, 32))),
    "gemma": (gemma, lambda: torch.randint(0, 1000, (1, 32))),
}


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


@contextlib.contextmanager
def quiet():
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


def torch_onnx(module: torch.nn.Module, x: torch.Tensor) -> bytes:
    with quiet():
        return torch.onnx.export(module, (x,), dynamo=True).model_proto.SerializeToString()


def session(model: bytes, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def bench_import(module: torch.nn.Module, x: torch.Tensor, rounds: int) -> dict[str, float]:
    ways = {
        "torch.export": lambda: torch.export.export(module, (x,), strict=False),
        "from_torch(check=False)": lambda: from_torch(module, x, check=False),
        "from_torch()": lambda: from_torch(module, x),
    }
    for fn in ways.values():
        fn()  # warm-up
    times: dict[str, list[float]] = {k: [] for k in ways}
    for _ in range(rounds):
        for name, fn in ways.items():
            times[name].append(timed(fn))
    return {k: statistics.median(v) for k, v in times.items()}


def bench_inference(
    ours: bytes, theirs: bytes, x: torch.Tensor, runs: int, threads: int
) -> tuple[float, float, float, float]:
    """Median latencies of both files, the median of the per-pair ratios (ours ÷ theirs),
    and the outputs' relative difference."""
    a, b = session(ours, threads), session(theirs, threads)
    feed_a = {a.get_inputs()[0].name: x.numpy()}
    feed_b = {b.get_inputs()[0].name: x.numpy()}
    ya, yb = a.run(None, feed_a)[0], b.run(None, feed_b)[0]
    err = float(np.abs(ya - yb).max() / max(1.0, np.abs(yb).max()))
    ta, tb = [], []
    for i in range(runs):  # which runs first alternates: the second of a pair runs warmer
        if i % 2:
            tb.append(timed(lambda: b.run(None, feed_b)))
            ta.append(timed(lambda: a.run(None, feed_a)))
        else:
            ta.append(timed(lambda: a.run(None, feed_a)))
            tb.append(timed(lambda: b.run(None, feed_b)))
    ratio = statistics.median(x / y for x, y in zip(ta, tb, strict=True))
    return statistics.median(ta), statistics.median(tb), ratio, err


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated names")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.disable(logging.WARNING)
    transformers.logging.set_verbosity_error()
    print(f"torch {torch.__version__}, onnxruntime {ort.__version__}, threads {args.threads}")
    for name in args.models.split(","):
        make, example = MODELS[name]
        torch.manual_seed(0)
        # random BatchNorm statistics and biases, as a trained model has: with the default
        # init torch.onnx.export folds each BatchNorm into a conv with an all-zero bias and
        # drops it, a saving no trained model offers (onnxruntime's own fusion keeps it)
        module, x = randomized(make()), example()
        try:
            graph = from_torch(module, x, check=False)
        except ImportRefused as exc:
            print(f"{name}: refused ({len(exc.constructs)} constructs without a grow-ir op)")
            print("  " + "\n  ".join(exc.constructs[:3]))
            continue
        t = bench_import(module, x, args.rounds)
        base = t["torch.export"]
        print(
            f"{name} import ({len(graph.nodes)} nodes): torch.export {base * 1e3:.0f} ms, "
            f"from_torch(check=False) {t['from_torch(check=False)'] * 1e3:.0f} ms "
            f"(x{t['from_torch(check=False)'] / base:.2f}), "
            f"from_torch() {t['from_torch()'] * 1e3:.0f} ms (x{t['from_torch()'] / base:.2f})"
        )
        ours = to_onnx(graph).SerializeToString()
        theirs = torch_onnx(module, x)
        ta, tb, ratio, err = bench_inference(ours, theirs, x, args.runs, args.threads)
        print(
            f"{name} onnxruntime {list(x.shape)}: to_onnx(imported) {ta * 1e3:.2f} ms, "
            f"torch.onnx.export {tb * 1e3:.2f} ms, ratio {ratio:.3f} "
            f"(outputs agree within {err:.1e})"
        )


if __name__ == "__main__":
    main()
