"""Typed pass arguments: a pass's signature, turned into a pydantic model at registration.

A pass declares its arguments with type hints (the types below say what a value means:
``NodeName``, ``Seed``, ``Count``...). :func:`args_model` makes a strict model of them, so a
plan entry is checked before any pass runs and a wrong value is a :class:`PassError` saying
which field, what was expected and what was found (``field 'grow[0].node': ... expected a
node name, found a list``), never a Python error from inside the pass. The model is strict:
``"yes"`` is no boolean, ``"1"`` no integer.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Mapping, Sequence
from types import UnionType
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from grow_ir.errors import PassError

_A_NODE = "a node name"
_A_VALUE = "the name of a node or graph input"
NodeName = Annotated[str, Field(description=_A_NODE)]
ValueName = Annotated[str, Field(description=_A_VALUE)]
NodeNames = Annotated[
    str | Sequence[NodeName], Field(description="a node name or a list of node names")
]
OutputName = Annotated[str, Field(description="an output (task) name")]
StageName = Annotated[str, Field(description="a stage name")]
Choice = Annotated[str, Field(description="a name")]
Seed = Annotated[
    int,
    Field(ge=-(2**63), le=2**64 - 1, description="an integer seed (what torch.manual_seed takes)"),
]
Count = Annotated[int, Field(description="an integer")]
"""A size (width, rank, kernel size, head): positivity and what it would allocate are the
pass's to check, with the reason (see ``rewrite.check_positive_int`` and the size guard)."""

_CONFIG = ConfigDict(strict=True, extra="forbid", arbitrary_types_allowed=True, frozen=True)


def args_model(name: str, impl: Callable[..., Any]) -> type[BaseModel]:
    """The strict pydantic model of ``impl``'s keyword arguments (every one after the graph).

    Raises:
        TypeError: an argument without a type hint (a pass must say what it takes).
    """
    hints = typing.get_type_hints(impl, include_extras=True)
    fields: dict[str, Any] = {}
    for p in list(inspect.signature(impl).parameters.values())[1:]:
        if p.name not in hints:
            raise TypeError(f"pass {name!r}: argument {p.name!r} has no type hint")
        default = ... if p.default is inspect.Parameter.empty else p.default
        fields[p.name] = (hints[p.name], default)
    return create_model(f"{name}_args", __config__=_CONFIG, **fields)


def validate_args(
    pass_name: str,
    model: type[BaseModel],
    args: Mapping[str, Any],
    *,
    where: str | None = None,
    file: str | None = None,
) -> dict[str, Any]:
    """``args`` checked against ``model``: the validated values of the arguments given.

    Raises:
        PassError: at field ``{where}.{argument}`` (``where``: ``grow[i]`` in a plan), for
            the first argument whose value has the wrong type or range.
    """
    try:
        checked = model.model_validate(dict(args))
    except ValidationError as exc:
        err = exc.errors()[0]
        arg = str(err["loc"][0]) if err["loc"] else ""
        field = ".".join(x for x in (where, arg) if x) or None
        info = model.model_fields.get(arg)
        expected = (info.description if info is not None else None) or _describe(info)
        bound = _bound(err)
        node = next(  # the node the call is about, when another argument names it
            (
                v
                for k, v in args.items()
                if k != arg and isinstance(v, str) and _is_node(model.model_fields.get(k))
            ),
            None,
        )
        raise PassError(
            f"{pass_name}: bad argument",
            file=file,
            node=node,
            field=field,
            expected=f"{expected} ({bound})" if bound else expected,
            found=found_text(args.get(arg)),
        ) from None
    return {k: getattr(checked, k) for k in args}


def _is_node(info: Any) -> bool:
    return info is not None and info.description in (_A_NODE, _A_VALUE)


_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def _describe(info: Any) -> str:
    """What a field without a description takes, from its type (``Count | None``: an
    integer or null)."""
    ann = getattr(info, "annotation", None)
    args = typing.get_args(ann) if typing.get_origin(ann) in (typing.Union, UnionType) else ()
    parts = [_one(a) for a in args or (ann,) if a is not type(None)]
    text = " or ".join(parts) or "a value"
    return f"{text} or null" if type(None) in args else text


def _one(ann: Any) -> str:
    if typing.get_origin(ann) is Annotated:
        for meta in ann.__metadata__:
            if getattr(meta, "description", None):
                return meta.description
        ann = typing.get_args(ann)[0]
    if typing.get_origin(ann) in (list, tuple, Sequence):
        inner = [_one(a) for a in typing.get_args(ann) if a is not Ellipsis]
        return (
            f"a list of {inner[0].removeprefix('an ').removeprefix('a ')}s" if inner else "a list"
        )
    return _NAMES.get(ann, getattr(ann, "__name__", str(ann)))


def _bound(err: Mapping[str, Any]) -> str:
    """The range part of a pydantic error (``at most 2**64 - 1``), or empty."""
    ctx = err.get("ctx") or {}
    for key, word in (("le", "at most"), ("ge", "at least"), ("lt", "below"), ("gt", "above")):
        if key in ctx:
            return f"{word} {ctx[key]}"
    return ""


def found_text(value: Any) -> str:
    """A short description of a found value: its text and, where it helps, its kind."""
    if isinstance(value, bool) or value is None:
        return "null" if value is None else repr(value).lower()
    if isinstance(value, str):
        return f"{_short(repr(value))} (a string)"
    if isinstance(value, int):
        text = str(value)
        return text if len(text) <= 24 else f"an integer of {len(text)} digits"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, Mapping):
        return f"a mapping {_short(repr(dict(value)))}"
    if isinstance(value, Sequence):
        return f"a list {_short(repr(list(value)))}"
    return type(value).__name__


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
