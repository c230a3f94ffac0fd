"""``nn.MultiheadAttention`` imported by ``from_torch``'s whole-module rule
(grow_ir/imports/torch_modules.py): the configurations it imports compute what the module
computes (on another batch than the example), and each one it cannot import is refused
in one line naming the module and the attribute or argument it lacks."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

import grow_ir as gi
from grow_ir.imports.builder import ImportRefused
from tests.import_models import relative_error

TOL = 1e-5
Call = Callable[["Model", torch.Tensor], torch.Tensor]


class Model(nn.Module):
    """One ``nn.MultiheadAttention(8, 2, **options)`` called as ``call`` says, its
    parameters random (so a bias, a projection or a scale the import got wrong shows),
    and a causal bool mask kept as a buffer, for the calls that pass one."""

    def __init__(self, call: Call, **options: object) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(8, 2, **options)
        self.call = call
        self.register_buffer("mask", torch.triu(torch.ones(5, 5, dtype=torch.bool), 1))
        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for p in self.attn.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.call(self, x)


def _x(seed: int, n: int = 2) -> torch.Tensor:
    return torch.randn(n, 5, 8, generator=torch.Generator().manual_seed(seed))


def _plain(m: Model, x: torch.Tensor) -> torch.Tensor:
    return m.attn(x, x, x, need_weights=False)[0]


IMPORTED: dict[str, tuple[Call, dict]] = {
    "need_weights=False": (_plain, {"batch_first": True}),
    "need_weights=True, weights unused": (lambda m, x: m.attn(x, x, x)[0], {"batch_first": True}),
    "bias=False": (_plain, {"batch_first": True, "bias": False}),
    "dropout (eval)": (_plain, {"batch_first": True, "dropout": 0.3}),
}


@pytest.mark.parametrize("name", list(IMPORTED))
def test_what_the_rule_imports_computes_what_the_module_computes(name: str) -> None:
    call, options = IMPORTED[name]
    model = Model(call, **options)
    graph = gi.from_torch(model, _x(0))
    assert [n.op for n in graph.nodes] == ["attention"]
    assert graph.node("attn").attrs.causal is False
    other = _x(1, n=3)
    with torch.no_grad():
        assert relative_error(gi.to_torch(graph).eval()(other), model(other)) <= TOL


REFUSED: dict[str, tuple[Call, dict, str]] = {
    "batch_first=False": (_plain, {}, "has batch_first=False"),
    "kdim, vdim": (
        lambda m, x: m.attn(x, x[..., :4], x[..., :6], need_weights=False)[0],
        {"batch_first": True, "kdim": 4, "vdim": 6},
        "has kdim=4, vdim=6 other than embed_dim=8",
    ),
    "add_bias_kv": (_plain, {"batch_first": True, "add_bias_kv": True}, "has bias_k and bias_v"),
    "add_zero_attn": (_plain, {"batch_first": True, "add_zero_attn": True}, "add_zero_attn=True"),
    "weights used": (
        lambda m, x: m.attn(x, x, x)[0] + m.attn(x, x, x)[1].sum(-1, keepdim=True),
        {"batch_first": True},
        "returns its attention weights to the model (need_weights)",
    ),
    "attn_mask buffer": (
        lambda m, x: m.attn(x, x, x, attn_mask=m.mask, need_weights=False)[0],
        {"batch_first": True},
        "reads 2 values (buffer 'mask', x)",
    ),
    # torch computes causal attention here and never reads the mask's values; the call
    # still reads the buffer, and its first ops (on the mask) are dead code
    "attn_mask with is_causal": (
        lambda m, x: m.attn(x, x, x, attn_mask=m.mask, is_causal=True, need_weights=False)[0],
        {"batch_first": True},
        "reads 2 values (buffer 'mask', x)",
    ),
}


@pytest.mark.parametrize("name", list(REFUSED))
def test_what_the_rule_cannot_import_is_refused_naming_the_attribute(name: str) -> None:
    call, options, reason = REFUSED[name]
    with pytest.raises(ImportRefused) as info:
        gi.from_torch(Model(call, **options), _x(0))
    lines = [line for line in info.value.constructs if line.startswith("attn (MultiheadAttention)")]
    assert len(lines) == 1 and reason in lines[0], info.value.constructs


class PaddedAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)

    def forward(self, x: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        return self.attn(x, x, x, key_padding_mask=pad, need_weights=False)[0]


def test_a_key_padding_mask_argument_is_refused_naming_it() -> None:
    with pytest.raises(ImportRefused) as info:
        gi.from_torch(PaddedAttention().eval(), (_x(0), torch.zeros(2, 5)))
    assert any(
        line.startswith("attn (MultiheadAttention): reads 2 values (x, pad)")
        and "without attn_mask or key_padding_mask" in line
        for line in info.value.constructs
    ), info.value.constructs
