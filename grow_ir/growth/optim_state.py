"""Optimizers whose state follows growth.

After a growth step the module is rebuilt, so its parameters are new tensors. The
optimizer is rebuilt over them with its class and hyper-parameters, and each parameter's
state is carried over by name using the provenance the pass recorded:

- a parameter with the same name that the pass did not touch keeps its state tensors
  exactly (Adam's moments and step, SGD's momentum buffer);
- a changed parameter gathers its source's state along ``Origin.index`` (the old index of
  every new index, -1 for a new entry, whose state is zero) and keeps its source's step;
- where ``Origin.scale`` gives factors (a net2net split divides a unit's fan-out by its
  copy count), the state is rescaled as staged training does: first moments (Adam's
  ``exp_avg``, SGD's ``momentum_buffer``) by the factor, like the weights they follow, and
  second moments (``exp_avg_sq``, ``max_exp_avg_sq``: squared gradients) by its square, so
  Adam's step direction ``exp_avg / sqrt(exp_avg_sq)`` of a split entry is its source's;
- entries that ``Origin.fresh`` marks (connections cut or grown back) start at zero;
- a new parameter (``source`` None, or unknown to the old module) starts with no state,
  which is exactly zero moments at step 0.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from grow_ir.errors import GrowError
from grow_ir.growth.config import OptimizerConfig
from grow_ir.passes.base import Origin

SECOND_MOMENTS = frozenset({"exp_avg_sq", "max_exp_avg_sq", "square_avg", "sum"})
"""State keys that hold squared gradients: scaled by factor² on a split."""


def trainable(module: nn.Module) -> dict[str, nn.Parameter]:
    """The module's parameters that require grad, by state_dict name, in module order."""
    return {k: p for k, p in module.named_parameters() if p.requires_grad}


def make_optimizer(config: OptimizerConfig, module: nn.Module) -> torch.optim.Optimizer:
    """A fresh optimizer over ``module``'s trainable parameters (one group, module order)."""
    params = list(trainable(module).values())
    if config.name == "sgd":
        return torch.optim.SGD(
            params,
            lr=config.lr,
            momentum=config.momentum,
            nesterov=config.nesterov,
            weight_decay=config.weight_decay,
        )
    return torch.optim.Adam(
        params, lr=config.lr, betas=config.betas, weight_decay=config.weight_decay
    )


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set the learning rate of every parameter group."""
    for group in optimizer.param_groups:
        group["lr"] = lr


def transfer_optimizer(
    old: torch.optim.Optimizer,
    old_module: nn.Module,
    new_module: nn.Module,
    origins: Mapping[str, Origin],
) -> torch.optim.Optimizer:
    """A new optimizer of ``old``'s class and hyper-parameters over ``new_module``.

    Guarantees: the new optimizer holds exactly ``new_module``'s trainable parameters in
    one group with the old first group's hyper-parameters (learning rate included); state
    follows the rules of this module's docstring, so an untouched parameter's state is
    bitwise equal to before and a widened one's preserved entries equal their sources'
    (times the recorded scale).

    Raises:
        GrowError: an origin's index does not produce the new parameter's shape (a pass
            recorded inconsistent provenance).
    """
    old_named = trainable(old_module)
    old_by_name = {name: old.state.get(p, {}) for name, p in old_named.items()}
    group = {k: v for k, v in old.param_groups[0].items() if k != "params"}
    new_named = trainable(new_module)
    new = type(old)(list(new_named.values()), **group)
    cache: dict[tuple, Any] = {}  # index and factor tensors, shared by alike parameters
    for name, param in new_named.items():
        state = _carried_state(name, param, old_by_name, origins, cache)
        if state:
            new.state[param] = state
    return new


def _carried_state(
    name: str,
    param: torch.Tensor,
    old_by_name: Mapping[str, Mapping[str, Any]],
    origins: Mapping[str, Origin],
    cache: dict[tuple, Any],
) -> dict[str, Any]:
    origin = origins.get(name)
    if origin is None:
        source = old_by_name.get(name)
        if not source:
            return {}
        if any(
            torch.is_tensor(v) and v.shape != param.shape and v.dim() > 0 for v in source.values()
        ):
            return {}  # same name, new shape, no provenance: treat as new
        return dict(source)
    if origin.source is None or not old_by_name.get(origin.source):
        return {}
    out: dict[str, Any] = {}
    for key, value in old_by_name[origin.source].items():
        if torch.is_tensor(value) and value.dim() > 0:
            second = key in SECOND_MOMENTS
            out[key] = gather_state(value, origin, second_moment=second, cache=cache)
            if out[key].shape != param.shape:
                raise GrowError(
                    "the recorded provenance does not give the parameter's shape",
                    field=name,
                    expected=f"state of shape {list(param.shape)}",
                    found=f"{list(out[key].shape)} from '{origin.source}' via {origin.to_json()}",
                )
        else:
            out[key] = value.clone() if torch.is_tensor(value) else value
    return out


def gather_state(
    value: torch.Tensor,
    origin: Origin,
    *,
    second_moment: bool = False,
    cache: dict[tuple, Any] | None = None,
) -> torch.Tensor:
    """``value`` (a state tensor of the source parameter) moved to the new parameter's layout.

    Per axis in ``origin.index``: entry ``j`` copies old entry ``index[j]``, or is zero
    where ``index[j] == -1``. Per axis in ``origin.scale``: entry ``j`` is multiplied by
    ``scale[j]`` (squared for a second moment). Other axes are unchanged. Entries that
    ``origin.fresh`` marks are zero. ``cache`` (a dict the caller keeps, with the origins,
    while it gathers) holds the index and factor tensors made, by the maps they come from:
    a pass shares one map among the parameters grown alike.
    """
    made = {} if cache is None else cache
    out = value
    for axis, idx in sorted(origin.index.items()):
        key = (id(idx), value.device)
        got = made.get(key)
        if got is None:
            index = torch.tensor(idx, dtype=torch.long, device=value.device)
            fresh = index < 0
            # the map is kept with its tensors, so that its id stays its own while cached
            got = made[key] = (idx, index.clamp(min=0), fresh if bool(fresh.any()) else None)
        _, gather, fresh = got
        out = out.index_select(axis, gather)
        if fresh is not None:
            shape = [1] * out.dim()
            shape[axis] = len(idx)
            zero = torch.zeros((), dtype=out.dtype, device=out.device)
            out = torch.where(fresh.view(shape), zero, out)
    for axis, factors in sorted(origin.scale.items()):
        key = (id(factors), out.dtype, value.device, second_moment)
        got = made.get(key)
        if got is None:
            f = torch.tensor(factors, dtype=out.dtype, device=value.device)
            got = made[key] = (factors, f * f if second_moment else f)
        f = got[1]
        shape = [1] * out.dim()
        shape[axis] = len(factors)
        out = out * f.view(shape)
    if origin.fresh is not None:
        zero = torch.zeros((), dtype=out.dtype, device=out.device)
        out = torch.where(origin.fresh.to(out.device), zero, out)
    return out.contiguous() if out is not value else out.clone()
