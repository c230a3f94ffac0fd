"""Issue 11's acceptance on the transformers: torchvision's ViT (tests/test_import_vit.py's
small one) from its ``torch.onnx.export`` file, with its ``nn.MultiheadAttention`` found
as grow-ir's ``attention``; and for the ViT and Hugging Face GPT-2 (tests/hf_models.py,
imported as tests/test_hf_import.py does), every channel group of Torch-Pruning's
DependencyGraph has its grow-ir counterpart, and growing each counterpart is exact.
(Llama and BERT are not checked here: Torch-Pruning's grouping did not finish on the
shared Llama models inside the test process; see the README.)

grow-ir imports the q, k, v and output projections of one attention into one
``attention`` node, so a Torch-Pruning layer is mapped to the node that holds its weight
(whole, transposed or as a block of rows: q, k and v are stacked in ``in_proj_weight``).
Torch-Pruning's groups are then:

- the residual stream (the embeddings or the patch conv, every attention's and MLP's
  output projection) ↔ the ``widenable`` group of the embedding (``widen`` of it);
- an MLP's hidden units (``c_fc``, ``mlp.0``) ↔ the ``widenable`` group of its first
  linear;
- the output channels of q, k and v (GPT-2's ``c_attn``, the ViT's packed in-projection)
  ↔ the attention node's heads and head size: ``add_heads`` and ``grow_head_dim``.

Torch-Pruning has no rule for Hugging Face's ``Conv1D`` (GPT-2's linear with an
``[in, out]`` weight): it is shown GPT-2 with each replaced by the ``nn.Linear`` it equals.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

import grow_ir as gi
from grow_ir.backends.torch import to_torch
from grow_ir.ir.graph import Graph
from grow_ir.passes import channel_group, widenable
from tests import test_hf_import as hf
from tests import test_import_vit as vit
from tests.import_models import relative_error, torch_onnx
from tests.test_real_cnns import run, torch_pruning_groups, widen_every_group
from tests.test_transformer_growth import run as run_pass

TOL = 1e-5
LAYERS = (nn.Linear, nn.Embedding, nn.MultiheadAttention, nn.Conv2d)
"""The layers whose output channels make a Torch-Pruning group here."""


def test_vit_from_its_onnx_export_matches_the_module() -> None:
    graph = gi.from_onnx(torch_onnx(vit.MODEL, vit.X))  # checked against onnxruntime too
    ops = [n.op for n in graph.nodes]
    assert ops.count("attention") == 2 and "matmul" not in ops and "softmax" not in ops
    assert "encoder.layers.encoder_layer_0.self_attention" in graph.node_map
    # the export fixes the batch (the class token is expanded to 2 rows)
    other = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    for x in (vit.X, other):
        with torch.no_grad():
            want = vit.MODEL(x)
        assert relative_error(run(graph, x), want) <= TOL


def conv1d_as_linear(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every ``Conv1D`` replaced by the ``nn.Linear`` it equals."""
    model = copy.deepcopy(model)
    for path, layer in list(model.named_modules()):
        if isinstance(layer, Conv1D):
            linear = nn.Linear(*layer.weight.shape)
            with torch.no_grad():
                linear.weight.copy_(layer.weight.T)
                linear.bias.copy_(layer.bias)
            parent, _, last = path.rpartition(".")
            setattr(model.get_submodule(parent), last, linear)
    return model


@dataclass(frozen=True)
class Case:
    """A model as Torch-Pruning sees it, its example input, the layer it leaves alone, the
    graph ``from_torch`` imported, and how far that graph is from the model's outputs."""

    module: nn.Module
    x: torch.Tensor | dict[str, torch.Tensor]
    output: str
    graph: Graph
    error: Callable[[Graph], float]


def _error(want: torch.Tensor, *args: torch.Tensor) -> Callable[[Graph], float]:
    def error(graph: Graph) -> float:
        with torch.no_grad():
            return relative_error(to_torch(graph).eval()(*args), want)

    return error


@cache
def case(name: str) -> Case:
    """The model ``name`` (once)."""
    if name == "vit":
        with torch.no_grad():
            want = vit.MODEL(vit.X)
        return Case(vit.MODEL, vit.X, "heads.head", vit.GRAPH, _error(want, vit.X))
    model, x = hf.MODELS[name], hf.tokens(0)
    with torch.no_grad():
        want = model(x).logits
    return Case(conv1d_as_linear(model), x, "lm_head", hf.GRAPHS[name], _error(want, x))


NAMES = ["vit", "gpt2-tied"]
"""The models checked. Llama and BERT are left out for now: Torch-Pruning's
``get_all_groups`` on Llama did not finish within a minute (inside this test module,
SDPA attention; run alone with eager attention it took seconds: to be found out). Their
groups, run alone (eager): Llama's residual stream, gate+up per MLP and v_proj alone per
attention; BERT's query+key+value per attention and intermediate.dense per MLP."""


def node_holding(graph: Graph, layer: nn.Module) -> str:
    """The node of ``graph`` whose parameters hold ``layer``'s first one: equal to it, to
    its transpose, or with it as a block of rows."""
    w = next(layer.parameters()).detach()
    for key, p in graph.params.items():
        if (p.shape == w.shape and torch.equal(p, w)) or (
            p.shape == w.T.shape and torch.equal(p, w.T)
        ):
            return _owner(graph, key)
        if p.dim() == w.dim() == 2 and p.shape[1] == w.shape[1] and p.shape[0] > w.shape[0]:
            rows = p.shape[0] - w.shape[0] + 1
            if any(torch.equal(p[i : i + w.shape[0]], w) for i in range(rows)):
                return _owner(graph, key)
    raise AssertionError(f"no node of the graph holds the weight of {layer}")


def _owner(graph: Graph, key: str) -> str:
    return max((n.name for n in graph.nodes if key.startswith(n.name + ".")), key=len)


@pytest.mark.parametrize("name", NAMES)
def test_every_torch_pruning_group_has_a_grow_ir_counterpart(name: str) -> None:
    c = case(name)
    layers = {p: m for p, m in c.module.named_modules() if isinstance(m, LAYERS)}
    node = {p: node_holding(c.graph, m) for p, m in layers.items()}
    known = set(node.values())
    ours = {frozenset(channel_group(c.graph, n).producers) & known for n in widenable(c.graph)}
    theirs = torch_pruning_groups(c.module, c.x, c.output, LAYERS)
    assert theirs, "Torch-Pruning found no group"
    missing = []
    for group in theirs:
        nodes = frozenset(node[p] for p in group)
        heads = len(nodes) == 1 and c.graph.node(next(iter(nodes))).op == "attention"
        if nodes not in ours and not heads:
            missing.append(sorted(group))
    assert not missing, f"groups Torch-Pruning finds and grow-ir does not: {missing}"


@pytest.mark.parametrize("name", NAMES)
def test_widening_every_group_is_exact(name: str) -> None:
    c = case(name)
    widen_every_group(c.graph, c.error)


@pytest.mark.parametrize("name", NAMES)
def test_the_head_passes_on_every_attention_are_exact(name: str) -> None:
    """What covers the q, k, v groups: more heads, a larger head, more key/value heads."""
    graph = case(name).graph
    for n in graph.nodes:
        if n.op != "attention":
            continue
        a = n.attr_dict()
        heads, kv = a["num_heads"], a.get("num_kv_heads") or a["num_heads"]
        head_dim = graph.params[f"{n.name}.in_proj_weight"].shape[0] // (heads + 2 * kv)
        grown = [
            ("add_heads", {"heads": heads + kv}),
            ("grow_head_dim", {"head_dim": head_dim + 2}),
        ]
        if kv < heads:
            grown.append(("grow_kv_heads", {"kv_heads": heads}))
        for pass_name, kwargs in grown:
            assert run_pass(pass_name, graph, node=n.name, **kwargs).preserved, (n.name, pass_name)
