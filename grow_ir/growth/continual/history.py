"""The record of a continual-learning run and its summary metrics.

``history.json`` holds ``tasks`` (per task, in order: its ``choices`` per layer, the
softmax weights behind them, the ``fork_task`` plan entry that realised them, the λ kept
and every candidate λ's validation accuracy, and the test accuracy on every task learned
so far) and
``final``: ``average_accuracy`` (mean final accuracy over all tasks), ``forgetting``
(mean over all tasks but the last of best earlier accuracy minus final accuracy, as in
Chaudhry et al. 2018), ``params`` (the multi-task network), ``separate_params`` (one
network per task) and their ratio ``relative_params``. Accuracies are fractions in [0, 1].
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class TaskRecord:
    """What learning one task chose and scored.

    Attributes:
        task: the task's output name.
        source: where its data came from.
        classes: its number of classes.
        choices: per layer, ``reuse``, ``adapt`` or ``new``.
        probabilities: per layer, the softmax weight of every choice (empty for the first
            task, which trains the whole network).
        plan: the ``fork_task`` plan entry that built the task's path (None for the first
            task).
        accuracies: test accuracy of every task learned so far, after this one.
        params: parameters of the multi-task network after this task.
        seconds: wall time spent on this task.
        penalty: the λ of the size penalty kept (by validation accuracy); None for the
            first task and for a method without a search.
        candidates: per candidate λ: ``penalty``, ``choices``, ``val_accuracy``,
            ``params`` and ``same_as`` (the earlier λ whose choices it repeated).
    """

    task: str
    source: str
    classes: int
    choices: dict[str, str]
    probabilities: dict[str, dict[str, float]]
    plan: dict[str, Any] | None
    accuracies: dict[str, float]
    params: int
    seconds: float
    penalty: float | None = None
    candidates: list[dict[str, Any]] = field(default_factory=list)

    def table(self) -> str:
        """The task's choices as a table (layer, choice, weights) and its accuracies."""
        rows = [("layer", "choice", "reuse", "adapt", "new")]
        for layer, choice in self.choices.items():
            p = self.probabilities.get(layer, {})
            cells = [f"{p[c]:.2f}" if c in p else "-" for c in ("reuse", "adapt", "new")]
            rows.append((layer, choice, *cells))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = [
            f"{self.task} ({self.source}, {self.classes} classes): "
            f"{self.params:,} params, {self.seconds:.1f} s"
        ]
        for r in rows:
            lines.append("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
        if self.candidates:
            tried = "; ".join(_candidate(c) for c in self.candidates)
            lines.append(f"  lambda {self.penalty:g} kept by validation accuracy ({tried})")
        acc = " | ".join(f"{t} {a:.1%}" for t, a in self.accuracies.items())
        lines.append(f"  accuracy: {acc}")
        return "\n".join(lines)


def _candidate(c: dict[str, Any]) -> str:
    """One candidate λ for the table: its validation accuracy and parameters."""
    if c.get("same_as") is not None:
        return f"{c['penalty']:g}: same choices as {c['same_as']:g}"
    return f"{c['penalty']:g}: val {c['val_accuracy']:.1%}, {c['params']:,} params"


@dataclass
class ContinualHistory:
    """Task records in order, and the final summary once the run is over."""

    tasks: list[TaskRecord] = field(default_factory=list)
    final: dict[str, Any] = field(default_factory=dict)

    def add(self, record: TaskRecord) -> None:
        """Append the record of the task just learned."""
        self.tasks.append(record)

    def final_accuracies(self) -> dict[str, float]:
        """The accuracy of every task after the last one was learned."""
        return dict(self.tasks[-1].accuracies) if self.tasks else {}

    def average_accuracy(self) -> float:
        """Mean final accuracy over all tasks (0.0 with none)."""
        acc = self.final_accuracies()
        return sum(acc.values()) / len(acc) if acc else 0.0

    def forgetting(self) -> float:
        """Mean over every task but the last of (best accuracy before the last task was
        learned − final accuracy); 0.0 with fewer than two tasks.

        Guarantees: exactly 0.0 when no task's accuracy ever changed after it was learned.
        """
        if len(self.tasks) < 2:
            return 0.0
        final = self.final_accuracies()
        drops = []
        for j, record in enumerate(self.tasks[:-1]):
            earlier = [r.accuracies[record.task] for r in self.tasks[j:-1]]
            drops.append(max(earlier) - final[record.task])
        return sum(drops) / len(drops)

    def finish(self, params: int, separate_params: int) -> dict[str, Any]:
        """Fill in ``final`` from the records and the two parameter counts; return it."""
        self.final = {
            "average_accuracy": self.average_accuracy(),
            "forgetting": self.forgetting(),
            "params": params,
            "separate_params": separate_params,
            "relative_params": params / separate_params if separate_params else 0.0,
            "accuracies": self.final_accuracies(),
            "seconds": sum(r.seconds for r in self.tasks),
        }
        return self.final

    def summary(self) -> str:
        """One line: average accuracy, forgetting, parameters against separate networks."""
        f = self.final
        return (
            f"average accuracy {f['average_accuracy']:.1%}, forgetting "
            f"{100 * f['forgetting']:.1f} points, {f['params']:,} params = "
            f"{f['relative_params']:.0%} of {f['separate_params']:,} for separate networks"
        )

    def to_json(self) -> dict[str, Any]:
        """Plain JSON data: ``tasks`` then ``final``."""
        return {"tasks": [asdict(r) for r in self.tasks], "final": dict(self.final)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ContinualHistory:
        """The history :meth:`to_json` wrote."""
        return cls([TaskRecord(**r) for r in data["tasks"]], dict(data.get("final", {})))
