"""Training under ``torch.compile``: one compilation per architecture, none in between.

The trainer keeps training the lowered module; :class:`Compiler` hands it the compiled
wrapper of the module in use and makes a new one only when the module changes (a growth
step). Between growth steps nothing makes dynamo compile again:

- only the training forward runs compiled; validation, AdamInit and probes run the same
  module (the same parameters) eagerly, so the train/eval switch never recompiles;
- the batch axis of every training batch is marked dynamic, so the last, smaller batch of
  an epoch runs the same compiled code (the trainer never trains on a batch of one,
  which dynamo would specialise).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from grow_ir.errors import GrowError

BACKENDS = ("inductor", "aot_eager", "eager")
"""The ``torch.compile`` backends a run may name: inductor (generated kernels, the
default), aot_eager and eager (dynamo's capture only: cheap, for checking)."""


def check_backend(name: str) -> str:
    """``name`` if it is one of :data:`BACKENDS`.

    Raises:
        GrowError: any other name.
    """
    if name not in BACKENDS:
        raise GrowError(
            "unknown compile backend",
            field="--compile",
            expected=f"one of {', '.join(BACKENDS)}",
            found=repr(name),
        )
    return name


@dataclass
class Compiler:
    """The compiled wrapper of the module being trained, remade when the module changes."""

    backend: str = "inductor"
    compilations: int = 0
    """How many wrappers were made (one per architecture the run trained)."""
    _source: nn.Module | None = field(default=None, repr=False)
    _compiled: nn.Module | None = field(default=None, repr=False)

    def wrap(self, module: nn.Module) -> nn.Module:
        """The compiled form of ``module`` (the same wrapper while ``module`` is the same)."""
        if module is not self._source or self._compiled is None:
            self._source = module
            self._compiled = torch.compile(module, backend=self.backend)
            self.compilations += 1
        return self._compiled

    @staticmethod
    def batch(x: torch.Tensor) -> torch.Tensor:
        """``x`` with its batch axis marked dynamic (one compiled graph for every size)."""
        if x.dim() > 0 and x.shape[0] > 1:
            torch._dynamo.mark_dynamic(x, 0)
        return x
