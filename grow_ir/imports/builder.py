"""What every importer shares: a graph built node by node, and refusals collected whole.

An importer walks a foreign graph (a ``torch.export`` program, an ONNX model) and, per
construct, either adds IR nodes through :class:`GraphBuilder` or records why it cannot
(:meth:`GraphBuilder.refuse`). Values that depend on a refused construct are *poisoned*:
their users are skipped silently, so the error lists one line per construct the source
really lacks, never its consequences. :meth:`GraphBuilder.finish` then either raises one
:class:`ImportRefused` naming every construct, or returns a verified Graph: never a partial
graph.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from grow_ir.errors import GrowError, ShapeError
from grow_ir.ir.graph import Graph, Node
from grow_ir.ir.ops import OPS
from grow_ir.ir.types import TensorType
from grow_ir.ir.verify import verify


class ImportRefused(GrowError):
    """A model holds constructs grow-ir cannot express; ``constructs`` lists each one."""

    def __init__(self, source: str, constructs: Sequence[str]) -> None:
        self.constructs = list(constructs)
        count = len(self.constructs)
        super().__init__(
            f"cannot import {source}: {count} construct{'s' if count > 1 else ''} with no "
            "grow-ir op (nothing was imported)",
            expected="modules and ops that map onto grow-ir's ops (see README, Importing models)",
            found="\n  - " + "\n  - ".join(self.constructs),
        )


_UNSAFE = re.compile(r"[^A-Za-z0-9_.]")


def clean_name(raw: str) -> str:
    """A well-formed scoped node name made of ``raw`` (a module path or a foreign name):
    characters outside ``[A-Za-z0-9_.]`` become ``_`` and empty scopes are dropped."""
    parts = [p for p in _UNSAFE.sub("_", raw).split(".") if p]
    return ".".join(parts) or "node"


def ident(raw: str) -> str:
    """A Python identifier made of ``raw``, for graph input and output names."""
    name = clean_name(raw).replace(".", "_")
    return f"v_{name}" if name[0].isdigit() else name


@dataclass
class GraphBuilder:
    """Builds one Graph from a foreign graph; every public function returns a verified one.

    Attributes:
        source: what is imported, for messages (``torchvision ResNet``, ``model.onnx``).
        tensors: every tensor the nodes may take as a parameter, by the parameter name the
            node will have (for torch: the module's ``state_dict()``).
    """

    source: str
    tensors: Mapping[str, torch.Tensor]
    inputs: dict[str, TensorType] = field(default_factory=dict)
    nodes: list[Node] = field(default_factory=list)
    types: dict[str, TensorType] = field(default_factory=dict)
    params: dict[str, torch.Tensor] = field(default_factory=dict)
    refusals: list[str] = field(default_factory=list)
    poisoned: set[str] = field(default_factory=set)
    built: dict[tuple, str] = field(default_factory=dict)  # nodes made once, on first use
    _taken: set[str] = field(default_factory=set)
    _scopes: set[str] = field(default_factory=set)

    # ---- values -----------------------------------------------------------------------

    def add_input(self, name: str, t: TensorType) -> str:
        """Declare a graph input."""
        self.inputs[name] = t
        self.types[name] = t
        self._taken.add(name)
        return name

    def unique(self, hint: str) -> str:
        """A fresh node name near ``hint``: ``hint``, else ``hint_1``, ``hint_2``...

        A name is never the scope of another node's name nor inside another node's scope.
        """
        base = clean_name(hint)
        while self._inside_node(base):  # a step of a layer's module (LayerNorm2d's permute)
            head, _, tail = base.rpartition(".")
            base = f"{head}_{tail}"  # leaves that scope: suffixes alone never would
        name, i = base, 0
        while name in self._taken or name in self._scopes or self._inside_node(name):
            i += 1
            name = f"{base}_{i}"
        return name

    def _inside_node(self, name: str) -> bool:
        parts = name.split(".")
        return any(".".join(parts[:k]) in self._taken for k in range(1, len(parts)))

    def add(
        self,
        op: str,
        inputs: Sequence[str],
        hint: str,
        attrs: Mapping[str, Any] | None = None,
        *,
        params: Mapping[str, torch.Tensor] | None = None,
        share: str | None = None,
        name: str | None = None,
    ) -> str:
        """Add a node and return its name (``name`` exactly, else one made from ``hint``).

        ``params`` maps the op's local parameter names (``weight``, ``running_mean``) to
        their values; without them the node's parameters come from :attr:`tensors` under
        the node's name. Raises ShapeError (with the node) if the op refuses its inputs.
        """
        if name is not None:
            name = clean_name(name)  # a module path may hold any character (RegNet's block1-0)
        if name is None or name in self._taken or self._inside_node(name):
            name = self.unique(hint if name is None else name)
        node = Node(name, op, dict(attrs or {}), tuple(inputs), share=share)
        ins = [self.types[i] for i in node.inputs]
        try:
            self.types[name] = OPS[op].infer(node.attrs, ins)
        except ShapeError as exc:
            raise exc.at(node=name) from None
        if share is None:
            specs = OPS[op].params(node.attrs, ins)
            for local, spec in specs.items():
                key = f"{name}.{local}"
                value = (params or {}).get(local)
                if value is None:
                    value = self.tensors.get(key)
                if value is None:
                    raise GrowError(
                        "an imported node has no value for a parameter",
                        node=name,
                        field=local,
                        expected=f"a tensor of shape {list(spec.shape)}",
                        found="none",
                    )
                self.params[key] = value.detach().clone().contiguous()
        self.nodes.append(node)
        self._taken.add(name)
        parts = name.split(".")
        self._scopes.update(".".join(parts[:k]) for k in range(1, len(parts)))
        return name

    # ---- refusals ---------------------------------------------------------------------

    def refuse(self, where: str, what: str, poison: Sequence[str] = ()) -> None:
        """Record one construct that has no grow-ir op; ``poison`` its result values."""
        line = f"{where}: {what}" if where else what
        if line not in self.refusals:
            self.refusals.append(line)
        self.poisoned.update(poison)

    def is_poisoned(self, values: Sequence[str]) -> bool:
        """True when any of ``values`` depends on a refused construct."""
        return any(v in self.poisoned for v in values)

    # ---- the result -------------------------------------------------------------------

    def finish(
        self, outputs: Mapping[str, str], name: str, hints: Mapping[str, str] | None = None
    ) -> Graph:
        """The verified Graph, or ImportRefused listing every construct refused.

        ``outputs`` maps output names to values; an output that is a graph input unchanged
        (an ``nn.Identity``, a model returning one of its arguments) is an ``identity``
        node named after ``hints[output]`` (default: the output), since every IR output
        names a node.
        """
        if self.refusals:
            raise ImportRefused(self.source, self.refusals)
        hints = hints or {}
        outputs = {
            out: self.add("identity", [value], hints.get(out, out))
            if value in self.inputs
            else value
            for out, value in outputs.items()
        }
        graph = Graph(
            inputs=self.inputs,
            nodes=tuple(self.nodes),
            outputs=dict(outputs),
            params=self.params,
            name=ident(name),
        )
        return verify(_prune(graph))


def _prune(graph: Graph) -> Graph:
    """Drop nodes no output depends on (a model's dead code), so the verifier accepts it."""
    live = {n for n, outs in graph.output_deps.items() if outs}
    if len(live) == len(graph.nodes):
        return graph
    nodes = tuple(n for n in graph.nodes if n.name in live)
    keep = {k for n in nodes if n.share is None for k in graph.node_params(n)}
    return graph.replace(nodes=nodes, params={k: v for k, v in graph.params.items() if k in keep})


def folded_axes(before: Sequence[Any], after: Sequence[Any]) -> tuple[int, int] | None:
    """``(start, end)`` when reshaping ``before`` to ``after`` is ``flatten(start, end)``
    with ``start >= 1`` (the batch axis kept), else None. Dims are ints or symbols."""
    before, after = list(before), list(after)
    start = 0
    while start < min(len(before), len(after)) and before[start] == after[start]:
        start += 1
    if start == len(after) >= 2 and len(before) > start and set(before[start:]) == {1}:
        return start - 1, len(before) - 1  # trailing size-1 axes folded into the last
    end = len(before) - (len(after) - start - 1) - 1
    if start < 1 or end <= start or start >= len(after):
        return None
    folded = before[start : end + 1]
    if any(not isinstance(d, int) for d in folded) or before[end + 1 :] != after[start + 1 :]:
        return None
    size = 1
    for d in folded:
        size *= d
    return (start, end) if size == after[start] else None
