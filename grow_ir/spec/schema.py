"""The JSON Schema of the spec format, built from the spec models and every op's attributes."""

from __future__ import annotations

import json
from typing import Any

from grow_ir.ir.ops import OPS
from grow_ir.spec.models import SpecFile, StageEntry

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"

_NODE_KEYS: dict[str, Any] = {
    "name": {
        "type": "string",
        "pattern": r"^[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*$",
        "description": "the node's unique name; dots make scopes (stage1.block0.conv1); "
        "scopes may start with a digit, as PyTorch module paths do (layer1.0.conv1)",
    },
    "inputs": {
        "type": "array",
        "items": {"type": "string"},
        "description": "graph inputs, nodes or stages it reads; omitted: the previous node "
        "(for the first node, the single graph input)",
    },
    "share": {
        "type": "string",
        "description": "a node (same op and attributes) whose parameters this node reuses",
    },
}


def op_node_schema(op_name: str) -> dict[str, Any]:
    """The schema of a node entry of one op: node keys plus the op's attributes, flat."""
    op = OPS[op_name]
    attrs = op.attrs.model_json_schema()
    doc = attrs.get("description", "")
    return {
        "type": "object",
        "title": f"{op_name} node",
        "description": f"{op.doc}. {doc} Input widths are inferred, never written.".strip(),
        "properties": {
            **_NODE_KEYS,
            "op": {"const": op_name, "type": "string"},
            **attrs.get("properties", {}),
        },
        "required": ["name", "op", *attrs.get("required", [])],
        "additionalProperties": False,
    }


def spec_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a spec.

    Guarantees: each node entry is one of a ``oneOf`` with one object schema per op in
    :data:`grow_ir.ir.ops.OPS` (``op`` a constant, every attribute of the op's model with
    its type and default, no other keys) or the stage-entry form; block templates,
    recorded stages, the growth plan and the growth section are described too. The result
    depends only on the op registry and the spec models.
    """
    schema = SpecFile.model_json_schema()
    defs = schema.setdefault("$defs", {})
    for name in sorted(OPS):
        defs[f"node_{name}"] = op_node_schema(name)
    defs["StageEntry"] = StageEntry.model_json_schema()
    defs["TemplateNode"] = {
        "type": "object",
        "title": "block template node",
        "description": "a node entry as in 'nodes' (local name, no dots); 'input' names the "
        "block's input; an attribute value '$param' takes the stage's 'with' value",
        "properties": {**_NODE_KEYS, "name": {"type": "string"}, "op": {"type": "string"}},
        "required": ["name", "op"],
        "additionalProperties": True,
    }
    defs["BlockSpec"]["properties"]["nodes"]["items"] = {"$ref": "#/$defs/TemplateNode"}
    choices = [{"$ref": f"#/$defs/node_{name}"} for name in sorted(OPS)]
    schema["properties"]["nodes"]["items"] = {"oneOf": [*choices, {"$ref": "#/$defs/StageEntry"}]}
    schema["$schema"] = SCHEMA_DIALECT
    schema["title"] = "grow-ir spec"
    schema["description"] = (
        "A grow-ir network: version 1, named inputs, nodes (one per op, attributes flat "
        "beside name/op/inputs, or stages of block templates) and named outputs."
    )
    return schema


def schema_text() -> str:
    """The schema as ``grow-ir schema`` prints it and specs/schema.json holds it."""
    return json.dumps(spec_schema(), indent=2, sort_keys=True) + "\n"
