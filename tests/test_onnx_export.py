"""to_onnx as a whole: names, dynamic dims, tasks, shared layers, dtypes, files, checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, numpy_helper

import grow_ir.backends.onnx as onnx_backend
from grow_ir.backends import onnx_check
from grow_ir.backends.onnx import DEFAULT_OPSET, MAX_OPSET, MIN_OPSET, save, to_onnx
from grow_ir.backends.onnx_check import check_model, check_parity, session
from grow_ir.backends.torch import to_torch
from grow_ir.errors import CheckFailed, GrowError, VerifyError
from grow_ir.ir import Graph, Node, TensorType, initialize, verify
from grow_ir.probes import randomize_norms


def build(inputs: dict, nodes: list[Node], outputs: dict, seed: int = 0) -> Graph:
    graph = Graph(inputs=inputs, nodes=nodes, outputs=outputs, name="net")
    return verify(randomize_norms(initialize(graph, seed=seed), seed=seed + 1))


def cnn() -> Graph:
    """conv -> bn -> relu -> flatten -> linear, on [batch, 2, 4, 4]."""
    return build(
        {"image": TensorType(("batch", 2, 4, 4))},
        [
            Node(
                "stage1.conv",
                "conv2d",
                {"out_channels": 3, "kernel_size": 3, "padding": 1},
                ("image",),
            ),
            Node("stage1.bn", "batchnorm", {}, ("stage1.conv",)),
            Node("stage1.act", "relu", {}, ("stage1.bn",)),
            Node("flat", "flatten", {}, ("stage1.act",)),
            Node("head", "linear", {"out_features": 5}, ("flat",)),
        ],
        {"logits": "head"},
    )


def two_tasks() -> Graph:
    """A shared trunk with heads ``a`` and ``b``; ``b`` reuses the trunk layer ``t2`` (share)."""
    x = TensorType(("batch", 6))
    return build(
        {"x": x, "unused_by_a": x},
        [
            Node("t1", "linear", {"out_features": 6}, ("x",)),
            Node("t1_act", "relu", {}, ("t1",)),
            Node("a_head", "linear", {"out_features": 2}, ("t1_act",)),
            Node("b_in", "add", {}, ("t1_act", "unused_by_a")),
            Node("b_shared", "linear", {"out_features": 6}, ("b_in",), share="t1"),
            Node("b_head", "linear", {"out_features": 3}, ("b_shared",)),
        ],
        {"a": "a_head", "b": "b_head"},
    )


def transformer_block() -> Graph:
    return build(
        {"tokens": TensorType(("batch", "seq"), "int64")},
        [
            Node("embed", "embedding", {"num_embeddings": 10, "embedding_dim": 8}, ("tokens",)),
            Node("block0.ln", "layernorm", {}, ("embed",)),
            Node("block0.attn", "attention", {"num_heads": 2, "causal": True}, ("block0.ln",)),
            Node("block0.res", "add", {}, ("block0.attn", "embed")),
            Node("head", "linear", {"out_features": 10}, ("block0.res",)),
        ],
        {"logits": "head"},
    )


# ---- names and dims -------------------------------------------------------------------


def test_inputs_outputs_and_dims_keep_their_names() -> None:
    model = to_onnx(cnn())
    (inp,) = model.graph.input
    (out,) = model.graph.output
    assert inp.name == "image" and out.name == "logits"
    in_dims = inp.type.tensor_type.shape.dim
    assert in_dims[0].dim_param == "batch" and [d.dim_value for d in in_dims[1:]] == [2, 4, 4]
    out_dims = out.type.tensor_type.shape.dim
    assert out_dims[0].dim_param == "batch" and out_dims[1].dim_value == 5


def test_initializers_are_the_parameters_by_name() -> None:
    graph = cnn()
    model = to_onnx(graph)
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    used = {k for k in graph.params if not k.endswith("num_batches_tracked")}
    assert used <= set(inits)
    for name in used:
        assert np.array_equal(inits[name], graph.params[name].numpy()), name
    # anything else is a small constant named under a node or parameter scope
    assert all("/" in name for name in set(inits) - used)


def test_nodes_and_values_are_named_after_ir_nodes() -> None:
    graph = transformer_block()
    model = to_onnx(graph)
    onnx_nodes = {n.name: n for n in model.graph.node}
    for n in graph.nodes:
        # the head writes the graph output directly; every other value is its node's name
        assert onnx_nodes[n.name].output == ["logits" if n.name == "head" else n.name]
        assert onnx_nodes[n.name].doc_string.startswith(f"grow-ir {n.op}")
    parts = [name for name in onnx_nodes if name.startswith("block0.attn/")]
    assert "block0.attn/qkv" in parts and "block0.attn/softmax" in parts
    assert "Identity" not in {n.op_type for n in model.graph.node}


def test_efficient_lowerings() -> None:
    ops = [n.op_type for n in to_onnx(cnn()).graph.node]
    assert ops == ["Conv", "BatchNormalization", "Relu", "Reshape", "Gemm"]
    conv = to_onnx(cnn()).graph.node[0]
    assert list(conv.input) == ["image", "stage1.conv.weight", "stage1.conv.bias"]
    seq = {n.name: n for n in to_onnx(transformer_block()).graph.node}
    seq_ops = {n.op_type for n in seq.values()}
    assert {"Gather", "LayerNormalization", "MatMul", "Softmax", "Trilu"} <= seq_ops
    # a biased linear on 3-D inputs (and each attention projection) is a Gemm on the rows,
    # with its bias: no MatMul + Add for onnxruntime to fuse into slower contrib kernels
    assert seq["head/gemm"].input[1:] == ["head.weight", "head.bias"]
    assert seq["block0.attn/qkv_gemm"].op_type == seq["block0.attn/out_proj_gemm"].op_type == "Gemm"
    assert "Add" not in {seq[name].op_type for name in seq if name.startswith("head")}


def test_onnxruntime_fuses_nothing_slower(tmp_path: Path) -> None:
    """onnxruntime's CPU BiasGelu is slower than the Gemm + Gelu it replaces, and so is a
    transpose that copies small heads block by block: the graph it runs for a pre-LN block
    (small heads) has neither. Inner values keep their declared types for viewers."""
    graph = build(
        {"tokens": TensorType(("batch", "seq"), "int64")},
        [
            Node("embed", "embedding", {"num_embeddings": 10, "embedding_dim": 16}, ("tokens",)),
            Node("ln1", "layernorm", {}, ("embed",)),
            Node("attn", "attention", {"num_heads": 2, "causal": True}, ("ln1",)),
            Node("res1", "add", {}, ("attn", "embed")),
            Node("ln2", "layernorm", {}, ("res1",)),
            Node("fc1", "linear", {"out_features": 32}, ("ln2",)),
            Node("gelu", "gelu", {}, ("fc1",)),
            Node("fc2", "linear", {"out_features": 16}, ("gelu",)),
            Node("res2", "add", {}, ("fc2", "res1")),
            Node("ln_f", "layernorm", {}, ("res2",)),
            Node("head", "linear", {"out_features": 10}, ("ln_f",)),
        ],
        {"logits": "head"},
    )
    optimized = tmp_path / "optimized.onnx"
    session(to_onnx(graph), optimized_model_filepath=str(optimized))
    nodes = onnx.load(optimized).graph.node
    assert "BiasGelu" not in {n.op_type for n in nodes}
    perms = [list(a.ints) for n in nodes if n.op_type == "Transpose" for a in n.attribute]
    assert perms and [0, 2, 1, 3] not in perms
    assert all(n.doc_string.endswith("float32[batch, seq, 16]") for n in nodes if n.name == "res2")
    declared = {v.name for v in to_onnx(graph).graph.value_info}
    assert {"ln1", "attn", "res1", "fc1", "gelu", "res2"} <= declared


def test_output_named_like_another_node() -> None:
    x = TensorType(("batch", 3))
    graph = build(
        {"x": x},
        [Node("act", "relu", {}, ("x",)), Node("head", "tanh", {}, ("act",))],
        {"act": "head", "head": "head", "hidden": "act"},
    )
    model = to_onnx(graph)
    assert [o.name for o in model.graph.output] == ["act", "head", "hidden"]
    writers = {v: n.op_type for n in model.graph.node for v in n.output}
    assert writers == {
        "act/value": "Relu",  # renamed: the output 'act' is another node's value
        "head": "Tanh",
        "act": "Identity",
        "hidden": "Identity",
    }
    check_model(model)
    assert check_parity(graph, model) <= 1e-5


def test_output_named_like_an_input_is_refused() -> None:
    x = TensorType(("batch", 3))
    graph = build({"x": x}, [Node("act", "relu", {}, ("x",))], {"x": "act"})
    with pytest.raises(GrowError, match="name of a graph input"):
        to_onnx(graph)


# ---- dynamic dims ---------------------------------------------------------------------


def test_one_file_serves_any_batch_and_length(tmp_path: Path) -> None:
    graph = transformer_block()
    path = tmp_path / "lm.onnx"
    to_onnx(graph, path)
    sess = session(path)
    module = to_torch(graph).eval()
    for batch, seq in [(1, 1), (4, 3), (7, 11)]:
        tokens = torch.randint(0, 10, (batch, seq))
        (got,) = sess.run(None, {"tokens": tokens.numpy()})
        with torch.no_grad():
            want = module(tokens).numpy()
        assert got.shape == (batch, seq, 10)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


# ---- tasks and shared layers ----------------------------------------------------------


def test_task_export_has_only_what_the_task_uses() -> None:
    graph = two_tasks()
    model = to_onnx(graph, task="a")
    assert [i.name for i in model.graph.input] == ["x"]
    assert [o.name for o in model.graph.output] == ["a"]
    params = {t.name for t in model.graph.initializer if "/" not in t.name}
    assert params == {"t1.weight", "t1.bias", "a_head.weight", "a_head.bias"}
    assert check_parity(graph, model, task="a") <= 1e-5
    helper_props = {p.key: p.value for p in model.metadata_props}
    assert helper_props["grow_ir.task"] == "a"


def test_shared_layer_uses_one_initializer() -> None:
    graph = two_tasks()
    model = to_onnx(graph, task="b")
    names = [t.name for t in model.graph.initializer]
    assert names.count("t1.weight") == 1 and not any(n.startswith("b_shared.") for n in names)
    users = [n.name for n in model.graph.node if "t1.weight" in n.input]
    assert sorted(users) == ["b_shared", "t1"]
    check_model(model)
    assert check_parity(graph, model, task="b") <= 1e-5
    assert check_parity(graph) <= 1e-5


def test_shared_attention_derives_its_weights_once() -> None:
    seq = TensorType(("batch", "seq", 4))
    graph = build(
        {"x": seq},
        [
            Node("attn", "attention", {"num_heads": 2}, ("x",)),
            Node("again", "attention", {"num_heads": 2}, ("attn",), share="attn"),
        ],
        {"y": "again"},
    )
    model = to_onnx(graph)
    derived = [n.name for n in model.graph.node if n.name.split("/")[0] in graph.params]
    assert sorted(derived) == ["attn.in_proj_bias/scaled", "attn.in_proj_weight/scaled"]
    check_model(model)
    assert check_parity(graph, model) <= 1e-5


def test_unknown_task_is_refused() -> None:
    with pytest.raises(GrowError, match="unknown task"):
        to_onnx(two_tasks(), task="c")


# ---- dtypes ---------------------------------------------------------------------------


def cast(graph: Graph, dtype: str) -> Graph:
    inputs = {k: TensorType(t.shape, dtype) if t.is_float else t for k, t in graph.inputs.items()}
    tdt = TensorType((), dtype).torch_dtype
    params = {k: v.to(tdt) if v.is_floating_point() else v for k, v in graph.params.items()}
    return verify(graph.replace(inputs=inputs, params=params))


def test_float16_exports_and_matches() -> None:
    graph = cast(cnn(), "float16")
    model = to_onnx(graph)
    init = {t.name: t for t in model.graph.initializer}
    assert init["head.weight"].data_type == TensorProto.FLOAT16
    assert model.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT16
    check_model(model)
    assert check_parity(graph, model) <= onnx_check.TOLERANCE["float16"]


def test_float16_attention_matches() -> None:
    seq = TensorType(("batch", "seq", 8), "float16")
    graph = build(
        {"x": seq},
        [
            Node("ln", "layernorm", {}, ("x",)),
            Node("attn", "attention", {"num_heads": 2, "causal": True}, ("ln",)),
            Node("act", "gelu", {}, ("attn",)),
        ],
        {"y": "act"},
    )
    model = to_onnx(graph)
    check_model(model)
    assert check_parity(graph, model) <= onnx_check.TOLERANCE["float16"]


def test_bfloat16_is_refused_with_the_place() -> None:
    graph = cast(cnn(), "bfloat16")
    with pytest.raises(GrowError, match="bfloat16 cannot be exported") as info:
        to_onnx(graph)
    assert info.value.field == "inputs.image"
    assert "float16 or float32" in str(info.value)


# ---- arguments ------------------------------------------------------------------------


@pytest.mark.parametrize("opset", [MIN_OPSET - 1, MAX_OPSET + 1])
def test_opset_out_of_range_is_refused(opset: int) -> None:
    with pytest.raises(GrowError, match="unsupported ONNX opset"):
        to_onnx(cnn(), opset=opset)


def test_default_opset_and_ir_version_are_recorded() -> None:
    model = to_onnx(cnn())
    assert model.opset_import[0].version == DEFAULT_OPSET == 20
    assert model.ir_version == onnx.helper.find_min_ir_version_for(model.opset_import)
    assert model.producer_name == "grow-ir"


def test_invalid_graph_is_refused() -> None:
    graph = cnn()
    params = dict(graph.params)
    del params["head.weight"]
    with pytest.raises(VerifyError, match="missing parameter"):
        to_onnx(graph.replace(params=params))


# ---- files ----------------------------------------------------------------------------


def test_path_gets_the_serialised_model(tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    model = to_onnx(cnn(), path)
    assert path.read_bytes() == model.SerializeToString()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_failed_check_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    to_onnx(cnn(), path)  # an earlier grow-ir export, which a passing save may replace
    old = path.read_bytes()
    seen: list[Path] = []

    def fail(staged: Path) -> None:
        seen.append(staged)
        raise CheckFailed("no", expected="x", found="y")

    with pytest.raises(CheckFailed):
        save(to_onnx(cnn()), path, before_replace=fail)
    assert seen and seen[0].name == "m.onnx" and seen[0].parent != tmp_path
    assert path.read_bytes() == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_unwritable_path_is_a_grow_error(tmp_path: Path) -> None:
    with pytest.raises(GrowError, match="cannot write the ONNX file") as info:
        to_onnx(cnn(), tmp_path / "missing" / "m.onnx")
    assert info.value.file == str(tmp_path / "missing" / "m.onnx")


def test_large_models_keep_tensors_in_a_side_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(onnx_backend, "EXTERNAL_DATA_BYTES", 1000)
    x = TensorType(("batch", 32))
    graph = build({"x": x}, [Node("fc", "linear", {"out_features": 32}, ("x",))], {"y": "fc"})
    path = tmp_path / "big.onnx"
    model = to_onnx(graph, path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.onnx", "big.onnx.data"]
    assert model.graph.initializer[0].HasField("raw_data")  # the returned model is whole
    check_model(path)
    assert check_parity(graph, path) <= 1e-5


# ---- the checks themselves ------------------------------------------------------------


def test_parity_check_catches_a_wrong_model() -> None:
    graph = cnn()
    model = to_onnx(graph)
    for t in model.graph.initializer:
        if t.name == "head.bias":
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t) + 1e-3, t.name))
    with pytest.raises(CheckFailed, match="differs from the torch backend") as info:
        check_parity(graph, model)
    assert info.value.field == "outputs.logits"


def test_parity_check_catches_a_wrong_shape() -> None:
    graph = cnn()
    model = to_onnx(graph)
    head = model.graph.node[-1]
    assert list(head.output) == ["logits"]
    head.output[0] = "narrow"
    model.graph.node.append(
        onnx.helper.make_node("Concat", ["narrow", "narrow"], ["logits"], name="wide", axis=1)
    )
    with pytest.raises(CheckFailed, match="another shape or dtype"):
        check_parity(graph, model)


def test_model_check_catches_an_invalid_model() -> None:
    model = to_onnx(cnn())
    model.graph.node[0].input[1] = "no_such_value"
    with pytest.raises(CheckFailed, match="checker rejects"):
        check_model(model)


def test_providers_prefer_cuda_without_tf32(monkeypatch: pytest.MonkeyPatch) -> None:
    assert onnx_check.providers()[-1] == "CPUExecutionProvider"
    monkeypatch.setattr(
        ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"]
    )
    assert onnx_check.providers() == [
        ("CUDAExecutionProvider", {"use_tf32": "0"}),
        "CPUExecutionProvider",
    ]
