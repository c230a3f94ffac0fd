"""The pass manager: run a plan of passes all or nothing, with instruments around each.

Instruments carry the cross-cutting checks (verification, numerical preservation, IR dumps)
so that passes stay plain functions.
"""

from __future__ import annotations

import difflib
import inspect
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from grow_ir.errors import CheckFailed, GrowError, PassError
from grow_ir.ir.graph import Graph
from grow_ir.passes.base import PassInfo, PassResult, get_pass
from grow_ir.probes import as_float64, random_inputs


@dataclass
class Step:
    """One plan entry as it ran: the pass, its arguments and its result."""

    name: str
    args: dict[str, Any]
    result: PassResult
    max_error: float | None = None

    def to_json(self) -> dict[str, Any]:
        """Plain data for the history file."""
        return {
            "pass": self.name,
            "args": self.args,
            "summary": self.result.summary,
            "preserved": self.result.preserved,
            "reason": self.result.reason,
            "max_error": self.max_error,
            "params": self.result.graph.num_params(),
            "origins": {k: v.to_json() for k, v in self.result.origins.items()},
        }


@dataclass
class PlanResult:
    """The final graph of a plan and what each step did."""

    graph: Graph
    steps: list[Step] = field(default_factory=list)

    @property
    def preserved(self) -> bool:
        """True when every step preserved the function."""
        return all(s.result.preserved for s in self.steps)


class Instrument:
    """Hooks around each pass of a plan (override what you need)."""

    def before(self, step: int, name: str, graph: Graph, args: dict[str, Any]) -> None:
        """Called before a pass runs."""

    def after(self, step: int, record: Step, before: Graph) -> None:
        """Called after a pass returns a verified graph."""


def output_error(
    old: Graph,
    new: Graph,
    same_as: Mapping[str, str],
    *,
    batch: int = 3,
    seed: int = 0,
    float64: bool = False,
    grown: Mapping[str, tuple[int, int]] | None = None,
) -> float:
    """The largest relative error between matching outputs of two graphs on random probes.

    Both graphs run in eval mode on the same inputs (indices valid for both); each old
    output is compared with the new output of the same name, and each ``same_as`` pair
    likewise; an output in ``grown`` (``{output: (axis, old size)}``) is compared on its
    first ``old size`` entries along ``axis``. The error of a pair is
    ``max|y_new - y_old| / max(1, max|y_old|)``; a non-finite difference is ``inf``.
    ``float64=True`` runs both graphs in float64 (their parameters' stored values, exact
    arithmetic to 1e-16), so that only a change of function is measured, not round-off.
    """
    from grow_ir.backends.torch import to_torch

    pairs = {o: o for o in old.outputs if o in new.outputs}
    pairs.update(same_as)
    inputs = random_inputs(new, batch=batch, seed=seed)
    # the old graph's inputs drawn again within its own index bounds (a grown vocabulary)
    inputs.update(random_inputs(old, batch=batch, seed=seed))
    old_m, new_m = to_torch(old).eval(), to_torch(new).eval()
    if float64:
        old_m, new_m, inputs = old_m.double(), new_m.double(), as_float64(inputs)
    with torch.no_grad():
        y_old = _as_dict(old_m(**{k: inputs[k] for k in old.inputs}), old)
        y_new = _as_dict(new_m(**inputs), new)
    worst = 0.0
    for new_out, old_out in pairs.items():
        a, b = y_new[new_out].double(), y_old[old_out].double()
        if grown and new_out in grown:
            axis, size = grown[new_out]
            a = a.narrow(axis, 0, size) if a.dim() > axis and a.shape[axis] >= size else a
        if a.shape != b.shape:
            return float("inf")
        scale = max(1.0, b.abs().max().item()) if b.numel() else 1.0
        err = (a - b).abs().max().item() / scale if a.numel() else 0.0
        worst = max(worst, err if math.isfinite(err) else math.inf)
    return worst


def _as_dict(y: Any, graph: Graph) -> dict[str, torch.Tensor]:
    return y if isinstance(y, dict) else {next(iter(graph.outputs)): y}


class CheckPreservation(Instrument):
    """Measures each step's output error on random probes (two batch sizes); raises
    CheckFailed when a step that claims preservation exceeds ``tol``."""

    def __init__(self, tol: float = 1e-5) -> None:
        self.tol = tol

    def after(self, step: int, record: Step, before: Graph) -> None:
        def error(float64: bool) -> float:
            graph, same_as, grown = record.result.graph, record.result.same_as, record.result.grown
            return max(
                output_error(
                    before, graph, same_as, batch=b, seed=step, float64=float64, grown=grown
                )
                for b in (1, 4)
            )

        err = record.max_error = error(False)
        if record.result.preserved and not err <= self.tol:
            # Round-off of float32 arithmetic alone can exceed tol on an ill-conditioned
            # graph (a layernorm over 2 channels): a changed function shows in float64 too.
            err64 = error(True)
            if not err64 <= self.tol:
                raise CheckFailed(
                    f"plan step {step} ({record.name}) claims to preserve the function but "
                    "does not",
                    field=f"grow[{step}]",
                    expected=f"max relative error <= {self.tol:g}",
                    found=f"{err64:.3g} in float64 ({err:.3g} in float32)",
                )


class DumpIR(Instrument):
    """Writes the spec of the graph after every step to ``directory/NN_pass.yaml``."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)

    def after(self, step: int, record: Step, before: Graph) -> None:
        import yaml

        from grow_ir.spec import dump_spec

        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"{step:02d}_{record.name}.yaml"
        path.write_text(yaml.safe_dump(dump_spec(record.result.graph), sort_keys=False))


def parse_entry(entry: Any, index: int, file: str | None) -> tuple[PassInfo, dict[str, Any]]:
    """Check one plan entry ``{pass: NAME, ...}`` against the pass's signature."""
    where = f"grow[{index}]"
    if not isinstance(entry, Mapping) or "pass" not in entry:
        raise PassError(
            "a plan entry must be a mapping with a 'pass' key",
            file=file,
            field=where,
            expected="{pass: NAME, ...}",
            found=repr(entry),
        )
    try:
        info = get_pass(entry["pass"])
    except GrowError as exc:
        raise PassError(
            exc.reason, file=file, field=f"{where}.pass", expected=exc.expected, found=exc.found
        ) from None
    args = {k: v for k, v in entry.items() if k != "pass"}
    params = list(info.signature.parameters.values())[1:]  # after the graph
    names = [p.name for p in params]
    for key in args:
        if key not in names:
            near = difflib.get_close_matches(key, names, n=1)
            hint = f" (did you mean '{near[0]}'?)" if near else ""
            raise PassError(
                f"unknown argument of pass '{info.name}'{hint}",
                file=file,
                field=f"{where}.{key}",
                expected=f"one of {', '.join(names)}",
                found=repr(key),
            )
    for p in params:
        if p.default is inspect.Parameter.empty and p.name not in args:
            raise PassError(
                f"pass '{info.name}' needs argument '{p.name}'",
                file=file,
                field=f"{where}.{p.name}",
                expected="a value",
                found="none",
            )
    info.check(args, where=where, file=file)
    return info, args


def at_step(exc: GrowError, index: int, before: Sequence[str], file: str | None) -> GrowError:
    """``exc``, raised while plan step ``index`` ran, placed at ``grow[index]`` (its field
    under it) and naming the steps that ran before it (all undone: plans are all or
    nothing)."""
    if exc.field is not None and exc.field.startswith("grow["):
        return exc.at(file=file)
    where = f"grow[{index}]"
    ran = ", ".join(f"grow[{j}] {name}" for j, name in enumerate(before))
    return exc.replace(
        reason=exc.reason + (f" (after {ran}, undone)" if ran else ""),
        field=f"{where}.{exc.field}" if exc.field else where,
        file=exc.file or file,
    )


def run_plan(
    graph: Graph,
    plan: Sequence[Any],
    *,
    check: bool = False,
    instruments: Iterable[Instrument] = (),
    file: str | None = None,
    tol: float = 1e-5,
) -> PlanResult:
    """Run ``plan`` (a list of ``{pass: NAME, ...}``) on ``graph``, all or nothing.

    Every entry is checked against its pass's signature before any pass runs; each result
    is verified; with ``check=True`` each step's preservation is measured on random probes
    and a step that claims preservation but breaks it raises CheckFailed. On any error the
    input graph is unchanged (graphs are values) and nothing is returned.
    """
    if not isinstance(plan, Sequence) or isinstance(plan, (str, bytes)):
        raise PassError(
            "a plan must be a list of passes",
            file=file,
            field="grow",
            expected="a list of {pass: NAME, ...}",
            found=type(plan).__name__,
        )
    parsed = [parse_entry(e, i, file) for i, e in enumerate(plan)]
    tools = list(instruments) + ([CheckPreservation(tol)] if check else [])
    result = PlanResult(graph)
    current = graph
    for i, (info, args) in enumerate(parsed):
        for t in tools:
            t.before(i, info.name, current, args)
        try:
            res = info.run(current, **args)
        except GrowError as exc:
            raise at_step(exc, i, [s.name for s in result.steps], file) from None
        record = Step(info.name, args, res)
        for t in tools:
            t.after(i, record, current)
        result.steps.append(record)
        current = res.graph
    result.graph = current
    return result


def apply_plan(graph: Graph, plan: Sequence[Any], *, check: bool = False) -> Graph:
    """Apply a plan of passes all or nothing and return the new graph (see run_plan)."""
    return run_plan(graph, plan, check=check).graph
