"""Position ids counted from token ids past padding (RoBERTa's), recognised by value.

Both importers find them the same way: a value that reads one integer input of its own
shape and equals, on every evaluation run, what the ``positions`` op with some
``padding_idx`` counts from that input. The redrawn run's ids are drawn below the
example's largest id, so they usually hold the padding token even where the example has
none, and the count is checked on padded ids too.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from grow_ir.backends.torch_modules import positions


def padding_of(ids: Sequence[torch.Tensor], values: Sequence[object]) -> int | None:
    """The ``padding_idx`` ``p`` for which every ``values[r]`` equals the positions of
    ``ids[r]`` counted along their last axis past tokens ``p``, from ``p + 1``
    (``padding_idx`` at padding); None when there is none."""
    for t, v in zip(ids, values, strict=True):
        if not isinstance(v, torch.Tensor) or v.dtype != torch.int64 or v.shape != t.shape:
            return None
        if t.is_floating_point() or t.dim() < 1 or t.numel() == 0:
            return None
    low = int(values[0].min())  # type: ignore[union-attr]
    for p in (low, low - 1):  # the padding's own, or the first position past none
        if p >= 0 and all(torch.equal(positions(t, -1, False, p), v) for t, v in zip(ids, values)):
            return p
    return None
