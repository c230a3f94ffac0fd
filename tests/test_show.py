"""``grow-ir show``: 80 columns, stages grouped, MACs that match torch's own count, and
per-task trainable and frozen parameters."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import grow_ir as gi
from grow_ir.backends.torch import to_torch
from grow_ir.cli import main
from grow_ir.commands.show import format_table
from grow_ir.ir import TensorType
from grow_ir.ir.cost import graph_macs
from grow_ir.probes import random_inputs
from grow_ir.spec.examples import example_names, example_path
from tests.test_op_facts import VARIANTS, draws, one_op


@pytest.mark.parametrize(
    ("ts", "op", "attrs"), [v[1:] for v in VARIANTS], ids=[v[0] for v in VARIANTS]
)
def test_every_ops_mac_rule_matches_torchs_flop_counter(
    ts: tuple[TensorType, ...], op: str, attrs: dict
) -> None:
    """Each op's declared ``OpFacts.macs``, on every attribute variant, against torch's
    count of the lowered op (attention's two batched products, which the counter misses
    inside nn.MultiheadAttention, are added from the test's own count)."""
    graph = one_op(ts, op, attrs)
    xs = draws(ts, seed=0)
    dims = {"batch": 3, "seq": 4}
    ours = sum(graph_macs(graph, dims).values())
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        to_torch(graph).eval()(*xs)
    missed = 0
    if op == "attention":
        node = graph.nodes[0]
        inner = node.attrs.num_heads * (
            node.attrs.head_dim or xs[0].shape[-1] // node.attrs.num_heads
        )
        missed = 2 * xs[0].shape[0] * xs[0].shape[1] ** 2 * inner
    assert 2 * ours == counter.get_total_flops() + 2 * missed


@pytest.mark.parametrize("name", example_names())
def test_show_fits_80_columns(name: str, capsys: pytest.CaptureFixture) -> None:
    assert main(["show", name]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert max(len(line) for line in lines) <= 80, max(lines, key=len)


@pytest.mark.parametrize("name", example_names())
@pytest.mark.parametrize(("batch", "seq"), [(1, 1), (3, 7)])
def test_macs_match_torchs_flop_counter(name: str, batch: int, seq: int) -> None:
    graph = gi.load_spec(example_path(name))
    dims = {"batch": batch, "seq": seq}
    ours = sum(graph_macs(graph, dims).values())
    module = gi.to_torch(graph).eval()
    inputs = random_inputs(graph, batch=batch, seq=seq)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        module(**inputs)
    # torch's counter misses the products inside nn.MultiheadAttention (checked by hand
    # below), so they are added from the test's own count
    attention = sum(
        2 * batch * seq * seq * graph.types[n.name].shape[2]
        for n in graph.nodes
        if n.op == "attention"
    )
    assert 2 * ours == counter.get_total_flops() + 2 * attention  # one MAC = two FLOPs
    assert ours > 0


@pytest.mark.parametrize(("batch", "length", "embed", "heads"), [(1, 1, 16, 2), (3, 7, 8, 4)])
def test_attention_macs_match_an_explicit_computation(
    batch: int, length: int, embed: int, heads: int
) -> None:
    from grow_ir.ir.ops.attention import AttentionAttrs
    from grow_ir.ir.ops.macs import attention_macs
    from grow_ir.ir.types import TensorType

    x = torch.randn(batch, length, embed)
    w_in, w_out = torch.randn(3 * embed, embed), torch.randn(embed, embed)
    counter = FlopCounterMode(display=False)
    with counter:
        q, k, v = torch.nn.functional.linear(x, w_in).chunk(3, dim=-1)
        split = [t.reshape(batch, length, heads, -1).transpose(1, 2) for t in (q, k, v)]
        weights = (split[0] @ split[1].transpose(-1, -2)).softmax(-1)
        mixed = (weights @ split[2]).transpose(1, 2).reshape(batch, length, embed)
        torch.nn.functional.linear(mixed, w_out)
    t = TensorType((batch, length, embed))
    macs = attention_macs(AttentionAttrs(num_heads=heads), [t], t)
    assert 2 * macs == counter.get_total_flops()


def test_stages_are_grouped_with_their_totals() -> None:
    graph = gi.load_spec(example_path("resnet"))
    text = format_table(graph)
    row = next(line for line in text.splitlines() if line.startswith("stage1 "))
    members = [n for n in graph.nodes if n.name.startswith("stage1.")]
    assert row.split()[:5] == ["stage1", "stage", "×2", "basic", "blocks"]
    assert row.split()[5] == f"{sum(graph.num_params(n) for n in members):,}"
    assert "  block1.conv2 " in text and "stage1.block1.conv2" not in text
    assert "bn2, stem_act" in text  # inputs named within their block


def test_per_task_trainable_and_frozen_parameters(tmp_path: Path) -> None:
    graph = gi.load_spec(example_path("mlp"))
    forked = gi.apply_plan(
        graph, [{"pass": "fork_task", "task": "t2", "base": "logits", "new": ["head"]}]
    )
    lines = format_table(forked).splitlines()
    reads = [n for n in forked.nodes if "t2" in forked.output_deps[n.name]]
    shared = sum(forked.num_params(n) for n in reads if n.name != forked.outputs["t2"])
    head = forked.num_params(forked.outputs["t2"])
    t2 = next(line for line in lines if line.startswith("output t2 "))
    assert f": {head:,} trainable, {shared:,} frozen" in t2
    buffers = sum(s.numel for s in forked.param_specs.values() if s.buffer)
    assert f"buffers: {buffers:,}" in lines[-4]


def test_a_bad_dim_is_refused(capsys: pytest.CaptureFixture) -> None:
    assert main(["show", "transformer", "--dim", "seq"]) == 2
    assert "bad --dim" in capsys.readouterr().err
    assert main(["show", "transformer", "--dim", "seq=64"]) == 0
    assert "seq=64" in capsys.readouterr().out
