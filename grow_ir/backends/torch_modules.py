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


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """``[-x2, x1]`` for the halves ``x1, x2`` of the last axis (Llama's rotary layout)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def rotary_tables(
    length: int, head_dim: int, theta: float, device: torch.device, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """``cos`` and ``sin`` ``[L, head_dim]`` at positions ``0..L-1``, computed in float32
    as Hugging Face's ``LlamaRotaryEmbedding`` computes them, then cast to ``dtype``."""
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64, device=device).float() / head_dim
    inv_freq = 1.0 / (theta**exponents)
    positions = torch.arange(length, device=device, dtype=torch.float32)
    freqs = positions[:, None] * inv_freq[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def rotate(t: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """``t·cos + rotate_half(t)·sin`` over the first ``cos.shape[-1]`` entries of the last
    axis of ``t``, the rest passed unchanged (partial rotary, as GPT-NeoX computes it)."""
    r = cos.shape[-1]
    if r == t.shape[-1]:
        return t * cos + rotate_half(t) * sin
    head, rest = t[..., :r], t[..., r:]
    return torch.cat((head * cos + rotate_half(head) * sin, rest), dim=-1)


def key_padding_bias(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """0 where ``mask`` is nonzero (attend), the lowest finite value of ``dtype`` where it
    is 0, to add to the scores. The lowest finite value rather than -inf, as Hugging Face
    does: a key that is kept gets weight exactly 0 either way (``exp(lowest - max)`` is 0),
    and a query whose keys are all padded gets an average instead of NaN."""
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(
        mask == 0, torch.finfo(dtype).min
    )


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

    Beyond it: ``num_kv_heads`` key/value heads (grouped-query attention, the in-projection
    rows ``[q; k; v]`` with k and v ``num_kv_heads × head_dim`` each, SDPA's
    ``enable_gqa``), rotary embedding of q and k when ``rope_theta`` is set
    (:func:`rotary_tables`, of the first ``rotary_dim`` entries of each head), per-head
    RMS norms of q and k when ``qk_norm_eps`` is set (``q_norm`` and ``k_norm``,
    ``nn.RMSNorm(head_dim)`` each, before the rotary embedding, as Qwen3's attention),
    and a key padding mask ``[N, L]`` as a second argument (nonzero = attend).
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
        num_kv_heads: int | None = None,
        rope_theta: float | None = None,
        rotary_dim: int | None = None,
        qk_norm_eps: float | None = None,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if head_dim is None and embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        factory = {"device": device, "dtype": dtype}
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
        self.head_dim = embed_dim // num_heads if head_dim is None else head_dim
        self.rope_theta = rope_theta
        self.rotary_dim = self.head_dim if rotary_dim is None else rotary_dim
        inner = num_heads * self.head_dim
        rows = inner + 2 * self.num_kv_heads * self.head_dim
        self.dropout = dropout
        self.causal = causal
        self.out_proj = nn.Linear(inner, embed_dim, bias=bias, **factory)
        self.in_proj_weight = nn.Parameter(torch.empty(rows, embed_dim, **factory))
        if bias:
            self.in_proj_bias = nn.Parameter(torch.empty(rows, **factory))
        else:
            self.register_parameter("in_proj_bias", None)
        self.q_norm: nn.RMSNorm | None = None
        self.k_norm: nn.RMSNorm | None = None
        if qk_norm_eps is not None:
            self.q_norm = nn.RMSNorm(self.head_dim, eps=qk_norm_eps, **factory)
            self.k_norm = nn.RMSNorm(self.head_dim, eps=qk_norm_eps, **factory)
        self._reset_in_proj()

    def _reset_in_proj(self) -> None:
        # nn.MultiheadAttention._reset_parameters: xavier in-projection, zero biases.
        nn.init.xavier_uniform_(self.in_proj_weight)
        if self.in_proj_bias is not None:
            nn.init.zeros_(self.in_proj_bias)
            nn.init.zeros_(self.out_proj.bias)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Attend over ``x`` of shape ``[N, L, E]`` (keys where ``mask`` ``[N, L]`` is 0
        left out); returns ``[N, L, E]``."""
        n, length = x.shape[:2]
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)
        if self.num_kv_heads == self.num_heads:
            # [N, L, 3E] -> three [N, heads, L, head_dim] views
            q, k, v = qkv.view(n, length, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        else:
            kv = self.num_kv_heads * self.head_dim
            q, k, v = qkv.split([self.num_heads * self.head_dim, kv, kv], dim=-1)
            q, k, v = (t.unflatten(-1, (-1, self.head_dim)).transpose(1, 2) for t in (q, k, v))
        if self.q_norm is not None and self.k_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if self.rope_theta is not None:
            cos, sin = rotary_tables(length, self.rotary_dim, self.rope_theta, x.device, q.dtype)
            q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        attn_mask = None
        causal = self.causal
        if mask is not None:
            attn_mask = key_padding_bias(mask, q.dtype)[:, None, None, :]
            if causal:  # SDPA takes a mask or is_causal, not both
                above = torch.ones(length, length, dtype=torch.bool, device=x.device).triu(1)
                attn_mask = attn_mask.masked_fill(above, float("-inf"))
                causal = False
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=attn_mask,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=causal,
            enable_gqa=self.num_kv_heads != self.num_heads,
        )
        y = y.transpose(1, 2).reshape(n, length, self.num_heads * self.head_dim)
        return F.linear(y, self.out_proj.weight, self.out_proj.bias)

    def extra_repr(self) -> str:
        extra = f", num_kv_heads={self.num_kv_heads}" if self.num_kv_heads != self.num_heads else ""
        extra += f", rope_theta={self.rope_theta}" if self.rope_theta is not None else ""
        extra += f", rotary_dim={self.rotary_dim}" if self.rotary_dim != self.head_dim else ""
        return (
            f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, head_dim={self.head_dim}, "
            f"dropout={self.dropout}, causal={self.causal}{extra}"
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


def positions(
    x: torch.Tensor, dim: int, batch_axis: bool, padding_idx: int | None = None
) -> torch.Tensor:
    """``torch.arange(x.shape[dim])`` (int64, on ``x``'s device), as ``[1, L]`` with
    ``batch_axis``; with ``padding_idx``, counted along ``dim`` over the tokens of ``x``
    that are not ``padding_idx``, from ``padding_idx + 1`` (``padding_idx`` at padding)."""
    if padding_idx is not None:
        kept = (x != padding_idx).long()
        return torch.cumsum(kept, dim) * kept + padding_idx
    out = torch.arange(x.shape[dim], device=x.device)
    return out.unsqueeze(0) if batch_axis else out


class ScaledEmbedding(nn.Embedding):
    """``nn.Embedding`` whose vectors are multiplied by ``scale`` (Gemma's scaled word
    embedding); its ``state_dict`` is the embedding's (``weight``)."""

    scale: float = 1.0

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        """The embedding of ``input``, times ``scale``."""
        return super().forward(input) * self.scale

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, scale={self.scale}"


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
