"""Reading and writing spec text: YAML (safe_load only) or JSON, with precise errors."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

from grow_ir.errors import SpecError
from grow_ir.spec.errors import kind_of

SPEC_SHAPE = "a mapping with version, inputs, nodes and outputs"
# PyYAML follows YAML 1.1, which reads 1e-5 (no dot) as a string; YAML 1.2 and JSON read
# it as a number, and so does a user. Only such strings are converted.
_EXP_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")

MAX_DEPTH = 64
"""Deepest nesting of lists and mappings accepted in a spec or plan (a spec needs about 6)."""

MAX_ALIAS_VALUES = 1_000_000
"""How many values YAML aliases (``*name``) may add by repeating an anchor: without aliases
a document holds fewer values than bytes, so this bounds the expansion of a "billion
laughs" document (aliases of aliases) while leaving every real reuse of an anchor free."""


def read_data_file(path: str | Path, what: str = "spec") -> Any:
    """Parse a YAML or JSON file (``.json`` as JSON, anything else with ``yaml.safe_load``).

    ``what`` names the file in errors ("spec", "plan").

    Raises:
        SpecError: the file is missing or unreadable, or has a syntax error (with line and
            column).
    """
    file, path = str(path), Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(
            f"no such {what} file",
            file=file,
            expected="an existing YAML or JSON file",
            found="nothing at that path",
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(
            f"cannot read the {what} file",
            file=file,
            expected="a readable UTF-8 text file",
            found=str(getattr(exc, "strerror", None) or exc),
        ) from None
    return parse_json(text, file) if path.suffix.lower() == ".json" else parse_yaml(text, file)


def read_spec_file(path: Path) -> dict[str, Any]:
    """Parse a YAML or JSON spec file into a mapping.

    Raises:
        SpecError: the file is missing or unreadable, has a syntax error (with line and
            column), is empty, or does not hold a mapping.
    """
    return require_mapping(read_data_file(path, "spec"), str(path))


def parse_yaml(text: str, file: str | None) -> Any:
    """``yaml.safe_load`` of ``text``; a syntax error becomes a SpecError with its place."""
    try:
        data = yaml.load(text, Loader=_Loader)  # a SafeLoader: safe_load with checks
    except _DuplicateKey as exc:
        raise SpecError(
            f"duplicate key {exc.key!r} at {_at(exc.problem_mark)} (first at "
            f"{_at(exc.context_mark)})",
            file=file,
            expected="each key once in a mapping",
            found=f"{exc.key!r} twice; the second would silently replace the first",
        ) from None
    except RecursionError:
        raise _too_deep(file) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise SpecError(
            f"YAML syntax error{where}",
            file=file,
            expected="valid YAML",
            found=": ".join(filter(None, [exc.context, exc.problem])) or "invalid text",
        ) from None
    except yaml.YAMLError as exc:
        raise SpecError(
            "YAML syntax error", file=file, expected="valid YAML", found=str(exc)
        ) from None
    _check_shape(data, len(text), file)
    return _numbers(data)


def parse_json(text: str, file: str | None) -> Any:
    """``json.loads`` of ``text``; a syntax error becomes a SpecError with its place."""
    try:
        data = json.loads(text, object_pairs_hook=_unique_pairs)
    except _DuplicateKey as exc:
        raise SpecError(
            f"duplicate key {exc.key!r} in a JSON object",
            file=file,
            expected="each key once in an object",
            found=f"{exc.key!r} twice; the second would silently replace the first",
        ) from None
    except RecursionError:
        raise _too_deep(file) from None
    except json.JSONDecodeError as exc:
        raise SpecError(
            f"JSON syntax error at line {exc.lineno}, column {exc.colno}",
            file=file,
            expected="valid JSON",
            found=exc.msg,
        ) from None
    _check_shape(data, len(text), file)
    return data


class _DuplicateKey(yaml.constructor.ConstructorError):
    """A mapping names the same key twice (YAML and JSON would keep the last silently)."""

    def __init__(self, key: Any, first: Any = None, second: Any = None) -> None:
        super().__init__("while constructing a mapping", first, "duplicate key", second)
        self.key = key


_SafeLoader: type = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's parser: 10x faster


class _Loader(_SafeLoader):
    """``yaml.safe_load``'s loader (libyaml's parser when PyYAML has it, the same safe
    constructor), refusing a key written twice in one mapping (merge keys ``<<: *anchor``
    may still be overridden, as YAML intends)."""

    def construct_mapping(self, node: yaml.Node, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, Any] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.setdefault(key, key_node)
                except TypeError:  # an unhashable key: the base class reports it
                    continue
                if first is not key_node:
                    raise _DuplicateKey(key, first.start_mark, key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def _at(mark: Any) -> str:
    return f"line {mark.line + 1}, column {mark.column + 1}"


def _too_deep(file: str | None) -> SpecError:
    return SpecError(
        "lists and mappings are nested too deeply",
        file=file,
        expected=f"at most {MAX_DEPTH} levels of nesting",
        found=f"more than {MAX_DEPTH} levels",
    )


def _check_shape(data: Any, size: int, file: str | None) -> None:
    """Refuse a document nested deeper than :data:`MAX_DEPTH`, one that contains itself
    (a YAML alias inside its own anchor), or one whose aliases expand to more than
    :data:`MAX_ALIAS_VALUES` values beyond its ``size`` in bytes. Shared values (aliases)
    are counted once each, so the check is linear in the text, not in the expansion."""
    limit = size + MAX_ALIAS_VALUES
    counts: dict[int, int] = {}  # id of a list or mapping -> values in its expansion
    open_ids: set[int] = set()

    def count(value: Any, depth: int) -> int:
        if not isinstance(value, (dict, list)):
            return 1
        key = id(value)
        if key in counts:
            return counts[key]
        if key in open_ids:
            raise SpecError(
                "a YAML alias refers to a list or mapping that contains it",
                file=file,
                expected="a finite document (an alias outside its own anchor)",
                found="a document that contains itself",
            )
        if depth > MAX_DEPTH:
            raise _too_deep(file)
        open_ids.add(key)
        children = value.values() if isinstance(value, dict) else value
        total = 1
        for child in children:
            total += count(child, depth + 1)
            if total > limit:
                raise SpecError(
                    "the YAML aliases expand the document too far",
                    file=file,
                    expected=f"anchors (&) and aliases (*) that repeat at most "
                    f"{MAX_ALIAS_VALUES:,} values in all",
                    found=f"more than {limit:,} values from {size:,} bytes of text",
                )
        open_ids.discard(key)
        counts[key] = total
        return total

    count(data, 1)


def require_mapping(data: Any, file: str | None) -> dict[str, Any]:
    """``data`` if it is a mapping; a SpecError for an empty document or anything else."""
    if data is None:
        raise SpecError("the spec is empty", file=file, expected=SPEC_SHAPE, found="nothing")
    if not isinstance(data, dict):
        raise SpecError(
            "the spec is not a mapping", file=file, expected=SPEC_SHAPE, found=kind_of(data)
        )
    return data


def _numbers(data: Any) -> Any:
    if isinstance(data, str) and _EXP_FLOAT.fullmatch(data):
        return float(data)
    if isinstance(data, dict):
        return {k: _numbers(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_numbers(v) for v in data]
    return data


class _Dumper(getattr(yaml, "CSafeDumper", yaml.SafeDumper)):  # type: ignore[misc]
    """A SafeDumper that writes node entries on one line each, as people write them
    (libyaml's emitter where PyYAML has it: the same text, several times faster, which
    a checkpoint after every epoch pays for)."""


class FlowMap(dict):
    """A mapping written in YAML flow style (``{name: fc, op: linear}``)."""


_Dumper.add_representer(
    FlowMap, lambda d, data: d.represent_mapping("tag:yaml.org,2002:map", data, flow_style=True)
)


def to_yaml(spec: dict[str, Any]) -> str:
    """YAML text of a spec mapping: keys in order, node entries one per line.

    The text is plain YAML: ``yaml.safe_load`` reads back exactly ``spec``.
    """
    doc = dict(spec)
    for key in ("nodes", "grow"):
        if key in doc:
            doc[key] = [FlowMap(entry) for entry in doc[key]]
    if "inputs" in doc:
        doc["inputs"] = {k: FlowMap(v) for k, v in doc["inputs"].items()}
    if "blocks" in doc:
        doc["blocks"] = {
            name: {**block, "nodes": [FlowMap(n) for n in block["nodes"]]}
            for name, block in doc["blocks"].items()
        }
    if "stages" in doc:
        doc["stages"] = {k: FlowMap(v) for k, v in doc["stages"].items()}
    return yaml.dump(doc, Dumper=_Dumper, sort_keys=False, width=100, allow_unicode=True)
