"""``curves.png``: accuracy, training loss and parameter count per epoch, growth steps
marked."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def plot_curves(history: dict[str, Any], path: str | Path, *, title: str = "") -> Path:
    """Draw the run's curves to ``path`` (PNG) and return it.

    Top: train and validation accuracy per epoch (test accuracy as a point at the end when
    known). Middle: the mean training loss per epoch. Bottom: parameter count per epoch.
    Each growth step is a dashed vertical line after its epoch on every panel; the start of
    the learning-rate tail a dotted one; each kind of mark has its legend entry. Epochs are
    numbered from 1, as in the history. The picture is written to ``path + ".tmp"`` and
    renamed, so ``path`` is always a complete picture or absent.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = history["epochs"]
    xs = [e["epoch"] for e in epochs]  # 1-based
    fig, (top, middle, bottom) = plt.subplots(3, 1, figsize=(7, 8), sharex=True)
    top.plot(xs, [e["train_accuracy"] for e in epochs], label="train", color="tab:blue")
    top.plot(xs, [e["val_accuracy"] for e in epochs], label="validation", color="tab:orange")
    test = history.get("final", {}).get("test_accuracy")
    if test is not None and xs:
        top.scatter([xs[-1]], [test], color="tab:green", zorder=3, label=f"test {test:.2%}")
    top.set_ylabel("accuracy")
    middle.plot(xs, [e.get("train_loss") for e in epochs], color="tab:blue", label="train loss")
    middle.set_ylabel("training loss")
    params = [e["params"] for e in epochs]
    bottom.step(xs, params, where="mid", color="tab:purple", label="parameters")
    bottom.set_ylabel("parameters")
    bottom.set_xlabel("epoch")
    panels = (top, middle, bottom)
    for i, ev in enumerate(history.get("events", [])):
        for ax in panels:
            label = "growth step" if i == 0 and ax is top else None
            ax.axvline(ev["epoch"] + 0.5, color="tab:red", linestyle="--", alpha=0.6, label=label)
    tail = history.get("final", {}).get("tail_start")  # the tail's first epoch, 1-based
    if tail is not None and 1 < tail <= len(xs):
        for ax in panels:
            label = "learning-rate tail" if ax is top else None
            ax.axvline(tail - 0.5, color="gray", linestyle=":", label=label)
    for ax in panels:
        ax.grid(alpha=0.3)
    top.legend(loc="lower right", fontsize=8)
    if title:
        top.set_title(title)
    fig.tight_layout()
    path = Path(path)
    partial = path.with_name(path.name + ".tmp")
    fig.savefig(partial, dpi=110, format="png")
    plt.close(fig)
    os.replace(partial, path)
    return path
