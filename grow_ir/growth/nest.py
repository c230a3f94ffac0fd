"""NeST (Dai, Yin and Jha, "NeST: A Neural Network Synthesis Tool Based on a
Grow-and-Prune Paradigm", 2019) as a growth policy of the trainer.

NeST grows a seed network with gradient-based rules, then prunes it by magnitude:

- **growth** (``grow_steps`` steps): new units where the loss gradient says they help most
  (``widen(init="gradmax")``: zero fan-in and the fan-out that maximises the gradient, so
  the function is unchanged and the units learn), and the dormant connections with the
  largest ``|∂L/∂w|`` brought back at weight 0 (``grow_connections``, NeST's connection
  growth rule). The first step may first sparsify the layers to a seed density.
- **pruning** (``prune_steps`` steps): magnitude pruning of connections to a density that
  falls linearly to the target (``prune_connections``; masks on the weights, so training
  keeps them at zero), optionally structured channel pruning by l1 at the first step
  (``prune``), and, at the last, removal of every channel that is provably dead (zero
  fan-out or zero fan-in after the connection pruning; exact).

Steps run every ``interval`` epochs, after the epoch's validation; the policy is plain data
between epochs (:meth:`NeST.state_dict`), so a resumed run takes the same steps.
"""

from __future__ import annotations

import math
from typing import Any

from grow_ir.errors import GrowError
from grow_ir.growth.autogrow import unit_width
from grow_ir.growth.config import NestConfig, NestGrowthConfig
from grow_ir.growth.hooks import probe_hooks
from grow_ir.growth.policy import GrowthRequest, Observation, PolicyBase, register_policy
from grow_ir.growth.schedule import growth_deadline
from grow_ir.ir.graph import Graph
from grow_ir.passes.connections import live_params, maskable_ops


@register_policy(
    "nest",
    doc="NeST: grow (GradMax units, gradient-grown connections), then prune",
    settings=NestGrowthConfig,
)
class NeST(PolicyBase):
    """Grow (GradMax units, gradient-grown connections) then prune (magnitude) on a fixed
    schedule; see the module docstring."""

    def __init__(self, config: NestGrowthConfig, graph: Graph) -> None:
        self.config = config
        self.nest: NestConfig = config.nest
        self.deadline = growth_deadline(config)
        ops = maskable_ops()
        for n in self.nest.nodes:
            if n not in graph.node_map or graph.node(n).op not in ops:
                raise GrowError(
                    "NeST grows and prunes linear and conv layers",
                    field="growth.nest.nodes",
                    expected=f"the name of a node of op {' / '.join(ops)}",
                    found=repr(n) if n not in graph.node_map else f"{n} ({graph.node(n).op})",
                )
        self.step = 0
        self.closed = False
        self.widths = {n: unit_width(graph, n) for n in self.nest.nodes}
        self.params = graph.num_params()
        self.live = live_params(graph)
        self.refusals: list[dict[str, Any]] = []

    @property
    def steps(self) -> int:
        """Growth steps plus pruning steps."""
        return self.nest.grow_steps + self.nest.prune_steps

    def observe(self, obs: Observation) -> list[GrowthRequest]:
        """Every ``interval`` epochs, the requests of the next step (growth, then pruning).

        Guarantees: nothing is asked once the next epoch reaches the growth deadline; the
        steps run in order, each once, and the policy closes after the last.
        """
        epoch, graph = obs.epoch, obs.graph
        if self.closed:
            return []
        if epoch + 1 >= self.deadline:
            self.closed = True
            return []
        if (epoch + 1) % self.config.interval:
            return []
        k = self.step
        self.step += 1
        self.closed = self.step >= self.steps
        if k < self.nest.grow_steps:
            return self._grow(k, graph)
        return self._prune(k - self.nest.grow_steps + 1)

    def _grow(self, k: int, graph: Graph) -> list[GrowthRequest]:
        cfg, out = self.nest, []
        why = f"NeST growth step {k + 1} of {cfg.grow_steps}"
        for n in cfg.nodes:
            if k == 0 and cfg.seed_density < 1.0:
                args = {"node": n, "density": cfg.seed_density}
                out.append(GrowthRequest(n, "prune_connections", args, f"{why}: sparse seed"))
            elif k > 0 and cfg.connection_growth > 0:
                args = {"node": n, "fraction": cfg.connection_growth}
                reason = f"{why}: connections of largest |dL/dw|"
                hooks = probe_hooks("grow_connections", args)
                out.append(GrowthRequest(n, "grow_connections", args, reason, hooks))
        for n in cfg.nodes:
            width = min(cfg.max_width, math.ceil(self.widths[n] * cfg.factor))
            if width > self.widths[n]:
                args = {"node": n, "width": width, "init": "gradmax"}
                hooks = probe_hooks("widen", args)
                out.append(GrowthRequest(n, "widen", args, f"{why}: gradient-based units", hooks))
        return out

    def _prune(self, j: int) -> list[GrowthRequest]:
        cfg, out = self.nest, []
        why = f"NeST pruning step {j} of {cfg.prune_steps}"
        if j == 1 and cfg.channels is not None:
            for n in cfg.nodes:
                args = {"node": n, "keep": cfg.channels, "importance": "l1"}
                out.append(GrowthRequest(n, "prune", args, f"{why}: channels by l1"))
        density = 1.0 - (1.0 - cfg.density) * j / cfg.prune_steps
        for n in cfg.nodes:
            args = {"node": n, "density": round(density, 6)}
            out.append(GrowthRequest(n, "prune_connections", args, f"{why}: by magnitude"))
        if j == cfg.prune_steps:
            for n in cfg.nodes:
                args = {"node": n, "drop": "dead"}
                out.append(GrowthRequest(n, "prune", args, f"{why}: dead channels"))
        return out

    def grown(self, request: GrowthRequest, epoch: int, graph: Graph) -> None:
        """Record the widths and sizes after a step ran."""
        self.widths = {n: unit_width(graph, n) for n in self.nest.nodes}
        self.params = graph.num_params()
        self.live = live_params(graph)

    def refused(self, request: GrowthRequest, epoch: int, reason: str) -> None:
        """A refused request (a layer at its width, no dead channel) is recorded; the
        schedule goes on."""
        self.refusals.append(
            {"epoch": epoch + 1, "unit": request.unit, "pass": request.pass_name, "reason": reason}
        )

    @property
    def growing(self) -> bool:
        """True until the last step ran or the growth deadline is reached."""
        return not self.closed

    def summary(self) -> dict[str, Any]:
        """Per layer: its width; and the steps taken, parameters, live (unmasked)
        parameters and refused requests."""
        return {
            **{n: {"kind": "nest", "size": w} for n, w in self.widths.items()},
            "nest": {
                "steps": self.step,
                "params": self.params,
                "live_params": self.live,
                "refused": list(self.refusals),
            },
        }

    def state_dict(self) -> dict[str, Any]:
        """JSON-able state: the step counter, widths, sizes and refusals."""
        return {
            "step": self.step,
            "closed": self.closed,
            "widths": dict(self.widths),
            "params": self.params,
            "live": self.live,
            "refusals": list(self.refusals),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output exactly."""
        self.step = int(state["step"])
        self.closed = bool(state["closed"])
        self.widths = {str(k): int(v) for k, v in state["widths"].items()}
        self.params = int(state["params"])
        self.live = int(state["live"])
        self.refusals = [dict(r) for r in state["refusals"]]
