"""widen(init="gradmax"): preservation, the closed form, that the new units learn, refusals."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import grow_ir as gi
from grow_ir.backends.torch import to_torch
from grow_ir.backends.torch_modules import relu_unit_slope
from grow_ir.errors import PassError
from grow_ir.ir import Graph, Node, TensorType, initialize, verify
from grow_ir.passes import PassResult, apply_plan, channel_group, fork_task, output_error, widen
from grow_ir.passes.gradmax import Probe, bypass_gradient, fan_out_layout, top_directions
from grow_ir.passes.inits import InitContext
from grow_ir.probes import randomize_norms
from tests.channel_graphs import grouped


def build(inputs: dict, nodes: list[tuple], outputs: dict) -> Graph:
    """A verified, initialised graph from ``{input: shape}`` and ``(name, op, attrs, inputs)``."""
    ns = [Node(n, op, attrs, inputs=tuple(ins)) for n, op, attrs, ins in nodes]
    types = {k: TensorType(v) for k, v in inputs.items()}
    return verify(initialize(Graph(types, ns, outputs), 0))


def mlp(bias: bool = True) -> Graph:
    """x [batch, 4] -> fc1 (3) -> relu -> fc2 (5)."""
    return build(
        {"x": ("batch", 4)},
        [
            ("fc1", "linear", {"out_features": 3, "bias": bias}, ["x"]),
            ("act", "relu", {}, ["fc1"]),
            ("fc2", "linear", {"out_features": 5}, ["act"]),
        ],
        {"y": "fc2"},
    )


def probe_for(graph: Graph, seed: int = 0, batch: int = 16, **kwargs) -> Probe:
    """Random inputs for every graph input and random MSE targets for the (first) output."""
    gen = torch.Generator().manual_seed(seed)
    inputs = {
        k: torch.randn([batch if d == "batch" else d for d in t.shape], generator=gen)
        for k, t in graph.inputs.items()
    }
    with torch.no_grad():
        out = to_torch(graph)(**inputs)
    return Probe(inputs, torch.randn(out.shape, generator=gen), "mse", **kwargs)


def new_fan_in_grad(
    result: PassResult, producers: dict[str, int], old: int, probe: Probe
) -> torch.Tensor:
    """``[k, F]``: the gradient of each new unit's fan-in (producer params, units axis)."""
    module = to_torch(result.graph).train(probe.train)
    loss = probe.loss_fn(module(**probe.inputs), probe.targets)
    params = dict(module.named_parameters())
    grads = torch.autograd.grad(loss, [params[p] for p in producers])
    rows = []
    for g, axis in zip(grads, producers.values()):
        k = g.shape[axis] - old
        rows.append(g.narrow(axis, old, k).movedim(axis, 0).reshape(k, -1))
    return torch.cat(rows, dim=1).double()


# ---- the closed form on a linear-relu-linear MLP ---------------------------------------------


def test_preserved_zero_fan_in_and_relu_marked() -> None:
    graph = mlp()
    before = {k: v.clone() for k, v in graph.params.items()}
    result = widen.run(graph, node="fc1", width=6, init="gradmax", probe=probe_for(graph))
    assert result.preserved and not result.reason
    assert output_error(graph, result.graph, {}) <= 1e-6
    new = result.graph
    assert torch.count_nonzero(new.params["fc1.weight"][3:]) == 0
    assert torch.count_nonzero(new.params["fc1.bias"][3:]) == 0
    assert new.node("act").attrs.grad_at_zero == 1 and graph.node("act").attrs.grad_at_zero == 0
    assert "grad_at_zero=1 on act" in result.summary
    assert all(torch.equal(graph.params[k], v) for k, v in before.items())
    # New entries are fresh for the optimizer: no source index.
    assert result.origins["fc2.weight"].index[1] == (0, 1, 2, -1, -1, -1)
    assert result.origins["fc1.weight"].index[0] == (0, 1, 2, -1, -1, -1)


@pytest.mark.parametrize("bias", [True, False])
def test_fan_out_is_the_top_singular_vectors_of_the_bypass_gradient(bias: bool) -> None:
    graph = mlp(bias)
    probe = probe_for(graph, seed=3, batch=32)
    result = widen.run(graph, node="fc1", width=5, init="gradmax", probe=probe)
    # By hand: the gradient of a zero bypass fc1's input -> fc2's output is
    # sum_n dL/dz2(n) [x(n), 1]^T (the 1 for fc1's bias).
    w1, w2 = graph.params["fc1.weight"], graph.params["fc2.weight"]
    x = probe.inputs["x"]
    h = torch.relu(F.linear(x, w1, graph.params.get("fc1.bias")))
    z2 = F.linear(h, w2, graph.params["fc2.bias"]).requires_grad_()
    (dz2,) = torch.autograd.grad(F.mse_loss(z2, probe.targets), z2)
    inputs = torch.cat([x, torch.ones(len(x), 1)], dim=1) if bias else x
    u, s, _ = torch.linalg.svd((dz2.T @ inputs).double())
    new_cols = result.graph.params["fc2.weight"][:, 3:].double()
    scale = w2.double().norm(dim=0).mean()
    torch.testing.assert_close(new_cols.norm(dim=0), scale.expand(2), rtol=1e-6, atol=0)
    assert s[0] > s[1] > s[2]  # distinct: the directions are unique up to sign
    cosines = (new_cols / scale).T @ u[:, :2]
    torch.testing.assert_close(cosines.abs(), torch.eye(2, dtype=torch.float64), atol=1e-5, rtol=0)


def test_the_new_units_learn_only_with_unit_slope_at_zero() -> None:
    graph = mlp()
    probe = probe_for(graph, seed=1)
    grown = widen(graph, node="fc1", width=5, init="gradmax", probe=probe)
    act = grown.node("act")
    trap = grown.replace(
        nodes=[act.replace(attrs={"grad_at_zero": 0}) if n is act else n for n in grown.nodes]
    )
    moved = {}
    for name, g in (("unit slope", grown), ("torch relu", trap)):
        module = to_torch(g)
        opt = torch.optim.SGD(module.parameters(), lr=0.1)
        for _ in range(3):
            opt.zero_grad()
            F.mse_loss(module(**probe.inputs), probe.targets).backward()
            opt.step()
        moved[name] = module.fc1.weight[3:].detach().abs().sum().item()
    assert moved["unit slope"] > 1e-3
    assert moved["torch relu"] == 0.0  # PyTorch's relu'(0) = 0: zero fan-in stays zero


def test_gradient_is_maximal_among_fan_outs_of_the_same_norm() -> None:
    graph = mlp()
    probe = probe_for(graph, seed=2, batch=24)
    result = widen.run(graph, node="fc1", width=4, init="gradmax", probe=probe)
    producers = {"fc1.weight": 0, "fc1.bias": 0}
    best = new_fan_in_grad(result, producers, 3, probe).norm().item()
    gen = torch.Generator().manual_seed(0)
    w2 = result.graph.params["fc2.weight"]
    for _ in range(10):
        col = torch.randn(w2.shape[0], generator=gen)
        col = col / col.norm() * w2[:, 3].norm()
        params = {**result.graph.params, "fc2.weight": torch.cat([w2[:, :3], col[:, None]], 1)}
        other = PassResult(result.graph.replace(params=params), True, "")
        assert new_fan_in_grad(other, producers, 3, probe).norm().item() <= best + 1e-6


# ---- any group widen accepts: the gradient the new fan-in gets is M^T w ----------------------


def _conv(out: int, k: int = 3, **kw) -> dict:
    return {"out_channels": out, "kernel_size": k, "padding": k // 2, **kw}


GRAPHS = {
    "conv_bn_relu_conv": (
        {"img": ("batch", 3, 6, 6)},
        [
            ("c1", "conv2d", _conv(4), ["img"]),
            ("bn", "batchnorm", {}, ["c1"]),
            ("act", "relu", {}, ["bn"]),
            ("c2", "conv2d", _conv(5, stride=2), ["act"]),
            ("pool", "global_avgpool", {}, ["c2"]),
        ],
        {"y": "pool"},
        "c1",
        {"c1.weight": 0, "c1.bias": 0},
    ),
    "conv_depthwise_relu_conv": (
        {"img": ("batch", 3, 6, 6)},
        [
            ("c1", "conv2d", _conv(4), ["img"]),
            ("dw", "conv2d", _conv(4, groups=4), ["c1"]),
            ("act", "relu", {}, ["dw"]),
            ("c2", "conv2d", _conv(5, k=1), ["act"]),
            ("pool", "global_avgpool", {}, ["c2"]),
        ],
        {"y": "pool"},
        "c1",
        {"c1.weight": 0, "c1.bias": 0},
    ),
    "conv_flatten_linear": (
        {"img": ("batch", 2, 4, 4)},
        [
            ("c1", "conv2d", _conv(3), ["img"]),
            ("act", "gelu", {}, ["c1"]),
            ("flat", "flatten", {}, ["act"]),
            ("fc", "linear", {"out_features": 4}, ["flat"]),
        ],
        {"y": "fc"},
        "c1",
        {"c1.weight": 0, "c1.bias": 0},
    ),
    "residual_add_and_concat": (
        {"x": ("batch", 5)},
        [
            ("a", "linear", {"out_features": 3}, ["x"]),
            ("b", "linear", {"out_features": 3}, ["x"]),
            ("sum", "add", {}, ["a", "b"]),
            ("act", "relu", {}, ["sum"]),
            ("cat", "concat", {"dim": 1}, ["act", "x", "act"]),
            ("head", "linear", {"out_features": 2}, ["cat"]),
        ],
        {"y": "head"},
        "a",
        {"a.weight": 0, "a.bias": 0, "b.weight": 0, "b.bias": 0},
    ),
}


def closed_form(graph: Graph, start: str, k: int, probe: Probe) -> tuple[torch.Tensor, float]:
    """The top ``k`` singular values of the bypass gradient and the old fan-out's mean norm."""
    group = channel_group(graph, start)
    old = group.channels
    ctx = InitContext(graph, start, group, old, old + k, torch.Generator(), probe)
    layout = fan_out_layout(graph, group)
    relus = {n.name: {"grad_at_zero": 1} for n in graph.nodes if n.op == "relu"}
    _, sigma = top_directions(bypass_gradient(ctx, probe, "y", layout, relus), k)
    return sigma, layout.vectors(graph.params, old).double().norm(dim=1).mean().item()


@pytest.mark.parametrize("name", GRAPHS)
def test_any_group_preserved_and_gradient_is_the_closed_form(name: str) -> None:
    inputs, nodes, outputs, start, producers = GRAPHS[name]
    graph = randomize_norms(build(inputs, nodes, outputs), seed=1)
    probe = probe_for(graph, seed=4, batch=8)
    old = channel_group(graph, start).channels
    result = widen.run(graph, node=start, width=old + 2, init="gradmax", probe=probe)
    assert result.preserved
    assert output_error(graph, result.graph, {}, batch=4) <= 1e-5
    # Measured on the widened graph by plain autograd, the new units' fan-in gradients are
    # M^T (s v_j) for the top singular directions v_j: orthogonal, of norms s sigma_j.
    grads = new_fan_in_grad(result, producers, old, probe)
    sigma, scale = closed_form(graph, start, 2, probe)
    assert sigma[0] > sigma[1] > 0
    torch.testing.assert_close(grads.norm(dim=1), scale * sigma, rtol=1e-4, atol=0)
    cosine = (grads[0] @ grads[1]) / (grads[0].norm() * grads[1].norm())
    assert abs(cosine.item()) < 1e-4


def test_eval_mode_probe_and_a_second_output() -> None:
    graph = build(
        {"x": ("batch", 4)},
        [
            ("fc1", "linear", {"out_features": 3}, ["x"]),
            ("bn", "batchnorm", {}, ["fc1"]),
            ("act", "relu", {}, ["bn"]),
            ("fc2", "linear", {"out_features": 2}, ["act"]),
            ("aux", "linear", {"out_features": 2}, ["x"]),
        ],
        {"y": "fc2", "z": "aux"},
    )
    gen = torch.Generator().manual_seed(0)
    x, t = torch.randn(8, 4, generator=gen), torch.randn(8, 2, generator=gen)
    probe = {"inputs": {"x": x}, "targets": t, "output": "y", "train": False}
    result = widen.run(graph, node="fc1", width=4, init="gradmax", probe=probe)
    assert result.preserved and output_error(graph, result.graph, {}) <= 1e-6
    assert torch.count_nonzero(result.graph.params["fc2.weight"][:, 3]) > 0


def test_cross_entropy_and_a_loss_function_give_the_same_units() -> None:
    graph = mlp()
    gen = torch.Generator().manual_seed(5)
    x, labels = torch.randn(16, 4, generator=gen), torch.randint(0, 5, (16,), generator=gen)
    named = widen(
        graph, node="fc1", width=5, init="gradmax", probe=Probe({"x": x}, labels, "cross_entropy")
    )
    given = Probe({"x": x}, labels, lambda out, t: F.cross_entropy(out, t) * 3.0)
    scaled = widen(graph, node="fc1", width=5, init="gradmax", probe=given)
    assert torch.count_nonzero(named.params["fc2.weight"][:, 3:]) > 0
    torch.testing.assert_close(named.params["fc2.weight"], scaled.params["fc2.weight"])


# ---- the relu with derivative 1 at 0 ------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_relu_unit_slope_is_relu_with_derivative_one_at_zero(dtype: torch.dtype) -> None:
    tiny = torch.nextafter(torch.zeros((), dtype=dtype), torch.ones((), dtype=dtype)).item()
    values = [-2.0, -tiny, -0.0, 0.0, tiny, 3.0, float("nan"), float("-inf"), float("inf")]
    x = torch.tensor(values, dtype=dtype, requires_grad=True)
    y = relu_unit_slope(x)
    ref = torch.relu(x.detach())
    torch.testing.assert_close(y.detach(), ref, rtol=0, atol=0, equal_nan=True)
    assert torch.equal(torch.signbit(y.detach()), torch.signbit(ref))
    (grad,) = torch.autograd.grad(y.sum(), x)
    assert grad.tolist() == [0, 0, 1, 1, 1, 1, 1, 0, 1]


def test_lowering_and_export_of_a_relu_with_unit_slope() -> None:
    grown = widen(mlp(), node="fc1", width=4, init="gradmax", probe=probe_for(mlp()))
    code = to_torch(grown).code
    assert "relu_unit_slope(fc1)" in code
    assert "torch.relu(fc1)" in to_torch(mlp()).code
    again = gi.load_spec(gi.dump_spec(grown))
    assert again.node("act").attrs.grad_at_zero == 1
    model = gi.to_onnx(grown)
    assert [n.op_type for n in model.graph.node].count("Relu") == 1


# ---- refusals --------------------------------------------------------------------------------


def refuse(graph: Graph, match: str, **kwargs) -> PassError:
    args = {"node": "fc1", "width": 4, "init": "gradmax", **kwargs}
    with pytest.raises(PassError, match=match) as info:
        widen.run(graph, **args)
    return info.value


def test_a_plan_cannot_give_the_probe() -> None:
    with pytest.raises(PassError, match="needs a probe batch") as info:
        apply_plan(mlp(), [{"pass": "widen", "node": "fc1", "width": 4, "init": "gradmax"}])
    assert info.value.field == "grow[0].probe" and "Python" in info.value.reason


def test_refusals() -> None:
    graph = mlp()
    probe = probe_for(graph)
    refuse(graph, "read only by init gradmax", init="net2net", probe=probe)
    refuse(graph, "fields inputs, targets", probe={"inputs": probe.inputs, "x": 1})
    refuse(graph, "holds tensors", probe={"inputs": {"x": [[1.0] * 4]}, "targets": [0.0]})
    refuse(graph, "unknown loss", probe=Probe(probe.inputs, probe.targets, "hinge"))
    refuse(graph, "at most 5 units at once", width=9, probe=probe)
    refuse(graph, "lacks graph input 'x'", probe=Probe({"z": probe.inputs["x"]}, probe.targets))
    refuse(graph, "targets of the output.s shape", probe=Probe(probe.inputs, probe.targets[:, :2]))
    refuse(graph, "does not run", probe=Probe(probe.inputs, probe.targets[:3], "cross_entropy"))
    refuse(graph, "name the graph output", probe=Probe(probe.inputs, probe.targets, output="q"))
    parts = grouped()
    refuse(parts, "6 parts read by grouped", node="c1", width=18, probe=probe_for(parts))


@pytest.mark.parametrize(
    ("op", "attrs", "match"),
    [
        ("sigmoid", {}, "sigmoid\\(0\\) = 1/2"),
        ("layernorm", {}, "mean and variance of layernorm"),
        ("softmax", {"dim": 0}, "uniform, nonzero"),
        ("log_softmax", {"dim": 0}, "log_softmax turns a channel that is 0 everywhere"),
    ],
)
def test_refuses_ops_that_do_not_keep_zero_channels_zero(op: str, attrs: dict, match: str) -> None:
    graph = build(
        {"x": ("batch", 4)},
        [
            ("fc1", "linear", {"out_features": 3}, ["x"]),
            ("mid", op, attrs, ["fc1"]),
            ("fc2", "linear", {"out_features": 2}, ["mid"]),
        ],
        {"y": "fc2"},
    )
    refuse(graph, match, probe=probe_for(graph))


def test_refuses_products_and_layers_that_read_and_write_the_channels() -> None:
    product = build(
        {"x": ("batch", 4)},
        [
            ("fc1", "linear", {"out_features": 3}, ["x"]),
            ("fc0", "linear", {"out_features": 3}, ["x"]),
            ("gate", "mul", {}, ["fc1", "fc0"]),
            ("fc2", "linear", {"out_features": 2}, ["gate"]),
        ],
        {"y": "fc2"},
    )
    refuse(product, "zero gradient", probe=probe_for(product))
    stream = build(
        {"x": ("batch", 4)},
        [
            ("fc1", "linear", {"out_features": 3}, ["x"]),
            ("f", "linear", {"out_features": 3}, ["fc1"]),
            ("sum", "add", {}, ["fc1", "f"]),
            ("fc2", "linear", {"out_features": 2}, ["sum"]),
        ],
        {"y": "fc2"},
    )
    refuse(stream, "both reads and writes", probe=probe_for(stream))


@pytest.mark.parametrize("bias", [False, True])
def test_forked_task_conv(bias: bool) -> None:
    """The fuzzer's case: widening a forked task's own conv (no bias) with GradMax. With a
    probe on the task's output it grows exactly; with a probe on the other output, which
    does not depend on the conv, it is refused (it was a KeyError)."""
    graph = build(
        {"x": ("batch", 2, 6, 6)},
        [
            (
                "conv1",
                "conv2d",
                {"out_channels": 3, "kernel_size": 3, "padding": 1, "bias": bias},
                ["x"],
            ),
            ("act", "relu", {}, ["conv1"]),
            ("conv2", "conv2d", {"out_channels": 4, "kernel_size": 3, "padding": 1}, ["act"]),
            ("pool", "global_avgpool", {}, ["conv2"]),
            ("head", "linear", {"out_features": 2}, ["pool"]),
        ],
        {"task0": "head"},
    )
    graph = fork_task(graph, task="task1", base="task0", new=["conv1", "conv2"])
    x = torch.randn(6, 2, 6, 6, generator=torch.Generator().manual_seed(0))
    targets = torch.randn(6, 2, generator=torch.Generator().manual_seed(1))
    good = Probe({"x": x}, targets, output="task1")
    result = widen.run(graph, node="task1.conv1", width=5, init="gradmax", probe=good)
    assert result.preserved and output_error(graph, result.graph, {}) <= 1e-5
    assert result.graph.node("task1.conv1").attrs.out_channels == 5
    bad = Probe({"x": x}, targets, output="task0")
    err = refuse(graph, "does not depend on 'task1.conv1'", node="task1.conv1", width=5, probe=bad)
    assert err.field == "probe.output"
