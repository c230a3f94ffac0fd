"""Property tests of the growth passes: random networks of every op and random sequences
of passes, with every invariant a pass promises checked after every step.

The networks come from :mod:`tests.graphgen` (MLPs, conv nets with pooling and flatten
boundaries, transformer-style nets, stages of block templates; residual adds, concats,
gates, several outputs) with random norm statistics. Each drawn sequence applies one to four
passes among every registered pass (``PASSES``: each has a record in
``tests.graphgen.PASS_RECORDS``, and a test fails for a pass without one). A pass may refuse
(a PassError with its reason): the step is skipped and the input must be unchanged. After a
pass that applies:

- the new graph verifies;
- the input graph is untouched: its spec and (bitwise) its parameters;
- ``preserved`` is what the pass documents for its arguments, a ``reason`` says why not;
- a preserving step keeps every old output within 1e-5 on random probes, and each
  ``same_as`` pair (a forked task equals its base); a fork with a new head keeps every
  old output;
- every new or changed parameter has an Origin whose index map and scales reproduce its
  copied entries from the old tensor;
- save -> load gives back the same graph, parameters bitwise.

A tally of applied and refused steps per pass makes sure most steps apply, so that a pass
refusing everything cannot pass unnoticed; a last test feeds the checks broken results to
show that each one fails when it should.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from grow_ir.errors import PassError
from grow_ir.ir import OPS
from grow_ir.ir.graph import Graph
from grow_ir.ir.verify import verify
from grow_ir.passes import PASSES, Origin, PassResult, output_error
from grow_ir.probes import randomize_norms
from grow_ir.spec import dump_spec, load, load_spec, save
from tests.graphgen import (
    FAMILIES,
    PASS_NAMES,
    PASS_RECORDS,
    TEMPLATES,
    graphs,
    ops_drawn,
    pass_arguments,
    specs,
)

TOL = 1e-5

SETTINGS = settings(
    max_examples=100,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

SameGraph = Callable[..., None]


# ---- what each pass documents -----------------------------------------------------------


def test_every_pass_has_a_record() -> None:
    """A pass registered without a record (arguments, documented preservation, reason)
    cannot be left out of the property tests."""
    assert set(PASS_RECORDS) == set(PASSES), f"no record: {sorted(set(PASSES) - set(PASS_RECORDS))}"


# ---- checks -----------------------------------------------------------------------------


@dataclass
class Snapshot:
    """A graph's spec and a copy of its tensors, taken before a pass runs."""

    spec: dict[str, Any]
    params: dict[str, torch.Tensor]

    @classmethod
    def of(cls, graph: Graph) -> Snapshot:
        """Snapshot ``graph``."""
        return cls(dump_spec(graph), {k: v.clone() for k, v in graph.params.items()})

    def check(self, graph: Graph, what: str) -> None:
        """Assert ``graph`` still has the spec and bitwise the parameters snapshotted."""
        assert dump_spec(graph) == self.spec, f"{what} changed its input graph's structure"
        assert set(graph.params) == set(self.params), f"{what} changed its input's parameters"
        for k, v in self.params.items():
            t = graph.params[k]
            assert t.dtype == v.dtype and torch.equal(t, v), f"{what} changed input tensor {k}"


def check_origin(key: str, new: torch.Tensor, old: Graph, origin: Origin) -> None:
    """Assert ``origin`` maps ``new`` back to its source's entries (index map, scales)."""
    if origin.source is None:
        assert not origin.index and not origin.scale, f"{key}: a fresh tensor with an index map"
        return
    assert origin.source in old.params, f"{key}: origin {origin.source!r} is no old parameter"
    src = old.params[origin.source]
    assert new.dim() == src.dim(), f"{key}: rank differs from its origin {origin.source}"
    expected, kept = src.double(), torch.ones(new.shape, dtype=torch.bool)
    for axis in range(new.dim()):
        index = origin.index.get(axis)
        if index is None:
            assert new.shape[axis] == src.shape[axis], f"{key}: axis {axis} grew without a map"
            continue
        assert len(index) == new.shape[axis], f"{key}: index map of axis {axis} has wrong size"
        assert all(-1 <= i < src.shape[axis] for i in index), f"{key}: index out of range"
        shape = [1] * new.dim()
        shape[axis] = len(index)
        idx = torch.tensor(index)
        expected = expected.index_select(axis, idx.clamp(min=0))
        kept = kept & (idx >= 0).reshape(shape)
        if axis in origin.scale:
            factors = torch.tensor(origin.scale[axis], dtype=torch.float64).reshape(shape)
            expected = expected * factors
    if origin.fresh is not None:
        assert origin.fresh.shape == new.shape, f"{key}: fresh entries of another shape"
        kept = kept & ~origin.fresh
    got = new.double()
    assert torch.allclose(got[kept], expected[kept], rtol=1e-6, atol=1e-7), (
        f"{key}: values differ from what its Origin says they copy"
    )


def check_step(
    before: Graph,
    snap: Snapshot,
    name: str,
    args: Mapping[str, Any],
    result: PassResult,
    directory: Path,
    same_graph: SameGraph,
) -> float:
    """Assert every invariant of one applied pass (see the module docstring); returns the
    measured output error of what must be preserved."""
    new = result.graph
    what = f"{name}({args})"
    verify(new)
    snap.check(before, what)
    assert set(before.outputs) <= set(new.outputs), f"{what} dropped an output"
    record = PASS_RECORDS[name]
    want = record.preserved(before, args)
    assert want is None or result.preserved == want, (
        f"{what}: preserved={result.preserved}, documented {want} ({result.reason!r})"
    )
    if result.preserved:
        assert not result.reason, f"{what}: preserved, yet gives a reason"
    else:
        phrase = record.reason(before, args)
        assert phrase in result.reason, f"{what}: reason {result.reason!r} lacks {phrase!r}"
    if name == "fork_task":
        same = {} if args.get("head") is not None else {args["task"]: args["base"]}
        assert dict(result.same_as) == same, f"{what}: same_as {dict(result.same_as)}"
        assert args["task"] in new.outputs, f"{what}: no output {args['task']!r}"
    err = 0.0
    if result.preserved or name == "fork_task":  # a new head changes no old output
        err = output_error(before, new, result.same_as, batch=3, seed=len(new.nodes))
        assert err <= TOL, f"{what} claims to keep {sorted(new.outputs)} but errs by {err:.3g}"
    for key, t in new.params.items():
        old = before.params.get(key)
        if old is None or old.shape != t.shape or not torch.equal(old, t):
            assert key in result.origins, f"{what}: new or changed {key} has no Origin"
    for key, origin in result.origins.items():
        assert key in new.params, f"{what}: Origin of {key}, which is no parameter"
        if not (name == "widen" and args.get("noise")):  # noise perturbs the copies
            check_origin(key, new.params[key], before, origin)
    same_graph(load(save(new, directory)), new)
    return err


# ---- the property -----------------------------------------------------------------------


@dataclass
class Tally:
    """Counts of applied, refused and non-preserving steps per pass."""

    applied: Counter[str] = field(default_factory=Counter)
    refused: Counter[str] = field(default_factory=Counter)
    changing: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)
    worst: float = 0.0

    def table(self) -> str:
        """One line per pass: applied / refused / applied but not preserving."""
        return "; ".join(
            f"{n}: {self.applied[n]} applied ({self.changing[n]} not preserving), "
            f"{self.refused[n]} refused"
            for n in PASS_NAMES
        )


def run_sequence(
    graph: Graph, data: st.DataObject, tally: Tally, directory: Path, same_graph: SameGraph
) -> Graph:
    """Apply one to four random passes to ``graph``, checking each; returns the result."""
    same_graph(load(save(graph, directory / "start")), graph)
    for step in range(data.draw(st.integers(1, 4), label="steps")):
        options = {name: pass_arguments(graph, name) for name in PASS_NAMES}
        name = data.draw(st.sampled_from([n for n, o in options.items() if o is not None]))
        args = data.draw(options[name], label=name)  # type: ignore[arg-type]
        snap = Snapshot.of(graph)
        try:
            result = PASSES[name].run(graph, **args)
        except PassError as exc:
            assert "built an invalid graph" not in exc.reason, f"{name}({args}): {exc}"
            tally.refused[name] += 1
            tally.reasons[exc.reason] += 1
            event(f"{name}: refused")
            snap.check(graph, f"refused {name}")
            continue
        tally.applied[name] += 1
        tally.changing[name] += not result.preserved
        event(f"{name}: applied" + ("" if result.preserved else ", not preserving"))
        err = check_step(graph, snap, name, args, result, directory / f"{step}", same_graph)
        tally.worst = max(tally.worst, err)
        graph = result.graph
    return graph


# insert_block applies only to the staged half of ("seq", "staged"): more examples there
# give it about as many steps as the other passes get. Noisy net2net widenings (the one way
# widen does not preserve) come out rarely (3 of 104 widenings at 150 examples, none of 75
# at 100, after the generator began drawing embedding scales): fewer examples miss them.
EXAMPLES = {("mlp", "cnn", "net"): 150, ("seq", "staged"): 150}


@pytest.mark.parametrize("families", list(EXAMPLES), ids="-".join)
def test_random_pass_sequences_keep_their_promises(
    families: tuple[str, ...], same_graph: SameGraph
) -> None:
    tally = Tally()

    @settings(SETTINGS, max_examples=EXAMPLES[families])
    @given(graph=graphs(families), data=st.data())
    def run(graph: Graph, data: st.DataObject) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            run_sequence(graph, data, tally, Path(tmp), same_graph)

    run()
    applied, refused = sum(tally.applied.values()), sum(tally.refused.values())
    assert applied >= 4 * refused, f"too many refusals: {tally.table()}"
    expected = [n for n in PASS_NAMES if n != "insert_block" or "staged" in families]
    for name in expected:
        assert tally.applied[name] >= 10, f"{name} rarely applies: {tally.table()}"
        if PASS_RECORDS[name].both_claims:  # both claims of the pass were checked
            assert tally.applied[name] > tally.changing[name] > 0, f"{name}: {tally.table()}"
    print(f"\n{'-'.join(families)}: {tally.table()}; worst error {tally.worst:.2g}")
    for reason, count in tally.reasons.most_common(4):
        print(f"  refused {count}x: {reason[:150]}")


def test_graph_families_cover_every_op() -> None:
    """Every family's specs load (staged ones with stages), and together the families draw
    every op (``net`` draws any op of the registry: it is drawn until every op was)."""
    seen: set[str] = set()
    families: Counter[str] = Counter()

    @settings(max_examples=250, deadline=None, derandomize=True, database=None)
    @given(spec=specs())
    def collect(spec: dict[str, Any]) -> None:
        graph = load_spec(spec)
        families[spec["name"]] += 1
        seen.update(n.op for n in graph.nodes)
        assert graph.stages or spec["name"] != "staged"

    collect()
    seen |= ops_drawn(("net",), max_examples=1500)
    assert seen == set(OPS), f"never drawn: {sorted(set(OPS) - seen)}"
    assert set(families) == set(FAMILIES)


# ---- the checks themselves fail on broken passes ----------------------------------------


def _small_cnn() -> Graph:
    """stem conv, bn, relu -> a stage of one basic block -> pool -> fc, relu -> head."""
    spec = {
        "version": 1,
        "name": "small",
        "seed": 1,
        "inputs": {"x": {"shape": ["batch", 2, 5, 5]}},
        "blocks": {"basic": TEMPLATES["basic"][1]},
        "nodes": [
            {"name": "stem", "op": "conv2d", "out_channels": 3, "kernel_size": 3, "padding": 1},
            {"name": "stem_bn", "op": "batchnorm"},
            {"name": "stem_act", "op": "relu"},
            {"name": "s1", "stage": "basic", "depth": 1, "with": {"width": 3}},
            {"name": "pool", "op": "global_avgpool"},
            {"name": "fc", "op": "linear", "out_features": 4},
            {"name": "act", "op": "relu"},
            {"name": "head", "op": "linear", "out_features": 2},
        ],
        "outputs": {"y": "head"},
    }
    return randomize_norms(load_spec(spec), seed=3)


def _scaled(result: PassResult, key: str, factor: float) -> PassResult:
    """``result`` with parameter ``key`` of its graph multiplied by ``factor``."""
    params = {**result.graph.params, key: result.graph.params[key] * factor}
    return dataclasses.replace(result, graph=result.graph.replace(params=params))


def _mutate_input(graph: Graph, result: PassResult) -> PassResult:
    """A pass that (wrongly) scales a tensor of its input graph in place."""
    graph.params["stem.weight"].mul_(2.0)
    return result


Breakage = tuple[str, dict[str, Any], Callable[[Graph, PassResult], PassResult], str]

BREAKAGES: dict[str, Breakage] = {
    "function changed": (
        "widen",
        {"node": "stem", "width": 5},
        lambda g, r: _scaled(r, "s1.block0.conv1.weight", 1.5),
        "errs by",
    ),
    "input mutated": ("widen", {"node": "stem", "width": 6}, _mutate_input, "input tensor"),
    "wrong claim": (
        "insert_layer",
        {"after": "act", "op": "linear", "init": "gauss"},
        lambda g, r: dataclasses.replace(r, preserved=True, reason=""),
        "documented",
    ),
    "no reason": (
        "insert_block",
        {"stage": "s1", "init": "uniform"},
        lambda g, r: dataclasses.replace(r, reason=""),
        "lacks",
    ),
    "missing origin": (
        "add_adapter",
        {"node": "fc", "kind": "lora"},
        lambda g, r: dataclasses.replace(r, origins={}),
        "no Origin",
    ),
    "wrong origin": (
        "widen",
        {"node": "fc", "width": 7, "init": "net2net"},
        lambda g, r: dataclasses.replace(  # forgets that net2net split head's columns
            r,
            origins={
                **r.origins,
                "head.weight": dataclasses.replace(r.origins["head.weight"], scale={}),
            },
        ),
        "differ from what its Origin",
    ),
    "fork differs from base": (
        "fork_task",
        {"task": "t", "base": "y", "new": ["head"]},
        lambda g, r: _scaled(r, "t.head.bias", 0.0),
        "errs by",
    ),
}
"""Broken results: the pass, its arguments, how the result is broken, and the message."""


@pytest.mark.parametrize("case", list(BREAKAGES))
def test_checks_catch_broken_passes(case: str, same_graph: SameGraph, tmp_path: Path) -> None:
    name, args, breaks, message = BREAKAGES[case]
    graph = _small_cnn()
    snap = Snapshot.of(graph)
    result = PASSES[name].run(graph, **args)
    check_step(graph, snap, name, args, result, tmp_path / "ok", same_graph)  # sound
    with pytest.raises(AssertionError, match=message):
        check_step(graph, snap, name, args, breaks(graph, result), tmp_path / "bad", same_graph)
