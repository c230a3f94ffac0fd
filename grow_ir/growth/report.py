"""Human-readable summaries of a run: the architecture, and one line per growth step."""

from __future__ import annotations

from typing import Any

from grow_ir.growth.actions import StepOutcome
from grow_ir.ir.graph import Graph
from grow_ir.passes.channels import width_of


def architecture(graph: Graph) -> dict[str, Any]:
    """The shape of a network in brief: depth per stage, width per weight layer."""
    widths = {n.name: width_of(n) for n in graph.nodes if n.opdef.facts.width_attr is not None}
    return {
        "stages": {s: r.depth for s, r in graph.stages.items()},
        "widths": widths,
        "nodes": len(graph.nodes),
        "params": graph.num_params(),
    }


def describe_architecture(graph: Graph) -> str:
    """One line: stage depths and the widths of the layers outside stages."""
    arch = architecture(graph)
    stages = ", ".join(f"{s}: {d} block{'s' if d != 1 else ''}" for s, d in arch["stages"].items())
    outside = [
        f"{k}={v}" for k, v in arch["widths"].items() if k.split(".")[0] not in arch["stages"]
    ]
    parts = [p for p in (stages, " ".join(outside)) if p]
    return f"{'; '.join(parts)} ({arch['params']:,} params)"


def adam_outcome(notes: dict[str, Any]) -> str:
    """What AdamInit did: the steps, and whether the probe loss came back to its value
    before the step or the step cap stopped it first."""
    steps = int(notes["adam_steps"])
    if "adam_loss" not in notes:
        return f"{steps} Adam steps: no new parameters"
    loss, target = float(notes["adam_loss"]), float(notes["adam_target_loss"])
    if loss <= target:
        return f"{steps} Adam steps: probe loss {loss:.3f} <= {target:.3f} before the step"
    return (
        f"stopped at its cap of {steps} Adam steps with the probe loss {loss:.3f} still above "
        f"{target:.3f} before the step; training goes on from there"
    )


def growth_line(epoch: int, outcome: StepOutcome) -> str:
    """The one line a growth step prints: what grew, how, the new size, and why."""
    req, res = outcome.request, outcome.result
    init = outcome.args.get("init")
    exact = "preserved" if res.preserved else "not preserved"
    g = res.graph
    # a scheduled step's unit is its place in the schedule; the pass names what it grows
    unit = str(req.args.get("stage") or req.args.get("node") or req.unit)
    if req.pass_name == "insert_block":
        depth = g.stages[unit].depth
        what = f"grew {unit}"
        size = f"{depth} blocks"
        if "adam_steps" in outcome.notes:
            init = f"adam ({adam_outcome(outcome.notes)})"
    elif req.pass_name == "widen":
        what = f"widened {unit}"
        size = f"width {outcome.args.get('width')}"
    else:
        what, size = f"grew {unit}", res.summary
    return (
        f"epoch {epoch}: {what} ({req.pass_name}, init={init}, {exact}) -> {size}, "
        f"{g.num_params():,} params; reason: {req.reason}"
    )
