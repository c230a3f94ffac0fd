"""Pydantic models of the spec format (YAML or JSON).

The models check the shape of a spec file: keys, types and simple ranges. What needs the
whole graph (references, types, parameter sizes) is checked by the loader and the IR's
verifier. Op attributes are validated by each op's own attribute model
(:mod:`grow_ir.ir.ops`); a node entry here holds them as extra keys.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainValidator, StrictInt, StrictStr
from pydantic.json_schema import WithJsonSchema
from pydantic_core import PydanticCustomError

from grow_ir.ir.checks import NODE_RE
from grow_ir.ir.types import DTYPES

SPEC_VERSION = 1
"""The only spec version this release reads and writes."""

IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
LOCAL = NODE_RE
"""A template node's local name: the scopes of a node name (``mlp.c_fc`` of an imported
block; ``f.a.0``: a scope may start with a digit, as an ``nn.Sequential``'s items do)."""
NODE_KEYS = ("name", "op", "inputs", "share")
"""Keys of a node entry that are not op attributes."""
INFERRED = ("in_features", "in_channels", "num_features", "normalized_shape", "embed_dim")
"""Input widths that are inferred from a node's input and never written."""


def _dim(value: object) -> int | str:
    ok = (isinstance(value, int) and not isinstance(value, bool) and value > 0) or (
        isinstance(value, str) and IDENT.fullmatch(value) is not None
    )
    if not ok:
        raise PydanticCustomError("dim", "a positive integer or a symbolic name such as 'batch'")
    return value  # type: ignore[return-value]


Dim = Annotated[
    int | str,
    PlainValidator(_dim),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "integer", "exclusiveMinimum": 0},
                {"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_]*$"},
            ],
            "description": "a size, or a symbolic name such as 'batch'",
        }
    ),
]
PositiveStrictInt = Annotated[StrictInt, Field(gt=0)]
NonNegativeStrictInt = Annotated[StrictInt, Field(ge=0)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class InputSpec(_Strict):
    """A graph input: its shape and dtype."""

    shape: list[Dim] = Field(description="a list of sizes or symbolic names")
    dtype: Literal[tuple(DTYPES)] = Field(  # type: ignore[valid-type]
        default="float32", description=f"one of {', '.join(DTYPES)}"
    )


class NodeHead(BaseModel):
    """The node-level keys of a node entry; every other key is an op attribute."""

    model_config = ConfigDict(extra="allow", frozen=True)

    name: StrictStr = Field(description="the node's unique name, e.g. 'stage1.block0.conv1'")
    op: StrictStr = Field(description="an op name such as linear or conv2d")
    inputs: list[StrictStr] | None = Field(
        default=None,
        description="names of graph inputs or nodes; omitted: the previous node",
    )
    share: StrictStr | None = Field(
        default=None, description="the name of a node whose parameters this node reuses"
    )


class StageEntry(_Strict):
    """A stage: ``depth`` copies of a block template, chained, in the node list."""

    name: StrictStr = Field(description="the stage's name, the scope of its nodes")
    stage: StrictStr = Field(description="the name of a template in 'blocks'")
    depth: PositiveStrictInt = Field(default=1, description="how many blocks, chained")
    with_: dict[StrictStr, Any] = Field(
        default_factory=dict, alias="with", description="values of the template's $params"
    )
    inputs: Annotated[list[StrictStr], Field(min_length=1, max_length=1)] | None = Field(
        default=None, description="the stage's one input; omitted: the previous node"
    )


class BlockSpec(_Strict):
    """A block template: nodes whose input is called ``input``."""

    nodes: Annotated[list[dict[StrictStr, Any]], Field(min_length=1)] = Field(
        description="template nodes; 'input' names the block's input"
    )
    output: StrictStr | None = Field(
        default=None, description="the template node giving the block's output (default: last)"
    )


class StageRecord(_Strict):
    """A stage as recorded in a dumped spec's top-level ``stages`` section."""

    block: StrictStr = Field(description="the name of a template in 'blocks'")
    depth: PositiveStrictInt = Field(description="how many blocks the stage has")
    with_: dict[StrictStr, Any] = Field(
        default_factory=dict, alias="with", description="values of the template's $params"
    )
    prefix: StrictStr | None = Field(
        default=None,
        description="what block i's index follows in its scope: 'block' (STAGE.block0, the "
        "default) or '' (STAGE.0, a stage imported from an nn.ModuleList)",
    )
    first: NonNegativeStrictInt = Field(
        default=0,
        description="the index of the stage's first block (an imported list whose first "
        "items are other blocks: 1 for a ResNet layer after its downsampling block)",
    )


class PlanEntry(BaseModel):
    """One growth-plan entry: ``{pass: NAME, ...arguments}``."""

    model_config = ConfigDict(extra="allow", frozen=True, populate_by_name=True)

    pass_: StrictStr = Field(alias="pass", description="the name of a registered pass")


class SpecFile(_Strict):
    """A whole spec file."""

    version: Literal[1] = Field(description="the spec format version, 1")
    name: Annotated[StrictStr, Field(min_length=1)] = Field(
        default="graph", description="the network's name"
    )
    seed: Annotated[StrictInt, Field(ge=0)] | None = Field(
        default=None, description="the seed of parameter initialisation (default 0)"
    )
    weights: StrictStr | None = Field(
        default=None, description="a .safetensors file of parameters, relative to the spec"
    )
    inputs: Annotated[dict[StrictStr, InputSpec], Field(min_length=1)] = Field(
        description="the graph inputs by name"
    )
    nodes: Annotated[list[dict[StrictStr, Any]], Field(min_length=1)] = Field(
        description="nodes and stages, in order"
    )
    outputs: Annotated[dict[StrictStr, StrictStr], Field(min_length=1)] = Field(
        description="output name -> node name"
    )
    blocks: dict[StrictStr, BlockSpec] = Field(
        default_factory=dict, description="block templates by name"
    )
    stages: dict[StrictStr, StageRecord] = Field(
        default_factory=dict, description="stages of flat nodes, as dump_spec writes them"
    )
    grow: list[PlanEntry] = Field(
        default_factory=list, description="a growth plan, kept and not applied at load"
    )
    growth: dict[StrictStr, Any] | None = Field(
        default=None, description="growth-policy settings, kept as plain data"
    )
