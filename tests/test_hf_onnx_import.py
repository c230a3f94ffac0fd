"""Hugging Face GPT-2 (tied), Llama (tied and untied; grouped-query rotary attention,
RMSNorm), Qwen3 (Llama's layout with per-head RMS norms of q and k), Phi-3 (q, k, v and
the MLP's gate and up sliced from fused projections), GPT-NeoX (q, k, v interleaved per
head, partial rotary, parallel blocks), Gemma (scaled word vectors, ``1 + weight`` norms)
and BERT (post-norm,
key padding mask, token types) exported with
``torch.onnx.export(..., dynamo=True)`` and imported with ``from_onnx``: the files'
written-out attention, GELU and RMSNorm become grow-ir's ops (found by value, see
grow_ir/imports/onnx_patterns.py); outputs equal onnxruntime's and Hugging Face's on other
inputs than the evaluation's; ``to_onnx`` of the imported graph passes the full checker
with onnxruntime parity; widening the residual stream (BERT: its feed-forward layer) 2x is
exact on the imported graph.

Exported plainly, the file has the example's static shapes (batch 2 and 8 tokens for the
decoders, 3 x 9 for BERT) and so has the graph; exported with ``dynamic_shapes`` the masks,
positions and rotary tables are computed from the shapes in the file, and the graph's
batch and sequence dims are symbolic (checked on other batch sizes and lengths).
"""

from __future__ import annotations

import functools
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

import grow_ir as gi
from grow_ir.backends.onnx import to_onnx
from grow_ir.backends.onnx_check import check_model, check_parity
from grow_ir.backends.torch import to_torch
from grow_ir.imports.builder import ImportRefused
from grow_ir.ir.graph import Graph
from tests import hf_models as hf
from tests.test_hf_transformers import bert_inputs, grows_exactly, relative, tokens
from tests.test_transformer_growth import run

TOL = 1e-5
FOLDER = Path(tempfile.mkdtemp(prefix="hf_onnx_"))


def _model(make: Callable[[], nn.Module], attn: str) -> nn.Module:
    model = make()
    model.set_attn_implementation(attn)
    return model


MAKERS: dict[str, Callable[[], nn.Module]] = {
    "gpt2-sdpa": lambda: _model(lambda: hf.gpt2(True), "sdpa"),
    "gpt2-eager": lambda: _model(lambda: hf.gpt2(True), "eager"),
    "llama-tied-sdpa": lambda: _model(lambda: hf.llama(True), "sdpa"),
    "llama-untied-eager": lambda: _model(lambda: hf.llama(False), "eager"),
    "qwen3-eager": lambda: _model(hf.qwen3, "eager"),
    "bert-sdpa": lambda: _model(hf.bert, "sdpa"),
    "gpt2-dynamic": lambda: _model(lambda: hf.gpt2(True), "sdpa"),
    "llama-tied-dynamic": lambda: _model(lambda: hf.llama(True), "sdpa"),
    "qwen3-dynamic": lambda: _model(hf.qwen3, "sdpa"),
    "phi3-dynamic": lambda: _model(hf.phi3, "sdpa"),
    "neox-eager": lambda: _model(hf.gpt_neox, "eager"),
    "neox-dynamic": lambda: _model(hf.gpt_neox, "sdpa"),
    "gemma-dynamic": lambda: _model(hf.gemma, "sdpa"),
    "bert-dynamic": lambda: _model(hf.bert, "sdpa"),
}
"""``-dynamic``: exported with ``dynamic_shapes`` (batch and sequence length symbolic)."""
STREAM = {
    "gpt2": "transformer.wte",
    "llama": "model.embed_tokens",
    "qwen3": "model.embed_tokens",
    "phi3": "model.embed_tokens",
    "neox": "gpt_neox.embed_in",
    "gemma": "model.embed_tokens",
    "bert": "embeddings.word_embeddings",
}
WIDENED = {**STREAM, "bert": "encoder.layer.1.intermediate.dense"}
"""What ``widen`` doubles: the residual stream; for BERT, whose stream is its output (a
width the pass rightly refuses to change), the feed-forward layer."""
ATTENTION = {
    "gpt2": "transformer.h.{}.attn",
    "llama": "model.layers.{}.self_attn",
    "qwen3": "model.layers.{}.self_attn",
    "phi3": "model.layers.{}.self_attn",
    "neox": "gpt_neox.layers.{}.attention",
    "gemma": "model.layers.{}.self_attn",
    "bert": "encoder.layer.{}.attention.self",
}


def family(name: str) -> str:
    return name.split("-")[0]


def inputs(name: str, seed: int) -> dict[str, torch.Tensor]:
    """The model's inputs: of the exported shapes, or for a dynamic export of other ones
    for each seed (BERT's mask pads rows 1 and on)."""
    n, length = (2, 8) if "dynamic" not in name or seed == 0 else (1 + seed, 5 + 2 * seed)
    if family(name) == "bert":
        if "dynamic" not in name:
            x, types, mask = bert_inputs(seed)
        else:
            x, types, mask = tokens(seed, n=n, length=length), None, None
            types = torch.zeros_like(x)
            types[:, length // 2 :] = 1
            mask = torch.ones_like(x)
            for row in range(1, n):
                mask[row, length - row :] = 0
        return {"input_ids": x, "attention_mask": mask, "token_type_ids": types}
    return {"input_ids": tokens(seed, n=n, length=length)}


@functools.cache
def exported(name: str) -> tuple[nn.Module, Path]:
    model = MAKERS[name]()
    path = FOLDER / f"{name}.onnx"
    example = inputs(name, 0)
    if family(name) == "bert":  # exported with every key visible: the mask is an input
        example["attention_mask"] = torch.ones_like(example["attention_mask"])
    dynamic = None
    if "dynamic" in name:
        dims = {0: torch.export.Dim("batch"), 1: torch.export.Dim("seq", max=64)}
        dynamic = {k: dims for k in example}
    ids = example.pop("input_ids")
    torch.onnx.export(model, (ids,), str(path), kwargs=example, dynamic_shapes=dynamic, dynamo=True)
    return model, path


@functools.cache
def imported(name: str) -> Graph:
    return gi.from_onnx(exported(name)[1])


def hugging_face(model: nn.Module, name: str, feed: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        out = model(**feed)
    return out.last_hidden_state if family(name) == "bert" else out.logits


NAMES = list(MAKERS)


@pytest.mark.parametrize("name", NAMES)
def test_the_imported_graph_computes_what_the_file_and_hugging_face_compute(name: str) -> None:
    model, path = exported(name)
    graph = imported(name)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for seed in (1, 2):
        feed = inputs(name, seed)
        with torch.no_grad():
            got = to_torch(graph).eval()(*feed.values())
        names = [i.name for i in session.get_inputs()]
        (file_out,) = session.run(None, {k: feed[k].numpy() for k in names})
        assert relative(got, torch.from_numpy(np.asarray(file_out))) <= TOL
        assert relative(got, hugging_face(model, name, feed)) <= TOL


@pytest.mark.parametrize("name", NAMES)
def test_the_written_out_layers_become_grow_ir_ops(name: str) -> None:
    graph = imported(name)
    ops = [n.op for n in graph.nodes]
    assert ops.count("attention") == 2
    assert {ATTENTION[family(name)].format(i) for i in range(2)} <= set(graph.node_map)
    # nothing of the written-out attention, GELU, RMSNorm or mask building is left
    assert not {"softmax", "matmul", "pow", "tanh", "permute", "reshape"} & set(ops)
    attn = graph.node(ATTENTION[family(name)].format(0)).attr_dict()
    if family(name) == "gpt2":
        assert attn["causal"] is True and ops.count("gelu") == 2
        assert graph.node("transformer.h.0.mlp.act").attr_dict() == {"approximate": "tanh"}
    if family(name) == "llama":
        assert attn["num_heads"] == 4 and attn["num_kv_heads"] == 2 and attn["causal"]
        assert attn["rope_theta"] == 10000.0 and attn["bias"] is False
        assert graph.node("model.norm").op == "rmsnorm"
    if family(name) == "qwen3":  # q_norm and k_norm are the attention's, not rmsnorm nodes
        assert attn["head_dim"] == 16 and attn["qk_norm_eps"] == 1e-6
        assert ops.count("rmsnorm") == 5  # two per block, the final norm
    if family(name) == "neox":  # rotary on half of each head of 8
        assert attn["rotary_dim"] == 4 and attn["rope_theta"] == 10000.0 and attn["causal"]
    if family(name) == "gemma":  # the word vectors scaled by sqrt(32), in the embedding
        assert graph.node("model.embed_tokens").attrs.scale == pytest.approx(32**0.5)
    if family(name) == "bert":
        assert graph.node(ATTENTION["bert"].format(0)).attrs.causal is False
        assert list(graph.node(ATTENTION["bert"].format(0)).inputs)[1] == "attention_mask"
    if "dynamic" in name:  # the shapes stay symbolic; positions are counted, not folded
        assert all(t.shape == ("batch", "seq") for t in graph.inputs.values())
        assert "parameter" not in ops
        assert ops.count("positions") == (family(name) in ("gpt2", "bert"))


@pytest.mark.parametrize(
    "name",
    [
        "gpt2-sdpa",
        "gpt2-eager",
        "llama-tied-sdpa",
        "gpt2-dynamic",
        "llama-tied-dynamic",
        "qwen3-eager",
        "gemma-dynamic",
    ],
)
def test_the_tied_head_shares_the_embedding(name: str) -> None:
    """The exporter writes the tied head as a transposed copy of the table; the import
    recognises it by value and ties it again, as ``from_torch`` does."""
    graph = imported(name)
    head = graph.node("lm_head")
    assert head.op == "linear" and head.share == STREAM[family(name)]
    assert "lm_head.weight" not in graph.params


def test_the_untied_head_keeps_its_own_weight() -> None:
    model, _ = exported("llama-untied-eager")
    graph = imported("llama-untied-eager")
    assert graph.node("lm_head").share is None
    assert torch.equal(graph.params["lm_head.weight"], model.state_dict()["lm_head.weight"])


def test_the_folded_position_table_is_a_learned_parameter() -> None:
    """GPT-2's position rows for the exported length are folded into a constant added to
    the embedding: it becomes a ``parameter`` node holding those rows."""
    model, _ = exported("gpt2-sdpa")
    graph = imported("gpt2-sdpa")
    (param,) = [n for n in graph.nodes if n.op == "parameter"]
    wpe = model.state_dict()["transformer.wpe.weight"][:8]
    assert torch.equal(graph.params[f"{param.name}.weight"][0], wpe)


@pytest.mark.parametrize("name", NAMES)
def test_the_imported_graph_exports_to_onnx_with_parity(name: str) -> None:
    graph = imported(name)
    model = to_onnx(graph)
    check_model(model)
    assert check_parity(graph, model) <= TOL


@pytest.mark.parametrize("name", NAMES)
def test_widening_the_model_2x_is_exact(name: str) -> None:
    graph = imported(name)
    node = WIDENED[family(name)]
    width = 2 * graph.types[node].shape[-1]
    result = run("widen", graph, node=node, width=width, init="net2net")
    assert result.preserved, result.summary
    assert result.graph.types[node].shape[-1] == width
    grown = to_onnx(result.graph)
    check_model(grown)
    assert check_parity(result.graph, grown) <= TOL


@pytest.mark.parametrize(
    "name",
    [
        "gpt2-dynamic",
        "llama-tied-dynamic",
        "llama-untied-eager",
        "qwen3-dynamic",
        "neox-dynamic",
        "gemma-dynamic",
        "bert-dynamic",
    ],
)
def test_the_nodes_are_the_ones_from_torch_gives(name: str) -> None:
    """Named from the module scopes the file records, the graph has ``from_torch``'s
    nodes, names and ops (dropout, which an eval-mode file does not hold, left out); a
    static export differs only in GPT-2's folded position table."""
    model, _ = exported(name)
    torch_graph = gi.from_torch(model, inputs(name, 0))
    want = [(n.name, n.op) for n in torch_graph.nodes if n.op != "dropout"]
    assert [(n.name, n.op) for n in imported(name).nodes] == want


STAGE = {
    "gpt2": "transformer.h",
    "llama": "model.layers",
    "qwen3": "model.layers",
    "phi3": "model.layers",
    "neox": "gpt_neox.layers",
    "gemma": "model.layers",
}
"""The ``nn.ModuleList`` of each decoder's blocks, read from the file's module scopes."""


@pytest.mark.parametrize(
    "name",
    [
        "gpt2-sdpa",
        "gpt2-dynamic",
        "llama-tied-sdpa",
        "llama-untied-eager",
        "llama-tied-dynamic",
        "qwen3-eager",
        "phi3-dynamic",
        "neox-eager",
        "gemma-dynamic",
    ],
)
@pytest.mark.parametrize("grow", ["insert_block", "stack_blocks"])
def test_the_blocks_are_a_stage_that_grows_exactly(name: str, grow: str) -> None:
    """Nodes are named after the module scopes the exporter records (stateless ones
    ``SCOPE.OP``, as ``from_torch`` names them), so the blocks of the module list match
    one template and become a stage; growing it is exact and keeps the tie."""
    graph = imported(name)
    stage = STAGE[family(name)]
    assert graph.stages[stage].depth == 2 and graph.stages[stage].prefix == ""
    assert {f"{stage}.1.add", f"{stage}.1.add_1"} <= set(graph.node_map)
    kwargs = {"stage": stage} | ({"mode": "interpolate"} if grow == "stack_blocks" else {})
    grown = grows_exactly(graph, grow, kwargs)
    depth = 3 if grow == "insert_block" else 4
    assert grown.stages[stage].depth == depth
    assert f"{stage}.{depth - 1}.add_1" in grown.node_map


# ---- what is refused ------------------------------------------------------------------------


class ScaledAttention(nn.Module):
    """Self-attention written out with a score scale that is not 1/sqrt(head_dim)."""

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.q, self.k, self.v, self.o = (nn.Linear(8, 8) for _ in range(4))
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, length, _ = x.shape

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(n, length, 2, 4).transpose(1, 2)

        scores = heads(self.q(x)) @ heads(self.k(x)).transpose(-1, -2) * self.scale
        y = scores.softmax(-1) @ heads(self.v(x))
        return self.o(y.transpose(1, 2).reshape(n, length, 8))


def test_an_attention_with_another_scale_is_refused_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "scaled.onnx"
    torch.onnx.export(ScaledAttention(0.3).eval(), (torch.randn(2, 5, 8),), str(path), dynamo=True)
    with pytest.raises(ImportRefused) as info:
        gi.from_onnx(path)
    lines = [line for line in info.value.constructs if "scales scores by 0.3" in line]
    assert len(lines) == 1 and "(Softmax" in lines[0], info.value.constructs
    assert onnx.load(str(path)).graph.node  # the file is untouched and still loads


def test_the_same_attention_with_its_scale_imports_as_one_node(tmp_path: Path) -> None:
    path = tmp_path / "plain.onnx"
    module = ScaledAttention(0.5).eval()
    torch.onnx.export(module, (torch.randn(2, 5, 8),), str(path), dynamo=True)
    graph = gi.from_onnx(path)  # checked against onnxruntime
    assert [n.op for n in graph.nodes] == ["attention"]
    x = torch.randn(2, 5, 8)
    with torch.no_grad():
        assert relative(to_torch(graph).eval()(x), module(x)) <= TOL


def test_a_head_written_as_a_transpose_of_the_table_is_tied() -> None:
    """For large tables the exporter multiplies by ``Transpose(lm_head.weight)`` rather
    than a folded copy: the same file with its head written so imports with the tie."""
    proto = onnx.load(str(exported("gpt2-sdpa")[1]))
    head = next(n for n in proto.graph.node if n.output[0] == "linear")
    copy = head.input[1]
    kept = [i for i in proto.graph.initializer if i.name != copy]
    assert len(kept) == len(proto.graph.initializer) - 1  # the folded copy was there
    del proto.graph.initializer[:]
    proto.graph.initializer.extend(kept)
    transpose = onnx.helper.make_node("Transpose", ["lm_head.weight"], [copy], perm=[1, 0])
    proto.graph.node.insert(list(proto.graph.node).index(head), transpose)
    graph = gi.from_onnx(proto)  # checked against onnxruntime on the rewritten file
    assert graph.node("lm_head").share == "transformer.wte"
