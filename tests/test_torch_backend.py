"""to_torch and update_params: names, outputs, tasks, copies, devices, dtypes, autocast and
the generated code."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from grow_ir.backends.torch import FUNCTIONS, MODULES, LoweredModule, to_torch, update_params
from grow_ir.backends.torch_modules import SelfAttention
from grow_ir.errors import GrowError, VerifyError
from grow_ir.ir import OPS, Graph, Node, TensorType, initialize
from grow_ir.probes import random_inputs, randomize_norms


def resnet_like() -> Graph:
    """stem conv/BN/ReLU, one residual block with scoped names, pool, linear head."""
    conv = {"out_channels": 4, "kernel_size": 3, "padding": 1}
    nodes = [
        Node("stem", "conv2d", conv, ("image",)),
        Node("stem_bn", "batchnorm", {}, ("stem",)),
        Node("stem_act", "relu", {}, ("stem_bn",)),
        Node("s1.b0.conv1", "conv2d", {**conv, "bias": False}, ("stem_act",)),
        Node("s1.b0.bn1", "batchnorm", {}, ("s1.b0.conv1",)),
        Node("s1.b0.act1", "relu", {}, ("s1.b0.bn1",)),
        Node("s1.b0.sum", "add", {}, ("s1.b0.act1", "stem_act")),
        Node("pool", "global_avgpool", {}, ("s1.b0.sum",)),
        Node("head", "linear", {"out_features": 3}, ("pool",)),
    ]
    graph = Graph({"image": TensorType(("batch", 2, 6, 6))}, nodes, {"logits": "head"})
    return randomize_norms(initialize(graph, seed=0), seed=1)


def two_tasks() -> Graph:
    """A shared trunk, a head per task, and a task-b adapter; task b also reads ``extra``."""
    nodes = [
        Node("trunk", "linear", {"out_features": 6}, ("x",)),
        Node("act", "gelu", {}, ("trunk",)),
        Node("head_a", "linear", {"out_features": 2}, ("act",)),
        Node("adapter", "linear", {"out_features": 6}, ("extra",)),
        Node("mix", "add", {}, ("act", "adapter")),
        Node("head_b", "linear", {"out_features": 3}, ("mix",)),
    ]
    t = TensorType(("batch", 4))
    graph = Graph({"x": t, "extra": t}, nodes, {"a": "head_a", "b": "head_b"})
    return initialize(graph, seed=0)


def transformer_like() -> Graph:
    nodes = [
        Node("embed", "embedding", {"num_embeddings": 11, "embedding_dim": 8}, ("tokens",)),
        Node("l0.ln1", "layernorm", {}, ("embed",)),
        Node("l0.attn", "attention", {"num_heads": 2, "causal": True}, ("l0.ln1",)),
        Node("l0.res1", "add", {}, ("embed", "l0.attn")),
        Node("l0.fc", "linear", {"out_features": 16}, ("l0.res1",)),
        Node("l0.act", "gelu", {"approximate": "tanh"}, ("l0.fc",)),
        Node("l0.proj", "linear", {"out_features": 8}, ("l0.act",)),
        Node("l0.res2", "add", {}, ("l0.res1", "l0.proj")),
        Node("head", "linear", {"out_features": 11}, ("l0.res2",)),
    ]
    graph = Graph({"tokens": TensorType(("batch", "seq"), "int64")}, nodes, {"logits": "head"})
    return initialize(graph, seed=0)


# ---- names and outputs --------------------------------------------------------------------


def test_state_dict_keys_are_the_graph_params_in_scope_order() -> None:
    graph = resnet_like()
    module = to_torch(graph)
    state = module.state_dict()
    assert set(state) == set(graph.params)
    assert [k for k in state if k.endswith("num_batches_tracked")] == [
        "stem_bn.num_batches_tracked",
        "s1.b0.bn1.num_batches_tracked",
    ]
    assert list(state) == [k for k in graph.params]
    for key, value in state.items():
        assert torch.equal(value, graph.params[key]) and value.dtype == graph.params[key].dtype
    buffers = dict(module.named_buffers())
    assert set(buffers) == {k for k, s in graph.param_specs.items() if s.buffer}


def test_one_output_gives_a_tensor_and_several_a_dict() -> None:
    x = random_inputs(resnet_like())
    assert isinstance(to_torch(resnet_like()).eval()(**x), torch.Tensor)
    graph = two_tasks()
    inputs = random_inputs(graph)
    out = to_torch(graph)(**inputs)
    assert isinstance(out, dict) and list(out) == ["a", "b"]
    assert out["a"].shape == (3, 2) and out["b"].shape == (3, 3)


def test_task_module_computes_that_output_and_trains_only_what_it_owns() -> None:
    graph = two_tasks()
    inputs = random_inputs(graph)
    full = to_torch(graph)(**inputs)
    module_b = to_torch(graph, task="b")
    assert torch.equal(module_b(**inputs), full["b"])
    trainable = {k for k, p in module_b.named_parameters() if p.requires_grad}
    assert trainable == {"adapter.weight", "adapter.bias", "head_b.weight", "head_b.bias"}
    assert set(module_b.state_dict()) == trainable | {"trunk.weight", "trunk.bias"}
    module_a = to_torch(graph, task="a")
    assert torch.equal(module_a(x=inputs["x"]), full["a"])  # task a does not read `extra`
    assert {k for k, p in module_a.named_parameters() if p.requires_grad} == {
        "head_a.weight",
        "head_a.bias",
    }


def test_training_one_task_leaves_the_other_unchanged() -> None:
    graph = two_tasks()
    inputs = random_inputs(graph)
    before = to_torch(graph)(**inputs)["a"]
    module = to_torch(graph, task="b")
    params = [p for p in module.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.5)
    for _ in range(3):
        opt.zero_grad()
        module(**inputs).square().sum().backward()
        opt.step()
    trained = update_params(graph, module)
    after = to_torch(trained)(**inputs)
    assert torch.equal(after["a"], before)
    assert not torch.equal(after["b"], to_torch(graph)(**inputs)["b"])


def test_unknown_task() -> None:
    with pytest.raises(GrowError) as err:
        to_torch(two_tasks(), task="c")
    assert err.value.field == "task" and "'c'" in err.value.found


def test_shared_node_calls_one_module() -> None:
    nodes = [
        Node("a", "linear", {"out_features": 4}, ("x",)),
        Node("b", "linear", {"out_features": 4}, ("a",), share="a"),
    ]
    graph = initialize(Graph({"x": TensorType((2, 4))}, nodes, {"y": "b"}), seed=0)
    module = to_torch(graph)
    assert set(module.state_dict()) == {"a.weight", "a.bias"}
    x = torch.randn(2, 4)
    lin = module.get_submodule("a")
    assert torch.equal(module(x), lin(lin(x)))


def test_unverified_graph_is_refused() -> None:
    graph = resnet_like()
    broken = graph.replace(params={k: v for k, v in graph.params.items() if k != "head.bias"})
    with pytest.raises(VerifyError):
        to_torch(broken)


# ---- copies and update_params ---------------------------------------------------------------


def test_module_tensors_are_copies_and_training_never_changes_the_graph() -> None:
    graph = resnet_like()
    saved = {k: v.clone() for k, v in graph.params.items()}
    module = to_torch(graph).train()
    for key, value in module.state_dict().items():
        assert value.data_ptr() != graph.params[key].data_ptr(), key
    opt = torch.optim.SGD(module.parameters(), lr=0.1)
    module(**random_inputs(graph)).sum().backward()
    opt.step()
    assert not torch.equal(module.state_dict()["head.weight"], saved["head.weight"])
    for key, value in graph.params.items():
        assert torch.equal(value, saved[key]), key


def test_update_params_round_trip() -> None:
    graph = resnet_like()
    module = to_torch(graph).train()
    opt = torch.optim.SGD(module.parameters(), lr=0.1)
    module(**random_inputs(graph)).sum().backward()
    opt.step()
    module(**random_inputs(graph, seed=1))  # another batch of BatchNorm statistics
    trained = update_params(graph, module)
    state = module.state_dict()
    assert set(trained.params) == set(graph.params)
    for key, value in trained.params.items():
        assert torch.equal(value, state[key]) and value.data_ptr() != state[key].data_ptr()
        # a plain tensor outside autograd, like every graph tensor
        assert type(value) is torch.Tensor and not value.requires_grad and value.grad_fn is None
    assert trained.params["stem_bn.num_batches_tracked"].item() == 2
    assert graph.params["stem_bn.num_batches_tracked"].item() == 0
    x = random_inputs(graph, seed=2)
    assert torch.equal(to_torch(trained).eval()(**x), module.eval()(**x))


def test_update_params_from_a_task_module_keeps_the_rest() -> None:
    graph = two_tasks()
    module = to_torch(graph, task="a")
    with torch.no_grad():
        module.get_submodule("head_a").bias.fill_(7.0)
    trained = update_params(graph, module)
    assert torch.equal(trained.params["head_a.bias"], torch.full((2,), 7.0))
    assert trained.params["adapter.weight"] is graph.params["adapter.weight"]


def test_update_params_converts_back_to_the_graph_dtype() -> None:
    graph = resnet_like()
    module = to_torch(graph).to(torch.float64)
    trained = update_params(graph, module)
    assert all(trained.params[k].dtype == v.dtype for k, v in graph.params.items())
    assert all(torch.equal(trained.params[k], v) for k, v in graph.params.items())


def test_update_params_through_compile_and_module_wrappers() -> None:
    graph = two_tasks()
    module = to_torch(graph)
    with torch.no_grad():
        module.get_submodule("trunk").bias.fill_(1.0)
    compiled = torch.compile(module)  # wraps lazily: nothing is compiled until a call
    assert torch.equal(update_params(graph, compiled).params["trunk.bias"], torch.ones(6))


def test_update_params_refuses_an_unknown_key() -> None:
    graph = two_tasks()
    module = to_torch(graph)
    module.get_submodule("trunk").register_buffer("scale", torch.ones(1))
    with pytest.raises(GrowError) as err:
        update_params(graph, module)
    assert err.value.field == "trunk.scale"


def test_update_params_refuses_another_shape() -> None:
    graph = two_tasks()
    other = initialize(
        Graph(
            {"x": TensorType((1, 4))},
            [Node("trunk", "linear", {"out_features": 5}, ("x",))],
            {"y": "trunk"},
        )
    )
    with pytest.raises(GrowError) as err:
        update_params(graph, to_torch(other))
    assert err.value.field == "trunk.weight"
    assert (err.value.expected, err.value.found) == ("[6, 4]", "[5, 4]")


def test_deepcopy_is_independent_and_equal() -> None:
    graph = resnet_like()
    module = to_torch(graph).eval()
    twin = copy.deepcopy(module)
    x = random_inputs(graph)
    assert torch.equal(twin(**x), module(**x))
    with torch.no_grad():
        twin.get_submodule("head").bias.add_(1.0)
    assert not torch.equal(twin(**x), module(**x))


# ---- devices, dtypes and autocast -------------------------------------------------------------


@pytest.mark.parametrize("build", [resnet_like, transformer_like, two_tasks])
def test_moves_to_float64(build) -> None:
    graph = build()
    module = to_torch(graph).eval()
    x = random_inputs(graph)
    want = module(**x)
    module64 = module.to(torch.float64)
    x64 = {k: v.double() if v.is_floating_point() else v for k, v in x.items()}
    got = module64(**x64)
    got, want = (got, want) if isinstance(got, dict) else ({"y": got}, {"y": want})
    for key in want:
        assert got[key].dtype == torch.float64
        torch.testing.assert_close(got[key].float(), want[key], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("build", [resnet_like, transformer_like])
@pytest.mark.parametrize("train", [False, True])
def test_nothing_is_pinned_to_the_cpu(build, train: bool) -> None:
    # On the meta device every tensor the forward creates must follow its input: a mask
    # or constant made on the CPU would fail against meta tensors.
    graph = build()
    module = to_torch(graph).to("meta").train(train)
    x = {k: v.to("meta") for k, v in random_inputs(graph).items()}
    out = module(**x)
    assert out.device.type == "meta"
    assert out.shape == graph.types[graph.outputs["logits"]].concrete({"batch": 3, "seq": 5})


@pytest.mark.parametrize("build", [resnet_like, transformer_like])
def test_runs_under_cpu_autocast_in_bfloat16(build) -> None:
    graph = build()
    module = to_torch(graph).eval()
    x = random_inputs(graph)
    want = module(**x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = module(**x)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), want, rtol=0.1, atol=0.1)
    module.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        module(**x).float().sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in module.parameters())


# ---- the generated code ------------------------------------------------------------------------


def test_generated_code_names_values_after_the_ir_nodes() -> None:
    module = to_torch(resnet_like())
    code = module.code
    assert "s1_b0_sum = s1_b0_act1 + stem_act" in code
    assert "stem_act = torch.relu(stem_bn)" in code
    assert "s1_b0 = self.s1.b0" in code and "s1_b0.conv1(stem_act)" in code
    assert "head = self.head(pool)" in code
    names = {n.name for n in module.graph.nodes}
    assert {n.name.replace(".", "_") for n in resnet_like().nodes} <= names


def test_three_way_add_names_its_partial_sum() -> None:
    nodes = [Node("total", "add", {}, ("x", "y", "z"))]
    t = TensorType((2,))
    module = to_torch(Graph({"x": t, "y": t, "z": t}, nodes, {"out": "total"}))
    assert "total_partial = x + y" in module.code and "total = total_partial + z" in module.code


def test_inputs_named_like_builtins_are_keyword_arguments() -> None:
    nodes = [Node("act", "relu", {}, ("input",)), Node("sum", "add", {}, ("act", "id"))]
    t = TensorType((2, 3))
    module = to_torch(Graph({"input": t, "id": t}, nodes, {"out": "sum"}))
    a, b = torch.randn(2, 3), torch.randn(2, 3)
    assert torch.equal(module(input=a, id=b), torch.relu(a) + b)
    assert torch.equal(module(a, b), torch.relu(a) + b)


def test_every_node_with_state_is_a_submodule_with_working_hooks() -> None:
    graph = resnet_like()
    module = to_torch(graph)
    stateful = {n.name for n in graph.nodes if n.op in ("conv2d", "batchnorm", "linear")}
    assert stateful <= dict(module.named_modules()).keys()
    seen = []
    module.get_submodule("s1.b0.conv1").register_forward_hook(lambda m, i, o: seen.append(o.shape))
    module(**random_inputs(graph))
    assert seen == [torch.Size([3, 4, 6, 6])]


def test_lowered_module_is_called_without_fxs_wrapper() -> None:
    module = to_torch(two_tasks())
    assert isinstance(module, LoweredModule)
    assert type(module).__call__ is nn.Module.__call__
    module.recompile()
    assert type(module).__call__ is nn.Module.__call__
    with pytest.raises(RuntimeError):
        module(x=torch.zeros(2, 5), extra=torch.zeros(2, 4))


def test_dropout_follows_the_module_mode() -> None:
    nodes = [Node("drop", "dropout", {"p": 0.5}, ("x",))]
    module = to_torch(Graph({"x": TensorType((4, 64))}, nodes, {"y": "drop"}))
    x = torch.ones(4, 64)
    assert torch.equal(module.eval()(x), x)
    assert (module.train()(x) == 0).any()


def test_every_op_has_exactly_one_lowering() -> None:
    assert set(FUNCTIONS) | set(MODULES) == set(OPS)
    assert not set(FUNCTIONS) & set(MODULES)


def test_an_op_without_lowering_is_a_grow_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(MODULES, "dropout")
    nodes = [Node("drop", "dropout", {}, ("x",))]
    with pytest.raises(GrowError) as err:
        to_torch(Graph({"x": TensorType((2,))}, nodes, {"y": "drop"}))
    assert (err.value.node, err.value.field) == ("drop", "op")


def test_self_attention_module_initialises_like_multihead_attention() -> None:
    torch.manual_seed(4)
    ours = SelfAttention(8, 2, causal=True).state_dict()
    torch.manual_seed(4)
    theirs = nn.MultiheadAttention(8, 2, batch_first=True).state_dict()
    assert list(ours) == list(theirs)
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)
    with pytest.raises(ValueError, match="divisible"):
        SelfAttention(8, 3)
