"""Channel pruning with grow-ir vs Torch-Pruning, and NeST on digits, side by side.

    python bench/bench_prune.py [--size 224] [--nest-seeds 0] [--skip-nest] [--threads 1]

**Pruning** (torchvision's ResNet-18 and MobileNetV2, imported, and the digits CNN): 50%
of the channels of every prunable channel group go, ranked by l1, with grow-ir (``prune``
per group, on the Graph) and with Torch-Pruning 1.6.1 (``MagnitudePruner``,
``MagnitudeImportance(p=1)``, ratio 0.5, the output layer ignored) on an identical
``nn.Module``. Reported: parameters of both pruned models (must be equal), whether both
chose the same channels, the largest difference of their outputs on the same batch (eval
mode; must be ~0 when the channels are the same), and the wall time of each (grow-ir:
channel-group analysis and pruning of every group; Torch-Pruning: building its dependency
graph and the pruning step; the fastest of 3). Both rank every group on the unpruned
network (Torch-Pruning's order).

ResNet-18 and MobileNetV2 are torchvision's own classes (``resnet18()``,
``mobilenet_v2()``, random init; loaded by tests/torchvision_models.py without
torchvision's C extension) imported with ``gi.from_torch``; their batchnorm statistics are
randomised so that the outputs say something. The digits CNN is
``specs/examples/autogrow_digits.yaml``; Torch-Pruning gets its lowered module
``gi.to_torch(graph)``.

**NeST** (``specs/examples/nest_digits.yaml``): the NeST run (grow, then prune to 40% of
the connections) against the same network trained as it is (``policy: none``), with the
same optimizer, epochs and learning-rate schedule: test accuracy, parameters and the
parameters the network computes with (masked connections excluded).
"""

from __future__ import annotations

import argparse
import sys
import time
from copy import deepcopy
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import grow_ir as gi  # noqa: E402
from grow_ir.growth import Trainer, growth_config  # noqa: E402
from grow_ir.ir.graph import Graph  # noqa: E402
from grow_ir.passes import channel_group, prunable, prune  # noqa: E402
from grow_ir.passes.connections import live_params  # noqa: E402
from grow_ir.passes.prune import Scoring, choose_kept  # noqa: E402
from grow_ir.spec import load_spec  # noqa: E402
from tests.torchvision_models import models as torchvision_models  # noqa: E402

REPEATS = 3
"""Each tool prunes this many times; the fastest time is reported (the machine is shared)."""


def randomise_batchnorm(module: nn.Module, seed: int) -> None:
    """Random affine terms and running statistics on every BatchNorm (in place)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(n, generator=gen) * 0.1)
                m.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)


# ---- pruning every group, with each tool -----------------------------------------------------


def grow_ir_prune(graph: Graph) -> tuple[Graph, dict[str, list[int]], float]:
    """50% of every prunable group's channels by l1, every group ranked on the unpruned
    network (as Torch-Pruning ranks them), then pruned one after the other; the kept
    channels per group, by its first node."""
    start = time.perf_counter()
    kept: dict[str, list[int]] = {}
    done: set[str] = set()
    for node in prunable(graph):
        if node in done:
            continue
        group = channel_group(graph, node)
        # a depthwise conv is prunable through the group of the layer before it
        if done & set(group.producers):
            continue
        done.update(group.producers)
        kept[node], _ = choose_kept(Scoring(graph, node, group), 0.5, None, "l1")
    for node, channels in kept.items():
        graph = prune(graph, node=node, keep=channels)
    return graph, kept, time.perf_counter() - start


def torch_pruning_prune(
    module: nn.Module, example: torch.Tensor, ignored: list[nn.Module]
) -> tuple[nn.Module, dict[str, list[int]], float]:
    """Torch-Pruning's magnitude pruner, group L1, 50% of every group, one step; the
    channels it kept per group, by the name of the group's root layer."""
    import torch_pruning as tp

    names = {m: n for n, m in module.named_modules()}
    start = time.perf_counter()
    pruner = tp.pruner.MagnitudePruner(
        module,
        example,
        importance=tp.importance.MagnitudeImportance(p=1),
        pruning_ratio=0.5,
        ignored_layers=ignored,
    )
    kept: dict[str, list[int]] = {}
    for group in pruner.step(interactive=True):
        dep, idxs = group[0]
        layer = dep.target.module
        width = layer.out_channels if isinstance(layer, nn.Conv2d) else layer.out_features
        gone = set(int(i) for i in idxs)
        kept[names[layer]] = [c for c in range(width) if c not in gone]
        group.prune()
    return module, kept, time.perf_counter() - start


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def compare(
    label: str, graph: Graph, module: nn.Module, example: torch.Tensor, ignored: str
) -> None:
    """Prune ``graph`` with grow-ir and ``module`` (identical) with Torch-Pruning; print."""
    runs = [grow_ir_prune(graph) for _ in range(REPEATS)]
    pruned_graph, kept, _ = runs[0]
    t_gi = min(r[2] for r in runs)
    tp_runs = []
    for _ in range(REPEATS):  # Torch-Pruning edits its module: a fresh copy each time
        copy = deepcopy(module)
        ignore = [dict(copy.named_modules())[ignored]]
        tp_runs.append(torch_pruning_prune(copy, example, ignore))
    pruned_module, tp_kept, _ = tp_runs[0]
    t_tp = min(r[2] for r in tp_runs)
    # compare group by group: Torch-Pruning names a group by its root layer
    by_layer = {}
    for start, channels in kept.items():
        for producer in channel_group(graph, start).producers:
            by_layer[producer] = channels
    same = len(tp_kept) == len(kept) and all(by_layer.get(n) == c for n, c in tp_kept.items())
    params_gi, params_tp = pruned_graph.num_params(), count(pruned_module)
    with torch.no_grad():
        y_gi = gi.to_torch(pruned_graph).eval()(example)
        y_tp = pruned_module.eval()(example)
    diff = (y_gi - y_tp).abs().max().item()
    scale = max(1.0, y_tp.abs().max().item())
    print(f"\n{label}: {graph.num_params():,} params, {len(kept)} channel groups pruned to 50%")
    equal = params_gi == params_tp
    print(f"  parameters   grow-ir {params_gi:,}   Torch-Pruning {params_tp:,}   equal: {equal}")
    print(f"  channels     same choice in every group: {same}")
    print(
        f"  outputs      max |grow-ir - Torch-Pruning| = {diff:.3g} (relative {diff / scale:.2g})"
    )
    ratio = t_gi / t_tp
    print(f"  time         grow-ir {t_gi:.3f} s   Torch-Pruning {t_tp:.3f} s   ratio {ratio:.2f}x")


def torchvision_cnn(name: str, label: str, output: str, size: int) -> None:
    """torchvision's ``name`` (random init), imported, pruned by both tools."""
    torch.manual_seed(0)
    module = getattr(torchvision_models(), name)().eval()
    randomise_batchnorm(module, seed=1)
    example = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(2))
    start = time.perf_counter()
    graph = gi.from_torch(module, (example,))
    print(f"\nimported {label} with gi.from_torch in {time.perf_counter() - start:.2f} s")
    compare(f"{label} (torchvision, imported, {size}x{size})", graph, module, example, output)


def digits_cnn() -> None:
    graph = load_spec(ROOT / "specs" / "examples" / "autogrow_digits.yaml")
    graph = gi.probes.randomize_norms(graph, seed=1)
    module = gi.to_torch(graph).eval()
    example = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    compare("digits CNN (autogrow_digits)", graph, module, example, "head")


# ---- NeST on digits ----------------------------------------------------------------------------


def nest(seeds: list[int]) -> None:
    graph = load_spec(ROOT / "specs" / "examples" / "nest_digits.yaml")
    print("\nNeST on digits (nest_digits.yaml) vs the same network unpruned")
    print(
        f"  {'run':<10} {'seed':>4} {'test acc':>9} {'params':>8} {'computes with':>14} {'time':>7}"
    )
    for seed in seeds:
        for policy in ("nest", "none"):
            cfg = growth_config(graph.growth, {"policy": policy, "seed": seed})
            trainer = Trainer.fresh(
                graph, cfg, data_source="digits", out_dir=None, progress=False, log=lambda s: None
            )
            start = time.perf_counter()
            result = trainer.run()
            seconds = time.perf_counter() - start
            g = result.graph
            name = "NeST" if policy == "nest" else "unpruned"
            acc, params, live = result.test_accuracy, g.num_params(), live_params(g)
            print(f"  {name:<10} {seed:>4} {acc:>8.2%} {params:>8,} {live:>14,} {seconds:>6.1f}s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=224, help="input size of the torchvision CNNs")
    ap.add_argument("--nest-seeds", default="0", help="training seeds of the NeST comparison")
    ap.add_argument("--skip-nest", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torchvision_cnn("resnet18", "ResNet-18", "fc", args.size)
    torchvision_cnn("mobilenet_v2", "MobileNetV2", "classifier.1", args.size)
    digits_cnn()
    if not args.skip_nest:
        nest([int(s) for s in args.nest_seeds.split(",")])


if __name__ == "__main__":
    main()
