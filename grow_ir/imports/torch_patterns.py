"""Regions of a ``torch.export`` program imported as one IR node each, verified by value.

The per-ATen rules (:mod:`grow_ir.imports.torch_rules`) import one op at a time. Some of
what models compute is a composition grow-ir has as one op: Hugging Face's attention
(projections, head layout, rotary, ``scaled_dot_product_attention``, output projection),
GPT-2's ``Conv1D`` (``view``, ``addmm``, ``view``: a linear with its weight stored
``[in, out]``), Llama's RMSNorm (``pow``, ``mean``, ``rsqrt``, ``mul``) and GPT-2's
tanh-approximated GELU written out with ``pow`` and scalars. A :class:`Region` names the fx
nodes it replaces, the values it reads and the IR node that computes what they compute.

Every region is accepted only after its IR node, run on the interpreter's values of the
region's inputs (:mod:`grow_ir.imports.torch_values`, both runs), gives the interpreter's
value of the region's output within :data:`TOLERANCE`; otherwise the module is refused by
its path (or, where its ops all have rules, left to them). The patterns say where to look;
the values decide. Attention lives in :mod:`grow_ir.imports.torch_attention`. Module
classes are matched by structure, never by importing the library that defines them.
"""

from __future__ import annotations

import functools
import typing
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx, nn

from grow_ir.imports.positions import padding_of
from grow_ir.imports.torch_rules import IGNORED, RULES, arg
from grow_ir.imports.torch_values import RUNS, TOLERANCE, Evaluation
from grow_ir.ir.graph import Graph, Node
from grow_ir.ir.ops import OPS
from grow_ir.ir.types import DTYPES, TensorType

aten = torch.ops.aten

ASSERTS = frozenset({aten._assert_tensor_metadata.default})
"""Checks torch.export inserts (no value): a region takes them along with what they check."""


@dataclass(frozen=True)
class Region:
    """fx nodes replaced by one IR node.

    Attributes:
        path: the module path the IR node is named after (``transformer.h.0.attn``).
        nodes: names of the fx nodes the IR node replaces (its output among them).
        output: the fx node whose value the IR node's output is.
        inputs: the fx values the IR node reads, in the op's input order.
        op, attrs: the IR node's op and attributes.
        params: the IR node's parameters by local name (copies where they are rearranged:
            a stacked in-projection, a transposed ``Conv1D`` weight).
    """

    path: str
    nodes: frozenset[str]
    output: fx.Node
    inputs: tuple[fx.Node, ...]
    op: str
    attrs: Mapping[str, Any]
    params: Mapping[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class Found:
    """What the region finders found: regions; refusals (``where``, ``what``, the fx
    nodes whose values are poisoned by them); and fallbacks, constructs left to the
    per-op rules, whose reasons are listed only if the import is refused anyway."""

    regions: list[Region] = field(default_factory=list)
    refusals: list[tuple[str, str, frozenset[str]]] = field(default_factory=list)
    fallbacks: list[tuple[str, str, frozenset[str]]] = field(default_factory=list)

    @property
    def claimed(self) -> set[str]:
        """Every fx node some region replaces."""
        return {n for r in self.regions for n in r.nodes}


@dataclass(frozen=True)
class Program:
    """What the patterns read: the program's graph, the module, the evaluation."""

    graph: fx.Graph
    root: nn.Module
    fqns: Mapping[str, str]  # parameter/buffer placeholder -> state_dict key
    state: Mapping[str, torch.Tensor]
    evaluation: Evaluation

    @functools.cached_property
    def nodes(self) -> dict[str, fx.Node]:
        """The program's fx nodes by name."""
        return {n.name: n for n in self.graph.nodes}

    @functools.cached_property
    def buffers(self) -> frozenset[str]:
        """The state_dict keys of the module's buffers (persistent or not)."""
        return frozenset(name for name, _ in self.root.named_buffers())

    def tensor(self, node: Any) -> torch.Tensor | None:
        """The parameter or buffer an fx argument is, else None."""
        if isinstance(node, fx.Node) and node.name in self.fqns:
            return self.state[self.fqns[node.name]]
        return None

    def is_param(self, node: Any) -> bool:
        """True for a parameter or buffer placeholder."""
        return isinstance(node, fx.Node) and node.name in self.fqns


def scope(node: fx.Node) -> tuple[str, str]:
    """``(path, class name)`` of the innermost module that ran ``node``."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return "", ""
    path, cls = list(stack.values())[-1]
    cls = cls if isinstance(cls, str) else cls.__qualname__
    return path, cls.rsplit(".", 1)[-1]


def where(node: fx.Node) -> str:
    """``path (Class)`` for a refusal."""
    path, cls = scope(node)
    return f"{path or '<root>'} ({cls or 'root'})"


# ---- evaluating one IR node ----------------------------------------------------------------


def run_op(
    op: str, attrs: Mapping[str, Any], params: Mapping[str, torch.Tensor], values: list[Any]
) -> torch.Tensor:
    """The output of one IR node (lowered by the torch backend) on concrete ``values``."""
    from grow_ir.backends.torch import to_torch
    from grow_ir.ir.verify import verify

    types = {f"x{i}": _type(v) for i, v in enumerate(values)}
    node = Node("n", op, dict(attrs), tuple(types))
    graph = verify(
        Graph(
            inputs=types,
            nodes=(node,),
            outputs={"y": "n"},
            params={f"n.{k}": v for k, v in params.items()},
        )
    )
    with torch.no_grad():
        return to_torch(graph).eval()(*values)


def _type(v: torch.Tensor) -> TensorType:
    dtype = next(k for k, d in DTYPES.items() if d == v.dtype)
    return TensorType(tuple(v.shape), dtype)


def matches(program: Program, region: Region) -> str | None:
    """None when the region's IR node computes the region's output on every run, else
    the largest relative error found (as text), or why it could not run."""
    ev = program.evaluation
    runs = [
        ([ev.value(i, run) for i in region.inputs], ev.value(region.output, run))
        for run in range(RUNS)
    ]
    return fits(region.op, region.attrs, region.params, runs)


Candidate = tuple[str, Mapping[str, Any], Mapping[str, torch.Tensor]]
"""An IR node a region might be: ``(op, attrs, params)``."""


def fits(
    op: str,
    attrs: Mapping[str, Any],
    params: Mapping[str, torch.Tensor],
    runs: list[tuple[list[Any], Any]],
) -> str | None:
    """None when the IR node ``op`` computes ``want`` from ``inputs`` within
    :data:`TOLERANCE` for every ``(inputs, want)`` of ``runs``, else the largest relative
    error found (as text), or why it could not run. What every importer's regions are
    accepted by (:func:`first_fit` of one candidate)."""
    return first_fit([(op, attrs, params)], runs)[1]


def first_fit(
    candidates: Sequence[Candidate], runs: list[tuple[list[Any], Any]]
) -> tuple[int | None, str | None]:
    """``(index, None)`` of the first candidate that computes ``want`` from ``inputs``
    within :data:`TOLERANCE` for every ``(inputs, want)`` of ``runs``, else ``(None,
    why the last one does not)`` (:func:`first_fits` of one group)."""
    return first_fits([(candidates, runs)])[0]


def first_fits(
    groups: Sequence[tuple[Sequence[Candidate], list[tuple[list[Any], Any]]]],
) -> list[tuple[int | None, str | None]]:
    """For each group ``(candidates, runs)`` (one region each), what :func:`first_fit`
    says of it.

    Every candidate of every group is lowered together, once, as one graph whose dims
    that differ between runs are symbolic (as an imported graph's are), and run on each
    run's inputs; where that graph cannot be built or run (a candidate its op refuses),
    each candidate is lowered alone for each run. Either way every candidate is judged
    by the torch backend's output on every run of its group.
    """
    outputs = _run_together(groups)
    found = []
    for g, (candidates, runs) in enumerate(groups):
        problem: str | None = "no candidate"
        for k, candidate in enumerate(candidates):
            if outputs is None:
                problem = _problem_alone(candidate, runs)
            else:
                got = [out[(g, k)] for out in outputs]
                problem = _problem([(y, want) for y, (_, want) in zip(got, runs)])
            if problem is None:
                found.append((k, None))
                break
        else:
            found.append((None, problem))
    return found


def _run_together(
    groups: Sequence[tuple[Sequence[Candidate], list[tuple[list[Any], Any]]]],
) -> list[dict[tuple[int, int], torch.Tensor]] | None:
    """Per run, every ``(group, candidate)``'s output, from one lowering; None when it
    fails."""
    from grow_ir.backends.torch import to_torch
    from grow_ir.ir.verify import verify

    if not any(candidates for candidates, _ in groups):
        return [{} for _ in range(RUNS)]
    try:
        types: dict[str, TensorType] = {}
        nodes, params, outputs = [], {}, {}
        for g, (candidates, runs) in enumerate(groups):
            if not candidates:
                continue
            reads = tuple(f"x{g}_{i}" for i in range(len(runs[0][0])))
            for i, name in enumerate(reads):
                types[name] = _run_type([inputs[i] for inputs, _ in runs])
            for k, (op, attrs, p) in enumerate(candidates):
                nodes.append(Node(f"n{g}_{k}", op, dict(attrs), reads))
                params |= {f"n{g}_{k}.{name}": t for name, t in p.items()}
                outputs[f"y{g}_{k}"] = (g, k)
        graph = Graph(
            inputs=types,
            nodes=tuple(nodes),
            outputs={y: f"n{g}_{k}" for y, (g, k) in outputs.items()},
            params=params,
        )
        module = to_torch(verify(graph)).eval()
        got = []
        with torch.no_grad():
            for run in range(len(groups[0][1])):
                feed = [v for candidates, runs in groups if candidates for v in runs[run][0]]
                out = module(*feed)
                out = out if isinstance(out, dict) else {next(iter(outputs)): out}
                got.append({outputs[y]: t for y, t in out.items()})
        return got
    except Exception:  # a candidate its op refuses: each is tried alone, saying why
        return None


def _run_type(values: list[torch.Tensor]) -> TensorType:
    """The type of one input over the runs: a dim that differs between runs is
    symbolic, named after its sizes (so that inputs sharing a dim share its name)."""
    shapes = [tuple(v.shape) for v in values]
    dims: list[int | str] = []
    for axis, size in enumerate(shapes[0]):
        sizes = [int(s[axis]) for s in shapes]
        same = len(set(sizes)) == 1
        dims.append(int(size) if same else "s" + "_".join(str(d) for d in sizes))
    return TensorType(tuple(dims), _type(values[0]).dtype)


def _problem_alone(candidate: Candidate, runs: list[tuple[list[Any], Any]]) -> str | None:
    op, attrs, params = candidate
    pairs = []
    for inputs, want in runs:
        try:
            pairs.append((run_op(op, attrs, params, inputs), want))
        except Exception as exc:  # a candidate the op refuses is simply not this construct
            return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return _problem(pairs)


def _problem(pairs: list[tuple[torch.Tensor, Any]]) -> str | None:
    """None when every ``got`` equals its ``want`` within :data:`TOLERANCE`, else why not."""
    for got, want in pairs:
        if not isinstance(want, torch.Tensor) or got.shape != want.shape:
            return f"shape {list(got.shape)} for {list(getattr(want, 'shape', []))}"
        w = want.double()
        err = (got.double() - w).abs().max().item() / max(1.0, w.abs().max().item())
        if not err <= TOLERANCE:
            return f"relative error {err:.3g}"
    return None


def outside_users(nodes: set[str], node: fx.Node) -> list[fx.Node]:
    """Users of ``node`` outside ``nodes`` (export's metadata checks left out)."""
    return [u for u in node.users if u.name not in nodes and u.target not in ASSERTS]


# ---- GPT-2's Conv1D ------------------------------------------------------------------------


@dataclass(frozen=True)
class Projection:
    """A linear map of ``x``: ``weight`` ``[out, in]`` (a copy when transposed), ``bias``."""

    x: fx.Node
    weight: torch.Tensor
    bias: torch.Tensor | None
    nodes: frozenset[str]


def linear_projection(program: Program, node: fx.Node) -> Projection | None:
    """``node`` as a linear map of one value: ``aten.linear`` with a parameter weight, or a
    ``Conv1D`` (``view(addmm(bias, view(x, [-1, in]), weight), [..., out])``, the weight
    ``[in, out]``, transposed here)."""
    if node.op != "call_function":
        return None
    if node.target is aten.linear.default:
        w = program.tensor(node.args[1])
        bias = arg(node, 2, "bias")
        b = program.tensor(bias)
        if w is None or (bias is not None and b is None):
            return None
        return Projection(node.args[0], w, b, frozenset({node.name}))
    if node.target not in (aten.view.default, aten.reshape.default):
        return None
    mm = node.args[0]
    if not (isinstance(mm, fx.Node) and mm.target is aten.addmm.default and len(mm.users) == 1):
        return None
    b, flat, w = program.tensor(mm.args[0]), mm.args[1], program.tensor(mm.args[2])
    if b is None or w is None or arg(mm, 3, "beta", 1) != 1 or arg(mm, 4, "alpha", 1) != 1:
        return None
    if not (isinstance(flat, fx.Node) and flat.target in (aten.view.default, aten.reshape.default)):
        return None
    x = flat.args[0]
    if len(flat.users) != 1 or not isinstance(x, fx.Node):
        return None
    x_shape = tuple(x.meta["val"].shape)
    if tuple(node.meta["val"].shape) != (*x_shape[:-1], w.shape[1]) or b.dim() != 1:
        return None
    return Projection(x, w.t().contiguous(), b, frozenset({flat.name, mm.name, node.name}))


def conv1d_regions(program: Program, found: Found) -> None:
    """Every ``Conv1D`` left unclaimed becomes a ``linear`` node (its weight transposed)."""
    claimed = found.claimed
    for node in program.graph.nodes:
        if node.target is not aten.addmm.default or node.name in claimed:
            continue
        users = list(node.users)
        out = users[0] if len(users) == 1 else None
        proj = None if out is None else linear_projection(program, out)
        if out is None or proj is None:
            found.refusals.append((where(node), "addmm is no Conv1D-shaped linear", frozenset()))
            continue
        path, _ = scope(node)
        params = {"weight": proj.weight, "bias": proj.bias}
        attrs = {"out_features": int(proj.weight.shape[0])}
        region = Region(path, proj.nodes, out, (proj.x,), "linear", attrs, params)
        problem = matches(program, region)
        if problem is not None:
            found.refusals.append((where(node), f"Conv1D as linear: {problem}", proj.nodes))
            continue
        found.regions.append(region)


def padded_position_regions(program: Program, found: Found) -> None:
    """Every value counted from one token input past its padding (RoBERTa's position
    ids: ``cumsum(ids != p) * (ids != p) + p``, found by value, :func:`padding_of`)
    becomes a ``positions`` node with that ``padding_idx``; what builds it is not
    imported."""
    ev = program.evaluation
    inputs = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
    for node in program.graph.nodes:
        deps = ev.depends.get(node.name, frozenset())
        if node.op != "call_function" or len(deps) != 1 or node.name in found.claimed:
            continue
        (ids,) = deps
        p = padding_of(
            [ev.value(inputs[ids], r) for r in range(RUNS)],
            [ev.value(node, r) for r in range(RUNS)],
        )
        if p is None:  # (padding_of computed the same count the node lowers to)
            continue
        # a count read only by a further one (a cast) is left dead: that one is imported
        path, _ = scope(node)
        attrs = {"dim": ev.value(node).dim() - 1, "padding_idx": p}  # the last axis
        found.regions.append(
            Region(path, frozenset({node.name}), node, (inputs[ids],), "positions", attrs)
        )


# ---- leaf modules fitted whole (RMSNorm, a GELU written out) --------------------------------


def _literal_variants(model: type) -> Iterator[dict[str, Any]]:
    """The attribute sets of an op that differ in one ``Literal`` field (defaults else)."""
    yield {}
    for name, f in model.model_fields.items():
        if typing.get_origin(f.annotation) is typing.Literal:
            for value in typing.get_args(f.annotation):
                if value != f.default:
                    yield {name: value}


def _candidates(
    program: Program, nodes: list[fx.Node], x: fx.Node, params: dict[str, torch.Tensor]
) -> Iterator[tuple[str, dict[str, Any], dict[str, torch.Tensor]]]:
    scalars = [
        float(a)
        for n in nodes
        if n.target is aten.add.Tensor
        for a in n.args
        if isinstance(a, float)
    ]
    if not x.meta["val"].is_floating_point():
        return _embedding_candidates(program, nodes, params)
    return fit_candidates(int(x.meta["val"].shape[-1]), params, scalars)


def _embedding_candidates(
    program: Program, nodes: list[fx.Node], params: dict[str, torch.Tensor]
) -> Iterator[tuple[str, dict[str, Any], dict[str, torch.Tensor]]]:
    """An ``embedding`` scaled by each scalar buffer the call reads (Gemma's word
    embedding times its ``embed_scale``), for a module holding one ``[V, E]`` weight."""
    weight = params.get("weight")
    if set(params) != {"weight"} or weight is None or weight.dim() != 2:
        return
    for t in _scalar_buffers(program, nodes):
        if t.is_floating_point() and float(t) > 0:
            attrs = {"num_embeddings": int(weight.shape[0]), "embedding_dim": int(weight.shape[1])}
            yield "embedding", {**attrs, "scale": float(t)}, {"weight": weight}


def _scalar_buffers(program: Program, nodes: list[fx.Node]) -> list[torch.Tensor]:
    """The one-element buffers (not parameters) the nodes read."""
    out = []
    for n in nodes:
        for a in n.all_input_nodes:
            t = program.tensor(a)
            if t is not None and t.numel() == 1 and program.fqns[a.name] in program.buffers:
                out.append(t)
    return out


def fit_candidates(
    width: int, params: Mapping[str, torch.Tensor], added: list[float]
) -> Iterator[tuple[str, dict[str, Any], dict[str, torch.Tensor]]]:
    """IR ops a leaf module's call might be: an activation (every op whose facts call it
    one), or a normalisation over the last axis without parameters, when it holds no
    parameters; a normalisation over the last axis (of ``width``) with its one ``weight``
    when it holds that; a normalisation's ``eps`` is one of the scalars the call adds
    (``added``). Each is only a candidate: the values decide (:func:`fits`)."""
    if not params:
        for name, opdef in OPS.items():
            if opdef.facts is not None and opdef.facts.activation:
                for attrs in _literal_variants(opdef.attrs):
                    yield name, attrs, {}
        for eps in added:
            yield "rmsnorm", {"eps": eps, "elementwise_affine": False}, {}
        return
    if set(params) != {"weight"} or tuple(params["weight"].shape) != (width,):
        return
    for eps in added:
        yield "rmsnorm", {"eps": eps}, {"weight": params["weight"]}
        # Gemma's scales by (1 + weight): the node holds 1 + weight, the same function and
        # the same gradients
        yield "rmsnorm", {"eps": eps}, {"weight": 1.0 + params["weight"].detach()}


def module_regions(program: Program, found: Found, live: set[str]) -> None:
    """A leaf module's call that holds an op with no rule, fitted whole to an IR op (calls
    only regions read, such as rotary tables, are left alone)."""
    claimed = found.claimed
    calls: dict[str, list[fx.Node]] = {}
    for node in program.graph.nodes:
        stack = node.meta.get("nn_module_stack") or {}
        if node.op == "call_function" and stack and node.name in live - claimed:
            calls.setdefault(list(stack)[-1], []).append(node)
    for call in calls.values():
        path, _ = scope(call[0])
        try:
            module = program.root.get_submodule(path)
        except AttributeError:
            continue
        if list(module.children()):
            continue
        if all(n.target in RULES or n.target in IGNORED for n in call) and not _scalar_buffers(
            program, call
        ):
            continue  # the rules import it (a scalar buffer read as a value they cannot)
        region = _fit(program, path, module, call)
        if region is not None:  # else the op without a rule is refused by the rules
            found.regions.append(region)


def _fit(program: Program, path: str, module: nn.Module, call: list[fx.Node]) -> Region | None:
    # casts to the same dtype of what the call reads (Llama's .to(float32)) stay outside:
    # the residual reads them too
    inside = {n.name for n in call}
    passthrough = set()
    for n in call:
        src = n.args[0] if n.args else None
        if (
            n.target in (aten.to.dtype, aten.to.dtype_layout, aten._to_copy.default)
            and isinstance(src, fx.Node)
            and not program.is_param(src)  # a cast of its own weight is inside the call
            and (src.name not in inside or src.name in passthrough)
            and src.meta["val"].dtype == n.meta["val"].dtype
        ):
            passthrough.add(n.name)
    nodes = [n for n in call if n.name not in passthrough and n.target not in ASSERTS]
    names = {n.name for n in nodes}
    reads: dict[str, fx.Node] = {}
    for n in nodes:
        for a in n.all_input_nodes:
            if a.name not in names and not program.is_param(a):
                reads.setdefault(a.name, a)
    outs = [n for n in nodes if outside_users(names, n)]
    if len(reads) != 1 or len(outs) != 1:
        return None
    (x,) = reads.values()
    params = dict(module.named_parameters(recurse=False))
    candidates = list(_candidates(program, nodes, x, params))
    ev = program.evaluation
    runs = [([ev.value(x, r)], ev.value(outs[0], r)) for r in range(RUNS)]
    k, _ = first_fit(candidates, runs)
    if k is None:
        return None
    op, attrs, p = candidates[k]
    return Region(path, frozenset(names), outs[0], (x,), op, attrs, p)
