"""``from_torch``: an ``nn.Module`` captured with ``torch.export`` into a verified Graph.

Why torch.export and not ``fx.symbolic_trace``: export runs the module on fake tensors, so
data-independent Python control flow (Hugging Face's config branches, shape checks) is
resolved instead of failing the trace; every op arrives as one canonical ATen overload
(``x.view``, ``x.reshape`` and ``torch.flatten`` are three ops, not three spellings); every
value carries its real shape and dtype; and every node keeps the module path that produced
it (``nn_module_stack``) and every parameter its ``state_dict()`` key, which is where the
imported node names come from. The module is captured in eval mode (the mode imported
graphs are checked in); its own mode is restored afterwards. A Hugging Face model is
captured with its key/value cache off (``config.use_cache``, restored afterwards): the
cache is an inference-time shortcut, not part of the function a grown network computes,
and a ``DynamicCache`` in the outputs is not a tensor torch.export can return.

The ATen-to-op rules live in :mod:`grow_ir.imports.torch_rules`. Before them, the program
is evaluated (:mod:`grow_ir.imports.torch_values`) and regions that grow-ir has as one op
are found and verified by value (:mod:`grow_ir.imports.torch_patterns`,
:mod:`grow_ir.imports.torch_attention`): attention, GPT-2's Conv1D, RMSNorm, GELU written
out. What only those regions read (masks, rotary tables, cache positions) is not imported:
the regions' IR nodes compute it themselves.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import fx, nn
from torch.utils import _pytree as pytree

from grow_ir.errors import CheckFailed, GrowError, ShapeError
from grow_ir.imports.builder import GraphBuilder, ident
from grow_ir.imports.torch_attention import attention_regions
from grow_ir.imports.torch_modules import WHOLE, Call, calls
from grow_ir.imports.torch_patterns import (
    Found,
    Program,
    Region,
    conv1d_regions,
    module_regions,
    padded_position_regions,
)
from grow_ir.imports.torch_rules import IGNORED, RULES, Context, Unsupported
from grow_ir.imports.torch_stages import module_list_stages
from grow_ir.imports.torch_values import TOLERANCE, Evaluation, evaluate
from grow_ir.ir.graph import Graph
from grow_ir.ir.types import DTYPES, TensorType
from grow_ir.ir.verify import verify

__all__ = ["TOLERANCE", "from_torch"]


def from_torch(
    module: nn.Module,
    example_inputs: Sequence[torch.Tensor] | Mapping[str, torch.Tensor] | torch.Tensor,
    *,
    names: Sequence[str] | None = None,
    batch_dim: bool = True,
    length_dim: bool = False,
    check: bool = True,
) -> Graph:
    """Import ``module`` into a verified Graph computing what it computes in eval mode.

    Guarantees: node names are the module's own paths (``layer1.0.conv1``; stateless
    steps inside a module are named ``SCOPE.OP``, e.g. ``layer1.0.add``); parameters are
    named by the module's ``state_dict()`` keys and hold copies of its values, bitwise
    (but a norm that scales by ``1 + weight``, Gemma's, holds ``1 + weight``); a
    module called twice becomes two nodes that ``share`` its parameters; graph inputs are
    named after ``forward``'s arguments (or ``names``; ``example_inputs`` may be a dict of
    keyword arguments, for a model whose arguments after the first are optional, such as
    Hugging Face's ``attention_mask``), outputs after the fields of what
    ``forward`` returns (``output`` for one tensor, ``logits`` for a ModelOutput field);
    with ``batch_dim`` the first axis of every input is the symbolic ``batch``, and with
    ``length_dim`` the second axis of every input of rank 2 or more is the symbolic
    ``seq`` (a language model's tokens), the graph then checked on inputs one shorter too
    (types and, with ``check``, outputs); an
    attention (SDPA or eager, with its projections, head layout, rotary embedding and
    mask) is one ``attention`` node named after its module, holding copies of its
    projections stacked; GPT-2's ``Conv1D`` is a ``linear`` holding its weight transposed
    (a copy); an ``nn.ModuleList`` or ``nn.Sequential`` of chained identical blocks is a
    stage; with
    ``check`` the lowered graph's outputs on ``example_inputs`` equal the module's within
    :data:`TOLERANCE` (relative). ``module``, its mode and its ``config.use_cache`` (a
    Hugging Face model's key/value cache, off while it is captured: the cache is not part
    of what it computes) are unchanged.

    Raises:
        ImportRefused: one line per construct grow-ir has no op for, each naming the module
            path, the module's class and the ATen op (nothing is imported).
        CheckFailed: the imported graph's outputs differ from the module's (at the
            example's length, or one shorter with ``length_dim``).
        GrowError: ``torch.export`` cannot capture the module, bad arguments, or (with
            ``length_dim``) a node that holds only at the example's length.
    """
    kwargs: dict[str, torch.Tensor] = {}
    if isinstance(example_inputs, Mapping):
        kwargs, args = dict(example_inputs), ()
    elif isinstance(example_inputs, torch.Tensor):
        args = (example_inputs,)
    else:
        args = tuple(example_inputs)
    for i, a in [*enumerate(args), *kwargs.items()]:
        if not isinstance(a, torch.Tensor):
            raise GrowError(
                "example inputs must be tensors",
                field=f"example_inputs[{i!r}]" if isinstance(i, str) else f"example_inputs[{i}]",
                expected="a torch.Tensor",
                found=type(a).__name__,
            )
    source = f"{type(module).__name__} (torch)"
    given = (args, kwargs)  # as forward takes them, for the check at another length
    was_training = module.training
    config = getattr(module, "config", None)
    cached = getattr(config, "use_cache", None)
    module.eval()
    try:
        if cached:
            config.use_cache = False  # type: ignore[union-attr]
        with torch.no_grad():
            expected = module(*args, **kwargs)
        try:
            program = torch.export.export(module, args, kwargs, strict=False)
        except Exception as exc:  # torch raises many kinds; the user needs the reason
            raise GrowError(
                f"torch.export cannot capture {type(module).__name__}",
                expected="a module torch.export.export can trace with these inputs",
                found=f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
            ) from None
        if kwargs:  # in the order of the program's inputs (forward's)
            args = tuple(kwargs[n] for n in program.graph_signature.user_inputs)
        graph = _convert(program, module, args, expected, source, names, batch_dim)
        if check:
            _check(graph, module, args, expected, was_training)
        if length_dim:
            graph = _any_length(graph, module, given, args, check)
    finally:
        module.train(was_training)
        if cached:
            config.use_cache = cached  # type: ignore[union-attr]
    return graph


def _shorter(t: torch.Tensor) -> torch.Tensor:
    """``t`` one shorter along its second axis (rank 2 or more), else as it is."""
    return t[:, :-1] if t.dim() >= 2 else t


def _any_length(
    graph: Graph,
    module: nn.Module,
    given: tuple[tuple[torch.Tensor, ...], dict[str, torch.Tensor]],
    args: tuple[torch.Tensor, ...],
    check: bool,
) -> Graph:
    """``graph`` with the second axis of every input of rank 2 or more the symbolic
    ``seq``, verified, and (``check``) computing what ``module`` computes on the
    inputs one shorter; GrowError naming the node that holds only at the example's
    length."""
    inputs = {
        name: t if t.rank < 2 else dataclasses.replace(t, shape=(t.shape[0], "seq", *t.shape[2:]))
        for name, t in graph.inputs.items()
    }
    if any(t.rank >= 2 and int(a.shape[1]) < 2 for t, a in zip(graph.inputs.values(), args)):
        raise GrowError(
            "checking other lengths needs examples of at least 2 along the second axis",
            field="example_inputs",
            expected="inputs of length 2 or more",
            found=str([tuple(a.shape) for a in args]),
        )
    try:
        wider = verify(graph.replace(inputs=inputs))
    except GrowError as exc:
        raise GrowError(
            "the imported graph holds only at the example's length",
            node=exc.node,
            field="length_dim",
            expected="nodes that take inputs of any length along the second axis",
            found=exc.reason,
        ) from None
    if check:
        call_args, call_kwargs = given
        with torch.no_grad():
            expected = module(
                *map(_shorter, call_args), **{k: _shorter(v) for k, v in call_kwargs.items()}
            )
        _check(wider, module, tuple(map(_shorter, args)), expected, module.training)
    return wider


def _convert(
    program: torch.export.ExportedProgram,
    module: nn.Module,
    args: tuple[torch.Tensor, ...],
    expected: Any,
    source: str,
    names: Sequence[str] | None,
    batch_dim: bool,
) -> Graph:
    sig = program.graph_signature
    state = module.state_dict(keep_vars=False)
    builder = GraphBuilder(source=source, tensors=state)
    fqns = {**sig.inputs_to_parameters, **sig.inputs_to_buffers}
    try:
        evaluation = evaluate(program, args)
    except Exception as exc:  # an op that fails on the redrawn inputs: the user needs why
        raise GrowError(
            f"the exported program of {type(module).__name__} cannot be evaluated",
            expected="a program that runs on the example inputs and on redrawn ones of the "
            "same shapes (integers in [0, max], floats normal)",
            found=f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
        ) from None
    ctx = Context(
        builder=builder,
        root=module,
        fqns=fqns,
        aliases=_tied_names(module),
        evaluation=evaluation,
    )
    user_inputs = list(sig.user_inputs)
    if names is not None and len(names) != len(user_inputs):
        raise GrowError(
            "one input name per example input",
            field="names",
            expected=f"{len(user_inputs)} names",
            found=f"{len(names)}",
        )
    batch = args[0].shape[0] if batch_dim and args and args[0].dim() else None
    whole = calls(program.graph, module)
    inside = {n.name for call in whole.values() for n in call.nodes}
    tensors = {**dict(module.named_buffers()), **state}  # with non-persistent buffers
    found = _regions(Program(program.graph, module, fqns, tensors, evaluation), inside)
    for where, what, poison in found.refusals:
        builder.refuse(where, what, list(poison))
    regions = {r.output.name: r for r in found.regions}
    claimed = found.claimed
    live = _live(program.graph, regions)
    for node in program.graph.nodes:
        if node.name in whole:  # its first op may be dead (a mask that is_causal drops)
            _convert_whole(ctx, whole[node.name])
            continue
        if node.op == "call_function" and node.name not in live:
            continue  # read only by what a region computes itself (a mask, rotary tables)
        if node.name in regions:
            _convert_region(ctx, regions[node.name])
            continue
        if node.name in claimed or node.name in builder.poisoned:
            continue  # replaced by a region, or refused by a region finder already
        if node.name in inside:
            continue
        if node.op == "placeholder":
            if node.name in fqns:
                continue
            if node.name in sig.inputs_to_lifted_tensor_constants:
                ctx.constants.add(node.name)
                continue
            i = user_inputs.index(node.name)
            name = ident(names[i] if names else node.name)
            ctx.env[node.name] = builder.add_input(name, _input_type(args[i], batch))
            ctx.batch = batch
        elif node.op == "call_function":
            _convert_call(ctx, node)
        elif node.op == "output":
            outputs = _outputs(ctx, node, expected)
            if builder.refusals:  # why a construct was left to the rules that refused it
                for where, what, _ in found.fallbacks:
                    builder.refuse(where, what)
            graph = builder.finish(outputs, type(module).__name__)
            return module_list_stages(graph, module)
        else:
            builder.refuse(ctx.where(node), f"fx {node.op} node {node.target}", [node.name])
    raise GrowError("torch.export gave a graph without an output")  # pragma: no cover


def _tied_names(module: nn.Module) -> dict[str, tuple[str, ...]]:
    """Every name of a tensor the module holds under several (a tied head and embedding)."""
    names: dict[int, list[str]] = {}
    for name, p in module.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), []).append(name)
    return {n: tuple(group) for group in names.values() if len(group) > 1 for n in group}


def _regions(program: Program, inside: set[str]) -> Found:
    """Attention first (it takes its projections along), then Conv1D, then leaf modules
    fitted whole; none inside a module imported whole (:mod:`torch_modules`)."""
    found = Found()
    attention_regions(program, found)
    found.regions = [r for r in found.regions if not r.nodes & inside]
    found.refusals = [r for r in found.refusals if not r[2] & inside]
    conv1d_regions(program, found)
    padded_position_regions(program, found)
    live = _live(program.graph, {r.output.name: r for r in found.regions})
    module_regions(program, found, live)
    return found


def _live(graph: fx.Graph, regions: dict[str, Region]) -> set[str]:
    """The fx nodes an output depends on, a region's output reading only its inputs."""
    live: set[str] = set()
    stack = [n for n in graph.nodes if n.op == "output"]
    while stack:
        n = stack.pop()
        if n.name in live:
            continue
        live.add(n.name)
        region = regions.get(n.name)
        stack.extend(region.inputs if region is not None else n.all_input_nodes)
    return live


def _convert_region(ctx: Context, region: Region) -> None:
    builder = ctx.builder
    if builder.is_poisoned([i.name for i in region.inputs]):
        builder.poisoned.update(region.nodes)
        return
    try:
        inputs = [ctx.value(i) for i in region.inputs]
    except Unsupported as exc:
        builder.refuse(ctx.where(region.output), exc.reason, list(region.nodes))
        return
    name = builder.add(
        region.op,
        inputs,
        region.path or region.op,  # a region of the root module: named after its op
        region.attrs,
        params=region.params,
        name=region.path or None,
    )
    for local, t in region.params.items():  # the module's own tensors: a later tie finds them
        key = f"{region.path}.{local}"
        own = builder.tensors.get(key)
        if own is not None and own.data_ptr() == t.data_ptr() and own.shape == t.shape:
            for alias in ctx.aliases.get(key, (key,)):
                ctx.owners.setdefault(alias, name)
    ctx.bind(region.output, name)
    ctx.check_shape(region.output)


def _input_type(t: torch.Tensor, batch: int | None) -> TensorType:
    dtype = next((k for k, v in DTYPES.items() if v == t.dtype), None)
    if dtype is None:
        raise GrowError(
            "unsupported input dtype",
            field="example_inputs",
            expected=" or ".join(DTYPES),
            found=str(t.dtype),
        )
    shape: list[int | str] = list(t.shape)
    if batch is not None and shape and shape[0] == batch:
        shape[0] = "batch"
    return TensorType(tuple(shape), dtype)


def _convert_call(ctx: Context, node: fx.Node) -> None:
    builder = ctx.builder
    deps = [a.name for a in node.all_input_nodes]
    length = _counted(ctx.evaluation, node)
    if length is not None and not builder.is_poisoned(deps):
        if node.users and all(_counted(ctx.evaluation, u) for u in node.users):
            return  # only further positions read it (arange(L) + 0, then unsqueeze)
        try:
            ctx.bind(node, ctx.positions(node, length[0], batch_axis=length[1]))
            return
        except Unsupported:
            pass  # no axis of that length: the op's own rule decides
    rule = RULES.get(node.target)
    if builder.is_poisoned(deps):
        # What follows a refused construct is not imported either, but an op grow-ir
        # lacks is listed still: the message names every missing op at once.
        if rule is None and node.target not in IGNORED:
            builder.refuse(ctx.where(node), f"{_op_name(node)} has no grow-ir op")
        builder.poisoned.add(node.name)
        return
    if any(d in ctx.constants for d in deps):
        builder.refuse(ctx.where(node), f"{node.target} reads a tensor constant", [node.name])
        return
    if rule is None:
        builder.refuse(ctx.where(node), f"{_op_name(node)} has no grow-ir op", [node.name])
        return
    try:
        rule(ctx, node)
    except Unsupported as exc:
        builder.refuse(ctx.where(node), f"{_op_name(node)} {exc.reason}", [node.name])
        return
    except ShapeError as exc:  # a value the op's type inference refuses
        builder.refuse(ctx.where(node), f"{_op_name(node)} {exc.message}", [node.name])
        return
    ctx.check_shape(node)


def _counted(evaluation: Evaluation, node: fx.Node) -> tuple[int, bool] | None:
    """``(L, batch_axis)`` when ``node`` reads no input and its value is ``arange(L)``, as
    ``[L]`` or ``[1, L]``: positions, however made (``arange(L) + 0``, BERT's sliced
    ``position_ids`` buffer)."""
    if not evaluation.constant(node):
        return None
    value = evaluation.value(node)
    if not isinstance(value, torch.Tensor) or value.dtype != torch.int64 or value.dim() > 2:
        return None
    if value.dim() == 0 or (value.dim() == 2 and value.shape[0] != 1):
        return None
    length = int(value.shape[-1])
    if not torch.equal(value.reshape(-1), torch.arange(length)):
        return None
    return length, value.dim() == 2


def _convert_whole(ctx: Context, call: Call) -> None:
    builder = ctx.builder
    poison = [n.name for n in call.nodes]
    outside = [a.name for a in call.outside_inputs(ctx)]
    where = f"{call.path} ({type(call.module).__name__})"
    if builder.is_poisoned(outside):
        builder.poisoned.update(poison)
        return
    try:
        WHOLE[type(call.module)](ctx, call)
    except Unsupported as exc:
        builder.refuse(where, exc.reason, poison)
        return
    bound = {n.name for n in call.nodes if n.name in ctx.env}
    builder.poisoned.update(p for p in poison if p not in bound)
    for n in call.nodes:
        if n.name in bound:
            ctx.check_shape(n)


def _op_name(node: fx.Node) -> str:
    return (
        str(getattr(node.target, "__name__", node.target))
        if callable(node.target)
        else str(node.target)
    )


def _outputs(ctx: Context, node: fx.Node, expected: Any) -> dict[str, str]:
    flat, _ = pytree.tree_flatten(node.args[0])
    paths = [p for p, _ in pytree.tree_flatten_with_path(expected)[0]]
    labels = [_label(p) for p in paths] if len(paths) == len(flat) else []
    if len(flat) == 1:
        labels = [labels[0] if labels and labels[0] != "output_0" else "output"]
    outputs: dict[str, str] = {}
    for i, value in enumerate(flat):
        label = labels[i] if i < len(labels) else f"output_{i}"
        if not isinstance(value, fx.Node):
            ctx.builder.refuse(label, f"the output is a constant ({value!r})")
            continue
        resolved = ctx.env.get(value.name)
        if resolved is None or ctx.builder.is_poisoned([value.name]):
            continue
        outputs[label] = ctx.resolve(value, label)
    return outputs


def _label(path: tuple) -> str:
    parts = []
    for key in path:
        if isinstance(key, pytree.SequenceKey):
            parts.append(str(key.idx))
        elif isinstance(key, pytree.MappingKey):
            parts.append(str(key.key))
        elif isinstance(key, pytree.GetAttrKey):
            parts.append(key.name)
        else:
            parts.append(str(key))
    label = "_".join(parts) or "output"
    return ident(f"output_{label}" if label[0].isdigit() else label)


def _check(
    graph: Graph,
    module: nn.Module,
    args: tuple[torch.Tensor, ...],
    expected: Any,
    was_training: bool,
) -> None:
    from grow_ir.backends.torch import to_torch

    lowered = to_torch(graph).eval()
    with torch.no_grad():
        got = lowered(**dict(zip(graph.inputs, args)))
    got_flat = list(got.values()) if isinstance(got, Mapping) else [got]
    want_flat = [t for t in pytree.tree_flatten(expected)[0] if isinstance(t, torch.Tensor)]
    for (out, _), g, w in zip(graph.outputs.items(), got_flat, want_flat):
        w = w.detach().double()
        err = (g.double() - w).abs().max().item() / max(1.0, w.abs().max().item())
        if not err <= TOLERANCE:
            raise CheckFailed(
                "the imported graph computes another function than the module",
                field=f"outputs.{out}",
                expected=f"a relative error of at most {TOLERANCE:g} on the example inputs",
                found=f"{err:.3g}",
            )
