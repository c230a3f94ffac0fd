"""What a growth policy is: the protocol, what it sees, what it asks for, and the registry.

After every epoch the trainer hands the policy an :class:`Observation` (the epoch, the
training loss, validation metrics, the graph and a handle on the data) and runs the
:class:`GrowthRequest` s it returns. A request names a pass, its arguments, and the
:class:`StepHook` s the step needs around the pass (a probe batch drawn before it, AdamInit's
training after it), so the step itself has no special cases. Policies are registered by
name with :func:`register_policy` (``growth: {policy: NAME}``); a new policy is one module
that registers itself, imported by ``grow_ir/growth/__init__.py``.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from grow_ir.errors import GrowError
from grow_ir.ir.graph import Graph

if TYPE_CHECKING:
    from grow_ir.growth.actions import GrowthContext, TrainState
    from grow_ir.growth.config import GrowthConfig
    from grow_ir.growth.data import Dataset
    from grow_ir.passes.base import PassResult


@dataclass(frozen=True)
class Observation:
    """What a policy sees after an epoch.

    Attributes:
        epoch: the epoch that just ended (0-based).
        train_loss: its mean training loss.
        val_accuracy: accuracy on the validation split.
        metrics: every measured figure by name (``val_accuracy``, ``train_accuracy``...).
        graph: the network as it is now.
        data: the run's data set (policies that measure something themselves read it).
    """

    epoch: int
    train_loss: float
    val_accuracy: float
    graph: Graph
    metrics: Mapping[str, float] = field(default_factory=dict)
    data: Dataset | None = None


class StepHook:
    """Something a growth step needs around its pass (override what you need)."""

    name = "hook"

    def __repr__(self) -> str:
        # the same on every rank: a DDP run compares the ranks' requests as text
        return f"{type(self).__name__}()"

    def before(
        self, ctx: GrowthContext, state: TrainState, request: GrowthRequest, args: dict[str, Any]
    ) -> dict[str, Any]:
        """The pass's arguments, with whatever the hook adds (a probe batch...)."""
        return args

    def after(
        self,
        ctx: GrowthContext,
        old: TrainState,
        new: TrainState,
        result: PassResult,
        seed: int,
    ) -> tuple[PassResult, dict[str, Any]]:
        """The step's result (possibly amended) and notes for the log, after the new module
        (``new.module``, trainable in place) was built."""
        return result, {}


@dataclass(frozen=True)
class GrowthRequest:
    """One growth step a policy asks for: a pass on a unit, why, and its hooks."""

    unit: str
    pass_name: str
    args: dict[str, Any]
    reason: str
    hooks: tuple[StepHook, ...] = ()


@dataclass
class Stop:
    """A unit that stopped growing after an epoch (-1: before training), and why."""

    epoch: int
    unit: str
    reason: str


class Policy(Protocol):
    """A growth policy: decides after each epoch what grows, and keeps JSON-able state so
    that a resumed run decides exactly as the uninterrupted one."""

    def observe(self, obs: Observation) -> list[GrowthRequest]:
        """Record what the epoch measured and return the steps to take."""
        ...

    def grown(self, request: GrowthRequest, epoch: int, graph: Graph) -> None:
        """Record that ``request`` ran after ``epoch`` and produced ``graph``."""
        ...

    def refused(self, request: GrowthRequest, epoch: int, reason: str) -> None:
        """Record that the pass refused ``request`` (the graph is unchanged)."""
        ...

    @property
    def growing(self) -> bool:
        """Whether the policy may still grow the network."""
        ...

    def drain_stops(self) -> list[Stop]:
        """Units that stopped since the last call (for the log)."""
        ...

    def summary(self) -> dict[str, Any]:
        """Per unit: kind, size, steps and why it stopped (for the history)."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """JSON-able state."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output."""
        ...


class PolicyBase:
    """A policy that never grows: a base for policies, which override what they need
    (a policy need not derive from it: :class:`Policy` is the interface)."""

    def observe(self, obs: Observation) -> list[GrowthRequest]:
        """Asks for no step."""
        return []

    def grown(self, request: GrowthRequest, epoch: int, graph: Graph) -> None:
        """Nothing to record."""

    def refused(self, request: GrowthRequest, epoch: int, reason: str) -> None:
        """Nothing to record."""

    @property
    def growing(self) -> bool:
        """False: it never grows."""
        return False

    def drain_stops(self) -> list[Stop]:
        """No unit stopped."""
        return []

    def summary(self) -> dict[str, Any]:
        """No units."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """No state."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Nothing to restore."""


PolicyFactory = Callable[["GrowthConfig", Graph], Policy]


@dataclass(frozen=True)
class PolicyEntry:
    """A registered policy: how to build it from the settings and the graph, the model of
    its settings (its branch of the ``growth:`` union), and its doc."""

    name: str
    make: PolicyFactory
    doc: str
    grows: bool
    settings: type[GrowthConfig]


POLICIES: dict[str, PolicyEntry] = {}
"""Every growth policy, by the name ``growth: {policy: NAME}`` gives."""


def register_policy(
    name: str, *, doc: str, settings: type[GrowthConfig], grows: bool = True
) -> Callable[[Any], Any]:
    """Register the decorated class (or factory ``(config, graph) -> Policy``) as ``name``,
    configured by ``settings`` (a :class:`~grow_ir.growth.config.GrowthConfig` subclass
    whose ``policy`` is ``Literal[name]``); ``grows=False`` for a policy that never grows
    (the trainer then starts the learning-rate tail at once)."""

    def wrap(make: Any) -> Any:
        if name in POLICIES:
            raise ValueError(f"growth policy {name!r} is registered twice")
        if settings.model_fields["policy"].default != name:
            raise ValueError(f"the settings of policy {name!r} must default policy to it")
        POLICIES[name] = PolicyEntry(name, make, doc, grows, settings)
        return make

    return wrap


def policy_entry(name: Any) -> PolicyEntry:
    """The registered policy ``name``; GrowError suggesting the nearest otherwise."""
    if not isinstance(name, str) or name not in POLICIES:
        near = difflib.get_close_matches(str(name), POLICIES, n=1)
        hint = f" (did you mean '{near[0]}'?)" if near else ""
        raise GrowError(
            f"unknown growth policy{hint}",
            field="growth.policy",
            expected=f"one of {', '.join(POLICIES)}",
            found=repr(name),
        )
    return POLICIES[name]


def make_policy(config: GrowthConfig, graph: Graph) -> Policy:
    """The policy ``config.policy`` names, built for ``graph``."""
    return policy_entry(config.policy).make(config, graph)


__all__ = [
    "POLICIES",
    "GrowthRequest",
    "Observation",
    "Policy",
    "PolicyBase",
    "PolicyEntry",
    "StepHook",
    "Stop",
    "make_policy",
    "policy_entry",
    "register_policy",
]
