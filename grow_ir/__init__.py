"""grow-ir: grow neural networks as a compiler problem.

A network is a typed graph (:class:`Graph`) written as a YAML/JSON spec; growth operators
are function-preserving rewrite passes (:mod:`grow_ir.passes`); backends lower graphs to a
``torch.fx.GraphModule`` (:func:`to_torch`) and to ONNX (:func:`to_onnx`); importers bring
existing models in (:func:`from_torch`, :func:`from_onnx`).
"""

from grow_ir.backends.onnx import to_onnx
from grow_ir.backends.torch import to_torch, update_params
from grow_ir.errors import GrowError
from grow_ir.imports import from_onnx, from_torch
from grow_ir.ir import Graph, Node, TensorType
from grow_ir.passes import apply_plan
from grow_ir.spec import dump_spec, load, load_spec, save

__all__ = [
    "Graph",
    "GrowError",
    "Node",
    "TensorType",
    "apply_plan",
    "dump_spec",
    "from_onnx",
    "from_torch",
    "load",
    "load_spec",
    "save",
    "to_onnx",
    "to_torch",
    "update_params",
]
__version__ = "0.1.0"
