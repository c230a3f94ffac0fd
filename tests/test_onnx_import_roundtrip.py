"""``from_onnx`` of what ``to_onnx`` writes: every op alone (the cases of
tests/test_onnx_ops.py but :data:`NOT_YET`), among them ``attention`` in each head layout
``to_onnx`` emits (small heads transposed, wider heads, grouped-query with rotary and a
key padding mask; with and without biases, causal or not), RMSNorm and rank-3
``linear``, comes back as the same graph, op for op, with the same attributes (but other
spellings of the same in the cases of :data:`SPELLED`), parameters bitwise and the same
outputs; so do the transformer examples and Hugging Face GPT-2, Llama and BERT
imported with ``from_torch``. The cases of :data:`NOT_YET` come back as the other ops it
lists, computing the same.

"The same graph" is the graph in eval mode (:func:`in_eval`), which is all an ONNX file
holds: ``dropout`` and ``stochastic_depth`` are the identity there, and ``to_onnx`` writes
them and ``identity`` alike as an ONNX ``Identity``, so no reader can tell them apart.
``from_onnx`` reads an ``Identity`` through (in other exporters' files they are plumbing,
not layers), except where that would make a graph output a graph input: the IR holds
every output to a node (``verify``), so there it writes an ``identity`` node, named after
the ONNX node (the IR node the file was written from). So a dropout, stochastic_depth or
identity inside a graph is expected read through, and one that makes an output of an
input comes back as that ``identity``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import grow_ir as gi
from grow_ir.backends.torch import to_torch
from grow_ir.ir.graph import Graph, Node
from grow_ir.ir.ops import OPS
from grow_ir.ir.ops.norm import rms_eps
from grow_ir.probes import random_inputs
from grow_ir.spec import example_path
from tests import hf_models as hf
from tests.test_hf_transformers import bert_inputs, relative, tokens
from tests.test_onnx_ops import CASES, single_op_graph

TOL = 1e-5
NOT_YET = {
    "pad-nothing-scalar": ("identity",),  # an ONNX Identity: a pad of nothing
    "adaptive_avgpool2d-7x2": ("avgpool2d",),
    "flatten-all-known": ("reshape",),
    "add-3": ("add", "add"),
    "mul-3": ("mul", "mul"),
    "add-broadcast-3": ("add", "add"),
    "mean-spatial": ("global_avgpool",),
    "mean-keep": ("adaptive_avgpool2d",),
    "transpose": ("permute",),
}
"""Cases of tests/test_onnx_ops.py whose ONNX form ``from_onnx`` reads back as other ops
computing the same (their file is also another op's: ``transpose`` is a ``Transpose`` as
``permute`` writes it), and those ops (:func:`test_the_others_come_back_as_not_yet_says`)."""
SPELLED = {
    "conv1d-same-dil": "padding 'same' comes back as its number",
    "conv2d-same": "padding 'same' comes back as its number",
    "conv2d-valid-groups": "padding 'valid' comes back as 0",
    "batchnorm-4d": "momentum None (a cumulative average) is not in the file",
    "batchnorm-noaffine": "no affine parameters come back as ones and zeros",
    "layernorm-noaffine": "no affine parameters come back as ones, without bias",
    "maxpool2d": "stride unset comes back as the kernel size",
    "avgpool2d": "stride unset comes back as the kernel size",
    "avgpool2d-ceil-incl": "ceil_mode that changes no size comes back unset",
    "flatten": "end_dim -1 comes back as its number",
    "flatten-tail": "end_dim -1 comes back as its number",
    "sum-last": "dim -1 comes back as its number",
    "unflatten": "dim -1 comes back as its number",
    "unsqueeze-last": "dim -1 comes back as its number",
    "select-last": "dim -1 comes back as its number",
}
"""Cases whose attributes (and parameters) come back as other spellings of the same;
every other case comes back with the same attributes and parameters, bitwise."""


def _attrs(graph: Graph, name: str) -> dict:
    """A node's attributes as its ONNX file keeps them: what only training uses left out
    (dropout, an embedding's ``padding_idx``, whose row gets no gradient), and an
    rmsnorm's ``eps`` (its default: the number it stands for) a float32 constant."""
    node = graph.node(name)
    attrs = {k: v for k, v in node.attr_dict().items() if k not in ("dropout", "padding_idx")}
    if node.op == "rmsnorm":
        attrs["eps"] = np.float32(rms_eps(node.attrs, graph.types[node.inputs[0]].torch_dtype))
    return attrs


def in_eval(graph: Graph) -> Graph:
    """``graph`` as its ONNX file holds it: a node that is the identity in eval mode (its
    op's ``eval_identity``: identity, dropout, stochastic_depth; an ONNX ``Identity``, so
    indistinguishable in the file) is read through, except where an output would be left
    a graph input: IR outputs name nodes, so that output keeps its node as an
    ``identity`` (``from_onnx`` adds it there, after the other nodes)."""
    through: dict[str, str] = {}
    nodes = []
    for n in graph.nodes:
        inputs = tuple(through.get(i, i) for i in n.inputs)
        if OPS[n.op].facts.eval_identity:
            through[n.name] = inputs[0]
        else:
            nodes.append(n.replace(inputs=inputs))
    outputs = {out: through.get(node, node) for out, node in graph.outputs.items()}
    for out, node in graph.outputs.items():
        if outputs[out] in graph.inputs:
            nodes.append(Node(node, "identity", {}, (outputs[out],)))
            outputs[out] = node
    return graph.replace(nodes=tuple(nodes), outputs=outputs)


def assert_same_graph(back: Graph, graph: Graph, *, exact: bool = True) -> None:
    """``back`` has the nodes (names, ops, inputs, ties), inputs and outputs of ``graph``
    in eval mode (:func:`in_eval`: dropout, stochastic_depth and identity, which an ONNX
    file does not hold apart from their input, read through, or an identity where an
    output is an input), and computes ``graph``'s outputs on random inputs; ``exact``:
    also the same attributes and parameters (bitwise). Without it, attributes may be
    other spellings of the same (``padding`` ``"same"`` comes back as its number, a
    batchnorm without affine parameters as one with ones and zeros)."""
    want = in_eval(graph)
    assert [(n.name, n.op, n.inputs, n.share) for n in back.nodes] == [
        (n.name, n.op, n.inputs, n.share) for n in want.nodes
    ]
    assert dict(back.inputs) == dict(graph.inputs)
    assert back.outputs == want.outputs
    if exact:
        for n in back.nodes:
            assert _attrs(back, n.name) == _attrs(want, n.name), n.name
        assert set(back.params) == set(graph.params)
        for key, value in graph.params.items():
            assert torch.equal(back.params[key], value), key
    assert_computes_the_same(back, graph)


def assert_computes_the_same(back: Graph, graph: Graph) -> None:
    """``back`` gives ``graph``'s outputs (eval mode) on two draws of random inputs."""
    for seed in (1, 2):
        feed = random_inputs(graph, seed=seed)
        with torch.no_grad():
            want, got = to_torch(graph).eval()(**feed), to_torch(back).eval()(**feed)
        assert relative(got, want) <= TOL


def with_random_biases(graph: Graph) -> Graph:
    """``graph`` with every bias drawn at random (attention's start at zero, which would
    hide a bias imported wrongly, such as an unscaled query bias)."""
    gen = torch.Generator().manual_seed(6)
    params = {
        k: torch.randn(v.shape, generator=gen) if k.endswith("bias") else v
        for k, v in graph.params.items()
    }
    return graph.replace(params=params)


@pytest.mark.parametrize(
    "case",
    [c for c in CASES if c[0] not in NOT_YET],
    ids=lambda c: c[0] if isinstance(c, tuple) else c,
)
def test_every_op_comes_back_from_our_file(case) -> None:
    """Each case of tests/test_onnx_ops.py (every op, in several attribute variants) but
    :data:`NOT_YET`: attention in all its layouts, RMSNorm, rank-3 linear among them;
    with the same attributes and parameters but in the cases of :data:`SPELLED`."""
    name, inputs, op, attrs, arity = case
    graph = with_random_biases(single_op_graph(inputs, op, attrs, arity))
    assert_same_graph(gi.from_onnx(gi.to_onnx(graph)), graph, exact=name not in SPELLED)


@pytest.mark.parametrize("name", sorted(NOT_YET))
def test_the_others_come_back_as_not_yet_says(name: str) -> None:
    """Each case of :data:`NOT_YET` comes back as the ops it lists (after the nodes that
    make its inputs), computing the same."""
    _, inputs, op, attrs, arity = next(c for c in CASES if c[0] == name)
    graph = with_random_biases(single_op_graph(inputs, op, attrs, arity))
    back = gi.from_onnx(gi.to_onnx(graph))
    made = {n.name for n in graph.nodes if n.name != "op"}  # single_op_graph's inputs
    assert tuple(n.op for n in back.nodes if n.name not in made) == NOT_YET[name]
    assert_computes_the_same(back, graph)


@pytest.mark.parametrize("example", ["transformer", "gpt_bytes"])
def test_the_transformer_examples_come_back(example: str) -> None:
    graph = with_random_biases(gi.load_spec(example_path(example)))
    assert_same_graph(gi.from_onnx(gi.to_onnx(graph)), graph)


def _hf_graph(name: str) -> Graph:
    if name == "gpt2":
        return gi.from_torch(hf.gpt2(True), tokens(0))
    x, types, mask = bert_inputs(0)  # rows 1 and 2 padded
    if name == "llama-masked":  # grouped-query rotary attention with a key padding mask
        return gi.from_torch(hf.llama(False), {"input_ids": x, "attention_mask": mask})
    feed = {"input_ids": x, "attention_mask": mask, "token_type_ids": types}
    return gi.from_torch(hf.bert(), feed)


@pytest.mark.parametrize("name", ["gpt2", "llama-masked", "bert"])
def test_hugging_face_graphs_come_back_from_our_file(name: str) -> None:
    """from_torch, to_onnx, from_onnx: the graph ``from_torch`` gave, op for op."""
    graph = _hf_graph(name)
    assert "attention" in {n.op for n in graph.nodes}
    assert_same_graph(gi.from_onnx(gi.to_onnx(graph)), graph)
