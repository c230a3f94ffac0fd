"""Importers: existing models (PyTorch modules, ONNX files) into verified Graphs."""

from grow_ir.imports.builder import ImportRefused
from grow_ir.imports.onnx_import import from_onnx
from grow_ir.imports.torch_import import from_torch

__all__ = ["ImportRefused", "from_onnx", "from_torch"]
