"""Every region of an ONNX model, found once before the per-op rules run.

Order matters as in ``from_torch``: attention first (it takes its projections along),
then a head tied to the embedding, then linear maps between reshapes, then learned
mixings (``mix``), then leaf modules fitted whole, then position ids. Also which nodes
are live: those an output depends on, a region reading only its inputs (so what only a
region reads, such as a mask built from an input, is not imported).
"""

from __future__ import annotations

import numpy as np
import onnx

from grow_ir.errors import GrowError
from grow_ir.imports.onnx_attention import attention_regions
from grow_ir.imports.onnx_patterns import (
    Found,
    Model,
    identity_reshapes,
    linear_regions,
    mix_regions,
    module_regions,
    position_regions,
    tied_head_regions,
)
from grow_ir.imports.onnx_values import Evaluation, evaluate

PATTERN_OPS = frozenset(
    {"Softmax", "Gemm", "MatMul", "Pow", "Reciprocal", "Sqrt", "Split", "CumSum"}
)
"""Op types whose presence makes the import evaluate the model to look for regions (a
file without them is imported by the per-op rules alone, with no onnxruntime run)."""


FOLDED = frozenset({"Transpose", "Mul"})
"""Op types whose node, reading only constants, is folded to the constant it gives (the
exporter's transposed copy of a weight; ``to_onnx``'s query scale folded into the
in-projection, whose stored values :func:`~grow_ir.imports.onnx_patterns.stored_rows`
reads back)."""


def find_regions(
    proto: onnx.ModelProto, consts: dict[str, np.ndarray], has_rule: set[str]
) -> tuple[Found, set[int], Evaluation | None]:
    """The regions found in ``proto`` (verified by value), the indices of live nodes and
    the evaluation they were found by (None where the file has no op of
    :data:`PATTERN_OPS`); no regions when onnxruntime cannot evaluate the file. Adds to
    ``consts`` what :data:`FOLDED` nodes of constants give."""
    g = proto.graph
    found = Found()
    evaluation = None
    if {n.op_type for n in g.node} & PATTERN_OPS:
        try:
            evaluation = evaluate(proto, consts)
        except GrowError:  # a file onnxruntime cannot run: the per-op rules say why
            return found, _live(g, found), None
        for node in g.node:
            if node.op_type in FOLDED and all(i in consts for i in node.input):
                consts[node.output[0]] = evaluation.value(node.output[0]).numpy()
        from grow_ir.backends.onnx import PRODUCER

        model = Model(g, consts, evaluation, ours=proto.producer_name == PRODUCER)
        attention_regions(model, found)
        tied_head_regions(model, found)
        linear_regions(model, found)
        mix_regions(model, found)
        module_regions(model, found, has_rule)
        position_regions(model, found)
        identity_reshapes(model, found)
    return found, _live(g, found), evaluation


def _live(g: onnx.GraphProto, found: Found) -> set[int]:
    producer = {o: i for i, n in enumerate(g.node) for o in n.output if o}
    regions = {r.output: r for r in found.regions}
    live: set[int] = set()
    stack = [o.name for o in g.output]
    seen: set[str] = set()
    while stack:
        value = stack.pop()
        if value in seen:
            continue
        seen.add(value)
        if value in found.aliases:
            live.add(producer[value])
            stack.append(found.aliases[value])
            continue
        region = regions.get(value)
        if region is not None:
            live |= set(region.nodes)
            stack.extend(region.inputs)
            continue
        i = producer.get(value)
        if i is not None:
            live.add(i)
            stack.extend(v for v in g.node[i].input if v)
    return live
