"""Block templates and stages: AutoGrow's unit of growth.

A template (``blocks: {NAME: {nodes: [...], output: LOCAL}}``) is a list of node entries
whose input is called ``input``; string values ``$param`` are filled in from a stage's
``with``. A stage entry ``{name: S, stage: NAME, depth: D, with: {...}}`` expands into D
chained copies whose nodes are named ``S.block{i}.{local}``. This module checks templates
and stages against the file (errors name it) and builds the IR's typed values
(:mod:`grow_ir.ir.stages`), which the Graph keeps in ``Graph.blocks`` and ``Graph.stages``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from grow_ir.errors import SpecError
from grow_ir.ir.stages import (
    BLOCK_INPUT,
    BLOCK_PREFIX,
    BlockTemplate,
    Stage,
    block_name,
    block_nodes,
)
from grow_ir.spec.errors import suggest
from grow_ir.spec.models import IDENT, LOCAL, BlockSpec, StageEntry, StageRecord
from grow_ir.spec.nodes import Draft, parse_head


def parse_blocks(blocks: Mapping[str, BlockSpec], file: str | None) -> dict[str, BlockTemplate]:
    """Check every template and return them as IR values (``output`` filled in).

    Raises:
        SpecError: a template holds a stage, a local name is malformed, reserved
            (``input``) or repeated, an input or share names no local node, or ``output``
            names no template node.
    """
    out: dict[str, BlockTemplate] = {}
    for name, block in blocks.items():
        where = f"blocks.{name}"
        if not IDENT.fullmatch(name):
            raise SpecError(
                "malformed block name",
                file=file,
                field=where,
                expected="an identifier",
                found=repr(name),
            )
        locals_: list[str] = []
        for j, raw in enumerate(block.nodes):
            at = f"{where}.nodes[{j}]"
            if "stage" in raw:
                raise SpecError(
                    "a block template cannot hold a stage",
                    file=file,
                    field=f"{at}.stage",
                    expected="plain node entries",
                    found=f"stage: {raw['stage']!r}",
                )
            head = parse_head(raw, at, file)
            if not LOCAL.fullmatch(head.name) or head.name == BLOCK_INPUT:
                raise SpecError(
                    "malformed template node name",
                    file=file,
                    field=f"{at}.name",
                    expected=f"letters, digits and _ joined by dots, other than '{BLOCK_INPUT}'",
                    found=repr(head.name),
                )
            if head.name in locals_:
                raise SpecError(
                    "duplicate name in block template",
                    file=file,
                    field=f"{at}.name",
                    expected="a name used once",
                    found=repr(head.name),
                )
            locals_.append(head.name)
        for j, raw in enumerate(block.nodes):
            head = parse_head(raw, f"{where}.nodes[{j}]", file)
            refs = [("inputs", i) for i in head.inputs or ()]
            refs += [("share", head.share)] if head.share else []
            for key, ref in refs:
                if ref != BLOCK_INPUT and ref not in locals_:
                    raise SpecError(
                        f"unknown name in block template{suggest(ref, locals_)}",
                        file=file,
                        field=f"{where}.nodes[{j}].{key}",
                        expected=f"'{BLOCK_INPUT}' or a node of the template",
                        found=repr(ref),
                    )
        output = block.output if block.output is not None else locals_[-1]
        if output not in locals_:
            raise SpecError(
                f"unknown block output{suggest(output, locals_)}",
                file=file,
                field=f"{where}.output",
                expected=f"a node of the template ({', '.join(locals_)})",
                found=repr(output),
            )
        out[name] = BlockTemplate.of({"nodes": block.nodes, "output": output})
    return out


def expand_stage(
    entry: StageEntry,
    blocks: Mapping[str, BlockTemplate],
    first_input: str,
    where: str,
    file: str | None,
) -> tuple[list[Draft], Stage]:
    """The drafts of a stage's ``depth`` chained blocks, and its record for Graph.stages.

    Raises:
        SpecError: unknown template (nearest suggested), a ``$param`` the stage does not
            set, or a ``with`` key the template does not use.
    """
    template = _template(entry.stage, blocks, file=file, node=entry.name, field="stage")
    _check_params(
        entry.name,
        entry.stage,
        template.params(),
        entry.with_,
        file=file,
        node=entry.name,
        field="with",
    )
    drafts: list[Draft] = []
    previous = first_input
    origin = f"block '{entry.stage}' of stage '{entry.name}'"
    for i in range(entry.depth):
        drafts.extend(
            Draft(
                name=n.name,
                op=n.op,
                attrs=n.attrs,
                inputs=n.inputs,
                share=n.share,
                where=where,
                origin=origin,
            )
            for n in block_nodes(template, block_name(entry.name, i), entry.with_, previous)
        )
        previous = f"{block_name(entry.name, i)}.{template.output}"
    return drafts, Stage(entry.stage, entry.depth, entry.with_)


def check_stage_record(
    name: str,
    record: StageRecord,
    blocks: Mapping[str, BlockTemplate],
    node_names: set[str],
    file: str | None,
) -> Stage:
    """Check a top-level ``stages`` entry against the flat nodes; return it as an IR value.

    Raises:
        SpecError: unknown template, ``with`` not matching the template's ``$params``, or a
            block whose output node ``{name}.block{i}.{output}`` is not among the nodes.
    """
    where = f"stages.{name}"
    template = _template(record.block, blocks, file=file, node=None, field=f"{where}.block")
    _check_params(
        name,
        record.block,
        template.params(),
        record.with_,
        file=file,
        node=None,
        field=f"{where}.with",
    )
    prefix = record.prefix if record.prefix is not None else BLOCK_PREFIX
    stage = Stage(record.block, record.depth, record.with_, prefix, record.first)
    for i in range(record.depth):
        out = f"{stage.scope(name, i)}.{template.output}"
        if out not in node_names:
            raise SpecError(
                f"stage '{name}' has no output node for block {i}",
                file=file,
                field=f"{where}.depth",
                expected=f"a node '{out}' (depth {record.depth})",
                found="none",
            )
    return stage


def _template(
    block: str,
    blocks: Mapping[str, BlockTemplate],
    *,
    file: str | None,
    node: str | None,
    field: str,
) -> BlockTemplate:
    if block not in blocks:
        raise SpecError(
            f"unknown block template{suggest(block, blocks)}",
            file=file,
            node=node,
            field=field,
            expected=f"one of {', '.join(blocks)}" if blocks else "a template under 'blocks'",
            found=repr(block),
        )
    return blocks[block]


def _check_params(
    stage: str,
    block: str,
    wanted: set[str],
    given: Mapping[str, Any],
    *,
    file: str | None,
    node: str | None,
    field: str,
) -> None:
    missing = sorted(wanted - set(given))
    if missing:
        raise SpecError(
            f"block '{block}' uses ${missing[0]}, which stage '{stage}' does not set",
            file=file,
            node=node,
            field=f"{field}.{missing[0]}",
            expected=f"a value for every parameter of the block ({', '.join(sorted(wanted))})",
            found="none",
        )
    extra = sorted(set(given) - wanted)
    if extra:
        raise SpecError(
            f"block '{block}' has no parameter '{extra[0]}'{suggest(extra[0], wanted)}",
            file=file,
            node=node,
            field=f"{field}.{extra[0]}",
            expected=f"one of {', '.join(sorted(wanted))}" if wanted else "no parameters",
            found=repr(extra[0]),
        )
