"""Growth policies: when and where the network grows, from validation accuracy alone.

AutoGrow (Wen et al. 2020) grows the hierarchy network → stages → blocks: each *unit* is a
stage (grown by ``insert_block``) or, with a width policy, a layer (grown by ``widen``).

- Depth growth is ``periodic`` (every ``interval`` epochs) or ``convergent`` (when the
  best validation accuracy of the last ``interval`` epochs beats the best before them,
  since the last growth, by less than ``tau``). With ``growing: round_robin`` one stage
  grows per step, in turn; with ``growing: all`` every growing stage gets a block at each
  step (the reference code's ``--growing-mode all``). Stages stop at their maximum depth.
- Width growth widens each listed layer by ``factor`` (up to ``max_width``) when
  validation accuracy plateaus: the best of the last ``patience`` epochs beats the best
  before them by less than ``tau``, and no growth happened in those epochs.
- Stopping: ``patience`` epochs after a unit grew, if the running maximum of validation
  accuracy (the best of every epoch so far, as the reference code's ``MovingMaximum``)
  rose by less than ``tau`` since the epoch it grew, the unit stops. Units grown in the
  same step are judged on the same gain, so under ``growing: all`` they stop together. A
  unit never grows again before its last growth has been judged.

A policy is plain data between epochs: :meth:`Policy.state_dict` gives JSON that
:meth:`Policy.load_state_dict` restores exactly, so a resumed run decides the same.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from grow_ir.errors import GrowError
from grow_ir.growth.config import AutoGrowConfig, NoGrowthConfig
from grow_ir.growth.hooks import AdamInit, probe_hooks
from grow_ir.growth.policy import GrowthRequest, Observation, PolicyBase, Stop, register_policy
from grow_ir.growth.schedule import growth_deadline
from grow_ir.ir.graph import Graph
from grow_ir.passes.channels import channel_group, is_grouped, width_of


@dataclass
class Unit:
    """A growable part of the network and its growth record."""

    name: str
    kind: str  # "depth" (a stage) or "width" (a layer)
    size: int
    limit: int
    active: bool = True
    pending_epoch: int | None = None
    pending_before: float | None = None
    steps: int = 0
    stop_reason: str = ""


def _epochs(n: int) -> str:
    return "1 epoch" if n == 1 else f"{n} epochs"


def unit_width(graph: Graph, node: str) -> int:
    """The output width of a linear/conv/embedding node (what ``widen`` grows)."""
    n = graph.node(node)
    if n.opdef.facts.width_attr is not None:
        return width_of(n)
    raise GrowError(
        "the width policy can only widen linear, conv and embedding nodes",
        node=node,
        field="growth.widen.nodes",
        expected="a linear, conv1d, conv2d or embedding node",
        found=graph.node(node).op,
    )


def stage_depth(graph: Graph, stage: str) -> int:
    """The number of blocks of ``stage`` (from the spec's stage record)."""
    return graph.stages[stage].depth


@register_policy(
    "autogrow", doc="AutoGrow: stages grow by blocks, layers by width", settings=AutoGrowConfig
)
class AutoGrow:
    """AutoGrow's depth policy with an optional width policy (see the module docstring)."""

    def __init__(self, config: AutoGrowConfig, graph: Graph) -> None:
        self.config = config
        self.deadline = growth_deadline(config)
        self.units: list[Unit] = []
        stages = config.stages if config.stages is not None else list(graph.stages)
        for s in stages:
            if s not in graph.stages:
                raise GrowError(
                    "unknown stage",
                    field="growth.stages",
                    expected=f"one of the spec's stages ({', '.join(graph.stages) or 'none'})",
                    found=repr(s),
                )
            self.units.append(Unit(s, "depth", stage_depth(graph, s), config.depth_limit(s)))
        if config.widen is not None:
            for n in config.widen.nodes:
                if n not in graph.node_map:
                    raise GrowError(
                        "unknown node",
                        field="growth.widen.nodes",
                        expected="the name of a node of the spec",
                        found=repr(n),
                    )
                self.units.append(Unit(n, "width", unit_width(graph, n), config.widen.max_width))
        if not self.units:
            raise GrowError(
                "nothing to grow: the spec has no stages and no width policy",
                field="growth",
                expected="stages (a node entry with 'stage:') or growth.widen.nodes",
                found="neither",
            )
        self.accs: list[float] = []
        self.cursor = 0
        self.last_depth = -1
        self.last_step = -1
        self.closed = False
        self._stops: list[Stop] = []
        for u in self.units:
            self._check_limit(u)

    # ---- decisions ------------------------------------------------------------------

    def observe(self, obs: Observation) -> list[GrowthRequest]:
        """Judge pending growth, then ask for at most one depth step or the width steps.

        Guarantees: nothing is asked once the next epoch reaches the growth deadline
        (``epochs - tail_epochs``) or every unit has stopped; requests name units that are
        active, below their limit and with no growth awaiting judgement.
        """
        epoch = obs.epoch
        self.accs.append(float(obs.val_accuracy))
        if self.closed:
            return []
        self._judge(epoch)
        if epoch + 1 >= self.deadline:
            tail = self.config.tail_epochs
            self._close(epoch, f"growth budget reached (the last {_epochs(tail)} are the tail)")
            return []
        depth = self._depth_requests(epoch)
        if depth:
            return depth
        return self._width_requests(epoch, obs.graph)

    def _judge(self, epoch: int) -> None:
        j, tau = self.config.patience, self.config.tau
        best = max(self.accs[: epoch + 1])
        for u in self.units:
            if u.pending_epoch is None or epoch - u.pending_epoch < j:
                continue
            gain = best - (u.pending_before or 0.0)
            u.pending_epoch, u.pending_before = None, None
            if gain < tau:
                self._stop(
                    epoch,
                    u,
                    f"best val accuracy so far gained {gain:+.2%} < tau {tau:.2%} in "
                    f"{_epochs(j)} after its last growth",
                )

    def _depth_requests(self, epoch: int) -> list[GrowthRequest]:
        stages = [u for u in self.units if u.kind == "depth"]
        if not stages:
            return []
        k = self.config.interval
        if self.config.mode == "periodic":
            if epoch - self.last_depth < k:
                return []
            reason = "periodic, every epoch" if k == 1 else f"periodic, every {_epochs(k)}"
        else:
            window = self.accs[epoch - k + 1 : epoch + 1]
            prior = self.accs[self.last_step + 1 : epoch - k + 1]
            if epoch - self.last_step < k or not prior:
                return []
            gain = max(window) - max(prior)
            if gain >= self.config.tau:
                return []
            reason = (
                f"converged: best val accuracy gained {gain:+.2%} < tau "
                f"{self.config.tau:.2%} in {_epochs(k)}"
            )
        ready = [u for u in stages if u.active and u.pending_epoch is None]
        if self.config.growing == "all":
            return [self._block_request(u, reason) for u in ready]
        for offset in range(len(stages)):
            u = stages[(self.cursor + offset) % len(stages)]
            if u in ready:
                self.cursor = (self.cursor + offset + 1) % len(stages)
                return [self._block_request(u, reason)]
        return []

    def _block_request(self, u: Unit, reason: str) -> GrowthRequest:
        # AdamInit inserts a Gaussian block, then trains it alone (a step hook).
        adam = self.config.init == "adam"
        args = {"stage": u.name, "init": "gauss" if adam else self.config.init}
        return GrowthRequest(
            u.name, "insert_block", args, reason, (AdamInit(self.config.adam_init),) if adam else ()
        )

    def _width_requests(self, epoch: int, graph: Graph) -> list[GrowthRequest]:
        widen = self.config.widen
        if widen is None:
            return []
        j, tau = self.config.patience, self.config.tau
        window = self.accs[epoch - j + 1 : epoch + 1]
        prior = self.accs[: epoch - j + 1]
        if epoch - self.last_step < j or not prior or not window:
            return []
        gain = max(window) - max(prior)
        if gain >= tau:
            return []
        reason = f"plateau: best val accuracy gained {gain:+.2%} < tau {tau:.2%} in {_epochs(j)}"
        out = []
        for u in self.units:
            if u.kind == "width" and u.active and u.pending_epoch is None:
                width = min(widen.max_width, math.ceil(u.size * widen.factor))
                width = _in_whole_parts(graph, u.name, u.size, width, widen.max_width)
                capped = "" if width < widen.max_width else f", capped at max_width {width}"
                args: dict[str, Any] = {"node": u.name, "width": width, "init": widen.init}
                if widen.noise > 0:
                    args["noise"] = widen.noise
                out.extend(self._split_gradmax(graph, u, args, reason + capped))
        return out

    def _split_gradmax(
        self, graph: Graph, u: Unit, args: dict[str, Any], reason: str
    ) -> list[GrowthRequest]:
        """GradMax fills at most as many units per step as a fan-out has entries; the
        rest of the requested width comes in a second step with ``zero`` init (random
        fan-in, zero fan-out: exact too), so the policy grows the factor it asked for."""
        hooks = probe_hooks("widen", args)
        if args["init"] != "gradmax":
            return [GrowthRequest(u.name, "widen", args, reason, hooks)]
        from grow_ir.passes.gradmax import capacity

        try:
            room = capacity(graph, u.name)
        except GrowError:  # a group GradMax refuses: the pass will say why
            return [GrowthRequest(u.name, "widen", args, reason, hooks)]
        if args["width"] - u.size <= room:
            return [GrowthRequest(u.name, "widen", args, reason, hooks)]
        first = {**args, "width": u.size + room}
        rest = {**args, "width": args["width"], "init": "zero"}
        note = f"; GradMax fills {room} units at once, zero init the other "
        note += f"{args['width'] - u.size - room}"
        return [
            GrowthRequest(u.name, "widen", first, reason + note, hooks),
            GrowthRequest(u.name, "widen", rest, reason + note),
        ]

    # ---- bookkeeping ----------------------------------------------------------------

    def grown(self, request: GrowthRequest, epoch: int, graph: Graph) -> None:
        """Record a step that ran: every unit's size (widening a layer may widen another
        unit of its channel group), and the grown unit's growth awaiting judgement
        against the running maximum of validation accuracy at ``epoch``."""
        for other in self.units:
            if other.kind == "depth":
                other.size = stage_depth(graph, other.name)
            else:
                other.size = unit_width(graph, other.name)
        u = self._unit(request.unit)
        u.steps += 1
        u.pending_epoch, u.pending_before = epoch, max(self.accs[: epoch + 1])
        self.last_step = epoch
        if u.kind == "depth":
            self.last_depth = epoch
        self._check_limit(u, epoch)

    def refused(self, request: GrowthRequest, epoch: int, reason: str) -> None:
        """The pass could not grow the unit: it stops growing, with the pass's reason."""
        self._stop(epoch, self._unit(request.unit), f"the pass refused: {reason}")

    def _check_limit(self, u: Unit, epoch: int = -1) -> None:
        """Stop ``u`` at its limit (``epoch`` -1: before training), naming the setting."""
        if u.active and u.size >= u.limit:
            if u.kind == "depth":
                what = f"depth {u.size} reached max_depth {u.limit} (growth.max_depth)"
            else:
                what = f"width {u.size} reached max_width {u.limit} (growth.widen.max_width)"
            self._stop(epoch, u, f"its {what}")

    def _stop(self, epoch: int, u: Unit, reason: str) -> None:
        u.active, u.stop_reason = False, reason
        u.pending_epoch, u.pending_before = None, None
        self._stops.append(Stop(epoch, u.name, reason))

    def _close(self, epoch: int, reason: str) -> None:
        for u in self.units:
            if u.active:
                self._stop(epoch, u, reason)
        self.closed = True

    def _unit(self, name: str) -> Unit:
        return next(u for u in self.units if u.name == name)

    @property
    def growing(self) -> bool:
        """True while some unit is active and the growth deadline is not reached."""
        return not self.closed and any(u.active for u in self.units)

    def drain_stops(self) -> list[Stop]:
        """Units that stopped since the last call."""
        out, self._stops = self._stops, []
        return out

    def summary(self) -> dict[str, Any]:
        """Per unit: kind, final size, growth steps and why it stopped."""
        return {
            u.name: {"kind": u.kind, "size": u.size, "steps": u.steps, "stopped": u.stop_reason}
            for u in self.units
        }

    def state_dict(self) -> dict[str, Any]:
        """JSON-able state: units, accuracies seen, round-robin cursor, last steps."""
        return {
            "units": [asdict(u) for u in self.units],
            "accs": list(self.accs),
            "cursor": self.cursor,
            "last_depth": self.last_depth,
            "last_step": self.last_step,
            "closed": self.closed,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output exactly."""
        self.units = [Unit(**u) for u in state["units"]]
        self.accs = [float(a) for a in state["accs"]]
        self.cursor = int(state["cursor"])
        self.last_depth = int(state["last_depth"])
        self.last_step = int(state["last_step"])
        self.closed = bool(state["closed"])
        self._stops = []


@register_policy("none", doc="train the network as it is", settings=NoGrowthConfig, grows=False)
class NoGrowth(PolicyBase):
    """Trains the network as it is: never grows."""

    def __init__(self, config: NoGrowthConfig | None = None, graph: Graph | None = None) -> None:
        pass


def _in_whole_parts(graph: Graph, node: str, size: int, width: int, cap: int) -> int:
    """``width``, moved to ``size`` plus a multiple of the parts of ``node``'s channel group
    (grouped convs grow every part alike): up, or down where up passes ``cap``; as it is
    where no whole part fits or the group is refused (the pass says why)."""
    if not any(is_grouped(graph, n) for n in graph.nodes):
        return width  # every group is one part: no channel walk on top of the pass's
    try:
        parts = channel_group(graph, node).parts
    except GrowError:
        return width
    extra = -(-(width - size) // parts) * parts
    if size + extra > cap:
        extra -= parts
    return size + extra if extra > 0 else width
