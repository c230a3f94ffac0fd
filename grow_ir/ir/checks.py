"""The verifier's checks of single items, shared by the full verifier (:mod:`.verify`),
the one that checks what changed (:mod:`.verify_delta`) and type inference: names,
parameter tensors, arities."""

from __future__ import annotations

import keyword
import re
from typing import TYPE_CHECKING

import torch
from torch.fx.graph import _custom_builtins

from grow_ir.errors import VerifyError
from grow_ir.ir.ops import ParamSpec
from grow_ir.ir.types import DTYPES

if TYPE_CHECKING:
    from grow_ir.ir.graph import Node

IDENT_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
# Node names are PyTorch module paths: a scope may start with a digit, as the children of
# an nn.Sequential do (``layer1.0.conv1``, ``0``, and ``features.0_residual`` after a pass).
NODE_RE = re.compile(r"[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*")


def _module_attributes() -> frozenset[str]:
    # Every node becomes a submodule at its scoped name of a torch.fx.GraphModule, so no
    # scope segment may shadow an attribute of one (``forward``, ``to``, ``graph``, ``code``,
    # ``training``...): the instance's dir() covers class and instance attributes.
    return frozenset(dir(torch.fx.GraphModule(torch.nn.Module(), torch.fx.Graph())))


RESERVED = _module_attributes() | frozenset(keyword.kwlist)
"""Words no scope segment of a node (or graph input) name may be."""

RESERVED_INPUTS = RESERVED | {"self"} | frozenset(_custom_builtins)
"""Words no graph input may be called: the lowered ``forward`` takes each input as an
argument of that name, and these would shadow ``self`` or the globals its code uses
(``torch``, ``device``...)."""


def check_name(name: str, *, what: str = "node", field: str = "name") -> None:
    """Raise VerifyError unless ``name`` is a well-formed scoped name of no reserved word.

    Graph inputs (``what="input"``) must be one plain identifier, since each becomes an
    argument of the lowered module's ``forward``.
    """
    pattern = {"input": IDENT_RE, "node": NODE_RE}.get(what, NAME_RE)
    if not isinstance(name, str) or not pattern.fullmatch(name):
        raise VerifyError(
            f"malformed {what} name",
            node=name if isinstance(name, str) else None,
            field=field,
            expected="a Python identifier, e.g. 'image'"
            if what == "input"
            else "letters, digits and _ joined by dots, e.g. 'stage1.block0.conv1'"
            if what == "node"
            else "identifiers joined by dots, e.g. 'stage1.block0.conv1'",
            found=repr(name),
        )
    reserved = RESERVED_INPUTS if what == "input" else RESERVED
    bad = [s for s in name.split(".") if s in reserved]
    if bad:
        raise VerifyError(
            f"{what} name uses a reserved word",
            node=name,
            field=field,
            expected="no Python keyword or torch.nn.Module / fx.GraphModule attribute as a scope",
            found=repr(bad[0]),
        )


def check_param(node: str, key: str, spec: ParamSpec, tensor: object) -> None:
    """Raise VerifyError unless ``tensor`` (``None``: absent) is a tensor of parameter
    ``key``'s required shape and dtype (``node``: the node that requires it)."""
    if tensor is None:
        raise VerifyError(
            "missing parameter",
            node=node,
            field=key,
            expected=f"a tensor of shape {list(spec.shape)}",
            found="none",
        )
    if not isinstance(tensor, torch.Tensor):
        raise VerifyError(
            "parameter is not a tensor",
            node=node,
            field=key,
            expected=f"a torch.Tensor of shape {list(spec.shape)}",
            found=type(tensor).__name__,
        )
    if tuple(tensor.shape) != spec.shape or tensor.dtype != DTYPES[spec.dtype]:
        raise VerifyError(
            "parameter of the wrong shape or dtype",
            node=node,
            field=key,
            expected=f"{spec.dtype}{list(spec.shape)}",
            found=f"{str(tensor.dtype).removeprefix('torch.')}{list(tensor.shape)}",
        )


def check_arity(node: Node) -> None:
    """Raise VerifyError unless ``node`` has as many inputs as its op takes."""
    op = node.opdef
    count = len(node.inputs)
    if op.min_inputs <= count and (op.max_inputs is None or count <= op.max_inputs):
        return
    if op.max_inputs == op.min_inputs:
        want = f"{op.min_inputs}"
    elif op.max_inputs is None:
        want = f"at least {op.min_inputs}"
    else:
        want = f"{op.min_inputs} to {op.max_inputs}"
    raise VerifyError(
        f"{node.op} takes {want} input(s)",
        node=node.name,
        field="inputs",
        expected=f"{want} input(s)",
        found=f"{count}",
    )
