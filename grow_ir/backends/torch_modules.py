"""Small nn.Modules for IR ops that torch.nn has no fast, compile-friendly module for."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

_BELOW_ZERO: dict[torch.dtype, float] = {
    dt: torch.nextafter(torch.zeros((), dtype=dt), torch.full((), -1.0, dtype=dt)).item()
    for dt in (torch.float16, torch.bfloat16, torch.float32, torch.float64)
}
"""The largest value below zero in each floating dtype."""


def relu_unit_slope(x: torch.Tensor) -> torch.Tensor:
    """``torch.relu(x)`` whose derivative at exactly 0 is 1 instead of PyTorch's 0.

    The output is bitwise ``torch.relu``'s (NaN included): ``torch.threshold`` keeps ``x``
    where ``x > t``, ``t`` the largest value below zero in ``x``'s dtype, which is exactly
    where ``x >= 0``, and passes the gradient there, so a unit whose input is exactly 0 (a
    unit grown with zero fan-in) still learns. Same kernels as ``torch.relu``; the backward
    keeps the input rather than the output.
    """
    return torch.threshold(x, _BELOW_ZERO.get(x.dtype, 0.0), 0.0)


class SelfAttention(nn.Module):
    """Batch-first multi-head self-attention with an optional causal mask.

    It computes what ``nn.MultiheadAttention(embed_dim, num_heads, dropout, bias,
    batch_first=True)(x, x, x, need_weights=False)`` computes (with a causal mask when
    ``causal``), has exactly its parameters and ``state_dict`` keys (``in_proj_weight``,
    ``in_proj_bias``, ``out_proj.weight``, ``out_proj.bias``) and initialises them the same
    way; ``head_dim`` (default ``embed_dim / num_heads``) lets the heads be wider or
    narrower than the embedding. Unlike it, the forward is a few tensor calls around
    ``F.scaled_dot_product_attention``: no per-call argument checks, no fast-path dispatch,
    no mask tensor (the causal mask is SDPA's ``is_causal``, made on the input's device),
    so it costs no overhead and compiles without graph breaks.
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        *,
        bias: bool = True,
        dropout: float = 0.0,
        causal: bool = False,
        head_dim: int | None = None,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if head_dim is None and embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        factory = {"device": device, "dtype": dtype}
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads if head_dim is None else head_dim
        inner = num_heads * self.head_dim
        self.dropout = dropout
        self.causal = causal
        self.out_proj = nn.Linear(inner, embed_dim, bias=bias, **factory)
        self.in_proj_weight = nn.Parameter(torch.empty(3 * inner, embed_dim, **factory))
        if bias:
            self.in_proj_bias = nn.Parameter(torch.empty(3 * inner, **factory))
        else:
            self.register_parameter("in_proj_bias", None)
        self._reset_in_proj()

    def _reset_in_proj(self) -> None:
        # nn.MultiheadAttention._reset_parameters: xavier in-projection, zero biases.
        nn.init.xavier_uniform_(self.in_proj_weight)
        if self.in_proj_bias is not None:
            nn.init.zeros_(self.in_proj_bias)
            nn.init.zeros_(self.out_proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Attend over ``x`` of shape ``[N, L, E]``; returns ``[N, L, E]``."""
        n, length = x.shape[:2]
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)
        # [N, L, 3E] -> three [N, heads, L, head_dim] views
        q, k, v = qkv.view(n, length, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=self.causal,
        )
        y = y.transpose(1, 2).reshape(n, length, self.num_heads * self.head_dim)
        return F.linear(y, self.out_proj.weight, self.out_proj.bias)

    def extra_repr(self) -> str:
        return (
            f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, head_dim={self.head_dim}, "
            f"dropout={self.dropout}, causal={self.causal}"
        )


class Mix(nn.Module):
    """``Σ_i softmax(alpha)_i · x_i`` over its ``num_choices`` inputs.

    ``alpha`` (shape ``[num_choices]``, initialised to zeros: equal weights) is the only
    parameter, so ``state_dict()`` holds exactly ``alpha``.
    """

    def __init__(
        self,
        num_choices: int,
        *,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.zeros(num_choices, device=device, dtype=dtype))

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        """The weighted sum of the candidates ``xs`` (all of one shape)."""
        weights = torch.softmax(self.alpha, dim=0)
        out = weights[0] * xs[0]
        for i in range(1, len(xs)):
            out = out + weights[i] * xs[i]
        return out

    def extra_repr(self) -> str:
        return f"num_choices={self.alpha.shape[0]}"


def positions(x: torch.Tensor, dim: int, batch_axis: bool) -> torch.Tensor:
    """``torch.arange(x.shape[dim])`` (int64, on ``x``'s device), as ``[1, L]`` with
    ``batch_axis``."""
    out = torch.arange(x.shape[dim], device=x.device)
    return out.unsqueeze(0) if batch_axis else out


class LearnedTensor(nn.Module):
    """A learned tensor as a value (``weight``, of ``shape``): returned as it is, or with
    its first axis (of size 1) expanded to the batch of its one input."""

    def __init__(
        self,
        shape: tuple[int, ...],
        *,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(shape, device=device, dtype=dtype))

    def forward(self, *batch: torch.Tensor) -> torch.Tensor:
        """``weight``, or ``weight.expand(N, ...)`` for ``N = batch[0].shape[0]``."""
        if batch:
            # A copy, not the expanded view: a view of a parameter made under no_grad has
            # requires_grad without a grad_fn, which breaks hooks on module outputs
            # (FlopCounterMode's). What reads it (a concat) copies it anyway.
            return self.weight.expand(batch[0].shape[0], *self.weight.shape[1:]).contiguous()
        return self.weight

    def extra_repr(self) -> str:
        return f"shape={tuple(self.weight.shape)}"


class _WeightMask:
    """Adds the ``weight_mask`` buffer (all ones at first) to an ``nn.Linear``/``nn.ConvNd``
    it is mixed into. The buffer is in ``state_dict`` and not trained: masked connections
    get no gradient, and their weights are ignored whatever an optimizer does to them."""

    weight: torch.Tensor
    weight_mask: torch.Tensor

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[call-arg]
        self.register_buffer("weight_mask", torch.ones_like(self.weight))  # type: ignore[attr-defined]


class MaskedLinear(_WeightMask, nn.Linear):
    """``nn.Linear`` computing with ``weight * weight_mask`` (connection pruning)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.weight_mask, self.bias)


class _MaskedConv(_WeightMask):
    """A convolution computing with ``weight * weight_mask``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.weight * self.weight_mask, self.bias)  # type: ignore[attr-defined]


class MaskedConv1d(_MaskedConv, nn.Conv1d):
    """``nn.Conv1d`` computing with ``weight * weight_mask`` (see :class:`MaskedLinear`)."""


class MaskedConv2d(_MaskedConv, nn.Conv2d):
    """``nn.Conv2d`` computing with ``weight * weight_mask`` (see :class:`MaskedLinear`)."""


class StochasticDepth(nn.Module):
    """torchvision's ``StochasticDepth(p, mode)``, computed as torchvision computes it: in
    training, the input times a Bernoulli(1 - p) draw per sample (``row``) or per batch
    (``batch``), divided by 1 - p; the identity in eval mode or with ``p`` 0."""

    def __init__(self, p: float, mode: str) -> None:
        super().__init__()
        self.p, self.mode = p, mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Drop the branch (or its rows) at random in training; ``x`` unchanged in eval."""
        if not self.training or self.p == 0.0:
            return x
        survival = 1.0 - self.p
        size = [x.shape[0]] + [1] * (x.ndim - 1) if self.mode == "row" else [1] * x.ndim
        noise = torch.empty(size, dtype=x.dtype, device=x.device).bernoulli_(survival)
        if survival > 0.0:
            noise.div_(survival)
        return x * noise

    def extra_repr(self) -> str:
        return f"p={self.p}, mode={self.mode}"
