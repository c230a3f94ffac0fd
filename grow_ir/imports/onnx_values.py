"""The values of an ONNX model, by evaluation: what the ONNX pattern importer reads.

As for ``torch.export`` programs (:mod:`grow_ir.imports.torch_values`), constructs that
exporters write out op by op (attention, a GELU, RMSNorm, folded position tables) are
recognised by what they compute. :func:`evaluate` runs a copy of the model whose every
node output is a graph output in onnxruntime, on :data:`RUNS` random draws of its inputs
(integer inputs in ``[0, rows)`` of the smallest table they index, else 0/1 with the first
key kept, so token ids stay valid and a padding mask varies), and records which graph
inputs each value depends on (a ``Shape`` reads none: its value is the shape's).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import torch

from grow_ir.errors import GrowError
from grow_ir.imports.torch_values import RUNS, redraw

_NUMPY = {
    onnx.TensorProto.FLOAT: torch.float32,
    onnx.TensorProto.FLOAT16: torch.float16,
    onnx.TensorProto.INT64: torch.int64,
    onnx.TensorProto.BOOL: torch.bool,
}

SYMBOLIC = ((2, 5, 3, 7), (3, 6, 4, 2))
"""Per run, the sizes drawn for the dims the file names but does not fix, one per name in
order of appearance: distinct within a run, so that a value counting one axis tells which,
and other between runs, so that what depends on a size shows it (the second, usually the
sequence, long enough for a causal mask to show)."""


@dataclass
class Evaluation:
    """Every ONNX value's tensor on :data:`RUNS` draws, and its graph-input ancestry.

    Attributes:
        runs: per run, value name -> tensor (graph inputs, initializers and node outputs).
        depends: value name -> names of the graph inputs it is computed from.
        session: the onnxruntime session that computed them.
    """

    runs: list[dict[str, torch.Tensor]]
    depends: dict[str, frozenset[str]]
    session: Any = None  # the onnxruntime session of the copy: runs the file again

    def run(self, outputs: list[str], feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        """The file's values ``outputs`` on ``feed`` (its graph inputs), from the session
        that evaluated it (every node output of the copy is one of its outputs)."""
        return self.session.run(outputs, feed)

    def value(self, name: str, run: int = 0) -> torch.Tensor:
        """The tensor ``name`` held in run ``run``."""
        return self.runs[run][name]

    def constant(self, name: str) -> bool:
        """True when ``name`` reads no graph input: a function of the shapes only."""
        return not self.depends.get(name)


def evaluate(proto: onnx.ModelProto, consts: dict[str, np.ndarray]) -> Evaluation:
    """Run ``proto`` (unchanged) on :data:`RUNS` draws of its inputs, keeping every value.

    Raises GrowError when onnxruntime cannot run the model.
    """
    import onnxruntime as ort

    g = proto.graph
    inputs = [i for i in g.input if i.name not in consts]
    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    have = {o.name for o in copy.graph.output}
    for node in copy.graph.node:
        for out in node.output:
            if out and out not in have:
                copy.graph.output.append(onnx.ValueInfoProto(name=out))
                have.add(out)
    names = [o.name for o in copy.graph.output]
    try:
        session = ort.InferenceSession(copy.SerializeToString(), providers=["CPUExecutionProvider"])
    except Exception as exc:  # what onnxruntime refuses, the user needs to see
        raise GrowError(
            "onnxruntime cannot evaluate the ONNX model",
            expected="a model onnxruntime runs",
            found=f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
        ) from None
    gen = torch.Generator().manual_seed(1234)
    bounds = _index_bounds(g, consts)
    symbols: list[str] = []
    for i in inputs:
        for d in i.type.tensor_type.shape.dim:
            if not d.HasField("dim_value") and d.dim_param not in symbols:
                symbols.append(d.dim_param)
    # the same tensors in every run (constants; read, never written: the builder copies
    # what it keeps), converted once: a file's initializers can be hundreds of MB
    initializers = {k: torch.from_numpy(np.array(a)) for k, a in consts.items()}
    runs = []
    for run in range(RUNS):
        drawn = SYMBOLIC[run % len(SYMBOLIC)]
        sizes = {name: drawn[k % len(drawn)] for k, name in enumerate(symbols)}
        feed = {i.name: _draw(i, bounds.get(i.name, 2), sizes, gen) for i in inputs}
        got = session.run(names, {k: v.numpy() for k, v in feed.items()})
        values = {**initializers, **feed}
        values.update({n: torch.from_numpy(np.array(a)) for n, a in zip(names, got)})
        runs.append(values)
    depends: dict[str, frozenset[str]] = {i.name: frozenset({i.name}) for i in inputs}
    for node in g.node:
        reads = frozenset().union(*(depends.get(i, frozenset()) for i in node.input))
        if node.op_type in ("Shape", "Size"):  # what it reads is a shape, not values
            reads = frozenset()
        for out in node.output:
            depends[out] = reads
    return Evaluation(runs=runs, depends=depends, session=session)


def _index_bounds(g: onnx.GraphProto, consts: dict[str, np.ndarray]) -> dict[str, int]:
    """Input name -> rows of the smallest initializer table a ``Gather`` looks it up in
    (through Reshape, Cast, Squeeze, Unsqueeze)."""
    source = {i.name: i.name for i in g.input}
    bounds: dict[str, int] = {}
    for node in g.node:
        if node.op_type in ("Reshape", "Cast", "Squeeze", "Unsqueeze", "Identity"):
            if node.input and node.input[0] in source:
                source[node.output[0]] = source[node.input[0]]
        elif node.op_type == "Gather" and node.input[0] in consts and node.input[1] in source:
            name = source[node.input[1]]
            rows = int(consts[node.input[0]].shape[0])
            bounds[name] = min(rows, bounds.get(name, rows))
    return bounds


def _draw(
    info: onnx.ValueInfoProto, high: int, sizes: dict[str, int], gen: torch.Generator
) -> torch.Tensor:
    t = info.type.tensor_type
    if t.elem_type not in _NUMPY:
        raise GrowError(
            "unsupported input type",
            field=f"inputs.{info.name}",
            expected="float32, float16, int64 or bool",
            found=onnx.TensorProto.DataType.Name(t.elem_type),
        )
    shape = [
        int(d.dim_value) if d.HasField("dim_value") else sizes[d.dim_param] for d in t.shape.dim
    ]
    dtype = _NUMPY[t.elem_type]
    like = torch.full(shape, high - 1, dtype=dtype) if dtype == torch.int64 else None
    return redraw(like if like is not None else torch.zeros(shape, dtype=dtype), gen)
