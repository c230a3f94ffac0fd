"""The ONNX backend: emit an ``onnx.ModelProto`` straight from the IR (no tracing).

Each IR node is lowered by its rule in :data:`grow_ir.backends.onnx_ops.EMIT`; names follow
the scheme of :mod:`grow_ir.backends.onnx_emit` (values and nodes after IR nodes,
initializers after parameters), graph inputs and outputs keep their names and symbolic
dims (``batch``, ``seq``) become dynamic dims, so one file serves every batch size.
Files are written atomically (:func:`save`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path

import onnx
from onnx import helper

from grow_ir.atomic import clean_leftovers, temp_dir
from grow_ir.backends.onnx_emit import ONNX_DTYPES, Emitter, value_info
from grow_ir.backends.onnx_ops import EMIT
from grow_ir.backends.torch import needed_nodes, selected_outputs
from grow_ir.errors import GrowError
from grow_ir.ir.graph import Graph, Node
from grow_ir.ir.verify import verify
from grow_ir.owned import check_replaceable_file

DEFAULT_OPSET = 20
"""The opset ``to_onnx`` emits by default.

20 is the first opset with a native Gelu (exact and tanh), and onnxruntime (1.17 and
later) has CPU and CUDA kernels at this version for every op we emit (Gemm, Conv,
BatchNormalization, LayerNormalization-17, ReduceMean-18, AveragePool-19, Gelu-20,
Softmax, Trilu, ...). Later opsets change none of these ops' semantics, only their types.
"""

MIN_OPSET = 17
"""The oldest opset we emit: the first with LayerNormalization."""

MAX_OPSET = min(onnx.defs.onnx_opset_version(), 28)
"""The newest opset we emit: the newest the installed onnx knows, up to 28 (the newest
tested against onnxruntime, for every op)."""

EXTERNAL_DATA_BYTES = 1 << 30
"""Models whose initializers hold more bytes than this are saved with their tensors in a
side file ``FILE.onnx.data`` (protobuf cannot serialise a message over 2 GiB)."""

PRODUCER = "grow-ir"


def to_onnx(
    graph: Graph,
    path: str | os.PathLike[str] | None = None,
    task: str | None = None,
    opset: int = DEFAULT_OPSET,
) -> onnx.ModelProto:
    """Emit ``graph`` as an ONNX model, and write it to ``path`` when one is given.

    Guarantees: the model passes ``onnx.checker.check_model(full_check=True)``; graph
    inputs and outputs keep their names and symbolic dims are dynamic dims; initializers
    are the graph's parameters under their own names (a shared layer's stored once);
    every ONNX node is named after the IR node it lowers (``attn/qkv`` for the parts of a
    multi-node lowering); onnxruntime matches :func:`grow_ir.to_torch` in eval mode within
    1e-5 (relative) in float32. With ``task``, the model computes that output alone, with
    only the inputs and parameters it uses. ``path`` is written atomically: a file there is
    either the complete new model or untouched.

    Raises:
        VerifyError: ``graph`` breaks an invariant of the IR.
        GrowError: ``task`` is not an output, ``opset`` is out of range, a value or
            parameter is bfloat16 (no onnxruntime kernels), or ``path`` cannot be written.
    """
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise GrowError(
            "unsupported ONNX opset",
            field="opset",
            expected=f"an opset from {MIN_OPSET} to {MAX_OPSET}",
            found=str(opset),
        )
    verify(graph)
    outputs = selected_outputs(graph, task)
    nodes = needed_nodes(graph, outputs)
    used = {i for n in nodes for i in n.inputs}
    inputs = [name for name in graph.inputs if task is None or name in used]
    _check_dtypes(graph, inputs, nodes)
    values = _value_names(graph, inputs, nodes, outputs)

    e = Emitter(graph, opset)
    for n in nodes:
        first = len(e.nodes)
        EMIT[n.op](e, n, [values[i] for i in n.inputs], values[n.name])
        if values[n.name] not in outputs:
            e.declare(values[n.name], graph.types[n.name])
        doc = _describe(n, graph)
        for proto in e.nodes[first:]:
            proto.doc_string = doc
    for out, node in outputs.items():
        if values[node] != out:
            name = out if out not in graph.node_map else f"{out}/output"
            e.add("Identity", [values[node]], out, name=name)

    onnx_graph = helper.make_graph(
        e.nodes,
        graph.name,
        [value_info(name, graph.inputs[name]) for name in inputs],
        [value_info(out, graph.types[node]) for out, node in outputs.items()],
        initializer=list(e.initializers.values()),
        value_info=e.value_info,
    )
    opsets = [helper.make_opsetid("", opset)]
    model = helper.make_model(
        onnx_graph,
        opset_imports=opsets,
        ir_version=helper.find_min_ir_version_for(opsets),
        producer_name=PRODUCER,
        producer_version=_version(),
    )
    helper.set_model_props(model, {"grow_ir.task": task or "", "grow_ir.graph": graph.name})
    if path is not None:
        save(model, path)
    return model


def _version() -> str:
    from grow_ir import __version__

    return __version__


def _describe(n: Node, graph: Graph) -> str:
    """The doc string of the ONNX nodes lowering ``n``: the IR op, its attributes and the
    type of its value (``grow-ir linear out_features=16 -> float32[batch, seq, 16]``)."""
    attrs = " ".join(f"{k}={v}" for k, v in n.attr_dict().items())
    share = f" (shares {n.share})" if n.share else ""
    return f"grow-ir {n.op} {attrs}".rstrip() + f"{share} -> {graph.types[n.name]}"


def _check_dtypes(graph: Graph, inputs: list[str], nodes: list[Node]) -> None:
    """Refuse bfloat16 (and any dtype without an ONNX mapping) with the place at fault.

    Checking values suffices: the verifier holds every parameter to the dtype of its
    node's input (or float32).
    """
    places = [(None, f"inputs.{name}", graph.inputs[name].dtype) for name in inputs]
    places += [(n.name, None, graph.types[n.name].dtype) for n in nodes]
    for node, field, dtype in places:
        if dtype not in ONNX_DTYPES:
            raise GrowError(
                f"{dtype} cannot be exported to ONNX: onnxruntime has no {dtype} kernels for "
                "most ops and ONNX pools do not accept it before opset 22; cast the graph to "
                "float16 or float32 before exporting",
                node=node,
                field=field,
                expected=" or ".join(ONNX_DTYPES),
                found=dtype,
            )


def _value_names(
    graph: Graph, inputs: list[str], nodes: list[Node], outputs: Mapping[str, str]
) -> dict[str, str]:
    """ONNX value names of the IR values.

    A node whose value is one output and nothing else computes it under the output's name
    (``head`` writes ``logits``, no Identity needed); any other value keeps its IR name,
    unless an output of another node is called that (then it becomes ``name/value``).
    """
    for name in inputs:
        if name in outputs:
            raise GrowError(
                "an output has the name of a graph input, which ONNX cannot represent",
                field=f"outputs.{name}",
                expected="output names distinct from input names",
                found=repr(name),
            )
    values = {name: name for name in inputs}
    read = {i for n in nodes for i in n.inputs}
    taken = set(values) | {n.name for n in nodes}
    heads: dict[str, list[str]] = {}
    for out, node in outputs.items():
        heads.setdefault(node, []).append(out)
    for n in nodes:
        outs = heads.get(n.name, [])
        if len(outs) == 1 and n.name not in read and (outs[0] == n.name or outs[0] not in taken):
            values[n.name] = outs[0]
        elif n.name in outputs and outputs[n.name] != n.name:
            values[n.name] = f"{n.name}/value"
        else:
            values[n.name] = n.name
    return values


# ---- files ----------------------------------------------------------------------------


def save(
    model: onnx.ModelProto,
    path: str | os.PathLike[str],
    *,
    before_replace: Callable[[Path], None] | None = None,
) -> None:
    """Write ``model`` to ``path`` atomically.

    The model is written to a temporary file in the same folder, then moved over ``path``
    with ``os.replace``: ``path`` is either the complete new model or unchanged. A model
    with more than :data:`EXTERNAL_DATA_BYTES` of initializers keeps its tensors in
    ``path + ".data"``, written and moved the same way. ``before_replace(temp_path)`` runs
    on the written temporary model (a check); if it raises, nothing is written.

    Raises:
        GrowError: the folder does not exist or cannot be written.
    """
    target = Path(path)
    folder = target.parent
    data_file = folder / f"{target.name}.data"
    ours = _written_by_us(target)
    check_replaceable_file(target, ours=ours, what="an ONNX model")
    check_replaceable_file(data_file, ours=ours, what="an ONNX model's data file")
    data_name = f"{target.name}.data"
    try:
        clean_leftovers(target)
        with temp_dir(target, [target.name, data_name], "export") as tmp:
            staged = tmp / target.name
            if _initializer_bytes(model) > EXTERNAL_DATA_BYTES:
                external = onnx.ModelProto()
                external.CopyFrom(model)
                onnx.save_model(
                    external,
                    staged,
                    save_as_external_data=True,
                    all_tensors_to_one_file=True,
                    location=data_name,
                    size_threshold=1024,
                )
            else:
                staged.write_bytes(model.SerializeToString())
            if before_replace is not None:
                before_replace(staged)
            if (tmp / data_name).exists():
                os.replace(tmp / data_name, folder / data_name)
            os.replace(staged, target)
    except OSError as exc:
        raise GrowError(
            "cannot write the ONNX file",
            file=str(target),
            expected="a path in an existing, writable folder",
            found=exc.strerror or str(exc),
        ) from None


def _written_by_us(path: Path) -> bool:
    """Whether ``path`` is an ONNX model that grow-ir produced (read without its data)."""
    if not path.is_file():
        return False
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # any unreadable file is simply not ours
        return False
    return model.producer_name == PRODUCER


def _initializer_bytes(model: onnx.ModelProto) -> int:
    return sum(len(t.raw_data) for t in model.graph.initializer)
