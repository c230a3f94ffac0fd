"""The ``schedule`` growth policy: growth steps at given epochs (staged training).

Staged training (Shen et al. 2022) and the stacking papers grow a transformer at fixed
points of training to fixed sizes: width to 2x at 25% of the budget, depth to 2x at 50%...
Here each step of ``growth.schedule`` is a plan entry with an epoch,
``{epoch: 3, pass: widen, node: wte, width: 128, init: lemon}``; after that epoch the
trainer runs it like any growth step (optimizer state carried by the pass's origins, the
step in the history and the checkpoint). A step the pass refuses is logged with the
pass's reason and skipped; the graph is unchanged. The learning-rate tail starts at the
growth deadline (``epochs - tail_epochs``), as for a run without growth, so that a
scheduled run and the final architecture trained from scratch share one learning-rate
schedule.
"""

from __future__ import annotations

from typing import Any

from grow_ir.errors import GrowError
from grow_ir.growth.config import ScheduleConfig
from grow_ir.growth.hooks import probe_hooks
from grow_ir.growth.policy import GrowthRequest, Observation, PolicyBase, Stop, register_policy
from grow_ir.growth.schedule import growth_deadline
from grow_ir.ir.graph import Graph
from grow_ir.passes import get_pass


@register_policy(
    "schedule", doc="growth steps at given epochs (staged training)", settings=ScheduleConfig
)
class Scheduled(PolicyBase):
    """Runs ``config.schedule``'s steps after their epochs, in order."""

    def __init__(self, config: ScheduleConfig, graph: Graph) -> None:
        self.steps = list(config.schedule)
        last = growth_deadline(config)
        for i, step in enumerate(self.steps):
            try:
                get_pass(step.pass_name)
            except GrowError as exc:
                raise GrowError(
                    exc.reason,
                    field=f"growth.schedule[{i}].pass",
                    expected=exc.expected,
                    found=exc.found,
                ) from None
            if step.epoch >= last:
                raise GrowError(
                    "a scheduled step falls in the learning-rate tail",
                    field=f"growth.schedule[{i}].epoch",
                    expected=f"an epoch below {last} (epochs {config.epochs} minus "
                    f"tail_epochs {config.tail_epochs})",
                    found=str(step.epoch),
                )
        self.deadline = last
        self.seen = 0  # epochs observed
        self.next = 0
        self.status: list[str] = ["pending"] * len(self.steps)
        self._stops: list[Stop] = []

    def observe(self, obs: Observation) -> list[GrowthRequest]:
        """The steps scheduled after epoch ``obs.epoch + 1`` (1-based), each once."""
        epoch = obs.epoch
        self.seen = epoch + 1
        out = []
        while self.next < len(self.steps) and self.steps[self.next].epoch <= epoch + 1:
            i = self.next
            step = self.steps[i]
            out.append(
                GrowthRequest(
                    unit=f"schedule[{i}]",
                    pass_name=step.pass_name,
                    args=step.arguments(),
                    reason=f"scheduled after epoch {step.epoch}",
                    hooks=probe_hooks(step.pass_name, step.arguments()),
                )
            )
            self.next += 1
        return out

    def grown(self, request: GrowthRequest, epoch: int, graph: Graph) -> None:
        """Mark the step done."""
        self.status[_index(request)] = f"done after epoch {epoch + 1}"

    def refused(self, request: GrowthRequest, epoch: int, reason: str) -> None:
        """Mark the step refused and report it as a stop (the log shows the reason)."""
        self.status[_index(request)] = f"refused: {reason}"
        self._stops.append(Stop(epoch, request.unit, f"{request.pass_name} refused: {reason}"))

    @property
    def growing(self) -> bool:
        """Until the growth deadline (the tail starts there, as without growth)."""
        return self.seen < self.deadline

    def drain_stops(self) -> list[Stop]:
        """Steps refused since the last call."""
        out, self._stops = self._stops, []
        return out

    def summary(self) -> dict[str, Any]:
        """Per step: the pass, its arguments, the epoch and what became of it."""
        return {
            f"schedule[{i}]": {
                "kind": "schedule",
                "epoch": s.epoch,
                "pass": s.pass_name,
                "args": s.arguments(),
                "status": self.status[i],
            }
            for i, s in enumerate(self.steps)
        }

    def state_dict(self) -> dict[str, Any]:
        """The next step, the epochs seen and every step's status."""
        return {"next": self.next, "seen": self.seen, "status": list(self.status)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output."""
        status = list(state["status"])
        if len(status) != len(self.steps) or not 0 <= int(state["next"]) <= len(self.steps):
            raise ValueError("the schedule's state does not match its steps")
        self.next, self.seen, self.status = int(state["next"]), int(state["seen"]), status


def _index(request: GrowthRequest) -> int:
    return int(request.unit.removeprefix("schedule[").removesuffix("]"))
