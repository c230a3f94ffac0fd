"""The lowered ``forward`` as content-defined chunks of code, each compiled once and reused.

A growth step changes a few nodes of a large graph; generating and compiling the Python
code of the whole graph again costs about 20 µs a node (fx's code generation, then
CPython's ``compile``), the bulk of re-lowering a large graph. So the node list is cut
into *chunks* at content-defined boundaries: after every node whose name hashes to 0
modulo :data:`AVERAGE` (as rsync and content-defined chunking cut a file), so a pass that
inserts, removes or changes nodes moves no boundary outside the chunks it touches. Each
chunk is one generated function ``chunk_<first node>(self, *live_in) -> live_out``, the
code fx would generate for its nodes (written by :mod:`grow_ir.backends.torch_codegen`
without building an fx graph). The chunks are grouped the same way, by other bits
of their first node's hash, into *sections* (:data:`SECTION` chunks on average), each a
few generated lines calling its chunks in order; ``forward`` calls the sections. A chunk
is keyed by what its code reads (:class:`Step` keys: names, inputs, ops, attributes of
stateless nodes and the input types of those whose emitter reads them, module targets,
live values in and out): a later lowering takes over every chunk whose steps are the
same (the very objects, or equal keys) with the same live values, code object and all,
every section calling the very same chunk functions, and generates only the others.

The code inside a chunk is exactly fx's for those nodes; the cost at run time is one
Python call per chunk and one per section (about 0.1 µs each, for some :data:`AVERAGE`
nodes of work).
"""

from __future__ import annotations

import operator
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from itertools import chain
from types import FunctionType
from typing import Any, Literal, TypeVar

from torch import fx
from torch.fx.graph import _Namespace
from torch.fx.graph_module import _method_from_src

from grow_ir.backends.torch_codegen import Writer
from grow_ir.ir.graph import Node
from grow_ir.ir.types import TensorType

AVERAGE = 8
"""Nodes per chunk on average: a boundary follows a node whose name's CRC-32 is 0 modulo
this. Smaller chunks regenerate less per step; larger ones make fewer calls per forward."""


@dataclass(frozen=True, slots=True, eq=False)
class Step:
    """One IR node as the torch lowering emits it (compared by identity: a lowering takes
    over the steps of nodes it did not change, the very objects)."""

    node: Node
    kind: Literal["function", "module", "tied"]
    """A stateless tensor function, a call of the node's module, or a functional call on
    another node's parameters (a tie)."""
    target: str
    """The module the node calls or reads (its ``param_prefix``); empty for a function."""
    weights: tuple[str, ...]
    """The parameter names a tied node reads."""
    input_types: tuple[TensorType, ...]
    """The input types, for a stateless node whose emitter reads them (empty otherwise:
    the code of ``relu`` or ``add`` is the same whatever the shapes)."""
    key: tuple[Any, ...]
    """Everything the node's generated code depends on."""
    crc: int
    """The CRC-32 of the node's name (where chunks and sections are cut)."""


def step(
    node: Node,
    kind: Literal["function", "module", "tied"],
    target: str = "",
    weights: tuple[str, ...] = (),
    input_types: tuple[TensorType, ...] = (),
) -> Step:
    """The step of ``node``, its key computed."""
    n = node
    if kind == "module":
        key: tuple[Any, ...] = (n.name, n.inputs, target)
    elif kind == "tied":
        key = (n.name, n.op, n.inputs, weights)
    else:
        key = (n.name, n.op, n.inputs, n.attrs, input_types)
    return Step(node, kind, target, weights, input_types, key, zlib.crc32(n.name.encode()))


_D = TypeVar("_D")

Emit = Callable[[fx.Graph, dict[str, fx.Node], dict[str, fx.Node], Step], fx.Node]
"""Adds one step's fx nodes to a graph: ``emit(fxg, env, scopes, step)`` reads its inputs
from ``env`` (value name -> fx node), fetches scopes once through ``scopes`` and returns
the node's value."""


def fx_graph(
    steps: Sequence[Step],
    placeholders: Sequence[str],
    emit: Emit,
    output: Callable[[dict[str, fx.Node]], Any],
    *,
    inputs: bool = False,
) -> fx.Graph:
    """The fx graph of ``steps`` reading ``placeholders`` (value names, in order) and
    returning ``output(env)``.

    Each placeholder's argument name is the value's name made an identifier as fx names
    its nodes (no builtin or global shadowed), except that graph inputs, already
    identifiers that shadow nothing (``verify``), keep their names when ``inputs`` is set.
    """
    fxg = fx.Graph()
    _record(fxg, steps, placeholders, emit, output, inputs)
    return fxg


def _record(
    graph: Any,
    steps: Sequence[Step],
    placeholders: Sequence[str],
    emit: Emit,
    output: Callable[[dict[str, Any]], Any],
    inputs: bool,
) -> None:
    """Add the nodes of ``steps`` to ``graph`` (an ``fx.Graph`` or a
    :class:`~grow_ir.backends.torch_codegen.Writer`), as :func:`fx_graph` says."""
    ns = _Namespace()
    env = {
        name: graph.placeholder(name if inputs else ns.create_name(name, None))
        for name in placeholders
    }
    scopes: dict[str, Any] = {}
    for step in steps:
        env[step.node.name] = emit(graph, env, scopes, step)
    graph.output(output(env))


@dataclass(frozen=True, eq=False)
class Chunk:
    """One generated function of a run of consecutive steps."""

    steps: tuple[Step, ...]
    live_in: tuple[str, ...]
    """Values it reads that are defined before it (graph inputs or earlier chunks)."""
    live_out: tuple[str, ...]
    """Values it defines that later chunks or the graph's outputs read."""
    first: str
    """The name of its first node."""
    name: str
    """The function's name: ``chunk_`` and its first node's name."""
    fn: Callable[..., Any]
    source: str
    defs: frozenset[str]
    """The values it defines."""
    keys: tuple[tuple[Any, ...], ...]
    """Its steps' keys: what its code depends on, with its live values."""


@dataclass(frozen=True, eq=False)
class Section:
    """One generated function calling a run of consecutive chunks: ``forward`` calls the
    sections, so that a growth step regenerates a few short functions, not one line per
    chunk of the whole graph."""

    chunks: tuple[Chunk, ...]
    live_in: tuple[str, ...]
    live_out: tuple[str, ...]
    first: str
    name: str
    """``section_`` and its first node's name."""
    fn: Callable[..., Any]
    source: str
    defs: frozenset[str]
    """The values its chunks return."""
    fns: tuple[Callable[..., Any], ...]
    """Its chunks' functions (the same function is the same code and live values)."""


@dataclass(frozen=True, eq=False)
class Plan:
    """The generated code of a whole lowering: chunks, sections, ``forward``."""

    chunks: tuple[Chunk, ...]
    sections: tuple[Section, ...]
    forward: Callable[..., Any]
    source: str
    """``forward``'s source."""
    crossing: frozenset[str]
    """The values read across chunks (or by the outputs)."""
    section_crossing: frozenset[str]
    """The values read across sections (or by the outputs)."""
    fns: tuple[Callable[..., Any], ...]
    """The sections' functions, that ``forward`` calls."""

    @cached_property
    def chunk_at(self) -> dict[str, Chunk]:
        """The chunks by first node."""
        return {c.first: c for c in self.chunks}

    @cached_property
    def section_at(self) -> dict[str, Section]:
        """The sections by first node."""
        return {s.first: s for s in self.sections}

    @property
    def code(self) -> str:
        """``forward``, then the sections and the chunks, as source."""
        parts = [self.source, *(s.source for s in self.sections), *(c.source for c in self.chunks)]
        return "\n\n".join(p.strip("\n") + "\n" for p in parts)


def compile_chunk(
    steps: Sequence[Step], live_in: tuple[str, ...], live_out: tuple[str, ...], emit: Emit
) -> Chunk:
    """Generate and compile the function of ``steps`` (fx's code for them)."""
    name = "chunk_" + steps[0].node.name.replace(".", "_")
    source, globals_ = chunk_source(steps, live_in, live_out, emit, name)
    fn = _method_from_src(name, source, globals_)
    defs = frozenset(s.node.name for s in steps)
    keys = tuple(map(_KEY, steps))
    return Chunk(tuple(steps), live_in, live_out, steps[0].node.name, name, fn, source, defs, keys)


def chunk_source(
    steps: Sequence[Step],
    live_in: tuple[str, ...],
    live_out: tuple[str, ...],
    emit: Emit,
    name: str,
    *,
    by_fx: bool = False,
) -> tuple[str, dict[str, Any]]:
    """The source of function ``name`` of ``steps`` (reading ``live_in``, returning
    ``live_out``) and its globals: the code fx generates for them, written by
    :class:`~grow_ir.backends.torch_codegen.Writer` (a fraction of fx's cost), or by fx
    itself with ``by_fx`` or for a node the writer does not follow."""

    def returned(env: dict[str, Any]) -> Any:
        values = tuple(env[v] for v in live_out)
        return values[0] if len(values) == 1 else values

    if not by_fx:
        try:
            writer = Writer()
            _record(writer, steps, live_in, emit, returned, False)
            return writer.source(name)
        except NotImplementedError:
            pass
    code = fx_graph(steps, live_in, emit, returned).python_code(root_module="self")
    return code.src.replace("def forward(", f"def {name}(", 1), code.globals


def segments(steps: Sequence[Step]) -> list[tuple[Step, ...]]:
    """``steps`` cut after every node whose name's CRC-32 is 0 modulo :data:`AVERAGE`."""
    steps = tuple(steps)
    average = AVERAGE
    ends = [i + 1 for i, s in enumerate(steps) if not s.crc % average]
    starts = [0, *ends]
    if not ends or ends[-1] != len(steps):
        ends.append(len(steps))
    return [steps[a:b] for a, b in zip(starts, ends, strict=False) if a < b]


def _live_in(steps: Sequence[Step]) -> tuple[str, ...]:
    """The values ``steps`` read that they do not define, in order of first read."""
    defined: set[str] = set()
    reads: dict[str, None] = {}
    for s in steps:
        for v in s.node.inputs:
            if v not in defined:
                reads[v] = None
        defined.add(s.node.name)
    return tuple(reads)


def _crossing(live_ins: Iterable[tuple[str, ...]], outputs: Mapping[str, str]) -> frozenset[str]:
    return frozenset(chain(chain.from_iterable(live_ins), outputs.values()))


def plan(
    steps: Sequence[Step],
    inputs: Sequence[str],
    outputs: Mapping[str, str],
    emit: Emit,
    old: Plan | None,
) -> Plan:
    """The code computing ``steps``: chunks and sections of ``old`` (by first node) whose
    steps (or their keys) and live values are unchanged are taken over, the others
    generated and compiled afresh, and a new ``forward`` calls the sections.

    A chunk (section) taken over returns the same values only if none of the values it
    defines gained or lost a reader elsewhere: only the values whose crossing status
    changed (the symmetric difference of the old and new crossing sets) are looked up.
    """
    parts = segments(steps)
    prior = old.chunk_at if old is not None else {}
    candidates: list[Chunk | None] = []
    live_ins: list[tuple[str, ...]] = []
    for part in parts:
        c = prior.get(part[0].node.name)
        if c is not None and (c.steps == part or c.keys == tuple(map(_KEY, part))):
            candidates.append(c)
            live_ins.append(c.live_in)  # a function of the steps' names and inputs
        else:
            candidates.append(None)
            live_ins.append(_live_in(part))
    crossing = _crossing(live_ins, outputs)
    moved = crossing ^ old.crossing if old is not None else crossing
    chunks = []
    for part, c, ins in zip(parts, candidates, live_ins, strict=True):
        if c is not None and c.defs.isdisjoint(moved):
            chunks.append(_retarget(c, part))
            continue
        outs = tuple(s.node.name for s in part if s.node.name in crossing)
        if c is not None and c.live_out == outs:
            chunks.append(_retarget(c, part))
        else:
            chunks.append(compile_chunk(part, ins, outs, emit))
    sections = _sections(chunks, outputs, old)
    section_crossing = _crossing((s.live_in for s in sections), outputs)
    fns = tuple(s.fn for s in sections)
    forward, source = call_sequence(
        "forward",
        tuple(inputs),
        sections,
        outputs=outputs,
        keep_names=True,
        prior=(old.forward, old.source) if old is not None else None,
    )
    return Plan(tuple(chunks), tuple(sections), forward, source, crossing, section_crossing, fns)


def _retarget(chunk: Chunk, steps: tuple[Step, ...]) -> Chunk:
    """``chunk`` (the same code) for ``steps`` of equal keys."""
    return chunk if chunk.steps == steps else _replaced(chunk, steps=steps)


def _replaced(obj: _D, **changes: Any) -> _D:
    """``dataclasses.replace(obj, **changes)`` of a frozen dataclass without slots or
    ``__post_init__``: its fields copied at C speed, not passed through ``__init__``."""
    new = object.__new__(type(obj))
    object.__setattr__(new, "__dict__", {**obj.__dict__, **changes})
    return new


_KEY = operator.attrgetter("key")


SECTION = 16
"""Chunks per section on average: a section ends after a chunk whose first node's CRC-32,
shifted right 16 bits, is 0 modulo this (bits the chunk boundaries do not use)."""


def _sections(
    chunks: Sequence[Chunk], outputs: Mapping[str, str], old: Plan | None
) -> list[Section]:
    """The sections calling ``chunks`` (those of ``old`` calling the very same chunks with
    the same live values taken over)."""
    groups: list[list[Chunk]] = [[]]
    for c in chunks:
        groups[-1].append(c)
        if not (c.steps[0].crc >> 16) % SECTION:
            groups.append([])
    if not groups[-1]:
        groups.pop()
    prior = old.section_at if old is not None else {}
    fns = [tuple(c.fn for c in g) for g in groups]
    found = [
        s if (s := prior.get(g[0].first)) is not None and s.fns == f else None
        for g, f in zip(groups, fns, strict=True)
    ]
    # the live values in are a function of the chunks called (their code)
    live_ins = [
        s.live_in if s is not None else _live_in_calls(g)
        for g, s in zip(groups, found, strict=True)
    ]
    crossing = _crossing(live_ins, outputs)
    moved = crossing ^ old.section_crossing if old is not None else crossing
    out = []
    for group, f, s, ins in zip(groups, fns, found, live_ins, strict=True):
        if s is not None:
            if s.defs.isdisjoint(moved):
                out.append(s if s.chunks == tuple(group) else _replaced(s, chunks=tuple(group)))
                continue
            outs = tuple(v for c in group for v in c.live_out if v in crossing)
            if s.live_out == outs:
                out.append(s if s.chunks == tuple(group) else _replaced(s, chunks=tuple(group)))
                continue
        else:
            outs = tuple(v for c in group for v in c.live_out if v in crossing)
        name = "section_" + group[0].first.replace(".", "_")
        before = prior.get(group[0].first)
        fn, source = call_sequence(
            name,
            ins,
            group,
            returns=outs,
            prior=(before.fn, before.source) if before is not None else None,
        )
        defs = frozenset(chain.from_iterable(c.live_out for c in group))
        out.append(Section(tuple(group), ins, outs, group[0].first, name, fn, source, defs, f))
    return out


def _live_in_calls(calls: Sequence[Chunk]) -> tuple[str, ...]:
    """The values a run of calls reads that none of them returns, in order of first read."""
    defined: set[str] = set()
    reads: dict[str, None] = {}
    for c in calls:
        for v in c.live_in:
            if v not in defined:
                reads[v] = None
        defined.update(c.live_out)
    return tuple(reads)


class _Names:
    """Unique Python identifiers for value names (node names: letters, digits and ``_``
    joined by dots, no Python keyword as a segment, as ``verify`` guarantees), each the
    name with its dots made ``_`` (``_`` first if it starts with a digit) and a ``_1``,
    ``_2``... suffix where that is taken: what fx's namespace makes of such names, without
    its per-name regular expressions."""

    def __init__(self) -> None:
        self.used: set[str] = set()

    def create_name(self, value: str) -> str:
        """A new identifier for ``value``."""
        base = value.replace(".", "_")
        if base[0].isdigit():
            base = "_" + base
        name, count = base, 0
        while name in self.used:
            count += 1
            name = f"{base}_{count}"
        self.used.add(name)
        return name


def call_sequence(
    name: str,
    params: tuple[str, ...],
    calls: Sequence[Chunk | Section],
    *,
    returns: tuple[str, ...] = (),
    outputs: Mapping[str, str] | None = None,
    keep_names: bool = False,
    prior: tuple[Callable[..., Any], str] | None = None,
) -> tuple[Callable[..., Any], str]:
    """``name(self, *params)`` calling ``calls`` in order and returning ``returns`` (one
    value or a tuple), or ``outputs`` (one output's value, or a dict by output name); and
    its source. ``keep_names``: the parameters keep their names (``forward``'s keyword
    arguments, graph inputs that are identifiers already). ``prior``: a function an earlier
    call made, and its source: when the source is the same it is returned again if it
    calls these very functions, else its code is bound to them (not compiled again).

    A value is dropped (set to None) after the call that reads it last, as fx's code drops
    its values, so eval-mode memory stays what the unchunked code uses, give or take the
    values crossing one section call.
    """
    ns = _Names()
    ns.create_name("self")
    var: dict[str, str] = {}
    for v in params:
        var[v] = ns.create_name(v)
    callees = [ns.create_name(c.name) for c in calls]
    last: dict[str, int] = {}
    for j, c in enumerate(calls):
        for v in c.live_in:
            last[v] = j
    kept = set(returns) | set(outputs.values() if outputs is not None else ())
    signature = params if keep_names else tuple(var[v] for v in params)
    lines = [f"def {name}({', '.join(['self', *signature])}):"]
    if keep_names:
        lines += [f"    {var[v]} = {v}" for v in params if var[v] != v]
    for j, c in enumerate(calls):
        for v in c.live_out:
            var[v] = ns.create_name(v)
        args = ", ".join(["self", *(var[v] for v in c.live_in)])
        targets = ", ".join(var[v] for v in c.live_out)
        if c.live_out:
            lines.append(f"    {targets} = {callees[j]}({args})")
        else:
            lines.append(f"    {callees[j]}({args})")
        done = [var[v] for v in c.live_in if last[v] == j and v not in kept]
        if done:
            lines.append(f"    {' = '.join(done)} = None")
    if outputs is None:
        if returns:
            lines.append(f"    return {', '.join(var[v] for v in returns)}")
    elif len(outputs) == 1:
        lines.append(f"    return {var[next(iter(outputs.values()))]}")
    else:
        items = ", ".join(f"{out!r}: {var[node]}" for out, node in outputs.items())
        lines.append(f"    return {{{items}}}")
    source = "\n".join(lines) + "\n"
    functions = dict(zip(callees, (c.fn for c in calls), strict=True))
    if prior is not None and prior[1] == source:
        fn = prior[0]
        bound = fn.__globals__
        if all(bound.get(k) is v for k, v in functions.items()):
            return prior
        # the same code calling other functions of the same names: no compile
        return FunctionType(fn.__code__, {**bound, **functions}, fn.__name__), source
    return _method_from_src(name, source, functions), source
