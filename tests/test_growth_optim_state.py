"""Optimizer state follows growth: exact for untouched parameters, gathered (and rescaled)
along the pass's provenance for changed ones, zero for new ones."""

from __future__ import annotations

import pytest
import torch

from grow_ir.backends.torch import to_torch, update_params
from grow_ir.errors import GrowError
from grow_ir.growth.config import OptimizerConfig
from grow_ir.growth.optim_state import gather_state, make_optimizer, transfer_optimizer
from grow_ir.passes import Origin, insert_block, widen
from grow_ir.spec import load_spec
from tests.channel_graphs import grouped
from tests.tiny_specs import RES_BLOCK

SPEC = {
    "version": 1,
    "name": "res_mlp",
    "seed": 0,
    "inputs": {"x": {"shape": ["batch", 4]}},
    "blocks": {"res": RES_BLOCK},
    "nodes": [
        {"name": "stem", "op": "linear", "inputs": ["x"], "out_features": 6},
        {"name": "stem_act", "op": "relu"},
        {"name": "hidden", "op": "linear", "out_features": 5},
        {"name": "hidden_act", "op": "relu"},
        {"name": "proj", "op": "linear", "out_features": 6},
        {"name": "proj_act", "op": "relu"},
        {"name": "stage1", "stage": "res", "depth": 1, "with": {"width": 6}},
        {"name": "head", "op": "linear", "out_features": 3},
    ],
    "outputs": {"y": "head"},
}


def trained(name: str, steps: int = 3):
    """A graph, its module and an optimizer with non-trivial state after a few steps."""
    graph = load_spec(SPEC)
    module = to_torch(graph).train()
    opt = make_optimizer(OptimizerConfig(name=name, lr=0.05), module)
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        x = torch.randn(8, 4, generator=gen)
        y = torch.randint(0, 3, (8,), generator=gen)
        loss = torch.nn.functional.cross_entropy(module(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return update_params(graph, module), module, opt


def state_of(opt: torch.optim.Optimizer, module: torch.nn.Module) -> dict[str, dict]:
    """The optimizer's state by parameter name."""
    return {k: opt.state.get(p, {}) for k, p in module.named_parameters()}


@pytest.mark.parametrize("name", ["sgd", "adam"])
def test_unchanged_params_keep_state_exactly_and_new_block_starts_at_zero(name: str) -> None:
    graph, module, opt = trained(name)
    result = insert_block.run(graph, stage="stage1", init="zero", seed=1)
    new_module = to_torch(result.graph).train()
    new_opt = transfer_optimizer(opt, module, new_module, result.origins)
    old, new = state_of(opt, module), state_of(new_opt, new_module)
    for key, state in old.items():
        assert key in new
        assert set(new[key]) == set(state)
        for k, v in state.items():
            assert torch.equal(new[key][k], v), (key, k)
    added = set(new) - set(old)
    assert added and all(k.startswith("stage1.block1.") for k in added)
    assert all(new[k] == {} for k in added)  # no state: zero moments at step 0
    assert type(new_opt) is type(opt)
    assert new_opt.param_groups[0]["lr"] == opt.param_groups[0]["lr"]
    assert [id(p) for p in new_opt.param_groups[0]["params"]] == [
        id(p) for p in new_module.parameters()
    ]


@pytest.mark.parametrize("name", ["sgd", "adam"])
def test_widened_params_gather_state_along_the_recorded_index(name: str) -> None:
    graph, module, opt = trained(name)
    result = widen.run(graph, node="hidden", width=8, init="net2net", seed=3)
    new_module = to_torch(result.graph).train()
    new_opt = transfer_optimizer(opt, module, new_module, result.origins)
    old, new = state_of(opt, module), state_of(new_opt, new_module)
    rows = result.origins["hidden.weight"].index[0]
    cols = result.origins["proj.weight"].index[1]
    scale = torch.tensor(result.origins["proj.weight"].scale[1])
    assert len(rows) == 8 and sorted(set(rows)) == list(range(5))
    assert scale.min() < 1  # split units' fan-out is divided
    first = "momentum_buffer" if name == "sgd" else "exp_avg"
    for j, i in enumerate(rows):  # fan-in rows: copied exactly
        assert torch.equal(new["hidden.weight"][first][j], old["hidden.weight"][first][i])
        assert torch.equal(new["hidden.bias"][first][j], old["hidden.bias"][first][i])
    for j, i in enumerate(cols):  # fan-out columns: copied, times the split factor
        got = new["proj.weight"][first][:, j]
        assert torch.equal(got, old["proj.weight"][first][:, i] * scale[j])
        if name == "adam":
            got_sq = new["proj.weight"]["exp_avg_sq"][:, j]
            want_sq = old["proj.weight"]["exp_avg_sq"][:, i] * (scale[j] * scale[j])
            assert torch.equal(got_sq, want_sq)
    if name == "adam":
        assert torch.equal(new["proj.weight"]["step"], old["proj.weight"]["step"])
    for key in ("stem.weight", "head.weight", "stage1.block0.fc1.weight"):
        for k, v in old[key].items():
            assert torch.equal(new[key][k], v)


def test_a_grouped_convs_columns_gather_state_alike_in_every_block_of_rows() -> None:
    # c1's channels are read by grouped convs (groups 3 and 2): their weight holds one
    # group's channels per block of rows, and the state follows the same folded index
    graph = grouped()
    module = to_torch(graph).train()
    opt = make_optimizer(OptimizerConfig(name="adam", lr=0.05), module)
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        out = module(torch.randn(4, 2, 5, 5, generator=gen))
        loss = (out - torch.randn(out.shape, generator=gen)).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    graph = update_params(graph, module)
    result = widen.run(graph, node="c1", width=18, init="net2net", seed=2)
    new_module = to_torch(result.graph).train()
    new_opt = transfer_optimizer(opt, module, new_module, result.origins)
    old, new = state_of(opt, module), state_of(new_opt, new_module)
    for reader, fold in (("g3", 3), ("g2", 2)):
        cols = result.origins[f"{reader}.weight"].index[1]
        scale = result.origins[f"{reader}.weight"].scale[1]
        assert len(cols) == 18 // fold and min(scale) < 1
        for key in ("exp_avg", "exp_avg_sq"):
            got, was = new[f"{reader}.weight"][key], old[f"{reader}.weight"][key]
            power = 2 if key == "exp_avg_sq" else 1
            for j, i in enumerate(cols):
                assert torch.equal(got[:, j], was[:, i] * scale[j] ** power), (reader, key, j)


def test_new_entries_of_a_zero_widening_have_zero_state() -> None:
    graph, module, opt = trained("adam")
    result = widen.run(graph, node="hidden", width=7, init="zero", seed=0)
    new_module = to_torch(result.graph).train()
    new_opt = transfer_optimizer(opt, module, new_module, result.origins)
    new = state_of(new_opt, new_module)
    rows = result.origins["hidden.weight"].index[0]
    fresh = [j for j, i in enumerate(rows) if i < 0]
    assert fresh == [5, 6]
    for key in ("exp_avg", "exp_avg_sq"):
        assert torch.count_nonzero(new["hidden.weight"][key][fresh]) == 0
        assert torch.count_nonzero(new["proj.weight"][key][:, fresh]) == 0
        assert torch.count_nonzero(new["hidden.weight"][key][:5]) > 0


def test_training_continues_after_transfer() -> None:
    graph, module, opt = trained("sgd")
    result = widen.run(graph, node="hidden", width=8, init="net2net", seed=3)
    new_module = to_torch(result.graph).train()
    new_opt = transfer_optimizer(opt, module, new_module, result.origins)
    loss = new_module(torch.randn(4, 4)).square().sum()
    loss.backward()
    new_opt.step()  # the carried buffers have the new shapes
    assert all(torch.isfinite(p).all() for p in new_module.parameters())


def test_gather_state_zeroes_new_entries_and_scales_second_moments_by_the_square() -> None:
    value = torch.arange(6.0).reshape(2, 3)
    origin = Origin("w", index={1: (2, -1, 0, 2)}, scale={1: (0.5, 1.0, 1.0, 0.5)})
    first = gather_state(value, origin)
    second = gather_state(value, origin, second_moment=True)
    assert torch.equal(first, torch.tensor([[1.0, 0.0, 0.0, 1.0], [2.5, 0.0, 3.0, 2.5]]))
    assert torch.equal(second, torch.tensor([[0.5, 0.0, 0.0, 0.5], [1.25, 0.0, 3.0, 1.25]]))
    assert gather_state(value, Origin("w")).data_ptr() != value.data_ptr()


def test_inconsistent_provenance_is_refused() -> None:
    graph, module, opt = trained("sgd")
    result = widen.run(graph, node="hidden", width=8, init="net2net", seed=3)
    new_module = to_torch(result.graph).train()
    bad = dict(result.origins)
    bad["hidden.weight"] = Origin("hidden.weight", index={0: (0, 1)})
    with pytest.raises(GrowError, match=r"hidden\.weight"):
        transfer_optimizer(opt, module, new_module, bad)
