"""The record of a training run: per-epoch metrics, growth events, and the final result.

``history.json`` holds ``epochs`` (epoch, train_loss, train_accuracy, val_accuracy,
params, lr, seconds), ``events`` (one per growth step: epoch, pass, unit, args, params,
preserved, summary, reason) plus ``stops`` (when and why each unit stopped growing), and
``final`` (test_accuracy, params, the grown architecture, wall time).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from grow_ir.growth.actions import StepOutcome
from grow_ir.ir.diff import grown_nodes
from grow_ir.ir.graph import Graph


@dataclass
class History:
    """Everything a run records, as plain JSON-able data."""

    epochs: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    stops: list[dict[str, Any]] = field(default_factory=list)
    final: dict[str, Any] = field(default_factory=dict)

    def add_epoch(
        self,
        epoch: int,
        *,
        train_loss: float,
        train_accuracy: float,
        val_accuracy: float,
        params: int,
        lr: float,
        seconds: float,
    ) -> dict[str, Any]:
        """Record one epoch (parameters counted before any growth after it)."""
        row = {
            "epoch": epoch,
            "train_loss": train_loss,
            "train_accuracy": train_accuracy,
            "val_accuracy": val_accuracy,
            "params": params,
            "lr": lr,
            "seconds": seconds,
        }
        self.epochs.append(row)
        return row

    def add_event(
        self, epoch: int, outcome: StepOutcome, before: Graph | None = None
    ) -> dict[str, Any]:
        """Record one growth step after ``epoch`` (with the nodes it added and changed,
        given the graph ``before`` it)."""
        r, req = outcome.result, outcome.request
        row = {
            "epoch": epoch,
            "pass": req.pass_name,
            "unit": req.unit,
            "args": outcome.args,
            "params": r.graph.num_params(),
            "preserved": r.preserved,
            "summary": r.summary,
            "reason": req.reason,
            "not_preserved_because": r.reason,
            **outcome.notes,
        }
        if before is not None:
            row.update(grown_nodes(before, r.graph))
        self.events.append(row)
        return row

    def add_stop(self, epoch: int, unit: str, reason: str) -> None:
        """Record that ``unit`` stopped growing after ``epoch``."""
        self.stops.append({"epoch": epoch, "unit": unit, "reason": reason})

    def to_json(self) -> dict[str, Any]:
        """The history as one JSON object."""
        return {
            "epochs": self.epochs,
            "events": self.events,
            "stops": self.stops,
            "final": self.final,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> History:
        """The inverse of :meth:`to_json`."""
        return cls(
            epochs=list(data.get("epochs", [])),
            events=list(data.get("events", [])),
            stops=list(data.get("stops", [])),
            final=dict(data.get("final", {})),
        )
