"""Regions of an ONNX model imported as one IR node each, verified by value.

The per-op rules of :mod:`grow_ir.imports.onnx_import` import one ONNX node at a time.
``torch.onnx.export`` writes some layers grow-ir has as one op out node by node: GPT-2's
``Conv1D`` (``Reshape``, ``Gemm``, ``Reshape``), a GELU written out with ``Pow`` and
``Tanh``, RMSNorm (``Pow``, ``ReduceMean``, ``Sqrt``, ``Reciprocal``, ``Mul``), attention
(:mod:`grow_ir.imports.onnx_attention`), and a head tied to the embedding stored as a
transposed copy of the table; ``to_onnx`` writes ``mix`` so (``Softmax`` of its ``alpha``,
``Gather``, ``Mul``, ``Add``). A :class:`Region` names the ONNX nodes it replaces, the
values it reads and the IR node that computes what they compute; each is accepted only
after that node, run on onnxruntime's values of its inputs (:mod:`onnx_values`, every
run), gives onnxruntime's value of its output within the import tolerance
(:func:`~grow_ir.imports.torch_patterns.first_fits`, shared with ``from_torch``: the
candidates of every region of one kind lowered together, once). Nodes are named after the
module path the exporter records (``pkg.torch.onnx.name_scopes``) when the file has it,
after the IR node in a file grow-ir wrote, else after their weight initializer.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import torch

from grow_ir.imports.onnx_values import Evaluation
from grow_ir.imports.positions import padding_of
from grow_ir.imports.torch_patterns import Candidate, first_fits, fit_candidates, fits
from grow_ir.imports.torch_values import RUNS


@dataclass(frozen=True)
class Region:
    """ONNX nodes replaced by one IR node.

    Attributes:
        name: the IR node's name (a module path, or a name made from an initializer).
        nodes: indices (in the file's node list) of the ONNX nodes the IR node replaces.
        output: the ONNX value the IR node's output is.
        inputs: the ONNX values the IR node reads, in the op's input order.
        op, attrs, params: the IR node (params are copies where rearranged).
        share: an ONNX value whose IR node's parameters this node shares (a tied head
            reads the embedding's table), else None.
    """

    name: str
    nodes: frozenset[int]
    output: str
    inputs: tuple[str, ...]
    op: str
    attrs: Mapping[str, Any]
    params: Mapping[str, torch.Tensor] = field(default_factory=dict)
    share: str | None = None


@dataclass
class Found:
    """Regions; fallbacks (``where``, ``what``: constructs left to the per-op rules, listed
    only when the import is refused anyway); aliases (reshapes that are identities)."""

    regions: list[Region] = field(default_factory=list)
    fallbacks: list[tuple[str, str]] = field(default_factory=list)
    aliases: dict[str, str] = field(default_factory=dict)  # value -> the value it equals

    @property
    def claimed(self) -> set[int]:
        """Every ONNX node some region replaces."""
        return {i for r in self.regions for i in r.nodes}


def identity_reshapes(model: Model, found: Found) -> None:
    """A ``Reshape`` or ``Expand`` to a computed shape that gives its input's shape on
    every run (sizes differ between runs) is its input: a dynamic-shape export's
    ``view(-1, L)`` of ``[N, L]`` tokens; the shape's computation is not imported."""
    claimed = found.claimed
    for i, n in enumerate(model.graph.node):
        if n.op_type not in ("Reshape", "Expand") or i in claimed or n.input[1] in model.consts:
            continue
        ev = model.evaluation
        if n.input[0] in model.consts:
            continue
        if all(
            ev.value(n.output[0], r).shape == ev.value(n.input[0], r).shape for r in range(RUNS)
        ):
            found.aliases[n.output[0]] = n.input[0]


@dataclass(frozen=True)
class Model:
    """What the patterns read: the file's graph, its constants and the evaluation;
    ``ours`` when grow-ir's ``to_onnx`` wrote the file (its node names say which IR node
    each ONNX node lowers: ``attn/scores`` is part of ``attn``)."""

    graph: onnx.GraphProto
    consts: Mapping[str, np.ndarray]
    evaluation: Evaluation
    ours: bool = False

    def scope(self, node: onnx.NodeProto) -> str:
        """The module path the exporter recorded for ``node`` (:func:`scope`); in a file
        grow-ir wrote, the IR node it lowers (its name up to the first ``/``)."""
        if self.ours:
            return node.name.split("/")[0]
        return scope(node)

    @functools.cached_property
    def producer(self) -> dict[str, int]:
        """Value name -> index of the node computing it."""
        return {o: i for i, n in enumerate(self.graph.node) for o in n.output if o}

    @functools.cached_property
    def consumers(self) -> dict[str, list[int]]:
        """Value name -> indices of the nodes reading it (graph outputs count as -1)."""
        users: dict[str, list[int]] = {o.name: [-1] for o in self.graph.output}
        for i, n in enumerate(self.graph.node):
            for v in n.input:
                users.setdefault(v, []).append(i)
        return users

    def node(self, i: int) -> onnx.NodeProto:
        """The ONNX node at index ``i``."""
        return self.graph.node[i]

    def made_by(self, value: str, *ops: str) -> onnx.NodeProto | None:
        """The node computing ``value`` when its op type is one of ``ops``, else None."""
        i = self.producer.get(value)
        return None if i is None or self.node(i).op_type not in ops else self.node(i)

    def only_user(self, value: str) -> int | None:
        """The one node reading ``value``, else None."""
        users = self.consumers.get(value, [])
        return users[0] if len(users) == 1 and users[0] >= 0 else None

    def shape(self, value: str) -> tuple[int, ...]:
        """``value``'s shape in run 0."""
        return tuple(self.evaluation.value(value).shape)

    def const(self, value: str) -> np.ndarray | None:
        """The constant ``value`` is (an initializer or a Constant node), else None."""
        return self.consts.get(value)

    def runs(self, inputs: tuple[str, ...], output: str) -> list[tuple[list[Any], Any]]:
        """``(inputs' values, output's value)`` on every run, for :func:`fits`."""
        ev = self.evaluation
        return [([ev.value(i, r) for i in inputs], ev.value(output, r)) for r in range(RUNS)]


NAME_SCOPES = "pkg.torch.onnx.name_scopes"
"""The metadata key under which ``torch.onnx.export`` records a node's module path."""


def scope(node: onnx.NodeProto) -> str:
    """The module path the exporter recorded for ``node`` (``transformer.h.0.attn``), or
    '' when the file records none (or the node ran in the root module)."""
    for prop in node.metadata_props:
        if prop.key == NAME_SCOPES:
            return _module_path(prop.value)
    return ""


@functools.lru_cache(maxsize=4096)
def _module_path(scopes_text: str) -> str:
    """The module path in the text of a ``name_scopes`` list (parsed once per text: the
    patterns ask for a node's scope many times)."""
    try:
        scopes = ast.literal_eval(scopes_text)
    except (ValueError, SyntaxError):
        return ""
    return str(scopes[-2]) if len(scopes) >= 2 else ""


def float32_decimal(v: float) -> float:
    """The shortest decimal of a float32 number (1e-05, not 9.99999974e-06)."""
    return float(str(np.float32(v)))


def layer_name(init: str) -> str:
    """The layer an initializer belongs to (``conv.weight`` -> ``conv``)."""
    head = init.split("/")[0]
    base, _, last = head.rpartition(".")
    return base if base and last in ("weight", "running_mean", "scale") else head


def where(node: onnx.NodeProto) -> str:
    """``node 'name' (Op)``, with the module path when known, for a refusal."""
    path = scope(node)
    at = f" in {path}" if path else ""
    return f"node '{node.name or node.output[0]}' ({node.op_type}{at})"


def scalar_factor(
    mul: onnx.NodeProto, value: str, consts: Mapping[str, np.ndarray]
) -> float | None:
    """The positive float constant ``mul`` multiplies ``value`` by (as its shortest
    float32 decimal for a float32 constant), when it is a ``Mul`` of ``value`` and one;
    None otherwise (Gemma's word vectors times ``sqrt(hidden_size)``)."""
    other = [v for v in mul.input if v != value]
    c = consts.get(other[0]) if mul.op_type == "Mul" and len(other) == 1 else None
    if c is None or c.size != 1 or c.dtype.kind != "f" or not float(c.reshape(())) > 0:
        return None
    factor = float(c.reshape(()))
    return float32_decimal(factor) if c.dtype == np.float32 else factor


def tensor(a: np.ndarray) -> torch.Tensor:
    """A torch copy of ``a``."""
    return torch.from_numpy(np.array(a, copy=True))


# ---- linear maps -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Projection:
    """A linear map of ``x``: ``weight`` ``[out, in]`` (a copy), ``bias``, its nodes, and
    the value it ends at (after the bias and the reshape that restores ``x``'s axes)."""

    x: str
    weight: torch.Tensor
    bias: torch.Tensor | None
    nodes: frozenset[int]
    out: str
    weight_init: str
    bias_value: str | None = None


def core(
    model: Model, i: int
) -> tuple[str, np.ndarray, np.ndarray | None, set[int], str, str, str | None]:
    """A Gemm or MatMul with a constant matrix at node ``i`` (and the bias ``Add`` after a
    MatMul): ``(x, weight [out, in], bias, nodes, output value, weight value, bias value)``;
    raises LookupError when node ``i`` is none."""
    n = model.node(i)
    if n.op_type == "Gemm":
        a = {x.name: onnx.helper.get_attribute_value(x) for x in n.attribute}
        w = model.const(n.input[1])
        if w is None or a.get("alpha", 1.0) != 1.0 or a.get("beta", 1.0) != 1.0:
            raise LookupError
        if a.get("transA", 0) or w.ndim != 2:
            raise LookupError
        b = model.const(n.input[2]) if len(n.input) > 2 and n.input[2] else None
        weight = w if a.get("transB", 0) else w.T
        if b is not None and b.shape != (weight.shape[0],):
            raise LookupError
        return (
            n.input[0],
            weight,
            b,
            {i},
            n.output[0],
            n.input[1],
            n.input[2] if b is not None else None,
        )
    if n.op_type == "MatMul":
        w = model.const(n.input[1])
        if w is None or w.ndim != 2:
            raise LookupError
        nodes, out, b, b_value = {i}, n.output[0], None, None
        j = model.only_user(out)
        if j is not None and model.node(j).op_type == "Add":
            add = model.node(j)
            other = add.input[1] if add.input[0] == out else add.input[0]
            bias = model.const(other)
            if bias is not None and bias.shape == (w.shape[1],):
                nodes, out, b, b_value = {i, j}, add.output[0], bias, other
        return n.input[0], w.T, b, nodes, out, n.input[1], b_value
    raise LookupError


def projection(model: Model, i: int) -> Projection | None:
    """The linear map that starts at node ``i`` (a Gemm or MatMul with a constant matrix),
    with the reshapes around it that flatten ``x`` to a matrix and restore its leading
    axes after (``Conv1D``'s ``view``, ``addmm``, ``view``), else None."""
    try:
        x, w, b, nodes, out, init, b_value = core(model, i)
    except LookupError:
        return None
    nodes = set(nodes)
    flat = model.made_by(x, "Reshape")
    j = model.only_user(out)
    after = None if j is None else model.node(j)
    if (
        flat is not None
        and model.only_user(x) is not None
        and after is not None
        and after.op_type == "Reshape"
    ):
        src = flat.input[0]
        if model.shape(src)[-1] == w.shape[1] and model.shape(after.output[0]) == (
            *model.shape(src)[:-1],
            w.shape[0],
        ):
            nodes |= {model.producer[x], j}
            x, out = src, after.output[0]
    if model.shape(out) != (*model.shape(x)[:-1], w.shape[0]) or x in model.consts:
        return None
    bias = None if b is None else tensor(b)
    return Projection(x, tensor(w), bias, frozenset(nodes), out, init, b_value)


def stored_rows(model: Model, p: Projection) -> tuple[Projection, torch.Tensor] | None:
    """``(q, factors)`` when the file computes ``p``'s weight (and bias) from initializers
    times a constant per output row (``to_onnx`` folds attention's query scale into the
    in-projection so): ``q`` is ``p`` with the initializers' values, bitwise, and
    ``factors`` ``[out]`` the rows' factors. None when it does not."""
    weight = _stored(model, p.weight_init, p.weight)
    if weight is None:
        return None
    w, f = weight
    if not bool((f == f[:, :1]).all()):
        return None
    factors = f[:, 0]
    bias = p.bias
    if p.bias_value is not None:
        stored_bias = _stored(model, p.bias_value, p.bias)
        if stored_bias is not None:
            if not torch.equal(stored_bias[1], factors):
                return None
            bias = stored_bias[0]
        elif not bool((factors == 1).all()):
            return None
    return dataclasses.replace(p, weight=w, bias=bias), factors


def _stored(
    model: Model, value: str, want: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(stored, factor)``, laid out as ``want`` (``value`` or its transpose), with
    ``stored * factor`` equal to ``want`` bitwise, when ``value`` is computed in the file
    as ``Mul`` of an initializer by a constant, then perhaps transposed; else None."""
    source = value
    while (t := model.made_by(source, "Transpose")) is not None and t.input[0] in model.consts:
        source = t.input[0]
    mul = model.made_by(source, "Mul")
    if mul is None or not all(v in model.consts for v in mul.input):
        return None
    if model.producer.get(mul.input[0]) is not None:  # the stored values: an initializer
        return None
    a, b = (model.consts[v] for v in mul.input)
    stored, factor = tensor(a), tensor(np.broadcast_to(b, a.shape))
    layouts = [(stored, factor)] + ([(stored.T, factor.T)] if stored.dim() == 2 else [])
    for s, f in layouts:
        if s.shape == want.shape and torch.equal(s * f, want):
            return s.contiguous(), f.contiguous()
    return None


def projection_ending_at(model: Model, value: str) -> Projection | None:
    """The projection whose output is ``value`` (the product, its bias ``Add`` or the
    ``Reshape`` restoring its axes computes it), else None."""
    frontier = [value]
    for _ in range(3):  # the restoring Reshape, the bias Add, the product
        behind = []
        for v in frontier:
            i = model.producer.get(v)
            if i is None:
                continue
            p = projection(model, i)
            if p is not None and p.out == value:
                return p
            if model.node(i).op_type in ("Reshape", "Add"):
                behind += [u for u in model.node(i).input if u]
        frontier = behind
    return None


def region_name(model: Model, nodes: frozenset[int] | set[int], init: str) -> str:
    """The module path (or IR node) the region's nodes share, the shortest of several;
    else the layer of initializer ``init``."""
    paths = {model.scope(model.node(i)) for i in nodes} - {""}
    return min(paths, key=len) if paths else layer_name(init)


def linear_regions(model: Model, found: Found) -> None:
    """Every unclaimed Gemm or MatMul with a constant matrix between the reshapes that
    flatten and restore its input's leading axes becomes one ``linear`` node on the
    unflattened value (GPT-2's ``Conv1D``)."""
    claimed = found.claimed
    regions = []
    for i, n in enumerate(model.graph.node):
        if n.op_type not in ("Gemm", "MatMul") or i in claimed:
            continue
        p = projection(model, i)
        # a bare linear is the rules' (named after its initializer), unless the file
        # records its module: the exporter's transposed copies have no name of their own
        if p is None or p.nodes & claimed or (len(p.nodes) < 3 and not scope(n)):
            continue
        params = {"weight": p.weight} | ({} if p.bias is None else {"bias": p.bias})
        attrs = {"out_features": int(p.weight.shape[0]), "bias": p.bias is not None}
        name = region_name(model, p.nodes, p.weight_init)
        regions.append(Region(name, p.nodes, p.out, (p.x,), "linear", attrs, params))
    checks = [([(r.op, r.attrs, r.params)], model.runs(r.inputs, r.output)) for r in regions]
    for region, (k, _) in zip(regions, first_fits(checks)):  # verified in one lowering
        if k is not None:
            found.regions.append(region)


# ---- a learned mixing of values ----------------------------------------------------------------


def mix_regions(model: Model, found: Found) -> None:
    """A ``Softmax`` (axis 0) of a 1-d initializer ``alpha`` of ``k`` logits, its weights
    picked one by one (``Gather`` of the indices ``0..k-1``), each times one value, the
    ``k`` products summed by ``Add``s (``to_onnx``'s and ``Mix``'s ``Σ softmax(alpha)_i ·
    x_i``), becomes one ``mix`` node of those values in index order, with ``alpha``
    bitwise; verified by value."""
    claimed = found.claimed
    regions = []
    for i, n in enumerate(model.graph.node):
        alpha = model.const(n.input[0]) if n.op_type == "Softmax" and i not in claimed else None
        axis = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}.get("axis", -1)
        if alpha is None or alpha.ndim != 1 or alpha.dtype != np.float32 or axis not in (0, -1):
            continue
        region = _mix(model, i, alpha)
        if region is not None and not region.nodes & claimed:
            regions.append(region)
    checks = [([(r.op, r.attrs, r.params)], model.runs(r.inputs, r.output)) for r in regions]
    for region, (k, _) in zip(regions, first_fits(checks)):  # verified in one lowering
        if k is not None:
            found.regions.append(region)


def _mix(model: Model, softmax: int, alpha: np.ndarray) -> Region | None:
    """The ``mix`` region whose weights the ``Softmax`` at ``softmax`` computes, else None."""
    weights = model.node(softmax).output[0]
    users = model.consumers.get(weights, [])
    if len(users) != len(alpha) or -1 in users:
        return None
    nodes, terms = {softmax}, {}
    for u in users:
        gather = model.node(u)
        index = model.const(gather.input[1]) if gather.op_type == "Gather" else None
        j = model.only_user(gather.output[0])
        if index is None or index.ndim != 0 or gather.input[0] != weights or j is None:
            return None
        mul = model.node(j)
        x = [v for v in mul.input if v != gather.output[0]]
        if mul.op_type != "Mul" or len(x) != 1 or x[0] in model.consts:
            return None
        terms[int(index)] = (mul.output[0], x[0])
        nodes |= {u, j}
    if sorted(terms) != list(range(len(alpha))):
        return None
    pending = {t for t, _ in terms.values()}
    while len(pending) > 1:  # the products and partial sums, each read by one Add of two
        j = model.only_user(min(pending))
        add = None if j is None else model.node(j)
        if add is None or add.op_type != "Add" or len(set(add.input) & pending) != 2:
            return None
        pending = (pending - set(add.input)) | {add.output[0]}
        nodes.add(j)
    (out,) = pending
    inputs = tuple(terms[i][1] for i in range(len(alpha)))
    init = model.node(softmax).input[0]
    name = region_name(model, nodes - {softmax}, init.removesuffix(".alpha"))
    return Region(name, frozenset(nodes), out, inputs, "mix", {}, {"alpha": tensor(alpha)})


# ---- a head tied to the embedding ------------------------------------------------------------


def tied_head_regions(model: Model, found: Found) -> None:
    """A MatMul by a constant that is, bitwise, the transpose of a table a ``Gather``
    looks tokens up in (the exporter's copy of a tied head) becomes a ``linear`` node
    sharing the embedding's parameters; the embedding is named after its module."""
    tables = {}
    for i, n in enumerate(model.graph.node):
        if n.op_type == "Gather" and n.input[0] in model.consts and i not in found.claimed:
            t = model.consts[n.input[0]]
            if t.ndim == 2 and t.dtype == np.float32:
                tables.setdefault(t.shape, []).append(i)
    for i, n in enumerate(model.graph.node):
        if n.op_type != "MatMul" or i in found.claimed:
            continue
        w = model.const(n.input[1])
        if w is None or w.ndim != 2 or n.input[0] in model.consts:
            continue
        same = [
            g
            for g in tables.get(w.T.shape, [])
            if np.array_equal(model.consts[model.node(g).input[0]], w.T)
        ]
        if not same:
            continue
        gather = model.node(same[0])
        table = gather.input[0]
        if model.shape(n.output[0]) != (*model.shape(n.input[0])[:-1], w.shape[1]):
            continue
        attrs: dict[str, Any] = {
            "num_embeddings": int(w.shape[1]),
            "embedding_dim": int(w.shape[0]),
        }
        looked_up, nodes = gather.output[0], {same[0]}
        j = model.only_user(looked_up)
        factor = None if j is None else scalar_factor(model.node(j), looked_up, model.consts)
        if j is not None and factor is not None:  # the vectors scaled (Gemma's): one node
            attrs["scale"], looked_up, nodes = factor, model.node(j).output[0], {same[0], j}
        embedding = Region(
            model.scope(gather) or layer_name(table),
            frozenset(nodes),
            looked_up,
            (gather.input[1],),
            "embedding",
            attrs,
            {"weight": tensor(model.consts[table])},
        )
        head_attrs = {"out_features": int(w.shape[1]), "bias": False}
        head_name = model.scope(n) or f"{layer_name(table)}_head"
        head = Region(
            head_name,
            frozenset({i}),
            n.output[0],
            (n.input[0],),
            "linear",
            head_attrs,
            share=looked_up,
        )
        weight = {"weight": tensor(model.consts[table])}
        if fits("linear", head_attrs, weight, model.runs(head.inputs, head.output)) is None:
            found.regions += [embedding, head]


# ---- leaf modules fitted whole ---------------------------------------------------------------


def module_regions(model: Model, found: Found, has_rule: set[str]) -> None:
    """The nodes the exporter recorded under one module path, when one of them has no
    rule, read one value and give one, fitted whole to an IR op (an activation, or
    RMSNorm with the module's one weight) by value; left to the rules otherwise."""
    claimed = found.claimed
    calls: dict[str, list[int]] = {}
    for i, n in enumerate(model.graph.node):
        path = model.scope(n)
        if path and i not in claimed and n.op_type != "Constant":
            calls.setdefault(path, []).append(i)
    fits = [
        fit
        for path, call in calls.items()
        if not all(model.node(i).op_type in has_rule for i in call)
        and (fit := _fit(model, path, call)) is not None
    ]
    checks = [(candidates, model.runs(shell.inputs, shell.output)) for shell, candidates in fits]
    for (shell, candidates), (k, _) in zip(fits, first_fits(checks)):  # one lowering
        if k is not None:
            op, attrs, params = candidates[k]
            found.regions.append(dataclasses.replace(shell, op=op, attrs=attrs, params=params))


def _fit(model: Model, path: str, call: list[int]) -> tuple[Region, list[Candidate]] | None:
    """The region one module's call would be (its op still to be chosen) and the IR
    nodes it might be; None when the call is no leaf-module shape (one value in, one
    out, at most one weight)."""
    inside = set(call)
    made = {o for i in call for o in model.node(i).output}
    reads, weights, added = [], {}, []
    for i in call:
        n = model.node(i)
        for v in n.input:
            if not v or v in made:
                continue
            c = model.const(v)
            if c is None:
                if v not in reads:
                    reads.append(v)
            elif c.ndim == 1 and c.size > 1 and n.op_type == "Mul":
                weights[v] = c
            elif c.size == 1 and n.op_type == "Add":
                scalar = float(c.reshape(()))
                added.append(float32_decimal(scalar) if c.dtype == np.float32 else scalar)
    outs = [o for o in made if any(u not in inside for u in model.consumers.get(o, []))]
    if len(reads) != 1 or len(outs) != 1 or len(weights) > 1:
        return None
    (x,), (out,) = reads, outs
    params = {"weight": tensor(next(iter(weights.values())))} if weights else {}
    width = model.shape(x)[-1]
    candidates = list(fit_candidates(width, params, added))
    return Region(path, frozenset(inside), out, (x,), "", {}), candidates


# ---- positions ---------------------------------------------------------------------------------


def _counted(model: Model, value: str) -> tuple[int, bool] | None:
    """``(L, batch_axis)`` when ``value`` reads no input and is ``arange(L)`` on every
    run, as ``[L]`` or ``[1, L]`` (position ids, however the file builds them)."""
    if value in model.consts or not model.evaluation.constant(value):
        return None
    lengths = []
    for run in range(RUNS):
        t = model.evaluation.value(value, run)
        if t.dtype != torch.int64 or t.dim() not in (1, 2) or (t.dim() == 2 and t.shape[0] != 1):
            return None
        if not torch.equal(t.reshape(-1), torch.arange(t.shape[-1])):
            return None
        lengths.append((int(t.shape[-1]), t.dim() == 2))
    return lengths[0] if len({b for _, b in lengths}) == 1 else None


def _padded(model: Model, value: str) -> tuple[str, dict[str, Any]] | None:
    """The graph input ``value`` reads and the ``positions`` attributes, when it reads one
    input, token ids, and is on every run the positions counted from them past their
    padding (:func:`padding_of`, along their last axis: RoBERTa's)."""
    deps = model.evaluation.depends.get(value, frozenset())
    if value in model.consts or len(deps) != 1:
        return None
    (ids,) = deps
    ev = model.evaluation
    p = padding_of(
        [ev.value(ids, r) for r in range(RUNS)], [ev.value(value, r) for r in range(RUNS)]
    )
    return None if p is None else (ids, {"dim": len(model.shape(ids)) - 1, "padding_idx": p})


def _counting(model: Model, x: str, value: str) -> tuple[str, dict[str, Any]] | None:
    """``x`` and the ``positions`` attributes, when ``value`` reads no input and counts
    ``0..L-1`` along an axis of ``x``, and is not read only by further such counts."""
    counted = _counted(model, value)
    users = [u for u in model.consumers.get(value, []) if u >= 0]
    if counted is None or not users:
        return None
    if all(_counted(model, o) for u in users for o in model.node(u).output):
        return None  # only further positions read it
    axis = _counted_axis(model, x, value)
    return None if axis is None else (x, {"dim": axis, "batch_axis": counted[1]})


def position_regions(model: Model, found: Found) -> None:
    """A value that reads no input and counts ``0..L-1`` (a dynamic-shape export's
    ``Range`` of a ``Shape``) becomes a ``positions`` node over the first graph input's
    axis of length L (after the batch axis), and one counted from token ids past their
    padding a ``positions`` node of those ids with its ``padding_idx``; what builds either
    is not imported."""
    inputs = [i.name for i in model.graph.input if i.name not in model.consts]
    if not inputs:
        return
    x = inputs[0]
    for i, n in enumerate(model.graph.node):
        if i in found.claimed or n.op_type == "Constant":
            continue
        path = model.scope(n)
        name = path if model.ours else f"{path}.positions" if path else "positions"
        for value in n.output:
            made = _padded(model, value) or _counting(model, x, value)
            if made is not None:
                reads, attrs = made
                region = Region(name, frozenset({i}), value, (reads,), "positions", attrs)
                found.regions.append(region)


def _counted_axis(model: Model, x: str, value: str) -> int | None:
    """The axis of ``x`` after the batch axis whose length ``value`` counts to on every
    run (the first, when several do)."""
    ev = model.evaluation
    axes = None
    for run in range(RUNS):
        length = int(ev.value(value, run).shape[-1])
        shape = ev.value(x, run).shape
        here = {a for a, d in enumerate(shape) if a > 0 and d == length}
        axes = here if axes is None else axes & here
    return min(axes) if axes else None
