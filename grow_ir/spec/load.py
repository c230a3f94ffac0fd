"""load_spec: a spec (file, saved directory or mapping) to a verified Graph."""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import networkx as nx
from pydantic import ValidationError

from grow_ir.errors import GrowError, SpecError
from grow_ir.ir.graph import Graph
from grow_ir.ir.init import check_size, initialize
from grow_ir.ir.stages import BlockTemplate, Stage
from grow_ir.ir.types import TensorType
from grow_ir.ir.verify import check_name, verify
from grow_ir.spec.blocks import check_stage_record, expand_stage, parse_blocks
from grow_ir.spec.errors import from_validation, show_value, suggest, with_file
from grow_ir.spec.models import SPEC_VERSION, SpecFile, StageEntry
from grow_ir.spec.nodes import Draft, build_node, head_attrs, parse_head
from grow_ir.spec.text import read_spec_file, require_mapping
from grow_ir.spec.weights import read_weights

SPEC_FILE = "spec.yaml"
"""The spec's file name inside a directory written by ``save``."""

Source = str | os.PathLike[str] | Mapping[str, Any]


def load_spec(source: Source, *, base_dir: str | os.PathLike[str] | None = None) -> Graph:
    """Load a spec into a verified Graph.

    Args:
        source: a YAML or JSON spec file, a directory written by :func:`save` (its
            ``spec.yaml``), or the spec as a mapping.
        base_dir: where a mapping's ``weights`` path is relative to (default: the current
            directory); a file's ``weights`` path is relative to the file.

    Returns:
        A Graph that has passed :func:`grow_ir.ir.verify.verify`: nodes in topological
        order (a list out of order but acyclic is sorted stably), stages expanded, the
        spec's ``blocks``, ``stages``, ``grow`` and ``growth`` kept as plain data, and
        parameters either initialised from ``seed`` (default 0; the same seed always gives
        bitwise-equal parameters) or read from the ``weights`` file. No growth plan is
        applied.

    Raises:
        SpecError: anything wrong with the spec, in one paragraph naming the file, the node
            or field, what was expected and what was found.
    """
    if isinstance(source, Mapping):
        raw = require_mapping(dict(source), None)
        return build_graph(raw, file=None, base=Path(base_dir or "."))
    path = Path(source)
    if path.is_dir():
        path = path / SPEC_FILE
    raw = read_spec_file(path)
    return build_graph(raw, file=str(path), base=path.parent, default_name=path.stem)


def build_graph(
    raw: dict[str, Any], *, file: str | None, base: Path, default_name: str = "graph"
) -> Graph:
    """The verified Graph of a parsed spec mapping (see :func:`load_spec`)."""
    version = raw.get("version")
    if "version" in raw and (type(version) is not int or version != SPEC_VERSION):
        raise SpecError(
            "unsupported spec version",
            file=file,
            field="version",
            expected=str(SPEC_VERSION),
            found=show_value(version),
        )
    raw = {"name": default_name, **raw}
    try:
        spec = SpecFile.model_validate(raw)
    except ValidationError as exc:
        raise from_validation(exc, SpecFile, file=file) from None
    if spec.seed is not None and spec.weights is not None:
        raise SpecError(
            "a spec gives either a seed or a weights file",
            file=file,
            field="weights",
            expected="seed or weights, not both",
            found=f"seed {spec.seed} and weights {spec.weights!r}",
        )
    inputs = {name: _input_type(name, s.shape, s.dtype, file) for name, s in spec.inputs.items()}
    blocks = parse_blocks(spec.blocks, file)
    drafts, stages, aliases = _drafts(spec, inputs, blocks, file)
    names = {d.name for d in drafts}
    for name, record in spec.stages.items():
        if name in stages:
            raise SpecError(
                "a stage is defined twice",
                file=file,
                field=f"stages.{name}",
                expected="each stage once (in nodes or in stages)",
                found=f"stage {name!r} in both",
            )
        stages[name] = check_stage_record(name, record, blocks, names, file)
    _check_names(drafts, inputs, file)
    drafts = [_resolve(d, aliases, inputs, names, file) for d in drafts]
    built = {d.name: build_node(d, file) for d in drafts}  # errors in written order
    nodes = [built[d.name] for d in _sorted(drafts, file)]
    outputs = _outputs(spec.outputs, aliases, names, file)
    graph = Graph(
        inputs=inputs,
        nodes=tuple(nodes),
        outputs=outputs,
        name=spec.name,
        blocks=blocks,
        stages=stages,
        grow=tuple(copy.deepcopy(e) for e in raw.get("grow", [])),
        growth=copy.deepcopy(raw.get("growth")),
    )
    try:
        graph.types  # noqa: B018  (shape errors name the node)
        check_size(graph, file=file)
    except GrowError as exc:
        raise with_file(exc, file) from None
    if spec.weights is not None:
        graph = graph.replace(params=read_weights(graph, base / spec.weights, file=file))
    else:
        graph = initialize(graph, spec.seed or 0)
    try:
        return verify(graph)
    except GrowError as exc:
        raise with_file(exc, file) from None


def _input_type(name: str, shape: list[int | str], dtype: str, file: str | None) -> TensorType:
    try:
        check_name(name, what="input", field=f"inputs.{name}")
    except GrowError as exc:
        raise with_file(exc, file) from None
    return TensorType(tuple(shape), dtype)


def _drafts(
    spec: SpecFile, inputs: dict[str, TensorType], blocks: dict[str, Any], file: str | None
) -> tuple[list[Draft], dict[str, Any], dict[str, str]]:
    """Expand the node list: fill in implicit inputs and expand stages."""
    drafts: list[Draft] = []
    stages: dict[str, Any] = {}
    aliases: dict[str, str] = {}  # stage name -> its last block's output
    previous = next(iter(inputs)) if len(inputs) == 1 else None
    for k, raw in enumerate(spec.nodes):
        where = f"nodes[{k}]"
        if "stage" in raw:
            entry = _stage_entry(raw, where, file)
            try:
                check_name(entry.name, what="stage")
            except GrowError as exc:
                raise with_file(exc, file) from None
            first = entry.inputs[0] if entry.inputs else _previous(previous, inputs, raw, file)
            expanded, record = expand_stage(entry, blocks, first, where, file)
            if entry.name in stages:
                raise _duplicate(entry.name, file)
            stages[entry.name] = record
            drafts.extend(expanded)
            previous = aliases[entry.name] = _stage_output(entry.name, record, blocks)
            continue
        head = parse_head(raw, where, file)
        given = head.inputs
        node_inputs = (
            tuple(given) if given is not None else (_previous(previous, inputs, raw, file),)
        )
        drafts.append(Draft(head.name, head.op, head_attrs(head), node_inputs, head.share, where))
        previous = head.name
    return drafts, stages, aliases


def _stage_entry(raw: dict[str, Any], where: str, file: str | None) -> StageEntry:
    name = raw.get("name")
    node = name if isinstance(name, str) else None
    try:
        return StageEntry.model_validate(raw)
    except ValidationError as exc:
        raise from_validation(
            exc, StageEntry, file=file, node=node, prefix=None if node else where
        ) from None


def _stage_output(stage: str, record: Stage, blocks: Mapping[str, BlockTemplate]) -> str:
    return f"{record.scope(stage, record.depth - 1)}.{blocks[record.block].output}"


def _previous(
    previous: str | None, inputs: dict[str, TensorType], raw: dict[str, Any], file: str | None
) -> str:
    """The implicit input of an entry without ``inputs``: the previous node."""
    if previous is None:
        raise SpecError(
            "the first node must name its inputs when the graph has several inputs",
            file=file,
            node=raw.get("name") if isinstance(raw.get("name"), str) else None,
            field="inputs",
            expected=f"inputs: [one of {', '.join(inputs)}]",
            found="none",
        )
    return previous


def _duplicate(name: str, file: str | None) -> SpecError:
    return SpecError(
        "duplicate name",
        file=file,
        node=name,
        field="name",
        expected="each node, stage and input name used once",
        found=f"{name!r} used twice",
    )


def _check_names(drafts: list[Draft], inputs: dict[str, TensorType], file: str | None) -> None:
    seen = set(inputs)
    for d in drafts:
        try:
            check_name(d.name)
        except GrowError as exc:
            raise with_file(exc, file) from None
        if d.name in seen:
            raise _duplicate(d.name, file)
        seen.add(d.name)


def _resolve(
    d: Draft,
    aliases: dict[str, str],
    inputs: dict[str, TensorType],
    names: set[str],
    file: str | None,
) -> Draft:
    """Check a draft's references; a stage name stands for its last block's output."""
    resolved = []
    for ref in d.inputs:
        ref = aliases.get(ref, ref)
        if ref not in inputs and ref not in names:
            known = [*inputs, *sorted(names), *aliases]  # only on error: keeps loading linear
            raise SpecError(
                f"unknown input{suggest(ref, known)}",
                file=file,
                node=d.name,
                field="inputs",
                expected="the name of a graph input, a node or a stage",
                found=repr(ref),
            )
        resolved.append(ref)
    if d.share is not None and d.share not in names:
        raise SpecError(
            f"shares the parameters of an unknown node{suggest(d.share, names - {d.name})}",
            file=file,
            node=d.name,
            field="share",
            expected="the name of a node",
            found=repr(d.share),
        )
    return Draft(d.name, d.op, d.attrs, tuple(resolved), d.share, d.where, d.origin)


def _sorted(drafts: list[Draft], file: str | None) -> list[Draft]:
    """Drafts in a topological order, as close to the written order as possible."""
    order = {d.name: i for i, d in enumerate(drafts)}
    g = nx.DiGraph()
    g.add_nodes_from(order)
    g.add_edges_from((i, d.name) for d in drafts for i in d.inputs if i in order)
    try:
        ranked = list(nx.lexicographical_topological_sort(g, key=order.__getitem__))
    except nx.NetworkXUnfeasible:
        cycle = [u for u, _ in nx.find_cycle(g)]
        start = cycle.index(min(cycle, key=order.__getitem__))
        cycle = cycle[start:] + cycle[:start]  # begin at the node written first
        raise SpecError(
            "the nodes form a cycle",
            file=file,
            node=cycle[0],
            field="inputs",
            expected="an acyclic graph",
            found=" -> ".join([*cycle, cycle[0]]),
        ) from None
    by_name = {d.name: d for d in drafts}
    return [by_name[n] for n in ranked]


def _outputs(
    outputs: dict[str, str], aliases: dict[str, str], names: set[str], file: str | None
) -> dict[str, str]:
    resolved = {}
    for out, node in outputs.items():
        try:
            check_name(out, what="output", field=f"outputs.{out}")
        except GrowError as exc:
            raise with_file(exc, file) from None
        node = aliases.get(node, node)
        if node not in names:
            raise SpecError(
                f"unknown output node{suggest(node, [*names, *aliases])}",
                file=file,
                field=f"outputs.{out}",
                expected="the name of a node or a stage",
                found=repr(node),
            )
        resolved[out] = node
    return resolved
