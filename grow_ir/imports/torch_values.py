"""The values of a ``torch.export`` program, by evaluation: what the pattern importer reads.

Some constructs are recognised by what they compute rather than by how they are written:
Hugging Face builds its 4-D attention masks and rotary tables from shapes through dozens of
ops (``arange``, ``index``, ``le``, ``__and__``, ``cumsum``…) that change between releases.
:class:`Evaluation` runs the program twice with an ``fx.Interpreter`` and keeps every
node's value: once on the example inputs, once on other random values of the same shapes
(integer inputs redrawn in ``[0, max]``, so token ids stay valid and a 0/1 padding mask
gets another pattern, its first key kept visible). It also knows, structurally, which user
inputs each value depends on, so a mask that depends on none is a function of the shapes
only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx
from torch.export.graph_signature import InputKind

TOLERANCE = 1e-5
"""Largest accepted ``max|ours - torch| / max(1, max|torch|)``: the import check's and every
region's."""

RUNS = 2
"""The example inputs, then other random inputs of the same shapes and dtypes."""


class _Recorder(fx.Interpreter):
    def __init__(self, module: fx.GraphModule) -> None:
        super().__init__(module, garbage_collect_values=False)
        self.values: dict[str, Any] = {}

    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        self.values[n.name] = out
        return out


@dataclass
class Evaluation:
    """Every fx node's value on :data:`RUNS` sets of inputs, and its user-input ancestry.

    Attributes:
        runs: per run, fx node name -> value (``runs[0]`` is on the example inputs).
        inputs: per run, the user inputs it was given, in ``forward``'s order.
        depends: fx node name -> names of the user-input placeholders it reads, directly
            or through other nodes (parameters and buffers do not count).
    """

    runs: list[dict[str, Any]]
    inputs: list[tuple[torch.Tensor, ...]]
    depends: dict[str, frozenset[str]]

    def value(self, node: fx.Node, run: int = 0) -> Any:
        """The value ``node`` took in run ``run``."""
        return self.runs[run][node.name]

    def constant(self, node: fx.Node) -> bool:
        """True when ``node`` reads no user input: a function of the shapes only."""
        return not self.depends[node.name]


def evaluate(program: torch.export.ExportedProgram, args: Sequence[torch.Tensor]) -> Evaluation:
    """Run ``program`` on ``args`` and on redrawn inputs, keeping every node's value."""
    gen = torch.Generator().manual_seed(1234)
    redrawn = tuple(redraw(a, gen) for a in args)
    runs, inputs = [], []
    module = program.graph_module
    for user in (tuple(args), redrawn):
        recorder = _Recorder(module)
        with torch.no_grad():
            recorder.run(*_flat_inputs(program, user))
        runs.append(recorder.values)
        inputs.append(user)
    users = {
        s.arg.name for s in program.graph_signature.input_specs if s.kind == InputKind.USER_INPUT
    }
    depends: dict[str, frozenset[str]] = {}
    for node in program.graph.nodes:
        if node.op == "placeholder":
            depends[node.name] = frozenset({node.name} & users)
        else:
            depends[node.name] = frozenset().union(*(depends[a.name] for a in node.all_input_nodes))
    return Evaluation(runs=runs, inputs=inputs, depends=depends)


def redraw(t: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Other values like ``t``: integers in ``[0, max(t)]`` (a 0/1 mask keeps its first
    key visible), booleans at random, floats from N(0, 1)."""
    if t.dtype == torch.bool:
        return torch.randint(0, 2, t.shape, generator=gen).bool()
    if not t.is_floating_point():
        high = max(int(t.max().item()) + 1, 2) if t.numel() else 2
        drawn = torch.randint(0, high, t.shape, generator=gen, dtype=t.dtype)
        if high == 2 and t.dim() >= 1:
            # a 0/1 input is a padding mask: key 0 stays visible, so that every query
            # sees some key (a row hiding every key is no input a model is run on)
            drawn[..., 0] = 1
        return drawn
    return torch.randn(t.shape, generator=gen, dtype=t.dtype)


def _flat_inputs(
    program: torch.export.ExportedProgram, user: tuple[torch.Tensor, ...]
) -> list[torch.Tensor]:
    """The program's placeholders' values: parameters, buffers, constants, then inputs."""
    flat, given = [], iter(user)
    for spec in program.graph_signature.input_specs:
        if spec.kind == InputKind.USER_INPUT:
            flat.append(next(given))
        elif spec.target in program.state_dict:
            flat.append(program.state_dict[spec.target])
        else:
            flat.append(program.constants[spec.target])
    return flat
