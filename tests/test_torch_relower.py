"""Re-lowering keyed by what changed (``to_torch(grown, reuse=old)``), against cases made
to break it: a parameter replaced by a same-shaped tensor, nodes renamed or swapped, a
reader added far from a value's definition, a module changed behind the graph's back, a
scope or a submodule replaced; and random pass sequences interleaved with such changes.
Every time the result is bitwise a full rebuild's, and modules built from prototypes are
what their factories build."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from grow_ir import passes
from grow_ir.backends import torch_build, torch_chunks
from grow_ir.backends.torch import MODULES, to_torch, update_params
from grow_ir.errors import PassError
from grow_ir.ir import Graph, Node, TensorType
from grow_ir.passes import PASSES
from grow_ir.probes import random_inputs
from grow_ir.spec import load_spec
from tests.graphgen import PASS_NAMES, graphs, pass_arguments
from tests.test_ops_lowering import single
from tests.test_torch_chunks import assert_bitwise_equal, one_function, resnet
from tests.test_torch_reuse import cnn

f32 = TensorType


def assert_like_fresh(module: nn.Module, graph: Graph) -> None:
    """``module`` equals a fresh lowering of ``graph``: the same code (chunks, sections,
    forward), state_dict (keys in order, values bitwise), trainable flags, train/eval
    modes and gradients (none); and it computes bitwise what fx's one function of a full
    rebuild computes, in eval and train mode."""
    fresh = to_torch(graph)
    assert module.code == fresh.code
    assert list(module.state_dict()) == list(fresh.state_dict())
    for key, value in fresh.state_dict().items():
        assert torch.equal(module.state_dict()[key], value), key
    flags = {k: (p.requires_grad, p.grad) for k, p in fresh.named_parameters()}
    assert {k: (p.requires_grad, p.grad) for k, p in module.named_parameters()} == flags
    modes = {k: m.training for k, m in fresh.named_modules()}
    assert {k: m.training for k, m in module.named_modules()} == modes
    assert_bitwise_equal(module, one_function(graph), graph)


def kept(old: nn.Module, new: nn.Module) -> set[str]:
    """The submodule names whose module ``new`` took over from ``old``."""
    before = dict(old.named_modules())
    return {name for name, m in new.named_modules() if name and before.get(name) is m}


def test_a_parameter_replaced_by_a_same_shaped_tensor_is_rebuilt() -> None:
    """Same nodes, same types, same shapes: only the tensor object differs."""
    graph = cnn()
    old = to_torch(graph)
    key = "stage1.block0.conv1.weight"
    params = {**graph.params, key: torch.randn_like(graph.params[key])}
    params["stem_bn.running_mean"] = graph.params["stem_bn.running_mean"].clone()  # equal values
    changed = graph.replace(params=params)
    new = to_torch(changed, reuse=old)
    assert "stage1.block0.conv1" not in kept(old, new)
    assert "stem_bn" not in kept(old, new)  # another object, even with equal values
    assert "stage1.block0.bn1" in kept(old, new)
    assert torch.equal(new.get_submodule("stage1.block0.conv1").weight, params[key])
    assert_like_fresh(new, changed)


def _renamed(graph: Graph, names: dict[str, str]) -> Graph:
    """``graph`` with nodes renamed (their parameters and readers follow)."""

    def rename(name: str) -> str:
        return names.get(name, name)

    nodes = [
        n.replace(name=rename(n.name), inputs=tuple(map(rename, n.inputs))) for n in graph.nodes
    ]
    params = {}
    for key, value in graph.params.items():
        owner, _, local = key.partition(".")
        params[f"{rename(owner)}.{local}"] = value
    outputs = {out: rename(node) for out, node in graph.outputs.items()}
    return graph.replace(nodes=nodes, params=params, outputs=outputs)


def test_a_renamed_node_gets_a_module_of_its_new_name() -> None:
    graph = cnn()
    old = to_torch(graph)
    renamed = _renamed(graph, {"head": "classifier"})
    new = to_torch(renamed, reuse=old)
    assert "classifier" not in kept(old, new) and "stem" in kept(old, new)
    assert_like_fresh(new, renamed)


def test_two_nodes_of_equal_op_and_types_swapping_names_are_rebuilt() -> None:
    """``h1`` and ``h2`` (equal op, attributes, input types) swap names: each name's
    module would be built the same, but its tensors are now the other node's."""
    graph = cnn()
    head = graph.node("head")
    nodes = [*graph.nodes, Node("h2", head.op, head.attrs, head.inputs)]
    params = dict(graph.params)
    params.update(
        {
            k.replace("head.", "h2."): torch.randn_like(v)
            for k, v in graph.params.items()
            if k.startswith("head.")
        }
    )
    two = graph.replace(nodes=nodes, params=params, outputs={**graph.outputs, "c": "h2"})
    old = to_torch(two)
    swapped = _renamed(two, {"head": "h2", "h2": "head"})
    new = to_torch(swapped, reuse=old)
    assert not {"head", "h2"} & kept(old, new)
    assert "aux" in kept(old, new)
    assert_like_fresh(new, swapped)


def test_a_value_gaining_a_reader_in_a_far_section_is_returned_by_its_section(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A node at the end now reads a value that, before, only its own section read: the
    chunks are the same, but the section defining the value must now return it."""
    monkeypatch.setattr(torch_chunks, "AVERAGE", 2)
    monkeypatch.setattr(torch_chunks, "SECTION", 2)
    graph = resnet(depth=6)
    old = to_torch(graph)
    plan = old.lowering.plan
    assert len(plan.sections) >= 3
    first = plan.sections[0]
    local = [c.live_out for c in first.chunks]
    values = [v for outs in local for v in outs if v not in plan.section_crossing]
    assert values, "the first section keeps some value to itself"
    value = values[0]
    probe = Node("probe", "relu", inputs=(value,))
    grown = graph.replace(nodes=(*graph.nodes, probe), outputs={**graph.outputs, "probe": "probe"})
    new = to_torch(grown, reuse=old)
    section = new.lowering.plan.sections[0]
    assert value in section.live_out and section is not first
    assert section.fns == first.fns  # its chunks were taken over
    assert_like_fresh(new, grown)


def test_changes_behind_the_graphs_back_are_seen() -> None:
    """A tensor's storage swapped through ``.data`` (no version bump), a submodule inside
    a module replaced, a scope replaced: those modules are rebuilt."""
    graph = cnn()
    old = to_torch(graph)
    old.get_submodule("stem").weight.data = torch.zeros_like(graph.params["stem.weight"])
    new = to_torch(graph, reuse=old)
    assert "stem" not in kept(old, new) and "stem_bn" in kept(old, new)
    assert_like_fresh(new, graph)

    old = to_torch(graph)
    old.stage1 = nn.Module()  # the whole scope replaced by hand
    new = to_torch(graph, reuse=old)
    assert not {n for n in kept(old, new) if n.startswith("stage1")}
    assert "head" in kept(old, new)
    assert_like_fresh(new, graph)


def test_a_replaced_submodule_inside_a_module_is_seen() -> None:
    graph = single("attention", f32((2, 5, 8)), num_heads=2)
    old = to_torch(graph)
    old.get_submodule("n").out_proj = nn.Linear(8, 8)
    new = to_torch(graph, reuse=old)
    assert new.get_submodule("n") is not old.get_submodule("n")
    assert_like_fresh(new, graph)
    again = to_torch(graph, reuse=new)
    assert again.get_submodule("n") is new.get_submodule("n")
    assert_like_fresh(again, graph)


def test_shared_scopes_leave_the_earlier_module_as_it_was() -> None:
    """Unchanged scopes are shared with the new module; the earlier module keeps its
    structure and computes exactly what it did, and an earlier module left in eval mode
    gives a new module in train mode."""
    graph = cnn()
    old = to_torch(graph).eval()
    x = random_inputs(graph, batch=4, seed=0)
    with torch.no_grad():
        before = old(**x)
    names = [n for n, _ in old.named_modules()]
    grown = passes.insert_block(graph, stage="stage1")
    new = to_torch(grown, reuse=old)
    assert new.get_submodule("stage1") is not old.get_submodule("stage1")  # it gained a block
    assert new.get_submodule("stage1.block0") is old.get_submodule("stage1.block0")
    assert all(m.training for m in new.modules())
    old.eval()  # (the modules it shares with ``new`` are in train mode now)
    assert [n for n, _ in old.named_modules()] == names
    with torch.no_grad():
        after = old(**x)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert_like_fresh(new.train(), grown)


@pytest.mark.parametrize("node", ["stem", "stage1.block1.conv1"])
def test_a_widen_shares_exactly_the_scopes_holding_only_modules_it_kept(node: str) -> None:
    """Same targets in the same order (a widen): a scope is the earlier module's container
    exactly when every module below it is the earlier module's, and each scope lists its
    names in a fresh lowering's order."""
    graph = resnet(depth=4)
    old = to_torch(graph)
    widened = passes.widen(graph, node=node, width=12)
    new = to_torch(widened, reuse=old)
    before = dict(old.named_modules())
    fresh = dict(to_torch(widened).named_modules())
    for name, module in new.named_modules():
        if not name or module._parameters or module._buffers:
            continue  # the root, or a node's module
        below = [m for n, m in new.named_modules() if n.startswith(name + ".")]
        kept_all = all(any(m is b for b in before.values()) for m in below)
        assert (module is before.get(name)) == kept_all, name
        assert list(module._modules) == list(fresh[name]._modules), name
    assert any(module is before.get(name) for name, module in new.named_modules() if name)
    assert_like_fresh(new, widened)


# ---- random pass sequences, with changes made to break reuse in between ----------------


def _perturb(graph: Graph, module: nn.Module, data: st.DataObject) -> tuple[Graph, nn.Module]:
    """One change that reuse must see (or carry through ``update_params``)."""
    keys = [k for k, v in graph.params.items() if v.is_floating_point()]
    kind = data.draw(st.sampled_from(["none", "param", "in_place", "trained"]), label="perturb")
    if kind == "none" or not keys:
        return graph, module
    key = data.draw(st.sampled_from(keys), label="key")
    if kind == "param":  # a same-shaped tensor in the graph
        return graph.replace(
            params={**graph.params, key: torch.randn_like(graph.params[key])}
        ), module
    with torch.no_grad():
        module.state_dict(keep_vars=True)[key].add_(0.5)  # the module moves away from the graph
    if kind == "trained":  # ... and the graph takes its values back
        graph = update_params(graph, module)
    return graph, module


@pytest.mark.parametrize("average", [2, torch_chunks.AVERAGE])
def test_random_steps_and_changes_relower_to_a_full_rebuild(
    average: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After each random pass, and each random change to the graph's tensors or to the
    module's, the re-lowering has a fresh lowering's code and state and computes bitwise
    what fx's one function of a full rebuild computes."""
    monkeypatch.setattr(torch_chunks, "AVERAGE", average)
    monkeypatch.setattr(torch_chunks, "SECTION", 2)  # several sections on small graphs

    @settings(
        max_examples=30,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(graph=graphs(), data=st.data())
    def run(graph: Graph, data: st.DataObject) -> None:
        module = to_torch(graph)
        for _ in range(data.draw(st.integers(1, 3), label="steps")):
            graph, module = _perturb(graph, module, data)
            options = {name: pass_arguments(graph, name) for name in PASS_NAMES}
            name = data.draw(st.sampled_from([n for n, o in options.items() if o is not None]))
            args: dict[str, Any] = data.draw(options[name], label=name)  # type: ignore[arg-type]
            with contextlib.suppress(PassError):  # the graph as it is
                graph = PASSES[name].run(graph, **args).graph
            module = to_torch(graph, reuse=module)
            assert_like_fresh(module, graph)

    run()


# ---- modules from prototypes -------------------------------------------------------------

MODULE_CASES: dict[str, list[tuple[tuple[TensorType, ...], dict[str, Any]]]] = {
    "linear": [
        ((f32((2, 5)),), {"out_features": 3}),
        ((f32((2, 5)),), {"out_features": 3, "masked": True}),
    ],
    "conv1d": [((f32((2, 3, 7)),), {"out_channels": 4, "kernel_size": 3, "masked": True})],
    "conv2d": [((f32((2, 3, 6, 6)),), {"out_channels": 4, "kernel_size": 3, "padding": 1})],
    "conv_transpose2d": [((f32((2, 3, 5, 5)),), {"out_channels": 2, "kernel_size": 3})],
    "batchnorm": [((f32((2, 3, 4, 4)),), {}), ((f32((4, 3)),), {"affine": False})],
    "layernorm": [((f32((2, 5, 8)),), {})],
    "rmsnorm": [((f32((2, 5, 8)),), {})],
    "embedding": [((TensorType((2, 5), "int64"),), {"num_embeddings": 10, "embedding_dim": 4})],
    "attention": [
        ((f32((2, 5, 8)),), {"num_heads": 2}),
        ((f32((2, 5, 8)),), {"num_heads": 4, "num_kv_heads": 2, "rope_theta": 1e4}),
    ],
    "dropout": [((f32((4, 5)),), {"p": 0.3})],
    "stochastic_depth": [((f32((4, 3)),), {"p": 0.4, "mode": "row"})],
    "mix": [((f32((2, 3)), f32((2, 3))), {})],
    "parameter": [((), {"shape": (1, 2, 4)})],
}
"""A node of every op lowered to a module."""


def _state(module: nn.Module) -> dict[str, Any]:
    """Everything of ``module`` but its tensors: the class and every attribute, by path."""
    out: dict[str, Any] = {}
    for path, sub in module.named_modules():
        out[path] = type(sub)
        for k, v in vars(sub).items():
            if k not in ("_parameters", "_buffers", "_modules"):
                out[f"{path}:{k}"] = v
        params = sub._parameters.items()
        out[f"{path}:slots"] = [(k, type(v), getattr(v, "requires_grad", None)) for k, v in params]
        out[f"{path}:buffers"] = [(k, getattr(v, "dtype", None)) for k, v in sub._buffers.items()]
    return out


def _mutables(module: nn.Module) -> list[Any]:
    return [
        v
        for sub in module.modules()
        for v in vars(sub).values()
        if isinstance(v, dict | list | set)
    ]


def test_every_module_op_has_a_prototype_case() -> None:
    assert set(MODULE_CASES) == set(MODULES)


@pytest.mark.parametrize(
    ("op", "types", "attrs"), [(op, t, a) for op, cases in MODULE_CASES.items() for t, a in cases]
)
def test_a_module_from_a_prototype_is_what_its_factory_builds(
    op: str, types: tuple[TensorType, ...], attrs: dict[str, Any]
) -> None:
    """A copy of the prototype, filled, equals the factory's module after
    ``load_state_dict(assign=True)``: class, attributes, parameters and buffers, outputs;
    and two such modules share no dict, list or set with each other."""
    graph = single(op, *types, **attrs)
    node = graph.node("n")
    reference = MODULES[op](node.attrs, graph.input_types(node))
    state = {k.removeprefix("n."): v.clone() for k, v in graph.params.items()}
    if state:
        reference.load_state_dict(state, strict=True, assign=True)
    made = torch_build.build(graph, node, MODULES[op])
    built, links = made.module, made.links
    again = torch_build.build(graph, node, MODULES[op]).module
    assert _state(built) == _state(reference)
    assert built.state_dict().keys() == reference.state_dict().keys()
    for k, v in reference.state_dict().items():
        assert torch.equal(built.state_dict()[k], v) and built.state_dict()[k].dtype == v.dtype
    assert [lk.name for lk in links] == [f"n.{k}" for k in reference.state_dict()]
    assert all(
        lk.module_tensor.untyped_storage().data_ptr()
        != graph.params[lk.name].untyped_storage().data_ptr()
        and lk.graph_tensor is graph.params[lk.name]
        and lk.table[lk.attr] is lk.module_tensor
        for lk in links
    )
    placed = {(id(t), name, id(child)) for t, name, child in made.parts}
    assert len(made.parts) == len(placed) == len(list(built.modules())) - 1
    assert placed == {
        (id(parent._modules), name, id(child))
        for parent in built.modules()
        for name, child in parent._modules.items()
    }
    ids = {id(v) for v in _mutables(again)}
    assert not [v for v in _mutables(built) if id(v) in ids]
    x = [
        torch.randint(0, 10, t.shape) if t.dtype == "int64" else torch.randn(t.shape) for t in types
    ]
    with torch.no_grad():
        assert torch.equal(built.eval()(*x), reference.eval()(*x))


def _other_types(types: tuple[TensorType, ...]) -> tuple[TensorType, ...]:
    """``types`` with every axis one longer."""
    return tuple(TensorType(tuple(d + 1 for d in t.shape), t.dtype) for t in types)


@pytest.mark.parametrize(
    ("op", "types", "attrs"),
    [
        (op, t, a)
        for op, cases in MODULE_CASES.items()
        for t, a in cases
        if not torch_build.reads_types(MODULES[op])
    ],
)
def test_a_factory_declared_untyped_builds_the_same_module_whatever_its_input_types(
    op: str, types: tuple[TensorType, ...], attrs: dict[str, Any]
) -> None:
    """What lets a node keep its module when only its input types change: the factory
    builds, for no input types and for others, the module it builds for the node's."""
    node = single(op, *types, **attrs).node("n")
    make = MODULES[op]
    built = make(node.attrs, types)
    for other in ((), _other_types(types)):
        again = make(node.attrs, other)
        assert _state(again) == _state(built)
        assert {k: (v.shape, v.dtype) for k, v in again.state_dict().items()} == {
            k: (v.shape, v.dtype) for k, v in built.state_dict().items()
        }


def test_some_module_factories_are_declared_untyped() -> None:
    """The test above checks something: dropout's module reads no types, a conv's does."""
    assert not torch_build.reads_types(MODULES["dropout"])
    assert torch_build.reads_types(MODULES["conv2d"])


def _mlp_with_dropout() -> Graph:
    spec = {
        "version": 1,
        "name": "mlp",
        "seed": 0,
        "inputs": {"x": {"shape": ["batch", 5]}},
        "nodes": [
            {"name": "fc1", "op": "linear", "inputs": ["x"], "out_features": 4},
            {"name": "act", "op": "relu"},
            {"name": "drop", "op": "dropout", "p": 0.5},
            {"name": "depth", "op": "stochastic_depth", "p": 0.3, "mode": "row"},
            {"name": "fc2", "op": "linear", "out_features": 3},
        ],
        "outputs": {"y": "fc2"},
    }
    return load_spec(spec)


def test_a_module_that_reads_no_types_is_kept_across_a_widen() -> None:
    """Widening ``fc1`` changes the types the dropouts read but not their modules: they
    are taken over, while the linears (new parameters) are rebuilt and not shared; the
    result computes bitwise what a full lowering computes, in eval and train mode (the
    same dropout masks)."""
    graph = _mlp_with_dropout()
    old = to_torch(graph)
    grown = passes.widen(graph, node="fc1", width=8)
    assert grown.types["drop"] != graph.types["drop"]
    new = to_torch(grown, reuse=old)
    assert {"drop", "depth"} <= kept(old, new)
    assert not {"fc1", "fc2"} & kept(old, new)
    assert_like_fresh(new, grown)
    # and again from the result (the kept modules' records still match)
    again = passes.widen(grown, node="fc1", width=12)
    newer = to_torch(again, reuse=new)
    assert {"drop", "depth"} <= kept(new, newer)
    assert_like_fresh(newer, again)


def test_a_copy_not_verified_yet_is_checked_against_the_graph_reuse_was_lowered_from() -> None:
    """A graph made without ``replace`` (no record of its parent) is verified by what
    differs from the graph the reused module was lowered from: a valid copy of a pass
    result lowers as a fresh rebuild does, a broken one is refused as the full check
    refuses it, and nothing of the old module changes."""
    import dataclasses

    from grow_ir.errors import VerifyError
    from grow_ir.ir.graph import VERIFIED
    from grow_ir.ir.verify import verify

    graph = resnet(2)
    old = to_torch(graph)
    grown = passes.insert_layer(graph, after="stage1.block0.out", op="conv2d")
    copy = dataclasses.replace(grown)
    assert not copy.__dict__.get(VERIFIED) and copy.base is None
    assert_like_fresh(to_torch(copy, reuse=old), grown)
    key = next(k for k, v in grown.params.items() if v.dim() == 4)
    params = {**grown.params, key: grown.params[key][:, :-1].clone()}
    broken = dataclasses.replace(grown, params=params)
    state = {k: v.clone() for k, v in old.state_dict().items()}
    with pytest.raises(VerifyError) as full:
        verify(dataclasses.replace(broken))
    with pytest.raises(VerifyError) as delta:
        to_torch(broken, reuse=old)
    assert str(delta.value) == str(full.value)
    assert all(torch.equal(v, state[k]) for k, v in old.state_dict().items())
