"""The public API of ``import grow_ir as gi`` is exactly DESIGN.md's list."""

from __future__ import annotations

import grow_ir as gi
from grow_ir.backends.onnx import to_onnx
from grow_ir.backends.torch import to_torch, update_params
from grow_ir.errors import GrowError, SpecError
from grow_ir.imports import from_onnx, from_torch
from grow_ir.ir import Graph, Node, TensorType
from grow_ir.passes import apply_plan
from grow_ir.spec import dump_spec, load, load_spec, save

DESIGN_API = [
    "Graph",
    "Node",
    "TensorType",
    "GrowError",
    "load_spec",
    "dump_spec",
    "save",
    "load",
    "apply_plan",
    "to_torch",
    "update_params",
    "to_onnx",
    "from_torch",
    "from_onnx",
]


def test_all_is_exactly_the_design_list():
    assert sorted(gi.__all__) == sorted(DESIGN_API)
    assert len(gi.__all__) == len(set(gi.__all__))


def test_every_name_is_the_real_object():
    expected = {
        "Graph": Graph,
        "Node": Node,
        "TensorType": TensorType,
        "GrowError": GrowError,
        "load_spec": load_spec,
        "dump_spec": dump_spec,
        "save": save,
        "load": load,
        "apply_plan": apply_plan,
        "to_torch": to_torch,
        "update_params": update_params,
        "to_onnx": to_onnx,
        "from_torch": from_torch,
        "from_onnx": from_onnx,
    }
    for name, obj in expected.items():
        assert getattr(gi, name) is obj, name


def test_grow_error_is_the_root_of_spec_errors():
    assert issubclass(SpecError, gi.GrowError)
