"""Parity on whole networks: random graphs of every op, graphs grown by every registered
pass (fixed cases and random pass sequences), and every example spec."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from grow_ir.backends.onnx import to_onnx
from grow_ir.backends.onnx_check import check_model, check_parity
from grow_ir.errors import GrowError
from grow_ir.ir import OPS, Graph, Node, TensorType, initialize, verify
from grow_ir.passes import PASSES, Probe, apply_plan, prunable
from grow_ir.probes import randomize_norms
from grow_ir.spec import load_spec
from tests import graphgen

EXAMPLES = Path(__file__).resolve().parent.parent / "specs" / "examples"
ACTIVATIONS = (
    "relu",
    "gelu",
    "silu",
    "tanh",
    "sigmoid",
    "identity",
    "dropout",
    "stochastic_depth",
    "hardtanh",
    "relu6",
    "hardswish",
    "hardsigmoid",
    "leaky_relu",
    "elu",
)
SETTINGS = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    derandomize=True,
)


def assert_exports(graph: Graph, task: str | None = None) -> None:
    """The checker passes and onnxruntime matches torch within 1e-5 at two sizes."""
    model = to_onnx(graph, task=task)
    check_model(model)
    assert check_parity(graph, model, task=task) <= 1e-5


# ---- random graphs --------------------------------------------------------------------


def op_choices(t: TensorType) -> list[str]:
    """Ops that may apply to a float value of type ``t`` (inference has the last word)."""
    joins = ["add", "mul", "mix", "concat", "softmax", "log_softmax", *ACTIVATIONS]
    if t.rank == 4:
        return [
            *joins,
            "conv2d",
            "batchnorm",
            "maxpool2d",
            "avgpool2d",
            "global_avgpool",
            "adaptive_avgpool2d",
            "upsample",
            "conv_transpose2d",
            "flatten",
        ]
    if t.rank == 3 and isinstance(t.shape[1], int):  # [batch, C, L]
        return [
            *joins,
            "conv1d",
            "batchnorm",
            "global_avgpool",
            "flatten",
            "linear",
            "layernorm",
            "rmsnorm",
        ]
    if t.rank == 3:  # [batch, seq, E]
        return [*joins, "linear", "layernorm", "rmsnorm", "attention"]
    return [*joins, "linear", "batchnorm", "layernorm", "rmsnorm"]


def attr_strategy(op: str, t: TensorType) -> st.SearchStrategy[dict[str, Any]]:
    """Attributes for ``op`` on an input of type ``t``."""
    small = st.integers(1, 5)
    b = st.booleans()
    if op in ("conv1d", "conv2d"):
        return st.fixed_dictionaries(
            {"out_channels": small, "kernel_size": st.integers(1, 3), "bias": b},
            optional={"stride": st.integers(1, 2), "padding": st.sampled_from([0, 1, "same"])},
        )
    if op in ("maxpool2d", "avgpool2d"):
        extra = {"ceil_mode": b}
        extra["count_include_pad" if op == "avgpool2d" else "dilation"] = (
            b if op == "avgpool2d" else st.integers(1, 2)
        )
        return st.fixed_dictionaries(
            {"kernel_size": st.integers(1, 3), "padding": st.integers(0, 1)},
            optional={"stride": st.integers(1, 2), **extra},
        )
    if op == "conv_transpose2d":
        return st.fixed_dictionaries(
            {"out_channels": small, "kernel_size": st.integers(1, 3), "bias": b},
            optional={"stride": st.integers(1, 2), "padding": st.integers(0, 1)},
        )
    if op == "upsample":
        size = st.tuples(st.integers(1, 9), st.integers(1, 9)).map(list)
        mode = st.sampled_from(["nearest", "bilinear"])
        scale = st.sampled_from([2, 3, [2, 1], [0.5, 1.5]])
        return st.one_of(
            st.fixed_dictionaries({"mode": mode, "scale_factor": scale}),
            st.fixed_dictionaries({"mode": mode, "size": size}),
        )
    if op == "stochastic_depth":
        return st.fixed_dictionaries(
            {"p": st.sampled_from([0.0, 0.5]), "mode": st.sampled_from(["row", "batch"])}
        )
    if op == "adaptive_avgpool2d":  # a size that divides the input, or 1
        sizes = [[o for o in range(1, int(d) + 1) if int(d) % o == 0] for d in t.shape[2:]]
        pair = st.tuples(st.sampled_from(sizes[0]), st.sampled_from(sizes[1]))
        return st.fixed_dictionaries({"output_size": pair.map(list)})
    if op == "linear":
        return st.fixed_dictionaries({"out_features": st.integers(1, 6), "bias": b})
    if op == "attention":
        e = t.shape[-1]
        heads = [h for h in (1, 2, 4) if isinstance(e, int) and e % h == 0]
        return st.sampled_from(heads).flatmap(lambda h: _attention_attrs(int(e), h))
    if op in ("softmax", "log_softmax"):
        return st.fixed_dictionaries({"dim": st.integers(1, t.rank - 1) | st.just(-1)})
    if op == "concat":
        return st.fixed_dictionaries({"dim": st.sampled_from([1, -1])})
    if op == "flatten":
        return st.fixed_dictionaries(
            {"start_dim": st.integers(1, t.rank - 1), "end_dim": st.sampled_from([-1, 2])}
        )
    if op == "batchnorm":
        return st.fixed_dictionaries({"affine": b})
    if op == "layernorm":
        return st.fixed_dictionaries({"elementwise_affine": b, "bias": b})
    if op == "rmsnorm":
        return st.fixed_dictionaries({"elementwise_affine": b}, optional={"eps": st.just(1e-6)})
    if op == "gelu":
        return st.fixed_dictionaries({"approximate": st.sampled_from(["none", "tanh"])})
    if op == "dropout":
        return st.fixed_dictionaries({"p": st.sampled_from([0.0, 0.5])})
    return st.just({})


def _attention_attrs(embed: int, heads: int) -> st.SearchStrategy[dict[str, Any]]:
    """Attention attributes with ``heads`` heads: grouped-query and rotary sometimes."""
    b = st.booleans()
    optional: dict[str, st.SearchStrategy[Any]] = {
        "num_kv_heads": st.sampled_from([k for k in (1, 2, 4) if heads % k == 0])
    }
    if (embed // heads) % 2 == 0:
        optional["rope_theta"] = st.sampled_from([100.0, 10000.0])
    return st.fixed_dictionaries(
        {"num_heads": st.just(heads), "causal": b, "bias": b}, optional=optional
    )


def first_input(draw: st.DrawFn) -> tuple[dict[str, TensorType], list[Node]]:
    """One graph input of a random family, and for tokens the embedding reading it."""
    family = draw(st.sampled_from(["image", "signal", "seq", "tokens", "vector"]))
    c, n = draw(st.integers(1, 4)), draw(st.integers(3, 7))
    if family == "image":
        return {"x": TensorType(("batch", c, n, draw(st.integers(3, 7))))}, []
    if family == "signal":
        return {"x": TensorType(("batch", c, n))}, []
    if family == "vector":
        return {"x": TensorType(("batch", c + 1))}, []
    width = draw(st.sampled_from([4, 6, 8]))
    if family == "seq":
        return {"x": TensorType(("batch", "seq", width))}, []
    embed = Node("embed", "embedding", {"num_embeddings": 7, "embedding_dim": width}, ("x",))
    return {"x": TensorType(("batch", "seq"), "int64")}, [embed]


@st.composite
def random_graphs(draw: st.DrawFn, heads: bool = False, init: bool = True) -> Graph:
    """A small random network: a chain with branches, residual joins and concats, whose
    every dead end is an output (so there are often several). With ``heads``, each dead
    end gets a linear head first (so that growth passes find inner layers to grow). Without
    ``init``, the graph has no parameters (enough to look at its structure)."""
    inputs, nodes = first_input(draw)
    types: dict[str, TensorType] = dict(inputs)
    for node in nodes:
        types[node.name] = node.opdef.infer(node.attrs, [types[i] for i in node.inputs])
    for i in range(draw(st.integers(1, 7))):
        pool = [name for name, t in types.items() if t.is_float]
        src = draw(st.sampled_from(pool[-3:] if draw(st.booleans()) else pool))
        t = types[src]
        op = draw(st.sampled_from(op_choices(t)))
        args = [src]
        if op in ("add", "mul", "mix", "concat"):
            same = [name for name in pool if types[name] == t]
            args += draw(st.lists(st.sampled_from(same), min_size=1, max_size=2))
        try:
            node = Node(f"n{i}", op, draw(attr_strategy(op, t)), tuple(args))
            types[node.name] = node.opdef.infer(node.attrs, [types[a] for a in args])
        except GrowError:
            continue
        nodes.append(node)
    if not nodes or nodes[-1].inputs == () or all(t.dtype == "int64" for t in types.values()):
        nodes.append(Node("last", "relu", {}, (next(n for n in types if types[n].is_float),)))
    used = {i for n in nodes for i in n.inputs}
    leaves = [n.name for n in nodes if n.name not in used]
    if heads:
        for leaf in leaves:
            nodes.append(Node(f"hidden_{leaf}", "linear", {"out_features": 4}, (leaf,)))
            nodes.append(Node(f"head_{leaf}", "linear", {"out_features": 3}, (f"hidden_{leaf}",)))
        leaves = [f"head_{leaf}" for leaf in leaves]
    graph = Graph(
        inputs=inputs,
        nodes=nodes,
        outputs={f"out{j}": leaf for j, leaf in enumerate(leaves)},
        name="random",
    )
    if not init:
        return graph
    seed = draw(st.integers(0, 3))
    graph = randomize_norms(initialize(graph, seed=seed), seed=seed)
    gen = torch.Generator().manual_seed(seed)
    params = {  # unequal weights for mix nodes (they start equal)
        k: torch.randn(v.shape, generator=gen) if k.endswith(".alpha") else v
        for k, v in graph.params.items()
    }
    return verify(graph.replace(params=params))


@SETTINGS
@given(graph=random_graphs(), data=st.data())
def test_random_graphs_match_torch(graph: Graph, data: st.DataObject) -> None:
    assert_exports(graph)
    assert_exports(graph, task=data.draw(st.sampled_from(list(graph.outputs))))


def test_random_graphs_reach_every_op() -> None:
    seen: set[str] = set()

    @settings(max_examples=900, deadline=None, derandomize=True, database=None)
    @given(graph=random_graphs(init=False))
    def collect(graph: Graph) -> None:
        seen.update(n.op for n in graph.nodes)

    collect()
    assert seen == set(OPS)


# ---- graphs grown by passes -----------------------------------------------------------


def small_mlp() -> Graph:
    x = TensorType(("batch", 6))
    graph = Graph(
        inputs={"x": x},
        nodes=[
            Node("fc1", "linear", {"out_features": 8}, ("x",)),
            Node("act1", "relu", {}, ("fc1",)),
            Node("fc2", "linear", {"out_features": 8}, ("act1",)),
            Node("act2", "relu", {}, ("fc2",)),
            Node("head", "linear", {"out_features": 3}, ("act2",)),
        ],
        outputs={"y": "head"},
        name="mlp",
    )
    return verify(initialize(graph, seed=0))


def small_cnn() -> Graph:
    """stem conv -> bn -> relu -> one residual block of stage ``stage1`` -> pool -> head."""
    block = [
        {"name": "conv1", "op": "conv2d", "inputs": ["input"], "out_channels": "$channels",
         "kernel_size": 3, "padding": 1},
        {"name": "bn1", "op": "batchnorm"},
        {"name": "act1", "op": "relu"},
        {"name": "conv2", "op": "conv2d", "out_channels": "$channels", "kernel_size": 3,
         "padding": 1},
        {"name": "sum", "op": "add", "inputs": ["conv2", "input"]},
        {"name": "out", "op": "relu"},
    ]  # fmt: skip
    spec = {
        "version": 1,
        "name": "small_cnn",
        "inputs": {"image": {"shape": ["batch", 2, 5, 5]}},
        "blocks": {"basic": {"nodes": block, "output": "out"}},
        "nodes": [
            {"name": "stem", "op": "conv2d", "out_channels": 4, "kernel_size": 3, "padding": 1},
            {"name": "stem_bn", "op": "batchnorm"},
            {"name": "stem_act", "op": "relu"},
            {"name": "stage1", "stage": "basic", "depth": 1, "with": {"channels": 4}},
            {
                "name": "down",
                "op": "conv2d",
                "out_channels": 6,
                "kernel_size": 3,
                "stride": 2,
                "padding": 1,
            },
            {"name": "pool", "op": "global_avgpool"},
            {"name": "head", "op": "linear", "out_features": 3},
        ],
        "outputs": {"logits": "head"},
    }
    return verify(randomize_norms(load_spec(spec), seed=5))


def small_llama() -> Graph:
    """The Llama-like spec (RMSNorm, grouped-query rotary attention, tied head)."""
    from tests.transformer_specs import llama_like

    return verify(randomize_norms(load_spec(llama_like()), seed=5))


def _mlp_probe() -> Probe:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(8, 6, generator=gen)
    return Probe(
        inputs={"x": x}, targets=torch.randint(0, 3, (8,), generator=gen), loss="cross_entropy"
    )


def small_gpt() -> Graph:
    """The GPT-2-like spec of the transformer growth tests, with random norms."""
    from tests.transformer_specs import gpt2_like

    return verify(randomize_norms(load_spec(gpt2_like()), seed=5))


PASS_CASES: dict[str, list[tuple[Callable[[], Graph], dict[str, Any]]]] = {
    "widen": [
        (small_mlp, {"node": "fc1", "width": 12, "init": "net2net"}),
        (small_gpt, {"node": "wte", "width": 32, "init": "net2net"}),
        (small_gpt, {"node": "wte", "width": 21, "init": "lemon"}),
        (small_mlp, {"node": "fc2", "width": 11, "init": "zero"}),
        (small_cnn, {"node": "stem", "width": 12, "init": "net2net"}),
    ],
    "insert_layer": [
        (small_mlp, {"after": "act1", "op": "linear"}),
        (small_mlp, {"after": "act1", "op": "linear", "activation": "relu"}),
        (small_cnn, {"after": "stem_act", "op": "conv2d"}),
    ],
    "insert_block": [
        (small_cnn, {"stage": "stage1", "init": "zero"}),
        (small_gpt, {"stage": "h", "init": "zero"}),
    ],
    "prune_connections": [
        (small_mlp, {"node": "fc2", "density": 0.4}),
        (small_cnn, {"node": "stem", "density": 0.5}),
    ],
    "grow_connections": [
        (
            lambda: PASSES["prune_connections"].run(small_mlp(), node="fc2", density=0.3).graph,
            {"node": "fc2", "fraction": 0.5, "probe": _mlp_probe()},
        )
    ],
    "prune": [
        (small_mlp, {"node": "fc1", "keep": 5}),
        (small_cnn, {"node": "stem", "keep": 0.5, "importance": "l2"}),
        (small_cnn, {"node": "down", "drop": [0, 4]}),
    ],
    "add_adapter": [
        (small_mlp, {"node": "fc2", "kind": "lora", "rank": 2}),
        (small_cnn, {"node": "down", "kind": "parallel", "rank": 2}),
    ],
    "fork_task": [
        (small_mlp, {"task": "t2", "base": "y", "new": ["head"], "adapt": ["fc2"]}),
        (small_cnn, {"task": "t2", "base": "logits", "adapt": ["down"], "head": 4}),
    ],
    "add_heads": [(small_gpt, {"node": "h.block0.attn", "heads": 3})],
    "prune_heads": [(small_gpt, {"node": "h.block0.attn", "keep": 1})],
    "grow_head_dim": [
        (small_gpt, {"node": "h.block1.attn", "head_dim": 11}),
        (small_llama, {"node": "layers.block0.attn", "head_dim": 8}),
    ],
    "grow_kv_heads": [(small_llama, {"node": "layers.block1.attn", "kv_heads": 4})],
    "grow_vocab": [(small_gpt, {"node": "wte", "size": 30})],
    "stack_blocks": [
        (small_gpt, {"stage": "h", "mode": "stack"}),
        (small_gpt, {"stage": "h", "start": 1, "mode": "interpolate"}),
    ],
}
"""Sensible arguments for every registered pass (extend when a pass is registered)."""


def test_every_registered_pass_has_cases() -> None:
    assert set(PASSES) <= set(PASS_CASES)


@pytest.mark.parametrize(
    ("name", "make", "kwargs"),
    [(name, make, kwargs) for name, cases in PASS_CASES.items() for make, kwargs in cases],
    ids=[f"{name}-{i}" for name, cases in PASS_CASES.items() for i in range(len(cases))],
)
def test_grown_graph_matches_torch(name: str, make: Callable[[], Graph], kwargs: dict) -> None:
    assert name in PASSES, f"pass {name!r} is not registered"
    graph = PASSES[name].run(make(), **kwargs).graph
    assert_exports(graph)
    for task in graph.outputs if len(graph.outputs) > 1 else ():
        assert_exports(graph, task=task)


def layer_ops(t: TensorType) -> list[str]:
    """Ops insert_layer can put after a value of type ``t`` with an identity init."""
    if t.rank == 4:
        return ["conv2d", "batchnorm"]
    if t.rank == 3 and isinstance(t.shape[1], int):
        return ["conv1d", "batchnorm", "linear"]
    return ["linear", "batchnorm"] if t.rank == 2 else ["linear"]


def pass_arguments(graph: Graph, name: str, step: int) -> st.SearchStrategy[dict[str, Any]] | None:
    """Plausible arguments of pass ``name`` on ``graph`` (the pass may still refuse), or
    None when the graph has nothing the pass could apply to."""
    dense = [n.name for n in graph.nodes if n.op in ("linear", "conv1d", "conv2d") and not n.share]
    inner = [d for d in dense if d not in graph.outputs.values()]
    values = [n.name for n in graph.nodes if graph.types[n.name].is_float]
    if name == "widen" and inner:

        def widen_args(node: str) -> st.SearchStrategy[dict[str, Any]]:
            axis = 1 if graph.node(node).op.startswith("conv") else -1
            width = graph.types[node].shape[axis]
            assert isinstance(width, int)
            return st.fixed_dictionaries(
                {
                    "node": st.just(node),
                    "width": st.integers(width + 1, width + 3),
                    "init": st.sampled_from(["net2net", "zero"]),
                }
            )

        return st.sampled_from(inner).flatmap(widen_args)
    if name == "prune" and prunable(graph):
        return st.sampled_from(prunable(graph)).flatmap(
            lambda node: st.fixed_dictionaries(
                {"node": st.just(node), "keep": st.sampled_from([0.25, 0.5, 0.75])}
            )
        )
    if name == "prune_connections" and dense:
        return st.fixed_dictionaries(
            {"node": st.sampled_from(dense), "density": st.sampled_from([0.3, 0.7])}
        )
    if name == "insert_layer" and values:
        return st.sampled_from(values).flatmap(
            lambda after: st.fixed_dictionaries(
                {
                    "after": st.just(after),
                    "op": st.sampled_from(layer_ops(graph.types[after])),
                },
                optional={"activation": st.just("relu"), "residual": st.just(True)},
            )
        )
    if name == "add_adapter" and dense:
        return st.sampled_from(dense).flatmap(
            lambda node: st.fixed_dictionaries(
                {
                    "node": st.just(node),
                    "kind": st.sampled_from(
                        ["lora", "serial"]
                        if graph.node(node).op == "linear"
                        else ["parallel", "serial"]
                    ),
                    "rank": st.integers(1, 3),
                }
            )
        )
    if name == "fork_task":

        def fork_args(base: str) -> st.SearchStrategy[dict[str, Any]]:
            on_path = [
                n.name
                for n in graph.nodes
                if graph.node_params(n) and not n.share and base in graph.output_deps[n.name]
            ]
            picks = st.lists(st.sampled_from(on_path), max_size=2, unique=True)
            return picks.flatmap(
                lambda chosen: st.fixed_dictionaries(
                    {
                        "task": st.just(f"task{step}"),
                        "base": st.just(base),
                        "new": st.just(chosen[:1]),
                        "adapt": st.just([c for c in chosen[1:] if c in dense]),
                    }
                )
            )

        return st.sampled_from(list(graph.outputs)).flatmap(fork_args)
    return None


@SETTINGS
@given(graph=random_graphs(heads=True), data=st.data())
def test_random_pass_sequences_match_torch(graph: Graph, data: st.DataObject) -> None:
    for step in range(data.draw(st.integers(1, 3))):
        options = {name: pass_arguments(graph, name, step) for name in sorted(PASSES)}
        usable = sorted(name for name, args in options.items() if args is not None)
        if not usable:
            break
        name = data.draw(st.sampled_from(usable))
        kwargs = data.draw(options[name])  # type: ignore[arg-type]
        try:
            graph = PASSES[name].run(graph, **kwargs).graph
        except GrowError:  # a refusal, with its reason: the graph is unchanged
            continue
    assert_exports(graph)
    assert_exports(graph, task=data.draw(st.sampled_from(list(graph.outputs))))


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    derandomize=True,
)
@given(graph=graphgen.graphs(), data=st.data())
def test_shared_generator_grown_networks_match_torch(graph: Graph, data: st.DataObject) -> None:
    """The project's shared network generator (staged networks included, so insert_block
    runs too), grown by a random sequence of passes with its argument strategies."""
    for _ in range(data.draw(st.integers(1, 3))):
        options = {name: graphgen.pass_arguments(graph, name) for name in sorted(PASSES)}
        usable = sorted(name for name, args in options.items() if args is not None)
        if not usable:
            break
        name = data.draw(st.sampled_from(usable))
        try:
            graph = PASSES[name].run(graph, **data.draw(options[name])).graph  # type: ignore[arg-type]
        except GrowError:
            continue
    assert_exports(graph)
    assert_exports(graph, task=data.draw(st.sampled_from(list(graph.outputs))))


# ---- example specs --------------------------------------------------------------------


def example_specs() -> list[Path]:
    return sorted(EXAMPLES.glob("*.yaml"))


def test_examples_exist() -> None:
    assert example_specs(), f"no example specs in {EXAMPLES}"


@pytest.mark.parametrize("path", example_specs(), ids=lambda p: p.stem)
def test_example_matches_torch(path: Path) -> None:
    graph = randomize_norms(load_spec(path), seed=7)
    assert_exports(graph)
    for task in graph.outputs if len(graph.outputs) > 1 else ():
        assert_exports(graph, task=task)
    if graph.grow:
        assert_exports(apply_plan(graph, list(graph.grow)))
