"""Property tests of pruning: random networks of every op (tests/graphgen.py) and random
sequences of prune, prune_connections and widen steps (so channels are also pruned and
widened through masked layers), checked after every step:

- the result verifies, its input is untouched (spec and tensors, bitwise), and a refusal
  changes nothing;
- every channel of the pruned group lost the same entries in every member (shapes);
- a pruned graph computes the original with the dropped channels silenced (their fan-out
  zeroed), for groups without a layernorm across the channels; a step that claims
  preservation keeps every output within 1e-5;
- every changed parameter has an Origin whose index map reproduces it;
- save -> load gives the same graph, and the final graph exports to ONNX with onnxruntime
  parity;
- pruning exactly the channels a zero-init widen just added gives back the graph bitwise.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from pathlib import Path

import torch
from hypothesis import event, given, settings
from hypothesis import strategies as st

from grow_ir.backends.onnx_check import check_parity
from grow_ir.errors import PassError
from grow_ir.ir.graph import Graph
from grow_ir.ir.verify import verify
from grow_ir.passes import PASSES, PassResult, channel_group, output_error, prune, widen, widenable
from grow_ir.spec import dump_spec, load, save
from tests.graphgen import graphs, pass_arguments
from tests.test_pass_properties import SETTINGS, SameGraph, Snapshot, check_origin
from tests.test_prune import silenced

TOL = 1e-5


def check_prune(before: Graph, args: dict, result: PassResult) -> float:
    """The prune-specific checks of one applied step; returns the differential error."""
    result_graph, preserved = result.graph, result.preserved
    group = channel_group(before, args["node"])
    after = channel_group(result_graph, args["node"])
    dropped = group.channels - after.channels
    assert dropped >= 1 and after.channels >= 1
    for param, axes in group.param_axes().items():
        for axis in {a.axis for a in axes}:
            removed = dropped * sum(a.block for a in axes if a.axis == axis)
            want = before.params[param].shape[axis] - removed
            assert result_graph.params[param].shape[axis] == want, (param, axis)
    err = 0.0
    if preserved:
        err = output_error(before, result_graph, {})
        assert err <= TOL, f"prune({args}) claims preservation but errs by {err:.3g}"
    # the start node's own rows say which channels stayed (offset 0, block 1)
    own = next(a for a in group.member(args["node"]).axes if a.kind == "units")
    kept = set(result.origins[own.param].index[own.axis])
    gone = [c for c in range(group.channels) if c not in kept]
    assert len(gone) == dropped
    if "drop" in args:
        assert gone == sorted(args["drop"])
    if not group.norms:
        err = output_error(silenced(before, group, gone), result_graph, {})
        assert err <= TOL, f"prune({args}) differs from the silenced graph by {err:.3g}"
    return err


def test_random_prune_and_widen_sequences(same_graph: SameGraph) -> None:
    tally: Counter[str] = Counter()

    @settings(SETTINGS, max_examples=80)
    @given(graph=graphs(), data=st.data())
    def run(graph: Graph, data: st.DataObject) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            for step in range(data.draw(st.integers(1, 4), label="steps")):
                names = ("prune", "prune", "widen", "prune_connections")
                options = {n: pass_arguments(graph, n) for n in names}
                usable = [n for n in names if options[n] is not None]
                if not usable:
                    break
                name = data.draw(st.sampled_from(usable))
                args = data.draw(options[name], label=name)  # type: ignore[arg-type]
                snap = Snapshot.of(graph)
                try:
                    result = PASSES[name].run(graph, **args)
                except PassError as exc:
                    assert "built an invalid graph" not in exc.reason, f"{name}({args}): {exc}"
                    snap.check(graph, f"refused {name}")
                    tally[f"{name} refused"] += 1
                    continue
                tally[f"{name} applied"] += 1
                tally[f"{name} preserved"] += result.preserved
                event(f"{name}: {'preserved' if result.preserved else 'changed'}")
                new = result.graph
                verify(new)
                snap.check(graph, f"{name}({args})")
                if name == "prune":
                    check_prune(graph, args, result)
                elif result.preserved:
                    assert output_error(graph, new, {}) <= TOL
                for key, t in new.params.items():
                    old = graph.params.get(key)
                    if old is None or old.shape != t.shape or not torch.equal(old, t):
                        assert key in result.origins, f"{name}: changed {key} has no Origin"
                for key, origin in result.origins.items():
                    if not args.get("noise"):
                        check_origin(key, new.params[key], graph, origin)
                same_graph(load(save(new, Path(tmp) / str(step))), new)
                graph = new
            check_parity(graph)

    run()
    print(f"\n{dict(tally)}")
    assert tally["prune applied"] >= 30, tally
    assert tally["prune applied"] > tally["prune preserved"], tally
    assert tally["widen applied"] >= 10, tally
    assert tally["prune_connections applied"] >= 10, tally


@settings(SETTINGS, max_examples=40)
@given(graph=graphs(), data=st.data())
def test_pruning_a_zero_widen_gives_back_the_graph(graph: Graph, data: st.DataObject) -> None:
    nodes = [n for n in widenable(graph) if not channel_group(graph, n).norms]
    if not nodes:
        return
    node = data.draw(st.sampled_from(nodes))
    old = channel_group(graph, node).channels
    extra = data.draw(st.integers(1, 3))
    wide = widen(
        graph, node=node, width=old + extra, init="zero", seed=data.draw(st.integers(0, 9))
    )
    result = prune.run(wide, node=node, drop=list(range(old, old + extra)))
    assert result.preserved, result.reason
    back = result.graph
    assert dump_spec(back) == dump_spec(graph)
    assert set(back.params) == set(graph.params)
    for k, v in graph.params.items():
        assert back.params[k].dtype == v.dtype and torch.equal(back.params[k], v), k
