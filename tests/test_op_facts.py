"""Every op declares every fact (no defaults), and every fact it claims holds numerically on
the lowered op, for every attribute variant of tests/test_onnx_ops.py's CASES (which cover
every op)."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import torch

from grow_ir.backends.torch import to_torch
from grow_ir.ir import OPS, Graph, Node, TensorType, initialize, verify
from grow_ir.ir.ops import OpDef
from grow_ir.ir.ops.facts import No, OpFacts
from grow_ir.passes import add_adapter
from grow_ir.passes.adapter import KINDS, auto_kind
from grow_ir.passes.initializers import init_layer
from grow_ir.probes import randomize_norms
from tests.test_onnx_ops import CASES

VARIANTS = [
    (name, tuple(inputs.values()) if len(inputs) > 1 else (inputs["x"],) * arity, op, attrs)
    for name, inputs, op, attrs, arity in CASES
]
"""``(name, input types, op, attrs)``: independent inputs (broadcast operands keep their
own types)."""


def one_op(ts: tuple[TensorType, ...], op: str, attrs: dict[str, Any], seed: int = 0) -> Graph:
    """``op`` reading independent inputs of types ``ts``, random parameters."""
    inputs = {f"x{i}": t for i, t in enumerate(ts)}
    graph = Graph(inputs, [Node("n", op, attrs, tuple(inputs))], {"y": "n"}, name=op)
    graph = randomize_norms(initialize(graph, seed=seed), seed=seed + 1)
    gen = torch.Generator().manual_seed(seed + 2)
    params = {
        k: torch.randn(v.shape, generator=gen) if k.endswith(".alpha") else v
        for k, v in graph.params.items()
    }
    return verify(graph.replace(params=params))


def run(graph: Graph, xs: list[torch.Tensor], train: bool = False) -> torch.Tensor:
    module = to_torch(graph).train(train)
    torch.manual_seed(0)
    return module(*xs)


def draws(ts: tuple[TensorType, ...], seed: int, how: str = "randn") -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for t in ts:
        shape = tuple(d if isinstance(d, int) else {"batch": 3}.get(d, 4) for d in t.shape)
        if not t.is_float:
            out.append(torch.randint(0, 5, shape, generator=gen))
            continue
        x = torch.randn(shape, generator=gen) * 3
        out.append({"randn": x, "abs": x.abs(), "zero": torch.zeros(shape)}[how])
    return out


def test_no_fact_has_a_default() -> None:
    for f in dataclasses.fields(OpFacts):
        assert f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    facts = next(f for f in dataclasses.fields(OpDef) if f.name == "facts")
    assert facts.default is dataclasses.MISSING


def test_every_op_declares_its_facts_and_has_a_variant() -> None:
    for name, op in OPS.items():
        assert isinstance(op.facts, OpFacts), name
    assert {v[2] for v in VARIANTS} == set(OPS)


def test_an_op_without_facts_cannot_be_defined() -> None:
    relu = OPS["relu"]
    with pytest.raises(TypeError):
        OpDef(name="relu2", attrs=relu.attrs, infer=relu.infer, doc="x")  # type: ignore[call-arg]


@pytest.mark.parametrize(
    ("ts", "op", "attrs"), [v[1:] for v in VARIANTS], ids=[v[0] for v in VARIANTS]
)
def test_claimed_facts_hold(ts: tuple[TensorType, ...], op: str, attrs: dict) -> None:
    facts = OPS[op].facts
    graph = one_op(ts, op, attrs)
    out_type = graph.types["n"]
    if any(not t.is_float for t in ts) and OPS[op].channels.value == "source":
        assert facts.index_bound is not None and facts.index_bound in OPS[op].attrs.model_fields
        return
    assert facts.index_bound is None
    if not out_type.is_float:  # an integer value made from the input's shape (positions)
        _check_integer_output(graph, ts, facts)
        return
    with torch.no_grad():
        zero = run(graph, draws(ts, 0, "zero"))
        if facts.zero_to_zero:
            assert torch.equal(zero, torch.zeros_like(zero)), "f(0) != 0"
        for seed in range(3):
            x = draws(ts, seed)
            y = run(graph, x)
            if facts.nonnegative:
                assert (y >= 0).all(), "negative output"
            if facts.eval_identity:
                assert torch.equal(y, x[0])
            if facts.sums:
                assert torch.allclose(y, sum(x))
            pos = draws(ts, seed, "abs")
            y_pos = run(graph, pos)
            if facts.sign_keeping:
                assert (y_pos >= 0).all(), "a non-negative input gave a negative output"
            if facts.identity_on_nonnegative:
                assert torch.equal(y_pos, pos[0])
    if facts.fresh_zero_to_zero:
        fresh = initialize(graph.replace(params={}), seed=5)
        no_bias = {
            k: torch.zeros_like(v) if k.endswith("bias") else v for k, v in fresh.params.items()
        }
        with torch.no_grad():
            y = run(fresh.replace(params=no_bias), draws(ts, 0, "zero"))
        assert torch.equal(y, torch.zeros_like(y)), "a fresh zero channel became nonzero"
    _check_gradient(graph, ts, facts)
    if facts.normalises:
        axis = OPS[op].channel_axis(graph.node("n").attrs, list(ts))
        x = draws(ts, 1)
        bumped = [x[0].clone()]
        bumped[0].select(axis, 0).add_(1.0)
        with torch.no_grad():
            moved = run(graph, bumped) - run(graph, x)
        assert moved.select(axis, 1).abs().max() > 1e-3, "no dependence along the axis"
    if facts.width_attr is not None:
        node = graph.node("n")
        assert facts.width_attr in OPS[op].attrs.model_fields
        assert getattr(node.attrs, facts.width_attr) in out_type.shape
    zero_keys = {f"n.{k}" for k in facts.zeroable} & set(graph.params)
    if zero_keys:  # a norm may have no affine terms
        zeroed = {k: torch.zeros_like(v) if k in zero_keys else v for k, v in graph.params.items()}
        with torch.no_grad():
            y = run(graph.replace(params=zeroed), draws(ts, 2))
        assert torch.equal(y, torch.zeros_like(y))
    if facts.square is not None:
        _check_square(ts[0], op, facts)
    else:
        assert isinstance(facts.identity, No)
    if facts.adapters:
        assert set(facts.adapters) <= set(KINDS)
        kind = auto_kind(graph, "n")
        assert kind in facts.adapters
        assert add_adapter.run(graph, node="n", kind=kind, rank=2).preserved


def _check_integer_output(graph: Graph, ts: tuple[TensorType, ...], facts: OpFacts) -> None:
    """An integer output claims no gradient and none of the facts about float values it
    cannot keep; its sign facts are checked."""
    assert not facts.gradient_at_zero and not facts.zero_to_zero
    for how in ("randn", "zero"):
        y = run(graph, draws(ts, 0, how))
        if facts.nonnegative:
            assert (y >= 0).all(), "negative output"


def _check_gradient(graph: Graph, ts: tuple[TensorType, ...], facts: OpFacts) -> None:
    """Gradient reaching inputs that are 0 everywhere: nonzero as claimed, zero when the
    op says it is (and nonzero again with its fix, which keeps the output). An op whose
    value at 0 is undefined (0 / 0) claims nothing there; an op without inputs has none."""

    def grad(g: Graph) -> tuple[torch.Tensor, torch.Tensor]:
        xs = [x.requires_grad_(True) for x in draws(ts, 0, "zero")]
        y = run(g, xs, train=False)
        r = torch.randn(y.shape, generator=torch.Generator().manual_seed(9))
        (y * r).sum().backward()
        return y.detach(), sum(
            (x.grad.abs().sum() for x in xs if x.grad is not None), torch.zeros(())
        )

    y, g = grad(graph)
    if not torch.isfinite(y).all():
        assert not facts.zero_to_zero and not facts.gradient_at_zero
        return
    if facts.gradient_at_zero:
        assert g > 0, "no gradient reaches a zero input"
        return
    assert g == 0, "the op says no gradient reaches a zero input, but one does"
    if facts.gradient_fix is not None:
        node = graph.node("n")
        fixed = node.replace(attrs=node.attrs.model_copy(update=dict(facts.gradient_fix)))
        y2, g2 = grad(graph.replace(nodes=(fixed,)))
        assert torch.equal(y, y2) and g2 > 0


def _check_square(t: TensorType, op: str, facts: OpFacts) -> None:
    """A square instance keeps the type; its identity initialisation is the identity."""
    assert facts.square is not None
    kernel = 3 if "kernel_size" in OPS[op].attrs.model_fields else 0
    node = Node("n", op, facts.square(t, kernel), ("x0",))
    graph = initialize(Graph({"x0": t}, [node], {"y": "n"}), seed=0)
    assert graph.types["n"] == t
    if isinstance(facts.identity, No):
        assert facts.identity.why
        return
    params = init_layer(graph.node("n"), [t], "identity", torch.Generator().manual_seed(0))
    graph = graph.replace(params={f"n.{k}": v for k, v in params.items()})
    x = draws((t,), 3)
    with torch.no_grad():
        y = run(graph, x)
    assert torch.allclose(y, x[0], atol=1e-5)
