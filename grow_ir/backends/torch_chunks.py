"""The lowered ``forward`` as content-defined chunks of code, each compiled once and reused.

A growth step changes a few nodes of a large graph; generating and compiling the Python
code of the whole graph again costs about 20 µs a node (fx's code generation, then
CPython's ``compile``), the bulk of re-lowering a large graph. So the node list is cut
into *chunks* at content-defined boundaries: after every node whose name hashes to 0
modulo :data:`AVERAGE` (as rsync and content-defined chunking cut a file), so a pass that
inserts, removes or changes nodes moves no boundary outside the chunks it touches. Each
chunk is one generated function ``chunk_<first node>(self, *live_in) -> live_out``, the
code fx would generate for its nodes; ``forward`` is a few lines calling the chunks in
order. A chunk is keyed by what its code reads (:class:`Step` keys: names, inputs, ops,
attributes and input types of stateless nodes, module targets, live values in and out):
a later lowering takes over every chunk whose key is unchanged, code object and all, and
generates only the others.

The code inside a chunk is exactly fx's for those nodes; the cost at run time is one
Python call per chunk (about 0.1 µs, for some :data:`AVERAGE` nodes of work).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from torch import fx
from torch.fx.graph import _Namespace
from torch.fx.graph_module import _method_from_src

from grow_ir.ir.graph import Node
from grow_ir.ir.types import TensorType

AVERAGE = 8
"""Nodes per chunk on average: a boundary follows a node whose name's CRC-32 is 0 modulo
this. Smaller chunks regenerate less per step; larger ones make fewer calls per forward."""


@dataclass(frozen=True, slots=True)
class Step:
    """One IR node as the torch lowering emits it."""

    node: Node
    kind: Literal["function", "module", "tied"]
    """A stateless tensor function, a call of the node's module, or a functional call on
    another node's parameters (a tie)."""
    target: str
    """The module the node calls or reads (its ``param_prefix``); empty for a function."""
    weights: tuple[str, ...]
    """The parameter names a tied node reads."""
    input_types: tuple[TensorType, ...]
    """The input types (read by stateless nodes' emitters only; empty otherwise)."""

    @property
    def key(self) -> tuple[Any, ...]:
        """Everything the node's generated code depends on."""
        n = self.node
        if self.kind == "module":
            return (n.name, n.inputs, self.target)
        if self.kind == "tied":
            return (n.name, n.op, n.inputs, self.weights)
        return (n.name, n.op, n.inputs, n.attrs, self.input_types)


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
    fxg, ns = fx.Graph(), _Namespace()
    env = {
        name: fxg.placeholder(name if inputs else ns.create_name(name, None))
        for name in placeholders
    }
    scopes: dict[str, fx.Node] = {}
    for step in steps:
        env[step.node.name] = emit(fxg, env, scopes, step)
    fxg.output(output(env))
    return fxg


@dataclass(frozen=True)
class Chunk:
    """One generated function of a run of consecutive steps."""

    keys: tuple[tuple[Any, ...], ...]
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

    def same(
        self, keys: tuple[Any, ...], live_in: tuple[str, ...], live_out: tuple[str, ...]
    ) -> bool:
        """True when this chunk's code is the code of ``keys`` with these live values."""
        return self.live_in == live_in and self.live_out == live_out and self.keys == keys


def compile_chunk(
    steps: Sequence[Step], live_in: tuple[str, ...], live_out: tuple[str, ...], emit: Emit
) -> Chunk:
    """Generate and compile the function of ``steps`` (fx's code for them)."""

    def returned(env: dict[str, fx.Node]) -> Any:
        values = tuple(env[v] for v in live_out)
        return values[0] if len(values) == 1 else values

    fxg = fx_graph(steps, live_in, emit, returned)
    code = fxg.python_code(root_module="self")
    name = "chunk_" + steps[0].node.name.replace(".", "_")
    source = code.src.replace("def forward(", f"def {name}(", 1)
    fn = _method_from_src(name, source, code.globals)
    return Chunk(
        tuple(s.key for s in steps), live_in, live_out, steps[0].node.name, name, fn, source
    )


def segments(steps: Sequence[Step]) -> list[list[Step]]:
    """``steps`` cut after every node whose name's CRC-32 is 0 modulo :data:`AVERAGE`."""
    out: list[list[Step]] = [[]]
    for step in steps:
        out[-1].append(step)
        if zlib.crc32(step.node.name.encode()) % AVERAGE == 0:
            out.append([])
    if not out[-1]:
        out.pop()
    return out


def plan_chunks(
    steps: Sequence[Step],
    outputs: Mapping[str, str],
    emit: Emit,
    old: Mapping[str, Chunk] | None,
) -> list[Chunk]:
    """The chunks computing ``steps`` (those of ``old``, by first node, whose key is
    unchanged; the others compiled afresh)."""
    parts = segments(steps)
    home: dict[str, int] = {}
    live_in: list[dict[str, None]] = []
    live_out: list[set[str]] = [set() for _ in parts]
    for j, part in enumerate(parts):
        reads: dict[str, None] = {}
        for step in part:
            for v in step.node.inputs:
                if home.get(v, -1) != j:
                    reads[v] = None
            home[step.node.name] = j
        live_in.append(reads)
        for v in reads:
            if (k := home.get(v, -1)) >= 0:
                live_out[k].add(v)
    for v in outputs.values():
        live_out[home[v]].add(v)
    chunks = []
    for j, part in enumerate(parts):
        ins = tuple(live_in[j])
        outs = tuple(s.node.name for s in part if s.node.name in live_out[j])
        keys = tuple(s.key for s in part)
        prior = old.get(part[0].node.name) if old else None
        if prior is not None and prior.same(keys, ins, outs):
            chunks.append(prior)
        else:
            chunks.append(compile_chunk(part, ins, outs, emit))
    return chunks


def forward_function(
    inputs: Sequence[str], chunks: Sequence[Chunk], outputs: Mapping[str, str]
) -> tuple[Callable[..., Any], str]:
    """``forward(self, *inputs)`` calling ``chunks`` in order, and its source.

    A value is dropped (set to None) after the chunk that reads it last, as fx's code
    drops its values, so eval-mode memory stays what the unchunked code uses, give or
    take the values crossing one chunk call.
    """
    ns = _Namespace()
    ns.create_name("self", None)
    var: dict[str, str] = {}
    for name in inputs:
        var[name] = ns.create_name(name, None)
    calls = [ns.create_name(c.name, None) for c in chunks]
    last: dict[str, int] = {}
    for j, c in enumerate(chunks):
        for v in c.live_in:
            last[v] = j
    kept = set(outputs.values())
    lines = [f"def forward(self, {', '.join(inputs)}):"]
    lines += [f"    {var[n]} = {n}" for n in inputs if var[n] != n]
    for j, c in enumerate(chunks):
        for v in c.live_out:
            var[v] = ns.create_name(v, None)
        args = ", ".join(["self", *(var[v] for v in c.live_in)])
        targets = ", ".join(var[v] for v in c.live_out)
        if c.live_out:
            lines.append(f"    {targets} = {calls[j]}({args})")
        else:
            lines.append(f"    {calls[j]}({args})")
        done = [var[v] for v in c.live_in if last[v] == j and v not in kept]
        if done:
            lines.append(f"    {' = '.join(done)} = None")
    if len(outputs) == 1:
        lines.append(f"    return {var[next(iter(outputs.values()))]}")
    else:
        items = ", ".join(f"{out!r}: {var[node]}" for out, node in outputs.items())
        lines.append(f"    return {{{items}}}")
    source = "\n".join(lines) + "\n"
    fn = _method_from_src("forward", source, dict(zip(calls, (c.fn for c in chunks))))
    return fn, source
