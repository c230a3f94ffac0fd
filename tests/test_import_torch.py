"""from_torch: modules captured with torch.export into verified graphs that compute the same."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
import transformers
from torch import nn

import grow_ir as gi
from grow_ir import passes
from grow_ir.backends.onnx_check import check_model, check_parity
from grow_ir.imports import ImportRefused
from grow_ir.probes import random_inputs, randomize_norms
from grow_ir.spec import example_path
from tests.import_models import (
    ChannelsLast,
    SmallCNN,
    SqueezeExcite,
    TinyGPT,
    TinyViT,
    hf_gpt2,
    hf_resnet,
    outputs_of,
    randomized,
    relative_error,
    torch_onnx,
)


def lowered_outputs(graph: gi.Graph, *args: torch.Tensor) -> list[torch.Tensor]:
    with torch.no_grad():
        y = gi.to_torch(graph).eval()(*args)
    return list(y.values()) if isinstance(y, dict) else [y]


def test_a_module_path_that_is_no_node_name_is_cleaned_and_keeps_its_values():
    # torchvision's RegNet names its blocks ``block1-0``: a module path may hold any
    # character but a dot, a node name only letters, digits and _
    block = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
    module = randomized(
        nn.Sequential(OrderedDict([("block1-0", block), ("head-fc", nn.Conv2d(4, 2, 1))]))
    )
    x = torch.randn(2, 3, 6, 6)
    graph = gi.from_torch(module, x)
    assert [n.name for n in graph.nodes] == ["block1_0.0", "block1_0.1", "block1_0.2", "head_fc"]
    for key, value in module.state_dict().items():
        assert torch.equal(graph.params[key.replace("-", "_")], value), key
    assert relative_error(lowered_outputs(graph, x)[0], outputs_of(module, x)[0]) <= 1e-5
    wider = gi.passes.widen.run(graph, node="block1_0.0", width=8)
    assert wider.preserved
    assert relative_error(lowered_outputs(wider.graph, x)[0], outputs_of(module, x)[0]) <= 1e-5


class Pieces(nn.Module):
    """``chunk``, ``split`` and ``split`` by sizes along the channels, each piece used."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 10, 1)
        self.head = nn.Conv2d(18, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        a, b = y.chunk(2, dim=1)  # 5 + 5
        c, d, e = y.split(4, dim=1)  # 4 + 4 + 2
        f, g = y.split([7, 3], dim=1)
        return self.head(torch.cat([a * b.sigmoid(), c, d - f[:, :4], e + g[:, 1:], g], 1))


def test_chunk_and_split_become_slices_from_torch_and_onnx():
    module = randomized(Pieces())
    x = torch.randn(2, 3, 4, 4)
    want = outputs_of(module, x)[0]
    graph = gi.from_torch(module, x)
    slices = [n.attrs for n in graph.nodes if n.op == "slice"]
    assert [(a.start, a.end) for a in slices if a.dim == 1][:7] == [
        (0, 5),
        (5, None),
        (0, 4),
        (4, 8),
        (8, None),
        (0, 7),
        (7, None),
    ]
    assert relative_error(lowered_outputs(graph, x)[0], want) <= 1e-5
    back = gi.from_onnx(torch_onnx(module, x))  # ONNX Split: one slice per output
    assert relative_error(lowered_outputs(back, x)[0], want) <= 1e-5
    # each piece reads some of conv's channels, so they cannot grow
    with pytest.raises(gi.GrowError, match="slice 'chunk' slices axis 1"):
        passes.widen(graph, node="conv", width=12)


class BatchChunk(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = x.chunk(2, dim=0)
        return a + b


def test_a_chunk_of_the_batch_is_refused():
    with pytest.raises(ImportRefused, match=r"chunk\.default splits the batch axis"):
        gi.from_torch(BatchChunk(), torch.randn(2, 3))


def test_small_cnn_keeps_module_names_and_values_exactly():
    module = randomized(SmallCNN())
    x = torch.randn(2, 3, 8, 8)
    graph = gi.from_torch(module, x)
    assert [(n.name, n.op) for n in graph.nodes] == [
        ("conv", "conv2d"),
        ("bn", "batchnorm"),
        ("relu", "relu"),
        ("layer.0", "conv2d"),
        ("layer.1", "batchnorm"),
        ("add", "add"),
        ("relu_1", "relu"),
        ("max_pool2d", "maxpool2d"),
        ("pool", "global_avgpool"),
        ("fc", "linear"),
        ("gelu", "gelu"),
        ("ln", "layernorm"),
    ]
    state = module.state_dict()
    assert set(graph.params) == set(state)
    for key, value in state.items():
        assert torch.equal(graph.params[key], value), key
    assert graph.inputs["x"].shape == ("batch", 3, 8, 8)
    # the batch axis is symbolic: another batch size gives the module's outputs too
    x5 = torch.randn(5, 3, 8, 8)
    assert relative_error(lowered_outputs(graph, x5)[0], outputs_of(module, x5)[0]) <= 1e-5


def test_the_module_is_left_in_its_mode_and_unchanged():
    module = SmallCNN().train()
    before = {k: v.clone() for k, v in module.state_dict().items()}
    gi.from_torch(module, torch.randn(2, 3, 8, 8))
    assert module.training
    assert all(torch.equal(before[k], v) for k, v in module.state_dict().items())


@pytest.mark.parametrize("layer_type", ["basic", "bottleneck"])
def test_hugging_face_resnet_imports_and_grows(layer_type):
    module = randomized(hf_resnet(layer_type))
    x = torch.randn(2, 3, 32, 32)
    graph = gi.from_torch(module, x)
    assert list(graph.outputs) == ["logits"]
    assert "resnet.embedder.embedder.convolution" in graph.node_map
    for got, want in zip(lowered_outputs(graph, x), outputs_of(module, x)):
        assert relative_error(got, want) <= 1e-5
    # an imported graph grows like any other: every widenable layer, exactly
    nodes = passes.widenable(graph)
    assert len(nodes) >= 5
    wider = graph
    for n in nodes:  # one after another: a node's group may have grown already
        step = {"pass": "widen", "node": n, "width": wider.types[n].shape[1] + 2}
        wider = gi.apply_plan(wider, [step], check=True)
    deeper = gi.apply_plan(
        wider,
        [
            {
                "pass": "insert_layer",
                "after": "resnet.embedder.embedder.activation",
                "op": "conv2d",
                "kernel_size": 3,
            }
        ],
        check=True,
    )
    assert len(deeper.nodes) == len(graph.nodes) + 1
    check_model(gi.to_onnx(deeper))
    assert check_parity(deeper) <= 1e-5


def test_a_module_called_twice_shares_its_parameters():
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            return self.fc(torch.relu(self.fc(x)))

    module = Twice()
    graph = gi.from_torch(module, torch.randn(3, 4))
    assert [(n.name, n.share) for n in graph.nodes] == [
        ("fc", None),
        ("relu", None),
        ("fc_1", "fc"),
    ]
    assert set(graph.params) == {"fc.weight", "fc.bias"}


def test_unsupported_constructs_are_refused_together_with_their_modules():
    class Odd(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.act = nn.Softplus()
            self.head = nn.Linear(4, 2)

        def forward(self, x):
            y = self.act(self.conv(x)).mean(dim=(2, 3))
            return self.head(y * 2.0).cumsum(-1)

    with pytest.raises(ImportRefused) as info:
        gi.from_torch(Odd(), torch.randn(2, 3, 8, 8))
    err = info.value
    assert err.constructs == [
        "act (Softplus): softplus.default has no grow-ir op",
        "<root> (Odd): cumsum.default has no grow-ir op",
    ]
    assert "cannot import Odd (torch): 2 constructs" in str(err)
    assert isinstance(err, gi.GrowError)


def test_gpt2_with_its_default_attention_imports():
    """GPT-2 as its config builds it (SDPA attention, dropout, tied head): its mask
    building and cache positions are recognised by value and not imported (more in
    tests/test_hf_import.py)."""
    model = hf_gpt2().eval()
    x = torch.randint(0, 100, (2, 8))
    graph = gi.from_torch(model, x)
    assert [n.name for n in graph.nodes if n.op == "attention"] == ["transformer.h.0.attn"]
    assert graph.node("lm_head").share == "transformer.wte"
    assert relative_error(lowered_outputs(graph, x)[0], outputs_of(model, x)[0]) <= 1e-5


def test_bad_example_inputs_are_refused():
    with pytest.raises(gi.GrowError, match="example inputs must be tensors"):
        gi.from_torch(SmallCNN(), [3])


def test_an_uncapturable_module_is_refused_with_the_reason():
    class DataDependent(nn.Module):
        def forward(self, x):
            return x if x.sum() > 0 else -x

    with pytest.raises(gi.GrowError, match=r"torch\.export cannot capture DataDependent"):
        gi.from_torch(DataDependent(), torch.randn(2, 3))


@pytest.mark.parametrize(
    "example", ["mlp", "resnet", "concat", "multitask", "transformer", "continual_digits"]
)
def test_our_own_lowered_modules_come_back_with_their_parameters(example):
    graph = randomize_norms(gi.load_spec(example_path(example)))
    module = gi.to_torch(graph).eval()
    inputs = random_inputs(graph)
    back = gi.from_torch(module, [inputs[k] for k in graph.inputs])
    assert [n.op for n in back.nodes] == [n.op for n in graph.nodes]
    assert list(back.outputs) == (list(graph.outputs) if len(graph.outputs) > 1 else ["output"])
    assert set(back.params) == set(graph.params)
    assert all(torch.equal(back.params[k], v) for k, v in graph.params.items())
    layers = [n.name for n in graph.nodes if graph.node_params(n)]
    assert layers == [n.name for n in back.nodes if back.node_params(n)]


def test_multihead_attention_is_one_attention_node():
    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attn = nn.MultiheadAttention(16, 4, batch_first=True)
            self.ln = nn.LayerNorm(16)

        def forward(self, x):
            y, _ = self.attn(x, x, x)
            z, _ = self.attn(y, y, y, need_weights=False)
            return self.ln(z + x)

    module = randomized(Block())
    x = torch.randn(2, 5, 16)
    graph = gi.from_torch(module, x)
    assert [(n.name, n.op, n.share) for n in graph.nodes] == [
        ("attn", "attention", None),
        ("attn_1", "attention", "attn"),
        ("add", "add", None),
        ("ln", "layernorm", None),
    ]
    assert relative_error(lowered_outputs(graph, x)[0], outputs_of(module, x)[0]) <= 1e-5


def test_attention_with_a_mask_or_cross_attention_is_refused():
    class Cross(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attn = nn.MultiheadAttention(8, 2, batch_first=True)

        def forward(self, x, memory):
            return self.attn(x, memory, memory, need_weights=False)[0]

    with pytest.raises(ImportRefused) as info:
        gi.from_torch(Cross(), [torch.randn(2, 3, 8), torch.randn(2, 4, 8)])
    (line,) = info.value.constructs
    assert line.startswith("attn (MultiheadAttention): reads 2 values")


class Pools(nn.Module):
    """A squeeze-excitation-style gate on a kept 1x1 mean, and pooling to a size."""

    def __init__(self, size: tuple[int, int]) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.squeeze = nn.AdaptiveAvgPool2d(1)
        self.excite = nn.Conv2d(8, 8, 1)
        self.grid = nn.AdaptiveAvgPool2d(size)

    def forward(self, x):
        y = self.conv(x)
        return self.grid(y), torch.sigmoid(self.excite(self.squeeze(y)))


def test_adaptive_pooling_keeps_its_axes_where_the_model_reads_them():
    module = randomized(Pools((3, 7)))
    x = torch.randn(2, 3, 8, 9)
    graph = gi.from_torch(module, x)
    assert [(n.name, n.op) for n in graph.nodes] == [
        ("conv", "conv2d"),
        ("grid", "adaptive_avgpool2d"),
        ("squeeze", "adaptive_avgpool2d"),
        ("excite", "conv2d"),
        ("sigmoid", "sigmoid"),
    ]
    assert graph.types["squeeze"].shape == ("batch", 8, 1, 1)
    for got, want in zip(lowered_outputs(graph, x), outputs_of(module, x)):
        assert relative_error(got, want) <= 1e-5
    assert check_parity(graph) <= 1e-5
    back = gi.from_onnx(gi.to_onnx(graph))  # checked against onnxruntime
    assert len(back.nodes) == len(graph.nodes)


@pytest.mark.parametrize("size", [(4, 4), (4, 7), (11, 2)])
def test_pooling_to_a_size_that_does_not_divide_uses_pytorchs_bins(size: tuple) -> None:
    """Of the conv's 6x7 map: overlapping bins of unequal sizes (6 -> 4, 7 -> 4 or 2), the
    width kept (7 -> 7), and an enlarged map (6 -> 11)."""
    module = randomized(Pools(size))
    x = torch.randn(2, 3, 8, 9)
    graph = gi.from_torch(module, x)
    assert graph.types["grid"].shape == ("batch", 8, *size)
    for got, want in zip(lowered_outputs(graph, x), outputs_of(module, x)):
        assert relative_error(got, want) <= 1e-5
    assert check_parity(graph) <= 1e-5
    back = gi.from_onnx(gi.to_onnx(graph))  # its averaging MatMuls read back as the pool
    assert [(n.op, n.attrs) for n in back.nodes] == [(n.op, n.attrs) for n in graph.nodes]


def test_regnet_squeeze_excitation_imports_and_widens_exactly():
    config = transformers.RegNetConfig(
        embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], groups_width=8, num_labels=5
    )
    module = randomized(transformers.RegNetForImageClassification(config))
    x = torch.randn(2, 3, 32, 32)
    graph = gi.from_torch(module, x)  # checked against the module
    assert any(n.op == "mul" for n in graph.nodes)
    assert check_parity(graph) <= 1e-5
    nodes = passes.widenable(graph)
    assert nodes
    for n in nodes:
        step = {"pass": "widen", "node": n, "width": graph.types[n].shape[1] + 2}
        gi.apply_plan(graph, [step], check=True)


def test_scalar_operands_are_refused():
    class Scaled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            return self.fc(x) * 0.5

    with pytest.raises(ImportRefused) as info:
        gi.from_torch(Scaled(), torch.randn(2, 4))
    assert info.value.constructs == ["<root> (Scaled): mul.Tensor with a scalar operand (0.5)"]


SHAPE_MODELS = [
    (
        SqueezeExcite,
        (2, 3, 8, 8),
        {"pad", "mul", "log_softmax", "adaptive_avgpool2d"},
        {"conv", "fc1", "fc2"},
    ),
    (ChannelsLast, (2, 3, 8, 8), {"permute", "parameter", "mul"}, {"conv", "fc"}),
    (
        TinyViT,
        (2, 3, 8, 8),
        {"transpose", "parameter", "concat", "matmul", "select"},
        {"fc"},
    ),
    (
        TinyGPT,
        None,
        # arange(L).unsqueeze(0) reads no input and is [0..L-1]: positions [1, L]
        {"positions", "unflatten", "transpose", "slice", "sum"},
        {"wte", "wpe"},
    ),
]


@pytest.mark.parametrize(
    ("make", "shape", "ops", "widenable"),
    SHAPE_MODELS,
    ids=[m[0].__name__ for m in SHAPE_MODELS],
)
def test_shape_ops_import_export_and_widen_exactly(make, shape, ops, widenable):
    module = randomized(make())
    x = torch.randint(0, 20, (2, 6)) if shape is None else torch.randn(shape)
    graph = gi.from_torch(module, x)  # checked against the module
    assert ops <= {n.op for n in graph.nodes}
    for got, want in zip(lowered_outputs(graph, x), outputs_of(module, x)):
        assert relative_error(got, want) <= 1e-5
    model = gi.to_onnx(graph)
    check_model(model)
    assert check_parity(graph, model) <= 1e-5
    # the channel walk follows the moved axes; what it refuses is refused with a reason
    assert set(passes.widenable(graph)) == widenable
    for n in widenable:
        t = graph.types[n]
        width = 2 * int(t.shape[1] if t.rank == 4 else t.shape[-1])  # layernorm: multiples
        gi.apply_plan(graph, [{"pass": "widen", "node": n, "width": width}], check=True)


class Gamma(nn.Module):
    """A layer scale read through a no-op ``expand`` (an alias of a parameter)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.gamma = nn.Parameter(torch.randn(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x) * self.gamma.expand(4)


def test_a_parameter_aliased_unchanged_is_a_value():
    module = Gamma().eval()
    x = torch.randn(2, 4)
    graph = gi.from_torch(module, x)
    assert [n.op for n in graph.nodes] == ["linear", "parameter", "mul"]
    assert relative_error(lowered_outputs(graph, x)[0], outputs_of(module, x)[0]) <= 1e-5


class _Residual(nn.Module):
    """x + conv(relu(bn(x))), channels kept."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(width)
        self.conv = nn.Conv2d(width, width, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(torch.relu(self.bn(x)))


class _Tower(nn.Module):
    """A stem, a Sequential of three chained identical blocks, a Sequential of blocks that
    differ (a residual block, then a strided conv), a pooled head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.body = nn.Sequential(*[_Residual(8) for _ in range(3)])
        self.down = nn.Sequential(_Residual(8), nn.Conv2d(8, 8, 3, stride=2, padding=1))
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.down(self.body(self.stem(x)))
        return self.head(y.mean((2, 3)))


def test_a_sequential_of_identical_blocks_becomes_a_stage_that_grows_exactly() -> None:
    """``nn.Sequential(*[Block() for _ in range(n)])`` is a stage like a ModuleList of
    blocks (named ``body.0``.. as the module numbers them); a Sequential whose items
    differ is not; ``insert_block`` into the stage is exact and names the new block
    ``body.3``."""
    module = randomized(_Tower()).eval()
    x = torch.randn(2, 3, 8, 8)
    graph = gi.from_torch(module, x)
    assert list(graph.stages) == ["body"] and graph.stages["body"].depth == 3
    grown = passes.insert_block(graph, stage="body")
    assert "body.3.conv" in grown.node_map and grown.stages["body"].depth == 4
    other = torch.randn(3, 3, 8, 8)
    with torch.no_grad():
        want = module(other)
    (got,) = lowered_outputs(grown, other)
    assert (got - want).abs().max().item() <= 1e-5 * max(1.0, want.abs().max().item())


class _AlsoInput(nn.Module):
    """A linear layer's output, and the input returned unchanged beside it."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.fc(x), x


@pytest.mark.parametrize("make", [nn.Identity, _AlsoInput])
def test_an_output_that_is_an_input_unchanged_is_an_identity_node(make) -> None:
    """IR outputs name nodes, so an output that is a graph input (``nn.Identity``, a model
    returning its argument) imports as one ``identity`` node named after the output."""
    module = make().eval()
    x = torch.randn(2, 4)
    graph = gi.from_torch(module, x)
    last = graph.nodes[-1]
    assert last.op == "identity" and last.inputs == tuple(graph.inputs)
    assert list(graph.outputs.values())[-1] == last.name == list(graph.outputs)[-1]
    other = torch.randn(5, 4)
    with torch.no_grad():
        want = module(other)
    want = want if isinstance(want, tuple) else (want,)
    for got, w in zip(lowered_outputs(graph, other), want, strict=True):
        assert torch.equal(got, w)
