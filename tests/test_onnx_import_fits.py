"""The check every imported region passes (``first_fits``, shared by ``from_torch`` and
``from_onnx``): candidates lowered together in one graph are judged as each alone would
be, on every run, dims that differ between runs included; a candidate its op refuses
does not hide the others."""

from __future__ import annotations

import torch

from grow_ir.imports.torch_patterns import first_fit, first_fits, fits

GEN = torch.Generator().manual_seed(0)
RUNS = [torch.randn(2, 5, 8, generator=GEN), torch.randn(3, 6, 8, generator=GEN)]
"""Two draws of one input whose first two dims differ, as two evaluation runs' do."""


def runs_of(fn) -> list:
    return [([x], fn(x)) for x in RUNS]


def test_the_first_candidate_that_fits_on_every_run_is_chosen() -> None:
    gelu_tanh = runs_of(lambda x: torch.nn.functional.gelu(x, approximate="tanh"))
    candidates = [("relu", {}, {}), ("gelu", {}, {}), ("gelu", {"approximate": "tanh"}, {})]
    assert first_fit(candidates, gelu_tanh) == (2, None)
    k, why = first_fit(candidates[:2], gelu_tanh)
    assert k is None and why.startswith("relative error")


def test_a_candidate_that_fits_one_run_only_is_refused() -> None:
    # relu on run 0, identity on run 1: no IR node computes both
    mixed = [([RUNS[0]], RUNS[0].relu()), ([RUNS[1]], RUNS[1])]
    assert first_fit([("relu", {}, {}), ("identity", {}, {})], mixed)[0] is None


def test_groups_are_judged_apart_and_a_refused_candidate_hides_nothing() -> None:
    weight = torch.randn(8, generator=GEN)
    rms = runs_of(lambda x: torch.nn.functional.rms_norm(x, (8,), weight, 1e-6))
    wrong_width = ("rmsnorm", {"eps": 1e-6}, {"weight": torch.ones(3)})  # the op refuses it
    right = ("rmsnorm", {"eps": 1e-6}, {"weight": weight})
    silu = runs_of(torch.nn.functional.silu)
    found = first_fits([([wrong_width, right], rms), ([("tanh", {}, {}), ("silu", {}, {})], silu)])
    assert found == [(1, None), (1, None)]
    assert "Error" in fits(*wrong_width, rms)
