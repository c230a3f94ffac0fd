"""AutoGrow: the grown network vs the same final architecture trained from scratch vs the
seed network, test accuracy and wall time side by side, with the noise that decides.

    python bench/bench_autogrow.py [--spec autogrow_digits] [--seeds 3] [--threads 1]
    python bench/bench_autogrow.py --spec autogrow_mnist --seeds 3      # real MNIST

Seed ``s`` (0, 1, ... up to ``--seeds``) fixes everything random in its runs: the seed
network's initial weights (the spec's ``seed:`` replaced by ``s``), the data order and
every growth step. For each seed AutoGrow grows the seed network while training (the
spec's ``growth:`` section); the final architecture is then re-initialised from seed ``s``
and trained from scratch, and the seed network is trained as it is, both for the same
epochs under the same learning-rate schedule (constant until the epoch growth stopped,
then the same staircase tail).

Accuracies are means over seeds ± their standard deviation; ``test SE`` is the standard
error of one accuracy from the size of the test set, sqrt(p(1-p)/n). A difference between
two methods is the mean of the per-seed differences; its noise combines the seeds'
spread (sd / sqrt(seeds)) and both accuracies' test-set standard errors (the test set is
one fixed sample, so averaging over seeds does not shrink that part). A difference counts
only beyond twice its noise, and only then does the benchmark write that a claim holds.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from grow_ir.growth import Trainer, growth_config  # noqa: E402
from grow_ir.growth.loop import RunResult  # noqa: E402
from grow_ir.growth.report import describe_architecture  # noqa: E402
from grow_ir.ir.graph import Graph  # noqa: E402
from grow_ir.spec import dump_spec, example_path, load_spec  # noqa: E402

METHODS = ("autogrow", "from scratch", "seed network")


@dataclass
class Row:
    """One method over the seeds: test accuracies, parameters and wall times."""

    name: str
    accuracy: list[float]
    seconds: list[float]
    params: list[int]


def train(graph: Graph, settings: dict, data: str, device: str | None) -> tuple[RunResult, float]:
    """Train ``graph`` under ``settings`` (no files written); return the result and seconds."""
    cfg = growth_config(graph.growth, settings)
    trainer = Trainer.fresh(
        graph, cfg, data_source=data, out_dir=None, device=device, progress=False, log=_quiet
    )
    start = time.perf_counter()
    result = trainer.run()
    return result, time.perf_counter() - start


def _quiet(line: str) -> None:
    pass


def reseeded(graph: Graph, seed: int) -> Graph:
    """``graph``'s architecture (stages, templates, growth section) with fresh parameters
    drawn from spec seed ``seed``."""
    spec = dump_spec(graph)
    spec.pop("weights", None)
    return load_spec({**spec, "seed": seed})


def test_se(accuracy: float, n: int) -> float:
    """The standard error of an accuracy measured on ``n`` test samples."""
    return math.sqrt(max(accuracy * (1 - accuracy), 0.0) / max(n, 1))


@dataclass(frozen=True)
class Difference:
    """The mean per-seed difference of two methods' test accuracies and its noise."""

    mean: float
    noise: float

    @property
    def verdict(self) -> str:
        """``better``, ``worse`` or ``same`` (within twice the noise)."""
        if self.mean > 2 * self.noise:
            return "better"
        if self.mean < -2 * self.noise:
            return "worse"
        return "same"


def difference(a: Row, b: Row, n_test: int) -> Difference:
    """``a`` minus ``b``, paired by seed, with the noise described in the module docstring."""
    diffs = [x - y for x, y in zip(a.accuracy, b.accuracy)]
    spread = statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else 0.0
    pa, pb = statistics.mean(a.accuracy), statistics.mean(b.accuracy)
    test = math.hypot(test_se(pa, n_test), test_se(pb, n_test))
    return Difference(statistics.mean(diffs), math.hypot(spread, test))


def points(x: float) -> str:
    """A fraction as signed percentage points."""
    return f"{x * 100:+.2f}"


def verdicts(rows: dict[str, Row], n_test: int) -> list[str]:
    """The claims, each said to hold only where the measured difference shows it."""
    grown, scratch, seed = rows["autogrow"], rows["from scratch"], rows["seed network"]
    d = difference(grown, scratch, n_test)
    t_ratio = statistics.mean(grown.seconds) / statistics.mean(scratch.seconds)
    head = f"autogrow - from scratch: {points(d.mean)} points (noise ± {d.noise * 100:.2f}); "
    if d.verdict == "better":
        acc = "grown beats the same architecture from scratch: the claim holds"
    elif d.verdict == "same":
        acc = (
            "no difference beyond the noise: the test set cannot tell grown from scratch "
            "(grown is not measurably worse, and not shown better)"
        )
    else:
        acc = "grown is worse than from scratch: the claim does not hold"
    cost = f"autogrow took {t_ratio:.2f}x the time of training the found architecture: the " + (
        "cost claim (about one training run) holds"
        if t_ratio <= 1.1
        else "cost claim does not hold"
    )
    s = difference(grown, seed, n_test)
    if s.verdict == "better":
        vs_seed = f"autogrow - seed network: {points(s.mean)} points: growing paid off"
    elif s.verdict == "same":
        vs_seed = (
            f"autogrow - seed network: {points(s.mean)} points (noise ± {s.noise * 100:.2f}): "
            "the seed network alone is as good; growth bought nothing measurable here"
        )
    else:
        vs_seed = f"autogrow - seed network: {points(s.mean)} points: the seed network is better"
    return [head + acc, cost, vs_seed]


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the table and the verdicts; return 0."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--spec", default="autogrow_digits", help="a spec file or a packaged example's name"
    )
    parser.add_argument("--data", default=None, help="default: the spec's growth data")
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0 .. N-1 (default 3)")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--tail-epochs", type=int, default=None)
    parser.add_argument("--device", default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a growth setting for the AutoGrow run (YAML value), e.g. init=adam",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    path = Path(args.spec)
    spec_graph = load_spec(
        path if path.suffix in (".yaml", ".yml", ".json") else example_path(args.spec)
    )
    data = args.data or (spec_graph.growth or {}).get("data", "digits")
    extra = _settings(args.set)
    rows = {k: Row(k, [], [], []) for k in METHODS}
    n_test = 0
    for seed in range(args.seeds):
        seed_graph = reseeded(spec_graph, seed)
        base = {"seed": seed, "epochs": args.epochs, "tail_epochs": args.tail_epochs}
        grown, t_grow = train(seed_graph, {**base, **extra}, data, args.device)
        stop = grown.stop_epoch if grown.stop_epoch is not None else grown.config.epochs
        fixed = {**base, "policy": "none", "tail_epochs": grown.config.epochs - stop}
        scratch, t_scratch = train(reseeded(grown.graph, seed), fixed, data, args.device)
        seedrun, t_seed = train(seed_graph, fixed, data, args.device)
        n_test = len(grown.data.y_test)
        for key, (res, t) in zip(
            METHODS, [(grown, t_grow), (scratch, t_scratch), (seedrun, t_seed)]
        ):
            rows[key].accuracy.append(res.test_accuracy)
            rows[key].seconds.append(t)
            rows[key].params.append(res.graph.num_params())
        print(
            f"seed {seed}: grown {describe_architecture(grown.graph)}, growth stopped after "
            f"epoch {stop}; test accuracy autogrow {grown.test_accuracy:.2%}, scratch "
            f"{scratch.test_accuracy:.2%}, seed network {seedrun.test_accuracy:.2%}",
            flush=True,
        )
    epochs = grown.config.epochs
    print()
    runs = f"{args.seeds} seed(s), {epochs} epochs each, {args.threads} thread(s)"
    settings = f", {' '.join(args.set)}" if args.set else ""
    print(f"AutoGrow on {data} ({n_test} test samples): {runs}{settings}")
    head = f"{'network':<14} {'params':>16} {'test accuracy':>17} {'test SE':>8}"
    print(f"{head} {'wall time':>10} {'time ratio':>11}")
    ref = statistics.mean(rows["from scratch"].seconds)
    for row in rows.values():
        acc, sec = row.accuracy, row.seconds
        spread = f" ± {statistics.stdev(acc):.2%}" if len(acc) > 1 else ""
        mean = statistics.mean(acc)
        params = f"{min(row.params):,}-{max(row.params):,}"
        print(
            f"{row.name:<14} {params:>16} {mean:>8.2%}{spread:>9} {test_se(mean, n_test):>8.2%}"
            f" {statistics.mean(sec):>8.1f} s {statistics.mean(sec) / ref:>10.2f}x"
        )
    print()
    for line in verdicts(rows, n_test):
        print(line)
    return 0


def _settings(pairs: list[str]) -> dict:
    """``KEY=VALUE`` flags as growth overrides (values parsed as YAML)."""
    import yaml

    out = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        out[key] = yaml.safe_load(value)
    return out


if __name__ == "__main__":
    sys.exit(main())
