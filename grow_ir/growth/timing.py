"""Where a training run's wall time goes: data, step, validation, checkpoint, growth."""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field

PHASES = ("data", "step", "validation", "checkpoint", "growth")
"""The phases a run's time is split into: batches gathered and moved to the device, the
forward, backward and optimizer step, scoring the validation split, writing checkpoints,
and growth steps (the pass, re-lowering, optimizer transfer, AdamInit)."""


@dataclass
class Timings:
    """Seconds spent in each of :data:`PHASES`, summed over a run (resumes included)."""

    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(PHASES, 0.0))

    def add(self, phase: str, seconds: float) -> None:
        """Count ``seconds`` to ``phase``."""
        self.seconds[phase] += seconds

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Count the wall time of the ``with`` body to phase ``name``."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - start

    def line(self) -> str:
        """One line: each phase's seconds and share of their sum."""
        total = sum(self.seconds.values()) or 1.0
        parts = [f"{k} {v:.2f} s ({v / total:.0%})" for k, v in self.seconds.items()]
        return "time: " + ", ".join(parts)

    def to_json(self) -> dict[str, float]:
        """The seconds by phase, for a checkpoint or the history."""
        return dict(self.seconds)

    @classmethod
    def from_json(cls, data: Mapping[str, float] | None) -> Timings:
        """Timings saved by :meth:`to_json` (all zero for a checkpoint without them)."""
        out = cls()
        for key, value in (data or {}).items():
            if key in out.seconds:
                out.seconds[key] = float(value)
        return out
