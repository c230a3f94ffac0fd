"""Pass infrastructure: results, provenance of parameters, and the registry of passes.

A pass implementation is a pure function ``(graph, **args) -> PassResult``. Registering it
gives the public function ``passes.NAME(graph, **args) -> Graph`` (with ``.run`` returning
the full PassResult) and makes it reachable from plans as ``{pass: NAME, ...}``.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Protocol

from pydantic import BaseModel

from grow_ir.errors import GrowError, PassError
from grow_ir.ir.graph import Graph
from grow_ir.ir.verify import verify
from grow_ir.passes.args import args_model, found_text, validate_args


@dataclass(frozen=True)
class Origin:
    """Where a new or changed parameter's values came from.

    Attributes:
        source: the parameter of the input graph it derives from; ``None`` when fresh.
        index: per axis of the new tensor, for every new index the old index it copies,
            or -1 where the entry is new. Axes not listed map one to one.
        scale: per axis, a factor for every new index by which copied values were scaled
            (net2net divides split fan-out by the copy count). Axes not listed: 1.
        fresh: a boolean tensor of the new parameter's shape, true at entries that are new
            although the index maps them to a source entry (connections cut or grown back:
            their values and optimizer state start afresh); None when there are none.
    """

    source: str | None
    index: Mapping[int, tuple[int, ...]] = field(default_factory=dict)
    scale: Mapping[int, tuple[float, ...]] = field(default_factory=dict)
    fresh: Any = field(default=None, compare=False)

    def to_json(self) -> dict[str, Any]:
        """Plain data for history files (``fresh`` as the number of fresh entries)."""
        out: dict[str, Any] = {
            "source": self.source,
            "index": {str(k): list(v) for k, v in self.index.items()},
            "scale": {str(k): list(v) for k, v in self.scale.items()},
        }
        if self.fresh is not None:
            out["fresh"] = int(self.fresh.sum())
        return out


@dataclass(frozen=True)
class PassResult:
    """What a pass did.

    Attributes:
        graph: the new, verified graph.
        preserved: whether the new graph computes the same function (for every output of
            the old graph, and for each output in ``same_as``).
        summary: one line saying what changed.
        reason: why the function is not preserved (empty when preserved).
        origins: for every new or changed parameter, where its values came from.
        same_as: new outputs that must equal an old output (``{task: base}`` after a fork);
            every old output is also expected to equal itself.
        grown: outputs that grew along one axis, ``{output: (axis, old size)}``: the first
            ``old size`` entries along that axis must equal the old output (a vocabulary
            grown: the old tokens' logits are unchanged).
    """

    graph: Graph
    preserved: bool
    summary: str
    reason: str = ""
    origins: Mapping[str, Origin] = field(default_factory=dict)
    same_as: Mapping[str, str] = field(default_factory=dict)
    grown: Mapping[str, tuple[int, int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "origins", MappingProxyType(dict(self.origins)))
        object.__setattr__(self, "same_as", MappingProxyType(dict(self.same_as)))
        object.__setattr__(self, "grown", MappingProxyType(dict(self.grown)))


class PassImpl(Protocol):
    def __call__(self, graph: Graph, /, **kwargs: Any) -> PassResult: ...


@dataclass(frozen=True)
class PassInfo:
    """A registered pass: its name, implementation, public signature and the pydantic model
    of its arguments (made from the signature's type hints, see ``passes.args``)."""

    name: str
    impl: Callable[..., PassResult]
    signature: inspect.Signature
    args: type[BaseModel]

    def check(
        self, args: Mapping[str, Any], *, where: str | None = None, file: str | None = None
    ) -> dict[str, Any]:
        """``args`` validated against the pass's argument model (PassError otherwise)."""
        return validate_args(self.name, self.args, args, where=where, file=file)

    def run(self, graph: Graph, **kwargs: Any) -> PassResult:
        """Check the arguments, run the pass; the result's graph is verified. Raises
        PassError naming the pass. An exception other than a GrowError is a bug in the
        pass and propagates as it is."""
        kwargs = self.check(kwargs)
        try:
            result = self.impl(graph, **kwargs)
        except PassError as exc:
            if not exc.reason.startswith(f"{self.name}:"):
                exc = PassError(
                    f"{self.name}: {exc.reason}",
                    file=exc.file,
                    node=exc.node,
                    field=exc.field,
                    expected=exc.expected,
                    found=exc.found,
                )
            raise exc from None
        try:
            verify(result.graph)
        except GrowError as exc:  # a bug in the pass, reported with its name
            raise PassError(f"{self.name} built an invalid graph: {exc.message}") from exc
        return result


PASSES: dict[str, PassInfo] = {}


def register_pass(name: str) -> Callable[[Callable[..., PassResult]], Callable[..., Graph]]:
    """Register a pass implementation under ``name``.

    Returns the public function ``(graph, **args) -> Graph``; ``fn.run(graph, **args)``
    gives the PassResult. The implementation's arguments after the graph must carry type
    hints: they become the strict model every call and plan entry is checked against.
    """

    def wrap(impl: Callable[..., PassResult]) -> Callable[..., Graph]:
        if name in PASSES:
            raise ValueError(f"pass {name!r} is registered twice")
        info = PassInfo(name, impl, inspect.signature(impl), args_model(name, impl))
        PASSES[name] = info

        @functools.wraps(impl)
        def public(graph: Graph, /, **kwargs: Any) -> Graph:
            return info.run(graph, **kwargs).graph

        public.run = info.run  # type: ignore[attr-defined]
        # wraps() copied the implementation's `-> PassResult`; the public function gives a Graph
        public.__signature__ = info.signature.replace(return_annotation=Graph)  # type: ignore[attr-defined]
        public.__annotations__ = {**impl.__annotations__, "return": Graph}
        return public

    return wrap


def get_pass(name: str) -> PassInfo:
    """The registered pass ``name``; GrowError suggesting the nearest name otherwise."""
    import difflib

    if not isinstance(name, str):
        raise PassError(
            "a pass is named by a string",
            field="pass",
            expected=f"one of {', '.join(sorted(PASSES))}",
            found=found_text(name),
        )
    if name not in PASSES:
        near = difflib.get_close_matches(str(name), PASSES, n=1)
        hint = f" (did you mean '{near[0]}'?)" if near else ""
        raise PassError(
            f"unknown pass{hint}",
            field="pass",
            expected=f"one of {', '.join(sorted(PASSES))}",
            found=repr(name),
        )
    return PASSES[name]
