"""Issue 11's acceptance on CNNs nobody here wrote: torchvision's models (random init from
their own constructors, through tests/torchvision_models.py) and a standard small U-Net.

For each model, in eval mode with randomised BatchNorm statistics and biases (so that a
wrong import of any of them shows): ``gi.from_torch`` and ``gi.from_onnx`` of its
``torch.onnx.export`` file compute the module's outputs within 1e-5 × max(1, |y|);
``gi.to_onnx`` of the imported graph passes the full checker and onnxruntime parity;
``widenable`` finds every channel group Torch-Pruning's DependencyGraph finds (the same
layers, mapped through the module paths that name our nodes); and widening the groups is
exact.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache

import onnx
import pytest
import torch
import torch_pruning as tp
from torch import nn

import grow_ir as gi
from grow_ir.backends.onnx_check import check_model, check_parity
from grow_ir.imports.builder import clean_name
from grow_ir.ir.graph import Graph
from grow_ir.passes import channel_group, widenable
from tests.import_models import randomized, relative_error, torch_onnx
from tests.torchvision_models import models as torchvision_models

TOL = 1e-5


class UNet(nn.Module):
    """A standard small U-Net (Ronneberger et al.): double 3×3 conv blocks with BatchNorm,
    max-pool down, up by a transposed conv (first level) or bilinear upsampling plus a 1×1
    conv (second), skip connections concatenated, a 1×1 conv head."""

    def __init__(self, channels: int = 3, classes: int = 2, width: int = 8) -> None:
        super().__init__()
        w = width
        self.down0 = self.block(channels, w)
        self.down1 = self.block(w, 2 * w)
        self.bottom = self.block(2 * w, 4 * w)
        self.pool = nn.MaxPool2d(2)
        self.up1 = nn.Sequential(
            nn.Upsample(scale_factor=2, mode="bilinear"), nn.Conv2d(4 * w, 2 * w, 1)
        )
        self.dec1 = self.block(4 * w, 2 * w)
        self.up0 = nn.ConvTranspose2d(2 * w, w, 2, stride=2)
        self.dec0 = self.block(2 * w, w)
        self.head = nn.Conv2d(w, classes, 1)

    @staticmethod
    def block(cin: int, cout: int) -> nn.Sequential:
        """conv-bn-relu twice."""
        return nn.Sequential(
            nn.Conv2d(cin, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s0 = self.down0(x)
        s1 = self.down1(self.pool(s0))
        y = self.bottom(self.pool(s1))
        y = self.dec1(torch.cat([self.up1(y), s1], 1))
        y = self.dec0(torch.cat([self.up0(y), s0], 1))
        return self.head(y)


@dataclass(frozen=True)
class Model:
    """A test model: how to build it, its input size, its output layer (which
    Torch-Pruning is told to leave alone, as ``widen`` refuses a graph output), and whether
    Torch-Pruning's DependencyGraph can be built for it (the groups compared with ours)."""

    make: Callable[[], nn.Module]
    size: int
    output: str
    torch_pruning: bool = True


def _tv(name: str, **kwargs: object) -> Callable[[], nn.Module]:
    return lambda: getattr(torchvision_models(), name)(num_classes=10, **kwargs)


MODELS = {
    "resnet18": Model(_tv("resnet18"), 32, "fc"),
    "resnet50": Model(_tv("resnet50"), 32, "fc"),
    "mobilenet_v2": Model(_tv("mobilenet_v2"), 32, "classifier.1"),
    "mobilenet_v3_small": Model(_tv("mobilenet_v3_small"), 32, "classifier.3"),
    "efficientnet_b0": Model(_tv("efficientnet_b0"), 32, "classifier.1"),
    "convnext_tiny": Model(_tv("convnext_tiny"), 32, "classifier.2"),
    "densenet121": Model(_tv("densenet121"), 32, "classifier"),
    # module paths with a '-' (trunk_output.block1.block1-0), squeeze-excitation, groups
    "regnet_y_400mf": Model(_tv("regnet_y_400mf"), 32, "fc"),
    # chunk into two branches, a channel shuffle (view, transpose, view), concat;
    # Torch-Pruning 1.6.1 fails on it (ZeroDivisionError in its index mapping of the view)
    "shufflenet_v2_x0_5": Model(_tv("shufflenet_v2_x0_5"), 32, "fc", torch_pruning=False),
    # at 64x64 its AdaptiveAvgPool2d((7, 7)) enlarges a 2x2 map, in bins of unequal sizes
    "vgg11_bn": Model(_tv("vgg11_bn"), 64, "classifier.6"),
    "unet": Model(UNet, 32, "head"),
}


@dataclass(frozen=True)
class Imported:
    """A model, its probe input and its outputs, and the graph ``from_torch`` made."""

    module: nn.Module
    x: torch.Tensor
    y: torch.Tensor
    graph: Graph


@cache
def imported(name: str) -> Imported:
    """The model ``name`` randomised, run and imported with ``from_torch`` (once)."""
    torch.manual_seed(0)
    spec = MODELS[name]
    module = randomized(spec.make())
    x = torch.randn(2, 3, spec.size, spec.size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = module(x)
    return Imported(module, x, y, gi.from_torch(module, x))


def run(graph: Graph, x: torch.Tensor) -> torch.Tensor:
    """The graph's single output on ``x``, lowered to torch, in eval mode."""
    with torch.no_grad():
        out = gi.to_torch(graph).eval()(x)
    return next(iter(out.values())) if isinstance(out, dict) else out


@pytest.mark.parametrize("name", MODELS)
def test_from_torch_matches_the_module(name: str) -> None:
    m = imported(name)
    other = torch.randn(m.x.shape, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        want = m.module(other)
    assert relative_error(run(m.graph, m.x), m.y) <= TOL
    assert relative_error(run(m.graph, other), want) <= TOL
    assert "conv2d" in {n.op for n in m.graph.nodes}


@pytest.mark.parametrize("name", MODELS)
def test_from_onnx_of_torch_onnx_export_matches_the_module(name: str) -> None:
    m = imported(name)
    graph = gi.from_onnx(torch_onnx(m.module, m.x))  # checked against onnxruntime too
    assert relative_error(run(graph, m.x), m.y) <= TOL


@pytest.mark.parametrize("name", MODELS)
def test_to_onnx_of_the_imported_graph_checks_and_matches(name: str) -> None:
    graph = imported(name).graph
    model = gi.to_onnx(graph)
    onnx.checker.check_model(model, full_check=True)
    check_model(model)
    assert check_parity(graph, model) <= TOL


CNN_LAYERS = (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)


def torch_pruning_groups(
    module: nn.Module,
    x: torch.Tensor | dict[str, torch.Tensor],
    ignored: Sequence[str],
    layers: tuple[type[nn.Module], ...] = CNN_LAYERS,
) -> list[set[str]]:
    """The channel groups of Torch-Pruning's DependencyGraph rooted at ``layers`` other
    than the ``ignored`` module paths (it leaves out every group holding one), each as the
    module paths of the ``layers`` whose output channels it prunes (depthwise convs are
    per-channel members, as in grow-ir, and left out). Paths are given as node names
    (:func:`clean_name`: RegNet's ``block1-0`` is the node ``block1_0``)."""
    names = {m: n for n, m in module.named_modules()}
    graph = tp.DependencyGraph().build_dependency(module, example_inputs=x, verbose=False)
    left_alone = [module.get_submodule(path) for path in ignored]
    groups = []
    for group in graph.get_all_groups(ignored_layers=left_alone, root_module_types=list(layers)):
        made = set()
        for item in group:
            layer = item.dep.target.module
            depthwise = isinstance(layer, nn.Conv2d) and layer.groups == layer.in_channels > 1
            out = item.dep.handler.__name__ == "prune_out_channels"
            if out and isinstance(layer, layers) and not depthwise:
                made.add(clean_name(names[layer]))
        if made:
            groups.append(made)
    return groups


@pytest.mark.parametrize("name", [name for name, m in MODELS.items() if m.torch_pruning])
def test_widenable_finds_every_torch_pruning_group(name: str) -> None:
    m = imported(name)
    theirs = torch_pruning_groups(m.module, m.x, [MODELS[name].output])
    ours = {frozenset(channel_group(m.graph, n).producers) for n in widenable(m.graph)}
    assert theirs, "Torch-Pruning found no group"
    missing = [sorted(g) for g in theirs if frozenset(g) not in ours]
    assert not missing, f"groups Torch-Pruning finds and widenable does not: {missing}"


@pytest.mark.parametrize("name", MODELS)
def test_widening_every_group_is_exact(name: str) -> None:
    m = imported(name)
    widen_every_group(m.graph, lambda g: relative_error(run(g, m.x), m.y))


def widen_every_group(graph: Graph, error: Callable[[Graph], float]) -> None:
    """Assert that widening every ``widenable`` group of ``graph`` (by its first producer)
    with net2net, by 2 channels (doubled through a layernorm; 2 per part in a group of
    grouped convs' parts), is exact.

    Each group is widened by its own pass, one after the other, each on the graph the
    previous ones made; ``error`` (a graph against the original's outputs) is measured on
    the end result, and on the first three groups each widened alone on ``graph``. One
    measurement at the end cannot hide a wrong group: a pass reads every tensor from the
    graph it is given and only copies, splits or zero-fills it, so a correct pass keeps
    whatever function that graph computes. If group k's pass changed the output by δ on
    the probe, every later correct pass keeps that output, and the end result stays off
    by δ unless another pass is wrong too and brings the probe's output back within
    1e-5: two faults cancelling on random weights and a random probe. What the order
    changes is only where a group's channels sit when it is widened (after earlier
    groups grew a concat it is part of, DenseNet's offsets move): each group is checked
    at its place in that graph, the first three also in ``graph`` itself. (Widening
    several groups in one pass is not done here.)

    Every non-layernorm group grows by 2 units, not 2×, whatever its width: the check is
    the same, and doubling vgg11_bn's two 4096-wide classifier groups would add about
    150 M weights (its first linear alone holds 103 M).
    """
    starts, seen = [], set()
    for node in widenable(graph):
        group = channel_group(graph, node)
        if not seen & set(group.producers):
            starts.append(node)
            seen |= set(group.producers)
    wider = graph
    for i, node in enumerate(starts):
        group = channel_group(wider, node)
        # net2net through a layernorm is exact when every unit is copied equally often
        # and grouped convs read each part alike (RegNet: 2 channels more in every part)
        width = group.channels * 2 if group.norms else group.channels + 2 * group.parts
        result = gi.passes.widen.run(wider, node=node, width=width, seed=i)
        assert result.preserved
        if i < 3:
            alone = gi.passes.widen(graph, node=node, width=width, seed=i)
            assert error(alone) <= TOL, node
        wider = result.graph
    assert wider.num_params() > graph.num_params()
    assert error(wider) <= TOL


@pytest.mark.parametrize(
    ("name", "stages"),
    [
        ("resnet18", {"layer1": (0, 2), "layer2": (1, 1), "layer3": (1, 1), "layer4": (1, 1)}),
        ("resnet50", {f"layer{i}": (1, d) for i, d in ((1, 2), (2, 3), (3, 5), (4, 2))}),
        # AnyStage names its blocks block2-0, block2-1...: prefix block2_ once cleaned; the
        # lone downsampling block of block1 is no stage (no copy of it keeps its type)
        ("regnet_y_400mf", {f"trunk_output.block{i}": (1, d) for i, d in ((2, 2), (3, 5), (4, 5))}),
    ],
)
def test_a_resnets_layers_are_stages_that_grow_a_block_exactly(
    name: str, stages: dict[str, tuple[int, int]], tmp_path
) -> None:
    """torchvision's ``layerK`` (an ``nn.Sequential`` of blocks) is a stage of the blocks
    that are chained copies: ResNet-18's ``layer1`` whole (two identical BasicBlocks), its
    other layers' one block after the downsampling one (a residual block that can be
    copied exactly), ResNet-50's layers from block 1 on (``Stage.first`` 1: block 0
    downsamples), RegNet's stages from block 1 on, named ``block2_1``... Inserting a block
    into the last stage keeps the outputs, names it after the module's numbering, and the
    grown graph saves and loads with its stages."""
    m = imported(name)
    found = {s: (st.first, st.depth) for s, st in m.graph.stages.items()}
    assert found == stages
    last = list(stages)[-1]
    first, depth = stages[last]
    grown = gi.passes.insert_block(m.graph, stage=last)
    template = grown.blocks[grown.stages[last].block]
    prefix = grown.stages[last].prefix
    assert f"{last}.{prefix}{first + depth}.{template.output}" in grown.node_map
    assert relative_error(run(grown, m.x), m.y) <= TOL
    gi.save(grown, tmp_path / "grown")
    back = gi.load(tmp_path / "grown")
    assert back.stages == grown.stages and relative_error(run(back, m.x), m.y) <= TOL


def test_from_onnx_finds_the_stages_from_torch_finds_numbered_by_a_prefix() -> None:
    # RegNet's blocks are block2_0, block2_1...: the file's node names number them alike
    m = imported("regnet_y_400mf")
    back = gi.from_onnx(torch_onnx(m.module, m.x))
    assert back.stages == m.graph.stages and len(back.stages) == 3
    grown = gi.passes.insert_block(back, stage="trunk_output.block3")
    assert "trunk_output.block3.block3_6.f.a.0" in grown.node_map
    assert relative_error(run(grown, m.x), m.y) <= TOL
