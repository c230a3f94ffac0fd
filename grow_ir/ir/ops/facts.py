"""What passes, initialisers and policies may rely on about an op: its ``OpFacts``.

Every op declares every fact (there is no default, so a new op cannot leave one out by
accident: ``OpFacts`` has no field default and ``OpDef`` requires it), and code outside the
op definitions reads them here instead of keeping lists of op names. A fact that does not
hold may carry the reason (:class:`No`), which refusals show to the user. The facts are
checked numerically against the lowered op by ``tests/test_op_facts.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from grow_ir.ir.ops.macs import MacsFn
from grow_ir.ir.types import TensorType


@dataclass(frozen=True)
class No:
    """A fact that does not hold, with the reason (falsy: ``if facts.x:`` reads as usual)."""

    why: str

    def __bool__(self) -> bool:
        return False


Fact = bool | No
"""``True``, ``False``, or ``No(reason)`` (false, with a reason to show). A fact that is
true is a claim the tests check; a false one only means "not claimed", so passes that act
on facts stay sound."""


def why_not(fact: Fact, default: str) -> str:
    """The reason a fact does not hold: its own, else ``default``."""
    return fact.why if isinstance(fact, No) else default


SquareFn = Callable[[TensorType, int], dict[str, Any]]
"""``(input type, kernel size) -> attributes`` of an instance whose output has its input's
type (the kernel size is read only by ops with a ``kernel_size`` attribute)."""

IdentityFn = Callable[[Any, Sequence[TensorType], dict[str, torch.Tensor]], dict[str, torch.Tensor]]
"""``(attrs, input types, default params) -> params`` making the layer the identity in eval
mode; raises ``ShapeError`` (via ``fail``) when these attributes have no identity."""


@dataclass(frozen=True, kw_only=True)
class OpFacts:
    """Every fact about an op that a pass, initialiser, policy or report reads.

    Attributes:
        width_attr: the attribute holding the output width ``widen`` grows (linear
            ``out_features``, conv ``out_channels``, embedding ``embedding_dim``); None for
            an op that makes no channels of its own.
        zero_to_zero: f(0) = 0: inputs that are 0 everywhere give an output that is 0
            everywhere, whatever the op's parameters.
        fresh_zero_to_zero: a channel that is 0 everywhere stays 0 through the op when that
            channel's parameters are the op's default with a zero bias (what ``widen``'s
            zero fan-in gives new channels; GradMax's new units rely on it). For
            parameter-free ops it is ``zero_to_zero``.
        gradient_at_zero: the gradient reaching a channel that is 0 everywhere (in every
            input) can be nonzero (GradMax's trap when it cannot).
        gradient_fix: attribute values that make ``gradient_at_zero`` hold with the same
            output (relu's ``grad_at_zero: 1``); None when there are none.
        nonnegative: the output is >= 0 whatever the input.
        sign_keeping: the output is >= 0 wherever every input is.
        identity_on_nonnegative: the op is the identity on inputs >= 0 (relu).
        normalises: ``channel_axis`` names the axis the op normalises over (softmax,
            log_softmax, layernorm): every output depends on every entry along it, so its
            channels cannot be widened by replication (a channel rule).
        eval_identity: the op is the identity in eval mode (identity, dropout).
        sums: the output is the elementwise sum of the inputs (a residual join).
        activation: an elementwise activation ``insert_layer`` may put after a new layer.
        square: how to build an instance whose output type is its input's (a layer that
            ``insert_layer`` can insert); None when there is none.
        identity: how to make such an instance the identity (eye, Dirac, batchnorm with
            gamma = sqrt(var + eps)); ``No(reason)`` when the op has no identity.
        zeroable: the parameters (local names) whose zeroing makes the output 0 everywhere
            whatever the input (the last layer of a zero-initialised residual branch:
            ``weight`` and ``bias`` of a linear, ``out_proj.*`` of attention); those the
            node does not have (no bias) are skipped; ``()`` when there are none.
        head: a fresh instance with another ``width_attr`` can replace it as a task's
            output layer (``fork_task(head=K)``).
        adapters: the adapter kinds (``add_adapter``) that fit it, in order of preference.
        randomised: its default parameters are an identity transform (norm statistics and
            affine terms), so numerical checks randomise them (``probes.randomize_norms``).
        index_bound: the attribute bounding the int64 values it reads (embedding's
            ``num_embeddings``); None for an op that reads no indices.
        macs: its multiply-accumulates per call (:mod:`grow_ir.ir.ops.macs`).
    """

    width_attr: str | None
    zero_to_zero: Fact
    fresh_zero_to_zero: Fact
    gradient_at_zero: Fact
    gradient_fix: Mapping[str, Any] | None
    nonnegative: bool
    sign_keeping: bool
    identity_on_nonnegative: bool
    normalises: bool
    eval_identity: bool
    sums: bool
    activation: bool
    square: SquareFn | None
    identity: IdentityFn | No
    zeroable: tuple[str, ...]
    head: bool
    adapters: tuple[str, ...]
    randomised: bool
    index_bound: str | None
    macs: MacsFn


def parameter_free(
    name: str,
    *,
    zero_to_zero: Fact,
    gradient_at_zero: Fact,
    nonnegative: bool,
    sign_keeping: bool,
    normalises: bool,
    eval_identity: bool,
    activation: bool,
    gradient_fix: Mapping[str, Any] | None,
    identity_on_nonnegative: bool,
    sums: bool,
    macs: MacsFn,
) -> OpFacts:
    """The facts of an op without parameters: it makes no channels, is no layer a pass can
    insert, zero or adapt, and ``fresh_zero_to_zero`` is ``zero_to_zero``. Every fact about
    its values is the caller's to state (none has a default)."""
    return OpFacts(
        width_attr=None,
        zero_to_zero=zero_to_zero,
        fresh_zero_to_zero=zero_to_zero,
        gradient_at_zero=gradient_at_zero,
        gradient_fix=gradient_fix,
        nonnegative=nonnegative,
        sign_keeping=sign_keeping,
        identity_on_nonnegative=identity_on_nonnegative,
        normalises=normalises,
        eval_identity=eval_identity,
        sums=sums,
        activation=activation,
        square=None,
        identity=No(f"{name} has no parameters"),
        zeroable=(),
        head=False,
        adapters=(),
        randomised=False,
        index_bound=None,
        macs=macs,
    )
