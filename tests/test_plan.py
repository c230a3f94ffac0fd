"""The pass manager: plans run all or nothing, parse errors, instruments and check=True."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from grow_ir import apply_plan, passes
from grow_ir.errors import CheckFailed, PassError
from grow_ir.ir.graph import Graph
from grow_ir.passes import PASSES, DumpIR, Instrument, PassResult, Step, register_pass, run_plan
from grow_ir.probes import randomize_norms
from grow_ir.spec import load_spec

GOOD = {"pass": "insert_layer", "after": "act", "op": "linear", "activation": "relu"}


@pytest.fixture(scope="module")
def net() -> Graph:
    nodes = [
        {"name": "fc", "op": "linear", "inputs": ["x"], "out_features": 6},
        {"name": "bn", "op": "batchnorm"},
        {"name": "act", "op": "relu"},
        {"name": "head", "op": "linear", "out_features": 3},
    ]
    spec = {"version": 1, "inputs": {"x": {"shape": ["batch", 4]}}, "nodes": nodes,
            "outputs": {"y": "head"}}  # fmt: skip
    return randomize_norms(load_spec(spec), seed=1)


@pytest.fixture
def broken() -> Iterator[str]:
    """A pass that doubles the head's weight yet claims to preserve the function."""

    def scale_head(graph: Graph, factor: float = 2.0) -> PassResult:
        params = {**graph.params, "head.weight": graph.params["head.weight"] * factor}
        return PassResult(graph.replace(params=params), True, "scaled the head")

    register_pass("test_broken_scale")(scale_head)
    yield "test_broken_scale"
    del PASSES["test_broken_scale"]


class Recorder(Instrument):
    def __init__(self) -> None:
        self.calls: list[tuple[str, int, str, Graph]] = []

    def before(self, step: int, name: str, graph: Graph, args: dict[str, Any]) -> None:
        self.calls.append(("before", step, name, graph))

    def after(self, step: int, record: Step, before: Graph) -> None:
        self.calls.append(("after", step, record.name, before))


def test_plan_runs_in_order_with_instruments(net: Graph) -> None:
    rec = Recorder()
    plan = [GOOD, {"pass": "add_adapter", "node": "head", "rank": 2}]
    result = run_plan(net, plan, instruments=[rec])
    assert [s.name for s in result.steps] == ["insert_layer", "add_adapter"]
    assert result.preserved
    first = result.steps[0].result.graph
    assert [(c[0], c[1], c[2]) for c in rec.calls] == [
        ("before", 0, "insert_layer"),
        ("after", 0, "insert_layer"),
        ("before", 1, "add_adapter"),
        ("after", 1, "add_adapter"),
    ]
    assert rec.calls[0][3] is net and rec.calls[2][3] is first and rec.calls[3][3] is first
    assert "head_lora_b" in result.graph.node_map and "act_linear" in result.graph.node_map
    assert apply_plan(net, plan).nodes == result.graph.nodes


def test_a_failing_step_changes_nothing(net: Graph) -> None:
    rec = Recorder()
    params = dict(net.params)
    plan = [GOOD, {"pass": "insert_layer", "after": "missing", "op": "linear"}]
    with pytest.raises(PassError, match="insert_layer: no such value") as info:
        run_plan(net, plan, instruments=[rec], file="plan.yaml")
    assert info.value.file == "plan.yaml"
    assert len(rec.calls) == 3  # step 0 ran, step 1 started and failed
    assert "act_linear" not in net.node_map
    assert dict(net.params) == params


def test_entries_are_checked_before_any_pass_runs(net: Graph) -> None:
    rec = Recorder()
    with pytest.raises(PassError, match=r"unknown pass \(did you mean 'insert_layer'\?\)") as info:
        run_plan(net, [GOOD, {"pass": "insert_layr"}], instruments=[rec])
    assert info.value.field == "grow[1].pass"
    assert rec.calls == []


def test_unknown_argument_suggests_the_nearest(net: Graph) -> None:
    entry = {"pass": "insert_layer", "aftr": "act", "op": "linear"}
    with pytest.raises(PassError, match=r"did you mean 'after'\?") as info:
        run_plan(net, [entry])
    assert info.value.field == "grow[0].aftr"


def test_missing_argument(net: Graph) -> None:
    with pytest.raises(PassError, match="pass 'insert_layer' needs argument 'after'") as info:
        run_plan(net, [{"pass": "insert_layer", "op": "linear"}])
    assert info.value.field == "grow[0].after"


def test_entry_that_is_not_a_mapping(net: Graph) -> None:
    with pytest.raises(PassError, match="a plan entry must be a mapping") as info:
        run_plan(net, ["insert_layer"])
    assert info.value.field == "grow[0]"


def test_plan_that_is_not_a_list(net: Graph) -> None:
    with pytest.raises(PassError, match="a plan must be a list of passes"):
        run_plan(net, "insert_layer")  # type: ignore[arg-type]


def test_argument_of_the_wrong_type(net: Graph, broken: str) -> None:
    rec = Recorder()
    with pytest.raises(PassError, match=f"{broken}: bad argument") as info:
        run_plan(net, [GOOD, {"pass": broken, "factor": [2]}], instruments=[rec])
    assert info.value.field == "grow[1].factor"
    assert info.value.expected == "a number" and info.value.found == "a list [2]"
    assert rec.calls == []  # checked before any pass ran
    with pytest.raises(PassError) as info:
        run_plan(net, [{**GOOD, "seed": "seven"}])
    assert info.value.field == "grow[0].seed" and info.value.found == "'seven' (a string)"


@pytest.mark.parametrize(
    ("entry", "field", "expected", "found"),
    [
        ({"pass": "widen", "node": ["fc"], "width": 9}, "node", "a node name", "a list ['fc']"),
        ({"pass": "widen", "node": "fc", "width": 9.0}, "width", "an integer", "9.0"),
        ({"pass": "widen", "node": "fc", "width": "9"}, "width", "an integer", "'9' (a string)"),
        ({**GOOD, "residual": "yes"}, "residual", "true or false", "'yes' (a string)"),
        ({**GOOD, "residual": 1}, "residual", "true or false", "1"),
        ({**GOOD, "seed": 2**64}, "seed", "at most 18446744073709551615", "18446744073709551616"),
        ({**GOOD, "seed": True}, "seed", "an integer seed", "true"),
        ({**GOOD, "activation": 3}, "activation", "a name or null", "3"),
        ({**GOOD, "kernel_size": [3]}, "kernel_size", "an integer or null", "a list [3]"),
        (
            {"pass": "add_adapter", "node": "fc", "rank": "4"},
            "rank",
            "an integer",
            "'4' (a string)",
        ),
        ({"pass": "fork_task", "task": 1, "base": "y"}, "task", "an output (task) name", "1"),
    ],
)
def test_arguments_are_typed(
    net: Graph, entry: dict, field: str, expected: str, found: str
) -> None:
    with pytest.raises(PassError) as info:
        run_plan(net, [GOOD, entry], file="plan.yaml")
    err = info.value
    assert err.file == "plan.yaml" and err.field == f"grow[1].{field}"
    assert expected in err.expected and err.found == found
    assert f"{entry['pass']}: bad argument" in err.message


def test_a_pass_named_by_a_list_is_refused(net: Graph) -> None:
    with pytest.raises(PassError, match="a pass is named by a string") as info:
        run_plan(net, [{"pass": ["widen"], "node": "fc"}])
    assert info.value.field == "grow[0].pass" and info.value.found == "a list ['widen']"


def test_python_calls_are_typed_too(net: Graph) -> None:
    with pytest.raises(PassError, match="widen: bad argument") as info:
        passes.widen(net, node=["fc"], width=9)
    assert info.value.field == "node" and info.value.expected == "a node name"


def test_a_pass_bug_is_not_turned_into_a_user_error(net: Graph) -> None:
    def buggy(graph: Graph, factor: float = 2.0) -> PassResult:
        return len(factor)  # type: ignore[arg-type,return-value]  # a TypeError: a bug

    register_pass("test_buggy")(buggy)
    try:
        with pytest.raises(TypeError):
            run_plan(net, [{"pass": "test_buggy"}])
    finally:
        del PASSES["test_buggy"]


def test_a_pass_needs_type_hints() -> None:
    def untyped(graph: Graph, factor=2.0) -> PassResult:
        raise AssertionError

    with pytest.raises(TypeError, match="argument 'factor' has no type hint"):
        register_pass("test_untyped")(untyped)
    assert "test_untyped" not in PASSES


def test_an_error_in_a_step_names_it_and_the_steps_before(net: Graph) -> None:
    plan = [
        GOOD,
        {"pass": "add_adapter", "node": "fc", "kind": "serial"},
        {"pass": "widen", "node": "fc", "width": 2},
    ]
    with pytest.raises(PassError) as info:
        run_plan(net, plan, file="plan.yaml")
    err = info.value
    assert err.field == "grow[2].width"
    assert "after grow[0] insert_layer, grow[1] add_adapter" in err.message


def test_check_catches_a_pass_that_lies(net: Graph, broken: str) -> None:
    plan = [GOOD, {"pass": broken}]
    assert run_plan(net, plan).graph is not None  # unchecked, the lie goes unnoticed
    with pytest.raises(CheckFailed, match=r"plan step 1 \(test_broken_scale\) claims") as info:
        run_plan(net, plan, check=True, file="plan.yaml")
    assert info.value.field == "grow[1]"
    assert float(info.value.found.split()[0]) > 1e-5
    assert run_plan(net, [{"pass": broken, "factor": 1.0}], check=True).steps[0].max_error == 0


def test_check_measures_honest_steps(net: Graph) -> None:
    plan = [GOOD, {"pass": "insert_layer", "after": "fc", "op": "linear", "init": "gauss"}]
    result = run_plan(net, plan, check=True)
    exact, changed = result.steps
    assert exact.result.preserved and exact.max_error is not None and exact.max_error <= 1e-5
    assert not changed.result.preserved and changed.max_error > 1e-3
    assert not result.preserved


def test_check_compares_a_fork_with_its_base(net: Graph) -> None:
    plan = [{"pass": "fork_task", "task": "t2", "base": "y", "new": ["bn"], "adapt": ["fc"]}]
    step = run_plan(net, plan, check=True).steps[0]
    assert step.result.same_as == {"t2": "y"} and step.max_error <= 1e-5


def test_history_is_plain_json(net: Graph) -> None:
    result = run_plan(net, [GOOD], check=True)
    data = json.loads(json.dumps([s.to_json() for s in result.steps]))
    assert data[0]["pass"] == "insert_layer"
    assert data[0]["args"] == {k: v for k, v in GOOD.items() if k != "pass"}
    assert data[0]["preserved"] is True and data[0]["max_error"] == 0.0
    assert data[0]["origins"]["act_linear.weight"]["source"] is None
    assert data[0]["params"] == result.graph.num_params()


def test_dump_instrument_writes_each_step(net: Graph, tmp_path: Path) -> None:
    plan = [GOOD, {"pass": "add_adapter", "node": "fc", "kind": "serial"}]
    run_plan(net, plan, instruments=[DumpIR(tmp_path)])
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["00_insert_layer.yaml", "01_add_adapter.yaml"]
    assert load_spec(tmp_path / files[1]).node("fc_adapted").op == "add"


def test_pass_functions_and_run_agree(net: Graph) -> None:
    result = passes.insert_layer.run(net, **{k: v for k, v in GOOD.items() if k != "pass"})
    graph = passes.insert_layer(net, **{k: v for k, v in GOOD.items() if k != "pass"})
    assert graph.nodes == result.graph.nodes
    assert all(torch.equal(graph.params[k], v) for k, v in result.graph.params.items())
