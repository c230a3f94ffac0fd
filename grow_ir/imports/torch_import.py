"""``from_torch``: an ``nn.Module`` captured with ``torch.export`` into a verified Graph.

Why torch.export and not ``fx.symbolic_trace``: export runs the module on fake tensors, so
data-independent Python control flow (Hugging Face's config branches, shape checks) is
resolved instead of failing the trace; every op arrives as one canonical ATen overload
(``x.view``, ``x.reshape`` and ``torch.flatten`` are three ops, not three spellings); every
value carries its real shape and dtype; and every node keeps the module path that produced
it (``nn_module_stack``) and every parameter its ``state_dict()`` key, which is where the
imported node names come from. The module is captured in eval mode (the mode imported
graphs are checked in); its own mode is restored afterwards.

The ATen-to-op rules live in :mod:`grow_ir.imports.torch_rules`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import fx, nn
from torch.utils import _pytree as pytree

from grow_ir.errors import CheckFailed, GrowError, ShapeError
from grow_ir.imports.builder import GraphBuilder, ident
from grow_ir.imports.torch_modules import WHOLE, Call, calls
from grow_ir.imports.torch_rules import IGNORED, RULES, Context, Unsupported
from grow_ir.ir.graph import Graph
from grow_ir.ir.types import DTYPES, TensorType

TOLERANCE = 1e-5
"""Largest accepted ``max|graph - module| / max(1, max|module|)`` of the import check."""


def from_torch(
    module: nn.Module,
    example_inputs: Sequence[torch.Tensor] | torch.Tensor,
    *,
    names: Sequence[str] | None = None,
    batch_dim: bool = True,
    check: bool = True,
) -> Graph:
    """Import ``module`` into a verified Graph computing what it computes in eval mode.

    Guarantees: node names are the module's own paths (``layer1.0.conv1``; stateless
    steps inside a module are named ``SCOPE.OP``, e.g. ``layer1.0.add``); parameters are
    named by the module's ``state_dict()`` keys and hold copies of its values, bitwise; a
    module called twice becomes two nodes that ``share`` its parameters; graph inputs are
    named after ``forward``'s arguments (or ``names``), outputs after the fields of what
    ``forward`` returns (``output`` for one tensor, ``logits`` for a ModelOutput field);
    with ``batch_dim`` the first axis of every input is the symbolic ``batch``; with
    ``check`` the lowered graph's outputs on ``example_inputs`` equal the module's within
    :data:`TOLERANCE` (relative). ``module`` and its mode are unchanged.

    Raises:
        ImportRefused: one line per construct grow-ir has no op for, each naming the module
            path, the module's class and the ATen op (nothing is imported).
        CheckFailed: the imported graph's outputs differ from the module's.
        GrowError: ``torch.export`` cannot capture the module, or bad arguments.
    """
    args = (example_inputs,) if isinstance(example_inputs, torch.Tensor) else tuple(example_inputs)
    for i, a in enumerate(args):
        if not isinstance(a, torch.Tensor):
            raise GrowError(
                "example inputs must be tensors",
                field=f"example_inputs[{i}]",
                expected="a torch.Tensor",
                found=type(a).__name__,
            )
    source = f"{type(module).__name__} (torch)"
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            expected = module(*args)
        try:
            program = torch.export.export(module, args, strict=False)
        except Exception as exc:  # torch raises many kinds; the user needs the reason
            raise GrowError(
                f"torch.export cannot capture {type(module).__name__}",
                expected="a module torch.export.export can trace with these inputs",
                found=f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
            ) from None
        graph = _convert(program, module, args, expected, source, names, batch_dim)
    finally:
        module.train(was_training)
    if check:
        _check(graph, module, args, expected, was_training)
    return graph


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
    ctx = Context(builder=builder, root=module, fqns=fqns)
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
    for node in program.graph.nodes:
        if node.name in whole:
            _convert_whole(ctx, whole[node.name])
            continue
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
            return builder.finish(_outputs(ctx, node, expected), type(module).__name__)
        else:
            builder.refuse(ctx.where(node), f"fx {node.op} node {node.target}", [node.name])
    raise GrowError("torch.export gave a graph without an output")  # pragma: no cover


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
