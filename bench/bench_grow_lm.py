"""A small GPT grown while it trains vs the final architecture trained from scratch: validation
loss against training compute (FLOPs) and wall time, on the same tokens.

    python bench/bench_grow_lm.py [--chars N] [--epochs 6] [--seq-len 32] [--threads 1]
                                  [--widen-at 1] [--deepen-at 2] [--tail-epochs 2]

Data: the embedded ``pydoc`` corpus (CPython's documentation topics, 465,048 characters), or
its first ``--chars`` characters, bytes as tokens. Every run sees the same windows in the same order
(seed 0) for the same epochs under the same learning-rate schedule (Adam 2e-3, x0.1 half way
through the last ``--tail-epochs``). The final architecture is 4 blocks x 64 wide (8 heads
of 8); the grown runs start smaller and reach it by a schedule of exact growth steps:

- width+depth: 2 x 32 (4 heads); after epoch ``--widen-at`` ``widen(wte, 64, lemon)`` and
  ``add_heads(..., 8)``; after epoch ``--deepen-at`` ``stack_blocks(h, mode=interpolate)``
  (2 -> 4);
- width only: 4 x 32, widened after epoch ``--widen-at``;
- depth only: 2 x 64, deepened after epoch ``--deepen-at``.

Training FLOPs per token are counted per epoch for the architecture of that epoch:
``6 x (parameters outside the embedding) + 12 x blocks x seq_len x attention width``
(forward and backward; the usual 6N rule plus the attention scores and weighted sums).
Reported: the final validation loss of each run, its total FLOPs and wall time as ratios of
the scratch run's, and the compute (FLOPs, linearly interpolated between epochs) at which a
grown run first reaches the scratch run's final validation loss, as a fraction of the
scratch run's total. A plot goes to ``bench/grow_lm.png``.
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from grow_ir.growth import Trainer, growth_config  # noqa: E402
from grow_ir.growth.lm_data import pydoc_text  # noqa: E402
from grow_ir.spec import load_spec  # noqa: E402
from tests.transformer_specs import GPT2_BLOCK  # noqa: E402

VOCAB = 256
BLOCK = GPT2_BLOCK  # the GPT-2-like block of the transformer tests


def spec(width: int, depth: int, growth: dict[str, Any]) -> dict[str, Any]:
    """A GPT over bytes: ``depth`` pre-LN blocks of ``width`` (heads of 8, MLP 4x)."""
    return {
        "version": 1,
        "name": f"gpt_{depth}x{width}",
        "seed": 0,
        "inputs": {"tokens": {"shape": ["batch", "seq"], "dtype": "int64"}},
        "blocks": {"gpt": BLOCK},
        "nodes": [
            {"name": "wte", "op": "embedding", "num_embeddings": VOCAB, "embedding_dim": width},
            {
                "name": "h",
                "stage": "gpt",
                "depth": depth,
                "with": {"width": width, "hidden": 4 * width, "heads": width // 8},
            },
            {"name": "ln_f", "op": "layernorm"},
            {"name": "lm_head", "op": "linear", "out_features": VOCAB, "bias": False},
        ],
        "outputs": {"logits": "lm_head"},
        "growth": growth,
    }


def widen_steps(epoch: int, depth: int) -> list[dict[str, Any]]:
    steps: list[dict[str, Any]] = [
        {"epoch": epoch, "pass": "widen", "node": "wte", "width": 64, "init": "lemon"}
    ]
    for i in range(depth):
        steps.append({"epoch": epoch, "pass": "add_heads", "node": f"h.block{i}.attn", "heads": 8})
    return steps


def deepen_step(epoch: int) -> dict[str, Any]:
    return {"epoch": epoch, "pass": "stack_blocks", "stage": "h", "mode": "interpolate"}


Run = tuple[int, int, list[dict[str, Any]], int]


def runs(args: argparse.Namespace) -> dict[str, Run]:
    """Run name -> (start width, start depth, schedule, epochs): the runs compared.

    The shorter run from scratch (one epoch fewer, its own learning-rate tail) is the
    equal-compute baseline of the grown runs, which spend 78-88% of the full run's FLOPs.
    """
    e, w, d = args.epochs, args.widen_at, args.deepen_at
    return {
        "scratch 4x64": (64, 4, [], e),
        f"scratch 4x64, {e - 1} epochs": (64, 4, [], e - 1),
        "grown 2x32 -> 4x64": (32, 2, [*widen_steps(w, 2), deepen_step(d)], e),
        "width only 4x32 -> 4x64": (32, 4, widen_steps(w, 4), e),
        "depth only 2x64 -> 4x64": (64, 2, [deepen_step(d)], e),
    }


def flops_per_token(width: int, depth: int, seq_len: int) -> float:
    """Training FLOPs per token of a depth x width GPT (see the module docstring)."""
    per_block = 4 * width * width + 4 * width + 8 * width * width + 5 * width + 4 * width
    matmul = depth * per_block + 2 * width + width * VOCAB
    return 6.0 * matmul + 12.0 * depth * seq_len * width


@dataclass
class Curve:
    """One run: per epoch, cumulative FLOPs and seconds, and the validation loss."""

    name: str
    flops: list[float]
    seconds: list[float]
    val_loss: list[float]


def train(name: str, data: str, args: argparse.Namespace) -> Curve:
    width, depth, steps, epochs = runs(args)[name]
    growth: dict[str, Any] = {
        "data": data,
        "seq_len": args.seq_len,
        "epochs": epochs,
        "tail_epochs": args.tail_epochs,
        "lr_milestones": [0.5],
        "batch_size": 32,
        "optimizer": {"name": "adam", "lr": 2e-3},
        "policy": "schedule" if steps else "none",
    }
    if steps:
        growth["schedule"] = copy.deepcopy(steps)
    graph = load_spec(spec(width, depth, growth))
    config = growth_config(graph.growth)
    trainer = Trainer.fresh(graph, config, data_source=data, out_dir=None, progress=False)
    trainer.threads = args.threads
    tokens = trainer.data.x_train.numel()
    result = trainer.run()
    events = {(e["epoch"], e["pass"]) for e in result.history.events}
    flops, seconds, losses = [], [], []
    total_f = total_s = 0.0
    w, d = width, depth
    for row in result.history.epochs:
        total_f += flops_per_token(w, d, args.seq_len) * tokens
        total_s += row["seconds"]
        flops.append(total_f)
        seconds.append(total_s)
        losses.append(row["val_loss"])
        # growth after this epoch changes the next epoch's architecture
        if (row["epoch"], "widen") in events:
            w = 64
        if (row["epoch"], "stack_blocks") in events:
            d = 2 * d
    assert (w, d) == (64, 4), f"{name} ended at {d}x{w}"
    print(f"  {name}: final val loss {losses[-1]:.4f} ({total_s:.0f} s)", flush=True)
    return Curve(name, flops, seconds, losses)


def reach(curve: Curve, target: float) -> float | None:
    """The FLOPs at which ``curve`` first reaches ``target`` (interpolated), or None."""
    prev_f, prev_l = 0.0, None
    for f, loss in zip(curve.flops, curve.val_loss):
        if loss <= target:
            if prev_l is None or prev_l == loss:
                return f
            return prev_f + (f - prev_f) * (prev_l - target) / (prev_l - loss)
        prev_f, prev_l = f, loss
    return None


def loss_at(curve: Curve, flops: float) -> float:
    """``curve``'s validation loss at ``flops`` of compute (interpolated; its last value
    past its end)."""
    prev_f, prev_l = 0.0, curve.val_loss[0]
    for f, loss in zip(curve.flops, curve.val_loss):
        if f >= flops:
            return prev_l + (loss - prev_l) * (flops - prev_f) / (f - prev_f)
        prev_f, prev_l = f, loss
    return curve.val_loss[-1]


def plot(curves: list[Curve], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for c in curves:
        axes[0].plot([f / 1e12 for f in c.flops], c.val_loss, marker="o", label=c.name)
        axes[1].plot(c.seconds, c.val_loss, marker="o", label=c.name)
    axes[0].set_xlabel("training compute (TFLOPs)")
    axes[1].set_xlabel("wall time (s)")
    for ax in axes:
        ax.set_ylabel("validation loss (nats/token)")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle("GPT over bytes (pydoc), grown by exact steps vs trained from scratch")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chars", type=int, default=None, help="default: the whole corpus")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--seq-len", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--widen-at", type=int, default=1, help="epoch after which to widen")
    parser.add_argument("--deepen-at", type=int, default=2, help="epoch after which to deepen")
    parser.add_argument("--tail-epochs", type=int, default=2)
    parser.add_argument("--plot", type=Path, default=ROOT / "bench" / "grow_lm.png")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        data = str(Path(tmp) / "pydoc_head.txt")
        text = pydoc_text()[: args.chars]
        Path(data).write_text(text, encoding="utf-8")
        print(
            f"pydoc, first {len(text):,} characters; {args.epochs} epochs of windows of "
            f"{args.seq_len}; widen after epoch {args.widen_at}, deepen after epoch "
            f"{args.deepen_at}, tail {args.tail_epochs}; threads {args.threads}"
        )
        names = runs(args)
        curves = [train(name, data, args) for name in names]
    scratch = curves[0]
    target = scratch.val_loss[-1]
    print(
        f"\n{'run':28} {'final val loss':>14} {'FLOPs':>8} {'wall':>8} "
        f"{'FLOPs to reach scratch final loss':>34} {'scratch loss at same FLOPs':>27}"
    )
    for c in curves:
        at = reach(c, target)
        reached = f"{at / scratch.flops[-1]:.0%} of scratch" if at is not None else "not reached"
        print(
            f"{c.name:28} {c.val_loss[-1]:14.4f} {c.flops[-1] / scratch.flops[-1]:7.0%} "
            f"{c.seconds[-1] / scratch.seconds[-1]:7.0%}  {reached:>33} "
            f"{loss_at(scratch, c.flops[-1]):27.4f}"
        )
    plot(curves, args.plot)
    print(f"\nplot: {args.plot}")


if __name__ == "__main__":
    main()
